import PSMMU
import SMMUv3
import SystemPackage

/// A command the model's pSMMU took from its command queue, after the kernel's conversion.
public struct IssuedCommand: Hashable, Sendable, CustomStringConvertible {
    /// The physical command: VMID forced to the viommu's, vSID replaced by the pSID.
    public var command: Command
    /// The viommu whose `IOMMU_HWPT_INVALIDATE` issued it.
    public var viommu: UInt32
    /// Which `arm_smmu_cmdq_issue_cmdlist` call on this pSMMU carried it, from 0. Each call ends with
    /// the CMD_SYNC the driver appends (not recorded).
    public var batch: Int
    /// Set when the SMMU refused the command with `CERROR_ILL` and the driver replaced it with a
    /// CMD_SYNC (`arm_smmu_cmdq_skip_err`): it was issued but did nothing.
    public var skipped: IllegalCommandError?

    public init(command: Command, viommu: UInt32, batch: Int, skipped: IllegalCommandError? = nil) {
        self.command = command
        self.viommu = viommu
        self.batch = batch
        self.skipped = skipped
    }

    public var description: String {
        "\(command) (viommu \(viommu), batch \(batch)\(skipped.map { ", skipped: \($0)" } ?? ""))"
    }
}

/// What the kernel did with an event record a pSMMU raised (`arm_smmu_handle_event`).
public enum EventDisposition: Hashable, Sendable {
    /// Queued on the viommu's vEVENTQ with the SID replaced by the vSID (`arm_vmaster_report_event`).
    case queued(veventq: UInt32, virtualStreamID: StreamID)
    /// The vEVENTQ was full: the event was dropped and the lost-events header queued
    /// (`iommufd_viommu_report_event`).
    case lost(veventq: UInt32)
    /// Not forwarded to user space.
    case notForwarded(NotForwardedReason)

    public enum NotForwardedReason: Hashable, Sendable {
        /// Not one of the event types `arm_smmu_handle_event` handles (-EOPNOTSUPP).
        case unhandledEventType(EventID)
        /// No device behind the pSMMU has the event's StreamID (`arm_smmu_find_master`, -EINVAL).
        case unknownStreamID(StreamID)
        /// A stall event goes to the IOPF path (`iommu_report_device_fault`), not to a vEVENTQ.
        case stall
        /// The device has no vmaster (not attached to a nested HWPT with its vdevice), or the event is
        /// a stage-2 one (-EOPNOTSUPP: "Unhandled events should be pinned").
        case noVirtualMaster
        case stage2
        /// The viommu has no vEVENTQ of type ARM_SMMUV3 (`iommufd_viommu_report_event`, -EOPNOTSUPP).
        case noEventQueue
        /// A kernel before 6.15 forwards no event.
        case kernelWithoutEventQueues
    }
}

struct PSMMUState {
    var configuration: PhysicalSMMU
    /// `smmu->vmid_map`.
    var vmids: Set<VMID> = []
    var issued: [IssuedCommand] = []
    var batches = 0
}

/// Everything the model's kernel holds, under ``SimulatedIOMMUFD``'s lock.
struct KernelState {
    let kernel: KernelVersion
    var smmus: [PSMMUState]
    var hostDevices: [HostDeviceState] = []
    var vfioFiles: [VFIOFile] = []
    var descriptors: [Int32: Descriptor] = [:]
    var closedDescriptors: [Int32] = []
    var nextDescriptor: Int32 = SimulatedIOMMUFD.firstDescriptor
    /// `ictx->objects`.
    var objects: [UInt32: KernelObject] = [:]
    /// Ids reserved without an object (`XA_ZERO_ENTRY`): a vdevice tombstoned when its device was
    /// unbound. Never handed out again, and `IOMMU_DESTROY` of one is `ENOENT`.
    var tombstones: Set<UInt32> = []

    init(kernel: KernelVersion, smmus: [PhysicalSMMU]) {
        self.kernel = kernel
        self.smmus = smmus.map { PSMMUState(configuration: $0) }
    }

    // MARK: - Ids and descriptors

    /// `xa_alloc(&ictx->objects, &obj->id, XA_ZERO_ENTRY, xa_limit_31b, …)` on an
    /// `XA_FLAGS_ALLOC1` xarray: the lowest free id from 1. Ids of destroyed or aborted objects are
    /// free again.
    mutating func allocateID(_ object: KernelObject) -> UInt32 {
        var id: UInt32 = 1
        while objects[id] != nil || tombstones.contains(id) { id += 1 }
        objects[id] = object
        return id
    }

    mutating func allocateDescriptor(_ descriptor: Descriptor) -> Int32 {
        defer { nextDescriptor += 1 }
        descriptors[nextDescriptor] = descriptor
        return nextDescriptor
    }

    // MARK: - Typed lookups (`iommufd_get_object`: a missing id or one of another type is ENOENT)

    func device(_ id: UInt32) -> DeviceObject? {
        if case .device(let object)? = objects[id] { return object }
        return nil
    }

    func paging(_ id: UInt32) -> PagingHWPT? {
        if case .paging(let object)? = objects[id] { return object }
        return nil
    }

    func nested(_ id: UInt32) -> NestedHWPT? {
        if case .nested(let object)? = objects[id] { return object }
        return nil
    }

    func viommu(_ id: UInt32) -> ViommuObject? {
        if case .viommu(let object)? = objects[id] { return object }
        return nil
    }

    func vdevice(_ id: UInt32) -> VDeviceObject? {
        if case .vdevice(let object)? = objects[id] { return object }
        return nil
    }

    func veventq(_ id: UInt32) -> VEventQueueObject? {
        if case .veventq(let object)? = objects[id] { return object }
        return nil
    }

    mutating func update(device id: UInt32, _ body: (inout DeviceObject) -> Void) {
        guard case .device(var object)? = objects[id] else { return }
        body(&object)
        objects[id] = .device(object)
    }

    mutating func update(viommu id: UInt32, _ body: (inout ViommuObject) -> Void) {
        guard case .viommu(var object)? = objects[id] else { return }
        body(&object)
        objects[id] = .viommu(object)
    }

    mutating func update(veventq id: UInt32, _ body: (inout VEventQueueObject) -> Void) {
        guard case .veventq(var object)? = objects[id] else { return }
        body(&object)
        objects[id] = .veventq(object)
    }

    func pSMMU(ofDevice device: DeviceObject) -> Int { hostDevices[device.hostDevice].pSMMU }

    /// The pSMMU a HWPT belongs to: a paging HWPT's own, a nested one's viommu's.
    func pSMMU(ofHWPT id: UInt32) -> Int? {
        switch objects[id] {
        case .paging(let hwpt)?: return hwpt.pSMMU
        case .nested(let hwpt)?: return viommu(hwpt.viommu)?.pSMMU
        default: return nil
        }
    }

    // MARK: - References and IOMMU_DESTROY

    /// Whether the object has users besides the xarray's reference (`refcount_dec_if_one(&obj->users)`
    /// fails in `iommufd_object_remove`). Who holds a reference on what:
    /// - a bound device: the VFIO driver, until unbind (`iommufd_device_bind`);
    /// - an IOAS: each paging HWPT on it;
    /// - a paging HWPT: each attached device, each viommu on it (`iommufd_viommu_alloc_ioctl`);
    /// - a nested HWPT: each attached device;
    /// - a viommu: each vdevice (`iommufd_vdevice_alloc_ioctl`), nested HWPT
    ///   (`iommufd_viommu_alloc_hwpt_nested`) and vEVENTQ (`iommufd_veventq_alloc`);
    /// - a vEVENTQ: its open descriptor (`iommufd_eventq_init`).
    func holders(of id: UInt32) -> [String] {
        var holders: [String] = []
        for (other, object) in objects.sorted(by: { $0.key < $1.key }) {
            switch object {
            case .device(let device) where device.attached == id: holders.append("device \(other) is attached")
            case .paging(let hwpt) where hwpt.ioas == id: holders.append("hwpt \(other) is on it")
            case .viommu(let viommu) where viommu.parent == id: holders.append("viommu \(other) is on it")
            case .nested(let hwpt) where hwpt.viommu == id: holders.append("nested hwpt \(other)")
            case .vdevice(let vdevice) where vdevice.viommu == id: holders.append("vdevice \(other)")
            case .veventq(let queue) where queue.viommu == id: holders.append("veventq \(other)")
            default: break
            }
        }
        switch objects[id] {
        case .device?: holders.append("the VFIO driver (bound)")
        case .veventq(let queue)? where queue.descriptor != nil: holders.append("its open descriptor")
        default: break
        }
        return holders
    }

    /// `iommufd_destroy` → `iommufd_object_remove(ictx, NULL, id, 0)`: `ENOENT` for an id with no
    /// object (or a tombstone), `EBUSY` while anything else holds it; otherwise the object's destroy
    /// function runs and its id is free.
    mutating func destroy(_ id: UInt32) -> Errno? {
        guard let object = objects[id] else { return .noSuchFileOrDirectory }
        guard holders(of: id).isEmpty else { return .resourceBusy }
        objects[id] = nil
        switch object {
        case .paging(let hwpt):
            // arm_smmu_domain_free: the stage-2 domain's VMID goes back to the pSMMU's IDA.
            if let vmid = hwpt.vmid { smmus[hwpt.pSMMU].vmids.remove(vmid) }
        case .vdevice(let vdevice):
            // iommufd_vdevice_abort: out of the viommu's xarray, idev->vdev = NULL. A vmaster the
            // device got from it stays until the device's next attach (arm-smmu-v3 clears it only in
            // arm_smmu_attach_commit_vmaster), so the model leaves it too.
            update(viommu: vdevice.viommu) { $0.vdevs[vdevice.virtID] = nil }
            update(device: vdevice.device) { if $0.vdevice == id { $0.vdevice = nil } }
        default:
            break
        }
        return nil
    }

    /// `ida_alloc_range(&smmu->vmid_map, 1, (1 << smmu->vmid_bits) - 1)` (`arm_smmu_domain_finalise_s2`):
    /// the lowest free VMID from 1; `nil` (ENOSPC) when all are taken.
    mutating func allocateVMID(on pSMMU: Int) -> VMID? {
        let limit = (1 << min(16, max(1, smmus[pSMMU].configuration.vmidBits))) - 1
        for candidate in 1 ... limit where !smmus[pSMMU].vmids.contains(VMID(candidate)) {
            smmus[pSMMU].vmids.insert(VMID(candidate))
            return VMID(candidate)
        }
        return nil
    }
}
