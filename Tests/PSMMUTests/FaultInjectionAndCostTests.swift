import Foundation
import PSMMU
import SMMUv3
import Testing

/// Injected command failures, stalls, the cost model and the counters.
@Suite struct FaultInjectionAndCostTests {
    let smmu = makeSMMU()

    /// Five commands, each invalidating one of the pages 0x1000…0x5000 of ASID 1.
    static let fivePages = (1...5).map { Command.tlbiNHVA(asid: 1, address: UInt64($0) << 12) }

    func guestWithFivePages() throws -> Guest {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try guest.fill(1, (1...5).map { UInt64($0) << 12 })
        return guest
    }

    @Test func theArmedCommandFailsWithTheGivenErrorAndTheBatchStopsThere() throws {
        let guest = try guestWithFivePages()
        try smmu.failCommand(at: 3, on: guest.viommu, with: .abort)

        let result = guest.run(Self.fivePages)

        #expect(result.completed == 3)
        #expect(result.failure?.queueError == .abort)
        #expect(result.failure?.message.contains("CMD_TLBI_NH_VA") == true)
        #expect(guest.cached(asid: 1) == [0x4000, 0x5000])
        #expect(smmu.commandsProcessed(viommu: guest.viommu) == 4)
        #expect(smmu.simulationCounters.faultsInjected == 1)
        #expect(smmu.armedFaultCount == 0)

        // The fault fired once: resubmitting the rest succeeds.
        #expect(guest.run(Array(Self.fivePages[3...])).isComplete(of: 2))
        #expect(guest.cached(asid: 1) == [])
    }

    @Test func aFaultCountedFromAttachCountsTheCommandsAlreadyProcessed() throws {
        let guest = try guestWithFivePages()
        guest.run(Array(Self.fivePages[0..<2]))
        try smmu.failCommand(at: 4, countedFrom: .attach, on: guest.viommu, with: .atcInvalidationSync)

        let result = guest.run(Array(Self.fivePages[2...]))

        #expect(result.completed == 2)
        #expect(result.failure?.queueError == .atcInvalidationSync)
        #expect(guest.cached(asid: 1) == [0x5000])
    }

    @Test func aFaultCountedFromAttachAtAPassedPositionIsRefused() throws {
        let guest = try guestWithFivePages()
        guest.run(Self.fivePages)
        #expect(throws: BackendError.self) { try smmu.failCommand(at: 2, countedFrom: .attach, on: guest.viommu) }
    }

    @Test func aFaultOnOneViommuDoesNotFireOnAnother() throws {
        let a = try guestWithFivePages()
        let b = try Guest(smmu, devices: [(2, 0x10, [1])])
        try smmu.failCommand(at: 0, on: a.viommu)

        #expect(b.run(Self.fivePages).isComplete(of: 5))
        #expect(a.run(Self.fivePages).completed == 0)
    }

    @Test func aPredicateFaultFiresOnMatchingCommandsTheGivenNumberOfTimes() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])], eats: 1)
        try smmu.failCommands(with: .atcInvalidationSync, times: 2) { $0.opcode == .atcInv }
        let batch: [Command] = [.tlbiNHASID(asid: 1), .atcInv(streamID: 0x10), .tlbiNHAll()]

        #expect(guest.run(batch).completed == 1)
        #expect(guest.run(batch).failure?.queueError == .atcInvalidationSync)
        #expect(guest.run(batch).isComplete(of: 3))
    }

    @Test func aDisarmedFaultNoLongerFires() throws {
        let guest = try guestWithFivePages()
        let id = try smmu.failCommands(on: guest.viommu) { _ in true }
        #expect(guest.run(Self.fivePages).completed == 0)

        #expect(smmu.disarmFault(id))
        #expect(guest.run(Self.fivePages).isComplete(of: 5))
        #expect(!smmu.disarmFault(id))
    }

    @Test func aStalledCallExecutesNothingUntilReleasedWhileOtherViommusGoOn() throws {
        let a = try guestWithFivePages()
        let b = try Guest(smmu, devices: [(2, 0x10, [1])])
        try b.fill(2, [0x1000])
        let gate = smmu.stallInvalidations(on: a.viommu)

        let call = Spawned { a.run(Self.fivePages) }
        #expect(gate.waitForStalledCalls(1))
        #expect(gate.waitingCalls == 1)
        #expect(a.cached(asid: 1).count == 5, "a stalled call has not executed its commands")
        #expect(b.run([.tlbiNHAll()]).isComplete(of: 1), "another viommu is not stalled")
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x9000).tlbEntry != nil, "DMA is not stalled")

        gate.release()
        #expect(call.wait().isComplete(of: 5))
        #expect(a.cached(asid: 1) == [0x9000])
        #expect(smmu.simulationCounters.callsStalled == 1)
        #expect(a.run(Self.fivePages).isComplete(of: 5), "a released gate no longer stalls")
    }

    @Test func aStallWithADurationBlocksTheCallAtLeastThatLong() throws {
        let guest = try guestWithFivePages()
        let gate = smmu.stallInvalidations(for: .milliseconds(20))
        let clock = ContinuousClock()

        let start = clock.now
        let result = guest.run(Self.fivePages)
        let elapsed = start.duration(to: clock.now)

        #expect(result.isComplete(of: 5))
        #expect(elapsed >= .milliseconds(20))
        #expect(gate.stalledCalls == 1)
        gate.release()
    }

    @Test func theCostModelTakesAtLeastItsTimeAndCountsIt() throws {
        let smmu = makeSMMU(costModel: CostModel(nanosecondsPerCall: 150_000, nanosecondsPerCommand: 30_000))
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        let clock = ContinuousClock()

        let start = clock.now
        let result = guest.run(Self.fivePages)
        let elapsed = start.duration(to: clock.now)

        #expect(result.isComplete(of: 5))
        #expect(elapsed >= .microseconds(300))
        #expect(smmu.simulationCounters.costNanoseconds == 300_000)
    }

    @Test func aFailedBatchCostsTheCommandsProcessedUpToTheFailure() throws {
        let smmu = makeSMMU(costModel: CostModel(nanosecondsPerCall: 1_000, nanosecondsPerCommand: 10_000))
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])

        _ = guest.run([.tlbiNHAll(), .sync(), .tlbiNHAll()])

        #expect(smmu.simulationCounters.costNanoseconds == 21_000)
    }

    @Test func aSharedCommandQueueSerialisesTheCommandsOfConcurrentViommus() throws {
        let smmu = makeSMMU(costModel: CostModel(nanosecondsPerCommand: 1_000_000, sharesCommandQueue: true))
        let a = try Guest(smmu, devices: [(1, 0x10, [1])])
        let b = try Guest(smmu, devices: [(2, 0x10, [1])])
        let batch = Array(repeating: Command.tlbiNHAll(), count: 10)
        let clock = ContinuousClock()

        let start = clock.now
        let calls = [Spawned { a.run(batch) }, Spawned { b.run(batch) }]
        for call in calls { #expect(call.wait().isComplete(of: 10)) }
        let elapsed = start.duration(to: clock.now)

        #expect(elapsed >= .milliseconds(20))
    }

    @Test func theCostModelCanBeChangedAndIsFreeByDefault() {
        #expect(smmu.costModel == .free)
        #expect(CostModel.free.isFree)
        smmu.costModel = CostModel(nanosecondsPerCall: 5)
        #expect(smmu.costModel.nanosecondsPerCall == 5)
    }

    @Test func backendCountersCountCallsCommandsAndOpcodes() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])], eats: 1)
        guest.run([.tlbiNHASID(asid: 1), .tlbiNHVA(asid: 1, address: 0), .tlbiNHVA(asid: 1, address: 0x1000)])
        guest.run([.atcInv(streamID: 0x10), .cfgiCDAll(streamID: 0x10), .sync(), .tlbiNHAll()])

        let counters = smmu.counters
        #expect(counters.invalidateCalls == 2)
        #expect(counters.commandsReceived == 7)
        #expect(counters.commandsCompleted == 5)
        #expect(counters.commandsFailed == 1)
        #expect(counters.commandsByOpcode == [0x11: 1, 0x12: 2, 0x40: 1, 0x06: 1])
    }

    @Test func concurrentViommusAndDMAKeepEveryCountExact() throws {
        let guests = try (1...4).map { try Guest(smmu, devices: [(UInt32($0), 0x10, [1])]) }
        let rounds = 2_000
        let calls = guests.map { guest in
            Spawned { () -> Int in
                var complete = 0
                for round in 0..<rounds {
                    let page = UInt64(round % 64) << 12
                    _ = try? guest.smmu.touch(hostDeviceID: hostOf(guest), address: page)
                    if guest.run([.tlbiNHVA(asid: 1, address: page), .tlbiNHASID(asid: 2)]).isComplete(of: 2) { complete += 1 }
                }
                return complete
            }
        }
        for call in calls { #expect(call.wait() == rounds) }

        let counters = smmu.counters
        #expect(counters.invalidateCalls == UInt64(4 * rounds))
        #expect(counters.commandsCompleted == UInt64(8 * rounds))
        #expect(smmu.simulationCounters.dmaAccesses == UInt64(4 * rounds))
        #expect(smmu.tlbEntryCount == 0, "every page filled was invalidated right after")
    }
}

/// The host device of a one-device guest.
private func hostOf(_ guest: Guest) -> UInt32 {
    guest.vdevices.keys.first ?? 0
}
