import Atomics
import SystemPackage
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Drain threads shared by every viommu queue of a daemon: one ``DrainLane`` per pSMMU, each with a
/// fixed number of threads, instead of one thread per viommu.
///
/// ## Why lanes per pSMMU
/// A host with 256 VMs of 4 viommus had 1,024 drain threads, almost all asleep. Queues only need a
/// drain thread for what their submitters leave behind (``ViommuQueue/DrainPolicy/inlineWithDrainThread``)
/// or, under a stall limit, for everything (``ViommuQueue/DrainPolicy/drainThread``), so a few threads
/// can serve them all. They are grouped by pSMMU because that is how backends stall: a pSMMU whose
/// command queue stops consuming (`arm_smmu_cmdq_issue_cmdlist` waiting on CONS) blocks every viommu on
/// it, whoever owns them, and a drain thread inside its `invalidate` blocks with it. A lane's threads
/// only ever call that pSMMU's backend, so a stalled pSMMU holds back only its own lane: the queues on
/// other pSMMUs keep their threads, and the stall limit (``VSMMUEngine``'s `stallTimeout`) fails only the
/// syncs that wait on the stalled one. It also mirrors the hardware: each pSMMU has one command queue.
///
/// Threads: ``threadsPerLane`` × the pSMMUs in use, whatever the number of VMs.
///
/// ## Scheduling
/// A queue that needs its drain thread (``ViommuQueue``'s wake-up) is put on its lane's ready list unless
/// it is already there (the queue's `scheduled` flag). A lane thread takes queues in FIFO order, clears
/// the flag *before* it drains (so a wake-up that arrives during the pass puts the queue back), makes one
/// pass over what was claimed when the pass began, and puts the queue back at the end of the list if more
/// arrived: queues of one lane take turns, a busy one cannot starve the others. With nothing ready a
/// thread spins ``idleSpins`` times, then sleeps on the lane's condition variable; ``schedule(_:)`` signals
/// it only when a thread sleeps (the sleepers count, under the lane's mutex).
///
/// ## Lifetime
/// Lanes are made on first use by ``lane(for:)`` and live as long as the pool. ``stop()`` ends their
/// threads, after every queue on them was stopped (``ViommuQueue/stop()``). A queue on a ready list is
/// kept alive by it until a thread has visited it.
///
/// `@unchecked Sendable`: `lanes` and `stopped` are guarded by `lock`.
public final class DrainPool: @unchecked Sendable {
    /// Threads each lane runs.
    public let threadsPerLane: Int
    /// Busy iterations an idle lane thread watches its ready list before it sleeps.
    public let idleSpins: Int
    private let lock = Parker()
    private var lanes: [String: DrainLane] = [:]
    private var stopped = false

    /// The largest ``threadsPerLane`` accepted.
    public static let maximumThreadsPerLane = 64

    /// Creates a pool with no lanes (and so no threads) yet.
    /// - Precondition: `threadsPerLane` in `1...maximumThreadsPerLane`.
    public init(threadsPerLane: Int = 1, idleSpins: Int = 2_000) {
        precondition((1...Self.maximumThreadsPerLane).contains(threadsPerLane), "threadsPerLane \(threadsPerLane) out of range")
        self.threadsPerLane = threadsPerLane
        self.idleSpins = idleSpins
    }

    /// The lane of `pSMMU`, started (its threads created) on first use.
    /// - Throws: ``ViommuQueueError/drainThreadStartFailed(errno:)`` when a thread cannot be created, or
    ///   ``ViommuQueueError/drainPoolStopped`` after ``stop()``.
    public func lane(for pSMMU: String) throws(ViommuQueueError) -> DrainLane {
        let result = lock.withLock { () -> Result<DrainLane, ViommuQueueError> in
            guard !stopped else { return .failure(.drainPoolStopped) }
            if let lane = lanes[pSMMU] { return .success(lane) }
            let lane = DrainLane(name: pSMMU, idleSpins: idleSpins)
            do throws(Errno) {
                try lane.start(threads: threadsPerLane)
            } catch {
                lane.stop()
                return .failure(.drainThreadStartFailed(errno: error.rawValue))
            }
            lanes[pSMMU] = lane
            return .success(lane)
        }
        return try result.get()
    }

    /// The pSMMUs that have a lane, sorted.
    public var laneNames: [String] { lock.withLock { lanes.keys.sorted() } }

    /// The threads the pool runs now.
    public var threadCount: Int { lock.withLock { lanes.count * threadsPerLane } }

    /// Ends every lane's threads (each finishes the queue it is visiting) and refuses new lanes. Stop
    /// the queues first: a queue still open on a stopped lane is drained only by its submitters.
    /// Idempotent.
    public func stop() {
        let stopping = lock.withLock { () -> [DrainLane] in
            stopped = true
            defer { lanes = [:] }
            return Array(lanes.values)
        }
        for lane in stopping { lane.stop() }
    }

    deinit { stop() }
}

/// A pool is equal only to itself (configurations that name it compare by which pool they share).
extension DrainPool: Hashable {
    public static func == (lhs: DrainPool, rhs: DrainPool) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

/// One pSMMU's drain threads and the ready list they serve (see ``DrainPool``).
///
/// `@unchecked Sendable`: `ready`, `readyHead`, `sleepers`, `stopping` and `threads` are guarded by
/// `parker`'s mutex; `readyCount` is an atomic hint for the idle spin.
public final class DrainLane: @unchecked Sendable {
    /// The pSMMU this lane drains for.
    public let name: String
    private let idleSpins: Int
    private let parker = Parker()
    private var ready: [ViommuQueue] = []
    private var readyHead = 0
    private var sleepers = 0
    private var stopping = false
    private var threads: [OSThread] = []
    private let readyCount = ManagedAtomic<Int>(0)
    private let visitCounter = ManagedAtomic<Int>(0)

    init(name: String, idleSpins: Int) {
        self.name = name
        self.idleSpins = idleSpins
    }

    fileprivate func start(threads count: Int) throws(Errno) {
        for _ in 0..<count {
            let thread = try OSThread { [self] in run() }
            parker.withLock { threads.append(thread) }
        }
    }

    /// Queue visits made by this lane's threads (one drain pass each): diagnostics and tests.
    package var visits: Int { visitCounter.load(ordering: .relaxed) }

    /// Whether every thread of the lane is asleep with nothing ready: tests.
    var isIdle: Bool { parker.withLock { sleepers == threads.count && readyHead == ready.count } }

    /// Puts `queue` at the end of the ready list and wakes a sleeping thread. The caller won the queue's
    /// `scheduled` flag, so a queue is on the list at most once.
    func schedule(_ queue: ViommuQueue) {
        parker.withLock {
            ready.append(queue)
            readyCount.wrappingIncrement(ordering: .relaxed)
            if sleepers > 0 { parker.broadcastLocked() }
        }
    }

    /// The next ready queue, sleeping until there is one; `nil` once the lane stops.
    private func next() -> ViommuQueue? {
        var spins = 0
        while spins < idleSpins, readyCount.load(ordering: .relaxed) == 0 { spins += 1 }
        return parker.withLock { () -> ViommuQueue? in
            while readyHead == ready.count {
                if stopping { return nil }
                sleepers += 1
                parker.waitLocked()
                sleepers -= 1
            }
            let queue = ready[readyHead]
            readyHead += 1
            readyCount.wrappingDecrement(ordering: .relaxed)
            if readyHead == ready.count {
                ready.removeAll(keepingCapacity: true)
                readyHead = 0
            } else if readyHead >= 64, readyHead * 2 >= ready.count {
                ready.removeFirst(readyHead)
                readyHead = 0
            }
            return queue
        }
    }

    private func run() {
        while let queue = next() {
            visitCounter.wrappingIncrement(ordering: .relaxed)
            if queue.drainOnLane() { queue.wakeDrainThread() }
        }
    }

    fileprivate func stop() {
        let joining = parker.withLock { () -> [OSThread] in
            stopping = true
            parker.broadcastLocked()
            defer { threads = [] }
            return threads
        }
        for thread in joining { thread.join() }
        parker.withLock {
            ready.removeAll()
            readyHead = 0
            readyCount.store(0, ordering: .relaxed)
        }
    }
}
