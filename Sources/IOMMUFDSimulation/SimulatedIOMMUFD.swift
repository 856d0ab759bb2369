import PSMMU
import CIOMMUFD
import IOMMUFD
import SMMUv3
import VSMMUSystem
import SystemPackage

/// A model of the Linux kernel behind the ``IOMMUFDDevice`` seam: one iommufd (the iommufd core),
/// several physical SMMUv3s (arm-smmu-v3 with its iommufd glue) and the VFIO device cdevs bound to it.
///
/// It parses every argument from the raw bytes the caller passes, exactly as the kernel does (the
/// structs of `CIOMMUFD`, `copy_struct_from_user` size rules, user pointers), keeps the kernel's
/// objects with their ids and references, and answers with the kernel's outcome: the errno, the
/// ids, `entry_num`, and the commands each pSMMU actually executed. So a test of ``IOMMUFDBackend``
/// against it checks what the kernel would *do*, not only which bytes were sent.
///
/// **Setup.** What the VMM does before the daemon sees anything has its own API: plug and bind a
/// device (``bindDevice(pSMMU:streamID:capabilities:maxPASIDLog2:)``, which hands out a VFIO cdev
/// descriptor number and the `dev_id`), ``allocateIOAS()``, ``allocateNestParent(device:ioas:)`` per
/// pSMMU, and ``attach(vfio:to:)`` of each device to its S2. These go through the same code as the
/// ioctls. Descriptor numbers are far above any real descriptor (from ``firstDescriptor``), so a
/// stray real `close(2)` of one cannot close a file of the process.
///
/// **Introspection.** ``attachment(ofDevice:)``, ``liveObjects()``, ``issuedCommands(pSMMU:)``,
/// ``vmaster(ofDevice:)`` and the rest show the kernel's state to tests.
///
/// Thread safety: every entry point takes one lock, so calls from any thread are serialised, like
/// ioctls holding the kernel's locks; none blocks.
public final class SimulatedIOMMUFD: IOMMUFDDevice {
    /// The first descriptor number the model hands out.
    public static let firstDescriptor: Int32 = 0x4000_0000

    /// The kernel version whose behaviour the model follows.
    public let kernel: KernelVersion
    /// The physical SMMUs, by index.
    public let smmus: [PhysicalSMMU]

    private let state: Locked<KernelState>

    /// A kernel with the pSMMUs `smmus` (indexed from 0) and no device yet.
    public init(kernel: KernelVersion = .rig, smmus: [PhysicalSMMU]) {
        self.kernel = kernel
        self.smmus = smmus
        self.state = Locked(KernelState(kernel: kernel, smmus: smmus))
    }

    /// Closes the eventfds that stand in for the polls of vEVENTQs still open (the model's only real
    /// descriptors).
    deinit {
        let readiness = state.withLock { state in
            state.objects.values.compactMap { object -> Int32? in
                if case .veventq(let queue) = object { return queue.readiness }
                return nil
            }
        }
        for fd in readiness { _ = try? FileDescriptor(rawValue: fd).close() }
    }

    /// A kernel with `count` pSMMUs named `smmu0` … with the simulated pSMMU's ID registers.
    public convenience init(kernel: KernelVersion = .rig, pSMMUCount count: Int) {
        self.init(kernel: kernel, smmus: (0 ..< count).map { PhysicalSMMU(name: "smmu\($0)") })
    }

    // MARK: - Setup: what the VMM does

    /// A device bound to the iommufd: its `dev_id` and the VMM's VFIO cdev descriptor.
    public struct BoundDevice: Hashable, Sendable {
        /// The iommufd `dev_id` (`out_devid` of `VFIO_DEVICE_BIND_IOMMUFD`).
        public var devID: UInt32
        /// The VMM's descriptor of the device's VFIO cdev.
        public var vfio: Int32
        public var pSMMU: Int
        /// The device's physical StreamID.
        public var streamID: StreamID
    }

    /// Plugs a device behind pSMMU `pSMMU` with the physical StreamID `streamID` and opens its VFIO
    /// cdev (`/dev/vfio/devices/vfioN`), unbound.
    /// - Parameters:
    ///   - capabilities: what `IOMMU_GET_HW_INFO` reports in `out_capabilities` for it.
    ///   - maxPASIDLog2: `out_max_pasid_log2`.
    /// - Returns: the descriptor.
    public func openVFIODevice(pSMMU: Int, streamID: StreamID, capabilities: UInt64 = 0,
                               maxPASIDLog2: UInt8 = 0) -> Int32 {
        precondition(smmus.indices.contains(pSMMU), "no pSMMU \(pSMMU)")
        return state.withLock { state in
            state.hostDevices.append(HostDeviceState(pSMMU: pSMMU, streamID: streamID,
                                                     capabilities: capabilities, maxPASIDLog2: maxPASIDLog2))
            state.vfioFiles.append(VFIOFile(hostDevice: state.hostDevices.count - 1))
            return state.allocateDescriptor(.vfio(file: state.vfioFiles.count - 1))
        }
    }

    /// ``openVFIODevice(pSMMU:streamID:capabilities:maxPASIDLog2:)`` then `VFIO_DEVICE_BIND_IOMMUFD` on it.
    public func bindDevice(pSMMU: Int, streamID: StreamID, capabilities: UInt64 = 0,
                           maxPASIDLog2: UInt8 = 0) -> BoundDevice {
        let vfio = openVFIODevice(pSMMU: pSMMU, streamID: streamID, capabilities: capabilities, maxPASIDLog2: maxPASIDLog2)
        var bind = vfio_device_bind_iommufd()
        bind.argsz = UInt32(MemoryLayout<vfio_device_bind_iommufd>.size)
        let errno = withUnsafeMutableBytes(of: &bind) {
            ioctl(vfioDevice: FileDescriptor(rawValue: vfio), request: .bindIOMMUFD, argument: $0)
        }
        precondition(errno == nil, "binding a fresh VFIO device failed: \(String(describing: errno))")
        return BoundDevice(devID: bind.out_devid, vfio: vfio, pSMMU: pSMMU, streamID: streamID)
    }

    /// `dup(2)` of a VFIO cdev descriptor: a new number for the same open file, e.g. the one a VMM
    /// hands the daemon with SET_DEV_ID.
    public func duplicate(vfio: Int32) throws(Errno) -> Int32 {
        try state.withLock { (state) throws(Errno) -> Int32 in
            guard let descriptor = state.descriptors[vfio], case .vfio = descriptor else { throw .badFileDescriptor }
            return state.allocateDescriptor(descriptor)
        }
    }

    /// `IOMMU_IOAS_ALLOC`: an empty IOAS (mappings are not modelled).
    public func allocateIOAS() -> UInt32 {
        state.withLock { $0.allocateID(.ioas) }
    }

    /// `IOMMU_HWPT_ALLOC` of a nest-parent (stage-2) paging HWPT on `ioas` through `device`, which
    /// gives it a VMID on the device's pSMMU.
    public func allocateNestParent(device: UInt32, ioas: UInt32) throws(Errno) -> UInt32 {
        var alloc = iommu_hwpt_alloc()
        alloc.size = UInt32(MemoryLayout<iommu_hwpt_alloc>.size)
        alloc.flags = UInt32(IOMMU_HWPT_ALLOC_NEST_PARENT)
        alloc.dev_id = device
        alloc.pt_id = ioas
        alloc.data_type = UInt32(IOMMU_HWPT_DATA_NONE)
        if let errno = withUnsafeMutableBytes(of: &alloc, { ioctl(request: .hwptAlloc, argument: $0) }) { throw errno }
        return alloc.out_hwpt_id
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` on `vfio`, as the VMM makes it.
    public func attach(vfio: Int32, to ptID: UInt32) throws(Errno) {
        var attach = vfio_device_attach_iommufd_pt()
        attach.argsz = UInt32(MemoryLayout<vfio_device_attach_iommufd_pt>.size)
        attach.pt_id = ptID
        if let errno = withUnsafeMutableBytes(of: &attach, {
            ioctl(vfioDevice: FileDescriptor(rawValue: vfio), request: .attachIOMMUFDPT, argument: $0)
        }) { throw errno }
    }

    // MARK: - The pSMMU

    /// A pSMMU writes `record` to its event queue; the kernel's event thread handles it
    /// (`arm_smmu_handle_event`).
    @discardableResult
    public func raiseEvent(pSMMU: Int, _ record: EventRecord) -> EventDisposition {
        state.withLock { $0.raiseEvent(pSMMU: pSMMU, record) }
    }

    // MARK: - IOMMUFDDevice

    public func ioctl(request: IOMMUFDRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        state.withLock { $0.ioctl(request: request, argument: argument) }
    }

    public func read(eventQueue: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, Errno> {
        state.withLock { $0.readEvents(descriptor: eventQueue.rawValue, into: buffer) }
    }

    /// The eventfd that stands in for the poll of the model's vEVENTQ `eventQueue` (readable while its
    /// `deliver` list is not empty); `nil` for another descriptor, or a closed one.
    public func readinessDescriptor(eventQueue: FileDescriptor) -> FileDescriptor? {
        state.withLock { state in
            guard case .veventq(let id)? = state.descriptors[eventQueue.rawValue], let readiness = state.veventq(id)?.readiness else {
                return nil
            }
            return FileDescriptor(rawValue: readiness)
        }
    }

    public func close(eventQueue: FileDescriptor) {
        _ = state.withLock { $0.close(eventQueue.rawValue) }
    }

    public func ioctl(vfioDevice: FileDescriptor, request: VFIODeviceRequest,
                      argument: UnsafeMutableRawBufferPointer) -> Errno? {
        state.withLock { $0.vfioIoctl(descriptor: vfioDevice.rawValue, request: request, argument: argument) }
    }

    public func close(vfioDevice: FileDescriptor) {
        _ = state.withLock { $0.close(vfioDevice.rawValue) }
    }

    /// `close(2)` of any descriptor the model handed out, e.g. the VMM's own VFIO descriptor.
    /// - Throws: `EBADF` for a number that is not open.
    public func close(descriptor: Int32) throws(Errno) {
        if let errno = state.withLock({ $0.close(descriptor) }) { throw errno }
    }

    // MARK: - Introspection

    /// A live object: its id and kind.
    public struct LiveObject: Hashable, Sendable, CustomStringConvertible {
        public var id: UInt32
        public var kind: ObjectKind
        public var description: String { "\(kind)#\(id)" }
    }

    /// Every object in the iommufd, by id.
    public func liveObjects() -> [LiveObject] {
        state.withLock { state in
            state.objects.keys.sorted().compactMap { id in state.objects[id].map { LiveObject(id: id, kind: $0.kind) } }
        }
    }

    /// The live objects of one kind.
    public func liveObjects(_ kind: ObjectKind) -> [UInt32] {
        liveObjects().filter { $0.kind == kind }.map(\.id)
    }

    /// The HWPT `dev_id` is attached to, or `nil` when it is detached (blocked) or not bound.
    public func attachment(ofDevice devID: UInt32) -> UInt32? {
        state.withLock { $0.device(devID)?.attached }
    }

    /// The device's vmaster (`arm_smmu_master::vmaster`): the viommu and vSID its events are reported with.
    public func vmaster(ofDevice devID: UInt32) -> (viommu: UInt32, virtualStreamID: StreamID)? {
        state.withLock { $0.device(devID)?.vmaster.map { ($0.viommu, $0.virtualStreamID) } }
    }

    /// The VMID of a viommu (its S2 parent's) or of a nest-parent HWPT.
    public func vmid(of id: UInt32) -> VMID? {
        state.withLock { $0.viommu(id)?.vmid ?? $0.paging(id)?.vmid }
    }

    /// The vdevices of a viommu: virtual StreamID → vdevice id.
    public func vdevices(ofViommu id: UInt32) -> [StreamID: UInt32] {
        state.withLock { state in
            Dictionary(uniqueKeysWithValues: (state.viommu(id)?.vdevs ?? [:]).map { (StreamID(truncatingIfNeeded: $0.key), $0.value) })
        }
    }

    /// The vSTE words of a nested HWPT as the kernel kept them (EATS cleared).
    public func nestedSTE(of hwpt: UInt32) -> (UInt64, UInt64)? {
        state.withLock { $0.nested(hwpt)?.steWords }
    }

    /// The commands pSMMU `pSMMU` took from its command queue, in order, skipped ones included.
    public func issuedCommands(pSMMU: Int) -> [IssuedCommand] {
        state.withLock { $0.smmus[pSMMU].issued }
    }

    /// The commands pSMMU `pSMMU` executed, in order: ``issuedCommands(pSMMU:)`` less the skipped ones.
    public func executedCommands(pSMMU: Int) -> [Command] {
        issuedCommands(pSMMU: pSMMU).filter { $0.skipped == nil }.map(\.command)
    }

    /// Forgets the commands recorded so far.
    public func clearIssuedCommands() {
        state.withLock { state in
            for index in state.smmus.indices { state.smmus[index].issued = [] }
        }
    }

    /// The events waiting on a vEVENTQ (the lost-events header not counted).
    public func pendingEvents(veventq id: UInt32) -> Int {
        state.withLock { Int($0.veventq(id)?.numEvents ?? 0) }
    }

    /// The descriptor numbers the model handed out that are open.
    public func openDescriptors() -> [Int32] {
        state.withLock { $0.descriptors.keys.sorted() }
    }

    /// The descriptors closed so far, in order.
    public func closedDescriptors() -> [Int32] {
        state.withLock { $0.closedDescriptors }
    }

    /// Why `id` cannot be destroyed now (empty when it can, or when it does not exist).
    public func holders(of id: UInt32) -> [String] {
        state.withLock { $0.holders(of: id) }
    }
}
