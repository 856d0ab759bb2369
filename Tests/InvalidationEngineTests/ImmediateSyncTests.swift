import CommandRing
@testable import InvalidationEngine
import PSMMU
import SMMUv3
import Testing
import VirtualSMMU

/// A CMD_SYNC whose viommus' queues are idle is executed and completed on the submitting thread without
/// the rings (``ViommuQueue/executeAndSync(_:)``); a busy queue takes the ring and a fence. The guest
/// sees the same result either way. (Inline policy throughout: no drain thread can hold a queue's role
/// for a moment and send a command down the ring path.)
@Suite struct ImmediateSyncEngineTests {
    /// Guest batch index → viommu, with ``ThreePSMMUs``: ASID 3 on viommu 0, 1 on 1, 2 on 2.
    static let oneTLBIPerViommu: [Command] = [
        .tlbiNHVA(asid: 3, address: 0x1000), .tlbiNHVA(asid: 1, address: 0x2000), .tlbiNHVA(asid: 2, address: 0x3000), .sync(),
    ]

    func queue(_ setup: ThreePSMMUs, _ viommu: Int) throws -> ViommuQueue {
        try #require(setup.engine.queue(of: ViommuIndex(viommu)))
    }

    @Test func aSyncOverIdleQueuesCompletesWithoutTouchingTheRings() throws {
        let setup = try ThreePSMMUs(policy: .inline)
        defer { setup.engine.stop() }
        let submission = setup.engine.submit(Self.oneTLBIPerViommu)
        #expect(submission.isComplete, "complete when submit returns")
        #expect(submission.wait() == SubmissionResult(consumed: 4, failure: nil, syncs: 1))
        for v in 0..<3 {
            let queue = try queue(setup, v)
            #expect(queue.statistics.immediateSyncs == 1 && queue.statistics.fencesReached == 1)
            #expect(queue.claimedPosition == 0, "viommu \(v)'s ring was not used")
            #expect(setup.executed(v) == [Self.oneTLBIPerViommu[v]])
        }
    }

    @Test func aBusyQueueTakesTheRingWhileTheIdleOnesSyncAtOnce() throws {
        let setup = try ThreePSMMUs(policy: .inline)
        defer { setup.engine.stop() }
        let busy = try queue(setup, 1)
        guard let role = busy.tryAcquireConsumerRole() else { Issue.record("the consumer role is held"); return }
        let submission = setup.engine.submit(Self.oneTLBIPerViommu)
        #expect(!submission.isComplete, "viommu 1's part waits in its ring")
        #expect(setup.executed(0) == [Self.oneTLBIPerViommu[0]] && setup.executed(2) == [Self.oneTLBIPerViommu[2]])
        #expect(setup.executed(1).isEmpty)
        busy.release(role)  // drains viommu 1's ring on this thread
        #expect(submission.wait() == SubmissionResult(consumed: 4, failure: nil, syncs: 1))
        #expect(setup.executed(1) == [Self.oneTLBIPerViommu[1]])
        #expect(busy.statistics.immediateSyncs == 0 && busy.statistics.fencesReached == 1)
        #expect(try queue(setup, 0).statistics.immediateSyncs == 1)
    }

    @Test(arguments: [true, false])
    func failuresOnBothPathsReportTheLowestGuestIndex(ringFailsFirst: Bool) throws {
        let setup = try ThreePSMMUs(policy: .inline)
        defer { setup.engine.stop() }
        setup.backends[0].failing.withLock { $0 = { $0.opcode == .tlbiNHVA } }    // immediate path
        setup.backends[1].failing.withLock { $0 = { $0.opcode == .tlbiNHASID } }  // ring path
        let busy = try queue(setup, 1)
        guard let role = busy.tryAcquireConsumerRole() else { Issue.record("the consumer role is held"); return }
        let ring: Command = .tlbiNHASID(asid: 1)
        let immediate: Command = .tlbiNHVA(asid: 3, address: 0x1000)
        let batch = ringFailsFirst ? [ring, immediate, .sync()] : [immediate, ring, .sync()]
        let submission = setup.engine.submit(batch)
        busy.release(role)
        let result = submission.wait()
        #expect(result.consumed == 0 && result.failure?.index == 0 && result.syncs == 0)
        #expect(result.failure?.origin == .backend(ViommuIndex(ringFailsFirst ? 1 : 0)))
        #expect(result.failure?.queueError == .illegal)
    }

    @Test func anEarlierUnsyncedFailureIsReportedAtTheSyncThatObservesIt() throws {
        let setup = try ThreePSMMUs(policy: .inline)
        defer { setup.engine.stop() }
        setup.backends[2].failing.withLock { $0 = { $0.opcode == .tlbiNHVA } }
        // No CMD_SYNC: the failure is not observed yet.
        #expect(setup.engine.submit([.tlbiNHVA(asid: 2, address: 0x1000)]).wait() == SubmissionResult(consumed: 1, failure: nil, syncs: 0))
        let result = setup.engine.submit([.tlbiNHASID(asid: 2), .sync()]).wait()
        #expect(result.failure?.index == 1, "the CMD_SYNC's index: the failing command was in an earlier batch")
        #expect(result.failure?.origin == .backend(ViommuIndex(2)))
        #expect(try queue(setup, 2).statistics.immediateSyncs == 1)
        // Reported once: the next sync is clean.
        #expect(setup.engine.submit([.tlbiNHASID(asid: 2), .sync()]).wait() == SubmissionResult(consumed: 2, failure: nil, syncs: 1))
    }

    @Test func aFailureSyncedAtOnceIsReportedAtItsGuestIndexAndLaterSyncsStillComplete() throws {
        let setup = try ThreePSMMUs(policy: .inline)
        defer { setup.engine.stop() }
        setup.backends[2].failing.withLock { $0 = { $0.opcode == .tlbiNHVA } }
        let result = setup.engine.submit([
            .tlbiNHASID(asid: 2), .tlbiNHVA(asid: 2, address: 0x1000), .tlbiNHASID(asid: 2), .sync(), .tlbiNHAll(), .sync(),
        ]).wait()
        #expect(result.consumed == 1 && result.failure?.index == 1 && result.failure?.origin == .backend(ViommuIndex(2)))
        #expect(result.syncs == 1, "the second CMD_SYNC completed; the first observed the failure")
        #expect(setup.executed(2) == [.tlbiNHASID(asid: 2), .tlbiNHASID(asid: 2), .tlbiNHAll()])
    }
}
