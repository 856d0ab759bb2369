import SMMUv3
import VSMMUProtocol

// Concurrency notes (PROTOCOL.md §8.3-§8.5).
//
// A consumer is used by one thread at a time: the daemon's consumer thread of its queue (or a test). It is
// handed to that thread once, hence `@unchecked Sendable`; nothing in it is shared but the region, whose
// every access is one atomic load or store (SharedQueueRegion's notes). The peer may write anything into
// the region at any moment, so the consumer keeps its own copies of the fields it writes (CONS and the
// error sequence) and never reads them back from memory after ``SharedQueueConsumer/init(region:batchCapacity:)``;
// it reads each of the peer's fields (PROD, `error_ack`, the slots, `vmm_sleeping`) once per look into a
// local and checks it before using it. A slot is addressed through its position's index only, which the
// geometry masks: no value read from memory can make it read outside the region.
//
// Orderings: PROD and `error_ack` are loaded with acquire (the slots, the VMM's fixes, are visible after
// them); CONS is stored with release after the batch's commands completed or were queued, and the error
// record is published by the release store of `error_sequence`. After each of its stores the consumer
// issues a full fence and then reads `vmm_sleeping` (the Dekker pattern of §8.4); before sleeping it
// stores `daemon_sleeping` = 1, issues a full fence and reads PROD and `error_ack` again.

/// What the daemon's execution of one batch reports, in the terms of the guest's command queue: how many
/// commands were consumed, how many CMD_SYNCs completed, and the failing command, if any (its index in
/// the batch, where CONS stops, and its `CMDQ_CONS.ERR` code).
public struct SharedQueueBatchOutcome: Hashable, Sendable {
    /// Commands consumed: the batch's count, or the index of the failing command.
    public var consumed: Int
    /// CMD_SYNCs of the batch that completed.
    public var syncs: Int
    /// The index in the batch of the command that failed, or `nil`.
    public var failureIndex: Int?
    /// The failure's CERROR (1 `CERROR_ILL`, 2 `CERROR_ABT`, 3 `CERROR_ATC_INV_SYNC`); 0 without one.
    public var cerror: UInt8

    /// An outcome; `failureIndex` `nil` means the whole batch succeeded.
    public init(consumed: Int, syncs: Int, failureIndex: Int? = nil, cerror: UInt8 = 0) {
        self.consumed = consumed
        self.syncs = syncs
        self.failureIndex = failureIndex
        self.cerror = cerror
    }
}

/// What one ``SharedQueueConsumer/step(_:)`` did.
public struct SharedQueueStep: Hashable, Sendable {
    /// What happened.
    public enum Kind: Hashable, Sendable {
        /// PROD = CONS: nothing to consume.
        case empty
        /// The queue is stopped on an error the VMM has not acknowledged: nothing was read.
        case stopped
        /// A batch was executed and CONS moved past it.
        case consumed
        /// A command of the batch failed: CONS is on it and the error record is set (§8.5).
        case commandError
        /// PROD was not a valid position: the queue stopped with `error_kind` PROD and nothing was read.
        case producerError
    }

    public var kind: Kind
    /// Commands consumed (CONS moved by this many).
    public var commands: Int
    /// CMD_SYNCs completed.
    public var syncs: Int
    /// The consumer stored CONS, an error record or `state`, and the VMM said it sleeps: the caller
    /// writes 1 to the call eventfd.
    public var signalCall: Bool

    /// A step's result.
    public init(kind: Kind, commands: Int = 0, syncs: Int = 0, signalCall: Bool = false) {
        self.kind = kind
        self.commands = commands
        self.syncs = syncs
        self.signalCall = signalCall
    }
}

/// The daemon's side of a shared command queue (PROTOCOL.md §8.3-§8.5) over a ``SharedQueueRegion``: it
/// consumes the commands the VMM published, one batch (up to and including the next CMD_SYNC) per
/// ``step(_:)``, hands each batch to the daemon's execute function, and publishes CONS or an error record.
/// Pure: no system calls. The caller owns the mapping and the eventfds, and signals call when a step says
/// so.
public final class SharedQueueConsumer: @unchecked Sendable {
    /// The mapped queue.
    public let region: SharedQueueRegion
    /// CONS as the daemon last stored it: the next command to consume (never re-read from memory).
    public private(set) var consumer: UInt32
    /// `error_sequence` as the daemon last stored it (never re-read from memory).
    public private(set) var errorSequence: UInt32
    /// The commands of the batch being executed, copied out of their slots (allocated once).
    private let batch: UnsafeMutableBufferPointer<Command>

    /// The largest batch a step copies when no CMD_SYNC comes sooner: CONS is then stored past the
    /// commands once they are queued, which §8.3 allows.
    public static let defaultBatchCapacity = 1024

    /// A consumer of `region` that goes on from the CONS and `error_sequence` in memory now (read once:
    /// what the VMM or an earlier daemon left; the daemon checked CONS when it mapped the queue).
    public init(region: SharedQueueRegion, batchCapacity: Int = SharedQueueConsumer.defaultBatchCapacity) {
        self.region = region
        consumer = region.loadConsumer() & region.geometry.positionMask
        errorSequence = region.loadErrorSequence()
        let capacity = max(1, min(batchCapacity, Int(region.geometry.entries)))
        batch = .allocate(capacity: capacity)
        batch.initialize(repeating: Command(w0: 0, w1: 0))
    }

    deinit { batch.deallocate() }

    /// Whether the queue is stopped on an error the VMM has not acknowledged (one load of `error_ack`).
    @inline(__always) public var isStopped: Bool { region.loadErrorAcknowledgement() != errorSequence }

    /// Whether a step would do something: an acknowledgement while stopped, PROD ≠ CONS while running
    /// (a bad PROD included: the step raises its error). One load of each field looked at.
    @inline(__always) public var hasWork: Bool {
        if isStopped { return false }
        return region.loadProducer() != consumer
    }

    /// Stores `state` = RUNNING: the daemon consumes from now on. Returns whether to signal call.
    public func start() -> Bool {
        region.storeState(.running)
        return publish()
    }

    /// Stores `state` = STOPPED (§8.6): the daemon consumes no more. The caller signals call whatever
    /// this returns (a waiter must see the state); the return says whether the VMM sleeps.
    @discardableResult
    public func stop() -> Bool {
        region.storeState(.stopped)
        return publish()
    }

    /// Consumes one batch: loads PROD once and checks it; copies the commands from CONS, one slot each,
    /// up to and including the first CMD_SYNC or PROD (or the batch capacity); runs `execute` on them; and
    /// stores CONS past the batch, or on the failing command with the error record (§8.5). Consumes
    /// nothing while the queue is stopped; after the acknowledgement it resumes at CONS and reads that
    /// slot again.
    @inline(__always)
    public func step(_ execute: (UnsafeBufferPointer<Command>) -> SharedQueueBatchOutcome) -> SharedQueueStep {
        if isStopped { return SharedQueueStep(kind: .stopped) }
        let geometry = region.geometry
        let producer = region.loadProducer()
        let cons = consumer
        guard geometry.isValid(producer) else { return raiseProducerError() }
        let available = geometry.distance(from: cons, to: producer)
        guard available <= geometry.entries else { return raiseProducerError() }
        if available == 0 { return SharedQueueStep(kind: .empty) }
        let limit = min(Int(available), batch.count)
        var count = 0
        var position = cons
        while count < limit {
            let command = region.loadCommand(at: position)
            batch[count] = command
            count += 1
            position = geometry.advance(position, by: 1)
            if command.opcode == .sync { break }
        }
        let outcome = execute(UnsafeBufferPointer(rebasing: batch[0..<count]))
        if let failure = outcome.failureIndex {
            // CONS on the failing command; the index is the execute function's, bounded by the batch.
            let index = min(max(failure, 0), count)
            let stoppedAt = geometry.advance(cons, by: UInt32(index))
            consumer = stoppedAt
            region.storeConsumer(stoppedAt)
            errorSequence &+= 1
            region.storeError(sequence: errorSequence, cerror: outcome.cerror, kind: .command, consumer: stoppedAt)
            return SharedQueueStep(kind: .commandError, commands: index, syncs: outcome.syncs, signalCall: publish())
        }
        consumer = position
        region.storeConsumer(position)
        return SharedQueueStep(kind: .consumed, commands: count, syncs: outcome.syncs, signalCall: publish())
    }

    /// PROD has a bit above the wrap bit or is more than 2^n ahead of CONS: stop with `error_kind` PROD
    /// (`cerror` CERROR_ILL), CONS where it is.
    private func raiseProducerError() -> SharedQueueStep {
        region.storeConsumer(consumer)
        errorSequence &+= 1
        region.storeError(sequence: errorSequence, cerror: CommandQueueError.illegal.rawValue, kind: .producer, consumer: consumer)
        return SharedQueueStep(kind: .producerError, signalCall: publish())
    }

    /// After a store the VMM may wait on: a full fence, then `vmm_sleeping` (§8.4). Whether to signal call.
    @inline(__always) private func publish() -> Bool {
        SharedQueueRegion.fullFence()
        return region.loadVMMSleeping() != 0
    }

    // MARK: Going to sleep (§8.4)

    /// The first half of going to sleep: stores `daemon_sleeping` = 1, issues a full fence and looks at
    /// PROD and `error_ack` again. Returns `true` when the caller may sleep on kick (nothing moved; the
    /// VMM's next publication will kick); `false` when something moved, having stored `daemon_sleeping`
    /// = 0 again.
    public func prepareToSleep() -> Bool {
        region.storeDaemonSleeping(1)
        SharedQueueRegion.fullFence()
        guard hasWork else { return true }
        region.storeDaemonSleeping(0)
        return false
    }

    /// The daemon woke from its sleep on kick: stores `daemon_sleeping` = 0.
    public func wokeUp() { region.storeDaemonSleeping(0) }
}
