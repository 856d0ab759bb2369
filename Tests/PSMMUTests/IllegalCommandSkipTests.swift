import PSMMU
import SMMUv3
import Testing

/// A command the kernel passes on (`arm_vsmmu_convert_user_cmd` does not look at SSEC) but the SMMU
/// refuses with CERROR_ILL: `arm_smmu_cmdq_skip_err` overwrites it with a CMD_SYNC and the queue goes
/// on, so `IOMMU_HWPT_INVALIDATE` returns 0 and the guest would see it completed, having done nothing.
/// (That is why the daemon's router refuses SSEC itself.)
@Suite struct IllegalCommandSkipTests {
    let smmu = makeSMMU()

    @Test func cfgiCDWithSSECIsSkippedLikeArmSmmuCmdqSkipErrTheBatchCompletesAndTheCDStaysCached() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1, 2])])
        try guest.fill(1, ssid: 1, [0x1000])
        try guest.fill(1, [0x2000])
        var command = Command.cfgiCD(streamID: 0x10, substreamID: 1)
        command.ssec = true

        let result = guest.run([command, .tlbiNHASID(asid: 1)])

        #expect(result.isComplete(of: 2))
        #expect(smmu.cachedCDs(hostDeviceID: 1)[1] == .valid(asid: 2), "the skipped CFGI_CD dropped nothing")
        #expect(guest.cached(asid: 1).isEmpty, "the batch went on past it")
        #expect(smmu.simulationCounters.illegalCommandsSkipped == 1)
        #expect(smmu.simulationCounters.commandsRejected == 0)
        #expect(smmu.simulationCounters.configEntriesInvalidated.isEmpty)
        let counters = smmu.counters
        #expect(counters.commandsCompleted == 2)
        #expect(counters.commandsFailed == 0)
        #expect(counters.commandsByOpcode[Opcode.cfgiCD.rawValue] == nil)
    }

    @Test func atcInvAndCfgiCDAllWithSSECAreSkippedAndTheATCEntryStays() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])], eats: 1)
        try smmu.touch(hostDeviceID: 1, address: 0x1000, throughATS: true)
        try guest.fill(1, [0x3000])
        var atcInv = Command.atcInv(streamID: 0x10, address: 0, size: 52)
        atcInv.ssec = true
        var cfgiAll = Command.cfgiCDAll(streamID: 0x10)
        cfgiAll.ssec = true

        let result = guest.run([atcInv, cfgiAll])

        #expect(result == InvalidationResult(completed: 2))
        #expect(smmu.atcEntries(hostDeviceID: 1).count == 1)
        #expect(smmu.cachedCDs(hostDeviceID: 1).count == 1)
        #expect(smmu.simulationCounters.illegalCommandsSkipped == 2)
        #expect(smmu.simulationCounters.atcEntriesInvalidated == 0)
    }

    @Test func theSameCommandsWithoutSSECTakeEffect() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])], eats: 1)
        try smmu.touch(hostDeviceID: 1, address: 0x1000, throughATS: true)

        let result = guest.run([.atcInv(streamID: 0x10, address: 0, size: 52), .cfgiCDAll(streamID: 0x10)])

        #expect(result.isComplete(of: 2))
        #expect(smmu.atcEntries(hostDeviceID: 1).isEmpty)
        #expect(smmu.cachedCDs(hostDeviceID: 1).isEmpty)
        #expect(smmu.simulationCounters.illegalCommandsSkipped == 0)
    }
}
