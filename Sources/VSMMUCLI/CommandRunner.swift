import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// How `stats` writes its report.
public enum StatsFormat: String, CaseIterable, Sendable {
    case table, json, prometheus
}

/// What `vsmmud-cli` does once its arguments are parsed: each command connects, fetches, renders to
/// ``standardOutput`` and returns the exit status; failures are written to ``standardError`` as one
/// paragraph (``CLIError/message``), never as a trace.
public struct CommandRunner {
    /// The daemon's socket (``SocketPath/resolve(option:environment:)``).
    public var socketPath: String
    /// Receives the report, piece by piece.
    public var standardOutput: (String) -> Void
    /// Receives error paragraphs (with their newline).
    public var standardError: (String) -> Void

    public init(socketPath: String, standardOutput: @escaping (String) -> Void = CommandRunner.writeToStandardOutput,
                standardError: @escaping (String) -> Void = CommandRunner.writeToStandardError) {
        self.socketPath = socketPath
        self.standardOutput = standardOutput
        self.standardError = standardError
    }

    /// `stats`: one report of the daemon and of `vsmmu` (or every vSMMU) in `format`.
    public func stats(vsmmu: UInt32? = nil, format: StatsFormat = .table) -> Int32 {
        run { () throws(CLIError) in
            let snapshot = try DaemonSession(socketPath: socketPath).snapshot(vsmmu: try Self.vsmmuID(vsmmu))
            standardOutput(Self.render(snapshot, format: format))
            return ExitStatus.success
        }
    }

    /// `stats --watch`: a report every `interval` until the process is interrupted (or the daemon goes
    /// away: then the failure's status), with per-second rates from the second report on. `clearScreen`
    /// (stdout is a terminal) redraws in place with ANSI; otherwise reports follow each other (JSON: one
    /// document per line). Prometheus output is refused: the textfile collector wants one file per scrape.
    public func watch(vsmmu: UInt32? = nil, format: StatsFormat = .table, interval: Duration = .seconds(2),
                      clearScreen: Bool = false, iterations: Int? = nil) -> Int32 {
        run { () throws(CLIError) in
            guard format != .prometheus else {
                throw .usage("--watch cannot be combined with --prometheus: write one file per run (e.g. from a systemd timer) for the textfile collector")
            }
            guard interval > .zero else { throw .usage("--interval must be greater than 0") }
            let id = try Self.vsmmuID(vsmmu)
            let session = try DaemonSession(socketPath: socketPath)
            var watcher = StatsWatcher(format: format, interval: interval, clearScreen: clearScreen)
            var done = 0
            while iterations.map({ done < $0 }) ?? true {
                if done > 0 { Self.sleep(interval) }
                standardOutput(watcher.frame(try session.snapshot(vsmmu: id)))
                done += 1
            }
            return ExitStatus.success
        }
    }

    /// `list KIND`: the whole list, as a table or JSON.
    public func list(_ kind: ListKind, vsmmu: UInt32? = nil, json: Bool = false) -> Int32 {
        run { () throws(CLIError) in
            let entries = try DaemonSession(socketPath: socketPath).list(kind, vsmmu: try Self.vsmmuID(vsmmu))
            standardOutput(json ? ListOutput.json(entries) : ListOutput.table(entries))
            return ExitStatus.success
        }
    }

    /// `health`: the report; 0 when healthy, 1 when not, 69 when the daemon cannot be reached.
    public func health(json: Bool = false) -> Int32 {
        run { () throws(CLIError) in
            let reply = try DaemonSession(socketPath: socketPath).health()
            standardOutput(json ? HealthOutput.json(reply) : HealthOutput.text(reply))
            return HealthOutput.exitStatus(reply)
        }
    }

    /// The report for `snapshot` in `format`.
    public static func render(_ snapshot: StatsSnapshot, format: StatsFormat) -> String {
        switch format {
        case .table: return StatsTable.render(snapshot)
        case .json: return JSONOutput.encode(StatsDocument(snapshot))
        case .prometheus: return PrometheusExposition.render(snapshot)
        }
    }

    private func run(_ body: () throws(CLIError) -> Int32) -> Int32 {
        do throws(CLIError) { return try body() } catch {
            standardError(error.message + "\n")
            return error.exitStatus
        }
    }

    private static func vsmmuID(_ raw: UInt32?) throws(CLIError) -> VSMMUID? {
        guard let raw else { return nil }
        guard raw != 0 else { throw .usage("--vsmmu takes a vSMMU id (1 or more, see `vsmmud-cli list vsmmus`)") }
        return VSMMUID(raw)
    }

    private static func sleep(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        var request = timespec(tv_sec: Int(clamping: seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }

    /// Writes to stdout, unbuffered (a watched report must appear at once, also through a pipe).
    public static func writeToStandardOutput(_ text: String) { writeAll(STDOUT_FILENO, text) }

    /// Writes to stderr.
    public static func writeToStandardError(_ text: String) { writeAll(STDERR_FILENO, text) }

    /// `write(2)` until all of `text` is written or the descriptor fails (e.g. a closed pipe).
    private static func writeAll(_ fd: Int32, _ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            bytes = bytes.dropFirst(n)
        }
    }

    /// Whether stdout is a terminal (``watch(vsmmu:format:interval:clearScreen:iterations:)`` clears the
    /// screen only then).
    public static var standardOutputIsTerminal: Bool { isatty(STDOUT_FILENO) == 1 }
}

/// The frames of `stats --watch`: each snapshot rendered with the rates since the previous one.
public struct StatsWatcher: Sendable {
    /// ANSI: cursor home, erase the screen.
    public static let clearSequence = "\u{1B}[H\u{1B}[2J"

    public var format: StatsFormat
    public var interval: Duration
    public var clearScreen: Bool
    /// The last snapshot rendered.
    public private(set) var previous: StatsSnapshot?

    public init(format: StatsFormat, interval: Duration, clearScreen: Bool) {
        self.format = format
        self.interval = interval
        self.clearScreen = clearScreen
    }

    /// The text for `snapshot` (rates against the previous one, which it then replaces).
    public mutating func frame(_ snapshot: StatsSnapshot) -> String {
        let rates = previous.flatMap { StatsRates(from: $0, to: snapshot) }
        let previousWasNil = previous == nil
        previous = snapshot
        switch format {
        case .json, .prometheus:
            return JSONOutput.encode(StatsDocument(snapshot, rates: rates), compact: true)
        case .table:
            let seconds = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
            let header = "vsmmud-cli stats --watch: every \(Format.fixed(seconds, decimals: 1)) s"
                + (rates.map { ", rates over the last \(Format.fixed($0.elapsedSeconds, decimals: 2)) s" } ?? "")
                + " (Ctrl-C to stop)\n\n"
            // A terminal is redrawn in place; otherwise reports follow each other, a blank line apart.
            let separator = clearScreen ? Self.clearSequence : rates == nil && previousWasNil ? "" : "\n"
            return separator + header + StatsTable.render(snapshot, rates: rates)
        }
    }
}
