/// A Linux kernel release, major.minor: which iommufd rules a ``SimulatedSMMU`` applies where they
/// changed between releases.
public struct KernelVersion: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var major: Int
    public var minor: Int

    public init(_ major: Int, _ minor: Int) {
        self.major = major
        self.minor = minor
    }

    /// 7.3, the kernel of the test rig: the default of ``SimulatedSMMU``.
    public static let rig = KernelVersion(7, 3)

    /// 6.13, the first release with iommufd vIOMMU objects (`IOMMU_VIOMMU_ALLOC`, `IOMMU_VDEVICE_ALLOC`).
    public static let firstWithViommu = KernelVersion(6, 13)

    /// 6.15, the first release with `IOMMU_VEVENTQ_ALLOC` and the arm-smmu-v3 vmaster (a translating
    /// nested attach needs a vdevice, `arm_smmu_attach_prepare_vmaster`; stage-1 events are forwarded,
    /// `arm_vmaster_report_event`).
    public static let firstWithEventQueues = KernelVersion(6, 15)

    /// 6.17, the first release where `iommufd_vdevice_alloc_ioctl` refuses a second vdevice for a device
    /// with EEXIST (`if (idev->vdev)`, from "iommufd: Destroy vdevice on idevice destroy",
    /// commit 850f14f5b919, merged for 6.17 on 2025-07-31). Before it, a device may have several
    /// vdevices (on several viommus, or under several vSIDs of one viommu); only a `virt_id` already used
    /// on the viommu is EEXIST (`xa_cmpxchg` on `viommu->vdevs`).
    public static let firstWithOneVDevicePerDevice = KernelVersion(6, 17)

    /// Whether the kernel allows at most one vdevice per device (see ``firstWithOneVDevicePerDevice``).
    public var allowsOneVDevicePerDevice: Bool { self >= Self.firstWithOneVDevicePerDevice }

    public static func < (lhs: KernelVersion, rhs: KernelVersion) -> Bool {
        (lhs.major, lhs.minor) < (rhs.major, rhs.minor)
    }

    public var description: String { "\(major).\(minor)" }
}
