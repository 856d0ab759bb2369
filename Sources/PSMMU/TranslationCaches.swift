import SMMUv3

/// One stage-1 TLB entry of a simulated pSMMU: the translation of `[address, address + size)` tagged
/// (VMID, ASID), with the permission the walk that filled it found. A block mapping is one entry
/// covering its whole block.
public struct TLBEntry: Hashable, Sendable, CustomStringConvertible {
    /// The VMID of the viommu whose device filled the entry.
    public var vmid: VMID
    /// The ASID of the CD the translation went through.
    public var asid: ASID
    /// The first input address translated, aligned to `size`.
    public var address: UInt64
    /// Bytes translated: a power of two, at least 4 KiB.
    public var size: UInt64
    /// Whether the descriptor the walk found allows writes (``StageOneWalk/readWrite``); `false` for a
    /// read-only one (``StageOneWalk/readOnly``), on which a write hit is F_PERMISSION.
    public var writable: Bool

    public init(vmid: VMID, asid: ASID, address: UInt64, size: UInt64, writable: Bool = true) {
        self.vmid = vmid
        self.asid = asid
        self.address = address
        self.size = size
        self.writable = writable
    }

    /// The last input address translated.
    public var lastAddress: UInt64 { address &+ (size &- 1) }

    /// Whether the entry translates `address`.
    public func covers(_ address: UInt64) -> Bool { address >= self.address && address <= lastAddress }

    public var description: String {
        "TLB[vmid \(vmid) asid \(asid) 0x\(String(address, radix: 16))+0x\(String(size, radix: 16))\(writable ? "" : " RO")]"
    }
}

/// One entry of a device's Address Translation Cache (PCIe ATS), filled by a translation the device
/// requested through ATS, tagged by the physical StreamID and, when the request carried one, the
/// SubstreamID (PASID).
public struct ATCEntry: Hashable, Sendable, CustomStringConvertible {
    /// The physical StreamID of the device.
    public var streamID: StreamID
    /// The SubstreamID of the translation request, `nil` for a request without PASID.
    public var substreamID: SubstreamID?
    /// The first input address translated, aligned to `size`.
    public var address: UInt64
    /// Bytes translated.
    public var size: UInt64

    public init(streamID: StreamID, substreamID: SubstreamID?, address: UInt64, size: UInt64) {
        self.streamID = streamID
        self.substreamID = substreamID
        self.address = address
        self.size = size
    }

    public var description: String {
        let ssid = substreamID.map { " ssid \($0)" } ?? ""
        return "ATC[sid \(streamID)\(ssid) 0x\(String(address, radix: 16))+0x\(String(size, radix: 16))]"
    }
}

/// What a simulated pSMMU's configuration cache holds, by physical StreamID.
public struct ConfigCacheSnapshot: Hashable, Sendable {
    /// Cached STEs.
    public var streamTableEntries: [StreamID: StreamTableEntry]
    /// Cached CDs, by SubstreamID (CD index).
    public var contextDescriptors: [StreamID: [SubstreamID: ContextDescriptor]]

    public init(streamTableEntries: [StreamID: StreamTableEntry] = [:],
                contextDescriptors: [StreamID: [SubstreamID: ContextDescriptor]] = [:]) {
        self.streamTableEntries = streamTableEntries
        self.contextDescriptors = contextDescriptors
    }
}

// MARK: - TLB

/// The stage-1 TLB: entries tagged (VMID, ASID) and by permission (read/write or read-only), each
/// address space indexed by page (``PageIndexedRanges``), with an index of the live ASIDs of each VMID
/// for VMID-wide commands. An address is cached with one permission at most: a fill follows a miss.
struct TLBModel: Sendable {
    /// Address spaces by key `(vmid << 16 | asid) << 1 | readOnly`.
    private var spaces: [UInt64: PageIndexedRanges] = [:]
    /// The ASIDs that have entries, per VMID.
    private var asidsByVMID: [VMID: Set<ASID>] = [:]
    /// Number of entries.
    private(set) var count = 0

    private static func key(_ vmid: VMID, _ asid: ASID, readOnly: Bool) -> UInt64 {
        (UInt64(vmid) << 16 | UInt64(asid)) << 1 | (readOnly ? 1 : 0)
    }

    /// The entry of (vmid, asid) that translates `address`.
    func entry(vmid: VMID, asid: ASID, covering address: UInt64) -> TLBEntry? {
        for readOnly in [false, true] {
            if let hit = spaces[Self.key(vmid, asid, readOnly: readOnly)]?.entry(covering: address) {
                return TLBEntry(vmid: vmid, asid: asid, address: hit.start, size: UInt64(1) << UInt64(hit.shift),
                                writable: !readOnly)
            }
        }
        return nil
    }

    /// Inserts the `1 << shift`-byte entry of (vmid, asid) covering `address`, writable or read-only.
    mutating func fill(vmid: VMID, asid: ASID, covering address: UInt64, shift: UInt8, writable: Bool = true) -> TLBEntry {
        let key = Self.key(vmid, asid, readOnly: !writable)
        if spaces[key, default: PageIndexedRanges()].insert(covering: address, shift: shift) {
            count += 1
            asidsByVMID[vmid, default: []].insert(asid)
        }
        let start = address & ~((UInt64(1) << UInt64(shift)) - 1)
        return TLBEntry(vmid: vmid, asid: asid, address: start, size: UInt64(1) << UInt64(shift), writable: writable)
    }

    /// `TLBI_NH_VA`: the entries of (vmid, asid) translating any byte of `[first, last]`.
    mutating func invalidate(vmid: VMID, asid: ASID, first: UInt64, last: UInt64) -> Int {
        var removed = 0
        for readOnly in [false, true] {
            let key = Self.key(vmid, asid, readOnly: readOnly)
            guard let index = spaces.index(forKey: key) else { continue }
            removed += spaces.values[index].remove(intersecting: first, through: last)
            if spaces.values[index].isEmpty { spaces.remove(at: index) }
        }
        count -= removed
        dropASIDIfEmpty(vmid: vmid, asid: asid)
        return removed
    }

    /// `TLBI_NH_ASID`: every entry of (vmid, asid).
    mutating func invalidate(vmid: VMID, asid: ASID) -> Int {
        var removed = 0
        for readOnly in [false, true] {
            if let space = spaces.removeValue(forKey: Self.key(vmid, asid, readOnly: readOnly)) { removed += space.count }
        }
        count -= removed
        dropASIDIfEmpty(vmid: vmid, asid: asid)
        return removed
    }

    /// `TLBI_NH_VAA`: the entries of every ASID of `vmid` translating any byte of `[first, last]`.
    mutating func invalidateAllASIDs(vmid: VMID, first: UInt64, last: UInt64) -> Int {
        guard let asids = asidsByVMID[vmid] else { return 0 }
        var removed = 0
        for asid in asids { removed += invalidate(vmid: vmid, asid: asid, first: first, last: last) }
        return removed
    }

    /// `TLBI_NH_ALL`: every entry of `vmid`.
    mutating func invalidate(vmid: VMID) -> Int {
        guard let asids = asidsByVMID.removeValue(forKey: vmid) else { return 0 }
        var removed = 0
        for asid in asids {
            for readOnly in [false, true] {
                if let space = spaces.removeValue(forKey: Self.key(vmid, asid, readOnly: readOnly)) { removed += space.count }
            }
        }
        count -= removed
        return removed
    }

    /// Forgets `asid` in `vmid`'s index once neither of its spaces holds an entry.
    private mutating func dropASIDIfEmpty(vmid: VMID, asid: ASID) {
        guard spaces[Self.key(vmid, asid, readOnly: false)] == nil, spaces[Self.key(vmid, asid, readOnly: true)] == nil else { return }
        if asidsByVMID[vmid]?.remove(asid) != nil, asidsByVMID[vmid]?.isEmpty == true {
            asidsByVMID.removeValue(forKey: vmid)
        }
    }

    /// Every entry, of one VMID or of all, sorted by (VMID, ASID, address, size).
    func entries(vmid: VMID? = nil) -> [TLBEntry] {
        var out: [TLBEntry] = []
        for (key, space) in spaces {
            let tag = key >> 1
            let entryVMID = VMID(truncatingIfNeeded: tag >> 16)
            if let vmid, vmid != entryVMID { continue }
            let asid = ASID(truncatingIfNeeded: tag)
            for e in space.entries {
                out.append(TLBEntry(vmid: entryVMID, asid: asid, address: e.start, size: UInt64(1) << UInt64(e.shift),
                                    writable: key & 1 == 0))
            }
        }
        return out.sorted { ($0.vmid, $0.asid, $0.address, $0.size) < ($1.vmid, $1.asid, $1.address, $1.size) }
    }
}

// MARK: - ATC

/// The Address Translation Caches of the devices behind the pSMMU, tagged (StreamID, SubstreamID?).
struct ATCModel: Sendable {
    struct Tag: Hashable, Sendable {
        var streamID: StreamID
        var substreamID: SubstreamID?
    }

    private var spaces: [Tag: PageIndexedRanges] = [:]
    private var tagsByStream: [StreamID: Set<Tag>] = [:]

    func entry(streamID: StreamID, substreamID: SubstreamID?, covering address: UInt64) -> ATCEntry? {
        guard let hit = spaces[Tag(streamID: streamID, substreamID: substreamID)]?.entry(covering: address) else {
            return nil
        }
        return ATCEntry(streamID: streamID, substreamID: substreamID, address: hit.start,
                        size: UInt64(1) << UInt64(hit.shift))
    }

    mutating func fill(streamID: StreamID, substreamID: SubstreamID?, covering address: UInt64, shift: UInt8) {
        let tag = Tag(streamID: streamID, substreamID: substreamID)
        if spaces[tag, default: PageIndexedRanges()].insert(covering: address, shift: shift) {
            tagsByStream[streamID, default: []].insert(tag)
        }
    }

    /// `CMD_ATC_INV`: the entries of `streamID` translating any byte of `[first, last]`; with a
    /// SubstreamID only that PASID's entries, without one every entry of the device (a PCIe
    /// invalidation without PASID prefix hits PASID-tagged entries too).
    mutating func invalidate(streamID: StreamID, substreamID: SubstreamID?, first: UInt64, last: UInt64) -> Int {
        guard let tags = tagsByStream[streamID] else { return 0 }
        var removed = 0
        for tag in tags where substreamID == nil || tag.substreamID == substreamID {
            removed += spaces[tag]?.remove(intersecting: first, through: last) ?? 0
            if spaces[tag]?.isEmpty ?? false {
                spaces.removeValue(forKey: tag)
                tagsByStream[streamID]?.remove(tag)
            }
        }
        if tagsByStream[streamID]?.isEmpty == true { tagsByStream.removeValue(forKey: streamID) }
        return removed
    }

    func entries(streamID: StreamID) -> [ATCEntry] {
        var out: [ATCEntry] = []
        for tag in tagsByStream[streamID] ?? [] {
            for e in spaces[tag]?.entries ?? [] {
                out.append(ATCEntry(streamID: streamID, substreamID: tag.substreamID, address: e.start,
                                    size: UInt64(1) << UInt64(e.shift)))
            }
        }
        return out.sorted {
            ($0.substreamID.map { Int64($0) } ?? -1, $0.address, $0.size)
                < ($1.substreamID.map { Int64($0) } ?? -1, $1.address, $1.size)
        }
    }
}

// MARK: - Configuration cache

/// The configuration cache: STEs by physical StreamID, CDs by (StreamID, SubstreamID).
struct ConfigCacheModel: Sendable {
    private(set) var streamTableEntries: [StreamID: StreamTableEntry] = [:]
    private(set) var contextDescriptors: [StreamID: [SubstreamID: ContextDescriptor]] = [:]

    func ste(_ streamID: StreamID) -> StreamTableEntry? { streamTableEntries[streamID] }

    func cd(_ streamID: StreamID, _ index: SubstreamID) -> ContextDescriptor? {
        contextDescriptors[streamID]?[index]
    }

    mutating func cache(ste: StreamTableEntry, for streamID: StreamID) { streamTableEntries[streamID] = ste }

    mutating func cache(cd: ContextDescriptor, for streamID: StreamID, index: SubstreamID) {
        contextDescriptors[streamID, default: [:]][index] = cd
    }

    /// `CMD_CFGI_CD`: drops the CD of (streamID, index). - Returns: entries dropped (0 or 1).
    mutating func dropCD(_ streamID: StreamID, _ index: SubstreamID) -> Int {
        guard contextDescriptors[streamID]?.removeValue(forKey: index) != nil else { return 0 }
        if contextDescriptors[streamID]?.isEmpty == true { contextDescriptors.removeValue(forKey: streamID) }
        return 1
    }

    /// `CMD_CFGI_CD_ALL`: drops every CD of `streamID`. - Returns: entries dropped.
    mutating func dropCDs(_ streamID: StreamID) -> Int {
        contextDescriptors.removeValue(forKey: streamID)?.count ?? 0
    }

    /// `CMD_CFGI_STE` (leaf = 0), as the kernel issues it when it rewrites a StreamID's STE: drops the
    /// STE and its CDs. - Returns: (STEs dropped, CDs dropped).
    mutating func dropStream(_ streamID: StreamID) -> (stes: Int, cds: Int) {
        let stes = streamTableEntries.removeValue(forKey: streamID) == nil ? 0 : 1
        return (stes, dropCDs(streamID))
    }

    var snapshot: ConfigCacheSnapshot {
        ConfigCacheSnapshot(streamTableEntries: streamTableEntries, contextDescriptors: contextDescriptors)
    }
}
