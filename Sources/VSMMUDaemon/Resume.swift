import InvalidationEngine
import IOMMUFD
import PSMMU
import SMMUv3
import SystemPackage
import VirtualSMMU
import Logging
import VSMMUJournal
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

extension Request {
    /// Whether the request changes registrations (PROTOCOL.md "Durability and restarts"): its effect is
    /// journaled before its reply is written. INVALIDATE, GET_HW_INFO and the admin requests are not.
    var isControl: Bool {
        switch self {
        case .createVSMMU, .destroyVSMMU, .attachViommu, .detachViommu, .setDeviceID, .unsetDeviceID,
             .linkSTE, .unlinkSTE, .updateCD:
            return true
        case .hello, .getHWInfo, .invalidate, .stats, .list, .health, .resumeVSMMU, .mapQueue, .unmapQueue,
             .mapEventQueue, .unmapEventQueue, .simulateDMA:
            // A shared queue is not journaled: its state is in the VMM's memory, and the fd store or the VMM
            // hands it back (PROTOCOL.md §8.6). RESUME_VSMMU journals its change of owner itself (``resume(_:token:connection:type:)``).
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
        case .createVSMMU, .hello, .getHWInfo, .invalidate, .stats, .list, .health, .resumeVSMMU, .mapQueue, .unmapQueue,
             .mapEventQueue, .unmapEventQueue, .simulateDMA:
            return nil
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
    ///
    /// `iommufd`, the VMM's iommufd passed with the request (taken, set to `nil`, when used): for an iommufd
    /// vSMMU that awaits its descriptors after a restart (``ServedVSMMU/AwaitedDescriptors``), it must hold
    /// the journaled viommu ids, checked before anything changes (a wrong one is refused with
    /// `BACKEND_FAILURE`, errno `ENOENT`, and the vSMMU stays as it was, awaiting its owner); then each
    /// iommufd viommu takes a duplicate, the fd store another, and the engine is restored by id (a device
    /// whose cdev did not come back is re-adopted with it pending, until SET_DEV_ID hands it back).
    /// Otherwise it is not needed and the caller closes it.
    func resume(_ id: VSMMUID, token: [UInt8], connection: Connection, type: MessageType,
                iommufd: inout Int32?) throws(ProtocolError) -> ResumeOutcome {
        guard let served = state.withLock({ $0.vsmmus[id] }), let expected = served.token, expected.matches(token) else {
            throw .unknownVSMMU(id, type: type)
        }
        let needsIOMMUFD = served.awaited.withLock { a in a.map { !$0.neededIOMMUFDs.isSubset(of: Set($0.iommufds.keys)) } ?? false }
        if needsIOMMUFD, let fd = iommufd {
            try checkHoldsObjects(fd, served: served, type: type)
        }
        let previous = served.ownership.withLock { o -> UInt64? in
            // A vSMMU being reclaimed (owner UInt64.max) is gone for everyone.
            guard o.connection != UInt64.max else { return nil }
            defer { o = .init(connection: connection.id, credentials: connection.credentials, resumed: true) }
            return o.connection
        }
        guard let previous else { throw .unknownVSMMU(id, type: type) }
        var restoreFailure: ProtocolError?
        if needsIOMMUFD, let fd = iommufd {
            iommufd = nil
            adoptResumedIOMMUFD(fd, served: served)
            do throws(ProtocolError) { try completeRestore(served, type: type) } catch { restoreFailure = error }
        }
        try journal(served, type: type)
        if let restoreFailure { throw restoreFailure }
        // A shared queue the fd store handed back goes on from CONS (PROTOCOL.md §8.6).
        served.startSharedQueue(server: self)
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
        if case .createVSMMU(let create) = request {
            return replayedCreation(create, header: header, payload: payload, connection: connection)
        }
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

    /// The journaled reply to a CREATE_VSMMU re-sent after a restart: its create key, type, request id and
    /// payload equal those of the CREATE_VSMMU that made a vSMMU. The connection becomes the vSMMU's owner
    /// as RESUME_VSMMU would make it (the key yields the token, so it is as strong a capability), and the
    /// change is journaled before the reply; the vSMMU and its token are answered again, no second one is made.
    private func replayedCreation(_ create: CreateVSMMU, header: FrameHeader, payload: [UInt8], connection: Connection) -> [UInt8]? {
        guard connection.version >= 3, let key = create.createKey else { return nil }
        let candidates = state.withLock { s in s.vsmmus.values.filter { $0.createKey.map(key.matches) ?? false } }
        guard let served = candidates.first, let creation = served.creation.withLock({ $0 }),
              creation.reply.isResent(type: header.type.rawValue, requestID: header.requestID, payload: payload) else { return nil }
        let previous = served.ownership.withLock { o -> UInt64? in
            guard o.connection != UInt64.max else { return nil } // being reclaimed: gone for everyone
            defer { o = .init(connection: connection.id, credentials: connection.credentials, resumed: true) }
            return o.connection
        }
        guard let previous else { return nil }
        join(tenantOf: served.id, connection: connection.id)
        do throws(ProtocolError) { try journal(served, type: .createVSMMU) } catch {
            return error.replyFrame(requestID: header.requestID)
        }
        connection.logger.notice("re-sent CREATE_VSMMU answered from the journal with the vSMMU it created, not a second one", metadata: [
            "vsmmu": "\(served.id.rawValue)", "request_id": "\(header.requestID)",
            "previous_connection": "\(previous == 0 ? "none (restart)" : "\(previous)")",
        ])
        return creation.reply.reply
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
            let journaled = JournaledReply(type: header.type.rawValue, requestID: header.requestID,
                                           payloadCRC: CRC32C.checksum(payload), reply: reply)
            served.lastReply.withLock { $0 = journaled }
            if case .createVSMMU = request, let key = served.createKey {
                served.creation.withLock { $0 = JournaledCreation(key: key, reply: journaled) }
            }
            try journal(served, type: request.type)
        } catch {
            reply = error.replyFrame(requestID: header.requestID)
        }
    }
}

// MARK: - iommufd vSMMUs that await their descriptors after a restart

extension VSMMUServer {
    /// The refusal of a request on a vSMMU that awaits its descriptors: `BACKEND_FAILURE` (no errno) naming
    /// what is missing. INVALIDATE, GET_HW_INFO and every control request but DESTROY_VSMMU and the
    /// re-supplying SET_DEV_ID get it (PROTOCOL.md §5.14).
    func awaitingDescriptorsRefusal(_ served: ServedVSMMU, type: MessageType) -> ProtocolError? {
        guard let missing = served.awaited.withLock({ $0?.missing }) else { return nil }
        return .backendFailure(errno: nil, viommu: nil, type: type,
                               "vSMMU \(served.id.rawValue) was rebuilt after a daemon restart and serves nothing until its VMM hands back \(missing)")
    }

    /// Refuses `request` when it names a vSMMU of `connection`'s that awaits its descriptors and is not one
    /// that brings them (SET_DEV_ID, handled by ``resupplied(viommu:hostDeviceID:streamID:on:fileDescriptor:type:)``)
    /// or DESTROY_VSMMU.
    func refuseWhileAwaitingDescriptors(_ request: Request, connection: Connection) throws(ProtocolError) {
        let id: VSMMUID
        switch request {
        case .attachViommu, .detachViommu, .unsetDeviceID, .linkSTE, .unlinkSTE, .updateCD:
            guard let named = request.controlledVSMMU else { return }
            id = named
        case .getHWInfo(let r): id = r.vsmmu
        default: return
        }
        guard let served = state.withLock({ $0.vsmmus[id] }), served.owner == connection.id,
              let refusal = awaitingDescriptorsRefusal(served, type: request.type) else { return }
        throw refusal
    }

    /// Checks, without changing anything, that `fd` is the iommufd that holds `served`'s journaled viommus:
    /// ``IOMMUFDBackend/probeObject(_:on:)`` on each viommu id answers `ENOENT` when this iommufd has no such
    /// object (`iommufd_get_object`); a viommu that is there refuses the empty array (`EINVAL`).
    /// - Throws: `BACKEND_FAILURE` (errno `ENOENT`) naming the viommu whose id is absent; `BAD_FILE_DESCRIPTOR`
    ///   (unusable) for a descriptor that is no iommufd.
    private func checkHoldsObjects(_ fd: Int32, served: ServedVSMMU, type: MessageType) throws(ProtocolError) {
        guard let snapshot = served.awaited.withLock({ $0?.snapshot }) else { return }
        for viommu in snapshot.viommus {
            guard case .iommufd(_, let adoption) = providers[viommu.pSMMU] else { continue }
            let copy = dup(fd)
            guard copy >= 0 else { throw .badFileDescriptor(.unusable, type: type, errno: errno, message: "cannot duplicate the iommufd") }
            let answer = IOMMUFDBackend.probeObject(viommu.handle.rawValue, on: adoption.adopt(FileDescriptor(rawValue: copy)))
            switch answer {
            case nil, .some(.invalidArgument):
                continue
            case .some(.noSuchFileOrDirectory):
                throw .backendFailure(errno: ENOENT, viommu: UInt32(viommu.index.rawValue), type: type,
                                      "the iommufd passed with RESUME_VSMMU holds no object \(viommu.handle.rawValue), the kernel id of viommu \(viommu.index.rawValue) (iommufd_get_object: ENOENT): it is not the iommufd the vSMMU's objects live in; nothing changed")
            case .some(let e) where e.rawValue == ENOTTY || e.rawValue == EBADF:
                throw .badFileDescriptor(.unusable, type: type, errno: e.rawValue, message: "the fd passed with RESUME_VSMMU is not an iommufd: \(e)")
            case .some(let e):
                throw .backendFailure(errno: e.rawValue, viommu: UInt32(viommu.index.rawValue), type: type,
                                      "checking viommu \(viommu.index.rawValue)'s id \(viommu.handle.rawValue) in the iommufd passed with RESUME_VSMMU: \(e)")
            }
        }
    }

    /// Gives each iommufd viommu of `served` that lacks its iommufd a duplicate of `fd` (and the fd store
    /// another, under its name), then closes `fd`.
    private func adoptResumedIOMMUFD(_ fd: Int32, served: ServedVSMMU) {
        defer { _ = Glibc.close(fd) }
        let missing = served.awaited.withLock { a in a.map { $0.neededIOMMUFDs.subtracting($0.iommufds.keys) } ?? [] }
        for index in missing.sorted() {
            let copy = dup(fd)
            guard copy >= 0 else { continue }
            if let error = served.storeDescriptor(copy, name: ServedVSMMU.iommufdName(served.id, index)) {
                logger.error("cannot hand the VMM's iommufd to the fd store: a later restart needs it from the VMM again",
                             metadata: ["vsmmu": "\(served.id.rawValue)", "viommu": "\(index.rawValue)", "error": "\(error)"])
            }
            served.awaited.withLock { a in
                if a != nil { a?.iommufds[index] = copy } else { _ = Glibc.close(copy) }
            }
        }
    }

    /// SET_DEV_ID that repeats a registration after a restart, with the device's VFIO cdev: on a vSMMU that
    /// awaits its iommufd it is kept for the restore (and handed to the fd store); on a resumed vSMMU it
    /// goes to the backend (`VSMMUEngine.resupplyDevice`), which keeps it when the device was re-adopted
    /// without its cdev (it is then handed to the fd store too) and closes it when its cdev survived.
    /// Nothing else changes.
    /// - Returns: whether it was such a SET_DEV_ID (answered); `false`: an ordinary one.
    /// - Throws: the awaiting refusal for another registration; the restore's failure.
    func resupplied(viommu index: ViommuIndex, hostDeviceID: UInt32, streamID: StreamID, on served: ServedVSMMU,
                    fileDescriptor: inout Int32?, type: MessageType) throws(ProtocolError) -> Bool {
        if let waiting = served.awaited.withLock({ $0 }) {
            guard waiting.neededVFIODevices.contains(streamID),
                  let device = waiting.snapshot.devices.first(where: { $0.streamID == streamID }),
                  device.viommu == index, device.hostDeviceID == hostDeviceID else {
                throw awaitingDescriptorsRefusal(served, type: type) ?? .internalError(type: type, "vSMMU state changed")
            }
            guard let cdev = fileDescriptor else {
                throw .badFileDescriptor(.missing, type: type,
                                         message: "StreamID 0x\(String(streamID, radix: 16)) is on an iommufd viommu: SET_DEV_ID hands its VFIO cdev back after a restart")
            }
            fileDescriptor = nil
            if let error = served.storeDescriptor(cdev, name: ServedVSMMU.cdevName(served.id, streamID)) {
                logger.error("cannot hand a VFIO cdev to the fd store: a later restart needs it from the VMM again",
                             metadata: ["vsmmu": "\(served.id.rawValue)", "stream_id": "\(streamID)", "error": "\(error)"])
            }
            served.awaited.withLock { a in
                if let previous = a?.vfioDevices[streamID] { _ = Glibc.close(previous) }
                if a != nil { a?.vfioDevices[streamID] = cdev } else { _ = Glibc.close(cdev) }
            }
            try completeRestore(served, type: type)
            return true
        }
        guard let cdev = fileDescriptor, served.ownership.withLock({ $0.resumed }),
              let device = served.engine.device(streamID), device.viommu == index, device.hostDeviceID == hostDeviceID else {
            return false
        }
        fileDescriptor = nil
        // Stored before the backend owns it (a refused descriptor is closed there): out again unless kept.
        let name = ServedVSMMU.cdevName(served.id, streamID)
        let alreadyStored = served.storedNames.withLock { $0.contains(name) }
        var storeError: (any Error)?
        if !alreadyStored { storeError = served.storeDescriptor(cdev, name: name) }
        let kept: Bool
        do throws(EngineError) {
            kept = try served.engine.resupplyDevice(viommu: index, device: HostDevice(id: hostDeviceID, vfioDevice: cdev), streamID: streamID)
        } catch {
            if !alreadyStored { served.removeDescriptor(name: name) }
            if case .backend(let backendError) = error, backendError.kind == .unusableDescriptor {
                throw .badFileDescriptor(.unusable, type: type, errno: backendError.errno ?? 0,
                                         message: "the fd is not this device's VFIO cdev: \(backendError)")
            }
            throw Self.protocolError(error, type: type, viommu: UInt32(index.rawValue))
        }
        if kept, let storeError {
            logger.error("cannot hand a VFIO cdev to the fd store: a later restart needs it from the VMM again",
                         metadata: ["vsmmu": "\(served.id.rawValue)", "stream_id": "\(streamID)", "error": "\(storeError)"])
        }
        if !kept, !alreadyStored { served.removeDescriptor(name: name) }
        if kept {
            logger.notice("VFIO cdev handed back for a device re-adopted without it: it can be attached again", metadata: [
                "vsmmu": "\(served.id.rawValue)", "stream_id": "\(streamID)",
            ])
        }
        return true
    }

    /// Restores `served`'s engine by id once every awaited descriptor is there (nothing to do before).
    /// - Throws: `BACKEND_FAILURE` with the restore's reason; the descriptors were consumed (and are out of
    ///   the fd store), and the vSMMU awaits them again.
    func completeRestore(_ served: ServedVSMMU, type: MessageType) throws(ProtocolError) {
        guard let ready = served.awaited.withLock({ a -> ServedVSMMU.AwaitedDescriptors? in
            guard let w = a, w.isComplete else { return nil }
            return w
        }) else { return }
        let engine: VSMMUEngine
        let domains: [ViommuIndex: EventDomain]
        do throws(EngineRestoreError) { (engine, domains) = try restoredEngine(ready, tenant: served.tenant) } catch {
            served.awaited.withLock { a in
                a?.iommufds = [:]
                a?.vfioDevices = [:]
                a?.eventQueues = [:]
            }
            for index in ready.iommufds.keys { served.removeDescriptor(name: ServedVSMMU.iommufdName(served.id, index)) }
            for index in ready.eventQueues.keys { served.removeDescriptor(name: ServedVSMMU.eventQueueName(served.id, index)) }
            for sid in ready.vfioDevices.keys { served.removeDescriptor(name: ServedVSMMU.cdevName(served.id, sid)) }
            var errno: Int32?
            if case .backend(let e) = error.reason { errno = e.errno }
            throw .backendFailure(errno: errno, viommu: error.viommu.map { UInt32($0.rawValue) }, type: type,
                                  "cannot re-adopt vSMMU \(served.id.rawValue)'s objects by id: \(error); it awaits its VMM's descriptors again")
        }
        served.awaited.withLock { $0 = nil }
        served.replaceEngine(with: engine)
        routeEvents(of: served, domains: domains)
        if served.ownership.withLock({ $0.resumed && $0.connection != 0 }) { served.startSharedQueue(server: self) }
        logEventQueueStoreFailures(served)
        logger.notice("iommufd vSMMU re-adopted by id with the descriptors its VMM handed back", metadata: [
            "vsmmu": "\(served.id.rawValue)", "viommus": "\(ready.snapshot.viommus.count)", "devices": "\(ready.snapshot.devices.count)",
        ])
    }
}
