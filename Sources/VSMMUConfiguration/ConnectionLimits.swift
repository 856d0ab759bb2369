/// How many connections the daemon holds and how long one may take to say HELLO (`[limits]`
/// `max_connections`, `max_connections_per_uid`, `hello_timeout_ms`; PROTOCOL.md §3.4).
///
/// Each connection costs the daemon a thread and an fd, so both are bounded: globally, and per peer uid
/// (`SO_PEERCRED`) so that one tenant holding its quota cannot lock the others out. A connection that has
/// not completed HELLO by the deadline is answered `LIMIT_EXCEEDED` and closed, which bounds what a
/// client that connects and never speaks (slowloris) can hold, and for how long.
public struct ConnectionLimits: Hashable, Sendable {
    /// Connections open at once, all peers together.
    public var maximumConnections: Int
    /// Connections open at once from one uid.
    public var maximumConnectionsPerUser: Int
    /// How long a connection may stay without a completed HELLO.
    public var helloTimeoutMilliseconds: Int

    public init(maximumConnections: Int = 1024, maximumConnectionsPerUser: Int = 256,
                helloTimeoutMilliseconds: Int = 10_000) {
        self.maximumConnections = maximumConnections
        self.maximumConnectionsPerUser = maximumConnectionsPerUser
        self.helloTimeoutMilliseconds = helloTimeoutMilliseconds
    }

    /// Accepted `max_connections` and `max_connections_per_uid` values.
    public static let connectionsRange = 1...65_536
    /// Accepted `hello_timeout_ms` values.
    public static let helloTimeoutRange = 1...3_600_000
}
