import PSMMU
import SMMUv3
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

/// Issue 12 §7: a viommu's row counts what that viommu's queue handed to its backend; the pSMMU's totals
/// come as pSMMU entries.
@Suite struct StatisticsScopeTests {
    @Test func viommuRowsCountOnlyTheirOwnBackendWorkAndPSMMUEntriesTheSumWhenTwoVSMMUsShareAPSMMU() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let first = try client.createVSMMU(name: "vm-a")
        let second = try client.createVSMMU(name: "vm-b")
        _ = try client.attachViommu(vsmmu: first, pSMMU: "smmu0", hostDeviceID: 0)
        _ = try client.attachViommu(vsmmu: second, pSMMU: "smmu0", hostDeviceID: 1)

        // Three replays on the first vSMMU, one on the second, on the same pSMMU.
        let replay: [Command] = [.tlbiNHAll(), .tlbiNHAll(), .tlbiNHAll(), .sync()]
        for _ in 0..<3 { #expect(try client.invalidate(vsmmu: first, commands: replay).failure == nil) }
        #expect(try client.invalidate(vsmmu: second, commands: [.tlbiNHAll(), .sync()]).failure == nil)

        let a = try client.stats(vsmmu: first)
        let b = try client.stats(vsmmu: second)
        for stats in [a, b] {
            let delivered = stats.value(.viommuCommandsDelivered, viommu: 0)
            #expect(stats.value(.viommuBackendCommands, viommu: 0) == delivered)
            #expect(stats.value(.viommuBackendCompleted, viommu: 0) == delivered)
            #expect(stats.value(.viommuBackendFailed, viommu: 0) == 0)
            #expect((stats.value(.viommuBackendCalls, viommu: 0) ?? 0) >= 1)
        }
        #expect(a.value(.viommuBackendCommands, viommu: 0) == 9)
        #expect(b.value(.viommuBackendCommands, viommu: 0) == 1)
        // The pSMMU backend itself saw both vSMMUs' work, and both replies' pSMMU entries say so.
        let backend = t.pSMMUs[0].counters
        #expect(backend.commandsReceived == 10)
        #expect(backend.invalidateCalls
                == (a.value(.viommuBackendCalls, viommu: 0) ?? 0) + (b.value(.viommuBackendCalls, viommu: 0) ?? 0))
        for stats in [a, b] {
            #expect(stats.value(.psmmuBackendCommands, viommu: 0) == 10)
            #expect(stats.value(.psmmuBackendCompleted, viommu: 0) == 10)
            #expect(stats.value(.psmmuBackendCalls, viommu: 0) == backend.invalidateCalls)
            #expect(stats.value(.psmmuBackendFailed, viommu: 0) == 0)
            #expect(stats.value(.psmmuEvents, viommu: 0) == 0)
        }
    }
}
