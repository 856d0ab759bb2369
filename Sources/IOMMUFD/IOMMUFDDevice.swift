import CIOMMUFD
import SystemPackage

/// The syscalls ``IOMMUFDBackend`` makes, and nothing else: `ioctl(2)` on an iommufd, `read(2)` and
/// `close(2)` on the vEVENTQ descriptors the kernel hands out, and `ioctl(2)` and `close(2)` on the VFIO
/// device cdevs VMMs hand over (SET_DEV_ID), through which the backend attaches each device.
///
/// This is the one seam between the backend and the kernel. ``SystemIOMMUFD`` is the real one; tests
/// drive the backend with a fake that records each request number and the exact argument bytes, and
/// scripts the kernel's answers (object ids, `entry_num`, errno).
public protocol IOMMUFDDevice: AnyObject, Sendable {
    /// `ioctl(iommufd, request, argument.baseAddress)`.
    ///
    /// `argument` holds the request struct (its first `u32` is its size); the kernel writes its outputs
    /// (object ids, `entry_num`) back into it, `IOMMU_HWPT_INVALIDATE`'s `entry_num` also on failure.
    /// - Returns: `nil` on success, or the errno the ioctl failed with.
    func ioctl(request: IOMMUFDRequest, argument: UnsafeMutableRawBufferPointer) -> Errno?

    /// `read(2)` on a vEVENTQ descriptor from `IOMMU_VEVENTQ_ALLOC`. The kernel returns whole events
    /// only, and 0 bytes (it does not block) when the queue is empty.
    func read(eventQueue: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, Errno>

    /// `close(2)` of a vEVENTQ descriptor.
    func close(eventQueue: FileDescriptor)

    /// A descriptor of this process that epoll reports readable exactly while `eventQueue` has
    /// something to read, for the backend's ``VEventWatcher``: the vEVENTQ itself on this host's kernel
    /// (``SystemIOMMUFD``: `iommufd_eventq_fops_poll` reports `EPOLLIN` while its `deliver` list is not
    /// empty), a model's stand-in (an eventfd) in a simulation; `nil` when it cannot be watched (its
    /// events are then only read by `takeEvents`). The default is `nil`: a seam whose descriptors are
    /// not this process's (a relay to another machine's kernel, a fake's numbers) must never have them
    /// polled as if they were. Valid until `eventQueue` is closed.
    func readinessDescriptor(eventQueue: FileDescriptor) -> FileDescriptor?

    /// `ioctl(vfioDevice, request, argument.baseAddress)` on a VFIO device cdev bound to this iommufd
    /// (`VFIO_DEVICE_ATTACH_IOMMUFD_PT`, `VFIO_DEVICE_DETACH_IOMMUFD_PT`).
    /// - Returns: `nil` on success, or the errno the ioctl failed with.
    func ioctl(vfioDevice: FileDescriptor, request: VFIODeviceRequest, argument: UnsafeMutableRawBufferPointer) -> Errno?

    /// `close(2)` of a VFIO device cdev descriptor the backend was handed. The VMM keeps its own
    /// descriptor of the same open file, so this does not unbind the device
    /// (`vfio_device_fops_release` runs only when the last reference goes).
    func close(vfioDevice: FileDescriptor)
}

extension IOMMUFDDevice {
    /// None: the descriptors may not be this process's (see the requirement).
    public func readinessDescriptor(eventQueue: FileDescriptor) -> FileDescriptor? { nil }
}

/// An iommufd file descriptor (`/dev/iommu`) and the syscalls on it.
///
/// It owns its descriptor and closes it when released; closing an iommufd destroys every object
/// allocated through it.
public final class SystemIOMMUFD: IOMMUFDDevice {
    /// The iommufd character device.
    public static let defaultPath: FilePath = "/dev/iommu"

    /// The iommufd.
    public let descriptor: FileDescriptor

    /// Opens an iommufd (`O_RDWR | O_CLOEXEC`).
    /// - Throws: the `open(2)` errno: `ENOENT` when the kernel lacks iommufd or the node is missing,
    ///   `EACCES` when this user may not open it.
    public static func open(_ path: FilePath = defaultPath) throws(Errno) -> SystemIOMMUFD {
        do {
            return SystemIOMMUFD(adopting: try FileDescriptor.open(path, .readWrite, options: [.closeOnExec]))
        } catch let errno as Errno {
            throw errno
        } catch {
            throw Errno.ioError
        }
    }

    /// Takes ownership of an iommufd, e.g. one a VMM handed over (`SCM_RIGHTS`) so that the daemon's
    /// objects live in the VMM's iommufd context next to its devices and IOAS.
    public init(adopting descriptor: FileDescriptor) {
        self.descriptor = descriptor
    }

    deinit {
        try? descriptor.close()
    }

    public func ioctl(request: IOMMUFDRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        let result = ciommufd_ioctl(descriptor.rawValue, request.rawValue, argument.baseAddress)
        return result < 0 ? Errno(rawValue: -result) : nil
    }

    public func read(eventQueue: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, Errno> {
        do {
            return .success(try eventQueue.read(into: buffer))
        } catch let errno as Errno {
            return .failure(errno)
        } catch {
            return .failure(.ioError)
        }
    }

    public func close(eventQueue: FileDescriptor) {
        try? eventQueue.close()
    }

    /// The vEVENTQ itself: it polls readable while it holds events (`iommufd_eventq_fops_poll`).
    public func readinessDescriptor(eventQueue: FileDescriptor) -> FileDescriptor? { eventQueue }

    public func ioctl(vfioDevice: FileDescriptor, request: VFIODeviceRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        let result = ciommufd_ioctl(vfioDevice.rawValue, request.rawValue, argument.baseAddress)
        return result < 0 ? Errno(rawValue: -result) : nil
    }

    public func close(vfioDevice: FileDescriptor) {
        try? vfioDevice.close()
    }
}
