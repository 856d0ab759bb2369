import PSMMU
import SMMUv3
import Testing

/// Which records reach a vEVENTQ: `arm_smmu_handle_event` → `arm_vmaster_report_event`.
@Suite struct EventForwardingTests {
    @Test func onlyTheEightTypesArmSmmuHandleEventTakesAreForwarded() {
        #expect(ViommuEventForwarding.forwardedIDs.map(\.rawValue) == [0x04, 0x06, 0x08, 0x0A, 0x10, 0x11, 0x12, 0x13])
        for raw in UInt8.min...UInt8.max {
            let id = EventID(rawValue: raw)
            let forwarded = ViommuEventForwarding.isForwarded(EventRecord(id: id, streamID: 1))
            #expect(forwarded == ViommuEventForwarding.forwardedIDs.contains(id), "\(id)")
        }
        #expect(!ViommuEventForwarding.isForwarded(EventRecord(id: .badATSTranslationRequest, streamID: 1)))
        #expect(!ViommuEventForwarding.isForwarded(EventRecord(id: .walkExternalAbort, streamID: 1)))
    }

    @Test func aStalledRecordGoesToIOPFAndAStage2RecordStaysWithTheHostNeitherIsForwarded() {
        var stalled = EventRecord(id: .translation, streamID: 1, inputAddress: 0x1000)
        stalled[flag: ViommuEventForwarding.stall] = true
        var stage2 = EventRecord(id: .permission, streamID: 1, inputAddress: 0x1000)
        stage2[flag: ViommuEventForwarding.stage2] = true

        #expect(stalled.w1 == 1 << 31)
        #expect(stage2.w1 == 1 << 39)
        #expect(!ViommuEventForwarding.isForwarded(stalled))
        #expect(!ViommuEventForwarding.isForwarded(stage2))
        #expect(ViommuEventForwarding.isForwarded(EventRecord(id: .permission, streamID: 1)))
    }

    @Test func recordsTheKernelDoesNotForwardAreCountedAndNeverTaken() throws {
        let smmu = makeSMMU()
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])

        try smmu.touch(hostDeviceID: 1, address: 0x1000, throughATS: true)   // F_BAD_ATS_TREQ (EATS = 0)
        try smmu.touch(hostDeviceID: 1, address: 0x2000, mapped: false)     // F_TRANSLATION

        #expect(smmu.takeEvents(viommu: guest.viommu).map(\.id) == [.translation])
        #expect(smmu.simulationCounters.eventsNotForwarded == 1)
        #expect(smmu.counters.events == 1)
    }
}
