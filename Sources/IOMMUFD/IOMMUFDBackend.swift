import CIOMMUFD
import PSMMU
import SMMUv3
import SystemPackage
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

/// A physical SMMUv3 driven through Linux iommufd (`/dev/iommu`, Linux 6.13 and later): one viommu
/// per VM on this pSMMU, vdevices for the VM's devices behind it, nested stage-1 HWPTs from guest
/// STEs attached to the devices, and guest invalidation commands forwarded in whole batches.
///
/// **Devices.** The VMM hands over each device's VFIO cdev (SET_DEV_ID), and the backend attaches the
/// device itself with `VFIO_DEVICE_ATTACH_IOMMUFD_PT` (``attachDevice(_:to:)``): to its nested HWPT, to
/// the viommu's abort or bypass HWPT (allocated with the viommu, as QEMU's `smmuv3_accel_alloc_viommu`
/// does), or back to the nest parent, where the VMM had it, before the vdevice goes
/// (``destroyVDevice(_:)``). The pSMMU's ID registers are read once per viommu with
/// `IOMMU_GET_HW_INFO` (``hardwareInfo(viommu:)``).
///
/// Every syscall goes through an ``IOMMUFDDevice``: ``SystemIOMMUFD`` on a host, a fake in tests.
/// The iommufd is opened at the first ``attachViommu(_:)``, not at init, so a host without
/// `/dev/iommu` can build the backend and gets a clear ``BackendError/Kind/unavailable`` error when it
/// first tries to use it. An iommufd a VMM hands over can be adopted instead (``init(name:adopting:configuration:)``),
/// which puts vsmmud's objects in the VMM's iommufd context, next to its devices and nest-parent HWPT.
///
/// **Invalidation.** ``invalidate(viommu:commands:)`` sends the batch with `IOMMU_HWPT_INVALIDATE` on the
/// viommu: `data_type` `IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`, `entry_len` 16, the commands' own
/// 16 bytes as the entries (no copy on a little-endian host), at most
/// ``Configuration/maximumEntriesPerCall`` per call. The ioctl returns once the hardware completed
/// the commands (the kernel syncs every 63). A failed call is read with ``HWPTInvalidateOutcome``:
/// everything from the last 63-command chunk boundary at or below the reported `entry_num` on is
/// treated as not done; for `EIO`, which names the one command the kernel refused, the accepted but
/// never issued commands before it are sent again, so the result stops exactly at the refused
/// command with `CERROR_ILL`. Other errnos map per ``CommandQueueError/init(iommufdInvalidationErrno:)``.
///
/// **Events.** With ``Configuration/eventQueueDepth`` set, each viommu gets a vEVENTQ
/// (`IOMMU_VEVENTQ_ALLOC`, Linux 6.15). With a sink (``setEventSink(_:)``) the backend's
/// ``VEventWatcher`` (one thread and one epoll instance for every backend that shares it) reads each
/// vEVENTQ as it becomes readable and pushes what it read to the sink; its descriptor is added to the
/// watcher as the viommu is attached or restored and removed before it is closed at detach (see the
/// concurrency notes in `VEventWatcher.swift`). Without a sink ``takeEvents(viommu:)`` reads it without
/// blocking. On a kernel without the ioctl (`ENOTTY`) the viommu works without events and
/// ``takeEvents(viommu:)`` returns none.
///
/// **Handles.** The backend only destroys objects it allocated itself: an unknown handle is refused with
/// ``BackendError/Kind/unknownHandle`` before any ioctl, so a wrong handle can never destroy another
/// object of a shared iommufd.
///
/// Thread safety: control-path calls and ``invalidate(viommu:commands:)`` may come from any thread. No
/// lock is held across an `IOMMU_HWPT_INVALIDATE`, so different viommus are served concurrently.
public final class IOMMUFDBackend: PSMMUBackend {
    /// How the backend uses the kernel interface.
    public struct Configuration: Hashable, Sendable {
        /// The most commands one `IOMMU_HWPT_INVALIDATE` carries; longer batches are split into several
        /// calls, in order. The kernel allocates a copy of each call's array, so this bounds that.
        /// Default 1008: 16 whole kernel chunks of 63.
        public var maximumEntriesPerCall: Int
        /// The kernel's chunk, `CMDQ_BATCH_ENTRIES - 1`: 63 wherever `BITS_PER_LONG` is 64 (every
        /// arm64 kernel). Used to read `entry_num` after a failure.
        public var kernelChunkEntries: Int
        /// The depth of the vEVENTQ allocated with each viommu, or `nil` for none.
        public var eventQueueDepth: UInt32?

        public init(maximumEntriesPerCall: Int = 1008,
                    kernelChunkEntries: Int = HWPTInvalidateOutcome.kernelChunkEntries,
                    eventQueueDepth: UInt32? = 64) {
            self.maximumEntriesPerCall = maximumEntriesPerCall
            self.kernelChunkEntries = kernelChunkEntries
            self.eventQueueDepth = eventQueueDepth
        }
    }

    public let name: String
    public let configuration: Configuration

    /// The thread that watches the vEVENTQs while a sink is set.
    public let eventWatcher: VEventWatcher

    private let openDevice: @Sendable () throws(BackendError) -> any IOMMUFDDevice
    private let state = Locked(State())
    private let statistics = Locked(Statistics())
    /// Serialises what adds a vEVENTQ to the watcher or takes one out of it and closes it (attach,
    /// detach, restore, setEventSink), so that a descriptor is never added after its detach retired it.
    private let eventQueueLifecycle = Locked(())

    /// A backend on the iommufd device node at `devicePath`, opened at the first attach.
    ///
    /// When the node cannot be opened, every ``attachViommu(_:)`` fails with
    /// ``BackendError/Kind/unavailable`` and the `open(2)` errno.
    public convenience init(name: String, devicePath: FilePath = SystemIOMMUFD.defaultPath,
                            configuration: Configuration = Configuration()) {
        self.init(name: name, configuration: configuration) { () throws(BackendError) -> any IOMMUFDDevice in
            do throws(Errno) {
                return try SystemIOMMUFD.open(devicePath)
            } catch {
                throw BackendError(
                    .unavailable, errno: error.rawValue,
                    "no \(devicePath): the host kernel lacks iommufd (CONFIG_IOMMUFD) or the device node is not accessible (\(error)); use the simulated backend")
            }
        }
    }

    /// A backend on an iommufd handed over by a VMM. The backend owns the descriptor from now on and
    /// closes it when released.
    public convenience init(name: String, adopting iommufd: FileDescriptor,
                            configuration: Configuration = Configuration()) {
        self.init(name: name, device: SystemIOMMUFD(adopting: iommufd), configuration: configuration)
    }

    /// A backend on an already open iommufd: a ``SystemIOMMUFD``, or a test's fake.
    public convenience init(name: String, device: any IOMMUFDDevice, configuration: Configuration = Configuration(),
                            eventWatcher: VEventWatcher = .shared) {
        self.init(name: name, configuration: configuration, eventWatcher: eventWatcher) { device }
    }

    /// A backend that obtains its iommufd from `opening` at the first attach (and again at the next
    /// attach, if it failed), whose vEVENTQs `eventWatcher` watches while a sink is set.
    public init(name: String, configuration: Configuration = Configuration(), eventWatcher: VEventWatcher = .shared,
                opening: @escaping @Sendable () throws(BackendError) -> any IOMMUFDDevice) {
        self.name = name
        self.configuration = configuration
        self.eventWatcher = eventWatcher
        self.openDevice = opening
    }

    /// Takes the backend's vEVENTQs out of the watcher (the descriptors themselves go with the VMM's
    /// iommufd, as before).
    deinit {
        let tokens = state.withLock { $0.viommus.values.compactMap { $0.eventQueue?.token } }
        for token in tokens { eventWatcher.remove(token) }
    }

    // MARK: - Counters

    public var counters: BackendCounters { statistics.withLock { $0.counters } }

    /// `IOMMU_HWPT_INVALIDATE` calls made, re-sent chunks included.
    public var invalidateIoctlCount: UInt64 { statistics.withLock { $0.invalidateIoctls } }

    /// Events the vEVENTQs reported lost (queue overflow).
    public var lostEventCount: UInt64 { statistics.withLock { $0.lostEvents } }

    /// Whether `viommu` has a vEVENTQ that ``takeEvents(viommu:)`` reads.
    public func hasEventQueue(_ viommu: ViommuHandle) -> Bool {
        state.withLock { $0.viommus[viommu]?.eventQueue != nil }
    }

    // MARK: - viommu

    /// Allocates an ARM SMMUv3 viommu through `request.hostDeviceID` on the nest-parent HWPT
    /// `request.nestParentHWPT`, with what its devices need, the way QEMU's `smmuv3_accel_alloc_viommu`
    /// does:
    ///
    /// 1. `IOMMU_GET_HW_INFO` of the device: the pSMMU's ID registers (``hardwareInfo(viommu:)``);
    /// 2. `IOMMU_VIOMMU_ALLOC` (24-byte form);
    /// 3. two nested HWPTs on it, `IOMMU_HWPT_ALLOC` with the vSTEs abort (V=1, CONFIG=abort) and bypass
    ///    (V=1, CONFIG=bypass), which ``attachDevice(_:to:)`` uses for ``DeviceDomain/abort`` and
    ///    ``DeviceDomain/bypass``;
    /// 4. the vEVENTQ, when configured (`IOMMU_VEVENTQ_ALLOC`).
    ///
    /// A failed step undoes the ones before it. Opens the iommufd first if this is the first use.
    /// - Throws: ``BackendError/Kind/unavailable`` when the iommufd cannot be opened or the kernel or the
    ///   pSMMU lacks nesting; otherwise the kind of the errno (``BackendError/Kind/init(iommufdErrno:)``).
    public func attachViommu(_ request: ViommuAttachRequest) throws(BackendError) -> ViommuHandle {
        let device = try openedDevice()
        let idRegisters = try readHardwareInfo(hostDeviceID: request.hostDeviceID, on: device)

        var alloc = iommu_viommu_alloc()
        alloc.size = UInt32(MemoryLayout<iommu_viommu_alloc>.size)
        alloc.flags = 0
        alloc.type = UInt32(IOMMU_VIOMMU_TYPE_ARM_SMMUV3)
        alloc.dev_id = request.hostDeviceID
        alloc.hwpt_id = request.nestParentHWPT
        if let errno = perform(.viommuAlloc, &alloc, on: device) {
            throw failure(.viommuAlloc, errno,
                          "for dev_id \(request.hostDeviceID) on nest-parent hwpt_id \(request.nestParentHWPT)")
        }
        let viommu = ViommuHandle(rawValue: alloc.out_viommu_id)

        var allocated: [UInt32] = []
        func undo() {
            for id in allocated.reversed() { _ = destroyObject(id, on: device) }
            _ = destroyObject(viommu.rawValue, on: device)
        }
        let abort: UInt32, bypass: UInt32
        do {
            abort = try allocateHWPT(vSTE: Self.abortSTE, hostDeviceID: request.hostDeviceID, viommu: viommu, on: device)
            allocated.append(abort)
            bypass = try allocateHWPT(vSTE: Self.bypassSTE, hostDeviceID: request.hostDeviceID, viommu: viommu, on: device)
            allocated.append(bypass)
        } catch {
            undo()
            throw error
        }
        try eventQueueLifecycle.withLock { _ throws(BackendError) in
            var eventQueue: EventQueue?
            if let depth = configuration.eventQueueDepth {
                do throws(BackendError) {
                    eventQueue = try allocateEventQueue(for: viommu, depth: depth, on: device)
                    try watch(&eventQueue)
                } catch {
                    if let queue = eventQueue {
                        device.close(eventQueue: queue.descriptor)
                        _ = destroyObject(queue.id, on: device)
                    }
                    undo()
                    throw error
                }
            }
            state.withLock {
                $0.viommus[viommu] = ViommuRecord(eventQueue: eventQueue, nestParent: request.nestParentHWPT,
                                                  abortHWPT: abort, bypassHWPT: bypass, idRegisters: idRegisters)
            }
        }
        statistics.withLock { $0.counters.viommusAttached += 1 }
        return viommu
    }

    /// The vSTE of the abort HWPT: V=1, CONFIG=abort (QEMU's `abort_data`).
    static let abortSTE = StreamTableEntry.abort
    /// The vSTE of the bypass HWPT: V=1, CONFIG=bypass (QEMU's `bypass_data`).
    static let bypassSTE = StreamTableEntry.bypass

    /// The pSMMU's ID registers, read at ``attachViommu(_:)`` with `IOMMU_GET_HW_INFO`.
    public func hardwareInfo(viommu: ViommuHandle) throws(BackendError) -> IDRegisters {
        try state.withLock { (state) throws(BackendError) -> IDRegisters in
            guard let record = state.viommus[viommu] else { throw unknown(viommu) }
            return record.idRegisters
        }
    }

    /// `IOMMU_GET_HW_INFO` of `hostDeviceID` (`iommufd_get_hw_info` → `arm_smmu_hw_info`, which reads
    /// IDR0-5, IIDR and AIDR from the SMMU with `readl_relaxed`).
    /// - Throws: ``BackendError/Kind/unavailable`` when the device's IOMMU is not an ARM SMMUv3.
    private func readHardwareInfo(hostDeviceID: UInt32, on device: any IOMMUFDDevice) throws(BackendError) -> IDRegisters {
        var data = iommu_hw_info_arm_smmuv3()
        var info = iommu_hw_info()
        info.size = UInt32(MemoryLayout<iommu_hw_info>.size)
        info.dev_id = hostDeviceID
        info.data_len = UInt32(MemoryLayout<iommu_hw_info_arm_smmuv3>.size)
        let errno = withUnsafeMutableBytes(of: &data) { payload -> Errno? in
            info.data_uptr = UInt64(UInt(bitPattern: payload.baseAddress))
            return perform(.getHWInfo, &info, on: device)
        }
        if let errno { throw failure(.getHWInfo, errno, "of dev_id \(hostDeviceID)") }
        guard info.out_data_type == UInt32(IOMMU_HW_INFO_TYPE_ARM_SMMUV3) else {
            throw BackendError(.unavailable, "\(name): dev_id \(hostDeviceID) is behind an IOMMU of type \(info.out_data_type), not an ARM SMMUv3")
        }
        let idr = withUnsafeBytes(of: data.idr) { Array($0.bindMemory(to: UInt32.self)).map { UInt32(littleEndian: $0) } }
        return IDRegisters(idr: idr, iidr: UInt32(littleEndian: data.iidr), aidr: UInt32(littleEndian: data.aidr))
    }

    /// Destroys `viommu`: first its vEVENTQ (descriptor closed, object destroyed: the queue holds a
    /// reference on the viommu), then its bypass and abort HWPTs, then the viommu.
    ///
    /// Refused with ``BackendError/Kind/busy`` before any ioctl while vdevices or HWPTs this backend
    /// allocated on it remain. When the kernel refuses a destroy, the handle stays attached with what is
    /// left; its vEVENTQ is allocated again when possible (events in the old queue are lost).
    public func detachViommu(_ viommu: ViommuHandle) throws(BackendError) {
        try eventQueueLifecycle.withLock { _ throws(BackendError) in try detachLocked(viommu) }
    }

    /// ``detachViommu(_:)`` with the event-queue lifecycle lock held.
    private func detachLocked(_ viommu: ViommuHandle) throws(BackendError) {
        let (record, device) = try state.withLock { (state) throws(BackendError) -> (ViommuRecord, any IOMMUFDDevice) in
            guard let record = state.viommus[viommu], let device = state.device else {
                throw unknown(viommu)
            }
            let vdevices = state.vdevices.values.count { $0.viommu == viommu }
            let hwpts = state.hwpts.values.count { $0 == viommu }
            if vdevices + hwpts > 0 {
                throw BackendError(.busy, "\(name): \(viommu) still has \(vdevices) vdevice(s) and \(hwpts) HWPT(s): destroy them first")
            }
            // Out of the table first, so that invalidate and takeEvents stop using it.
            state.viommus[viommu] = nil
            return (record, device)
        }

        var kept = record
        func keep(_ errno: Errno, _ what: String) -> BackendError {
            if let depth = configuration.eventQueueDepth, record.eventQueue != nil, kept.eventQueue == nil {
                kept.eventQueue = try? allocateEventQueue(for: viommu, depth: depth, on: device)
                do { try watch(&kept.eventQueue) } catch {
                    // Kept without the watcher: takeEvents still reads it.
                }
            }
            state.withLock { $0.viommus[viommu] = kept }
            return failure(.destroy, errno, what)
        }
        if let queue = record.eventQueue {
            // Out of the watcher, then no reader (the watcher's delivery or a takeEvents) left on it,
            // then closed (VEventWatcher.swift, the detach race).
            if let token = queue.token { eventWatcher.remove(token) }
            queue.reader.retire()
            // The descriptor holds a reference on the vEVENTQ, and the vEVENTQ one on the viommu
            // (a viommu with a vEVENTQ is EBUSY).
            device.close(eventQueue: queue.descriptor)
            kept.eventQueue = nil
            // A duplicate of the descriptor held elsewhere keeps the file, and with it the reference, a
            // moment longer: systemd's fd store drops its copy when it processes the daemon's
            // FDSTOREREMOVE=1, a datagram it reads after this call may run. Until the file's last
            // reference goes (`iommufd_veventq_fops_release`) the destroy answers EBUSY: retried for
            // at most ~200 ms, then refused as any destroy.
            var refusal = destroyObject(queue.id, on: device)
            var busyRetries = 0
            while refusal == .resourceBusy, busyRetries < 200 {
                busyRetries += 1
                usleep(1_000)
                refusal = destroyObject(queue.id, on: device)
            }
            if let errno = refusal {
                state.withLock { $0.viommus[viommu] = kept }
                throw failure(.destroy, errno, "of the vEVENTQ \(queue.id) of \(viommu)")
            }
        }
        for (id, what) in [(record.bypassHWPT, "bypass"), (record.abortHWPT, "abort")] where id != 0 {
            if let errno = destroyObject(id, on: device) { throw keep(errno, "of the \(what) HWPT \(id) of \(viommu)") }
            if what == "bypass" { kept.bypassHWPT = 0 } else { kept.abortHWPT = 0 }
        }
        if let errno = destroyObject(viommu.rawValue, on: device) {
            throw keep(errno, "of \(viommu)")
        }
    }

    // MARK: - vdevice and attachment

    /// Gives `device` the vSID `virtualStreamID` on `viommu` (`IOMMU_VDEVICE_ALLOC`) and keeps its VFIO
    /// descriptor for ``attachDevice(_:to:)``.
    ///
    /// First the device is attached to the viommu's nest parent with `VFIO_DEVICE_ATTACH_IOMMUFD_PT`:
    /// that is where the VMM had it (QEMU attaches a device to its S2 HWPT when it sets it up) and where it
    /// goes back at ``destroyVDevice(_:)``. For a VMM that did so the call changes nothing
    /// (`iommufd_device_do_replace` returns early for the HWPT the device is on), and it checks the
    /// descriptor: a descriptor that is not a VFIO device cdev bound to this iommufd fails here (`ENOTTY`,
    /// `EBADF`, `EINVAL`) rather than at the guest's first vSTE.
    /// - Throws: ``BackendError/Kind/invalidArgument`` without an ioctl when `device` has no VFIO
    ///   descriptor: the backend could never attach the device, so the guest's vSTEs would not take
    ///   effect. The descriptor is closed when the allocation fails.
    public func allocateVDevice(viommu: ViommuHandle, device host: HostDevice,
                                virtualStreamID: StreamID) throws(BackendError) -> VDeviceHandle {
        let device: any IOMMUFDDevice
        do { device = try self.device(of: viommu) } catch {
            discard(host)
            throw error
        }
        guard let fd = host.vfioDevice else {
            throw BackendError(.invalidArgument, "\(name): dev_id \(host.id) came without its VFIO device cdev: the backend attaches the device, so SET_DEV_ID must pass it")
        }
        let vfio = FileDescriptor(rawValue: fd)
        let nestParent = state.withLock { $0.viommus[viommu]?.nestParent ?? 0 }
        if let errno = attach(vfio, to: nestParent, on: device) {
            device.close(vfioDevice: vfio)
            // ENOTTY/EBADF: not a VFIO cdev; EINVAL: not bound to an iommufd (`vfio_device_fops_unl_ioctl`'s
            // access check) or behind another pSMMU than the nest parent; ENOENT: bound to another iommufd,
            // where the nest parent's id names nothing (`iommufd_device_change_pt`).
            throw BackendError(.unusableDescriptor, errno: errno.rawValue,
                               "\(name): \(VFIODeviceRequest.attachIOMMUFDPT) of dev_id \(host.id) to the nest parent \(nestParent) of \(viommu) failed: \(errno)")
        }
        var alloc = iommu_vdevice_alloc()
        alloc.size = UInt32(MemoryLayout<iommu_vdevice_alloc>.size)
        alloc.viommu_id = viommu.rawValue
        alloc.dev_id = host.id
        alloc.virt_id = UInt64(virtualStreamID)
        if let errno = perform(.vdeviceAlloc, &alloc, on: device) {
            device.close(vfioDevice: vfio)
            throw failure(.vdeviceAlloc, errno,
                          "for dev_id \(host.id) as vSID 0x\(String(virtualStreamID, radix: 16)) on \(viommu)")
        }
        let vdevice = VDeviceHandle(rawValue: alloc.out_vdevice_id)
        state.withLock { $0.vdevices[vdevice] = VDeviceRecord(viommu: viommu, hostDeviceID: host.id, vfio: vfio) }
        statistics.withLock { $0.counters.vdevicesAllocated += 1 }
        return vdevice
    }

    /// Attaches the device of `vdevice` to `domain` with `VFIO_DEVICE_ATTACH_IOMMUFD_PT` on its VFIO
    /// cdev, which replaces the current attachment atomically (`iommufd_device_replace`): the device is
    /// never unattached in between. Attaching to the domain it is on makes no call.
    ///
    /// On Linux 6.15 and later a nested S1_TRANS HWPT needs the device's vdevice on the HWPT's viommu
    /// (`arm_smmu_attach_prepare_vmaster`, else ENOENT): the vdevice exists from
    /// ``allocateVDevice(viommu:device:virtualStreamID:)`` on, so that order holds.
    /// - Throws: ``BackendError/Kind/invalidArgument`` for a nested HWPT of another viommu, before any
    ///   ioctl; otherwise the kind of the errno.
    public func attachDevice(_ vdevice: VDeviceHandle, to domain: DeviceDomain) throws(BackendError) {
        let (record, ptID, device) = try state.withLock { (state) throws(BackendError) -> (VDeviceRecord, UInt32, any IOMMUFDDevice) in
            guard let record = state.vdevices[vdevice], let device = state.device else { throw unknown(vdevice) }
            return (record, try self.ptID(of: domain, for: vdevice, record, in: state), device)
        }
        guard record.domain != domain else { return }
        guard let vfio = record.vfio else { throw pendingCdev(vdevice, record, "attach it to \(domain)") }
        if let errno = attach(vfio, to: ptID, on: device) {
            throw BackendError(BackendError.Kind(iommufdErrno: errno), errno: errno.rawValue,
                               "\(name): \(VFIODeviceRequest.attachIOMMUFDPT) of dev_id \(record.hostDeviceID) to \(domain) (pt_id \(ptID)) failed: \(errno)")
        }
        state.withLock { $0.vdevices[vdevice]?.domain = domain }
    }

    /// The `pt_id` of `domain` for `vdevice`'s device (`record`), as `VFIO_DEVICE_ATTACH_IOMMUFD_PT` takes it.
    /// - Throws: ``BackendError/Kind/invalidArgument`` for a nested HWPT of another viommu.
    private func ptID(of domain: DeviceDomain, for vdevice: VDeviceHandle, _ record: VDeviceRecord,
                      in state: State) throws(BackendError) -> UInt32 {
        guard let viommu = state.viommus[record.viommu] else { throw unknown(vdevice) }
        switch domain {
        case .nested(let hwpt):
            guard state.hwpts[hwpt] == record.viommu else {
                throw BackendError(.invalidArgument, "\(name): \(hwpt) is not a nested HWPT of \(record.viommu), where \(vdevice) is")
            }
            return hwpt.rawValue
        case .abort: return viommu.abortHWPT
        case .bypass: return viommu.bypassHWPT
        case .nestParent: return viommu.nestParent
        }
    }

    /// The refusal of an operation that needs the VFIO cdev of a vdevice re-adopted without it.
    private func pendingCdev(_ vdevice: VDeviceHandle, _ record: VDeviceRecord, _ what: String) -> BackendError {
        BackendError(.invalidArgument,
                     "\(name): cannot \(what): the VFIO cdev of dev_id \(record.hostDeviceID) (\(vdevice)) has not been handed back since the restart (SET_DEV_ID with FD_ATTACHED repeating its registration hands it back)")
    }

    /// Closes `host`'s VFIO descriptor through the iommufd seam (`close(2)` when no iommufd is open yet).
    public func discard(_ host: HostDevice) {
        guard let fd = host.vfioDevice else { return }
        if let device = state.withLock({ $0.device }) {
            device.close(vfioDevice: FileDescriptor(rawValue: fd))
        } else {
            try? FileDescriptor(rawValue: fd).close()
        }
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` of `vfio` to `ptID` (`vfio_df_ioctl_attach_pt`: attach, or
    /// `iommufd_device_replace` when the device is attached already).
    private func attach(_ vfio: FileDescriptor, to ptID: UInt32, on device: any IOMMUFDDevice) -> Errno? {
        var attach = vfio_device_attach_iommufd_pt()
        attach.argsz = UInt32(MemoryLayout<vfio_device_attach_iommufd_pt>.size)
        attach.flags = 0
        attach.pt_id = ptID
        return withUnsafeMutableBytes(of: &attach) {
            device.ioctl(vfioDevice: vfio, request: .attachIOMMUFDPT, argument: $0)
        }
    }

    /// Puts the device back on the viommu's nest parent if it is elsewhere (the kernel would otherwise
    /// keep it on a nested HWPT whose vdevice is gone), destroys the vdevice and closes the VFIO
    /// descriptor.
    ///
    /// A vdevice re-adopted without its cdev (``restoreViommu(_:)``) cannot be moved: it is destroyed
    /// where its device is, and forgotten even when the kernel refuses (the error says so), so that a
    /// teardown always completes. What the kernel still holds then goes with the VMM's cdev and iommufd
    /// (`vfio_df_unbind_iommufd` detaches the device at the cdev's release, `iommufd_fops_release`
    /// destroys every object at the iommufd's).
    public func destroyVDevice(_ vdevice: VDeviceHandle) throws(BackendError) {
        let pendingCdev = state.withLock { state -> (record: VDeviceRecord, device: (any IOMMUFDDevice)?)? in
            guard let record = state.vdevices[vdevice], record.vfio == nil else { return nil }
            state.vdevices[vdevice] = nil
            return (record, state.device)
        }
        if let (pending, opened) = pendingCdev {
            guard let device = opened else { throw unknown(vdevice) }
            if let errno = destroyObject(vdevice.rawValue, on: device) {
                throw BackendError(BackendError.Kind(iommufdErrno: errno), errno: errno.rawValue,
                                   "\(name): \(IOMMUFDRequest.destroy) of \(vdevice), re-adopted without its VFIO cdev and left on \(pending.domain), failed: \(errno); forgotten: the kernel frees it with the VMM's cdev and iommufd")
            }
            return
        }
        try attachDevice(vdevice, to: .nestParent)
        let (record, device) = try state.withLock { (state) throws(BackendError) -> (VDeviceRecord, any IOMMUFDDevice) in
            guard let record = state.vdevices.removeValue(forKey: vdevice), let device = state.device else {
                throw unknown(vdevice)
            }
            return (record, device)
        }
        if let errno = destroyObject(vdevice.rawValue, on: device) {
            state.withLock { $0.vdevices[vdevice] = record }
            throw failure(.destroy, errno, "of \(vdevice)")
        }
        if let vfio = record.vfio { device.close(vfioDevice: vfio) }
    }

    // MARK: - nested HWPT

    /// Installs a nested stage-1 HWPT from a guest STE.
    ///
    /// The STE is checked with ``StreamTableEntry/nestingValidated()`` first: a vSTE the kernel would
    /// refuse with `EIO` is refused here with ``BackendError/Kind/invalidArgument``, before any ioctl.
    /// Only words 0 and 1 travel (`iommu_hwpt_arm_smmuv3`); the kernel and the pSMMU read the CDs from
    /// guest memory through stage 2, so `contextDescriptors` is not used by this backend.
    public func allocateNestedHWPT(viommu: ViommuHandle, hostDeviceID: UInt32, ste: StreamTableEntry,
                                   contextDescriptors: [ContextDescriptor]) throws(BackendError) -> HWPTHandle {
        let validated: StreamTableEntry
        do {
            validated = try ste.nestingValidated()
        } catch {
            throw BackendError(.invalidArgument, "\(name): vSTE for dev_id \(hostDeviceID) refused before IOMMU_HWPT_ALLOC: \(error)")
        }
        let device = try device(of: viommu)
        let hwpt = HWPTHandle(rawValue: try allocateHWPT(vSTE: validated, hostDeviceID: hostDeviceID, viommu: viommu, on: device))
        state.withLock { $0.hwpts[hwpt] = viommu }
        statistics.withLock { $0.counters.hwptsAllocated += 1 }
        return hwpt
    }

    /// `IOMMU_HWPT_ALLOC` of a nested HWPT on `viommu` from words 0 and 1 of `vSTE`
    /// (`IOMMU_HWPT_DATA_ARM_SMMUV3`). EIO, "reserved for invalid STE data" (`arm_smmu_validate_vste`),
    /// is ``BackendError/Kind/invalidArgument``.
    private func allocateHWPT(vSTE: StreamTableEntry, hostDeviceID: UInt32, viommu: ViommuHandle,
                              on device: any IOMMUFDDevice) throws(BackendError) -> UInt32 {
        var data = iommu_hwpt_arm_smmuv3()
        data.ste = (vSTE.word(0).littleEndian, vSTE.word(1).littleEndian)
        var alloc = iommu_hwpt_alloc()
        alloc.size = UInt32(MemoryLayout<iommu_hwpt_alloc>.size)
        alloc.flags = 0
        alloc.dev_id = hostDeviceID
        alloc.pt_id = viommu.rawValue
        alloc.data_type = UInt32(IOMMU_HWPT_DATA_ARM_SMMUV3)
        alloc.data_len = UInt32(MemoryLayout<iommu_hwpt_arm_smmuv3>.size)
        let errno = withUnsafeMutableBytes(of: &data) { payload -> Errno? in
            alloc.data_uptr = UInt64(UInt(bitPattern: payload.baseAddress))
            return perform(.hwptAlloc, &alloc, on: device)
        }
        if let errno {
            throw failure(.hwptAlloc, errno, "of a nested HWPT for dev_id \(hostDeviceID) on \(viommu)",
                          kind: errno == .ioError ? .invalidArgument : nil)
        }
        return alloc.out_hwpt_id
    }

    public func destroyHWPT(_ hwpt: HWPTHandle) throws(BackendError) {
        let (viommu, device) = try state.withLock { (state) throws(BackendError) -> (ViommuHandle, any IOMMUFDDevice) in
            guard let viommu = state.hwpts.removeValue(forKey: hwpt), let device = state.device else {
                throw unknown(hwpt)
            }
            return (viommu, device)
        }
        if let errno = destroyObject(hwpt.rawValue, on: device) {
            state.withLock { $0.hwpts[hwpt] = viommu }
            throw failure(.destroy, errno, "of \(hwpt)")
        }
    }

    // MARK: - Invalidation

    /// Executes `commands` on `viommu` with as few `IOMMU_HWPT_INVALIDATE` calls as
    /// ``Configuration/maximumEntriesPerCall`` allows, in order, stopping at the first failure; see the
    /// type's documentation for how a failure is read. An empty batch makes no call; a viommu this
    /// backend did not attach fails with `CERROR_ABT` at command 0, without a call.
    public func invalidate(viommu: ViommuHandle, commands: UnsafeBufferPointer<Command>) -> InvalidationResult {
        let result: InvalidationResult
        if commands.isEmpty {
            result = InvalidationResult(completed: 0)
        } else if let device = state.withLock({ $0.viommus[viommu] != nil ? $0.device : nil }) {
            result = execute(commands, on: viommu, device: device)
        } else {
            result = InvalidationResult(completed: 0, failure: InvalidationFailure(
                queueError: .abort, message: "\(name): \(viommu) is not attached"))
        }
        record(result, of: commands)
        return result
    }

    /// Runs `commands` in calls of at most ``Configuration/maximumEntriesPerCall``, stopping at the
    /// first failure.
    private func execute(_ commands: UnsafeBufferPointer<Command>, on viommu: ViommuHandle,
                         device: any IOMMUFDDevice) -> InvalidationResult {
        let limit = min(max(1, configuration.maximumEntriesPerCall), Int(UInt32.max))
        var done = 0
        while done < commands.count {
            let call = UnsafeBufferPointer(rebasing: commands[done ..< min(done + limit, commands.count)])
            let (errno, reported) = issue(call, on: viommu, device: device)
            switch HWPTInvalidateOutcome(entryCount: call.count, errno: errno, reportedEntries: reported,
                                         chunkEntries: configuration.kernelChunkEntries) {
            case .completed:
                done += call.count
            case .refused(let index, let completedBefore):
                // The kernel accepted call[completedBefore ..< index] but never issued it: send it again,
                // so that the batch stops exactly at the refused command.
                if index > completedBefore {
                    let resent = execute(UnsafeBufferPointer(rebasing: call[completedBefore ..< index]),
                                         on: viommu, device: device)
                    if let failure = resent.failure {
                        return InvalidationResult(completed: done + completedBefore + resent.completed, failure: failure)
                    }
                }
                return InvalidationResult(completed: done + index, failure: refusal(of: call[index], on: viommu))
            case .failed(let completedBefore, let errno):
                return InvalidationResult(completed: done + completedBefore, failure: InvalidationFailure(
                    queueError: CommandQueueError(iommufdInvalidationErrno: errno), errno: errno.rawValue,
                    message: "\(name): IOMMU_HWPT_INVALIDATE on \(viommu) failed after \(done + completedBefore) command(s): \(errno)"))
            }
        }
        return InvalidationResult(completed: done)
    }

    /// One `IOMMU_HWPT_INVALIDATE` of `commands` on `viommu`.
    /// - Returns: the errno, and the `entry_num` the kernel wrote back.
    private func issue(_ commands: UnsafeBufferPointer<Command>, on viommu: ViommuHandle,
                       device: any IOMMUFDDevice) -> (Errno?, UInt32) {
        statistics.withLock { $0.invalidateIoctls += 1 }
        var request = iommu_hwpt_invalidate()
        request.size = UInt32(MemoryLayout<iommu_hwpt_invalidate>.size)
        request.hwpt_id = viommu.rawValue
        request.data_type = UInt32(IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3)
        request.entry_len = UInt32(MemoryLayout<iommu_viommu_arm_smmuv3_invalidate>.size)
        request.entry_num = UInt32(commands.count)
        let errno: Errno?
        if Self.commandsAreKernelEntries {
            // A Command is the entry: two little-endian words, 16 bytes; the kernel reads it in place.
            request.data_uptr = UInt64(UInt(bitPattern: commands.baseAddress))
            errno = perform(.hwptInvalidate, &request, on: device)
        } else {
            var entries = commands.map { iommu_viommu_arm_smmuv3_invalidate(cmd: ($0.w0.littleEndian, $0.w1.littleEndian)) }
            errno = entries.withUnsafeMutableBytes { bytes -> Errno? in
                request.data_uptr = UInt64(UInt(bitPattern: bytes.baseAddress))
                return perform(.hwptInvalidate, &request, on: device)
            }
        }
        return (errno, request.entry_num)
    }

    /// Whether a buffer of ``Command`` is, byte for byte, an array of
    /// `iommu_viommu_arm_smmuv3_invalidate`: a little-endian host and `Command` laid out as `w0`, `w1`.
    public static let commandsAreKernelEntries: Bool = {
        #if _endian(little)
        return MemoryLayout<Command>.size == MemoryLayout<iommu_viommu_arm_smmuv3_invalidate>.size
            && MemoryLayout<Command>.stride == MemoryLayout<iommu_viommu_arm_smmuv3_invalidate>.stride
            && MemoryLayout<Command>.offset(of: \Command.w0) == 0
            && MemoryLayout<Command>.offset(of: \Command.w1) == 8
        #else
        return false
        #endif
    }()

    private func refusal(of command: Command, on viommu: ViommuHandle) -> InvalidationFailure {
        let reason: String
        if !command.opcode.isAcceptedOnViommu {
            reason = "\(command.opcode.name) is not a command a viommu takes"
        } else if command.opcode == .atcInv {
            // Linux 7.3 also refuses ATC_INV for a registered vSID when the pSMMU has no ATS (the rig).
            reason = "vSID 0x\(String(command.streamID, radix: 16)) has no vdevice on \(viommu), or the pSMMU or device has no ATS"
        } else if command.opcode == .cfgiCD || command.opcode == .cfgiCDAll {
            reason = "vSID 0x\(String(command.streamID, radix: 16)) has no vdevice on \(viommu)"
        } else {
            reason = "the kernel refused the command"
        }
        return InvalidationFailure(queueError: .illegal, errno: Errno.ioError.rawValue,
                                   message: "\(name): \(command) refused on \(viommu) (EIO): \(reason)")
    }

    private func record(_ result: InvalidationResult, of commands: UnsafeBufferPointer<Command>) {
        var byOpcode: [UInt8: UInt64] = [:]
        for command in commands[..<result.completed] {
            byOpcode[command.opcode.rawValue, default: 0] += 1
        }
        statistics.withLock { statistics in
            statistics.counters.invalidateCalls += 1
            statistics.counters.commandsReceived += UInt64(commands.count)
            statistics.counters.commandsCompleted += UInt64(result.completed)
            if result.failure != nil { statistics.counters.commandsFailed += 1 }
            statistics.counters.commandsByOpcode.merge(byOpcode, uniquingKeysWith: +)
        }
    }

    // MARK: - Events

    /// Reads what the viommu's vEVENTQ holds, without blocking; `[]` when the viommu has none. The pull
    /// path, for a backend without a sink: with one, the watcher reads the queue as it fills (a call
    /// here then only finds what the watcher has not read yet).
    public func takeEvents(viommu: ViommuHandle) -> [EventRecord] {
        guard let reader = state.withLock({ $0.viommus[viommu]?.eventQueue?.reader }) else { return [] }
        // Under the reader's gate: a detach retires the reader (waiting for this read) before it closes
        // the descriptor, so the read never sees a closed or reused descriptor number.
        let batches = reader.gate.withLock { VEventQueueReader.drain(&$0, of: reader).batches }
        return batches.flatMap(\.records)
    }

    /// Where the viommus' events go from now on: with a sink, every vEVENTQ of this backend (and of the
    /// viommus attached or restored later) is added to ``eventWatcher``, whose thread reads it and calls
    /// `sink` with what it read, one ``ViommuEvents`` per run of records between losses
    /// (``ViommuEvents/lostBefore`` after a LOST_EVENTS header or a sequence gap); with `nil` they are
    /// taken out again and ``takeEvents(viommu:)`` reads them. Waits for a delivery in flight to the old
    /// sink (see ``VEventWatcher``): do not call it from the sink. Setting the sink already set changes
    /// nothing.
    public func setEventSink(_ sink: (any ViommuEventSink)?) {
        eventQueueLifecycle.withLock { _ in
            let unchanged = state.withLock { state in
                switch (state.sink, sink) {
                case (nil, nil): return true
                case (let old?, let new?): return old === new
                default: return false
                }
            }
            if unchanged { return }
            let old: [(ViommuHandle, EventQueue)] = state.withLock { state in
                state.sink = sink
                var queues: [(ViommuHandle, EventQueue)] = []
                for (viommu, record) in state.viommus {
                    guard let queue = record.eventQueue else { continue }
                    queues.append((viommu, queue))
                    state.viommus[viommu]?.eventQueue?.token = nil
                }
                return queues
            }
            for (_, queue) in old { if let token = queue.token { eventWatcher.remove(token) } }
            guard sink != nil else { return }
            for (viommu, queue) in old {
                var watched: EventQueue? = queue
                watched?.token = nil
                do { try watch(&watched) } catch { continue }
                state.withLock { $0.viommus[viommu]?.eventQueue?.token = watched?.token }
            }
        }
    }

    /// Adds `queue` to the watcher when a sink is set, recording the token in it. Call with the
    /// event-queue lifecycle lock held.
    /// - Throws: ``BackendError/Kind/failed`` with the `epoll_ctl`, `eventfd` or thread errno.
    private func watch(_ queue: inout EventQueue?) throws(BackendError) {
        guard let current = queue, current.token == nil, let sink = state.withLock({ $0.sink }) else { return }
        do {
            queue?.token = try eventWatcher.add(current.reader, sink: sink)
        } catch {
            throw BackendError(.failed, errno: error.rawValue,
                               "\(name): the vEVENTQ of \(current.reader.viommu) could not be watched: \(error)")
        }
    }

    /// A vEVENTQ's reader, counting into this backend's counters.
    private func reader(of viommu: ViommuHandle, descriptor: FileDescriptor, device: any IOMMUFDDevice,
                        synchronized: Bool) -> VEventQueueReader {
        let statistics = self.statistics
        return VEventQueueReader(viommu: viommu, descriptor: descriptor, device: device, synchronized: synchronized) { records, lost in
            statistics.withLock {
                $0.counters.events += UInt64(records)
                $0.lostEvents += lost
            }
        }
    }

    private func allocateEventQueue(for viommu: ViommuHandle, depth: UInt32,
                                    on device: any IOMMUFDDevice) throws(BackendError) -> EventQueue? {
        var alloc = iommu_veventq_alloc()
        alloc.size = UInt32(MemoryLayout<iommu_veventq_alloc>.size)
        alloc.flags = 0
        alloc.viommu_id = viommu.rawValue
        alloc.type = UInt32(IOMMU_VEVENTQ_TYPE_ARM_SMMUV3)
        alloc.veventq_depth = depth
        if let errno = perform(.veventqAlloc, &alloc, on: device) {
            // A kernel before vEVENTQ (6.13, 6.14): the viommu works, without events.
            if errno == .inappropriateIOCTLForDevice { return nil }
            throw failure(.veventqAlloc, errno, "of depth \(depth) for \(viommu)")
        }
        let descriptor = FileDescriptor(rawValue: Int32(bitPattern: alloc.out_veventq_fd))
        return EventQueue(id: alloc.out_veventq_id, descriptor: descriptor,
                          reader: reader(of: viommu, descriptor: descriptor, device: device, synchronized: true))
    }

    // MARK: - Restart: re-adoption by id

    /// EOPNOTSUPP (95 on Linux), what a nested HWPT answers to `IOMMU_HWPT_INVALIDATE`.
    static let eopnotsupp = Errno(rawValue: 95)

    /// The viommu's kernel object ids, for a later process's ``restoreViommu(_:)``: format 1, then
    /// the viommu, abort HWPT, bypass HWPT and vEVENTQ ids (0: none), little-endian `u32`s.
    public func objects(of viommu: ViommuHandle) throws(BackendError) -> ViommuObjects {
        try state.withLock { (state) throws(BackendError) -> ViommuObjects in
            guard let record = state.viommus[viommu] else { throw unknown(viommu) }
            var bytes: [UInt8] = [1]
            for id in [viommu.rawValue, record.abortHWPT, record.bypassHWPT, record.eventQueue?.id ?? 0] {
                withUnsafeBytes(of: id.littleEndian) { bytes.append(contentsOf: $0) }
            }
            return ViommuObjects(bytes: bytes)
        }
    }

    /// The iommufd (for a ``SystemIOMMUFD``), the vEVENTQ and the VFIO cdevs of `viommu`.
    public func heldDescriptors(of viommu: ViommuHandle) -> HeldDescriptors {
        state.withLock { state in
            guard let record = state.viommus[viommu] else { return HeldDescriptors() }
            var held = HeldDescriptors(iommufd: (state.device as? SystemIOMMUFD)?.descriptor.rawValue,
                                       eventQueue: record.eventQueue?.descriptor.rawValue)
            for (handle, vdevice) in state.vdevices where vdevice.viommu == viommu {
                if let vfio = vdevice.vfio { held.vfioDevices[handle] = vfio.rawValue }
            }
            return held
        }
    }

    /// Re-adopts a viommu a previous daemon process allocated on this iommufd, by its kernel ids: the
    /// objects live in the VMM's iommufd file, which the VMM still holds (`iommufd_fops_release`
    /// destroys them only when the file's last reference goes), so nothing is allocated again, except
    /// a vEVENTQ whose descriptor was lost: it is destroyed by id and allocated again
    /// (`iommufd_veventq_alloc` allows one per type per viommu).
    ///
    /// First the ids are checked to still name what they named: `IOMMU_HWPT_INVALIDATE` with no entry
    /// on the viommu (`iommufd_hwpt_invalidate`: `ENOENT` when the id names nothing, which is what a VMM
    /// that closed its iommufd meanwhile leaves) and on each nested HWPT (`EOPNOTSUPP`: a nested HWPT
    /// takes no invalidation of its own). The ID registers are read again (`IOMMU_GET_HW_INFO`).
    ///
    /// A device whose VFIO cdev did not come back is re-adopted too, its cdev pending: invalidations
    /// need none (they go through the iommufd), the device stays attached where it was (the VMM still
    /// holds the cdev, which holds the attachment: `vfio_df_unbind_iommufd` runs only at its release), and
    /// ``resupply(_:device:)`` takes it when the VMM hands it back. Until then ``attachDevice(_:to:)``
    /// refuses to move that device, with an error that says what is missing.
    /// - Throws: ``BackendError/Kind/unknownHandle`` (errno ENOENT) naming the object that is gone;
    ///   ``BackendError/Kind/invalidArgument`` for objects this backend cannot read. Every descriptor
    ///   was consumed.
    public func restoreViommu(_ restoration: ViommuRestoration) throws(BackendError) -> RestoredViommu {
        try eventQueueLifecycle.withLock { (_) throws(BackendError) -> RestoredViommu in try restoreLocked(restoration) }
    }

    /// ``restoreViommu(_:)`` with the event-queue lifecycle lock held.
    private func restoreLocked(_ restoration: ViommuRestoration) throws(BackendError) -> RestoredViommu {
        func giveUp(_ error: BackendError) -> BackendError {
            restoration.closeDescriptors()
            return error
        }
        let bytes = restoration.objects.bytes
        guard bytes.count == 17, bytes[0] == 1 else {
            throw giveUp(BackendError(.invalidArgument, "\(name): \(bytes.count) bytes of viommu objects are not this backend's format 1"))
        }
        func id(_ n: Int) -> UInt32 { (0 ..< 4).reduce(UInt32(0)) { $0 | UInt32(bytes[1 + 4 * n + $1]) << (8 * UInt32($1)) } }
        let viommu = ViommuHandle(rawValue: id(0)), abort = id(1), bypass = id(2), oldQueue = id(3)
        guard viommu == restoration.handle else {
            throw giveUp(BackendError(.invalidArgument, "\(name): the objects name \(viommu), the snapshot \(restoration.handle)"))
        }
        let device: any IOMMUFDDevice
        do { device = try openedDevice() } catch { throw giveUp(error) }
        func probe(_ id: UInt32, expecting expected: Errno, _ what: String) -> BackendError? {
            let errno = Self.probeObject(id, on: device)
            if errno == .noSuchFileOrDirectory {
                return BackendError(.unknownHandle, errno: errno?.rawValue,
                                    "\(name): \(what) (id \(id)) no longer exists in the iommufd: the VMM closed it since the restart (iommufd_fops_release destroyed its objects)")
            }
            if errno != expected {
                return BackendError(.invalidArgument, errno: errno?.rawValue,
                                    "\(name): id \(id) is not \(what) any more (IOMMU_HWPT_INVALIDATE answered \(errno.map { "\($0)" } ?? "success"))")
            }
            return nil
        }
        // arm_vsmmu_cache_invalidate refuses an empty array (EINVAL), after the id was found.
        var checks: [(UInt32, Errno, String)] = [(viommu.rawValue, .invalidArgument, "\(viommu)"),
                                                 (abort, Self.eopnotsupp, "the abort HWPT of \(viommu)"),
                                                 (bypass, Self.eopnotsupp, "the bypass HWPT of \(viommu)")]
        for d in restoration.devices { if let h = d.nestedHWPT { checks.append((h.handle.rawValue, Self.eopnotsupp, "\(h.handle)")) } }
        for (id, expected, what) in checks {
            if let error = probe(id, expecting: expected, what) { throw giveUp(error) }
        }
        let idRegisters: IDRegisters
        do { idRegisters = try readHardwareInfo(hostDeviceID: restoration.request.hostDeviceID, on: device) } catch { throw giveUp(error) }
        var eventQueue: EventQueue?
        if let fd = restoration.eventQueue, oldQueue != 0 {
            // Read by the previous process: the next sequence number is unknown, so the first item
            // read sets it rather than counting a loss.
            let descriptor = FileDescriptor(rawValue: fd)
            eventQueue = EventQueue(id: oldQueue, descriptor: descriptor,
                                    reader: reader(of: viommu, descriptor: descriptor, device: device, synchronized: false))
        } else {
            if let fd = restoration.eventQueue { device.close(eventQueue: FileDescriptor(rawValue: fd)) }
            if oldQueue != 0 { _ = destroyObject(oldQueue, on: device) }
            if let depth = configuration.eventQueueDepth {
                do { eventQueue = try allocateEventQueue(for: viommu, depth: depth, on: device) } catch {
                    for d in restoration.devices { discard(d.host) }
                    throw error
                }
            }
        }
        do { try watch(&eventQueue) } catch {
            // Restored without the watcher: takeEvents still reads it.
        }
        var restored = RestoredViommu(handle: viommu)
        state.withLock { state in
            state.viommus[viommu] = ViommuRecord(eventQueue: eventQueue, nestParent: restoration.request.nestParentHWPT,
                                                 abortHWPT: abort, bypassHWPT: bypass, idRegisters: idRegisters)
            for d in restoration.devices {
                state.vdevices[d.vdevice] = VDeviceRecord(viommu: viommu, hostDeviceID: d.host.id,
                                                          vfio: d.host.vfioDevice.map(FileDescriptor.init(rawValue:)),
                                                          domain: d.domain)
                restored.vdevices[d.virtualStreamID] = d.vdevice
                if let h = d.nestedHWPT {
                    state.hwpts[h.handle] = viommu
                    restored.nestedHWPTs[d.virtualStreamID] = h.handle
                }
            }
        }
        return restored
    }

    /// A VFIO cdev handed back for a re-adopted vdevice. When the backend holds one already (it survived
    /// the restart) the new descriptor is closed. When the vdevice's cdev is pending, the descriptor is
    /// checked with `VFIO_DEVICE_ATTACH_IOMMUFD_PT` to the HWPT the device is on, which changes nothing
    /// for the right cdev (`iommufd_device_do_replace` returns early for the HWPT the device is on) and
    /// fails for anything else (`ENOTTY`/`EBADF`: no VFIO cdev; `EINVAL`: not bound to an iommufd;
    /// `ENOENT`: bound to another iommufd), and kept.
    /// - Returns: whether the backend kept the descriptor (the cdev was pending).
    /// - Throws: ``BackendError/Kind/unknownHandle`` for a vdevice it does not hold,
    ///   ``BackendError/Kind/invalidArgument`` for another host device, ``BackendError/Kind/unusableDescriptor``
    ///   for a descriptor that is not the device's cdev. The descriptor is closed.
    public func resupply(_ vdevice: VDeviceHandle, device host: HostDevice) throws(BackendError) -> Bool {
        let (found, opened) = state.withLock { ($0.vdevices[vdevice], $0.device) }
        guard let record = found else {
            discard(host)
            throw unknown(vdevice)
        }
        guard record.hostDeviceID == host.id else {
            discard(host)
            throw BackendError(.invalidArgument, "\(name): \(vdevice) is dev_id \(record.hostDeviceID), not \(host.id)")
        }
        guard record.vfio == nil, let device = opened, let fd = host.vfioDevice else {
            discard(host)
            return false
        }
        let ptID: UInt32
        do {
            ptID = try state.withLock { (state) throws(BackendError) -> UInt32 in
                try self.ptID(of: record.domain, for: vdevice, record, in: state)
            }
        } catch {
            discard(host)
            throw error
        }
        let vfio = FileDescriptor(rawValue: fd)
        if let errno = attach(vfio, to: ptID, on: device) {
            device.close(vfioDevice: vfio)
            throw BackendError(.unusableDescriptor, errno: errno.rawValue,
                               "\(name): the descriptor handed back for dev_id \(host.id) (\(vdevice)) is not its VFIO cdev on this iommufd: \(VFIODeviceRequest.attachIOMMUFDPT) to \(record.domain) (pt_id \(ptID)) failed: \(errno)")
        }
        let kept = state.withLock { state -> Bool in
            guard state.vdevices[vdevice] != nil, state.vdevices[vdevice]?.vfio == nil else { return false }
            state.vdevices[vdevice]?.vfio = vfio
            return true
        }
        if !kept { device.close(vfioDevice: vfio) }
        return kept
    }

    // MARK: - Plumbing

    private struct State {
        var device: (any IOMMUFDDevice)?
        var viommus: [ViommuHandle: ViommuRecord] = [:]
        var vdevices: [VDeviceHandle: VDeviceRecord] = [:]
        var hwpts: [HWPTHandle: ViommuHandle] = [:]
        /// Where the watcher delivers the vEVENTQs' events (``setEventSink(_:)``).
        var sink: (any ViommuEventSink)?
    }

    private struct ViommuRecord {
        var eventQueue: EventQueue?
        /// The nest-parent (stage-2) HWPT the viommu was allocated on: where devices go home.
        var nestParent: UInt32
        /// The nested abort and bypass HWPTs (0 once destroyed).
        var abortHWPT: UInt32
        var bypassHWPT: UInt32
        var idRegisters: IDRegisters
    }

    private struct VDeviceRecord {
        var viommu: ViommuHandle
        var hostDeviceID: UInt32
        /// The VMM's VFIO device cdev, bound to the iommufd; owned by the backend. `nil`: pending, a
        /// vdevice re-adopted after a restart whose cdev did not come back yet (``resupply(_:device:)``).
        var vfio: FileDescriptor?
        /// Where the device is attached.
        var domain: DeviceDomain = .nestParent
    }

    private struct EventQueue {
        var id: UInt32
        var descriptor: FileDescriptor
        /// Its reader (decoder and gate), shared with the watcher.
        var reader: VEventQueueReader
        /// Its registration in the watcher, while a sink is set.
        var token: UInt64?
    }

    private struct Statistics {
        var counters = BackendCounters()
        var invalidateIoctls: UInt64 = 0
        var lostEvents: UInt64 = 0
    }

    /// The iommufd, opened now if this is the first use.
    private func openedDevice() throws(BackendError) -> any IOMMUFDDevice {
        try state.withLock { (state) throws(BackendError) -> any IOMMUFDDevice in
            if let device = state.device { return device }
            let device = try openDevice()
            state.device = device
            return device
        }
    }

    /// The iommufd, for an operation on `viommu`, which must be attached.
    private func device(of viommu: ViommuHandle) throws(BackendError) -> any IOMMUFDDevice {
        try state.withLock { (state) throws(BackendError) -> any IOMMUFDDevice in
            guard state.viommus[viommu] != nil, let device = state.device else { throw unknown(viommu) }
            return device
        }
    }

    /// Looks object `id` up in `device`'s iommufd without changing anything: `IOMMU_HWPT_INVALIDATE` with
    /// an empty ARM SMMUv3 array. `iommufd_hwpt_invalidate` finds the id in the file first
    /// (`iommufd_get_object`: `ENOENT` when the file holds no such object); then a viommu refuses the empty
    /// array (`arm_vsmmu_cache_invalidate`: `EINVAL`) and a nested or paging HWPT the data type
    /// (`EOPNOTSUPP`). `ENOTTY`/`EBADF`: `device` is no iommufd.
    /// - Returns: the ioctl's errno (`nil`: it succeeded, which no object of those kinds answers).
    public static func probeObject(_ id: UInt32, on device: any IOMMUFDDevice) -> Errno? {
        var request = iommu_hwpt_invalidate()
        request.size = UInt32(MemoryLayout<iommu_hwpt_invalidate>.size)
        request.hwpt_id = id
        request.data_type = UInt32(IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3)
        request.entry_len = UInt32(MemoryLayout<iommu_viommu_arm_smmuv3_invalidate>.size)
        request.entry_num = 0
        return withUnsafeMutableBytes(of: &request) { device.ioctl(request: .hwptInvalidate, argument: $0) }
    }

    private func perform<Argument>(_ request: IOMMUFDRequest, _ argument: inout Argument,
                                   on device: any IOMMUFDDevice) -> Errno? {
        withUnsafeMutableBytes(of: &argument) { device.ioctl(request: request, argument: $0) }
    }

    private func destroyObject(_ id: UInt32, on device: any IOMMUFDDevice) -> Errno? {
        var destroy = iommu_destroy()
        destroy.size = UInt32(MemoryLayout<iommu_destroy>.size)
        destroy.id = id
        return perform(.destroy, &destroy, on: device)
    }

    private func failure(_ request: IOMMUFDRequest, _ errno: Errno, _ what: String,
                         kind: BackendError.Kind? = nil) -> BackendError {
        BackendError(kind ?? BackendError.Kind(iommufdErrno: errno), errno: errno.rawValue,
                     "\(name): \(request) \(what) failed: \(errno)")
    }

    private func unknown(_ handle: some CustomStringConvertible) -> BackendError {
        BackendError(.unknownHandle, "\(name): \(handle) was not allocated by this backend")
    }
}
