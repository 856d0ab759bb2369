import InvalidationEngine
import PSMMU
import SMMUv3
import VirtualSMMU
import Testing
import VSMMUClient
@testable import VSMMUDaemon
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

/// An event queue that records what the event service wrote, with room for `capacity` records.
final class RecordingEventQueue: EventQueueTarget {
    struct Written: Hashable, Sendable {
        var record: EventRecord
        var viommu: UInt32
        var lostBefore: Bool
    }
    private let state = Locked<(written: [Written], closed: Bool, pendingLost: Bool)>(([], false, false))
    let capacity: Int

    init(capacity: Int = .max) { self.capacity = capacity }

    var written: [Written] { state.withLock { $0.written } }
    var isClosed: Bool { state.withLock { $0.closed } }

    func write(_ records: [EventRecord], viommu: UInt32, lostBefore: Bool) -> EventWriteOutcome {
        state.withLock { s in
            guard !s.closed else { return EventWriteOutcome(written: 0, droppedFull: 0, closed: true) }
            var outcome = EventWriteOutcome(written: 0, droppedFull: 0)
            if lostBefore { s.pendingLost = true }
            for record in records {
                guard s.written.count < capacity else {
                    outcome.droppedFull += 1
                    s.pendingLost = true
                    continue
                }
                s.written.append(Written(record: record, viommu: viommu, lostBefore: s.pendingLost))
                s.pendingLost = false
                outcome.written += 1
            }
            return outcome
        }
    }

    func close() { state.withLock { $0.closed = true } }
}

/// The event service's attribution and routing (issue 14), driven through the sink every backend is given:
/// which vSMMU and viommu an event belongs to, and what is dropped for which reason.
@Suite struct EventRoutingTests {
    /// A VMM's vSMMU with viommu 0 on smmu0 (host device 1, vSID 0x8) and viommu 1 on smmu1 (host device 17,
    /// vSID 0x9), as a real VMM sets it up.
    struct TwoViommuVSMMU {
        let client: VSMMUClient
        let vsmmu: VSMMUID
        let viommus: [UInt32]
        let handles: [ViommuHandle]
        let served: ServedVSMMU
    }

    static func twoViommus(_ server: TestServer, hostDevices: (UInt32, UInt32) = (1, 17),
                           streamIDs: (StreamID, StreamID) = (0x8, 0x9)) throws -> TwoViommuVSMMU {
        let client = try server.client()
        let vsmmu = try client.createVSMMU()
        let a = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: hostDevices.0)
        let b = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu1", hostDeviceID: hostDevices.1)
        try client.setDeviceID(vsmmu: vsmmu, viommu: a.viommu, hostDeviceID: hostDevices.0, streamID: streamIDs.0)
        try client.setDeviceID(vsmmu: vsmmu, viommu: b.viommu, hostDeviceID: hostDevices.1, streamID: streamIDs.1)
        let served = try #require(server.server.state.withLock { $0.vsmmus[vsmmu] })
        return TwoViommuVSMMU(client: client, vsmmu: vsmmu, viommus: [a.viommu, b.viommu],
                              handles: [ViommuHandle(rawValue: a.backendViommuID), ViommuHandle(rawValue: b.backendViommuID)],
                              served: served)
    }

    /// What smmu`n` would push for its viommu `handle`.
    static func push(_ server: TestServer, pSMMU: String, handle: ViommuHandle, _ records: [EventRecord], lostBefore: Bool = false) {
        server.server.eventService.sink(.pSMMU(pSMMU)).viommuEventsArrived(ViommuEvents(viommu: handle, records: records, lostBefore: lostBefore))
    }

    static func fault(_ streamID: StreamID, at address: UInt64) -> EventRecord {
        EventRecord(id: .translation, streamID: streamID, inputAddress: address)
    }

    /// Pushes events of vSID `vsID` from smmu0's viommu `handle` on another thread, `around` of them before
    /// the VMM's socket shuts and as many after its vSMMUs are torn down. Returns how many were pushed.
    static func pushWhileDisconnecting(_ server: TestServer, handle: ViommuHandle, vsID: StreamID, client: VSMMUClient,
                                       around: Int) throws -> Int {
        let pushed = Locked(0), stop = Locked(false)
        let pusher = try OSThread {
            while !stop.withLock({ $0 }) {
                push(server, pSMMU: "smmu0", handle: handle, [fault(vsID, at: 0x1000)])
                pushed.withLock { $0 += 1 }
            }
        }
        eventually { pushed.withLock { $0 } > around }
        // The VMM goes away: its end of the socket shuts (the daemon's thread reads EOF).
        _ = shutdown(client.fileDescriptor, Int32(SHUT_RDWR))
        eventually { server.server.vsmmuCount == 0 }
        let atTeardown = pushed.withLock { $0 }
        eventually { pushed.withLock { $0 } > atTeardown + around }
        stop.withLock { $0 = true }
        pusher.join()
        return pushed.withLock { $0 }
    }

    @Test func theEventsOfEachViommuReachOnlyTheOwningVSMMUsQueueInOrderWithTheirViommuID() throws {
        let server = try TestServer(pSMMUCount: 2)
        defer { server.stop() }
        let mine = try Self.twoViommus(server)
        let other = try Self.twoViommus(server, hostDevices: (2, 18), streamIDs: (0x8, 0x9))
        let myQueue = RecordingEventQueue(), otherQueue = RecordingEventQueue()
        _ = mine.served.events.replaceQueue(with: myQueue)
        _ = other.served.events.replaceQueue(with: otherQueue)
        // Interleaved batches from both viommus, many events.
        for i in 0..<200 {
            Self.push(server, pSMMU: "smmu0", handle: mine.handles[0], [Self.fault(0x8, at: UInt64(i) << 12)])
            Self.push(server, pSMMU: "smmu1", handle: mine.handles[1], [Self.fault(0x9, at: UInt64(i) << 12),
                                                                        Self.fault(0x9, at: UInt64(i) << 12 | 0x800)])
        }
        let written = myQueue.written
        #expect(written.count == 600)
        let fromFirst = written.filter { $0.viommu == mine.viommus[0] }
        let fromSecond = written.filter { $0.viommu == mine.viommus[1] }
        #expect(fromFirst.map(\.record.streamID) == Array(repeating: 0x8, count: 200))
        #expect(fromSecond.map(\.record.streamID) == Array(repeating: 0x9, count: 400))
        #expect(fromFirst.map(\.record.inputAddress) == (0..<200).map { UInt64($0) << 12 })
        var expectedSecond: [UInt64] = []
        for i in 0..<200 { expectedSecond += [UInt64(i) << 12, UInt64(i) << 12 | 0x800] }
        #expect(fromSecond.map(\.record.inputAddress) == expectedSecond)
        #expect(!written.contains { $0.lostBefore })
        // The other vSMMU, with the same vSIDs on the same pSMMUs, got nothing.
        #expect(otherQueue.written.isEmpty)
        let index0 = ViommuIndex(Int(mine.viommus[0])), index1 = ViommuIndex(Int(mine.viommus[1]))
        #expect(mine.served.events.counters(index0).forwarded == 200)
        #expect(mine.served.events.counters(index1).forwarded == 400)
        #expect(other.served.events.counters(index0) == ViommuEventCounters())
    }

    @Test func anEventOfAnUnregisteredVSIDIsDroppedAsDeviceGoneAndOneWithoutAQueueAsNoQueue() throws {
        let server = try TestServer(pSMMUCount: 2)
        defer { server.stop() }
        let vm = try Self.twoViommus(server)
        let index0 = ViommuIndex(Int(vm.viommus[0]))
        // No queue mapped yet.
        Self.push(server, pSMMU: "smmu0", handle: vm.handles[0], [Self.fault(0x8, at: 0x1000), Self.fault(0x8, at: 0x2000)])
        #expect(vm.served.events.counters(index0).droppedNoQueue == 2)
        let queue = RecordingEventQueue()
        _ = vm.served.events.replaceQueue(with: queue)
        // vSID 0x9 is registered on the other viommu, 0x10 nowhere: neither is this viommu's device.
        Self.push(server, pSMMU: "smmu0", handle: vm.handles[0], [Self.fault(0x9, at: 0x1000), Self.fault(0x10, at: 0x1000),
                                                                  Self.fault(0x8, at: 0x3000)])
        #expect(queue.written.map(\.record.streamID) == [0x8])
        // Unregistered with events in flight: what arrives after is the device gone.
        try vm.client.unsetDeviceID(vsmmu: vm.vsmmu, viommu: vm.viommus[0], hostDeviceID: 1, streamID: 0x8)
        Self.push(server, pSMMU: "smmu0", handle: vm.handles[0], [Self.fault(0x8, at: 0x4000)])
        let counters = vm.served.events.counters(index0)
        #expect(counters.forwarded == 1)
        #expect(counters.droppedDeviceGone == 3)
        #expect(counters.droppedNoQueue == 2)
        #expect(queue.written.count == 1)
    }

    @Test func aLostEventsReportIsCountedUpstreamAndMarksTheNextEventWritten() throws {
        let server = try TestServer(pSMMUCount: 2)
        defer { server.stop() }
        let vm = try Self.twoViommus(server)
        let queue = RecordingEventQueue()
        _ = vm.served.events.replaceQueue(with: queue)
        Self.push(server, pSMMU: "smmu0", handle: vm.handles[0], [], lostBefore: true)
        Self.push(server, pSMMU: "smmu0", handle: vm.handles[0], [Self.fault(0x8, at: 0x1000)])
        #expect(queue.written.map(\.lostBefore) == [true])
        #expect(vm.served.events.counters(ViommuIndex(Int(vm.viommus[0]))).lostUpstream == 1)
    }

    @Test func afterDestroyTheEventsOfItsViommusAreOrphanedAndItsQueueIsClosed() throws {
        let server = try TestServer(pSMMUCount: 2)
        defer { server.stop() }
        let vm = try Self.twoViommus(server)
        let queue = RecordingEventQueue()
        _ = vm.served.events.replaceQueue(with: queue)
        let routes = server.server.eventService.routeCount
        let orphanedBefore = server.server.eventService.orphaned.load(ordering: .relaxed)
        try vm.client.destroyVSMMU(vm.vsmmu)
        #expect(queue.isClosed)
        #expect(server.server.eventService.routeCount == routes - 2)
        Self.push(server, pSMMU: "smmu0", handle: vm.handles[0], [Self.fault(0x8, at: 0x1000)])
        Self.push(server, pSMMU: "smmu1", handle: vm.handles[1], [Self.fault(0x9, at: 0x1000), Self.fault(0x9, at: 0x2000)])
        #expect(server.server.eventService.orphaned.load(ordering: .relaxed) == orphanedBefore + 3)
        #expect(queue.written.isEmpty)
    }

    @Test func aDisconnectWhileEventsArriveClosesTheQueueAndCountsTheRestAsOrphaned() throws {
        let server = try TestServer(pSMMUCount: 2)
        defer { server.stop() }
        let vm = try Self.twoViommus(server)
        let queue = RecordingEventQueue()
        _ = vm.served.events.replaceQueue(with: queue)
        let total = UInt64(try Self.pushWhileDisconnecting(server, handle: vm.handles[0], vsID: 0x8, client: vm.client, around: 100))
        #expect(queue.isClosed)
        #expect(server.server.vsmmuCount == 0)
        let written = UInt64(queue.written.count)
        let orphaned = server.server.eventService.orphaned.load(ordering: .relaxed)
        // Every event went somewhere: into the queue, or (after the teardown's unroute) orphaned, or, for
        // one that raced the teardown, dropped for the device gone or the queue closed.
        #expect(written > 0)
        #expect(orphaned >= 100)
        #expect(written + orphaned <= total)
    }
}
