import Foundation
import IOMMUFD
import IOMMUFDSimulation
import PSMMU
import SMMUv3
import Testing

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
}
