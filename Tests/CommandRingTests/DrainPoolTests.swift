import Atomics
import Foundation
import SMMUv3
import Testing
@testable import CommandRing

/// Issue 11 §3: viommu queues sharing a ``DrainPool``'s lanes instead of a thread each, and ring memory
/// committed only as it is used.
@Suite struct DrainPoolTests {
    @Test(arguments: [ViommuQueue.DrainPolicy.inlineWithDrainThread, .drainThread])
    func manyQueuesOnOneLaneShareItsThreadAndEveryCommandReachesItsSinkInOrder(policy: ViommuQueue.DrainPolicy) throws {
        let pool = DrainPool(threadsPerLane: 1)
        defer { pool.stop() }
        let lane = try pool.lane(for: "smmu0")
        let logs = (0..<64).map { _ in SinkLog() }
        let queues = try logs.map { log in
            try ViommuQueue(configuration: .init(capacity: 64, drainPolicy: policy), drainLane: lane, sink: recordingSink(log))
        }
        defer { for queue in queues { queue.stop() } }
        #expect(pool.threadCount == 1)
        // Two producers, each feeding half of the queues, racing each other through the lane.
        let done = DispatchGroup()
        for half in 0..<2 {
            done.enter()
            Thread.detachNewThread {
                for round in 0..<40 {
                    for (i, queue) in queues.enumerated() where i % 2 == half {
                        _ = try? queue.push(commands((round * 4)..<(round * 4 + 4)))
                    }
                }
                done.leave()
            }
        }
        #expect(done.wait(timeout: .now() + 60) == .success)
        for queue in queues { #expect(throws: Never.self) { try queue.sync().wait() } }
        for log in logs { #expect(log.commands == commands(0..<160)) }
        if policy == .drainThread { #expect(lane.visits > 0) }
    }

    @Test func aQueueWhoseSinkStallsHoldsItsLaneButNotAnotherLane() throws {
        let pool = DrainPool()
        defer { pool.stop() }
        let stalledLog = SinkLog()
        let gate = Gate()
        let stalled = try ViommuQueue(configuration: .init(drainPolicy: .drainThread), drainLane: try pool.lane(for: "smmu0"),
                                      sink: recordingSink(stalledLog, gate: gate))
        let otherLog = SinkLog()
        let other = try ViommuQueue(configuration: .init(drainPolicy: .drainThread), drainLane: try pool.lane(for: "smmu1"),
                                    sink: recordingSink(otherLog))
        defer { gate.open(); stalled.stop(); other.stop() }
        try stalled.push(commands(0..<4))
        let held = stalled.sync()
        gate.waitUntilReached()
        try other.push(commands(10..<14))
        #expect(throws: Never.self) { try other.sync().wait() }
        #expect(otherLog.commands == commands(10..<14))
        #expect(!held.isComplete, "smmu0's lane is still inside the stalled sink")
        gate.open()
        #expect(throws: Never.self) { try held.wait() }
        #expect(stalledLog.commands == commands(0..<4))
    }

    @Test func queuesOfOneLaneTakeTurnsSoABusyQueueCannotStarveAQuietOne() throws {
        let pool = DrainPool()
        defer { pool.stop() }
        let lane = try pool.lane(for: "smmu0")
        let busy = try ViommuQueue(configuration: .init(capacity: 256, drainPolicy: .drainThread), drainLane: lane) { .completed($0.count) }
        let quietLog = SinkLog()
        let quiet = try ViommuQueue(configuration: .init(drainPolicy: .drainThread), drainLane: lane, sink: recordingSink(quietLog))
        let stop = ManagedAtomic<Bool>(false)
        let feeding = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            while !stop.load(ordering: .relaxed) { _ = try? busy.push(commands(0..<32)) }
            feeding.signal()
        }
        defer { stop.store(true, ordering: .relaxed); feeding.wait(); busy.stop(); quiet.stop() }
        for round in 0..<20 {
            try quiet.push(commands(round..<(round + 1)))
            #expect(throws: Never.self) { try quiet.sync().wait() }
        }
        #expect(quietLog.commands.count == 20)
    }

    @Test func stoppingAQueueOnALaneDrainsWhatWasPushedAndLaterPushesFail() throws {
        let pool = DrainPool()
        defer { pool.stop() }
        let log = SinkLog()
        let queue = try ViommuQueue(configuration: .init(drainPolicy: .drainThread), drainLane: try pool.lane(for: "smmu0"),
                                    sink: recordingSink(log))
        try queue.push(commands(0..<100))
        let fence = queue.sync()
        queue.stop()
        #expect(fence.isComplete)
        #expect(log.commands == commands(0..<100))
        #expect(throws: CommandRingClosedError.self) { try queue.push(commands(0..<1)) }
    }

    @Test func aStoppedPoolMakesNoLane() throws {
        let pool = DrainPool()
        _ = try pool.lane(for: "smmu0")
        pool.stop()
        #expect(pool.threadCount == 0)
        #expect(throws: ViommuQueueError.drainPoolStopped) { try pool.lane(for: "smmu0") }
    }

    // MARK: Ring memory

    @Test func aRingCommitsMemoryOnlyForTheSlotsItsPositionsReached() throws {
        let ring = try CommandRing(capacity: 65_536)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        #expect(ring.residentBytes == 0, "a new ring touched nothing")
        let queue = try ViommuQueue(configuration: .init(capacity: 65_536, drainPolicy: .inline)) { .completed($0.count) }
        defer { queue.stop() }
        #expect(queue.ring.residentBytes == 0)
        try queue.push(commands(0..<16))
        #expect(throws: Never.self) { try queue.sync().wait() }
        // 17 slots (16 commands and a fence marker) and their headers: one page of each (untagged pushes
        // leave the tags untouched; the engine's tagged ones add 8 bytes a slot).
        #expect(queue.ring.residentBytes == 2 * page)
        // A batch writes its header word in its first slot's header only: batches of 256 put two on every
        // page of headers (512 per page), so a lap touches them all.
        for batch in 0..<(65_536 / 256) {
            try queue.push(commands((batch * 256)..<(batch * 256 + 256)))
        }
        #expect(throws: Never.self) { try queue.sync().wait() }
        #expect(queue.ring.residentBytes == 65_536 * 24, "a whole lap touched every slot and header: 24 bytes each")
        // Tagged pushes touch the tags too: a second lap, tagged, makes it 32 bytes a slot.
        for batch in 0..<(65_536 / 256) {
            try commands((batch * 256)..<(batch * 256 + 256)).withUnsafeBufferPointer { buffer in
                _ = try queue.push(buffer, tag: { UInt64($0) })
            }
        }
        #expect(throws: Never.self) { try queue.sync().wait() }
        #expect(queue.ring.residentBytes == 65_536 * 32)
    }
}
