import CommandRing
@testable import InvalidationEngine
import PSMMU
import SMMUv3
import Testing
import VirtualSMMU

func s1STE(cdTable: UInt64 = 0x4000_0000) -> StreamTableEntry {
    var ste = StreamTableEntry()
    ste.isValid = true
    ste.config = .s1Translate
    ste.s1ContextPointer = cdTable
    return ste
}

/// The seed's three devices behind three pSMMUs, through the whole data path.
struct ThreePSMMUs {
    let engine: VSMMUEngine
    let backends: [RecordingBackend]
    let handles: [ViommuHandle]

    init(policy: ViommuQueue.DrainPolicy = .inlineWithDrainThread, capacity: Int = 256, stallTimeout: Duration? = nil,
         drainPool: DrainPool? = nil) throws {
        engine = VSMMUEngine(configuration: .init(queue: .init(capacity: capacity, drainPolicy: policy), stallTimeout: stallTimeout,
                                                  drainPool: drainPool))
        backends = (0..<3).map { RecordingBackend(name: "pSMMU\($0)") }
        var handles: [ViommuHandle] = []
        for (i, backend) in backends.enumerated() {
            let index = try engine.attachViommu(pSMMU: backend.name, backend: backend)
            try engine.setDeviceID(viommu: index, hostDeviceID: UInt32(100 + i), streamID: StreamID(0x8 * (i + 1)))
            handles.append(backend.record.withLock { $0.viommus[0] })
        }
        self.handles = handles
        try engine.link(streamID: 0x8, ste: s1STE(cdTable: 0x1000), contextDescriptors: [.valid(asid: 3)])
        try engine.link(streamID: 0x10, ste: s1STE(cdTable: 0x2000), contextDescriptors: [.valid(asid: 1)])
        try engine.link(streamID: 0x18, ste: s1STE(cdTable: 0x3000), contextDescriptors: [.valid(asid: 2)])
    }

    func executed(_ i: Int) -> [Command] { backends[i].executed(on: handles[i]) }
}

@Suite struct VSMMUEngineTests {
    @Test(arguments: [ViommuQueue.DrainPolicy.inline, .inlineWithDrainThread, .drainThread])
    func seedScenarioReachesExactlyTheRightPSMMUsBeforeTheSyncCompletes(policy: ViommuQueue.DrainPolicy) throws {
        let setup = try ThreePSMMUs(policy: policy)
        defer { setup.engine.stop() }
        let batch: [Command] = [
            .atcInv(streamID: 0x10), .tlbiNHVA(asid: 2, address: 0x4000), .tlbiNHAll(), .cfgiCD(streamID: 0x8), .sync(),
        ]
        let result = setup.engine.submit(batch).wait()
        #expect(result == SubmissionResult(consumed: 5, failure: nil, syncs: 1))
        #expect(setup.executed(0) == [.tlbiNHAll(), .cfgiCD(streamID: 0x8)])
        #expect(setup.executed(1) == [.atcInv(streamID: 0x10), .tlbiNHAll()])
        #expect(setup.executed(2) == [.tlbiNHVA(asid: 2, address: 0x4000), .tlbiNHAll()])
    }

    @Test func aCompletedSubmissionIsFreedOnceItsLastOwnerLetsGo() throws {
        // A fence's completion captures its submission, which keeps the fence: the fence must drop the
        // completion once it ran, or every INVALIDATE with a CMD_SYNC leaks both. (Inline policy: the
        // completion has returned on this thread when `submit` returns, so the check cannot race it.)
        let setup = try ThreePSMMUs(policy: .inline)
        defer { setup.engine.stop() }
        weak var released: Submission?
        do {
            let submission = setup.engine.submit([.tlbiNHVA(asid: 2, address: 0x4000), .tlbiNHAll(), .sync(), .sync()])
            #expect(submission.wait() == SubmissionResult(consumed: 4, failure: nil, syncs: 2))
            released = submission
        }
        #expect(released == nil)
    }

    @Test func aRecycledSubmissionIsReusedOnlyOnceNobodyElseHoldsItAndReportsTheNewBatch() throws {
        // Inline policy: every fence completion has returned on this thread when `wait()` returns, so
        // nothing but this test and the engine holds a submission afterwards.
        let setup = try ThreePSMMUs(policy: .inline)
        defer { setup.engine.stop() }
        setup.backends[2].failing.withLock { $0 = { $0.opcode == .tlbiNHVA } }
        let first = setup.engine.submit([.tlbiNHVA(asid: 2, address: 0x4000), .sync()])
        let firstResult = first.wait()
        #expect(firstResult.failure?.index == 0)
        setup.engine.recycle(first)
        // Still held here: the next submission must be a new one, and `first` keeps its result.
        let second = setup.engine.submit([.tlbiNHAll(), .sync(), .sync()])
        #expect(second !== first)
        #expect(second.wait() == SubmissionResult(consumed: 3, failure: nil, syncs: 2))
        #expect(first.result == firstResult)
        setup.engine.recycle(second)
        weak var recycled = second
        _ = consume second
        #expect(recycled != nil) // the engine keeps it
        // Nobody else holds the recycled one now: it is reused, and reports only the new batch.
        let third = setup.engine.submit([.tlbiNHVA(asid: 1, address: 0x1000), .tlbiNHVA(asid: 2, address: 0x2000), .sync()])
        #expect(third === recycled)
        let thirdResult = third.wait()
        #expect(thirdResult.consumed == 1)
        #expect(thirdResult.failure?.index == 1)
        #expect(thirdResult.syncs == 0)
        #expect(third.isComplete)
    }

    @Test func aBackendFailureIsReportedAtTheGuestIndexOfTheFailingCommand() throws {
        let setup = try ThreePSMMUs()
        defer { setup.engine.stop() }
        setup.backends[2].failing.withLock { $0 = { $0.opcode == .tlbiNHVA } }
        let result = setup.engine.submit([
            .tlbiNHAll(), .atcInv(streamID: 0x8), .tlbiNHVA(asid: 2, address: 0x1000), .tlbiNHASID(asid: 3), .sync(),
        ]).wait()
        #expect(result.consumed == 2)
        #expect(result.failure?.index == 2)
        #expect(result.failure?.queueError == .illegal)
        #expect(result.failure?.origin == .backend(ViommuIndex(2)))
        // The queue carried on after the failure: later commands still ran (invalidations are idempotent).
        #expect(setup.executed(0).last == .tlbiNHASID(asid: 3))
    }

    @Test func aRoutingErrorStopsTheBatchAndEarlierCommandsStillComplete() throws {
        let setup = try ThreePSMMUs()
        defer { setup.engine.stop() }
        let result = setup.engine.submit([.tlbiNHASID(asid: 1), .sync(), .atcInv(streamID: 0x99), .tlbiNHAll()]).wait()
        #expect(result.consumed == 2)
        #expect(result.failure?.origin == .router)
        #expect(result.failure?.queueError == .illegal)
        #expect(result.syncs == 1)
        #expect(setup.executed(1) == [.tlbiNHASID(asid: 1)])
        #expect(setup.executed(0).isEmpty)
    }

    @Test func onCompleteFiresOnceWithTheResult() async throws {
        let setup = try ThreePSMMUs()
        defer { setup.engine.stop() }
        let submission = setup.engine.submit([.tlbiNHAll(), .sync(), .tlbiNHASID(asid: 3), .sync()])
        let result = await submission.completion()
        #expect(result.syncs == 2 && result.failure == nil)
        let again = await submission.completion()
        #expect(again == result)
    }

    @Test func controlOperationsAreMirroredIntoTheBackend() throws {
        let setup = try ThreePSMMUs()
        defer { setup.engine.stop() }
        let backend = setup.backends[0]
        var handles = setup.engine.backendHandles(of: 0x8)
        let firstHWPT = try #require(handles.hwpt)
        #expect(handles.vdevice != nil)
        #expect(backend.record.withLock { $0.vdevices.values.first?.vsid } == 0x8)
        // A CD rewrite keeps the HWPT and hands the backend the new CDs.
        try setup.engine.updateContextDescriptor(streamID: 0x8, substreamID: 0, .valid(asid: 9))
        #expect(setup.engine.backendHandles(of: 0x8).hwpt == firstHWPT)
        #expect(backend.record.withLock { $0.hwpts[firstHWPT]?.cds.first?.asid } == 9)
        // A relink with other S1 words installs a new HWPT and destroys the old one.
        try setup.engine.link(streamID: 0x8, ste: s1STE(cdTable: 0x9000), contextDescriptors: [.valid(asid: 9)])
        handles = setup.engine.backendHandles(of: 0x8)
        #expect(handles.hwpt != firstHWPT)
        #expect(backend.record.withLock { $0.hwpts.count } == 1)
        // Unregistering destroys the HWPT and the vdevice; the viommu can then go.
        try setup.engine.unsetDeviceID(streamID: 0x8)
        #expect(backend.record.withLock { $0.hwpts.isEmpty && $0.vdevices.isEmpty })
        try setup.engine.detachViommu(ViommuIndex(0))
        #expect(backend.record.withLock { $0.viommus.isEmpty })
    }

    @Test func aBackendRefusalUndoesTheVSMMUChange() throws {
        let setup = try ThreePSMMUs()
        defer { setup.engine.stop() }
        setup.backends[1].refuseNext.withLock { _ = $0.insert("vdevice") }
        #expect(throws: EngineError.self) {
            try setup.engine.setDeviceID(viommu: ViommuIndex(1), hostDeviceID: 777, streamID: 0x77)
        }
        #expect(setup.engine.vsmmu.devices[0x77] == nil)
        setup.backends[1].refuseNext.withLock { _ = $0.insert("hwpt") }
        #expect(throws: EngineError.self) {
            try setup.engine.link(streamID: 0x10, ste: s1STE(cdTable: 0x7000), contextDescriptors: [.valid(asid: 44)])
        }
        // The old link, with ASID 1, still routes; ASID 44 routes nowhere.
        let vsmmu = setup.engine.vsmmu
        #expect(vsmmu.asidIndex.liveViommus(of: 1) == ViommuSet([ViommuIndex(1)]))
        #expect(vsmmu.asidIndex.liveViommus(of: 44).isEmpty)
        #expect(vsmmu.devices[0x10]?.ste == s1STE(cdTable: 0x2000))
    }

    @Test func unsetDeviceIDWaitsForQueuedCommandsNamingTheDevice() throws {
        let setup = try ThreePSMMUs(policy: .drainThread)
        defer { setup.engine.stop() }
        // No sync: the ATC_INV is queued when the device goes; it must reach the backend first.
        _ = setup.engine.submit([.atcInv(streamID: 0x10)])
        try setup.engine.unsetDeviceID(streamID: 0x10)
        #expect(setup.executed(1) == [.atcInv(streamID: 0x10)])
    }

    @Test func concurrentSubmittersKeepEachViommusOrderAndLoseNothing() async throws {
        let setup = try ThreePSMMUs()
        defer { setup.engine.stop() }
        let engine = setup.engine
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<4 {
                group.addTask {
                    for i in 0..<200 {
                        let address = UInt64(t << 20 | i) << 12
                        _ = engine.submit([.tlbiNHVA(asid: 3, address: address), .tlbiNHVAA(address: address), .sync()]).wait()
                    }
                }
            }
        }
        let onViommu0 = setup.executed(0).filter { $0.opcode == .tlbiNHVA }
        #expect(onViommu0.count == 800)
        for t in 0..<4 {
            let mine = onViommu0.map(\.virtualAddress).filter { $0 >> 32 == UInt64(t) }
            #expect(mine == mine.sorted())
        }
        #expect(setup.executed(1).count == 800)
    }

    @Test func stoppedEngineAnswersSubmissionsWithAnAbort() throws {
        let setup = try ThreePSMMUs()
        setup.engine.stop()
        let result = setup.engine.submit([.tlbiNHAll(), .sync()]).wait()
        #expect(result.failure?.queueError == .abort)
        #expect(throws: EngineError.stopped) { try setup.engine.attachViommu(pSMMU: "x", backend: RecordingBackend(name: "x")) }
    }

    /// A VMM cuts the guest's queue where it likes (the shared queue at PROD or every 1,024 commands): a
    /// CMD_SYNC must cover the commands an earlier batch sent without one. Before the router kept its
    /// unsynced viommus across batches, `[.sync()]` covered no viommu and completed at once, while viommu
    /// 1's TLBI still sat in its ring.
    @Test func aCMDSYNCInTheNextBatchWaitsForTheCommandsTheBatchBeforeLeftWithoutOne() throws {
        let setup = try ThreePSMMUs(policy: .inline)
        defer { setup.engine.stop() }
        let queue = try #require(setup.engine.queue(of: ViommuIndex(1)))
        guard let role = queue.tryAcquireConsumerRole() else { Issue.record("the consumer role is held"); return }
        let tail = setup.engine.submit([.tlbiNHASID(asid: 1)])
        #expect(tail.wait() == SubmissionResult(consumed: 1, failure: nil, syncs: 0))
        let sync = setup.engine.submit([.tlbiNHVA(asid: 3, address: 0x1000), .sync()])
        #expect(!sync.isComplete, "the CMD_SYNC waits for viommu 1's TLBI of the batch before")
        #expect(setup.executed(1).isEmpty)
        queue.release(role)  // drains viommu 1's ring on this thread
        #expect(sync.wait() == SubmissionResult(consumed: 2, failure: nil, syncs: 1))
        #expect(setup.executed(1) == [.tlbiNHASID(asid: 1)])
        // Covered once: the next CMD_SYNC has nothing left to wait for on viommu 1.
        let next = setup.engine.submit([.sync()])
        #expect(next.isComplete)
    }

    /// The same rule when the earlier batch's command failed: its failure is that later CMD_SYNC's.
    @Test func aFailureOfACommandSentWithoutACMDSYNCIsReportedByTheNextBatchsCMDSYNC() throws {
        let setup = try ThreePSMMUs(policy: .drainThread)
        defer { setup.engine.stop() }
        setup.backends[1].failing.withLock { $0 = { $0.opcode == .tlbiNHASID } }
        #expect(setup.engine.submit([.tlbiNHASID(asid: 1)]).wait() == SubmissionResult(consumed: 1, failure: nil, syncs: 0))
        let result = setup.engine.submit([.sync()]).wait()
        #expect(result.failure?.index == 0 && result.failure?.origin == .backend(ViommuIndex(1)), "\(result)")
        #expect(result.syncs == 0)
    }
}
