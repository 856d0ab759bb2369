/// A message from a VMM or admin client to the daemon (`PROTOCOL.md` §5-6).
///
/// ```swift
/// let bytes = try Request.invalidate(Invalidate(vsmmu: id, commands: batch)).encode(requestID: 42)
/// // server side:
/// let request = try Request.decode(frame, handshakeCompleted: connection.handshakeDone)
/// ```
public enum Request: Hashable, Sendable {
    case hello(Hello)
    case createVSMMU(CreateVSMMU)
    case destroyVSMMU(DestroyVSMMU)
    case attachViommu(AttachViommu)
    case detachViommu(DetachViommu)
    case setDeviceID(DeviceRegistration)
    case unsetDeviceID(DeviceRegistration)
    case linkSTE(LinkSTE)
    case unlinkSTE(UnlinkSTE)
    case updateCD(UpdateCD)
    case getHWInfo(GetHardwareInfo)
    case resumeVSMMU(ResumeVSMMU)
    case mapQueue(MapQueue)
    case unmapQueue(UnmapQueue)
    case mapEventQueue(MapEventQueue)
    case unmapEventQueue(UnmapEventQueue)
    case invalidate(Invalidate)
    case stats(StatsRequest)
    case list(ListRequest)
    case health
    case simulateDMA(SimulateDMA)

    /// The frame type.
    public var type: MessageType {
        switch self {
        case .hello: return .hello
        case .createVSMMU: return .createVSMMU
        case .destroyVSMMU: return .destroyVSMMU
        case .attachViommu: return .attachViommu
        case .detachViommu: return .detachViommu
        case .setDeviceID: return .setDeviceID
        case .unsetDeviceID: return .unsetDeviceID
        case .linkSTE: return .linkSTE
        case .unlinkSTE: return .unlinkSTE
        case .updateCD: return .updateCD
        case .getHWInfo: return .getHWInfo
        case .resumeVSMMU: return .resumeVSMMU
        case .mapQueue: return .mapQueue
        case .unmapQueue: return .unmapQueue
        case .mapEventQueue: return .mapEventQueue
        case .unmapEventQueue: return .unmapEventQueue
        case .invalidate: return .invalidate
        case .stats: return .stats
        case .list: return .list
        case .health: return .health
        case .simulateDMA: return .simulateDMA
        }
    }

    /// The frame flags: `FD_ATTACHED` for an ATTACH_VIOMMU that passes the VMM's iommufd, or a SET_DEV_ID
    /// that passes the device's VFIO cdev, or a RESUME_VSMMU that hands the VMM's iommufd back; always for
    /// MAP_QUEUE and MAP_EVENT_QUEUE, which carry their memfd and eventfds.
    public var flags: FrameFlags {
        if case .mapQueue = self { return .fileDescriptorAttached }
        if case .mapEventQueue = self { return .fileDescriptorAttached }
        if case .attachViommu(let a) = self, a.fileDescriptorAttached { return .fileDescriptorAttached }
        if case .setDeviceID(let d) = self, d.fileDescriptorAttached { return .fileDescriptorAttached }
        if case .resumeVSMMU(let r) = self, r.fileDescriptorAttached { return .fileDescriptorAttached }
        return []
    }

    /// The vSMMU the request names, if any (`nil` for HELLO, HEALTH and daemon-wide admin requests).
    public var vsmmu: VSMMUID? {
        switch self {
        case .hello, .createVSMMU, .health: return nil
        case .destroyVSMMU(let m): return m.vsmmu
        case .attachViommu(let m): return m.vsmmu
        case .detachViommu(let m): return m.vsmmu
        case .setDeviceID(let m), .unsetDeviceID(let m): return m.vsmmu
        case .linkSTE(let m): return m.vsmmu
        case .unlinkSTE(let m): return m.vsmmu
        case .updateCD(let m): return m.vsmmu
        case .getHWInfo(let m): return m.vsmmu
        case .resumeVSMMU(let m): return m.vsmmu
        case .mapQueue(let m): return m.vsmmu
        case .unmapQueue(let m): return m.vsmmu
        case .mapEventQueue(let m): return m.vsmmu
        case .unmapEventQueue(let m): return m.vsmmu
        case .simulateDMA(let m): return m.vsmmu
        case .invalidate(let m): return m.vsmmu
        case .stats(let m): return m.vsmmu
        case .list(let m): return m.vsmmu
        }
    }

    private func encodePayload(to w: inout WireWriter) throws(ProtocolError) {
        switch self {
        case .hello(let m): try m.encode(to: &w)
        case .createVSMMU(let m): try m.encode(to: &w)
        case .destroyVSMMU(let m): try m.encode(to: &w)
        case .attachViommu(let m): try m.encode(to: &w)
        case .detachViommu(let m): try m.encode(to: &w)
        case .setDeviceID(let m), .unsetDeviceID(let m): try m.encode(to: &w)
        case .linkSTE(let m): try m.encode(to: &w)
        case .unlinkSTE(let m): try m.encode(to: &w)
        case .updateCD(let m): try m.encode(to: &w)
        case .getHWInfo(let m): try m.encode(to: &w)
        case .resumeVSMMU(let m): try m.encode(to: &w)
        case .mapQueue(let m): try m.encode(to: &w)
        case .unmapQueue(let m): try m.encode(to: &w)
        case .mapEventQueue(let m): try m.encode(to: &w)
        case .unmapEventQueue(let m): try m.encode(to: &w)
        case .simulateDMA(let m): try m.encode(to: &w)
        case .invalidate(let m): try m.encode(to: &w)
        case .stats(let m): try m.encode(to: &w)
        case .list(let m): try m.encode(to: &w)
        case .health: break
        }
    }

    /// Appends the request's frame to `buffer` (left unchanged when it throws).
    /// - Throws: `BAD_FIELD` for a value the wire cannot carry (a name over 64 bytes or with a NUL, an
    ///   empty pSMMU name, …), `FRAME_TOO_LARGE` when the frame would exceed `maximumFrameSize`.
    public func encode(requestID: UInt64, into buffer: inout [UInt8],
                       maximumFrameSize: Int = WireProtocol.maximumFrameSize) throws(ProtocolError) {
        var w = WireWriter()
        let flags = self.flags
        let start = w.startFrame(into: &buffer, type: type, flags: flags, requestID: requestID)
        var failure: ProtocolError?
        do throws(ProtocolError) { try encodePayload(to: &w) } catch { failure = error }
        try w.finishFrame(into: &buffer, start: start, flags: flags, requestID: requestID,
                          maximumFrameSize: maximumFrameSize, error: failure)
    }

    /// The request's frame.
    /// - Throws: as ``encode(requestID:into:maximumFrameSize:)``.
    public func encode(requestID: UInt64, maximumFrameSize: Int = WireProtocol.maximumFrameSize) throws(ProtocolError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        try encode(requestID: requestID, into: &out, maximumFrameSize: maximumFrameSize)
        return out
    }

    /// Decodes exactly one whole request frame from `bytes` (a datagram, a test vector).
    /// - Returns: the frame's request id and the request.
    /// - Throws: `FRAME_TOO_LARGE` or `TRUNCATED_FRAME` (`BAD_PAYLOAD_LENGTH` for bytes after the
    ///   frame), then as ``decode(_:handshakeCompleted:)``.
    public static func decode(bytes: [UInt8], handshakeCompleted: Bool = true,
                              maximumFrameSize: Int = WireProtocol.maximumFrameSize) throws(ProtocolError) -> (requestID: UInt64, request: Request) {
        let frame: Frame
        do throws(FrameError) { frame = try Frame(bytes: bytes, maximumFrameSize: maximumFrameSize) } catch { throw error.protocolError }
        return (frame.header.requestID, try decode(frame, handshakeCompleted: handshakeCompleted))
    }

    /// Decodes a request frame, with the checks of `PROTOCOL.md` §2.2 in its order: unknown type,
    /// handshake, payload length, flags, then fields.
    ///
    /// - Parameter handshakeCompleted: whether the connection has had a successful HELLO; when `false`
    ///   every type but HELLO is refused with `HANDSHAKE_REQUIRED`.
    /// - Throws: the ``ProtocolError`` the server answers with: `UNKNOWN_MESSAGE_TYPE`,
    ///   `HANDSHAKE_REQUIRED`, `BAD_PAYLOAD_LENGTH`, `BAD_FIELD`, `BAD_FILE_DESCRIPTOR` (`FD_ATTACHED` on a
    ///   type that takes none). Never traps, whatever the frame holds.
    public static func decode(_ frame: Frame, handshakeCompleted: Bool = true) throws(ProtocolError) -> Request {
        let header = frame.header, type = header.type
        guard type.isKnownRequest else { throw .unknownMessageType(type) }
        guard handshakeCompleted || type.isAllowedBeforeHandshake else { throw .handshakeRequired(type) }
        func body<M: PayloadCoding>(_: M.Type) throws(ProtocolError) -> M { try decodeBody(M.self, frame, flags: .request) }
        switch type {
        case .hello: return .hello(try body(Hello.self))
        case .createVSMMU: return .createVSMMU(try body(CreateVSMMU.self))
        case .destroyVSMMU: return .destroyVSMMU(try body(DestroyVSMMU.self))
        case .attachViommu:
            var m = try body(AttachViommu.self)
            m.fileDescriptorAttached = header.flags.contains(.fileDescriptorAttached)
            return .attachViommu(m)
        case .detachViommu: return .detachViommu(try body(DetachViommu.self))
        case .setDeviceID:
            var m = try body(DeviceRegistration.self)
            m.fileDescriptorAttached = header.flags.contains(.fileDescriptorAttached)
            return .setDeviceID(m)
        case .unsetDeviceID: return .unsetDeviceID(try body(DeviceRegistration.self))
        case .linkSTE: return .linkSTE(try body(LinkSTE.self))
        case .unlinkSTE: return .unlinkSTE(try body(UnlinkSTE.self))
        case .updateCD: return .updateCD(try body(UpdateCD.self))
        case .getHWInfo: return .getHWInfo(try body(GetHardwareInfo.self))
        case .resumeVSMMU:
            var m = try body(ResumeVSMMU.self)
            m.fileDescriptorAttached = header.flags.contains(.fileDescriptorAttached)
            return .resumeVSMMU(m)
        case .mapQueue: return .mapQueue(try body(MapQueue.self))
        case .unmapQueue: return .unmapQueue(try body(UnmapQueue.self))
        case .mapEventQueue: return .mapEventQueue(try body(MapEventQueue.self))
        case .unmapEventQueue: return .unmapEventQueue(try body(UnmapEventQueue.self))
        case .simulateDMA: return .simulateDMA(try body(SimulateDMA.self))
        case .invalidate: return .invalidate(try body(Invalidate.self))
        case .stats: return .stats(try body(StatsRequest.self))
        case .list: return .list(try body(ListRequest.self))
        default:
            _ = try body(EmptyPayload.self)
            return .health
        }
    }
}

// MARK: - Shared frame coding

extension WireWriter {
    /// Starts a frame appended to `buffer` (which the writer takes over until ``finishFrame``).
    mutating func startFrame(into buffer: inout [UInt8], type: MessageType, flags: FrameFlags, requestID: UInt64) -> Int {
        swap(&bytes, &buffer)
        let start = bytes.count
        beginFrame(type: type, flags: flags, requestID: requestID)
        return start
    }

    /// Ends the frame started at `start`, giving the bytes back to `buffer`; on `error` (or a frame over
    /// `maximumFrameSize`) removes the partial frame first, leaving `buffer` as it was, and throws.
    mutating func finishFrame(into buffer: inout [UInt8], start: Int, flags: FrameFlags, requestID: UInt64,
                              maximumFrameSize: Int, error: ProtocolError?) throws(ProtocolError) {
        var failure = error
        let limit = min(maximumFrameSize, FrameHeader.byteCount + Int(UInt32.max)) // payload_length is 32 bits
        if failure == nil && payloadLength > limit - FrameHeader.byteCount {
            failure = .frameTooLarge(FrameHeader(payloadLength: UInt32(clamping: payloadLength), type: type, flags: flags,
                                                 requestID: requestID), limit: limit)
        }
        if let failure {
            bytes.removeSubrange(start...)
            swap(&bytes, &buffer)
            throw failure
        }
        endFrame()
        swap(&bytes, &buffer)
    }
}

/// Which frame flags a decoder accepts.
enum FlagRule {
    /// Reserved bits are `BAD_FIELD`; `FD_ATTACHED` is `BAD_FILE_DESCRIPTOR` on a type that takes no fd.
    case request
    /// Replies carry no flags.
    case reply

    func check(_ flags: FrameFlags, type: MessageType) throws(ProtocolError) {
        switch self {
        case .request:
            guard flags.intersection(.reserved).isEmpty else {
                throw .badField(type, offset: ProtocolError.headerFieldOffset + 6, value: UInt64(flags.rawValue),
                                "reserved frame flags 0x\(hex(flags.rawValue)) set")
            }
            if flags.contains(.fileDescriptorAttached) && !type.takesFileDescriptor {
                throw .badFileDescriptor(.unexpected, type: type)
            }
        case .reply:
            guard flags.isEmpty else {
                throw .badField(type, offset: ProtocolError.headerFieldOffset + 6, value: UInt64(flags.rawValue),
                                "a reply carries no flags (0x\(hex(flags.rawValue)))")
            }
        }
    }
}

/// Checks the payload length against the type's, then the flags, then decodes the fields.
func decodeBody<M: PayloadCoding>(_: M.Type, _ frame: Frame, flags rule: FlagRule) throws(ProtocolError) -> M {
    let header = frame.header, payload = frame.payload
    let required = M.requiredLength(payload)
    guard UInt64(payload.count) == required else {
        throw .badPayloadLength(header.type, expected: required, actual: payload.count)
    }
    try rule.check(header.flags, type: header.type)
    var r = WireReader(payload, type: header.type)
    let message = try M(from: &r)
    try r.finish(expected: required)
    return message
}
