/// The Linux version a ``SimulatedIOMMUFD`` behaves like.
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
public struct KernelVersion: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var major: Int
    public var minor: Int

    public init(_ major: Int, _ minor: Int) {
        self.major = major
        self.minor = minor
    }

    public static func < (lhs: KernelVersion, rhs: KernelVersion) -> Bool {
        (lhs.major, lhs.minor) < (rhs.major, rhs.minor)
    }

    public var description: String { "\(major).\(minor)" }

    /// The first kernel with `IOMMU_VIOMMU_ALLOC` and `IOMMU_VDEVICE_ALLOC`.
    public static let viommus = KernelVersion(6, 13)
    /// The first kernel with `IOMMU_VEVENTQ_ALLOC` and the arm-smmu-v3 vmaster.
    public static let eventQueues = KernelVersion(6, 15)
    /// The first kernel that refuses a second vdevice of one device (`idev->vdev`).
    public static let oneVDevicePerDevice = KernelVersion(6, 17)
    /// The default of ``SimulatedIOMMUFD``.
    public static let `default` = KernelVersion(7, 3)

    var hasViommus: Bool { self >= .viommus }
    var hasEventQueues: Bool { self >= .eventQueues }
    var refusesASecondVDeviceOfADevice: Bool { self >= .oneVDevicePerDevice }
    /// `sizeof(struct iommu_viommu_alloc)` in this kernel (`op->size` in `iommufd_fops_ioctl`).
    var viommuAllocSize: Int { self >= .oneVDevicePerDevice ? 40 : 24 }
    /// Whether `IOMMU_GET_HW_INFO` takes `IOMMU_HW_INFO_FLAG_INPUT_TYPE`.
    var hwInfoTakesAnInputType: Bool { self >= .oneVDevicePerDevice }
}
