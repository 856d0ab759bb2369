import InvalidationEngine
import Logging
import VSMMUJournal
import VSMMUProtocol

extension Request {
    /// Whether the request changes registrations (PROTOCOL.md "Durability and restarts"): its effect is
    /// journaled before its reply is written. INVALIDATE, GET_HW_INFO and the admin requests are not.
    var isControl: Bool {
        switch self {
        case .createVSMMU, .destroyVSMMU, .attachViommu, .detachViommu, .setDeviceID, .unsetDeviceID,
             .linkSTE, .unlinkSTE, .updateCD:
            return true
        case .hello, .getHWInfo, .invalidate, .stats, .list, .health, .resumeVSMMU:
            // RESUME_VSMMU journals its change of owner itself (``resume(_:token:connection:type:)``).
            return false
        }
    }

    /// The vSMMU a control request names (CREATE_VSMMU names none: its reply does).
    var controlledVSMMU: VSMMUID? {
        switch self {
        case .destroyVSMMU(let r): return r.vsmmu
        case .attachViommu(let r): return r.vsmmu
        case .detachViommu(let r): return r.vsmmu
        case .setDeviceID(let r): return r.vsmmu
        case .unsetDeviceID(let r): return r.vsmmu
        case .linkSTE(let r): return r.vsmmu
        case .unlinkSTE(let r): return r.vsmmu
        case .updateCD(let r): return r.vsmmu
        case .createVSMMU, .hello, .getHWInfo, .invalidate, .stats, .list, .health, .resumeVSMMU: return nil
        }
    }
}

/// What RESUME_VSMMU answers: the vSMMU's shape and the request id of the journaled control reply.
struct ResumeOutcome: Hashable, Sendable {
    var vsmmu: VSMMUID
    var viommuCount: UInt32
    var deviceCount: UInt32
    /// The request id of the last control request applied on the vSMMU (0: none).
    var lastRequestID: UInt64
}

extension VSMMUServer {
    /// RESUME_VSMMU: makes `connection` the owner of vSMMU `id` if `token` is its resume token. The newest
    /// holder of the token wins: a vSMMU still owned by another live connection changes hands, and that
    /// connection's later requests on it get `UNKNOWN_VSMMU` (its close no longer tears it down). The owner
    /// change is journaled before the reply.
    /// - Throws: `UNKNOWN_VSMMU` — the same answer for a wrong token, an id that never existed, a vSMMU
    ///   created without a token (protocol version 1-2) and another tenant's vSMMU; `INTERNAL_ERROR` when
    ///   the owner change cannot be made durable.
    func resume(_ id: VSMMUID, token: [UInt8], connection: Connection, type: MessageType) throws(ProtocolError) -> ResumeOutcome {
        guard let served = state.withLock({ $0.vsmmus[id] }), let expected = served.token, expected.matches(token) else {
            throw .unknownVSMMU(id, type: type)
        }
        let previous = served.ownership.withLock { o -> UInt64? in
            // A vSMMU being reclaimed (owner UInt64.max) is gone for everyone.
            guard o.connection != UInt64.max else { return nil }
            defer { o = .init(connection: connection.id, credentials: connection.credentials, resumed: true) }
            return o.connection
        }
        guard let previous else { throw .unknownVSMMU(id, type: type) }
        try journal(served, type: type)
        connection.logger.notice("vSMMU resumed", metadata: [
            "vsmmu": "\(id.rawValue)", "previous_connection": "\(previous == 0 ? "none (restart)" : "\(previous)")",
        ])
        let vsmmu = served.engine.vsmmu
        return ResumeOutcome(vsmmu: id, viommuCount: UInt32(vsmmu.attachedViommus.count), deviceCount: UInt32(vsmmu.devices.count),
                             lastRequestID: served.lastReply.withLock { $0?.requestID } ?? 0)
    }

    /// The journaled reply to answer a re-sent control request with, instead of applying it again: on a vSMMU
    /// this connection resumed, a request whose type, request id and payload CRC-32C equal the journaled ones.
    func replayedReply(to request: Request, header: FrameHeader, payload: [UInt8], connection: Connection) -> [UInt8]? {
        guard request.isControl, let id = request.controlledVSMMU,
              let served = state.withLock({ $0.vsmmus[id] }),
              served.ownership.withLock({ $0.connection == connection.id && $0.resumed }),
              let last = served.lastReply.withLock({ $0 }),
              last.isResent(type: header.type.rawValue, requestID: header.requestID, payload: payload) else { return nil }
        connection.logger.info("re-sent control request answered from the journal, not applied again", metadata: [
            "vsmmu": "\(id.rawValue)", "request_id": "\(header.requestID)", "type": "\(header.type)",
        ])
        return last.reply
    }

    /// Before a control request is applied: refuses it while its vSMMU's journal writes fail.
    func checkDurability(of request: Request, connection: Connection) throws(ProtocolError) {
        guard journal != nil, request.isControl, let id = request.controlledVSMMU,
              let served = state.withLock({ $0.vsmmus[id] }), served.owner == connection.id else { return }
        try requireDurable(served, type: request.type)
    }

    /// After a control request was applied and its reply encoded into `reply`: journals the vSMMU's new
    /// state with the reply (the replay record) and makes it durable. When that fails, `reply` becomes the
    /// `INTERNAL_ERROR` that says so: the daemon never answers success for a change that is not durable.
    func commit(_ request: Request, header: FrameHeader, payload: [UInt8], response: Response, reply: inout [UInt8]) {
        guard journal != nil, request.isControl else { return }
        if case .error = response { return }
        let id: VSMMUID
        switch response {
        case .createVSMMU(let created): id = created.vsmmu
        default:
            guard let named = request.controlledVSMMU else { return }
            id = named
        }
        do throws(ProtocolError) {
            if case .destroyVSMMU = request {
                do throws(JournalError) { try journalRemoval(of: id) } catch {
                    logger.error("cannot journal a vSMMU's destruction: it comes back at the next start and is reclaimed",
                                 metadata: ["vsmmu": "\(id.rawValue)", "error": "\(error)"])
                    throw .internalError(type: request.type, "vSMMU \(id.rawValue) was destroyed but the journal could not record it: \(error)")
                }
                return
            }
            guard let served = state.withLock({ $0.vsmmus[id] }) else { return }
            served.lastReply.withLock {
                $0 = JournaledReply(type: header.type.rawValue, requestID: header.requestID,
                                    payloadCRC: CRC32C.checksum(payload), reply: reply)
            }
            try journal(served, type: request.type)
        } catch {
            reply = error.replyFrame(requestID: header.requestID)
        }
    }
}
