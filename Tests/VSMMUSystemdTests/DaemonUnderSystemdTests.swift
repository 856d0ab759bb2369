import Foundation
import SMMUv3
import Testing
import VSMMUClient
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The real `vsmmud` binary as systemd runs it: notifications on `NOTIFY_SOCKET`, socket activation,
/// graceful SIGTERM, SIGHUP reload, the allow-list and refused configuration files.
@Suite(.serialized) struct DaemonUnderSystemdTests {
    static let enabled = daemonPath != nil || requireBuiltExecutables

    /// A configuration file with one simulated pSMMU `smmu0` (host devices 0…15) and `extra` appended.
    static func configuration(callNanoseconds: UInt64 = 0, extra: String = "") -> String {
        """
        [daemon]
        log_level = "info"

        [[psmmu]]
        name = "smmu0"
        backend = "simulated"
        first_host_device = 0
        devices = 16

        [psmmu.cost]
        call_ns = \(callNanoseconds)
        spin_ns = 0

        \(extra)
        """
    }

    /// Starts vsmmud on `socket` with `config` and waits until it answers HELLO.
    static func startDaemon(socket: String, config: String?, environment: [String: String] = [:],
                            arguments: [String] = []) throws -> SpawnedProcess {
        let daemon = try #require(daemonPath)
        var args = ["--socket", socket, "--log-format", "console"] + arguments
        if let config { args += ["--config", config] }
        return try SpawnedProcess(daemon, args, environment: environment)
    }

    /// A handshaken client, retried while the daemon starts.
    static func connect(_ socket: String) -> VSMMUClient? {
        eventually {
            guard let client = try? VSMMUClient(socketPath: socket) else { return nil }
            return (try? client.hello(name: "systemd-test")) != nil ? client : nil
        }
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func daemonSendsReadyStatusWatchdogAndStoppingToTheNotifySocket() throws {
        let notify = try NotifySocket()
        let socket = uniquePath("notify", suffix: ".sock")
        let daemon = try Self.startDaemon(socket: socket, config: nil, environment: [
            "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "300000",
        ])
        #expect(notify.waitFor { $0.contains { $0.contains("READY=1") } }, "no READY=1; stderr: \(daemon.standardError)")
        let ready = try #require(notify.messages.first { $0.contains("READY=1") })
        #expect(ready.contains("STATUS=serving 0 connections"))
        // The watchdog interval is 300 ms: the accept thread pings every 100 ms.
        #expect(notify.waitFor { $0.filter { $0.contains("WATCHDOG=1") }.count >= 3 })
        // Live figures: a connection shows up in the next STATUS.
        let client = try #require(Self.connect(socket))
        _ = try client.createVSMMU(name: "vm")
        #expect(notify.waitFor { $0.contains { $0.contains("STATUS=serving 1 connection, 1 vSMMU") } })

        daemon.signal(SIGTERM)
        #expect(notify.waitFor { $0.contains { $0.contains("STOPPING=1") } })
        #expect(daemon.waitForExit() == 0, "stderr: \(daemon.standardError)")
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func daemonServesTheListeningSocketPassedWithLISTEN_FDS() throws {
        let socket = uniquePath("activated", suffix: ".sock")
        let listener = try listeningSocket(at: socket)
        defer { close(listener); unlink(socket) }
        let daemon = try SpawnedProcess(try #require(daemonPath), ["--log-format", "console", "--log-level", "debug"],
                                        activatedSocket: listener)
        let client = try #require(Self.connect(socket), "no answer; stderr: \(daemon.standardError)")
        let health = try client.health()
        #expect(health.serverProcessID == UInt32(daemon.pid)) // the shell exec'd the daemon: same pid
        let vsmmu = try client.createVSMMU(name: "activated")
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 1).viommu
        try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: 1, streamID: 0x8)
        #expect(try client.invalidate(vsmmu: vsmmu, commands: [.atcInv(streamID: 0x8), .sync()])
                == InvalidateReply(consumed: 2, syncsCompleted: 1))

        daemon.signal(SIGTERM)
        #expect(daemon.waitForExit() == 0, "stderr: \(daemon.standardError)")
        #expect(daemon.standardError.contains("activated=true"))
        // systemd owns an activated socket: the daemon leaves the file (and the listener) alone.
        #expect(access(socket, F_OK) == 0)
        #expect(POSIXListening.accepts(socket))
    }

    @Test(.enabled(if: enabled && FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-socket-activate"),
                   "vsmmud or systemd-socket-activate is missing"))
    func daemonServesUnderSystemdSocketActivate() throws {
        let socket = uniquePath("sdactivate", suffix: ".sock")
        defer { unlink(socket) }
        let activator = try SpawnedProcess("/usr/bin/systemd-socket-activate",
                                           ["-l", socket, try #require(daemonPath), "--log-format", "console"])
        // systemd-socket-activate starts the daemon on the first connection, then execs it (same pid).
        let client = try #require(Self.connect(socket), "no answer; stderr: \(activator.standardError)")
        let health = try client.health()
        #expect(health.status == .ok)
        #expect(health.pSMMUs.map(\.name) == ["smmu0", "smmu1"])
        activator.signal(SIGTERM)
        #expect(activator.waitForExit() == 0, "stderr: \(activator.standardError)")
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func sigtermWithASyncInFlightAnswersItThenExitsZero() throws {
        // Every backend call takes 1 s: the INVALIDATE below is still executing when SIGTERM arrives.
        let config = try writeTemporaryFile("slow", Self.configuration(callNanoseconds: 1_000_000_000))
        defer { unlink(config) }
        let socket = uniquePath("sigterm", suffix: ".sock")
        let daemon = try Self.startDaemon(socket: socket, config: config)
        let client = try #require(Self.connect(socket), "stderr: \(daemon.standardError)")
        let vsmmu = try client.createVSMMU(name: "vm")
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 2).viommu
        try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: 2, streamID: 0x10)
        let requestID = try client.send(.invalidate(Invalidate(vsmmu: vsmmu, commands: [.tlbiNHAll(), .sync()])))

        // Wait until the daemon is executing it (seen from an admin connection), then stop the daemon.
        let admin = try #require(Self.connect(socket))
        let inFlight = eventually { () -> Bool? in
            // Routed (commands received) but not answered (INVALIDATE requests count when answered).
            guard let stats = try? admin.stats(vsmmu: vsmmu), stats.value(.commandsReceived) == 2 else { return nil }
            return stats.value(.invalidateRequests) == 0
        }
        #expect(inFlight == true)
        daemon.signal(SIGTERM)

        // The sync is answered — completed, not refused — and only then does the connection end.
        let (replyID, response) = try client.receive()
        #expect(replyID == requestID)
        #expect(response == .invalidate(InvalidateReply(consumed: 2, syncsCompleted: 1)))
        #expect(throws: VSMMUClientError.connectionClosed) { _ = try client.receive() }
        #expect(daemon.waitForExit() == 0, "stderr: \(daemon.standardError)")
        #expect(daemon.standardError.contains("stopping"))
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func allowListRefusesAUidNotOnItAndSIGHUPReloadsIt() throws {
        let me = getuid()
        let stranger = me == 4242 ? 4243 : 4242
        let configPath = uniquePath("access", suffix: ".toml")
        try Self.configuration(extra: "[access]\nallowed_uids = [\(stranger)]\n").write(toFile: configPath, atomically: true, encoding: .utf8)
        defer { unlink(configPath) }
        let socket = uniquePath("access", suffix: ".sock")
        let daemon = try Self.startDaemon(socket: socket, config: configPath)

        let refused = eventually { () -> ProtocolError? in
            guard let client = try? VSMMUClient(socketPath: socket) else { return nil }
            do throws(VSMMUClientError) {
                _ = try client.hello(name: "stranger")
                return nil
            } catch {
                if case .server(let refusal) = error { return refusal }
                return nil
            }
        }
        let error = try #require(refused, "stderr: \(daemon.standardError)")
        #expect(error.code == .permissionDenied)
        #expect(error.detail == me)
        #expect(error.requestType == .hello)

        // Put this uid on the list and change a setting that needs a restart; SIGHUP.
        try Self.configuration(extra: "[access]\nallowed_uids = [\(stranger), \(me)]\n[queue]\nring_capacity = 8192\n")
            .write(toFile: configPath, atomically: true, encoding: .utf8)
        daemon.signal(SIGHUP)
        let reloaded = eventually { daemon.standardError.contains("configuration reloaded") ? true : nil }
        #expect(reloaded == true, "stderr: \(daemon.standardError)")
        #expect(daemon.standardError.contains("ring_capacity"))
        let client = try #require(Self.connect(socket))
        #expect(try client.health().status == .ok)

        // A refused file at reload changes nothing.
        try "[[psmmu]]\nname = 3\n".write(toFile: configPath, atomically: true, encoding: .utf8)
        daemon.signal(SIGHUP)
        let kept = eventually { daemon.standardError.contains("keeping the running one") ? true : nil }
        #expect(kept == true)
        #expect(Self.connect(socket) != nil)

        daemon.signal(SIGTERM)
        #expect(daemon.waitForExit() == 0, "stderr: \(daemon.standardError)")
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"),
          arguments: [
            ("[[psmmu]]\nname = \"smmu0\"\nbackend = \"warp\"\n", 3, "backend"),
            ("[daemon]\nlog_level = \"info\"\n[limits\n", 3, nil),
            ("[[psmmu]]\nname = \"a\"\nbackend = \"simulated\"\n[[psmmu]]\nname = \"a\"\nbackend = \"simulated\"\n", 5, "name"),
            ("[[psmmu]]\nname = \"a\"\nbackend = \"simulated\"\ndevices = \"64\"\n", 4, "devices"),
          ] as [(String, Int, String?)])
    func aRefusedConfigurationExitsWith78NamingFileLineAndKey(text: String, line: Int, key: String?) throws {
        let config = try writeTemporaryFile("bad", text)
        defer { unlink(config) }
        let daemon = try SpawnedProcess(try #require(daemonPath), ["--config", config, "--socket", uniquePath("bad", suffix: ".sock")])
        #expect(daemon.waitForExit() == 78)
        let message = daemon.standardError
        #expect(message.contains("\(config):\(line)"), "stderr: \(message)")
        if let key { #expect(message.contains(key), "stderr: \(message)") }
        #expect(!message.contains("Fatal error"))
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func checkConfigAcceptsTheShippedExampleAndAMissingFileIsRefused() throws {
        let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("systemd/vsmmud.toml").path
        let good = try SpawnedProcess(try #require(daemonPath), ["--config", example, "--check-config"])
        #expect(good.waitForExit() == 0, "stderr: \(good.standardError)")
        let missing = try SpawnedProcess(try #require(daemonPath), ["--config", "/nonexistent/vsmmud.toml", "--check-config"])
        #expect(missing.waitForExit() == 78)
        #expect(missing.standardError.contains("/nonexistent/vsmmud.toml"))
    }

    @Test(.enabled(if: enabled && FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"),
                   "vsmmud or systemd-analyze is missing"))
    func bothUnitFilesPassSystemdAnalyzeVerify() throws {
        let units = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("systemd")
        let directory = uniquePath("units", suffix: "")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // verify needs ExecStart= to exist: point it at the built binary.
        let service = try String(contentsOf: units.appendingPathComponent("vsmmud.service"), encoding: .utf8)
        #expect(service.contains("ExecStart=/usr/local/bin/vsmmud "))
        try service.replacingOccurrences(of: "/usr/local/bin/vsmmud", with: try #require(daemonPath))
            .write(toFile: directory + "/vsmmud.service", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: units.appendingPathComponent("vsmmud.socket").path,
                                         toPath: directory + "/vsmmud.socket")
        let verify = try SpawnedProcess("/usr/bin/systemd-analyze",
                                        ["verify", directory + "/vsmmud.socket", directory + "/vsmmud.service"])
        #expect(verify.waitForExit() == 0, "systemd-analyze: \(verify.standardError)")
        #expect(!verify.standardError.contains("vsmmud."), "systemd-analyze: \(verify.standardError)")
    }
}

/// Whether something accepts connections on a socket path.
enum POSIXListening {
    static func accepts(_ path: String) -> Bool {
        guard let client = try? VSMMUClient(socketPath: path) else { return false }
        _ = client
        return true
    }
}
