import PSMMU
import CIOMMUFD
import IOMMUFD
import IOMMUFDSimulation
import SMMUv3
import SystemPackage
import Testing

/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` / `VFIO_DEVICE_DETACH_IOMMUFD_PT` on a VFIO device cdev
/// (`vfio_df_ioctl_attach_pt` → `iommufd_device_attach` / `iommufd_device_replace`).
@Suite struct DeviceAttachTests {
    @Test func attachReplacesTheAttachmentAtomicallyAndAFailedOneLeavesItInPlace() throws {
        // iommufd_device_replace: "If it fails then no change is made to the attachment."
        let rig = try Rig(pSMMUs: 2)
        let device = rig.device(0)
        let viommu = try #require(rig.kernel.allocateViommu(device: device.devID, hwpt: rig.nestParents[0]).value)
        let bypass = try #require(rig.kernel.allocateNested(device: device.devID, viommu: viommu, ste: .bypass).value)
        #expect(rig.kernel.attachment(ofDevice: device.devID) == rig.nestParents[0])
        try rig.kernel.attach(vfio: device.vfio, to: bypass)
        #expect(rig.kernel.attachment(ofDevice: device.devID) == bypass)
        #expect(rig.kernel.attachErrno(vfio: device.vfio, to: rig.nestParents[1]) == .invalidArgument)
        #expect(rig.kernel.attachment(ofDevice: device.devID) == bypass)
        #expect(rig.kernel.attachErrno(vfio: device.vfio, to: bypass) == nil, "the same HWPT again is a no-op")
    }

    @Test(arguments: [KernelVersion(6, 14), KernelVersion(6, 15), KernelVersion(7, 3)])
    func aTranslatingNestedHWPTNeedsTheDevicesVDeviceOnItsViommuFrom6_15(kernel version: KernelVersion) throws {
        // arm_smmu_attach_prepare_vmaster: iommufd_viommu_get_vdev_id fails → ENOENT unless the vSTE is
        // abort or bypass ("allowed to attach w/o vmaster for GBPA case").
        let rig = try Rig(kernel: version, pSMMUs: 1)
        let device = rig.device(0)
        let viommu = try #require(rig.kernel.allocateViommu(device: device.devID, hwpt: rig.nestParents[0]).value)
        let translating = try #require(rig.kernel.allocateNested(device: device.devID, viommu: viommu, ste: translatingSTE()).value)
        let abort = try #require(rig.kernel.allocateNested(device: device.devID, viommu: viommu, ste: .abort).value)
        let bypass = try #require(rig.kernel.allocateNested(device: device.devID, viommu: viommu, ste: .bypass).value)
        let invalid = try #require(rig.kernel.allocateNested(device: device.devID, pt: viommu, ste: (0, 0)).value)
        let withoutVDevice = rig.kernel.attachErrno(vfio: device.vfio, to: translating)
        #expect(withoutVDevice == (version >= KernelVersion(6, 15) ? .noSuchFileOrDirectory : nil))
        for hwpt in [abort, bypass, invalid] { #expect(rig.kernel.attachErrno(vfio: device.vfio, to: hwpt) == nil) }
        _ = try #require(rig.kernel.allocateVDevice(viommu: viommu, device: device.devID, virtualID: 0x8).value)
        #expect(rig.kernel.attachErrno(vfio: device.vfio, to: translating) == nil)
        #expect(rig.kernel.attachment(ofDevice: device.devID) == translating)
    }

    @Test func aVDeviceOnAnotherViommuDoesNotCountForTheVmaster() throws {
        let rig = try Rig(kernel: KernelVersion(6, 16), pSMMUs: 1)
        let device = rig.device(0)
        let viommu = try #require(rig.kernel.allocateViommu(device: device.devID, hwpt: rig.nestParents[0]).value)
        let other = try #require(rig.kernel.allocateViommu(device: device.devID, hwpt: rig.nestParents[0]).value)
        _ = try #require(rig.kernel.allocateVDevice(viommu: other, device: device.devID, virtualID: 0x8).value)
        let translating = try #require(rig.kernel.allocateNested(device: device.devID, viommu: viommu, ste: translatingSTE()).value)
        #expect(rig.kernel.attachErrno(vfio: device.vfio, to: translating) == .noSuchFileOrDirectory)
    }

    @Test func aHWPTOfAnotherPSMMUIsEINVALPagingOrNested() throws {
        // arm_smmu_attach_dev: smmu_domain->smmu != smmu; arm_smmu_attach_dev_nested:
        // nested_domain->vsmmu->smmu != master->smmu.
        let rig = try Rig(pSMMUs: 2)
        let viommu1 = try #require(rig.kernel.allocateViommu(device: rig.device(1).devID, hwpt: rig.nestParents[1]).value)
        let nested1 = try #require(rig.kernel.allocateNested(device: rig.device(1).devID, viommu: viommu1, ste: .bypass).value)
        #expect(rig.kernel.attachErrno(vfio: rig.device(0).vfio, to: rig.nestParents[1]) == .invalidArgument)
        #expect(rig.kernel.attachErrno(vfio: rig.device(0).vfio, to: nested1) == .invalidArgument)
    }

    @Test func aPtIdThatIsNoHWPTIsENOENTWhenMissingAndEINVALForAViommu() throws {
        // iommufd_device_change_pt: iommufd_get_object fails → ENOENT; default case → EINVAL.
        let rig = try Rig(pSMMUs: 1)
        let viommu = try #require(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: rig.nestParents[0]).value)
        #expect(rig.kernel.attachErrno(vfio: rig.device(0).vfio, to: 99) == .noSuchFileOrDirectory)
        #expect(rig.kernel.attachErrno(vfio: rig.device(0).vfio, to: viommu) == .invalidArgument)
        #expect(rig.kernel.attachErrno(vfio: rig.device(0).vfio, to: rig.device(0, 1).devID) == .invalidArgument)
    }

    @Test func detachLeavesTheDeviceUnattachedAndSucceedsAgain() throws {
        let rig = try Rig(pSMMUs: 1, devicesPerPSMMU: 1)
        let device = rig.device(0)
        var detach = vfio_device_detach_iommufd_pt(argsz: 8, flags: 0)
        for _ in 0 ..< 2 {
            let errno = withUnsafeMutableBytes(of: &detach) {
                rig.kernel.ioctl(vfioDevice: FileDescriptor(rawValue: device.vfio), request: .detachIOMMUFDPT, argument: $0)
            }
            #expect(errno == nil)
        }
        #expect(rig.kernel.attachment(ofDevice: device.devID) == nil)
        #expect(rig.kernel.destroy(rig.nestParents[0]) == nil, "nothing holds the S2 now")
    }

    @Test func theAttachArgumentsAreCheckedLikeVfioDfIoctlAttachPt() throws {
        let rig = try Rig(pSMMUs: 1)
        let fd = FileDescriptor(rawValue: rig.device(0).vfio)
        func attach(argsz: UInt32, flags: UInt32 = 0) -> Errno? {
            var cmd = vfio_device_attach_iommufd_pt(argsz: argsz, flags: flags, pt_id: rig.nestParents[0])
            return withUnsafeMutableBytes(of: &cmd) { rig.kernel.ioctl(vfioDevice: fd, request: .attachIOMMUFDPT, argument: $0) }
        }
        #expect(attach(argsz: 8) == .invalidArgument)
        #expect(attach(argsz: 12, flags: 2) == .invalidArgument)
        #expect(attach(argsz: 12) == nil)
        #expect(attach(argsz: 16) == nil, "VFIO reads what it knows; it does not check a longer argsz")
    }

    @Test func aVFIOIoctlOnAnUnboundCdevIsEINVALAndOnAClosedDescriptorEBADF() throws {
        let kernel = SimulatedIOMMUFD(pSMMUCount: 1)
        let unbound = kernel.openVFIODevice(pSMMU: 0, streamID: 0x10)
        #expect(kernel.attachErrno(vfio: unbound, to: 1) == .invalidArgument)
        try kernel.close(descriptor: unbound)
        #expect(kernel.attachErrno(vfio: unbound, to: 1) == .badFileDescriptor)
        #expect(throws: Errno.badFileDescriptor) { try kernel.close(descriptor: unbound) }
    }
}
