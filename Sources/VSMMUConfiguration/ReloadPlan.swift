/// What a SIGHUP reload can do: the settings it applies live and those that changed but take effect
/// only after a restart (which the daemon logs, keeping their old values meanwhile).
public struct ReloadPlan: Sendable, Equatable {
    /// Keys applied live, only those that changed, in this order: `"daemon.log_level"`, `"access"`,
    /// `"limits"`.
    public var applied: [String]
    /// Keys that changed but are not reloadable, in this order: `"socket.path"`, `"socket.mode"`,
    /// `"socket.group"`, `"queue.ring_capacity"`, `"psmmu"`.
    public var needsRestart: [String]

    public init(applied: [String] = [], needsRestart: [String] = []) {
        self.applied = applied
        self.needsRestart = needsRestart
    }

    /// Whether nothing changed.
    public var isEmpty: Bool { applied.isEmpty && needsRestart.isEmpty }
}
