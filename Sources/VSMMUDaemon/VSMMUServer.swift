import CSocketShims
import CommandRing
import InvalidationEngine
import VSMMUConfiguration
import Logging
import PSMMU
import SMMUv3
import Synchronization
import SystemPackage
import VSMMUJournal
import VSMMUProtocol
import VSMMUSystem

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
/// it. Another connection naming it gets `UNKNOWN_VSMMU`, exactly as for an id that never existed. When a connection ends — orderly, mid-frame, or
/// because its peer died — its vSMMUs are torn down as DESTROY_VSMMU would (queued commands executed,
/// devices unregistered, viommus detached, engine stopped); nothing else is touched.
///
/// ## Lifecycle
/// ``start()`` removes a stale socket file, binds (or adopts a socket-activated listener) and starts the
/// accept thread. The accept thread waits in `poll(2)` and wakes at least every
/// ``Configuration/heartbeatInterval`` to run the heartbeat (``setHeartbeat(_:)``): the daemon's systemd
/// watchdog pings come from there, so a wedged accept loop — or a wedged viommu, see ``liveness()`` — stops
/// them. ``stop(gracePeriod:)`` is graceful: it stops accepting, stops reading new data (clients' further
/// writes fail with `EPIPE`), lets every connection serve what it already received — an INVALIDATE waiting
/// for its CMD_SYNC is answered when the sync completes — and only after the grace period cuts the
/// connections that are still busy. Then their vSMMUs are torn down, the threads joined and the socket
/// file removed (unless it was socket-activated: systemd owns it).
///
/// ## Access
/// With a non-open ``Configuration/access`` list, a peer whose uid and gids (`SO_PEERCRED`,
/// `SO_PEERGROUPS`) are not on it gets `PERMISSION_DENIED` in reply to its first request and is closed.
/// The list, like the log level, can change while serving (``reload(access:)``).
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
        /// A listening socket to serve instead of binding ``socketPath`` (socket activation). The server
        /// neither creates nor removes the socket file then, and never shuts the listener down: systemd
        /// keeps its own copy to start the service again.
        public var inheritedListener: Int32?
        /// Permission bits given to the socket file the server binds (`nil`: as the umask leaves them).
        public var socketMode: UInt32?
        /// Group given to the socket file the server binds (`nil`: the daemon's).
        public var socketGroupID: UInt32?
        /// Who may connect, checked at accept.
        public var access: AccessList
        /// The longest the accept thread sleeps between heartbeats.
        public var heartbeatInterval: Duration
        /// A viommu with queued commands and no backend progress for this long makes ``liveness()``
        /// report the server wedged.
        public var wedgeTimeout: Duration
        /// The longest a connection's thread polls for the next request after answering one before it
        /// sleeps (adaptive, like KVM's halt-polling; see `RequestPoller`); `.zero` disables polling.
        public var requestPolling: Duration
        /// How many connection threads may poll at once (default: half the online CPUs, 0 on one CPU).
        public var requestPollingThreads: Int
        /// Connections held at most, globally and per uid, and the HELLO deadline.
        public var connectionLimits = ConnectionLimits()
        /// The directory of the journal (`[daemon] state_directory`, `--state-dir`): every registration is
        /// made durable there before its reply, rebuilt from there at start, and a stop no longer tears the
        /// vSMMUs down. `nil`: no journal; a stop tears everything down, as before.
        public var stateDirectory: String?
        /// How long after the start a vSMMU rebuilt from the journal waits for its owner's RESUME before it is
        /// reclaimed (`[daemon] resume_grace_seconds`, `--resume-grace`).
        public var resumeGrace: Duration
        /// The journal's file operations (`nil`: the real file system); tests inject failures through it.
        public var journalFileSystem: (any JournalFileSystem)?
        /// The service manager's fd store, which keeps a duplicate of every fd an iommufd vSMMU needs
        /// across a restart (`nil`: none; outside systemd, a resuming VMM passes its iommufd again).
        public var fileDescriptorStore: (any FileDescriptorStore)?
        /// The fds a previous process of the service stored, handed to this one at start.
        public var inheritedFileDescriptors = InheritedFileDescriptors()
        /// Threads of each pSMMU's lane of the drain pool the server makes when ``engine`` names none
        /// (`[queue] drain_threads_per_psmmu`).
        public var drainThreadsPerPSMMU = 1
        /// The most slots a vSMMU's event queue may have (`[limits] event_queue_entries`; MAP_EVENT_QUEUE
        /// asks for more: LIMIT_EXCEEDED). ``VSMMUServer/reload(eventQueueEntries:)`` changes it live.
        public var eventQueueEntries = 1024

        /// The default ``resumeGrace``, in seconds.
        public static let defaultResumeGraceSeconds = 120

        /// The daemon's default ``requestPolling`` window, in microseconds (`[daemon] request_poll_us`).
        public static let defaultRequestPollMicroseconds = 30

        public init(socketPath: String, pSMMUs: [PSMMUProvider] = PSMMUProvider.embeddedDefault(),
                    limits: ServerLimits = ServerLimits(), serverName: String = "vsmmud 0.5.0",
                    engine: VSMMUEngine.Configuration = VSMMUEngine.Configuration(),
                    inheritedListener: Int32? = nil, socketMode: UInt32? = nil, socketGroupID: UInt32? = nil,
                    access: AccessList = .open, heartbeatInterval: Duration = .seconds(1),
                    wedgeTimeout: Duration = .seconds(10),
                    requestPolling: Duration = .microseconds(Configuration.defaultRequestPollMicroseconds),
                    requestPollingThreads: Int = RequestPollingSlots.defaultCapacity) {
            self.socketPath = socketPath
            self.pSMMUs = pSMMUs
            self.limits = limits
            self.serverName = serverName
            self.engine = engine
            self.inheritedListener = inheritedListener
            self.socketMode = socketMode
            self.socketGroupID = socketGroupID
            self.access = access
            self.heartbeatInterval = heartbeatInterval
            self.wedgeTimeout = wedgeTimeout
            self.requestPolling = requestPolling
            self.requestPollingThreads = requestPollingThreads
            stateDirectory = nil
            resumeGrace = .seconds(Configuration.defaultResumeGraceSeconds)
            journalFileSystem = nil
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
        /// The peer's uid (`SO_PEERCRED`), which ``Configuration/connectionLimits`` counts by.
        var userID: UInt32?
        /// The tenant its new vSMMUs go to: drawn at its first CREATE_VSMMU, or that of the first vSMMU it
        /// resumed (``tenant(of:)``, ``join(tenantOf:connection:)``).
        var tenant: UInt64?
    }

    struct State: Sendable {
        var listenFD: Int32 = -1
        var acceptThread: OSThread?
        var connections: [UInt64: ConnectionRecord] = [:]
        /// Threads of connections that ended, to join at stop.
        var finishedThreads: [OSThread] = []
        var nextConnectionID: UInt64 = 1
        var vsmmus: [VSMMUID: ServedVSMMU] = [:]
        var stopping = false
        var started = false
        /// The write end of the pipe that wakes the accept thread's poll at stop.
        var wakeFD: Int32 = -1
        var heartbeat: (@Sendable (VSMMUServer) -> Void)?
        var access: AccessList = .open
        var limits = ServerLimits()
        var connectionLimits = ConnectionLimits()
        /// `[limits] event_queue_entries` in force (``Configuration/eventQueueEntries``).
        var eventQueueEntries = 1024
        /// The socket file's identity when this server bound it: ``stop()`` removes the path only while it
        /// is still that file (another daemon may have bound the path since).
        var boundSocket: (device: UInt64, inode: UInt64)?
        /// Backend progress seen per viommu at the last liveness check, and since when it is stuck.
        var progress: [ViommuKey: ProgressMark] = [:]
        /// How many vSMMUs ``recover()`` rebuilt (`nil`: not run yet).
        var recovered: Int?
        /// The open journal, once ``recover()`` ran with a state directory.
        var journal: Journal?
        var reclaimThread: OSThread?
    }

    /// The journal, when the server has a state directory.
    var journal: Journal? { state.withLock { $0.journal } }

    public let configuration: Configuration
    /// The drain pool the server made for its engines (``Configuration/engine`` named none): stopped
    /// with the server. A pool the caller gave is the caller's to stop.
    private let ownDrainPool: DrainPool?
    let logger: Logger
    let state = Locked(State())
    let providers: [String: PSMMUProvider]
    let startTime = POSIX.monotonicNanoseconds()
    let framesReceived = Atomic<UInt64>(0)
    let protocolErrors = Atomic<UInt64>(0)
    let connectionsTotal = Atomic<UInt64>(0)
    let refusalsTotal = Atomic<UInt64>(0)
    /// Connection threads polling for their next request now (``Configuration/requestPollingThreads``).
    let pollingSlots: RequestPollingSlots
    /// Requests caught while polling, and polls that ended without one (the thread then slept).
    let requestPollHits = Atomic<UInt64>(0)
    let requestPollMisses = Atomic<UInt64>(0)
    let refusalsInProgress = Atomic<Int>(0)
    /// The daemon's event path: every backend's sink (issue 14, PROTOCOL.md §9).
    let eventService = EventService()

    /// A server for `configuration`; nothing is bound until ``start()``.
    public init(configuration: Configuration, logger: Logger = Logger(label: "vsmmud")) {
        var configuration = configuration
        if configuration.engine.drainPool == nil {
            // Every vSMMU's queues share it: drain threads per pSMMU, not per viommu (issue 11 §3).
            let pool = DrainPool(threadsPerLane: configuration.drainThreadsPerPSMMU)
            configuration.engine.drainPool = pool
            ownDrainPool = pool
        } else {
            ownDrainPool = nil
        }
        self.configuration = configuration
        self.logger = logger
        pollingSlots = RequestPollingSlots(capacity: max(0, configuration.requestPollingThreads))
        state.withLock {
            $0.access = configuration.access
            $0.limits = configuration.limits
            $0.connectionLimits = configuration.connectionLimits
            $0.eventQueueEntries = configuration.eventQueueEntries
        }
        var providers: [String: PSMMUProvider] = [:]
        for provider in configuration.pSMMUs where providers[provider.name] == nil { providers[provider.name] = provider }
        self.providers = providers
        eventService.connectSimulated(configuration.pSMMUs)
    }

    deinit { stop() }

    /// Binds the socket (removing a stale socket file, creating its directory) and starts accepting.
    /// - Throws: ``SystemCallError`` when the socket cannot be bound.
    public func start() throws(SystemCallError) {
        let recovered: Int
        do throws(RecoveryError) { recovered = try recover() } catch {
            throw SystemCallError("journal: \(error)", errno: EIO)
        }
        let path = configuration.socketPath
        let fd: Int32
        if let inherited = configuration.inheritedListener {
            fd = inherited
        } else {
            try Self.prepareDirectory(of: path)
            if let st = try? SystemCall.lstat(path) {
                guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw SystemCallError("\(path) exists and is not a socket", errno: EEXIST) }
                guard !POSIX.isListening(path) else { throw SystemCallError("another daemon listens on \(path)", errno: EADDRINUSE) }
                unlink(path)
                logger.info("removed stale socket file", metadata: ["path": "\(path)"])
            }
            fd = try POSIX.listen(path: path)
            do throws(SystemCallError) { try applyOwnership(path) } catch {
                close(fd)
                unlink(path)
                throw error
            }
            if let bound = try? SystemCall.lstat(path) {
                state.withLock { $0.boundSocket = (UInt64(bound.st_dev), UInt64(bound.st_ino)) }
            }
        }
        // The accept loop polls; accept itself must never block (a connection that went away between
        // poll and accept).
        let wake: (read: Int32, write: Int32)
        var failedCall = "fcntl(F_SETFL, O_NONBLOCK)"
        do throws(Errno) {
            try SystemCall.setNonBlocking(fd)
            failedCall = "pipe"
            wake = try SystemCall.pipe()
        } catch {
            if configuration.inheritedListener == nil {
                close(fd)
                unlink(path)
            }
            throw SystemCallError(failedCall, errno: error)
        }
        state.withLock { $0.listenFD = fd; $0.wakeFD = wake.write; $0.started = true }
        let wakeReadFD = wake.read
        let thread: OSThread
        do throws(Errno) {
            thread = try OSThread { [self] in
                acceptLoop(fd, wake: wakeReadFD)
                close(wakeReadFD)
            }
        } catch {
            throw SystemCallError("pthread_create", errno: error)
        }
        state.withLock { $0.acceptThread = thread }
        if recovered > 0 {
            let deadline = startTime &+ UInt64(max(0, configuration.resumeGrace.nanosecondsClamped))
            let reclaimer: OSThread
            do throws(Errno) { reclaimer = try OSThread { [self] in reclaimUnclaimed(deadline: deadline) } } catch {
                throw SystemCallError("pthread_create", errno: error)
            }
            state.withLock { $0.reclaimThread = reclaimer }
        }
        logger.info("listening", metadata: [
            "socket": "\(path)", "activated": "\(configuration.inheritedListener != nil)",
            "psmmus": "\(configuration.pSMMUs.map(\.name))", "access": "\(configuration.access.logDescription)",
        ])
    }

    /// Gives the bound socket file its configured mode and group.
    private func applyOwnership(_ path: String) throws(SystemCallError) {
        if let group = configuration.socketGroupID {
            do throws(Errno) { try SystemCall.chown(path, group: gid_t(group)) } catch {
                throw SystemCallError("chown \(path) to group \(group)", errno: error)
            }
        }
        if let mode = configuration.socketMode {
            do throws(Errno) { try SystemCall.chmod(path, mode: mode_t(mode)) } catch {
                throw SystemCallError("chmod \(path)", errno: error)
            }
        }
    }

    /// Sets the function the accept thread calls at least every ``Configuration/heartbeatInterval``
    /// while serving (the daemon sends its watchdog pings and status from it). Runs on the accept thread:
    /// it must not block.
    public func setHeartbeat(_ heartbeat: (@Sendable (VSMMUServer) -> Void)?) {
        state.withLock { $0.heartbeat = heartbeat }
    }

    /// The limits in force for connections accepted from now on.
    public var limits: ServerLimits { state.withLock { $0.limits } }

    /// Replaces the limits for connections accepted from now on; established connections keep the limits
    /// announced in their HELLO_REPLY.
    public func reload(limits: ServerLimits) {
        state.withLock { $0.limits = limits }
        logger.notice("limits reloaded", metadata: ["limits": "\(limits)"])
    }

    /// The allow-list in force.
    public var access: AccessList { state.withLock { $0.access } }

    /// Replaces the allow-list; connections accepted from now on are checked against `access`
    /// (established ones stay).
    public func reload(access: AccessList) {
        state.withLock { $0.access = access }
        logger.notice("allow-list reloaded", metadata: ["access": "\(access.logDescription)"])
    }

    /// Stops gracefully: stops accepting and reading, lets each connection serve and answer what it had
    /// already received (pending syncs included), then tears down the vSMMUs, joins the threads and
    /// removes the socket file (unless socket-activated). Connections still busy after `gracePeriod`
    /// (e.g. a peer that does not read its replies) are cut. Idempotent; returns when everything is down.
    public func stop(gracePeriod: Duration = .seconds(30)) {
        let (listenFD, wakeFD, acceptThread, wasStarted) = state.withLock { s -> (Int32, Int32, OSThread?, Bool) in
            guard !s.stopping else { return (-1, -1, nil, false) }
            s.stopping = true
            let fd = s.listenFD
            let wake = s.wakeFD
            s.listenFD = -1
            s.wakeFD = -1
            // Stop reading: data already queued is still read and served; the peers' further writes fail.
            for record in s.connections.values { shutdown(record.fd, Int32(SHUT_RD)) }
            return (fd, wake, s.acceptThread, s.started)
        }
        guard wasStarted else { return }
        if wakeFD >= 0 {
            var byte: UInt8 = 1
            _ = write(wakeFD, &byte, 1)
        }
        acceptThread?.join()
        if wakeFD >= 0 { close(wakeFD) }
        if listenFD >= 0 { close(listenFD) }
        // Each connection thread removes its record when its vSMMUs are torn down and hands its thread
        // over to `finishedThreads` (exactly once), where it is joined.
        let deadline = POSIX.monotonicNanoseconds() &+ UInt64(max(0, gracePeriod.nanosecondsClamped))
        while state.withLock({ !$0.connections.isEmpty }) {
            if POSIX.monotonicNanoseconds() >= deadline {
                let cut = state.withLock { s -> Int in
                    for record in s.connections.values { shutdown(record.fd, Int32(SHUT_RDWR)) }
                    return s.connections.count
                }
                if cut > 0 { logger.warning("grace period over: cutting busy connections", metadata: ["connections": "\(cut)"]) }
                while state.withLock({ !$0.connections.isEmpty }) { usleep(1000) }
                break
            }
            usleep(1000)
        }
        let threads = state.withLock { s -> [OSThread] in defer { s.finishedThreads = [] }; return s.finishedThreads }
        for thread in threads { thread.join() }
        state.withLock { $0.reclaimThread }?.join()
        // With a journal, a stop (SIGTERM: a restart or an upgrade) leaves the vSMMUs to the next process:
        // their queues are stopped (what was pushed is executed), nothing is torn down.
        if journal != nil {
            let kept = state.withLock { $0.vsmmus.values.map { $0 } }
            for served in kept {
                // The shared queue stops (state STOPPED); its descriptors stay in the fd store for the next process.
                served.endSharedQueue(keepingStore: true)
                served.endEventQueue(keepingStore: true)
                served.engine.stop()
            }
            if !kept.isEmpty { logger.notice("stopped with the vSMMUs kept in the journal", metadata: ["vsmmus": "\(kept.count)"]) }
        }
        // Every queue is stopped by now (torn down with its connection, or kept for the journal above).
        ownDrainPool?.stop()
        if configuration.inheritedListener == nil { removeSocketFileIfStillOurs() }
        logger.info("stopped", metadata: ["socket": "\(configuration.socketPath)"])
    }

    /// Removes the socket path if it is still the file this server bound (same device and inode): a
    /// daemon that bound the path since keeps its socket.
    private func removeSocketFileIfStillOurs() {
        let path = configuration.socketPath
        guard let bound = state.withLock({ $0.boundSocket }) else { return }
        guard let now = try? SystemCall.lstat(path) else { return }
        guard UInt64(now.st_dev) == bound.device, UInt64(now.st_ino) == bound.inode else {
            logger.notice("socket path now belongs to another listener: left in place", metadata: ["socket": "\(path)"])
            return
        }
        unlink(path)
    }

    /// The most slots of an event queue mapped from now on (`[limits] event_queue_entries`).
    public var eventQueueEntries: Int { state.withLock { $0.eventQueueEntries } }

    /// Replaces the event queue bound for MAP_EVENT_QUEUE requests from now on (mapped queues keep their size).
    public func reload(eventQueueEntries: Int) {
        state.withLock { $0.eventQueueEntries = eventQueueEntries }
        logger.notice("event queue bound reloaded", metadata: ["event_queue_entries": "\(eventQueueEntries)"])
    }

    /// Connection limits in force for connections accepted from now on.
    public var connectionLimits: ConnectionLimits { state.withLock { $0.connectionLimits } }

    /// Replaces the connection limits for connections accepted from now on (held ones stay).
    public func reload(connectionLimits: ConnectionLimits) {
        state.withLock { $0.connectionLimits = connectionLimits }
        logger.notice("connection limits reloaded", metadata: ["limits": "\(connectionLimits)"])
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
            do throws(Errno) { try SystemCall.mkdir(partial, mode: 0o755) } catch where error != .fileExists {
                throw SystemCallError("mkdir \(partial)", errno: error)
            } catch {}
        }
    }

    // MARK: Accepting

    private func acceptLoop(_ listenFD: Int32, wake wakeFD: Int32) {
        // One fd held in reserve: out of fds (EMFILE), the loop frees it to accept the waiting connection
        // and refuse it at once, rather than leaving the backlog full of connections nobody answers.
        var reserveFD = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { if reserveFD >= 0 { close(reserveFD) } }
        let interval = max(1, Int(configuration.heartbeatInterval.nanosecondsClamped / 1_000_000))
        var lastBeat = POSIX.monotonicNanoseconds()
        while true {
            var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
            let remaining = Int32(clamping: max(0, interval - Int((POSIX.monotonicNanoseconds() &- lastBeat) / 1_000_000)))
            let ready: Int
            do throws(Errno) { ready = try SystemCall.poll(&fds, timeoutMilliseconds: remaining) } catch {
                logger.error("poll failed", metadata: ["errno": "\(error.rawValue)"])
                return
            }
            if isStopping || fds[1].revents != 0 { return }
            if POSIX.monotonicNanoseconds() &- lastBeat >= UInt64(interval) * 1_000_000 {
                lastBeat = POSIX.monotonicNanoseconds()
                if let heartbeat = state.withLock({ $0.heartbeat }) { heartbeat(self) }
            }
            guard ready > 0, fds[0].revents != 0 else { continue }
            let fd: Int32
            do throws(Errno) { fd = try SystemCall.accept(listenFD) } catch {
                let failure = error.rawValue
                if failure == ECONNABORTED || failure == EAGAIN || failure == EWOULDBLOCK { continue }
                if (failure == EMFILE || failure == ENFILE) && reserveFD >= 0 {
                    close(reserveFD)
                    var refused = failure
                    do throws(Errno) {
                        refuseAtAccept(try SystemCall.accept(listenFD),
                                       .limitExceeded(limit: 0, asked: 1, type: MessageType(rawValue: 0),
                                                      "the daemon is out of file descriptors: try again later"))
                    } catch {
                        refused = error.rawValue
                    }
                    logger.error("out of file descriptors: refused a connection", metadata: ["errno": "\(refused)"])
                    reserveFD = open("/dev/null", O_RDONLY | O_CLOEXEC)
                    continue
                }
                if failure == EMFILE || failure == ENFILE || failure == ENOBUFS || failure == ENOMEM {
                    // Out of fds or memory: back off rather than spin, keep serving the connections we have.
                    logger.error("accept failed, retrying", metadata: ["errno": "\(failure)"])
                    usleep(100_000)
                    continue
                }
                if !isStopping { logger.error("accept failed", metadata: ["errno": "\(failure)"]) }
                return
            }
            do throws(Errno) { try SystemCall.setCloseOnExec(fd) } catch {
                logger.error("cannot make an accepted connection close-on-exec: closed", metadata: ["errno": "\(error.rawValue)"])
                close(fd)
                continue
            }
            // Reap the threads of connections that ended since.
            for thread in state.withLock({ s -> [OSThread] in defer { s.finishedThreads = [] }; return s.finishedThreads }) {
                thread.join()
            }
            let credentials = POSIX.peerCredentials(fd)
            guard admits(fd, credentials: credentials) else { continue }
            let userID = credentials?.userID
            enum Admission { case admitted(UInt64), stopping, refused(ProtocolError) }
            let admission = state.withLock { s -> Admission in
                guard !s.stopping else { return .stopping }
                let limits = s.connectionLimits
                guard s.connections.count < limits.maximumConnections else {
                    return .refused(.limitExceeded(limit: limits.maximumConnections, asked: UInt64(s.connections.count + 1),
                                                   type: MessageType(rawValue: 0),
                                                   "the daemon holds its maximum of \(limits.maximumConnections) connections"))
                }
                let mine = s.connections.values.lazy.filter { $0.userID == userID }.count
                guard mine < limits.maximumConnectionsPerUser else {
                    return .refused(.limitExceeded(limit: limits.maximumConnectionsPerUser, asked: UInt64(mine + 1),
                                                   type: MessageType(rawValue: 0),
                                                   "uid \(userID.map { "\($0)" } ?? "?") holds its maximum of \(limits.maximumConnectionsPerUser) connections"))
                }
                let id = s.nextConnectionID
                s.nextConnectionID += 1
                s.connections[id] = ConnectionRecord(fd: fd, thread: nil, userID: userID)
                return .admitted(id)
            }
            let id: UInt64
            switch admission {
            case .stopping: close(fd); return
            case .refused(let error):
                refusalsTotal.add(1, ordering: .relaxed)
                logger.warning("connection refused: over a connection limit", metadata: [
                    "uid": "\(userID.map { "\($0)" } ?? "?")", "error": "\(error)",
                ])
                refuseAtAccept(fd, error)
                continue
            case .admitted(let admitted): id = admitted
            }
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

    /// Answers a connection the accept loop will not serve with `error` and closes it, without blocking
    /// the loop: the frame is small and the socket's buffer empty, and a send that would block is dropped.
    private func refuseAtAccept(_ fd: Int32, _ error: ProtocolError) {
        // A socket that cannot be made non-blocking is closed unanswered: the send could block the loop.
        if (try? SystemCall.setNonBlocking(fd)) != nil {
            let frame = error.replyFrame(requestID: 0)
            _ = frame.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        close(fd)
    }

    // MARK: Tenants

    /// A new tenant: a uniformly random non-zero u64 (from getrandom(2)). Random rather than a counter so
    /// that a tenant journaled by an earlier process never meets a new connection's (connection ids start
    /// at 1 again after a restart); with at most thousands of live tenants among 2^64 − 1 a draw collides
    /// with probability < 10^-12.
    static func newTenant() -> UInt64 {
        var generator = SystemRandomNumberGenerator()
        return UInt64.random(in: 1...UInt64.max, using: &generator)
    }

    /// The tenant of `connection`'s new vSMMUs: the one it has, or a new one from now on. The tenant is the
    /// identity that creates vSMMUs: a VMM's connection, and whichever connection later resumes them.
    func tenant(of connection: UInt64) -> UInt64 {
        state.withLock { s in
            if let tenant = s.connections[connection]?.tenant { return tenant }
            let tenant = Self.newTenant()
            s.connections[connection]?.tenant = tenant
            return tenant
        }
    }

    /// RESUME_VSMMU: a connection with no tenant yet joins the tenant of the vSMMU it resumed, so that a VMM
    /// that reconnects and resumes its vSMMUs, then creates more, keeps them all in one device namespace.
    /// A connection that already has a tenant keeps it (a resumed vSMMU keeps its own tenant in any case:
    /// its registrations live there).
    func join(tenantOf vsmmu: VSMMUID, connection: UInt64) {
        state.withLock { s in
            guard let tenant = s.vsmmus[vsmmu]?.tenant, s.connections[connection] != nil,
                  s.connections[connection]?.tenant == nil else { return }
            s.connections[connection]?.tenant = tenant
        }
    }

    // MARK: Synchronous teardown

    /// After a SET_DEV_ID that met an existing registration of its host device (EEXIST in the pSMMU):
    /// waits until every other vSMMU of `served`'s tenant whose owner has gone — its connection is tearing
    /// it down, or its peer has already closed the socket (POLLRDHUP/POLLHUP) and its thread is about to —
    /// has been torn down, so that the caller's one retry finds the device free (PROTOCOL.md §3.3: a
    /// quick VMM restart never sees a ghost).
    ///
    /// Costs nothing unless a registration collides: no peer's socket is looked at before. A collision
    /// can only be within a tenant (the simulated pSMMUs scope host devices per tenant), so only the
    /// tenant's vSMMUs are looked at. Bounded (5 s) against a teardown stuck in a stalled backend.
    /// - Returns: whether there was such a vSMMU (so that a retry may succeed).
    @discardableResult
    func awaitTeardownOfGoneOwners(colliding served: ServedVSMMU) -> Bool {
        // POLLRDHUP (Linux's <bits/poll.h>, 0x2000) is behind _GNU_SOURCE, which Glibc's module lacks.
        let peerClosed: Int16 = 0x2000
        let gone: [VSMMUID] = state.withLock { s in
            s.vsmmus.values.compactMap { other -> VSMMUID? in
                guard other.id != served.id, other.tenant == served.tenant else { return nil }
                let owner = other.owner
                if owner == UInt64.max { return other.id } // its connection is tearing it down
                // Polled under the lock: a connection's fd is closed under it too, so it is never a reused one.
                guard owner != 0, let fd = s.connections[owner]?.fd else { return nil }
                var p = [pollfd(fd: fd, events: peerClosed, revents: 0)]
                let ready = (try? SystemCall.poll(&p, timeoutMilliseconds: 0)) ?? 0
                return ready > 0 && p[0].revents & (peerClosed | Int16(POLLHUP)) != 0 ? other.id : nil
            }
        }
        guard !gone.isEmpty else { return false }
        let deadline = POSIX.monotonicNanoseconds() &+ 5_000_000_000
        while state.withLock({ s in gone.contains { s.vsmmus[$0] != nil } }), POSIX.monotonicNanoseconds() < deadline {
            usleep(200)
        }
        return true
    }

    /// Registers a connection without a socket (``InMemoryConnection``), as the accept loop registers one.
    func registerInMemoryConnection(userID: UInt32?) -> UInt64 {
        state.withLock { s -> UInt64 in
            let id = s.nextConnectionID
            s.nextConnectionID += 1
            s.connections[id] = ConnectionRecord(fd: -1, thread: nil, userID: userID)
            return id
        }
    }

    /// How many vSMMUs the daemon holds, and how many connections.
    package var registryCounts: (vsmmus: Int, connections: Int) {
        state.withLock { s in (s.vsmmus.count, s.connections.count) }
    }

    /// A connection's thread ends: tear down its vSMMUs, forget it, close its socket.
    func finish(connection id: UInt64, fd: Int32) {
        // Torn down before they leave the registry: once a vSMMU is gone from LIST and HEALTH, its host
        // devices are free in the pSMMUs. A daemon that stops with a journal keeps them for the next process.
        let keep = journal != nil && isStopping
        let owned = keep ? [] : state.withLock { s in s.vsmmus.values.filter { $0.owner == id }.sorted { $0.id < $1.id } }
        for vsmmu in owned {
            // Resumed by another connection meanwhile: no longer this connection's to tear down.
            guard vsmmu.ownership.withLock({ o -> Bool in
                guard o.connection == id else { return false }
                o.connection = UInt64.max
                return true
            }) else { continue }
            let failures = vsmmu.tearDown()
            state.withLock { _ = $0.vsmmus.removeValue(forKey: vsmmu.id) }
            do throws(JournalError) { try journalRemoval(of: vsmmu.id) } catch {
                logger.error("cannot journal the teardown of a vSMMU: it comes back at the next start and is reclaimed",
                             metadata: ["vsmmu": "\(vsmmu.id.rawValue)", "error": "\(error)"])
            }
            logger.info("vSMMU destroyed with its connection", metadata: [
                "connection": "\(id)", "vsmmu": "\(vsmmu.id.rawValue)", "failures": "\(failures)",
            ])
        }
        state.withLock { s in
            if let record = s.connections.removeValue(forKey: id), let thread = record.thread {
                s.finishedThreads.append(thread)
            }
            if fd >= 0 { close(fd) } // under the lock: stop() never shuts down a reused fd number
        }
        logger.info("connection closed", metadata: ["connection": "\(id)"])
    }
}
