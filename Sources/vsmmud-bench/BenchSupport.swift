#if canImport(Glibc)
import Glibc
#endif

// What the benchmarks share: a monotonic clock, real threads, quantiles and column padding.

/// Monotonic nanoseconds.
func benchNow() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
}

/// A joinable POSIX thread: benchmark threads spin or block in syscalls, so they must not be Swift
/// concurrency tasks.
final class BenchThread: @unchecked Sendable {
    // `@unchecked Sendable`: `handle` is written in `init` before the object is shared and only read by `join()`.
    private var handle = pthread_t()

    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    init(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let status = pthread_create(&handle, nil, { argument in
            guard let argument else { return nil }
            Unmanaged<Box>.fromOpaque(argument).takeRetainedValue().body()
            return nil
        }, box)
        precondition(status == 0, "pthread_create failed: \(status)")
    }

    func join() { pthread_join(handle, nil) }
}

/// The `fraction` quantile (0.5 = median) of sorted nanosecond samples, in microseconds; NaN when empty.
func quantileMicroseconds(_ sorted: [UInt64], _ fraction: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let index = min(sorted.count - 1, Int((Double(sorted.count) * fraction).rounded(.up)) - 1)
    return Double(sorted[max(0, index)]) / 1000
}

/// `text` left-aligned in a column of `width`, always followed by a space.
func column(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}

/// `text` right-aligned in a column of `width`.
func rightColumn(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
}
