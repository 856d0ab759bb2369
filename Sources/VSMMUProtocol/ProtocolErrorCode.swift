/// The `code` of an ERROR reply (`PROTOCOL.md` §4).
///
/// Any 32-bit value can be held; ``isDefined`` says whether this version defines it. Each code's
/// ``closesConnection`` says whether the server closes the connection after sending it: only where the
/// stream cannot be resynchronised, or the daemon is going away.
public struct ProtocolErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// A header's `16 + payload_length` exceeds the receiver's limit; the next frame cannot be found.
    /// Closes the connection. The corresponding C constant is `VSMMU_ERR_FRAME_TOO_LARGE` (1).
    public static let frameTooLarge = ProtocolErrorCode(rawValue: 1)
    /// The stream ended inside a frame. Closes the connection.
    /// The corresponding C constant is `VSMMU_ERR_TRUNCATED_FRAME` (2).
    public static let truncatedFrame = ProtocolErrorCode(rawValue: 2)
    /// The frame's type is not a request of this version; the frame is skipped.
    /// The corresponding C constant is `VSMMU_ERR_UNKNOWN_MESSAGE_TYPE` (3).
    public static let unknownMessageType = ProtocolErrorCode(rawValue: 3)
    /// The payload length does not fit the type; the frame is skipped.
    /// The corresponding C constant is `VSMMU_ERR_BAD_PAYLOAD_LENGTH` (4).
    public static let badPayloadLength = ProtocolErrorCode(rawValue: 4)
    /// A request other than HELLO before a successful HELLO.
    /// The corresponding C constant is `VSMMU_ERR_HANDSHAKE_REQUIRED` (5).
    public static let handshakeRequired = ProtocolErrorCode(rawValue: 5)
    /// HELLO's version range and the server's do not meet.
    /// The corresponding C constant is `VSMMU_ERR_UNSUPPORTED_VERSION` (6).
    public static let unsupportedVersion = ProtocolErrorCode(rawValue: 6)
    /// The fd passed with SCM_RIGHTS does not fit the request.
    /// The corresponding C constant is `VSMMU_ERR_BAD_FILE_DESCRIPTOR` (7).
    public static let badFileDescriptor = ProtocolErrorCode(rawValue: 7)
    /// A field holds a value the protocol does not allow. The corresponding C constant is `VSMMU_ERR_BAD_FIELD` (8).
    public static let badField = ProtocolErrorCode(rawValue: 8)
    /// No vSMMU with this id. The corresponding C constant is `VSMMU_ERR_UNKNOWN_VSMMU` (16).
    public static let unknownVSMMU = ProtocolErrorCode(rawValue: 16)
    /// No viommu with this index on the vSMMU. The corresponding C constant is `VSMMU_ERR_UNKNOWN_VIOMMU` (17).
    public static let unknownViommu = ProtocolErrorCode(rawValue: 17)
    /// The daemon has no pSMMU of this name. The corresponding C constant is `VSMMU_ERR_UNKNOWN_PSMMU` (18).
    public static let unknownPSMMU = ProtocolErrorCode(rawValue: 18)
    /// The vSID is not registered on the vSMMU. The corresponding C constant is `VSMMU_ERR_UNKNOWN_STREAM_ID` (19).
    public static let unknownStreamID = ProtocolErrorCode(rawValue: 19)
    /// A conflict: already attached, already registered, a second HELLO.
    /// The corresponding C constant is `VSMMU_ERR_ALREADY_EXISTS` (20).
    public static let alreadyExists = ProtocolErrorCode(rawValue: 20)
    /// The object still has dependents. The corresponding C constant is `VSMMU_ERR_IN_USE` (21).
    public static let inUse = ProtocolErrorCode(rawValue: 21)
    /// The vSTE or CD update breaks the nesting rules (detail: ``InvalidSTEReason``).
    /// The corresponding C constant is `VSMMU_ERR_INVALID_STE` (22).
    public static let invalidSTE = ProtocolErrorCode(rawValue: 22)
    /// The vSMMU belongs to another connection, or an untrusted admin peer.
    /// The corresponding C constant is `VSMMU_ERR_NOT_OWNER` (23).
    public static let notOwner = ProtocolErrorCode(rawValue: 23)
    /// The peer's uid and gids are not on the daemon's allow-list (`[access]` in vsmmud.toml): sent, with
    /// the request id of the first request (0 when none arrived), before the daemon closes the connection.
    /// `detail` is the peer's uid, `value` its primary gid. The C constant is `VSMMU_ERR_PERMISSION_DENIED` (24).
    public static let permissionDenied = ProtocolErrorCode(rawValue: 24)
    /// The request is valid but what it names cannot do it: SIMULATE_DMA on a device whose viommu's pSMMU
    /// backend has no simulated devices (every backend but the simulated one; version 5). `detail` 0,
    /// `value` the viommu index. The corresponding C constant is `VSMMU_ERR_UNSUPPORTED` (25).
    public static let unsupported = ProtocolErrorCode(rawValue: 25)
    /// The pSMMU backend refused or failed. The corresponding C constant is `VSMMU_ERR_BACKEND_FAILURE` (32).
    public static let backendFailure = ProtocolErrorCode(rawValue: 32)
    /// A limit was exceeded or a resource is busy. The corresponding C constant is `VSMMU_ERR_LIMIT_EXCEEDED` (33).
    public static let limitExceeded = ProtocolErrorCode(rawValue: 33)
    /// The daemon is stopping; the request was not applied. Closes the connection after the reply.
    /// The corresponding C constant is `VSMMU_ERR_SHUTTING_DOWN` (34).
    public static let shuttingDown = ProtocolErrorCode(rawValue: 34)
    /// A bug in the daemon. The corresponding C constant is `VSMMU_ERR_INTERNAL_ERROR` (35).
    public static let internalError = ProtocolErrorCode(rawValue: 35)

    /// Every code this version defines, ascending.
    public static let allDefined: [ProtocolErrorCode] = [
        .frameTooLarge, .truncatedFrame, .unknownMessageType, .badPayloadLength, .handshakeRequired,
        .unsupportedVersion, .badFileDescriptor, .badField, .unknownVSMMU, .unknownViommu, .unknownPSMMU,
        .unknownStreamID, .alreadyExists, .inUse, .invalidSTE, .notOwner, .permissionDenied, .unsupported, .backendFailure, .limitExceeded,
        .shuttingDown, .internalError,
    ]

    /// Whether this version defines the code.
    public var isDefined: Bool { Self.allDefined.contains(self) }

    /// Whether the server closes the connection after sending this error: `FRAME_TOO_LARGE` and
    /// `TRUNCATED_FRAME` (the stream cannot be resynchronised), `PERMISSION_DENIED` and `SHUTTING_DOWN`.
    public var closesConnection: Bool {
        self == .frameTooLarge || self == .truncatedFrame || self == .permissionDenied || self == .shuttingDown
    }

    /// The name in `vsmmu.h` without its `VSMMU_ERR_` prefix, or the number for an undefined code.
    public var name: String {
        switch rawValue {
        case 1: return "FRAME_TOO_LARGE"
        case 2: return "TRUNCATED_FRAME"
        case 3: return "UNKNOWN_MESSAGE_TYPE"
        case 4: return "BAD_PAYLOAD_LENGTH"
        case 5: return "HANDSHAKE_REQUIRED"
        case 6: return "UNSUPPORTED_VERSION"
        case 7: return "BAD_FILE_DESCRIPTOR"
        case 8: return "BAD_FIELD"
        case 16: return "UNKNOWN_VSMMU"
        case 17: return "UNKNOWN_VIOMMU"
        case 18: return "UNKNOWN_PSMMU"
        case 19: return "UNKNOWN_STREAM_ID"
        case 20: return "ALREADY_EXISTS"
        case 21: return "IN_USE"
        case 22: return "INVALID_STE"
        case 23: return "NOT_OWNER"
        case 24: return "PERMISSION_DENIED"
        case 25: return "UNSUPPORTED"
        case 32: return "BACKEND_FAILURE"
        case 33: return "LIMIT_EXCEEDED"
        case 34: return "SHUTTING_DOWN"
        case 35: return "INTERNAL_ERROR"
        default: return "ERROR(\(rawValue))"
        }
    }

    public var description: String { name }
}

/// The `detail` of an `INVALID_STE` error: which nesting rule the vSTE (or CD update) breaks.
public struct InvalidSTEReason: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Word 0 sets a bit outside `0xF80F_FFFF_FFFF_FFFF` (value: the bits).
    /// The corresponding C constant is `VSMMU_STE_DISALLOWED_BITS_W0` (1).
    public static let disallowedBitsW0 = InvalidSTEReason(rawValue: 1)
    /// Word 1 sets a bit outside `0x3800_00FF` (value: the bits).
    /// The corresponding C constant is `VSMMU_STE_DISALLOWED_BITS_W1` (2).
    public static let disallowedBitsW1 = InvalidSTEReason(rawValue: 2)
    /// CONFIG is not abort, bypass or S1_TRANS (value: CONFIG).
    /// The corresponding C constant is `VSMMU_STE_DISALLOWED_CONFIG` (3).
    public static let disallowedConfig = InvalidSTEReason(rawValue: 3)
    /// EATS is not 0 or 1 (value: EATS). The corresponding C constant is `VSMMU_STE_DISALLOWED_EATS` (4).
    public static let disallowedEATS = InvalidSTEReason(rawValue: 4)
    /// More CDs than 2^S1CDMax (value: CDs given). The corresponding C constant is `VSMMU_STE_TOO_MANY_CDS` (5).
    public static let tooManyContextDescriptors = InvalidSTEReason(rawValue: 5)
    /// UPDATE_CD's SSID ≥ 2^S1CDMax (value: the SSID).
    /// The corresponding C constant is `VSMMU_STE_SSID_OUT_OF_RANGE` (6).
    public static let substreamOutOfRange = InvalidSTEReason(rawValue: 6)
    /// UPDATE_CD on a vSID without a linked stage-1 STE (value: the vSID).
    /// The corresponding C constant is `VSMMU_STE_NOT_TRANSLATING` (7).
    public static let notTranslating = InvalidSTEReason(rawValue: 7)

    public var description: String {
        switch rawValue {
        case 1: return "DISALLOWED_BITS_W0"
        case 2: return "DISALLOWED_BITS_W1"
        case 3: return "DISALLOWED_CONFIG"
        case 4: return "DISALLOWED_EATS"
        case 5: return "TOO_MANY_CDS"
        case 6: return "SSID_OUT_OF_RANGE"
        case 7: return "NOT_TRANSLATING"
        default: return "STE_REASON(\(rawValue))"
        }
    }
}

/// The `detail` of a `BAD_FILE_DESCRIPTOR` error.
public struct FileDescriptorProblem: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `FD_ATTACHED` set but no fd arrived, or the backend needs an fd and the frame has none.
    /// The corresponding C constant is `VSMMU_FD_MISSING` (1).
    public static let missing = FileDescriptorProblem(rawValue: 1)
    /// An fd on a type that takes none. The corresponding C constant is `VSMMU_FD_UNEXPECTED` (2).
    public static let unexpected = FileDescriptorProblem(rawValue: 2)
    /// The fd is not a usable iommufd. The corresponding C constant is `VSMMU_FD_UNUSABLE` (3).
    public static let unusable = FileDescriptorProblem(rawValue: 3)
    /// MAP_QUEUE's (or MAP_EVENT_QUEUE's) memory is not a memfd sealed with `F_SEAL_SHRINK`, is too small,
    /// cannot be mapped, or holds a bad configuration line or indices. The corresponding C constant is
    /// `VSMMU_FD_QUEUE_MEMORY` (4).
    public static let queueMemory = FileDescriptorProblem(rawValue: 4)
    /// MAP_QUEUE's kick or call (MAP_EVENT_QUEUE's call) is not an eventfd. The corresponding C constant is
    /// `VSMMU_FD_QUEUE_EVENTFD` (5).
    public static let queueEventFD = FileDescriptorProblem(rawValue: 5)

    public var description: String {
        switch rawValue {
        case 1: return "FD_MISSING"
        case 2: return "FD_UNEXPECTED"
        case 3: return "FD_UNUSABLE"
        case 4: return "FD_QUEUE_MEMORY"
        case 5: return "FD_QUEUE_EVENTFD"
        default: return "FD_PROBLEM(\(rawValue))"
        }
    }
}

/// The `detail` of an `ALREADY_EXISTS` error: what conflicts.
public struct ConflictKind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// The pSMMU already has a viommu on this vSMMU (value: its index).
    /// The corresponding C constant is `VSMMU_CONFLICT_PSMMU` (1).
    public static let pSMMU = ConflictKind(rawValue: 1)
    /// The vSID is already registered (value: the vSID). The corresponding C constant is `VSMMU_CONFLICT_STREAM_ID` (2).
    public static let streamID = ConflictKind(rawValue: 2)
    /// The host device is already registered (value: its id).
    /// The corresponding C constant is `VSMMU_CONFLICT_HOST_DEVICE` (3).
    public static let hostDevice = ConflictKind(rawValue: 3)
    /// A second HELLO. The corresponding C constant is `VSMMU_CONFLICT_HANDSHAKE` (4).
    public static let handshake = ConflictKind(rawValue: 4)
    /// A CREATE_VSMMU whose create key another CREATE_VSMMU (another request id or payload) already used
    /// (value: 0). The corresponding C constant is `VSMMU_CONFLICT_CREATE_KEY` (5).
    public static let createKey = ConflictKind(rawValue: 5)
    /// MAP_QUEUE on a vSMMU whose shared queue is over other memory (value: 0). The corresponding C
    /// constant is `VSMMU_CONFLICT_QUEUE` (6).
    public static let queue = ConflictKind(rawValue: 6)
    /// MAP_EVENT_QUEUE on a vSMMU whose event queue is over other memory (value: 0). The corresponding C
    /// constant is `VSMMU_CONFLICT_EVENT_QUEUE` (7).
    public static let eventQueue = ConflictKind(rawValue: 7)

    public var description: String {
        switch rawValue {
        case 1: return "PSMMU"
        case 2: return "STREAM_ID"
        case 3: return "HOST_DEVICE"
        case 4: return "HANDSHAKE"
        case 5: return "CREATE_KEY"
        case 6: return "QUEUE"
        case 7: return "EVENT_QUEUE"
        default: return "CONFLICT(\(rawValue))"
        }
    }
}
