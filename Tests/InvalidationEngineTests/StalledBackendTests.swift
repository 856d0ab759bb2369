import CommandRing
import Dispatch
import Foundation
@testable import InvalidationEngine
import PSMMU
import SMMUv3
import Testing
import VirtualSMMU
import VSMMUSystem

/// Holds a backend's `invalidate` calls while closed: a pSMMU that stalls on demand. Tests synchronise
/// with ``waitForHeldCalls(_:timeout:)``, never by sleeping.
final class InvalidationGate: @unchecked Sendable {
    // Guarded by `condition`.
    private let condition = NSCondition()
    private var closed = false
    private var held = 0
    private var everHeld = 0

    func close() { condition.lock(); closed = true; condition.unlock() }

    func open() {
        condition.lock()
        closed = false
        condition.broadcast()
        condition.unlock()
    }

    /// Called by the backend on entry to `invalidate`: blocks while the gate is closed.
    func pass(_ viommu: ViommuHandle) {
        condition.lock()
        defer { condition.unlock() }
        guard closed else { return }
        held += 1
        everHeld += 1
        condition.broadcast()
        while closed { condition.wait() }
        held -= 1
    }

    /// Calls held since the gate was made.
    var heldCalls: Int { condition.lock(); defer { condition.unlock() }; return everHeld }

    /// Blocks until `count` calls have been held, or `timeout` passed; returns whether they were.
    func waitForHeldCalls(_ count: Int, timeout: TimeInterval = 60) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        while everHeld < count {
            if !condition.wait(until: deadline) { return everHeld >= count }
        }
        return true
    }
}

/// Runs `body` on a new thread and reports whether it returned within `seconds`. A bound on waiting
/// for an effect (failure detection), not a speed assertion: the stalls it runs against last until the
/// test opens the gate, far longer than the bound.
func answers(within seconds: Double, _ body: @escaping @Sendable () -> Void) -> Bool {
    let done = DispatchSemaphore(value: 0)
    Thread.detachNewThread {
        body()
        done.signal()
    }
    return done.wait(timeout: .now() + seconds) == .success
}

/// Runs `body` on a new thread; `wait` on the result blocks until it returned (bounded).
final class Background: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let finished = Locked(false)

    init(_ body: @escaping @Sendable () -> Void) {
        Thread.detachNewThread { [done, finished] in
            body()
            finished.withLock { $0 = true }
            done.signal()
        }
    }

    var isFinished: Bool { finished.withLock { $0 } }

    /// Whether `body` returned within `seconds`.
    func wait(seconds: Double = 60) -> Bool { done.wait(timeout: .now() + seconds) == .success }
}

/// Polls `condition` (1 ms apart, at most `attempts` times) until it holds; returns whether it did.
func eventually(attempts: Int = 10_000, _ condition: () -> Bool) -> Bool {
    for _ in 0..<attempts {
        if condition() { return true }
        usleep(1000)
    }
    return condition()
}

/// Issue 11 §3: the engine's lock and failure defects, and the stall limit. ``ThreePSMMUs``: ASID 3 on
/// viommu 0 (StreamID 0x8), ASID 1 on viommu 1 (0x10), ASID 2 on viommu 2 (0x18).
@Suite struct StalledBackendTests {
    // MARK: A lock held while waiting

    @Test func unsetDeviceIDWaitingOnAStalledBackendLeavesTheVSMMUAndItsStatisticsReadable() throws {
        let setup = try ThreePSMMUs(policy: .drainThread)
        let gate = setup.backends[1].gate
        defer { gate.open(); setup.engine.stop() }
        let engine = setup.engine
        let queue = try #require(engine.queue(of: ViommuIndex(1)))
        gate.close()
        _ = engine.submit([.tlbiNHASID(asid: 1)]) // no sync: the drain thread takes it into the stalled backend
        #expect(gate.waitForHeldCalls(1))
        let claimed = queue.claimedPosition
        let unset = Background { try? engine.unsetDeviceID(streamID: 0x10) }
        // The unregister's fence is in viommu 1's ring: it waits for the stalled backend.
        #expect(eventually { queue.claimedPosition > claimed })
        #expect(answers(within: 10) {
            _ = engine.vsmmu
            _ = engine.viommuStatistics
            _ = engine.backendHandles(of: 0x8)
        }, "readers answer while UNSET_DEV_ID waits on a stalled pSMMU")
        #expect(!unset.isFinished, "the unregister still waits: the stall lasts")
        gate.open()
        #expect(unset.wait())
        #expect(engine.vsmmu.devices[0x10] == nil)
        #expect(setup.executed(1) == [.tlbiNHASID(asid: 1)], "the queued command ran before the device went")
    }

    @Test func detachViommuWaitingOnAStalledBackendLeavesReadersAnswering() throws {
        let setup = try ThreePSMMUs(policy: .drainThread)
        let gate = setup.backends[1].gate
        defer { gate.open(); setup.engine.stop() }
        let engine = setup.engine
        try engine.unsetDeviceID(streamID: 0x10)
        let queue = try #require(engine.queue(of: ViommuIndex(1)))
        let claimed = queue.claimedPosition
        gate.close()
        _ = engine.submit([.tlbiNHAll()]) // a broadcast reaches viommu 1 without devices too
        try #require(queue.claimedPosition > claimed)
        #expect(gate.waitForHeldCalls(1))
        let detach = Background { try? engine.detachViommu(ViommuIndex(1)) }
        #expect(answers(within: 10) {
            _ = engine.vsmmu
            _ = engine.viommuStatistics
        }, "readers answer while a detach drains a stalled queue")
        #expect(!detach.isFinished)
        gate.open()
        #expect(detach.wait())
        #expect(!engine.vsmmu.attachedViommus.contains(ViommuIndex(1)))
    }

    // MARK: A swallowed failure

    @Test(arguments: [ViommuQueue.DrainPolicy.inline, .drainThread])
    func aFailureTheUnregisterWaitObservedIsReportedAtTheGuestsNextSync(policy: ViommuQueue.DrainPolicy) throws {
        let setup = try ThreePSMMUs(policy: policy)
        defer { setup.engine.stop() }
        setup.backends[2].failing.withLock { $0 = { $0.opcode == .tlbiNHVA } }
        // No CMD_SYNC: the failure waits for one, as in CMDQ_CONS.ERR.
        _ = setup.engine.submit([.tlbiNHVA(asid: 2, address: 0x1000)])
        try setup.engine.unsetDeviceID(streamID: 0x18) // waits for viommu 2's queue
        // The guest's next CMD_SYNC (covering only viommu 0) reports it, at the CMD_SYNC's index.
        let next = setup.engine.submit([.tlbiNHVA(asid: 3, address: 0x2000), .sync()]).wait()
        #expect(next.consumed == 1)
        #expect(next.failure?.index == 1)
        #expect(next.failure?.queueError == .illegal)
        #expect(next.failure?.origin == .backend(ViommuIndex(2)))
        #expect(next.failure?.message.contains("TLBI_NH_VA") == true)
        // Reported once.
        #expect(setup.engine.submit([.tlbiNHAll(), .sync()]).wait() == SubmissionResult(consumed: 2, failure: nil, syncs: 1))
    }

    @Test func aCarriedFailureWaitsForABatchWithACMDSYNC() throws {
        let setup = try ThreePSMMUs(policy: .inline)
        defer { setup.engine.stop() }
        setup.backends[2].failing.withLock { $0 = { $0.opcode == .tlbiNHVA } }
        _ = setup.engine.submit([.tlbiNHVA(asid: 2, address: 0x1000)])
        try setup.engine.unsetDeviceID(streamID: 0x18)
        let withoutSync = setup.engine.submit([.tlbiNHASID(asid: 3)]).wait()
        #expect(withoutSync.failure == nil)
        let next = setup.engine.submit([.tlbiNHASID(asid: 3), .tlbiNHASID(asid: 1), .sync()]).wait()
        #expect(next.failure?.index == 2 && next.failure?.queueError == .illegal)
    }

    // MARK: The stall limit

    @Test func aStallLongerThanTheLimitFailsTheSyncWithCERROR_ABTAndTheQueuedCommandsStillExecuteInOrder() throws {
        let setup = try ThreePSMMUs(stallTimeout: .milliseconds(100))
        let gate = setup.backends[1].gate
        defer { gate.open(); setup.engine.stop() }
        let engine = setup.engine
        gate.close()
        let batch: [Command] = [.tlbiNHVA(asid: 1, address: 0x1000), .tlbiNHVA(asid: 1, address: 0x2000), .sync()]
        let stalled = engine.submit(batch).wait()
        #expect(stalled.consumed == 2)
        #expect(stalled.syncs == 0)
        #expect(stalled.failure?.index == 2)
        #expect(stalled.failure?.queueError == .abort)
        #expect(stalled.failure?.origin == .backend(ViommuIndex(1)))
        // The other viommus of the vSMMU keep completing their syncs.
        #expect(engine.submit([.tlbiNHVA(asid: 3, address: 0x3000), .tlbiNHASID(asid: 2), .sync()]).wait()
                == SubmissionResult(consumed: 3, failure: nil, syncs: 1))
        // The guest retries the CMD_SYNC (__arm_smmu_cmdq_skip_err: CERROR_ABT, "retrying command fetch"):
        // it covers the stalled viommu, so it cannot succeed before the commands queued ahead of it.
        let retried = engine.submit([.sync()]).wait()
        #expect(retried.failure?.index == 0 && retried.failure?.queueError == .abort)
        #expect(setup.executed(1).isEmpty)
        gate.open()
        // The backend wakes up: what was queued executes, in order, and the retried CMD_SYNC completes.
        #expect(engine.submit([.sync()]).wait() == SubmissionResult(consumed: 1, failure: nil, syncs: 1))
        #expect(setup.executed(1) == [.tlbiNHVA(asid: 1, address: 0x1000), .tlbiNHVA(asid: 1, address: 0x2000)])
        #expect(eventually { engine.queueState.stalledViommus == 0 })
    }

    @Test func aFailureAmongTheCommandsOfAnAbandonedSyncIsReportedAtTheNextSync() throws {
        let setup = try ThreePSMMUs(stallTimeout: .milliseconds(100))
        let gate = setup.backends[1].gate
        defer { gate.open(); setup.engine.stop() }
        let engine = setup.engine
        setup.backends[1].failing.withLock { $0 = { $0.opcode == .tlbiNHASID } }
        gate.close()
        let stalled = engine.submit([.tlbiNHASID(asid: 1), .sync()]).wait()
        #expect(stalled.failure?.index == 1 && stalled.failure?.queueError == .abort)
        gate.open()
        // The abandoned fence completes late, with the command's failure: never silently dropped.
        #expect(eventually { engine.queueState.stalledViommus == 0 })
        let next = engine.submit([.tlbiNHVA(asid: 3, address: 0x1000), .sync()]).wait()
        #expect(next.failure?.index == 1)
        #expect(next.failure?.queueError == .illegal)
        #expect(next.failure?.origin == .backend(ViommuIndex(1)))
        #expect(next.failure?.message.contains("TLBI_NH_ASID") == true)
        #expect(engine.submit([.sync()]).wait().failure == nil)
    }

    @Test func aStallShorterThanTheLimitEndsInANormalSuccess() throws {
        let setup = try ThreePSMMUs(stallTimeout: .seconds(60))
        let gate = setup.backends[1].gate
        defer { gate.open(); setup.engine.stop() }
        gate.close()
        let opener = Background {
            _ = gate.waitForHeldCalls(1)
            usleep(50_000)
            gate.open()
        }
        let result = setup.engine.submit([.tlbiNHASID(asid: 1), .tlbiNHVA(asid: 3, address: 0x1000), .sync()]).wait()
        #expect(result == SubmissionResult(consumed: 3, failure: nil, syncs: 1))
        #expect(gate.heldCalls >= 1, "the backend did stall")
        #expect(opener.wait())
        #expect(setup.executed(1) == [.tlbiNHASID(asid: 1)])
    }

    @Test func aStallLongerThanTheLimitEndsAnAsyncWaiterToo() async throws {
        let setup = try ThreePSMMUs(stallTimeout: .milliseconds(100))
        let gate = setup.backends[1].gate
        defer { gate.open(); setup.engine.stop() }
        gate.close()
        let result = await setup.engine.submit([.tlbiNHASID(asid: 1), .sync()]).completion()
        #expect(result.failure?.index == 1 && result.failure?.queueError == .abort)
    }

    @Test func aStalledBackendFillsOnlyItsOwnFixedRingAndLaterSubmissionsFailWithoutGrowingMemory() throws {
        let capacity = 64
        let setup = try ThreePSMMUs(capacity: capacity, stallTimeout: .milliseconds(50))
        let gate = setup.backends[1].gate
        defer { gate.open(); setup.engine.stop() }
        let engine = setup.engine
        let queue = try #require(engine.queue(of: ViommuIndex(1)))
        gate.close()
        // More than the ring holds, for the stalled viommu: pushed while there is room, then CERROR_ABT
        // at the first command that found no room, which is where the guest resumes.
        let big: [Command] = (0..<200).map { .tlbiNHVA(asid: 1, address: UInt64($0) << 12) } + [.sync()]
        let first = engine.submit(big).wait()
        let index = try #require(first.failure?.index)
        #expect(first.failure?.queueError == .abort)
        #expect(index > 0 && index < capacity)
        #expect(first.consumed == index)
        // Retries keep failing (each after the limit) without memory growth: every submission still
        // alive holds a fence marker in the fixed ring.
        var submissions: [WeakSubmission] = []
        for i in 0..<(capacity / 2 + 8) {
            let submission = engine.submit([.tlbiNHVA(asid: 1, address: UInt64(i) << 12), .sync()])
            let result = submission.wait()
            #expect(result.failure?.queueError == .abort)
            submissions.append(WeakSubmission(submission))
        }
        #expect(queue.statistics.occupancyHighWater <= UInt64(capacity))
        #expect(queue.occupancy <= UInt64(capacity))
        #expect(submissions.filter { $0.submission != nil }.count <= capacity, "abandoned submissions are bounded by the ring")
        // Only its own producers: another viommu of the vSMMU completes.
        #expect(engine.submit([.tlbiNHASID(asid: 3), .sync()]).wait() == SubmissionResult(consumed: 2, failure: nil, syncs: 1))
        gate.open()
        // What was queued executes in order: the first batch's prefix, then one command per retry that fit.
        #expect(engine.submit([.sync()]).wait().failure == nil)
        let executed = setup.executed(1)
        #expect(Array(executed.prefix(index)) == Array(big.prefix(index)))
        #expect(executed.count <= capacity + index)
        #expect(eventually { submissions.allSatisfy { $0.submission == nil } }, "nothing outlives the stall")
    }
}

struct WeakSubmission {
    weak var submission: Submission?
    init(_ submission: Submission) { self.submission = submission }
}
