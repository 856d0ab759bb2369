import PSMMU
import SMMUv3
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The seed's drawing through the socket: three devices behind three pSMMUs, one viommu each.
@Suite struct ServerScenarioTests {
    /// Builds the seed's vSMMU: viommu i on smmu i, vSID sids[i] for host device 16·i, its STE linked with
    /// one CD of ASID asids[i].
    static func seedVSMMU(_ client: VSMMUClient, sids: [StreamID] = [0x8, 0x10, 0x18],
                          asids: [ASID] = [3, 1, 2]) throws -> VSMMUID {
        let vsmmu = try client.createVSMMU(name: "vm-seed")
        for i in 0..<sids.count {
            let attached = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu\(i)", hostDeviceID: UInt32(16 * i))
            #expect(attached.viommu == UInt32(i))
            try client.setDeviceID(vsmmu: vsmmu, viommu: attached.viommu, hostDeviceID: UInt32(16 * i), streamID: sids[i])
            let linked = try client.linkSTE(vsmmu: vsmmu, streamID: sids[i], ste: s1STE(cdTable: 0x4380_0000 + UInt64(i) << 12),
                                            contextDescriptors: [.valid(asid: asids[i], ttb0: 0x5000_0000 + UInt64(i) << 12)])
            #expect(linked.s1HWPT != nil && linked.isNew)
        }
        return vsmmu
    }

    @Test func seedScenarioRoutesASIDCommandsToOneViommuAndBroadcastsTheRest() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try Self.seedVSMMU(client)

        // TLBI_NH_ASID for ASID 1 reaches only viommu1 (the virtio-net device's pSMMU).
        let asidReply = try client.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 1), .sync()])
        #expect(asidReply == InvalidateReply(consumed: 2, syncsCompleted: 1))
        // TLBI_NH_ALL has no ASID: broadcast to all three.
        let allReply = try client.invalidate(vsmmu: vsmmu, commands: [.tlbiNHAll(), .sync()])
        #expect(allReply == InvalidateReply(consumed: 2, syncsCompleted: 1))
        // A device command goes to its device's viommu.
        let atcReply = try client.invalidate(vsmmu: vsmmu, commands: [.cfgiCD(streamID: 0x18), .sync()])
        #expect(atcReply.failure == nil)

        #expect(t.pSMMUs.map { $0.counters.commandsReceived } == [1, 2, 2])
        let stats = try client.stats(vsmmu: vsmmu)
        #expect(stats.value(.asidRouted) == 1)
        #expect(stats.value(.broadcast) == 1)
        #expect(stats.value(.broadcastsAvoided) == 2)
        #expect(stats.value(.deviceRouted) == 1)
        #expect(stats.value(.syncs) == 3)
        #expect(stats.value(.invalidateRequests) == 3)
        #expect(stats.value(.syncLatencyCount) == 3)
        let buckets = stats.entries.filter { $0.key.histogramBucket != nil && $0.viommu == nil }.map(\.value).reduce(0, +)
        #expect(buckets == 3)
        #expect(stats.value(.viommuBackendCommands, viommu: 1) == 2)
        #expect(stats.value(.viommuDevices, viommu: 2) == 1)
        // viommu1 took its two commands in two backend calls of one command, never more than one queued.
        #expect(stats.value(.viommuRingHighWater, viommu: 1) == 1)
        #expect(stats.value(.viommuBatchSizeLog2(bucket: 0), viommu: 1) == 2)
        #expect(stats.value(.viommuBatchSizeLog2(bucket: 1), viommu: 1) == nil)

        let devices = try client.list(.devices, vsmmu: vsmmu)
        guard case .devices(let entries) = devices.entries else { Issue.record("not a device list"); return }
        #expect(entries.map(\.streamID) == [0x8, 0x10, 0x18])
        #expect(entries.allSatisfy { $0.steLinked && $0.s1HWPT != nil })
        let asids = try client.list(.asids)
        guard case .asids(let asidEntries) = asids.entries else { Issue.record("not an ASID list"); return }
        #expect(asidEntries.map(\.asid) == [1, 2, 3])
        #expect(asidEntries.map(\.targetMask) == [0b010, 0b100, 0b001])

        let health = try client.health()
        #expect(health.status == .ok && health.vsmmuCount == 1)
        #expect(health.pSMMUs.map(\.viommuCount) == [1, 1, 1])
    }

    @Test func destroyingAVSMMUUnregistersEverythingInThePSMMUs() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try Self.seedVSMMU(client)
        try client.destroyVSMMU(vsmmu)
        #expect(t.server.vsmmuCount == 0)
        // The host devices are free again: a new vSMMU can register them.
        let again = try Self.seedVSMMU(client)
        #expect(again != vsmmu)
        #expect(try client.list(.vsmmus).total == 1)
    }

    @Test func controlPathRequestsReplyAsSpecified() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try Self.seedVSMMU(client)
        // Relink with the same STE and other CDs keeps the HWPT; UPDATE_CD too.
        let relinked = try client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: s1STE(cdTable: 0x4380_0000),
                                          contextDescriptors: [.valid(asid: 7)])
        #expect(relinked.s1HWPT != nil && !relinked.isNew)
        let updated = try client.updateCD(vsmmu: vsmmu, streamID: 0x8, substreamID: 0, .valid(asid: 9))
        #expect(updated.s1HWPT == relinked.s1HWPT && !updated.isNew)
        try client.unlinkSTE(vsmmu: vsmmu, streamID: 0x8)
        try client.unsetDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: 0, streamID: 0x8)
        try client.detachViommu(vsmmu: vsmmu, viommu: 0)
        #expect(try client.list(.viommus, vsmmu: vsmmu).total == 2)
    }
}
