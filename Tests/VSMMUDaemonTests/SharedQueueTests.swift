import CSocketShims
import PSMMU
import SharedQueue
import SMMUv3
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's side of the shared command queue (PROTOCOL.md §5.15, §5.16, §8), the test playing the VMM.
@Suite struct SharedQueueTests {
    @Test func aMappedQueueConsumesTLBINHVAAndCMDSYNCAndCONSPassesTheSync() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        let vmm = try TestQueueVMM()
        #expect(try client.mapQueueOrFail(vsmmu: vsmmu, vmm) == 0)
        #expect(vmm.state == SharedQueueLayout.State.running.rawValue)
        vmm.publish([.tlbiNHVA(asid: 1, address: 0x1000), .sync()])
        #expect(vmm.waitForConsumer(2))
        // ASID 1 is the device behind viommu 1 (smmu1): only that pSMMU got the TLBI.
        #expect(t.pSMMUs.map { $0.counters.commandsReceived } == [0, 1, 0])
        let stats = try client.stats(vsmmu: vsmmu)
        #expect(stats.value(.syncs) == 1)
        #expect(stats.value(.invalidateRequests) == 0)
    }
}
