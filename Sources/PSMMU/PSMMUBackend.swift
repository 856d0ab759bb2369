#if canImport(Glibc)
import Glibc
#endif
import SMMUv3

/// A backend's handle of a viommu it allocated (for iommufd: the viommu object id).
public struct ViommuHandle: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public var description: String { "viommu#\(rawValue)" }
}

/// A backend's handle of a vdevice: a host device given a virtual StreamID on a viommu
/// (for iommufd: the vdevice object id from `IOMMU_VDEVICE_ALLOC`).
public struct VDeviceHandle: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public var description: String { "vdevice#\(rawValue)" }
}

/// A backend's handle of a nested stage-1 HWPT installed from a vSTE (for iommufd: the hwpt id).
public struct HWPTHandle: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public var description: String { "hwpt#\(rawValue)" }
}

/// What a VMM supplies to attach a viommu on a pSMMU.
public struct ViommuAttachRequest: Hashable, Sendable {
    /// A host device behind the pSMMU (iommufd `dev_id`) that the viommu is allocated through.
    public var hostDeviceID: UInt32
    /// The VM's nest-parent (stage-2) HWPT on that pSMMU (iommufd `hwpt_id`).
    public var nestParentHWPT: UInt32
    public init(hostDeviceID: UInt32 = 0, nestParentHWPT: UInt32 = 0) {
        self.hostDeviceID = hostDeviceID
        self.nestParentHWPT = nestParentHWPT
    }
}

/// A host device as SET_DEV_ID names it: its iommufd `dev_id` and, for a backend that attaches it
/// itself (iommufd), the VMM's VFIO device cdev descriptor, already bound to the VMM's iommufd.
///
/// ``PSMMUBackend/allocateVDevice(viommu:device:virtualStreamID:)`` takes ownership of `vfioDevice`:
/// the backend closes it when the vdevice is destroyed, or at once when it does not need it or the
/// allocation fails.
public struct HostDevice: Hashable, Sendable {
    /// The iommufd `dev_id`.
    public var id: UInt32
    /// The VFIO device cdev descriptor (a raw fd, owned by whoever holds this value), if one came.
    public var vfioDevice: Int32?

    public init(id: UInt32, vfioDevice: Int32? = nil) {
        self.id = id
        self.vfioDevice = vfioDevice
    }
}

/// Where a device's DMA translates, the way the guest's vSTE says (QEMU's `smmuv3_accel_install_ste`).
public enum DeviceDomain: Hashable, Sendable, CustomStringConvertible {
    /// The nested stage-1 HWPT of a translating vSTE (CONFIG = S1_TRANS).
    case nested(HWPTHandle)
    /// Every transaction is aborted: a vSTE with V = 0 or CONFIG = abort, or an unlinked vSTE.
    case abort
    /// Stage 1 is bypassed, stage 2 still applies: a vSTE with CONFIG = bypass.
    case bypass
    /// The viommu's nest-parent (stage-2) HWPT, where the VMM had the device before SET_DEV_ID and where
    /// it goes back before its vdevice is destroyed.
    case nestParent

    public var description: String {
        switch self {
        case .nested(let hwpt): return "nested \(hwpt)"
        case .abort: return "abort"
        case .bypass: return "bypass"
        case .nestParent: return "nest parent"
        }
    }
}

/// A control-path failure of a backend: allocation, registration or teardown.
public struct BackendError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What failed, in the backend's words.
    public var kind: Kind
    /// The errno the operation failed with, when it came from a syscall.
    public var errno: Int32?
    public var message: String

    public enum Kind: Hashable, Sendable {
        /// The backend cannot work on this host (e.g. no `/dev/iommu`).
        case unavailable
        /// A handle the backend does not know.
        case unknownHandle
        /// An object that already exists (a second vdevice for a device, a vSID reused on a viommu).
        case alreadyExists
        /// Arguments the backend refuses (a device not behind this pSMMU, a vSTE it rejects).
        case invalidArgument
        /// The object is still in use (a viommu with vdevices or HWPTs).
        case busy
        /// A file descriptor handed over is not what the call needs: for SET_DEV_ID, not a VFIO device
        /// cdev bound to the viommu's iommufd (the kernel answered the first attach through it with
        /// `ENOTTY`, `EBADF`, `EINVAL` or `ENOENT`).
        case unusableDescriptor
        /// Any other failure.
        case failed
    }

    public init(_ kind: Kind, errno: Int32? = nil, _ message: String) {
        self.kind = kind
        self.errno = errno
        self.message = message
    }

    public var description: String {
        errno.map { "\(message) (errno \($0))" } ?? message
    }
}

/// The outcome of one ``PSMMUBackend/invalidate(viommu:commands:)`` call.
public struct InvalidationResult: Hashable, Sendable {
    /// How many commands, from the start of the batch, the pSMMU executed and completed.
    public var completed: Int
    /// The failure that stopped the batch at index `completed`, if any.
    public var failure: InvalidationFailure?

    public init(completed: Int, failure: InvalidationFailure? = nil) {
        self.completed = completed
        self.failure = failure
    }

    /// Whether every command of a batch of `count` completed.
    public func isComplete(of count: Int) -> Bool { failure == nil && completed == count }
}

/// Why a pSMMU stopped at a command: the SMMU error the guest must observe in `CMDQ_CONS.ERR`.
public struct InvalidationFailure: Error, Hashable, Sendable, CustomStringConvertible {
    /// The error the guest sees for the failing command.
    public var queueError: CommandQueueError
    /// The errno of the ioctl, for the iommufd backend.
    public var errno: Int32?
    public var message: String

    public init(queueError: CommandQueueError, errno: Int32? = nil, message: String) {
        self.queueError = queueError
        self.errno = errno
        self.message = message
    }

    public var description: String { "\(queueError): \(message)" }
}

/// Counters a backend keeps for everything it did.
public struct BackendCounters: Hashable, Sendable {
    public var viommusAttached: UInt64 = 0
    public var vdevicesAllocated: UInt64 = 0
    public var hwptsAllocated: UInt64 = 0
    /// `invalidate` calls.
    public var invalidateCalls: UInt64 = 0
    /// Commands handed to `invalidate`.
    public var commandsReceived: UInt64 = 0
    /// Commands executed to completion.
    public var commandsCompleted: UInt64 = 0
    /// Commands that failed (one per failing call at most).
    public var commandsFailed: UInt64 = 0
    /// Commands executed, by opcode byte.
    public var commandsByOpcode: [UInt8: UInt64] = [:]
    /// Event records reported.
    public var events: UInt64 = 0
    public init() {}
}

/// One physical SMMU as vsmmud drives it: viommus (one per VM), vdevices, nested stage-1 HWPTs
/// and command batches.
///
/// Contract:
/// - `invalidate` takes a batch of commands the router produced for one viommu (never CMD_SYNC,
///   CFGI_STE*, S2 TLBIs: those are refused with `CERROR_ILL`) and returns only once the pSMMU has
///   completed every command it reports as completed, like `IOMMU_HWPT_INVALIDATE`. It may block.
/// - `invalidate` is called from the viommu's one consumer at a time; different viommus may be served
///   concurrently, and control-path calls may come from other threads: implementations are thread-safe.
public protocol PSMMUBackend: AnyObject, Sendable {
    /// The pSMMU's name (`smmu0`, or the sysfs name of the iommu).
    var name: String { get }

    /// Allocates a viommu for one VM on this pSMMU (`IOMMU_VIOMMU_ALLOC`).
    func attachViommu(_ request: ViommuAttachRequest) throws(BackendError) -> ViommuHandle
    /// Destroys a viommu; its vdevices and HWPTs must be gone first (`IOMMU_DESTROY`).
    func detachViommu(_ viommu: ViommuHandle) throws(BackendError)

    /// The pSMMU's ID registers as `IOMMU_GET_HW_INFO` gives them through the viommu's device.
    func hardwareInfo(viommu: ViommuHandle) throws(BackendError) -> IDRegisters

    /// Gives `device` the virtual StreamID `virtualStreamID` on `viommu` (`IOMMU_VDEVICE_ALLOC`). The
    /// device stays attached where it was (the viommu's nest parent) until ``attachDevice(_:to:)``.
    /// Takes ownership of `device.vfioDevice` (see ``HostDevice``).
    func allocateVDevice(viommu: ViommuHandle, device: HostDevice,
                         virtualStreamID: StreamID) throws(BackendError) -> VDeviceHandle
    /// Closes the VFIO descriptor of a `device` that will not be registered (the caller owned it and
    /// the registration was refused before ``allocateVDevice(viommu:device:virtualStreamID:)``), through
    /// the same seam the backend's other syscalls go through. The default closes it with `close(2)`.
    func discard(_ device: HostDevice)

    /// Destroys a vdevice (`IOMMU_DESTROY`) and closes its VFIO descriptor. The caller puts the device
    /// back on ``DeviceDomain/nestParent`` first.
    func destroyVDevice(_ vdevice: VDeviceHandle) throws(BackendError)

    /// Attaches the vdevice's device to `domain`, atomically replacing its current attachment
    /// (`VFIO_DEVICE_ATTACH_IOMMUFD_PT`: `iommufd_device_replace`). A nested HWPT must belong to the
    /// vdevice's viommu.
    func attachDevice(_ vdevice: VDeviceHandle, to domain: DeviceDomain) throws(BackendError)

    /// Allocates (does not attach) a nested stage-1 HWPT from a guest STE for a device (`IOMMU_HWPT_ALLOC` with
    /// `IOMMU_HWPT_DATA_ARM_SMMUV3`, `pt_id` = the viommu), with the CDs the guest STE links so a
    /// backend that models the config cache can use them.
    func allocateNestedHWPT(viommu: ViommuHandle, hostDeviceID: UInt32, ste: StreamTableEntry,
                            contextDescriptors: [ContextDescriptor]) throws(BackendError) -> HWPTHandle
    /// Destroys a nested HWPT (`IOMMU_DESTROY`). Refused with ``BackendError/Kind/busy`` while a device
    /// is attached to it (the kernel holds a reference per attachment: `iommufd_object_remove` → EBUSY).
    func destroyHWPT(_ hwpt: HWPTHandle) throws(BackendError)

    /// Tells the backend that the guest rewrote CDs of a nested HWPT's table (the STE words are
    /// unchanged, so the HWPT stays). Real hardware reads CDs from guest memory itself, so the iommufd
    /// backend has nothing to do (the default); a simulated pSMMU updates its model of guest memory.
    func updateContextDescriptors(_ hwpt: HWPTHandle, _ contextDescriptors: [ContextDescriptor]) throws(BackendError)

    /// Executes a batch of commands on `viommu`, in order, and returns once they completed.
    func invalidate(viommu: ViommuHandle, commands: UnsafeBufferPointer<Command>) -> InvalidationResult

    /// Takes the event records the pSMMU reported for `viommu` since the last call (vSIDs substituted).
    func takeEvents(viommu: ViommuHandle) -> [EventRecord]

    /// A snapshot of the backend's counters.
    var counters: BackendCounters { get }
}

extension PSMMUBackend {
    /// Gives `hostDeviceID`, passed without a VFIO descriptor, the virtual StreamID `virtualStreamID` on
    /// `viommu`: ``allocateVDevice(viommu:device:virtualStreamID:)`` for backends that need none.
    public func allocateVDevice(viommu: ViommuHandle, hostDeviceID: UInt32,
                                virtualStreamID: StreamID) throws(BackendError) -> VDeviceHandle {
        try allocateVDevice(viommu: viommu, device: HostDevice(id: hostDeviceID), virtualStreamID: virtualStreamID)
    }

    public func discard(_ device: HostDevice) {
        if let fd = device.vfioDevice { _ = Glibc.close(fd) }
    }

    /// Nothing to do: the pSMMU fetches CDs from guest memory when it needs them.
    public func updateContextDescriptors(_ hwpt: HWPTHandle, _ contextDescriptors: [ContextDescriptor]) throws(BackendError) {}
}
