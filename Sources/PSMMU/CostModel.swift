import Foundation

/// The time a simulated pSMMU takes, so that benchmarks can mimic the price of the
/// `IOMMU_HWPT_INVALIDATE` ioctl and of the hardware command queue behind it.
///
/// A call to ``SimulatedSMMU/invalidate(viommu:commands:)`` costs ``nanosecondsPerCall`` (the ioctl:
/// syscall, copy-in, conversion; paid by the calling thread, in parallel with other calls) and then
/// ``nanosecondsPerCommand`` for each command the pSMMU processed (the hardware's consumption). With
/// ``sharesCommandQueue`` the command time is spent on one queue per pSMMU, as on SMMUv3 hardware
/// without CMDQV: concurrent calls for different viommus wait for each other's commands.
///
/// The time is really taken: the call returns no earlier than its cost. Waits up to
/// ``spinNanoseconds`` are busy-waited (a sleep would overshoot short costs by tens of microseconds);
/// longer ones sleep, then busy-wait their last ``spinNanoseconds``. The default costs nothing and
/// reads no clock.
public struct CostModel: Hashable, Sendable {
    /// Time per `invalidate` call, in nanoseconds.
    public var nanosecondsPerCall: UInt64
    /// Time per command processed, in nanoseconds.
    public var nanosecondsPerCommand: UInt64
    /// Whether command time is spent on one queue shared by every viommu of the pSMMU.
    public var sharesCommandQueue: Bool
    /// Waits up to this long are busy-waited.
    public var spinNanoseconds: UInt64

    public init(nanosecondsPerCall: UInt64 = 0, nanosecondsPerCommand: UInt64 = 0,
                sharesCommandQueue: Bool = true, spinNanoseconds: UInt64 = 200_000) {
        self.nanosecondsPerCall = nanosecondsPerCall
        self.nanosecondsPerCommand = nanosecondsPerCommand
        self.sharesCommandQueue = sharesCommandQueue
        self.spinNanoseconds = spinNanoseconds
    }

    /// No cost: calls return as soon as the model has applied the commands.
    public static let free = CostModel()

    /// Whether every cost is zero.
    public var isFree: Bool { nanosecondsPerCall == 0 && nanosecondsPerCommand == 0 }

    /// The cost of one call of `commands` commands, ignoring any wait for a shared queue.
    public func cost(commands: Int) -> Duration {
        .nanoseconds(Int64(clamping: nanosecondsPerCall &+ nanosecondsPerCommand &* UInt64(commands)))
    }
}

/// Waits until a deadline on the continuous clock: sleeps while far away, then busy-waits.
///
/// Deadlines travel as ``Duration``s since ``origin`` (a `@frozen` value) rather than as
/// `ContinuousClock.Instant`s, whose layout is resilient: every copy of a value holding one goes
/// through value witnesses, which the simulated pSMMU's data path paid on every call.
enum CostWait {
    /// The instant deadlines are measured from.
    static let origin = ContinuousClock.now

    /// Now, as a time since ``origin``.
    static var now: Duration { origin.duration(to: ContinuousClock.now) }

    static func wait(until deadline: Duration, spinNanoseconds: UInt64) {
        wait(until: origin + deadline, spinNanoseconds: spinNanoseconds)
    }

    static func wait(until deadline: ContinuousClock.Instant, spinNanoseconds: UInt64) {
        let clock = ContinuousClock()
        let remaining = clock.now.duration(to: deadline)
        let spin = Duration.nanoseconds(Int64(clamping: spinNanoseconds))
        if remaining > spin {
            let sleep = remaining - spin
            let (seconds, attoseconds) = sleep.components
            Thread.sleep(forTimeInterval: Double(seconds) + Double(attoseconds) * 1e-18)
        }
        while clock.now < deadline {}
    }
}
