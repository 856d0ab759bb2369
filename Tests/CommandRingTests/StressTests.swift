import Atomics
import SMMUv3
import Testing
@testable import CommandRing

#if canImport(Glibc)
import Glibc
import VSMMUTestSupport
#endif

/// Checks that every producer's commands arrive exactly once and in that producer's order.
struct StreamVerifier {
    private(set) var next: [Int]
    private(set) var total = 0
    private(set) var problems: [String] = []

    init(producers: Int) { next = Array(repeating: 0, count: producers) }

    mutating func check(_ commands: UnsafeBufferPointer<Command>) {
        for command in commands {
            total += 1
            guard let (producer, sequence) = decodeTag(command), producer < next.count else {
                report("corrupt command \(command)")
                continue
            }
            if sequence != next[producer] {
                report("producer \(producer): expected #\(next[producer]), got #\(sequence)")
            }
            next[producer] = sequence + 1
        }
    }

    mutating func report(_ problem: String) {
        if problems.count < 10 { problems.append(problem) }
    }
}

extension StreamVerifier: CommandRingVisitor {
    mutating func visit(commands: UnsafeBufferPointer<Command>, at position: UInt64) { check(commands) }
    mutating func visit(marker: RingMarker, at position: UInt64) { report("unexpected marker at \(position)") }
}

/// Pushes `count` tagged commands for `producer` in random batches of 1...64.
func produce(producer: Int, count: Int, push: (UnsafeBufferPointer<Command>) throws -> Void,
             afterBatch: (_ pushed: Int, _ rng: inout SplitMix64) throws -> Void = { _, _ in }) rethrows {
    var rng = SplitMix64(seed: UInt64(producer) &+ 0x5EED)
    var batch: [Command] = []
    batch.reserveCapacity(64)
    var sequence = 0
    while sequence < count {
        let size = min(Int.random(in: 1...64, using: &rng), count - sequence)
        batch.removeAll(keepingCapacity: true)
        for offset in 0..<size { batch.append(taggedCommand(producer: producer, sequence: sequence + offset)) }
        try batch.withUnsafeBufferPointer { try push($0) }
        sequence += size
        try afterBatch(sequence, &rng)
    }
}

/// The sink of the queue stress test: verifies the streams, that calls never overlap, and publishes
/// each producer's progress for the fence checks.
///
/// `@unchecked Sendable`: `verifier` is only touched inside the sink, whose calls the queue's
/// consumer role serializes (checked by `inside`); `progress` is atomic.
final class VerifyingSink: @unchecked Sendable {
    var verifier: StreamVerifier
    let progress: [ManagedAtomic<Int>]
    let inside = ManagedAtomic<Int>(0)
    let overlaps = ManagedAtomic<Int>(0)

    init(producers: Int) {
        verifier = StreamVerifier(producers: producers)
        progress = (0..<producers).map { _ in ManagedAtomic(0) }
    }

    func execute(_ batch: UnsafeBufferPointer<Command>) -> InvalidationResult {
        if inside.loadThenWrappingIncrement(ordering: .acquiringAndReleasing) != 0 {
            overlaps.wrappingIncrement(ordering: .relaxed)
        }
        verifier.check(batch)
        for (producer, next) in verifier.next.enumerated() where progress[producer].load(ordering: .relaxed) != next {
            progress[producer].store(next, ordering: .releasing)
        }
        inside.wrappingDecrement(ordering: .acquiringAndReleasing)
        return .completed(batch.count)
    }
}

@Suite("Stress", .serialized)
struct StressTests {
    static let producers = 4

    @Test func fourProducersThroughOneConsumerDeliverEveryCommandOnceInProducerOrder() throws {
        let count = stressCount
        let ring = try CommandRing(capacity: 1024)
        let role = try acquireRole(ring)
        let threads = try (0..<Self.producers).map { producer in
            try startThread {
                do {
                    try produce(producer: producer, count: count) { batch in _ = try ring.push(batch) }
                } catch {
                    Issue.record("producer \(producer): \(error)")
                }
            }
        }
        if count > ring.capacity {
            // Nobody consumes yet, and each stream alone overflows the ring: every producer must end
            // up waiting on the full ring, spinning and then parking.
            eventually("every producer parks on the full ring") { ring.parkedProducers == Self.producers }
        }

        var verifier = StreamVerifier(producers: Self.producers)
        while verifier.total < Self.producers * count {
            if role.drain(into: &verifier) == 0 { sched_yield() }
        }
        _ = role.release()
        threads.forEach { $0.join() }

        #expect(verifier.problems == [])
        #expect(verifier.next == Array(repeating: count, count: Self.producers))
        #expect(verifier.total == Self.producers * count)
        #expect(ring.consumedPosition == UInt64(Self.producers * count))
        if count > ring.capacity {
            #expect(ring.producerParks >= Self.producers)
        }
    }

    @Test(arguments: allPolicies)
    func fourProducersWithFencesThroughAQueue(policy: ViommuQueue.DrainPolicy) throws {
        let count = stressCount
        let sink = VerifyingSink(producers: Self.producers)
        let queue = try ViommuQueue(configuration: .init(capacity: 1024, drainPolicy: policy),
                                    sink: { sink.execute($0) })
        let fenceViolations = ManagedAtomic<Int>(0)
        let fences = ManagedAtomic<Int>(0)
        let threads = try (0..<Self.producers).map { producer in
            try startThread {
                let checkFence = { (pushed: Int) throws in
                    try queue.sync().wait()
                    fences.wrappingIncrement(ordering: .relaxed)
                    // Everything this producer pushed before the fence was executed.
                    if sink.progress[producer].load(ordering: .acquiring) != pushed {
                        fenceViolations.wrappingIncrement(ordering: .relaxed)
                    }
                }
                do {
                    try produce(producer: producer, count: count, push: { _ = try queue.push($0) }) { pushed, rng in
                        if Int.random(in: 0..<32, using: &rng) == 0 { try checkFence(pushed) }
                    }
                    try checkFence(count)
                } catch {
                    Issue.record("producer \(producer): \(error)")
                }
            }
        }
        threads.forEach { $0.join() }
        queue.stop()

        #expect(sink.verifier.problems == [])
        #expect(sink.verifier.next == Array(repeating: count, count: Self.producers))
        #expect(sink.overlaps.load(ordering: .relaxed) == 0, "sink calls of one queue never overlap")
        #expect(fenceViolations.load(ordering: .relaxed) == 0)
        #expect(fences.load(ordering: .relaxed) >= Self.producers)
        #expect(queue.statistics.commandsCompleted == Self.producers * count)
    }
}
