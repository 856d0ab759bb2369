import PSMMU
import SMMUv3
import Testing

/// The real-kernel rig showed it (TESTING.md): on a pSMMU without ATS (IDR0.ATS = 0, as QEMU's emulated
/// SMMUv3), Linux 7.3 refuses a viommu's ATC_INV with EIO at that command (`entry_num` its index), even
/// for a registered vSID. The rig wins over the simulator: the simulated pSMMU does the same.
@Suite struct ATSTests {
    @Test func atcInvOnAPSMMUWithoutATSIsRefusedWithEIOAtThatCommandLikeTheRigsKernel() throws {
        let smmu = SimulatedSMMU(name: "smmu0", deviceCount: 2, firstHostDeviceID: 1, firstStreamID: 0x101,
                                 idRegisters: .qemuEmulatedSMMUv3)
        let guest = try Guest(smmu, devices: [(host: 1, vSID: 0x10, asids: [1])])
        let result = guest.run([.tlbiNHASID(asid: 1), .atcInv(streamID: 0x10), .tlbiNHASID(asid: 1)])
        #expect(result.completed == 1)
        #expect(result.failure?.queueError == .illegal)
        #expect(result.failure?.errno == 5)
        #expect(result.failure?.message.contains("no ATS") == true)
    }

    @Test func atcInvOnAPSMMUWithATSCompletes() throws {
        let smmu = makeSMMU()
        #expect(smmu.idRegisters.ats)
        let guest = try Guest(smmu, devices: [(host: 1, vSID: 0x10, asids: [1])])
        #expect(guest.run([.atcInv(streamID: 0x10)]) == InvalidationResult(completed: 1))
    }
}
