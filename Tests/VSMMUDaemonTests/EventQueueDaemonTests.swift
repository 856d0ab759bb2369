import CSocketShims
import Foundation
import InvalidationEngine
import PSMMU
import SharedQueue
import SMMUv3
import Synchronization
import Testing
import VirtualSMMU
import VSMMUClient
@testable import VSMMUDaemon
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

private let eventQueueNames = Atomic<Int>(0)

/// The VMM's side of an event queue, as a test plays it (PROTOCOL.md §9): a sealed memfd mapped shared, a
/// call eventfd, and P's ``EventQueueConsumer`` over it. Used by one thread at a time.
final class TestEventVMM: @unchecked Sendable {
    let memory: Int32
    private(set) var call: Int32
    let base: UnsafeMutableRawPointer
    let length: Int
    let region: EventQueueRegion
    var consumer: EventQueueConsumer

    init(log2Entries: Int = 8, initialise: Bool = true) throws {
        let geometry = try #require(EventQueueGeometry(log2Entries: log2Entries))
        memory = try SystemCall.memfdCreate("vsmmu-test-events-\(getpid())-\(eventQueueNames.add(1, ordering: .relaxed).newValue)")
        length = geometry.requiredSize
        try SystemCall.truncate(memory, to: length)
        base = try SystemCall.mapShared(memory, length: length)
        try SystemCall.addSeals(VSMMU_F_SEAL_SHRINK, to: memory)
        region = try #require(EventQueueRegion(base: base, length: length, geometry: geometry))
        if initialise { region.initialise() }
        consumer = EventQueueConsumer(region: region)
        call = try SystemCall.eventFD(nonBlocking: true)
    }

    deinit {
        try? SystemCall.unmap(base, length: length)
        close(memory)
        close(call)
    }

    /// A new call eventfd (for a MAP_EVENT_QUEUE that replaces it); the old one is closed.
    func renewCall() throws {
        close(call)
        call = try SystemCall.eventFD(nonBlocking: true)
    }

    var state: UInt32 { region.loadState() }
    var producer: UInt32 { region.loadProducer() }

    /// Every event published now, CONS stored past them.
    func drain() -> [EventQueueEntry] { consumer.drain() }

    /// Waits (bounded) until `count` events are published past CONS, draining them.
    func take(_ count: Int, seconds: Double = 20) -> [EventQueueEntry] {
        var taken: [EventQueueEntry] = []
        let deadline = Date().addingTimeInterval(seconds)
        while taken.count < count, Date() < deadline {
            taken += consumer.drain()
            if taken.count < count { usleep(100) }
        }
        return taken
    }
}

extension VSMMUClient {
    /// MAP_EVENT_QUEUE of `vmm`'s memfd and call (or `fds` instead); the reply.
    func mapEventQueue(vsmmu: VSMMUID, _ vmm: TestEventVMM, log2Entries: UInt32? = nil, fds: [Int32]? = nil) throws -> Response {
        try call(.mapEventQueue(MapEventQueue(vsmmu: vsmmu, log2Entries: log2Entries ?? UInt32(vmm.region.geometry.log2Entries))),
                 fileDescriptors: fds ?? [vmm.memory, vmm.call])
    }

    /// MAP_EVENT_QUEUE that must succeed; the PROD the daemon writes next.
    @discardableResult
    func mapEventQueueOrFail(vsmmu: VSMMUID, _ vmm: TestEventVMM, sourceLocation: SourceLocation = #_sourceLocation) throws -> UInt32 {
        let response = try mapEventQueue(vsmmu: vsmmu, vmm)
        guard case .mapEventQueue(let mapped) = response else {
            Issue.record("MAP_EVENT_QUEUE answered \(response)", sourceLocation: sourceLocation)
            return UInt32.max
        }
        return mapped.producer
    }

    /// SIMULATE_DMA of a read at `address` whose walk finds `walk`.
    func simulateDMA(vsmmu: VSMMUID, streamID: StreamID, address: UInt64, write: Bool = false,
                     walk: DMAWalk = .unmapped) throws -> Response {
        try call(.simulateDMA(SimulateDMA(vsmmu: vsmmu, streamID: streamID, write: write, address: address, walk: walk)))
    }
}

/// The guest's event queue through the daemon (issue 14): MAP_EVENT_QUEUE, SIMULATE_DMA on simulated
/// pSMMUs, overflow, teardown and STATS.
@Suite struct EventQueueDaemonTests {
    static let running = EventQueueLayout.State.running.rawValue
    static let stopped = EventQueueLayout.State.stopped.rawValue

    /// A VMM with a vSMMU whose viommu 0 is on smmu0 (host device `hostDevices.0`, vSID 0x8) and viommu 1 on
    /// smmu1 (`hostDevices.1`, vSID 0x9), both linked with a stage-1 STE.
    struct VM {
        let client: VSMMUClient
        let vsmmu: VSMMUID
        let viommus: [UInt32]
    }

    static func vm(_ server: TestServer, hostDevices: (UInt32, UInt32) = (1, 17)) throws -> VM {
        let client = try server.client()
        let vsmmu = try client.createVSMMU()
        let a = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: hostDevices.0).viommu
        let b = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu1", hostDeviceID: hostDevices.1).viommu
        try client.setDeviceID(vsmmu: vsmmu, viommu: a, hostDeviceID: hostDevices.0, streamID: 0x8)
        try client.setDeviceID(vsmmu: vsmmu, viommu: b, hostDeviceID: hostDevices.1, streamID: 0x9)
        _ = try client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: s1STE(), contextDescriptors: [.valid(asid: 1)])
        _ = try client.linkSTE(vsmmu: vsmmu, streamID: 0x9, ste: s1STE(), contextDescriptors: [.valid(asid: 2)])
        return VM(client: client, vsmmu: vsmmu, viommus: [a, b])
    }

    /// A fault of vSID `streamID` at `address`, through SIMULATE_DMA; the record the reply carries.
    static func fault(_ vm: VM, _ streamID: StreamID, at address: UInt64,
                      sourceLocation: SourceLocation = #_sourceLocation) throws -> EventRecord? {
        let reply = try vm.client.simulateDMA(vsmmu: vm.vsmmu, streamID: streamID, address: address)
        guard case .simulateDMA(let dma) = reply, case .fault(let record) = dma.outcome else {
            Issue.record("SIMULATE_DMA answered \(reply)", sourceLocation: sourceLocation)
            return nil
        }
        return record
    }

    @Test func theFaultOfADeviceBehindEachViommuReachesOnlyItsOwnersQueueInOrderWithItsVSIDAndViommu() throws {
        let server = try TestServer(pSMMUCount: 2)
        defer { server.stop() }
        let mine = try Self.vm(server)
        let other = try Self.vm(server, hostDevices: (2, 18))
        let myQueue = try TestEventVMM(), otherQueue = try TestEventVMM()
        #expect(try mine.client.mapEventQueueOrFail(vsmmu: mine.vsmmu, myQueue) == 0)
        #expect(try other.client.mapEventQueueOrFail(vsmmu: other.vsmmu, otherQueue) == 0)
        #expect(myQueue.state == Self.running)
        let rounds = 100
        for i in 0..<rounds {
            let first = try Self.fault(mine, 0x8, at: UInt64(i) << 12)
            #expect(first?.streamID == 0x8 && first?.id == .translation)
            let second = try Self.fault(mine, 0x9, at: UInt64(i) << 12)
            #expect(second?.streamID == 0x9)
        }
        let events = myQueue.take(2 * rounds)
        #expect(events.count == 2 * rounds)
        #expect(events.map(\.sequence) == (1...UInt64(2 * rounds)).map { $0 })
        #expect(events.allSatisfy { $0.vsmmu == mine.vsmmu.rawValue && !$0.lostBefore })
        let first = events.filter { $0.viommu == mine.viommus[0] }, second = events.filter { $0.viommu == mine.viommus[1] }
        #expect(first.map(\.record.streamID) == Array(repeating: 0x8, count: rounds))
        #expect(second.map(\.record.streamID) == Array(repeating: 0x9, count: rounds))
        #expect(first.map(\.record.inputAddress) == (0..<rounds).map { UInt64($0) << 12 })
        #expect(second.map(\.record.inputAddress) == (0..<rounds).map { UInt64($0) << 12 })
        // The other VMM's queue, with the same vSIDs on the same pSMMUs, got nothing.
        #expect(otherQueue.producer == 0 && otherQueue.drain().isEmpty)
        let stats = try server.client().stats(vsmmu: mine.vsmmu)
        #expect(stats.value(.viommuEvents, viommu: UInt16(mine.viommus[0])) == UInt64(rounds))
        #expect(stats.value(.viommuEvents, viommu: UInt16(mine.viommus[1])) == UInt64(rounds))
        #expect(stats.value(.viommuEventsDroppedOverflow, viommu: UInt16(mine.viommus[0])) == 0)
    }

    @Test func aVMMThatNeverReadsSeesOVFLGOnceAndTheNextEventAfterItReadsCarriesLostBefore() throws {
        let server = try TestServer(pSMMUCount: 2)
        defer { server.stop() }
        let vm = try Self.vm(server)
        let queue = try TestEventVMM(log2Entries: 4)
        try vm.client.mapEventQueueOrFail(vsmmu: vm.vsmmu, queue)
        let routes = server.server.eventService.routeCount
        for i in 0..<40 { _ = try Self.fault(vm, 0x8, at: UInt64(i) << 12) }
        // 16 slots: PROD wrapped once past them, OVFLG toggled once (set), nothing else moved.
        let prod = queue.producer
        #expect(prod & EventQueueLayout.overflowFlag != 0)
        #expect(prod & ~EventQueueLayout.overflowFlag == 16)
        let stats = try server.client().stats(vsmmu: vm.vsmmu)
        #expect(stats.value(.viommuEvents, viommu: UInt16(vm.viommus[0])) == 16)
        #expect(stats.value(.viommuEventsDroppedOverflow, viommu: UInt16(vm.viommus[0])) == 24)
        // The ring is the bound: the daemon kept nothing of the 24 (no buffer; its tables did not grow).
        #expect(server.server.eventService.routeCount == routes)
        let served = try #require(server.server.state.withLock { $0.vsmmus[vm.vsmmu] })
        let service = try #require(served.events.queue.withLock { $0 } as? EventQueueService)
        #expect(service.sequence == 40)
        // The VMM reads, acknowledges; the next event says events were lost before it, with the gap in sequence.
        let read = queue.drain()
        #expect(read.map(\.sequence) == (1...16).map { UInt64($0) })
        let acknowledged = queue.consumer.acknowledgeOverflow()
        #expect(acknowledged)
        _ = try Self.fault(vm, 0x8, at: 0x100_0000)
        let next = queue.take(1)
        #expect(next.first?.lostBefore == true)
        #expect(next.first?.sequence == 41)
        // One overflow, one toggle: still set (equal to OVACKFLG now).
        #expect(queue.producer & EventQueueLayout.overflowFlag != 0)
    }

    @Test func unmapDestroyAndDisconnectStopTheQueueAndLaterEventsAreCountedAsDropped() throws {
        let server = try TestServer(pSMMUCount: 2)
        defer { server.stop() }
        // UNMAP_EVENT_QUEUE: STOPPED; the device's next fault is dropped for no queue.
        let vm = try Self.vm(server)
        let queue = try TestEventVMM()
        try vm.client.mapEventQueueOrFail(vsmmu: vm.vsmmu, queue)
        #expect(try vm.client.call(.unmapEventQueue(UnmapEventQueue(vsmmu: vm.vsmmu))) == .unmapEventQueue)
        #expect(queue.state == Self.stopped)
        _ = try Self.fault(vm, 0x8, at: 0x1000)
        #expect(try server.client().stats(vsmmu: vm.vsmmu).value(.viommuEventsDroppedNoQueue, viommu: UInt16(vm.viommus[0])) == 1)
        // No queue: UNMAP again succeeds.
        #expect(try vm.client.call(.unmapEventQueue(UnmapEventQueue(vsmmu: vm.vsmmu))) == .unmapEventQueue)

        // DESTROY_VSMMU: STOPPED; what its viommus' backends deliver after is orphaned.
        let again = try TestEventVMM()
        try vm.client.mapEventQueueOrFail(vsmmu: vm.vsmmu, again)
        let served = try #require(server.server.state.withLock { $0.vsmmus[vm.vsmmu] })
        let handle = try #require(served.engine.viommu(ViommuIndex(Int(vm.viommus[0])))?.handle)
        try vm.client.destroyVSMMU(vm.vsmmu)
        #expect(again.state == Self.stopped)
        let orphaned = server.server.eventService.orphaned.load(ordering: .relaxed)
        EventRoutingTests.push(server, pSMMU: "smmu0", handle: handle, [EventRecord(id: .translation, streamID: 0x8)])
        #expect(try server.client().stats().value(.daemonEventsOrphaned) == orphaned + 1)

        // The owner's connection closes while events keep arriving: no crash, STOPPED, the rest orphaned.
        let gone = try Self.vm(server, hostDevices: (3, 19))
        let third = try TestEventVMM()
        try gone.client.mapEventQueueOrFail(vsmmu: gone.vsmmu, third)
        let goneServed = try #require(server.server.state.withLock { $0.vsmmus[gone.vsmmu] })
        let goneHandle = try #require(goneServed.engine.viommu(ViommuIndex(Int(gone.viommus[0])))?.handle)
        _ = try EventRoutingTests.pushWhileDisconnecting(server, handle: goneHandle, vsID: 0x8, client: gone.client, around: 50)
        #expect(server.server.vsmmuCount == 0)
        #expect(third.state == Self.stopped)
        let written = third.drain().count
        #expect(written > 0)
        #expect(server.server.eventService.orphaned.load(ordering: .relaxed) >= orphaned + 1 + 50)
    }

    @Test func mapEventQueueRefusesTooManySlotsOtherMemoryAndABadHeaderAndTheSameMemfdReplacesCall() throws {
        let server = try TestServer(pSMMUCount: 2)
        defer { server.stop() }
        let vm = try Self.vm(server)
        // 2^11 slots > the default 1024.
        let big = try TestEventVMM(log2Entries: 11)
        let tooBig = refusal { _ = try vm.client.mapEventQueue(vsmmu: vm.vsmmu, big).unwrapOrThrow() }
        #expect(tooBig?.code == .limitExceeded)
        // A reload lowers the bound for queues mapped from then on.
        server.server.reload(eventQueueEntries: 16)
        let thirtyTwo = try TestEventVMM(log2Entries: 5)
        #expect(refusal { _ = try vm.client.mapEventQueue(vsmmu: vm.vsmmu, thirtyTwo).unwrapOrThrow() }?.code == .limitExceeded)
        server.server.reload(eventQueueEntries: 1024)
        // A header never initialised: VSMMU_FD_QUEUE_MEMORY.
        let blank = try TestEventVMM(initialise: false)
        #expect(refusal { _ = try vm.client.mapEventQueue(vsmmu: vm.vsmmu, blank).unwrapOrThrow() }?.detail
                == FileDescriptorProblem.queueMemory.rawValue)
        let queue = try TestEventVMM()
        // The call fd is no eventfd.
        #expect(refusal { _ = try vm.client.mapEventQueue(vsmmu: vm.vsmmu, queue, fds: [queue.memory, queue.memory]).unwrapOrThrow() }?.detail
                == FileDescriptorProblem.queueEventFD.rawValue)
        try vm.client.mapEventQueueOrFail(vsmmu: vm.vsmmu, queue)
        // Other memory: ALREADY_EXISTS, detail VSMMU_CONFLICT_EVENT_QUEUE.
        let other = try TestEventVMM()
        let conflict = refusal { _ = try vm.client.mapEventQueue(vsmmu: vm.vsmmu, other).unwrapOrThrow() }
        #expect(conflict?.code == .alreadyExists && conflict?.detail == ConflictKind.eventQueue.rawValue)
        // The same memfd: a new call eventfd, the same PROD.
        _ = try Self.fault(vm, 0x8, at: 0x1000)
        try queue.renewCall()
        #expect(try vm.client.mapEventQueueOrFail(vsmmu: vm.vsmmu, queue) == 1)
        #expect(queue.take(1).map(\.sequence) == [1])
        let sleeps = queue.consumer.prepareToSleep()
        #expect(sleeps)
        _ = try Self.fault(vm, 0x8, at: 0x2000)
        // The VMM slept: the daemon signalled the new call eventfd.
        #expect((try SystemCall.readEventNoWait(queue.call)) != nil)
        #expect(queue.take(1).map(\.sequence) == [2])
    }

    @Test func simulateDMAOfAnUnknownVSIDOrAnotherConnectionsVSMMUIsRefused() throws {
        let server = try TestServer(pSMMUCount: 2)
        defer { server.stop() }
        let vm = try Self.vm(server)
        #expect(refusal { _ = try vm.client.simulateDMA(vsmmu: vm.vsmmu, streamID: 0x77, address: 0).unwrapOrThrow() }?.code
                == .unknownStreamID)
        let stranger = try server.client()
        #expect(refusal { _ = try stranger.simulateDMA(vsmmu: vm.vsmmu, streamID: 0x8, address: 0).unwrapOrThrow() }?.code
                == .unknownVSMMU)
        // A mapped walk is no fault: the access fills the TLB, no event.
        let reply = try vm.client.simulateDMA(vsmmu: vm.vsmmu, streamID: 0x8, address: 0x1000, walk: .readWrite)
        guard case .simulateDMA(let dma) = reply else { Issue.record("\(reply)"); return }
        #expect(dma.outcome.event == nil)
    }

    @Test func simulateDMAOnAnIOMMUFDViommuIsUnsupported() throws {
        let host = try IOMMUFDThroughTheSocketTests.Host()
        defer { host.stop() }
        let vsmmu = try host.vsmmuWithTwoViommus()
        try host.register(vsmmu, 0, vsid: 0x8)
        let refused = refusal {
            _ = try host.client.simulateDMA(vsmmu: vsmmu, streamID: 0x8, address: 0x1000).unwrapOrThrow()
        }
        #expect(refused?.code == .unsupported)
        #expect(refused?.value == 0)
    }
}

extension Response {
    /// Throws the ERROR this response is, else returns it.
    func unwrapOrThrow() throws -> Response {
        if case .error(let error) = self { throw VSMMUClientError.server(error) }
        return self
    }
}
