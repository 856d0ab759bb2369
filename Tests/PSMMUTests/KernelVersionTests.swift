import PSMMU
import SMMUv3
import Testing

/// Rules that changed between kernel releases: a second vdevice for one device.
@Suite struct KernelVersionTests {
    @Test func theSimulatedPSMMUBehavesLikeTheRigsKernel73ByDefault() {
        #expect(makeSMMU().kernelVersion == KernelVersion(7, 3))
        #expect(KernelVersion.rig == KernelVersion(7, 3))
    }

    @Test func theOneVDevicePerDeviceRuleStartsWithKernel617() {
        #expect(!KernelVersion(6, 13).allowsOneVDevicePerDevice)
        #expect(!KernelVersion(6, 16).allowsOneVDevicePerDevice)
        #expect(KernelVersion(6, 17).allowsOneVDevicePerDevice)
        #expect(KernelVersion(7, 0).allowsOneVDevicePerDevice)
        #expect(KernelVersion(6, 9) < KernelVersion(6, 13))
        #expect(KernelVersion(6, 17).description == "6.17")
    }

    @Test func fromKernel617ASecondVDeviceForADeviceIsEEXISTLikeIommufdVdeviceAllocIoctlsIdevVdevCheck() throws {
        let smmu = SimulatedSMMU(name: "smmu0", deviceCount: 2, firstHostDeviceID: 1, firstStreamID: 0x101,
                                 kernelVersion: KernelVersion(6, 17))
        let a = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let b = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        _ = try smmu.allocateVDevice(viommu: a, hostDeviceID: 1, virtualStreamID: 0x10)

        let sameViommu = backendError { _ = try smmu.allocateVDevice(viommu: a, hostDeviceID: 1, virtualStreamID: 0x11) }
        let otherViommu = backendError { _ = try smmu.allocateVDevice(viommu: b, hostDeviceID: 1, virtualStreamID: 0x10) }

        #expect(sameViommu?.kind == .alreadyExists && sameViommu?.errno == 17)
        #expect(otherViommu?.kind == .alreadyExists && otherViommu?.errno == 17)
        #expect(smmu.vdevices(hostDeviceID: 1).count == 1)
    }

    @Test func onKernel613ADeviceMayHaveSeveralVDevicesOnlyAVirtIDUsedOnTheViommuIsEEXIST() throws {
        let smmu = SimulatedSMMU(name: "smmu0", deviceCount: 2, firstHostDeviceID: 1, firstStreamID: 0x101,
                                 kernelVersion: .firstWithViommu)
        let a = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let b = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let first = try smmu.allocateVDevice(viommu: a, hostDeviceID: 1, virtualStreamID: 0x10)

        let second = try smmu.allocateVDevice(viommu: a, hostDeviceID: 1, virtualStreamID: 0x11)
        let third = try smmu.allocateVDevice(viommu: b, hostDeviceID: 1, virtualStreamID: 0x10)
        let duplicate = backendError { _ = try smmu.allocateVDevice(viommu: a, hostDeviceID: 2, virtualStreamID: 0x11) }

        #expect(duplicate?.kind == .alreadyExists && duplicate?.errno == 17)
        #expect(smmu.vdevices(hostDeviceID: 1) == [first, second, third])
        #expect(smmu.streamIDMap(viommu: a) == [0x10: 0x101, 0x11: 0x101])
        #expect(smmu.streamIDMap(viommu: b) == [0x10: 0x101])
    }

    @Test func onKernel613EventsCarryTheLowestVSIDOfTheDeviceOnTheViommuLikeIommufdViommuGetVdevId() throws {
        // `iommufd_viommu_get_vdev_id` walks `viommu->vdevs` in index order: the vmaster gets the
        // lowest vSID, whichever vdevice the attach went through.
        let smmu = SimulatedSMMU(name: "smmu0", deviceCount: 1, firstHostDeviceID: 1, firstStreamID: 0x101,
                                 kernelVersion: .firstWithViommu)
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let high = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x21)
        _ = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x20)
        let hwpt = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(),
                                               contextDescriptors: [.valid(asid: 1)])
        try smmu.attachDevice(high, to: .nested(hwpt))

        try smmu.touch(hostDeviceID: 1, address: 0x1000, mapped: false)

        #expect(smmu.takeEvents(viommu: viommu).map(\.streamID) == [0x20])
    }
}
