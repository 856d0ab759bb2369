import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The log level every ``DaemonLogHandler`` of the process obeys, changeable at run time (SIGHUP reload).
public final class LogLevelControl: Sendable {
    private let rawLevel: Atomic<UInt8>

    public init(_ level: Logger.Level) { rawLevel = Atomic(Self.encode(level)) }

    /// The current level; setting it takes effect for every logger at once.
    public var level: Logger.Level {
        get { Self.decode(rawLevel.load(ordering: .relaxed)) }
        set { rawLevel.store(Self.encode(newValue), ordering: .relaxed) }
    }

    private static let order: [Logger.Level] = [.trace, .debug, .info, .notice, .warning, .error, .critical]
    private static func encode(_ level: Logger.Level) -> UInt8 { UInt8(order.firstIndex(of: level) ?? 2) }
    private static func decode(_ raw: UInt8) -> Logger.Level { order[min(Int(raw), order.count - 1)] }
}

/// How a ``DaemonLogHandler`` writes its lines.
public enum LogFormat: String, Sendable, CaseIterable {
    /// For the journal (`JOURNAL_STREAM` set, or asked for): `<N>` syslog priority prefixes
    /// (`sd-daemon(3)`), no timestamp (journald stamps each line), one line per record.
    case journald
    /// For a terminal or a file: an ISO 8601 UTC timestamp and the level's name.
    case console

    /// `journald` when standard error is the journal's stream (systemd sets `JOURNAL_STREAM` to its
    /// device:inode), else `console`.
    public static func automatic(environment: [String: String]) -> LogFormat {
        guard let stream = environment["JOURNAL_STREAM"], !stream.isEmpty else { return .console }
        let parts = stream.split(separator: ":")
        var st = stat()
        guard parts.count == 2, fstat(STDERR_FILENO, &st) == 0,
              UInt64(parts[0]) == UInt64(st.st_dev), UInt64(parts[1]) == UInt64(st.st_ino) else { return .console }
        return .journald
    }
}

/// vsmmud's swift-log backend: one line per record on standard error, in the ``LogFormat`` chosen at
/// start, filtered by a shared ``LogLevelControl``. Lines are written with one `write(2)` each, so lines
/// from different threads never interleave.
public struct DaemonLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let format: LogFormat
    private let control: LogLevelControl
    private let write: @Sendable (String) -> Void

    /// A handler for `label` writing `format` lines through `write` (standard error by default).
    public init(label: String, format: LogFormat, control: LogLevelControl,
                write: @escaping @Sendable (String) -> Void = DaemonLogHandler.writeToStandardError) {
        self.label = label
        self.format = format
        self.control = control
        self.write = write
    }

    /// The shared control's level. Setting it changes the level of every handler sharing the control.
    public var logLevel: Logger.Level {
        get { control.level }
        set { control.level = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        guard event.level >= control.level else { return }
        write(Self.line(event, label: label, format: format, metadata: mergedMetadata(event.metadata)))
    }

    private func mergedMetadata(_ explicit: Logger.Metadata?) -> Logger.Metadata {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let explicit { merged.merge(explicit) { $1 } }
        return merged
    }

    /// The line for one record, newline included: `<6>message key=value …` (journald) or
    /// `2026-11-27T17:30:00Z info vsmmud: message key=value …` (console). Metadata is sorted by key;
    /// values with spaces are quoted.
    public static func line(_ event: LogEvent, label: String, format: LogFormat, metadata: Logger.Metadata) -> String {
        var text = "\(event.message)"
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            let rendered = "\(value)"
            text += " \(key)=" + (rendered.contains(" ") || rendered.isEmpty ? "\"\(rendered)\"" : rendered)
        }
        text = String(text.map { $0 == "\n" ? " " : $0 })
        switch format {
        case .journald:
            return "<\(syslogPriority(event.level))>\(text)\n"
        case .console:
            return "\(timestamp()) \(event.level) \(label): \(text)\n"
        }
    }

    /// The syslog priority journald gives a level (`sd-daemon(3)`'s `SD_*` prefixes).
    public static func syslogPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let millis = Int(now.tv_nsec / 1_000_000)
        let ms = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T"
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(ms)Z"
    }

    /// Writes `line` to standard error in one `write(2)` (retrying short writes and EINTR).
    @Sendable public static func writeToStandardError(_ line: String) {
        var bytes = Array(line.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(STDERR_FILENO, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 { if errno == EINTR { continue }; return }
            offset += n
        }
    }
}
