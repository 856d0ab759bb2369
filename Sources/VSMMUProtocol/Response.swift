/// A message from the daemon: the reply to one request, or ERROR (`PROTOCOL.md` §5-6).
///
/// Replies carry the request's `request_id`; match them by id, not by order (§3.2).
public enum Response: Hashable, Sendable {
    case hello(HelloReply)
    case createVSMMU(VSMMUCreated)
    case destroyVSMMU
    case attachViommu(ViommuAttached)
    case detachViommu
    case setDeviceID
    case unsetDeviceID
    case linkSTE(HWPTLinked)
    case unlinkSTE
    case updateCD(HWPTLinked)
    case getHWInfo(HardwareInfo)
    case resumeVSMMU(VSMMUResumed)
    case mapQueue(QueueMapped)
    case unmapQueue
    case mapEventQueue(EventQueueMapped)
    case unmapEventQueue
    case invalidate(InvalidateReply)
    case stats(StatsReply)
    case list(ListReply)
    case health(HealthReply)
    case simulateDMA(DMASimulated)
    /// The request was refused.
    case error(ProtocolError)

    /// The frame type: the request's type with bit 15 set, or ERROR.
    public var type: MessageType {
        switch self {
        case .hello: return MessageType.hello.reply
        case .createVSMMU: return MessageType.createVSMMU.reply
        case .destroyVSMMU: return MessageType.destroyVSMMU.reply
        case .attachViommu: return MessageType.attachViommu.reply
        case .detachViommu: return MessageType.detachViommu.reply
        case .setDeviceID: return MessageType.setDeviceID.reply
        case .unsetDeviceID: return MessageType.unsetDeviceID.reply
        case .linkSTE: return MessageType.linkSTE.reply
        case .unlinkSTE: return MessageType.unlinkSTE.reply
        case .updateCD: return MessageType.updateCD.reply
        case .getHWInfo: return MessageType.getHWInfo.reply
        case .resumeVSMMU: return MessageType.resumeVSMMU.reply
        case .mapQueue: return MessageType.mapQueue.reply
        case .unmapQueue: return MessageType.unmapQueue.reply
        case .mapEventQueue: return MessageType.mapEventQueue.reply
        case .unmapEventQueue: return MessageType.unmapEventQueue.reply
        case .simulateDMA: return MessageType.simulateDMA.reply
        case .invalidate: return MessageType.invalidate.reply
        case .stats: return MessageType.stats.reply
        case .list: return MessageType.list.reply
        case .health: return MessageType.health.reply
        case .error: return .error
        }
    }

    /// Whether this reply answers a request of `type` (ERROR answers any).
    public func answers(_ type: MessageType) -> Bool { self.type == .error || self.type == type.reply }

    private func encodePayload(to w: inout WireWriter) throws(ProtocolError) {
        switch self {
        case .hello(let m): try m.encode(to: &w)
        case .createVSMMU(let m): try m.encode(to: &w)
        case .attachViommu(let m): try m.encode(to: &w)
        case .linkSTE(let m), .updateCD(let m): try m.encode(to: &w)
        case .getHWInfo(let m): try m.encode(to: &w)
        case .resumeVSMMU(let m): try m.encode(to: &w)
        case .mapQueue(let m): try m.encode(to: &w)
        case .mapEventQueue(let m): try m.encode(to: &w)
        case .simulateDMA(let m): try m.encode(to: &w)
        case .invalidate(let m): try m.encode(to: &w)
        case .stats(let m): try m.encode(to: &w)
        case .list(let m): try m.encode(to: &w)
        case .health(let m): try m.encode(to: &w)
        case .error(let e): e.encodePayload(to: &w)
        case .destroyVSMMU, .detachViommu, .setDeviceID, .unsetDeviceID, .unlinkSTE, .unmapQueue, .unmapEventQueue: break
        }
    }

    /// Appends the reply's frame to `buffer` (left unchanged when it throws).
    /// - Throws: `BAD_FIELD` for a value the wire cannot carry, `FRAME_TOO_LARGE` when the frame would
    ///   exceed `maximumFrameSize` (e.g. a LIST page with too many entries). An ERROR never throws.
    public func encode(requestID: UInt64, into buffer: inout [UInt8],
                       maximumFrameSize: Int = WireProtocol.maximumFrameSize) throws(ProtocolError) {
        if case .invalidate(let reply) = self, reply.failure == nil,
           InvalidateReply.successFrameSize <= maximumFrameSize {
            reply.appendSuccessFrame(requestID: requestID, to: &buffer)
            return
        }
        var w = WireWriter()
        let start = w.startFrame(into: &buffer, type: type, flags: [], requestID: requestID)
        var failure: ProtocolError?
        do throws(ProtocolError) { try encodePayload(to: &w) } catch { failure = error }
        try w.finishFrame(into: &buffer, start: start, flags: [], requestID: requestID,
                          maximumFrameSize: maximumFrameSize, error: failure)
    }

    /// The reply's frame.
    /// - Throws: as ``encode(requestID:into:maximumFrameSize:)``.
    public func encode(requestID: UInt64, maximumFrameSize: Int = WireProtocol.maximumFrameSize) throws(ProtocolError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64) // most replies (INVALIDATE's: 32 bytes) fit: no regrowth
        try encode(requestID: requestID, into: &out, maximumFrameSize: maximumFrameSize)
        return out
    }

    /// Decodes exactly one whole reply frame from `bytes`.
    /// - Returns: the frame's request id and the reply.
    /// - Throws: `FRAME_TOO_LARGE` or `TRUNCATED_FRAME` (`BAD_PAYLOAD_LENGTH` for bytes after the frame),
    ///   then as ``decode(_:)``.
    public static func decode(bytes: [UInt8],
                              maximumFrameSize: Int = WireProtocol.maximumFrameSize) throws(ProtocolError) -> (requestID: UInt64, response: Response) {
        let frame: Frame
        do throws(FrameError) { frame = try Frame(bytes: bytes, maximumFrameSize: maximumFrameSize) } catch { throw error.protocolError }
        return (frame.header.requestID, try decode(frame))
    }

    /// Decodes a reply frame (a client's side).
    /// - Throws: `UNKNOWN_MESSAGE_TYPE` for a type that is not a reply of this version,
    ///   `BAD_PAYLOAD_LENGTH`, `BAD_FIELD` (flags set, or a field the protocol does not allow).
    ///   Never traps, whatever the frame holds.
    public static func decode(_ frame: Frame) throws(ProtocolError) -> Response {
        let header = frame.header, type = header.type
        guard type.isKnownReply else { throw .unknownMessageType(type) }
        func body<M: PayloadCoding>(_: M.Type) throws(ProtocolError) -> M { try decodeBody(M.self, frame, flags: .reply) }
        if type == .error { return .error(try body(ProtocolError.self)) }
        switch type.request {
        case .hello: return .hello(try body(HelloReply.self))
        case .createVSMMU: return .createVSMMU(try body(VSMMUCreated.self))
        case .destroyVSMMU: _ = try body(EmptyPayload.self); return .destroyVSMMU
        case .attachViommu: return .attachViommu(try body(ViommuAttached.self))
        case .detachViommu: _ = try body(EmptyPayload.self); return .detachViommu
        case .setDeviceID: _ = try body(EmptyPayload.self); return .setDeviceID
        case .unsetDeviceID: _ = try body(EmptyPayload.self); return .unsetDeviceID
        case .linkSTE: return .linkSTE(try body(HWPTLinked.self))
        case .unlinkSTE: _ = try body(EmptyPayload.self); return .unlinkSTE
        case .updateCD: return .updateCD(try body(HWPTLinked.self))
        case .getHWInfo: return .getHWInfo(try body(HardwareInfo.self))
        case .resumeVSMMU: return .resumeVSMMU(try body(VSMMUResumed.self))
        case .mapQueue: return .mapQueue(try body(QueueMapped.self))
        case .unmapQueue: _ = try body(EmptyPayload.self); return .unmapQueue
        case .mapEventQueue: return .mapEventQueue(try body(EventQueueMapped.self))
        case .unmapEventQueue: _ = try body(EmptyPayload.self); return .unmapEventQueue
        case .simulateDMA: return .simulateDMA(try body(DMASimulated.self))
        case .invalidate: return .invalidate(try body(InvalidateReply.self))
        case .stats: return .stats(try body(StatsReply.self))
        case .list: return .list(try body(ListReply.self))
        default: return .health(try body(HealthReply.self))
        }
    }
}
