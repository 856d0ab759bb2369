import Logging
import VSMMUConfiguration
import VSMMUDaemon
import VSMMUSystem
import VSMMUSystemd

#if canImport(Glibc)
import Glibc
#endif

/// SIGHUP: re-reads the configuration file and applies what can change while serving — the log level,
/// the `[access]` allow-list and the `[limits]` (for connections made after the reload) — and logs what
/// changed but needs a restart. A file that is now refused changes nothing: the daemon goes on with the
/// configuration it has and logs why (file, line, key).
final class ConfigurationReloader: Sendable {
    private let file: String?
    private let current: Locked<DaemonConfiguration>
    private let server: VSMMUServer
    private let levelControl: LogLevelControl
    /// `--log-level` was given: the command line wins over the file, at reload too.
    private let levelPinned: Bool
    private let notifier: SystemdNotifier
    private let logger: Logger

    init(file: String?, current: DaemonConfiguration, server: VSMMUServer, levelControl: LogLevelControl,
         levelPinned: Bool, notifier: SystemdNotifier, logger: Logger) {
        self.file = file
        self.current = Locked(current)
        self.server = server
        self.levelControl = levelControl
        self.levelPinned = levelPinned
        self.notifier = notifier
        self.logger = logger
    }

    /// Re-reads the file and applies it (see the type's documentation).
    func reload() {
        guard let file else {
            logger.notice("SIGHUP: running on the embedded default, no configuration file to reload")
            return
        }
        notifier.notify(.reloading(monotonicMicroseconds: Self.monotonicMicroseconds()))
        defer { notifier.notify(.ready, .status(server.statusLine())) }
        let new: DaemonConfiguration
        do throws(ConfigurationError) { new = try DaemonConfiguration.load(path: file) } catch {
            logger.error("SIGHUP: configuration refused, keeping the running one", metadata: ["error": "\(error)"])
            return
        }
        let plan = current.withLock { $0.reloadPlan(to: new) }
        if !levelPinned { levelControl.level = new.logLevel }
        server.reload(access: new.access)
        server.reload(limits: new.limits)
        server.reload(eventQueueEntries: new.eventQueueEntries)
        // What was applied is now in force; what needs a restart stays as it runs.
        current.withLock { $0 = $0.applyingLiveSettings(of: new) }
        logger.notice("SIGHUP: configuration reloaded", metadata: [
            "file": "\(file)", "applied": "\(plan.applied)", "needs-restart": "\(plan.needsRestart)",
        ])
        if !plan.needsRestart.isEmpty {
            logger.warning("SIGHUP: these settings changed but take effect only after a restart",
                           metadata: ["settings": "\(plan.needsRestart)"])
        }
    }

    private static func monotonicMicroseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
    }
}
