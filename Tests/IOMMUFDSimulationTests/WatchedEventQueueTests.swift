import Foundation
import IOMMUFD
import IOMMUFDSimulation
import InvalidationEngine
import PSMMU
import SMMUv3
import Testing
import VirtualSMMU

/// A sink that records every batch; ``wait(until:)`` waits for a condition with a deadline.
final class CollectingSink: ViommuEventSink, @unchecked Sendable {
    // `batches` is only accessed with `condition` locked.
    private let condition = NSCondition()
    private var batches: [ViommuEvents] = []

    func viommuEventsArrived(_ events: ViommuEvents) {
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

    /// Waits (up to 10 s) until `predicate` holds for the batches received.
    @discardableResult
    func wait(until predicate: ([ViommuEvents]) -> Bool) -> Bool {
        let deadline = Date(timeIntervalSinceNow: 10)
        condition.lock()
        defer { condition.unlock() }
        while !predicate(batches) {
            if !condition.wait(until: deadline) { return predicate(batches) }
        }
        return true
    }
}

/// The backend's watcher on the kernel model's vEVENTQs: the model's eventfd stands in for the poll of
/// the vEVENTQ file (readable while its `deliver` list is not empty, `iommufd_eventq_fops_poll`).
@Suite struct WatchedEventQueueTests {
    @Test func eventsTheKernelForwardsReachTheSinkWithTheVSIDAndAnOverflowAsLostBefore() throws {
        let rig = try Rig(pSMMUs: 1)
        let watcher = VEventWatcher()
        let backend = IOMMUFDBackend(name: "smmu0", device: rig.kernel, configuration: .init(eventQueueDepth: 2),
                                     eventWatcher: watcher)
        let sink = CollectingSink()
        backend.setEventSink(sink)
        let viommu = try backend.attachViommu(rig.request(0))
        let vdevice = try backend.allocateVDevice(viommu: viommu, device: try rig.hostDevice(0), virtualStreamID: 0x8)
        let hwpt = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: rig.device(0).devID, ste: translatingSTE(),
                                                  contextDescriptors: [])
        try backend.attachDevice(vdevice, to: .nested(hwpt))
        let streamID = rig.device(0).streamID

        rig.kernel.raiseEvent(pSMMU: 0, EventRecord(id: .translation, streamID: streamID, inputAddress: 0x1000))
        #expect(sink.wait { $0.flatMap(\.records).count == 1 })
        #expect(sink.received.first?.records.first?.streamID == 0x8)
        #expect(sink.received.first?.viommu == viommu)

        // Without a sink the queue (depth 2) fills: two queued, three dropped. Watched again, the read
        // returns both and the LOST_EVENTS header, which arrives as a loss after them.
        backend.setEventSink(nil)
        for n in 2 ... 6 as ClosedRange<UInt64> {
            rig.kernel.raiseEvent(pSMMU: 0, EventRecord(id: .translation, streamID: streamID, inputAddress: n << 12))
        }
        backend.setEventSink(sink)
        #expect(sink.wait { $0.count == 3 })
        let batches = sink.received
        #expect(batches.map { $0.records.map(\.inputAddress) } == [[0x1000], [0x2000, 0x3000], []])
        #expect(batches.map(\.lostBefore) == [false, false, true])
        #expect(backend.lostEventCount == 3)

        try backend.attachDevice(vdevice, to: .nestParent)
        try backend.destroyHWPT(hwpt)
        try backend.destroyVDevice(vdevice)
        try backend.detachViommu(viommu)
        #expect(!watcher.isRunning)
    }

    @Test func aVEventQKeptAcrossARestartIsWatchedByTheNewBackendAndItsNextSequenceIsNoLoss() throws {
        let rig = try Rig()
        let first = rig.backend(0)
        let engine = VSMMUEngine()
        let v = try engine.attachViommu(pSMMU: "smmu0", backend: first, request: rig.request(0))
        try engine.setDeviceID(viommu: v, device: try rig.hostDevice(0, 0), streamID: 0x10)
        try engine.link(streamID: 0x10, ste: .stage1(contextTable: 0x1000), contextDescriptors: [.valid(asid: 5)])
        let streamID = rig.device(0, 0).streamID
        // The old process read event 0; the queue's next sequence is 1.
        rig.kernel.raiseEvent(pSMMU: 0, EventRecord(id: .translation, streamID: streamID, inputAddress: 0x1000))
        #expect(first.takeEvents(viommu: ViommuHandle(rawValue: try #require(engine.snapshot().viommus.first?.handle.rawValue))).count == 1)
        let snapshot = try engine.snapshot()
        let held = engine.heldDescriptors

        // The new process gets the vEVENTQ back from the fd store and sets its sink before restoring.
        let watcher = VEventWatcher()
        let second = IOMMUFDBackend(name: "smmu0", device: rig.kernel, configuration: .init(eventQueueDepth: 64),
                                    eventWatcher: watcher)
        let sink = CollectingSink()
        second.setEventSink(sink)
        _ = try VSMMUEngine.restore(snapshot, backends: { _ in second },
                                    descriptors: EngineDescriptors(eventQueues: held.eventQueues, vfioDevices: held.vfioDevices))
        #expect(watcher.registeredCount == 1)
        rig.kernel.raiseEvent(pSMMU: 0, EventRecord(id: .translation, streamID: streamID, inputAddress: 0x2000))

        #expect(sink.wait { !$0.isEmpty })
        #expect(sink.received.map { $0.records.map(\.inputAddress) } == [[0x2000]])
        #expect(sink.received.map(\.lostBefore) == [false], "sequence 1 is where the old process stopped, not a loss")
        #expect(second.lostEventCount == 0)
        second.setEventSink(nil)
        #expect(!watcher.isRunning)
    }
}
