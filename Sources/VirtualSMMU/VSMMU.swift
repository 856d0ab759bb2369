import SMMUv3

/// One guest-visible SMMUv3 (a vSMMU) fronting several viommus, one per physical SMMU.
///
/// ```
/// |<---- guest ---->|<------- vsmmud ------->|<- kernel ->|
///        |-- dev0 --|-- viommu0 --|-- pSMMU0 --|
/// vSMMU--|-- dev1 --|-- viommu1 --|-- pSMMU1 --|
///        |-- dev2 --|-- viommu2 --|-- pSMMU2 --|
/// ```
///
/// A `VSMMU` is a pure value: the device table (virtual StreamID → viommu, host device), the vSTE table
/// (StreamID → the guest STE and the CDs it links, as the VMM read them from guest memory), the derived
/// S1 HWPTs and their ``ASIDIndex``, and the routing counters. ``route(_:into:policy:)`` decides where
/// every guest command goes. Nothing here performs I/O.
public struct VSMMU: Sendable {
    /// The largest number of viommus one vSMMU can front (the width of ``ViommuSet``).
    public static let maximumViommus = 64

    /// A viommu of this vSMMU.
    public struct Viommu: Hashable, Sendable {
        public var index: ViommuIndex
        /// The physical SMMU it sits on.
        public var pSMMU: String
        /// The StreamIDs registered behind it.
        public internal(set) var streamIDs: Set<StreamID> = []
    }

    /// A registered device: what SET_DEV_ID said, and the vSTE linked to it, if any.
    public struct Device: Hashable, Sendable {
        /// The guest-visible (virtual) StreamID.
        public var streamID: StreamID
        public var viommu: ViommuIndex
        public var hostDeviceID: HostDeviceID
        /// The guest STE as linked (after the kernel's nesting rules), or `nil` when none is linked.
        public internal(set) var ste: StreamTableEntry?
        /// The CDs the STE links, by SubstreamID.
        public internal(set) var contextDescriptors: [ContextDescriptor] = []
        /// The S1 HWPT derived from a translating STE.
        public internal(set) var hwpt: S1HWPTID?
    }

    /// A stage-1 HWPT (nested domain) derived from a linked, translating vSTE.
    public struct S1HWPT: Hashable, Sendable {
        public var id: S1HWPTID
        public var streamID: StreamID
        public var viommu: ViommuIndex
        /// The ASIDs of its valid CDs, ascending, without repeats.
        public var asids: [ASID]
    }

    /// The viommus, by index; `nil` for a free index.
    public private(set) var viommus: [Viommu?] = []
    /// The set of attached viommus: what a broadcast reaches.
    public private(set) var attachedViommus = ViommuSet()
    /// The device table, by virtual StreamID.
    public private(set) var devices: [StreamID: Device] = [:]
    /// The S1 HWPTs, by id.
    public private(set) var hwpts: [S1HWPTID: S1HWPT] = [:]
    /// The S1 HWPT/ASID index.
    public internal(set) var asidIndex = ASIDIndex()
    /// What the router did so far.
    public internal(set) var counters = RoutingCounters()

    var streamTable = StreamTable()
    private var streamIDByHostDevice: [HostDeviceID: StreamID] = [:]
    private var nextHWPT: UInt32 = 1

    public init() {}

    // MARK: viommus

    /// Attaches a viommu for the physical SMMU `pSMMU`.
    /// - Throws: `.pSMMUAlreadyAttached` (one viommu per pSMMU and VM), `.tooManyViommus`.
    @discardableResult
    public mutating func attachViommu(pSMMU: String) throws(VSMMUError) -> ViommuIndex {
        if let existing = viommus.first(where: { $0?.pSMMU == pSMMU }), let existing {
            throw .pSMMUAlreadyAttached(pSMMU: pSMMU, viommu: existing.index)
        }
        let slot = viommus.firstIndex(where: { $0 == nil }) ?? viommus.count
        guard slot < Self.maximumViommus else { throw .tooManyViommus(limit: Self.maximumViommus) }
        let index = ViommuIndex(slot)
        let viommu = Viommu(index: index, pSMMU: pSMMU)
        if slot == viommus.count { viommus.append(viommu) } else { viommus[slot] = viommu }
        attachedViommus.insert(index)
        counters.ensureViommu(index)
        return index
    }

    /// Detaches a viommu that has no devices left.
    /// - Throws: `.unknownViommu`, `.viommuInUse`.
    public mutating func detachViommu(_ index: ViommuIndex) throws(VSMMUError) {
        let viommu = try self.viommu(index)
        guard viommu.streamIDs.isEmpty else {
            throw .viommuInUse(viommu: index, streamIDs: viommu.streamIDs.sorted())
        }
        viommus[index.index] = nil
        attachedViommus.remove(index)
        asidIndex.viommuDetached(index)
    }

    /// The viommu at `index`.
    public func viommu(_ index: ViommuIndex) throws(VSMMUError) -> Viommu {
        guard index.index < viommus.count, let v = viommus[index.index] else { throw .unknownViommu(index) }
        return v
    }

    // MARK: Device table (SET_DEV_ID / UNSET_DEV_ID)

    /// Registers a device: virtual StreamID `streamID` for host device `hostDeviceID` behind `viommu`
    /// (the kernel's `IOMMU_VDEVICE_ALLOC`).
    ///
    /// Rules: a StreamID names one device on the whole vSMMU (the guest sees one stream table, so a vSID
    /// cannot sit behind two viommus), and a host device has one registration.
    /// - Throws: `.unknownViommu`, `.streamIDInUse`, `.deviceAlreadyRegistered`.
    public mutating func setDeviceID(viommu: ViommuIndex, hostDeviceID: HostDeviceID,
                                     streamID: StreamID) throws(VSMMUError) {
        _ = try self.viommu(viommu)
        if let existing = devices[streamID] {
            throw .streamIDInUse(streamID: streamID, viommu: existing.viommu, hostDeviceID: existing.hostDeviceID)
        }
        if let sid = streamIDByHostDevice[hostDeviceID] {
            throw .deviceAlreadyRegistered(hostDeviceID: hostDeviceID, streamID: sid)
        }
        devices[streamID] = Device(streamID: streamID, viommu: viommu, hostDeviceID: hostDeviceID)
        streamIDByHostDevice[hostDeviceID] = streamID
        viommus[viommu.index]?.streamIDs.insert(streamID)
        streamTable.set(streamID, viommu: viommu)
    }

    /// Unregisters a device, unlinking its vSTE first (its HWPT's ASIDs start retiring).
    /// - Returns: the HWPT that went away with it, if any.
    /// - Throws: `.unknownStreamID`.
    @discardableResult
    public mutating func unsetDeviceID(streamID: StreamID) throws(VSMMUError) -> S1HWPTID? {
        let removed = try unlink(streamID: streamID)
        guard let device = devices.removeValue(forKey: streamID) else { throw .unknownStreamID(streamID) }
        streamIDByHostDevice[device.hostDeviceID] = nil
        viommus[device.viommu.index]?.streamIDs.remove(streamID)
        streamTable.remove(streamID)
        return removed
    }

    /// The viommu a StreamID is registered behind (the router's lookup).
    public func viommu(of streamID: StreamID) -> ViommuIndex? { streamTable.viommu(of: streamID) }

    // MARK: vSTE table (link / unlink / CD update)

    /// What a link, unlink or CD update changed in the HWPTs: what a backend must install or destroy.
    public struct HWPTChange: Hashable, Sendable {
        /// The HWPT that no longer exists.
        public var removed: S1HWPTID?
        /// The HWPT that now serves the StreamID (new, or the same one with new CDs).
        public var current: S1HWPTID?
        /// Whether `current` is a new HWPT (a backend must allocate it).
        public var isNew: Bool

        public init(removed: S1HWPTID?, current: S1HWPTID?, isNew: Bool) {
            self.removed = removed
            self.current = current
            self.isNew = isNew
        }
    }

    /// Links (or relinks) the guest STE of a registered StreamID with the CDs it points at, as the VMM
    /// read them from guest memory. This is also how a guest's CFGI_STE takes effect.
    ///
    /// The STE passes the kernel's nesting rules first (``StreamTableEntry/nestingValidated()``). A valid
    /// STE with CONFIG = S1_TRANS gets an S1 HWPT whose ASIDs are those of its valid CDs; `cds[n]` is the
    /// CD of SubstreamID *n*, and there may be at most 2^S1CDMax of them. Relinking with the same STE
    /// words keeps the HWPT and only updates its CDs; other S1 words give a new HWPT. ASIDs that leave
    /// a viommu start retiring (see ``ASIDIndex``).
    /// - Throws: `.unknownStreamID`, `.invalidSTE`, `.tooManyContextDescriptors`.
    @discardableResult
    public mutating func link(streamID: StreamID, ste: StreamTableEntry,
                              contextDescriptors cds: [ContextDescriptor]) throws(VSMMUError) -> HWPTChange {
        guard var device = devices[streamID] else { throw .unknownStreamID(streamID) }
        let checked: StreamTableEntry
        do { checked = try ste.nestingValidated() } catch { throw .invalidSTE(streamID: streamID, error) }
        let translates = checked.translatesStage1
        if translates, cds.count > checked.contextDescriptorCount {
            throw .tooManyContextDescriptors(streamID: streamID, given: cds.count, limit: checked.contextDescriptorCount)
        }
        let old = device.hwpt.flatMap { hwpts[$0] }
        var change = HWPTChange(removed: nil, current: nil, isNew: false)
        if translates {
            let asids = Self.asids(of: cds)
            let kept: S1HWPTID? = old.flatMap { old in
                device.ste.map { Self.sameS1Config($0, checked) } == true ? old.id : nil
            }
            let keep = kept != nil
            let id = kept ?? allocateHWPTID()
            // Add the new ASIDs before removing the old ones, so an ASID kept across the change never
            // retires. A kept HWPT only changes by the difference of its ASID sets.
            let oldASIDs = old?.asids ?? []
            let added = keep ? asids.filter { !oldASIDs.contains($0) } : asids
            let dropped = keep ? oldASIDs.filter { !asids.contains($0) } : oldASIDs
            for asid in added { asidIndex.add(asid: asid, hwpt: id, viommu: device.viommu) }
            if let old { for asid in dropped { asidIndex.remove(asid: asid, hwpt: old.id, viommu: device.viommu) } }
            if let old, !keep { hwpts[old.id] = nil; change.removed = old.id }
            hwpts[id] = S1HWPT(id: id, streamID: streamID, viommu: device.viommu, asids: asids)
            device.hwpt = id
            change.current = id
            change.isNew = !keep
            device.contextDescriptors = cds
        } else {
            if let old {
                for asid in old.asids { asidIndex.remove(asid: asid, hwpt: old.id, viommu: device.viommu) }
                hwpts[old.id] = nil
                change.removed = old.id
            }
            device.hwpt = nil
            device.contextDescriptors = []
        }
        device.ste = checked
        devices[streamID] = device
        return change
    }

    /// Rewrites the CD of SubstreamID `substreamID` of a linked, translating vSTE (the VMM saw the guest
    /// rewrite a CD, typically followed by CFGI_CD). The HWPT stays; its ASIDs follow the new CD.
    /// - Throws: `.unknownStreamID`, `.notTranslating`, `.substreamOutOfRange`.
    @discardableResult
    public mutating func updateContextDescriptor(streamID: StreamID, substreamID: SubstreamID,
                                                 _ cd: ContextDescriptor) throws(VSMMUError) -> HWPTChange {
        guard let device = devices[streamID] else { throw .unknownStreamID(streamID) }
        guard let ste = device.ste, device.hwpt != nil else { throw .notTranslating(streamID: streamID) }
        let limit = ste.contextDescriptorCount
        guard Int(substreamID) < limit else {
            throw .substreamOutOfRange(streamID: streamID, substreamID: substreamID, limit: limit)
        }
        var cds = device.contextDescriptors
        if cds.count <= Int(substreamID) {
            cds.append(contentsOf: repeatElement(ContextDescriptor(), count: Int(substreamID) + 1 - cds.count))
        }
        cds[Int(substreamID)] = cd
        return try link(streamID: streamID, ste: ste, contextDescriptors: cds)
    }

    /// Unlinks the vSTE of a StreamID (the guest's STE went invalid or the device was detached from its
    /// domain): its HWPT goes away and its ASIDs start retiring. Unlinking an unlinked StreamID is a no-op.
    /// - Returns: the HWPT that went away, if any.
    /// - Throws: `.unknownStreamID`.
    @discardableResult
    public mutating func unlink(streamID: StreamID) throws(VSMMUError) -> S1HWPTID? {
        guard var device = devices[streamID] else { throw .unknownStreamID(streamID) }
        var removed: S1HWPTID?
        if let id = device.hwpt, let old = hwpts[id] {
            for asid in old.asids { asidIndex.remove(asid: asid, hwpt: id, viommu: device.viommu) }
            hwpts[id] = nil
            removed = id
        }
        device.hwpt = nil
        device.ste = nil
        device.contextDescriptors = []
        devices[streamID] = device
        return removed
    }

    // MARK: Helpers

    private mutating func allocateHWPTID() -> S1HWPTID {
        defer { nextHWPT &+= 1 }
        return S1HWPTID(rawValue: nextHWPT)
    }

    static func asids(of cds: [ContextDescriptor]) -> [ASID] {
        Array(Set(cds.compactMap(\.activeASID))).sorted()
    }

    /// Two STEs describe the same nested S1 domain when their words 0 and 1 (all a nested vSTE carries) agree.
    static func sameS1Config(_ a: StreamTableEntry, _ b: StreamTableEntry) -> Bool {
        a.word(0) == b.word(0) && a.word(1) == b.word(1)
    }
}

/// A control-path request the vSMMU refuses.
public enum VSMMUError: Error, Hashable, Sendable, CustomStringConvertible {
    case tooManyViommus(limit: Int)
    case pSMMUAlreadyAttached(pSMMU: String, viommu: ViommuIndex)
    case unknownViommu(ViommuIndex)
    case viommuInUse(viommu: ViommuIndex, streamIDs: [StreamID])
    /// The StreamID is already registered on this vSMMU (the kernel's EEXIST for a virt_id).
    case streamIDInUse(streamID: StreamID, viommu: ViommuIndex, hostDeviceID: HostDeviceID)
    /// The host device already has a registration (the kernel's EEXIST for a second vdevice).
    case deviceAlreadyRegistered(hostDeviceID: HostDeviceID, streamID: StreamID)
    case unknownStreamID(StreamID)
    /// The vSTE breaks the kernel's nesting rules (`-EIO` from `IOMMU_HWPT_ALLOC`).
    case invalidSTE(streamID: StreamID, NestedSTEError)
    case tooManyContextDescriptors(streamID: StreamID, given: Int, limit: Int)
    case substreamOutOfRange(streamID: StreamID, substreamID: SubstreamID, limit: Int)
    /// A CD update for a StreamID whose linked STE does not translate through stage 1.
    case notTranslating(streamID: StreamID)

    public var description: String {
        func sid(_ s: StreamID) -> String { "StreamID 0x" + String(s, radix: 16) }
        switch self {
        case .tooManyViommus(let limit): return "a vSMMU fronts at most \(limit) viommus"
        case .pSMMUAlreadyAttached(let p, let v): return "pSMMU \(p) already has \(v) on this vSMMU"
        case .unknownViommu(let v): return "no \(v) on this vSMMU"
        case .viommuInUse(let v, let sids): return "\(v) still has \(sids.count) device(s): \(sids.map(sid).joined(separator: ", "))"
        case .streamIDInUse(let s, let v, let d): return "\(sid(s)) is already registered for host device \(d) on \(v)"
        case .deviceAlreadyRegistered(let d, let s): return "host device \(d) is already registered as \(sid(s))"
        case .unknownStreamID(let s): return "\(sid(s)) is not registered"
        case .invalidSTE(let s, let e): return "\(sid(s)): \(e)"
        case .tooManyContextDescriptors(let s, let n, let limit): return "\(sid(s)): \(n) CDs given, the STE's S1CDMax allows \(limit)"
        case .substreamOutOfRange(let s, let ssid, let limit): return "\(sid(s)): SubstreamID \(ssid) beyond the STE's \(limit) CDs"
        case .notTranslating(let s): return "\(sid(s)) has no linked stage-1 STE"
        }
    }
}
