/// The `type` of a frame (`PROTOCOL.md` §2.1): a request, its reply (the request's type with bit 15
/// set), or ERROR.
///
/// Any 16-bit value can be held: a value this version does not define is kept as is, reported by
/// ``isKnownRequest``/``isKnownReply``, and refused by the decoders with `UNKNOWN_MESSAGE_TYPE`.
public struct MessageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The bit that marks a reply. The corresponding C constant is `VSMMU_MSG_REPLY`.
    public static let replyBit: UInt16 = 0x8000

    /// Version handshake, the first exchange. The corresponding C constant is `VSMMU_MSG_HELLO` (0x0001).
    public static let hello = MessageType(rawValue: 0x0001)
    /// Create a vSMMU. The corresponding C constant is `VSMMU_MSG_CREATE_VSMMU` (0x0010).
    public static let createVSMMU = MessageType(rawValue: 0x0010)
    /// Destroy a vSMMU and everything under it. The corresponding C constant is `VSMMU_MSG_DESTROY_VSMMU` (0x0011).
    public static let destroyVSMMU = MessageType(rawValue: 0x0011)
    /// Attach a viommu for a pSMMU (may carry the VMM's iommufd). The corresponding C constant is
    /// `VSMMU_MSG_ATTACH_VIOMMU` (0x0012).
    public static let attachViommu = MessageType(rawValue: 0x0012)
    /// Detach a viommu. The corresponding C constant is `VSMMU_MSG_DETACH_VIOMMU` (0x0013).
    public static let detachViommu = MessageType(rawValue: 0x0013)
    /// Register a device's vSID. The corresponding C constant is `VSMMU_MSG_SET_DEV_ID` (0x0014).
    public static let setDeviceID = MessageType(rawValue: 0x0014)
    /// Unregister a device. The corresponding C constant is `VSMMU_MSG_UNSET_DEV_ID` (0x0015).
    public static let unsetDeviceID = MessageType(rawValue: 0x0015)
    /// Link a guest STE and its CDs. The corresponding C constant is `VSMMU_MSG_LINK_STE` (0x0016).
    public static let linkSTE = MessageType(rawValue: 0x0016)
    /// Unlink a guest STE. The corresponding C constant is `VSMMU_MSG_UNLINK_STE` (0x0017).
    public static let unlinkSTE = MessageType(rawValue: 0x0017)
    /// Rewrite one CD. The corresponding C constant is `VSMMU_MSG_UPDATE_CD` (0x0018).
    public static let updateCD = MessageType(rawValue: 0x0018)
    /// The vSMMU's ID registers: what every pSMMU behind it supports (version 2). The corresponding C
    /// constant is `VSMMU_MSG_GET_HW_INFO` (0x0019).
    public static let getHWInfo = MessageType(rawValue: 0x0019)
    /// Take over a vSMMU by its resume token, after the daemon restarted or the connection was lost
    /// (version 3; may carry the VMM's iommufd). The corresponding C constant is
    /// `VSMMU_MSG_RESUME_VSMMU` (0x001A).
    public static let resumeVSMMU = MessageType(rawValue: 0x001A)
    /// Map the vSMMU's shared command queue (version 4; carries three fds). The corresponding C constant
    /// is `VSMMU_MSG_MAP_QUEUE` (0x001B).
    public static let mapQueue = MessageType(rawValue: 0x001B)
    /// Unmap the vSMMU's shared command queue (version 4). The corresponding C constant is
    /// `VSMMU_MSG_UNMAP_QUEUE` (0x001C).
    public static let unmapQueue = MessageType(rawValue: 0x001C)
    /// Map the vSMMU's event queue (version 5; carries two fds). The corresponding C constant is
    /// `VSMMU_MSG_MAP_EVENT_QUEUE` (0x001D).
    public static let mapEventQueue = MessageType(rawValue: 0x001D)
    /// Unmap the vSMMU's event queue (version 5). The corresponding C constant is
    /// `VSMMU_MSG_UNMAP_EVENT_QUEUE` (0x001E).
    public static let unmapEventQueue = MessageType(rawValue: 0x001E)
    /// A batch of guest commands. The corresponding C constant is `VSMMU_MSG_INVALIDATE` (0x0020).
    public static let invalidate = MessageType(rawValue: 0x0020)
    /// Counters (admin). The corresponding C constant is `VSMMU_MSG_STATS` (0x0040).
    public static let stats = MessageType(rawValue: 0x0040)
    /// Object listings (admin). The corresponding C constant is `VSMMU_MSG_LIST` (0x0041).
    public static let list = MessageType(rawValue: 0x0041)
    /// Daemon health (admin). The corresponding C constant is `VSMMU_MSG_HEALTH` (0x0042).
    public static let health = MessageType(rawValue: 0x0042)
    /// One access of a simulated device (admin range, version 5; changes simulated caches). The
    /// corresponding C constant is `VSMMU_MSG_SIMULATE_DMA` (0x0043).
    public static let simulateDMA = MessageType(rawValue: 0x0043)
    /// A refused request. The corresponding C constant is `VSMMU_MSG_ERROR` (0x8000).
    public static let error = MessageType(rawValue: 0x8000)

    /// Every request type of this version, in type order.
    public static let allRequests: [MessageType] = [
        .hello, .createVSMMU, .destroyVSMMU, .attachViommu, .detachViommu, .setDeviceID, .unsetDeviceID,
        .linkSTE, .unlinkSTE, .updateCD, .getHWInfo, .resumeVSMMU, .mapQueue, .unmapQueue, .mapEventQueue, .unmapEventQueue,
        .invalidate, .stats, .list, .health, .simulateDMA,
    ]
    /// Every reply type of this version: ERROR and each request's reply.
    public static let allReplies: [MessageType] = [.error] + allRequests.map(\.reply)

    /// Whether bit 15 is set: a reply or ERROR.
    @inlinable public var isReply: Bool { rawValue & Self.replyBit != 0 }
    /// The reply type of this request type (`type | 0x8000`).
    @inlinable public var reply: MessageType { MessageType(rawValue: rawValue | Self.replyBit) }
    /// The request type this reply type answers (`type & 0x7FFF`).
    @inlinable public var request: MessageType { MessageType(rawValue: rawValue & ~Self.replyBit) }

    /// Whether this version defines a request of this type.
    public var isKnownRequest: Bool { Self.allRequests.contains(self) }
    /// Whether this version defines a reply of this type (ERROR included).
    public var isKnownReply: Bool { isReply && (self == .error || request.isKnownRequest) }

    /// Whether a server accepts this request before the handshake: HELLO only (`PROTOCOL.md` §3.1).
    /// Every other request before a successful HELLO is refused with `HANDSHAKE_REQUIRED`.
    @inlinable public var isAllowedBeforeHandshake: Bool { self == .hello }
    /// Whether a frame of this type may carry a file descriptor (`VSMMU_FRAME_FD_ATTACHED`): ATTACH_VIOMMU
    /// (the VMM's iommufd), from version 2 SET_DEV_ID (the device's VFIO cdev), and from version 3
    /// RESUME_VSMMU (the VMM's iommufd, handed back after a restart without systemd's fd store), and from
    /// version 4 MAP_QUEUE (three: ``fileDescriptorCount``), and from version 5 MAP_EVENT_QUEUE (two).
    @inlinable public var takesFileDescriptor: Bool {
        self == .attachViommu || self == .setDeviceID || self == .resumeVSMMU || self == .mapQueue || self == .mapEventQueue
    }

    /// How many fds a frame of this type with `FD_ATTACHED` claims (PROTOCOL.md §1): three for MAP_QUEUE
    /// (memfd, kick, call), two for MAP_EVENT_QUEUE (memfd, call), one for the others that take any, 0 for
    /// the rest.
    @inlinable public var fileDescriptorCount: Int {
        switch self {
        case .mapQueue: return 3
        case .mapEventQueue: return 2
        default: return takesFileDescriptor ? 1 : 0
        }
    }

    /// The first protocol version that defines this request type.
    public var introducedInVersion: UInt16 {
        switch self {
        case .getHWInfo: return 2
        case .resumeVSMMU: return 3
        case .mapQueue, .unmapQueue: return 4
        case .mapEventQueue, .unmapEventQueue, .simulateDMA: return 5
        default: return 1
        }
    }

    /// The name used in `vsmmu.h` without its prefix (`HELLO`, `INVALIDATE_REPLY`, `ERROR`), or the hex
    /// value for a type this version does not define.
    public var name: String {
        if self == .error { return "ERROR" }
        let base: String
        switch request {
        case .hello: base = "HELLO"
        case .createVSMMU: base = "CREATE_VSMMU"
        case .destroyVSMMU: base = "DESTROY_VSMMU"
        case .attachViommu: base = "ATTACH_VIOMMU"
        case .detachViommu: base = "DETACH_VIOMMU"
        case .setDeviceID: base = "SET_DEV_ID"
        case .unsetDeviceID: base = "UNSET_DEV_ID"
        case .getHWInfo: base = "GET_HW_INFO"
        case .resumeVSMMU: base = "RESUME_VSMMU"
        case .mapQueue: base = "MAP_QUEUE"
        case .unmapQueue: base = "UNMAP_QUEUE"
        case .mapEventQueue: base = "MAP_EVENT_QUEUE"
        case .unmapEventQueue: base = "UNMAP_EVENT_QUEUE"
        case .simulateDMA: base = "SIMULATE_DMA"
        case .linkSTE: base = "LINK_STE"
        case .unlinkSTE: base = "UNLINK_STE"
        case .updateCD: base = "UPDATE_CD"
        case .invalidate: base = "INVALIDATE"
        case .stats: base = "STATS"
        case .list: base = "LIST"
        case .health: base = "HEALTH"
        default: return "0x" + hex(rawValue, digits: 4)
        }
        return isReply ? base + "_REPLY" : base
    }

    public var description: String { name }
}

/// `value` in upper-case hex, zero-padded to `digits`.
@usableFromInline
func hex<T: BinaryInteger>(_ value: T, digits: Int = 0) -> String {
    let s = String(value, radix: 16, uppercase: true)
    return s.count >= digits ? s : String(repeating: "0", count: digits - s.count) + s
}
