import Foundation
import SMMUv3

/// Where ``SimulatedSMMU/failCommand(at:countedFrom:on:with:)`` counts a viommu's commands from.
public enum FaultCountOrigin: Hashable, Sendable {
    /// From the viommu's attach: index 0 is the first command the viommu ever processed.
    case attach
    /// From the arming: index 0 is the next command the viommu processes.
    case arming
}

/// Names an armed fault, to disarm it.
public struct InjectedFaultID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { "fault#\(rawValue)" }
}

/// A fault armed on a simulated pSMMU.
struct ArmedFault: Sendable {
    enum Trigger: Sendable {
        /// The command at this position of the viommu's processed-command stream (since attach).
        case position(UInt64)
        /// Every command the predicate accepts (as the guest wrote it).
        case matching(@Sendable (Command) -> Bool)
    }

    var id: InjectedFaultID
    /// The viommu it applies to; `nil`: every viommu of the pSMMU.
    var viommu: ViommuHandle?
    var trigger: Trigger
    var error: CommandQueueError
    /// How many more times it fires; `nil`: unlimited.
    var remaining: Int?

    /// Whether the fault fires for `command`, processed by `viommu` at `position`.
    func fires(viommu: ViommuHandle, position: UInt64, command: Command) -> Bool {
        if let own = self.viommu, own != viommu { return false }
        switch trigger {
        case .position(let p): return p == position
        case .matching(let predicate): return predicate(command)
        }
    }
}

/// A stall armed on a simulated pSMMU: while it is armed, every ``SimulatedSMMU/invalidate(viommu:commands:)``
/// call it covers blocks on entry, before processing any command, until ``release()`` (or, when the
/// stall has a duration, until that duration has passed since the call blocked).
///
/// Blocked calls hold no lock of the pSMMU: other viommus, control-path calls and DMA go on.
/// Tests synchronise with ``waitForStalledCalls(_:timeout:)`` instead of sleeping.
public final class StallGate: @unchecked Sendable {
    // All mutable state is guarded by `condition`.
    private let condition = NSCondition()
    private var released = false
    private var waiting = 0
    private var stalled = 0

    /// The viommu the gate stalls; `nil`: every viommu of the pSMMU.
    public let viommu: ViommuHandle?
    /// How long one call stays blocked at most; `nil`: until released.
    public let duration: Duration?

    init(viommu: ViommuHandle?, duration: Duration?) {
        self.viommu = viommu
        self.duration = duration
    }

    /// Releases every blocked call and disarms the gate: later calls pass.
    public func release() {
        condition.lock()
        released = true
        condition.broadcast()
        condition.unlock()
    }

    /// Whether ``release()`` was called.
    public var isReleased: Bool {
        condition.lock()
        defer { condition.unlock() }
        return released
    }

    /// Calls blocked on the gate right now.
    public var waitingCalls: Int {
        condition.lock()
        defer { condition.unlock() }
        return waiting
    }

    /// Calls the gate has blocked since it was armed.
    public var stalledCalls: Int {
        condition.lock()
        defer { condition.unlock() }
        return stalled
    }

    /// Blocks until the gate has stalled at least `count` calls, or `timeout` has passed.
    /// - Returns: whether `count` calls were stalled.
    @discardableResult
    public func waitForStalledCalls(_ count: Int, timeout: Duration = .seconds(60)) -> Bool {
        let deadline = Date(timeIntervalSinceNow: Self.seconds(timeout))
        condition.lock()
        defer { condition.unlock() }
        while stalled < count {
            if !condition.wait(until: deadline) { return stalled >= count }
        }
        return true
    }

    func covers(_ viommu: ViommuHandle) -> Bool { self.viommu == nil || self.viommu == viommu }

    /// Blocks the calling thread as the gate says. - Returns: whether the call was stalled.
    func stall() -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !released else { return false }
        waiting += 1
        stalled += 1
        condition.broadcast()
        if let duration {
            let deadline = Date(timeIntervalSinceNow: Self.seconds(duration))
            while !released, condition.wait(until: deadline) {}
        } else {
            while !released { condition.wait() }
        }
        waiting -= 1
        return true
    }

    private static func seconds(_ d: Duration) -> TimeInterval {
        let (s, atto) = d.components
        return TimeInterval(s) + TimeInterval(atto) * 1e-18
    }
}
