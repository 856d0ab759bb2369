import Foundation
import SMMUv3
import Testing
import VSMMUClient
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The real `vsmmud` with a state directory, killed with SIGKILL under load and started again.
@Suite struct KillNineRestartTests {
    static var enabled: Bool { DaemonBinaryTests.daemonPath != nil || CClientTests.requireBuiltExecutables }

    /// Starts vsmmud on `socket` with `stateDirectory`; waits until it accepts.
    func startDaemon(socket: String, stateDirectory: String, extra: [String] = []) throws -> Process {
        let process = Process()
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
        private var _registrations = 0
        func sending(_ what: String) { lock.lock(); _inFlight.insert(what); lock.unlock() }
        func acknowledged(_ what: String) {
            lock.lock(); _inFlight.remove(what); _acknowledged.insert(what); _registrations += 1; lock.unlock()
        }
        func executed(commands: UInt64, on vsmmu: UInt32) { lock.lock(); _commands[vsmmu, default: 0] += commands; lock.unlock() }
        var acknowledgedSet: Set<String> { lock.lock(); defer { lock.unlock() }; return _acknowledged }
        var inFlight: Set<String> { lock.lock(); defer { lock.unlock() }; return _inFlight }
        var commands: [UInt32: UInt64] { lock.lock(); defer { lock.unlock() }; return _commands }
        var registrations: Int { lock.lock(); defer { lock.unlock() }; return _registrations }
    }

    /// Client `index`: a vSMMU with one viommu, then devices registered, linked and invalidated one by one
    /// until the daemon goes away (each step recorded as sent, then as answered).
    static func load(index: Int, socket: String, ledger: Ledger) {
        guard let client = try? VSMMUClient(socketPath: socket), (try? client.hello(name: "load-\(index)")) != nil else { return }
        let pSMMU = index < 2 ? "smmu0" : "smmu1"
        let base = UInt32((index % 2) * 32 + (index < 2 ? 0 : 64))
        ledger.sending("vsmmu load-\(index)")
        guard let vsmmu = try? client.createVSMMU(name: "load-\(index)") else { return }
        ledger.acknowledged("vsmmu load-\(index)")
        ledger.sending("viommu load-\(index)")
        guard (try? client.attachViommu(vsmmu: vsmmu, pSMMU: pSMMU, hostDeviceID: base)) != nil else { return }
        ledger.acknowledged("viommu load-\(index)")
        for k in 0..<UInt32(32) {
            let host = base + k
            let sid = StreamID(0x100 + k)
            let device = "load-\(index) sid 0x\(String(sid, radix: 16)) host \(host)"
            ledger.sending(device + " registered")
            guard (try? client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: host, streamID: sid)) != nil else { return }
            ledger.acknowledged(device + " registered")
            ledger.sending(device + " linked")
            guard (try? client.linkSTE(vsmmu: vsmmu, streamID: sid, ste: s1STE(), contextDescriptors: [.valid(asid: ASID(k + 1))])) != nil else { return }
            ledger.acknowledged(device + " linked")
            for _ in 0..<3 {
                guard let reply = try? client.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: ASID(k + 1)), .sync()]),
                      reply.failure == nil else { return }
                ledger.executed(commands: 1, on: vsmmu.rawValue)
            }
        }
        // Registrations done: invalidations until the daemon dies.
        while (try? client.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 1), .sync()])) != nil {
            ledger.executed(commands: 1, on: vsmmu.rawValue)
        }
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func killNineUnderLoadFromFourClientsLosesNoAcknowledgedRegistration() throws {
        let socket = uniqueSocketPath("kill9")
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let first = try startDaemon(socket: socket, stateDirectory: directory)
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
        let ledger = Ledger()
        let done = DispatchGroup()
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
        done.wait()
        let acknowledged = ledger.acknowledgedSet
        let inFlight = ledger.inFlight
        #expect(acknowledged.count >= 90)

        // The same state directory: every vSMMU is rebuilt before the socket serves.
        unlink(socket)
        let second = try startDaemon(socket: socket, stateDirectory: directory)
        defer { if second.isRunning { kill(second.processIdentifier, SIGKILL) } }
        let after = try VSMMUClient(socketPath: socket)
        try after.hello(name: "admin")
        var recovered: Set<String> = []
        guard case .vsmmus(let vsmmus) = try after.list(.vsmmus).entries,
              case .viommus(let viommus) = try after.list(.viommus).entries else { return }
        var names: [VSMMUID: String] = [:]
        for v in vsmmus {
            names[v.vsmmu] = v.name
            recovered.insert("vsmmu \(v.name)")
            #expect(v.ownerProcessID == 0, "\(v.name) is awaiting its owner")
        }
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
        // Every answered registration is back, and nothing that was not sent.
        #expect(acknowledged.subtracting(recovered).isEmpty, "lost: \(acknowledged.subtracting(recovered).sorted())")
        #expect(recovered.subtracting(acknowledged).isSubset(of: inFlight),
                "recovered but never sent: \(recovered.subtracting(acknowledged).subtracting(inFlight).sorted())")

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
        let process = Process()
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
