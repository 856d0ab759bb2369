import CommandRing
@testable import InvalidationEngine
import PSMMU
import SMMUv3
import Testing
import VirtualSMMU

/// A backend's failure travels up as one ``InvalidationFailure`` (CERROR, errno, message): the guest
/// batch's result names the failing command's guest index and keeps the backend's errno.
///
/// Before this change the ring's sink rebuilt the failure without its errno (`SinkResult(_:)` in
/// VSMMUEngine.swift), so `SubmissionResult.Failure` could not carry one; the index was the same.
/// The other promise, that a fence reporting a covered queue outside the ones it was submitted with is
/// a `precondition` failure (`Submission.coveredViommu(_:of:)`), cannot be tested in-process: it traps.
@Suite struct FailureOutcomeTests {
    /// Guest index → viommu with ``ThreePSMMUs``: ASID 3 on viommu 0, 1 on 1, 2 on 2. The command at
    /// guest index 4 (viommu 2) is the one that fails.
    static let batch: [Command] = [
        .tlbiNHVA(asid: 3, address: 0x1000), .tlbiNHVA(asid: 1, address: 0x2000), .tlbiNHASID(asid: 3),
        .tlbiNHASID(asid: 1), .tlbiNHVA(asid: 2, address: 0x3000), .tlbiNHASID(asid: 2), .sync(),
    ]

    @Test(arguments: [false, true])
    func aFailureAtGuestIndexNOfABatchOverSeveralViommusIsReportedAsNWithItsErrno(throughTheRing: Bool) throws {
        let setup = try ThreePSMMUs(policy: .inline)
        defer { setup.engine.stop() }
        setup.backends[2].failing.withLock { $0 = { $0.opcode == .tlbiNHVA } }
        let queue = try #require(setup.engine.queue(of: ViommuIndex(2)))
        let role = throughTheRing ? queue.tryAcquireConsumerRole() : nil
        if throughTheRing && role == nil { Issue.record("the consumer role is held"); return }
        let submission = setup.engine.submit(Self.batch)
        if let role { queue.release(role) }  // drains viommu 2's ring on this thread
        let result = submission.wait()
        #expect(result.consumed == 4 && result.failure?.index == 4 && result.syncs == 0)
        #expect(result.failure?.origin == .backend(ViommuIndex(2)))
        #expect(result.failure?.queueError == .illegal)
        #expect(result.failure?.errno == 5, "the backend's errno, kept from invalidate up to the result")
        #expect(queue.statistics.immediateSyncs == (throughTheRing ? 0 : 1))
    }
}
