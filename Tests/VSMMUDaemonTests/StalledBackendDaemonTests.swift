import Dispatch
import Foundation
import InvalidationEngine
import Logging
import PSMMU
import SMMUv3
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` on a new thread and reports whether it returned within `seconds`: failure detection
/// while a stall lasts far longer (until the test releases it), not a speed assertion.
private func answers(within seconds: Double, _ body: @escaping @Sendable () -> Void) -> Bool {
    let done = DispatchSemaphore(value: 0)
    Thread.detachNewThread {
        body()
        done.signal()
    }
    return done.wait(timeout: .now() + seconds) == .success
}

/// A stalled pSMMU seen through the socket (issue 11 §3): the engine's lock defect, and the stall limit.
@Suite struct StalledBackendDaemonTests {
    /// An in-process server over two simulated pSMMUs (smmu0: host devices 0-15, smmu1: 16-31).
    static func server(_ label: String, engine: VSMMUEngine.Configuration) throws -> (VSMMUServer, String, [SimulatedSMMU]) {
        let path = uniqueSocketPath(label)
        let pSMMUs = simulatedPSMMUs(2)
        var logger = Logger(label: "vsmmud-test")
        logger.logLevel = .critical
        let server = VSMMUServer(configuration: .init(socketPath: path, pSMMUs: pSMMUs.map { .simulated($0) }, engine: engine),
                                 logger: logger)
        try server.start()
        return (server, path, pSMMUs)
    }

    static func connect(_ path: String) throws -> VSMMUClient {
        let client = try VSMMUClient(socketPath: path)
        try client.hello(name: "stall-test")
        return client
    }

    /// A vSMMU with a viommu on `pSMMU` and one device behind it, linked with one CD of `asid`.
    static func vsmmu(_ client: VSMMUClient, pSMMU: String, hostDeviceID: UInt32, streamID: StreamID,
                      asid: UInt16) throws -> (VSMMUID, UInt32) {
        let vsmmu = try client.createVSMMU()
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: pSMMU, hostDeviceID: hostDeviceID).viommu
        try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: hostDeviceID, streamID: streamID)
        try client.linkSTE(vsmmu: vsmmu, streamID: streamID, ste: s1STE(), contextDescriptors: [.valid(asid: asid)])
        return (vsmmu, viommu)
    }

    /// Admin requests and the watchdog's check, from another connection while the stall lasts.
    static func adminAnswers(_ server: VSMMUServer, _ path: String) -> Bool {
        answers(within: 10) {
            guard let admin = try? connect(path) else { return }
            _ = try? admin.stats()
            _ = try? admin.list(.vsmmus)
            _ = try? admin.list(.viommus)
            _ = try? admin.health()
            _ = server.liveness()
        }
    }

    @Test func unregisteringADeviceBehindAStalledPSMMUBlocksNeitherSTATSNorLISTNorLiveness() throws {
        // Drain threads (no stall limit): the INVALIDATE returns, its command stalls in the backend.
        let (server, path, pSMMUs) = try Self.server("unset-stall", engine: .init(queue: .init(drainPolicy: .drainThread)))
        defer { server.stop() }
        let owner = try Self.connect(path)
        let (vsmmu, viommu) = try Self.vsmmu(owner, pSMMU: "smmu0", hostDeviceID: 1, streamID: 0x8, asid: 1)
        let gate = pSMMUs[0].stallInvalidations()
        defer { gate.release() }
        #expect(try owner.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 1)]).consumed == 1)
        #expect(gate.waitForStalledCalls(1))
        // UNSET_DEV_ID waits for the queued command, which waits for the stalled pSMMU.
        let pending = try owner.send(.unsetDeviceID(DeviceRegistration(vsmmu: vsmmu, viommu: viommu, hostDeviceID: 1, streamID: 0x8)))
        usleep(20_000) // let the connection thread reach the wait (the check below holds either way)
        #expect(Self.adminAnswers(server, path), "STATS, LIST, HEALTH and liveness answer while UNSET_DEV_ID waits")
        gate.release()
        let (id, response) = try owner.receive()
        #expect(id == pending)
        if case .error(let e) = response { Issue.record("UNSET_DEV_ID refused: \(e)") }
        #expect(try owner.list(.devices, vsmmu: vsmmu).total == 0)
    }

    @Test func aConnectionTornDownBehindAStalledPSMMUBlocksNeitherSTATSNorLIST() throws {
        let (server, path, pSMMUs) = try Self.server("teardown-stall", engine: .init(queue: .init(drainPolicy: .drainThread)))
        defer { server.stop() }
        let owner = try Self.connect(path)
        let (vsmmu, _) = try Self.vsmmu(owner, pSMMU: "smmu0", hostDeviceID: 2, streamID: 0x9, asid: 4)
        let gate = pSMMUs[0].stallInvalidations()
        defer { gate.release() }
        #expect(try owner.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 4)]).consumed == 1)
        #expect(gate.waitForStalledCalls(1))
        owner.shutdownWrite() // the VMM goes: its teardown waits for the stalled queue
        usleep(20_000)
        #expect(Self.adminAnswers(server, path), "admin requests answer while a teardown waits on a stalled pSMMU")
        gate.release()
    }

    @Test func aStallLongerThanTheLimitAnswersCERROR_ABTAtTheSyncAndTheDaemonStaysHealthy() throws {
        let (server, path, pSMMUs) = try Self.server("stall-limit", engine: .init(stallTimeout: .milliseconds(200)))
        defer { server.stop() }
        let vmm = try Self.connect(path)
        let (vsmmu, _) = try Self.vsmmu(vmm, pSMMU: "smmu0", hostDeviceID: 1, streamID: 0x8, asid: 1)
        let second = try vmm.attachViommu(vsmmu: vsmmu, pSMMU: "smmu1", hostDeviceID: 17).viommu
        try vmm.setDeviceID(vsmmu: vsmmu, viommu: second, hostDeviceID: 17, streamID: 0x18)
        try vmm.linkSTE(vsmmu: vsmmu, streamID: 0x18, ste: s1STE(cdTable: 0x5000_0000), contextDescriptors: [.valid(asid: 2)])
        let other = try Self.connect(path)
        let (otherVSMMU, _) = try Self.vsmmu(other, pSMMU: "smmu1", hostDeviceID: 18, streamID: 0x8, asid: 1)

        let gate = pSMMUs[0].stallInvalidations()
        defer { gate.release() }
        let stalled = try vmm.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 1), .tlbiNHVA(asid: 1, address: 0x1000), .sync()])
        #expect(stalled.consumed == 2)
        #expect(stalled.syncsCompleted == 0)
        #expect(stalled.failure?.index == 2)
        #expect(stalled.failure?.queueError == .abort)
        // Only its own producers are held back: the vSMMU's other viommu, and another VMM's vSMMU.
        #expect(try vmm.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 2), .sync()])
                == InvalidateReply(consumed: 2, syncsCompleted: 1))
        #expect(try other.invalidate(vsmmu: otherVSMMU, commands: [.tlbiNHASID(asid: 1), .sync()])
                == InvalidateReply(consumed: 2, syncsCompleted: 1))
        // The daemon stays healthy.
        #expect(Self.adminAnswers(server, path))
        #expect(server.liveness() == .alive)
        // The guest retries the CMD_SYNC: it still covers the stalled viommu.
        let retried = try vmm.invalidate(vsmmu: vsmmu, commands: [.sync()])
        #expect(retried.failure?.index == 0 && retried.failure?.queueError == .abort)
        gate.release()
        // Once the pSMMU wakes up the queued commands execute and the retried CMD_SYNC completes.
        var completed: InvalidateReply?
        for _ in 0..<100 {
            let reply = try vmm.invalidate(vsmmu: vsmmu, commands: [.sync()])
            if reply.failure == nil { completed = reply; break }
        }
        #expect(completed == InvalidateReply(consumed: 1, syncsCompleted: 1))
        #expect(pSMMUs[0].counters.commandsReceived >= 2)
    }

    @Test func aStallShorterThanTheLimitIsANormalSuccess() throws {
        let (server, path, pSMMUs) = try Self.server("short-stall", engine: .init(stallTimeout: .seconds(60)))
        defer { server.stop() }
        let vmm = try Self.connect(path)
        let (vsmmu, _) = try Self.vsmmu(vmm, pSMMU: "smmu0", hostDeviceID: 3, streamID: 0x8, asid: 1)
        let gate = pSMMUs[0].stallInvalidations(for: .milliseconds(50))
        defer { gate.release() }
        let reply = try vmm.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 1), .sync()])
        #expect(reply == InvalidateReply(consumed: 2, syncsCompleted: 1))
        #expect(gate.stalledCalls >= 1, "the pSMMU did stall")
    }
}
