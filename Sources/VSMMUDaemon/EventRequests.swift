import InvalidationEngine
import PSMMU
import SMMUv3
import VirtualSMMU
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

/// MAP_EVENT_QUEUE, UNMAP_EVENT_QUEUE and SIMULATE_DMA (PROTOCOL.md §5.17, §5.18, §6.4, §9).
extension VSMMUServer {
    /// MAP_EVENT_QUEUE: checks the two fds `connection` claimed with the frame, maps the memory and writes
    /// the vSMMU's events into it from now on; or, with the memfd its queue already maps (a VMM after
    /// RESUME_VSMMU, the daemon having re-mapped it from the fd store), takes the new call eventfd. A
    /// refusal closes both fds and changes nothing.
    func mapEventQueue(_ request: MapEventQueue, connection: inout Connection) throws(ProtocolError) -> Response {
        let type = MessageType.mapEventQueue
        let fds = connection.takeQueueDescriptors()
        var adopted = false
        defer { if !adopted { for fd in fds { _ = Glibc.close(fd) } } }
        guard fds.count == type.fileDescriptorCount else { throw .badFileDescriptor(.missing, type: type) }
        let served = try owned(request.vsmmu, by: connection, type: type)
        let limit = eventQueueEntries
        let entries = 1 << Int(request.log2Entries)
        guard entries <= limit else {
            throw .limitExceeded(limit: limit, asked: UInt64(entries), type: type,
                                 "an event queue has at most \(limit) slots ([limits] event_queue_entries)")
        }
        let (memory, call) = (fds[0], fds[1])
        if let existing = served.events.queue.withLock({ $0 }) {
            guard let queue = existing as? EventQueueService, let identity = QueueDescriptorChecks.identity(of: memory),
                  identity.device == queue.device, identity.inode == queue.inode else {
                throw .alreadyExists(.eventQueue, value: 0, type: type,
                                     "vSMMU \(request.vsmmu.rawValue) has an event queue over other memory: UNMAP_EVENT_QUEUE it first")
            }
            do throws(QueueRefusal) { try QueueDescriptorChecks.checkEventFD(call, "call") } catch {
                throw error.protocolError(type)
            }
            adopted = true
            _ = Glibc.close(memory) // the mapping's own memfd stays
            queue.replaceCall(call)
            storeEventQueueDescriptors(queue, of: served, connection: connection)
            return .mapEventQueue(EventQueueMapped(producer: queue.producerPosition))
        }
        let queue: EventQueueService
        do throws(QueueRefusal) {
            queue = try EventQueueService(memory: memory, call: call, log2Entries: Int(request.log2Entries), vsmmu: served.id)
        } catch {
            throw error.protocolError(type)
        }
        adopted = true
        // Another MAP_EVENT_QUEUE cannot race this one (the owner's requests are handled in order on its thread).
        _ = served.events.replaceQueue(with: queue)
        storeEventQueueDescriptors(queue, of: served, connection: connection)
        let prod = queue.producerPosition
        connection.logger.info("event queue mapped", metadata: [
            "vsmmu": "\(served.id.rawValue)", "entries": "\(entries)", "prod": "\(prod)",
        ])
        return .mapEventQueue(EventQueueMapped(producer: prod))
    }

    /// UNMAP_EVENT_QUEUE: ends the vSMMU's event queue, if it has one.
    func unmapEventQueue(_ request: UnmapEventQueue, connection: Connection) throws(ProtocolError) -> Response {
        let served = try owned(request.vsmmu, by: connection, type: .unmapEventQueue)
        served.endEventQueue()
        return .unmapEventQueue
    }

    /// SIMULATE_DMA: the device the vSID names makes one access through its viommu's pSMMU; a fault's event
    /// goes through the event queue as well (the backend pushes it to the event service before it returns).
    /// - Throws: `UNKNOWN_VSMMU`, `UNKNOWN_STREAM_ID`, `UNSUPPORTED` (a backend without simulated devices),
    ///   `BACKEND_FAILURE`.
    func simulateDMA(_ request: SimulateDMA, connection: Connection) throws(ProtocolError) -> Response {
        let type = MessageType.simulateDMA
        let served = try owned(request.vsmmu, by: connection, type: type)
        if let refusal = awaitingDescriptorsRefusal(served, type: type) { throw refusal }
        guard let device = served.engine.device(request.streamID),
              let backend = served.engine.backend(of: device.viommu) else {
            throw .unknownStreamID(request.streamID, type: type)
        }
        guard let walk = StageOneWalk(rawValue: request.walk.rawValue) else {
            throw .badField(type, offset: 32, value: UInt64(request.walk.rawValue), "walk \(request.walk.rawValue) is not defined")
        }
        let access = SimulatedDMA(hostDeviceID: device.hostDeviceID, substreamID: request.substreamID, address: request.address,
                                  size: request.size, write: request.write, throughATS: request.throughATS, walk: walk)
        let outcome: DMAOutcome
        do throws(BackendError) { outcome = try backend.simulateDMA(access) } catch {
            let viommu = UInt32(device.viommu.rawValue)
            if error.kind == .unsupported {
                throw .unsupported(viommu: viommu, type: type,
                                   "viommu \(viommu) is on pSMMU \(backend.name), whose backend has no simulated devices")
            }
            throw .backendFailure(errno: error.errno, viommu: viommu, type: type, error.description)
        }
        let reply: SimulatedDMAOutcome
        switch outcome {
        case .atcHit: reply = .atcHit
        case .tlbHit: reply = .tlbHit
        case .tlbFill: reply = .tlbFill
        case .bypassed: reply = .bypassed
        case .aborted: reply = .aborted
        case .fault(var record):
            // The SMMU wrote the physical StreamID; the guest sees its vSID (`arm_vmaster_report_event`).
            record.streamID = request.streamID
            reply = .fault(record)
        }
        return .simulateDMA(DMASimulated(outcome: reply))
    }

    /// Hands the event queue's two descriptors to the fd store (the store duplicates them), replacing what
    /// it held under their names. A failure is logged: the VMM maps the queue again after a restart.
    private func storeEventQueueDescriptors(_ queue: EventQueueService, of served: ServedVSMMU, connection: Connection) {
        let names = EventQueueService.storeNames(served.id)
        let fds = queue.descriptors
        served.replaceStoredQueueDescriptors([(fds.memory, names.memory), (fds.call, names.call)],
                                             queue: "an event queue", logger: connection.logger)
    }

    /// At recovery: the event queue of vSMMU `id` from the descriptors the fd store handed back, checked as
    /// MAP_EVENT_QUEUE checks them and mapped (its sequence goes on from the slot before PROD). `nil` (the
    /// descriptors closed, their names out of the store) when they are missing or refused: the VMM maps it
    /// again after RESUME_VSMMU.
    func recoveredEventQueue(_ id: VSMMUID, take: (String) -> Int32?) -> EventQueueService? {
        let names = EventQueueService.storeNames(id)
        let memory = take(names.memory), call = take(names.call)
        func drop(_ reason: String) -> EventQueueService? {
            for fd in [memory, call].compactMap({ $0 }) { _ = Glibc.close(fd) }
            for name in [names.memory, names.call] { configuration.fileDescriptorStore?.remove(name: name) }
            logger.warning("an event queue the fd store handed back is not mapped again: its VMM maps it after RESUME",
                           metadata: ["vsmmu": "\(id.rawValue)", "reason": "\(reason)"])
            return nil
        }
        guard memory != nil || call != nil else { return nil }
        guard let memory, let call else { return drop("not both descriptors came back") }
        do throws(QueueRefusal) {
            return try EventQueueService(memory: memory, call: call, log2Entries: nil, vsmmu: id)
        } catch {
            return drop(error.message)
        }
    }
}
