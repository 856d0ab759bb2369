import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Whether the executables must have been built beside the tests (CI): then a missing one fails the
/// tests instead of skipping them.
let requireBuiltExecutables = ProcessInfo.processInfo.environment["CI"] != nil

/// A built executable of the package beside the test bundle (`.build/<config>/NAME`), if it was built.
func builtExecutable(_ name: String) -> String? {
    guard let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else { return nil }
    var directory = URL(fileURLWithPath: executable).deletingLastPathComponent()
    if directory.lastPathComponent.hasSuffix(".xctest") { directory.deleteLastPathComponent() }
    let candidate = directory.appendingPathComponent(name).path
    return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
}

let daemonPath = builtExecutable("vsmmud")

private let pathCounter = Atomic<Int>(0)

/// A fresh path under /tmp unique to this process and call.
func uniquePath(_ label: String, suffix: String) -> String {
    "/tmp/vsmmud-sd-\(getpid())-\(pathCounter.add(1, ordering: .relaxed).newValue)-\(label)\(suffix)"
}

/// Writes `text` to a fresh file and returns its path.
func writeTemporaryFile(_ label: String, _ text: String) throws -> String {
    let path = uniquePath(label, suffix: ".toml")
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// A `vsmmud` process started with `posix_spawn`: its own environment, stderr captured in a file, and
/// optionally a listening socket handed over as fd 3 (socket activation).
final class SpawnedProcess {
    let pid: pid_t
    let stderrPath: String
    private(set) var exitStatus: Int32?

    /// Starts `executable` with `arguments`. When `activatedSocket` is given it becomes fd 3 and the child
    /// runs through `/bin/sh` so that `LISTEN_PID` can name the child's own pid (`$$` survives `exec`).
    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
         activatedSocket: Int32? = nil) throws {
        stderrPath = uniquePath("stderr", suffix: ".log")
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        var argv = [executable] + arguments
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("LISTEN_") && $0.key != "NOTIFY_SOCKET" && !$0.key.hasPrefix("WATCHDOG_") && $0.key != "JOURNAL_STREAM" }
        for (key, value) in environment { env[key] = value }
        if let socket = activatedSocket {
            posix_spawn_file_actions_adddup2(&actions, socket, 3)
            env["LISTEN_FDS"] = "1"
            argv = ["/bin/sh", "-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""] + argv
        }
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in cArgs + cEnv { free(p) } }
        // A child starts with the spawning thread's signal mask, and test-runner threads block signals:
        // give it an empty mask and default dispositions, as a service manager does.
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

    /// Whether the process has exited (reaps it if so).
    var hasExited: Bool {
        if exitStatus != nil { return true }
        var status: Int32 = 0
        guard waitpid(pid, &status, WNOHANG) == pid else { return false }
        exitStatus = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return true
    }

    /// What the process wrote to standard error so far.
    var standardError: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
}

/// An `AF_UNIX` datagram socket bound at a fresh path, standing in for systemd's `NOTIFY_SOCKET`.
final class NotifySocket {
    let path: String
    let fd: Int32
    private(set) var messages: [String] = []

    init() throws {
        path = uniquePath("notify", suffix: ".sock")
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0, bindUnix(fd, to: path) else { throw POSIXError(.EADDRINUSE) }
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// Collects datagrams until `condition` holds for the messages so far (each datagram is one message,
    /// its assignments separated by newlines), or `limit` passes. Returns whether the condition held.
    @discardableResult
    func waitFor(limit: Duration = .seconds(60), _ condition: ([String]) -> Bool) -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + limit
        while !condition(messages) {
            guard clock.now < deadline else { return false }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 100) > 0 else { continue }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { messages.append(String(decoding: buffer[0..<n], as: UTF8.self)) }
        }
        return true
    }

    /// Every assignment received so far (`READY=1`, `STATUS=…`), in order.
    var assignments: [String] { messages.flatMap { $0.split(separator: "\n").map(String.init) } }
}

/// A listening `AF_UNIX` stream socket bound at `path`, as systemd's `.socket` unit would create it.
func listeningSocket(at path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0, bindUnix(fd, to: path), listen(fd, 16) == 0 else { throw POSIXError(.EADDRINUSE) }
    return fd
}

/// Binds `fd` to the filesystem path `path` (shorter than `sun_path`).
private func bindUnix(_ fd: Int32, to path: String) -> Bool {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        let bytes = Array(path.utf8)
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    } == 0
}

/// Retries `body` until it returns a value (the daemon may still be starting), up to `limit`.
func eventually<T>(limit: Duration = .seconds(60), _ body: () -> T?) -> T? {
    let clock = ContinuousClock()
    let deadline = clock.now + limit
    while clock.now < deadline {
        if let value = body() { return value }
        usleep(10_000)
    }
    return nil
}
