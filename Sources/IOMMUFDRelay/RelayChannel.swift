#if canImport(Glibc)
import Glibc
#endif
import VSMMUSystem
import SystemPackage

/// The host↔guest channel of the real-kernel rig (`../shared/realkernel`, `./boot` serves the guest's
/// virtio-serial port `rig.0` on the unix socket `$RIG_RUN/rig.sock`), with the relay agent running at
/// its guest end.
///
/// ``connect(socketPath:agent:timeout:requestTimeout:)`` starts the agent the way the rig's README says
/// to load a program without rebuilding the initrd: probe the guest's shell with `echo` until it answers
/// (bytes sent while no guest process has the port open are dropped), have it announce itself and start
/// `head -c N` into a file and `exec` it, and only then send the N bytes (the shell reads ahead on the
/// port: bytes sent with the command line could be swallowed by it). The agent then speaks
/// ``RelayProtocol``.
///
/// Requests are serialised: one at a time, each answered before the next is sent, from any thread. A
/// channel failure (EOF, a timeout, an answer off the protocol) leaves the byte stream at an unknown
/// position, so the channel is then *broken*: that request and every later one throw, nothing crashes.
public final class RelayChannel: Sendable {
    /// A response: the status (`nil` for 0) and the payload.
    public struct Response: Sendable {
        public var status: Errno?
        public var payload: [UInt8]
    }

    /// The kernel identification `uname(2)` gives in the guest.
    public struct Uname: Hashable, Sendable, CustomStringConvertible {
        public var sysname: String
        public var nodename: String
        public var release: String
        public var version: String
        public var machine: String
        public var description: String { "\(sysname) \(release) \(version) \(machine)" }
    }

    /// The rig socket this channel is connected to.
    public let socketPath: String
    /// How long one request may take before the channel is declared broken.
    public let requestTimeout: Duration
    /// The agent's process id in the guest (from HELLO).
    public let agentPID: UInt32

    private let state: Locked<State>

    private struct State: ~Copyable {
        var stream: ByteStream
        var broken: RelayError?
    }

    private init(socketPath: String, requestTimeout: Duration, stream: consuming ByteStream, agentPID: UInt32) {
        self.socketPath = socketPath
        self.requestTimeout = requestTimeout
        self.agentPID = agentPID
        self.state = Locked(State(stream: stream, broken: nil))
    }

    deinit {
        _ = state.withLock { Glibc.close($0.stream.fd) }
    }

    // MARK: Starting the agent

    /// Connects to the rig's socket, uploads `agent` (the static arm64 binary of
    /// `scripts/realkernel/relay-agent.c`) and starts it in place of the connection's shell.
    ///
    /// - Parameters:
    ///   - timeout: for the whole start: connecting (the socket may not exist yet while QEMU starts), the
    ///     shell's first answer (about 2 s after QEMU starts) and the agent's banner.
    ///   - requestTimeout: for each later request.
    public static func connect(socketPath: String, agent: [UInt8], timeout: Duration = .seconds(60),
                               requestTimeout: Duration = .seconds(30)) throws(RelayError) -> RelayChannel {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var stream = try ByteStream(connectingTo: socketPath, deadline: deadline)
        do throws(RelayError) {
            let tag = String(UInt64.random(in: 0 ... UInt64.max), radix: 16)
            let ready = Array("__VSMMUD_READY_\(tag)__\n".utf8)
            // 1. Probe until the shell answers.
            var answered = false
            while !answered {
                guard clock.now < deadline else {
                    throw RelayError.guestDidNotAnswer(what: "the shell probe (echo) within \(timeout)", seen: stream.text)
                }
                try stream.send(Array("echo __VSMMUD_READY_\(tag)__\n".utf8), deadline: deadline, what: "the shell probe")
                answered = try stream.skip(through: ready, deadline: min(deadline, clock.now + .milliseconds(500)))
            }
            // 2. The upload command; it announces itself before reading.
            let go = Array("__VSMMUD_GO_\(tag)__\n".utf8)
            let path = RelayProtocol.guestAgentPath
            let command = "echo __VSMMUD_GO_\(tag)__; head -c \(agent.count) > \(path) && chmod +x \(path) && exec \(path) 2>/dev/null\n"
            try stream.send(Array(command.utf8), deadline: deadline, what: "the upload command")
            guard try stream.skip(through: go, deadline: deadline) else {
                throw RelayError.guestDidNotAnswer(what: "the upload command", seen: stream.text)
            }
            // 3. The binary, then its banner.
            try stream.send(agent, deadline: deadline, what: "the agent binary")
            guard try stream.skip(through: RelayProtocol.banner, deadline: deadline) else {
                throw RelayError.guestDidNotAnswer(what: "with the agent's banner (did \(path) start?)", seen: stream.text)
            }
            // 4. HELLO: the framing works both ways.
            let hello = try stream.exchange(op: RelayProtocol.Op.hello.rawValue, payload: [], deadline: clock.now + requestTimeout,
                                            what: "HELLO")
            var reader = ByteReader(hello.payload)
            guard hello.status == nil, let version = reader.u32(), let pid = reader.u32() else {
                throw RelayError.malformedResponse("HELLO answered status \(hello.status.map { "\($0)" } ?? "0") with \(hello.payload.count) bytes")
            }
            guard version == RelayProtocol.version else {
                throw RelayError.malformedResponse("the agent speaks version \(version), this host \(RelayProtocol.version)")
            }
            return RelayChannel(socketPath: socketPath, requestTimeout: requestTimeout, stream: stream, agentPID: pid)
        } catch {
            Glibc.close(stream.fd)
            throw error
        }
    }

    // MARK: Requests

    /// Sends one request and waits for its answer. `rawOp` may be any number: the agent answers an
    /// unknown one with `ENOSYS`.
    public func call(rawOp: UInt32, _ payload: [UInt8]) throws(RelayError) -> Response {
        let timeout = requestTimeout
        return try state.withLock { (state: inout State) throws(RelayError) -> Response in
            if let broken = state.broken { throw RelayError.channelBroken(underlying: broken.description) }
            let what = RelayProtocol.Op(rawValue: rawOp).map { "\($0)" } ?? "op \(rawOp)"
            do throws(RelayError) {
                return try state.stream.exchange(op: rawOp, payload: payload, deadline: ContinuousClock().now + timeout, what: what)
            } catch {
                state.broken = error
                throw error
            }
        }
    }

    /// Sends one request of a known op.
    public func call(_ op: RelayProtocol.Op, _ payload: [UInt8] = []) throws(RelayError) -> Response {
        try call(rawOp: op.rawValue, payload)
    }

    /// Sends raw bytes as they are, then reads one response: for checking that the agent answers a
    /// malformed frame (and survives it).
    public func callRaw(_ bytes: [UInt8]) throws(RelayError) -> Response {
        let timeout = requestTimeout
        return try state.withLock { (state: inout State) throws(RelayError) -> Response in
            if let broken = state.broken { throw RelayError.channelBroken(underlying: broken.description) }
            do throws(RelayError) {
                let deadline = ContinuousClock().now + timeout
                try state.stream.send(bytes, deadline: deadline, what: "a raw frame")
                return try state.stream.receiveResponse(deadline: deadline, what: "a raw frame")
            } catch {
                state.broken = error
                throw error
            }
        }
    }

    /// The failure that broke the channel, if one did.
    public var failure: RelayError? { state.withLock { $0.broken } }

    /// HELLO: the agent's protocol version and pid.
    public func hello() throws(RelayError) -> (version: UInt32, pid: UInt32) {
        let response = try call(.hello)
        var reader = ByteReader(response.payload)
        guard response.status == nil, let version = reader.u32(), let pid = reader.u32() else {
            throw RelayError.malformedResponse("HELLO: status \(String(describing: response.status)), \(response.payload.count) bytes")
        }
        return (version, pid)
    }

    /// `open(path, flags)` in the guest.
    public func open(_ path: String, flags: Int32 = O_RDWR | O_CLOEXEC) throws(RelayError) -> FileDescriptor {
        var payload = ByteWriter()
        payload.u32(UInt32(bitPattern: flags))
        payload.bytes(Array(path.utf8))
        return try descriptor(from: call(.open, payload.buffer), "open(\(path))")
    }

    /// `close(fd)` in the guest.
    public func close(_ fd: FileDescriptor) throws(RelayError) {
        var payload = ByteWriter()
        payload.i32(fd.rawValue)
        if let errno = try call(.close, payload.buffer).status { throw RelayError.guest("close(\(fd.rawValue))", errno) }
    }

    /// `dup(fd)` in the guest: a second descriptor of the same open file.
    public func dup(_ fd: FileDescriptor) throws(RelayError) -> FileDescriptor {
        var payload = ByteWriter()
        payload.i32(fd.rawValue)
        return try descriptor(from: call(.dup, payload.buffer), "dup(\(fd.rawValue))")
    }

    private func descriptor(from response: Response, _ what: String) throws(RelayError) -> FileDescriptor {
        if let errno = response.status { throw RelayError.guest(what, errno) }
        var reader = ByteReader(response.payload)
        guard let fd = reader.i32(), reader.remaining == 0 else {
            throw RelayError.malformedResponse("\(what): \(response.payload.count) bytes for a descriptor")
        }
        return FileDescriptor(rawValue: fd)
    }

    /// `ioctl(fd, request, argument)` in the guest, with `pointers` (fields of `argument` holding this
    /// process's addresses) carried across: each field's `inBytes` are read from the address it holds and
    /// sent, and its `outBytes` are written back there afterwards. `argument` is overwritten with the
    /// argument as the guest kernel left it, also when the ioctl failed.
    ///
    /// The addresses are trusted as a kernel trusts user pointers, except that a null one with bytes to
    /// carry is refused with `EFAULT`, and a request or answer longer than the agent's frame with
    /// `EMSGSIZE`, before anything is sent.
    /// - Returns: the ioctl's errno (`nil` on success) and its return value.
    public func ioctl(_ fd: FileDescriptor, request: UInt, argument: UnsafeMutableRawBufferPointer,
                      pointers: [RelayPointer] = []) throws(RelayError) -> (errno: Errno?, result: Int64) {
        let inTotal = pointers.reduce(0) { $0 + Int($1.inBytes) }, outTotal = pointers.reduce(0) { $0 + Int($1.outBytes) }
        guard 24 + 12 * pointers.count + argument.count + inTotal <= RelayProtocol.maximumFrame,
              16 + argument.count + outTotal <= RelayProtocol.maximumFrame else { return (.messageTooLong, -1) }
        var payload = ByteWriter(capacity: 20 + 12 * pointers.count + argument.count + inTotal)
        payload.i32(fd.rawValue)
        payload.u32(UInt32(pointers.count))
        payload.u64(UInt64(request))
        payload.u32(UInt32(argument.count))
        var addresses: [UInt] = []
        for pointer in pointers {
            guard Int(pointer.offset) + 8 <= argument.count else {
                throw RelayError.malformedResponse("pointer field at \(pointer.offset) outside a \(argument.count)-byte argument")
            }
            let address = UInt(argument.loadUnaligned(fromByteOffset: Int(pointer.offset), as: UInt64.self))
            if address == 0 && (pointer.inBytes > 0 || pointer.outBytes > 0) { return (.badAddress, -1) }
            addresses.append(address)
            payload.u32(pointer.offset)
            payload.u32(pointer.inBytes)
            payload.u32(pointer.outBytes)
        }
        payload.bytes(UnsafeRawBufferPointer(argument))
        for (pointer, address) in zip(pointers, addresses) where pointer.inBytes > 0 {
            guard let base = UnsafeRawPointer(bitPattern: address) else { continue }
            payload.bytes(UnsafeRawBufferPointer(start: base, count: Int(pointer.inBytes)))
        }
        let response = try call(.ioctl, payload.buffer)
        var reader = ByteReader(response.payload)
        // A request the agent could not even parse comes back without a payload.
        if response.payload.isEmpty, let errno = response.status {
            if errno.rawValue == EPROTO || errno.rawValue == EMSGSIZE {
                throw RelayError.malformedResponse("the agent refused the IOCTL request itself: \(errno)")
            }
            return (errno, -1)
        }
        guard let result = reader.u64(), let length = reader.u32(), Int(length) == argument.count,
              let after = reader.take(Int(length)) else {
            throw RelayError.malformedResponse("IOCTL 0x\(String(request, radix: 16)): \(response.payload.count) bytes")
        }
        var outputs: [ArraySlice<UInt8>] = []
        for pointer in pointers {
            guard let out = reader.take(Int(pointer.outBytes)) else {
                throw RelayError.malformedResponse("IOCTL 0x\(String(request, radix: 16)): short pointer output")
            }
            outputs.append(out)
        }
        guard reader.remaining == 0 else {
            throw RelayError.malformedResponse("IOCTL 0x\(String(request, radix: 16)): \(reader.remaining) bytes too many")
        }
        after.withUnsafeBytes { argument.copyMemory(from: $0) }
        for (index, pointer) in pointers.enumerated() {
            // The kernel never writes a pointer field; keep the caller's own value there.
            argument.storeBytes(of: UInt64(addresses[index]), toByteOffset: Int(pointer.offset), as: UInt64.self)
            guard pointer.outBytes > 0, let base = UnsafeMutableRawPointer(bitPattern: addresses[index]) else { continue }
            outputs[index].withUnsafeBytes { UnsafeMutableRawBufferPointer(start: base, count: Int(pointer.outBytes)).copyMemory(from: $0) }
        }
        return (response.status, Int64(bitPattern: result))
    }

    /// `read(fd, max)` in the guest, without blocking: `EAGAIN` when there is nothing to read now.
    public func read(_ fd: FileDescriptor, maximum: Int) throws(RelayError) -> Result<[UInt8], Errno> {
        var payload = ByteWriter()
        payload.i32(fd.rawValue)
        payload.u32(UInt32(clamping: maximum))
        let response = try call(.read, payload.buffer)
        if let errno = response.status { return .failure(errno) }
        guard response.payload.count <= maximum else {
            throw RelayError.malformedResponse("READ of at most \(maximum) returned \(response.payload.count) bytes")
        }
        return .success(response.payload)
    }

    /// `pwrite(fd, bytes, offset)` in the guest, once (at most 4096 bytes): on a VFIO device cdev, one
    /// access to a region of the device. - Returns: the count written, or the guest's errno.
    public func pwrite(_ fd: FileDescriptor, offset: UInt64, _ bytes: [UInt8]) throws(RelayError) -> Result<Int, Errno> {
        var payload = ByteWriter()
        payload.i32(fd.rawValue)
        payload.u64(offset)
        payload.buffer += bytes
        let response = try call(.pwrite, payload.buffer)
        if let errno = response.status { return .failure(errno) }
        var reader = ByteReader(response.payload)
        guard let count = reader.u32() else { throw RelayError.malformedResponse("PWRITE: \(response.payload.count) bytes") }
        return .success(Int(count))
    }

    /// `pread(fd, count, offset)` in the guest, once (at most 4096 bytes). - Returns: the bytes read, or
    /// the guest's errno.
    public func pread(_ fd: FileDescriptor, offset: UInt64, count: Int) throws(RelayError) -> Result<[UInt8], Errno> {
        var payload = ByteWriter()
        payload.i32(fd.rawValue)
        payload.u64(offset)
        payload.u32(UInt32(clamping: count))
        let response = try call(.pread, payload.buffer)
        if let errno = response.status { return .failure(errno) }
        guard response.payload.count <= count else {
            throw RelayError.malformedResponse("PREAD of at most \(count) returned \(response.payload.count) bytes")
        }
        return .success(response.payload)
    }

    /// Zero-filled anonymous memory in the agent (e.g. for `IOMMU_IOAS_MAP`'s `user_va`).
    /// - Returns: its guest virtual address.
    public func mmap(length: UInt64) throws(RelayError) -> UInt64 {
        var payload = ByteWriter()
        payload.u64(length)
        let response = try call(.mmap, payload.buffer)
        if let errno = response.status { throw RelayError.guest("mmap(\(length))", errno) }
        var reader = ByteReader(response.payload)
        guard let address = reader.u64() else { throw RelayError.malformedResponse("MMAP: \(response.payload.count) bytes") }
        return address
    }

    /// `munmap(address, length)` in the agent.
    public func munmap(address: UInt64, length: UInt64) throws(RelayError) {
        var payload = ByteWriter()
        payload.u64(address)
        payload.u64(length)
        if let errno = try call(.munmap, payload.buffer).status { throw RelayError.guest("munmap", errno) }
    }

    /// `uname(2)` in the guest.
    public func uname() throws(RelayError) -> Uname {
        let response = try call(.uname)
        if let errno = response.status { throw RelayError.guest("uname", errno) }
        let fields = response.payload.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        guard fields.count >= 5 else { throw RelayError.malformedResponse("UNAME: \(fields.count) fields") }
        return Uname(sysname: fields[0], nodename: fields[1], release: fields[2], version: fields[3], machine: fields[4])
    }

    /// Ends the agent (its guest descriptors close, which destroys every object of its iommufds) and
    /// the channel. Later requests throw.
    public func quit() throws(RelayError) {
        _ = try call(.quit)
        state.withLock { $0.broken = $0.broken ?? .channelClosed("QUIT sent") }
    }
}

/// The socket and what was received and not consumed yet.
private struct ByteStream: ~Copyable {
    let fd: Int32
    var buffer: [UInt8] = []

    init(connectingTo path: String, deadline: ContinuousClock.Instant) throws(RelayError) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { throw RelayError.connectFailed(path: path, errno: .fileNameTooLong) }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        var lastErrno = Errno.noSuchFileOrDirectory
        while true {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw RelayError.connectFailed(path: path, errno: Errno(rawValue: errno)) }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if connected == 0 {
                self.fd = fd
                return
            }
            lastErrno = Errno(rawValue: errno)
            Glibc.close(fd)
            // The socket appears when QEMU has started; until then ENOENT / ECONNREFUSED.
            guard ContinuousClock().now < deadline,
                  lastErrno == .noSuchFileOrDirectory || lastErrno == .connectionRefused else { break }
            usleep(100_000)
        }
        throw RelayError.connectFailed(path: path, errno: lastErrno)
    }

    /// What was received and not consumed, as text (for error messages).
    var text: String {
        String(decoding: buffer.suffix(400), as: UTF8.self).replacingNonPrintable()
    }

    func send(_ bytes: [UInt8], deadline: ContinuousClock.Instant, what: String) throws(RelayError) {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
            if n > 0 {
                sent += n
                continue
            }
            let e = errno
            if n < 0 && e == EINTR { continue }
            if n < 0 && (e == EAGAIN || e == EWOULDBLOCK) {
                guard try wait(for: Int16(POLLOUT), deadline: deadline) else {
                    throw RelayError.timedOut("sending \(what) (\(sent) of \(bytes.count) bytes sent)")
                }
                continue
            }
            throw RelayError.channelClosed("sending \(what): \(Errno(rawValue: e))")
        }
    }

    /// Waits until the socket is ready for `events`; `false` at the deadline.
    private func wait(for events: Int16, deadline: ContinuousClock.Instant) throws(RelayError) -> Bool {
        while true {
            let left = ContinuousClock().now.duration(to: deadline)
            guard left > .zero else { return false }
            let ms = Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            var pfd = pollfd(fd: fd, events: events, revents: 0)
            let ready = poll(&pfd, 1, ms)
            if ready < 0 {
                if errno == EINTR { continue }
                throw RelayError.channelClosed("poll: \(Errno(rawValue: errno))")
            }
            if ready > 0 { return true }
        }
    }

    /// Receives what arrives before the deadline (at least one read); `false` if nothing came in time.
    private mutating func fill(deadline: ContinuousClock.Instant, what: String) throws(RelayError) -> Bool {
        guard try wait(for: Int16(POLLIN), deadline: deadline) else { return false }
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 {
                buffer.append(contentsOf: chunk[..<n])
                return true
            }
            if n == 0 { throw RelayError.channelClosed("EOF while waiting for \(what)") }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { return true }
            throw RelayError.channelClosed("receiving \(what): \(Errno(rawValue: errno))")
        }
    }

    /// Consumes everything up to and including `marker`; `false` (consuming nothing) at the deadline.
    mutating func skip(through marker: [UInt8], deadline: ContinuousClock.Instant) throws(RelayError) -> Bool {
        var searched = 0
        while true {
            if let end = Self.end(of: marker, in: buffer, from: searched) {
                buffer.removeFirst(end)
                return true
            }
            searched = max(0, buffer.count - marker.count + 1)
            guard try fill(deadline: deadline, what: "\"\(String(decoding: marker, as: UTF8.self).replacingNonPrintable())\"") else {
                return false
            }
        }
    }

    private static func end(of marker: [UInt8], in bytes: [UInt8], from start: Int) -> Int? {
        guard !marker.isEmpty, bytes.count >= marker.count else { return nil }
        var i = start
        while i + marker.count <= bytes.count {
            if bytes[i] == marker[0] && bytes[i ..< i + marker.count].elementsEqual(marker) { return i + marker.count }
            i += 1
        }
        return nil
    }

    mutating func readExact(_ count: Int, deadline: ContinuousClock.Instant, what: String) throws(RelayError) -> [UInt8] {
        while buffer.count < count {
            guard try fill(deadline: deadline, what: what) else {
                throw RelayError.timedOut("no answer to \(what) (\(buffer.count) of \(count) bytes received)")
            }
        }
        let out = Array(buffer[..<count])
        buffer.removeFirst(count)
        return out
    }

    mutating func receiveResponse(deadline: ContinuousClock.Instant, what: String) throws(RelayError) -> RelayChannel.Response {
        var head = ByteReader(try readExact(8, deadline: deadline, what: what))
        guard let length = head.u32(), let status = head.i32() else {
            throw RelayError.malformedResponse("\(what): short header")
        }
        guard length >= 4, Int(length) - 4 <= RelayProtocol.maximumFrame, status >= 0 else {
            throw RelayError.malformedResponse("\(what): length \(length), status \(status)")
        }
        let payload = try readExact(Int(length) - 4, deadline: deadline, what: what)
        return RelayChannel.Response(status: status == 0 ? nil : Errno(rawValue: status), payload: payload)
    }

    mutating func exchange(op: UInt32, payload: [UInt8], deadline: ContinuousClock.Instant,
                           what: String) throws(RelayError) -> RelayChannel.Response {
        guard payload.count + 4 <= RelayProtocol.maximumFrame else {
            throw RelayError.malformedResponse("\(what): a \(payload.count)-byte request is longer than the agent takes")
        }
        try send(RelayProtocol.frame(op: op, payload: payload), deadline: deadline, what: what)
        return try receiveResponse(deadline: deadline, what: what)
    }
}

extension String {
    /// Control characters (but newlines) shown as `\xNN`, for error messages.
    fileprivate func replacingNonPrintable() -> String {
        var out = ""
        for scalar in unicodeScalars {
            if scalar == "\n" || (scalar.value >= 0x20 && scalar.value < 0x7F) {
                out.unicodeScalars.append(scalar)
            } else {
                out += "\\x" + String(scalar.value, radix: 16)
            }
        }
        return out
    }
}
