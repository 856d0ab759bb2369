import CommandRing
import Dispatch
import SMMUv3
import PSMMU
import Synchronization
import VirtualSMMU
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

/// How a submitted guest batch ended, in the terms the guest's command queue reports: how many
/// commands were consumed and, if one failed, its index and the CERROR (`CMDQ_CONS.ERR`).
public struct SubmissionResult: Hashable, Sendable, CustomStringConvertible {
    /// A command that failed.
    public struct Failure: Hashable, Sendable, CustomStringConvertible {
        /// Index of the failing command in the guest's batch (for a failure of a command from an earlier
        /// batch that no sync covered, the index of the CMD_SYNC that observed it).
        public var index: Int
        /// The error the guest observes.
        public var queueError: CommandQueueError
        /// Where it came from: the router, or a pSMMU backend.
        public var origin: Origin
        /// The errno of the backend's ioctl that failed the command, when a backend reported one.
        public var errno: Int32?
        public var message: String

        public enum Origin: Hashable, Sendable {
            case router
            case backend(ViommuIndex)
        }

        public init(index: Int, queueError: CommandQueueError, origin: Origin, errno: Int32? = nil,
                    message: String) {
            self.index = index
            self.queueError = queueError
            self.origin = origin
            self.errno = errno
            self.message = message
        }

        public var description: String { "command \(index): \(queueError): \(message)" }
    }

    public init(consumed: Int, failure: Failure?, syncs: Int) {
        self.consumed = consumed
        self.failure = failure
        self.syncs = syncs
    }

    /// Commands consumed: the batch's count, or the index of the first failing command (CONS stops
    /// there, as on an SMMU).
    public var consumed: Int
    /// The first failing command, if any.
    public var failure: Failure?
    /// CMD_SYNCs the batch contained that completed.
    public var syncs: Int

    public var description: String {
        failure.map { "consumed \(consumed), \($0)" } ?? "consumed \(consumed), \(syncs) sync(s)"
    }
}

/// A guest batch in flight: its CMD_SYNCs as fences, and the serial its commands are tagged with in the
/// rings, so that a failed command comes back as its guest index (``ringTag(guestIndex:)``).
///
/// Complete when every CMD_SYNC of the batch completed (at once for a batch without CMD_SYNC: its
/// commands are executed asynchronously and a later sync reports their failures). Observe it with
/// ``wait()`` or the `onComplete` given to ``VSMMUEngine/submit(_:policy:onComplete:)``.
///
/// `@unchecked Sendable`: `serial`, `syncs`, `coveredViommus` and `immediateFailures` are written only while the engine
/// builds the submission under its lock, before `sealed()`; afterwards they are only read. Fence
/// completions touch none of them: they only decrement `remaining`; the fences' outcomes are read
/// after the acquiring decrement that reached zero (each fence published its outcome before its
/// completion ran), and `storedResult` is written before the releasing store of `finished`; nothing of
/// the submission is read after that store. A submission handed back with
/// ``VSMMUEngine/recycle(_:)`` is rewritten by ``prepareForReuse(batchCount:routed:onComplete:)`` only
/// once the engine holds the only reference to it (no caller, no fence completion, no async waiter) and
/// has seen `finished` with an acquiring load.
///
/// That discipline is also why the stored properties are `@exclusivity(unchecked)`: no two accesses can
/// overlap, and the runtime's dynamic exclusivity checks (~200 instructions each, a dozen per
/// INVALIDATE) only repeated what the ordering above guarantees.
public final class Submission: @unchecked Sendable {
    /// A CMD_SYNC of the batch: its fence over the viommus whose commands went through their rings
    /// (which keeps the outcome), if any; the viommus synced at once recorded their failures already.
    struct PendingSync {
        let index: Int
        let command: Command
        /// Where the viommus the fence covers (in its queue order) start in `coveredViommus`.
        let coveredStart: Int
        let coveredCount: Int
        let fence: SyncFence?
        /// A viommu synced at once (``ViommuQueue/executeAndSync(_:)``) reported a failure.
        let failedImmediately: Bool
    }

    @exclusivity(unchecked) private var batchCount: Int
    /// The router's refusals (copied: the engine reuses its routing buffer).
    @exclusivity(unchecked) private var routingErrors: [RoutingError]
    /// This batch's serial in its engine (never 0): the high half of the tag its commands carry in the
    /// rings (``ringTag(guestIndex:)``). A failed command whose tag has another serial came from an
    /// earlier batch.
    @exclusivity(unchecked) private var serial: UInt32
    @exclusivity(unchecked) private var syncs: [PendingSync] = []
    /// Every sync's covered viommus, back to back.
    @exclusivity(unchecked) private var coveredViommus: [ViommuIndex] = []
    /// Backend failures of commands executed and synced at once, without a fence.
    @exclusivity(unchecked) private var immediateFailures: [SubmissionResult.Failure] = []
    @exclusivity(unchecked) private var onComplete: (@Sendable (SubmissionResult) -> Void)?
    /// Pending fences plus one until ``sealed()``; whoever takes it to zero finishes the submission.
    private let remaining = Atomic<Int>(1)
    private let finished = Atomic<Bool>(false)
    @exclusivity(unchecked) private var storedResult: SubmissionResult?
    /// Tasks waiting in ``completion()``, created by the first of them (most submissions are waited for
    /// with ``wait()`` and never need it); its value is `nil` once the submission finished.
    private let asyncWaiters = AtomicLazyReference<Locked<[CheckedContinuation<SubmissionResult, Never>]?>>()
    /// Set by ``completion()`` before it creates `asyncWaiters`: the common path (no async waiter) then
    /// skips the lazy reference's (non-inlined) load.
    private let hasAsyncWaiters = Atomic<Bool>(false)
    /// The engine's stall limit, when it has one (``VSMMUEngine/Configuration/stallTimeout``); set at
    /// build time like the bookkeeping above.
    @exclusivity(unchecked) private var stallLimit: StallLimit?
    /// Who finished the submission, and which syncs an expiry abandoned: only with a stall limit.
    /// Created with the first stall limit and kept across reuses.
    @exclusivity(unchecked) private var stallState: Locked<StallState>?
    /// A stall timer was scheduled for this submission: it is never reused (the timer may still fire).
    private let hasStallTimer = Atomic<Bool>(false)

    /// A stall limit and where the engine keeps what outlives one submission.
    struct StallLimit {
        var timeout: Duration
        var queueState: GuestQueueState
    }

    /// Under `stallState`'s lock.
    struct StallState: Sendable {
        /// The result is being or was stored (by the last arrival or by an expiry).
        var resolved = false
        /// An expiry stored it: the syncs in `abandoned` were not complete then.
        var expired = false
        var abandoned: Set<Int> = []
    }

    init(batchCount: Int, routed: RoutedBatch, serial: UInt32, onComplete: (@Sendable (SubmissionResult) -> Void)?,
         stallLimit: StallLimit? = nil) {
        self.batchCount = batchCount
        self.serial = serial
        self.routingErrors = routed.errors
        self.onComplete = onComplete
        self.stallLimit = stallLimit
        if stallLimit != nil { stallState = Locked(StallState()) }
    }

    // MARK: Building (engine, under its lock)

    /// Makes a finished submission new again for another batch, keeping its buffers' capacity (no
    /// allocation for the submission or its bookkeeping). Returns `false`, changing nothing, when it
    /// cannot be reused: not finished, or an async waiter list was created for it.
    ///
    /// The caller must hold the only reference (`isKnownUniquelyReferenced`) and the engine's lock.
    func prepareForReuse(batchCount: Int, routed: RoutedBatch, serial: UInt32,
                         onComplete: (@Sendable (SubmissionResult) -> Void)?, stallLimit: StallLimit? = nil) -> Bool {
        guard finished.load(ordering: .acquiring), !hasAsyncWaiters.load(ordering: .relaxed),
              !hasStallTimer.load(ordering: .relaxed),
              stallState?.withLock({ $0.expired }) != true else { return false }
        self.stallLimit = stallLimit
        if stallLimit != nil {
            if let stallState { stallState.withLock { $0 = StallState() } } else { stallState = Locked(StallState()) }
        }
        self.batchCount = batchCount
        self.serial = serial
        routingErrors = routed.errors
        self.onComplete = onComplete
        Self.empty(&syncs)
        if !coveredViommus.isEmpty { coveredViommus.removeAll(keepingCapacity: true) }
        if !immediateFailures.isEmpty { immediateFailures.removeAll(keepingCapacity: true) }
        storedResult = nil
        remaining.store(1, ordering: .relaxed)
        finished.store(false, ordering: .relaxed)
        return true
    }

    /// Empties `array`, keeping its capacity. A batch has few CMD_SYNCs (one, from a strict-mode guest):
    /// popping them is ~20 instructions each, where `removeAll(keepingCapacity:)` goes through the
    /// generic `replaceSubrange` (~150 for one element).
    private static func empty<Element>(_ array: inout [Element]) {
        if array.count <= 8 {
            while !array.isEmpty { array.removeLast() }
        } else {
            array.removeAll(keepingCapacity: true)
        }
    }

    /// Reserves room for `syncs` syncs and the viommus their `fences` cover, so that recording the batch
    /// does not regrow any buffer.
    func reserve(syncs: Int, fences: Int) {
        self.syncs.reserveCapacity(syncs)
        coveredViommus.reserveCapacity(fences)
    }

    /// The tag the engine pushes with this batch's command `guestIndex` (``ViommuQueue/push(_:tag:)``):
    /// the batch's serial in the high half, the guest index in the low half. A failure of that command
    /// carries it back (``CommandFailure/tag``), which ``guestIndex(ofTag:)`` turns into the guest index.
    @inline(__always)
    func ringTag(guestIndex: UInt32) -> UInt64 { UInt64(serial) << 32 | UInt64(guestIndex) }

    /// The guest index of this batch's command tagged `tag`; `nil` for a command of another batch (or
    /// one pushed untagged), which the CMD_SYNC that observed it reports at its own index.
    @inline(__always)
    func guestIndex(ofTag tag: UInt64) -> Int? {
        tag >> 32 == UInt64(serial) ? Int(UInt32(truncatingIfNeeded: tag)) : nil
    }

    /// Adds a CMD_SYNC whose fence covers `queues`, the queues of the viommus `covered` (same order).
    /// With no queue, the sync is complete already: every viommu it covers was synced at once, and
    /// `immediateFailure` says whether one of them recorded a failure.
    func addSync(index: Int, command: Command, covering covered: UnsafeBufferPointer<ViommuIndex>, queues: [ViommuQueue],
                 immediateFailure: Bool = false) {
        guard !queues.isEmpty else {
            syncs.append(PendingSync(index: index, command: command, coveredStart: coveredViommus.count, coveredCount: 0,
                                     fence: nil, failedImmediately: immediateFailure))
            return
        }
        let coveredStart = coveredViommus.count
        coveredViommus.append(contentsOf: covered)
        remaining.add(1, ordering: .relaxed)
        // The completion may run before `submit` returns (inline drain) or on another thread; it only
        // counts the arrival. The outcome is read from the fence once every arrival is in, and
        // `syncs` is complete by then (the builder's own arrival, `sealed()`, comes after).
        let fence: SyncFence
        if let limit = stallLimit, let stallState {
            // The closure reads no field of the submission (see the type's documentation): what it
            // needs is captured here.
            let slot = syncs.count
            fence = SyncFence.submit(covering: queues) { [self] outcome in
                fenceCompleted(slot: slot, outcome, limit: limit, stallState: stallState)
            }
        } else {
            fence = SyncFence.submit(covering: queues) { [self] _ in arrive() }
        }
        syncs.append(PendingSync(index: index, command: command, coveredStart: coveredStart, coveredCount: covered.count,
                                 fence: fence, failedImmediately: immediateFailure))
    }

    /// Records the failure a viommu synced at once reported, at guest index `index`.
    func recordBackendFailure(_ command: CommandFailure, on viommu: ViommuIndex, at index: Int) {
        immediateFailures.append(Self.backendFailure(command, on: viommu, at: index))
    }

    /// Records, at the guest index `index`, a failure the engine raised itself: a carried failure of an
    /// earlier command (``GuestQueueState``) or a push refused because a stalled viommu's ring stayed full.
    func recordFailure(_ failure: SubmissionResult.Failure) {
        immediateFailures.append(failure)
    }

    /// The failure the guest sees for a command a backend failed.
    static func backendFailure(_ command: CommandFailure, on viommu: ViommuIndex, at index: Int) -> SubmissionResult.Failure {
        .init(index: index, queueError: command.queueError, origin: .backend(viommu), errno: command.errno,
              message: "\(command.command.opcode.name) on \(viommu): \(command.message)")
    }

    /// The submission is complete as far as the engine is concerned; fences may still be pending.
    /// With a stall limit, an `onComplete` and a fence still pending, a timer expires the submission if
    /// its fences make no progress for the limit, so that the `onComplete` observer gets the CERROR_ABT
    /// too (``wait()`` enforces the limit itself, ``completion()`` starts the timer when it suspends).
    func sealed() {
        arrive()
        if onComplete != nil { startStallTimer() }
    }

    /// Starts the stall timer once, with a stall limit and a fence still pending. A submission with a
    /// timer is never reused: the timer may fire after it finished.
    private func startStallTimer() {
        guard let limit = stallLimit, !isComplete,
              !hasStallTimer.exchange(true, ordering: .acquiringAndReleasing) else { return }
        scheduleStallCheck(after: limit.timeout, progress: progressMark())
    }

    private func scheduleStallCheck(after timeout: Duration, progress: UInt64) {
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = Int(clamping: seconds) &* 1_000_000_000 &+ Int(attoseconds / 1_000_000_000)
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(max(nanoseconds, 1))) { [weak self] in
            guard let self, !self.isComplete else { return }
            let now = self.progressMark()
            if now != progress { self.scheduleStallCheck(after: timeout, progress: now) } else { self.expire() }
        }
    }

    /// Grows whenever a queue covered by a pending fence consumes a ring slot: the sum of those
    /// queues' consumed positions (a fence's queues only move forward).
    private func progressMark() -> UInt64 {
        var mark: UInt64 = 0
        for sync in syncs {
            guard let fence = sync.fence, !fence.isComplete else { continue }
            for queue in fence.coveredQueues { mark &+= queue.consumedPosition }
        }
        return mark
    }

    /// A fence of a submission with a stall limit completed. If an expiry abandoned its sync, the
    /// guest has been told CERROR_ABT already and the fence's outcome would be lost: its first command
    /// failure is carried to the guest's next CMD_SYNC, and its viommus are no longer stalled.
    /// Only in that late case does it read the submission's bookkeeping, which is never rewritten then:
    /// an expired submission is never reused.
    private func fenceCompleted(slot: Int, _ outcome: Result<Void, SyncFailure>, limit: StallLimit,
                                stallState: Locked<StallState>) {
        let late = stallState.withLock { $0.expired && $0.abandoned.contains(slot) }
        if late {
            let sync = syncs[slot]
            if case .failure(let failure) = outcome {
                for queueFailure in failure.failures {
                    guard case .commandFailed(let command) = queueFailure.reason else { continue }
                    let viommu = coveredViommu(queueFailure.queueIndex, of: sync)
                    limit.queueState.carry(.init(queueError: command.queueError, viommu: viommu,
                                                 message: "\(command.command.opcode.name) on \(viommu): \(command.message)"))
                }
            }
            for i in 0..<sync.coveredCount { limit.queueState.resume(coveredViommus[sync.coveredStart + i]) }
        }
        arrive()
    }

    /// Ends the submission now, if it is not ended yet: every sync whose fence is still pending is
    /// abandoned, and the first of them fails with CERROR_ABT (the guest retries it). The abandoned
    /// fences stay in their rings: their commands still execute, in order, when the backend wakes up,
    /// and meanwhile the guest's retried CMD_SYNC covers their viommus (``GuestQueueState``).
    func expire() {
        guard let limit = stallLimit, let stallState else { return }
        let abandoned = stallState.withLock { state -> [Int]? in
            guard !state.resolved else { return nil }
            var abandoned: [Int] = []
            for (slot, sync) in syncs.enumerated() where sync.fence?.isComplete == false { abandoned.append(slot) }
            state.resolved = true
            state.expired = true
            state.abandoned = Set(abandoned)
            // Before any late completion can look (it takes this lock first).
            for slot in abandoned {
                let sync = syncs[slot]
                for i in 0..<sync.coveredCount { limit.queueState.stall(coveredViommus[sync.coveredStart + i]) }
            }
            return abandoned
        }
        guard let abandoned else { return }
        storedResult = computeResult(abandoned: Set(abandoned), timeout: limit.timeout)
        finish()
    }

    /// The engine was stopped: nothing was pushed.
    func finishStopped() {
        storedResult = SubmissionResult(consumed: 0, failure: SubmissionResult.Failure(
            index: 0, queueError: .abort, origin: .router, message: "the vSMMU is stopping"), syncs: 0)
        finish()
    }

    private func arrive() {
        let (_, now) = remaining.subtract(1, ordering: .acquiringAndReleasing)
        guard now == 0 else { return }
        if let stallState {
            // An expiry may have ended the submission already.
            let mine = stallState.withLock { state -> Bool in
                defer { state.resolved = true }
                return !state.resolved
            }
            guard mine else { return }
        }
        storedResult = computeResult()
        finish()
    }

    private func finish() {
        guard case .some = storedResult else { return }
        // Read before publishing `finished`: from then on the engine may reuse the submission. The result
        // is copied only for an `onComplete` (most submissions are waited for and have none).
        let onComplete = self.onComplete
        let completed = onComplete == nil ? nil : storedResult
        finished.store(true, ordering: .sequentiallyConsistent)
        // Dekker with `completion()`: we publish `finished`, then look for waiters; a waiter publishes
        // the waiter list, then looks at `finished`. One of us sees the other.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        // Read after publishing `finished`, but a submission with async waiters is never reused
        // (``prepareForReuse(batchCount:routed:serial:onComplete:stallLimit:)``).
        if hasAsyncWaiters.load(ordering: .sequentiallyConsistent), let list = asyncWaiters.load(), let result = storedResult {
            let waiters = list.withLock { waiters -> [CheckedContinuation<SubmissionResult, Never>] in
                defer { waiters = nil }
                return waiters ?? []
            }
            for waiter in waiters { waiter.resume(returning: result) }
        }
        if let onComplete, let completed { onComplete(completed) }
    }

    // MARK: Observing

    /// Whether every CMD_SYNC of the batch completed.
    public var isComplete: Bool { finished.load(ordering: .acquiring) }

    /// The result, once complete.
    public var result: SubmissionResult? { isComplete ? storedResult : nil }

    /// Blocks until every CMD_SYNC of the batch completed (helping drain the queues meanwhile) and
    /// returns the batch's result.
    ///
    /// With a stall limit (``VSMMUEngine/Configuration/stallTimeout``), a wait in which the pending
    /// fences' queues consume nothing for the limit ends the submission with CERROR_ABT at its first
    /// incomplete CMD_SYNC (see ``expire()``) and returns that.
    public func wait() -> SubmissionResult {
        if let limit = stallLimit {
            waitWithin(limit.timeout)
        } else {
            for sync in syncs { _ = try? sync.fence?.wait() }
        }
        // Every fence is complete; their completion callbacks may still be finishing.
        var spins = 0
        while !isComplete {
            spins += 1
            if spins > 64 { sched_yield() }
        }
        guard let storedResult else { preconditionFailure("a complete submission has a result") }
        return storedResult
    }

    /// Waits for every fence, or expires the submission once its fences made no progress for `timeout`.
    private func waitWithin(_ timeout: Duration) {
        var progress = progressMark()
        var deadline = ContinuousClock.now + timeout
        for sync in syncs {
            guard let fence = sync.fence else { continue }
            while fence.wait(deadline: deadline) == nil {
                if isComplete { return } // the stall timer expired it
                let now = progressMark()
                if now != progress {
                    progress = now
                    deadline = ContinuousClock.now + timeout
                    continue
                }
                expire()
                return
            }
        }
    }

    /// Suspends until the batch completes and returns its result, without blocking a thread.
    public func completion() async -> SubmissionResult {
        await withCheckedContinuation { (continuation: CheckedContinuation<SubmissionResult, Never>) in
            startStallTimer()
            hasAsyncWaiters.store(true, ordering: .sequentiallyConsistent)
            let list = asyncWaiters.storeIfNil(Locked([]))
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            let alreadyFinished = list.withLock { waiters -> Bool in
                guard waiters != nil, !finished.load(ordering: .sequentiallyConsistent) else {
                    waiters = nil
                    return true
                }
                waiters?.append(continuation)
                return false
            }
            if alreadyFinished, let storedResult { continuation.resume(returning: storedResult) }
        }
    }

    // MARK: Result

    /// The result from the fences' outcomes; the syncs in `abandoned` (expired, fence still pending)
    /// count as failed with CERROR_ABT at their guest index.
    /// The failure a batch reports: the earliest in guest order; of two at one index, the first recorded.
    struct EarliestFailure {
        private(set) var failure: SubmissionResult.Failure?

        mutating func consider(_ candidate: SubmissionResult.Failure) {
            if let current = failure, current.index <= candidate.index { return }
            failure = candidate
        }
    }

    /// The router's refusal as the guest sees it.
    static func routerFailure(_ error: RoutingError) -> SubmissionResult.Failure {
        .init(index: error.index, queueError: error.queueError, origin: .router, message: error.description)
    }

    private func computeResult(abandoned: Set<Int> = [], timeout: Duration = .zero) -> SubmissionResult {
        // The usual batch: nothing refused, abandoned or failed at once. If no fence failed either, every
        // sync completed (a sync fails immediately only with a failure in `immediateFailures`).
        if abandoned.isEmpty, routingErrors.isEmpty, immediateFailures.isEmpty,
           syncs.allSatisfy({ sync in sync.fence.map { fence in if case .success? = fence.result { true } else { false } } ?? true }) {
            return SubmissionResult(consumed: batchCount, failure: nil, syncs: syncs.count)
        }
        var earliest = EarliestFailure()
        func consider(_ candidate: SubmissionResult.Failure) { earliest.consider(candidate) }
        if let error = routingErrors.first { consider(Self.routerFailure(error)) }
        for immediate in immediateFailures { consider(immediate) }
        var completedSyncs = 0
        for (slot, sync) in syncs.enumerated() {
            if abandoned.contains(slot) {
                let fence = sync.fence
                var stalled = sync.coveredCount > 0 ? coveredViommus[sync.coveredStart] : ViommuIndex(0)
                for (i, queue) in (fence?.coveredQueues ?? []).enumerated() where i < sync.coveredCount && queue.occupancy > 0 {
                    stalled = coveredViommus[sync.coveredStart + i]
                    break
                }
                consider(.init(index: sync.index, queueError: .abort, origin: .backend(stalled),
                               message: "CMD_SYNC abandoned: \(stalled)'s pSMMU consumed nothing for \(timeout) (stall limit); "
                                   + "the commands before it stay queued and execute in order when it resumes, "
                                   + "and a CMD_SYNC completes only once they have"))
                continue
            }
            guard let fence = sync.fence else {
                if !sync.failedImmediately { completedSyncs += 1 }
                continue
            }
            switch fence.result {
            case .success?: if !sync.failedImmediately { completedSyncs += 1 }
            case .failure(let syncFailure)?:
                for queueFailure in syncFailure.failures {
                    let viommu = coveredViommu(queueFailure.queueIndex, of: sync)
                    switch queueFailure.reason {
                    case .commandFailed(let command):
                        let index = guestIndex(ofTag: command.tag) ?? sync.index
                        consider(Self.backendFailure(command, on: viommu, at: index))
                    case .queueStopped:
                        consider(.init(index: sync.index, queueError: .abort, origin: .backend(viommu),
                                       message: "\(viommu)'s queue stopped before the CMD_SYNC completed"))
                    }
                }
            case nil: break
            }
        }
        return SubmissionResult(consumed: earliest.failure?.index ?? batchCount, failure: earliest.failure, syncs: completedSyncs)
    }

    /// The viommu of the fence's covered queue `queueIndex`. A fence reports only the queues it was
    /// submitted with, so an index outside them is a broken invariant: a `precondition` failure, never a
    /// silent fallback to another viommu.
    private func coveredViommu(_ queueIndex: Int, of sync: PendingSync) -> ViommuIndex {
        precondition(queueIndex >= 0 && queueIndex < sync.coveredCount,
                     "fence reported covered queue \(queueIndex) of \(sync.coveredCount)")
        return coveredViommus[sync.coveredStart + queueIndex]
    }
}

/// Builds a batch's ``Submission`` only once one is needed. While every CMD_SYNC so far completed at once
/// on idle viommus (``ViommuQueue/executeAndSync(_:)``), the builder only counts them and keeps their
/// failures (nearly always none); at the first push into a ring, it makes the submission (a recycled
/// one if the engine has it) and hands it what it kept, in the order it was recorded, so the
/// submission is the one the engine would have built from the start. A batch that never needs one ends
/// as ``immediateResult()``: the engine's data path then resets and completes no submission at all.
///
/// Used by the engine under its submit lock.
struct SubmissionBuilder: ~Copyable {
    let batchCount: Int
    let routed: RoutedBatch
    let serial: UInt32
    let onComplete: (@Sendable (SubmissionResult) -> Void)?
    let stallLimit: Submission.StallLimit?
    /// The engine's recycled submission, until it is used (the engine takes back an unused one).
    var spare: Submission?
    private(set) var submission: Submission?
    /// The CMD_SYNCs recorded before the submission existed, and the ordinals of those that failed at once.
    private var syncCount = 0
    private var failedSyncs: [Int] = []
    /// Failures recorded before the submission existed, in order.
    private var failures: [SubmissionResult.Failure] = []

    init(batchCount: Int, routed: RoutedBatch, serial: UInt32, onComplete: (@Sendable (SubmissionResult) -> Void)?,
         stallLimit: Submission.StallLimit?, spare: Submission?) {
        self.batchCount = batchCount
        self.routed = routed
        self.serial = serial
        self.onComplete = onComplete
        self.stallLimit = stallLimit
        self.spare = spare
    }

    /// The submission, made now if it was not yet (reusing the spare when it can), with every sync and
    /// failure recorded so far.
    @discardableResult
    mutating func materialize() -> Submission {
        if let submission { return submission }
        let made: Submission
        var reusable = spare
        spare = nil
        if isKnownUniquelyReferenced(&reusable), let reused = reusable,
           reused.prepareForReuse(batchCount: batchCount, routed: routed, serial: serial, onComplete: onComplete,
                                  stallLimit: stallLimit) {
            made = reused
        } else {
            made = Submission(batchCount: batchCount, routed: routed, serial: serial, onComplete: onComplete,
                              stallLimit: stallLimit)
        }
        let syncPoints = routed.syncPoints
        made.reserve(syncs: syncPoints.count, fences: routed.fences.count)
        for failure in failures { made.recordFailure(failure) }
        for ordinal in 0..<syncCount {
            made.addSync(index: syncPoints[ordinal].index, command: syncPoints[ordinal].command, covering: .init(start: nil, count: 0),
                         queues: [], immediateFailure: failedSyncs.contains(ordinal))
        }
        failures = []
        failedSyncs = []
        submission = made
        return made
    }

    mutating func recordFailure(_ failure: SubmissionResult.Failure) {
        if let submission { submission.recordFailure(failure) } else { failures.append(failure) }
    }

    mutating func recordBackendFailure(_ command: CommandFailure, on viommu: ViommuIndex, at index: Int) {
        recordFailure(Submission.backendFailure(command, on: viommu, at: index))
    }

    /// ``Submission/addSync(index:command:covering:queues:immediateFailure:)``; a sync with no queue
    /// (every viommu it covers was synced at once) is only counted while there is no submission.
    mutating func addSync(index: Int, command: Command, covering covered: UnsafeBufferPointer<ViommuIndex>,
                          queues: [ViommuQueue], immediateFailure: Bool) {
        if submission == nil, queues.isEmpty {
            if immediateFailure { failedSyncs.append(syncCount) }
            syncCount += 1
            return
        }
        materialize().addSync(index: index, command: command, covering: covered, queues: queues, immediateFailure: immediateFailure)
    }

    /// The batch's result when no submission was made (every CMD_SYNC completed at once), as the
    /// submission's own would be: the earliest failure (the router's refusal, then what was recorded),
    /// the syncs that did not fail. `nil` once a submission exists.
    mutating func immediateResult() -> SubmissionResult? {  // mutating: called on the engine's var in place, not on a copy
        guard submission == nil else { return nil }
        if failures.isEmpty, !routed.hasErrors {
            return SubmissionResult(consumed: batchCount, failure: nil, syncs: syncCount)
        }
        var earliest = Submission.EarliestFailure()
        if let error = routed.errors.first { earliest.consider(Submission.routerFailure(error)) }
        for failure in failures { earliest.consider(failure) }
        return SubmissionResult(consumed: earliest.failure?.index ?? batchCount, failure: earliest.failure,
                                syncs: syncCount - failedSyncs.count)
    }
}

/// What a vSMMU's command queue keeps from one guest batch to the next, outside any submission: the
/// engine's `CMDQ_CONS.ERR`, and the viommus whose CMD_SYNC was abandoned by the stall limit.
///
/// - A **carried failure** is a command failure no CMD_SYNC reported yet because the engine consumed
///   it itself (the fence ``VSMMUEngine/unsetDeviceID(streamID:)`` waits on), or because the sync
///   that covered it had been abandoned. Like an SMMU's `CMDQ_CONS.ERR`, it is reported by the guest's
///   next CMD_SYNC on this vSMMU, at that CMD_SYNC's index, whichever viommus that sync covers; only
///   the first is kept until then (an SMMU holds one error and stops).
/// - A **stalled viommu** has a fence of an abandoned CMD_SYNC still pending. A later CMD_SYNC that
///   covers no viommu of its own (no command of its batch since the previous CMD_SYNC) covers the
///   stalled viommus: the Linux driver answers CERROR_ABT by retrying the fetch
///   (`__arm_smmu_cmdq_skip_err`: "retrying command fetch", CONS still at the CMD_SYNC), so the VMM's
///   next batch starts with that CMD_SYNC again, and it must not succeed at once just because it
///   carries no command for the stalled viommu. A CMD_SYNC with commands of its own covers their
///   viommus, as always: the other viommus of the vSMMU keep completing while one stalls.
///
/// Thread-safe: fences complete on drain threads and expiries run on waiters and timers.
final class GuestQueueState: Sendable {
    /// A failure carried to the next CMD_SYNC.
    struct CarriedFailure: Sendable, Hashable {
        var queueError: CommandQueueError
        var viommu: ViommuIndex
        var message: String
    }

    private struct Contents: Sendable {
        var carried: CarriedFailure?
        /// Pending abandoned fences per viommu index.
        var stalled: [Int] = Array(repeating: 0, count: VSMMU.maximumViommus)
        var stalledTotal = 0
    }

    private let contents = Locked(Contents())
    /// Non-zero while something is carried or stalled: the data path's only cost is this load.
    private let attention = Atomic<Int>(0)

    /// Whether a submission must look at ``takeCarried()`` and ``stalledViommus``.
    var needsAttention: Bool { attention.load(ordering: .acquiring) != 0 }

    /// Keeps `failure` for the next CMD_SYNC, unless an earlier one is kept already.
    func carry(_ failure: CarriedFailure) {
        contents.withLock { c in
            if c.carried == nil { c.carried = failure }
            publish(c)
        }
    }

    /// The carried failure, which the caller reports; `nil` when there is none.
    func takeCarried() -> CarriedFailure? {
        contents.withLock { c in
            defer { c.carried = nil; publish(c) }
            return c.carried
        }
    }

    /// An abandoned fence covering `viommu` is pending.
    func stall(_ viommu: ViommuIndex) {
        contents.withLock { c in
            guard viommu.index < c.stalled.count else { return }
            c.stalled[viommu.index] += 1
            c.stalledTotal += 1
            publish(c)
        }
    }

    /// An abandoned fence covering `viommu` completed.
    func resume(_ viommu: ViommuIndex) {
        contents.withLock { c in
            guard viommu.index < c.stalled.count, c.stalled[viommu.index] > 0 else { return }
            c.stalled[viommu.index] -= 1
            c.stalledTotal -= 1
            publish(c)
        }
    }

    /// The viommus with an abandoned fence pending, as a bit mask by index.
    var stalledViommus: UInt64 {
        contents.withLock { c in
            var mask: UInt64 = 0
            for (i, count) in c.stalled.enumerated() where count > 0 { mask |= 1 << UInt64(i) }
            return mask
        }
    }

    private func publish(_ c: Contents) {
        attention.store(c.carried != nil || c.stalledTotal > 0 ? 1 : 0, ordering: .releasing)
    }
}
