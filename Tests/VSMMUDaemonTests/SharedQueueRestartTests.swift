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

/// A daemon restart keeps the shared queue (PROTOCOL.md §8.6): its state is in the VMM's memory; the fd
/// store hands the three fds back, or the VMM maps the same memfd again after RESUME_VSMMU.
@Suite struct SharedQueueRestartTests {
    typealias RecordingStore = IOMMUFDRestartTests.RecordingStore

    /// A journaled server with simulated pSMMUs, the recording fd store and what it inherited.
    static func server(_ directory: String, store: RecordingStore?, inherited: InheritedFileDescriptors = InheritedFileDescriptors(),
                       label: String = #function) throws -> VSMMUServer {
        var configuration = VSMMUServer.Configuration(socketPath: uniqueSocketPath(String(label.prefix { $0.isLetter }.prefix(16))),
                                                      pSMMUs: simulatedPSMMUs(3).map { .simulated($0) })
        configuration.stateDirectory = directory
        configuration.fileDescriptorStore = store
        configuration.inheritedFileDescriptors = inherited
        var quiet = Logger(label: "vsmmud-test")
        quiet.logLevel = .critical
        let server = VSMMUServer(configuration: configuration, logger: quiet)
        try server.start()
        return server
    }

    static func client(_ server: VSMMUServer) throws -> VSMMUClient {
        let client = try VSMMUClient(socketPath: server.configuration.socketPath)
        try client.hello(name: "queue-restart")
        return client
    }

    static let running = SharedQueueLayout.State.running.rawValue
    static let stopped = SharedQueueLayout.State.stopped.rawValue

    @Test func withTheFdStoreTheRestartedDaemonGoesOnFromCONSOnceTheVSMMUIsResumed() throws {
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let store = RecordingStore()
        defer { store.discard() }
        let first = try Self.server(directory, store: store)
        let client = try Self.client(first)
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        let token = try #require(client.resumeTokens[vsmmu])
        let vmm = try TestQueueVMM()
        try client.mapQueueOrFail(vsmmu: vsmmu, vmm)
        let hex = String(vsmmu.rawValue, radix: 16)
        #expect(store.names.isSuperset(of: ["queue-\(hex)-memory", "queue-\(hex)-kick", "queue-\(hex)-call"]))
        vmm.publish([.tlbiNHVA(asid: 1, address: 0x1000), .sync()])
        #expect(vmm.waitForConsumer(2))
        // SIGTERM: the queue stops (the VMM sees STOPPED), its fds stay in the store.
        first.stop()
        #expect(vmm.state == Self.stopped)
        #expect(store.names.contains("queue-\(hex)-memory"))
        // The VMM publishes while no daemon runs.
        vmm.publish([.tlbiNHVA(asid: 1, address: 0x2000), .sync()])

        let second = try Self.server(directory, store: store, inherited: store.inherited())
        defer { second.stop() }
        // Rebuilt and mapped again, but not consumed until the owner resumes it; the sync CONS passed
        // before the restart stays completed.
        #expect(vmm.state == Self.stopped && vmm.consumer == 2)
        let owner = try Self.client(second)
        _ = try owner.resumeVSMMU(vsmmu, token: token)
        #expect(vmm.waitForConsumer(4))
        #expect(vmm.state == Self.running)
        // A MAP_QUEUE of the same memfd after RESUME (what a client does on its own) takes the new eventfds.
        #expect(try owner.mapQueueOrFail(vsmmu: vsmmu, vmm) == 4)
        vmm.publish([.sync()])
        #expect(vmm.waitForConsumer(5))
        // UNMAP_QUEUE takes the names out of the store.
        _ = try owner.unmapQueue(vsmmu: vsmmu)
        #expect(!store.names.contains("queue-\(hex)-memory") && !store.names.contains("queue-\(hex)-call"))
        #expect(vmm.state == Self.stopped)
    }

    @Test func withoutTheFdStoreTheVMMMapsTheSameMemfdAfterResumeAndTheDaemonStartsFromCONS() throws {
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let first = try Self.server(directory, store: nil)
        let client = try Self.client(first)
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        let token = try #require(client.resumeTokens[vsmmu])
        let vmm = try TestQueueVMM()
        try client.mapQueueOrFail(vsmmu: vsmmu, vmm)
        vmm.publish([.tlbiNHVA(asid: 1, address: 0x1000), .sync(), .tlbiNHVA(asid: 3, address: 0x1000), .sync()])
        #expect(vmm.waitForConsumer(4))
        first.stop()
        vmm.publish([.tlbiNHVA(asid: 2, address: 0x3000), .sync()])
        let second = try Self.server(directory, store: nil)
        defer { second.stop() }
        let owner = try Self.client(second)
        _ = try owner.resumeVSMMU(vsmmu, token: token)
        #expect(vmm.consumer == 4 && vmm.state == Self.stopped)
        #expect(try owner.mapQueueOrFail(vsmmu: vsmmu, vmm) == 4)
        #expect(vmm.waitForConsumer(6))
        #expect(try owner.stats(vsmmu: vsmmu).value(.queueSyncs) == 1)
    }

    @Test func theQueueGoesWithItsVSMMUAndItsNamesLeaveTheStore() throws {
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let store = RecordingStore()
        defer { store.discard() }
        let server = try Self.server(directory, store: store)
        defer { server.stop() }
        let client = try Self.client(server)
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        let vmm = try TestQueueVMM()
        try client.mapQueueOrFail(vsmmu: vsmmu, vmm)
        let hex = String(vsmmu.rawValue, radix: 16)
        #expect(store.names.contains("queue-\(hex)-kick"))
        try client.destroyVSMMU(vsmmu)
        #expect(store.names.filter { $0.hasPrefix("queue-") }.isEmpty)
        #expect(vmm.state == Self.stopped)
        #expect(mappingCount(of: vmm.name) == 1)
    }

    @Test(.enabled(if: KillNineRestartTests.enabled, "vsmmud was not built beside the tests"))
    func afterKillNineTheVMMMapsTheSameMemfdAgainAndEverySyncCONSPassedStaysCompleted() throws {
        let socket = uniqueSocketPath("sqkill9")
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let restart = KillNineRestartTests()
        let first = try restart.startDaemon(socket: socket, stateDirectory: directory)
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
        let client = try VSMMUClient(socketPath: socket)
        try client.hello(name: "queue-kill9")
        // The daemon's default pSMMUs: smmu0 holds host devices 0-63.
        let vsmmu = try client.createVSMMU(name: "kill9")
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 0)
        try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: 0, streamID: 0x8)
        _ = try client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: s1STE(), contextDescriptors: [.valid(asid: 1)])
        let token = try #require(client.resumeTokens[vsmmu])
        let vmm = try TestQueueVMM(log2Entries: 8)
        try client.mapQueueOrFail(vsmmu: vsmmu, vmm)
        for i in 0..<300 {
            vmm.publish([.tlbiNHVA(asid: 1, address: UInt64(i) << 12), .sync()])
            #expect(vmm.waitForConsumer(vmm.producer))
        }
        let before = vmm.consumer
        // More published, and the daemon killed without waiting for them.
        vmm.publish([.tlbiNHVA(asid: 1, address: 0x1000), .sync(), .tlbiNHVA(asid: 1, address: 0x2000), .sync()])
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        let completed = vmm.consumer
        #expect(vmm.geometry.distance(from: before, to: completed) <= 4) // never behind what was completed

        let second = try restart.startDaemon(socket: socket, stateDirectory: directory)
        defer { if second.isRunning { kill(second.processIdentifier, SIGKILL) } }
        let owner = try VSMMUClient(socketPath: socket)
        try owner.hello(name: "queue-kill9-owner")
        _ = try owner.resumeVSMMU(vsmmu, token: token)
        // CONS is in the VMM's memory: the new daemon starts from it, never from 0.
        #expect(try owner.mapQueueOrFail(vsmmu: vsmmu, vmm) == completed)
        #expect(vmm.waitForConsumer(vmm.producer))
        vmm.publish([.tlbiNHVA(asid: 1, address: 0x5000), .sync()])
        #expect(vmm.waitForConsumer(vmm.producer))
        #expect(try owner.stats(vsmmu: vsmmu).value(.queueErrors) == 0)
    }
}
