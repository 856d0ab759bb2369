import CIOMMUFD
import IOMMUFD
import IOMMUFDSimulation
import SMMUv3
import SystemPackage
import Testing

/// Object ids and references: `iommufd_object_remove` and the allocator of `ictx->objects`.
@Suite struct ObjectLifetimeTests {
    @Test func objectIdsComeFromOneXarrayFromOneAndTheLowestFreeIdIsReusedLikeXaAlloc() throws {
        let kernel = SimulatedIOMMUFD(pSMMUCount: 1)
        let device = kernel.bindDevice(pSMMU: 0, streamID: 0x10)
        let ioas = kernel.allocateIOAS()
        let s2 = try kernel.allocateNestParent(device: device.devID, ioas: ioas)
        // Devices, IOASes and HWPTs share the allocator (_iommufd_object_alloc: xa_alloc on an
        // XA_FLAGS_ALLOC1 xarray).
        #expect([device.devID, ioas, s2] == [1, 2, 3])
        let viommu = try #require(kernel.allocateViommu(device: device.devID, hwpt: s2).value)
        let nested = try #require(kernel.allocateNested(device: device.devID, viommu: viommu, ste: .abort).value)
        #expect([viommu, nested] == [4, 5])
        #expect(kernel.destroy(nested) == nil)
        // A failed allocation takes no id (iommufd_object_abort) …
        #expect(kernel.allocateNested(device: device.devID, pt: 99, ste: (0, 0)).error == .invalidArgument)
        // … and the freed id is the next one handed out.
        #expect(kernel.allocateNested(device: device.devID, viommu: viommu, ste: .bypass).value == 5)
    }

    @Test func destroyOfAnIdWithNoObjectIsENOENTLikeIommufdObjectRemove() {
        let kernel = SimulatedIOMMUFD(pSMMUCount: 1)
        #expect(kernel.destroy(1) == .noSuchFileOrDirectory)
        #expect(kernel.destroy(0) == .noSuchFileOrDirectory)
    }

    @Test func destroyOfAnAttachedHWPTIsEBUSYUntilNoDeviceIsAttachedToIt() throws {
        // iommufd_object_remove: refcount_dec_if_one(&obj->users) fails while an attachment holds it.
        let rig = try Rig(pSMMUs: 1)
        let device = rig.device(0)
        let viommu = try #require(rig.kernel.allocateViommu(device: device.devID, hwpt: rig.nestParents[0]).value)
        _ = try #require(rig.kernel.allocateVDevice(viommu: viommu, device: device.devID, virtualID: 8).value)
        let nested = try #require(rig.kernel.allocateNested(device: device.devID, viommu: viommu, ste: translatingSTE()).value)
        try rig.kernel.attach(vfio: device.vfio, to: nested)
        #expect(rig.kernel.destroy(nested) == .resourceBusy)
        try rig.kernel.attach(vfio: device.vfio, to: rig.nestParents[0])
        #expect(rig.kernel.destroy(nested) == nil)
    }

    @Test func destroyOfAViommuWithAVDeviceANestedHWPTOrAVEventQIsEBUSY() throws {
        // iommufd_vdevice_alloc_ioctl, iommufd_viommu_alloc_hwpt_nested and iommufd_veventq_alloc each
        // take a reference on the viommu (refcount_inc(&viommu->obj.users)).
        let rig = try Rig(pSMMUs: 1)
        let device = rig.device(0)
        let viommu = try #require(rig.kernel.allocateViommu(device: device.devID, hwpt: rig.nestParents[0]).value)

        let vdevice = try #require(rig.kernel.allocateVDevice(viommu: viommu, device: device.devID, virtualID: 8).value)
        #expect(rig.kernel.destroy(viommu) == .resourceBusy)
        #expect(rig.kernel.destroy(vdevice) == nil)

        let nested = try #require(rig.kernel.allocateNested(device: device.devID, viommu: viommu, ste: .abort).value)
        #expect(rig.kernel.destroy(viommu) == .resourceBusy)
        #expect(rig.kernel.destroy(nested) == nil)

        let queue = try #require(rig.kernel.allocateEventQueue(viommu: viommu).value)
        #expect(rig.kernel.destroy(viommu) == .resourceBusy)
        rig.kernel.close(eventQueue: FileDescriptor(rawValue: queue.fd))
        #expect(rig.kernel.destroy(queue.id) == nil)
        #expect(rig.kernel.destroy(viommu) == nil)
    }

    @Test func destroyOfAVEventQWhoseDescriptorIsStillOpenIsEBUSYLikeIommufdEventqInit() throws {
        // iommufd_eventq_init: refcount_inc(&eventq->obj.users) for the file, dropped only by
        // iommufd_eventq_fops_release.
        let rig = try Rig(pSMMUs: 1)
        let viommu = try #require(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: rig.nestParents[0]).value)
        let queue = try #require(rig.kernel.allocateEventQueue(viommu: viommu).value)
        #expect(rig.kernel.destroy(queue.id) == .resourceBusy)
        rig.kernel.close(eventQueue: FileDescriptor(rawValue: queue.fd))
        #expect(rig.kernel.destroy(queue.id) == nil)
        #expect(rig.kernel.readEvents(queue.fd).error == .badFileDescriptor)
    }

    @Test func destroyOfANestParentAViommuIsOnIsEBUSYAndOfTheIOASUnderItToo() throws {
        // iommufd_viommu_alloc_ioctl: refcount_inc(&viommu->hwpt->common.obj.users); a paging HWPT
        // holds its IOAS.
        let rig = try Rig(pSMMUs: 1)
        let device = rig.device(0)
        let s2 = rig.nestParents[0]
        let viommu = try #require(rig.kernel.allocateViommu(device: device.devID, hwpt: s2).value)
        try rig.kernel.attach(vfio: device.vfio, to: try #require(
            rig.kernel.allocateNested(device: device.devID, viommu: viommu, ste: .bypass).value))
        try rig.kernel.attach(vfio: rig.device(0, 1).vfio, to: try #require(
            rig.kernel.allocateNested(device: rig.device(0, 1).devID, viommu: viommu, ste: .abort).value))
        // No device is on the S2 any more: the viommu alone keeps it.
        #expect(rig.kernel.holders(of: s2) == ["viommu \(viommu) is on it"])
        #expect(rig.kernel.destroy(s2) == .resourceBusy)
        #expect(rig.kernel.destroy(rig.ioas) == .resourceBusy)
    }

    @Test func destroyOfABoundDeviceIsEBUSYBecauseTheVFIODriverHoldsIt() throws {
        // iommufd_device_bind: "The calling driver is a user until iommufd_device_unbind()".
        let kernel = SimulatedIOMMUFD(pSMMUCount: 1)
        let device = kernel.bindDevice(pSMMU: 0, streamID: 0x10)
        #expect(kernel.destroy(device.devID) == .resourceBusy)
    }

    @Test func closingTheLastDescriptorOfADeviceUnbindsItAndTombstonesItsVDevice() throws {
        // vfio_df_unbind_iommufd → iommufd_device_unbind; the vdevice's id stays reserved (6.17's
        // vdevice tombstone: IOMMU_DESTROY of it is ENOENT and the id is not reused).
        let rig = try Rig(pSMMUs: 1)
        let device = rig.device(0)
        let viommu = try #require(rig.kernel.allocateViommu(device: device.devID, hwpt: rig.nestParents[0]).value)
        let vdevice = try #require(rig.kernel.allocateVDevice(viommu: viommu, device: device.devID, virtualID: 8).value)
        let daemonCopy = try rig.kernel.duplicate(vfio: device.vfio)
        try rig.kernel.close(descriptor: device.vfio)
        #expect(rig.kernel.attachment(ofDevice: device.devID) == rig.nestParents[0], "one descriptor is still open")
        try rig.kernel.close(descriptor: daemonCopy)
        #expect(rig.kernel.attachment(ofDevice: device.devID) == nil)
        #expect(!rig.kernel.liveObjects().map(\.id).contains(device.devID))
        #expect(rig.kernel.destroy(vdevice) == .noSuchFileOrDirectory)
        #expect(rig.kernel.vdevices(ofViommu: viommu).isEmpty)
        #expect(rig.kernel.destroy(viommu) == nil)
    }
}
