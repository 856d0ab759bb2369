import CommandRing
import Foundation
@testable import InvalidationEngine
import PSMMU
import SMMUv3
import Synchronization
import Testing
import VirtualSMMU

/// `VSMMUEngine.execute(_:policy:)`, the data path's submit + wait + recycle, makes no ``Submission``
/// while every CMD_SYNC of a batch completes at once on idle viommus (`SubmissionBuilder`); at the first
/// push into a ring it makes one and hands it what it recorded so far. Either way its result must be the
/// one `submit(_:).wait()` gives for the same batch on the same state.
@Suite struct EngineExecuteTests {
    /// A fixed-seed generator (SplitMix64): the same batches in every run.
    struct SplitMix {
        var state: UInt64
        mutating func next(_ bound: Int) -> Int {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return Int((z ^ (z >> 31)) % UInt64(bound))
        }
    }

    /// A guest batch over ``ThreePSMMUs``: TLBIs by ASID (4 has no viommu), broadcasts, device-scoped
    /// commands (StreamID 0x20 is not registered: the router refuses it) and CMD_SYNCs.
    static func batch(_ random: inout SplitMix) -> [Command] {
        (0..<(1 + random.next(12))).map { _ in
            switch random.next(9) {
            case 0, 1: .tlbiNHVA(asid: ASID(1 + random.next(4)), address: 0x1000)
            case 2: .tlbiNHASID(asid: ASID(1 + random.next(3)))
            case 3: .tlbiNHAll()
            case 4: .cfgiCD(streamID: StreamID(0x8 * (1 + random.next(3))))
            case 5: random.next(8) == 0 ? .atcInv(streamID: 0x20) : .atcInv(streamID: StreamID(0x8 * (1 + random.next(3))))
            default: .sync()
            }
        }
    }

    @Test(arguments: [ViommuQueue.DrainPolicy.inline, .inlineWithDrainThread, .drainThread])
    func executeReportsWhatSubmitAndWaitReportForTheSameBatchesAndExecutesTheSameCommands(policy: ViommuQueue.DrainPolicy) throws {
        let reference = try ThreePSMMUs(policy: policy)
        let executed = try ThreePSMMUs(policy: policy)
        defer { reference.engine.stop(); executed.engine.stop() }
        var random = SplitMix(state: 0x5EED)
        var failures = 0
        for round in 0..<400 {
            // Backend failures come and go, on one pSMMU at a time, every 20 batches. A change waits for
            // a CMD_SYNC on both engines: a command pushed without one may still be in a ring (the drain
            // thread's policy), and it must meet the predicate of its own batch on both.
            guard round % 20 == 0 else { try runRound(); continue }
            _ = reference.engine.submit([.sync()]).wait()
            _ = [Command.sync()].withUnsafeBufferPointer { executed.engine.execute($0) }
            let failing = random.next(4)
            let opcode = [Opcode.tlbiNHVA, .tlbiNHASID, .cfgiCD][random.next(3)].rawValue
            for setup in [reference, executed] {
                for (i, backend) in setup.backends.enumerated() {
                    var predicate: (@Sendable (Command) -> Bool)?
                    if i == failing { predicate = { (command: Command) -> Bool in command.opcode.rawValue == opcode } }
                    backend.failing.withLock { $0 = predicate }
                }
            }
            try runRound()
            func runRound() throws {
                let batch = Self.batch(&random)
                let routingPolicy: RoutingPolicy = random.next(4) == 0 ? .continueAfterErrors : .stopAtFirstError
                let submission = reference.engine.submit(batch, policy: routingPolicy)
                let expected = submission.wait()
                reference.engine.recycle(submission)
                let result = batch.withUnsafeBufferPointer { executed.engine.execute($0, policy: routingPolicy) }
                #expect(result == expected, "round \(round): \(batch)")
                if expected.failure != nil { failures += 1 }
            }
        }
        // Everything a batch pushed without a CMD_SYNC after it reaches its backend by the next sync.
        _ = reference.engine.submit([.sync()]).wait()
        _ = [Command.sync()].withUnsafeBufferPointer { executed.engine.execute($0) }
        for v in 0..<3 {
            let (mine, theirs) = (executed.executed(v), reference.executed(v))
            #expect(mine == theirs, "viommu \(v): \(mine.count) commands against \(theirs.count), first difference at \(zip(mine, theirs).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(mine.count, theirs.count))")
        }
        #expect(failures > 40, "the batches exercised failures (\(failures))")
    }

    /// The first CMD_SYNC completes at once and its command fails there; the second meets a busy queue,
    /// so the submission is made only then. It must still report the first sync's failure, which was
    /// recorded before it existed.
    @Test func aFailureRecordedBeforeTheSubmissionExistedIsTheBatchsFailureOnceALaterSyncNeedsTheRing() throws {
        let setup = try ThreePSMMUs(policy: .inline)
        defer { setup.engine.stop() }
        setup.backends[0].failing.withLock { $0 = { $0.opcode == .tlbiNHVA } }
        let busy = try #require(setup.engine.queue(of: ViommuIndex(1)))
        guard let role = busy.tryAcquireConsumerRole() else { Issue.record("the consumer role is held"); return }
        let batch: [Command] = [.tlbiNHVA(asid: 3, address: 0x1000), .sync(), .tlbiNHASID(asid: 1), .sync()]
        let result = Mutex<SubmissionResult?>(nil)
        let done = DispatchSemaphore(value: 0)
        let engine = setup.engine
        Thread {
            let outcome = batch.withUnsafeBufferPointer { engine.execute($0) }
            result.withLock { $0 = outcome }
            done.signal()
        }.start()
        // execute() waits for viommu 1's fence until its role comes back.
        #expect(done.wait(timeout: .now() + .milliseconds(200)) == .timedOut)
        busy.release(role)
        #expect(done.wait(timeout: .now() + .seconds(20)) == .success)
        let outcome = try #require(result.withLock { $0 })
        #expect(outcome.failure?.index == 0 && outcome.consumed == 0, "\(outcome)")
        #expect(outcome.failure?.origin == .backend(ViommuIndex(0)))
        #expect(outcome.syncs == 1, "the second CMD_SYNC completed; the first failed")
        #expect(setup.executed(1) == [.tlbiNHASID(asid: 1)])
    }

    @Test func executeOnAStoppedEngineRefusesTheBatchWithCERRORABTAsSubmitDoes() throws {
        let setup = try ThreePSMMUs(policy: .inline)
        setup.engine.stop()
        let result = [Command.tlbiNHAll(), .sync()].withUnsafeBufferPointer { setup.engine.execute($0) }
        #expect(result.consumed == 0 && result.failure?.queueError == .abort && result.syncs == 0)
    }
}
