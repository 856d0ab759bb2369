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
        /// The backend cannot do this at all (`SIMULATE_DMA` on a backend without simulated devices).
        case unsupported
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

    /// Where the backend pushes the events its viommus raise from now on (`nil`: nowhere). The default
    /// (a backend without event sources) ignores it. See ``ViommuEventSink`` for the threading rules.
    func setEventSink(_ sink: (any ViommuEventSink)?)

    /// Makes a simulated device access memory through the pSMMU, raising the event a real SMMU would
    /// (delivered to the sink), and says what happened. Only a simulated pSMMU implements it; the
    /// default throws ``BackendError/Kind/unsupported``.
    func simulateDMA(_ access: SimulatedDMA) throws(BackendError) -> DMAOutcome

    /// What a later daemon process needs to take `viommu` back (``restoreViommu(_:)``), in the
    /// backend's own encoding. The default records nothing (the objects are re-created).
    func objects(of viommu: ViommuHandle) throws(BackendError) -> ViommuObjects

    /// The descriptors the backend holds for `viommu` and its vdevices, for systemd's fd store.
    func heldDescriptors(of viommu: ViommuHandle) -> HeldDescriptors

    /// Takes back a viommu a previous daemon process allocated, with its vdevices, nested HWPTs and
    /// device attachments, and returns this process's handles of them.
    ///
    /// A backend whose objects outlive the daemon (iommufd: they live in the VMM's iommufd file)
    /// re-adopts them by id and allocates nothing, except what lived only in a lost descriptor (a
    /// vEVENTQ). The default re-creates everything (a simulated pSMMU). A failure leaves nothing
    /// recorded in the backend.
    func restoreViommu(_ restoration: ViommuRestoration) throws(BackendError) -> RestoredViommu

    /// Hands a restored vdevice its VFIO device cdev again, when it did not survive the restart (the VMM
    /// repeats its SET_DEV_ID with `FD_ATTACHED`). `device.id` must be the vdevice's host device. Takes
    /// ownership of `device.vfioDevice`, like ``allocateVDevice(viommu:device:virtualStreamID:)``.
    /// Changes nothing else. The default closes it (a backend that needs none).
    /// - Returns: whether the backend kept the descriptor (it had none for the vdevice); `false`: closed.
    func resupply(_ vdevice: VDeviceHandle, device: HostDevice) throws(BackendError) -> Bool

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

// MARK: - Restarts: what a backend keeps, and how a later process takes a viommu back

/// What a backend needs to find a viommu's objects again in a later daemon process, as the backend
/// itself encodes it (``PSMMUBackend/objects(of:)``). Opaque to everyone else: the engine stores it in
/// its snapshot and hands it back, unchanged, to the same kind of backend.
///
/// For iommufd: the kernel object ids of the viommu, its abort and bypass HWPTs and its vEVENTQ (the
/// objects live in the VMM's iommufd file, which outlives the daemon). For a simulated pSMMU: nothing
/// (a restarted daemon's simulated SMMU is a reset one and everything is allocated again).
public struct ViommuObjects: Hashable, Sendable {
    /// The backend's encoding, at most ``maximumByteCount`` bytes.
    public var bytes: [UInt8]
    /// The largest encoding a backend may produce (codecs that store it bound it by this).
    public static let maximumByteCount = 256

    public init(bytes: [UInt8] = []) { self.bytes = bytes }
}

/// The descriptors a backend holds for one viommu, which a daemon that is about to stop (or may die)
/// keeps in systemd's file-descriptor store so that its next process can re-adopt the viommu
/// (``PSMMUBackend/heldDescriptors(of:)``). Raw descriptors, still owned by the backend: a holder
/// duplicates them (`sd_pid_notify_with_fds` does) and never closes them.
public struct HeldDescriptors: Hashable, Sendable {
    /// The iommufd the viommu's objects live in (the VMM's, adopted at ATTACH_VIOMMU).
    public var iommufd: Int32?
    /// The viommu's vEVENTQ descriptor.
    public var eventQueue: Int32?
    /// Each vdevice's VFIO device cdev.
    public var vfioDevices: [VDeviceHandle: Int32]

    public init(iommufd: Int32? = nil, eventQueue: Int32? = nil, vfioDevices: [VDeviceHandle: Int32] = [:]) {
        self.iommufd = iommufd
        self.eventQueue = eventQueue
        self.vfioDevices = vfioDevices
    }

    /// Whether the backend holds no descriptor at all for the viommu.
    public var isEmpty: Bool { iommufd == nil && eventQueue == nil && vfioDevices.isEmpty }
}

/// One viommu as a restarted daemon hands it back to a backend (``PSMMUBackend/restoreViommu(_:)``):
/// what the previous process allocated, in the previous process's handles, and the descriptors that
/// survived (from systemd's fd store, or none yet).
public struct ViommuRestoration: Sendable {
    /// The ATTACH_VIOMMU request the viommu was allocated with.
    public var request: ViommuAttachRequest
    /// The previous process's handle of the viommu.
    public var handle: ViommuHandle
    /// What the previous process's backend recorded (``PSMMUBackend/objects(of:)``).
    public var objects: ViommuObjects
    /// The vEVENTQ descriptor, if it survived. Owned by the backend from this call on (closed when it
    /// is not needed or the call fails).
    public var eventQueue: Int32?
    /// The registered devices, in StreamID order.
    public var devices: [Device]

    /// A registered device and what its vSTE installed.
    public struct Device: Sendable {
        /// The virtual StreamID (vSID) of its vdevice.
        public var virtualStreamID: StreamID
        /// Its iommufd `dev_id` and its VFIO cdev, if that survived (owned by the backend from the
        /// call on, as in ``PSMMUBackend/allocateVDevice(viommu:device:virtualStreamID:)``).
        public var host: HostDevice
        /// The previous process's vdevice handle.
        public var vdevice: VDeviceHandle
        /// The nested HWPT of its translating vSTE, if one is linked.
        public var nestedHWPT: NestedHWPT?
        /// Where the device was attached, in the previous process's handles.
        public var domain: DeviceDomain

        public init(virtualStreamID: StreamID, host: HostDevice, vdevice: VDeviceHandle,
                    nestedHWPT: NestedHWPT? = nil, domain: DeviceDomain = .nestParent) {
            self.virtualStreamID = virtualStreamID
            self.host = host
            self.vdevice = vdevice
            self.nestedHWPT = nestedHWPT
            self.domain = domain
        }
    }

    /// A nested HWPT: the previous process's handle and the vSTE and CDs it was allocated from.
    public struct NestedHWPT: Hashable, Sendable {
        public var handle: HWPTHandle
        public var ste: StreamTableEntry
        public var contextDescriptors: [ContextDescriptor]

        public init(handle: HWPTHandle, ste: StreamTableEntry, contextDescriptors: [ContextDescriptor]) {
            self.handle = handle
            self.ste = ste
            self.contextDescriptors = contextDescriptors
        }
    }

    public init(request: ViommuAttachRequest, handle: ViommuHandle, objects: ViommuObjects,
                eventQueue: Int32? = nil, devices: [Device] = []) {
        self.request = request
        self.handle = handle
        self.objects = objects
        self.eventQueue = eventQueue
        self.devices = devices
    }

    /// Closes every descriptor this restoration carries (the caller's, when it gives up before
    /// handing it to a backend).
    public func closeDescriptors() {
        if let fd = eventQueue { _ = Glibc.close(fd) }
        for device in devices { if let fd = device.host.vfioDevice { _ = Glibc.close(fd) } }
    }
}

/// The handles of a restored viommu in this process (``PSMMUBackend/restoreViommu(_:)``): the same as
/// the previous process's for a backend that re-adopts (iommufd), new ones for one that re-creates.
public struct RestoredViommu: Hashable, Sendable {
    public var handle: ViommuHandle
    /// Each device's vdevice, by vSID.
    public var vdevices: [StreamID: VDeviceHandle]
    /// Each linked device's nested HWPT, by vSID.
    public var nestedHWPTs: [StreamID: HWPTHandle]

    public init(handle: ViommuHandle, vdevices: [StreamID: VDeviceHandle] = [:], nestedHWPTs: [StreamID: HWPTHandle] = [:]) {
        self.handle = handle
        self.vdevices = vdevices
        self.nestedHWPTs = nestedHWPTs
    }

    /// `domain`, given in the previous process's handles, in this process's: a nested HWPT maps to
    /// the restored one of `streamID`.
    public func translated(_ domain: DeviceDomain, of streamID: StreamID) -> DeviceDomain {
        if case .nested = domain, let hwpt = nestedHWPTs[streamID] { return .nested(hwpt) }
        return domain
    }
}

extension PSMMUBackend {
    /// Nothing to record: the default ``restoreViommu(_:)`` re-creates every object.
    public func objects(of viommu: ViommuHandle) throws(BackendError) -> ViommuObjects { ViommuObjects() }

    /// No descriptors: a backend that needs none (the simulated pSMMU).
    public func heldDescriptors(of viommu: ViommuHandle) -> HeldDescriptors { HeldDescriptors() }

    /// Re-creates the viommu and its objects, for a backend whose objects died with the previous
    /// process (the simulated pSMMU, which is then a reset SMMU: its caches are empty, which is safe,
    /// since a reset SMMU caches nothing): ``attachViommu(_:)``, then per device
    /// ``allocateVDevice(viommu:device:virtualStreamID:)``, ``allocateNestedHWPT(viommu:hostDeviceID:ste:contextDescriptors:)``
    /// and ``attachDevice(_:to:)`` to its domain. A failure undoes what this call created (devices
    /// back on the nest parent, HWPTs, vdevices, the viommu) and closes the descriptors not yet handed
    /// over.
    public func restoreViommu(_ restoration: ViommuRestoration) throws(BackendError) -> RestoredViommu {
        if let fd = restoration.eventQueue { _ = Glibc.close(fd) }
        let handle: ViommuHandle
        do { handle = try attachViommu(restoration.request) } catch {
            for device in restoration.devices { discard(device.host) }
            throw error
        }
        var restored = RestoredViommu(handle: handle)
        var placed: [StreamID: Bool] = [:]
        func undo() {
            for (sid, vdevice) in restored.vdevices {
                if placed[sid] == true { try? attachDevice(vdevice, to: .nestParent) }
                if let hwpt = restored.nestedHWPTs[sid] { try? destroyHWPT(hwpt) }
                try? destroyVDevice(vdevice)
            }
            for (sid, hwpt) in restored.nestedHWPTs where restored.vdevices[sid] == nil { try? destroyHWPT(hwpt) }
            try? detachViommu(handle)
        }
        for (position, device) in restoration.devices.enumerated() {
            let sid = device.virtualStreamID
            do {
                restored.vdevices[sid] = try allocateVDevice(viommu: handle, device: device.host, virtualStreamID: sid)
                if let nested = device.nestedHWPT {
                    restored.nestedHWPTs[sid] = try allocateNestedHWPT(
                        viommu: handle, hostDeviceID: device.host.id, ste: nested.ste,
                        contextDescriptors: nested.contextDescriptors)
                }
                let domain = restored.translated(device.domain, of: sid)
                if domain != .nestParent, let vdevice = restored.vdevices[sid] {
                    try attachDevice(vdevice, to: domain)
                    placed[sid] = true
                }
            } catch {
                for later in restoration.devices[(position + 1)...] { discard(later.host) }
                undo()
                throw error
            }
        }
        return restored
    }

    /// Takes a VFIO device cdev handed back for a restored vdevice (a SET_DEV_ID that repeats the
    /// registration): a backend that needs none closes it.
    public func resupply(_ vdevice: VDeviceHandle, device: HostDevice) throws(BackendError) -> Bool {
        discard(device)
        return false
    }
}
