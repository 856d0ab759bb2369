#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A mutex and a condition variable: the slow path of every wait in this module.
///
/// Threads only come here after spinning: a producer facing a full ring, a drain thread with nothing
/// to do, a sync waiter whose fence is still pending. Each user pairs it with an atomic flag or
/// counter that the other side checks (after a sequentially consistent fence) before paying for
/// ``withLock(_:)`` and ``broadcast()``, so the fast paths never touch it.
///
/// `@unchecked Sendable`: the pthread objects live in stable heap memory allocated once, and pthreads
/// makes every operation on them thread-safe.
final class Parker: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        condition.initialize(to: pthread_cond_t())
        let mutexStatus = pthread_mutex_init(mutex, nil)
        precondition(mutexStatus == 0, "pthread_mutex_init failed: \(mutexStatus)")
        let conditionStatus = pthread_cond_init(condition, nil)
        precondition(conditionStatus == 0, "pthread_cond_init failed: \(conditionStatus)")
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deinitialize(count: 1)
        mutex.deinitialize(count: 1)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` with the mutex held.
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Sleeps until woken; call inside ``withLock(_:)``, in a loop re-checking the condition.
    func waitLocked() {
        pthread_cond_wait(condition, mutex)
    }

    /// Sleeps until woken or `nanoseconds` passed; call inside ``withLock(_:)``, in a loop.
    func waitLocked(nanoseconds: Int) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let total = Int(now.tv_nsec) + nanoseconds
        var deadline = timespec()
        deadline.tv_sec = now.tv_sec + total / 1_000_000_000
        deadline.tv_nsec = total % 1_000_000_000
        pthread_cond_timedwait(condition, mutex, &deadline)
    }

    /// Wakes every sleeper. Call with the mutex held (inside ``withLock(_:)``) so that a sleeper that
    /// checked its condition under the mutex cannot miss it.
    func broadcastLocked() {
        pthread_cond_broadcast(condition)
    }

    /// Takes the mutex, wakes every sleeper and releases it.
    func broadcast() {
        withLock { broadcastLocked() }
    }
}

/// Spin, then yield, then tell the caller to park: the waiting discipline of every slow path.
///
/// On this 2-core machine a thread that parks costs its waker a futex wake and itself tens of
/// microseconds to be scheduled again, so a short spin pays for itself; yielding next lets a
/// preempted producer or consumer on the same core run; parking last keeps idle waits free.
struct Backoff {
    private var iteration = 0
    private let spins: Int
    private let yields: Int

    init(spins: Int, yields: Int) {
        self.spins = spins
        self.yields = yields
    }

    /// Waits a little; returns `false` once the caller should park instead.
    mutating func pause() -> Bool {
        iteration += 1
        if iteration <= spins { return true }
        if iteration <= spins + yields {
            sched_yield()
            return true
        }
        return false
    }
}
