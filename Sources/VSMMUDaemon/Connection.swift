import CSocketShims
import Logging
import SMMUv3
import VSMMUProtocol
import VSMMUSystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One client connection, run on its own thread: read, cut frames, handle each in order, reply.
struct Connection {
    /// Unclaimed fds a connection holds at most (PROTOCOL.md §1); more are closed on arrival.
    static let maximumPendingFileDescriptors = 4

    let id: UInt64
    let fd: Int32
    let credentials: PeerCredentials?
    let server: VSMMUServer
    /// The limits in force when the connection was accepted: announced in HELLO_REPLY and enforced for
    /// the connection's life (a SIGHUP reload changes them for later connections only).
    let limits: ServerLimits
    var handshakeCompleted = false
    /// The protocol version HELLO negotiated (meaningful once ``handshakeCompleted``).
    var version: UInt16 = 1
    /// fds received with SCM_RIGHTS and not yet claimed by a frame, oldest first.
    var pendingFileDescriptors: [Int32] = []
    /// The fds a MAP_QUEUE (memfd, kick, call) or MAP_EVENT_QUEUE (memfd, call) frame claimed, for its
    /// handler to take (``takeQueueDescriptors()``); closed after the frame when it did not.
    var queueDescriptors: [Int32] = []

    /// Hands the frame's claimed fds to its handler, which owns them from now on.
    mutating func takeQueueDescriptors() -> [Int32] {
        defer { queueDescriptors = [] }
        return queueDescriptors
    }
    var decoder: FrameDecoder
    var logger: Logger
    /// The reply being written, reused from one request to the next (no allocation per reply).
    private var replyBuffer: [UInt8] = []
    /// How long to poll for the next request before sleeping.
    private var poller: RequestPoller
    /// When the connection must have completed HELLO (monotonic ns; ``ConnectionLimits``).
    private let helloDeadline: UInt64
    private let helloTimeoutMilliseconds: Int
    /// Whether SO_RCVTIMEO is armed for the HELLO deadline.
    private var receiveTimeoutArmed = false

    /// Where replies go: the socket, or a buffer (``VSMMUServer/serveInMemory(_:)``).
    let output: ReplyOutput

    init(id: UInt64, fd: Int32, credentials: PeerCredentials?, server: VSMMUServer, output: ReplyOutput = .socket) {
        self.id = id
        self.fd = fd
        self.output = output
        self.credentials = credentials
        self.server = server
        limits = server.limits
        decoder = FrameDecoder(maximumFrameSize: Int(limits.maximumFrameSize))
        logger = server.logger
        logger[metadataKey: "connection"] = "\(id)"
        poller = RequestPoller(maximum: server.configuration.requestPolling)
        helloTimeoutMilliseconds = server.connectionLimits.helloTimeoutMilliseconds
        helloDeadline = POSIX.monotonicNanoseconds() &+ UInt64(helloTimeoutMilliseconds) * 1_000_000
    }

    /// Before HELLO, bounds the next blocking receive by what is left of the HELLO deadline
    /// (SO_RCVTIMEO); after it, lifts the bound once. Returns `false` when the deadline has passed.
    private mutating func armHelloDeadline() -> Bool {
        if handshakeCompleted {
            if receiveTimeoutArmed {
                do throws(Errno) { try SystemCall.setReceiveTimeout(fd, microseconds: 0) } catch {
                    logger.warning("cannot lift the HELLO receive timeout", metadata: ["errno": "\(error)"])
                }
                receiveTimeoutArmed = false
            }
            return true
        }
        let now = POSIX.monotonicNanoseconds()
        guard now < helloDeadline else { return false }
        let left = helloDeadline - now
        do throws(Errno) { try SystemCall.setReceiveTimeout(fd, microseconds: max(1, Int(left / 1000))) } catch {
            logger.warning("cannot arm the HELLO receive timeout", metadata: ["errno": "\(error)"])
            return true
        }
        receiveTimeoutArmed = true
        return true
    }

    /// The HELLO deadline passed: answer LIMIT_EXCEEDED and end the connection (PROTOCOL.md §3.4).
    private func refuseLateHello() {
        server.protocolErrors.add(1, ordering: .relaxed)
        let error = ProtocolError.limitExceeded(limit: helloTimeoutMilliseconds, asked: UInt64(helloTimeoutMilliseconds),
                                                type: .hello,
                                                "no HELLO within \(helloTimeoutMilliseconds) ms of connecting: closing")
        logger.info("closing a connection that did not complete HELLO in time")
        try? write(error.replyFrame(requestID: 0))
    }

    /// Receives the next bytes (and fds) from the peer: polls for them first while the adaptive window
    /// (``RequestPoller``) is open and a polling slot is free, then blocks. Returns what `recvmsg`
    /// returned (-1 with `errno` set on failure, 0 at end of stream).
    private mutating func receive(into buffer: UnsafeMutableRawBufferPointer, fds: UnsafeMutableBufferPointer<Int32>,
                                  fdCount: inout Int32, truncatedControl: inout Int32) -> Int {
        func read(dontWait: Bool) -> Int {
            vsmmu_receive_with_fds(fd, buffer.baseAddress, buffer.count, fds.baseAddress, Int32(fds.count),
                                   &fdCount, &truncatedControl, dontWait ? 1 : 0)
        }
        guard poller.maximumNanoseconds > 0 else { return read(dontWait: false) }
        let slots = server.pollingSlots
        let start = POSIX.monotonicNanoseconds()
        // Poll only while no other connection thread is serving a request: then a CPU is free to spin on;
        // otherwise the CPU is worth more to the threads that have work.
        if poller.windowNanoseconds > 0, slots.serving == 0, slots.tryAcquire() {
            var received = read(dontWait: true)
            while received < 0, errno == EAGAIN, slots.serving == 0,
                  POSIX.monotonicNanoseconds() &- start < poller.windowNanoseconds {
                received = read(dontWait: true)
            }
            let caught = !(received < 0 && errno == EAGAIN)
            server.pollingSlots.release()
            if caught {
                server.requestPollHits.add(1, ordering: .relaxed)
                poller.record(waitedNanoseconds: POSIX.monotonicNanoseconds() &- start, caughtWhilePolling: true)
                return received
            }
            server.requestPollMisses.add(1, ordering: .relaxed)
        }
        let received = read(dontWait: false)
        let failure = errno
        poller.record(waitedNanoseconds: POSIX.monotonicNanoseconds() &- start, caughtWhilePolling: false)
        errno = failure
        return received
    }

    /// Serves the connection until the peer closes it, a fatal framing error, or the server stops.
    mutating func run() {
        defer {
            for fd in pendingFileDescriptors { close(fd) }
            pendingFileDescriptors = []
        }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var fds = [Int32](repeating: -1, count: 8)
        // The commands of the INVALIDATE being handled, reused from one request to the next.
        var commands: [Command] = []
        var serving = false
        defer { if serving { server.pollingSlots.endServing() } }
        while true {
            if serving {
                server.pollingSlots.endServing()
                serving = false
            }
            guard armHelloDeadline() else {
                refuseLateHello()
                return
            }
            var fdCount: Int32 = 0
            var truncatedControl: Int32 = 0
            let received = buffer.withUnsafeMutableBytes { raw in
                fds.withUnsafeMutableBufferPointer { fdBuffer in
                    receive(into: raw, fds: fdBuffer, fdCount: &fdCount, truncatedControl: &truncatedControl)
                }
            }
            for i in 0..<Int(fdCount) {
                if pendingFileDescriptors.count < Self.maximumPendingFileDescriptors {
                    pendingFileDescriptors.append(fds[i])
                } else {
                    close(fds[i])
                    logger.warning("closed a file descriptor beyond the unclaimed limit")
                }
            }
            if truncatedControl != 0 { logger.warning("control data truncated: file descriptors lost") }
            if received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !handshakeCompleted {
                refuseLateHello()
                return
            }
            if received < 0 {
                if !server.isStopping { logger.info("read failed", metadata: ["errno": "\(errno)"]) }
                return
            }
            if received == 0 {
                endOfStream()
                return
            }
            server.pollingSlots.beginServing()
            serving = true
            guard process(buffer[0..<received], commands: &commands) else { return }
        }
    }

    /// Cuts `bytes` into frames and handles each in order, writing their replies. Returns `false` when
    /// the connection must end (a fatal framing error, or a reply that cannot be written).
    mutating func process(_ bytes: ArraySlice<UInt8>, commands: inout [Command]) -> Bool {
        decoder.feed(bytes)
        while true {
            // Fast path: a well-formed INVALIDATE is decoded straight from the decoder's buffer into
            // `commands` (reused), without building a `Frame` or a `Request`; anything else, and every
            // malformed INVALIDATE, takes the general path below, which answers the error.
            var target: VSMMUID?
            if handshakeCompleted,
               let header = decoder.takeFrame(ofType: .invalidate, { _, payload in
                   target = Invalidate.decodeCommands(payload: payload, into: &commands)
                   return target != nil
               }), let vsmmu = target {
                server.framesReceived.add(1, ordering: .relaxed)
                let response: Response
                do throws(ProtocolError) {
                    response = try commands.withUnsafeBufferPointer { (batch) throws(ProtocolError) -> Response in
                        try server.invalidate(vsmmu, commands: batch, connection: self)
                    }
                } catch {
                    response = .error(error)
                }
                guard reply(response, to: header) else { return false }
                continue
            }
            let frame: Frame?
            do throws(FrameError) { frame = try decoder.nextFrame() } catch {
                logger.warning("fatal framing error, closing", metadata: ["error": "\(error)"])
                server.protocolErrors.add(1, ordering: .relaxed)
                try? write(error.replyFrame())
                return false
            }
            guard let frame else { return true }
            guard handle(frame) else { return false }
        }
    }

    /// The peer closed its writing side: answer TRUNCATED_FRAME if it stopped inside a frame.
    func endOfStream() {
        do throws(FrameError) { try decoder.finish() } catch {
            server.protocolErrors.add(1, ordering: .relaxed)
            do throws(SystemCallError) { try write(error.replyFrame()) } catch {
                logger.info("peer vanished inside a frame", metadata: ["error": "\(error)"])
                return
            }
            logger.info("stream ended inside a frame", metadata: ["error": "\(error)"])
        }
    }

    /// Handles one frame and writes its reply. Returns `false` when the connection must end.
    private mutating func handle(_ frame: Frame) -> Bool {
        server.framesReceived.add(1, ordering: .relaxed)
        let header = frame.header
        // Each complete frame with FD_ATTACHED takes the oldest unclaimed fd (PROTOCOL.md §1); MAP_QUEUE takes
        // the three oldest, or none when fewer arrived.
        var attachedFD: Int32? = nil
        defer {
            for fd in queueDescriptors { close(fd) }
            queueDescriptors = []
        }
        if header.flags.contains(.fileDescriptorAttached) {
            let count = header.type.fileDescriptorCount
            if count > 1 {
                if pendingFileDescriptors.count >= count {
                    queueDescriptors = Array(pendingFileDescriptors.prefix(count))
                    pendingFileDescriptors.removeFirst(count)
                }
            } else if !pendingFileDescriptors.isEmpty {
                attachedFD = pendingFileDescriptors.removeFirst()
            }
        }
        let response: Response
        var applied: Request?
        do throws(ProtocolError) {
            var decoded: Request?
            var decodeError: ProtocolError?
            do throws(ProtocolError) { decoded = try Request.decode(frame, handshakeCompleted: handshakeCompleted) } catch {
                decodeError = error
            }
            // §2.2 step 5 (FD_ATTACHED without an fd) before step 6 (the fields, the daemon's state).
            if let missing = Self.missingDescriptor(header, claimed: attachedFD != nil || !queueDescriptors.isEmpty,
                                                    decodeError: decodeError) { throw missing }
            if let decodeError { throw decodeError }
            guard let request = decoded else { throw ProtocolError.internalError(type: header.type, "no request decoded") }
            // A control request re-sent after a resume whose reply was lost: answered again, not applied twice.
            if let replayed = server.replayedReply(to: request, header: header, payload: frame.payload, connection: self) {
                if let fd = attachedFD { close(fd) }
                return send(replayed)
            }
            try server.checkDurability(of: request, connection: self)
            response = try server.apply(request, connection: &self, fileDescriptor: &attachedFD)
            applied = request
        } catch {
            response = .error(error)
        }
        if let fd = attachedFD { close(fd) } // not adopted by the request
        return reply(response, to: header, request: applied, payload: frame.payload)
    }

    /// The `BAD_FILE_DESCRIPTOR` (detail 1) that answers a frame with `FD_ATTACHED` whose fd did not arrive,
    /// on a type that takes one (ATTACH_VIOMMU, SET_DEV_ID; MAP_QUEUE with fewer than its three), in the order of PROTOCOL.md §2.2: after the
    /// checks of steps 1-5 the decoder made (`decodeError` other than a field's `BAD_FIELD` wins), before
    /// the field checks of step 6 (a `BAD_FIELD` at a payload offset yields to it) and before anything the
    /// request means for the daemon's state. Only the connection knows whether the fd arrived.
    static func missingDescriptor(_ header: FrameHeader, claimed: Bool, decodeError: ProtocolError?) -> ProtocolError? {
        guard header.flags.contains(.fileDescriptorAttached), !claimed,
              header.type == .attachViommu || header.type == .setDeviceID || header.type == .mapQueue else { return nil }
        if let decodeError {
            guard decodeError.code == .badField, decodeError.detail < UInt32(ProtocolError.headerFieldOffset) else { return nil }
        }
        return .badFileDescriptor(.missing, type: header.type)
    }

    /// Writes a reply frame as it is. Returns `false` when the connection must end.
    private func send(_ frame: [UInt8]) -> Bool {
        do throws(SystemCallError) { try write(frame) } catch {
            logger.info("cannot write a reply, closing", metadata: ["error": "\(error)"])
            return false
        }
        return true
    }

    /// Writes the reply to the request of `header`. Returns `false` when the connection must end.
    private mutating func reply(_ response: Response, to header: FrameHeader, request: Request? = nil, payload: [UInt8] = []) -> Bool {
        if case .error(let error) = response {
            server.protocolErrors.add(1, ordering: .relaxed)
            logger.debug("request refused", metadata: ["request": "\(header)", "error": "\(error)"])
        }
        replyBuffer.removeAll(keepingCapacity: true)
        do throws(ProtocolError) { try response.encode(requestID: header.requestID, into: &replyBuffer) } catch {
            server.protocolErrors.add(1, ordering: .relaxed)
            replyBuffer = ProtocolError.internalError(type: header.type, "cannot encode the reply: \(error)")
                .replyFrame(requestID: header.requestID)
        }
        // A control change is durable before its reply leaves (PROTOCOL.md "Durability and restarts").
        if let request { server.commit(request, header: header, payload: payload, response: response, reply: &replyBuffer) }
        do throws(SystemCallError) { try write(replyBuffer) } catch {
            logger.info("cannot write a reply, closing", metadata: ["error": "\(error)"])
            return false
        }
        if case .error(let error) = response, error.closesConnection { return false }
        return true
    }

    /// Writes `bytes` to ``output``.
    private func write(_ bytes: [UInt8]) throws(SystemCallError) {
        switch output {
        case .socket: try POSIX.sendAll(fd, bytes)
        case .memory(let recorder): recorder.bytes.append(contentsOf: bytes)
        }
    }
}

/// Where a ``Connection`` writes its replies.
enum ReplyOutput {
    /// The connection's socket.
    case socket
    /// A buffer: a connection served in memory, without a socket.
    case memory(ReplyRecorder)
}

/// The replies of a connection served in memory, in order.
final class ReplyRecorder {
    var bytes: [UInt8] = []
}
