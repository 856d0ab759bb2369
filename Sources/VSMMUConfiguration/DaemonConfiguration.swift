import Logging
import PSMMU
import SMMUv3
import VSMMUProtocol

/// Everything vsmmud.toml says, checked. Pure values.
///
/// A configuration comes from ``parse(_:file:)`` or ``load(path:)``, which accept a file only when every
/// key is known, of the right type and in range (see `systemd/vsmmud.toml` for each key and its
/// default), or is ``embeddedDefault`` when there is no file. A key left out takes its default; a file
/// without `[[psmmu]]` sections gets the embedded default's pSMMUs, so the empty file is the embedded
/// default.
public struct DaemonConfiguration: Sendable, Equatable {
    /// Where the daemon looks when not given `--config`.
    public static let defaultPath = "/etc/vsmmud/vsmmud.toml"

    /// `[daemon] log_level` (default `info`): `trace`, `debug`, `info`, `notice`, `warning`, `error` or
    /// `critical`.
    public var logLevel: Logger.Level
    /// `[daemon] request_poll_us` (default 30, range ``requestPollRange``): the longest a connection's
    /// thread polls for the VMM's next request after answering one, before it sleeps (adaptive, like
    /// KVM's `halt_poll_ns`); 0 disables polling.
    public var requestPollMicroseconds: Int
    /// `[daemon] state_directory`: where the journal of registrations lives (`nil`: the daemon's default,
    /// `$STATE_DIRECTORY`, else none: no journal; see ``stateDirectory(environment:)``).
    public var stateDirectory: String?
    /// `[daemon] resume_grace_seconds` (default 120, range ``resumeGraceRange``): how long after a start a
    /// vSMMU rebuilt from the journal waits for its owner's RESUME before it is reclaimed.
    public var resumeGraceSeconds: Int
    /// `[socket]`.
    public var socket: SocketSettings
    /// `[access]`.
    public var access: AccessList
    /// `[limits]`: what HELLO_REPLY announces and the daemon enforces (`max_viommus` is the protocol's 64).
    public var limits: ServerLimits
    /// `[limits]`' connection bounds: how many connections, per uid, and the HELLO deadline.
    public var connectionLimits = ConnectionLimits()
    /// `[limits] event_queue_entries` (default 1024, a power of two in ``eventQueueEntriesRange``): the most
    /// slots a vSMMU's event queue may have (MAP_EVENT_QUEUE's 2^log2_entries, PROTOCOL.md §5.17; a larger
    /// one is LIMIT_EXCEEDED). Applied by a reload to MAP_EVENT_QUEUE requests from then on; a mapped queue
    /// keeps its size.
    public var eventQueueEntries = DaemonConfiguration.defaultEventQueueEntries
    /// `[queue] ring_capacity` (default 4096): slots of each viommu's command ring, a power of two in
    /// ``ringCapacityRange``.
    public var ringCapacity: Int
    /// `[queue] stall_timeout_ms` (default 0: no limit, range ``stallTimeoutRange``): how long a CMD_SYNC
    /// waits on a viommu whose backend consumes nothing before INVALIDATE answers it with CERROR_ABT
    /// (the engine's ``VSMMUEngine/Configuration/stallTimeout``; PROTOCOL.md, INVALIDATE).
    public var stallTimeoutMilliseconds: Int = DaemonConfiguration.defaultStallTimeoutMilliseconds
    /// `[queue] drain_threads_per_psmmu` (default 1, range ``drainThreadsPerPSMMURange``): the drain
    /// threads each pSMMU's lane of the daemon's drain pool runs, shared by every viommu on that pSMMU
    /// (``DrainPool``): the daemon's drain threads are this times the pSMMUs in use, whatever the VMs.
    public var drainThreadsPerPSMMU: Int = DaemonConfiguration.defaultDrainThreadsPerPSMMU
    /// `[[psmmu]]`: the pSMMUs offered to VMMs, in the file's order; when the file has none, the
    /// embedded default's (``PSMMUDefinition/embeddedDefault``).
    public var pSMMUs: [PSMMUDefinition]

    public init(logLevel: Logger.Level = .info,
                requestPollMicroseconds: Int = DaemonConfiguration.defaultRequestPollMicroseconds,
                socket: SocketSettings = SocketSettings(), access: AccessList = .open,
                limits: ServerLimits = ServerLimits(), ringCapacity: Int = DaemonConfiguration.defaultRingCapacity,
                pSMMUs: [PSMMUDefinition] = PSMMUDefinition.embeddedDefault) {
        self.logLevel = logLevel
        self.requestPollMicroseconds = requestPollMicroseconds
        self.stateDirectory = nil
        self.resumeGraceSeconds = DaemonConfiguration.defaultResumeGraceSeconds
        self.socket = socket
        self.access = access
        self.limits = limits
        self.ringCapacity = ringCapacity
        self.pSMMUs = pSMMUs
    }

    public static let defaultRingCapacity = 4096
    /// The default `event_queue_entries`.
    public static let defaultEventQueueEntries = 1024
    /// Accepted `event_queue_entries` values (powers of two only): the protocol's 2^4 to 2^12 slots.
    public static let eventQueueEntriesRange = 16...4096
    /// No stall limit unless configured.
    public static let defaultStallTimeoutMilliseconds = 0
    /// Accepted `stall_timeout_ms` values: 0 (no limit) up to an hour.
    public static let stallTimeoutRange = 0...3_600_000
    public static let defaultResumeGraceSeconds = 120
    public static let defaultDrainThreadsPerPSMMU = 1
    /// Accepted `drain_threads_per_psmmu` values.
    public static let drainThreadsPerPSMMURange = 1...64
    /// Accepted `resume_grace_seconds` values.
    public static let resumeGraceRange = 0...86_400

    /// The journal's directory: ``stateDirectory``, else systemd's `$STATE_DIRECTORY` (`StateDirectory=`;
    /// the first of several), else `nil`: a daemon started by hand without either runs without a journal
    /// (its registrations do not survive a restart), so two daemons never share one journal by default.
    public func stateDirectory(environment: [String: String]) -> String? {
        if let stateDirectory { return stateDirectory }
        if let directory = environment["STATE_DIRECTORY"], !directory.isEmpty {
            return directory.split(separator: ":").first.map(String.init) ?? directory
        }
        return nil
    }
    public static let defaultRequestPollMicroseconds = 30
    /// Accepted `request_poll_us` values.
    public static let requestPollRange = 0...1000
    /// Accepted `ring_capacity` values (powers of two only).
    public static let ringCapacityRange = 64...1_048_576
    /// Accepted `max_vsmmus_per_connection` values.
    public static let maximumVSMMUsRange = 1...1024

    /// The embedded default used with no file: two simulated pSMMUs `smmu0` (host devices 0…63,
    /// StreamIDs 0…63) and `smmu1` (64…127), free cost model, log level info, no socket override, open
    /// access, default limits.
    public static var embeddedDefault: DaemonConfiguration { DaemonConfiguration() }

    /// Parses `text` (the contents of `file`, named in errors).
    /// - Throws: ``ConfigurationError`` for the first problem found: a TOML syntax error (with its line
    ///   and column, no key); else, checking the tables in the order daemon, socket, access, limits,
    ///   queue, psmmu (each table's unknown keys first, the one earliest in the text), an unknown key, a
    ///   value of the wrong type, out of range, or contradicting another (with its key path, e.g.
    ///   `psmmu[1].backend`, and the line and column where that key — or, when it is missing, its
    ///   table's header — is written).
    public static func parse(_ text: String, file: String) throws(ConfigurationError) -> DaemonConfiguration {
        try ConfigurationParser.parse(text, file: file)
    }

    /// Reads and parses the file at `path`.
    /// - Throws: ``ConfigurationError`` naming `path` with no line when the file is missing, unreadable
    ///   or not UTF-8 (with the line of the first bad byte), else as ``parse(_:file:)``.
    public static func load(path: String) throws(ConfigurationError) -> DaemonConfiguration {
        let text = try ConfigurationFile.contents(ofPath: path)
        return try parse(text, file: path)
    }

    /// What a SIGHUP reload from `self` to `new` can apply live (log level, access list, limits) and the
    /// names of the settings that changed but need a restart (`"daemon.request_poll_us"`, `"socket.path"`,
    /// `"socket.mode"`, `"socket.group"`, `"queue.ring_capacity"`, `"queue.stall_timeout_ms"`, `"psmmu"`).
    public func reloadPlan(to new: DaemonConfiguration) -> ReloadPlan {
        var plan = ReloadPlan()
        if logLevel != new.logLevel { plan.applied.append("daemon.log_level") }
        if access != new.access { plan.applied.append("access") }
        if limits != new.limits || connectionLimits != new.connectionLimits || eventQueueEntries != new.eventQueueEntries { plan.applied.append("limits") }
        if requestPollMicroseconds != new.requestPollMicroseconds { plan.needsRestart.append("daemon.request_poll_us") }
        if stateDirectory != new.stateDirectory { plan.needsRestart.append("daemon.state_directory") }
        if resumeGraceSeconds != new.resumeGraceSeconds { plan.needsRestart.append("daemon.resume_grace_seconds") }
        if socket.path != new.socket.path { plan.needsRestart.append("socket.path") }
        if socket.mode != new.socket.mode { plan.needsRestart.append("socket.mode") }
        if socket.group != new.socket.group { plan.needsRestart.append("socket.group") }
        if ringCapacity != new.ringCapacity { plan.needsRestart.append("queue.ring_capacity") }
        if stallTimeoutMilliseconds != new.stallTimeoutMilliseconds { plan.needsRestart.append("queue.stall_timeout_ms") }
        if drainThreadsPerPSMMU != new.drainThreadsPerPSMMU { plan.needsRestart.append("queue.drain_threads_per_psmmu") }
        if pSMMUs != new.pSMMUs { plan.needsRestart.append("psmmu") }
        return plan
    }

    /// `self` with what `plan` applies live taken from `new`, and everything needing a restart kept:
    /// the configuration the daemon runs with after a reload.
    public func applyingLiveSettings(of new: DaemonConfiguration) -> DaemonConfiguration {
        var running = self
        running.logLevel = new.logLevel
        running.access = new.access
        running.limits = new.limits
        running.connectionLimits = new.connectionLimits
        running.eventQueueEntries = new.eventQueueEntries
        return running
    }
}
