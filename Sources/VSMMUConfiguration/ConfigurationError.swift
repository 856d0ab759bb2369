/// A refused configuration: names the file, the line (and column) when known, and the key.
///
/// Every way a configuration file can be wrong — unreadable, not TOML, an unknown key, a value of the
/// wrong type or out of range, a duplicate or contradictory definition — is one of these, so the daemon
/// can print ``description`` and exit with ``exitStatus`` instead of crashing or falling back to a
/// default the operator did not ask for.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file as it was named to ``DaemonConfiguration/load(path:)`` or ``DaemonConfiguration/parse(_:file:)``.
    public var file: String
    /// The 1-based line of the offending key (or of the syntax error); `nil` when the error is about the
    /// file as a whole (missing, unreadable).
    public var line: Int?
    /// The 1-based column, counted in Unicode scalars, when known.
    public var column: Int?
    /// The dotted path of the offending key, e.g. `"psmmu[1].backend"`, `"limits.max_frame_size"`,
    /// `"access.allowed_uids[2]"`; `nil` for syntax errors and file errors.
    public var key: String?
    /// What is wrong and, where it helps, what would be accepted.
    public var message: String

    public init(file: String, line: Int? = nil, column: Int? = nil, key: String? = nil, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.key = key
        self.message = message
    }

    /// `"FILE:LINE:COLUMN: KEY: MESSAGE"`; the line and column are omitted when unknown (the column
    /// also when the line is), and the key when there is none.
    public var description: String {
        var text = file
        if let line {
            text += ":\(line)"
            if let column { text += ":\(column)" }
        }
        text += ": "
        if let key { text += "\(key): " }
        return text + message
    }

    /// sysexits.h `EX_CONFIG`: the exit status vsmmud uses for a refused configuration.
    public static let exitStatus: Int32 = 78
}
