import CIOMMUFD

/// An iommufd ioctl request number: `_IO(';', IOMMUFD_CMD_*)`, computed by this architecture's
/// `<linux/ioctl.h>` (`_IO` has no size or direction bits, so the value is `0x3B00 | command` on
/// arm64 and x86-64).
public struct IOMMUFDRequest: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The value passed as `ioctl(2)`'s `request` argument.
    public var rawValue: UInt

    public init(rawValue: UInt) { self.rawValue = rawValue }

    /// The request of an `IOMMUFD_CMD_*` command number (0x80 and up).
    public init(command: UInt32) {
        self.init(rawValue: UInt(ciommufd_request(command)))
    }

    /// The command number, `_IOC_NR(request)`.
    public var command: UInt32 { UInt32(truncatingIfNeeded: rawValue & 0xFF) }

    /// Destroy any iommufd object by id. The corresponding ioctl is `IOMMU_DESTROY` (command 0x80).
    public static let destroy = IOMMUFDRequest(command: UInt32(IOMMUFD_CMD_DESTROY))
    /// Allocate a HWPT; here a nested stage-1 HWPT from a vSTE. The corresponding ioctl is
    /// `IOMMU_HWPT_ALLOC` (command 0x89).
    public static let hwptAlloc = IOMMUFDRequest(command: UInt32(IOMMUFD_CMD_HWPT_ALLOC))
    /// Invalidate caches through a HWPT or a viommu. The corresponding ioctl is `IOMMU_HWPT_INVALIDATE`
    /// (command 0x8d).
    public static let hwptInvalidate = IOMMUFDRequest(command: UInt32(IOMMUFD_CMD_HWPT_INVALIDATE))
    /// Allocate a viommu. The corresponding ioctl is `IOMMU_VIOMMU_ALLOC` (command 0x90).
    public static let viommuAlloc = IOMMUFDRequest(command: UInt32(IOMMUFD_CMD_VIOMMU_ALLOC))
    /// Give a device a virtual ID (the vSID) on a viommu. The corresponding ioctl is
    /// `IOMMU_VDEVICE_ALLOC` (command 0x91).
    public static let vdeviceAlloc = IOMMUFDRequest(command: UInt32(IOMMUFD_CMD_VDEVICE_ALLOC))
    /// Allocate a viommu's event queue. The corresponding ioctl is `IOMMU_VEVENTQ_ALLOC` (command 0x93).
    public static let veventqAlloc = IOMMUFDRequest(command: UInt32(IOMMUFD_CMD_VEVENTQ_ALLOC))

    public var description: String {
        switch self {
        case .destroy: return "IOMMU_DESTROY"
        case .hwptAlloc: return "IOMMU_HWPT_ALLOC"
        case .hwptInvalidate: return "IOMMU_HWPT_INVALIDATE"
        case .viommuAlloc: return "IOMMU_VIOMMU_ALLOC"
        case .vdeviceAlloc: return "IOMMU_VDEVICE_ALLOC"
        case .veventqAlloc: return "IOMMU_VEVENTQ_ALLOC"
        default: return "iommufd ioctl 0x\(String(rawValue, radix: 16))"
        }
    }
}
