import Foundation
import SMMUv3
import Testing
import VSMMUProtocol
import VSMMUTestSupport
@testable import SharedQueue

#if canImport(Glibc)
import Glibc
#endif

/// An event queue's memory between two inaccessible pages: any access outside the header and the slots
/// faults (the test process dies, which fails the run). Freed by ``release()``.
final class GuardedEventMemory {
    let mapping: UnsafeMutableRawPointer
    let mappingLength: Int
    let base: UnsafeMutableRawPointer
    let length: Int
    let region: EventQueueRegion

    init(log2Entries: Int) throws {
        let geometry = try #require(EventQueueGeometry(log2Entries: log2Entries))
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        length = geometry.requiredSize
        let pages = (length + page - 1) / page
        mappingLength = (pages + 2) * page
        let p = mmap(nil, mappingLength, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw FixtureFailure("mmap: \(errno)") }
        mapping = p
        // The region ends exactly where the trailing guard page starts (64-byte aligned: every size is).
        let end = p + (pages + 1) * page
        base = end - length
        guard mprotect(p + page, pages * page, PROT_READ | PROT_WRITE) == 0 else { throw FixtureFailure("mprotect: \(errno)") }
        region = try #require(EventQueueRegion(base: base, length: length, geometry: geometry))
        region.initialise()
    }

    func release() { munmap(mapping, mappingLength) }

    func u32(_ offset: Int) -> UInt32 { base.load(fromByteOffset: offset, as: UInt32.self) }
    func setU32(_ offset: Int, _ value: UInt32) { base.storeBytes(of: value, toByteOffset: offset, as: UInt32.self) }
    /// The bytes of the slots.
    func slotBytes() -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: base + EventQueueLayout.slotsOffset, count: length - EventQueueLayout.slotsOffset))
    }
}

struct FixtureFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A fault of `streamID` at `address`.
func fault(_ streamID: UInt32, _ address: UInt64 = 0x1000) -> EventRecord {
    EventRecord(id: .translation, streamID: streamID, inputAddress: address)
}

@Suite("Event queue memory")
struct EventQueueTests {
    // MARK: Geometry and region

    @Test func positionsWrapLikeTheEVTQsAndKeepTheOverflowFlag() throws {
        #expect(EventQueueGeometry(log2Entries: 3) == nil && EventQueueGeometry(log2Entries: 13) == nil)
        let g = try #require(EventQueueGeometry(log2Entries: 4))
        #expect(g.entries == 16 && g.positionMask == 0x1F && g.validBits == 0x8000_001F)
        #expect(g.advance(0x0F, by: 1) == 0x10 && g.advance(0x1F, by: 1) == 0)
        #expect(g.advance(0x8000_001F, by: 1) == 0x8000_0000)           // OVFLG kept across the wrap
        #expect(g.advance(0x8000_0000, by: UInt32.max) == 0x8000_001F)  // one back
        #expect(g.distance(from: 0x02, to: 0x12) == 16)                   // full: equal indices, wraps differ
        #expect(!g.isValid(0x20) && !g.isValid(0x4000_0000) && g.isValid(0x8000_001F))
    }

    @Test func everyAccessorReadsAndWritesTheOffsetTheLayoutNames() throws {
        let memory = try GuardedEventMemory(log2Entries: 4)
        defer { memory.release() }
        let region = memory.region
        #expect(memory.u32(0) == EventQueueLayout.magic)
        #expect(memory.base.load(fromByteOffset: 4, as: UInt16.self) == 1 && memory.base.load(fromByteOffset: 6, as: UInt8.self) == 4)
        #expect(region.loadConfiguration() == (EventQueueLayout.magic, 1, 4))
        region.storeProducer(0x8000_0013); #expect(memory.u32(0x40) == 0x8000_0013 && region.loadProducer() == 0x8000_0013)
        region.storeConsumer(0x8000_0002); #expect(memory.u32(0x80) == 0x8000_0002 && region.loadConsumer() == 0x8000_0002)
        region.storeState(.running); #expect(memory.u32(0xC0) == 1 && region.loadState() == 1)
        region.storeVMMSleeping(1); #expect(memory.u32(0x100) == 1 && region.loadVMMSleeping() == 1)
        #expect(EventQueueRegion(base: memory.base, length: memory.length - 1, geometry: region.geometry) == nil)
        let entry = EventQueueEntry(record: EventRecord(w0: 1, w1: 2, w2: 3, w3: 4), sequence: 9, vsmmu: 7, viommu: 1, flags: 1)
        // Position 0x13: index 3 (the wrap bit and OVFLG do not move the slot).
        memory.setU32(0x1000 + 3 * 64 + 0x34, 0xFFFF_FFFF) // a reserved word the daemon zeroes
        region.storeEntry(entry, at: 0x8000_0013)
        let slot = 0x1000 + 3 * 64
        #expect(memory.base.load(fromByteOffset: slot + 0x00, as: UInt64.self) == 1)
        #expect(memory.base.load(fromByteOffset: slot + 0x18, as: UInt64.self) == 4)
        #expect(memory.base.load(fromByteOffset: slot + 0x20, as: UInt64.self) == 9)
        #expect(memory.u32(slot + 0x28) == 7 && memory.u32(slot + 0x2C) == 1 && memory.u32(slot + 0x30) == 1)
        #expect(memory.u32(slot + 0x34) == 0 && memory.u32(slot + 0x38) == 0 && memory.u32(slot + 0x3C) == 0)
        #expect(region.loadEntry(at: 3) == entry && region.loadEntry(at: 3).lostBefore)
    }

    // MARK: Producing and consuming

    @Test func eventsArriveInOrderAcrossManyWrapsWithConsecutiveSequencesAndTheirAttribution() throws {
        let memory = try GuardedEventMemory(log2Entries: 4)
        defer { memory.release() }
        var producer = EventQueueProducer(region: memory.region, vsmmu: 7)
        var consumer = EventQueueConsumer(region: memory.region)
        var rng = SplitMix64(seed: 0xE7E7)
        var next: UInt32 = 0, expected: UInt64 = 1
        for _ in 0..<500 {
            let batch = (0..<Int.random(in: 0...9, using: &rng)).map { i in fault(next + UInt32(i)) }
            let viommu = UInt32.random(in: 0...3, using: &rng)
            let result = producer.write(batch, viommu: viommu)
            #expect(result.written == batch.count && result.dropped == 0 && !result.overflowRaised)
            next += UInt32(batch.count)
            let drained = consumer.drain()
            #expect(drained.map(\.record) == batch)
            for entry in drained {
                #expect(entry.sequence == expected && entry.vsmmu == 7 && entry.viommu == viommu && !entry.lostBefore)
                expected += 1
            }
        }
        #expect(producer.sequence == expected - 1 && expected > 2000) // the 16 slots wrapped over a hundred times
        #expect(memory.region.loadProducer() == producer.producer && consumer.consumer == producer.producer)
    }

    @Test func aFullQueueDropsTogglesOVFLGExactlyOnceWhileActiveAndMarksTheNextEventWritten() throws {
        let memory = try GuardedEventMemory(log2Entries: 4)
        defer { memory.release() }
        var producer = EventQueueProducer(region: memory.region, vsmmu: 7)
        var consumer = EventQueueConsumer(region: memory.region)
        let fill = producer.write((0..<16).map { fault($0) }, viommu: 0)
        #expect(fill.written == 16 && fill.dropped == 0 && !fill.overflowRaised)
        #expect(memory.region.loadProducer() == 0x10) // index 0, wrap set: full
        // The 17th event: dropped, OVFLG toggled.
        let first = producer.write([fault(16)], viommu: 0)
        #expect(first.written == 0 && first.dropped == 1 && first.overflowRaised)
        #expect(memory.region.loadProducer() == 0x8000_0010)
        // While the overflow is active (not acknowledged), more drops leave OVFLG as it is.
        for i in 17..<60 {
            let more = producer.write([fault(UInt32(i))], viommu: 0)
            #expect(more.dropped == 1 && !more.overflowRaised && !more.signalCall)
            #expect(memory.region.loadProducer() == 0x8000_0010)
        }
        // The VMM sees the overflow and the 16 events; after it reads them, the next event carries LOST_BEFORE
        // and a sequence 44 past the last one it had (the drops took 17...60).
        let look = consumer.poll()
        #expect(look.available == 16 && look.overflow)
        let old = consumer.drain()
        #expect(old.map(\.sequence) == Array(1...16))
        let after = producer.write([fault(100), fault(101)], viommu: 2)
        #expect(after.written == 2 && !after.overflowRaised)
        let new = consumer.drain()
        #expect(new.map(\.sequence) == [61, 62] && new.map(\.lostBefore) == [true, false])
        // Still not acknowledged: still one overflow, OVFLG as toggled once.
        #expect(consumer.overflowPending && memory.region.loadProducer() & EventQueueLayout.overflowFlag != 0)
    }

    @Test func acknowledgingCopiesOVFLGIntoConsAndTheNextOverflowTogglesAgain() throws {
        let memory = try GuardedEventMemory(log2Entries: 4)
        defer { memory.release() }
        var producer = EventQueueProducer(region: memory.region, vsmmu: 7)
        var consumer = EventQueueConsumer(region: memory.region)
        let v1 = consumer.acknowledgeOverflow()
        #expect(!v1) // nothing to acknowledge
        _ = producer.write((0..<17).map { fault($0) }, viommu: 0)
        let v2 = consumer.poll()
        #expect(v2.overflow)
        let v3 = consumer.acknowledgeOverflow()
        #expect(v3)
        let v4 = consumer.poll()
        #expect(memory.region.loadConsumer() == 0x8000_0000 && !consumer.overflowPending && !v4.overflow)
        let v5 = consumer.acknowledgeOverflow()
        #expect(!v5) // once
        // Still full (nothing consumed): the next drop is a new overflow, OVFLG toggles back.
        let again = producer.write([fault(1)], viommu: 0)
        #expect(again.dropped == 1 && again.overflowRaised && memory.region.loadProducer() == 0x10)
        let v6 = consumer.poll()
        let v7 = consumer.acknowledgeOverflow()
        #expect(v6.overflow && v7 && memory.region.loadConsumer() == 0)
        // Consuming keeps OVACKFLG in CONS.
        _ = consumer.drain(limit: 3)
        #expect(memory.region.loadConsumer() == 3)
    }

    @Test func theKernelsLostEventsIsAnOverflowTogglingOVFLGOnlyWhenNoneIsActive() throws {
        let memory = try GuardedEventMemory(log2Entries: 5)
        defer { memory.release() }
        var producer = EventQueueProducer(region: memory.region, vsmmu: 3)
        var consumer = EventQueueConsumer(region: memory.region)
        let lost = producer.write([fault(1), fault(2)], viommu: 1, lostBefore: true)
        #expect(lost.written == 2 && lost.overflowRaised && lost.dropped == 0)
        let v8 = consumer.drain()
        #expect(v8.map(\.lostBefore) == [true, false] && consumer.overflowPending)
        // Active: a second LOST_EVENTS does not toggle, but still marks the next event.
        let second = producer.write([fault(3)], viommu: 1, lostBefore: true)
        let v9 = consumer.drain()
        #expect(!second.overflowRaised && v9.map(\.lostBefore) == [true])
        // LOST_EVENTS with no records: OVFLG is published on its own (PROD's position unchanged).
        consumer.acknowledgeOverflow()
        let bare = producer.write([EventRecord](), viommu: 1, lostBefore: true)
        #expect(bare.overflowRaised && bare.written == 0)
        let v10 = consumer.poll()
        let v11 = consumer.poll()
        #expect(v10.overflow && v11.available == 0)
        let v12 = consumer.drain()
        let v13 = producer.write([fault(4)], viommu: 1)
        #expect(v12.isEmpty && v13.written == 1)
        let v14 = consumer.drain()
        #expect(v14.map(\.lostBefore) == [true])
    }

    @Test func aProducerOverMemoryThatHeldItsEventsGoesOnWithTheSequenceOfTheSlotBeforeProd() throws {
        let memory = try GuardedEventMemory(log2Entries: 4)
        defer { memory.release() }
        var first = EventQueueProducer(region: memory.region, vsmmu: 7)
        #expect(first.sequence == 0)
        _ = first.write((0..<21).map { fault($0) }, viommu: 0) // 16 written, 5 dropped: sequence 21
        var consumer = EventQueueConsumer(region: memory.region)
        _ = consumer.drain()
        _ = first.write([fault(99)], viommu: 0) // sequence 22, in the slot of index 0
        // A restarted daemon re-maps the same memory: it goes on from 22.
        var second = EventQueueProducer(region: memory.region, vsmmu: 7)
        #expect(second.sequence == 22 && second.producer == first.producer)
        _ = second.write([fault(100)], viommu: 0)
        let v15 = consumer.drain()
        #expect(v15.map(\.sequence) == [22, 23])
        // Another vSMMU's memory (or a new queue) starts from 1; an explicit sequence wins.
        #expect(EventQueueProducer(region: memory.region, vsmmu: 8).sequence == 0)
        #expect(EventQueueProducer(region: memory.region, vsmmu: 7, lastSequence: 500).sequence == 500)
    }

    // MARK: Hostile memory

    /// CONS values of every class a hostile VMM can write: bits between the wrap bit and bit 31, bit 31
    /// alone, positions behind and ahead of PROD, all ones. Every one that is not a valid CONS at most 2^n
    /// behind PROD is a full queue: the event is dropped, no slot changes, and nothing traps.
    @Test(arguments: [4, 6, 12])
    func everyClassOfHostileConsIsAFullQueue(log2Entries: Int) throws {
        let memory = try GuardedEventMemory(log2Entries: log2Entries)
        defer { memory.release() }
        let g = memory.region.geometry
        var producer = EventQueueProducer(region: memory.region, vsmmu: 1)
        _ = producer.write((0..<3).map { fault($0) }, viommu: 0) // PROD = 3
        var hostile: [UInt32] = [UInt32.max, 0x7FFF_FFFF, 0x4000_0000, g.entries << 1, g.entries << 2, 0xFFFF_FFFF ^ g.validBits]
        for bit in UInt32(g.log2Entries + 1)..<31 { hostile.append(1 << bit); hostile.append(1 << bit | 3) }
        for value in hostile {
            memory.region.storeConsumer(value)
            let slots = memory.slotBytes()
            let before = producer.producer
            let result = producer.write([fault(7)], viommu: 0)
            #expect(result.dropped == 1 && result.written == 0, "CONS 0x\(String(value, radix: 16))")
            #expect(memory.slotBytes() == slots)
            #expect(g.position(of: producer.producer) == g.position(of: before) && g.isValid(producer.producer))
        }
        // Valid bits but an impossible distance (CONS ahead of PROD): full as well.
        for ahead in [UInt32(4), 5, g.entries - 1, g.entries] {
            memory.region.storeConsumer(g.advance(3, by: ahead) | (producer.producer & EventQueueLayout.overflowFlag))
            let slots = memory.slotBytes()
            let v16 = producer.write([fault(8)], viommu: 0)
            #expect(v16.dropped == 1, "CONS \(ahead) ahead")
            #expect(memory.slotBytes() == slots)
        }
        // A sane CONS again (with the OVACKFLG that acknowledges): writing resumes, marked LOST_BEFORE.
        memory.region.storeConsumer(3 | (producer.producer & EventQueueLayout.overflowFlag))
        let v17 = producer.write([fault(9)], viommu: 0)
        #expect(v17.written == 1)
        #expect(memory.region.loadEntry(at: 3).lostBefore && memory.region.loadEntry(at: 3).record == fault(9))
    }

    /// A fixed-seed fuzz: between the daemon's writes the VMM scribbles random values over the whole header
    /// (PROD, CONS, state, the flags, the configuration and reserved bytes) and the slots. The producer
    /// never traps, never touches memory outside the region (the guard pages), keeps a PROD that is a
    /// valid position, and writes a slot only when the CONS it read left room.
    @Test func aFuzzedHeaderNeverMakesTheProducerTrapOrWriteOutsideTheSlots() throws {
        let memory = try GuardedEventMemory(log2Entries: 4)
        defer { memory.release() }
        let g = memory.region.geometry
        var producer = EventQueueProducer(region: memory.region, vsmmu: 5)
        var rng = SplitMix64(seed: 0xBAD_CAFE)
        var written = 0, dropped = 0
        for round in 0..<20_000 {
            for _ in 0..<Int.random(in: 0...3, using: &rng) {
                let word = Int.random(in: 0..<(memory.length / 4), using: &rng)
                let value: UInt32 = switch Int.random(in: 0...3, using: &rng) {
                case 0: UInt32.random(in: 0...UInt32.max, using: &rng)
                case 1: UInt32.random(in: 0...g.validBits, using: &rng) & g.validBits
                case 2: producer.producer
                default: 0
                }
                // Header words are hit more often than slot words.
                let offset = Bool.random(using: &rng) ? [0x40, 0x80, 0xC0, 0x100, 0x0, 0x4][Int.random(in: 0...5, using: &rng)] : word * 4
                memory.setU32(offset, value)
            }
            let result = producer.write((0..<Int.random(in: 0...3, using: &rng)).map { fault(UInt32(round), UInt64($0)) },
                                        viommu: UInt32(round & 3), lostBefore: round % 97 == 0)
            #expect(g.isValid(producer.producer) && result.written <= Int(g.entries))
            written += result.written
            dropped += result.dropped
        }
        #expect(written > 0 && dropped > 0) // both paths ran
    }

    /// The VMM's side against a corrupt daemon side: a PROD with bits it may not have, or more than 2^n ahead,
    /// reads nothing and says so; random slot contents are copied out as they are.
    @Test func aCorruptProdIsReportedAndNoSlotIsRead() throws {
        let memory = try GuardedEventMemory(log2Entries: 4)
        defer { memory.release() }
        var consumer = EventQueueConsumer(region: memory.region)
        for prod in [UInt32(0x20), 0x4000_0001, UInt32.max, 0x11, 0x1F] {
            memory.region.storeProducer(prod)
            let look = consumer.poll()
            #expect(look.invalidProducer == prod && look.available == 0 && look.hasNews, "PROD 0x\(String(prod, radix: 16))")
            let v18 = consumer.next()
            let v19 = consumer.drain()
            #expect(v18 == nil && v19.isEmpty)
            #expect(memory.region.loadConsumer() == 0)
        }
        var rng = SplitMix64(seed: 42)
        for offset in stride(from: 0x1000, to: memory.length, by: 4) { memory.setU32(offset, UInt32.random(in: 0...UInt32.max, using: &rng)) }
        memory.region.storeProducer(0x10) // full, valid
        let v20 = consumer.drain()
        #expect(v20.count == 16 && memory.region.loadConsumer() == 0x10)
    }

    // MARK: Sleeping (§9.5)

    @Test func theProducerSignalsCallOnlyWhenTheVMMSaidItSleepsAndAStopAlwaysReachesAWaiter() throws {
        let memory = try GuardedEventMemory(log2Entries: 4)
        defer { memory.release() }
        var producer = EventQueueProducer(region: memory.region, vsmmu: 7)
        var consumer = EventQueueConsumer(region: memory.region)
        let v21 = producer.start()
        #expect(!v21 && memory.region.loadState() == EventQueueLayout.State.running.rawValue)
        let v22 = producer.write([fault(1)], viommu: 0)
        #expect(!v22.signalCall)
        // Something new: the consumer does not go to sleep.
        let v23 = consumer.prepareToSleep()
        #expect(!v23 && memory.region.loadVMMSleeping() == 0)
        _ = consumer.drain()
        let v24 = consumer.prepareToSleep()
        #expect(v24 && memory.region.loadVMMSleeping() == 1)
        let v25 = producer.write([fault(2)], viommu: 0)
        #expect(v25.signalCall)
        consumer.wokeUp()
        #expect(memory.region.loadVMMSleeping() == 0)
        // A drop that toggles OVFLG publishes PROD too, and signals a sleeper; drops while active do not.
        _ = consumer.drain()
        _ = producer.write((0..<16).map { fault($0) }, viommu: 0)
        let v26 = consumer.prepareToSleep()
        #expect(!v26) // 16 events
        memory.region.storeVMMSleeping(1)   // the VMM sleeps without reading them
        let v27 = producer.write([fault(3)], viommu: 0)
        #expect(v27.signalCall)   // OVFLG toggled: PROD stored
        let v28 = producer.write([fault(4)], viommu: 0)
        #expect(!v28.signalCall)  // still active: nothing stored
        let v29 = producer.stop()
        #expect(v29 && memory.region.loadState() == EventQueueLayout.State.stopped.rawValue)
        memory.region.storeVMMSleeping(0)
        let v30 = consumer.drain()
        let v31 = consumer.acknowledgeOverflow()
        #expect(v30.count == 16 && v31)
        let v32 = consumer.prepareToSleep()
        let v33 = consumer.poll()
        #expect(!v32 && v33.isStopped) // a stop is news
    }

    /// Two threads, as the two processes: the daemon's producer writes bursts with random pauses, the VMM's
    /// consumer drains with its own, acknowledging overflows. Every event the consumer gets comes in order
    /// with a larger sequence, a gap exactly where LOST_BEFORE says so, and written + dropped is everything.
    @Test func aProducerAndAConsumerOnTwoThreadsLoseNothingSilently() async throws {
        let memory = try GuardedEventMemory(log2Entries: 4)
        defer { memory.release() }
        let total = 20_000
        let region = memory.region
        let done = ThreadFlag()
        let produced = Thread.detachedResult { () -> (written: Int, dropped: Int) in
            var producer = EventQueueProducer(region: region, vsmmu: 9)
            var rng = SplitMix64(seed: 1)
            var written = 0, dropped = 0, sent = 0
            while sent < total {
                let n = min(total - sent, Int.random(in: 1...8, using: &rng))
                let r = producer.write((0..<n).map { fault(UInt32(sent + $0)) }, viommu: 0)
                written += r.written
                dropped += r.dropped
                sent += n
                if rng.next() % 8 == 0 { usleep(UInt32(rng.next() % 50)) }
            }
            done.set()
            return (written, dropped)
        }
        var consumer = EventQueueConsumer(region: region)
        var rng = SplitMix64(seed: 2)
        var received: [EventQueueEntry] = []
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            let finished = done.isSet
            received += consumer.drain()
            consumer.acknowledgeOverflow()
            if finished && consumer.poll().available == 0 { break }
            if rng.next() % 4 == 0 { usleep(UInt32(rng.next() % 80)) }
        }
        let counts = await produced.value
        #expect(counts.written + counts.dropped == total)
        #expect(received.count == counts.written)
        var last: UInt64 = 0
        for entry in received {
            #expect(entry.sequence > last)
            #expect((entry.sequence != last + 1) == entry.lostBefore, "sequence \(entry.sequence) after \(last)")
            #expect(entry.record.streamID == UInt32(entry.sequence - 1)) // the record written with that sequence
            last = entry.sequence
        }
    }
}

/// A flag one thread sets and another reads.
final class ThreadFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}

extension Thread {
    /// Runs `body` on a new thread (not the shared task pool: a spinning side must not starve the other on
    /// two cores) and hands its result to a task.
    static func detachedResult<T: Sendable>(_ body: @escaping @Sendable () -> T) -> Task<T, Never> {
        let box = ResultBox<T>()
        let thread = Thread { box.finish(body()) }
        thread.start()
        return Task { await box.value() }
    }
}

/// One value, delivered once from a thread to an awaiting task.
final class ResultBox<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var result: T?
    private var waiter: CheckedContinuation<T, Never>?
    func finish(_ value: T) {
        lock.lock()
        if let waiter { self.waiter = nil; lock.unlock(); waiter.resume(returning: value); return }
        result = value
        lock.unlock()
    }
    func value() async -> T {
        await withCheckedContinuation { continuation in
            lock.lock()
            if let result { lock.unlock(); continuation.resume(returning: result); return }
            waiter = continuation
            lock.unlock()
        }
    }
}
