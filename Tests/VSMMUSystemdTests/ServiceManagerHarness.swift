import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What systemd does for a `Type=notify`, `NotifyAccess=main`, socket-activated service with
/// `FileDescriptorStoreMax=`, played in the test process (systemd is not PID 1 here): it creates the
/// listening socket (the socket unit), binds the `NOTIFY_SOCKET` datagram socket, starts the service's
/// process with the listener and the fd store in `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`, and reads
/// the notifications, honouring `FDSTORE=1` (with `FDNAME=`) and `FDSTOREREMOVE=1`.
///
/// It follows src/core/service.c of systemd 252: `service_collect_fds()` passes the socket's fd first,
/// named by the socket unit (`socket_fdname()`: `FileDescriptorName=`, else the unit name), then the
/// store's entries newest first (`service_add_fd_store()` prepends); an fd that refers to the same open
/// file as a stored one is dropped (`same_fd()`, which asks `kcmp(KCMP_FILE)`), and so is one past
/// `FileDescriptorStoreMax=`; an fd that shows `EPOLLHUP`/`EPOLLERR` leaves the store (`on_fd_store_io()`),
/// checked here before each start, unless it was stored with `FDPOLL=0`; `service_notify_message()` takes
/// the first `FDNAME=`, lets `FDSTOREREMOVE=1` win over `FDSTORE=1`, stores fds whose `FDNAME=` fails
/// `fdname_is_valid()` as "stored" and ignores a removal without a valid name; `service_remove_fd_store()`
/// closes every fd of a name; with `NotifyAccess=main`, messages from other processes are ignored and
/// their fds closed. The store outlives the process across a restart (`unit_may_gc()` keeps it while a
/// job is queued). The documented side of the same (sd_notify(3), sd_listen_fds(3), systemd.service(5)):
/// fds stored with `FDSTORE=1` come back "after the socket fds" in `LISTEN_FDS`, named by `FDNAME=`
/// (default "stored"), duplicates removed, `EPOLLHUP`/`EPOLLERR` drop an fd unless `FDPOLL=0`, and the
/// store is flushed when the service stops (`FileDescriptorStorePreserve=`, systemd 254, changes that).
final class ServiceManagerHarness {
    /// The socket unit's name, which systemd gives its fd in `LISTEN_FDNAMES`.
    let socketUnitName: String
    let socketPath: String
    /// The socket unit's listening socket (kept across the service's restarts, as systemd does).
    let listener: Int32
    let notifyPath: String
    let notifyFD: Int32
    /// `FileDescriptorStoreMax=`.
    let storeMaximum: Int
    /// The fd store, in systemd's order (newest first).
    private(set) var store: [(name: String, fd: Int32, polled: Bool)] = []
    /// Every message read from the main process, its assignments split by line.
    private(set) var messages: [[String]] = []
    /// Messages dropped: not from the main process, or fds sent without `FDSTORE=1`.
    private(set) var ignored: [String] = []
    /// The main process's pid.
    private(set) var mainPID: pid_t?
    /// `NotifyAccess=all` instead of `main`: messages from any process count.
    var acceptsEveryProcess = false

    init(socketUnitName: String = "vsmmud.socket", storeMaximum: Int = 4096, notifyPath: String? = nil) throws {
        self.socketUnitName = socketUnitName
        self.storeMaximum = storeMaximum
        socketPath = uniquePath("service", suffix: ".sock")
        listener = try listeningSocket(at: socketPath)
        self.notifyPath = notifyPath ?? uniquePath("notify", suffix: ".sock")
        notifyFD = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard notifyFD >= 0 else { throw POSIXError(.EMFILE) }
        var on: Int32 = 1
        // SO_PASSCRED (16): the kernel attaches the sender's pid, which NotifyAccess=main checks.
        setsockopt(notifyFD, SOL_SOCKET, 16, &on, socklen_t(MemoryLayout<Int32>.size))
        guard bindUnixPath(notifyFD, self.notifyPath) else { throw POSIXError(.EADDRINUSE) }
    }

    deinit {
        for entry in store { close(entry.fd) }
        close(notifyFD)
        close(listener)
        unlink(notifyPath)
        unlink(socketPath)
    }

    /// The fd names the next process gets in `LISTEN_FDNAMES`, in order.
    var passedNames: [String] { [socketUnitName] + store.map(\.name) }

    /// Every assignment read so far, in order.
    var assignments: [String] { messages.flatMap { $0 } }

    /// Starts the service's process: `executable` with the listener as fd 3 and the store from fd 4 on,
    /// `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID` (its own pid: the shell's `$$` survives `exec`) and
    /// `NOTIFY_SOCKET`. Entries that hung up leave the store first.
    func start(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> ServiceProcess {
        dropHungUp()
        let passed = [listener] + store.map(\.fd)
        var env = environment
        env["NOTIFY_SOCKET"] = notifyPath
        env["LISTEN_FDS"] = "\(passed.count)"
        env["LISTEN_FDNAMES"] = passedNames.joined(separator: ":")
        let process = try ServiceProcess(["/bin/sh", "-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", executable] + arguments,
                                         environment: env, passing: passed)
        mainPID = process.pid
        messages = []
        return process
    }

    /// Reads notifications until `condition` holds for the main process's assignments so far, or `limit`
    /// passes. Returns whether it held.
    @discardableResult
    func receive(limit: Duration = .seconds(60), until condition: ([String]) -> Bool) -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + limit
        while !condition(assignments) {
            guard clock.now < deadline else { return false }
            var poller = pollfd(fd: notifyFD, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 100) > 0 else { continue }
            guard let message = NotifyMessage.receive(notifyFD) else { continue }
            handle(message)
        }
        return true
    }

    /// What systemd's `service_notify_message()` does with one message.
    private func handle(_ message: NotifyMessage) {
        let lines = message.text.split(separator: "\n").map(String.init)
        guard acceptsEveryProcess || (mainPID != nil && message.senderPID == mainPID) else {
            ignored.append("from pid \(message.senderPID.map { "\($0)" } ?? "?"): \(message.text)")
            for fd in message.fds { close(fd) }
            return
        }
        messages.append(lines)
        // The first FDNAME= counts (strv_find_startswith); FDSTOREREMOVE=1 wins over FDSTORE=1 (else-if).
        let name = lines.first { $0.hasPrefix("FDNAME=") }.map { String($0.dropFirst("FDNAME=".count)) }
        if lines.contains("FDSTOREREMOVE=1") {
            if let name, Self.fdnameIsValid(name) {
                for entry in store where entry.name == name { close(entry.fd) }
                store.removeAll { $0.name == name }
            } else {
                ignored.append("FDSTOREREMOVE=1 without a valid FDNAME=: \(message.text)")
            }
            for fd in message.fds { close(fd) }
            return
        }
        guard lines.contains("FDSTORE=1") else {
            if !message.fds.isEmpty { ignored.append("fds without FDSTORE=1: \(message.text)") }
            for fd in message.fds { close(fd) }
            return
        }
        // An invalid FDNAME= is ignored (logged): the fds are stored under "stored".
        let storedName = name.flatMap { Self.fdnameIsValid($0) ? $0 : nil } ?? "stored"
        let polled = !lines.contains("FDPOLL=0")
        for fd in message.fds {
            if store.contains(where: { Self.sameOpenFile($0.fd, fd) }) || store.count >= storeMaximum {
                close(fd)
                continue
            }
            store.insert((storedName, fd, polled), at: 0)
        }
    }

    /// systemd's `fdname_is_valid()` (src/basic/fd-util.c), written out again so that the harness does not
    /// trust the code it checks: ASCII from ' ' to '~' except ':', shorter than 256; empty is valid.
    static func fdnameIsValid(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        return bytes.count < 256 && bytes.allSatisfy { $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }
    }

    /// Removes (and closes) the stored fds that show `POLLHUP` or `POLLERR`, but not those stored with
    /// `FDPOLL=0`.
    func dropHungUp() {
        store.removeAll { entry in
            guard entry.polled else { return false }
            var poller = pollfd(fd: entry.fd, events: 0, revents: 0)
            guard poll(&poller, 1, 0) > 0, poller.revents & Int16(POLLHUP | POLLERR) != 0 else { return false }
            close(entry.fd)
            return true
        }
    }

    /// Whether `a` and `b` are the same open file description (`kcmp(KCMP_FILE)`, which Glibc does not
    /// wrap): the file status flags belong to the description, so a change made through `a` shows
    /// through `b` exactly when they are one.
    static func sameOpenFile(_ a: Int32, _ b: Int32) -> Bool {
        if a == b { return true }
        var sa = stat(), sb = stat()
        guard fstat(a, &sa) == 0, fstat(b, &sb) == 0, sa.st_dev == sb.st_dev, sa.st_ino == sb.st_ino else { return false }
        let flagsA = fcntl(a, F_GETFL)
        let flagsB = fcntl(b, F_GETFL)
        guard flagsA >= 0, flagsB >= 0 else { return false }
        _ = fcntl(a, F_SETFL, flagsA ^ O_NONBLOCK)
        let seen = fcntl(b, F_GETFL)
        _ = fcntl(a, F_SETFL, flagsA)
        return (seen & O_NONBLOCK) != (flagsB & O_NONBLOCK)
    }
}

/// One datagram read from the notify socket: its text, the sender's pid (`SCM_CREDENTIALS`) and the fds
/// it carried (`SCM_RIGHTS`, received close-on-exec).
struct NotifyMessage {
    var text: String
    var senderPID: pid_t?
    var fds: [Int32]

    /// Reads one datagram from `fd` (which has `SO_PASSCRED`), or `nil`. The control messages are parsed
    /// by hand: Glibc imports neither the `CMSG_*` macros nor `struct ucred`.
    static func receive(_ fd: Int32) -> NotifyMessage? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        // 8-byte aligned room for credentials and up to 64 fds.
        var control = [UInt64](repeating: 0, count: 64)
        let controlBytes = control.count * MemoryLayout<UInt64>.size
        let received: Int = buffer.withUnsafeMutableBytes { data in
            control.withUnsafeMutableBytes { controlRaw in
                var vector = iovec(iov_base: data.baseAddress, iov_len: data.count)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var header = msghdr()
                    header.msg_iov = vectorPointer
                    header.msg_iovlen = 1
                    header.msg_control = controlRaw.baseAddress
                    header.msg_controllen = controlBytes
                    // MSG_CMSG_CLOEXEC (0x40000000): the fds must not leak into processes spawned meanwhile.
                    return recvmsg(fd, &header, 0x4000_0000 | Int32(MSG_DONTWAIT))
                }
            }
        }
        guard received >= 0 else { return nil }
        var message = NotifyMessage(text: String(decoding: buffer[0..<received], as: UTF8.self), senderPID: nil, fds: [])
        control.withUnsafeBytes { raw in
            // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } then data, each header
            // aligned to 8 bytes (CMSG_ALIGN on 64-bit Linux).
            var offset = 0
            let headerSize = 16
            while offset + headerSize <= controlBytes {
                let length = Int(raw.load(fromByteOffset: offset, as: UInt64.self))
                guard length >= headerSize, offset + length <= controlBytes else { break }
                let level = raw.load(fromByteOffset: offset + 8, as: Int32.self)
                let type = raw.load(fromByteOffset: offset + 12, as: Int32.self)
                let data = offset + headerSize
                if level == SOL_SOCKET, type == Int32(SCM_RIGHTS) {
                    for k in 0..<((length - headerSize) / 4) {
                        message.fds.append(raw.load(fromByteOffset: data + 4 * k, as: Int32.self))
                    }
                } else if level == SOL_SOCKET, type == 2 /* SCM_CREDENTIALS: pid, uid, gid */ {
                    message.senderPID = raw.load(fromByteOffset: data, as: Int32.self)
                }
                offset += (length + 7) & ~7
            }
        }
        return message
    }
}

/// A process started with `posix_spawn` the way systemd starts a service: the given fds from fd 3 on
/// (dup2), its own environment, stdout and stderr captured in files, an empty signal mask.
final class ServiceProcess {
    let pid: pid_t
    let stdoutPath: String
    let stderrPath: String
    private(set) var exitStatus: Int32?

    init(_ argv: [String], environment: [String: String], passing fds: [Int32]) throws {
        stdoutPath = uniquePath("stdout", suffix: ".log")
        stderrPath = uniquePath("stderr", suffix: ".log")
        // Move the sources above the targets first, so that no dup2 overwrites a source not yet copied.
        let base = Int32(3 + fds.count)
        let sources = fds.map { fcntl($0, F_DUPFD_CLOEXEC, base) }
        defer { for fd in sources where fd >= 0 { close(fd) } }
        guard sources.allSatisfy({ $0 >= 0 }) else { throw POSIXError(.EMFILE) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        for (index, source) in sources.enumerated() {
            posix_spawn_file_actions_adddup2(&actions, source, 3 + Int32(index))
        }
        var env = ProcessInfo.processInfo.environment.filter {
            !$0.key.hasPrefix("LISTEN_") && $0.key != "NOTIFY_SOCKET" && !$0.key.hasPrefix("WATCHDOG_") && $0.key != "JOURNAL_STREAM"
        }
        for (key, value) in environment { env[key] = value }
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in cArgs + cEnv { free(p) } }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGHUP, SIGINT, SIGTERM, SIGPIPE] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var child = pid_t()
        let rc = posix_spawn(&child, argv[0], &actions, &attributes, cArgs, cEnv)
        guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EINVAL) }
        pid = child
    }

    deinit {
        if exitStatus == nil {
            kill(pid, SIGKILL)
            _ = waitForExit()
        }
        unlink(stdoutPath)
        unlink(stderrPath)
    }

    func signal(_ signal: Int32) { kill(pid, signal) }

    /// Waits for the process to exit; its exit status, or 128 + signal when killed by one.
    @discardableResult
    func waitForExit() -> Int32 {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        exitStatus = code
        return code
    }

    var standardOutput: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    var standardError: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
}

/// Binds `fd` to the filesystem path `path`.
func bindUnixPath(_ fd: Int32, _ path: String) -> Bool {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    } == 0
}
