import Testing
import SMMUv3
@testable import VirtualSMMU

/// The seed discussion's drawing: three devices behind three pSMMUs, one viommu each, one vSMMU.
@Suite struct SeedScenarioTests {
    let sids: [StreamID] = [0x8, 0x10, 0x18]

    func seeded() throws -> VSMMU {
        var v = try vsmmu(pSMMUs: ["pSMMU0", "pSMMU1", "pSMMU2"], sids: sids)
        // ASIDs as in the Linux trace: 0x8 → 3, 0x10 → 1, 0x18 → 2.
        try v.link(streamID: 0x8, ste: s1STE(cdTable: 0x4380_4000), contextDescriptors: [.valid(asid: 3)])
        try v.link(streamID: 0x10, ste: s1STE(cdTable: 0x43ab_c000), contextDescriptors: [.valid(asid: 1)])
        try v.link(streamID: 0x18, ste: s1STE(cdTable: 0x4395_0000), contextDescriptors: [.valid(asid: 2)])
        return v
    }

    @Test func deviceCacheInvalidationsReachExactlyTheDevicesViommu() throws {
        var v = try seeded()
        let out = v.routed([
            .atcInv(streamID: 0x10), .cfgiCD(streamID: 0x18, substreamID: 0), .cfgiCDAll(streamID: 0x8),
        ])
        #expect(out.errors.isEmpty)
        #expect(out.receivers(of: 0) == ViommuSet([v1]))
        #expect(out.receivers(of: 1) == ViommuSet([v2]))
        #expect(out.receivers(of: 2) == ViommuSet([v0]))
        #expect(v.counters.deviceRouted == 3)
    }

    @Test func tlbiWithoutASIDIsBroadcastToAllThree() throws {
        var v = try seeded()
        let out = v.routed([.tlbiNHAll(), .tlbiNHVAA(address: 0x1000), .tlbiNSNHAll(), .tlbiS12VMAll(vmid: 7)])
        for i in 0..<4 { #expect(out.receivers(of: i) == ViommuSet([v0, v1, v2])) }
        // S12_VMALL travels as NH_ALL: the kernel refuses S2 TLBIs on a viommu.
        #expect(out.commands(for: v2)[3] == .tlbiNHAll(vmid: 7))
        #expect(v.counters.broadcast == 4)
        #expect(v.counters.deliveries == 12)
    }

    @Test func tlbiWithASIDReachesOnlyTheViommusWhoseHWPTsCarryIt() throws {
        var v = try seeded()
        let out = v.routed([
            .tlbiNHVA(asid: 3, address: 0x8000_0000), .tlbiNHASID(asid: 1), .tlbiNHVA(asid: 2, address: 0x1000),
            .tlbiNHASID(asid: 99),
        ])
        #expect(out.receivers(of: 0) == ViommuSet([v0]))
        #expect(out.receivers(of: 1) == ViommuSet([v1]))
        #expect(out.receivers(of: 2) == ViommuSet([v2]))
        #expect(out.receivers(of: 3).isEmpty)
        #expect(v.counters.asidWithoutTarget == 1)
        #expect(v.counters.broadcastsAvoided == 2 + 2 + 2 + 3)
    }

    @Test func anASIDSharedByTwoDevicesReachesBothTheirViommus() throws {
        var v = try seeded()
        try v.link(streamID: 0x18, ste: s1STE(cdTable: 0x4395_0000), contextDescriptors: [.valid(asid: 3)])
        let out = v.routed([.tlbiNHASID(asid: 3)])
        #expect(out.receivers(of: 0) == ViommuSet([v0, v2]))
    }

    @Test func cdRewrittenWithNewASIDMovesRoutingAndOldASIDStillReachesOldPSMMUUntilInvalidated() throws {
        var v = try seeded()
        // The guest gives device 0x10 a new address space: its CD now carries ASID 7 instead of 1.
        try v.updateContextDescriptor(streamID: 0x10, substreamID: 0, .valid(asid: 7, ttb0: 0x4396_c000))

        var out = v.routed([.tlbiNHASID(asid: 7)])
        #expect(out.receivers(of: 0) == ViommuSet([v1]))
        #expect(v.asidIndex.liveViommus(of: 1).isEmpty)
        #expect(v.asidIndex.retiringViommus(of: 1) == ViommuSet([v1]))

        // pSMMU1 may still cache ASID 1 translations: a by-VA TLBI for ASID 1 must still reach it …
        out = v.routed([.tlbiNHVA(asid: 1, address: 0x4000), .sync()])
        #expect(out.receivers(of: 0) == ViommuSet([v1]))
        #expect(v.counters.retiringDeliveries == 1)
        // … and so must the TLBI_NH_ASID that finally invalidates it, once.
        out = v.routed([.tlbiNHASID(asid: 1), .sync()])
        #expect(out.receivers(of: 0) == ViommuSet([v1]))
        #expect(v.asidIndex.targets(of: 1).isEmpty)
        // Afterwards ASID 1 reaches nobody.
        out = v.routed([.tlbiNHASID(asid: 1)])
        #expect(out.receivers(of: 0).isEmpty)
    }

    @Test func syncCoversExactlyTheViommusThatReceivedCommandsSinceThePreviousSync() throws {
        var v = try seeded()
        let out = v.routed([
            .tlbiNHVA(asid: 3, address: 0x1000), .atcInv(streamID: 0x10), .sync(),
            .tlbiNHASID(asid: 2), .sync(),
            .sync(),
            .tlbiNHAll(), .sync(completion: .irq),
        ])
        #expect(out.syncPoints.map(\.index) == [2, 4, 5, 7])
        #expect(Array(out.fences(of: out.syncPoints[0])) == [.init(viommu: v0, end: 1), .init(viommu: v1, end: 1)])
        #expect(Array(out.fences(of: out.syncPoints[1])) == [.init(viommu: v2, end: 1)])
        #expect(out.fences(of: out.syncPoints[2]).isEmpty)
        #expect(Array(out.fences(of: out.syncPoints[3])) == [
            .init(viommu: v0, end: 2), .init(viommu: v1, end: 2), .init(viommu: v2, end: 2),
        ])
        #expect(out.syncPoints[3].command.syncCompletion == .irq)
        #expect(out.unsynced.isEmpty)
        #expect(out.consumed == 8)
    }
}
