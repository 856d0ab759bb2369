import PSMMU
import SMMUv3
import Testing

/// `touch`: device DMA filling the caches, faults and their events with the vSID substituted.
@Suite struct DeviceDMATests {
    let smmu = makeSMMU()

    /// A viommu with device 1 as vSID 0x10, attached to a nested HWPT of the given vSTE and CDs.
    func guest(_ ste: StreamTableEntry, _ cds: [ContextDescriptor]) throws -> ViommuHandle {
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let vdevice = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x10)
        let hwpt = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: ste, contextDescriptors: cds)
        try smmu.attachDevice(vdevice, to: .nested(hwpt))
        return viommu
    }

    @Test func aMissWalksFillsTheConfigCacheAndATLBEntryTaggedWithTheViommusVMIDAndTheCDsASID() throws {
        let viommu = try guest(s1STE(), [.valid(asid: 42)])
        let vmid = try #require(smmu.vmid(of: viommu))
        let entry = TLBEntry(vmid: vmid, asid: 42, address: 0x20_0000, size: 0x20_0000)

        #expect(try smmu.touch(hostDeviceID: 1, address: 0x21_0000, size: 0x20_0000) == .tlbFill(entry))
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x3F_F000) == .tlbHit(entry))
        #expect(smmu.isCached(viommu: viommu, asid: 42, address: 0x20_0000))
        #expect(!smmu.isCached(viommu: viommu, asid: 42, address: 0x40_0000))
        #expect(smmu.cachedSTE(hostDeviceID: 1) == s1STE())
        #expect(smmu.cachedCDs(hostDeviceID: 1) == [0: .valid(asid: 42)])
        let counters = smmu.simulationCounters
        #expect((counters.dmaAccesses, counters.tlbFills, counters.tlbHits) == (2, 1, 1))
        #expect((counters.steCacheFills, counters.steCacheHits, counters.cdCacheFills, counters.cdCacheHits) == (1, 1, 1, 1))
    }

    @Test func anInvalidCDFaultsWithCBadCDAndTheViommuGetsTheEventWithTheVSID() throws {
        let viommu = try guest(s1STE(cdMax: 1), [.valid(asid: 1), ContextDescriptor()])

        let outcome = try smmu.touch(hostDeviceID: 1, substreamID: 1, address: 0x5000)

        let physical = try #require(outcome.event)
        #expect(physical.id == .badCD)
        #expect(physical.streamID == 0x101)
        #expect(physical.substreamID == 1)
        let events = smmu.takeEvents(viommu: viommu)
        #expect(events.count == 1)
        #expect(events.first?.id == .badCD)
        #expect(events.first?.streamID == 0x10)
        #expect(events.first?.substreamID == 1)
        #expect(smmu.cachedCDs(hostDeviceID: 1).isEmpty, "an invalid CD is not cached")
        #expect(smmu.takeEvents(viommu: viommu).isEmpty, "taking events empties the queue")
        #expect(smmu.counters.events == 1)
    }

    @Test func aMissOnAnUnmappedAddressIsAnFTranslationFaultWithTheInputAddress() throws {
        let viommu = try guest(s1STE(), [.valid(asid: 1)])

        let outcome = try smmu.touch(hostDeviceID: 1, address: 0xABC000, mapped: false)

        #expect(outcome.event?.id == .translation)
        #expect(outcome.event?.inputAddress == 0xABC000)
        #expect(smmu.takeEvents(viommu: viommu).map(\.streamID) == [0x10])
        #expect(smmu.tlbEntryCount == 0)
    }

    @Test func aStaleEntryTranslatesAnUnmappedAddressUntilItIsInvalidated() throws {
        let viommu = try guest(s1STE(), [.valid(asid: 1)])
        try smmu.touch(hostDeviceID: 1, address: 0x1000)

        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000, mapped: false).tlbEntry != nil)

        let commands = [Command.tlbiNHVA(asid: 1, address: 0x1000)]
        _ = commands.withUnsafeBufferPointer { smmu.invalidate(viommu: viommu, commands: $0) }
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000, mapped: false).event?.id == .translation)
    }

    @Test func withoutASubstreamIDAndS1DSSTerminateTheStreamIsDisabled() throws {
        _ = try guest(s1STE(cdMax: 2, dss: .terminate), [.valid(asid: 1)])
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000).event?.id == .streamDisabled)
    }

    @Test func substreamZeroIsReservedWhenS1DSSSelectsCD0() throws {
        _ = try guest(s1STE(cdMax: 2, dss: .substream0), [.valid(asid: 1)])
        #expect(try smmu.touch(hostDeviceID: 1, substreamID: 0, address: 0x1000).event?.id == .streamDisabled)
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000).tlbEntry?.asid == 1)
    }

    @Test func withoutASubstreamIDAndS1DSSBypassStage1IsBypassed() throws {
        _ = try guest(s1STE(cdMax: 2, dss: .bypass), [.valid(asid: 1)])
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .bypassed)
    }

    @Test func aSubstreamIDOutOfTheCDTableIsCBadSubstreamIDWithTheSSID() throws {
        let viommu = try guest(s1STE(cdMax: 1), [.valid(asid: 1), .valid(asid: 2)])

        let event = try #require(try smmu.touch(hostDeviceID: 1, substreamID: 2, address: 0x1000).event)

        #expect(event.id == .badSubstreamID)
        #expect(event[EventRecord.Field.substreamID] == 2)
        #expect(smmu.takeEvents(viommu: viommu).first?.streamID == 0x10)
    }

    @Test func aSubstreamIDOnAStreamWithoutSubstreamsIsCBadSubstreamID() throws {
        _ = try guest(s1STE(cdMax: 0), [.valid(asid: 1)])
        #expect(try smmu.touch(hostDeviceID: 1, substreamID: 1, address: 0x1000).event?.id == .badSubstreamID)
    }

    @Test func aReservedS1FmtIsCBadSTE() throws {
        _ = try guest(s1STE(cdMax: 2, format: S1Format(rawValue: 3)), [.valid(asid: 1)])

        let event = try #require(try smmu.touch(hostDeviceID: 1, substreamID: 1, address: 0x1000).event)

        #expect(event.id == .badSTE)
        #expect(event.streamID == 0x101)
        #expect(event.substreamID == 1, "C_BAD_STE records SSV and the SubstreamID (SMMUv3 §7.3.4)")
        #expect(event.inputAddress == 0)
    }

    @Test func aBypassVSTEBypassesStage1AndCachesNothingInTheTLB() throws {
        var ste = StreamTableEntry()
        ste.isValid = true
        ste.config = .bypass
        _ = try guest(ste, [])

        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .bypassed)
        #expect(smmu.tlbEntryCount == 0)
    }

    @Test func anATSRequestOnAnSTEWithoutEATSIsFBadATSTReqWhichArmSmmuHandleEventDoesNotForward() throws {
        let viommu = try guest(s1STE(eats: 0), [.valid(asid: 1)])

        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000, throughATS: true).event?.id == .badATSTranslationRequest)
        // F_BAD_ATS_TREQ is not among the types `arm_smmu_handle_event` takes: the SMMU recorded it, the
        // vEVENTQ never sees it.
        #expect(smmu.takeEvents(viommu: viommu).isEmpty)
        #expect(smmu.simulationCounters.eventsNotForwarded == 1)
        #expect(smmu.atcEntries(hostDeviceID: 1).isEmpty)
    }

    @Test func aFailedATSTranslationRecordsNoEvent() throws {
        let viommu = try guest(s1STE(eats: 1), [.valid(asid: 1)])

        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000, mapped: false, throughATS: true).event?.id == .translation)
        #expect(smmu.takeEvents(viommu: viommu).isEmpty)
    }

    @Test func aHWPTWithoutAnAttachmentTranslatesNothingAndReportsNothing() throws {
        // Without a vdevice the device cannot be attached to the HWPT (a translating nested attach needs
        // a vSID, `arm_vsmmu_attach_prepare`): it stays on its nest parent, stage 2 only.
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        _ = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(), contextDescriptors: [ContextDescriptor()])

        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .bypassed)
        #expect(smmu.takeEvents(viommu: viommu).isEmpty)
        #expect(smmu.simulationCounters.eventsNotForwarded == 0)
    }

    @Test func eventsBeyondTheQueueDepthAreLost() throws {
        let smmu = makeSMMU(eventQueueDepth: 2)
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let vdevice = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x10)
        let hwpt = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(), contextDescriptors: [.valid(asid: 1)])
        try smmu.attachDevice(vdevice, to: .nested(hwpt))
        for page: UInt64 in 1...3 { try smmu.touch(hostDeviceID: 1, address: page << 12, mapped: false) }

        #expect(smmu.pendingEventCount(viommu: viommu) == 2)
        #expect(smmu.takeEvents(viommu: viommu).map(\.inputAddress) == [0x1000, 0x2000])
        #expect(smmu.simulationCounters.eventsLost == 1)
    }

    @Test func aDeviceWithoutAnInstalledVSTEBypassesStage1() throws {
        #expect(try smmu.touch(hostDeviceID: 2, address: 0x1000) == .bypassed)
    }

    @Test func touchRefusesUnknownDevicesAndBadSizes() throws {
        #expect(throws: BackendError.self) { try smmu.touch(hostDeviceID: 77, address: 0) }
        #expect(throws: BackendError.self) { try smmu.touch(hostDeviceID: 1, address: 0, size: 0x3000) }
        #expect(throws: BackendError.self) { try smmu.touch(hostDeviceID: 1, address: 0, size: 0x800) }
    }
}
