import Atomics
import SMMUv3
import SystemPackage
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One viommu's command queue: a ``CommandRing``, the ``CommandSink`` that executes its commands,
/// an optional drain thread, and ``SyncFence``s.
///
/// ## Who drains
/// The sync path is what a guest vCPU waits on, and on a 2-core KVM host a blocking hand-off between
/// two threads costs 40-60 µs at the median (milliseconds at p99), several times a whole socket round
/// trip. So under the default policy, ``DrainPolicy/inlineWithDrainThread``, **the thread that pushes
/// drains**: after publishing commands or a fence marker it tries to take the ring's consumer role
/// and, if it gets it, calls the sink itself and completes the fences it passes. A fence on an idle
/// queue is therefore complete when ``sync(onComplete:)`` returns, with no thread woken.
///
/// Plain (non-sync) pushes drain inline too, when the role is free: the sink calls are work the next
/// sync would wait for anyway, doing them here costs no hand-off, and it keeps the drain thread
/// asleep. When the role is busy the push returns at once and the holder picks the commands up.
///
/// The drain thread only takes what is left under load. A holder releasing the role re-checks the
/// ring (see ``ConsumerRole/release()``); if commands arrived meanwhile it drains again, up to
/// ``Tuning/inlineRounds`` passes, then wakes the drain thread rather than keep a submitter from its
/// own reply. A thread waiting on a fence spins, draining the queue itself whenever the role frees
/// up, and parks only after that. No published command is ever stranded: a producer publishes, fences,
/// then tries the role; a holder clears the role, fences, then re-checks; one of them sees the other.
///
/// ## Syncing an idle queue
/// A CMD_SYNC's commands usually find their queue idle: nothing queued, nobody draining. For that case
/// ``executeAndSync(_:)`` skips the ring altogether: the caller takes the consumer role, hands the
/// commands to the sink and reads the sync's outcome, with no copy into the ring, no fence object and
/// no marker — the same outcome a push and a fence covering this queue alone would have had. When the
/// queue is not idle it does nothing and the caller pushes and fences as usual.
///
/// ``DrainPolicy/drainThread`` hands every command to the drain thread instead (the classic design,
/// kept to measure the difference), and ``DrainPolicy/inline`` has no drain thread at all.
///
/// ## Whose drain thread
/// A queue made with a ``DrainLane`` (its pSMMU's lane of a ``DrainPool``, as the daemon makes them) has
/// no thread of its own: "waking the drain thread" puts the queue on the lane's ready list, and one of the
/// lane's threads makes the pass. Without a lane the queue starts its own thread, as above.
///
/// ## Lifetime
/// ``stop()`` closes the ring, drains everything pushed before (completing or failing the fences in
/// it) and joins the drain thread. The drain thread keeps the queue alive until then, so a queue with
/// one must be stopped. Pushes and fences after ``stop()`` fail.
///
/// `@unchecked Sendable`: producers only touch the lock-free ring and atomics; `consumer` is only
/// touched by the holder of the ring's consumer role (whose acquire/release orders successive holders);
/// the drain thread's wake-up flag is guarded by its parker's mutex; `drainThread` and `stopped`
/// are written under `stopLock` (and `drainThread` once in `init`, before the queue is shared).
public final class ViommuQueue: @unchecked Sendable {
    /// Who calls the sink.
    public enum DrainPolicy: Hashable, Sendable {
        /// No drain thread: pushing and syncing threads drain whenever they can take the consumer role;
        /// a thread that cannot relies on the holder's re-check.
        case inline
        /// The default: pushing and syncing threads drain inline when they can; a drain thread picks up
        /// what is left when they could not, or after ``Tuning/inlineRounds`` passes.
        case inlineWithDrainThread
        /// Only the drain thread drains: every push wakes it if it sleeps, every sync waits for it.
        case drainThread
    }

    /// Spin budgets of the waiting paths.
    public struct Tuning: Hashable, Sendable {
        /// Busy iterations a ``SyncFence/wait()`` spins (helping drain) before it yields.
        public var syncSpins: Int
        /// `sched_yield` calls a ``SyncFence/wait()`` makes before it parks.
        public var syncYields: Int
        /// Busy iterations the drain thread watches the ring for new commands before it sleeps.
        public var drainThreadIdleSpins: Int
        /// Passes an inline drainer makes when commands keep arriving, before it wakes the drain thread.
        public var inlineRounds: Int

        public init(syncSpins: Int = 20_000, syncYields: Int = 20, drainThreadIdleSpins: Int = 2_000, inlineRounds: Int = 2) {
            self.syncSpins = syncSpins
            self.syncYields = syncYields
            self.drainThreadIdleSpins = drainThreadIdleSpins
            self.inlineRounds = inlineRounds
        }
    }

    /// How a queue is built.
    public struct Configuration: Hashable, Sendable {
        /// Ring slots: a power of two (each is a 16-byte command or a fence marker).
        public var capacity: Int
        public var drainPolicy: DrainPolicy
        public var tuning: Tuning

        public init(capacity: Int = 4096, drainPolicy: DrainPolicy = .inlineWithDrainThread, tuning: Tuning = Tuning()) {
            self.capacity = capacity
            self.drainPolicy = drainPolicy
            self.tuning = tuning
        }
    }

    /// Counters of what the queue did.
    public struct Statistics: Hashable, Sendable {
        /// Sink calls made by pushing or syncing threads (inline drains).
        public var inlineSinkCalls: Int = 0
        /// Sink calls made by the drain thread.
        public var drainThreadSinkCalls: Int = 0
        /// Commands handed to the sink, summed over its calls (the commands after a failed one go again in
        /// the next call and count again, as a backend's own `commandsReceived` counts them).
        public var sinkCommands: Int = 0
        /// Commands the sink reported completed.
        public var commandsCompleted: Int = 0
        /// Commands the sink reported failed.
        public var commandsFailed: Int = 0
        /// Fence markers the consumer reached.
        public var fencesReached: Int = 0
        /// Times the drain thread went to sleep and was woken.
        public var drainThreadWakeups: Int = 0
        /// Times a producer found the ring full.
        public var fullRingWaits: Int = 0
        /// Times a producer parked waiting for room.
        public var producerParks: Int = 0
        /// The most commands ever pushed and not yet consumed (ring occupancy's high-water mark).
        public var occupancyHighWater: UInt64 = 0
        /// Syncs completed by ``ViommuQueue/executeAndSync(_:)`` on an idle queue, without the ring (also
        /// counted in ``fencesReached``).
        public var immediateSyncs: Int = 0
        /// Sink calls by batch size: entry *b* counts calls of *n* commands with 2^*b* ≤ *n* < 2^(*b*+1).
        public var sinkBatchSizeLog2: [Int] = Array(repeating: 0, count: ViommuQueue.batchSizeBuckets)
        public init() {}

        /// Sink calls by anyone: what this queue asked of its backend (one call each).
        public var sinkCalls: Int { inlineSinkCalls + drainThreadSinkCalls }
    }

    /// The queue's configuration.
    public let configuration: Configuration
    /// The ring (its positions are the ones ``push(_:)-(UnsafeBufferPointer<Command>)`` returns).
    package let ring: CommandRing
    private let sink: CommandSink
    private let consumer = ConsumerState()
    private let counters: UnsafeMutablePointer<Int.AtomicRepresentation>
    private let drainSleeping = ManagedAtomic<Bool>(false)
    private let stopRequested = ManagedAtomic<Bool>(false)
    private let drainParker = Parker()
    /// Guarded by `drainParker`.
    private var wakeRequested = false
    /// Guarded by `drainParker`: the drain thread is inside its condition wait.
    private var drainThreadParked = false
    private let stopLock = Parker()
    /// Whether the policy has a drain thread (constant, unlike `drainThread`, which `stop()` clears).
    private let hasDrainThread: Bool
    /// The pool lane whose threads are this queue's drain thread; `nil`: it has its own (`drainThread`).
    private let lane: DrainLane?
    /// Whether the queue is on `lane`'s ready list (set by whoever puts it there, cleared by the lane
    /// thread before its pass).
    private let scheduled = ManagedAtomic<Bool>(false)
    /// Times the queue was put on its lane's ready list: its drain thread's wake-ups (written by any
    /// thread, unlike `counters`).
    private let laneWakeups = ManagedAtomic<Int>(0)
    private var drainThread: OSThread?
    private var stopped = false

    /// Buckets of the sink batch-size histogram (batches up to 2^32 commands).
    public static let batchSizeBuckets = 33
    /// Highest occupancy seen after a push; raised by producers with a compare-and-swap.
    private let highWater = ManagedAtomic<UInt64>(0)
    /// The batch-size histogram; written only by the consumer-role holder, like `counters`.
    private let batchSizes: UnsafeMutablePointer<Int.AtomicRepresentation>

    private enum Counter: Int, CaseIterable {
        case inlineSinkCalls, drainThreadSinkCalls, commandsCompleted, commandsFailed, fencesReached, drainThreadWakeups
        case immediateSyncs, sinkCommands
        /// Commands handed to the sink by ``executeAndSync(_:)`` and not yet returned: part of the occupancy.
        case immediateInFlight
    }

    /// Creates a queue draining into `sink`. When the policy has a drain thread, that is `drainLane`'s
    /// threads when one is given, else a thread of the queue's own.
    /// - Throws: ``ViommuQueueError``.
    public init(configuration: Configuration = Configuration(), drainLane: DrainLane? = nil,
                sink: @escaping CommandSink) throws(ViommuQueueError) {
        self.configuration = configuration
        do throws(CommandRingError) {
            ring = try CommandRing(capacity: configuration.capacity)
        } catch {
            switch error {
            case .invalidCapacity(let capacity): throw .invalidCapacity(capacity)
            case .memoryUnavailable(let errno): throw .ringMemoryUnavailable(errno: errno)
            }
        }
        self.sink = sink
        hasDrainThread = configuration.drainPolicy != .inline
        lane = hasDrainThread ? drainLane : nil
        batchSizes = .allocate(capacity: Self.batchSizeBuckets)
        batchSizes.initialize(repeating: Int.AtomicRepresentation(0), count: Self.batchSizeBuckets)
        counters = .allocate(capacity: Counter.allCases.count)
        counters.initialize(repeating: Int.AtomicRepresentation(0), count: Counter.allCases.count)
        if hasDrainThread, lane == nil {
            do throws(Errno) {
                drainThread = try OSThread { [self] in drainThreadMain() }
            } catch {
                throw .drainThreadStartFailed(errno: error.rawValue)
            }
        }
    }

    deinit {
        // Every fence marker still in the ring holds its fence, which holds this queue: a queue is only
        // deallocated once its ring holds no fence.
        batchSizes.deinitialize(count: Self.batchSizeBuckets)
        batchSizes.deallocate()
        counters.deinitialize(count: Counter.allCases.count)
        counters.deallocate()
    }

    // MARK: Observing

    /// The first ring position not yet consumed: everything before it was executed (or failed) and
    /// the sink returned. Monotonically increasing, published with release ordering.
    public var consumedPosition: UInt64 { ring.consumedPosition }

    /// The next position a push will claim.
    public var claimedPosition: UInt64 { ring.claimedPosition }

    /// Commands accepted and not yet executed: pushed and not consumed, plus those an
    /// ``executeAndSync(_:)`` is handing to the sink right now.
    public var occupancy: UInt64 {
        let inFlight = UInt64(max(0, load(.immediateInFlight)))
        return UInt64(ring.occupancy) &+ inFlight
    }

    /// A snapshot of the counters.
    public var statistics: Statistics {
        var statistics = Statistics()
        statistics.inlineSinkCalls = load(.inlineSinkCalls)
        statistics.drainThreadSinkCalls = load(.drainThreadSinkCalls)
        statistics.sinkCommands = load(.sinkCommands)
        statistics.commandsCompleted = load(.commandsCompleted)
        statistics.commandsFailed = load(.commandsFailed)
        statistics.fencesReached = load(.fencesReached)
        statistics.drainThreadWakeups = load(.drainThreadWakeups) + laneWakeups.load(ordering: .relaxed)
        statistics.immediateSyncs = load(.immediateSyncs)
        statistics.fullRingWaits = ring.fullRingWaits
        statistics.producerParks = ring.producerParks
        statistics.occupancyHighWater = highWater.load(ordering: .relaxed)
        for b in 0..<Self.batchSizeBuckets {
            statistics.sinkBatchSizeLog2[b] = UnsafeAtomic(at: batchSizes + b).load(ordering: .relaxed)
        }
        return statistics
    }

    private func load(_ counter: Counter) -> Int {
        UnsafeAtomic(at: counters + counter.rawValue).load(ordering: .relaxed)
    }

    /// Adds to a counter. Only the consumer-role holder writes these counters, and successive holders
    /// are ordered by the role flag, so a plain load and store suffice (no locked read-modify-write).
    private func add(_ counter: Counter, _ amount: Int) {
        let word = UnsafeAtomic<Int>(at: counters + counter.rawValue)
        word.store(word.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }

    // MARK: Pushing

    /// Pushes `commands` (see ``CommandRing/push(_:whileFull:)-(UnsafeBufferPointer<Command>,_)``) and
    /// gets them drained: inline when the consumer role is free under the inline policies, else by the
    /// role's holder or the drain thread. Returns once they are published, not executed: use
    /// ``sync(onComplete:)`` to wait for them. Waits while the ring is full (draining inline meanwhile
    /// under the inline policies).
    ///
    /// - Returns: the ring positions of the batch, or of its last piece when it was larger than the
    ///   ring's capacity and split.
    /// - Throws: ``CommandRingClosedError`` after ``stop()``.
    @discardableResult
    public func push(_ commands: UnsafeBufferPointer<Command>) throws(CommandRingClosedError) -> Range<UInt64> {
        try push(commands, tag: nil)
    }

    /// Pushes `commands` with a tag each (`tag(i)` for `commands[i]`), which a failure of that command
    /// carries back (``CommandFailure/tag``): the engine tags each command with its submission and guest
    /// index. Otherwise as ``push(_:)-(UnsafeBufferPointer<Command>)``.
    @discardableResult
    public func push(_ commands: UnsafeBufferPointer<Command>, tag: ((Int) -> UInt64)?) throws(CommandRingClosedError) -> Range<UInt64> {
        let positions: Range<UInt64>
        if let tag {
            positions = try ring.push(commands, tag: tag, whileFull: { whileFull() })
        } else {
            positions = try ring.push(commands, whileFull: { whileFull() })
        }
        // The consumer may have consumed past our batch already: then it adds nothing to the occupancy.
        let consumedNow = ring.consumedPosition
        if positions.upperBound > consumedNow { raiseHighWater(positions.upperBound &- consumedNow) }
        afterPublish()
        return positions
    }

    /// Pushes `commands` (see ``push(_:)-(UnsafeBufferPointer<Command>)``).
    @discardableResult
    public func push(_ commands: [Command]) throws(CommandRingClosedError) -> Range<UInt64> {
        let result: Result<Range<UInt64>, CommandRingClosedError> = commands.withUnsafeBufferPointer { buffer in
            do throws(CommandRingClosedError) { return .success(try push(buffer)) }
            catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Submits a fence covering this queue alone (``SyncFence/submit(covering:onComplete:)``).
    @discardableResult
    public func sync(onComplete: SyncFence.Completion? = nil) -> SyncFence {
        SyncFence.submit(covering: [self], onComplete: onComplete)
    }

    /// What ``executeAndSync(_:)`` found when it completed a sync on an idle queue.
    public struct ImmediateSync: Sendable, Hashable {
        /// The first command failure on this queue since its previous sync: what a fence covering this
        /// queue would fail with. `nil` when every such command succeeded.
        public var failure: CommandFailure?
        /// When ``failure`` is one of the commands given to ``ViommuQueue/executeAndSync(_:)``, its
        /// offset among them; `nil` when it is an earlier, unsynced command (or there is no failure).
        public var failedOffset: Int?

        public init(failure: CommandFailure? = nil, failedOffset: Int? = nil) {
            self.failure = failure
            self.failedOffset = failedOffset
        }
    }

    /// Executes `commands` and completes a sync covering this queue alone on the calling thread,
    /// without the ring, if the queue is idle: the drain policy is an inline one, the queue is open,
    /// nothing is queued and no other thread holds the consumer role.
    ///
    /// The outcome is the one `push(commands)` followed by a fence covering only this queue would have
    /// had: the commands reach the sink in order in one call (more after a failure, which does not stop
    /// the later ones), and the sync reports the first failure since the queue's previous sync. The
    /// statistics count the sink calls, the commands, a reached fence and an immediate sync; while the
    /// sink runs, the commands count in ``occupancy``.
    ///
    /// - Returns: `nil`, having done nothing, when the queue is not idle: push and place a fence instead.
    public func executeAndSync(_ commands: UnsafeBufferPointer<Command>) -> ImmediateSync? {
        guard configuration.drainPolicy != .drainThread, let role = ring.tryAcquireConsumerRole() else { return nil }
        // Holding the role, nothing can be consumed; a producer that claims from now on is ordered after
        // this sync (as if it had pushed after the fence), and our release's re-check drains its entries.
        let base = role.position
        guard !ring.isClosed, ring.claimedPosition == base else {
            release(role)
            return nil
        }
        let inFlight = UnsafeAtomic<Int>(at: counters + Counter.immediateInFlight.rawValue)
        inFlight.store(commands.count, ordering: .relaxed)
        raiseHighWater(UInt64(commands.count))
        execute(commands, at: base, onDrainThread: false, fromRing: false)
        inFlight.store(0, ordering: .relaxed)
        add(.fencesReached, 1)
        add(.immediateSyncs, 1)
        // Nearly always no failure: then the optional's case is only tested, never copied (`!= nil` on a
        // Hashable payload would compare two copies).
        if case .none = consumer.firstFailure {
            release(role)
            return ImmediateSync()
        }
        let failure = consumer.firstFailure.take()
        release(role)
        // `execute` numbered our commands from `base`; an earlier failure was consumed before `base`.
        let offset = failure.flatMap { $0.position >= base ? Int($0.position &- base) : nil }
        return ImmediateSync(failure: failure, failedOffset: offset)
    }

    /// Places `fence`'s marker for `queueIndex` in the ring and gets it drained; `false` when stopped.
    func placeFence(_ fence: SyncFence, queueIndex: Int) -> Bool {
        let reference = Unmanaged.passRetained(fence)
        let marker = FenceMarker(fence: reference, queueIndex: queueIndex)
        do {
            try ring.pushMarker(marker.ringMarker, whileFull: { whileFull() })
        } catch {
            reference.release()
            return false
        }
        afterPublish()
        return true
    }

    /// What a producer does after publishing: get the entries drained without stranding them.
    @inline(__always)
    private func afterPublish() {
        // Dekker with `ConsumerRole.release()` and with the drain thread's sleep: our publication is
        // ordered before our read of the role flag / the sleeping flag.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        switch configuration.drainPolicy {
        case .inline, .inlineWithDrainThread:
            drainOnCallingThread()
        case .drainThread:
            if lane != nil || drainSleeping.load(ordering: .relaxed) { wakeDrainThread() }
        }
    }

    /// What a producer does each time it finds the ring full.
    private func whileFull() {
        switch configuration.drainPolicy {
        case .inline, .inlineWithDrainThread:
            drainOnCallingThread()
        case .drainThread:
            if lane != nil || drainSleeping.load(ordering: .relaxed) { wakeDrainThread() }
        }
    }

    /// A fence waiter's spin step: drain inline if the role is free and work is waiting.
    func helpDrain() {
        guard configuration.drainPolicy != .drainThread else { return }
        if ring.hasPublishedEntries && !ring.isConsumerRoleHeld { drainOnCallingThread() }
    }

    // MARK: Draining

    /// Drains on the calling thread for as long as it can take the consumer role and work remains,
    /// bounded by ``Tuning/inlineRounds`` passes when a drain thread can take over.
    private func drainOnCallingThread() {
        var rounds = 0
        while let role = ring.tryAcquireConsumerRole() {
            // One pass covers what was claimed when it began, so a submitter is not kept draining a
            // stream that other producers keep feeding.
            guard drainAndRelease(role, upTo: ring.claimedPosition, onDrainThread: false).pending else { return }
            rounds += 1
            if hasDrainThread, rounds >= configuration.tuning.inlineRounds {
                wakeDrainThread()
                return
            }
        }
        // Another thread holds the role: its release re-check will see what we published.
    }

    /// The consumer's hand-over, the one place it is written: with `role`, drains the ring up to `limit`
    /// (`nil`: drains nothing), gives the role back, then notifies the fences completed while it was held
    /// (after the release, so a woken waiter finds the role free). Returns the entries consumed and
    /// whether commands were published meanwhile (``ConsumerRole/release()``'s re-check).
    private func drainAndRelease(_ role: consuming ConsumerRole, upTo limit: UInt64?,
                                 onDrainThread: Bool) -> (consumed: UInt64, pending: Bool) {
        var consumed: UInt64 = 0
        if let limit {
            var visitor = DrainVisitor(queue: self, onDrainThread: onDrainThread)
            consumed = role.drain(upTo: limit, into: &visitor)
        }
        let completed = consumer.completed.head == nil ? nil : consumer.completed.take()
        let pending = role.release()
        if let completed { SyncFence.notifyAll(completed) }
        return (consumed, pending)
    }

    /// Gives back a role taken with ``tryAcquireConsumerRole()`` and makes sure the commands published
    /// while it was held get drained: by waking the drain thread, or inline when there is none.
    public func release(_ role: consuming ConsumerRole) {
        guard drainAndRelease(role, upTo: nil, onDrainThread: false).pending else { return }
        if hasDrainThread { wakeDrainThread() } else { drainOnCallingThread() }
    }

    /// Takes the ring's consumer role if it is free, keeping every other thread (submitters, the drain
    /// thread) from draining until it is given back with ``release(_:)``. Don't drain through it (the
    /// ring's markers are the queue's fences); hold it only to pause the queue, e.g. in a test. Give it
    /// back with ``release(_:)``, not by dropping it: dropping skips the re-check, leaving what was
    /// pushed meanwhile until the next push or fence.
    package func tryAcquireConsumerRole() -> ConsumerRole? {
        ring.tryAcquireConsumerRole()
    }

    /// Raises the occupancy high-water mark to `occupancy` if it is higher (one load when it is not).
    private func raiseHighWater(_ occupancy: UInt64) {
        var seen = highWater.load(ordering: .relaxed)
        while occupancy > seen {
            let (exchanged, original) = highWater.weakCompareExchange(
                expected: seen, desired: occupancy, ordering: .relaxed)
            if exchanged { return }
            seen = original
        }
    }

    /// Counts one sink call of `count` commands in its log2 bucket (consumer-role holder only).
    private func recordBatchSize(_ count: Int) {
        let bucket = min(count <= 1 ? 0 : Int.bitWidth - 1 - count.leadingZeroBitCount, Self.batchSizeBuckets - 1)
        let word = UnsafeAtomic<Int>(at: batchSizes + bucket)
        word.store(word.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
    }

    /// Hands a run of commands to the sink; on a failure records it (the first since the last fence),
    /// with its tag when the run is the ring's (`fromRing`; ``CommandRing/tag(at:)``), and carries on with
    /// the next command.
    fileprivate func execute(_ commands: UnsafeBufferPointer<Command>, at position: UInt64, onDrainThread: Bool,
                             fromRing: Bool) {
        var offset = 0
        var calls = 0
        var completedCount = 0
        var failedCount = 0
        var sentCount = 0
        while offset < commands.count {
            let batch = UnsafeBufferPointer(rebasing: commands[offset...])
            let result = sink(batch)
            calls += 1
            sentCount += batch.count
            recordBatchSize(batch.count)
            let completed = min(max(result.completed, 0), batch.count)
            completedCount += completed
            if completed == batch.count { break }
            let failedIndex = offset + completed
            let failure = result.failure ?? InvalidationFailure(
                queueError: .abort,
                message: "the sink completed \(completed) of \(batch.count) commands without reporting a failure")
            if consumer.firstFailure == nil {
                let failedPosition = position + UInt64(failedIndex)
                consumer.firstFailure = CommandFailure(
                    position: failedPosition, command: commands[failedIndex], failure: failure,
                    tag: fromRing ? ring.tag(at: failedPosition) : 0)
            }
            failedCount += 1
            offset = failedIndex + 1
        }
        add(onDrainThread ? .drainThreadSinkCalls : .inlineSinkCalls, calls)
        add(.sinkCommands, sentCount)
        add(.commandsCompleted, completedCount)
        if failedCount > 0 { add(.commandsFailed, failedCount) }
    }

    /// The consumer reached a fence marker: the fence's part for this queue is done.
    fileprivate func reachFence(_ marker: FenceMarker) {
        add(.fencesReached, 1)
        let fence = marker.fence.takeRetainedValue()
        let failure = consumer.firstFailure.map(SyncFailure.Reason.commandFailed)
        consumer.firstFailure = nil
        if fence.arrive(queueIndex: marker.queueIndex, failure: failure) {
            consumer.completed.append(fence)
        }
    }


    // MARK: The drain thread

    private func drainThreadMain() {
        let tuning = configuration.tuning
        while true {
            if let role = ring.tryAcquireConsumerRole() {
                let pass = drainAndRelease(role, upTo: ring.claimedPosition, onDrainThread: true)
                if pass.pending || pass.consumed > 0 { continue }
            }
            if stopRequested.load(ordering: .acquiring), ring.consumedPosition == ring.claimedPosition {
                return  // the ring is closed and everything claimed was drained
            }
            var spins = 0
            while spins < tuning.drainThreadIdleSpins, !workForDrainThread() { spins += 1 }
            if spins < tuning.drainThreadIdleSpins { continue }
            sleepUntilWoken()
        }
    }

    /// One pass by a lane thread (``DrainLane``): returns whether commands arrived during it, so the
    /// queue goes back on the ready list.
    func drainOnLane() -> Bool {
        scheduled.store(false, ordering: .sequentiallyConsistent)
        // Role busy: its holder's release re-checks the ring and wakes us again if need be.
        guard let role = ring.tryAcquireConsumerRole() else { return false }
        return drainAndRelease(role, upTo: ring.claimedPosition, onDrainThread: true).pending
    }

    /// Whether the drain thread is parked on its condition variable until someone wakes it: tests.
    var isDrainThreadParked: Bool { drainParker.withLock { drainThreadParked } }

    private func workForDrainThread() -> Bool {
        ring.hasPublishedEntries && !ring.isConsumerRoleHeld
    }

    private func sleepUntilWoken() {
        drainSleeping.store(true, ordering: .sequentiallyConsistent)
        // Dekker with `afterPublish` (drain-thread policy): we announce we sleep, then look at the
        // ring; a producer publishes, then looks at `drainSleeping`.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let stopping = stopRequested.load(ordering: .acquiring)
        if workForDrainThread() || (stopping && ring.consumedPosition == ring.claimedPosition) {
            drainSleeping.store(false, ordering: .relaxed)
            return
        }
        drainParker.withLock {
            if stopping {
                // Producers that claimed before the ring closed may still publish, and may drain their
                // entries themselves: poll rather than count on a wake-up.
                if !wakeRequested { drainParker.waitLocked(nanoseconds: 1_000_000) }
            } else {
                drainThreadParked = true
                while !wakeRequested { drainParker.waitLocked() }
                drainThreadParked = false
            }
            wakeRequested = false
        }
        drainSleeping.store(false, ordering: .relaxed)
        add(.drainThreadWakeups, 1)
    }

    /// Gets the drain thread to make a pass: puts the queue on its lane's ready list (unless it is there
    /// already), or wakes its own thread.
    func wakeDrainThread() {
        if let lane {
            // Sequentially consistent: ordered after the caller's publication, and against the lane
            // thread's clearing of the flag before its pass (`drainOnLane`): one of them sees the other.
            if !scheduled.exchange(true, ordering: .sequentiallyConsistent) {
                laneWakeups.wrappingIncrement(ordering: .relaxed)
                lane.schedule(self)
            }
            return
        }
        drainParker.withLock {
            wakeRequested = true
            drainParker.broadcastLocked()
        }
    }

    // MARK: Stopping

    /// Stops the queue: closes the ring (later pushes and fences fail, ``executeAndSync(_:)`` declines),
    /// drains everything pushed before, completing or failing the fences among it, joins the drain thread
    /// and waits for an ``executeAndSync(_:)`` in progress. Returns when done; idempotent. Without a drain thread the calling thread drains (waiting for any thread that
    /// holds the consumer role by hand to release it).
    public func stop() {
        stopLock.withLock {
            guard !stopped else { return }
            ring.close()
            stopRequested.store(true, ordering: .releasing)
            if let drainThread {
                wakeDrainThread()
                drainThread.join()
                self.drainThread = nil
            } else {
                // No thread of our own (inline, or a lane's): the calling thread drains what is left.
                var waits = 0
                while ring.consumedPosition != ring.claimedPosition {
                    if let role = ring.tryAcquireConsumerRole() {
                        _ = drainAndRelease(role, upTo: .max, onDrainThread: false)
                    } else {
                        Self.pause(&waits)
                    }
                }
            }
            // An `executeAndSync` that took the role before the ring closed may still be in its sink:
            // once we hold the role, none is (and a later one sees the ring closed and declines).
            var waits = 0
            while true {
                if let role = ring.tryAcquireConsumerRole() {
                    _ = role.release()
                    break
                }
                Self.pause(&waits)
            }
            stopped = true
        }
    }
}

extension ViommuQueue {
    /// A wait for another consumer-role holder (which may be inside a stalled backend): yields at first,
    /// then sleeps 200 µs at a time rather than keep a core busy.
    fileprivate static func pause(_ waits: inout Int) {
        waits += 1
        if waits <= 100 {
            sched_yield()
        } else {
            var interval = timespec(tv_sec: 0, tv_nsec: 200_000)
            _ = nanosleep(&interval, nil)
        }
    }
}

/// Why a ``ViommuQueue`` could not be created.
public enum ViommuQueueError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The capacity is not a power of two in `2...CommandRing.maximumCapacity`.
    case invalidCapacity(Int)
    /// `pthread_create` failed for the drain thread.
    case drainThreadStartFailed(errno: Int32)
    /// The ring's memory could not be mapped (``CommandRingError/memoryUnavailable(errno:)``).
    case ringMemoryUnavailable(errno: Int32)
    /// The ``DrainPool`` was stopped: it makes no more lanes.
    case drainPoolStopped

    public var description: String {
        switch self {
        case .invalidCapacity(let capacity): return CommandRingError.invalidCapacity(capacity).description
        case .ringMemoryUnavailable(let errno): return CommandRingError.memoryUnavailable(errno: errno).description
        case .drainThreadStartFailed(let errno): return "cannot start the drain thread (errno \(errno))"
        case .drainPoolStopped: return "the drain pool was stopped"
        }
    }
}

/// What the holder of a queue's consumer role keeps between sink calls.
///
/// `@unchecked Sendable`: only the consumer-role holder touches it. For the same reason its fields are
/// `@exclusivity(unchecked)`: two accesses can never overlap, and the runtime's dynamic check cost
/// every inline sync ~80 instructions.
private final class ConsumerState: @unchecked Sendable {
    /// The first command failure since the last fence marker.
    @exclusivity(unchecked) var firstFailure: CommandFailure?
    /// Fences completed during the current hold, notified once the role is released.
    @exclusivity(unchecked) var completed = FenceList()
}

/// An intrusive FIFO of completed fences.
struct FenceList {
    private(set) var head: SyncFence?
    private var tail: SyncFence?

    mutating func append(_ fence: SyncFence) {
        if let tail { tail.nextCompleted = fence } else { head = fence }
        tail = fence
    }

    /// Empties the list and returns its head.
    mutating func take() -> SyncFence? {
        defer { head = nil; tail = nil }
        return head
    }
}

/// Feeds a queue's sink and fences from its ring.
private struct DrainVisitor: CommandRingVisitor {
    let queue: ViommuQueue
    let onDrainThread: Bool

    mutating func visit(commands: UnsafeBufferPointer<Command>, at position: UInt64) {
        queue.execute(commands, at: position, onDrainThread: onDrainThread, fromRing: true)
    }

    mutating func visit(marker: RingMarker, at position: UInt64) {
        queue.reachFence(FenceMarker(marker))
    }
}

/// A queue's marker in its ring: the sync fence it stands for, holding one retained reference that
/// ``ViommuQueue/reachFence(_:)`` takes over, and the queue's index among the fence's covered queues.
private struct FenceMarker {
    let fence: Unmanaged<SyncFence>
    let queueIndex: Int

    init(fence: Unmanaged<SyncFence>, queueIndex: Int) {
        self.fence = fence
        self.queueIndex = queueIndex
    }

    /// The marker this queue pushed (only ``ViommuQueue/placeFence(_:queueIndex:)`` pushes to its ring).
    init(_ marker: RingMarker) {
        guard let pointer = UnsafeRawPointer(bitPattern: UInt(truncatingIfNeeded: marker.first)) else {
            preconditionFailure("a fence marker holds a SyncFence reference")
        }
        fence = Unmanaged<SyncFence>.fromOpaque(pointer)
        queueIndex = Int(truncatingIfNeeded: marker.second)
    }

    var ringMarker: RingMarker { RingMarker(UInt64(UInt(bitPattern: fence.toOpaque())), UInt64(queueIndex)) }
}
