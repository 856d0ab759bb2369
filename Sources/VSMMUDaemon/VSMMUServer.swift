import CSocketShims
import InvalidationEngine
import Logging
import PSMMU
import Synchronization
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The vsmmud server: listens on an `AF_UNIX` `SOCK_STREAM` socket and serves the wire protocol of
/// `protocol/PROTOCOL.md` to VMMs and admin clients, one ``VSMMUEngine`` per vSMMU.
///
/// ## Design: one thread per connection, no event loop
/// An accept thread takes connections; each connection gets **one thread** that blocks in `recvmsg`,
/// cuts frames out of the stream with ``FrameDecoder``, handles each request in order and writes the
/// reply before reading on. No SwiftNIO, no epoll loop:
/// - a VMM opens one or a few connections, so a thread per connection costs little;
/// - the request a guest waits on is the INVALIDATE with a CMD_SYNC. Handling it on the thread that read
///   it — which, with the engine's inline drain, also makes the backend calls — means no thread hop
///   between the socket and the pSMMU and back (the ring benchmark measured 0.8 µs p50 inline against
///   32 µs through a sleeping thread);
/// - handling in order on one thread gives PROTOCOL.md §3.2's ordering for free: an INVALIDATE's reply
///   is written after its Submission completed (``Submission/wait()``), and the next request is read
///   only after that.
///
/// ## State and ownership
/// The server owns the pSMMU backends (``PSMMUProvider``; by default two simulated pSMMUs, `smmu0` with
/// host devices 0…63 and `smmu1` with 64…127) and the vSMMUs, each owned by the connection that created
/// it. Another connection naming it gets `NOT_OWNER`. When a connection ends — orderly, mid-frame, or
/// because its peer died — its vSMMUs are torn down as DESTROY_VSMMU would (queued commands executed,
/// devices unregistered, viommus detached, engine stopped); nothing else is touched.
///
/// ## Lifecycle
/// ``start()`` removes a stale socket file, binds and starts the accept thread; ``stop()`` closes the
/// listener, shuts every connection down (their threads tear down their vSMMUs), joins the threads and
/// removes the socket file.
public final class VSMMUServer: Sendable {
    /// What the server serves and where.
    public struct Configuration: Sendable {
        /// The socket path.
        public var socketPath: String
        /// The pSMMUs offered to VMMs.
        public var pSMMUs: [PSMMUProvider]
        /// The limits announced in HELLO_REPLY and enforced.
        public var limits: ServerLimits
        /// HELLO_REPLY's `server_name`.
        public var serverName: String
        /// How each vSMMU's engine builds its queues.
        public var engine: VSMMUEngine.Configuration

        public init(socketPath: String, pSMMUs: [PSMMUProvider] = PSMMUProvider.embeddedDefault(),
                    limits: ServerLimits = ServerLimits(), serverName: String = "vsmmud 0.4.0",
                    engine: VSMMUEngine.Configuration = VSMMUEngine.Configuration()) {
            self.socketPath = socketPath
            self.pSMMUs = pSMMUs
            self.limits = limits
            self.serverName = serverName
            self.engine = engine
        }
    }

    /// The default socket path: `$RUNTIME_DIRECTORY/vsmmud.sock`, else `/run/vsmmud/vsmmud.sock`.
    public static func defaultSocketPath(environment: [String: String]) -> String {
        if let directory = environment["RUNTIME_DIRECTORY"], !directory.isEmpty {
            // systemd may pass several directories separated by ':'; the first is ours.
            let first = directory.split(separator: ":").first.map(String.init) ?? directory
            return first + "/vsmmud.sock"
        }
        return "/run/vsmmud/vsmmud.sock"
    }

    struct ConnectionRecord: Sendable {
        var fd: Int32
        var thread: OSThread?
    }

    struct State: Sendable {
        var listenFD: Int32 = -1
        var acceptThread: OSThread?
        var connections: [UInt64: ConnectionRecord] = [:]
        /// Threads of connections that ended, to join at stop.
        var finishedThreads: [OSThread] = []
        var nextConnectionID: UInt64 = 1
        var vsmmus: [VSMMUID: ServedVSMMU] = [:]
        var nextVSMMUID: UInt32 = 1
        var stopping = false
        var started = false
    }

    public let configuration: Configuration
    let logger: Logger
    let state = Locked(State())
    let providers: [String: PSMMUProvider]
    let startTime = POSIX.monotonicNanoseconds()
    let framesReceived = Atomic<UInt64>(0)
    let protocolErrors = Atomic<UInt64>(0)
    let connectionsTotal = Atomic<UInt64>(0)

    /// A server for `configuration`; nothing is bound until ``start()``.
    public init(configuration: Configuration, logger: Logger = Logger(label: "vsmmud")) {
        self.configuration = configuration
        self.logger = logger
        var providers: [String: PSMMUProvider] = [:]
        for provider in configuration.pSMMUs where providers[provider.name] == nil { providers[provider.name] = provider }
        self.providers = providers
    }

    deinit { stop() }

    /// Binds the socket (removing a stale socket file, creating its directory) and starts accepting.
    /// - Throws: ``SystemCallError`` when the socket cannot be bound.
    public func start() throws(SystemCallError) {
        let path = configuration.socketPath
        try Self.prepareDirectory(of: path)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw SystemCallError("\(path) exists and is not a socket", errno: EEXIST) }
            guard !POSIX.isListening(path) else { throw SystemCallError("another daemon listens on \(path)", errno: EADDRINUSE) }
            unlink(path)
            logger.info("removed stale socket file", metadata: ["path": "\(path)"])
        }
        let fd = try POSIX.listen(path: path)
        state.withLock { $0.listenFD = fd; $0.started = true }
        let thread = try OSThread { [self] in acceptLoop(fd) }
        state.withLock { $0.acceptThread = thread }
        logger.info("listening", metadata: ["socket": "\(path)", "psmmus": "\(configuration.pSMMUs.map(\.name))"])
    }

    /// Stops: closes the listener, shuts down every connection (their vSMMUs are torn down), joins the
    /// threads and removes the socket file. Idempotent.
    public func stop() {
        let (listenFD, acceptThread, wasStarted) = state.withLock { s -> (Int32, OSThread?, Bool) in
            guard !s.stopping else { return (-1, nil, false) }
            s.stopping = true
            let fd = s.listenFD
            s.listenFD = -1
            for record in s.connections.values { shutdown(record.fd, Int32(SHUT_RDWR)) }
            if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
            return (fd, s.acceptThread, s.started)
        }
        guard wasStarted else { return }
        acceptThread?.join()
        if listenFD >= 0 { close(listenFD) }
        // Every connection thread was shut down; each removes its record when its vSMMUs are torn down
        // and hands its thread over to `finishedThreads` (exactly once), where it is joined.
        while state.withLock({ !$0.connections.isEmpty }) { usleep(1000) }
        let threads = state.withLock { s -> [OSThread] in defer { s.finishedThreads = [] }; return s.finishedThreads }
        for thread in threads { thread.join() }
        unlink(configuration.socketPath)
        logger.info("stopped", metadata: ["socket": "\(configuration.socketPath)"])
    }

    /// Whether ``stop()`` was called.
    public var isStopping: Bool { state.withLock { $0.stopping } }

    /// Connections open now.
    public var connectionCount: Int { state.withLock { $0.connections.count } }

    /// vSMMUs now.
    public var vsmmuCount: Int { state.withLock { $0.vsmmus.count } }

    private static func prepareDirectory(of path: String) throws(SystemCallError) {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return }
        let directory = String(path[..<slash])
        var components: [Substring] = []
        for component in directory.split(separator: "/") {
            components.append(component)
            let partial = (directory.hasPrefix("/") ? "/" : "") + components.joined(separator: "/")
            if mkdir(partial, 0o755) != 0 && errno != EEXIST {
                throw SystemCallError("mkdir \(partial)", errno: errno)
            }
        }
    }

    // MARK: Accepting

    private func acceptLoop(_ listenFD: Int32) {
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                if !isStopping { logger.error("accept failed", metadata: ["errno": "\(errno)"]) }
                return
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            // Reap the threads of connections that ended since.
            for thread in state.withLock({ s -> [OSThread] in defer { s.finishedThreads = [] }; return s.finishedThreads }) {
                thread.join()
            }
            let credentials = POSIX.peerCredentials(fd)
            let id: UInt64? = state.withLock { s -> UInt64? in
                guard !s.stopping else { return nil }
                let id = s.nextConnectionID
                s.nextConnectionID += 1
                s.connections[id] = ConnectionRecord(fd: fd, thread: nil)
                return id
            }
            guard let id else { close(fd); return }
            connectionsTotal.add(1, ordering: .relaxed)
            logger.info("connection accepted", metadata: [
                "connection": "\(id)", "pid": "\(credentials.map { "\($0.processID)" } ?? "?")",
                "uid": "\(credentials.map { "\($0.userID)" } ?? "?")", "gid": "\(credentials.map { "\($0.groupID)" } ?? "?")",
            ])
            do {
                let thread = try OSThread { [self] in
                    var connection = Connection(id: id, fd: fd, credentials: credentials, server: self)
                    connection.run()
                    finish(connection: id, fd: fd)
                }
                state.withLock { s in
                    if s.connections[id] != nil { s.connections[id]?.thread = thread } else { s.finishedThreads.append(thread) }
                }
            } catch {
                logger.error("cannot start a connection thread", metadata: ["error": "\(error)"])
                state.withLock { _ = $0.connections.removeValue(forKey: id) }
                close(fd)
            }
        }
    }

    /// A connection's thread ends: tear down its vSMMUs, forget it, close its socket.
    private func finish(connection id: UInt64, fd: Int32) {
        // Torn down before they leave the registry: once a vSMMU is gone from LIST and HEALTH, its host
        // devices are free in the pSMMUs.
        let owned = state.withLock { s in s.vsmmus.values.filter { $0.owner == id }.sorted { $0.id < $1.id } }
        for vsmmu in owned {
            let failures = vsmmu.tearDown()
            state.withLock { _ = $0.vsmmus.removeValue(forKey: vsmmu.id) }
            logger.info("vSMMU destroyed with its connection", metadata: [
                "connection": "\(id)", "vsmmu": "\(vsmmu.id.rawValue)", "failures": "\(failures)",
            ])
        }
        state.withLock { s in
            if let record = s.connections.removeValue(forKey: id), let thread = record.thread {
                s.finishedThreads.append(thread)
            }
            close(fd) // under the lock: stop() never shuts down a reused fd number
        }
        logger.info("connection closed", metadata: ["connection": "\(id)"])
    }
}
