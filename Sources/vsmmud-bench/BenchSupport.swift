#if canImport(Glibc)
import Glibc
#endif
import VSMMUSystem

// What the benchmarks share: a monotonic clock, real threads, quantiles and column padding.

/// Monotonic nanoseconds.
func benchNow() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
}

/// Starts an ``OSThread`` running `body`: benchmark threads spin or block in syscalls, so they must not
/// be Swift concurrency tasks. A benchmark cannot go on without its threads.
@discardableResult
func startBenchThread(_ body: @escaping @Sendable () -> Void) -> OSThread {
    do {
        return try OSThread(body)
    } catch {
        fatalError("pthread_create failed: \(error)")
    }
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
