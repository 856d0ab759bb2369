import CSocketShims
import InvalidationEngine
import SharedQueue
import SMMUv3
import Synchronization
import SystemPackage
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

// Concurrency notes (PROTOCOL.md §8).
//
// Each mapped queue has one consumer thread (an OSThread), the only one that runs its
// SharedQueueConsumer, reads its kick eventfd and, while it runs, writes its call eventfd. It executes
// batches with the vSMMU's engine, which serialises submissions (the owner's INVALIDATE requests may run
// concurrently on the connection thread). The connection thread that maps, re-maps or unmaps a queue, the
// daemon's stop and a vSMMU's teardown talk to the consumer thread through `stopping` (an atomic, set with
// release and read with acquire) and the private `wakeFD` eventfd, and wait for it through the private
// `exitFD` eventfd before they join it. Those control operations are serialised by the service's
// `control` lock, which the consumer thread never takes; the eventfds it uses are handed to it when it
// starts and change only while no thread runs. `ServedVSMMU.sharedQueue`'s lock guards which service a
// vSMMU has, never a call into one.
//
// The VMM shares the memory and both eventfds' open files, so it can change anything in them at any moment:
// the mapping is read through SharedQueueRegion's single atomic accesses only; the kick count is read with
// RWF_NOWAIT, which never blocks whatever the file's O_NONBLOCK says; the call eventfd is made non-blocking
// at map time, and should the VMM make it blocking again and fill its count, a teardown that finds the
// thread stuck drains the count (RWF_NOWAIT) until the thread's write returns.

/// One shared command queue the daemon serves (PROTOCOL.md §5.15, §8): the VMM's memfd mapped, its kick
/// and call eventfds, and the consumer thread that polls, sleeps and executes.
final class SharedQueueService: @unchecked Sendable {
    /// The memfd (owned).
    let memoryFD: Int32
    /// The file the memfd is, by `st_dev` and `st_ino`: a MAP_QUEUE of the same file replaces the eventfds.
    let device: UInt64
    let inode: UInt64
    /// The kick eventfd (VMM → daemon) and the call eventfd (daemon → VMM), owned; replaced, under
    /// `control`, only while no thread runs (``descriptors`` reads them).
    private var kickFD: Int32
    private var callFD: Int32
    /// The mapping: exactly ``SharedQueueGeometry/requiredSize`` bytes, shared.
    let base: UnsafeMutableRawPointer
    let length: Int
    let consumer: SharedQueueConsumer
    /// Wakes the consumer thread from its sleep to end (the daemon's own eventfd).
    private let wakeFD: Int32
    /// Written by the consumer thread as it ends.
    private let exitFD: Int32
    private let stopping = Atomic<Bool>(false)
    /// Whether the ending thread stores `state` = STOPPED (not when it ends only to take new eventfds).
    private let storesStoppedOnExit = Atomic<Bool>(true)
    /// The consumer thread while it runs (under `control`).
    private var thread: OSThread?
    /// Whether the memory was unmapped: the service is finished (under `control`).
    private var closed = false

    /// The fd-store names of the three descriptors (PROTOCOL.md §8.6).
    static func storeNames(_ vsmmu: VSMMUID) -> (memory: String, kick: String, call: String) {
        let prefix = "queue-" + String(vsmmu.rawValue, radix: 16)
        return (prefix + "-memory", prefix + "-kick", prefix + "-call")
    }

    /// Why a queue's memory or eventfds are refused (``QueueRefusal``).
    typealias Refusal = QueueRefusal

    /// Checks and maps a queue's memory and eventfds as MAP_QUEUE does (PROTOCOL.md §5.15 steps 1-4), in
    /// the spec's order. `log2Entries` `nil` (a queue handed back by the fd store) takes n from the
    /// configuration line. Takes none of the fds: the caller closes them when this throws.
    init(memory: Int32, kick: Int32, call: Int32, log2Entries: Int?) throws(Refusal) {
        func memoryRefusal(_ errno: Int32 = 0, _ message: String) -> Refusal { .memory(errno, message) }
        // 1. A memfd sealed against shrinking, and its size.
        let file = try QueueDescriptorChecks.checkSealedMemfd(memory)
        let n = try QueueDescriptorChecks.log2Entries(log2Entries, of: memory)
        guard let geometry = SharedQueueGeometry(log2Entries: n) else {
            throw memoryRefusal(0, "log2_entries \(n) is outside \(SharedQueueLayout.log2EntriesRange)")
        }
        let size = geometry.requiredSize
        guard file.size >= size else {
            throw memoryRefusal(0, "the memfd holds \(file.size) bytes; a queue of 2^\(n) commands needs \(size)")
        }
        // 2. Kick and call.
        try QueueDescriptorChecks.checkEventFD(kick, "kick")
        try QueueDescriptorChecks.checkEventFD(call, "call")
        let mapped = try QueueDescriptorChecks.mapShared(memory, length: size)
        guard let region = SharedQueueRegion(base: mapped, length: size, geometry: geometry) else {
            try? SystemCall.unmap(mapped, length: size)
            throw memoryRefusal(0, "the mapping is not aligned")
        }
        // 3. The configuration line, read once.
        let configuration = region.loadConfiguration()
        var problem: String?
        if configuration.magic != SharedQueueLayout.magic {
            problem = "bad magic 0x\(String(configuration.magic, radix: 16)) (expected 0x\(String(SharedQueueLayout.magic, radix: 16)))"
        } else if configuration.version != SharedQueueLayout.version {
            problem = "layout version \(configuration.version) (expected \(SharedQueueLayout.version))"
        } else if Int(configuration.log2Entries) != n {
            problem = "the configuration line says log2_entries \(configuration.log2Entries), the request \(n)"
        } else {
            // 4. PROD and CONS, read once each.
            let prod = region.loadProducer(), cons = region.loadConsumer()
            if !geometry.isValid(prod) || !geometry.isValid(cons) {
                problem = "PROD 0x\(String(prod, radix: 16)) or CONS 0x\(String(cons, radix: 16)) is not a position of a queue of 2^\(n) commands"
            } else if geometry.distance(from: cons, to: prod) > geometry.entries {
                problem = "PROD 0x\(String(prod, radix: 16)) is more than 2^\(n) commands ahead of CONS 0x\(String(cons, radix: 16))"
            }
        }
        if let problem {
            try? SystemCall.unmap(mapped, length: size)
            throw memoryRefusal(0, "the queue's header is wrong: \(problem)")
        }
        let wake: Int32, exit: Int32
        do throws(Errno) {
            wake = try SystemCall.eventFD()
            do throws(Errno) { exit = try SystemCall.eventFD() } catch {
                _ = Glibc.close(wake)
                throw error
            }
        } catch {
            try? SystemCall.unmap(mapped, length: size)
            throw memoryRefusal(error.rawValue, "cannot create the consumer's eventfds: \(error)")
        }
        // Accepted. The daemon writes call; a full count must never block it (the VMM may clear the flag
        // again: see the notes above). Set only now: a refused MAP_QUEUE changes nothing.
        try? SystemCall.setNonBlocking(call)
        memoryFD = memory
        kickFD = kick
        callFD = call
        device = file.device
        inode = file.inode
        base = mapped
        length = size
        consumer = SharedQueueConsumer(region: region)
        wakeFD = wake
        exitFD = exit
    }

    /// Serialises the control operations below (start, stop, re-map, close), which connection threads, the
    /// daemon's stop and the reclaim thread may call; never taken by the consumer thread.
    private let control = Locked(())

    /// Whether a consumer thread runs.
    var isRunning: Bool { control.withLock { _ in thread != nil } }

    /// The memfd, kick and call descriptors now (the fd store gets duplicates).
    var descriptors: (memory: Int32, kick: Int32, call: Int32) { control.withLock { _ in (memoryFD, kickFD, callFD) } }

    /// Starts the consumer thread: it stores `state` = RUNNING and consumes from CONS.
    func start(served: ServedVSMMU, server: VSMMUServer) throws(Errno) {
        try control.withLock { (_: inout ()) throws(Errno) in try startLocked(served: served, server: server) }
    }

    private func startLocked(served: ServedVSMMU, server: VSMMUServer) throws(Errno) {
        guard thread == nil, !closed else { return }
        stopping.store(false, ordering: .releasing)
        _ = try? SystemCall.readEventNoWait(exitFD)
        // RUNNING before the reply (or the resume) that started it: the thread creation orders it before the
        // consumer's own stores.
        if consumer.start() { _ = try? SystemCall.writeEvent(callFD) }
        let context = ConsumerContext(service: self, served: served, kick: kickFD, call: callFD, slots: server.pollingSlots,
                                      pollMaximum: server.configuration.requestPolling)
        thread = try OSThread { context.run() }
    }

    /// Stops the consumer thread (a batch in flight completes and its CONS is written), which stores
    /// `state` = STOPPED and signals call; joins it. Without a thread, stores the state and signals itself.
    func stopConsuming() {
        control.withLock { _ in stopLocked(storingStopped: true) }
    }

    private func stopLocked(storingStopped: Bool) {
        storesStoppedOnExit.store(storingStopped, ordering: .relaxed)
        guard let running = thread else {
            if !closed, storingStopped {
                consumer.stop()
                _ = try? SystemCall.writeEvent(callFD)
            }
            return
        }
        stopping.store(true, ordering: .releasing)
        _ = try? SystemCall.writeEvent(wakeFD)
        var exited = [pollfd(fd: exitFD, events: Int16(POLLIN), revents: 0)]
        // The thread ends promptly unless a VMM made its call write block (a full count on a blocking file):
        // draining the count lets that write return.
        while (try? SystemCall.poll(&exited, timeoutMilliseconds: 50)) ?? 1 == 0 {
            _ = try? SystemCall.readEventNoWait(callFD)
            _ = try? SystemCall.writeEvent(wakeFD)
        }
        running.join()
        thread = nil
    }

    /// Takes new eventfds (a MAP_QUEUE of the same memfd, PROTOCOL.md §5.15): stops the thread, closes the
    /// old ones, and restarts it if it ran. The caller checked them. Returns the CONS the consumer goes on
    /// from. It owns `kick` and `call` from the call on, also when the restart throws (they close with the queue).
    func replaceEventFDs(kick: Int32, call: Int32, served: ServedVSMMU, server: VSMMUServer) throws(Errno) -> UInt32 {
        try control.withLock { (_: inout ()) throws(Errno) -> UInt32 in
            let wasRunning = thread != nil
            if wasRunning { stopLocked(storingStopped: false) }
            _ = Glibc.close(kickFD)
            _ = Glibc.close(callFD)
            kickFD = kick
            callFD = call
            try? SystemCall.setNonBlocking(call)
            let cons = consumer.consumer
            if wasRunning { try startLocked(served: served, server: server) }
            return cons
        }
    }

    /// Ends the queue (PROTOCOL.md §8.6): stops consuming (state STOPPED, call signalled), unmaps the
    /// memory and closes every descriptor. Idempotent.
    func close() {
        control.withLock { _ in
            guard !closed else { return }
            stopLocked(storingStopped: true)
            closed = true
            try? SystemCall.unmap(base, length: length)
            for fd in [memoryFD, kickFD, callFD, wakeFD, exitFD] { _ = Glibc.close(fd) }
        }
    }

    /// The queue's figures the consumer thread counted and has not added to the vSMMU's yet: touched by
    /// that thread only, hence `@exclusivity(unchecked)` (the runtime's dynamic check would cost more
    /// than the counting).
    private final class PendingFigures {
        @exclusivity(unchecked) var value = ServedVSMMU.QueueStatistics()
    }

    /// The consumer thread's loop: consume while there is work; when idle, poll PROD for the adaptive
    /// window (with a polling slot), then sleep on kick and the private wake-up (§8.4).
    private struct ConsumerContext: @unchecked Sendable {
        let service: SharedQueueService
        let served: ServedVSMMU
        let kick: Int32
        let call: Int32
        let slots: RequestPollingSlots
        let pollMaximum: Duration

        func run() {
            let consumer = service.consumer
            // The engine, once: it is replaced only while a vSMMU awaits its descriptors, when no consumer runs.
            let engine = served.engine
            var poller = RequestPoller(maximum: pollMaximum)
            var sleepers = [pollfd(fd: kick, events: Int16(POLLIN), revents: 0),
                            pollfd(fd: service.wakeFD, events: Int16(POLLIN), revents: 0)]
            // Figures counted here and added to the vSMMU's under the lock the next batch takes anyway (or
            // before a sleep): no lock of their own on the data path.
            let pending = PendingFigures()
            func flush() {
                let figures = pending.value
                served.statistics.withLock { $0.queue.add(figures) }
                pending.value = ServedVSMMU.QueueStatistics()
            }
            func signalCall() {
                _ = try? SystemCall.writeEvent(call)
                pending.value.callsSent &+= 1
            }
            while !service.stopping.load(ordering: .acquiring) {
                let step = consumer.step { batch in execute(batch, on: engine, pending: pending) }
                if step.signalCall { signalCall() }
                switch step.kind {
                case .consumed: continue
                case .commandError, .producerError:
                    pending.value.errors &+= 1
                    continue
                case .empty, .stopped: break
                }
                // Idle: poll for the adaptive window while a slot is free and no connection serves.
                let start = POSIX.monotonicNanoseconds()
                if poller.windowNanoseconds > 0, slots.serving == 0, slots.tryAcquire() {
                    var caught = consumer.hasWork
                    while !caught, slots.serving == 0, !service.stopping.load(ordering: .relaxed),
                          POSIX.monotonicNanoseconds() &- start < poller.windowNanoseconds {
                        caught = consumer.hasWork
                    }
                    slots.release()
                    if caught {
                        pending.value.pollsCaught &+= 1
                        poller.record(waitedNanoseconds: POSIX.monotonicNanoseconds() &- start, caughtWhilePolling: true)
                        continue
                    }
                    pending.value.pollsMissed &+= 1
                }
                flush()
                // Sleep: daemon_sleeping = 1, fence, look again; then poll on kick and the wake-up.
                guard consumer.prepareToSleep() else {
                    poller.record(waitedNanoseconds: POSIX.monotonicNanoseconds() &- start, caughtWhilePolling: false)
                    continue
                }
                if service.stopping.load(ordering: .acquiring) {
                    consumer.wokeUp()
                    break
                }
                _ = try? SystemCall.poll(&sleepers, timeoutMilliseconds: -1)
                if (try? SystemCall.readEventNoWait(kick)) ?? nil != nil { pending.value.kicksReceived &+= 1 }
                consumer.wokeUp()
                poller.record(waitedNanoseconds: POSIX.monotonicNanoseconds() &- start, caughtWhilePolling: false)
            }
            if service.storesStoppedOnExit.load(ordering: .relaxed) {
                consumer.stop()
                signalCall()
            }
            flush()
            _ = try? SystemCall.writeEvent(service.exitFD)
        }

        /// Executes one batch as INVALIDATE does (``VSMMUServer/invalidate(_:commands:connection:)``): the
        /// engine routes it, runs it inline when the viommus are idle, and waits for its CMD_SYNCs. Adds
        /// the figures `pending` holds to the vSMMU's under the same lock.
        func execute(_ batch: UnsafeBufferPointer<Command>, on engine: VSMMUEngine,
                     pending: PendingFigures) -> SharedQueueBatchOutcome {
            slots.beginServing()
            let start = POSIX.monotonicNanoseconds()
            let result = engine.execute(batch)
            let latency = POSIX.monotonicNanoseconds() &- start
            slots.endServing()
            pending.value.commands &+= UInt64(result.consumed)
            pending.value.syncs &+= UInt64(result.syncs)
            let figures = pending.value
            served.statistics.withLock { stats in
                stats.queue.add(figures)
                if result.syncs > 0 { stats.recordSync(latencyNanoseconds: latency) }
            }
            pending.value = ServedVSMMU.QueueStatistics()
            guard let failure = result.failure else { return SharedQueueBatchOutcome(consumed: result.consumed, syncs: result.syncs) }
            return SharedQueueBatchOutcome(consumed: result.consumed, syncs: result.syncs, failureIndex: failure.index,
                                           cerror: UInt8(truncatingIfNeeded: failure.queueError.rawValue))
        }
    }
}

extension ServedVSMMU {
    /// Takes the vSMMU's queue away and ends it (UNMAP_QUEUE, teardown): stopped, unmapped, closed; its
    /// names leave the fd store unless `keepingStore` (a daemon that stops and leaves the queue to the next
    /// process). Nothing happens without a queue.
    func endSharedQueue(keepingStore: Bool = false) {
        guard let service = sharedQueue.withLock({ q -> SharedQueueService? in
            defer { q = nil }
            return q
        }) else { return }
        service.close()
        guard !keepingStore else { return }
        let names = SharedQueueService.storeNames(id)
        for name in [names.memory, names.kick, names.call] { removeDescriptor(name: name) }
    }

    /// Starts consuming the vSMMU's queue if it has one that does not run yet (after RESUME_VSMMU, or once
    /// an iommufd vSMMU's restore completed): the VMM's commands published meanwhile are consumed from CONS.
    func startSharedQueue(server: VSMMUServer) {
        guard !awaitsDescriptors, let service = sharedQueue.withLock({ $0 }), !service.isRunning else { return }
        do throws(Errno) { try service.start(served: self, server: server) } catch {
            server.logger.error("cannot start a shared queue's consumer thread", metadata: ["vsmmu": "\(id.rawValue)", "error": "\(error)"])
        }
    }
}

extension VSMMUServer {
    /// MAP_QUEUE (PROTOCOL.md §5.15): checks the three fds `connection` claimed with the frame, maps the
    /// memory and starts consuming; or, with the memfd the vSMMU's queue already maps, takes the new
    /// eventfds. A refusal closes the three fds and changes nothing.
    func mapQueue(_ request: MapQueue, connection: inout Connection) throws(ProtocolError) -> Response {
        let type = MessageType.mapQueue
        let fds = connection.takeQueueDescriptors()
        var adopted = false
        defer { if !adopted { for fd in fds { _ = Glibc.close(fd) } } }
        guard fds.count == MessageType.mapQueue.fileDescriptorCount else { throw .badFileDescriptor(.missing, type: type) }
        let served = try owned(request.vsmmu, by: connection, type: type)
        if let refusal = awaitingDescriptorsRefusal(served, type: type) { throw refusal }
        let (memory, kick, call) = (fds[0], fds[1], fds[2])
        if let existing = served.sharedQueue.withLock({ $0 }) {
            guard let identity = QueueDescriptorChecks.identity(of: memory), identity.device == existing.device,
                  identity.inode == existing.inode else {
                throw .alreadyExists(.queue, value: 0, type: type,
                                     "vSMMU \(request.vsmmu.rawValue) has a shared queue over other memory: UNMAP_QUEUE it first")
            }
            do throws(SharedQueueService.Refusal) {
                try QueueDescriptorChecks.checkEventFD(kick, "kick")
                try QueueDescriptorChecks.checkEventFD(call, "call")
            } catch {
                throw error.protocolError(type)
            }
            // From here the service owns kick and call (replaceEventFDs takes them before it restarts the
            // thread, and closes them with the queue even when the restart fails): only the memfd is ours.
            adopted = true
            _ = Glibc.close(memory) // the mapping's own memfd stays
            let cons: UInt32
            do throws(Errno) { cons = try existing.replaceEventFDs(kick: kick, call: call, served: served, server: self) } catch {
                throw .internalError(type: type, "cannot restart the shared queue's consumer: \(error)")
            }
            storeQueueDescriptors(existing, of: served, connection: connection)
            served.startSharedQueue(server: self)
            return .mapQueue(QueueMapped(consumer: cons))
        }
        let service: SharedQueueService
        do throws(SharedQueueService.Refusal) {
            service = try SharedQueueService(memory: memory, kick: kick, call: call, log2Entries: Int(request.log2Entries))
        } catch {
            throw error.protocolError(type)
        }
        adopted = true
        // Read before the thread starts: from then on CONS is the consumer thread's.
        let cons = service.consumer.consumer
        served.sharedQueue.withLock { $0 = service }
        storeQueueDescriptors(service, of: served, connection: connection)
        do throws(Errno) { try service.start(served: served, server: self) } catch {
            served.endSharedQueue()
            throw .internalError(type: type, "cannot start the shared queue's consumer thread: \(error)")
        }
        connection.logger.info("shared queue mapped", metadata: [
            "vsmmu": "\(served.id.rawValue)", "entries": "\(service.consumer.region.geometry.entries)", "cons": "\(cons)",
        ])
        return .mapQueue(QueueMapped(consumer: cons))
    }

    /// UNMAP_QUEUE (PROTOCOL.md §5.16): ends the vSMMU's queue, if it has one.
    func unmapQueue(_ request: UnmapQueue, connection: Connection) throws(ProtocolError) -> Response {
        let served = try owned(request.vsmmu, by: connection, type: .unmapQueue)
        served.endSharedQueue()
        return .unmapQueue
    }

    /// Hands the queue's three descriptors to the fd store (the store duplicates them), replacing what it
    /// held under their names. A failure is logged: the VMM maps the queue again after a restart.
    private func storeQueueDescriptors(_ service: SharedQueueService, of served: ServedVSMMU, connection: Connection) {
        let names = SharedQueueService.storeNames(served.id)
        let fds = service.descriptors
        served.replaceStoredQueueDescriptors([(fds.memory, names.memory), (fds.kick, names.kick), (fds.call, names.call)],
                                             queue: "a shared queue", logger: connection.logger)
    }

    /// At recovery: the queue of vSMMU `id` from the descriptors the fd store handed back, checked as
    /// MAP_QUEUE checks them and mapped, not consuming until the vSMMU is resumed. `nil` (the descriptors
    /// closed, their names out of the store) when they are missing or refused: the VMM maps it again.
    func recoveredSharedQueue(_ id: VSMMUID, take: (String) -> Int32?) -> SharedQueueService? {
        let names = SharedQueueService.storeNames(id)
        let memory = take(names.memory), kick = take(names.kick), call = take(names.call)
        func drop(_ reason: String) -> SharedQueueService? {
            for fd in [memory, kick, call].compactMap({ $0 }) { _ = Glibc.close(fd) }
            for name in [names.memory, names.kick, names.call] { configuration.fileDescriptorStore?.remove(name: name) }
            logger.warning("a shared queue the fd store handed back is not mapped again: its VMM maps it after RESUME",
                           metadata: ["vsmmu": "\(id.rawValue)", "reason": "\(reason)"])
            return nil
        }
        guard memory != nil || kick != nil || call != nil else { return nil }
        guard let memory, let kick, let call else { return drop("not all three descriptors came back") }
        do throws(SharedQueueService.Refusal) {
            return try SharedQueueService(memory: memory, kick: kick, call: call, log2Entries: nil)
        } catch {
            return drop(error.message)
        }
    }
}
