import Testing
import SMMUv3
@testable import VirtualSMMU

/// The retirement rule: an ASID that leaves a viommu keeps reaching it until an invalidation covering
/// the ASID has been routed there.
@Suite struct RetirementTests {
    func twoDevices() throws -> VSMMU {
        var v = try vsmmu(pSMMUs: ["a", "b"], sids: [1, 2])
        try v.link(streamID: 1, ste: s1STE(), contextDescriptors: [.valid(asid: 5)])
        try v.link(streamID: 2, ste: s1STE(), contextDescriptors: [.valid(asid: 6)])
        return v
    }

    @Test(arguments: ["relink", "cdRewrite", "unlink", "unregister", "invalidSTE", "cdInvalid"])
    func everyWayAnASIDLeavesAViommuStartsItsRetirement(way: String) throws {
        var v = try twoDevices()
        switch way {
        case "relink": try v.link(streamID: 1, ste: s1STE(cdTable: 0x9000), contextDescriptors: [.valid(asid: 8)])
        case "cdRewrite": try v.updateContextDescriptor(streamID: 1, substreamID: 0, .valid(asid: 8))
        case "unlink": try v.unlink(streamID: 1)
        case "unregister": try v.unsetDeviceID(streamID: 1)
        case "invalidSTE": try v.link(streamID: 1, ste: StreamTableEntry(), contextDescriptors: [])
        default: try v.updateContextDescriptor(streamID: 1, substreamID: 0, ContextDescriptor())
        }
        #expect(v.asidIndex.liveViommus(of: 5).isEmpty)
        #expect(v.asidIndex.retiringViommus(of: 5) == ViommuSet([v0]))
        #expect(v.asidIndex.targets(of: 5) == ViommuSet([v0]))
        #expect(v.routed([.tlbiNHVA(asid: 5, address: 0)]).receivers(of: 0) == ViommuSet([v0]))
    }

    @Test func tlbiNHASIDEndsTheRetirementButTLBINHVADoesNot() throws {
        var v = try twoDevices()
        try v.unlink(streamID: 1)
        _ = v.routed([.tlbiNHVA(asid: 5, address: 0x1000, range: TLBIRange(num: 3, scale: 1, granule: 1))])
        #expect(v.asidIndex.retiringViommus(of: 5) == ViommuSet([v0]))
        _ = v.routed([.tlbiNHASID(asid: 5)])
        #expect(v.asidIndex.targets(of: 5).isEmpty)
        #expect(v.asidIndex.retiringASIDs.isEmpty)
        #expect(v.counters.retirementsEnded == 1)
    }

    @Test(arguments: [Command.tlbiNHAll(), .tlbiNSNHAll(), .tlbiS12VMAll()])
    func broadcastInvalidateAllEndsEveryRetirement(command: Command) throws {
        var v = try twoDevices()
        try v.unlink(streamID: 1)
        try v.unlink(streamID: 2)
        #expect(v.asidIndex.retiringASIDs == [5, 6])
        _ = v.routed([command])
        #expect(v.asidIndex.retiringASIDs.isEmpty)
        #expect(v.asidIndex.targets(of: 5).isEmpty && v.asidIndex.targets(of: 6).isEmpty)
        #expect(v.counters.retirementsEnded == 2)
    }

    @Test func tlbiNHVAAEndsNoRetirement() throws {
        var v = try twoDevices()
        try v.unlink(streamID: 1)
        _ = v.routed([.tlbiNHVAA(address: 0)])
        #expect(v.asidIndex.retiringViommus(of: 5) == ViommuSet([v0]))
    }

    @Test func anASIDKeptAcrossARelinkNeverRetires() throws {
        var v = try twoDevices()
        try v.link(streamID: 1, ste: s1STE(cdTable: 0x7000), contextDescriptors: [.valid(asid: 5, ttb0: 0x1000)])
        #expect(v.asidIndex.retiringASIDs.isEmpty)
        #expect(v.asidIndex.liveViommus(of: 5) == ViommuSet([v0]))
    }

    @Test func anASIDThatComesBackIsLiveNotRetiring() throws {
        var v = try twoDevices()
        try v.unlink(streamID: 1)
        try v.link(streamID: 1, ste: s1STE(), contextDescriptors: [.valid(asid: 5)])
        #expect(v.asidIndex.retiringASIDs.isEmpty)
        #expect(v.asidIndex.liveViommus(of: 5) == ViommuSet([v0]))
    }

    @Test func anASIDStillCarriedByAnotherHWPTOnTheSameViommuDoesNotRetire() throws {
        var v = try twoDevices()
        try v.setDeviceID(viommu: v0, hostDeviceID: 200, streamID: 3)
        try v.link(streamID: 3, ste: s1STE(), contextDescriptors: [.valid(asid: 5)])
        try v.unlink(streamID: 1)
        #expect(v.asidIndex.liveViommus(of: 5) == ViommuSet([v0]))
        #expect(v.asidIndex.retiringViommus(of: 5).isEmpty)
        #expect(v.asidIndex.hwpts(carrying: 5).count == 1)
    }

    @Test func retirementIsPerViommu() throws {
        var v = try twoDevices()
        try v.link(streamID: 2, ste: s1STE(), contextDescriptors: [.valid(asid: 5)])
        try v.unlink(streamID: 1)
        // ASID 5 lives on viommu 1 and retires from viommu 0: both receive its TLBIs.
        #expect(v.asidIndex.targets(of: 5) == ViommuSet([v0, v1]))
        _ = v.routed([.tlbiNHASID(asid: 5)])
        #expect(v.asidIndex.targets(of: 5) == ViommuSet([v1]))
    }

    @Test func detachingAViommuClearsWhatRetiresFromIt() throws {
        var v = try twoDevices()
        try v.unsetDeviceID(streamID: 1)
        #expect(v.asidIndex.retiringViommus(of: 5) == ViommuSet([v0]))
        try v.detachViommu(v0)
        #expect(v.asidIndex.targets(of: 5).isEmpty)
        #expect(v.routed([.tlbiNHASID(asid: 5)]).deliveryCount == 0)
    }
}
