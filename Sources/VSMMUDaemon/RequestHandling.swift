import InvalidationEngine
import PSMMU
import SMMUv3
import VirtualSMMU
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

extension VSMMUServer {
    /// Applies one decoded request for `connection` and returns its reply.
    ///
    /// - Parameter fileDescriptor: the fd that came with the frame, if any; set to `nil` when the
    ///   request took it over (closed or adopted). The caller closes it otherwise.
    /// - Throws: the ``ProtocolError`` the request is refused with; a refused request has no effect.
    func apply(_ request: Request, connection: inout Connection,
               fileDescriptor: inout Int32?) throws(ProtocolError) -> Response {
        let type = request.type
        if isStopping { throw .shuttingDown(type: type) }
        // A request a version-1 client cannot have meant: refused as version 1 refuses it.
        if connection.handshakeCompleted && connection.version < type.introducedInVersion {
            throw .unknownMessageType(type)
        }
        try refuseWhileAwaitingDescriptors(request, connection: connection)
        switch request {
        case .hello(let hello):
            guard !connection.handshakeCompleted else {
                throw .alreadyExists(.handshake, value: 0, type: type, "the connection already completed its HELLO")
            }
            let version = try WireProtocol.negotiateVersion(client: hello.versions)
            connection.handshakeCompleted = true
            connection.version = version
            connection.logger.info("hello", metadata: [
                "client": "\(hello.clientName)", "client_pid": "\(hello.processID)", "version": "\(version)",
            ])
            return .hello(HelloReply(version: version, limits: connection.limits,
                                     serverProcessID: UInt32(bitPattern: getpid()), serverName: configuration.serverName))

        case .createVSMMU(let create):
            let limit = Int(connection.limits.maximumVSMMUs)
            // Version 3 resumes: its vSMMUs get a token (versions 1-2 cannot resume theirs).
            let token: ResumeToken?
            if connection.version >= 3 {
                do throws(SystemCallError) { token = try ResumeToken.random() } catch {
                    throw .internalError(type: type, "cannot draw a resume token: \(error)")
                }
            } else {
                token = nil
            }
            // A create key makes the creation answerable again after a restart (version 3, which has tokens).
            if create.createKey != nil && connection.version < 3 {
                throw .badField(type, offset: CreateVSMMU.flagsOffset, value: UInt64(CreateVSMMU.keyFlag),
                                "VSMMU_CREATE_FLAG_KEY needs protocol version 3 (this connection negotiated \(connection.version))")
            }
            let served = try state.withLock { (s: inout State) throws(ProtocolError) -> ServedVSMMU in
                let owned = s.vsmmus.values.filter { $0.owner == connection.id }.count
                guard owned < limit else {
                    throw .limitExceeded(limit: limit, asked: UInt64(owned + 1), type: type,
                                         "a connection owns at most \(limit) vSMMUs")
                }
                // A re-sent keyed CREATE was answered from its journaled creation (`replayedCreation`);
                // the same key on another request is a client's error. Every key is compared (constant time).
                if let key = create.createKey, s.vsmmus.values.contains(where: { $0.createKey.map(key.matches) ?? false }) {
                    throw .alreadyExists(.createKey, value: 0, type: type,
                                         "another CREATE_VSMMU (another request id or payload) already used this create key")
                }
                let id = Self.unusedRandomID(among: s.vsmmus)
                // The creating connection's tenant (PROTOCOL.md §3.3: host devices are per tenant).
                let tenant = s.connections[connection.id]?.tenant ?? Self.newTenant()
                s.connections[connection.id]?.tenant = tenant
                let served = ServedVSMMU(id: id, name: create.name, owner: connection.id,
                                         ownerCredentials: connection.credentials,
                                         engine: VSMMUEngine(configuration: configuration.engine), tenant: tenant, token: token,
                                         createKey: create.createKey,
                                         fileDescriptorStore: configuration.fileDescriptorStore,
                                         eventService: eventService)
                s.vsmmus[id] = served
                return served
            }
            connection.logger.info("vSMMU created", metadata: ["vsmmu": "\(served.id.rawValue)", "name": "\(create.name)"])
            return .createVSMMU(VSMMUCreated(vsmmu: served.id, resumeToken: token))

        case .destroyVSMMU(let destroy):
            let served = try owned(destroy.vsmmu, by: connection, type: type)
            let failures = served.tearDown()
            state.withLock { _ = $0.vsmmus.removeValue(forKey: served.id) }
            connection.logger.info("vSMMU destroyed", metadata: ["vsmmu": "\(served.id.rawValue)", "failures": "\(failures)"])
            return .destroyVSMMU

        case .attachViommu(let attach):
            // §2.2 step 5: a missing fd is refused before the request's meaning is looked at.
            if attach.fileDescriptorAttached && fileDescriptor == nil {
                throw .badFileDescriptor(.missing, type: type)
            }
            let served = try owned(attach.vsmmu, by: connection, type: type)
            guard let provider = providers[attach.pSMMU] else { throw .unknownPSMMU(attach.pSMMU, type: type) }
            let fd = fileDescriptor
            fileDescriptor = nil
            // The fd store gets its own duplicate of the VMM's iommufd once the viommu exists (PROTOCOL.md §5.14).
            var storeCopy: Int32?
            if case .iommufd = provider, let fd { storeCopy = dup(fd) }
            defer { if let storeCopy { _ = Glibc.close(storeCopy) } }
            let backend = try provider.backend(for: fd, type: type, tenant: served.tenant)
            // Its events come to the event service from now on; routed to this viommu once it exists.
            let eventDomain = eventService.connect(backend, provider: provider)
            let index: ViommuIndex
            do throws(EngineError) {
                index = try served.engine.attachViommu(
                    pSMMU: attach.pSMMU, backend: backend,
                    request: ViommuAttachRequest(hostDeviceID: attach.hostDeviceID, nestParentHWPT: attach.nestParentHWPT))
            } catch {
                // The VMM's fd is not an iommufd (no such ioctl on it, or not an open file).
                if case .iommufd = provider, case .backend(let backendError) = error,
                   let errno = backendError.errno, errno == ENOTTY || errno == EBADF {
                    throw .badFileDescriptor(.unusable, type: type, errno: errno, message: "the fd is not a usable iommufd: \(backendError)")
                }
                throw Self.protocolError(error, type: type, viommu: nil)
            }
            if let storeCopy, storeCopy >= 0, let error = served.storeDescriptor(storeCopy, name: ServedVSMMU.iommufdName(served.id, index)) {
                connection.logger.error("cannot hand the VMM's iommufd to the fd store: a later restart needs it from the VMM again",
                                        metadata: ["vsmmu": "\(served.id.rawValue)", "viommu": "\(index.rawValue)", "error": "\(error)"])
            }
            for (queue, error) in served.storeEventQueues() {
                connection.logger.error("cannot hand a vEVENTQ to the fd store: its events do not outlive a restart",
                                        metadata: ["vsmmu": "\(served.id.rawValue)", "viommu": "\(queue.rawValue)", "error": "\(error)"])
            }
            let binding = served.engine.viommu(index)
            if let binding { eventService.route(eventDomain, handle: binding.handle, to: served, viommu: index) }
            let handle = binding?.handle.rawValue ?? 0
            return .attachViommu(ViommuAttached(viommu: UInt32(index.rawValue), backendViommuID: handle))

        case .detachViommu(let detach):
            let served = try owned(detach.vsmmu, by: connection, type: type)
            let index = try viommuIndex(detach.viommu, on: served, type: type)
            // The store's copy of the vEVENTQ goes first: while it is open the kernel refuses to destroy the
            // queue (EBUSY), and with it the viommu.
            served.removeDescriptor(name: ServedVSMMU.eventQueueName(served.id, index))
            do throws(EngineError) { try served.engine.detachViommu(index) } catch {
                throw Self.protocolError(error, type: type, viommu: detach.viommu)
            }
            // Its later events are orphaned (it had no registered device left: a refused detach keeps its route).
            eventService.unroute(served, viommu: index)
            served.removeDescriptor(name: ServedVSMMU.iommufdName(served.id, index))
            return .detachViommu

        case .setDeviceID(let registration):
            // §2.2 step 5: a missing fd is refused before the request's meaning is looked at.
            if registration.fileDescriptorAttached && fileDescriptor == nil {
                throw .badFileDescriptor(.missing, type: type)
            }
            if registration.fileDescriptorAttached && connection.version < 2 {
                throw .badFileDescriptor(.unexpected, type: type,
                                         message: "SET_DEV_ID carries the device's VFIO cdev from protocol version 2 on; this connection speaks version \(connection.version)")
            }
            let served = try owned(registration.vsmmu, by: connection, type: type)
            let index = try viommuIndex(registration.viommu, on: served, type: type)
            // After a restart: the registration repeated to hand the VFIO cdev back (PROTOCOL.md §5.14).
            if try resupplied(viommu: index, hostDeviceID: registration.hostDeviceID, streamID: registration.streamID,
                              on: served, fileDescriptor: &fileDescriptor, type: type) {
                return .setDeviceID
            }
            let pSMMU = served.engine.viommu(index)?.pSMMU
            if let pSMMU, case .iommufd = providers[pSMMU], fileDescriptor == nil {
                throw .badFileDescriptor(.missing, type: type,
                                         message: "viommu \(index.rawValue) is on the iommufd pSMMU \(pSMMU): SET_DEV_ID must pass the device's VFIO cdev (protocol version 2), through which the daemon attaches the device")
            }
            let simulated = pSMMU.flatMap { providers[$0] }?.isSimulated ?? false
            var fd = fileDescriptor
            fileDescriptor = nil
            // The fd store gets its own duplicate of an iommufd device's cdev once it is registered.
            var storeCopy: Int32?
            if let pSMMU, case .iommufd = providers[pSMMU], let fd { storeCopy = dup(fd) }
            defer { if let storeCopy { _ = Glibc.close(storeCopy) } }
            if simulated, let unneeded = fd {
                // A simulated pSMMU attaches by host device id: the cdev is not needed (and a retry needs none).
                _ = close(unneeded)
                fd = nil
            }
            do throws(EngineError) {
                do throws(EngineError) {
                    try served.engine.setDeviceID(viommu: index, device: HostDevice(id: registration.hostDeviceID, vfioDevice: fd),
                                                  streamID: registration.streamID)
                } catch {
                    // The device is held by another vSMMU of this tenant. When that one's owner has gone and
                    // its teardown is under way, wait for it, then retry once (PROTOCOL.md §3.3: a quick VMM
                    // restart never sees a ghost). The retry is unconditional: the teardown may have ended
                    // between the refusal and the look at the owners, and then there is nothing left to wait
                    // for but the device is free. A device a live vSMMU holds is refused again, unchanged.
                    guard simulated, case .backend(let backendError) = error, backendError.kind == .alreadyExists else { throw error }
                    awaitTeardownOfGoneOwners(colliding: served)
                    try served.engine.setDeviceID(viommu: index, device: HostDevice(id: registration.hostDeviceID),
                                                  streamID: registration.streamID)
                }
            } catch {
                // The fd is not a VFIO cdev bound to the VMM's iommufd, behind this viommu's pSMMU.
                if case .backend(let backendError) = error, backendError.kind == .unusableDescriptor {
                    throw .badFileDescriptor(.unusable, type: type, errno: backendError.errno ?? 0,
                                             message: "the fd is not a usable VFIO device cdev: \(backendError)")
                }
                throw Self.protocolError(error, type: type, viommu: registration.viommu)
            }
            if let storeCopy, storeCopy >= 0,
               let error = served.storeDescriptor(storeCopy, name: ServedVSMMU.cdevName(served.id, registration.streamID)) {
                connection.logger.error("cannot hand a VFIO cdev to the fd store: a later restart needs it from the VMM again",
                                        metadata: ["vsmmu": "\(served.id.rawValue)", "stream_id": "\(registration.streamID)", "error": "\(error)"])
            }
            return .setDeviceID

        case .unsetDeviceID(let registration):
            let served = try owned(registration.vsmmu, by: connection, type: type)
            guard let device = served.engine.device(registration.streamID) else {
                throw .unknownStreamID(registration.streamID, type: type)
            }
            guard UInt32(device.viommu.rawValue) == registration.viommu else {
                throw .badField(type, offset: DeviceRegistration.Field.viommu.rawValue, value: UInt64(registration.viommu),
                                "StreamID 0x\(String(registration.streamID, radix: 16)) is registered behind viommu \(device.viommu.rawValue)")
            }
            guard device.hostDeviceID == registration.hostDeviceID else {
                throw .badField(type, offset: DeviceRegistration.Field.hostDeviceID.rawValue, value: UInt64(registration.hostDeviceID),
                                "StreamID 0x\(String(registration.streamID, radix: 16)) is registered for host device \(device.hostDeviceID)")
            }
            do throws(EngineError) { try served.engine.unsetDeviceID(streamID: registration.streamID) } catch {
                throw Self.protocolError(error, type: type, viommu: registration.viommu)
            }
            served.removeDescriptor(name: ServedVSMMU.cdevName(served.id, registration.streamID))
            return .unsetDeviceID

        case .linkSTE(let link):
            let served = try owned(link.vsmmu, by: connection, type: type)
            let limit = Int(connection.limits.maximumContextDescriptors)
            guard link.contextDescriptors.count <= limit else {
                throw .limitExceeded(limit: limit, asked: UInt64(link.contextDescriptors.count), type: type,
                                     "at most \(limit) CDs per LINK_STE")
            }
            let change: VSMMU.HWPTChange
            do throws(EngineError) {
                change = try served.engine.link(streamID: link.streamID, ste: link.ste, contextDescriptors: link.contextDescriptors)
            } catch {
                throw Self.protocolError(error, type: type, viommu: nil)
            }
            return .linkSTE(HWPTLinked(s1HWPT: change.current?.rawValue, isNew: change.current != nil && change.isNew))

        case .unlinkSTE(let unlink):
            let served = try owned(unlink.vsmmu, by: connection, type: type)
            do throws(EngineError) { try served.engine.unlink(streamID: unlink.streamID) } catch {
                throw Self.protocolError(error, type: type, viommu: nil)
            }
            return .unlinkSTE

        case .updateCD(let update):
            let served = try owned(update.vsmmu, by: connection, type: type)
            let change: VSMMU.HWPTChange
            do throws(EngineError) {
                change = try served.engine.updateContextDescriptor(streamID: update.streamID, substreamID: update.substreamID,
                                                                   update.contextDescriptor)
            } catch {
                throw Self.protocolError(error, type: type, viommu: nil)
            }
            return .updateCD(HWPTLinked(s1HWPT: change.current?.rawValue, isNew: change.current != nil && change.isNew))

        case .getHWInfo(let request):
            let served = try owned(request.vsmmu, by: connection, type: type)
            let infos: [(viommu: ViommuIndex, registers: IDRegisters)]
            do throws(EngineError) { infos = try served.engine.hardwareInfo() } catch {
                throw Self.protocolError(error, type: type, viommu: nil)
            }
            guard let common = IDRegisters.advertised(infos.map(\.registers)) else {
                throw .unknownViommu(WireProtocol.noErrorIndex, type: type,
                                     message: "vSMMU \(request.vsmmu.rawValue) has no viommu yet: its ID registers are what every pSMMU behind it supports, so attach them first")
            }
            return .getHWInfo(HardwareInfo(viommuCount: UInt32(infos.count), registers: common))

        case .resumeVSMMU(let request):
            // The VMM's iommufd handed back with RESUME: taken by an iommufd vSMMU that awaits it (PROTOCOL.md
            // §5.14); closed by the caller otherwise. The connection joins the vSMMU's tenant.
            let outcome = try resume(request.vsmmu, token: request.resumeToken.bytes, connection: connection, type: type,
                                     iommufd: &fileDescriptor)
            join(tenantOf: outcome.vsmmu, connection: connection.id)
            return .resumeVSMMU(VSMMUResumed(vsmmu: outcome.vsmmu, viommuCount: outcome.viommuCount,
                                             deviceCount: outcome.deviceCount, lastRequestID: outcome.lastRequestID))

        case .mapQueue(let map):
            return try mapQueue(map, connection: &connection)

        case .unmapQueue(let unmap):
            return try unmapQueue(unmap, connection: connection)

        case .mapEventQueue(let map):
            return try mapEventQueue(map, connection: &connection)

        case .unmapEventQueue(let unmap):
            return try unmapEventQueue(unmap, connection: connection)

        case .simulateDMA(let dma):
            return try simulateDMA(dma, connection: connection)

        case .invalidate(let invalidate):
            return try invalidate.commands.withUnsafeBufferPointer { (commands) throws(ProtocolError) -> Response in
                try self.invalidate(invalidate.vsmmu, commands: commands, connection: connection)
            }

        case .stats(let stats):
            try checkAdmin(connection, type: type)
            return .stats(try statistics(of: stats.vsmmu, type: type))

        case .list(let list):
            try checkAdmin(connection, type: type)
            return .list(try listing(list, type: type, awaitingOwnerFlag: connection.version >= 3))

        case .health:
            try checkAdmin(connection, type: type)
            return .health(health())
        }
    }

    /// INVALIDATE: submits `commands` to the vSMMU `id` that `connection` owns and waits for the batch's
    /// CMD_SYNCs. Shared by ``apply(_:connection:fileDescriptor:)`` and the connection's fast path, which
    /// decodes the commands straight from its receive buffer.
    /// - Throws: `SHUTTING_DOWN`, `UNKNOWN_VSMMU`, `NOT_OWNER`, `LIMIT_EXCEEDED`.
    func invalidate(_ id: VSMMUID, commands: UnsafeBufferPointer<Command>,
                    connection: Connection) throws(ProtocolError) -> Response {
        let type = MessageType.invalidate
        if isStopping { throw .shuttingDown(type: type) }
        let served = try owned(id, by: connection, type: type)
        if let refusal = awaitingDescriptorsRefusal(served, type: type) { throw refusal }
        let limit = Int(connection.limits.maximumCommandsPerInvalidate)
        guard commands.count <= limit else {
            throw .limitExceeded(limit: limit, asked: UInt64(commands.count), type: type,
                                 "at most \(limit) commands per INVALIDATE")
        }
        let start = POSIX.monotonicNanoseconds()
        let result = served.engine.execute(commands)
        let latency = POSIX.monotonicNanoseconds() &- start
        served.statistics.withLock { stats in
            stats.invalidateRequests += 1
            if result.syncs > 0 { stats.recordSync(latencyNanoseconds: latency) }
        }
        let failure = result.failure.map {
            InvalidateReply.Failure(index: UInt32($0.index), queueError: $0.queueError, message: $0.message)
        }
        return .invalidate(InvalidateReply(consumed: UInt32(result.consumed), syncsCompleted: UInt32(result.syncs),
                                           failure: failure))
    }

    /// The vSMMU `id` if `connection` owns it.
    ///
    /// Another connection's vSMMU gets exactly the answer of an id that never existed (`UNKNOWN_VSMMU`,
    /// same detail, value and message shape): a tenant cannot learn which ids are live. Ids are random
    /// (``unusedRandomID(among:)``), so none can be guessed or counted either (PROTOCOL.md §3.3).
    /// - Throws: `UNKNOWN_VSMMU`.
    func owned(_ id: VSMMUID, by connection: Connection, type: MessageType) throws(ProtocolError) -> ServedVSMMU {
        guard let served = state.withLock({ $0.vsmmus[id] }) else { throw .unknownVSMMU(id, type: type) }
        // Rebuilt from the journal and not resumed yet, being reclaimed, or another connection's: it does
        // not exist for this connection (no existence oracle).
        let owner = served.owner
        guard owner != 0, owner != UInt64.max, owner == connection.id else { throw .unknownVSMMU(id, type: type) }
        return served
    }

    /// A vSMMU id no vSMMU has: a uniformly random non-zero u32 from the system's cryptographic generator
    /// (getrandom(2) on Linux), so that ids reveal neither how many VMs the host runs nor which ids are
    /// live. With at most a few thousand live ids among 2^32 − 1, a draw collides with probability < 10^-6.
    static func unusedRandomID(among live: [VSMMUID: ServedVSMMU]) -> VSMMUID {
        var generator = SystemRandomNumberGenerator()
        while true {
            let id = VSMMUID(UInt32.random(in: 1...UInt32.max, using: &generator))
            if live[id] == nil { return id }
        }
    }

    /// A viommu index on the wire (u32) as the engine's, if that viommu is attached.
    /// - Throws: `UNKNOWN_VIOMMU`.
    private func viommuIndex(_ raw: UInt32, on served: ServedVSMMU, type: MessageType) throws(ProtocolError) -> ViommuIndex {
        guard raw < UInt32(VSMMU.maximumViommus), served.engine.isAttached(ViommuIndex(Int(raw))) else {
            throw .unknownViommu(raw, type: type)
        }
        return ViommuIndex(Int(raw))
    }

    /// Admin requests are served to root and to the daemon's own uid; others get `NOT_OWNER`.
    private func checkAdmin(_ connection: Connection, type: MessageType) throws(ProtocolError) {
        guard let uid = connection.credentials?.userID, uid == 0 || uid == getuid() else {
            throw .notOwner(nil, type: type)
        }
    }

    /// The ERROR answering an engine refusal (PROTOCOL.md §4-5).
    static func protocolError(_ error: EngineError, type: MessageType, viommu: UInt32?) -> ProtocolError {
        switch error {
        case .vsmmu(let e):
            switch e {
            case .tooManyViommus(let limit):
                return .limitExceeded(limit: limit, asked: UInt64(limit + 1), type: type, e.description)
            case .pSMMUAlreadyAttached(_, let index):
                return .alreadyExists(.pSMMU, value: UInt64(index.rawValue), type: type, e.description)
            case .unknownViommu(let index):
                return .unknownViommu(UInt32(index.rawValue), type: type)
            case .viommuInUse(let index, let streamIDs):
                return .inUse(UInt64(index.rawValue), dependents: streamIDs.count, type: type, e.description)
            case .streamIDInUse(let streamID, _, _):
                return .alreadyExists(.streamID, value: UInt64(streamID), type: type, e.description)
            case .deviceAlreadyRegistered(let hostDeviceID, _):
                return .alreadyExists(.hostDevice, value: UInt64(hostDeviceID), type: type, e.description)
            case .unknownStreamID(let streamID):
                return .unknownStreamID(streamID, type: type)
            case .invalidSTE(_, let reason):
                return .invalidSTE(reason, type: type)
            case .tooManyContextDescriptors(_, let given, _):
                return .invalidSTE(.tooManyContextDescriptors, value: UInt64(given), type: type, e.description)
            case .substreamOutOfRange(_, let substreamID, _):
                return .invalidSTE(.substreamOutOfRange, value: UInt64(substreamID), type: type, e.description)
            case .notTranslating(let streamID):
                return .invalidSTE(.notTranslating, value: UInt64(streamID), type: type, e.description)
            }
        case .backend(let e):
            return .backendFailure(errno: e.errno, viommu: viommu, type: type, e.description)
        case .queue(let e):
            return .internalError(type: type, "viommu queue: \(e)")
        case .stopped:
            return .shuttingDown(type: type)
        }
    }
}
