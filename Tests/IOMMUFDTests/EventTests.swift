import IOMMUFD
import PSMMU
import SMMUv3
import Testing

/// vEVENTQ reads: whole vEVENTs (header + ARM record), lost-event accounting.
@Suite struct EventTests {
    static func header(flags: UInt32 = 0, sequence: UInt32) -> [UInt8] { le32(flags) + le32(sequence) }
    static func vevent(_ record: EventRecord, sequence: UInt32) -> [UInt8] { header(sequence: sequence) + record.bytes }
    static func lostEvents(sequence: UInt32) -> [UInt8] { header(flags: 1, sequence: sequence) }

    static let translationFault = EventRecord(id: .translation, streamID: 0x42, substreamID: 3, inputAddress: 0x1000)
    static let badCD = EventRecord(id: .badCD, streamID: 0x43)

    func decode(_ bytes: [UInt8], with decoder: inout VEventDecoder) -> ([EventRecord], UInt64) {
        var events: [EventRecord] = []
        let lost = bytes.withUnsafeBytes { decoder.decode($0, into: &events) }
        return (events, lost)
    }

    @Test func decodesConsecutiveEventsWithoutLoss() {
        var decoder = VEventDecoder()
        let (events, lost) = decode(Self.vevent(Self.translationFault, sequence: 0) + Self.vevent(Self.badCD, sequence: 1),
                                    with: &decoder)
        #expect(events == [Self.translationFault, Self.badCD])
        #expect(lost == 0)
        #expect(decoder.expectedSequence == 2)
    }

    @Test func aSequenceGapCountsTheEventsBetweenAsLost() {
        var decoder = VEventDecoder()
        let (events, lost) = decode(Self.vevent(Self.translationFault, sequence: 0) + Self.vevent(Self.badCD, sequence: 4),
                                    with: &decoder)
        #expect(events.count == 2)
        #expect(lost == 3)
    }

    @Test func aLostEventsHeaderCountsEveryDropThatRequeuedIt() {
        var decoder = VEventDecoder()
        // Event 0 delivered, then three drops (sequences 1, 2, 3): the lost-events header carries 3.
        let (events, lost) = decode(Self.vevent(Self.translationFault, sequence: 0) + Self.lostEvents(sequence: 3),
                                    with: &decoder)
        #expect(events == [Self.translationFault])
        #expect(lost == 3)
        // The next event follows the header without a gap.
        let (next, lostAfter) = decode(Self.vevent(Self.badCD, sequence: 4), with: &decoder)
        #expect(next == [Self.badCD])
        #expect(lostAfter == 0)
        #expect(decoder.lostEvents == 3)
    }

    @Test func theSequenceWrapsAfterIntMax() {
        var decoder = VEventDecoder()
        _ = decode(Self.vevent(Self.badCD, sequence: UInt32(Int32.max)), with: &decoder)
        #expect(decoder.expectedSequence == 0)
        let (_, lost) = decode(Self.vevent(Self.badCD, sequence: 0), with: &decoder)
        #expect(lost == 0)
    }

    @Test func aQueueReadByAPreviousProcessTakesItsFirstSequenceAsTheStartNotAsALoss() {
        var decoder = VEventDecoder(synchronized: false)
        let (events, lost) = decode(Self.vevent(Self.badCD, sequence: 57) + Self.vevent(Self.badCD, sequence: 59), with: &decoder)
        #expect(events.count == 2)
        #expect(lost == 1, "the gap after the first item still counts")
        #expect(decoder.expectedSequence == 60)
    }

    @Test func batchesForTheSinkSplitAtEachLossAndALoneHeaderIsABatchOfNoRecord() {
        var decoder = VEventDecoder()
        var batches: [ViommuEvents] = []
        let viommu = ViommuHandle(rawValue: 9)
        let bytes = Self.vevent(Self.translationFault, sequence: 0) + Self.vevent(Self.badCD, sequence: 1)
            + Self.vevent(Self.badCD, sequence: 3) + Self.lostEvents(sequence: 5)
        let (records, lost) = bytes.withUnsafeBytes { decoder.decode($0, viommu: viommu, into: &batches) }
        #expect(records == 3)
        #expect(lost == 3)
        #expect(batches == [ViommuEvents(viommu: viommu, records: [Self.translationFault, Self.badCD]),
                            ViommuEvents(viommu: viommu, records: [Self.badCD], lostBefore: true),
                            ViommuEvents(viommu: viommu, records: [], lostBefore: true)])
    }

    @Test func aTruncatedTrailingEventIsIgnored() {
        var decoder = VEventDecoder()
        let bytes = Self.vevent(Self.badCD, sequence: 0) + Array(Self.vevent(Self.badCD, sequence: 1).prefix(20))
        let (events, _) = decode(bytes, with: &decoder)
        #expect(events == [Self.badCD])
    }

    @Test func takeEventsReadsTheViommuQueueAndCountsEvents() throws {
        let fake = FakeIOMMUFD()
        let backend = IOMMUFDBackend(name: "smmu3", device: fake, configuration: .init(eventQueueDepth: 16))
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))
        fake.queueEventRead(descriptor: 1000, Self.vevent(Self.translationFault, sequence: 0) + Self.lostEvents(sequence: 2))

        #expect(backend.takeEvents(viommu: viommu) == [Self.translationFault])
        #expect(backend.counters.events == 1)
        #expect(backend.lostEventCount == 2)
        #expect(backend.takeEvents(viommu: viommu).isEmpty)

        fake.queueEventRead(descriptor: 1000, Self.vevent(Self.badCD, sequence: 3))
        #expect(backend.takeEvents(viommu: viommu) == [Self.badCD])
        #expect(backend.counters.events == 2)
        #expect(backend.lostEventCount == 2)
    }

    @Test func takeEventsKeepsReadingWhileTheKernelFillsTheBuffer() throws {
        let fake = FakeIOMMUFD()
        let backend = IOMMUFDBackend(name: "smmu3", device: fake, configuration: .init(eventQueueDepth: 256))
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))
        // A full buffer (64 events) means more may be waiting; the next read returns the rest.
        fake.queueEventRead(descriptor: 1000, (0..<64).flatMap { Self.vevent(Self.badCD, sequence: UInt32($0)) })
        fake.queueEventRead(descriptor: 1000, Self.vevent(Self.translationFault, sequence: 64))

        let events = backend.takeEvents(viommu: viommu)
        #expect(events.count == 65)
        #expect(events.last == Self.translationFault)
        #expect(backend.lostEventCount == 0)
    }
}
