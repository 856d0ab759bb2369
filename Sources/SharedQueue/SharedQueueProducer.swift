import SMMUv3
import VSMMUProtocol

// Concurrency notes (PROTOCOL.md §8.2, §8.4, §8.5).
//
// One producer per queue, used by one thread at a time (the VMM's thread that serves the guest's
// command queue); the consumer is the daemon, in another process, which writes CONS, the error record,
// `state` and `daemon_sleeping` whenever it likes. The producer keeps PROD in a private copy
// (``SharedQueueProducer/producer``): it reads the shared PROD once, when it is made, and afterwards only
// stores it, so a PROD the peer scribbled over never changes what this side believes it published.
//
// Orderings (each access is one of ``SharedQueueRegion``'s atomic accessors):
// - slots are written relaxed, then PROD is published with release (§8.2);
// - CONS and `error_sequence` are loaded with acquire (the error record is read after the sequence);
// - the Dekker pairs of §8.4: after publishing PROD or `error_ack` a full fence, then `daemon_sleeping`;
//   before sleeping, `vmm_sleeping` = 1, a full fence, then CONS, `error_sequence` and `state` again.
//   Either this side sees the daemon's flag (and kicks), or the daemon sees the new PROD; either this side
//   sees the daemon's new CONS, or the daemon sees `vmm_sleeping` and signals call.
//
// No system call is made here: kicking the daemon and sleeping on the call eventfd are the caller's
// (``SharedQueueSignalling``), so that this file is the algorithm alone and can be tested against an
// in-process consumer.

/// What the producer needs from the outside world: the two system calls of PROTOCOL.md §8.4.
public protocol SharedQueueSignalling {
    /// The error a signal or a wait can fail with (e.g. the client's connection-lost error).
    associatedtype Failure: Error
    /// Signals the daemon: writes 1 to the kick eventfd. Called only when `daemon_sleeping` was 1.
    func kick() throws(Failure)
    /// Blocks until the call eventfd was signalled (and clears it), or until something else may have
    /// changed the queue. It may return spuriously: the producer looks at the queue again either way.
    func sleep() throws(Failure)
}

/// The queue error the daemon raised (the error record of PROTOCOL.md §8.1), read once.
public struct SharedQueueError: Hashable, Sendable, CustomStringConvertible {
    /// `error_sequence`: the value to acknowledge (``SharedQueueProducer/acknowledgeError(rewriting:signals:)``).
    public var sequence: UInt32
    /// `cerror`: the `CMDQ_CONS.ERR` code (``CommandQueueError``'s raw value; anything else is what a hostile
    /// or buggy peer wrote).
    public var cerror: UInt8
    /// `error_kind` (``SharedQueueLayout/ErrorKind``'s raw value, or garbage).
    public var kind: UInt8
    /// `error_cons`: the position the queue stopped at: the failing command's (kind COMMAND).
    public var consumer: UInt32

    public init(sequence: UInt32, cerror: UInt8, kind: UInt8, consumer: UInt32) {
        self.sequence = sequence
        self.cerror = cerror
        self.kind = kind
        self.consumer = consumer
    }

    /// The error kind, when it is one the layout defines.
    public var errorKind: SharedQueueLayout.ErrorKind? { SharedQueueLayout.ErrorKind(rawValue: kind) }

    public var description: String {
        "queue error #\(sequence): cerror \(cerror), kind \(kind), at position 0x\(String(consumer, radix: 16))"
    }
}

/// How a wait on the queue ended.
public enum SharedQueueWaitOutcome: Hashable, Sendable {
    /// CONS passed the position waited for (for a CMD_SYNC: it completed on every viommu it covers).
    case completed
    /// The queue stopped on an error before that: CONS is on the failing command (§8.5). Acknowledge it
    /// to resume.
    case error(SharedQueueError)
    /// The daemon stopped consuming (`state` = STOPPED: unmapped, vSMMU destroyed, connection closed).
    case stopped
    /// CONS holds a value that cannot be (a bit above the wrap bit, or past PROD): the daemon's side of
    /// the memory is corrupt.
    case invalidConsumer(UInt32)
}

/// The VMM's side of a shared command queue (PROTOCOL.md §8.2, §8.4, §8.5): writes commands at PROD,
/// publishes it, kicks a sleeping daemon, waits for CONS with a bounded spin and then the sleep half of
/// §8.4, and acknowledges errors.
///
/// Not thread-safe: one thread at a time (as one guest command queue has one consumer in the VMM).
public struct SharedQueueProducer: @unchecked Sendable {
    /// The mapped queue.
    public let region: SharedQueueRegion
    /// PROD as this producer published it: the private copy, never re-read from the memory.
    public private(set) var producer: UInt32
    /// The last `error_sequence` this producer acknowledged (or found acknowledged when it was made).
    public private(set) var acknowledgedSequence: UInt32
    /// How many commands this producer published since it was made (not wrapping: what a caller that
    /// lost track of a submission, e.g. to a thrown signal, counts from).
    public private(set) var publishedCount: UInt64 = 0
    /// How many times a wait looks at the queue before it sleeps (§8.4: "spins briefly").
    public var spinIterations: Int

    /// The default spin: 200,000 looks, about 100–400 µs on this 2-vCPU KVM guest (each look is three
    /// loads of lines the daemon writes). It must outlast the daemon's own wake-up (a kick to a consumer
    /// asleep in `poll` took ~30–40 µs here): with 20,000 looks (~30 µs) a waiter fell asleep whenever the
    /// daemon had, the daemon's next poll window then ran out before the woken waiter's next PROD, and
    /// both sides slept on every sync (~40 µs per sync instead of ~2). KVM's `halt_poll_ns` default is
    /// 200 µs for the same reason.
    public static let defaultSpinIterations = 200_000

    /// A producer over `region`, starting from the PROD stored there (read once, here), or `nil` when
    /// that PROD is not a valid position or is more than 2^n ahead of CONS (the memory is not a queue
    /// this side can continue). For a new queue, ``SharedQueueRegion/initialise()`` first.
    public init?(region: SharedQueueRegion, spinIterations: Int = SharedQueueProducer.defaultSpinIterations) {
        let geometry = region.geometry
        let prod = region.loadProducer()
        let cons = region.loadConsumer()
        guard geometry.isValid(prod), geometry.isValid(cons), geometry.distance(from: cons, to: prod) <= geometry.entries else {
            return nil
        }
        self.region = region
        self.producer = prod
        self.acknowledgedSequence = region.loadErrorAcknowledgement()
        self.spinIterations = max(0, spinIterations)
    }

    /// The queue's geometry.
    @inlinable public var geometry: SharedQueueGeometry { region.geometry }

    // MARK: Reading the daemon's side

    /// One look at the daemon's fields: `error_sequence` (acquire) first, then CONS (acquire), then
    /// `state`. An unacknowledged error wins over the state; CONS is reported with both so that a waiter
    /// whose position was passed completes even on a queue that then stopped.
    func look() -> (consumer: UInt32?, outstanding: UInt32, stop: SharedQueueWaitOutcome?) {
        let sequence = region.loadErrorSequence()
        let cons = region.loadConsumer()
        let state = region.loadState()
        let geometry = geometry
        let outstanding = geometry.distance(from: cons, to: producer)
        guard geometry.isValid(cons), outstanding <= geometry.entries else {
            return (nil, 0, .invalidConsumer(cons))
        }
        if sequence != acknowledgedSequence {
            let record = region.loadErrorRecord()
            return (cons, outstanding, .error(SharedQueueError(sequence: sequence, cerror: record.cerror, kind: record.kind,
                                                              consumer: record.consumer)))
        }
        if state == SharedQueueLayout.State.stopped.rawValue { return (cons, outstanding, .stopped) }
        return (cons, outstanding, nil)
    }

    /// Whether `consumer` (a CONS) reached `position`, i.e. passed every command before it: with at most 2^n outstanding, CONS lies between PROD − 2^n and
    /// PROD, so it passed `position` when it is no further from PROD than `position` is. A `position` more
    /// than 2^n behind PROD was passed long ago (CONS cannot be that far behind).
    @inlinable public func consumer(_ consumer: UInt32, hasPassed position: UInt32) -> Bool {
        let behind = geometry.distance(from: position, to: producer)
        return behind > geometry.entries || geometry.distance(from: consumer, to: producer) <= behind
    }

    /// The current state, read once: `nil` while the queue runs with no unacknowledged error.
    public func currentStop() -> SharedQueueWaitOutcome? { look().stop }

    // MARK: Producing

    /// What ``submit(_:signals:)`` did.
    public struct Submitted: Hashable, Sendable {
        /// How many of the commands were written and published (all of them unless ``stop`` is set).
        public var published: Int
        /// PROD after the last published command: the position to wait for (``waitUntilConsumed(past:signals:)``).
        public var producer: UInt32
        /// Why not all were published: the queue was full and, while waiting for room, stopped on an error
        /// or was stopped. `nil` when all were published.
        public var stop: SharedQueueWaitOutcome?
    }

    /// Writes `commands` into the slots from PROD on and publishes PROD with release (§8.2), then kicks a
    /// sleeping daemon (full fence, `daemon_sleeping`, §8.4). When the queue is full (2^n outstanding) it
    /// publishes what it wrote, kicks if needed and waits for room as ``waitUntilConsumed(past:signals:)``
    /// waits; if the queue stops meanwhile it returns with the rest unpublished.
    public mutating func submit<Signals: SharedQueueSignalling>(_ commands: UnsafeBufferPointer<Command>,
                                                                signals: Signals) throws(Signals.Failure) -> Submitted {
        let geometry = geometry
        var next = 0
        while next < commands.count {
            let (_, outstanding, stop) = look()
            // Garbage in CONS: the room cannot be known, so nothing more is written. (A queue stopped on an
            // error still takes commands into its free slots; a full one then reports the stop below.)
            if case .invalidConsumer = stop { return Submitted(published: next, producer: producer, stop: stop) }
            let room = Int(geometry.entries - outstanding)
            if room == 0 {
                // Full: wait for CONS to move (it was published and the daemon kicked on the previous pass).
                let wanted = geometry.advance(producer, by: 1 &- geometry.entries)  // the oldest outstanding + 1
                let outcome = try waitUntilConsumed(past: wanted, signals: signals)
                guard outcome == .completed else { return Submitted(published: next, producer: producer, stop: outcome) }
                continue
            }
            // One pass over the slots, indices only: no slicing, no per-command generic dispatch.
            let end = min(commands.count, next + room)
            var position = producer
            for i in next..<end {
                region.storeCommand(commands[i], at: position)
                position = geometry.advance(position, by: 1)
            }
            publishedCount &+= UInt64(end - next)
            next = end
            try publish(position, signals: signals)
        }
        return Submitted(published: next, producer: producer, stop: nil)
    }

    /// ``submit(_:signals:)`` of an array.
    public mutating func submit<Signals: SharedQueueSignalling>(_ commands: [Command],
                                                                signals: Signals) throws(Signals.Failure) -> Submitted {
        try commands.withUnsafeBufferPointer { (buffer) throws(Signals.Failure) -> Submitted in try submit(buffer, signals: signals) }
    }

    /// Stores PROD = `position` with release, then the full fence and the look at `daemon_sleeping` (§8.4).
    mutating func publish<Signals: SharedQueueSignalling>(_ position: UInt32, signals: Signals) throws(Signals.Failure) {
        producer = position
        region.storeProducer(position)
        try kickIfSleeping(signals)
    }

    /// The full fence after a release store of PROD or `error_ack`, and a kick when the daemon said it
    /// goes to sleep (§8.4).
    func kickIfSleeping<Signals: SharedQueueSignalling>(_ signals: Signals) throws(Signals.Failure) {
        SharedQueueRegion.fullFence()
        if region.loadDaemonSleeping() != 0 { try signals.kick() }
    }

    // MARK: Waiting

    /// Waits until CONS reached `position` — for the PROD published just after a CMD_SYNC
    /// (``Submitted/producer``): until CONS passed the sync, which then completed — or the queue stopped
    /// on an error, or it was stopped (§8.2, §8.4). Spins ``spinIterations`` looks at CONS,
    /// `error_sequence` and `state`; then stores `vmm_sleeping` = 1, issues a full fence, looks again and,
    /// if nothing moved, calls ``SharedQueueSignalling/sleep()``, stores `vmm_sleeping` = 0 and looks again.
    /// CONS passing `position` wins over an error or a stop seen in the same look.
    public func waitUntilConsumed<Signals: SharedQueueSignalling>(past position: UInt32,
                                                                  signals: Signals) throws(Signals.Failure) -> SharedQueueWaitOutcome {
        var spins = spinIterations
        while true {
            if let outcome = check(position) { return outcome }
            if spins > 0 {
                spins -= 1
                continue
            }
            region.storeVMMSleeping(1)
            SharedQueueRegion.fullFence()
            if let outcome = check(position) {
                region.storeVMMSleeping(0)
                return outcome
            }
            do throws(Signals.Failure) {
                try signals.sleep()
            } catch {
                region.storeVMMSleeping(0)
                throw error
            }
            region.storeVMMSleeping(0)
        }
    }

    /// One look for a waiter of `position`: its outcome, or `nil` to keep waiting.
    @inline(__always) func check(_ position: UInt32) -> SharedQueueWaitOutcome? {
        let (consumer, _, stop) = look()
        if let consumer, self.consumer(consumer, hasPassed: position) { return .completed }
        return stop
    }

    // MARK: Errors

    /// What ``acknowledgeError(rewriting:signals:)`` did.
    public enum Acknowledgement: Hashable, Sendable {
        /// `error_ack` = this sequence was stored; the daemon resumes at CONS.
        case acknowledged(SharedQueueError)
        /// There was no unacknowledged error: nothing was written.
        case noError
        /// A rewrite was asked for but the error names no slot this producer published (kind PROD, or
        /// `error_cons` not between CONS and PROD): nothing was written.
        case noSlotToRewrite(SharedQueueError)
    }

    /// Acknowledges the daemon's current error (the guest's GERRORN write, §8.5): optionally rewrites the
    /// slot at `error_cons` first (as Linux's `__arm_smmu_cmdq_skip_err` replaces an illegal command with
    /// a CMD_SYNC), stores this producer's PROD again (the fix for a PROD error), then `error_ack` =
    /// `error_sequence` with release, the full fence and a kick when the daemon sleeps. The daemon then
    /// resumes at CONS and reads that slot again.
    public mutating func acknowledgeError<Signals: SharedQueueSignalling>(rewriting replacement: Command? = nil,
                                                                          signals: Signals) throws(Signals.Failure) -> Acknowledgement {
        let sequence = region.loadErrorSequence()
        guard sequence != acknowledgedSequence else { return .noError }
        let record = region.loadErrorRecord()
        let error = SharedQueueError(sequence: sequence, cerror: record.cerror, kind: record.kind, consumer: record.consumer)
        if let replacement {
            // The slot must be one this producer published and the daemon has not consumed: CONS ≤
            // error_cons < PROD. The stored position is bounded by the geometry's index either way.
            let behind = geometry.distance(from: error.consumer, to: producer)
            guard error.errorKind == .command, geometry.isValid(error.consumer), behind >= 1, behind <= geometry.entries else {
                return .noSlotToRewrite(error)
            }
            region.storeCommand(replacement, at: error.consumer)
        }
        region.storeProducer(producer)
        acknowledgedSequence = sequence
        region.storeErrorAcknowledgement(sequence)
        try kickIfSleeping(signals)
        return .acknowledged(error)
    }
}
