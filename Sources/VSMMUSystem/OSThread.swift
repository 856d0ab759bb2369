#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SystemPackage

/// A joinable POSIX thread running one closure: the drain threads, the daemon's accept loop and
/// connection loops, and the benchmarks' producers and consumers.
///
/// Not a Swift concurrency task on purpose: these threads block (in an ioctl that waits for the
/// hardware, in `poll`, on a condition variable), which must never happen on the cooperative pool.
///
/// `@unchecked Sendable`: `handle` is written once in `init` before the object is shared and only read
/// by ``join()``, which its owner calls at most once.
public final class OSThread: @unchecked Sendable {
    private let handle: pthread_t

    private final class Body {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    /// Starts a thread running `body`.
    /// - Throws: the `Errno` `pthread_create` returned (`EAGAIN` when out of threads).
    ///
    /// The corresponding C function is `pthread_create`.
    public init(_ body: @escaping @Sendable () -> Void) throws(Errno) {
        let box = Unmanaged.passRetained(Body(body))
        var thread = pthread_t()
        let status = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            Unmanaged<Body>.fromOpaque(argument).takeRetainedValue().run()
            return nil
        }, box.toOpaque())
        guard status == 0 else {
            box.release()
            throw Errno(rawValue: status)
        }
        handle = thread
    }

    /// Waits for the thread to return. Call once.
    ///
    /// The corresponding C function is `pthread_join`.
    public func join() {
        let status = pthread_join(handle, nil)
        precondition(status == 0, "pthread_join failed: \(status)")
    }
}
