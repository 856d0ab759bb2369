import SMMUv3

/// Why the kernel refuses a command handed to a viommu (`IOMMU_HWPT_INVALIDATE` fails with EIO at it):
/// the guest sees `CERROR_ILL`.
enum CommandRejection: Error, Sendable {
    /// An opcode the kernel does not accept on a viommu (`arm_vsmmu_convert_user_cmd` returns -EIO):
    /// CMD_SYNC, CFGI_STE*, S2/EL2/EL3 TLBIs, PREFETCH, PRI_RESP, RESUME, undefined opcodes.
    case notAcceptedOnViommu(Opcode)
    /// ATC_INV / CFGI_CD / CFGI_CD_ALL naming a vSID without a vdevice on the viommu (-EIO).
    case unknownVirtualStreamID(Opcode, StreamID)
    /// ATC_INV on a pSMMU without ATS (IDR0.ATS = 0): Linux 7.3 answers EIO at the command, `entry_num`
    /// its index, even for a registered vSID (seen on the real-kernel rig, TESTING.md).
    case atcInvalidationWithoutATS(StreamID)

    func message(viommu: ViommuHandle) -> String {
        switch self {
        case .notAcceptedOnViommu(let op):
            return "\(op.name) is not accepted on a viommu (the kernel returns -EIO); it must never be routed to a pSMMU"
        case .unknownVirtualStreamID(let op, let vsid):
            return "\(op.name) names vSID \(vsid), which has no vdevice on \(viommu) (the kernel returns -EIO)"
        case .atcInvalidationWithoutATS(let vsid):
            return "ATC_INV for vSID \(vsid) on \(viommu), whose pSMMU has no ATS (IDR0.ATS = 0): the kernel returns -EIO"
        }
    }
}

/// The kernel's rewrite of a guest command for the physical SMMU (`arm_vsmmu_convert_user_cmd`).
enum ViommuCommandConversion {
    /// Converts `command`, received on a viommu with `vmid` whose vdevices map vSIDs to pSIDs with
    /// `physicalStreamIDs`, into the command the pSMMU executes:
    /// - TLBI_NH_ALL / NH_ASID / NH_VA / NH_VAA: the VMID field overwritten with the viommu's VMID;
    /// - TLBI_NSNH_ALL: replaced by TLBI_NH_ALL of the viommu's VMID (word 1 cleared);
    /// - ATC_INV, CFGI_CD, CFGI_CD_ALL: the SID, read as a vSID, replaced by the pSID;
    /// - anything else refused.
    ///
    /// Like the kernel, it checks nothing else: an ATC_INV or CFGI_CD with SSEC set goes through, and it
    /// is the SMMU that finds it illegal (see ``SimulatedSMMUCounters/illegalCommandsSkipped``).
    /// An ATC_INV on a pSMMU without ATS (`atsSupported` false) is refused too.
    @inline(__always)
    static func convert(_ command: Command, vmid: VMID, physicalStreamIDs: [StreamID: StreamID],
                        atsSupported: Bool = true) -> Result<Command, CommandRejection> {
        convert(command, opcode: command.opcode, vmid: vmid, physicalStreamIDs: physicalStreamIDs, atsSupported: atsSupported)
    }

    /// ``convert(_:vmid:physicalStreamIDs:)`` with the command's opcode already read.
    @inline(__always)
    static func convert(_ command: Command, opcode: Opcode, vmid: VMID, physicalStreamIDs: [StreamID: StreamID],
                        atsSupported: Bool = true) -> Result<Command, CommandRejection> {
        var physical = command
        switch opcode {
        case .tlbiNSNHAll:
            physical = Command(opcode: .tlbiNHAll)
            physical.vmid = vmid
        case .tlbiNHVA, .tlbiNHVAA, .tlbiNHAll, .tlbiNHASID:
            physical.vmid = vmid
            // `Command.validate()` refuses nothing in the TLBI family (no SSEC, no reserved encoding).
            return .success(physical)
        case .atcInv, .cfgiCD, .cfgiCDAll:
            guard let pSID = physicalStreamIDs[command.streamID] else {
                return .failure(.unknownVirtualStreamID(opcode, command.streamID))
            }
            if opcode == .atcInv && !atsSupported { return .failure(.atcInvalidationWithoutATS(command.streamID)) }
            physical.streamID = pSID
        default:
            return .failure(.notAcceptedOnViommu(opcode))
        }
        return .success(physical)
    }

    /// Indexed by opcode byte: whether ``convert(_:vmid:physicalStreamIDs:)`` turns the opcode into a
    /// stage-1 TLBI of the viommu's VMID (TLBI_NH_ALL, NH_ASID, NH_VA, NH_VAA, NSNH_ALL): a conversion
    /// that never fails.
    static let convertsToStage1TLBI: [Bool] = (0...255).map { raw in
        let opcode = Opcode(rawValue: UInt8(raw))
        return opcode.isAcceptedOnViommu && opcode.family == .tlbi
    }

    /// The input-address span `[first, last]` a TLBI by address names: with TG = 0 the page holding VA
    /// (every entry translating VA), with TG ≠ 0 (NUM+1) × 2^SCALE granules from VA aligned down to the
    /// granule, saturating at the top of the address space.
    static func tlbiSpan(_ command: Command) -> (first: UInt64, last: UInt64) {
        let va = command.virtualAddress
        let range = command.tlbiRange
        guard range.isRange else { return (va, va) }
        let start = va & ~((UInt64(1) << range.granuleShift) - 1)
        let (end, overflow) = start.addingReportingOverflow(range.byteCount - 1)
        return (start, overflow ? .max : end)
    }

    /// The span `[first, last]` an ATC_INV names: 2^SIZE 4 KiB pages from ADDR aligned down to the span;
    /// SIZE ≥ 52 names the whole address space.
    static func atcSpan(_ command: Command) -> (first: UInt64, last: UInt64) {
        let size = UInt64(command.atcSize)
        guard size < 52 else { return (0, .max) }
        let bytes = UInt64(1) << (size + 12)
        let start = command.address & ~(bytes - 1)
        return (start, start + (bytes - 1))
    }
}
