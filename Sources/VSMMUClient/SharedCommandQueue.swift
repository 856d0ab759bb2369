import CSocketShims
import SMMUv3
import SharedQueue
import SystemPackage
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

// Concurrency notes (PROTOCOL.md §8).
//
// A `SharedCommandQueue` is used by its client's thread, like the client (one request, or one wait, at a
// time). The memory it maps is shared with the daemon, which writes CONS, the error record, `state` and
// `daemon_sleeping` at any moment: every access goes through `SharedQueueProducer` and its
// `SharedQueueRegion`, one atomic access per field. The only blocking is `poll` on the call eventfd and
// the client's socket (`QueueSignals.sleep`).

/// A vSMMU's shared command queue (PROTOCOL.md §8), mapped by ``VSMMUClient/mapQueue(vsmmu:log2Entries:)``:
/// the VMM writes the guest's commands into memory the daemon consumes, and a CMD_SYNC completes without
/// a socket round trip.
///
/// ```swift
/// let queue = try client.mapQueue(vsmmu: vsmmu, log2Entries: 10)
/// let reply = try queue.submitAndWait([.tlbiNHVA(asid: 1, address: 0x1000), .sync()])
/// if let failure = reply.failure {                 // CMDQ_CONS.ERR: reflect it into the guest's GERROR…
///     try queue.acknowledgeError(rewriting: .sync())  // …and, on its GERRORN, resume
/// }
/// ```
///
/// Blocking waits spin briefly on CONS, then sleep on the call eventfd **and** the client's socket: a
/// socket that becomes readable while no request is outstanding means the connection was lost, and the
/// wait fails with ``VSMMUClientError/connectionClosed`` — or, with a ``VSMMUClient/Reconnect`` policy,
/// the client reconnects, resumes the vSMMU, maps this memory again with fresh eventfds (§8.6) and the
/// wait goes on.
///
/// Not thread-safe: use it on the client's thread. Dropping the last reference without ``unmap()`` unmaps
/// this side's memory and closes its descriptors but sends nothing: the daemon keeps consuming its own
/// mapping until UNMAP_QUEUE, DESTROY_VSMMU or the connection's end.
public final class SharedCommandQueue {
    /// The vSMMU whose queue this is.
    public let vsmmu: VSMMUID
    /// 2^n slots.
    public let geometry: SharedQueueGeometry
    /// The client whose connection the queue was mapped on (the socket a wait also polls).
    public let client: VSMMUClient
    /// The memfd (`MFD_CLOEXEC | MFD_ALLOW_SEALING`, sealed with `F_SEAL_SHRINK`), kept for re-mapping.
    public let memory: Int32
    /// The kick eventfd (VMM → daemon); replaced by a re-map.
    public private(set) var kick: Int32
    /// The call eventfd (daemon → VMM), non-blocking; replaced by a re-map.
    public private(set) var call: Int32
    /// The producer: PROD, waits and acknowledgements over the mapping.
    public private(set) var producer: SharedQueueProducer
    /// Whether the queue is mapped (until ``unmap()``, or the client's DESTROY_VSMMU of its vSMMU).
    public private(set) var isMapped = true
    /// How many times the client mapped this memory again after a reconnect.
    public internal(set) var remapCount = 0
    let base: UnsafeMutableRawPointer
    let length: Int
    private var released = false

    init(vsmmu: VSMMUID, geometry: SharedQueueGeometry, client: VSMMUClient, memory: Int32, kick: Int32, call: Int32,
         base: UnsafeMutableRawPointer, length: Int, producer: SharedQueueProducer) {
        self.vsmmu = vsmmu
        self.geometry = geometry
        self.client = client
        self.memory = memory
        self.kick = kick
        self.call = call
        self.base = base
        self.length = length
        self.producer = producer
    }

    deinit {
        if isMapped { client.sharedQueues[vsmmu] = nil }
        release()
    }

    /// Unmaps the memory and closes the three descriptors (once).
    private func release() {
        guard !released else { return }
        released = true
        try? SystemCall.unmap(base, length: length)
        for fd in [memory, kick, call] where fd >= 0 { close(fd) }
    }

    /// How many looks at the queue a wait makes before it sleeps on call
    /// (``SharedQueueProducer/defaultSpinIterations`` unless set).
    public var spinIterations: Int {
        get { producer.spinIterations }
        set { producer.spinIterations = max(0, newValue) }
    }

    /// The typed view of the mapping.
    public var region: SharedQueueRegion { producer.region }

    // MARK: Producing and waiting

    /// Writes `commands` at PROD and publishes them (§8.2), kicking the daemon if it sleeps; when the
    /// queue is full, waits for room as ``waitForSync(past:)`` waits (a lost connection is recovered as
    /// there, and only the commands not yet published are submitted again).
    /// - Returns: what was published and PROD after it (the position ``waitForSync(past:)`` waits for);
    ///   `stop` says why not everything was: the queue, full, stopped on an error or was stopped.
    @discardableResult
    public func submit(_ commands: [Command]) throws(VSMMUClientError) -> SharedQueueProducer.Submitted {
        guard isMapped else { throw .queueStopped(vsmmu) }
        let first = producer.publishedCount
        while true {
            let done = Int(min(UInt64(commands.count), producer.publishedCount &- first))
            do throws(VSMMUClientError) {
                let signals = signals
                var submitted = try commands.withUnsafeBufferPointer { (all) throws(VSMMUClientError) in
                    try producer.submit(UnsafeBufferPointer(rebasing: all[done...]), signals: signals)
                }
                submitted.published += done
                return submitted
            } catch where error.isConnectionFailure && client.reconnect != nil {
                // The commands up to PROD are in the memory the new daemon maps: only the rest goes again.
                try client.recoverQueues(after: error)
            }
        }
    }

    /// Waits until CONS reached `position` (by default the PROD of the last submission: every command
    /// published so far was consumed, so its last CMD_SYNC completed), the queue stopped on an error, or
    /// the daemon stopped it (§8.2, §8.4).
    /// - Throws: ``VSMMUClientError/connectionClosed`` (or a reconnect failure) when the connection was
    ///   lost and could not be recovered; a transport error of `poll` or the eventfds.
    public func waitForSync(past position: UInt32? = nil) throws(VSMMUClientError) -> SharedQueueWaitOutcome {
        let target = position ?? producer.producer
        while true {
            guard isMapped else { return .stopped }
            do throws(VSMMUClientError) {
                let signals = signals
                let outcome = try producer.waitUntilConsumed(past: target, signals: signals)
                // A STOPPED queue on a live connection is final; one whose connection then drops (the daemon
                // stopping) is recovered below, when the client reconnects.
                if outcome == .stopped, client.reconnect != nil, try signals.connectionLostAfterStop() {
                    throw VSMMUClientError.connectionClosed
                }
                return outcome
            } catch where error.isConnectionFailure && client.reconnect != nil {
                try client.recoverQueues(after: error)
            }
        }
    }

    /// Submits `commands` and waits for them to be consumed: the shared queue's INVALIDATE. The reply is
    /// in INVALIDATE's terms (§5.11): `consumed` the commands of this batch before CONS, `syncsCompleted`
    /// the CMD_SYNCs among them, `failure` the `CMDQ_CONS.ERR` code at the failing command's index in
    /// this batch (for an error before this batch, index 0). The error stays until
    /// ``acknowledgeError(rewriting:)``.
    /// - Throws: ``VSMMUClientError/queueStopped`` when the daemon stopped the queue (`state` = STOPPED).
    public func submitAndWait(_ commands: [Command]) throws(VSMMUClientError) -> InvalidateReply {
        let start = producer.producer
        let submitted = try submit(commands)
        let outcome: SharedQueueWaitOutcome
        if let stop = submitted.stop { outcome = stop } else { outcome = try waitForSync(past: submitted.producer) }
        switch outcome {
        case .completed:
            return InvalidateReply(consumed: UInt32(commands.count), syncsCompleted: Self.syncs(in: commands[...]))
        case .error(let error):
            let offset = Int(geometry.distance(from: start, to: error.consumer))
            let index = offset < commands.count ? offset : 0
            let reason = error.errorKind == .producer ? "PROD was not a valid index" : "command at position 0x\(String(error.consumer, radix: 16))"
            return InvalidateReply(consumed: UInt32(index), syncsCompleted: Self.syncs(in: commands.prefix(index)),
                                   failure: .init(index: UInt32(index), queueError: CommandQueueError(rawValue: error.cerror),
                                                  message: "shared queue error #\(error.sequence): \(reason)"))
        case .stopped:
            throw .queueStopped(vsmmu)
        case .invalidConsumer(let cons):
            throw .badReply("shared queue of vSMMU \(vsmmu.rawValue): CONS 0x\(String(cons, radix: 16)) is not a position behind PROD")
        }
    }

    private static func syncs(in commands: ArraySlice<Command>) -> UInt32 {
        UInt32(commands.reduce(0) { $0 + ($1.opcode == .sync ? 1 : 0) })
    }

    // MARK: Errors

    /// The daemon's unacknowledged queue error, read now (§8.5); `nil` when there is none.
    public var error: SharedQueueError? {
        if case .error(let e) = producer.currentStop() { return e }
        return nil
    }

    /// Acknowledges the queue error (the guest's GERRORN): optionally rewrites the failing command's slot
    /// first (Linux's `__arm_smmu_cmdq_skip_err` puts a CMD_SYNC there), then stores `error_ack` and kicks
    /// the daemon, which resumes at CONS and reads that slot again (§8.5).
    @discardableResult
    public func acknowledgeError(rewriting replacement: Command? = nil) throws(VSMMUClientError) -> SharedQueueProducer.Acknowledgement {
        guard isMapped else { throw .queueStopped(vsmmu) }
        let signals = signals
        return try producer.acknowledgeError(rewriting: replacement, signals: signals)
    }

    // MARK: Life

    /// UNMAP_QUEUE: the daemon stops consuming and lets go of the memory; then this side unmaps it and
    /// closes the descriptors. Commands published and not consumed are not executed (§5.16).
    public func unmap() throws(VSMMUClientError) {
        guard isMapped else { return }
        isMapped = false
        client.sharedQueues[vsmmu] = nil
        defer { release() }
        _ = try client.call(.unmapQueue(UnmapQueue(vsmmu: vsmmu)))
    }

    /// The vSMMU was destroyed by this client: the daemon dropped the queue.
    func dropped() { isMapped = false }

    /// Sends MAP_QUEUE for this memory again with fresh eventfds on the client's current connection (after
    /// a reconnect and RESUME_VSMMU, §8.6). The daemon checks the memory again and goes on from CONS.
    func remap() throws(VSMMUClientError) {
        let fresh = try Self.makeEventfds()
        do throws(VSMMUClientError) {
            _ = try client.sendMapQueue(vsmmu: vsmmu, log2Entries: geometry.log2Entries, fds: [memory, fresh.kick, fresh.call])
        } catch {
            close(fresh.kick)
            close(fresh.call)
            throw error
        }
        close(kick)
        close(call)
        kick = fresh.kick
        call = fresh.call
        remapCount += 1
    }

    /// A kick and a call eventfd, both close-on-exec and non-blocking.
    static func makeEventfds() throws(VSMMUClientError) -> (kick: Int32, call: Int32) {
        let kick: Int32
        do throws(Errno) { kick = try SystemCall.eventFD() } catch { throw .system("eventfd", error) }
        do throws(Errno) { return (kick, try SystemCall.eventFD()) } catch {
            close(kick)
            throw .system("eventfd", error)
        }
    }

    /// The signals of the current descriptors.
    var signals: QueueSignals { QueueSignals(kickFD: kick, callFD: call, socketFD: client.fileDescriptor) }
}

/// The producer's signals over the queue's eventfds and the client's socket (§8.4).
struct QueueSignals: SharedQueueSignalling {
    let kickFD: Int32
    let callFD: Int32
    let socketFD: Int32

    func kick() throws(VSMMUClientError) {
        do throws(Errno) { try SystemCall.writeEvent(kickFD) } catch { throw .system("write (kick eventfd)", error) }
    }

    /// `poll` on call and the socket. The call eventfd readable (`eventfd_poll`: a count above 0): its
    /// count is cleared (`eventfd_read` returns it and resets it to 0), and the producer looks again. The socket readable with no request outstanding (end of
    /// stream, an error, or a frame nobody asked for): the connection is lost.
    func sleep() throws(VSMMUClientError) {
        var fds = [pollfd(fd: callFD, events: Int16(POLLIN), revents: 0), pollfd(fd: socketFD, events: Int16(POLLIN), revents: 0)]
        do throws(Errno) { _ = try SystemCall.poll(&fds, timeoutMilliseconds: -1) } catch { throw .system("poll", error) }
        // Call first: a daemon that ends the queue writes STOPPED and signals call before it closes the
        // connection, and the producer's next look then reports the stop.
        if fds[0].revents & Int16(POLLIN) != 0 {
            do throws(Errno) { _ = try SystemCall.readEventNoWait(callFD) } catch { throw .system("read (call eventfd)", error) }
            return
        }
        if fds[1].revents != 0 { throw .connectionClosed }
    }

    /// After a wait ended in STOPPED: whether the connection is going too (a daemon that stops writes
    /// STOPPED and then closes its connections), waiting up to ``stopGraceMilliseconds`` for the socket.
    func connectionLostAfterStop() throws(VSMMUClientError) -> Bool {
        var fds = [pollfd(fd: socketFD, events: Int16(POLLIN), revents: 0)]
        do throws(Errno) {
            return try SystemCall.poll(&fds, timeoutMilliseconds: Self.stopGraceMilliseconds) > 0
        } catch { throw .system("poll", error) }
    }

    /// How long a waiter that saw STOPPED waits for the connection to close before it takes the stop as
    /// final (UNMAP_QUEUE or DESTROY_VSMMU by this side end it without a wait: ``SharedCommandQueue/isMapped``).
    static let stopGraceMilliseconds: Int32 = 1_000
}

extension VSMMUClientError {
    /// A failed system call, as ``transport(call:errno:)``.
    static func system(_ call: String, _ error: Errno) -> VSMMUClientError { .transport(call: call, errno: error.rawValue) }

    /// The daemon stopped the vSMMU's shared queue (`state` = STOPPED, PROTOCOL.md §8.6), or the queue was
    /// unmapped: `ESHUTDOWN`, with `call` naming the vSMMU (``isQueueStopped``).
    public static func queueStopped(_ vsmmu: VSMMUID) -> VSMMUClientError {
        .transport(call: "\(queueStoppedPrefix) of vSMMU \(vsmmu.rawValue)", errno: ESHUTDOWN)
    }

    static let queueStoppedPrefix = "shared queue stopped"

    /// Whether the error is ``queueStopped(_:)``.
    public var isQueueStopped: Bool {
        if case .transport(let call, let errno) = self { return errno == ESHUTDOWN && call.hasPrefix(Self.queueStoppedPrefix) }
        return false
    }
}

extension VSMMUClient {
    /// MAP_QUEUE (version 4): makes the vSMMU's shared command queue — a memfd of the layout of PROTOCOL.md
    /// §8.1 (`MFD_CLOEXEC | MFD_ALLOW_SEALING`, sized with `ftruncate`, sealed with `F_SEAL_SHRINK` so the
    /// daemon's mapping stays backed: `shmem_setattr` refuses to shrink a file with that seal), a kick and a
    /// call eventfd (`EFD_CLOEXEC | EFD_NONBLOCK`) — maps it, initialises the header (PROD = CONS = 0) and
    /// sends the three fds in one `SCM_RIGHTS` message. With a ``Reconnect`` policy the client maps it
    /// again on its own after a reconnect (§8.6).
    /// - Throws: the daemon's refusal (e.g. `ALREADY_EXISTS` detail 6: the vSMMU has a queue); `EINVAL`
    ///   for `log2Entries` outside 8…16; a failed system call.
    public func mapQueue(vsmmu: VSMMUID, log2Entries: Int) throws(VSMMUClientError) -> SharedCommandQueue {
        guard let geometry = SharedQueueGeometry(log2Entries: log2Entries) else {
            throw .transport(call: "mapQueue: log2Entries \(log2Entries) outside \(SharedQueueLayout.log2EntriesRange)", errno: EINVAL)
        }
        let length = geometry.requiredSize
        let memory: Int32
        do throws(Errno) {
            memory = try SystemCall.memfdCreate("vsmmu-queue-\(vsmmu.rawValue)")
        } catch { throw .system("memfd_create", error) }
        var base: UnsafeMutableRawPointer?
        var eventfds: (kick: Int32, call: Int32)?
        do throws(VSMMUClientError) {
            do throws(Errno) { try SystemCall.truncate(memory, to: length) } catch { throw .system("ftruncate", error) }
            do throws(Errno) { try SystemCall.addSeals(VSMMU_F_SEAL_SHRINK, to: memory) } catch { throw .system("fcntl(F_ADD_SEALS)", error) }
            do throws(Errno) { base = try SystemCall.mapShared(memory, length: length) } catch { throw .system("mmap", error) }
            guard let base, let region = SharedQueueRegion(base: base, length: length, geometry: geometry) else {
                throw .transport(call: "mmap: a mapping that is not 64-byte aligned", errno: EINVAL)
            }
            region.initialise()
            guard let producer = SharedQueueProducer(region: region) else { throw .badReply("a fresh queue has PROD = CONS = 0") }
            eventfds = try SharedCommandQueue.makeEventfds()
            guard let eventfds else { throw .badReply("eventfds") }
            _ = try sendMapQueue(vsmmu: vsmmu, log2Entries: log2Entries, fds: [memory, eventfds.kick, eventfds.call])
            let queue = SharedCommandQueue(vsmmu: vsmmu, geometry: geometry, client: self, memory: memory, kick: eventfds.kick,
                                           call: eventfds.call, base: base, length: length, producer: producer)
            sharedQueues[vsmmu] = WeakSharedQueue(queue)
            return queue
        } catch {
            if let base { try? SystemCall.unmap(base, length: length) }
            close(memory)
            if let eventfds { close(eventfds.kick); close(eventfds.call) }
            throw error
        }
    }

    /// Sends MAP_QUEUE with `fds` (memory, kick, call) and checks the reply.
    func sendMapQueue(vsmmu: VSMMUID, log2Entries: Int, fds: [Int32]) throws(VSMMUClientError) -> QueueMapped {
        guard case .mapQueue(let reply) = try call(.mapQueue(MapQueue(vsmmu: vsmmu, log2Entries: UInt32(log2Entries))),
                                                   fileDescriptors: fds) else { throw .badReply("MAP_QUEUE") }
        return reply
    }

    /// After a wait or a submission lost the connection: reconnects and resumes (``recover(after:backoff:)``,
    /// which maps every shared queue again).
    func recoverQueues(after failure: VSMMUClientError) throws(VSMMUClientError) {
        guard let policy = reconnect else { throw failure }
        var backoff = Reconnect.Backoff(policy)
        _ = try recover(after: failure, backoff: &backoff)
    }

    /// MAP_QUEUE again for every mapped queue of a resumed vSMMU, on the new connection (§8.6). A refusal
    /// other than a lost connection leaves that queue as it is: its next wait sees STOPPED or hangs on
    /// nothing, so the queue is marked unmapped and its waits end with STOPPED.
    func remapSharedQueues(resumed: Set<VSMMUID>) throws(VSMMUClientError) {
        for (vsmmu, weak) in sharedQueues.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            guard let queue = weak.queue, queue.isMapped else {
                sharedQueues[vsmmu] = nil
                continue
            }
            guard resumed.contains(vsmmu) else {
                queue.dropped()
                sharedQueues[vsmmu] = nil
                continue
            }
            do throws(VSMMUClientError) { try queue.remap() } catch where !error.isConnectionFailure && error.code != .shuttingDown {
                queue.dropped()
                sharedQueues[vsmmu] = nil
            }
        }
    }
}

/// The client's reference to a queue it mapped (the queue owns the client, not the other way round).
struct WeakSharedQueue {
    weak var queue: SharedCommandQueue?
    init(_ queue: SharedCommandQueue) { self.queue = queue }
}
