import CSystemd

#if canImport(Glibc)
import Glibc
#endif

/// One assignment the service manager understands in an `sd_notify(3)` message.
public enum ServiceState: Sendable, Hashable, CustomStringConvertible {
    /// `READY=1`: start-up finished, the daemon serves (`Type=notify` units become active).
    case ready
    /// `RELOADING=1` with `MONOTONIC_USEC=`: a reload started (answered by ``ready`` when done).
    case reloading(monotonicMicroseconds: UInt64)
    /// `STOPPING=1`: the daemon is shutting down.
    case stopping
    /// `STATUS=…`: one line of free text shown by `systemctl status`.
    case status(String)
    /// `WATCHDOG=1`: the serving path is alive; resets the unit's `WatchdogSec=` timer.
    case watchdog
    /// `ERRNO=…`: why the daemon failed.
    case errno(Int32)

    /// The assignment as it goes on the wire (one line, no newline inside).
    public var description: String {
        switch self {
        case .ready: return "READY=1"
        case .reloading(let usec): return "RELOADING=1\nMONOTONIC_USEC=\(usec)"
        case .stopping: return "STOPPING=1"
        case .status(let text):
            return "STATUS=" + String(text.map { $0 == "\n" ? " " : $0 })
        case .watchdog: return "WATCHDOG=1"
        case .errno(let code): return "ERRNO=\(code)"
        }
    }
}

/// Tells the service manager about the daemon's state through libsystemd's `sd_notify(3)`.
///
/// `sd_notify` reads `NOTIFY_SOCKET` at each call: when the daemon was not started by systemd (or a
/// unit without `Type=notify`/`NotifyAccess=`), every call is a cheap no-op that returns `false`.
/// Safe to call from any thread.
public struct SystemdNotifier: Sendable {
    public init() {}

    /// Whether a service manager listens (`NOTIFY_SOCKET` is set).
    public var isEnabled: Bool { getenv("NOTIFY_SOCKET") != nil }

    /// Sends `states` in one datagram.
    /// - Returns: `true` when the message was sent, `false` when no service manager listens or sending failed.
    @discardableResult
    public func notify(_ states: ServiceState...) -> Bool { notify(states) }

    /// Sends `states` in one datagram.
    /// - Returns: `true` when the message was sent, `false` when no service manager listens or sending failed.
    @discardableResult
    public func notify(_ states: [ServiceState]) -> Bool {
        guard !states.isEmpty else { return false }
        let message = states.map(\.description).joined(separator: "\n")
        return sd_notify(0, message) > 0
    }

    /// The interval within which the service manager expects `WATCHDOG=1` (`WatchdogSec=`, passed as
    /// `WATCHDOG_USEC`), or `nil` when the watchdog is off or meant for another process (`WATCHDOG_PID`).
    /// Ping at half of it or more often.
    public static func watchdogInterval() -> Duration? {
        var microseconds: UInt64 = 0
        guard sd_watchdog_enabled(0, &microseconds) > 0, microseconds > 0 else { return nil }
        return .microseconds(Int64(clamping: microseconds))
    }
}
