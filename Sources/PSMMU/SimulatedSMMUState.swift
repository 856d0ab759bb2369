import SMMUv3
import SystemPackage

/// The S2 (nest-parent) HWPT a viommu nests on, which owns the viommu's VMID.
enum NestParentKey: Hashable, Sendable {
    /// The S2 HWPT the VMM named (``ViommuAttachRequest/nestParentHWPT`` ≠ 0) in its tenant's namespace
    /// (a hwpt id is an object of the VMM's own iommufd), shared by every viommu of that tenant that
    /// names it. Two tenants naming the same id name two S2s, with two VMIDs.
    case named(TenantID, UInt32)
    /// No S2 named (`nestParentHWPT` = 0): a private S2 of this one viommu.
    case `private`(ViommuHandle)
}

/// A nest-parent S2 domain: its VMID (`s2_cfg.vmid`, allocated with the domain) and the viommus on it.
struct NestParentRecord: Sendable {
    let vmid: VMID
    var viommus: Set<ViommuHandle> = []
}

/// The kernel's `arm_smmu_vmaster` of a device: the viommu and vSID its events are reported with,
/// fixed when the device is attached (`arm_vsmmu_attach_prepare`).
struct Vmaster: Hashable, Sendable {
    let viommu: ViommuHandle
    let virtualStreamID: StreamID
}

/// A host device behind the pSMMU, in one tenant's namespace. Kept only while it differs from a fresh
/// device (``isPristine``): an untouched device costs nothing.
struct DeviceRecord: Sendable {
    let streamID: StreamID
    /// Its vdevices, in allocation order: at most one from kernel 6.17 on.
    var vdevices: [VDeviceHandle] = []
    /// Where its STE points. A device starts on its VMM's nest parent (the VMM attaches it there
    /// before it allocates a viommu), and stays there until ``SimulatedSMMU/attachDevice(_:to:)``.
    var domain: DeviceDomain = .nestParent
    /// The vdevice the current attachment was made through; `nil` before the first attach.
    var attachedThrough: VDeviceHandle?
    /// Where its events go; `nil` on a paging (S2) domain, which clears the vmaster.
    var vmaster: Vmaster?

    /// Whether it is what a device no VMM registered is: no vdevice, on its nest parent, no vmaster.
    var isPristine: Bool { vdevices.isEmpty && domain == .nestParent && attachedThrough == nil && vmaster == nil }

    /// The nested HWPT its STE comes from, if it is attached to one.
    var hwpt: HWPTHandle? {
        if case .nested(let handle) = domain { return handle }
        return nil
    }
}

/// A viommu: one VM on this pSMMU.
///
/// A class so that the invalidation path reads and updates it where it is (one retain), rather than
/// copying its maps and sets out of the dictionary and back (eight atomic reference-count operations
/// per backend call). `@unchecked Sendable`: like all of ``SimulatedSMMUState``, only touched under the
/// ``SimulatedSMMU``'s mutex, and the state is never copied.
final class ViommuRecord: @unchecked Sendable {
    let handle: ViommuHandle
    /// The tenant whose namespace it lives in, and that namespace (its devices and their caches).
    let tenant: TenantID
    let space: TenantSpace
    /// The VMID of its nest parent (`vsmmu->vmid = s2_parent->s2_cfg.vmid` in `arm_vsmmu_init`).
    let vmid: VMID
    let nestParent: NestParentKey
    /// vSID → pSID of its vdevices.
    var physicalStreamIDs: [StreamID: StreamID] = [:]
    var vdevices: Set<VDeviceHandle> = []
    var hwpts: Set<HWPTHandle> = []
    /// The viommu's vEVENTQ: records not yet taken or delivered, vSIDs substituted, oldest first; each
    /// marked when events were lost just before it.
    var events: [QueuedEvent] = []
    /// Events were lost after the last queued record (the kernel's `lost_events_header` at the tail of
    /// the vEVENTQ, `iommufd_viommu_report_event`): the next record queued, or the next read of an
    /// otherwise empty queue, carries the loss.
    var lostAfterLast = false
    /// Commands processed (executed or failed) since attach: the position fault injection counts.
    var processed: UInt64 = 0

    init(handle: ViommuHandle, tenant: TenantID, space: TenantSpace, vmid: VMID, nestParent: NestParentKey) {
        self.handle = handle
        self.tenant = tenant
        self.space = space
        self.vmid = vmid
        self.nestParent = nestParent
    }
}

/// A record in a simulated viommu's vEVENTQ.
struct QueuedEvent: Sendable {
    let record: EventRecord
    /// Events were lost just before this one (the queue was full).
    let lostBefore: Bool
}

struct VDeviceRecord: Sendable {
    let viommu: ViommuHandle
    let tenant: TenantID
    let hostDeviceID: UInt32
    let virtualStreamID: StreamID
    let physicalStreamID: StreamID
}

struct HWPTRecord: Sendable {
    let viommu: ViommuHandle
    let tenant: TenantID
    let hostDeviceID: UInt32
    /// The STE the kernel installed (after `nestingValidated()`).
    let ste: StreamTableEntry
    /// The CD table in guest memory, by SubstreamID; missing entries read as invalid CDs.
    var contextDescriptors: [ContextDescriptor]
    /// The host devices attached to it: each holds a reference, so it cannot be destroyed meanwhile.
    var attachedDevices: Set<UInt32> = []
}

/// Everything a ``SimulatedSMMU`` holds, guarded by its one mutex.
struct SimulatedSMMUState: Sendable {
    /// The host devices behind the pSMMU (host device id → physical StreamID): every tenant has all of
    /// them, in its own namespace.
    let deviceTemplate: [UInt32: StreamID]
    /// The namespaces of the tenants that have a viommu (or, for ``TenantID/host``, a device record):
    /// created at a tenant's first viommu, dropped with its last (``releaseSpaceIfUnused(_:)``).
    var spaces: [TenantID: TenantSpace] = [:]
    var viommus: [ViommuHandle: ViommuRecord] = [:]
    /// The viommu of the last invalidation: consecutive calls for one viommu skip the dictionary's hash.
    var lastInvalidated: ViommuRecord?
    var vdevices: [VDeviceHandle: VDeviceRecord] = [:]
    var hwpts: [HWPTHandle: HWPTRecord] = [:]
    var nestParents: [NestParentKey: NestParentRecord] = [:]
    var usedVMIDs: Set<VMID> = []
    /// Whether a named nest parent outlives its last viommu (until `destroyNestParent`).
    var retainsNestParents = false
    let kernelVersion: KernelVersion
    /// iommufd-like object ids, shared by viommus, vdevices and HWPTs: sequential for ``TenantID/host``,
    /// random for the others (``takeObjectID(for:)``).
    var nextObjectID: UInt32 = 1
    var nextFaultID: UInt64 = 1

    var tlb = TLBModel()

    var faults: [ArmedFault] = []
    var gates: [StallGate] = []
    var costModel: CostModel
    /// When the shared command queue finishes the commands already charged to it.
    var queueBusyUntil: Duration? // since `CostWait.origin`

    var tally = CommandTally()
    var viommusAttached: UInt64 = 0
    var vdevicesAllocated: UInt64 = 0
    var hwptsAllocated: UInt64 = 0
    var eventsReported: UInt64 = 0
    var model = SimulatedSMMUCounters()

    let eventQueueDepth: Int
    /// Where each tenant's viommus push their events (``SimulatedSMMU/setEventSink(_:)``): a tenant
    /// without one keeps them queued for ``takeEvents(viommu:tenant:)``.
    var sinks: [TenantID: any ViommuEventSink] = [:]
    /// Viommus whose queue holds records for a sink, in the order they became non-empty.
    var pendingDelivery: [ViommuHandle] = []
    /// Whether a thread is delivering queued events to the sinks (``SimulatedSMMU/deliverPendingEvents()``).
    var delivering = false

    /// Whether the pSMMU has ATS (its IDR0.ATS): without it the kernel refuses ATC_INV.
    let atsSupported: Bool

    init(devices: [UInt32: StreamID], costModel: CostModel, eventQueueDepth: Int, kernelVersion: KernelVersion,
         atsSupported: Bool = true) {
        self.atsSupported = atsSupported
        deviceTemplate = devices
        self.costModel = costModel
        self.eventQueueDepth = eventQueueDepth
        self.kernelVersion = kernelVersion
    }

    /// A new object id for `tenant`'s viommu, vdevice or HWPT, in use by no object of the pSMMU.
    ///
    /// The kernel numbers objects per iommufd (`iommufd_object_alloc`: `xa_alloc` in the ictx's
    /// `objects` xarray, `xa_limit_31b`), so one VMM's ids say nothing of another's. The model keeps one
    /// table for the whole pSMMU, so a tenant's ids are drawn at random from the kernel's range (1 …
    /// 2^31 − 1) and reveal neither how many objects other tenants allocated nor which ids are theirs.
    /// ``TenantID/host`` (tests and tools driving the model directly) keeps sequential ids from 1.
    mutating func takeObjectID(for tenant: TenantID) -> UInt32 {
        func isUsed(_ id: UInt32) -> Bool {
            viommus[ViommuHandle(rawValue: id)] != nil || vdevices[VDeviceHandle(rawValue: id)] != nil
                || hwpts[HWPTHandle(rawValue: id)] != nil
        }
        if tenant == .host {
            while nextObjectID == 0 || isUsed(nextObjectID) { nextObjectID &+= 1 }
            defer { nextObjectID &+= 1 }
            return nextObjectID
        }
        var generator = SystemRandomNumberGenerator()
        while true {
            let id = UInt32.random(in: 1...0x7fff_ffff, using: &generator)
            if !isUsed(id) { return id }
        }
    }

    // MARK: - Tenants' device namespaces

    /// `tenant`'s record of host device `hostDeviceID`: the one kept, or a fresh device when the pSMMU has
    /// it and the tenant never touched it; `nil` for a device not behind this pSMMU.
    func device(_ hostDeviceID: UInt32, of tenant: TenantID) -> DeviceRecord? {
        if let kept = spaces[tenant]?.devices[hostDeviceID] { return kept }
        return deviceTemplate[hostDeviceID].map { DeviceRecord(streamID: $0) }
    }

    /// Keeps `record` as `tenant`'s device `hostDeviceID`, or forgets it when it is pristine again.
    mutating func store(_ record: DeviceRecord, _ hostDeviceID: UInt32, of tenant: TenantID) {
        if record.isPristine {
            spaces[tenant]?.devices.removeValue(forKey: hostDeviceID)
        } else {
            space(of: tenant).devices[hostDeviceID] = record
        }
    }

    /// `tenant`'s namespace, created when it has none yet.
    mutating func space(of tenant: TenantID) -> TenantSpace {
        if let space = spaces[tenant] { return space }
        let space = TenantSpace()
        spaces[tenant] = space
        return space
    }

    /// Drops `tenant`'s namespace once it has no viommu and no device record: a tenant costs nothing
    /// once its last viommu is gone. (Its caches are empty by then: each of its devices went back to its
    /// nest parent, which drops the device's cached STE, CDs and ATC.)
    mutating func releaseSpaceIfUnused(_ tenant: TenantID) {
        guard let space = spaces[tenant], space.viommuCount == 0, space.devices.isEmpty else { return }
        spaces.removeValue(forKey: tenant)
    }

    /// Whether `viommu` is a viommu of `tenant` (another tenant's handle is answered as an unknown one).
    func viommu(_ viommu: ViommuHandle, of tenant: TenantID) -> ViommuRecord? {
        guard let record = viommus[viommu], record.tenant == tenant else { return nil }
        return record
    }

    // MARK: - Viommus and their nest parents

    /// `IOMMU_VIOMMU_ALLOC` on the S2 HWPT the request names. The VMID is the nest parent's
    /// (`vsmmu->vmid = s2_parent->s2_cfg.vmid` in `arm_vsmmu_init`): viommus on one S2 share it; a new S2
    /// parent takes the lowest free VMID from 1 (`ida_alloc_range(&smmu->vmid_map, 1, …)`).
    mutating func attachViommu(_ request: ViommuAttachRequest, tenant: TenantID, name: String) throws(BackendError) -> ViommuHandle {
        guard deviceTemplate[request.hostDeviceID] != nil else {
            throw BackendError(.invalidArgument, errno: Errno.invalidArgument.rawValue, "device \(request.hostDeviceID) is not behind \(name)")
        }
        let counter = nextObjectID
        let handle = ViommuHandle(rawValue: takeObjectID(for: tenant))
        let key: NestParentKey = request.nestParentHWPT == 0 ? .private(handle) : .named(tenant, request.nestParentHWPT)
        var parent: NestParentRecord
        if let existing = nestParents[key] {
            parent = existing
        } else {
            guard let vmid = (1...VMID.max).first(where: { !usedVMIDs.contains($0) }) else {
                nextObjectID = counter
                throw BackendError(.failed, errno: Errno.noSpace.rawValue, "\(name) has no free VMID")
            }
            usedVMIDs.insert(vmid)
            parent = NestParentRecord(vmid: vmid)
        }
        parent.viommus.insert(handle)
        nestParents[key] = parent
        let space = space(of: tenant)
        space.viommuCount += 1
        viommus[handle] = ViommuRecord(handle: handle, tenant: tenant, space: space, vmid: parent.vmid, nestParent: key)
        viommusAttached += 1
        return handle
    }

    /// `IOMMU_DESTROY` of a viommu. Its nest parent's VMID is flushed and freed only when the S2 goes:
    /// a private one now; a named one when its last viommu goes, unless nest parents are retained.
    mutating func detachViommu(_ viommu: ViommuHandle, tenant: TenantID, name: String) throws(BackendError) {
        guard let record = self.viommu(viommu, of: tenant) else {
            throw BackendError(.unknownHandle, errno: Errno.noSuchFileOrDirectory.rawValue, "\(viommu) is not a viommu of \(name)")
        }
        guard record.vdevices.isEmpty, record.hwpts.isEmpty else {
            throw BackendError(.busy, errno: Errno.resourceBusy.rawValue, "\(viommu) still has \(record.vdevices.count) vdevice(s) and \(record.hwpts.count) HWPT(s)")
        }
        viommus.removeValue(forKey: viommu)
        record.space.viommuCount -= 1
        releaseSpaceIfUnused(tenant)
        if lastInvalidated?.handle == viommu { lastInvalidated = nil }
        faults.removeAll { $0.viommu == viommu }
        gates.removeAll { $0.viommu == viommu }
        nestParents[record.nestParent]?.viommus.remove(viommu)
        guard let parent = nestParents[record.nestParent], parent.viommus.isEmpty else { return }
        if case .named = record.nestParent, retainsNestParents { return }
        model.tlbEntriesFlushedOnDetach += UInt64(freeNestParent(record.nestParent))
    }

    /// `IOMMU_DESTROY` of a named S2 HWPT that no viommu uses any more.
    mutating func destroyNestParent(_ hwptID: UInt32, tenant: TenantID, name: String) throws(BackendError) {
        let key = NestParentKey.named(tenant, hwptID)
        guard let parent = nestParents[key] else {
            throw BackendError(.unknownHandle, errno: Errno.noSuchFileOrDirectory.rawValue, "\(name) has no nest-parent HWPT \(hwptID)")
        }
        guard parent.viommus.isEmpty else {
            // Each viommu holds a reference on its S2 (`iommufd_viommu_alloc_ioctl`), so
            // `iommufd_object_remove` refuses the destroy.
            throw BackendError(.busy, errno: Errno.resourceBusy.rawValue, "nest-parent HWPT \(hwptID) still has \(parent.viommus.count) viommu(s)")
        }
        model.tlbEntriesFlushedOnNestParentDestroy += UInt64(freeNestParent(key))
    }

    /// Frees an S2 domain as `arm_smmu_domain_free_paging` does: its TLB entries are invalidated
    /// (TLBI_S12_VMALL of its VMID) before the VMID returns to the pool, so the VMID's next owner inherits
    /// no entry. - Returns: the entries flushed.
    private mutating func freeNestParent(_ key: NestParentKey) -> Int {
        guard let parent = nestParents.removeValue(forKey: key) else { return 0 }
        let flushed = tlb.invalidate(vmid: parent.vmid)
        usedVMIDs.remove(parent.vmid)
        return flushed
    }

    // MARK: - vdevices

    /// `iommufd_vdevice_alloc_ioctl`: the viommu (ENOENT), the device (EINVAL: not behind this pSMMU),
    /// from 6.17 a device that already has a vdevice (EEXIST: `idev->vdev`), then a `virt_id` already
    /// used on the viommu (EEXIST: `xa_cmpxchg` on `viommu->vdevs`). The device stays where it is attached.
    ///
    /// Devices are `tenant`'s: another tenant's vdevice of the same host device id is another device
    /// and never conflicts (`iommufd_device_bind` gives each VMM's iommufd its own `dev_id`s).
    mutating func allocateVDevice(viommu: ViommuHandle, tenant: TenantID, hostDeviceID: UInt32, virtualStreamID: StreamID,
                                  name: String) throws(BackendError) -> VDeviceHandle {
        guard let record = self.viommu(viommu, of: tenant) else {
            throw BackendError(.unknownHandle, errno: Errno.noSuchFileOrDirectory.rawValue, "\(viommu) is not a viommu of \(name)")
        }
        guard var device = self.device(hostDeviceID, of: tenant) else {
            throw BackendError(.invalidArgument, errno: Errno.invalidArgument.rawValue, "device \(hostDeviceID) is not behind \(name)")
        }
        if kernelVersion.allowsOneVDevicePerDevice, let existing = device.vdevices.first {
            throw BackendError(.alreadyExists, errno: Errno.fileExists.rawValue,
                               "device \(hostDeviceID) already has \(existing) (one vdevice per device from kernel \(KernelVersion.firstWithOneVDevicePerDevice))")
        }
        guard record.physicalStreamIDs[virtualStreamID] == nil else {
            throw BackendError(.alreadyExists, errno: Errno.fileExists.rawValue, "vSID \(virtualStreamID) is already used on \(viommu)")
        }
        let handle = VDeviceHandle(rawValue: takeObjectID(for: tenant))
        vdevices[handle] = VDeviceRecord(viommu: viommu, tenant: tenant, hostDeviceID: hostDeviceID,
                                         virtualStreamID: virtualStreamID, physicalStreamID: device.streamID)
        record.physicalStreamIDs[virtualStreamID] = device.streamID
        record.vdevices.insert(handle)
        device.vdevices.append(handle)
        store(device, hostDeviceID, of: tenant)
        vdevicesAllocated += 1
        return handle
    }

    /// Destroys a vdevice. A device attached through it goes back to its nest parent first, as the
    /// iommufd backend's `destroyVDevice` does, so that no device is left on a nested HWPT without
    /// the vdevice that gave it its vSID.
    mutating func destroyVDevice(_ vdevice: VDeviceHandle, tenant: TenantID, name: String) throws(BackendError) {
        guard let record = vdevices[vdevice], record.tenant == tenant else {
            throw BackendError(.unknownHandle, errno: Errno.noSuchFileOrDirectory.rawValue, "\(vdevice) is not a vdevice of \(name)")
        }
        let host = record.hostDeviceID
        if let device = self.device(host, of: tenant), device.attachedThrough == vdevice, device.domain != .nestParent {
            commitAttachment(hostDeviceID: host, of: tenant, to: .nestParent, through: vdevice, vmaster: nil)
        }
        vdevices.removeValue(forKey: vdevice)
        viommus[record.viommu]?.physicalStreamIDs.removeValue(forKey: record.virtualStreamID)
        viommus[record.viommu]?.vdevices.remove(vdevice)
        if var device = self.device(host, of: tenant) {
            device.vdevices.removeAll { $0 == vdevice }
            if device.attachedThrough == vdevice { device.attachedThrough = nil }
            store(device, host, of: tenant)
        }
    }

    // MARK: - Attachment

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` → `iommufd_device_replace`: checks everything, then switches the
    /// device's STE in one step (make-before-break: the device is never without a domain, and a refused
    /// attach changes nothing).
    mutating func attachDevice(_ vdevice: VDeviceHandle, to domain: DeviceDomain, tenant: TenantID, name: String) throws(BackendError) {
        guard let record = vdevices[vdevice], record.tenant == tenant, let device = self.device(record.hostDeviceID, of: tenant) else {
            throw BackendError(.unknownHandle, errno: Errno.noSuchFileOrDirectory.rawValue, "\(vdevice) is not a vdevice of \(name)")
        }
        let vmaster: Vmaster?
        switch domain {
        case .nested(let hwpt):
            guard let target = hwpts[hwpt], target.tenant == tenant else {
                // `iommufd_device_change_pt`: `iommufd_get_object` of an unknown pt_id.
                throw BackendError(.unknownHandle, errno: Errno.noSuchFileOrDirectory.rawValue, "\(hwpt) is not a HWPT of \(name)")
            }
            guard target.viommu == record.viommu else {
                throw BackendError(.invalidArgument, errno: Errno.invalidArgument.rawValue,
                                   "\(hwpt) is a nested HWPT of \(target.viommu), not of \(record.viommu), where \(vdevice) is")
            }
            vmaster = self.vmaster(of: device, on: record.viommu)
        case .abort, .bypass:
            // The viommu's abort/bypass nested HWPTs: `arm_vsmmu_attach_prepare` finds the vSID too.
            vmaster = self.vmaster(of: device, on: record.viommu)
        case .nestParent:
            // A paging domain: `arm_smmu_attach_commit_vmaster` clears the vmaster.
            vmaster = nil
        }
        if device.domain == domain {
            // `iommufd_device_do_replace`: replacing a HWPT with itself changes nothing. The abort,
            // bypass and nest-parent HWPTs are the viommu's, so they are the same only on the same viommu.
            let sameViommu = device.attachedThrough.map { vdevices[$0]?.viommu == record.viommu } ?? true
            if case .nested = domain { return }
            if sameViommu { return }
        }
        commitAttachment(hostDeviceID: record.hostDeviceID, of: tenant, to: domain, through: vdevice, vmaster: vmaster)
    }

    /// The vmaster `arm_vsmmu_attach_prepare` finds for `device` on `viommu`: the vSID of its vdevice
    /// there (`iommufd_viommu_get_vdev_id` walks `viommu->vdevs` in index order: the lowest vSID, when
    /// a 6.13 kernel let the device have several).
    private func vmaster(of device: DeviceRecord, on viommu: ViommuHandle) -> Vmaster? {
        let vsids = device.vdevices.compactMap { vdevices[$0] }.filter { $0.viommu == viommu }.map(\.virtualStreamID)
        return vsids.min().map { Vmaster(viommu: viommu, virtualStreamID: $0) }
    }

    /// Points the device's STE at `domain`. The kernel's STE write (`arm_smmu_install_ste_for_dev`)
    /// ends with a CFGI_STE of the pSID, which drops the cached STE and CDs; `arm_smmu_attach_commit`
    /// then invalidates the device's whole ATC when ATS was on (the translation changed, or ATS went off),
    /// and when ATS was off the ATC holds nothing.
    private mutating func commitAttachment(hostDeviceID: UInt32, of tenant: TenantID, to domain: DeviceDomain,
                                           through vdevice: VDeviceHandle, vmaster: Vmaster?) {
        guard var device = self.device(hostDeviceID, of: tenant) else { return }
        if let old = device.hwpt { hwpts[old]?.attachedDevices.remove(hostDeviceID) }
        if case .nested(let new) = domain { hwpts[new]?.attachedDevices.insert(hostDeviceID) }
        device.domain = domain
        device.attachedThrough = vdevice
        device.vmaster = vmaster
        store(device, hostDeviceID, of: tenant)
        model.steWrites += 1
        guard let space = spaces[tenant] else { return }
        let dropped = space.config.dropStream(device.streamID)
        model.configEntriesDroppedOnSTEChange += UInt64(dropped.stes + dropped.cds)
        model.atcEntriesDroppedOnAttach += UInt64(space.atc.invalidate(streamID: device.streamID, substreamID: nil,
                                                                       first: 0, last: .max))
    }

    // MARK: - Nested HWPTs

    /// `iommufd_hwpt_alloc` with `pt_id` = a viommu: `iommufd_get_object(…, IOMMUFD_OBJ_ANY)` failing is
    /// `-EINVAL` (not ENOENT), as is a device behind another pSMMU; the vSTE goes through
    /// `arm_smmu_validate_vste` (EIO). Allocating installs nothing: only an attach does.
    mutating func allocateNestedHWPT(viommu: ViommuHandle, tenant: TenantID, hostDeviceID: UInt32, ste: StreamTableEntry,
                                     contextDescriptors: [ContextDescriptor],
                                     name: String) throws(BackendError) -> HWPTHandle {
        guard self.viommu(viommu, of: tenant) != nil else {
            throw BackendError(.invalidArgument, errno: Errno.invalidArgument.rawValue, "pt_id \(viommu.rawValue) is not a viommu of \(name)")
        }
        guard deviceTemplate[hostDeviceID] != nil else {
            throw BackendError(.invalidArgument, errno: Errno.invalidArgument.rawValue, "device \(hostDeviceID) is not behind \(name)")
        }
        let installed: StreamTableEntry
        do {
            installed = try ste.nestingValidated()
        } catch {
            throw BackendError(.invalidArgument, errno: Errno.ioError.rawValue, "vSTE rejected: \(error)")
        }
        if installed.translatesStage1, contextDescriptors.count > installed.contextDescriptorCount {
            throw BackendError(.invalidArgument, errno: Errno.invalidArgument.rawValue,
                               "\(contextDescriptors.count) CDs given for an STE that links \(installed.contextDescriptorCount)")
        }
        let handle = HWPTHandle(rawValue: takeObjectID(for: tenant))
        hwpts[handle] = HWPTRecord(viommu: viommu, tenant: tenant, hostDeviceID: hostDeviceID, ste: installed,
                                   contextDescriptors: installed.translatesStage1 ? contextDescriptors : [])
        viommus[viommu]?.hwpts.insert(handle)
        hwptsAllocated += 1
        return handle
    }

    /// `IOMMU_DESTROY` of a nested HWPT: EBUSY while a device is attached to it (each attachment holds
    /// a reference, `iommufd_hw_pagetable_attach`, so `iommufd_object_remove` refuses).
    mutating func destroyHWPT(_ hwpt: HWPTHandle, tenant: TenantID, name: String) throws(BackendError) {
        guard let record = hwpts[hwpt], record.tenant == tenant else {
            throw BackendError(.unknownHandle, errno: Errno.noSuchFileOrDirectory.rawValue, "\(hwpt) is not a HWPT of \(name)")
        }
        guard record.attachedDevices.isEmpty else {
            let devices = record.attachedDevices.sorted().map(String.init).joined(separator: ", ")
            throw BackendError(.busy, errno: Errno.resourceBusy.rawValue, "\(hwpt) is attached to device(s) \(devices)")
        }
        hwpts.removeValue(forKey: hwpt)
        viommus[record.viommu]?.hwpts.remove(hwpt)
    }

    // MARK: - Events

    /// Delivers `record` (physical StreamID) as the kernel would: only a type
    /// ``ViommuEventForwarding`` forwards, only to the device's vmaster, vSID substituted
    /// (`arm_vmaster_report_event`), into the viommu's vEVENTQ. A full queue loses it and marks the
    /// loss for the next record or read, as `iommufd_viommu_report_event` queues its
    /// `lost_events_header` when `num_events == depth` and `iommufd_vevent_handler` replaces that
    /// header with the next event queued (whose sequence number then shows the gap).
    mutating func report(_ record: EventRecord, hostDeviceID: UInt32, of tenant: TenantID) {
        guard ViommuEventForwarding.isForwarded(record), let vmaster = spaces[tenant]?.devices[hostDeviceID]?.vmaster,
              let owner = viommus[vmaster.viommu] else {
            model.eventsNotForwarded += 1
            return
        }
        guard owner.events.count < eventQueueDepth else {
            model.eventsLost += 1
            owner.lostAfterLast = true
            return
        }
        var virtual = record
        virtual.streamID = vmaster.virtualStreamID
        if owner.events.isEmpty, sinks[owner.tenant] != nil { pendingDelivery.append(owner.handle) }
        owner.events.append(QueuedEvent(record: virtual, lostBefore: owner.lostAfterLast))
        owner.lostAfterLast = false
        eventsReported += 1
    }

    mutating func takeEvents(viommu: ViommuHandle, tenant: TenantID) -> [EventRecord] {
        guard let record = self.viommu(viommu, of: tenant) else { return [] }
        record.lostAfterLast = false
        guard !record.events.isEmpty else { return [] }
        defer { record.events = [] }
        return record.events.map(\.record)
    }

    /// Takes every queued record of the viommus whose tenant has a sink, as the batches the sinks get:
    /// per viommu in queue order, a new batch at each loss, a lone ``ViommuEvents/lostBefore`` for a
    /// loss after the last record.
    mutating func drainForSinks() -> [(any ViommuEventSink, ViommuEvents)] {
        var out: [(any ViommuEventSink, ViommuEvents)] = []
        let handles = pendingDelivery
        pendingDelivery.removeAll(keepingCapacity: true)
        for handle in handles {
            guard let record = viommus[handle], let sink = sinks[record.tenant] else { continue }
            var batch = ViommuEvents(viommu: handle, records: [])
            for queued in record.events {
                if queued.lostBefore, !batch.records.isEmpty || batch.lostBefore {
                    out.append((sink, batch))
                    batch = ViommuEvents(viommu: handle, records: [])
                }
                batch.lostBefore = batch.lostBefore || queued.lostBefore
                batch.records.append(queued.record)
            }
            if record.lostAfterLast {
                if !batch.records.isEmpty || batch.lostBefore { out.append((sink, batch)) }
                batch = ViommuEvents(viommu: handle, records: [], lostBefore: true)
                record.lostAfterLast = false
            }
            if !batch.records.isEmpty || batch.lostBefore { out.append((sink, batch)) }
            record.events = []
        }
        return out
    }

    /// Sets `tenant`'s sink; with one, the tenant's viommus that hold records (or a loss) are due for
    /// delivery.
    mutating func setEventSink(_ sink: (any ViommuEventSink)?, tenant: TenantID) {
        sinks[tenant] = sink
        guard sink != nil else { return }
        for (handle, record) in viommus where record.tenant == tenant && (!record.events.isEmpty || record.lostAfterLast) {
            if !pendingDelivery.contains(handle) { pendingDelivery.append(handle) }
        }
    }

    // MARK: - Counters

    var backendCounters: BackendCounters {
        var c = BackendCounters()
        c.viommusAttached = viommusAttached
        c.vdevicesAllocated = vdevicesAllocated
        c.hwptsAllocated = hwptsAllocated
        c.invalidateCalls = tally.calls
        c.commandsReceived = tally.received
        c.commandsCompleted = tally.completed
        c.commandsFailed = tally.failed
        c.commandsByOpcode = CommandTally.dictionary(tally.byOpcode)
        c.events = eventsReported
        return c
    }

    var simulationCounters: SimulatedSMMUCounters {
        var c = model
        c.tlbEntriesInvalidated = CommandTally.dictionary(tally.tlbInvalidatedByOpcode)
        c.configEntriesInvalidated = CommandTally.dictionary(tally.configInvalidatedByOpcode)
        return c
    }
}
