import CSocketShims
import SMMUv3
import SharedQueue
import SystemPackage
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

// Concurrency notes (PROTOCOL.md §9).
//
// An `EventQueue` is used by one thread at a time, like its client (the VMM's thread that fills the guest's
// EVTQ, or the client's thread). The memory it maps is shared with the daemon, which writes PROD, the slots
// and `state` at any moment: every access goes through `EventQueueConsumer` and its `EventQueueRegion`, one
// atomic access per field. The only blocking is `poll` on the call eventfd and the client's socket
// (``EventQueue/wait(spinIterations:)``). A wait that polls the socket must not run while another thread
// uses the client for a request: the client is not thread-safe.

/// A vSMMU's event queue (PROTOCOL.md §9), mapped by ``VSMMUClient/mapEventQueue(vsmmu:log2Entries:)``: the
/// daemon writes the events of the vSMMU's devices (F_TRANSLATION, C_BAD_STE, …, with the guest's vSID)
/// into memory the VMM reads and copies into its guest's EVTQ.
///
/// ```swift
/// let events = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 6)
/// while let event = events.next() {                 // copy into the guest's EVTQ…
///     if event.lostBefore { /* events were dropped just before this one */ }
/// }
/// if events.acknowledgeOverflow() { /* toggle the guest's EVTQ_PROD.OVFLG */ }
/// _ = try events.wait()                             // or poll `readinessFD` in an event loop
/// ```
///
/// With a ``VSMMUClient/Reconnect`` policy the client maps the same memory again with a fresh call eventfd
/// after a reconnect and RESUME_VSMMU (§9.7); the events not read yet stay where they are.
///
/// Not thread-safe. Dropping the last reference without ``unmap()`` unmaps this side's memory and closes its
/// descriptors but sends nothing: the daemon keeps writing its own mapping until UNMAP_EVENT_QUEUE,
/// DESTROY_VSMMU or the connection's end.
public final class EventQueue {
    /// The vSMMU whose queue this is.
    public let vsmmu: VSMMUID
    /// 2^n slots.
    public let geometry: EventQueueGeometry
    /// The client whose connection the queue was mapped on (the socket a wait also polls).
    public let client: VSMMUClient
    /// The memfd (`MFD_CLOEXEC | MFD_ALLOW_SEALING`, sealed with `F_SEAL_SHRINK`), kept for re-mapping.
    public let memory: Int32
    /// The call eventfd (daemon → VMM), non-blocking: the fd to add to an event loop. Readable when the
    /// daemon signalled (it does only when ``prepareToSleep()`` said so); replaced by a re-map.
    public private(set) var readinessFD: Int32
    /// The consumer: CONS, the copies and the overflow acknowledgement over the mapping.
    public private(set) var consumer: EventQueueConsumer
    /// Whether the queue is mapped (until ``unmap()``, or the client's DESTROY_VSMMU of its vSMMU).
    public private(set) var isMapped = true
    /// The PROD the daemon's last MAP_EVENT_QUEUE reply named (where it writes its next event).
    public private(set) var mappedProducer: UInt32
    /// How many times the client mapped this memory again after a reconnect.
    public internal(set) var remapCount = 0
    /// How many looks at PROD ``wait(spinIterations:)`` makes before it sleeps, by default.
    public var spinIterations = EventQueue.defaultSpinIterations
    let base: UnsafeMutableRawPointer
    let length: Int
    private var released = false

    /// The default spin of a wait: 2,000 looks (a few µs). Events are rare, unlike a CMD_SYNC's completion
    /// (``SharedQueueProducer/defaultSpinIterations``), so a waiter sleeps almost at once.
    public static let defaultSpinIterations = 2_000

    init(vsmmu: VSMMUID, geometry: EventQueueGeometry, client: VSMMUClient, memory: Int32, call: Int32,
         base: UnsafeMutableRawPointer, length: Int, consumer: EventQueueConsumer, producer: UInt32) {
        self.vsmmu = vsmmu
        self.geometry = geometry
        self.client = client
        self.memory = memory
        self.readinessFD = call
        self.base = base
        self.length = length
        self.consumer = consumer
        self.mappedProducer = producer
    }

    deinit {
        if isMapped { client.eventQueues[vsmmu] = nil }
        release()
    }

    /// Unmaps the memory and closes the two descriptors (once).
    private func release() {
        guard !released else { return }
        released = true
        try? SystemCall.unmap(base, length: length)
        for fd in [memory, readinessFD] where fd >= 0 { close(fd) }
    }

    /// The typed view of the mapping.
    public var region: EventQueueRegion { consumer.region }

    // MARK: Reading

    /// One look at PROD and `state` (no system call).
    public func poll() -> EventQueuePoll { consumer.poll() }

    /// The next event, or `nil` when there is none now (no system call).
    public func next() -> EventQueueEntry? { consumer.next() }

    /// Every event published now (at most `limit`), in order, with CONS stored once past them.
    public func drain(limit: Int = .max) -> [EventQueueEntry] { consumer.drain(limit: limit) }

    /// Whether events were dropped since the last acknowledgement (PROD.OVFLG ≠ CONS.OVACKFLG, as of the last
    /// look).
    public var overflowPending: Bool { consumer.overflowPending }

    /// Acknowledges an overflow: OVACKFLG = OVFLG in CONS (the kernel's `queue_sync_cons_ovf`). Returns
    /// whether there was one (the VMM then toggles its guest's EVTQ_PROD.OVFLG).
    @discardableResult
    public func acknowledgeOverflow() -> Bool { consumer.acknowledgeOverflow() }

    /// The first half of going to sleep in an event loop of the caller's: `vmm_sleeping` = 1, a fence, a look.
    /// `true`: poll ``readinessFD``, then call ``clearReadiness()``; `false`: something is new (read it).
    public func prepareToSleep() -> Bool { consumer.prepareToSleep() }

    /// After ``readinessFD`` was readable (or a sleep ended): clears its count (non-blocking: the daemon
    /// shares the open file and set `O_NONBLOCK`; `eventfd_read` answers `EAGAIN` on a zero count) and
    /// stores `vmm_sleeping` = 0.
    public func clearReadiness() throws(VSMMUClientError) {
        defer { consumer.wokeUp() }
        do throws(Errno) { _ = try SystemCall.readEventNoWait(readinessFD) } catch { throw .system("read (call eventfd)", error) }
    }

    /// Blocks until there is something to read: events, an overflow, a stop (`state` = STOPPED) or a corrupt
    /// PROD (``EventQueuePoll/invalidProducer``); spins `spinIterations` looks, then sleeps on the call
    /// eventfd and the client's socket (§9.5).
    /// - Returns: the look that found it.
    /// - Throws: ``VSMMUClientError/connectionClosed`` when the socket became readable (end of stream: no
    ///   request is outstanding while a wait runs) and the client has no reconnect policy, or a reconnect
    ///   failure; a transport error of `poll` or the eventfd. With a policy the client reconnects, resumes the
    ///   vSMMU, maps this memory again (``remap()``) and the wait goes on.
    public func wait(spinIterations: Int? = nil) throws(VSMMUClientError) -> EventQueuePoll {
        let spins = max(0, spinIterations ?? self.spinIterations)
        while true {
            guard isMapped else { return EventQueuePoll(available: 0, overflow: false, state: EventQueueLayout.State.stopped.rawValue) }
            for _ in 0...spins {
                let look = consumer.poll()
                if look.hasNews, let answer = try settled(look) { return answer }
            }
            guard consumer.prepareToSleep() else { continue }
            var fds = [pollfd(fd: readinessFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: client.fileDescriptor, events: Int16(POLLIN), revents: 0)]
            do throws(Errno) { _ = try SystemCall.poll(&fds, timeoutMilliseconds: -1) } catch {
                consumer.wokeUp()
                throw .system("poll", error)
            }
            // Call first: a daemon that ends the queue writes STOPPED and signals call before it closes the
            // connection, and the next look reports the stop.
            if fds[0].revents & Int16(POLLIN) != 0 {
                try clearReadiness()
                continue
            }
            consumer.wokeUp()
            if fds[1].revents != 0 { try connectionLost(.connectionClosed) }
        }
    }

    /// A look that found news: a STOPPED queue whose connection then closes too (the daemon stopping) is
    /// recovered with a reconnect policy, and the wait goes on (`nil`), as after a lost connection;
    /// otherwise the look is the answer.
    private func settled(_ look: EventQueuePoll) throws(VSMMUClientError) -> EventQueuePoll? {
        guard look.isStopped, look.available == 0, client.reconnect != nil else { return look }
        var fds = [pollfd(fd: client.fileDescriptor, events: Int16(POLLIN), revents: 0)]
        let closing: Bool
        do throws(Errno) { closing = try SystemCall.poll(&fds, timeoutMilliseconds: QueueSignals.stopGraceMilliseconds) > 0 } catch {
            throw .system("poll", error)
        }
        guard closing else { return look }
        try connectionLost(.connectionClosed)
        return nil
    }

    /// The connection is gone: reconnect, resume and re-map with a policy (§9.7), else throw.
    private func connectionLost(_ failure: VSMMUClientError) throws(VSMMUClientError) {
        guard client.reconnect != nil else { throw failure }
        try client.recoverQueues(after: failure)
    }

    // MARK: Life

    /// UNMAP_EVENT_QUEUE: the daemon stops writing and lets go of the memory; then this side unmaps it and
    /// closes the descriptors. Events not read are lost (§5.18).
    public func unmap() throws(VSMMUClientError) {
        guard isMapped else { return }
        isMapped = false
        client.eventQueues[vsmmu] = nil
        defer { release() }
        _ = try client.call(.unmapEventQueue(UnmapEventQueue(vsmmu: vsmmu)))
    }

    /// The vSMMU was destroyed by this client: the daemon dropped the queue.
    func dropped() { isMapped = false }

    /// Sends MAP_EVENT_QUEUE for this memory again with a fresh call eventfd on the client's current
    /// connection (after a reconnect and RESUME_VSMMU, §9.7). The daemon checks the memory again and goes on
    /// from the PROD in it; this side goes on from its CONS.
    func remap() throws(VSMMUClientError) {
        let fresh: Int32
        do throws(Errno) { fresh = try SystemCall.eventFD() } catch { throw .system("eventfd", error) }
        do throws(VSMMUClientError) {
            mappedProducer = try client.sendMapEventQueue(vsmmu: vsmmu, log2Entries: geometry.log2Entries, fds: [memory, fresh]).producer
        } catch {
            close(fresh)
            throw error
        }
        close(readinessFD)
        readinessFD = fresh
        remapCount += 1
    }
}

extension VSMMUClient {
    /// MAP_EVENT_QUEUE (version 5): makes the vSMMU's event queue — a memfd of the layout of PROTOCOL.md §9.1
    /// (`MFD_CLOEXEC | MFD_ALLOW_SEALING`, sized with `ftruncate`, sealed with `F_SEAL_SHRINK`, which
    /// `memfd_add_seals` records and `shmem_setattr` then enforces by refusing to shrink the file, so the
    /// daemon's mapping stays backed) and a call eventfd (`EFD_CLOEXEC | EFD_NONBLOCK`) — maps it,
    /// initialises the header (PROD = CONS = 0) and sends the two fds in one `SCM_RIGHTS` message. With a
    /// ``Reconnect`` policy the client maps it again on its own after a reconnect (§9.7).
    /// - Throws: the daemon's refusal (`ALREADY_EXISTS` detail 7: the vSMMU has an event queue;
    ///   `LIMIT_EXCEEDED`: more slots than its `event_queue_entries`; `UNKNOWN_MESSAGE_TYPE`: a version-4
    ///   daemon); `EINVAL` for `log2Entries` outside 4…12; a failed system call.
    public func mapEventQueue(vsmmu: VSMMUID, log2Entries: Int) throws(VSMMUClientError) -> EventQueue {
        guard let geometry = EventQueueGeometry(log2Entries: log2Entries) else {
            throw .transport(call: "mapEventQueue: log2Entries \(log2Entries) outside \(EventQueueLayout.log2EntriesRange)", errno: EINVAL)
        }
        let length = geometry.requiredSize
        let memory: Int32
        do throws(Errno) { memory = try SystemCall.memfdCreate("vsmmu-events-\(vsmmu.rawValue)") } catch { throw .system("memfd_create", error) }
        var base: UnsafeMutableRawPointer?
        var call: Int32 = -1
        do throws(VSMMUClientError) {
            do throws(Errno) { try SystemCall.truncate(memory, to: length) } catch { throw .system("ftruncate", error) }
            do throws(Errno) { try SystemCall.addSeals(VSMMU_F_SEAL_SHRINK, to: memory) } catch { throw .system("fcntl(F_ADD_SEALS)", error) }
            do throws(Errno) { base = try SystemCall.mapShared(memory, length: length) } catch { throw .system("mmap", error) }
            guard let base, let region = EventQueueRegion(base: base, length: length, geometry: geometry) else {
                throw .transport(call: "mmap: a mapping that is not 64-byte aligned", errno: EINVAL)
            }
            region.initialise()
            do throws(Errno) { call = try SystemCall.eventFD() } catch { throw .system("eventfd", error) }
            let reply = try sendMapEventQueue(vsmmu: vsmmu, log2Entries: log2Entries, fds: [memory, call])
            let queue = EventQueue(vsmmu: vsmmu, geometry: geometry, client: self, memory: memory, call: call, base: base,
                                   length: length, consumer: EventQueueConsumer(region: region), producer: reply.producer)
            eventQueues[vsmmu] = WeakEventQueue(queue)
            return queue
        } catch {
            if let base { try? SystemCall.unmap(base, length: length) }
            close(memory)
            if call >= 0 { close(call) }
            throw error
        }
    }

    /// Sends MAP_EVENT_QUEUE with `fds` (memory, call) and checks the reply.
    func sendMapEventQueue(vsmmu: VSMMUID, log2Entries: Int, fds: [Int32]) throws(VSMMUClientError) -> EventQueueMapped {
        guard case .mapEventQueue(let reply) = try call(.mapEventQueue(MapEventQueue(vsmmu: vsmmu, log2Entries: UInt32(log2Entries))),
                                                        fileDescriptors: fds) else { throw .badReply("MAP_EVENT_QUEUE") }
        return reply
    }

    /// UNMAP_EVENT_QUEUE by vSMMU (``EventQueue/unmap()`` also lets go of this side's memory).
    public func unmapEventQueue(vsmmu: VSMMUID) throws(VSMMUClientError) {
        if let queue = eventQueues[vsmmu]?.queue {
            try queue.unmap()
            return
        }
        _ = try call(.unmapEventQueue(UnmapEventQueue(vsmmu: vsmmu)))
    }

    /// SIMULATE_DMA (version 5, PROTOCOL.md §6.4): one access of a simulated device on a vSMMU this client
    /// owns. A fault's event also reaches the vSMMU's event queue, if one is mapped.
    /// - Throws: `UNSUPPORTED` when the device's pSMMU is not simulated; `UNKNOWN_STREAM_ID`; `BAD_FIELD`.
    public func simulateDMA(_ access: SimulateDMA) throws(VSMMUClientError) -> SimulatedDMAOutcome {
        guard case .simulateDMA(let reply) = try call(.simulateDMA(access)) else { throw .badReply("SIMULATE_DMA") }
        return reply.outcome
    }

    /// SIMULATE_DMA of the device `streamID` at `address` of a `size`-byte mapping whose stage-1 walk finds
    /// `walk`.
    public func simulateDMA(vsmmu: VSMMUID, streamID: StreamID, substreamID: SubstreamID? = nil, address: UInt64,
                            size: UInt64 = 4096, write: Bool = false, throughATS: Bool = false,
                            walk: DMAWalk) throws(VSMMUClientError) -> SimulatedDMAOutcome {
        try simulateDMA(SimulateDMA(vsmmu: vsmmu, streamID: streamID, substreamID: substreamID, write: write,
                                    throughATS: throughATS, address: address, size: size, walk: walk))
    }

    /// MAP_EVENT_QUEUE again for every mapped event queue of a resumed vSMMU, on the new connection (§9.7). A
    /// refusal other than a lost connection marks that queue unmapped (its waits end with STOPPED).
    func remapEventQueues(resumed: Set<VSMMUID>) throws(VSMMUClientError) {
        for (vsmmu, weak) in eventQueues.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            guard let queue = weak.queue, queue.isMapped, resumed.contains(vsmmu) else {
                weak.queue?.dropped()
                eventQueues[vsmmu] = nil
                continue
            }
            do throws(VSMMUClientError) { try queue.remap() } catch where !error.isConnectionFailure && error.code != .shuttingDown {
                queue.dropped()
                eventQueues[vsmmu] = nil
            }
        }
    }
}

/// The client's reference to an event queue it mapped (the queue owns the client, not the other way round).
struct WeakEventQueue {
    weak var queue: EventQueue?
    init(_ queue: EventQueue) { self.queue = queue }
}
