import Foundation
import SMMUv3
import Testing
import VSMMUTestSupport
import VSMMUClient
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The real `vsmmud` with a state directory, killed with SIGKILL under load and started again.
@Suite struct KillNineRestartTests {
    static var enabled: Bool { DaemonBinaryTests.daemonPath != nil || CClientTests.requireBuiltExecutables }

    /// Starts vsmmud on `socket` with `stateDirectory`; waits until it accepts.
    func startDaemon(socket: String, stateDirectory: String, extra: [String] = []) throws -> ChildProcess {
        let process = ChildProcess()
        process.executableURL = URL(fileURLWithPath: try #require(DaemonBinaryTests.daemonPath))
        process.arguments = ["--socket", socket, "--state-dir", stateDirectory, "--log-level", "warning"] + extra
        process.standardError = FileHandle.nullDevice
        try process.run()
        var client: VSMMUClient?
        eventually { client = try? VSMMUClient(socketPath: socket); return client != nil || !process.isRunning }
        return process
    }

    /// What one client had answered, and what it had sent without an answer when the daemon died.
    final class Ledger: @unchecked Sendable {
        private let lock = NSLock()
        private var _acknowledged: Set<String> = []
        private var _inFlight: Set<String> = []
        private var _commands: [UInt32: UInt64] = [:]
        private var _commandsAfterRestart: [UInt32: UInt64] = [:]
        private var _registrations = 0
        private var _finished: Set<Int> = []
        private var _failures: [String] = []
        private var _reconnects: [Int: Int] = [:]
        private var _stop = false
        func sending(_ what: String) { lock.lock(); _inFlight.insert(what); lock.unlock() }
        func acknowledged(_ what: String) {
            lock.lock(); _inFlight.remove(what); _acknowledged.insert(what); _registrations += 1; lock.unlock()
        }
        /// An INVALIDATE answered; `afterRestart`: on a connection the client made after the restart.
        func executed(commands: UInt64, on vsmmu: UInt32, afterRestart: Bool) {
            lock.lock()
            if afterRestart { _commandsAfterRestart[vsmmu, default: 0] += commands } else { _commands[vsmmu, default: 0] += commands }
            lock.unlock()
        }
        func failed(_ what: String) { lock.lock(); _failures.append(what); lock.unlock() }
        func finishedRegistrations(_ index: Int) { lock.lock(); _finished.insert(index); lock.unlock() }
        func reconnected(_ index: Int, times: Int) { lock.lock(); _reconnects[index] = times; lock.unlock() }
        func stop() { lock.lock(); _stop = true; lock.unlock() }
        var stopped: Bool { lock.lock(); defer { lock.unlock() }; return _stop }
        var acknowledgedSet: Set<String> { lock.lock(); defer { lock.unlock() }; return _acknowledged }
        var inFlight: Set<String> { lock.lock(); defer { lock.unlock() }; return _inFlight }
        var commands: [UInt32: UInt64] { lock.lock(); defer { lock.unlock() }; return _commands }
        var commandsAfterRestart: [UInt32: UInt64] { lock.lock(); defer { lock.unlock() }; return _commandsAfterRestart }
        var registrations: Int { lock.lock(); defer { lock.unlock() }; return _registrations }
        var finished: Set<Int> { lock.lock(); defer { lock.unlock() }; return _finished }
        var failures: [String] { lock.lock(); defer { lock.unlock() }; return _failures }
        var reconnects: [Int: Int] { lock.lock(); defer { lock.unlock() }; return _reconnects }
    }

    /// The load clients' reconnect policy: fast first retries, a deadline well above a daemon's start.
    static let reconnect = VSMMUClient.Reconnect(initialDelay: .milliseconds(5), maximumDelay: .milliseconds(200), deadline: .seconds(60))

    /// Client `index` (reconnect policy on): a vSMMU with one viommu, then 32 devices registered, linked and
    /// invalidated one by one, then invalidations until the ledger says stop. Each step is recorded as sent,
    /// then as answered; a failure of any step (which the reconnect policy should have absorbed) is recorded
    /// and ends the client.
    static func load(index: Int, socket: String, ledger: Ledger) {
        let client: VSMMUClient
        do {
            client = try VSMMUClient(socketPath: socket, reconnect: reconnect)
            try client.hello(name: "load-\(index)")
        } catch { ledger.failed("load-\(index) HELLO: \(error)"); return }
        defer { ledger.reconnected(index, times: client.reconnectCount) }
        func step<T>(_ what: String, _ body: () throws(VSMMUClientError) -> T) -> T? {
            do throws(VSMMUClientError) { return try body() } catch { ledger.failed("load-\(index) \(what): \(error)"); return nil }
        }
        func invalidate(_ vsmmu: VSMMUID, asid: ASID) -> Bool {
            guard let reply = step("INVALIDATE", { () throws(VSMMUClientError) in
                try client.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: asid), .sync()])
            }) else { return false }
            guard reply.failure == nil else { ledger.failed("load-\(index) INVALIDATE: \(reply)"); return false }
            ledger.executed(commands: 1, on: vsmmu.rawValue, afterRestart: client.reconnectCount > 0)
            return true
        }
        let pSMMU = index < 2 ? "smmu0" : "smmu1"
        let base = UInt32((index % 2) * 32 + (index < 2 ? 0 : 64))
        ledger.sending("vsmmu load-\(index)")
        guard let vsmmu = step("CREATE_VSMMU", { () throws(VSMMUClientError) in try client.createVSMMU(name: "load-\(index)") }) else { return }
        ledger.acknowledged("vsmmu load-\(index)")
        ledger.sending("viommu load-\(index)")
        guard step("ATTACH_VIOMMU", { () throws(VSMMUClientError) in
            try client.attachViommu(vsmmu: vsmmu, pSMMU: pSMMU, hostDeviceID: base)
        }) != nil else { return }
        ledger.acknowledged("viommu load-\(index)")
        for k in 0..<UInt32(32) {
            let host = base + k
            let sid = StreamID(0x100 + k)
            let device = "load-\(index) sid 0x\(String(sid, radix: 16)) host \(host)"
            ledger.sending(device + " registered")
            guard step("SET_DEV_ID", { () throws(VSMMUClientError) in
                try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: host, streamID: sid)
            }) != nil else { return }
            ledger.acknowledged(device + " registered")
            ledger.sending(device + " linked")
            guard step("LINK_STE", { () throws(VSMMUClientError) in
                try client.linkSTE(vsmmu: vsmmu, streamID: sid, ste: s1STE(), contextDescriptors: [.valid(asid: ASID(k + 1))])
            }) != nil else { return }
            ledger.acknowledged(device + " linked")
            for _ in 0..<3 { guard invalidate(vsmmu, asid: ASID(k + 1)) else { return } }
        }
        ledger.finishedRegistrations(index)
        // Registrations done: invalidations until told to stop.
        while !ledger.stopped { guard invalidate(vsmmu, asid: 1) else { return } }
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func killNineUnderLoadFromFourClientsLosesNoAcknowledgedRegistrationAndTheClientsResumeOnTheirOwn() throws {
        let socket = uniqueSocketPath("kill9")
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let first = try startDaemon(socket: socket, stateDirectory: directory)
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
        let ledger = Ledger()
        let done = DispatchGroup()
        defer { ledger.stop(); done.wait() }
        for index in 0..<4 {
            done.enter()
            Thread { Self.load(index: index, socket: socket, ledger: ledger); done.leave() }.start()
        }
        // Mid-load: about a third of the 4 × 66 registration steps answered.
        eventually(attempts: 60_000) { ledger.registrations >= 90 }

        // No command was acknowledged that a backend had not executed: what the clients had been answered
        // before this STATS is at most what the simulated pSMMUs completed when STATS was served.
        let answered = ledger.commands
        let admin = try VSMMUClient(socketPath: socket)
        try admin.hello(name: "admin")
        for (vsmmu, commands) in answered {
            let stats = try admin.stats(vsmmu: VSMMUID(vsmmu))
            let completed = stats.value(.viommuBackendCompleted, viommu: 0) ?? 0
            #expect(completed >= commands, "vSMMU \(vsmmu): \(commands) commands answered, \(completed) completed by the backend")
        }

        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        #expect(first.terminationReason == .uncaughtSignal)
        #expect(ledger.acknowledgedSet.count >= 90)

        // The same state directory: every vSMMU is rebuilt before the socket serves, and the four clients —
        // retrying with backoff meanwhile — reconnect, resume and go on on their own.
        unlink(socket)
        let second = try startDaemon(socket: socket, stateDirectory: directory)
        defer { if second.isRunning { kill(second.processIdentifier, SIGKILL) } }
        eventually(attempts: 120_000) {
            ledger.finished.count == 4 && ledger.commandsAfterRestart.count == 4 || !ledger.failures.isEmpty
        }
        #expect(ledger.failures.isEmpty, "\(ledger.failures)")
        #expect(ledger.finished == [0, 1, 2, 3], "clients that registered all 32 devices: \(ledger.finished.sorted())")

        // Every client's invalidations after the restart were executed by the new daemon's backends.
        let answeredAfter = ledger.commandsAfterRestart
        #expect(answeredAfter.count == 4)
        let after = try VSMMUClient(socketPath: socket)
        try after.hello(name: "admin")
        for (vsmmu, commands) in answeredAfter {
            let stats = try after.stats(vsmmu: VSMMUID(vsmmu))
            let completed = stats.value(.viommuBackendCompleted, viommu: 0) ?? 0
            #expect(commands > 0 && completed >= commands,
                    "vSMMU \(vsmmu): \(commands) commands answered after the restart, \(completed) completed by the backend")
        }

        var recovered: Set<String> = []
        guard case .vsmmus(let vsmmus) = try after.list(.vsmmus).entries,
              case .viommus(let viommus) = try after.list(.viommus).entries else { return }
        var names: [VSMMUID: String] = [:]
        for v in vsmmus {
            names[v.vsmmu] = v.name
            recovered.insert("vsmmu \(v.name)")
            #expect(v.ownerProcessID == UInt32(getpid()), "\(v.name) was resumed by its client")
        }
        #expect(vsmmus.count == 4)
        for v in viommus { recovered.insert("viommu \(names[v.vsmmu] ?? "?")") }
        var start: UInt32 = 0
        while true {
            let page = try after.list(.devices, start: start)
            guard case .devices(let devices) = page.entries, !devices.isEmpty else { break }
            for d in devices {
                let device = "\(names[d.vsmmu] ?? "?") sid 0x\(String(d.streamID, radix: 16)) host \(d.hostDeviceID)"
                recovered.insert(device + " registered")
                if d.steLinked { recovered.insert(device + " linked") }
            }
            start += UInt32(devices.count)
            if start >= page.total { break }
        }
        // Every answered registration is back (all 4 × 66 by now), and nothing that was not sent.
        let acknowledged = ledger.acknowledgedSet
        #expect(acknowledged.count == 4 * 66)
        #expect(acknowledged.subtracting(recovered).isEmpty, "lost: \(acknowledged.subtracting(recovered).sorted())")
        #expect(recovered.subtracting(acknowledged).isSubset(of: ledger.inFlight),
                "recovered but never sent: \(recovered.subtracting(acknowledged).subtracting(ledger.inFlight).sorted())")

        ledger.stop()
        done.wait()
        #expect(ledger.reconnects == [0: 1, 1: 1, 2: 1, 3: 1], "reconnects per client: \(ledger.reconnects)")
        kill(second.processIdentifier, SIGTERM)
        second.waitUntilExit()
        #expect(second.terminationReason == .exit && second.terminationStatus == 0)
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func aDamagedJournalStopsTheDaemonWithExitStatus65AndAMessageNamingTheFile() throws {
        let socket = uniqueSocketPath("damaged")
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        // A log whose header is not a vsmmud journal's.
        try Data(repeating: 0x5A, count: 64).write(to: URL(fileURLWithPath: directory + "/log"))
        let process = ChildProcess()
        process.executableURL = URL(fileURLWithPath: try #require(DaemonBinaryTests.daemonPath))
        process.arguments = ["--socket", socket, "--state-dir", directory]
        let stderr = Pipe()
        process.standardError = stderr
        try process.run()
        let message = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 65)
        #expect(message.contains("journal refused"))
        #expect(message.contains("\(directory)/log is corrupt at offset 0"))
        #expect(access(socket, F_OK) != 0, "it never listened")
    }
}
