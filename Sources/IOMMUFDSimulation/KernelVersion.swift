/// The Linux version a ``SimulatedIOMMUFD`` behaves like (PSMMU's `KernelVersion`, shared with the simulated pSMMU).
///
/// The model covers the iommufd vIOMMU interface from its introduction (6.13) on; the behaviours that
/// changed since are gated by version, each at the release whose merge window took the change:
///
/// | from | what | where |
/// |---|---|---|
/// | 6.13 | `IOMMU_VIOMMU_ALLOC`, `IOMMU_VDEVICE_ALLOC`, invalidation on a viommu | `iommufd_viommu_alloc_ioctl`, `arm_vsmmu_cache_invalidate` |
/// | 6.15 | `IOMMU_VEVENTQ_ALLOC`; a device's vmaster: a translating nested attach needs a vdevice (`ENOENT`), stage-1 events are forwarded | `iommufd_veventq_alloc`, `arm_smmu_attach_prepare_vmaster`, `arm_vmaster_report_event` |
/// | 6.17 | a second vdevice of one device is `EEXIST` (`idev->vdev`, "iommufd: Destroy vdevice on idev destroy", patch series of 2025-07-16); `struct iommu_viommu_alloc` grows to 40 bytes (`data_len`, `data_uptr`, with `IOMMU_HW_QUEUE_ALLOC`); `IOMMU_HW_INFO_FLAG_INPUT_TYPE` | `iommufd_vdevice_alloc_ioctl`, `iommufd_get_hw_info` |
///
/// Before 6.13 the vIOMMU ioctls are unknown (`ENOTTY`).
import PSMMU

extension KernelVersion {
    var hasViommus: Bool { self >= .firstWithViommu }
    var hasEventQueues: Bool { self >= .firstWithEventQueues }
    var refusesASecondVDeviceOfADevice: Bool { self >= .firstWithOneVDevicePerDevice }
    /// `sizeof(struct iommu_viommu_alloc)` in this kernel (`op->size` in `iommufd_fops_ioctl`).
    var viommuAllocSize: Int { self >= .firstWithOneVDevicePerDevice ? 40 : 24 }
    /// Whether `IOMMU_GET_HW_INFO` takes `IOMMU_HW_INFO_FLAG_INPUT_TYPE`.
    var hwInfoTakesAnInputType: Bool { self >= .firstWithOneVDevicePerDevice }
}
