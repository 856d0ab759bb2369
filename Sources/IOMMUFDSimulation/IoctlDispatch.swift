import CIOMMUFD
import IOMMUFD
import SystemPackage

/// One entry of `iommufd_ioctl_ops` (`IOCTL_OP` in `iommufd/main.c`).
struct IoctlOp {
    /// `sizeof(_struct)` in this kernel.
    var kernelSize: Int
    /// `offsetofend(_struct, _last)`: the first version of the struct.
    var minimumSize: Int
    /// Whether the handler writes the struct back even when it fails (`iommufd_hwpt_invalidate`
    /// reports `entry_num` on failure); every other handler responds on success only.
    var respondsOnFailure = false
}

extension KernelState {
    /// `iommufd_fops_ioctl`: finds the op, reads the struct's `size` (`get_user`), refuses a size below
    /// the op's first version (`EINVAL`), copies the struct with `copy_struct_from_user` (bytes past
    /// the kernel's struct must be zero, else `E2BIG`), runs the handler and copies the struct back
    /// (`iommufd_ucmd_respond`: `min(size, sizeof(struct))` bytes).
    ///
    /// A request whose number is not in this kernel's table, or that is not `_IO(';', nr)`, is
    /// `ENOTTY` (`-ENOIOCTLCMD` from the ioctl, seen as `ENOTTY`). Commands the model does not model
    /// (the IOAS map family, dirty tracking, fault queues, HW queues) answer `ENOTTY` too.
    mutating func ioctl(request: IOMMUFDRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        let command = request.command
        guard request.rawValue == IOMMUFDRequest(command: command).rawValue else { return .inappropriateIOCTLForDevice }
        let op: IoctlOp
        let handler: (inout KernelState, inout [UInt8]) -> Errno?
        switch Int(command) {
        case Int(IOMMUFD_CMD_DESTROY):
            op = IoctlOp(kernelSize: MemoryLayout<iommu_destroy>.size, minimumSize: 8)
            handler = { $0.destroyIoctl(&$1) }
        case Int(IOMMUFD_CMD_HWPT_ALLOC):
            // offsetofend(__reserved) = 24; fault_id and __reserved2 since 6.11.
            op = IoctlOp(kernelSize: MemoryLayout<iommu_hwpt_alloc>.size, minimumSize: 24)
            handler = { $0.hwptAlloc(&$1) }
        case Int(IOMMUFD_CMD_GET_HW_INFO):
            op = IoctlOp(kernelSize: MemoryLayout<iommu_hw_info>.size, minimumSize: 32)
            handler = { $0.getHWInfo(&$1) }
        case Int(IOMMUFD_CMD_HWPT_INVALIDATE):
            op = IoctlOp(kernelSize: MemoryLayout<iommu_hwpt_invalidate>.size, minimumSize: 32, respondsOnFailure: true)
            handler = { $0.hwptInvalidate(&$1) }
        case Int(IOMMUFD_CMD_VIOMMU_ALLOC) where kernel.hasViommus:
            op = IoctlOp(kernelSize: kernel.viommuAllocSize, minimumSize: 24)
            handler = { $0.viommuAlloc(&$1) }
        case Int(IOMMUFD_CMD_VDEVICE_ALLOC) where kernel.hasViommus:
            op = IoctlOp(kernelSize: MemoryLayout<iommu_vdevice_alloc>.size, minimumSize: 24)
            handler = { $0.vdeviceAlloc(&$1) }
        case Int(IOMMUFD_CMD_VEVENTQ_ALLOC) where kernel.hasEventQueues:
            op = IoctlOp(kernelSize: MemoryLayout<iommu_veventq_alloc>.size, minimumSize: 32)
            handler = { $0.veventqAlloc(&$1) }
        default:
            return .inappropriateIOCTLForDevice
        }

        guard argument.count >= 4, let base = argument.baseAddress else { return .badAddress }
        let userSize = Int(UInt32(littleEndian: base.loadUnaligned(as: UInt32.self)))
        if userSize < op.minimumSize { return .invalidArgument }
        guard userSize <= argument.count else { return .badAddress }
        var kernelCopy: [UInt8]
        switch UserMemory.copyStruct(kernelSize: op.kernelSize, from: Array(argument[0 ..< userSize])) {
        case .success(let copy): kernelCopy = copy
        case .failure(let errno): return errno
        }
        let errno = handler(&self, &kernelCopy)
        if errno == nil || op.respondsOnFailure {
            let count = min(userSize, op.kernelSize)
            UnsafeMutableRawBufferPointer(rebasing: argument[0 ..< count]).copyBytes(from: kernelCopy[0 ..< count])
        }
        return errno
    }
}
