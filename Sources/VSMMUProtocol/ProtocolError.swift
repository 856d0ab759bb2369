import SMMUv3

/// A refused request: what a decoder throws and what an ERROR frame carries (`struct vsmmu_error`,
/// `PROTOCOL.md` §4).
///
/// The codec throws it for every malformed input, filled in as the server must answer it; the server
/// sends it back unchanged with ``replyFrame(requestID:)`` (and closes the connection when
/// ``closesConnection``). The constructors below fill `detail` and `value` the way the specification
/// says for each code.
public struct ProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong.
    public var code: ProtocolErrorCode
    /// The type of the refused frame (`MessageType(rawValue: 0)` when no header was read).
    public var requestType: MessageType
    /// A code-specific number (`PROTOCOL.md` §4), 0 when the code defines none.
    public var detail: UInt32
    /// A code-specific value, 0 when the code defines none.
    public var value: UInt64
    /// For people: what was wrong. At most ``WireProtocol/maximumMessageLength`` UTF-8 bytes travel.
    public var message: String

    public init(code: ProtocolErrorCode, requestType: MessageType = MessageType(rawValue: 0),
                detail: UInt32 = 0, value: UInt64 = 0, message: String = "") {
        self.code = code
        self.requestType = requestType
        self.detail = detail
        self.value = value
        self.message = message
    }

    /// Whether the server closes the connection after sending this error.
    public var closesConnection: Bool { code.closesConnection }

    public var description: String {
        var s = "\(code.name)"
        if requestType.rawValue != 0 { s += " (\(requestType.name))" }
        if !message.isEmpty { s += ": \(message)" }
        return s
    }

    /// The ERROR frame answering the request `requestID`. Never fails: a long message is cut.
    public func replyFrame(requestID: UInt64) -> [UInt8] {
        var w = WireWriter()
        w.beginFrame(type: .error, flags: [], requestID: requestID)
        encodePayload(to: &w)
        w.endFrame()
        return w.bytes
    }

    // MARK: Framing (PROTOCOL.md §2)

    /// `FRAME_TOO_LARGE`: detail the limit, value `16 + payload_length`.
    public static func frameTooLarge(_ header: FrameHeader, limit: Int) -> ProtocolError {
        ProtocolError(code: .frameTooLarge, requestType: header.type, detail: UInt32(clamping: limit),
                      value: UInt64(header.frameLength),
                      message: "frame of \(header.frameLength) bytes exceeds the limit of \(limit)")
    }

    /// `TRUNCATED_FRAME`: detail the bytes the frame needed (16 when the header was incomplete), value
    /// the bytes received.
    public static func truncatedFrame(header: FrameHeader?, received: Int) -> ProtocolError {
        let needed = header.map { $0.frameLength } ?? WireProtocol.headerSize
        return ProtocolError(code: .truncatedFrame, requestType: header?.type ?? MessageType(rawValue: 0),
                             detail: UInt32(clamping: needed), value: UInt64(clamping: received),
                             message: "the stream ended after \(received) of the frame's \(needed) bytes")
    }

    /// `UNKNOWN_MESSAGE_TYPE`: value the type.
    public static func unknownMessageType(_ type: MessageType) -> ProtocolError {
        ProtocolError(code: .unknownMessageType, requestType: type, value: UInt64(type.rawValue),
                      message: "unknown message type 0x\(hex(type.rawValue, digits: 4))")
    }

    /// `BAD_PAYLOAD_LENGTH`: detail the length the type needs (capped at 2³²−1), value the payload length.
    public static func badPayloadLength(_ type: MessageType, expected: UInt64, actual: Int) -> ProtocolError {
        ProtocolError(code: .badPayloadLength, requestType: type, detail: UInt32(clamping: expected),
                      value: UInt64(clamping: actual),
                      message: "\(type.name) needs a payload of \(expected) bytes, got \(actual)")
    }

    /// `HANDSHAKE_REQUIRED`: value the type.
    public static func handshakeRequired(_ type: MessageType) -> ProtocolError {
        ProtocolError(code: .handshakeRequired, requestType: type, value: UInt64(type.rawValue),
                      message: "\(type.name) before HELLO")
    }

    /// `UNSUPPORTED_VERSION`: detail the server's lowest version, value its highest.
    public static func unsupportedVersion(client: ClosedRange<UInt16>, server: ClosedRange<UInt16>) -> ProtocolError {
        ProtocolError(code: .unsupportedVersion, requestType: .hello, detail: UInt32(server.lowerBound),
                      value: UInt64(server.upperBound),
                      message: "client speaks versions \(client.lowerBound)-\(client.upperBound), server \(server.lowerBound)-\(server.upperBound)")
    }

    /// `BAD_FILE_DESCRIPTOR`: detail the problem, value the errno (0 when the fd was not tried).
    public static func badFileDescriptor(_ problem: FileDescriptorProblem, type: MessageType,
                                         errno: Int32 = 0, message: String? = nil) -> ProtocolError {
        let text: String
        switch problem {
        case .missing: text = "\(type.name) needs a file descriptor passed with SCM_RIGHTS and none arrived"
        case .unexpected: text = "\(type.name) takes no file descriptor"
        default: text = type == .setDeviceID ? "the file descriptor is not a usable VFIO device cdev"
                                             : "the file descriptor is not a usable iommufd"
        }
        return ProtocolError(code: .badFileDescriptor, requestType: type, detail: problem.rawValue,
                             value: UInt64(UInt32(bitPattern: errno)), message: message ?? text)
    }

    /// `BAD_FIELD`: detail the field's byte offset in the payload (``headerFieldOffset`` + offset for a
    /// header field), value the field's value.
    public static func badField(_ type: MessageType, offset: Int, value: UInt64 = 0, _ message: String) -> ProtocolError {
        ProtocolError(code: .badField, requestType: type, detail: UInt32(clamping: offset), value: value,
                      message: message)
    }

    /// Added to a header field's offset in `BAD_FIELD`'s detail. The corresponding C constant is
    /// `VSMMU_BAD_FIELD_HEADER`.
    public static let headerFieldOffset = 0x10000

    // MARK: Requests and the daemon's state (PROTOCOL.md §4-5)

    /// `UNKNOWN_VSMMU`: value the id.
    public static func unknownVSMMU(_ id: VSMMUID, type: MessageType) -> ProtocolError {
        ProtocolError(code: .unknownVSMMU, requestType: type, value: UInt64(id.rawValue), message: "no \(id)")
    }

    /// `UNKNOWN_VIOMMU`: value the index.
    public static func unknownViommu(_ viommu: UInt32, type: MessageType, message: String? = nil) -> ProtocolError {
        ProtocolError(code: .unknownViommu, requestType: type, value: UInt64(viommu),
                      message: message ?? "no viommu \(viommu) on this vSMMU")
    }

    /// `UNKNOWN_PSMMU`.
    public static func unknownPSMMU(_ name: String, type: MessageType) -> ProtocolError {
        ProtocolError(code: .unknownPSMMU, requestType: type, message: "no pSMMU named \"\(name)\"")
    }

    /// `UNKNOWN_STREAM_ID`: value the vSID.
    public static func unknownStreamID(_ streamID: StreamID, type: MessageType) -> ProtocolError {
        ProtocolError(code: .unknownStreamID, requestType: type, value: UInt64(streamID),
                      message: "vSID 0x\(hex(streamID)) is not registered")
    }

    /// `ALREADY_EXISTS`: detail what conflicts, value its id (0 for a second HELLO).
    public static func alreadyExists(_ kind: ConflictKind, value: UInt64, type: MessageType, _ message: String) -> ProtocolError {
        ProtocolError(code: .alreadyExists, requestType: type, detail: kind.rawValue, value: value, message: message)
    }

    /// `IN_USE`: detail the number of dependents, value the object's id.
    public static func inUse(_ object: UInt64, dependents: Int, type: MessageType, _ message: String) -> ProtocolError {
        ProtocolError(code: .inUse, requestType: type, detail: UInt32(clamping: dependents), value: object, message: message)
    }

    /// `INVALID_STE`: detail the reason, value the offending value.
    public static func invalidSTE(_ reason: InvalidSTEReason, value: UInt64, type: MessageType, _ message: String) -> ProtocolError {
        ProtocolError(code: .invalidSTE, requestType: type, detail: reason.rawValue, value: value, message: message)
    }

    /// `INVALID_STE` for a vSTE the kernel's nesting rules refuse (``StreamTableEntry/nestingValidated()``).
    public static func invalidSTE(_ error: NestedSTEError, type: MessageType) -> ProtocolError {
        switch error {
        case .disallowedBitsW0(let bits): return .invalidSTE(.disallowedBitsW0, value: bits, type: type, error.description)
        case .disallowedBitsW1(let bits): return .invalidSTE(.disallowedBitsW1, value: bits, type: type, error.description)
        case .disallowedConfig(let config):
            return .invalidSTE(.disallowedConfig, value: UInt64(config.rawValue), type: type, error.description)
        case .disallowedEATS(let eats): return .invalidSTE(.disallowedEATS, value: UInt64(eats), type: type, error.description)
        }
    }

    /// `NOT_OWNER`: value the vSMMU id (0 for an admin request).
    public static func notOwner(_ id: VSMMUID?, type: MessageType) -> ProtocolError {
        ProtocolError(code: .notOwner, requestType: type, value: UInt64(id?.rawValue ?? 0),
                      message: id.map { "\($0) belongs to another connection" } ?? "admin requests are not allowed to this peer")
    }

    /// `BACKEND_FAILURE`: detail the errno (0 if none), value the viommu index (`0xFFFFFFFF` if none).
    public static func backendFailure(errno: Int32?, viommu: UInt32?, type: MessageType, _ message: String) -> ProtocolError {
        ProtocolError(code: .backendFailure, requestType: type, detail: UInt32(bitPattern: errno ?? 0),
                      value: UInt64(viommu ?? 0xFFFF_FFFF), message: message)
    }

    /// `UNSUPPORTED` (version 5): detail 0, value the viommu index (`0xFFFFFFFF` if none).
    public static func unsupported(viommu: UInt32?, type: MessageType, _ message: String) -> ProtocolError {
        ProtocolError(code: .unsupported, requestType: type, value: UInt64(viommu ?? 0xFFFF_FFFF), message: message)
    }

    /// `LIMIT_EXCEEDED`: detail the limit, value what was asked.
    public static func limitExceeded(limit: Int, asked: UInt64, type: MessageType, _ message: String) -> ProtocolError {
        ProtocolError(code: .limitExceeded, requestType: type, detail: UInt32(clamping: limit), value: asked, message: message)
    }

    /// `PERMISSION_DENIED`: detail the peer's uid, value its primary gid.
    public static func permissionDenied(userID: UInt32, groupID: UInt32, type: MessageType) -> ProtocolError {
        ProtocolError(code: .permissionDenied, requestType: type, detail: userID, value: UInt64(groupID),
                      message: "uid \(userID) (gid \(groupID)) is not on the daemon's allow-list ([access] in its configuration)")
    }

    /// `SHUTTING_DOWN`.
    public static func shuttingDown(type: MessageType) -> ProtocolError {
        ProtocolError(code: .shuttingDown, requestType: type, message: "the daemon is shutting down")
    }

    /// `INTERNAL_ERROR`.
    public static func internalError(type: MessageType, _ message: String) -> ProtocolError {
        ProtocolError(code: .internalError, requestType: type, message: message)
    }
}

// MARK: - Wire form

extension ProtocolError: PayloadCoding {
    /// `sizeof(struct vsmmu_error)`.
    static let fixedLength = 24

    func encode(to w: inout WireWriter) throws(ProtocolError) { encodePayload(to: &w) }

    func encodePayload(to w: inout WireWriter) {
        let text = WireWriter.truncatedUTF8(message)
        w.u32(code.rawValue)
        w.u16(requestType.rawValue)
        w.u16(UInt16(text.count))
        w.u32(detail)
        w.u32(0)
        w.u64(value)
        w.append(text)
    }

    static func requiredLength(_ payload: [UInt8]) -> UInt64 {
        guard payload.count >= fixedLength else { return UInt64(fixedLength) }
        return UInt64(fixedLength) + UInt64(WireReader(payload).peekU16(at: 6))
    }

    init(from r: inout WireReader) throws(ProtocolError) {
        let code = r.u32()
        guard code != 0 else { throw .badField(.error, offset: 0, value: 0, "ERROR code 0 is never sent") }
        let requestType = r.u16()
        let length = try r.messageLength()
        let detail = r.u32()
        try r.reserved32()
        let value = r.u64()
        let message = try r.utf8(count: length, fieldOffset: 24)
        self.init(code: ProtocolErrorCode(rawValue: code), requestType: MessageType(rawValue: requestType),
                  detail: detail, value: value, message: message)
    }
}
