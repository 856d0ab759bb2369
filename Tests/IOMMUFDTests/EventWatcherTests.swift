import Foundation
import Glibc
import IOMMUFD
import PSMMU
import SMMUv3
import Testing

/// A sink that records every batch with the thread that delivered it; it can hold its first batch of
/// one viommu until released, and keeps a log shared with the test.
final class WatchedSink: ViommuEventSink, @unchecked Sendable {
    // Everything below is only accessed with `condition` locked.
    private let condition = NSCondition()
    private var batches: [ViommuEvents] = []
    private var threads: Set<UInt> = []
    private(set) var log: [String] = []
    private var holding: ViommuHandle?
    private var held = false
    private var released = false

    /// Holds the first batch of `viommu` in the sink until ``release()``.
    func hold(firstBatchOf viommu: ViommuHandle) {
        condition.lock()
        holding = viommu
        condition.unlock()
    }

    func viommuEventsArrived(_ events: ViommuEvents) {
        condition.lock()
        defer { condition.unlock() }
        threads.insert(UInt(pthread_self()))
        if events.viommu == holding, !held {
            held = true
            log.append("holding \(events.viommu)")
            condition.broadcast()
            while !released { condition.wait() }
        }
        batches.append(events)
        log.append("delivered \(events.viommu)")
        condition.broadcast()
    }

    func release() {
        condition.lock()
        released = true
        condition.broadcast()
        condition.unlock()
    }

    func note(_ line: String) {
        condition.lock()
        log.append(line)
        condition.unlock()
    }

    var received: [ViommuEvents] {
        condition.lock()
        defer { condition.unlock() }
        return batches
    }

    var deliveringThreads: Set<UInt> {
        condition.lock()
        defer { condition.unlock() }
        return threads
    }

    /// `viommu`'s batches as one line of items: each record's input address in hex, `lost` for a loss.
    func items(of viommu: ViommuHandle) -> [String] {
        received.filter { $0.viommu == viommu }.flatMap { batch in
            (batch.lostBefore ? ["lost"] : []) + batch.records.map { String($0.inputAddress, radix: 16) }
        }
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

    /// Waits (up to 10 s) until the sink holds a batch.
    @discardableResult
    func waitUntilHolding() -> Bool {
        let deadline = Date(timeIntervalSinceNow: 10)
        condition.lock()
        defer { condition.unlock() }
        while !held {
            if !condition.wait(until: deadline) { return held }
        }
        return true
    }
}

/// A thread running `body`; ``join()`` waits for it.
final class TestThread: @unchecked Sendable {
    private let done = NSCondition()
    private var finished = false

    init(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread { [self] in
            body()
            done.lock()
            finished = true
            done.broadcast()
            done.unlock()
        }
        thread.start()
    }

    /// Waits (up to 10 s) for the body to return. - Returns: whether it did.
    @discardableResult
    func join() -> Bool {
        let deadline = Date(timeIntervalSinceNow: 10)
        done.lock()
        defer { done.unlock() }
        while !finished {
            if !done.wait(until: deadline) { return finished }
        }
        return true
    }
}

/// The vEVENTQ watcher: one epoll thread for every vEVENTQ, pushing what it reads to the sink; driven
/// by a fake iommufd whose vEVENTQ descriptors are real sockets.
@Suite struct EventWatcherTests {
    static func header(flags: UInt32 = 0, sequence: UInt32) -> [UInt8] { le32(flags) + le32(sequence) }
    static func vevent(_ address: UInt64, sequence: UInt32) -> [UInt8] {
        header(sequence: sequence) + EventRecord(id: .translation, streamID: 0x10, inputAddress: address).bytes
    }
    static func lostEvents(sequence: UInt32) -> [UInt8] { header(flags: 1, sequence: sequence) }

    let fake = FakeIOMMUFD(realEventQueues: true)
    let watcher = VEventWatcher()

    func backend(device: FakeIOMMUFD? = nil) -> IOMMUFDBackend {
        IOMMUFDBackend(name: "smmu3", device: device ?? fake, configuration: .init(eventQueueDepth: 16), eventWatcher: watcher)
    }

    func attach(_ backend: IOMMUFDBackend, _ hostDeviceID: UInt32 = 1) throws -> (ViommuHandle, Int32) {
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: hostDeviceID, nestParentHWPT: 2))
        return (viommu, try #require(backend.heldDescriptors(of: viommu).eventQueue))
    }

    @Test func eventsReachTheSinkOfTheirViommuInTheOrderTheKernelQueuedThem() throws {
        let backend = backend()
        let sink = WatchedSink()
        backend.setEventSink(sink)
        let (a, fdA) = try attach(backend)
        let (b, fdB) = try attach(backend, 2)

        fake.writeEvents(descriptor: fdA, Self.vevent(0x1000, sequence: 0) + Self.vevent(0x2000, sequence: 1))
        fake.writeEvents(descriptor: fdB, Self.vevent(0xB000, sequence: 0))
        fake.writeEvents(descriptor: fdA, Self.vevent(0x3000, sequence: 2))

        #expect(sink.wait { $0.reduce(0) { $0 + $1.records.count } == 4 })
        #expect(sink.items(of: a) == ["1000", "2000", "3000"])
        #expect(sink.items(of: b) == ["b000"])
        #expect(backend.counters.events == 4)
        #expect(watcher.threadsStarted == 1)
    }

    @Test func aLostEventsHeaderAndASequenceGapArriveAsLostBeforeTheNextRecords() throws {
        let backend = backend()
        let sink = WatchedSink()
        backend.setEventSink(sink)
        let (viommu, fd) = try attach(backend)

        // Event 0, then three drops (1, 2, 3) re-queued the LOST_EVENTS header; then 4; then 5 and 6
        // were lost with the header replaced by event 7 (`iommufd_vevent_handler`): a gap.
        fake.writeEvents(descriptor: fd, Self.vevent(0x1000, sequence: 0) + Self.lostEvents(sequence: 3))
        fake.writeEvents(descriptor: fd, Self.vevent(0x4000, sequence: 4))
        fake.writeEvents(descriptor: fd, Self.vevent(0x7000, sequence: 7))

        #expect(sink.wait { $0.reduce(0) { $0 + $1.records.count } == 3 })
        #expect(sink.items(of: viommu) == ["1000", "lost", "4000", "lost", "7000"])
        #expect(backend.lostEventCount == 5)
    }

    @Test func withoutASinkTakeEventsStillReadsTheQueueAndNoThreadRuns() throws {
        let backend = backend()
        let (viommu, fd) = try attach(backend)
        fake.writeEvents(descriptor: fd, Self.vevent(0x1000, sequence: 0))

        #expect(backend.takeEvents(viommu: viommu).map(\.inputAddress) == [0x1000])
        #expect(!watcher.isRunning)
    }

    @Test func settingTheSinkLaterWatchesTheQueuesAttachedBeforeAndNilStopsTheThread() throws {
        let backend = backend()
        let (viommu, fd) = try attach(backend)
        let sink = WatchedSink()

        backend.setEventSink(sink)
        backend.setEventSink(sink)
        #expect(watcher.threadsStarted == 1, "the same sink again changes nothing")
        fake.writeEvents(descriptor: fd, Self.vevent(0x1000, sequence: 0))
        #expect(sink.wait { !$0.isEmpty })
        #expect(sink.items(of: viommu) == ["1000"])

        backend.setEventSink(nil)
        #expect(!watcher.isRunning)
        fake.writeEvents(descriptor: fd, Self.vevent(0x2000, sequence: 1))
        #expect(backend.takeEvents(viommu: viommu).map(\.inputAddress) == [0x2000])
        #expect(sink.items(of: viommu) == ["1000"])
    }

    @Test func detachWithEventsInFlightWaitsForTheDeliveryAndNothingArrivesAfterItReturns() throws {
        let backend = backend()
        let sink = WatchedSink()
        backend.setEventSink(sink)
        let (a, fdA) = try attach(backend)
        let (b, fdB) = try attach(backend, 2)
        sink.hold(firstBatchOf: a)

        fake.writeEvents(descriptor: fdA, Self.vevent(0x1000, sequence: 0))
        #expect(sink.waitUntilHolding())
        // More events behind the one being delivered.
        fake.writeEvents(descriptor: fdA, Self.vevent(0x2000, sequence: 1))
        let detach = TestThread {
            do { try backend.detachViommu(a) } catch { sink.note("detach failed: \(error)") }
            sink.note("detached")
        }
        sink.release()
        #expect(detach.join())

        // The watcher serves B after the detach: any event of A still to come would have come by then.
        fake.writeEvents(descriptor: fdB, Self.vevent(0xB000, sequence: 0))
        #expect(sink.wait { batches in batches.contains { $0.viommu == b } })
        let log = sink.log
        let detached = try #require(log.firstIndex(of: "detached"))
        #expect(log.firstIndex(of: "delivered \(a)").map { $0 < detached } == true, "detach waited for the delivery: \(log)")
        #expect(!log[detached...].contains("delivered \(a)"), "nothing of \(a) after its detach: \(log)")
        #expect(fake.closeCount(fdA) == 1)
        #expect(!fake.writeEvents(descriptor: fdA, Self.vevent(0x3000, sequence: 2)), "the vEVENTQ is closed")
        #expect(watcher.isRunning, "B is still watched")

        try backend.detachViommu(b)
        #expect(fake.closeCount(fdB) == 1)
        #expect(!watcher.isRunning)
        #expect(watcher.registeredCount == 0)
    }

    @Test func manyViommusOfSeveralBackendsShareOneWatcherThread() throws {
        let second = FakeIOMMUFD(realEventQueues: true)
        for id in 5001...5008 as ClosedRange<UInt32> { second.script(.viommuAlloc, .succeed(objectID: id)) }
        let backends = [backend(), backend(device: second)]
        let sink = WatchedSink()
        var queues: [(IOMMUFDBackend, FakeIOMMUFD, ViommuHandle, Int32)] = []
        for (backend, device) in zip(backends, [fake, second]) {
            backend.setEventSink(sink)
            for host in 1...8 as ClosedRange<UInt32> {
                let (viommu, fd) = try attach(backend, host)
                queues.append((backend, device, viommu, fd))
            }
        }

        for (i, (_, device, _, fd)) in queues.enumerated() {
            device.writeEvents(descriptor: fd, Self.vevent(UInt64(i + 1) << 12, sequence: 0))
        }

        #expect(sink.wait { $0.reduce(0) { $0 + $1.records.count } == queues.count })
        for (i, (_, _, viommu, _)) in queues.enumerated() {
            #expect(sink.items(of: viommu) == [String(UInt64(i + 1) << 12, radix: 16)])
        }
        #expect(sink.deliveringThreads.count == 1)
        #expect(watcher.threadsStarted == 1)
        #expect(watcher.registeredCount == queues.count)

        for (backend, _, viommu, _) in queues { try backend.detachViommu(viommu) }
        #expect(!watcher.isRunning)
    }

    @Test func theIOMMUFDBackendHasNoSimulatedDevices() {
        let error: BackendError? = {
            do throws(BackendError) { _ = try backend().simulateDMA(SimulatedDMA(hostDeviceID: 1, address: 0x1000)) } catch { return error }
            return nil
        }()
        #expect(error?.kind == .unsupported)
    }
}
