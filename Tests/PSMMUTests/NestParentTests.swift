import PSMMU
import SMMUv3
import Testing

/// The VMID belongs to the nest-parent S2 HWPT, not to the viommu (`arm_vsmmu_init`:
/// `vsmmu->vmid = s2_parent->s2_cfg.vmid`), and goes with the S2 (`arm_smmu_domain_free_paging`).
@Suite struct NestParentTests {
    let smmu = makeSMMU()

    /// A viommu on nest parent `s2` with device `host` as vSID 0x10 attached to a one-CD HWPT of `asid`.
    func guest(s2: UInt32, host: UInt32, asid: ASID = 1) throws -> (viommu: ViommuHandle, vdevice: VDeviceHandle, hwpt: HWPTHandle) {
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: host, nestParentHWPT: s2))
        let vdevice = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: host, virtualStreamID: 0x10)
        let hwpt = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: host, ste: s1STE(),
                                               contextDescriptors: [.valid(asid: asid)])
        try smmu.attachDevice(vdevice, to: .nested(hwpt))
        return (viommu, vdevice, hwpt)
    }

    func tearDown(_ g: (viommu: ViommuHandle, vdevice: VDeviceHandle, hwpt: HWPTHandle)) throws {
        try smmu.destroyVDevice(g.vdevice)
        try smmu.destroyHWPT(g.hwpt)
        try smmu.detachViommu(g.viommu)
    }

    @Test func viommusOnTheSameNestParentShareItsVMIDLikeArmVsmmuInit() throws {
        let a = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 5))
        let b = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 2, nestParentHWPT: 5))
        let c = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 3, nestParentHWPT: 6))

        #expect(smmu.vmid(of: a) != nil)
        #expect(smmu.vmid(of: a) == smmu.vmid(of: b))
        #expect(smmu.vmid(ofNestParent: 5) == smmu.vmid(of: a))
        #expect(smmu.vmid(of: c) != smmu.vmid(of: a))
    }

    @Test func viommusThatNameNoNestParentNeverShareAVMIDSoUnrelatedVMsStayIsolated() throws {
        // Every VM on the simulated backend passes nestParentHWPT 0: each gets a private S2 and VMID,
        // so one VM's TLBI_NH_ALL (VMID rewritten to its own) cannot reach another's entries.
        let a = try guest(s2: 0, host: 1)
        let b = try guest(s2: 0, host: 2)
        #expect(smmu.vmid(of: a.viommu) != smmu.vmid(of: b.viommu))
        try smmu.touch(hostDeviceID: 1, address: 0x1000)
        try smmu.touch(hostDeviceID: 2, address: 0x1000)

        _ = [Command.tlbiNHAll()].withUnsafeBufferPointer { smmu.invalidate(viommu: a.viommu, commands: $0) }

        #expect(smmu.tlbEntries(viommu: a.viommu).isEmpty)
        #expect(smmu.tlbEntries(viommu: b.viommu).count == 1)
    }

    @Test func aTLBIOnOneViommuOfASharedNestParentReachesTheOtherViommusEntries() throws {
        // Two vSMMUs of one VM on one S2: one VMID, so the hardware TLBI of either covers both.
        let a = try guest(s2: 5, host: 1)
        let b = try guest(s2: 5, host: 2)
        try smmu.touch(hostDeviceID: 1, address: 0x1000)
        try smmu.touch(hostDeviceID: 2, address: 0x2000)

        _ = [Command.tlbiNHAll()].withUnsafeBufferPointer { smmu.invalidate(viommu: a.viommu, commands: $0) }

        #expect(smmu.tlbEntries(viommu: b.viommu).isEmpty)
    }

    @Test func detachingOneViommuOfASharedNestParentNeitherFlushesNorFreesItsVMID() throws {
        let a = try guest(s2: 5, host: 1)
        let b = try guest(s2: 5, host: 2)
        let vmid = try #require(smmu.vmid(of: a.viommu))
        try smmu.touch(hostDeviceID: 1, address: 0x1000)
        try smmu.touch(hostDeviceID: 2, address: 0x2000)

        try tearDown(b)

        #expect(smmu.tlbEntries(viommu: a.viommu).map(\.address) == [0x1000, 0x2000])
        #expect(smmu.vmid(ofNestParent: 5) == vmid)
        #expect(smmu.simulationCounters.tlbEntriesFlushedOnDetach == 0)
        let newcomer = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 3))
        #expect(smmu.vmid(of: newcomer) != vmid, "the VMID is still the nest parent's")
    }

    @Test func theLastViommusDetachStandsInForTheS2sDestroyFlushingAndFreeingItsVMID() throws {
        let a = try guest(s2: 5, host: 1)
        let b = try guest(s2: 5, host: 2)
        let vmid = try #require(smmu.vmid(of: a.viommu))
        try smmu.touch(hostDeviceID: 1, address: 0x1000)
        try smmu.touch(hostDeviceID: 2, address: 0x2000)

        try tearDown(a)
        try tearDown(b)

        #expect(smmu.tlbEntryCount == 0)
        #expect(smmu.simulationCounters.tlbEntriesFlushedOnDetach == 2)
        #expect(smmu.vmid(ofNestParent: 5) == nil)
        let newcomer = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 3))
        #expect(smmu.vmid(of: newcomer) == vmid, "the freed VMID is the lowest free one again")
    }

    @Test func aPrivateNestParentGoesWithItsViommuEvenWhenNestParentsAreRetained() throws {
        smmu.retainsNestParents = true
        let a = try guest(s2: 0, host: 1)
        try smmu.touch(hostDeviceID: 1, address: 0x1000)

        try tearDown(a)

        #expect(smmu.tlbEntryCount == 0)
        #expect(smmu.simulationCounters.tlbEntriesFlushedOnDetach == 1)
    }

    @Test func destroyNestParentFlushesAndFreesTheVMIDLikeArmSmmuDomainFreePaging() throws {
        smmu.retainsNestParents = true
        let a = try guest(s2: 5, host: 1)
        let vmid = try #require(smmu.vmid(of: a.viommu))
        try smmu.touch(hostDeviceID: 1, address: 0x1000)

        let busy = backendError { try smmu.destroyNestParent(5) }
        #expect(busy?.kind == .busy && busy?.errno == 16, "a viommu holds a reference on its S2")

        try tearDown(a)
        #expect(smmu.vmid(ofNestParent: 5) == vmid, "retained: the VMM still has its S2")
        #expect(smmu.tlbEntryCount == 1)
        let again = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 5))
        #expect(smmu.vmid(of: again) == vmid, "a viommu on the retained S2 gets its VMID back")
        try smmu.detachViommu(again)

        try smmu.destroyNestParent(5)

        #expect(smmu.tlbEntryCount == 0)
        #expect(smmu.simulationCounters.tlbEntriesFlushedOnNestParentDestroy == 1)
        #expect(smmu.simulationCounters.tlbEntriesFlushedOnDetach == 0)
        #expect(smmu.vmid(ofNestParent: 5) == nil)
        let unknown = backendError { try smmu.destroyNestParent(5) }
        #expect(unknown?.kind == .unknownHandle && unknown?.errno == 2)
    }
}
