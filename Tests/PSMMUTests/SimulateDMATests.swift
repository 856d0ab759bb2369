import Foundation
import PSMMU
import SMMUv3
import Testing

/// A sink that records every batch, in order, with the thread that delivered it.
final class RecordingSink: ViommuEventSink, @unchecked Sendable {
    // `batches` is only accessed with `condition` locked.
    private let condition = NSCondition()
    private var batches: [ViommuEvents] = []
    /// Called (outside the sink's own lock) for each batch before it is recorded.
    let onArrival: (@Sendable (ViommuEvents) -> Void)?

    init(onArrival: (@Sendable (ViommuEvents) -> Void)? = nil) { self.onArrival = onArrival }

    func viommuEventsArrived(_ events: ViommuEvents) {
        onArrival?(events)
        condition.lock()
        batches.append(events)
        condition.broadcast()
        condition.unlock()
    }

    var received: [ViommuEvents] {
        condition.lock()
        defer { condition.unlock() }
        return batches
    }

    /// The records received for `viommu`, in order.
    func records(of viommu: ViommuHandle) -> [EventRecord] { received.filter { $0.viommu == viommu }.flatMap(\.records) }

    /// Waits (up to 10 s) until `count` records arrived in all.
    @discardableResult
    func waitForRecords(_ count: Int) -> Bool {
        let deadline = Date(timeIntervalSinceNow: 10)
        condition.lock()
        defer { condition.unlock() }
        while batches.reduce(0, { $0 + $1.records.count }) < count {
            if !condition.wait(until: deadline) { return false }
        }
        return true
    }
}

/// `true` once, then `false`, whichever thread asks.
final class FirstTime: @unchecked Sendable {
    // `taken` is only accessed with `lock` held.
    private let lock = NSLock()
    private var taken = false

    func take() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        defer { taken = true }
        return !taken
    }
}

/// `simulateDMA`: the SMMUv3 translation of one access with what the guest's walk finds, every event type
/// `arm_smmu_handle_event` forwards, and push delivery to the sink.
@Suite struct SimulateDMATests {
    let smmu = makeSMMU()

    /// A viommu with device 1 as vSID 0x10, attached to a nested HWPT of the given vSTE and CDs.
    func guest(_ ste: StreamTableEntry = s1STE(), _ cds: [ContextDescriptor] = [.valid(asid: 1)]) throws -> ViommuHandle {
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let vdevice = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x10)
        let hwpt = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: ste, contextDescriptors: cds)
        try smmu.attachDevice(vdevice, to: .nested(hwpt))
        return viommu
    }

    func dma(_ address: UInt64 = 0x1000, ssid: SubstreamID? = nil, write: Bool = false,
             walk: StageOneWalk = .readWrite) throws -> DMAOutcome {
        try smmu.simulateDMA(SimulatedDMA(hostDeviceID: 1, substreamID: ssid, address: address, write: write, walk: walk))
    }

    /// The one record `viommu`'s sink got, checked to carry the vSID.
    func forwarded(_ sink: RecordingSink, _ viommu: ViommuHandle) throws -> EventRecord {
        let records = sink.records(of: viommu)
        try #require(records.count == 1, "got \(records)")
        #expect(records[0].streamID == 0x10, "the guest sees its vSID")
        return records[0]
    }

    // MARK: Translation faults, with the fields arm_smmu_decode_event reads

    @Test func aWriteMissOnAnUnmappedAddressIsFTranslationWithWriteDataUnprivilegedStage1ClassIN() throws {
        let viommu = try guest(s1STE(cdMax: 1), [.valid(asid: 1), .valid(asid: 2)])
        let sink = RecordingSink()
        smmu.setEventSink(sink)

        let physical = try #require(try dma(0xABC000, ssid: 1, write: true, walk: .unmapped).event)

        #expect(physical.streamID == 0x101)
        let record = try forwarded(sink, viommu)
        #expect(record.id == .translation)
        #expect(record.substreamID == 1)
        #expect(record.inputAddress == 0xABC000)
        #expect(!record[flag: EventRecord.Field.read], "RnW = 0: a write")
        #expect(!record[flag: EventRecord.Field.instruction] && !record[flag: EventRecord.Field.privileged])
        #expect(!record[flag: EventRecord.Field.stage2] && !record[flag: EventRecord.Field.stall])
        #expect(record.eventClass == .input)
        #expect(smmu.tlbEntryCount == 0)
    }

    @Test func aReadOfAReadOnlyDescriptorFillsAReadOnlyEntryAndAWriteHittingItIsFPermission() throws {
        let viommu = try guest()
        let sink = RecordingSink()
        smmu.setEventSink(sink)

        let fill = try dma(walk: .readOnly)
        #expect(fill.tlbEntry?.writable == false)
        if case .tlbFill = fill {} else { Issue.record("a read of a read-only descriptor fills: \(fill)") }
        // The tables now say read/write, but the cached entry is what the SMMU uses.
        let record = try #require(try dma(write: true, walk: .readWrite).event)

        #expect(record.id == .permission)
        let guestRecord = try forwarded(sink, viommu)
        #expect(guestRecord.id == .permission)
        #expect(guestRecord.inputAddress == 0x1000)
        #expect(!guestRecord[flag: EventRecord.Field.read])
        #expect(guestRecord.eventClass == .input)
        #expect(try dma(walk: .readWrite) == .tlbHit(TLBEntry(vmid: try #require(smmu.vmid(of: viommu)), asid: 1,
                                                              address: 0x1000, size: 4096, writable: false)))
    }

    @Test func aWriteMissOnAReadOnlyDescriptorIsFPermissionAndCachesNothing() throws {
        let viommu = try guest()
        let sink = RecordingSink()
        smmu.setEventSink(sink)

        #expect(try dma(write: true, walk: .readOnly).event?.id == .permission)

        #expect(try forwarded(sink, viommu)[flag: EventRecord.Field.read] == false)
        #expect(smmu.tlbEntryCount == 0)
    }

    @Test func aStaleReadWriteEntryServesAWriteTheTablesNoLongerMap() throws {
        _ = try guest()
        _ = try dma(walk: .readWrite)

        let outcome = try dma(write: true, walk: .unmapped)

        #expect(outcome.tlbEntry?.writable == true)
        if case .tlbHit = outcome {} else { Issue.record("a missed invalidation is a stale hit: \(outcome)") }
    }

    @Test func anAccessFlagClearIsFAccessAndCachesNothing() throws {
        let viommu = try guest()
        let sink = RecordingSink()
        smmu.setEventSink(sink)

        #expect(try dma(0x7000, walk: .accessFlagClear).event?.id == .access)

        let record = try forwarded(sink, viommu)
        #expect(record.id == .access)
        #expect(record[flag: EventRecord.Field.read], "RnW = 1: a read")
        #expect(record.inputAddress == 0x7000)
        #expect(record.eventClass == .input)
        #expect(smmu.tlbEntryCount == 0)
    }

    @Test func anOutputAddressBeyondTheOASIsFAddrSizeAndCachesNothing() throws {
        let viommu = try guest()
        let sink = RecordingSink()
        smmu.setEventSink(sink)

        #expect(try dma(0x9000, write: true, walk: .outputAddressTooLarge).event?.id == .addressSize)

        let record = try forwarded(sink, viommu)
        #expect(record.id == .addressSize)
        #expect(record.inputAddress == 0x9000)
        #expect(record.eventClass == .input)
        #expect(smmu.tlbEntryCount == 0)
    }

    // MARK: Configuration errors

    @Test func aReservedS1FmtIsCBadSTEWithTheStreamIDAndTheTransactionsSubstreamIDLikeQEMUsRecordEvent() throws {
        let viommu = try guest(s1STE(cdMax: 2, format: S1Format(rawValue: 3)))
        let sink = RecordingSink()
        smmu.setEventSink(sink)

        #expect(try dma(ssid: 1).event?.id == .badSTE)

        let record = try forwarded(sink, viommu)
        #expect(record.id == .badSTE)
        #expect(record.substreamID == 1 && record.inputAddress == 0)
    }

    @Test func noSubstreamIDWithS1DSSTerminateIsFStreamDisabled() throws {
        let viommu = try guest(s1STE(cdMax: 2, dss: .terminate))
        let sink = RecordingSink()
        smmu.setEventSink(sink)

        #expect(try dma().event?.id == .streamDisabled)

        #expect(try forwarded(sink, viommu).id == .streamDisabled)
    }

    @Test func aSubstreamIDOnAStreamWithoutSubstreamsIsCBadSubstreamIDWithTheSubstreamIDAndNoSSV() throws {
        let viommu = try guest(s1STE(cdMax: 0))
        let sink = RecordingSink()
        smmu.setEventSink(sink)

        #expect(try dma(ssid: 5).event?.id == .badSubstreamID)

        let record = try forwarded(sink, viommu)
        #expect(record.id == .badSubstreamID)
        #expect(record[EventRecord.Field.substreamID] == 5)
        #expect(!record[flag: EventRecord.Field.ssv], "C_BAD_SUBSTREAMID has no SSV qualifier")
    }

    @Test func anInvalidCDIsCBadCDWithTheSubstreamID() throws {
        let viommu = try guest(s1STE(cdMax: 1), [.valid(asid: 1), ContextDescriptor()])
        let sink = RecordingSink()
        smmu.setEventSink(sink)

        #expect(try dma(ssid: 1).event?.id == .badCD)

        let record = try forwarded(sink, viommu)
        #expect(record.id == .badCD)
        #expect(record.substreamID == 1)
    }

    @Test func everyTypeTheKernelForwardsIsRaisedBySomeAccess() throws {
        var raised: Set<EventID> = []
        for walk in StageOneWalk.allCases {
            let smmu = makeSMMU()
            let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
            let vdevice = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x10)
            let hwpt = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(cdMax: 1, dss: .terminate),
                                                   contextDescriptors: [.valid(asid: 1), ContextDescriptor()])
            try smmu.attachDevice(vdevice, to: .nested(hwpt))
            for access in [SimulatedDMA(hostDeviceID: 1, substreamID: 0, address: 0x1000, write: true, walk: walk),
                           SimulatedDMA(hostDeviceID: 1, address: 0x1000, walk: walk),
                           SimulatedDMA(hostDeviceID: 1, substreamID: 1, address: 0x1000, walk: walk),
                           SimulatedDMA(hostDeviceID: 1, substreamID: 7, address: 0x1000, walk: walk)] {
                _ = try smmu.simulateDMA(access)
            }
            raised.formUnion(smmu.takeEvents(viommu: viommu).map(\.id))
        }
        let bad = makeSMMU()
        let viommu = try bad.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let vdevice = try bad.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x10)
        let hwpt = try bad.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(cdMax: 2, format: S1Format(rawValue: 3)),
                                              contextDescriptors: [.valid(asid: 1)])
        try bad.attachDevice(vdevice, to: .nested(hwpt))
        _ = try bad.simulateDMA(SimulatedDMA(hostDeviceID: 1, substreamID: 1, address: 0x1000))
        raised.formUnion(bad.takeEvents(viommu: viommu).map(\.id))

        #expect(raised == Set(ViommuEventForwarding.forwardedIDs))
    }

    // MARK: Push delivery

    @Test func withASinkTheQueueDrainsAtOnceAndTakeEventsFindsNothing() throws {
        let viommu = try guest()
        let sink = RecordingSink()
        smmu.setEventSink(sink)

        for page in 0..<3 { _ = try dma(UInt64(0x10_0000 + page * 0x1000), walk: .unmapped) }

        #expect(sink.received.map(\.viommu) == [viommu, viommu, viommu])
        #expect(sink.records(of: viommu).map(\.inputAddress) == [0x10_0000, 0x10_1000, 0x10_2000])
        #expect(sink.received.allSatisfy { !$0.lostBefore })
        #expect(smmu.takeEvents(viommu: viommu).isEmpty)
        #expect(smmu.pendingEventCount(viommu: viommu) == 0)
    }

    @Test func aSinkSetLaterGetsWhatWasQueuedThenTheLossAsLostBefore() throws {
        let smmu = makeSMMU(eventQueueDepth: 2)
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let vdevice = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x10)
        let hwpt = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(), contextDescriptors: [.valid(asid: 1)])
        try smmu.attachDevice(vdevice, to: .nested(hwpt))
        for page in 0..<4 {
            _ = try smmu.simulateDMA(SimulatedDMA(hostDeviceID: 1, address: UInt64(0x1000 * (page + 1)), walk: .unmapped))
        }
        #expect(smmu.simulationCounters.eventsLost == 2)

        let sink = RecordingSink()
        smmu.setEventSink(sink)
        _ = try smmu.simulateDMA(SimulatedDMA(hostDeviceID: 1, address: 0x9000, walk: .unmapped))

        let batches = sink.received
        #expect(batches.map(\.records.count) == [2, 0, 1])
        #expect(batches.map(\.lostBefore) == [false, true, false])
        #expect(batches.first?.records.map(\.inputAddress) == [0x1000, 0x2000])
        #expect(batches.last?.records.map(\.inputAddress) == [0x9000])
    }

    @Test func aLossBetweenQueuedRecordsStartsANewBatchMarkedLostBefore() throws {
        let smmu = makeSMMU(eventQueueDepth: 1)
        let tenant = smmu.tenant(TenantID(rawValue: 7))
        let viommu = try tenant.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let vdevice = try tenant.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x10)
        let hwpt = try tenant.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(), contextDescriptors: [.valid(asid: 1)])
        try tenant.attachDevice(vdevice, to: .nested(hwpt))
        // A sink that, on its first batch, makes the device fault twice more: the first is queued while
        // this thread delivers, the second finds the queue (depth 1) full.
        let first = FirstTime()
        let sink = RecordingSink { _ in
            guard first.take() else { return }
            for address in [0x2000, 0x3000] as [UInt64] {
                let access = SimulatedDMA(hostDeviceID: 1, address: address, walk: .unmapped)
                let done = Spawned { (try? tenant.simulateDMA(access)) != nil }
                _ = done.wait()
            }
        }
        tenant.setEventSink(sink)

        _ = try tenant.simulateDMA(SimulatedDMA(hostDeviceID: 1, address: 0x1000, walk: .unmapped))
        _ = try tenant.simulateDMA(SimulatedDMA(hostDeviceID: 1, address: 0x4000, walk: .unmapped))

        let batches = sink.received
        #expect(batches.map { $0.records.map(\.inputAddress) } == [[0x1000], [0x2000], [], [0x4000]])
        #expect(batches.map(\.lostBefore) == [false, false, true, false])
        #expect(batches.allSatisfy { $0.viommu == viommu })
        #expect(smmu.simulationCounters.eventsLost == 1)
    }

    @Test func eachTenantsEventsGoToItsOwnSinkAndATenantWithoutOneKeepsThemQueued() throws {
        let a = smmu.tenant(TenantID(rawValue: 1)), b = smmu.tenant(TenantID(rawValue: 2))
        var viommus: [ViommuHandle] = []
        for tenant in [a, b] {
            let viommu = try tenant.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
            let vdevice = try tenant.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x10)
            let hwpt = try tenant.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(), contextDescriptors: [.valid(asid: 1)])
            try tenant.attachDevice(vdevice, to: .nested(hwpt))
            viommus.append(viommu)
        }
        let sinkA = RecordingSink()
        a.setEventSink(sinkA)

        _ = try a.simulateDMA(SimulatedDMA(hostDeviceID: 1, address: 0x1000, walk: .unmapped))
        _ = try b.simulateDMA(SimulatedDMA(hostDeviceID: 1, address: 0x2000, walk: .unmapped))

        #expect(sinkA.received.map(\.viommu) == [viommus[0]])
        #expect(b.takeEvents(viommu: viommus[1]).map(\.inputAddress) == [0x2000])
    }

    @Test func eventsOfOneViommuRaisedOnManyThreadsReachTheSinkInTheOrderTheyWereQueued() throws {
        let viommu = try guest()
        let sink = RecordingSink()
        smmu.setEventSink(sink)
        let smmu = self.smmu

        let threads = (0..<4).map { t in
            Spawned {
                for i in 0..<50 {
                    _ = try? smmu.simulateDMA(SimulatedDMA(hostDeviceID: 1, address: UInt64((t * 50 + i) * 0x1000), walk: .unmapped))
                }
                return true
            }
        }
        for thread in threads { _ = thread.wait() }

        #expect(sink.waitForRecords(200))
        let addresses = sink.records(of: viommu).map(\.inputAddress)
        #expect(addresses.count == 200)
        for t in 0..<4 {
            let mine = addresses.filter { $0 / 0x1000 / 50 == UInt64(t) }
            #expect(mine == mine.sorted(), "thread \(t)'s events in the order it raised them")
        }
    }

    @Test func everyOtherBackendRefusesSimulateDMAAsUnsupported() {
        final class NoEvents: PSMMUBackend {
            var name: String { "none" }
            func attachViommu(_ request: ViommuAttachRequest) throws(BackendError) -> ViommuHandle { ViommuHandle(rawValue: 1) }
            func detachViommu(_ viommu: ViommuHandle) throws(BackendError) {}
            func hardwareInfo(viommu: ViommuHandle) throws(BackendError) -> IDRegisters { .simulatedDefault }
            func allocateVDevice(viommu: ViommuHandle, device: HostDevice, virtualStreamID: StreamID) throws(BackendError) -> VDeviceHandle { VDeviceHandle(rawValue: 1) }
            func destroyVDevice(_ vdevice: VDeviceHandle) throws(BackendError) {}
            func attachDevice(_ vdevice: VDeviceHandle, to domain: DeviceDomain) throws(BackendError) {}
            func allocateNestedHWPT(viommu: ViommuHandle, hostDeviceID: UInt32, ste: StreamTableEntry,
                                    contextDescriptors: [ContextDescriptor]) throws(BackendError) -> HWPTHandle { HWPTHandle(rawValue: 1) }
            func destroyHWPT(_ hwpt: HWPTHandle) throws(BackendError) {}
            func invalidate(viommu: ViommuHandle, commands: UnsafeBufferPointer<Command>) -> InvalidationResult { InvalidationResult(completed: commands.count) }
            func takeEvents(viommu: ViommuHandle) -> [EventRecord] { [] }
            var counters: BackendCounters { BackendCounters() }
        }
        let error = backendError { _ = try NoEvents().simulateDMA(SimulatedDMA(hostDeviceID: 1, address: 0x1000)) }
        #expect(error?.kind == .unsupported)
    }
}
