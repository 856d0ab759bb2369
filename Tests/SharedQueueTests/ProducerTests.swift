import Foundation
import SMMUv3
import Testing
import VSMMUProtocol
import VSMMUTestSupport
@testable import SharedQueue

// Concurrency notes: each test that runs a consumer starts one `Thread` (a real thread, not a task: it
// spins and blocks) playing the daemon of PROTOCOL.md §8.3-§8.5 over the same region, and joins it (a
// condition with a deadline) before the region is freed. The two sides share only the region and two
// `TestEvent`s standing for the kick and call eventfds.

/// An eventfd stand-in: `signal()` sets the count, `wait()` blocks until it is set and clears it.
final class TestEvent: @unchecked Sendable {
    private let condition = NSCondition()
    private var count = 0
    private(set) var signals = 0

    func signal() {
        condition.lock()
        count += 1
        signals += 1
        condition.broadcast()
        condition.unlock()
    }

    /// Waits up to 5 s for a signal; false when none came (a lost wake-up: the test fails rather than hangs).
    @discardableResult
    func wait() -> Bool {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(5)
        while count == 0 { if !condition.wait(until: deadline) { break } }
        let signalled = count > 0
        count = 0
        return signalled
    }

    var signalCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return signals
    }
}

/// The producer's signals over two `TestEvent`s.
struct TestSignals: SharedQueueSignalling {
    typealias Failure = Never
    let kickEvent: TestEvent
    let callEvent: TestEvent
    func kick() { kickEvent.signal() }
    func sleep() {
        if !callEvent.wait() { Issue.record("the producer slept 5 s on call without a signal: a lost wake-up") }
    }
}

/// A zeroed, page-aligned queue of 2^`log2` slots, initialised as a VMM does before MAP_QUEUE.
final class TestQueue: @unchecked Sendable {
    let memory: UnsafeMutableRawPointer
    let region: SharedQueueRegion
    let kick = TestEvent()
    let call = TestEvent()
    var signals: TestSignals { TestSignals(kickEvent: kick, callEvent: call) }

    init(log2: Int = 8) throws {
        let geometry = try #require(SharedQueueGeometry(log2Entries: log2))
        memory = UnsafeMutableRawPointer.allocate(byteCount: geometry.requiredSize, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: geometry.requiredSize)
        region = try #require(SharedQueueRegion(base: memory, length: geometry.requiredSize, geometry: geometry))
        region.initialise()
        region.storeState(.running)
    }

    deinit { memory.deallocate() }
}

/// A daemon's consumer in miniature (PROTOCOL.md §8.3-§8.5), on its own thread: consumes from CONS to
/// PROD, refuses opcode 0x07 (CERROR_ILL, stopping the queue until `error_ack`), advances CONS past each
/// CMD_SYNC (and at the end of what it saw), sleeps on kick after `pollLooks` empty looks with the §8.4
/// flag protocol, and signals call after each store when `vmm_sleeping` is set.
final class TestConsumer: @unchecked Sendable {
    let queue: TestQueue
    var pollLooks: Int
    /// Extra random pauses (µs, up to this) before storing CONS: the waiter then goes to sleep.
    let randomPauseMicroseconds: Int
    private let lock = NSLock()
    private var _consumed: [Command] = []
    private var _stopRequested = false
    private var _held = false
    private var finished = false
    private var thread: Thread?
    let done = NSCondition()

    init(_ queue: TestQueue, pollLooks: Int = 1_000, randomPauseMicroseconds: Int = 0, held: Bool = false) {
        self.queue = queue
        self.pollLooks = pollLooks
        self.randomPauseMicroseconds = randomPauseMicroseconds
        _held = held
    }

    var consumed: [Command] { lock.withLock { _consumed } }
    /// While held the consumer consumes nothing (a stalled daemon).
    func release() { lock.withLock { _held = false }; queue.kick.signal() }

    func start() {
        let t = Thread { [self] in run() }
        thread = t
        t.start()
    }

    /// Asks the consumer to write `state` = STOPPED, signal call and end; waits (10 s at most) for it.
    func stopAndJoin() {
        lock.withLock { _stopRequested = true }
        queue.kick.signal()
        done.lock()
        let deadline = Date().addingTimeInterval(10)
        while !finished { if !done.wait(until: deadline) { break } }
        done.unlock()
    }

    private func signalCallIfSleeping() {
        SharedQueueRegion.fullFence()
        if queue.region.loadVMMSleeping() != 0 { queue.call.signal() }
    }

    private func pause(_ rng: inout SplitMix64) {
        guard randomPauseMicroseconds > 0, rng.next(4) == 0 else { return }
        usleep(UInt32(rng.next(randomPauseMicroseconds)))
    }

    private func run() {
        let region = queue.region
        let geometry = region.geometry
        var cons = region.loadConsumer()
        var sequence = region.loadErrorSequence()
        var rng = SplitMix64(seed: 13)
        defer {
            region.storeState(.stopped)
            signalCallIfSleeping()
            done.lock()
            finished = true
            done.broadcast()
            done.unlock()
        }
        while true {
            // Look for work: PROD (or the acknowledgement) for `pollLooks` looks, then the sleep of §8.4.
            var looks = 0
            var prod: UInt32 = cons
            while true {
                if lock.withLock({ _stopRequested }) { return }
                let held = lock.withLock { _held }
                let stoppedOnError = region.loadErrorAcknowledgement() != sequence
                prod = region.loadProducer()
                if !held && !stoppedOnError && prod != cons { break }
                looks += 1
                if looks < pollLooks { continue }
                region.storeDaemonSleeping(1)
                SharedQueueRegion.fullFence()
                let movedProd = region.loadProducer() != cons
                let acknowledged = region.loadErrorAcknowledgement() == sequence
                if (movedProd && acknowledged && !lock.withLock({ _held })) || lock.withLock({ _stopRequested }) {
                    region.storeDaemonSleeping(0)
                    continue
                }
                queue.kick.wait()
                region.storeDaemonSleeping(0)
                looks = 0
            }
            guard geometry.isValid(prod), geometry.distance(from: cons, to: prod) <= geometry.entries else {
                sequence &+= 1
                region.storeError(sequence: sequence, cerror: 0, kind: .producer, consumer: cons)
                signalCallIfSleeping()
                continue
            }
            // Consume up to PROD: CONS after each CMD_SYNC and at the end.
            while cons != prod {
                let command = region.loadCommand(at: cons)
                if command.w0 & 0xFF == 0x07 {
                    region.storeConsumer(cons)
                    sequence &+= 1
                    region.storeError(sequence: sequence, cerror: CommandQueueError.illegal.rawValue, kind: .command, consumer: cons)
                    signalCallIfSleeping()
                    break
                }
                lock.withLock { _consumed.append(command) }
                cons = geometry.advance(cons, by: 1)
                if command.opcode == .sync || cons == prod {
                    pause(&rng)
                    region.storeConsumer(cons)
                    signalCallIfSleeping()
                }
            }
        }
    }
}

/// The producer's algorithm (PROTOCOL.md §8.2, §8.4, §8.5) over a region, against an in-test consumer.
@Suite("Shared queue producer")
struct ProducerTests {
    static func batch(_ size: Int, from first: Int) -> [Command] {
        (0..<size).map { Command.tlbiNHVA(asid: ASID((first + $0) % 3 + 1), address: UInt64(first + $0) << 12) } + [.sync()]
    }

    @Test func aPositionIsReachedWhenConsIsNoFurtherFromProdThanItAcrossTheWrap() throws {
        let queue = try TestQueue(log2: 8)
        queue.region.storeProducer(0x1F0)
        queue.region.storeConsumer(0x1F0)
        var producer = try #require(SharedQueueProducer(region: queue.region))
        _ = producer.submit(Array(repeating: Command.sync(), count: 0x20), signals: queue.signals)  // PROD 0x1F0 → 0x010
        #expect(producer.producer == 0x010)
        #expect(producer.consumer(0x1F0, hasPassed: 0x1F0))
        #expect(!producer.consumer(0x1F0, hasPassed: 0x1F1))
        #expect(!producer.consumer(0x1FF, hasPassed: 0x000))  // wrap bit flips: 0x000 is after 0x1FF
        #expect(producer.consumer(0x000, hasPassed: 0x000))
        #expect(producer.consumer(0x010, hasPassed: 0x1F8))
        #expect(!producer.consumer(0x008, hasPassed: 0x010))
        #expect(producer.consumer(0x1E0, hasPassed: 0x0F0))  // more than 2^n behind PROD: passed long ago
    }

    @Test func aProducerRefusesMemoryWhoseProdIsNotAPositionOrIsTooFarAheadOfCons() throws {
        let queue = try TestQueue(log2: 8)
        queue.region.storeProducer(0x200)
        #expect(SharedQueueProducer(region: queue.region) == nil)
        queue.region.storeProducer(0x101)  // 257 ahead of CONS 0
        #expect(SharedQueueProducer(region: queue.region) == nil)
        queue.region.storeProducer(0x100)  // full: a queue this side may continue
        #expect(SharedQueueProducer(region: queue.region)?.producer == 0x100)
    }

    @Test func aPublishedProdKicksOnlyADaemonThatSaidItSleeps() throws {
        let queue = try TestQueue(log2: 8)
        var producer = try #require(SharedQueueProducer(region: queue.region))
        _ = producer.submit(Self.batch(3, from: 0), signals: queue.signals)
        #expect(queue.kick.signalCount == 0)
        #expect(queue.region.loadProducer() == 4)
        queue.region.storeDaemonSleeping(1)
        _ = producer.submit(Self.batch(3, from: 0), signals: queue.signals)
        #expect(queue.kick.signalCount == 1)
        #expect(queue.region.loadProducer() == 8)
    }

    @Test func syncsCompleteInOrderOverManyWrapsWithEveryCommandConsumedOnce() throws {
        let queue = try TestQueue(log2: 8)
        let consumer = TestConsumer(queue)
        consumer.start()
        var producer = try #require(SharedQueueProducer(region: queue.region))
        var rng = SplitMix64(seed: 1)
        var expected: [Command] = []
        for round in 0..<400 {
            let commands = Self.batch(rng.next(40), from: round)
            expected += commands
            let submitted = producer.submit(commands, signals: queue.signals)
            #expect(submitted.published == commands.count && submitted.stop == nil)
            let outcome = producer.waitUntilConsumed(past: submitted.producer, signals: queue.signals)
            #expect(outcome == .completed)
            #expect(queue.region.loadConsumer() == submitted.producer)
        }
        consumer.stopAndJoin()
        #expect(consumer.consumed == expected)
    }

    @Test func aRefusedCommandEndsTheWaitWithItsPositionAndAnAcknowledgementWithARewrittenSlotResumes() throws {
        let queue = try TestQueue(log2: 8)
        let consumer = TestConsumer(queue)
        consumer.start()
        var producer = try #require(SharedQueueProducer(region: queue.region))
        let illegal = Command(w0: 0x07, w1: 0)
        let commands = Array(Self.batch(2, from: 0).dropLast()) + [illegal, .tlbiNHAll(), .sync()]
        let submitted = producer.submit(commands, signals: queue.signals)
        var outcome = producer.waitUntilConsumed(past: submitted.producer, signals: queue.signals)
        guard case .error(let error) = outcome else {
            Issue.record("expected a queue error, got \(outcome)")
            consumer.stopAndJoin()
            return
        }
        #expect(error.sequence == 1 && error.cerror == CommandQueueError.illegal.rawValue && error.errorKind == .command)
        #expect(error.consumer == 2 && queue.region.loadConsumer() == 2)
        // Waiting again without acknowledging returns the same error at once.
        #expect(producer.waitUntilConsumed(past: submitted.producer, signals: queue.signals) == .error(error))
        // The guest's skip: the illegal command becomes a CMD_SYNC, then GERRORN.
        #expect(producer.acknowledgeError(rewriting: .sync(), signals: queue.signals) == .acknowledged(error))
        #expect(queue.region.loadErrorAcknowledgement() == 1)
        outcome = producer.waitUntilConsumed(past: submitted.producer, signals: queue.signals)
        #expect(outcome == .completed)
        #expect(producer.acknowledgeError(signals: queue.signals) == .noError)
        consumer.stopAndJoin()
        #expect(consumer.consumed == Array(commands.prefix(2)) + [.sync(), .tlbiNHAll(), .sync()])
    }

    @Test func aRewriteIsRefusedWhenTheErrorNamesNoPublishedSlot() throws {
        let queue = try TestQueue(log2: 8)
        var producer = try #require(SharedQueueProducer(region: queue.region))
        _ = producer.submit(Self.batch(3, from: 0), signals: queue.signals)  // PROD 4
        queue.region.storeError(sequence: 1, cerror: 0, kind: .producer, consumer: 0)
        guard case .noSlotToRewrite = producer.acknowledgeError(rewriting: .sync(), signals: queue.signals) else {
            Issue.record("a PROD error has no slot to rewrite"); return
        }
        queue.region.storeError(sequence: 1, cerror: 1, kind: .command, consumer: 4)  // at PROD: not published
        guard case .noSlotToRewrite = producer.acknowledgeError(rewriting: .sync(), signals: queue.signals) else {
            Issue.record("error_cons = PROD names no published slot"); return
        }
        #expect(queue.region.loadErrorAcknowledgement() == 0)
        #expect(queue.region.loadCommand(at: 4) == Command(w0: 0, w1: 0))
        queue.region.storeError(sequence: 1, cerror: 1, kind: .command, consumer: 3)
        #expect(producer.acknowledgeError(rewriting: .sync(), signals: queue.signals)
            == .acknowledged(SharedQueueError(sequence: 1, cerror: 1, kind: 1, consumer: 3)))
        #expect(queue.region.loadErrorAcknowledgement() == 1)
    }

    @Test func aFullQueueMakesTheProducerWaitForRoomAndThenPublishTheRest() throws {
        let queue = try TestQueue(log2: 8)
        let consumer = TestConsumer(queue, pollLooks: 10, held: true)
        consumer.start()
        var producer = try #require(SharedQueueProducer(region: queue.region, spinIterations: 100))
        let commands = Self.batch(600, from: 0)  // 601 commands through 256 slots
        let box = ProducerBox(producer)
        let submitting = Thread {
            let submitted = box.producer.submit(commands, signals: queue.signals)
            box.submitted = submitted
            box.outcome = box.producer.waitUntilConsumed(past: submitted.producer, signals: queue.signals)
            box.done.signal()
        }
        submitting.start()
        // The producer fills the queue and goes to sleep on call: 256 published, CONS still 0.
        let deadline = Date().addingTimeInterval(10)
        while queue.region.loadVMMSleeping() == 0 && Date() < deadline { usleep(100) }
        #expect(queue.region.loadVMMSleeping() == 1)
        #expect(queue.region.loadProducer() == 0x100 && queue.region.loadConsumer() == 0)
        consumer.release()
        box.done.wait()
        #expect(box.submitted?.published == commands.count)
        #expect(box.outcome == .completed)
        consumer.stopAndJoin()
        #expect(consumer.consumed == commands)
        producer = box.producer
        #expect(producer.producer == SharedQueueGeometry(log2Entries: 8)?.advance(0, by: UInt32(commands.count)))
    }

    @Test func aWaiterIsWokenByTheStoppedStateWhenTheDaemonEnds() throws {
        let queue = try TestQueue(log2: 8)
        let consumer = TestConsumer(queue, pollLooks: 10, held: true)
        consumer.start()
        var producer = try #require(SharedQueueProducer(region: queue.region, spinIterations: 10))
        let submitted = producer.submit(Self.batch(5, from: 0), signals: queue.signals)
        let box = ProducerBox(producer)
        let waiting = Thread {
            box.outcome = box.producer.waitUntilConsumed(past: submitted.producer, signals: queue.signals)
            box.done.signal()
        }
        waiting.start()
        let deadline = Date().addingTimeInterval(10)
        while queue.region.loadVMMSleeping() == 0 && Date() < deadline { usleep(100) }
        consumer.stopAndJoin()  // state = STOPPED, call signalled
        box.done.wait()
        #expect(box.outcome == .stopped)
        #expect(queue.region.loadVMMSleeping() == 0)
    }

    @Test func aWaiterThatSleepsIsAlwaysWokenOverManySyncsWithRandomPausesOnBothSides() throws {
        let queue = try TestQueue(log2: 8)
        let consumer = TestConsumer(queue, pollLooks: 50, randomPauseMicroseconds: 50)
        consumer.start()
        var producer = try #require(SharedQueueProducer(region: queue.region, spinIterations: 0))
        var rng = SplitMix64(seed: 7)
        var completed = 0
        for round in 0..<10_000 {
            let submitted = producer.submit(Self.batch(rng.next(4), from: round), signals: queue.signals)
            if rng.next(8) == 0 { usleep(UInt32(rng.next(300))) }  // the daemon falls asleep meanwhile
            if producer.waitUntilConsumed(past: submitted.producer, signals: queue.signals) == .completed { completed += 1 }
        }
        consumer.stopAndJoin()
        #expect(completed == 10_000)
        // Both sides slept and were woken through the events, not only by spinning.
        #expect(queue.kick.signalCount > 0 && queue.call.signalCount > 0)
    }

    @Test func aConsWithABitAboveTheWrapBitIsReportedNotWaitedOn() throws {
        let queue = try TestQueue(log2: 8)
        var producer = try #require(SharedQueueProducer(region: queue.region, spinIterations: 10))
        let submitted = producer.submit(Self.batch(1, from: 0), signals: queue.signals)
        queue.region.storeConsumer(0x8000_0001)
        #expect(producer.waitUntilConsumed(past: submitted.producer, signals: queue.signals) == .invalidConsumer(0x8000_0001))
    }
}

/// Carries a producer and its results to and from a helper thread (joined through `done`).
final class ProducerBox: @unchecked Sendable {
    var producer: SharedQueueProducer
    var submitted: SharedQueueProducer.Submitted?
    var outcome: SharedQueueWaitOutcome?
    let done = TestEvent()
    init(_ producer: SharedQueueProducer) { self.producer = producer }
}
