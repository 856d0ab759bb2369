import ArgumentParser
import Logging
import VSMMUDaemon

#if canImport(Glibc)
import Glibc
#endif

/// `vsmmud`: serves virtual SMMUv3s to VMMs over a Unix socket, on the embedded default of two
/// simulated pSMMUs (`smmu0`: host devices 0…63, `smmu1`: 64…127).
struct VSMMUDaemonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsmmud",
        abstract: "Serve virtual SMMUv3s to VMMs over a Unix socket.")

    @Option(help: "The socket path (default: $RUNTIME_DIRECTORY/vsmmud.sock, else /run/vsmmud/vsmmud.sock).")
    var socket: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "vsmmud")
        var environment: [String: String] = [:]
        if let runtime = getenv("RUNTIME_DIRECTORY") { environment["RUNTIME_DIRECTORY"] = String(cString: runtime) }
        let path = socket ?? VSMMUServer.defaultSocketPath(environment: environment)

        // Block SIGINT/SIGTERM before any thread starts, so they are only taken by sigwait below.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        signal(SIGPIPE, SIG_IGN)

        let server = VSMMUServer(configuration: .init(socketPath: path), logger: logger)
        do {
            try server.start()
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            throw ExitCode.failure
        }
        var received: Int32 = 0
        sigwait(&signals, &received)
        logger.info("signal received, stopping", metadata: ["signal": "\(received)"])
        server.stop()
    }
}

VSMMUDaemonCommand.main()
