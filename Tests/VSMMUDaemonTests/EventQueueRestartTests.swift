import Foundation
import Logging
import SharedQueue
import SMMUv3
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// A daemon restart keeps the event queue (PROTOCOL.md §9): its state is in the VMM's memory; the fd store
/// hands both fds back, or the VMM maps the same memfd again after RESUME_VSMMU, and the sequence goes on
/// from the slot before PROD.
@Suite struct EventQueueRestartTests {
    typealias RecordingStore = IOMMUFDRestartTests.RecordingStore

    /// A vSMMU with one viommu on smmu0 and vSID 0x8 (host device `hostDevice`) linked; its resume token.
    static func seed(_ client: VSMMUClient, hostDevice: UInt32 = 1) throws -> (VSMMUID, ResumeToken) {
        let vsmmu = try client.createVSMMU(name: "events")
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: hostDevice)
        try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: hostDevice, streamID: 0x8)
        _ = try client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: s1STE(), contextDescriptors: [.valid(asid: 1)])
        return (vsmmu, try #require(client.resumeTokens[vsmmu]))
    }

    /// `count` faults of vSID 0x8 through SIMULATE_DMA.
    static func faults(_ client: VSMMUClient, _ vsmmu: VSMMUID, _ count: Int, from first: Int = 0) throws {
        for i in first..<(first + count) {
            _ = try client.simulateDMA(vsmmu: vsmmu, streamID: 0x8, address: UInt64(i) << 12)
        }
    }

    static let stopped = EventQueueLayout.State.stopped.rawValue
    static let running = EventQueueLayout.State.running.rawValue

    @Test func withTheFdStoreTheRestartedDaemonMapsTheQueueAgainAndItsSequenceGoesOn() throws {
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let store = RecordingStore()
        defer { store.discard() }
        let first = try SharedQueueRestartTests.server(directory, store: store)
        let client = try SharedQueueRestartTests.client(first)
        let (vsmmu, token) = try Self.seed(client)
        let vmm = try TestEventVMM()
        try client.mapEventQueueOrFail(vsmmu: vsmmu, vmm)
        let hex = String(vsmmu.rawValue, radix: 16)
        #expect(store.names.isSuperset(of: ["events-\(hex)-memory", "events-\(hex)-call"]))
        try Self.faults(client, vsmmu, 3)
        #expect(vmm.take(3).map(\.sequence) == [1, 2, 3])
        // SIGTERM: the queue stops, its fds stay in the store for the next process.
        first.stop()
        #expect(vmm.state == Self.stopped)
        #expect(store.names.contains("events-\(hex)-memory"))

        let second = try SharedQueueRestartTests.server(directory, store: store, inherited: store.inherited())
        defer { second.stop() }
        // Mapped again from the store, before the owner is back.
        #expect(vmm.state == Self.running)
        let owner = try SharedQueueRestartTests.client(second)
        _ = try owner.resumeVSMMU(vsmmu, token: token)
        try Self.faults(owner, vsmmu, 2, from: 3)
        let after = vmm.take(2)
        #expect(after.map(\.sequence) == [4, 5])
        #expect(after.allSatisfy { $0.record.streamID == 0x8 && $0.vsmmu == vsmmu.rawValue && $0.viommu == 0 })
        // A MAP_EVENT_QUEUE of the same memfd after RESUME (what a client does on its own) keeps PROD.
        try vmm.renewCall()
        #expect(try owner.mapEventQueueOrFail(vsmmu: vsmmu, vmm) == 5)
        // UNMAP_EVENT_QUEUE takes the names out of the store.
        #expect(try owner.call(.unmapEventQueue(UnmapEventQueue(vsmmu: vsmmu))) == .unmapEventQueue)
        #expect(!store.names.contains("events-\(hex)-memory") && !store.names.contains("events-\(hex)-call"))
        #expect(vmm.state == Self.stopped)
    }

    @Test func withoutTheFdStoreTheVMMMapsTheSameMemfdAfterResumeAndTheSequenceGoesOn() throws {
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let first = try SharedQueueRestartTests.server(directory, store: nil)
        let client = try SharedQueueRestartTests.client(first)
        let (vsmmu, token) = try Self.seed(client)
        let vmm = try TestEventVMM()
        try client.mapEventQueueOrFail(vsmmu: vsmmu, vmm)
        try Self.faults(client, vsmmu, 4)
        #expect(vmm.take(4).count == 4)
        first.stop()
        let second = try SharedQueueRestartTests.server(directory, store: nil)
        defer { second.stop() }
        let owner = try SharedQueueRestartTests.client(second)
        _ = try owner.resumeVSMMU(vsmmu, token: token)
        #expect(vmm.state == Self.stopped)
        try vmm.renewCall()
        #expect(try owner.mapEventQueueOrFail(vsmmu: vsmmu, vmm) == 4)
        try Self.faults(owner, vsmmu, 1, from: 4)
        #expect(vmm.take(1).map(\.sequence) == [5])
    }

    @Test(.enabled(if: KillNineRestartTests.enabled, "vsmmud was not built beside the tests"))
    func afterKillNineTheVMMMapsTheSameMemfdAgainAndTheSequenceGoesOn() throws {
        let socket = uniqueSocketPath("evkill9")
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let restart = KillNineRestartTests()
        let first = try restart.startDaemon(socket: socket, stateDirectory: directory)
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
        let client = try VSMMUClient(socketPath: socket)
        try client.hello(name: "events-kill9")
        // The daemon's default pSMMUs: smmu0 holds host devices 0-63.
        let (vsmmu, token) = try Self.seed(client, hostDevice: 0)
        let vmm = try TestEventVMM()
        try client.mapEventQueueOrFail(vsmmu: vsmmu, vmm)
        try Self.faults(client, vsmmu, 10)
        #expect(vmm.take(10).map(\.sequence) == (1...10).map { UInt64($0) })
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()

        let second = try restart.startDaemon(socket: socket, stateDirectory: directory)
        defer { if second.isRunning { kill(second.processIdentifier, SIGKILL) } }
        let owner = try VSMMUClient(socketPath: socket)
        try owner.hello(name: "events-kill9-owner")
        _ = try owner.resumeVSMMU(vsmmu, token: token)
        // PROD is in the VMM's memory: the new daemon goes on from it, and from the sequence before it.
        try vmm.renewCall()
        #expect(try owner.mapEventQueueOrFail(vsmmu: vsmmu, vmm) == 10)
        try Self.faults(owner, vsmmu, 3, from: 10)
        let after = vmm.take(3)
        #expect(after.map(\.sequence) == [11, 12, 13])
        #expect(after.allSatisfy { $0.record.streamID == 0x8 && !$0.lostBefore })
        #expect(try owner.stats(vsmmu: vsmmu).value(.viommuEvents, viommu: 0) == 3)
    }
}
