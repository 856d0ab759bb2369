import Foundation
import Atomics
import SMMUv3
import Testing
@testable import CommandRing

/// A sink that records every batch and fails the commands whose w1 is ``failingWord``.
func recordingSink(_ log: SinkLog, gate: Gate? = nil) -> CommandSink {
    let gateUsed = ManagedAtomic<Bool>(false)
    return { batch in
        if let gate, !gateUsed.exchange(true, ordering: .relaxed) { gate.pass() }
        for (index, command) in batch.enumerated() where command.w1 == failingWord {
            log.record(UnsafeBufferPointer(rebasing: batch[..<index]))
            return .failed(completed: index, queueError: .illegal, message: "refused \(command)")
        }
        log.record(batch)
        return .completed(batch.count)
    }
}

let failingWord: UInt64 = 0xBAD0_BAD0_BAD0_BAD0

func failingCommand(_ tag: UInt64) -> Command { Command(w0: tag, w1: failingWord) }

func queue(_ policy: ViommuQueue.DrainPolicy, capacity: Int = 1024, sink: @escaping CommandSink) throws -> ViommuQueue {
    try ViommuQueue(configuration: .init(capacity: capacity, drainPolicy: policy), sink: sink)
}

let allPolicies: [ViommuQueue.DrainPolicy] = [.inline, .inlineWithDrainThread, .drainThread]

@Suite("ViommuQueue and sync fences")
struct ViommuQueueTests {
    // MARK: Inline and drain-thread paths

    @Test func syncOnAnIdleQueueDrainsOnTheSubmittingThreadAndIsCompleteOnReturn() throws {
        let log = SinkLog()
        let queue = try queue(.inline, sink: recordingSink(log))
        defer { queue.stop() }
        try queue.push(commands(0..<5))
        let fence = queue.sync()
        #expect(fence.isComplete)
        #expect(throws: Never.self) { try fence.wait() }
        #expect(log.commands == commands(0..<5))
        #expect(queue.consumedPosition == queue.claimedPosition)
        #expect(queue.statistics.inlineSinkCalls == 1)
        #expect(queue.statistics.drainThreadSinkCalls == 0)
    }

    @Test func submitterDrainsInlineWhileTheDrainThreadSleeps() throws {
        let log = SinkLog()
        let queue = try queue(.inlineWithDrainThread, sink: recordingSink(log))
        defer { queue.stop() }
        eventually("the drain thread parks") { queue.isDrainThreadParked }
        try queue.push(commands(0..<16))
        let fence = queue.sync()
        #expect(fence.isComplete, "no hand-off: the submitter drained its own commands")
        #expect(log.commands == commands(0..<16))
        #expect(queue.statistics.inlineSinkCalls == 1)
        #expect(queue.statistics.drainThreadSinkCalls == 0)
        #expect(queue.isDrainThreadParked, "nobody woke the drain thread")
    }

    @Test func drainThreadPolicyHandsEveryCommandToTheDrainThread() throws {
        let log = SinkLog()
        let queue = try queue(.drainThread, sink: recordingSink(log))
        defer { queue.stop() }
        for start in stride(from: 0, to: 64, by: 16) {
            try queue.push(commands(start..<(start + 16)))
            try queue.sync().wait()
        }
        #expect(log.commands == commands(0..<64))
        #expect(queue.statistics.inlineSinkCalls == 0)
        #expect(queue.statistics.drainThreadSinkCalls >= 1)
    }

    @Test func heldConsumerRoleLeavesTheWorkToTheDrainThread() throws {
        let log = SinkLog()
        let queue = try queue(.inlineWithDrainThread, sink: recordingSink(log))
        defer { queue.stop() }
        // The drain thread takes the role briefly when it starts: retry until it is ours.
        var held: ConsumerRole?
        eventually("the consumer role is free") {
            held = queue.tryAcquireConsumerRole()
            return held != nil
        }
        guard let role = held.take() else { return }

        let fenceBox = Handoff<SyncFence>()
        let submitter = try startThread {
            do {
                try queue.push(commands(0..<16))
                let fence = queue.sync()
                fenceBox.put(fence)
                try fence.wait()
            } catch {
                Issue.record("push or sync failed: \(error)")
            }
        }
        // The submitter cannot drain (we hold the role): it spins, then parks on its fence.
        eventually("the submitter parks on its fence") { fenceBox.take()?.hasParkedWaiter == true }
        #expect(fenceBox.take()?.isComplete == false)
        #expect(log.commands.isEmpty)

        queue.release(role)  // sees the stranded commands and wakes the drain thread
        submitter.join()
        #expect(log.commands == commands(0..<16))
        #expect(queue.statistics.drainThreadSinkCalls >= 1)
        #expect(queue.statistics.inlineSinkCalls == 0)
    }

    @Test func releasingAHeldRoleWithoutADrainThreadDrainsInline() throws {
        let log = SinkLog()
        let queue = try queue(.inline, sink: recordingSink(log))
        defer { queue.stop() }
        let role = try acquireRole(queue.ring)
        try queue.push(commands(0..<3))
        let fence = queue.sync()
        #expect(!fence.isComplete)
        queue.release(role)
        #expect(fence.isComplete)
        #expect(log.commands == commands(0..<3))
    }

    // MARK: Fences

    @Test(arguments: [ViommuQueue.DrainPolicy.inline, .inlineWithDrainThread])
    func syncWithNothingPushedCompletesAtOnce(policy: ViommuQueue.DrainPolicy) throws {
        let queue = try queue(policy, sink: { .completed($0.count) })
        defer { queue.stop() }
        if policy == .inlineWithDrainThread {
            eventually("the drain thread parks") { queue.isDrainThreadParked }
        }
        let calls = CallCounter()
        let fence = queue.sync(onComplete: { _ in calls.increment() })
        #expect(fence.isComplete)
        #expect(calls.value == 1)
        #expect(try fence.result?.get() != nil)
    }

    @Test func fenceCoveringNoQueueCompletesAtOnce() {
        let calls = CallCounter()
        let fence = SyncFence.submit(covering: [], onComplete: { _ in calls.increment() })
        #expect(fence.isComplete)
        #expect(calls.value == 1)
    }

    @Test func syncCompletesOnlyAfterEverythingBeforeItWasExecuted() throws {
        let log = SinkLog()
        let gate = Gate()
        let queue = try queue(.drainThread, sink: recordingSink(log, gate: gate))
        defer { queue.stop() }
        try queue.push(commands(0..<10))
        gate.waitUntilReached()  // the drain thread is inside the sink with the first batch
        try queue.push(commands(10..<20))
        let fence = queue.sync()
        #expect(!fence.isComplete)
        #expect(queue.consumedPosition == 0)

        gate.open()
        try fence.wait()
        #expect(log.commands == commands(0..<20))
        #expect(queue.consumedPosition == 21)  // 20 commands and the fence's marker
    }

    @Test(arguments: allPolicies)
    func fenceOverSeveralQueuesWaitsForEachOfThem(policy: ViommuQueue.DrainPolicy) throws {
        let slowLog = SinkLog(), fastLog = SinkLog()
        let gate = Gate()
        let slow = try queue(.drainThread, sink: recordingSink(slowLog, gate: gate))
        let fast = try queue(policy, sink: recordingSink(fastLog))
        defer { slow.stop(); fast.stop() }

        try slow.push(commands(0..<4))
        gate.waitUntilReached()
        try fast.push(commands(0..<4, producer: 1))
        let calls = CallCounter()
        let fence = SyncFence.submit(covering: [slow, fast], onComplete: { _ in calls.increment() })
        eventually("the fast queue passes its part of the fence") { fast.consumedPosition == 5 }
        #expect(!fence.isComplete)
        #expect(calls.value == 0)

        gate.open()
        try fence.wait()
        #expect(slowLog.commands == commands(0..<4))
        #expect(fastLog.commands == commands(0..<4, producer: 1))
        slow.stop()
        fast.stop()
        #expect(calls.value == 1)
    }

    @Test(arguments: allPolicies)
    func sinkFailureFailsExactlyTheCoveringSync(policy: ViommuQueue.DrainPolicy) throws {
        let log = SinkLog()
        let queue = try queue(policy, sink: recordingSink(log))
        defer { queue.stop() }

        try queue.push(commands(0..<2))
        let before = queue.sync()
        let positions = try queue.push([
            taggedCommand(producer: 0, sequence: 2), failingCommand(1),
            taggedCommand(producer: 0, sequence: 3), failingCommand(2),
            taggedCommand(producer: 0, sequence: 4),
        ])
        let covering = queue.sync()
        try queue.push(commands(5..<7))
        let after = queue.sync()

        #expect(throws: Never.self) { try before.wait() }
        #expect(throws: Never.self) { try after.wait() }
        let failure = try #require(throws: SyncFailure.self) { try covering.wait() }
        #expect(failure.failures.count == 1)
        let command = try #require(failure.firstCommandFailure)
        // The first failure since the previous fence is the one reported.
        #expect(command.position == positions.lowerBound + 1)
        #expect(command.command == failingCommand(1))
        #expect(command.queueError == .illegal)
        #expect(command.message == "refused \(failingCommand(1))")
        // The queue carried on past both failures.
        #expect(log.commands == commands(0..<7))
        #expect(queue.statistics.commandsFailed == 2)
        #expect(queue.statistics.commandsCompleted == 7)
    }

    @Test func failureBeforeAnyFenceIsReportedByTheNextOne() throws {
        let log = SinkLog()
        let queue = try queue(.inline, sink: recordingSink(log))
        defer { queue.stop() }
        let positions = try queue.push([failingCommand(7)])
        #expect(queue.consumedPosition == 1, "executed inline before any fence existed")
        let fence = queue.sync()
        let failure = try #require(throws: SyncFailure.self) { try fence.wait() }
        #expect(failure.firstCommandFailure?.position == positions.lowerBound)
        #expect(throws: Never.self) { try queue.sync().wait() }
    }

    /// A failed command comes back with the tag its producer pushed it with, across the ring's wrap; one
    /// executed at once, outside the ring, carries 0.
    @Test func aFailedCommandCarriesTheTagItWasPushedWithAcrossTheWrap() throws {
        let queue = try queue(.inline, capacity: 8, sink: recordingSink(SinkLog()))
        defer { queue.stop() }
        // Six commands and a fence marker (positions 0..<7), then seven commands at 7..<14: slots 7, 0, 1, …
        // (the wrap), the failing one at position 12.
        try queue.push(commands(0..<6))
        try queue.sync().wait()
        let batch = commands(0..<5) + [failingCommand(9)] + commands(5..<6)
        let positions = try batch.withUnsafeBufferPointer { buffer in
            try queue.push(buffer, tag: { 0xABCD_0000_0000_0000 | UInt64($0) })
        }
        #expect(positions == 7..<14)
        let failure = try #require(throws: SyncFailure.self) { try queue.sync().wait() }
        let command = try #require(failure.firstCommandFailure)
        #expect(command.position == 12 && command.command == failingCommand(9))
        #expect(command.tag == 0xABCD_0000_0000_0005)
        // At once on an idle queue: outside the ring, no tag.
        let immediate = try [failingCommand(7)].withUnsafeBufferPointer { try #require(queue.executeAndSync($0)) }
        #expect(immediate.failure?.tag == 0 && immediate.failedOffset == 0)
    }

    @Test func sinkStoppingWithoutAReasonFailsTheCommandWithAbort() throws {
        let queue = try queue(.inline, sink: { batch in InvalidationResult(completed: batch.count - 1) })
        defer { queue.stop() }
        try queue.push(commands(0..<3))
        let failure = try #require(throws: SyncFailure.self) { try queue.sync().wait() }
        #expect(failure.firstCommandFailure?.position == 2)
        #expect(failure.firstCommandFailure?.queueError == .abort)
    }

    @Test func failureOnOneQueueOfAMultiQueueFenceNamesThatQueue() throws {
        let okQueue = try queue(.inline, sink: recordingSink(SinkLog()))
        let badQueue = try queue(.inline, sink: recordingSink(SinkLog()))
        defer { okQueue.stop(); badQueue.stop() }
        try okQueue.push(commands(0..<2))
        try badQueue.push([failingCommand(3)])
        let failure = try #require(throws: SyncFailure.self) {
            try SyncFence.submit(covering: [okQueue, badQueue]).wait()
        }
        #expect(failure.failures.map(\.queueIndex) == [1])
        #expect(failure.firstCommandFailure?.command == failingCommand(3))
    }

    @Test(arguments: allPolicies)
    func onCompleteRunsExactlyOnceWithTheOutcome(policy: ViommuQueue.DrainPolicy) throws {
        let first = try queue(policy, sink: recordingSink(SinkLog()))
        let second = try queue(policy, sink: recordingSink(SinkLog()))
        let successes = CallCounter(), failures = CallCounter()
        for round in 0..<50 {
            try first.push(commands(round..<(round + 1)))
            try second.push(round == 25 ? [failingCommand(UInt64(round))] : commands(round..<(round + 1)))
            let fence = SyncFence.submit(covering: [first, second]) { result in
                switch result {
                case .success: successes.increment()
                case .failure: failures.increment()
                }
            }
            _ = try? fence.wait()
        }
        first.stop()
        second.stop()
        #expect(successes.value == 49)
        #expect(failures.value == 1)
    }

    @Test func asyncSubmitReturnsTheOutcome() async throws {
        let queue = try queue(.inlineWithDrainThread, sink: recordingSink(SinkLog()))
        defer { queue.stop() }
        try queue.push(commands(0..<4))
        try await SyncFence.submit(covering: [queue])
        #expect(queue.consumedPosition == queue.claimedPosition)
        try queue.push([failingCommand(1)])
        await #expect(throws: SyncFailure.self) { try await SyncFence.submit(covering: [queue]) }
    }

    // MARK: Full ring

    @Test(arguments: allPolicies)
    func batchLargerThanTheRingReachesTheSinkInOrder(policy: ViommuQueue.DrainPolicy) throws {
        let log = SinkLog()
        let queue = try queue(policy, capacity: 8, sink: recordingSink(log))
        defer { queue.stop() }
        let positions = try queue.push(commands(0..<100))
        try queue.sync().wait()
        #expect(positions.count <= 8)
        #expect(positions.upperBound == 100)
        #expect(log.commands == commands(0..<100))
        #expect(log.batchSizes.allSatisfy { $0 <= 8 })
        #expect(queue.statistics.fullRingWaits >= 1)
    }

    // MARK: Stopping

    @Test func stopDrainsPendingCommandsAndCompletesPendingFences() throws {
        let log = SinkLog()
        let gate = Gate()
        let queue = try queue(.drainThread, sink: recordingSink(log, gate: gate))
        try queue.push(commands(0..<8))
        gate.waitUntilReached()
        let calls = CallCounter()
        var fences: [SyncFence] = []
        for round in 1...3 {
            try queue.push(commands((8 * round)..<(8 * round + 8)))
            fences.append(queue.sync(onComplete: { result in
                if case .success = result { calls.increment() }
            }))
        }
        let stopper = try startThread { queue.stop() }
        #expect(fences.allSatisfy { !$0.isComplete })
        gate.open()
        stopper.join()
        #expect(fences.allSatisfy { $0.isComplete })
        #expect(calls.value == 3)
        #expect(log.commands == commands(0..<32))
        #expect(queue.consumedPosition == queue.claimedPosition)
    }

    @Test func stopWaitsForAHeldRoleThenDrainsOnTheDrainThread() throws {
        let log = SinkLog()
        let queue = try queue(.inlineWithDrainThread, sink: recordingSink(log))
        var held: ConsumerRole?
        eventually("the consumer role is free") {
            held = queue.tryAcquireConsumerRole()
            return held != nil
        }
        guard let role = held.take() else { return }
        try queue.push(commands(0..<5))
        let calls = CallCounter()
        let fence = queue.sync(onComplete: { _ in calls.increment() })
        let stopper = try startThread { queue.stop() }
        #expect(!fence.isComplete)
        queue.release(role)
        stopper.join()
        #expect(fence.isComplete)
        #expect(calls.value == 1)
        #expect(log.commands == commands(0..<5))
    }

    @Test(arguments: allPolicies)
    func pushesAndFencesAfterStopFail(policy: ViommuQueue.DrainPolicy) throws {
        let queue = try queue(policy, sink: { .completed($0.count) })
        queue.stop()
        queue.stop()  // idempotent
        #expect(throws: CommandRingClosedError()) { try queue.push(commands(0..<1)) }
        let calls = CallCounter()
        let fence = queue.sync(onComplete: { _ in calls.increment() })
        #expect(fence.isComplete)
        #expect(calls.value == 1)
        let failure = try #require(throws: SyncFailure.self) { try fence.wait() }
        #expect(failure.failures == [.init(queueIndex: 0, reason: .queueStopped)])
    }

    @Test func invalidCapacityIsRejected() {
        #expect(throws: ViommuQueueError.invalidCapacity(100)) {
            try ViommuQueue(configuration: .init(capacity: 100), sink: { .completed($0.count) })
        }
    }
}

/// ``ViommuQueue/executeAndSync(_:)``: a sync on an idle queue without the ring.
@Suite("Immediate syncs on an idle queue")
struct ImmediateSyncTests {
    @Test(arguments: [ViommuQueue.DrainPolicy.inline, .inlineWithDrainThread])
    func anIdleQueueExecutesTheCommandsAndCompletesTheSyncOnTheCallingThread(policy: ViommuQueue.DrainPolicy) throws {
        let log = SinkLog()
        let queue = try queue(policy, sink: recordingSink(log))
        defer { queue.stop() }
        // Idle means no other thread holds the consumer role: a drain thread takes it for its first
        // look at the ring as it starts (under ThreadSanitizer that look can overlap the call below).
        if policy == .inlineWithDrainThread { eventually("the drain thread parks") { queue.isDrainThreadParked } }
        let batch = commands(0..<7)
        let outcome = batch.withUnsafeBufferPointer { queue.executeAndSync($0) }
        #expect(outcome == ViommuQueue.ImmediateSync(failure: nil, failedOffset: nil))
        #expect(log.commands == batch)
        let statistics = queue.statistics
        #expect(statistics.immediateSyncs == 1 && statistics.fencesReached == 1)
        #expect(statistics.inlineSinkCalls == 1 && statistics.commandsCompleted == 7)
        #expect(statistics.occupancyHighWater == 7, "the commands were accepted and in flight")
        #expect(queue.claimedPosition == 0, "the ring was not used")
        #expect(queue.occupancy == 0)
    }

    @Test func theDrainThreadPolicyNeverSyncsImmediately() throws {
        let log = SinkLog()
        let queue = try queue(.drainThread, sink: recordingSink(log))
        defer { queue.stop() }
        #expect(commands(0..<3).withUnsafeBufferPointer { queue.executeAndSync($0) } == nil)
        #expect(log.commands.isEmpty)
    }

    @Test func aHeldConsumerRoleMakesItDeclineAndChangeNothing() throws {
        let log = SinkLog()
        let queue = try queue(.inline, sink: recordingSink(log))
        defer { queue.stop() }
        guard let role = queue.tryAcquireConsumerRole() else { Issue.record("the consumer role is held"); return }
        #expect(commands(0..<3).withUnsafeBufferPointer { queue.executeAndSync($0) } == nil)
        queue.release(role)
        #expect(log.commands.isEmpty)
        #expect(queue.statistics.immediateSyncs == 0 && queue.statistics.fencesReached == 0)
    }

    @Test func queuedCommandsMakeItDeclineSoThatTheyRunFirst() throws {
        let log = SinkLog()
        let queue = try queue(.inline, sink: recordingSink(log))
        defer { queue.stop() }
        // Commands pushed while the role is held stay in the ring once it is dropped without release.
        do {
            guard let role = queue.tryAcquireConsumerRole() else { Issue.record("the consumer role is held"); return }
            try queue.push(commands(0..<4))
            _ = consume role
        }
        #expect(queue.occupancy == 4)
        #expect(commands(4..<6).withUnsafeBufferPointer { queue.executeAndSync($0) } == nil)
        let fence = queue.sync()
        try fence.wait()
        #expect(log.commands == commands(0..<4))
    }

    @Test func aStoppedQueueDeclines() throws {
        let queue = try queue(.inline, sink: recordingSink(SinkLog()))
        queue.stop()
        #expect(commands(0..<2).withUnsafeBufferPointer { queue.executeAndSync($0) } == nil)
    }

    @Test func aFailureAmongTheCommandsIsReportedWithItsOffsetAndTheLaterOnesStillRun() throws {
        let log = SinkLog()
        let queue = try queue(.inline, sink: recordingSink(log))
        defer { queue.stop() }
        let batch = commands(0..<2) + [failingCommand(99)] + commands(2..<4)
        let outcome = try #require(batch.withUnsafeBufferPointer { queue.executeAndSync($0) })
        #expect(outcome.failedOffset == 2)
        #expect(outcome.failure?.command == failingCommand(99) && outcome.failure?.queueError == .illegal)
        #expect(log.commands == commands(0..<4))
        #expect(queue.statistics.commandsFailed == 1)
        // The failure belonged to that sync: the next one is clean.
        #expect(commands(4..<5).withUnsafeBufferPointer { queue.executeAndSync($0) } == ViommuQueue.ImmediateSync())
    }

    @Test func anEarlierUnsyncedFailureIsTheOneTheSyncReportsWithoutAnOffset() throws {
        let log = SinkLog()
        let queue = try queue(.inline, sink: recordingSink(log))
        defer { queue.stop() }
        try queue.push([failingCommand(1)])  // drained inline; no sync covers it yet
        let outcome = try #require(([failingCommand(2)] + commands(0..<1)).withUnsafeBufferPointer { queue.executeAndSync($0) })
        #expect(outcome.failure?.command == failingCommand(1), "the first failure since the previous sync")
        #expect(outcome.failedOffset == nil)
    }

    @Test func theCommandsCountInTheOccupancyWhileTheSinkRunsThem() throws {
        let seen = Handoff<UInt64>()
        let holder = Handoff<ViommuQueue>()
        let queue = try queue(.inline) { batch in
            if let queue = holder.take() { seen.put(queue.occupancy) }
            return .completed(batch.count)
        }
        holder.put(queue)
        defer { queue.stop() }
        _ = commands(0..<5).withUnsafeBufferPointer { queue.executeAndSync($0) }
        #expect(seen.take() == 5, "a watchdog looking now sees work in the backend")
        #expect(queue.occupancy == 0)
    }
}

extension ImmediateSyncTests {
    @Test(arguments: [ViommuQueue.DrainPolicy.inline, .inlineWithDrainThread])
    func stopWaitsForAnImmediateSyncInProgress(policy: ViommuQueue.DrainPolicy) throws {
        let gate = Gate()
        let log = SinkLog()
        let queue = try queue(policy, sink: recordingSink(log, gate: gate))
        let syncer = try startThread { _ = commands(0..<3).withUnsafeBufferPointer { queue.executeAndSync($0) } }
        gate.waitUntilReached()
        let stopped = ManagedAtomic<Bool>(false)
        let stopper = try startThread {
            queue.stop()
            stopped.store(true, ordering: .releasing)
        }
        Thread.sleep(forTimeInterval: 0.05)  // ample time for a stop that did not wait to return
        let stoppedEarly = stopped.load(ordering: .acquiring)
        #expect(!stoppedEarly, "stop returned while the sink was still running")
        gate.open()
        syncer.join()
        stopper.join()
        let stoppedAtEnd = stopped.load(ordering: .acquiring)
        #expect(stoppedAtEnd)
        #expect(log.commands == commands(0..<3))
        #expect(commands(3..<4).withUnsafeBufferPointer { queue.executeAndSync($0) } == nil, "declines once stopped")
    }
}
