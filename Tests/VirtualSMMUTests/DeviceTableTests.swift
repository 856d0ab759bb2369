import Testing
import SMMUv3
@testable import VirtualSMMU
import VSMMUTestSupport

@Suite struct DeviceTableTests {
    @Test func aStreamIDIsRegisteredOnceOnTheWholeVSMMU() throws {
        var v = try vsmmu(pSMMUs: ["a", "b"], sids: [1, 2])
        #expect(throws: VSMMUError.streamIDInUse(streamID: 1, viommu: v0, hostDeviceID: 100)) {
            try v.setDeviceID(viommu: v1, hostDeviceID: 300, streamID: 1)
        }
    }

    @Test func aHostDeviceIsRegisteredOnce() throws {
        var v = try vsmmu(pSMMUs: ["a"], sids: [1])
        #expect(throws: VSMMUError.deviceAlreadyRegistered(hostDeviceID: 100, streamID: 1)) {
            try v.setDeviceID(viommu: v0, hostDeviceID: 100, streamID: 9)
        }
    }

    @Test func registeringOnAnUnknownViommuFails() throws {
        var v = VSMMU()
        #expect(throws: VSMMUError.unknownViommu(v2)) { try v.setDeviceID(viommu: v2, hostDeviceID: 1, streamID: 1) }
    }

    @Test func onePSMMUGetsOneViommuPerVSMMU() throws {
        var v = VSMMU()
        try v.attachViommu(pSMMU: "smmu0")
        #expect(throws: VSMMUError.pSMMUAlreadyAttached(pSMMU: "smmu0", viommu: v0)) { try v.attachViommu(pSMMU: "smmu0") }
    }

    @Test func aVSMMUFrontsAtMost64Viommus() throws {
        var v = VSMMU()
        for i in 0..<64 { try v.attachViommu(pSMMU: "p\(i)") }
        #expect(throws: VSMMUError.tooManyViommus(limit: 64)) { try v.attachViommu(pSMMU: "p64") }
    }

    @Test func aViommuWithDevicesCannotBeDetachedAndAFreedIndexIsReused() throws {
        var v = try vsmmu(pSMMUs: ["a", "b"], sids: [1, 2])
        #expect(throws: VSMMUError.viommuInUse(viommu: v0, streamIDs: [1])) { try v.detachViommu(v0) }
        try v.unsetDeviceID(streamID: 1)
        try v.detachViommu(v0)
        #expect(v.attachedViommus == ViommuSet([v1]))
        #expect(try v.attachViommu(pSMMU: "c") == v0)
    }

    @Test func unregisteringForgetsTheDeviceAndItsRouting() throws {
        var v = try vsmmu(pSMMUs: ["a"], sids: [0x42])
        try v.link(streamID: 0x42, ste: s1STE(), contextDescriptors: [.valid(asid: 1)])
        let removed = try v.unsetDeviceID(streamID: 0x42)
        #expect(removed != nil)
        #expect(v.devices.isEmpty && v.hwpts.isEmpty)
        #expect(v.viommu(of: 0x42) == nil)
        // The host device can register again, under another StreamID.
        try v.setDeviceID(viommu: v0, hostDeviceID: 100, streamID: 0x43)
        #expect(v.viommu(of: 0x43) == v0)
    }

    @Test func unknownStreamIDsAreRefusedOnEveryControlOperation() throws {
        var v = try vsmmu(pSMMUs: ["a"], sids: [1])
        #expect(throws: VSMMUError.unknownStreamID(7)) { try v.link(streamID: 7, ste: s1STE(), contextDescriptors: []) }
        #expect(throws: VSMMUError.unknownStreamID(7)) { try v.unlink(streamID: 7) }
        #expect(throws: VSMMUError.unknownStreamID(7)) { try v.unsetDeviceID(streamID: 7) }
        #expect(throws: VSMMUError.unknownStreamID(7)) {
            try v.updateContextDescriptor(streamID: 7, substreamID: 0, .valid(asid: 1))
        }
    }

    @Test func aVSTEBreakingTheKernelsNestingRulesIsRefusedAndTheOldLinkKept() throws {
        var v = try vsmmu(pSMMUs: ["a"], sids: [1])
        try v.link(streamID: 1, ste: s1STE(), contextDescriptors: [.valid(asid: 4)])
        var bad = s1STE()
        bad.config = .nested
        #expect(throws: VSMMUError.invalidSTE(streamID: 1, .disallowedConfig(.nested))) {
            try v.link(streamID: 1, ste: bad, contextDescriptors: [.valid(asid: 9)])
        }
        var eats = s1STE()
        eats.eats = 2
        #expect(throws: VSMMUError.invalidSTE(streamID: 1, .disallowedEATS(2))) {
            try v.link(streamID: 1, ste: eats, contextDescriptors: [])
        }
        #expect(v.asidIndex.liveViommus(of: 4) == ViommuSet([v0]))
        #expect(v.asidIndex.liveViommus(of: 9).isEmpty)
    }

    @Test func moreCDsThanS1CDMaxAllowsAreRefused() throws {
        var v = try vsmmu(pSMMUs: ["a"], sids: [1])
        #expect(throws: VSMMUError.tooManyContextDescriptors(streamID: 1, given: 3, limit: 2)) {
            try v.link(streamID: 1, ste: s1STE(cdMax: 1), contextDescriptors: [.valid(asid: 1), .valid(asid: 2), .valid(asid: 3)])
        }
        #expect(throws: VSMMUError.substreamOutOfRange(streamID: 1, substreamID: 2, limit: 2)) {
            try v.link(streamID: 1, ste: s1STE(cdMax: 1), contextDescriptors: [.valid(asid: 1)])
            try v.updateContextDescriptor(streamID: 1, substreamID: 2, .valid(asid: 2))
        }
    }

    @Test func cdUpdateNeedsATranslatingSTE() throws {
        var v = try vsmmu(pSMMUs: ["a"], sids: [1])
        var bypass = StreamTableEntry()
        bypass.isValid = true
        bypass.config = .bypass
        try v.link(streamID: 1, ste: bypass, contextDescriptors: [])
        #expect(throws: VSMMUError.notTranslating(streamID: 1)) {
            try v.updateContextDescriptor(streamID: 1, substreamID: 0, .valid(asid: 1))
        }
    }

    @Test func everySubstreamsValidCDContributesItsASIDAndInvalidCDsNone() throws {
        var v = try vsmmu(pSMMUs: ["a"], sids: [1])
        var invalid = ContextDescriptor.valid(asid: 30)
        invalid.isValid = false
        try v.link(streamID: 1, ste: s1STE(cdMax: 2),
                   contextDescriptors: [.valid(asid: 10), invalid, .valid(asid: 20), .valid(asid: 10)])
        let hwpt = try #require(v.devices[1]?.hwpt.flatMap { v.hwpts[$0] })
        #expect(hwpt.asids == [10, 20])
        #expect(v.asidIndex.liveViommus(of: 30).isEmpty)
    }

    @Test func relinkingTheSameSTEKeepsTheHWPTAndOtherS1WordsMakeANewOne() throws {
        var v = try vsmmu(pSMMUs: ["a"], sids: [1])
        let first = try v.link(streamID: 1, ste: s1STE(), contextDescriptors: [.valid(asid: 1)])
        #expect(first.isNew && first.removed == nil)
        let same = try v.link(streamID: 1, ste: s1STE(), contextDescriptors: [.valid(asid: 2)])
        #expect(!same.isNew && same.current == first.current && same.removed == nil)
        let other = try v.link(streamID: 1, ste: s1STE(cdTable: 0x5000), contextDescriptors: [.valid(asid: 2)])
        #expect(other.isNew && other.removed == first.current && other.current != first.current)
        #expect(v.hwpts.count == 1)
    }

    @Test func streamTableSurvivesHeavyChurn() throws {
        // Many registrations and removals: growth and backward-shift deletion keep every lookup right.
        var v = VSMMU()
        for i in 0..<4 { try v.attachViommu(pSMMU: "p\(i)") }
        var registered: [StreamID: ViommuIndex] = [:]
        var rng = SplitMix64(seed: 0x5EED)
        for step in 0..<20_000 {
            let sid = StreamID.random(in: 0..<3000, using: &rng)
            if let _ = registered[sid] {
                try v.unsetDeviceID(streamID: sid)
                registered[sid] = nil
            } else {
                let viommu = ViommuIndex(Int(sid) % 4)
                try v.setDeviceID(viommu: viommu, hostDeviceID: sid, streamID: sid)
                registered[sid] = viommu
            }
            if step % 1000 == 0 {
                for probe in StreamID(0)..<3000 { #expect(v.viommu(of: probe) == registered[probe]) }
            }
        }
        for probe in StreamID(0)..<3000 { #expect(v.viommu(of: probe) == registered[probe]) }
    }
}
