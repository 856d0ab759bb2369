import CIOMMUFD
#if canImport(Glibc)
import Glibc
#endif
import IOMMUFD
import VSMMUSystem
import SystemPackage

/// An iommufd (`/dev/iommu`) opened in the real-kernel rig's guest, driven over a ``RelayChannel``: the
/// ``IOMMUFDDevice`` seam of ``IOMMUFDBackend`` with every syscall made by the guest's Linux kernel.
///
/// Descriptors are the guest's fd numbers wrapped in `FileDescriptor`: the iommufd, the VFIO cdevs the
/// VMM side opens (``openDevice(_:)``, ``duplicate(_:)``) and the vEVENTQ fds the kernel returns in
/// `out_veventq_fd`. They mean nothing in this process; only this type's methods use them.
///
/// Each ioctl's argument goes to the guest and comes back as the kernel left it (object ids,
/// `IOMMU_HWPT_INVALIDATE`'s `entry_num` also on failure); its pointer fields (``RelayPointerFields``)
/// carry their buffers both ways. A request whose pointer fields the relay does not know is refused with
/// `ENOTTY` without reaching the guest, as a kernel refuses an ioctl it does not know.
///
/// The seam's methods cannot throw: when the channel fails under one, it returns
/// ``RelayError/seamErrno`` (`ENOTCONN`, `ETIMEDOUT`) and keeps the error in ``seamFailure``. The VMM-side
/// helpers throw ``RelayError``.
public final class RelayIOMMUFD: IOMMUFDDevice {
    /// The channel to the guest.
    public let channel: RelayChannel
    /// The iommufd, a guest descriptor.
    public let descriptor: FileDescriptor

    private let firstSeamFailure = Locked<RelayError?>(nil)

    /// Opens `path` (the iommufd device node) in the guest.
    public static func open(on channel: RelayChannel, path: String = "/dev/iommu") throws(RelayError) -> RelayIOMMUFD {
        RelayIOMMUFD(channel: channel, adopting: try channel.open(path))
    }

    /// Takes ownership of the guest's iommufd `descriptor`.
    public init(channel: RelayChannel, adopting descriptor: FileDescriptor) {
        self.channel = channel
        self.descriptor = descriptor
    }

    deinit {
        try? channel.close(descriptor)
    }

    /// The first channel failure a seam method met (it then returned ``RelayError/seamErrno``), if any.
    public var seamFailure: RelayError? { firstSeamFailure.withLock { $0 } }

    private func seam(_ error: RelayError) -> Errno {
        firstSeamFailure.withLock { $0 = $0 ?? error }
        return error.seamErrno
    }

    // MARK: IOMMUFDDevice

    public func ioctl(request: IOMMUFDRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        guard let pointers = RelayPointerFields.iommufd(request, UnsafeRawBufferPointer(argument)) else {
            return .inappropriateIOCTLForDevice
        }
        do {
            return try channel.ioctl(descriptor, request: request.rawValue, argument: argument, pointers: pointers).errno
        } catch {
            return seam(error)
        }
    }

    /// Reads the vEVENTQ without blocking: the agent answers `EAGAIN` when it is not readable, which is
    /// the 0 bytes `iommufd_veventq_fops_read` returns for an empty queue.
    public func read(eventQueue: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, Errno> {
        do {
            switch try channel.read(eventQueue, maximum: buffer.count) {
            case .success(let bytes):
                bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
                return .success(bytes.count)
            case .failure(let errno) where errno == .resourceTemporarilyUnavailable:
                return .success(0)
            case .failure(let errno):
                return .failure(errno)
            }
        } catch {
            return .failure(seam(error))
        }
    }

    public func close(eventQueue: FileDescriptor) {
        closeGuestDescriptor(eventQueue)
    }

    public func ioctl(vfioDevice: FileDescriptor, request: VFIODeviceRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        guard let pointers = RelayPointerFields.vfio(request, UnsafeRawBufferPointer(argument)) else {
            return .inappropriateIOCTLForDevice
        }
        do {
            return try channel.ioctl(vfioDevice, request: request.rawValue, argument: argument, pointers: pointers).errno
        } catch {
            return seam(error)
        }
    }

    public func close(vfioDevice: FileDescriptor) {
        closeGuestDescriptor(vfioDevice)
    }

    private func closeGuestDescriptor(_ fd: FileDescriptor) {
        do {
            try channel.close(fd)
        } catch let error {
            // EBADF and the like are the caller's business, as with close(2); a channel failure is noted.
            if case .guest = error { return }
            _ = seam(error)
        }
    }

    // MARK: VMM-side helpers

    /// Opens a device node (a VFIO cdev, `/dev/vfio/devices/vfioN`) in the guest, `O_RDWR | O_CLOEXEC`.
    public func openDevice(_ path: String) throws(RelayError) -> FileDescriptor {
        try channel.open(path)
    }

    /// A second guest descriptor of the same open file: what the daemon's copy of a VMM's VFIO fd is
    /// after `SCM_RIGHTS` (closing one leaves the device bound: `vfio_device_fops_release` runs at the
    /// last close).
    public func duplicate(_ fd: FileDescriptor) throws(RelayError) -> FileDescriptor {
        try channel.dup(fd)
    }

    /// Closes a guest descriptor.
    public func closeDescriptor(_ fd: FileDescriptor) throws(RelayError) {
        try channel.close(fd)
    }

    /// `VFIO_DEVICE_BIND_IOMMUFD` of a VFIO cdev to this iommufd (`vfio_df_ioctl_bind_iommufd`).
    /// - Returns: the device's `dev_id`.
    public func bind(_ vfioDevice: FileDescriptor) throws(RelayError) -> UInt32 {
        var bind = vfio_device_bind_iommufd()
        bind.argsz = UInt32(MemoryLayout<vfio_device_bind_iommufd>.size)
        bind.flags = 0
        bind.iommufd = descriptor.rawValue
        try vfio(vfioDevice, .bindIOMMUFD, &bind, "VFIO_DEVICE_BIND_IOMMUFD")
        return bind.out_devid
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` of a bound VFIO cdev to an IOAS or HWPT (replacing its attachment).
    /// - Returns: the `pt_id` the kernel wrote back (the HWPT the device is attached to).
    @discardableResult
    public func attach(_ vfioDevice: FileDescriptor, to ptID: UInt32) throws(RelayError) -> UInt32 {
        var attach = vfio_device_attach_iommufd_pt()
        attach.argsz = UInt32(MemoryLayout<vfio_device_attach_iommufd_pt>.size)
        attach.flags = 0
        attach.pt_id = ptID
        try vfio(vfioDevice, .attachIOMMUFDPT, &attach, "VFIO_DEVICE_ATTACH_IOMMUFD_PT(\(ptID))")
        return attach.pt_id
    }

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
    public func detach(_ vfioDevice: FileDescriptor) throws(RelayError) {
        var detach = vfio_device_detach_iommufd_pt()
        detach.argsz = UInt32(MemoryLayout<vfio_device_detach_iommufd_pt>.size)
        detach.flags = 0
        try vfio(vfioDevice, .detachIOMMUFDPT, &detach, "VFIO_DEVICE_DETACH_IOMMUFD_PT")
    }

    /// `IOMMU_IOAS_ALLOC` (`struct iommu_ioas_alloc`: size, flags, out_ioas_id; 12 bytes).
    /// - Returns: the IOAS id.
    public func allocateIOAS() throws(RelayError) -> UInt32 {
        var argument = ByteWriter()
        argument.u32(12)
        argument.u32(0)
        argument.u32(0)
        var bytes = argument.buffer
        try raw(Self.ioasAlloc, &bytes, "IOMMU_IOAS_ALLOC")
        return Self.u32(bytes, 8)
    }

    /// Maps `length` bytes of fresh agent memory at `iova` in `ioas`, readable and writeable
    /// (`IOMMU_IOAS_MAP` with `IOMMU_IOAS_MAP_FIXED_IOVA`; `struct iommu_ioas_map`: size, flags, ioas_id,
    /// __reserved, user_va @16, length @24, iova @32; 40 bytes). The guest memory is the VM's RAM of the
    /// stage 2 the nest parents translate with.
    /// - Returns: the agent's virtual address of the memory.
    @discardableResult
    public func mapIOAS(_ ioas: UInt32, iova: UInt64, length: UInt64) throws(RelayError) -> UInt64 {
        let userVA = try channel.mmap(length: length)
        var argument = ByteWriter()
        argument.u32(40)
        argument.u32(Self.ioasMapFixedIOVA | Self.ioasMapWriteable | Self.ioasMapReadable)
        argument.u32(ioas)
        argument.u32(0)
        argument.u64(userVA)
        argument.u64(length)
        argument.u64(iova)
        var bytes = argument.buffer
        try raw(Self.ioasMap, &bytes, "IOMMU_IOAS_MAP(iova 0x\(String(iova, radix: 16)), 0x\(String(length, radix: 16)) bytes)")
        return userVA
    }

    /// `IOMMU_HWPT_ALLOC` with `IOMMU_HWPT_ALLOC_NEST_PARENT` on `ioas` for `deviceID`: the VM's stage-2
    /// HWPT on that device's pSMMU, which viommus are allocated on.
    /// - Returns: the HWPT id.
    public func allocateNestParent(deviceID: UInt32, ioas: UInt32) throws(RelayError) -> UInt32 {
        var alloc = iommu_hwpt_alloc()
        alloc.size = UInt32(MemoryLayout<iommu_hwpt_alloc>.size)
        alloc.flags = UInt32(IOMMU_HWPT_ALLOC_NEST_PARENT)
        alloc.dev_id = deviceID
        alloc.pt_id = ioas
        alloc.data_type = UInt32(IOMMU_HWPT_DATA_NONE)
        let errno = withUnsafeMutableBytes(of: &alloc) { ioctl(request: .hwptAlloc, argument: $0) }
        if let errno { throw failure("IOMMU_HWPT_ALLOC(NEST_PARENT, dev_id \(deviceID), ioas \(ioas))", errno) }
        return alloc.out_hwpt_id
    }

    /// `IOMMU_DESTROY` of any object id.
    /// - Returns: the kernel's errno (`nil` when destroyed): `ENOENT` for no such object, `EBUSY` for one
    ///   in use (`iommufd_object_remove`).
    /// - Throws: only when the channel fails.
    public func destroy(_ id: UInt32) throws(RelayError) -> Errno? {
        var destroy = iommu_destroy()
        destroy.size = UInt32(MemoryLayout<iommu_destroy>.size)
        destroy.id = id
        return try withUnsafeMutableBytes(of: &destroy) { argument -> Result<Errno?, RelayError> in
            Result { () throws(RelayError) -> Errno? in
                try channel.ioctl(descriptor, request: IOMMUFDRequest.destroy.rawValue, argument: argument).errno
            }
        }.get()
    }

    /// What `IOMMU_GET_HW_INFO` reports for a device (`iommufd_get_hw_info`).
    public struct HardwareInfo: Hashable, Sendable {
        /// `out_data_type`: 2 for `IOMMU_HW_INFO_TYPE_ARM_SMMUV3`.
        public var dataType: UInt32
        /// `data_len` as the kernel wrote it back: the bytes the driver filled.
        public var dataLength: UInt32
        /// `out_capabilities` (`IOMMU_HW_CAP_*`).
        public var capabilities: UInt64
        /// `struct iommu_hw_info_arm_smmuv3`: IDR0-5, IIDR, AIDR.
        public var idr: [UInt32]
        public var iidr: UInt32
        public var aidr: UInt32
    }

    /// `IOMMU_GET_HW_INFO` of `deviceID`, made through this seam (the data buffer travels out and back).
    public func hardwareInfo(deviceID: UInt32) throws(RelayError) -> HardwareInfo {
        var data = iommu_hw_info_arm_smmuv3()
        var info = iommu_hw_info()
        info.size = UInt32(MemoryLayout<iommu_hw_info>.size)
        info.dev_id = deviceID
        info.data_len = UInt32(MemoryLayout<iommu_hw_info_arm_smmuv3>.size)
        let errno = withUnsafeMutableBytes(of: &data) { payload -> Errno? in
            info.data_uptr = UInt64(UInt(bitPattern: payload.baseAddress))
            return withUnsafeMutableBytes(of: &info) { ioctl(request: .getHWInfo, argument: $0) }
        }
        if let errno { throw failure("IOMMU_GET_HW_INFO(dev_id \(deviceID))", errno) }
        let idr = withUnsafeBytes(of: data.idr) { Array($0.bindMemory(to: UInt32.self)).map { UInt32(littleEndian: $0) } }
        return HardwareInfo(dataType: info.out_data_type, dataLength: info.data_len, capabilities: info.out_capabilities,
                            idr: idr, iidr: data.iidr, aidr: data.aidr)
    }

    // MARK: Plumbing

    /// `IOMMU_IOAS_ALLOC` (0x81) and `IOMMU_IOAS_MAP` (0x85): VMM-side requests the backend never makes.
    static let ioasAlloc = IOMMUFDRequest(command: UInt32(IOMMUFD_CMD_IOAS_ALLOC))
    static let ioasMap = IOMMUFDRequest(command: UInt32(IOMMUFD_CMD_IOAS_MAP))
    /// `enum iommufd_ioas_map_flags`.
    static let ioasMapFixedIOVA: UInt32 = 1 << 0
    static let ioasMapWriteable: UInt32 = 1 << 1
    static let ioasMapReadable: UInt32 = 1 << 2

    private static func u32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    }

    /// An ioctl on the iommufd made by a helper: a channel failure or the kernel's errno throws.
    private func raw(_ request: IOMMUFDRequest, _ bytes: inout [UInt8], _ what: String) throws(RelayError) {
        let outcome = bytes.withUnsafeMutableBytes { argument -> Result<Errno?, RelayError> in
            guard let pointers = RelayPointerFields.iommufd(request, UnsafeRawBufferPointer(argument)) else {
                return .success(.inappropriateIOCTLForDevice)
            }
            return Result { () throws(RelayError) -> Errno? in
                try channel.ioctl(descriptor, request: request.rawValue, argument: argument, pointers: pointers).errno
            }
        }
        if let errno = try outcome.get() { throw RelayError.guest(what, errno) }
    }

    private func vfio<Argument>(_ fd: FileDescriptor, _ request: VFIODeviceRequest, _ argument: inout Argument,
                                _ what: String) throws(RelayError) {
        let outcome = withUnsafeMutableBytes(of: &argument) { bytes -> Result<Errno?, RelayError> in
            guard let pointers = RelayPointerFields.vfio(request, UnsafeRawBufferPointer(bytes)) else {
                return .success(.inappropriateIOCTLForDevice)
            }
            return Result { () throws(RelayError) -> Errno? in
                try channel.ioctl(fd, request: request.rawValue, argument: bytes, pointers: pointers).errno
            }
        }
        if let errno = try outcome.get() { throw RelayError.guest(what, errno) }
    }

    /// A helper's failure: the channel's own when the errno came from it, else the kernel's.
    private func failure(_ what: String, _ errno: Errno) -> RelayError {
        if let broken = channel.failure { return .channelBroken(underlying: broken.description) }
        return .guest(what, errno)
    }
}
