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

    /// Read the IOMMU's hardware information (on ARM: IDR0-5, IIDR, AIDR) through a bound device. The
    /// corresponding ioctl is `IOMMU_GET_HW_INFO` (command 0x8a).
    public static let getHWInfo = IOMMUFDRequest(command: UInt32(IOMMUFD_CMD_GET_HW_INFO))

    public var description: String {
        switch self {
        case .getHWInfo: return "IOMMU_GET_HW_INFO"
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

/// A VFIO device cdev ioctl request number: `_IO(';', VFIO_BASE + n)` (`include/uapi/linux/vfio.h`).
/// These are made on a VFIO device cdev (`/dev/vfio/devices/vfioN`) that the VMM bound to its iommufd,
/// not on the iommufd itself.
public struct VFIODeviceRequest: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The value passed as `ioctl(2)`'s `request` argument.
    public var rawValue: UInt

    public init(rawValue: UInt) { self.rawValue = rawValue }

    /// The request of a VFIO command number (`VFIO_BASE` = 100 and up).
    public init(command: UInt32) {
        self.init(rawValue: UInt(ciommufd_request(command)))
    }

    /// The command number, `_IOC_NR(request)`.
    public var command: UInt32 { UInt32(truncatingIfNeeded: rawValue & 0xFF) }

    /// Bind the device to an iommufd, which gives it a `dev_id`. The VMM does this; the daemon never
    /// does. The corresponding ioctl is `VFIO_DEVICE_BIND_IOMMUFD` (command 118).
    public static let bindIOMMUFD = VFIODeviceRequest(command: UInt32(VFIO_CMD_DEVICE_BIND_IOMMUFD))
    /// Attach the device to an IOAS or HWPT, atomically replacing its current attachment. The
    /// corresponding ioctl is `VFIO_DEVICE_ATTACH_IOMMUFD_PT` (command 119).
    public static let attachIOMMUFDPT = VFIODeviceRequest(command: UInt32(VFIO_CMD_DEVICE_ATTACH_IOMMUFD_PT))
    /// Detach the device from its IOAS or HWPT. The corresponding ioctl is
    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT` (command 120).
    public static let detachIOMMUFDPT = VFIODeviceRequest(command: UInt32(VFIO_CMD_DEVICE_DETACH_IOMMUFD_PT))

    public var description: String {
        switch self {
        case .bindIOMMUFD: return "VFIO_DEVICE_BIND_IOMMUFD"
        case .attachIOMMUFDPT: return "VFIO_DEVICE_ATTACH_IOMMUFD_PT"
        case .detachIOMMUFDPT: return "VFIO_DEVICE_DETACH_IOMMUFD_PT"
        default: return "VFIO ioctl 0x\(String(rawValue, radix: 16))"
        }
    }
}
