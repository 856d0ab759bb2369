import CSocketShims
import SMMUv3
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Why a client call failed.
public enum VSMMUClientError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The daemon refused the request (an ERROR reply).
    case server(ProtocolError)
    /// A system call failed (connect, send, recv).
    case transport(call: String, errno: Int32)
    /// The daemon closed the connection before replying.
    case connectionClosed
    /// The reply could not be decoded, or answers another request / type.
    case badReply(String)

    /// The server's error code, for `.server`.
    public var code: ProtocolErrorCode? {
        if case .server(let error) = self { return error.code }
        return nil
    }

    public var description: String {
        switch self {
        case .server(let e): return "server: \(e)"
        case .transport(let call, let errno): return "\(call): \(String(cString: strerror(errno))) (errno \(errno))"
        case .connectionClosed: return "the daemon closed the connection"
        case .badReply(let why): return "bad reply: \(why)"
        }
    }
}

/// A blocking client of vsmmud (PROTOCOL.md): one connection, one request at a time.
///
/// ```swift
/// let client = try VSMMUClient(socketPath: "/run/vsmmud/vsmmud.sock")
/// try client.hello(name: "qemu vm42")
/// let vsmmu = try client.createVSMMU(name: "vm42")
/// let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 0)
/// ```
///
/// Every call sends one request and blocks until its reply; an ERROR reply throws
/// ``VSMMUClientError/server(_:)``. Not thread-safe: use one client per thread (or a lock).
/// ``send(_:fileDescriptor:)`` and ``receive()`` give access to pipelining and raw frames.
///
/// With a ``Reconnect`` policy (``init(socketPath:firstRequestID:reconnect:)``) the client survives a
/// restart of the daemon: a request whose connection fails is re-sent on a new, handshaken connection on
/// which every vSMMU the client holds a resume token for was resumed (PROTOCOL.md §5.13).
public final class VSMMUClient {
    /// The connected socket. It changes when the client reconnects (``reconnectCount``).
    public private(set) var fileDescriptor: Int32
    /// The socket path the client connects (and reconnects) to.
    public let socketPath: String
    /// How the client reconnects when its connection fails; `nil`: it does not (the failure is thrown).
    public var reconnect: Reconnect?
    /// How many times the client reconnected (and resumed) after a lost connection.
    public internal(set) var reconnectCount = 0
    /// The vSMMUs a reconnect could not resume: the new daemon answered RESUME_VSMMU with `UNKNOWN_VSMMU`
    /// (it ran without a journal, reclaimed the vSMMU after its grace period, or the vSMMU was destroyed).
    /// Their tokens are forgotten; requests naming them get `UNKNOWN_VSMMU`.
    public internal(set) var lostVSMMUs: Set<VSMMUID> = []
    /// The HELLO to send again on a new connection (set by a successful ``hello(name:versions:)``).
    var handshake: (name: String, versions: ClosedRange<UInt16>)?
    /// The iommufd to hand back with RESUME_VSMMU for a vSMMU, when the client resumes it on its own.
    var resumeIOMMUFDs: [VSMMUID: Int32] = [:]
    /// The VFIO cdevs to hand back with SET_DEV_ID after the RESUME_VSMMU of a vSMMU, by vSID.
    var resumeVFIODevices: [VSMMUID: [StreamID: ResumeVFIODevice]] = [:]
    struct ResumeVFIODevice { var viommu: UInt32, hostDeviceID: UInt32, cdev: Int32 }
    /// The shared command queues this client mapped, by vSMMU: mapped again after a reconnect (§8.6).
    var sharedQueues: [VSMMUID: WeakSharedQueue] = [:]
    /// The event queues this client mapped, by vSMMU: mapped again after a reconnect (§9.7).
    var eventQueues: [VSMMUID: WeakEventQueue] = [:]
    var decoder = FrameDecoder()
    /// The id the next request gets. Ids stay unique over a client's whole life: a client that reconnects
    /// after a daemon restart starts its new connection where the old one stopped
    /// (``init(socketPath:firstRequestID:)``), so a re-sent control request is recognised (PROTOCOL.md
    /// "Durability and restarts").
    public internal(set) var nextRequestID: UInt64
    /// The resume token of each vSMMU this client created on a version-3 connection (or resumed).
    public internal(set) var resumeTokens: [VSMMUID: ResumeToken] = [:]
    private var readBuffer = [UInt8](repeating: 0, count: 64 * 1024)
    /// The daemon's HELLO_REPLY, after ``hello(name:versions:)``.
    public internal(set) var serverHello: HelloReply?

    /// Connects to the daemon's socket.
    /// - Parameter reconnect: the policy for lost connections (``Reconnect``); with one, a daemon that is
    ///   restarting (the socket missing or refusing) is also waited for here, within the policy's deadline.
    /// - Throws: ``VSMMUClientError/transport(call:errno:)``; with a policy, after its deadline, `ETIMEDOUT`
    ///   (``VSMMUClientError/isReconnectFailure``).
    public init(socketPath: String, firstRequestID: UInt64 = 1, reconnect: Reconnect? = nil) throws(VSMMUClientError) {
        nextRequestID = max(1, firstRequestID)
        self.socketPath = socketPath
        self.reconnect = reconnect
        if let reconnect {
            var backoff = Reconnect.Backoff(reconnect)
            while true {
                do throws(VSMMUClientError) {
                    fileDescriptor = try Self.connectSocket(socketPath)
                    return
                } catch where error.isConnectionFailure {
                    try backoff.wait(after: error)
                }
            }
        }
        fileDescriptor = try Self.connectSocket(socketPath)
    }

    /// A new stream socket connected to `socketPath`.
    static func connectSocket(_ socketPath: String) throws(VSMMUClientError) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socketPath.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw .transport(call: "connect \(socketPath)", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .transport(call: "socket", errno: errno) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw .transport(call: "connect \(socketPath)", errno: e)
        }
        return fd
    }

    deinit { close(fileDescriptor) }

    // MARK: Raw access

    /// Sends raw bytes (e.g. a malformed frame), with `fd` passed by SCM_RIGHTS on the first `sendmsg`.
    public func sendBytes(_ bytes: [UInt8], fileDescriptor fd: Int32? = nil) throws(VSMMUClientError) {
        try sendBytes(bytes, fileDescriptors: fd.map { [$0] } ?? [])
    }

    /// Sends raw bytes with `fds` (at most 8) in one SCM_RIGHTS control message on the first `sendmsg`
    /// (MAP_QUEUE's three, PROTOCOL.md §1).
    public func sendBytes(_ bytes: [UInt8], fileDescriptors fds: [Int32]) throws(VSMMUClientError) {
        var offset = 0
        var pendingFDs = fds
        repeat {
            let sent = bytes.withUnsafeBytes { raw in
                pendingFDs.withUnsafeBufferPointer { fdBuffer in
                    vsmmu_send_with_fds(fileDescriptor, raw.baseAddress.map { $0 + offset }, raw.count - offset, fdBuffer.baseAddress,
                                        Int32(fdBuffer.count))
                }
            }
            guard sent >= 0 else { throw .transport(call: "sendmsg", errno: errno) }
            pendingFDs = []
            offset += sent
        } while offset < bytes.count
    }

    /// Encodes and sends `request` (with `fileDescriptor` by SCM_RIGHTS if given) without waiting.
    /// - Returns: the request id.
    @discardableResult
    public func send(_ request: Request, fileDescriptor fd: Int32? = nil) throws(VSMMUClientError) -> UInt64 {
        try send(request, fileDescriptors: fd.map { [$0] } ?? [])
    }

    /// Encodes and sends `request` with `fds` in one SCM_RIGHTS message, without waiting. - Returns: the request id.
    @discardableResult
    public func send(_ request: Request, fileDescriptors fds: [Int32]) throws(VSMMUClientError) -> UInt64 {
        let id = nextRequestID
        nextRequestID &+= 1
        let bytes: [UInt8]
        do throws(ProtocolError) { bytes = try request.encode(requestID: id) } catch { throw .server(error) }
        try sendBytes(bytes, fileDescriptors: fds)
        return id
    }

    /// Blocks for the next reply frame and decodes it.
    /// - Throws: ``VSMMUClientError/connectionClosed`` at end of stream, `.badReply` for an undecodable frame.
    public func receive() throws(VSMMUClientError) -> (requestID: UInt64, response: Response) {
        while true {
            let frame: Frame?
            do throws(FrameError) { frame = try decoder.nextFrame() } catch { throw .badReply("\(error)") }
            if let frame {
                do throws(ProtocolError) { return (frame.header.requestID, try Response.decode(frame)) } catch {
                    throw .badReply("\(error)")
                }
            }
            let count = readBuffer.withUnsafeMutableBytes { recv(fileDescriptor, $0.baseAddress, $0.count, 0) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .transport(call: "recv", errno: errno)
            }
            if count == 0 { throw .connectionClosed }
            decoder.feed(readBuffer[0..<count])
        }
    }

    /// Sends `request` and waits for its reply; an ERROR reply throws.
    ///
    /// With a ``reconnect`` policy, a failed connection (end of stream, `ECONNRESET`, `EPIPE`) or a
    /// `SHUTTING_DOWN` answer makes the client reconnect, handshake and resume its vSMMUs, then send the
    /// same frame again — same `request_id`, same payload — so that a control request the daemon had
    /// already applied is answered from its journal instead of applied twice (PROTOCOL.md §5.13).
    public func call(_ request: Request, fileDescriptor fd: Int32? = nil) throws(VSMMUClientError) -> Response {
        try call(request, fileDescriptors: fd.map { [$0] } ?? [])
    }

    /// ``call(_:fileDescriptor:)`` with `fds` in one SCM_RIGHTS message (MAP_QUEUE's three).
    public func call(_ request: Request, fileDescriptors fds: [Int32]) throws(VSMMUClientError) -> Response {
        guard let policy = reconnect else {
            let id = try send(request, fileDescriptors: fds)
            return try awaitReply(to: request, id: id)
        }
        let id = nextRequestID
        nextRequestID &+= 1
        let bytes: [UInt8]
        do throws(ProtocolError) { bytes = try request.encode(requestID: id) } catch { throw .server(error) }
        var backoff = Reconnect.Backoff(policy)
        while true {
            do throws(VSMMUClientError) {
                try sendBytes(bytes, fileDescriptors: fds)
                return try awaitReply(to: request, id: id)
            } catch where error.isConnectionFailure || error.code == .shuttingDown {
                let lost = try recover(after: error, backoff: &backoff)
                // A DESTROY_VSMMU the dead daemon had applied: its vSMMU is gone, which is what was asked.
                if case .destroyVSMMU(let destroy) = request, lost.contains(destroy.vsmmu) { return .destroyVSMMU }
            }
        }
    }

    /// Reads the reply to request `id` and checks it answers `request`; an ERROR reply throws.
    func awaitReply(to request: Request, id: UInt64) throws(VSMMUClientError) -> Response {
        let (replyID, response) = try receive()
        guard replyID == id else { throw .badReply("reply to request \(replyID), expected \(id)") }
        if case .error(let error) = response { throw .server(error) }
        guard response.answers(request.type) else { throw .badReply("\(response.type.name) answers no \(request.type.name)") }
        return response
    }

    // MARK: Requests

    /// HELLO: the handshake. - Returns: the server's reply (also kept in ``serverHello``).
    @discardableResult
    public func hello(name: String = "vsmmu-client",
                      versions: ClosedRange<UInt16> = WireProtocol.supportedVersions) throws(VSMMUClientError) -> HelloReply {
        guard case .hello(let reply) = try call(.hello(Hello(versions: versions, processID: UInt32(bitPattern: getpid()),
                                                             clientName: name))) else { throw .badReply("HELLO") }
        serverHello = reply
        handshake = (name, versions)
        return reply
    }

    /// CREATE_VSMMU. On a version-3 connection it carries a fresh create key, so that when its reply is lost
    /// with a daemon that restarts, the request re-sent after reconnecting is answered with the vSMMU it
    /// created rather than making a second one (PROTOCOL.md §5.2). - Returns: the new vSMMU's id.
    public func createVSMMU(name: String = "") throws(VSMMUClientError) -> VSMMUID {
        let key = (serverHello?.version ?? 0) >= 3 ? CreateKey.random() : nil
        guard case .createVSMMU(let reply) = try call(.createVSMMU(CreateVSMMU(name: name, createKey: key))) else { throw .badReply("CREATE_VSMMU") }
        if let token = reply.resumeToken { resumeTokens[reply.vsmmu] = token }
        return reply.vsmmu
    }

    /// RESUME_VSMMU (version 3): takes over `vsmmu` after a daemon restart with its resume token (by
    /// default the one this client got from CREATE_VSMMU or another client handed over with
    /// ``adoptResumeToken(_:for:)``). `iommufd` hands the VMM's iommufd back (a daemon without systemd's
    /// fd store needs it for its iommufd viommus).
    @discardableResult
    public func resumeVSMMU(_ vsmmu: VSMMUID, token: ResumeToken? = nil,
                            iommufd: Int32? = nil) throws(VSMMUClientError) -> VSMMUResumed {
        guard let token = token ?? resumeTokens[vsmmu] else { throw .badReply("no resume token for vSMMU \(vsmmu.rawValue)") }
        let request = Request.resumeVSMMU(ResumeVSMMU(vsmmu: vsmmu, resumeToken: token, fileDescriptorAttached: iommufd != nil))
        guard case .resumeVSMMU(let reply) = try call(request, fileDescriptor: iommufd) else { throw .badReply("RESUME_VSMMU") }
        resumeTokens[vsmmu] = token
        return reply
    }

    /// Remembers `token` as `vsmmu`'s (a client taking over from a previous connection's client).
    public func adoptResumeToken(_ token: ResumeToken, for vsmmu: VSMMUID) { resumeTokens[vsmmu] = token }

    /// The iommufd to hand back with the RESUME_VSMMU of `vsmmu` when the client resumes it on its own after
    /// a reconnect (a daemon without systemd's fd store needs it for its iommufd viommus); `nil` for none.
    /// The client does not own the descriptor: keep it open while it is set.
    public func setResumeIOMMUFD(_ iommufd: Int32?, for vsmmu: VSMMUID) { resumeIOMMUFDs[vsmmu] = iommufd }

    /// The VFIO cdev of the device registered as `streamID` (SET_DEV_ID on `viommu` with `hostDeviceID`) to
    /// hand back after the RESUME_VSMMU of `vsmmu` when the client resumes it on its own: it repeats that
    /// SET_DEV_ID with the cdev (PROTOCOL.md §5.14), which a daemon that re-adopted the device without
    /// its cdev keeps and any other answers without a change. `nil` forgets it (UNSET_DEV_ID does too).
    /// The client does not own the descriptor: keep it open while it is set.
    public func setResumeVFIODevice(_ cdev: Int32?, vsmmu: VSMMUID, viommu: UInt32, hostDeviceID: UInt32, streamID: StreamID) {
        resumeVFIODevices[vsmmu, default: [:]][streamID] = cdev.map { ResumeVFIODevice(viommu: viommu, hostDeviceID: hostDeviceID, cdev: $0) }
    }

    /// DESTROY_VSMMU. The vSMMU's resume token is forgotten.
    public func destroyVSMMU(_ vsmmu: VSMMUID) throws(VSMMUClientError) {
        _ = try call(.destroyVSMMU(DestroyVSMMU(vsmmu: vsmmu)))
        sharedQueues.removeValue(forKey: vsmmu)?.queue?.dropped()
        eventQueues.removeValue(forKey: vsmmu)?.queue?.dropped()
        resumeTokens[vsmmu] = nil
        resumeIOMMUFDs[vsmmu] = nil
        resumeVFIODevices[vsmmu] = nil
    }

    /// ATTACH_VIOMMU, passing `iommufd` with SCM_RIGHTS when given (the iommufd backend needs it).
    public func attachViommu(vsmmu: VSMMUID, pSMMU: String, hostDeviceID: UInt32, nestParentHWPT: UInt32 = 0,
                             iommufd: Int32? = nil) throws(VSMMUClientError) -> ViommuAttached {
        let request = Request.attachViommu(AttachViommu(vsmmu: vsmmu, pSMMU: pSMMU, hostDeviceID: hostDeviceID,
                                                        nestParentHWPT: nestParentHWPT, fileDescriptorAttached: iommufd != nil))
        guard case .attachViommu(let reply) = try call(request, fileDescriptor: iommufd) else { throw .badReply("ATTACH_VIOMMU") }
        return reply
    }

    /// DETACH_VIOMMU.
    public func detachViommu(vsmmu: VSMMUID, viommu: UInt32) throws(VSMMUClientError) {
        _ = try call(.detachViommu(DetachViommu(vsmmu: vsmmu, viommu: viommu)))
    }

    /// SET_DEV_ID, passing `vfioDevice` — the device's VFIO cdev, bound to the iommufd given to ATTACH_VIOMMU —
    /// with SCM_RIGHTS when given (PROTOCOL.md §5.6). A viommu on an iommufd pSMMU needs it: the daemon
    /// attaches the device through it (without it: `BAD_FILE_DESCRIPTOR` detail 1); a simulated pSMMU
    /// closes it. It needs protocol version 2 (on a version-1 connection: `BAD_FILE_DESCRIPTOR` detail 2).
    ///
    /// The daemon receives its own copy of the descriptor: the caller keeps `vfioDevice` open (closing
    /// the last copy unbinds the device) and may close it whenever it likes.
    public func setDeviceID(vsmmu: VSMMUID, viommu: UInt32, hostDeviceID: UInt32, streamID: StreamID,
                            vfioDevice: Int32? = nil) throws(VSMMUClientError) {
        _ = try call(.setDeviceID(DeviceRegistration(vsmmu: vsmmu, viommu: viommu, hostDeviceID: hostDeviceID, streamID: streamID,
                                                     fileDescriptorAttached: vfioDevice != nil)),
                     fileDescriptor: vfioDevice)
    }

    /// UNSET_DEV_ID.
    public func unsetDeviceID(vsmmu: VSMMUID, viommu: UInt32, hostDeviceID: UInt32, streamID: StreamID) throws(VSMMUClientError) {
        _ = try call(.unsetDeviceID(DeviceRegistration(vsmmu: vsmmu, viommu: viommu, hostDeviceID: hostDeviceID, streamID: streamID)))
        resumeVFIODevices[vsmmu]?[streamID] = nil
    }

    /// LINK_STE. - Returns: the stage-1 HWPT now serving the vSID.
    @discardableResult
    public func linkSTE(vsmmu: VSMMUID, streamID: StreamID, ste: StreamTableEntry,
                        contextDescriptors: [ContextDescriptor] = []) throws(VSMMUClientError) -> HWPTLinked {
        guard case .linkSTE(let reply) = try call(.linkSTE(LinkSTE(vsmmu: vsmmu, streamID: streamID, ste: ste,
                                                                    contextDescriptors: contextDescriptors))) else {
            throw .badReply("LINK_STE")
        }
        return reply
    }

    /// UNLINK_STE.
    public func unlinkSTE(vsmmu: VSMMUID, streamID: StreamID) throws(VSMMUClientError) {
        _ = try call(.unlinkSTE(UnlinkSTE(vsmmu: vsmmu, streamID: streamID)))
    }

    /// UPDATE_CD.
    @discardableResult
    public func updateCD(vsmmu: VSMMUID, streamID: StreamID, substreamID: SubstreamID,
                         _ cd: ContextDescriptor) throws(VSMMUClientError) -> HWPTLinked {
        guard case .updateCD(let reply) = try call(.updateCD(UpdateCD(vsmmu: vsmmu, streamID: streamID, substreamID: substreamID,
                                                                       contextDescriptor: cd))) else {
            throw .badReply("UPDATE_CD")
        }
        return reply
    }

    /// GET_HW_INFO (protocol version 2): the ID registers to present to the guest for `vsmmu`, what every
    /// pSMMU behind it supports, and how many viommus they were computed over. Ask once the viommus are
    /// attached: before the first one it is refused with `UNKNOWN_VIOMMU` (value `0xFFFFFFFF`); on a
    /// version-1 connection with `UNKNOWN_MESSAGE_TYPE`.
    public func hardwareInfo(vsmmu: VSMMUID) throws(VSMMUClientError) -> HardwareInfo {
        guard case .getHWInfo(let reply) = try call(.getHWInfo(GetHardwareInfo(vsmmu: vsmmu))) else {
            throw .badReply("GET_HW_INFO")
        }
        return reply
    }

    /// INVALIDATE: returns when the batch's last CMD_SYNC completed (or at once without one).
    public func invalidate(vsmmu: VSMMUID, commands: [Command]) throws(VSMMUClientError) -> InvalidateReply {
        guard case .invalidate(let reply) = try call(.invalidate(Invalidate(vsmmu: vsmmu, commands: commands))) else {
            throw .badReply("INVALIDATE")
        }
        return reply
    }

    /// STATS of one vSMMU, or of the daemon (`nil`).
    public func stats(vsmmu: VSMMUID? = nil) throws(VSMMUClientError) -> StatsReply {
        guard case .stats(let reply) = try call(.stats(StatsRequest(vsmmu: vsmmu))) else { throw .badReply("STATS") }
        return reply
    }

    /// LIST: one page.
    public func list(_ kind: ListKind, vsmmu: VSMMUID? = nil, start: UInt32 = 0,
                     maximumEntries: UInt32 = 0) throws(VSMMUClientError) -> ListReply {
        guard case .list(let reply) = try call(.list(ListRequest(kind: kind, vsmmu: vsmmu, start: start,
                                                                  maximumEntries: maximumEntries))) else { throw .badReply("LIST") }
        return reply
    }

    /// HEALTH.
    public func health() throws(VSMMUClientError) -> HealthReply {
        guard case .health(let reply) = try call(.health) else { throw .badReply("HEALTH") }
        return reply
    }

    /// Half-closes the connection (`shutdown(SHUT_WR)`): the daemon sees the end of the stream.
    public func shutdownWrite() { shutdown(fileDescriptor, Int32(SHUT_WR)) }

    /// Swaps in a new connected socket (a reconnect): the old one is closed, the frame decoder reset.
    func replaceConnection(with fd: Int32) {
        close(fileDescriptor)
        fileDescriptor = fd
        decoder = FrameDecoder()
    }
}
