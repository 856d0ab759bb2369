// Builders for every command family, so that callers never assemble words by hand.

extension Command {
    // MARK: CFGI

    /// `CMD_CFGI_STE`: drop the cached STE of `streamID` (and, unless `leaf`, its CDs).
    public static func cfgiSTE(streamID: StreamID, leaf: Bool = true) -> Command {
        var c = Command(opcode: .cfgiSTE)
        c.streamID = streamID
        c.leaf = leaf
        return c
    }

    /// `CMD_CFGI_STE_RANGE`: drop the cached STEs of the 2^(range+1) StreamIDs around `streamID`.
    public static func cfgiSTERange(streamID: StreamID, range: UInt8) -> Command {
        var c = Command(opcode: .cfgiSTERange)
        c.streamID = streamID
        c.cfgiRange = range
        return c
    }

    /// `CMD_CFGI_ALL`: `CMD_CFGI_STE_RANGE` with RANGE = 31, every StreamID.
    public static func cfgiAll() -> Command { cfgiSTERange(streamID: 0, range: 31) }

    /// `CMD_CFGI_CD`: drop the cached CD of (`streamID`, `substreamID`).
    public static func cfgiCD(streamID: StreamID, substreamID: SubstreamID = 0, leaf: Bool = true) -> Command {
        var c = Command(opcode: .cfgiCD)
        c.streamID = streamID
        c.substreamID = substreamID
        c.leaf = leaf
        return c
    }

    /// `CMD_CFGI_CD_ALL`: drop every cached CD of `streamID`.
    public static func cfgiCDAll(streamID: StreamID) -> Command {
        var c = Command(opcode: .cfgiCDAll)
        c.streamID = streamID
        return c
    }

    // MARK: TLBI

    /// `CMD_TLBI_NH_ALL`: every stage-1 entry of `vmid`.
    public static func tlbiNHAll(vmid: VMID = 0) -> Command {
        var c = Command(opcode: .tlbiNHAll)
        c.vmid = vmid
        return c
    }

    /// `CMD_TLBI_NH_ASID`: every stage-1 entry of (`vmid`, `asid`).
    public static func tlbiNHASID(asid: ASID, vmid: VMID = 0) -> Command {
        var c = Command(opcode: .tlbiNHASID)
        c.asid = asid
        c.vmid = vmid
        return c
    }

    /// `CMD_TLBI_NH_VA`: the stage-1 entries of (`vmid`, `asid`) at `address`, over `range`.
    public static func tlbiNHVA(asid: ASID, vmid: VMID = 0, address: UInt64, leaf: Bool = true,
                                range: TLBIRange = .singlePage) -> Command {
        var c = Command(opcode: .tlbiNHVA)
        c.asid = asid
        c.vmid = vmid
        c.virtualAddress = address
        c.leaf = leaf
        c.tlbiRange = range
        return c
    }

    /// `CMD_TLBI_NH_VAA`: the stage-1 entries at `address` over `range`, for every ASID of `vmid`.
    public static func tlbiNHVAA(vmid: VMID = 0, address: UInt64, leaf: Bool = true,
                                 range: TLBIRange = .singlePage) -> Command {
        var c = Command(opcode: .tlbiNHVAA)
        c.vmid = vmid
        c.virtualAddress = address
        c.leaf = leaf
        c.tlbiRange = range
        return c
    }

    /// `CMD_TLBI_NSNH_ALL`: every non-secure, non-hyp entry.
    public static func tlbiNSNHAll() -> Command { Command(opcode: .tlbiNSNHAll) }

    /// `CMD_TLBI_S12_VMALL`: every stage-1 and stage-2 entry of `vmid`.
    public static func tlbiS12VMAll(vmid: VMID = 0) -> Command {
        var c = Command(opcode: .tlbiS12VMAll)
        c.vmid = vmid
        return c
    }

    /// `CMD_TLBI_S2_IPA`: the stage-2 entries of `vmid` at `ipa` over `range`.
    public static func tlbiS2IPA(vmid: VMID = 0, ipa: UInt64, leaf: Bool = true,
                                 range: TLBIRange = .singlePage) -> Command {
        var c = Command(opcode: .tlbiS2IPA)
        c.vmid = vmid
        c.ipa = ipa
        c.leaf = leaf
        c.tlbiRange = range
        return c
    }

    /// `CMD_TLBI_EL2_ALL`.
    public static func tlbiEL2All() -> Command { Command(opcode: .tlbiEL2All) }

    /// `CMD_TLBI_EL2_ASID`.
    public static func tlbiEL2ASID(asid: ASID) -> Command {
        var c = Command(opcode: .tlbiEL2ASID)
        c.asid = asid
        return c
    }

    /// `CMD_TLBI_EL2_VA`.
    public static func tlbiEL2VA(asid: ASID, address: UInt64, leaf: Bool = true,
                                 range: TLBIRange = .singlePage) -> Command {
        var c = Command(opcode: .tlbiEL2VA)
        c.asid = asid
        c.virtualAddress = address
        c.leaf = leaf
        c.tlbiRange = range
        return c
    }

    /// `CMD_TLBI_EL2_VAA`.
    public static func tlbiEL2VAA(address: UInt64, leaf: Bool = true, range: TLBIRange = .singlePage) -> Command {
        var c = Command(opcode: .tlbiEL2VAA)
        c.virtualAddress = address
        c.leaf = leaf
        c.tlbiRange = range
        return c
    }

    /// `CMD_TLBI_EL3_ALL`.
    public static func tlbiEL3All() -> Command { Command(opcode: .tlbiEL3All) }

    /// `CMD_TLBI_EL3_VA`.
    public static func tlbiEL3VA(address: UInt64, leaf: Bool = true, range: TLBIRange = .singlePage) -> Command {
        var c = Command(opcode: .tlbiEL3VA)
        c.virtualAddress = address
        c.leaf = leaf
        c.tlbiRange = range
        return c
    }

    // MARK: ATC, PREFETCH, PRI, RESUME, STALL, SYNC

    /// `CMD_ATC_INV`: the device's ATC entries for 2^`size` pages at `address` (size 52: all of them).
    public static func atcInv(streamID: StreamID, substreamID: SubstreamID? = nil, global: Bool = false,
                              address: UInt64 = 0, size: UInt8 = 52) -> Command {
        var c = Command(opcode: .atcInv)
        c.streamID = streamID
        if let substreamID {
            c.ssv = true
            c.substreamID = substreamID
        }
        c.atcGlobal = global
        c.address = address
        c.atcSize = size
        return c
    }

    /// `CMD_PREFETCH_CONFIG`.
    public static func prefetchConfig(streamID: StreamID, substreamID: SubstreamID? = nil) -> Command {
        var c = Command(opcode: .prefetchConfig)
        c.streamID = streamID
        if let substreamID {
            c.ssv = true
            c.substreamID = substreamID
        }
        return c
    }

    /// `CMD_PREFETCH_ADDR`.
    public static func prefetchAddress(streamID: StreamID, substreamID: SubstreamID? = nil,
                                       address: UInt64, size: UInt8 = 0) -> Command {
        var c = prefetchConfig(streamID: streamID, substreamID: substreamID)
        c.opcode = .prefetchAddress
        c.address = address
        c[Field.prefetchSize] = UInt64(size)
        return c
    }

    /// `CMD_PRI_RESP`: answer page-request group `groupID` of (`streamID`, `substreamID`).
    public static func priResp(streamID: StreamID, substreamID: SubstreamID? = nil, groupID: UInt16,
                               response: UInt8) -> Command {
        var c = Command(opcode: .priResp)
        c.streamID = streamID
        if let substreamID {
            c.ssv = true
            c.substreamID = substreamID
        }
        c[Field.priGroupID] = UInt64(groupID)
        c[Field.priResponse] = UInt64(response)
        return c
    }

    /// `CMD_RESUME`: resume (`response` 0 retry, 1 abort, 2 terminate as the driver encodes it) stalled
    /// transaction `stag` of `streamID`.
    public static func resume(streamID: StreamID, stag: UInt16, response: UInt8) -> Command {
        var c = Command(opcode: .resume)
        c.streamID = streamID
        c[Field.resumeResponse] = UInt64(response)
        c[Field.resumeSTAG] = UInt64(stag)
        return c
    }

    /// `CMD_STALL_TERM`.
    public static func stallTerm(streamID: StreamID) -> Command {
        var c = Command(opcode: .stallTerm)
        c.streamID = streamID
        return c
    }

    /// `CMD_SYNC`, with an optional MSI write on completion.
    public static func sync(completion: SyncCompletion = .none, msiShareability: UInt8 = 0,
                            msiAttributes: UInt8 = 0, msiData: UInt32 = 0, msiAddress: UInt64 = 0) -> Command {
        var c = Command(opcode: .sync)
        c.syncCompletion = completion
        c[Field.syncMSH] = UInt64(msiShareability)
        c[Field.syncMSIAttr] = UInt64(msiAttributes)
        c[Field.syncMSIData] = UInt64(msiData)
        c[Field.syncMSIAddress] = msiAddress >> 2
        return c
    }
}
