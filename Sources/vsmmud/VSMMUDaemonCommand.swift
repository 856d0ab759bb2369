import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import SystemPackage
import UnixSignals
import VSMMUConfiguration
import VSMMUDaemon
import VSMMUJournal
import VSMMUSystemd

#if canImport(Glibc)
import Glibc
#endif

/// `vsmmud`: serves virtual SMMUv3s to VMMs over a Unix socket.
///
/// Configuration comes from `--config PATH`, else `/etc/vsmmud/vsmmud.toml` when it exists, else the
/// embedded default (two simulated pSMMUs). A refused file ends the process with status 78 (EX_CONFIG)
/// and a message naming the file, line and key. Under systemd it takes its socket from socket activation,
/// reports READY/STATUS/WATCHDOG/STOPPING, and logs with journald priority prefixes.
@main
struct VSMMUDaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsmmud",
        abstract: "Serve virtual SMMUv3s to VMMs over a Unix socket.",
        discussion: """
            Signals: SIGTERM/SIGINT stop gracefully (in-flight batches finish, pending syncs are answered, exit 0); \
            SIGHUP reloads the configuration file (log level, [access], [limits]) and says what needs a restart.
            """)

    @Option(help: "The configuration file (default: /etc/vsmmud/vsmmud.toml if it exists, else the embedded default).")
    var config: String?

    @Option(help: "The socket path; overrides the file's socket.path (default: $RUNTIME_DIRECTORY/vsmmud.sock, else /run/vsmmud/vsmmud.sock).")
    var socket: String?

    @Option(help: "Log level (trace, debug, info, notice, warning, error, critical); overrides the file's daemon.log_level.")
    var logLevel: String?

    @Option(help: "Log line format: journald (priority prefixes, no timestamps), console, or auto (journald when stderr is the journal).")
    var logFormat: String = "auto"

    @Option(help: "Seconds a stopping daemon lets connections finish what they sent before cutting them.")
    var stopGracePeriod: Int = 30

    @Option(help: "The journal's directory; overrides the file's daemon.state_directory (default: $STATE_DIRECTORY, else /var/lib/vsmmud).")
    var stateDir: String?

    @Option(help: "Seconds after the start that a vSMMU rebuilt from the journal waits for its owner's RESUME before it is reclaimed; overrides daemon.resume_grace_seconds.")
    var resumeGrace: Int?

    @Flag(help: "Check the configuration file and exit: 0 when it is good, 78 when it is refused.")
    var checkConfig = false

    func validate() throws {
        if let logLevel, Logger.Level(rawValue: logLevel) == nil { throw ValidationError("unknown log level '\(logLevel)'") }
        guard logFormat == "auto" || LogFormat(rawValue: logFormat) != nil else {
            throw ValidationError("unknown log format '\(logFormat)' (journald, console, auto)")
        }
        guard stopGracePeriod >= 0 else { throw ValidationError("--stop-grace-period must not be negative") }
        if let resumeGrace, !DaemonConfiguration.resumeGraceRange.contains(resumeGrace) {
            throw ValidationError("--resume-grace must be within \(DaemonConfiguration.resumeGraceRange)")
        }
    }

    func run() async throws {
        // A launcher may hand down a mask that blocks the signals this daemon acts on.
        var handled = sigset_t()
        sigemptyset(&handled)
        for signal in [SIGHUP, SIGINT, SIGTERM] { sigaddset(&handled, signal) }
        pthread_sigmask(SIG_UNBLOCK, &handled, nil)
        let environment = ProcessInfo.processInfo.environment
        let (file, daemonConfiguration) = try loadConfiguration()
        if checkConfig {
            print("\(file ?? "embedded default"): configuration OK (\(daemonConfiguration.pSMMUs.count) pSMMUs)")
            return
        }

        let levelControl = LogLevelControl(logLevel.flatMap(Logger.Level.init(rawValue:)) ?? daemonConfiguration.logLevel)
        let format = LogFormat(rawValue: logFormat) ?? .automatic(environment: environment)
        LoggingSystem.bootstrap { label in DaemonLogHandler(label: label, format: format, control: levelControl) }
        let logger = Logger(label: "vsmmud")
        signal(SIGPIPE, SIG_IGN)

        let notifier = SystemdNotifier()
        // Trap the signals before READY=1: a SIGTERM that comes right after must stop us gracefully,
        // not kill us (registration is complete when this returns).
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup)
        let server: VSMMUServer
        // Held for the process's life: two daemons never share one journal.
        let stateLock: DirectoryLock?
        do {
            let passed = try SocketActivation.passedFileDescriptors()
            let activated = passed.listener
            let path = activated.flatMap(SocketActivation.boundPath(of:)) ?? socket ?? daemonConfiguration.socket.path
                ?? VSMMUServer.defaultSocketPath(environment: environment)
            let stateDirectory = stateDir ?? daemonConfiguration.stateDirectory(environment: environment)
            stateLock = try stateDirectory.map { directory throws(DirectoryLock.Failure) in
                try DirectoryLock.acquire(directory: FilePath(directory))
            }
            var serverConfiguration = try VSMMUServer.Configuration(
                daemonConfiguration, socketPath: path, inheritedListener: activated, file: file ?? "embedded default",
                stateDirectory: stateDirectory)
            if let resumeGrace { serverConfiguration.resumeGrace = .seconds(resumeGrace) }
            // systemd's fd store (FileDescriptorStoreMax= in the unit) and what a previous process stored in it.
            serverConfiguration.fileDescriptorStore = SystemdFileDescriptorStore(environment: environment)
                .map { SystemdStore(systemd: $0, logger: logger) }
            serverConfiguration.inheritedFileDescriptors = InheritedFileDescriptors(passed.stored)
            if !passed.stored.isEmpty {
                logger.notice("fds from the fd store", metadata: [
                    "names": "\(passed.stored.keys.sorted())", "fds": "\(passed.stored.values.reduce(0) { $0 + $1.count })",
                ])
            }
            let watchdog = SystemdNotifier.watchdogInterval()
            // Ping at a third of the watchdog interval; without a watchdog, refresh STATUS every 5 s.
            serverConfiguration.heartbeatInterval = watchdog.map { max(.milliseconds(10), $0 / 3) } ?? .seconds(5)
            if let watchdog { serverConfiguration.wedgeTimeout = max(.seconds(1), watchdog / 2) }
            server = VSMMUServer(configuration: serverConfiguration, logger: logger)
            server.setHeartbeat(Self.heartbeat(notifier: notifier, watchdog: watchdog != nil, logger: logger))
            // Every vSMMU is rebuilt from the journal before the socket serves.
            try server.recover()
            try server.start()
        } catch let error as ConfigurationError {
            Self.refuse(error)
        } catch let error as DirectoryLock.Failure {
            // Another daemon serves this state directory (or it cannot be locked): not ours to touch.
            let message = "vsmmud: \(error)\n"
            DaemonLogHandler.writeToStandardError(message)
            notifier.notify(.status("\(error)"))
            Glibc.exit(Self.stateDirectoryInUseExitStatus)
        } catch let error as RecoveryError {
            // A damaged journal: refuse to serve part of the registrations; a restart would not fix it.
            let message = "vsmmud: journal refused: \(error)\n"
            DaemonLogHandler.writeToStandardError(message)
            notifier.notify(.status("journal refused: \(error)"))
            Glibc.exit(RecoveryError.exitStatus)
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            notifier.notify(.status("cannot start: \(error)"))
            throw ExitCode.failure
        }
        notifier.notify(.ready, .status(server.statusLine()))
        logger.notice("serving", metadata: [
            "socket": "\(server.configuration.socketPath)", "config": "\(file ?? "embedded default")",
            "pid": "\(getpid())",
        ])

        let reloader = ConfigurationReloader(file: file, current: daemonConfiguration, server: server,
                                             levelControl: levelControl, levelPinned: logLevel != nil,
                                             notifier: notifier, logger: logger)
        let serving = ServerService(server: server, notifier: notifier, gracePeriod: .seconds(stopGracePeriod), logger: logger)
        let signalHandling = SignalService(signals: signals, reloader: reloader, logger: logger)
        // SIGTERM/SIGINT end the signal service, which shuts the group down gracefully: the server
        // service then stops the server.
        let group = ServiceGroup(configuration: .init(
            services: [
                .init(service: serving),
                .init(service: signalHandling, successTerminationBehavior: .gracefullyShutdownGroup),
            ],
            logger: logger))
        try await group.run()
        logger.notice("exiting")
        withExtendedLifetime(stateLock) {}
    }

    /// The exit status when the state directory is locked by another daemon: 75 (`EX_TEMPFAIL`,
    /// sysexits.h): the other one may go away, so `Restart=on-failure` may try again.
    static let stateDirectoryInUseExitStatus: Int32 = 75

    /// The configuration file's path (`nil`: embedded default) and its contents. Exits with 78 when refused.
    private func loadConfiguration() throws -> (String?, DaemonConfiguration) {
        do throws(ConfigurationError) {
            if let config { return (config, try DaemonConfiguration.load(path: config)) }
            if access(DaemonConfiguration.defaultPath, F_OK) == 0 {
                return (DaemonConfiguration.defaultPath, try DaemonConfiguration.load(path: DaemonConfiguration.defaultPath))
            }
            return (nil, DaemonConfiguration.embeddedDefault)
        } catch {
            Self.refuse(error)
        }
    }

    /// Prints a refused configuration and exits with EX_CONFIG (78).
    private static func refuse(_ error: ConfigurationError) -> Never {
        let message = "vsmmud: configuration refused: \(error)\n"
        DaemonLogHandler.writeToStandardError(message)
        SystemdNotifier().notify(.status("configuration refused: \(error)"))
        Glibc.exit(ConfigurationError.exitStatus)
    }

    /// What the accept thread runs at each heartbeat: WATCHDOG=1 while the serving path is alive, and
    /// the STATUS line.
    private static func heartbeat(notifier: SystemdNotifier, watchdog: Bool,
                                  logger: Logger) -> @Sendable (VSMMUServer) -> Void {
        { server in
            switch server.liveness() {
            case .alive:
                notifier.notify(watchdog ? [.watchdog, .status(server.statusLine())] : [.status(server.statusLine())])
            case .wedged(let why):
                logger.error("serving path wedged: withholding the watchdog ping", metadata: ["why": "\(why)"])
                notifier.notify(.status("wedged: \(why)"))
            }
        }
    }
}

/// Handles the trapped signals: SIGHUP reloads the configuration; SIGTERM or SIGINT returns, which shuts
/// the service group down gracefully.
struct SignalService: Service {
    let signals: UnixSignalsSequence
    let reloader: ConfigurationReloader
    let logger: Logger

    func run() async throws {
        for await signal in signals.cancelOnGracefulShutdown() {
            if signal == .sighup {
                reloader.reload()
                continue
            }
            logger.notice("signal received: stopping gracefully", metadata: ["signal": "\(signal)"])
            return
        }
    }
}

/// Runs the server until graceful shutdown (SIGTERM/SIGINT), then stops it gracefully: STOPPING=1, no new
/// connections, what was received is served and pending syncs answered, vSMMUs torn down.
struct ServerService: Service {
    let server: VSMMUServer
    let notifier: SystemdNotifier
    let gracePeriod: Duration
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        logger.notice("stopping: serving what was received, then closing", metadata: [
            "connections": "\(server.connectionCount)", "vsmmus": "\(server.vsmmuCount)",
        ])
        notifier.notify(.stopping, .status("stopping: \(server.statusLine())"))
        // stop() blocks until every connection is done: off the cooperative pool.
        let server = self.server
        let gracePeriod = self.gracePeriod
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let thread = Thread { server.stop(gracePeriod: gracePeriod); done.resume() }
            thread.start()
        }
    }
}
