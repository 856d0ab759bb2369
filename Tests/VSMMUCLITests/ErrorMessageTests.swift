import Testing
import VSMMUCLI
import VSMMUClient
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// What the operator reads, and the exit status, when the daemon cannot be used.
@Suite struct ErrorMessageTests {
    @Test func missingSocketIsUnavailableWithWhatToCheck() {
        var out = "", err = ""
        let path = uniqueSocketPath("missing")
        let runner = CommandRunner(socketPath: path, standardOutput: { out += $0 }, standardError: { err += $0 })
        #expect(runner.health() == 69)
        #expect(out.isEmpty)
        #expect(err.contains("cannot reach vsmmud") && err.contains(path) && err.contains("ENOENT"))
        #expect(err.contains("systemctl status vsmmud") && err.contains("--socket") && err.contains("VSMMUD_SOCKET"))
        #expect(err.split(separator: "\n").count == 1) // one paragraph
        for status in [runner.stats(), runner.list(.devices), runner.watch(iterations: 1)] { #expect(status == 69) }
    }

    @Test func socketWithoutListenerIsUnavailable() throws {
        // A socket file left behind by a daemon that is gone: connect is refused.
        let path = uniqueSocketPath("stale")
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd); unlink(path) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8))
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(bound == 0)
        var err = ""
        #expect(CommandRunner(socketPath: path, standardOutput: { _ in }, standardError: { err += $0 }).health() == 69)
        #expect(err.contains("connection refused") && err.contains("stale socket file") && err.contains("systemctl status vsmmud"))
    }

    @Test func regularFileAtTheSocketPathIsNotASocket() throws {
        let path = uniqueSocketPath("regular")
        let fd = open(path, O_CREAT | O_WRONLY, 0o600)
        try #require(fd >= 0)
        close(fd)
        defer { unlink(path) }
        var err = ""
        #expect(CommandRunner(socketPath: path, standardOutput: { _ in }, standardError: { err += $0 }).stats() == 69)
        #expect(err.contains("\(path) exists but is not a socket") && err.contains("ENOTSOCK"))
    }

    @Test func inaccessibleSocketIsAPermissionProblemWithWhatToCheck() {
        // Tests run as root, for whom a mode-000 socket is still accessible: check the mapping of EACCES.
        let error = CLIError(.transport(call: "connect /run/vsmmud/vsmmud.sock", errno: EACCES), socketPath: "/run/vsmmud/vsmmud.sock")
        #expect(error == .socketNotAccessible(socketPath: "/run/vsmmud/vsmmud.sock", errno: EACCES))
        #expect(error.exitStatus == 77)
        #expect(error.message.contains("permission denied") && error.message.contains("EACCES"))
        #expect(error.message.contains("ls -l /run/vsmmud/vsmmud.sock") && error.message.contains("group"))
        #expect(error.message.contains("[socket]"))
    }

    @Test func allowListRefusalIsReadable() {
        let refused = ProtocolError.permissionDenied(userID: 1000, groupID: 1000, type: .hello)
        let error = CLIError(.server(refused), socketPath: "/s")
        #expect(error == .permissionDenied(refused))
        #expect(error.exitStatus == 77)
        #expect(error.message.contains("PERMISSION_DENIED") && error.message.contains("uid 1000 (gid 1000)"))
        #expect(error.message.contains("allow-list") && error.message.contains("[access]"))
    }

    @Test func adminRefusalForOtherUsersIsAPermissionProblem() {
        let refused = ProtocolError.notOwner(nil, type: .stats)
        let error = CLIError(.server(refused), socketPath: "/s")
        #expect(error.exitStatus == 77)
        #expect(error.message.contains("only to root"))
        // NOT_OWNER about a vSMMU (not an admin request) is not a permission problem of the CLI.
        #expect(CLIError(.server(.notOwner(VSMMUID(3), type: .destroyVSMMU)), socketPath: "/s").exitStatus == 1)
    }

    @Test func otherFailuresExitOneWithTheServersWords() {
        let unknown = CLIError(.server(.unknownVSMMU(VSMMUID(7), type: .stats)), socketPath: "/s")
        #expect(unknown == .unknownVSMMU(VSMMUID(7)) && unknown.exitStatus == 1)
        let stopping = CLIError(.server(.shuttingDown(type: .health)), socketPath: "/s")
        #expect(stopping.exitStatus == 1 && stopping.message.contains("SHUTTING_DOWN"))
        #expect(CLIError(.connectionClosed, socketPath: "/s").exitStatus == 1)
        #expect(CLIError(.badReply("x"), socketPath: "/s").exitStatus == 1)
        #expect(CLIError(.transport(call: "recv", errno: ECONNRESET), socketPath: "/s") == .connectionClosed(socketPath: "/s"))
        let long = CLIError(.transport(call: "connect /x", errno: ENAMETOOLONG), socketPath: "/x")
        #expect(long.exitStatus == 64 && long.message.contains("too long"))
    }

    @Test func socketPathComesFromOptionThenEnvironmentThenDefault() {
        #expect(SocketPath.resolve(option: "/a", environment: ["VSMMUD_SOCKET": "/b"]) == "/a")
        #expect(SocketPath.resolve(option: nil, environment: ["VSMMUD_SOCKET": "/b"]) == "/b")
        #expect(SocketPath.resolve(option: nil, environment: ["VSMMUD_SOCKET": ""]) == "/run/vsmmud/vsmmud.sock")
        #expect(SocketPath.resolve(option: nil, environment: [:]) == "/run/vsmmud/vsmmud.sock")
    }
}
