import SMMUv3

/// What a LIST request lists (`enum vsmmu_list_kind`).
public struct ListKind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// vSMMUs (``VSMMUListEntry``). The corresponding C constant is `VSMMU_LIST_VSMMUS` (1).
    public static let vsmmus = ListKind(rawValue: 1)
    /// viommus (``ViommuListEntry``). The corresponding C constant is `VSMMU_LIST_VIOMMUS` (2).
    public static let viommus = ListKind(rawValue: 2)
    /// Registered devices (``DeviceListEntry``). The corresponding C constant is `VSMMU_LIST_DEVICES` (3).
    public static let devices = ListKind(rawValue: 3)
    /// Stage-1 HWPTs (``HWPTListEntry``). The corresponding C constant is `VSMMU_LIST_HWPTS` (4).
    public static let hwpts = ListKind(rawValue: 4)
    /// ASIDs and their target viommus (``ASIDListEntry``). The corresponding C constant is `VSMMU_LIST_ASIDS` (5).
    public static let asids = ListKind(rawValue: 5)

    /// Every kind this version defines.
    public static let all: [ListKind] = [.vsmmus, .viommus, .devices, .hwpts, .asids]

    /// The size of one entry of this kind, `nil` for a kind this version does not define.
    public var entrySize: Int? {
        switch rawValue {
        case 1: return 96
        case 2: return 80
        case 3, 4, 5: return 24
        default: return nil
        }
    }

    public var description: String {
        switch rawValue {
        case 1: return "VSMMUS"
        case 2: return "VIOMMUS"
        case 3: return "DEVICES"
        case 4: return "HWPTS"
        case 5: return "ASIDS"
        default: return "LIST_KIND(\(rawValue))"
        }
    }
}

/// LIST (`struct vsmmu_list`, 16 bytes): one page of a listing. Reply: ``ListReply``.
public struct ListRequest: Hashable, Sendable {
    /// The vSMMU to list, `nil` for every vSMMU of the daemon.
    public var vsmmu: VSMMUID?
    public var kind: ListKind
    /// Index of the first entry wanted.
    public var start: UInt32
    /// At most this many entries; 0 for as many as fit in one frame.
    public var maximumEntries: UInt32

    public init(kind: ListKind, vsmmu: VSMMUID? = nil, start: UInt32 = 0, maximumEntries: UInt32 = 0) {
        self.kind = kind
        self.vsmmu = vsmmu
        self.start = start
        self.maximumEntries = maximumEntries
    }
}

extension ListRequest: PayloadCoding {
    static let fixedLength = 16
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32()
        let kind = ListKind(rawValue: r.u16())
        guard kind.entrySize != nil else {
            throw .badField(r.type, offset: 4, value: UInt64(kind.rawValue), "unknown list kind \(kind.rawValue)")
        }
        try r.reserved16()
        self.init(kind: kind, vsmmu: .optional(id), start: r.u32(), maximumEntries: r.u32())
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        guard kind.entrySize != nil else {
            throw .badField(w.type, offset: 4, value: UInt64(kind.rawValue), "unknown list kind \(kind.rawValue)")
        }
        w.u32(vsmmu.wireValue)
        w.u16(kind.rawValue)
        w.u16(0)
        w.u32(start)
        w.u32(maximumEntries)
    }
}

/// A vSMMU in a listing (`struct vsmmu_list_vsmmu`, 96 bytes).
public struct VSMMUListEntry: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public var ownerProcessID: UInt32
    public var ownerUserID: UInt32
    public var viommuCount: UInt32
    public var deviceCount: UInt32
    public var hwptCount: UInt32
    public var asidCount: UInt32
    public var name: String
    /// The daemon restarted and rebuilt this vSMMU from its journal; no connection has resumed it yet
    /// (`VSMMU_LIST_VSMMU_AWAITING_OWNER`, version 3: the daemon sets it only in replies to version-3
    /// connections, whose `flags` field is `reserved` (zero) in versions 1-2).
    public var awaitingOwner: Bool

    /// `flags` bit 0. The corresponding C constant is `VSMMU_LIST_VSMMU_AWAITING_OWNER`.
    public static let awaitingOwnerFlag: UInt32 = 1

    public init(vsmmu: VSMMUID, ownerProcessID: UInt32, ownerUserID: UInt32, viommuCount: UInt32,
                deviceCount: UInt32, hwptCount: UInt32, asidCount: UInt32, name: String, awaitingOwner: Bool = false) {
        self.awaitingOwner = awaitingOwner
        self.vsmmu = vsmmu
        self.ownerProcessID = ownerProcessID
        self.ownerUserID = ownerUserID
        self.viommuCount = viommuCount
        self.deviceCount = deviceCount
        self.hwptCount = hwptCount
        self.asidCount = asidCount
        self.name = name
    }
}

/// A viommu in a listing (`struct vsmmu_list_viommu`, 80 bytes).
public struct ViommuListEntry: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public var viommu: UInt32
    public var backendViommuID: UInt32
    public var deviceCount: UInt32
    public var pSMMU: String

    public init(vsmmu: VSMMUID, viommu: UInt32, backendViommuID: UInt32, deviceCount: UInt32, pSMMU: String) {
        self.vsmmu = vsmmu
        self.viommu = viommu
        self.backendViommuID = backendViommuID
        self.deviceCount = deviceCount
        self.pSMMU = pSMMU
    }
}

/// A registered device in a listing (`struct vsmmu_list_device`, 24 bytes).
public struct DeviceListEntry: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public var streamID: StreamID
    public var viommu: UInt32
    public var hostDeviceID: UInt32
    /// The S1 HWPT serving the device, `nil` for none.
    public var s1HWPT: UInt32?
    /// Whether a vSTE is linked (`VSMMU_DEVICE_STE_LINKED`).
    public var steLinked: Bool

    public init(vsmmu: VSMMUID, streamID: StreamID, viommu: UInt32, hostDeviceID: UInt32, s1HWPT: UInt32?, steLinked: Bool) {
        self.vsmmu = vsmmu
        self.streamID = streamID
        self.viommu = viommu
        self.hostDeviceID = hostDeviceID
        self.s1HWPT = s1HWPT
        self.steLinked = steLinked
    }

    /// `VSMMU_DEVICE_STE_LINKED`.
    static let steLinkedFlag: UInt32 = 0x1
}

/// A stage-1 HWPT in a listing (`struct vsmmu_list_hwpt`, 24 bytes).
public struct HWPTListEntry: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public var s1HWPT: UInt32
    public var streamID: StreamID
    public var viommu: UInt32
    public var backendHWPTID: UInt32
    public var asidCount: UInt32

    public init(vsmmu: VSMMUID, s1HWPT: UInt32, streamID: StreamID, viommu: UInt32, backendHWPTID: UInt32, asidCount: UInt32) {
        self.vsmmu = vsmmu
        self.s1HWPT = s1HWPT
        self.streamID = streamID
        self.viommu = viommu
        self.backendHWPTID = backendHWPTID
        self.asidCount = asidCount
    }
}

/// An ASID and the viommus its TLBIs reach (`struct vsmmu_list_asid`, 24 bytes).
public struct ASIDListEntry: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public var asid: ASID
    public var hwptCount: UInt16
    /// Bit *n*: viommu *n* receives this ASID's TLBIs.
    public var targetMask: UInt64
    /// The targets where the ASID is only retiring.
    public var retiringMask: UInt64

    public init(vsmmu: VSMMUID, asid: ASID, hwptCount: UInt16, targetMask: UInt64, retiringMask: UInt64) {
        self.vsmmu = vsmmu
        self.asid = asid
        self.hwptCount = hwptCount
        self.targetMask = targetMask
        self.retiringMask = retiringMask
    }
}

/// The entries of one LIST reply, typed by kind.
public enum ListEntries: Hashable, Sendable {
    case vsmmus([VSMMUListEntry])
    case viommus([ViommuListEntry])
    case devices([DeviceListEntry])
    case hwpts([HWPTListEntry])
    case asids([ASIDListEntry])

    public var kind: ListKind {
        switch self {
        case .vsmmus: return .vsmmus
        case .viommus: return .viommus
        case .devices: return .devices
        case .hwpts: return .hwpts
        case .asids: return .asids
        }
    }

    public var count: Int {
        switch self {
        case .vsmmus(let e): return e.count
        case .viommus(let e): return e.count
        case .devices(let e): return e.count
        case .hwpts(let e): return e.count
        case .asids(let e): return e.count
        }
    }
}

/// LIST reply (`struct vsmmu_list_reply`, 16 + `entry_size` × `count` bytes): entries `start ..<
/// start + count` of a list of `total`.
public struct ListReply: Hashable, Sendable {
    public var entries: ListEntries
    /// Entries in the whole list.
    public var total: UInt32
    /// As asked.
    public var start: UInt32

    public init(entries: ListEntries, total: UInt32, start: UInt32 = 0) {
        self.entries = entries
        self.total = total
        self.start = start
    }

    public var kind: ListKind { entries.kind }
    /// Whether entries past this page remain: ask again from `start + count`.
    public var hasMore: Bool { UInt64(start) + UInt64(entries.count) < UInt64(total) }
}

extension ListReply: PayloadCoding {
    static let fixedLength = 16
    static func requiredLength(_ payload: [UInt8]) -> UInt64 {
        guard payload.count >= fixedLength else { return UInt64(fixedLength) }
        let r = WireReader(payload)
        // A known kind's size: entry_size itself is checked against it when decoding.
        let size = ListKind(rawValue: r.peekU16(at: 0)).entrySize ?? Int(r.peekU16(at: 2))
        return UInt64(fixedLength) + UInt64(r.peekU32(at: 4)) * UInt64(size)
    }

    init(from r: inout WireReader) throws(ProtocolError) {
        let kind = ListKind(rawValue: r.u16())
        guard let size = kind.entrySize else {
            throw .badField(r.type, offset: 0, value: UInt64(kind.rawValue), "unknown list kind \(kind.rawValue)")
        }
        let entrySize = r.u16()
        guard Int(entrySize) == size else {
            throw .badField(r.type, offset: 2, value: UInt64(entrySize), "entry_size \(entrySize) is not \(size) for \(kind)")
        }
        let count = Int(r.u32()), total = r.u32(), start = r.u32()
        let n = min(count, r.remaining / size)
        switch kind {
        case .vsmmus:
            var entries: [VSMMUListEntry] = []
            entries.reserveCapacity(n)
            for _ in 0..<n {
                let id = r.u32(), pid = r.u32(), uid = r.u32(), viommus = r.u32(), devices = r.u32(),
                    hwpts = r.u32(), asids = r.u32()
                let flags = try r.flags32(known: VSMMUListEntry.awaitingOwnerFlag)
                entries.append(VSMMUListEntry(vsmmu: VSMMUID(id), ownerProcessID: pid, ownerUserID: uid, viommuCount: viommus,
                                              deviceCount: devices, hwptCount: hwpts, asidCount: asids, name: try r.name(),
                                              awaitingOwner: flags & VSMMUListEntry.awaitingOwnerFlag != 0))
            }
            self.init(entries: .vsmmus(entries), total: total, start: start)
        case .viommus:
            var entries: [ViommuListEntry] = []
            entries.reserveCapacity(n)
            for _ in 0..<n {
                let id = r.u32(), viommu = r.u32(), backend = r.u32(), devices = r.u32()
                entries.append(ViommuListEntry(vsmmu: VSMMUID(id), viommu: viommu, backendViommuID: backend,
                                               deviceCount: devices, pSMMU: try r.name()))
            }
            self.init(entries: .viommus(entries), total: total, start: start)
        case .devices:
            var entries: [DeviceListEntry] = []
            entries.reserveCapacity(n)
            for _ in 0..<n {
                let id = r.u32(), sid = r.u32(), viommu = r.u32(), device = r.u32(), hwpt = r.u32()
                let flags = try r.flags32(known: DeviceListEntry.steLinkedFlag)
                entries.append(DeviceListEntry(vsmmu: VSMMUID(id), streamID: sid, viommu: viommu, hostDeviceID: device,
                                               s1HWPT: hwpt == 0 ? nil : hwpt,
                                               steLinked: flags & DeviceListEntry.steLinkedFlag != 0))
            }
            self.init(entries: .devices(entries), total: total, start: start)
        case .hwpts:
            var entries: [HWPTListEntry] = []
            entries.reserveCapacity(n)
            for _ in 0..<n {
                entries.append(HWPTListEntry(vsmmu: VSMMUID(r.u32()), s1HWPT: r.u32(), streamID: r.u32(), viommu: r.u32(),
                                             backendHWPTID: r.u32(), asidCount: r.u32()))
            }
            self.init(entries: .hwpts(entries), total: total, start: start)
        default:
            var entries: [ASIDListEntry] = []
            entries.reserveCapacity(n)
            for _ in 0..<n {
                entries.append(ASIDListEntry(vsmmu: VSMMUID(r.u32()), asid: r.u16(), hwptCount: r.u16(),
                                             targetMask: r.u64(), retiringMask: r.u64()))
            }
            self.init(entries: .asids(entries), total: total, start: start)
        }
    }

    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u16(kind.rawValue)
        w.u16(UInt16(kind.entrySize ?? 0))
        w.u32(UInt32(clamping: entries.count))
        w.u32(total)
        w.u32(start)
        switch entries {
        case .vsmmus(let entries):
            for e in entries {
                w.u32(e.vsmmu.rawValue)
                w.u32(e.ownerProcessID)
                w.u32(e.ownerUserID)
                w.u32(e.viommuCount)
                w.u32(e.deviceCount)
                w.u32(e.hwptCount)
                w.u32(e.asidCount)
                w.u32(e.awaitingOwner ? VSMMUListEntry.awaitingOwnerFlag : 0)
                try w.name(e.name)
            }
        case .viommus(let entries):
            for e in entries {
                w.u32(e.vsmmu.rawValue)
                w.u32(e.viommu)
                w.u32(e.backendViommuID)
                w.u32(e.deviceCount)
                try w.name(e.pSMMU)
            }
        case .devices(let entries):
            for e in entries {
                w.u32(e.vsmmu.rawValue)
                w.u32(e.streamID)
                w.u32(e.viommu)
                w.u32(e.hostDeviceID)
                w.u32(e.s1HWPT ?? 0)
                w.u32(e.steLinked ? DeviceListEntry.steLinkedFlag : 0)
            }
        case .hwpts(let entries):
            for e in entries {
                w.u32(e.vsmmu.rawValue)
                w.u32(e.s1HWPT)
                w.u32(e.streamID)
                w.u32(e.viommu)
                w.u32(e.backendHWPTID)
                w.u32(e.asidCount)
            }
        case .asids(let entries):
            for e in entries {
                w.u32(e.vsmmu.rawValue)
                w.u16(e.asid)
                w.u16(e.hwptCount)
                w.u64(e.targetMask)
                w.u64(e.retiringMask)
            }
        }
    }
}
