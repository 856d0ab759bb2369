import CIOMMUFD
import IOMMUFD

/// Which fields of an ioctl argument are user pointers, and how many bytes the kernel reads from and
/// writes to each: what the relay needs to carry an argument that points into this process's memory to
/// the guest. Offsets are those of `include/uapi/linux/iommufd.h` and `vfio.h` (ciommufd.h declares the
/// same layouts; the agent's build asserts them against the rig kernel's own headers).
///
/// | request | pointer | in | out |
/// |---|---|---|---|
/// | `IOMMU_HWPT_ALLOC` (`iommufd_hwpt_alloc`: `copy_struct_from_user` of the driver data) | `data_uptr` @32 | `data_len` @28 | 0 |
/// | `IOMMU_HWPT_INVALIDATE` (`iommufd_hwpt_invalidate`: the entry array) | `data_uptr` @8 | `entry_len` @20 × `entry_num` @24 | 0 |
/// | `IOMMU_GET_HW_INFO` (`iommufd_get_hw_info`: driver data copied out, the rest of the buffer zeroed) | `data_uptr` @16 | `data_len` @12 | `data_len` @12 |
/// | `IOMMU_VIOMMU_ALLOC`, 40-byte form (driver data) | `data_uptr` @32 | `data_len` @24 | 0 |
/// | `VFIO_DEVICE_BIND_IOMMUFD` with `VFIO_DEVICE_BIND_FLAG_TOKEN` | `token_uuid_ptr` @16 | 16 | 0 |
/// | `IOMMU_DESTROY`, `IOMMU_IOAS_ALLOC`, `IOMMU_IOAS_MAP`, `IOMMU_VDEVICE_ALLOC`, `IOMMU_VEVENTQ_ALLOC`, `VFIO_DEVICE_ATTACH/DETACH_IOMMUFD_PT` | none | | |
///
/// `IOMMU_IOAS_MAP`'s `user_va` is a pointer too, but into the *guest* process: memory from
/// ``RelayChannel/mmap(length:)``, passed as it is. A null pointer is left null (the kernel then faults
/// as it would here). Requests not in the table get `nil`: the relay refuses them rather than hand the
/// guest kernel a host address.
public enum RelayPointerFields {
    /// The pointer fields of an iommufd ioctl, or `nil` for a request the relay does not know.
    public static func iommufd(_ request: IOMMUFDRequest, _ argument: UnsafeRawBufferPointer) -> [RelayPointer]? {
        switch request.command {
        case UInt32(IOMMUFD_CMD_DESTROY), UInt32(IOMMUFD_CMD_IOAS_ALLOC), UInt32(IOMMUFD_CMD_IOAS_MAP),
             UInt32(IOMMUFD_CMD_IOAS_UNMAP), UInt32(IOMMUFD_CMD_VDEVICE_ALLOC), UInt32(IOMMUFD_CMD_VEVENTQ_ALLOC):
            return []
        case UInt32(IOMMUFD_CMD_HWPT_ALLOC):
            return field(argument, pointerAt: 32, length: u32(argument, 28), copiedOut: false)
        case UInt32(IOMMUFD_CMD_HWPT_INVALIDATE):
            let total = UInt64(u32(argument, 20)) * UInt64(u32(argument, 24))
            return field(argument, pointerAt: 8, length: UInt32(clamping: total), copiedOut: false)
        case UInt32(IOMMUFD_CMD_GET_HW_INFO):
            return field(argument, pointerAt: 16, length: u32(argument, 12), copiedOut: true)
        case UInt32(IOMMUFD_CMD_VIOMMU_ALLOC):
            // The 24-byte form (what the backend sends) has no pointer.
            return field(argument, pointerAt: 32, length: u32(argument, 24), copiedOut: false)
        default:
            return nil
        }
    }

    /// The pointer fields of a VFIO device cdev ioctl, or `nil` for a request the relay does not know.
    public static func vfio(_ request: VFIODeviceRequest, _ argument: UnsafeRawBufferPointer) -> [RelayPointer]? {
        switch request.command {
        case UInt32(VFIO_CMD_DEVICE_ATTACH_IOMMUFD_PT), UInt32(VFIO_CMD_DEVICE_DETACH_IOMMUFD_PT):
            return []
        case UInt32(VFIO_CMD_DEVICE_BIND_IOMMUFD):
            // VFIO_DEVICE_BIND_FLAG_TOKEN (bit 0 of flags @4): token_uuid_ptr @16 names a 16-byte UUID.
            guard u32(argument, 4) & 1 != 0 else { return [] }
            return field(argument, pointerAt: 16, length: 16, copiedOut: false)
        default:
            return nil
        }
    }

    private static func u32(_ argument: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
        argument.count >= offset + 4 ? UInt32(littleEndian: argument.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) : 0
    }

    /// The u64 pointer at `offset` with `length` bytes, when the argument — its buffer and its `size` (or
    /// `argsz`), the first u32 — reaches past the field and the pointer is not null; none otherwise.
    private static func field(_ argument: UnsafeRawBufferPointer, pointerAt offset: Int, length: UInt32,
                              copiedOut: Bool) -> [RelayPointer] {
        guard argument.count >= offset + 8, Int(u32(argument, 0)) >= offset + 8, length > 0,
              argument.loadUnaligned(fromByteOffset: offset, as: UInt64.self) != 0 else { return [] }
        return [RelayPointer(offset: UInt32(offset), inBytes: length, outBytes: copiedOut ? length : 0)]
    }
}
