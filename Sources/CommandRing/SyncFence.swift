import Atomics
import SMMUv3

/// A CMD_SYNC as a fence over one or more ``ViommuQueue``s.
///
/// Submitting a fence places a marker in each covered queue's ring, after everything pushed to it
/// before. The fence completes when every marker has been reached by its queue's consumer: every
/// command before it on every covered queue was handed to the sink and the sink returned (the
/// backend reported completion). A command failure between a queue's previous fence and this one
/// fails this fence (with the failing command's position and error); fences that cover no failed
/// command succeed.
///
/// Completion is observed in either of two ways, both usable on the same fence:
/// - ``wait()`` blocks the calling thread: it spins (taking the consumer role and draining the covered
///   queues itself when it can, under the inline drain policies), then parks;
/// - the `onComplete` closure given at submission runs exactly once, on whichever thread completed the
///   fence (the submitter itself on the common inline path, a drain thread, or another submitter),
///   after that thread released the consumer role. Keep it short and non-blocking (resume a
///   continuation, schedule a reply on an event loop).
///
/// `@unchecked Sendable`: the arrival counter is atomic; each per-queue failure slot is written once,
/// by that queue's consumer, before its releasing decrement; the outcome is written once, by the
/// thread whose decrement reached zero, before the releasing store that marks the fence complete, and
/// read only after an acquiring load saw it complete; `nextCompleted` belongs to the consumer that
/// completed the fence; `onComplete` is read and cleared only by the one thread that calls `notify()`.
public final class SyncFence: @unchecked Sendable {
    /// Called once with the fence's outcome.
    public typealias Completion = @Sendable (Result<Void, SyncFailure>) -> Void

    private let queues: [ViommuQueue]
    /// Dropped once called: a completion that captures an owner of the fence (a ``Submission`` keeps its
    /// fences) would otherwise keep both alive forever.
    private var onComplete: Completion?
    /// The fence's atomics, in the same allocation as `reasons` (one `malloc` per fence rather than one
    /// per `ManagedAtomic` object and one for the reasons: a fence is made per CMD_SYNC).
    private struct AtomicWords {
        /// Arrivals still expected; ``SyncFence/complete`` once the outcome is written.
        var state: Int.AtomicRepresentation
        var parker: UnsafeAtomicLazyReference<Parker>.Storage
    }
    private let storage: UnsafeMutableRawPointer
    private let reasons: UnsafeMutablePointer<SyncFailure.Reason?>
    private var outcome: Result<Void, SyncFailure>?
    /// The consumer's list of fences to notify once it released the consumer role.
    var nextCompleted: SyncFence?

    private static let complete = -1
    /// Where `reasons` start in `storage`.
    private static let reasonsOffset = (MemoryLayout<AtomicWords>.stride + MemoryLayout<SyncFailure.Reason?>.alignment - 1)
        / MemoryLayout<SyncFailure.Reason?>.alignment * MemoryLayout<SyncFailure.Reason?>.alignment

    private static let stateOffset = MemoryLayout<AtomicWords>.offset(of: \.state) ?? 0
    private static let parkerOffset = MemoryLayout<AtomicWords>.offset(of: \.parker) ?? 0

    private var state: UnsafeAtomic<Int> {
        UnsafeAtomic(at: (storage + Self.stateOffset).assumingMemoryBound(to: Int.AtomicRepresentation.self))
    }
    private var parker: UnsafeAtomicLazyReference<Parker> {
        UnsafeAtomicLazyReference(at: (storage + Self.parkerOffset)
            .assumingMemoryBound(to: UnsafeAtomicLazyReference<Parker>.Storage.self))
    }

    private init(queues: [ViommuQueue], onComplete: Completion?) {
        self.queues = queues
        self.onComplete = onComplete
        let slots = max(queues.count, 1)
        storage = .allocate(byteCount: Self.reasonsOffset + slots * MemoryLayout<SyncFailure.Reason?>.stride,
                            alignment: max(MemoryLayout<AtomicWords>.alignment, MemoryLayout<SyncFailure.Reason?>.alignment))
        storage.initializeMemory(as: AtomicWords.self, repeating: AtomicWords(state: Int.AtomicRepresentation(queues.count),
                                                                      parker: UnsafeAtomicLazyReference<Parker>.Storage()),
                                 count: 1)
        reasons = (storage + Self.reasonsOffset).initializeMemory(as: SyncFailure.Reason?.self, repeating: nil, count: slots)
    }

    deinit {
        reasons.deinitialize(count: max(queues.count, 1))
        _ = storage.assumingMemoryBound(to: AtomicWords.self).pointee.parker.dispose()
        storage.assumingMemoryBound(to: AtomicWords.self).deinitialize(count: 1)
        storage.deallocate()
    }

    // MARK: Submitting

    /// Submits a fence covering `queues` (the order defines ``SyncFailure/QueueFailure/queueIndex``).
    ///
    /// Under the inline drain policies the calling thread then drains each queue itself when it can
    /// take its consumer role, so on an idle queue the fence is usually complete (and `onComplete` has
    /// run) when this returns. A fence covering no queue, or only stopped ones, completes at once.
    ///
    /// - Parameter onComplete: called exactly once with the outcome (see the type's documentation).
    @discardableResult
    public static func submit(covering queues: [ViommuQueue], onComplete: Completion? = nil) -> SyncFence {
        let fence = SyncFence(queues: queues, onComplete: onComplete)
        if queues.isEmpty {
            fence.outcome = .success(())
            fence.state.store(complete, ordering: .releasing)
            fence.notify()
            return fence
        }
        for (index, queue) in queues.enumerated() {
            if !queue.placeFence(fence, queueIndex: index), fence.arrive(queueIndex: index, failure: .queueStopped) {
                fence.notify()
            }
        }
        return fence
    }

    /// Submits a fence covering `queues` and suspends until it completes.
    ///
    /// The submission (and, under the inline drain policies, the draining and sink calls it may do)
    /// runs on the calling task's thread before it suspends; the sink may block there.
    /// - Throws: the ``SyncFailure`` the fence completed with.
    public static func submit(covering queues: [ViommuQueue]) async throws(SyncFailure) {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, SyncFailure>, Never>) in
            submit(covering: queues, onComplete: { continuation.resume(returning: $0) })
        }
        try result.get()
    }

    // MARK: Observing

    /// Whether the fence completed (successfully or not).
    public var isComplete: Bool { state.load(ordering: .acquiring) == Self.complete }

    /// The outcome, once complete; `nil` while pending.
    public var result: Result<Void, SyncFailure>? {
        isComplete ? outcome : nil
    }

    /// Blocks until the fence completes.
    ///
    /// Spins first, draining the covered queues on this thread whenever their consumer role is free
    /// (inline drain policies), then yields, then parks until the completing thread wakes it.
    /// - Throws: the ``SyncFailure`` the fence completed with.
    public func wait() throws(SyncFailure) {
        if !isComplete {
            let tuning = queues.first?.configuration.tuning ?? ViommuQueue.Tuning()
            var backoff = Backoff(spins: tuning.syncSpins, yields: tuning.syncYields)
            while !isComplete {
                for queue in queues { queue.helpDrain() }
                if !backoff.pause() {
                    park()
                    break
                }
            }
        }
        guard let outcome else { preconditionFailure("a complete SyncFence has an outcome") }
        try outcome.get()
    }

    /// Blocks until the fence completes or the clock reaches `deadline`, whichever comes first.
    ///
    /// Waits as ``wait()`` does (spinning and helping drain under the inline drain policies, then
    /// parking), except that the park ends at `deadline`. A fence that is not complete then stays
    /// pending: its markers stay in the rings and it completes when the consumers reach them. Under an
    /// inline drain policy the spinning phase may call the sink on this thread, and a sink call that
    /// stalls holds this thread past `deadline`: a caller that must not be held uses
    /// ``ViommuQueue/DrainPolicy/drainThread`` queues.
    /// - Returns: the outcome, or `nil` when `deadline` passed first.
    public func wait(deadline: ContinuousClock.Instant) -> Result<Void, SyncFailure>? {
        if !isComplete {
            let tuning = queues.first?.configuration.tuning ?? ViommuQueue.Tuning()
            var backoff = Backoff(spins: tuning.syncSpins, yields: tuning.syncYields)
            while !isComplete {
                for queue in queues { queue.helpDrain() }
                if !backoff.pause() {
                    guard park(until: deadline) else { return nil }
                    break
                }
            }
        }
        return outcome
    }

    /// The queues the fence covers, in the order of ``SyncFailure/QueueFailure/queueIndex``.
    public var coveredQueues: [ViommuQueue] { queues }

    /// Whether a waiter gave up spinning and parked (or is about to): diagnostics and tests.
    var hasParkedWaiter: Bool { parker.load() != nil }

    private func park() {
        let parker = parker.storeIfNilThenLoad(Parker())
        // Dekker with `notify`: we publish the parker, then read the state; the completer writes the
        // state, then reads the parker. One of us sees the other.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        parker.withLock {
            while !isComplete { parker.waitLocked() }
        }
    }

    /// Parks until the fence completes or `deadline` passes; returns whether it completed.
    private func park(until deadline: ContinuousClock.Instant) -> Bool {
        let parker = parker.storeIfNilThenLoad(Parker())
        // Dekker with `notify`, as in `park()`.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return parker.withLock {
            while !isComplete {
                let left = ContinuousClock.now.duration(to: deadline)
                guard left > .zero else { return false }
                let (seconds, attoseconds) = left.components
                let nanoseconds = seconds >= Int64(Int.max / 1_000_000_000 - 1)
                    ? Int.max / 2 : Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)
                parker.waitLocked(nanoseconds: max(nanoseconds, 1))
            }
            return true
        }
    }

    // MARK: Completing (consumer side)

    /// Records that `queueIndex`'s consumer reached the fence's marker, with the failure it saw since
    /// that queue's previous fence. Returns `true` when this was the last arrival: the fence is now
    /// complete and the caller must ``notify()`` it (after releasing its consumer role).
    func arrive(queueIndex: Int, failure: SyncFailure.Reason?) -> Bool {
        if let failure { reasons[queueIndex] = failure }
        guard state.loadThenWrappingDecrement(ordering: .acquiringAndReleasing) == 1 else { return false }
        var failures: [SyncFailure.QueueFailure] = []
        for index in queues.indices {
            if let reason = reasons[index] { failures.append(.init(queueIndex: index, reason: reason)) }
        }
        outcome = failures.isEmpty ? .success(()) : .failure(SyncFailure(failures: failures))
        state.store(Self.complete, ordering: .releasing)
        return true
    }

    /// Runs the completion closure and wakes parked waiters. Called once, by the completing thread.
    func notify() {
        if let onComplete, let outcome {
            self.onComplete = nil
            onComplete(outcome)
        }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if let parker = parker.load() { parker.broadcast() }
    }

    /// Notifies every fence of a consumer's completed list.
    static func notifyAll(_ head: SyncFence?) {
        var next = head
        while let fence = next {
            next = fence.nextCompleted
            fence.nextCompleted = nil
            fence.notify()
        }
    }
}
