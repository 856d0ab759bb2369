import Foundation
import SMMUv3
import Testing
import VSMMUTestSupport
import VSMMUClient
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// `vmm-sim` (the C client, reconnect policy on by default) replaying the real Linux guest stream against the
/// real `vsmmud` with a state directory, which is stopped mid-replay — SIGKILL or SIGTERM — and started again
/// on the same socket and journal. The client reconnects, resumes its vSMMU (RESUME_VSMMU, PROTOCOL.md §5.13)
/// and re-sends the batch that was in flight.
///
/// What is checked, and why it can fail: vmm-sim counts a batch's commands and syncs only when the daemon
/// answered it, and stops at the first refused or lost request. So "27843 commands, every CMD_SYNC of the
/// trace completed, 0 errors" after the restart says every batch of the trace was answered exactly once
/// (a lost batch fails the run or lowers the totals, a batch counted twice raises them), with no CERROR —
/// which it would be if the vSMMU had not been resumed with its devices and vSTEs (UNKNOWN_VSMMU,
/// UNKNOWN_STREAM_ID). "1 reconnects" says the restart really came mid-replay.
@Suite struct ClientReconnectTests {
    static var enabled: Bool { CClientTests.vmmSimPath != nil || CClientTests.requireBuiltExecutables }

    static let trace = TraceReplayTests.sharedDirectory().appendingPathComponent("traces")

    /// Starts `vmm-sim replay` of the strict Linux stream on `socket`, output to a pipe.
    func startReplay(socket: String, extra: [String] = []) throws -> (ChildProcess, Pipe) {
        let process = ChildProcess()
        process.executableURL = URL(fileURLWithPath: try #require(CClientTests.vmmSimPath))
        process.arguments = ["--socket", socket] + extra + ["replay", Self.trace.appendingPathComponent("linux-strict-cmdq.bin").path,
                                                           Self.trace.appendingPathComponent("linux-strict-ste-cd.csv").path]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        return (process, pipe)
    }

    /// Waits (polling the daemon's STATS, no sleeping beyond 0.2 ms) until the daemon received `commands`
    /// guest commands, or `replay` ended. - Returns: whether the replay is still running.
    func waitUntilMidReplay(socket: String, commands: UInt64, replay: ChildProcess) throws -> Bool {
        let admin = try VSMMUClient(socketPath: socket)
        try admin.hello(name: "admin")
        for _ in 0..<2_000_000 {
            guard replay.isRunning else { return false }
            // Daemon-wide STATS has no command counters: vmm-sim's vSMMU's.
            if case .vsmmus(let vsmmus)? = try? admin.list(.vsmmus).entries, let vsmmu = vsmmus.first?.vsmmu,
               let received = try? admin.stats(vsmmu: vsmmu).value(.commandsReceived), received >= commands {
                return replay.isRunning
            }
            usleep(200)
        }
        return replay.isRunning
    }

    /// Stops the daemon with `signal` mid-replay, starts it again, and returns vmm-sim's status and output.
    func replayAcrossARestart(signal: Int32, label: String, vmmSimArguments: [String] = []) throws -> (status: Int32, output: String) {
        let socket = uniqueSocketPath(label)
        let directory = temporaryStateDirectory(label)
        defer { removeStateDirectory(directory) }
        let restart = KillNineRestartTests()
        let first = try restart.startDaemon(socket: socket, stateDirectory: directory)
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
        let (replay, pipe) = try startReplay(socket: socket, extra: vmmSimArguments)
        defer { if replay.isRunning { kill(replay.processIdentifier, SIGKILL) } }
        // The strict stream is 27843 commands: stop the daemon after about a tenth of them.
        let midReplay = try waitUntilMidReplay(socket: socket, commands: 3000, replay: replay)
        try #require(midReplay, "the replay ended before the daemon was stopped")
        kill(first.processIdentifier, signal)
        first.waitUntilExit()
        if signal == SIGKILL { #expect(first.terminationReason == .uncaughtSignal) }
        else { #expect(first.terminationReason == .exit && first.terminationStatus == 0) }
        unlink(socket)
        let second = try restart.startDaemon(socket: socket, stateDirectory: directory)
        defer { if second.isRunning { kill(second.processIdentifier, SIGKILL) } }
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        replay.waitUntilExit()
        kill(second.processIdentifier, SIGTERM)
        second.waitUntilExit()
        return (replay.terminationStatus, output)
    }

    static func syncsInStrictTrace() throws -> Int {
        try TraceReplayTests.commands("linux-strict-cmdq.bin").filter { $0.opcode == .sync }.count
    }

    @Test(.enabled(if: enabled, "vmm-sim and vsmmud were not built beside the tests"),
          arguments: [SIGKILL, SIGTERM])
    func vmmSimReplayFinishesWithZeroErrorsAcrossADaemonRestartMidReplay(signal: Int32) throws {
        let result = try replayAcrossARestart(signal: signal, label: signal == SIGKILL ? "simkill" : "simterm")
        let syncs = try Self.syncsInStrictTrace()
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("vmm-sim replay: 27843 commands in "), "\(result.output)")
        #expect(result.output.contains(" \(syncs) syncs completed, 0 errors;"), "\(result.output)")
        #expect(result.output.contains("; 1 reconnects, 0 vSMMUs lost"), "\(result.output)")
    }

    @Test(.enabled(if: enabled, "vmm-sim and vsmmud were not built beside the tests"))
    func vmmSimWithoutReconnectStopsWithAnErrorWhenTheDaemonIsKilledMidReplay() throws {
        let result = try replayAcrossARestart(signal: SIGKILL, label: "simnore", vmmSimArguments: ["--no-reconnect"])
        #expect(result.status == 1, "\(result.output)")
        #expect(result.output.contains("vmm-sim: INVALIDATE: "), "\(result.output)")
        #expect(!result.output.contains("vmm-sim replay: 27843 commands"), "\(result.output)")
    }
}

/// A Unix-socket relay between clients and a daemon that can swallow the daemon's replies: the test's way to
/// lose the reply to a request the daemon applied and journaled. Each accepted connection gets its own
/// connection to `upstream`; when either side ends, both are closed.
final class ReplyDroppingRelay: @unchecked Sendable {
    let path: String
    let upstream: String
    private let listener: Int32
    private let lock = NSLock()
    private var _dropReplies = false
    private var _closed = false
    /// While set, bytes from the daemon are read and discarded instead of forwarded.
    var dropReplies: Bool {
        get { lock.lock(); defer { lock.unlock() }; return _dropReplies }
        set { lock.lock(); _dropReplies = newValue; lock.unlock() }
    }

    init(path: String, upstream: String) throws {
        self.path = path
        self.upstream = upstream
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = Self.address(path)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(listener >= 0 && rc == 0 && listen(listener, 16) == 0)
        Thread { [self] in acceptLoop() }.start()
    }

    static func address(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    /// Accepts until ``close()`` shuts the listener down (`accept` then fails with `EINVAL`), and closes
    /// it only then: closed under a loop between two `accept`s, its number could be another test's
    /// listening socket by the next one.
    private func acceptLoop() {
        defer { Glibc.close(listener) }
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            let server = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = Self.address(upstream)
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard server >= 0, rc == 0 else {
                // No daemon: the client sees its connection end at once, as it would a dying daemon.
                Glibc.close(server)
                Glibc.close(client)
                continue
            }
            let pair = SocketPair(client: client, server: server)
            Thread { [self] in pump(from: client, to: server, pair: pair, drop: { false }) }.start()
            Thread { [self] in pump(from: server, to: client, pair: pair, drop: { self.dropReplies }) }.start()
        }
    }

    /// Both ends of one relayed connection. Ending it only shuts the sockets down, which wakes both
    /// pumps; the descriptors are closed by the last pump to finish. A pump that closed them while the
    /// other was between two `recv`s would leave that one reading a number the next `socket` or `accept`
    /// of the process reuses: it would take a frame of another connection whole (64 KiB buffer), which
    /// that connection's peer then waits for forever: the intermittent hang of `VSMMUDaemonTests`, a
    /// request or reply gone whole in whichever suite ran beside this one, fits that exactly.
    final class SocketPair: @unchecked Sendable {
        let client: Int32, server: Int32
        private let lock = NSLock()
        private var shut = false
        private var pumpsRunning = 2
        init(client: Int32, server: Int32) { self.client = client; self.server = server }
        /// Ends the connection: both sockets shut down (once).
        func end() {
            lock.lock(); defer { lock.unlock() }
            guard !shut else { return }
            shut = true
            shutdown(client, Int32(SHUT_RDWR)); shutdown(server, Int32(SHUT_RDWR))
        }
        /// A pump returned: ends the connection; the last one closes both descriptors.
        func pumpFinished() {
            end()
            lock.lock(); defer { lock.unlock() }
            pumpsRunning -= 1
            if pumpsRunning == 0 { Glibc.close(client); Glibc.close(server) }
        }
    }

    private func pump(from source: Int32, to destination: Int32, pair: SocketPair, drop: () -> Bool) {
        defer { pair.pumpFinished() }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(source, $0.baseAddress, $0.count, 0) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            if drop() { continue }
            var offset = 0
            while offset < count {
                let sent = buffer.withUnsafeBytes { send(destination, $0.baseAddress! + offset, count - offset, Int32(MSG_NOSIGNAL)) }
                if sent < 0 && errno == EINTR { continue }
                guard sent > 0 else { return }
                offset += sent
            }
        }
    }

    func close() {
        lock.lock(); defer { lock.unlock() }
        guard !_closed else { return }
        _closed = true
        shutdown(listener, Int32(SHUT_RDWR)) // the accept loop closes it
        unlink(path)
    }
}

/// The Swift client's reconnect policy against the real daemon.
@Suite struct SwiftClientReconnectTests {
    static var enabled: Bool { KillNineRestartTests.enabled }

    /// SET_DEV_ID applied and journaled by a daemon that is then killed before its reply reaches the
    /// client: the client reconnects, resumes and re-sends the request with its original request id, and the
    /// new daemon answers it from its journal (`replayedReply`) — the call succeeds. Had the client re-sent
    /// it under a new id, the restored registration would refuse it (`ALREADY_EXISTS`, StreamID).
    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func aControlRequestWhoseReplyDiedWithTheDaemonIsAnsweredFromTheJournalNotAppliedTwice() throws {
        let rig = try LostReplyRig("replay")
        let client = rig.client
        let vsmmu = try client.createVSMMU(name: "replay")
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 0)
        try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: 0, streamID: 0x10)

        let outcome = try rig.callWithItsReplyLost({ client throws(VSMMUClientError) in
            try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: 1, streamID: 0x11)
            return "ok"
        }, applied: { admin throws in
            // The daemon applied (and journaled: before its reply) the second SET_DEV_ID.
            eventually(attempts: 30_000) { (try? admin.stats(vsmmu: vsmmu).value(.devices)) == 2 }
            let devices = try admin.stats(vsmmu: vsmmu).value(.devices)
            #expect(devices == 2)
        })
        #expect(outcome == "ok")
        #expect(client.reconnectCount == 1)
        #expect(client.lostVSMMUs.isEmpty)
        // Both registrations are there, once, and the client goes on on its resumed vSMMU.
        let stats = try client.stats(vsmmu: vsmmu)
        #expect(stats.value(.devices) == 2)
        try client.linkSTE(vsmmu: vsmmu, streamID: 0x11, ste: s1STE(), contextDescriptors: [.valid(asid: 7)])
        let reply = try client.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 7), .sync()])
        #expect(reply.failure == nil && reply.syncsCompleted == 1)
        // An ERROR answer is not retried: a third SET_DEV_ID of StreamID 0x11 is refused at once.
        #expect(refusal { try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: 2, streamID: 0x11) }?.code == .alreadyExists)
        #expect(client.reconnectCount == 1)
    }

    /// CREATE_VSMMU applied and journaled by a daemon that is then killed before its reply reaches the
    /// client: the client reconnects and re-sends it with its create key and original request id, and the
    /// new daemon answers it with the vSMMU it created and that vSMMU's token (`replayedCreation`), owned by
    /// the re-sending connection. Without the key the re-sent request made a second vSMMU: HEALTH counts one.
    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func aCreateWhoseReplyDiedWithTheDaemonIsAnsweredWithTheVSMMUItMadeNotASecondOne() throws {
        let rig = try LostReplyRig("createk")
        let client = rig.client
        var before: [VSMMUID] = []
        let outcome = try rig.callWithItsReplyLost({ client throws(VSMMUClientError) in
            "ok \(try client.createVSMMU(name: "createkey").rawValue)"
        }, applied: { admin throws in
            // The daemon applied (and journaled: before its reply) the CREATE_VSMMU.
            eventually(attempts: 30_000) { (try? admin.health().vsmmuCount) == 1 }
            before = try listedVSMMUs(admin)
            #expect(before.count == 1)
        })
        let answer = try #require(outcome)
        #expect(answer.hasPrefix("ok "), "\(answer)")
        #expect(client.reconnectCount == 1)
        let vsmmu = VSMMUID(try #require(UInt32(answer.dropFirst(3))))
        #expect(before == [vsmmu])
        // One vSMMU, the one the first daemon made, owned by the client (it serves its requests).
        let admin2 = try VSMMUClient(socketPath: rig.daemonSocket)
        try admin2.hello(name: "admin2")
        #expect(try admin2.health().vsmmuCount == 1)
        #expect(try listedVSMMUs(admin2) == [vsmmu])
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 0)
        // The token the re-sent reply carried is the vSMMU's: a later restart resumes it (RESUME_VSMMU).
        try rig.killAndRestart()
        #expect(try client.stats(vsmmu: vsmmu).value(.viommus) == 1)
        #expect(client.reconnectCount == 2 && client.lostVSMMUs.isEmpty)
    }

    /// The same create key on a second CREATE_VSMMU (another request id) is refused with ALREADY_EXISTS
    /// (`VSMMU_CONFLICT_CREATE_KEY`), and a key on a version-2 connection with BAD_FIELD at offset 0; a key
    /// never seen creates as usual.
    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func aCreateKeyIsUsedOnceAndNeedsVersionThree() throws {
        let daemonSocket = uniqueSocketPath("createku")
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let daemon = try KillNineRestartTests().startDaemon(socket: daemonSocket, stateDirectory: directory)
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        let client = try VSMMUClient(socketPath: daemonSocket)
        try client.hello(name: "keys")
        let key = CreateKey.random()
        guard case .createVSMMU(let made) = try client.call(.createVSMMU(CreateVSMMU(name: "a", createKey: key))) else {
            Issue.record("CREATE_VSMMU with a fresh key was not answered with a vSMMU")
            return
        }
        #expect(made.resumeToken != nil)
        let again = refusal { _ = try client.call(.createVSMMU(CreateVSMMU(name: "a", createKey: key))) }
        #expect(again?.code == .alreadyExists && again?.detail == ConflictKind.createKey.rawValue, "\(String(describing: again))")
        #expect(try client.health().vsmmuCount == 1)
        let old = try VSMMUClient(socketPath: daemonSocket)
        try old.hello(name: "v2", versions: 1...2)
        let v2 = refusal { _ = try old.call(.createVSMMU(CreateVSMMU(name: "b", createKey: CreateKey.random()))) }
        #expect(v2?.code == .badField && v2?.detail == 0 && v2?.value == UInt64(CreateVSMMU.keyFlag), "\(String(describing: v2))")
        #expect(try client.health().vsmmuCount == 1)
    }

    /// A client whose policy's deadline passes with no daemon listening throws `ETIMEDOUT` naming the attempts.
    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func aClientGivesUpWithAClearErrorWhenNoDaemonComesBackWithinTheDeadline() throws {
        let socket = uniqueSocketPath("giveup")
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let daemon = try KillNineRestartTests().startDaemon(socket: socket, stateDirectory: directory)
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        let client = try VSMMUClient(socketPath: socket, reconnect: .init(initialDelay: .milliseconds(1), maximumDelay: .milliseconds(5),
                                                                          deadline: .milliseconds(100)))
        try client.hello(name: "giveup")
        let vsmmu = try client.createVSMMU(name: "giveup")
        kill(daemon.processIdentifier, SIGKILL)
        daemon.waitUntilExit()
        do throws(VSMMUClientError) {
            _ = try client.stats(vsmmu: vsmmu)
            Issue.record("STATS was answered with no daemon")
        } catch {
            #expect(error.isReconnectFailure, "\(error)")
            #expect(!error.isConnectionFailure)
            #expect(error.description.contains("reconnection attempts failed within the deadline; last: connect"), "\(error)")
            #expect(error.description.contains("(errno \(ECONNREFUSED))"), "\(error)")
        }
    }
}

/// A daemon with a journal behind a ``ReplyDroppingRelay``, and a client with a reconnect policy talking
/// through the relay: the rig for a request whose reply dies with a daemon that is killed after applying it.
final class LostReplyRig {
    let daemonSocket: String
    let directory: String
    let relay: ReplyDroppingRelay
    let client: VSMMUClient
    private let restart = KillNineRestartTests()
    private var daemon: ChildProcess

    init(_ label: String) throws {
        daemonSocket = uniqueSocketPath(label + "d")
        directory = temporaryStateDirectory()
        daemon = try restart.startDaemon(socket: daemonSocket, stateDirectory: directory)
        relay = try ReplyDroppingRelay(path: uniqueSocketPath(label + "r"), upstream: daemonSocket)
        client = try VSMMUClient(socketPath: relay.path, reconnect: KillNineRestartTests.reconnect)
        try client.hello(name: label)
    }

    deinit {
        if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) }
        relay.close()
        removeStateDirectory(directory)
    }

    /// SIGKILL of the daemon, then (replies let through again) a new one on the same socket and state
    /// directory.
    func killAndRestart() throws {
        kill(daemon.processIdentifier, SIGKILL)
        daemon.waitUntilExit()
        relay.dropReplies = false
        unlink(daemonSocket)
        daemon = try restart.startDaemon(socket: daemonSocket, stateDirectory: directory)
    }

    /// Runs `call` on another thread with the daemon's replies swallowed; once `applied` (given a client
    /// straight to the daemon) has seen its effect, kills and restarts the daemon and lets replies through
    /// again. - Returns: what `call` returned after the client reconnected, or its error's description.
    func callWithItsReplyLost(_ call: @escaping @Sendable (VSMMUClient) throws(VSMMUClientError) -> String,
                              applied: (VSMMUClient) throws -> Void) throws -> String? {
        relay.dropReplies = true
        let outcome = Outcome()
        let finished = DispatchSemaphore(value: 0)
        let box = ClientBox(client)
        Thread {
            do throws(VSMMUClientError) { outcome.set(try call(box.client)) } catch { outcome.set("\(error)") }
            finished.signal()
        }.start()
        let admin = try VSMMUClient(socketPath: daemonSocket)
        try admin.hello(name: "admin")
        try applied(admin)
        try killAndRestart()
        finished.wait()
        return outcome.value
    }
}

/// The vSMMUs LIST names.
func listedVSMMUs(_ client: VSMMUClient) throws -> [VSMMUID] {
    guard case .vsmmus(let entries) = try client.list(.vsmmus).entries else { return [] }
    return entries.map(\.vsmmu)
}

/// A client handed to one other thread while this one waits (the client is not thread-safe: one user at a time).
final class ClientBox: @unchecked Sendable {
    let client: VSMMUClient
    init(_ client: VSMMUClient) { self.client = client }
}

/// One value set by another thread.
final class Outcome: @unchecked Sendable {
    private let lock = NSLock()
    private var _value: String?
    func set(_ v: String) { lock.lock(); _value = v; lock.unlock() }
    var value: String? { lock.lock(); defer { lock.unlock() }; return _value }
}
