#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value guarded by a `pthread_mutex_t`: the one lock type of the simulated pSMMU, the iommufd backend,
/// the engines that drive backends and the daemon, so that every lock on the data path is visible to
/// ThreadSanitizer.
///
/// Used rather than `Synchronization.Mutex`: on Linux (Swift 6.3) `Mutex` is built on raw futex calls
/// that ThreadSanitizer does not see, so every `withLock` body is reported as a race under
/// `--sanitize=thread`, and the engine's TSan runs go through the simulated pSMMU. TSan intercepts
/// `pthread_mutex_lock`/`unlock`, and an uncontended pthread mutex costs no more.
///
/// The value may be noncopyable (a relay channel's byte stream owns its fd).
///
/// The corresponding C functions are `pthread_mutex_lock` and `pthread_mutex_unlock`.
public final class Locked<Value: Sendable & ~Copyable>: @unchecked Sendable {
    // `value` is only accessed between `pthread_mutex_lock` and `pthread_mutex_unlock` of `mutex`.
    // `@usableFromInline` so that `withLock` inlines into (and specialises for) its callers in other
    // modules: the daemon's data path takes several of these locks per request.
    // `@exclusivity(unchecked)`: the mutex already makes every access exclusive (a nested `withLock`
    // on the same lock deadlocks first), so the runtime's dynamic check (a thread-local access-set
    // insert and removal, ~200 instructions) would only repeat it on every call.
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @exclusivity(unchecked) @usableFromInline var value: Value

    public init(_ value: consuming Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let status = pthread_mutex_init(mutex, nil)
        precondition(status == 0, "pthread_mutex_init failed: \(status)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value.
    @inlinable @inline(__always)
    public func withLock<Result: ~Copyable, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
