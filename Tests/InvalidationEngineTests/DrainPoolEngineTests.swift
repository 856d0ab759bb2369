import CommandRing
@testable import InvalidationEngine
import PSMMU
import SMMUv3
import Testing
import VirtualSMMU

/// Issue 11 §3: engines whose queues drain on a shared ``DrainPool`` (one lane per pSMMU) instead of a
/// thread per viommu. ``ThreePSMMUs``: ASID 3 on viommu 0 ("pSMMU0"), ASID 1 on viommu 1 ("pSMMU1"),
/// ASID 2 on viommu 2 ("pSMMU2"); two setups on one pool share its three lanes by pSMMU name.
@Suite struct DrainPoolEngineTests {
    @Test(arguments: [ViommuQueue.DrainPolicy.inlineWithDrainThread, .drainThread])
    func twoVSMMUsOnOnePoolRunOneLaneThreadPerPSMMUAndRouteExactlyAsBefore(policy: ViommuQueue.DrainPolicy) throws {
        let pool = DrainPool()
        defer { pool.stop() }
        let first = try ThreePSMMUs(policy: policy, drainPool: pool)
        let second = try ThreePSMMUs(policy: policy, drainPool: pool)
        defer { first.engine.stop(); second.engine.stop() }
        #expect(pool.threadCount == 3, "six viommus, three pSMMUs: one lane thread each")
        #expect(pool.laneNames == ["pSMMU0", "pSMMU1", "pSMMU2"])
        let batch: [Command] = [
            .atcInv(streamID: 0x10), .tlbiNHVA(asid: 2, address: 0x4000), .tlbiNHAll(), .cfgiCD(streamID: 0x8), .sync(),
        ]
        for setup in [first, second] {
            for _ in 0..<50 {
                #expect(setup.engine.submit(batch).wait() == SubmissionResult(consumed: 5, failure: nil, syncs: 1))
            }
            #expect(setup.executed(0) == Array(repeating: [Command.tlbiNHAll(), .cfgiCD(streamID: 0x8)], count: 50).flatMap { $0 })
            #expect(setup.executed(1) == Array(repeating: [Command.atcInv(streamID: 0x10), .tlbiNHAll()], count: 50).flatMap { $0 })
            #expect(setup.executed(2) == Array(repeating: [Command.tlbiNHVA(asid: 2, address: 0x4000), .tlbiNHAll()], count: 50).flatMap { $0 })
        }
        if policy == .drainThread {
            let drainedByLanes = first.engine.viommuStatistics.map(\.queue.drainThreadSinkCalls).reduce(0, +)
            #expect(drainedByLanes > 0, "every command went through a lane thread")
        }
    }

    @Test func aStalledPSMMUHoldsBackOnlyItsOwnLaneAcrossVSMMUsAndTheStallLimitStillAnswersCERROR_ABT() throws {
        let pool = DrainPool()
        defer { pool.stop() }
        let stalledVMM = try ThreePSMMUs(stallTimeout: .milliseconds(100), drainPool: pool)
        let otherVMM = try ThreePSMMUs(stallTimeout: .milliseconds(100), drainPool: pool)
        let gate = stalledVMM.backends[1].gate
        defer { gate.open(); stalledVMM.engine.stop(); otherVMM.engine.stop() }
        gate.close()
        // pSMMU1's lane thread is now held inside the stalled backend's invalidate.
        let stalled = stalledVMM.engine.submit([.tlbiNHASID(asid: 1), .sync()]).wait()
        #expect(stalled.failure?.index == 1 && stalled.failure?.queueError == .abort)
        #expect(gate.waitForHeldCalls(1))
        // Another VMM's viommus on the other pSMMUs have their lanes: their syncs complete.
        #expect(otherVMM.engine.submit([.tlbiNHVA(asid: 3, address: 0x3000), .tlbiNHASID(asid: 2), .sync()]).wait()
                == SubmissionResult(consumed: 3, failure: nil, syncs: 1))
        #expect(otherVMM.executed(0) == [.tlbiNHVA(asid: 3, address: 0x3000)])
        #expect(otherVMM.executed(2) == [.tlbiNHASID(asid: 2)])
        // Its viommu on the stalled pSMMU's lane waits behind the stall, and the limit answers it.
        let behind = otherVMM.engine.submit([.tlbiNHASID(asid: 1), .sync()]).wait()
        #expect(behind.failure?.index == 1 && behind.failure?.queueError == .abort)
        gate.open()
        // The pSMMU wakes: both VMMs' queued commands execute, in order, and their next syncs complete.
        #expect(stalledVMM.engine.submit([.sync()]).wait() == SubmissionResult(consumed: 1, failure: nil, syncs: 1))
        #expect(otherVMM.engine.submit([.sync()]).wait() == SubmissionResult(consumed: 1, failure: nil, syncs: 1))
        #expect(stalledVMM.executed(1) == [.tlbiNHASID(asid: 1)])
        #expect(otherVMM.executed(1) == [.tlbiNHASID(asid: 1)])
        #expect(pool.threadCount == 3)
    }

    @Test func unsettingADeviceOnAPoolLaneWaitsForItsQueuedCommandsAndReportsTheirFailureAtTheNextSync() throws {
        let pool = DrainPool()
        defer { pool.stop() }
        let setup = try ThreePSMMUs(policy: .drainThread, drainPool: pool)
        defer { setup.engine.stop() }
        setup.backends[2].failing.withLock { $0 = { $0.opcode == .tlbiNHVA } }
        _ = setup.engine.submit([.tlbiNHVA(asid: 2, address: 0x1000)])
        try setup.engine.unsetDeviceID(streamID: 0x18)
        #expect(setup.executed(2).isEmpty, "the refused command never executed")
        let next = setup.engine.submit([.tlbiNHVA(asid: 3, address: 0x2000), .sync()]).wait()
        #expect(next.failure?.index == 1 && next.failure?.queueError == .illegal)
        #expect(next.failure?.origin == .backend(ViommuIndex(2)))
    }

    @Test func aStoppedPoolRefusesNewViommusWithAnErrorInsteadOfAThreadlessQueue() throws {
        let pool = DrainPool()
        pool.stop()
        let engine = VSMMUEngine(configuration: .init(drainPool: pool))
        defer { engine.stop() }
        let backend = RecordingBackend(name: "pSMMU0")
        #expect(throws: EngineError.queue(.drainPoolStopped)) { try engine.attachViommu(pSMMU: "pSMMU0", backend: backend) }
        #expect(engine.vsmmu.viommus.allSatisfy { $0 == nil }, "nothing half-attached")
        #expect(backend.record.withLock { $0.viommus.isEmpty }, "the backend's viommu was destroyed again")
    }
}
