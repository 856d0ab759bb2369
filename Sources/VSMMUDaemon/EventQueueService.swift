import SharedQueue
import SystemPackage
import SMMUv3
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

// Concurrency notes (PROTOCOL.md §9; see also EventService.swift).
//
// The event service calls ``EventQueueService/write(_:viommu:lostBefore:)`` from whichever thread delivers
// an event batch (a backend's event thread, or a connection thread in SIMULATE_DMA); the owner's connection
// thread re-maps (a new call eventfd), unmaps, and a teardown or the daemon's stop closes. All of them take
// the service's one lock (`state`), held across a batch's slot writes, its PROD store and the write to call,
// and across the teardown's STOPPED store, signal, munmap and closes: an unmap never munmaps under a writer,
// and a writer after it finds `closed` and writes nothing. The lock is never held while waiting for the VMM:
// the call eventfd is non-blocking (O_NONBLOCK set at map time; the VMM shares the open file and could clear
// it again, and then a full count would block a write: `eventfd_write` waits only without O_NONBLOCK, and
// the count reaches its maximum only after 2^64 − 2 signals without a read).
//
// The VMM shares the memory and can change anything in it at any moment: the producer keeps PROD and the
// sequence privately, reads CONS once per batch into a local and bounds-checks it (``EventQueueProducer``).

/// One vSMMU's event queue the daemon writes into (PROTOCOL.md §9): the VMM's memfd mapped and its call
/// eventfd, written by ``EventQueueProducer`` under one lock.
final class EventQueueService: EventQueueTarget, @unchecked Sendable {
    /// The memfd (owned).
    let memoryFD: Int32
    /// The file the memfd is: a MAP_EVENT_QUEUE of the same file replaces the call eventfd.
    let device: UInt64
    let inode: UInt64
    /// The mapping: exactly the geometry's required size, shared.
    let base: UnsafeMutableRawPointer
    let length: Int
    let geometry: EventQueueGeometry

    private struct State {
        var producer: EventQueueProducer
        /// The call eventfd (owned).
        var callFD: Int32
        var closed = false
    }
    private let state: Locked<State>

    /// The fd-store names of its two descriptors (PROTOCOL.md §9).
    static func storeNames(_ vsmmu: VSMMUID) -> (memory: String, call: String) {
        let prefix = "events-" + String(vsmmu.rawValue, radix: 16)
        return (prefix + "-memory", prefix + "-call")
    }

    /// Checks and maps an event queue's memory and call eventfd as MAP_EVENT_QUEUE does (PROTOCOL.md §5.17,
    /// the checks of MAP_QUEUE adapted), in the spec's order, and stores `state` = RUNNING. `log2Entries`
    /// `nil` (a queue handed back by the fd store) takes n from the configuration line. The sequence goes on
    /// from the slot before PROD (a re-map after a restart), else from 1. Takes none of the fds: the caller
    /// closes them when this throws.
    init(memory: Int32, call: Int32, log2Entries: Int?, vsmmu: VSMMUID) throws(QueueRefusal) {
        // 1. A memfd sealed against shrinking, large enough for 2^n slots.
        let file = try QueueDescriptorChecks.checkSealedMemfd(memory)
        let n = try QueueDescriptorChecks.log2Entries(log2Entries, of: memory)
        guard let geometry = EventQueueGeometry(log2Entries: n) else {
            throw .memory(0, "log2_entries \(n) is outside \(EventQueueLayout.log2EntriesRange)")
        }
        let size = geometry.requiredSize
        guard file.size >= size else {
            throw .memory(0, "the memfd holds \(file.size) bytes; an event queue of 2^\(n) slots needs \(size)")
        }
        // 2. The call eventfd.
        try QueueDescriptorChecks.checkEventFD(call, "call")
        let mapped = try QueueDescriptorChecks.mapShared(memory, length: size)
        guard let region = EventQueueRegion(base: mapped, length: size, geometry: geometry) else {
            try? SystemCall.unmap(mapped, length: size)
            throw .memory(0, "the mapping is not aligned")
        }
        // 3. The configuration line, read once; 4. PROD and CONS, read once each.
        let configuration = region.loadConfiguration()
        var problem: String?
        if configuration.magic != EventQueueLayout.magic {
            problem = "bad magic 0x\(String(configuration.magic, radix: 16)) (expected 0x\(String(EventQueueLayout.magic, radix: 16)))"
        } else if configuration.version != EventQueueLayout.version {
            problem = "layout version \(configuration.version) (expected \(EventQueueLayout.version))"
        } else if Int(configuration.log2Entries) != n {
            problem = "the configuration line says log2_entries \(configuration.log2Entries), the request \(n)"
        } else {
            let prod = region.loadProducer(), cons = region.loadConsumer()
            if !geometry.isValid(prod) || !geometry.isValid(cons) {
                problem = "PROD 0x\(String(prod, radix: 16)) or CONS 0x\(String(cons, radix: 16)) is not a position of an event queue of 2^\(n) slots"
            } else if geometry.distance(from: geometry.position(of: cons), to: geometry.position(of: prod)) > geometry.entries {
                problem = "PROD 0x\(String(prod, radix: 16)) is more than 2^\(n) events ahead of CONS 0x\(String(cons, radix: 16))"
            }
        }
        if let problem {
            try? SystemCall.unmap(mapped, length: size)
            throw .memory(0, "the event queue's header is wrong: \(problem)")
        }
        memoryFD = memory
        device = file.device
        inode = file.inode
        base = mapped
        length = size
        self.geometry = geometry
        // Accepted: call must never block the daemon (see the notes above). Set only now: a refused request
        // changes nothing.
        try? SystemCall.setNonBlocking(call)
        let producer = EventQueueProducer(region: region, vsmmu: vsmmu.rawValue)
        state = Locked(State(producer: producer, callFD: call))
        if producer.start() { _ = try? SystemCall.writeEvent(call) }
    }

    /// Where the daemon writes the next event (PROD, with OVFLG): MAP_EVENT_QUEUE's reply.
    var producerPosition: UInt32 { state.withLock { $0.producer.producer } }

    /// The sequence number of the last event written or dropped.
    var sequence: UInt64 { state.withLock { $0.producer.sequence } }

    /// The two descriptors (for the fd store, which duplicates them).
    var descriptors: (memory: Int32, call: Int32) { state.withLock { (memoryFD, $0.callFD) } }

    func write(_ records: [EventRecord], viommu: UInt32, lostBefore: Bool) -> EventWriteOutcome {
        state.withLock { s in
            guard !s.closed else { return EventWriteOutcome(written: 0, droppedFull: 0, closed: true) }
            let result = s.producer.write(records, viommu: viommu, lostBefore: lostBefore)
            if result.signalCall { _ = try? SystemCall.writeEvent(s.callFD) }
            return EventWriteOutcome(written: result.written, droppedFull: result.dropped)
        }
    }

    /// Takes `call` as the queue's call eventfd (a MAP_EVENT_QUEUE of the same memfd) and closes the old
    /// one. The caller checked it; the service owns it from the call on. The queue is signalled once, so a
    /// VMM that slept on the old eventfd looks again.
    func replaceCall(_ call: Int32) {
        state.withLock { s in
            guard !s.closed else {
                _ = Glibc.close(call)
                return
            }
            try? SystemCall.setNonBlocking(call)
            _ = Glibc.close(s.callFD)
            s.callFD = call
            _ = try? SystemCall.writeEvent(call)
        }
    }

    /// Ends the queue (PROTOCOL.md §9): state STOPPED, call signalled, memory unmapped, both descriptors
    /// closed. Idempotent; waits for a write in progress.
    func close() {
        state.withLock { s in
            guard !s.closed else { return }
            s.closed = true
            s.producer.stop()
            _ = try? SystemCall.writeEvent(s.callFD)
            try? SystemCall.unmap(base, length: length)
            _ = Glibc.close(memoryFD)
            _ = Glibc.close(s.callFD)
        }
    }
}
