#if canImport(Glibc)
import Glibc
#endif
import SMMUv3
import VSMMUSystem
import SystemPackage

/// A software model of one physical SMMUv3 behind the kernel's iommufd vIOMMU interface: the
/// embedded default backend, used on hosts without the hardware, in tests and in benchmarks.
///
/// What it models, after the Linux kernel (``kernelVersion``, 7.3 by default, where the rules changed):
/// - **Objects**, with the kernel's rules and errnos:
///   - viommus, each on a nest-parent S2 HWPT that owns its VMID (`arm_vsmmu_init`:
///     `vsmmu->vmid = s2_parent->s2_cfg.vmid`): viommus naming the same
///     ``ViommuAttachRequest/nestParentHWPT`` share one VMID; `nestParentHWPT` = 0 means a private S2
///     per viommu, so that unrelated VMs never share a VMID. The VMID is flushed and freed when the S2
///     goes (`arm_smmu_domain_free_paging`): see ``detachViommu(_:)`` and ``destroyNestParent(_:)``.
///   - vdevices: a device behind this pSMMU, a vSID unique per viommu, and from kernel 6.17 one
///     vdevice per device (``KernelVersion/firstWithOneVDevicePerDevice``).
///   - nested stage-1 HWPTs from a vSTE (``StreamTableEntry/nestingValidated()``, as
///     `arm_smmu_validate_vste`). Allocating one installs nothing (`IOMMU_HWPT_ALLOC` only allocates);
///     a HWPT a device is attached to cannot be destroyed (EBUSY).
///   - attachments (``attachDevice(_:to:)``, `iommufd_device_replace`): each device's STE points at
///     one ``DeviceDomain``, from the nest parent it starts on; an attach replaces it in one step and
///     drops the device's cached STE and CDs (and its ATC, `arm_smmu_attach_commit`).
/// - **Caches**: a stage-1 TLB of range entries tagged (VMID, ASID); a configuration cache (STE by
///   pSID, CD by (pSID, SSID)); an ATC per device for ATS. Device DMA fills them, translating through
///   the domain the device is attached to:
///   ``simulateDMA(_:)`` (and its read-only wrapper ``touch(hostDeviceID:substreamID:address:size:mapped:throughATS:)``).
/// - **Commands**: ``invalidate(viommu:commands:)`` applies what the kernel accepts on a viommu with
///   the hardware's semantics, after the kernel's rewrite (`arm_vsmmu_convert_user_cmd`: VMID
///   overwritten, TLBI_NSNH_ALL turned into TLBI_NH_ALL, vSID replaced by pSID); what the kernel refuses
///   stops the batch with `CERROR_ILL`; what the SMMU then finds illegal (SSEC set) is skipped as
///   `arm_smmu_cmdq_skip_err` does, with no effect, and the batch completes.
/// - **Events**, delivered per viommu with the vSID substituted, only those the kernel forwards to a
///   vEVENTQ (``ViommuEventForwarding``: `arm_smmu_handle_event` → `arm_vmaster_report_event`).
/// - **Time** (``CostModel``), **faults** (``failCommand(at:countedFrom:on:with:)``,
///   ``failCommands(on:with:times:where:)``), **stalls** (``stallInvalidations(on:for:)``) and
///   counters of everything (``counters``, ``simulationCounters``).
///
/// What it does not model: page tables (the caller of `simulateDMA` says what a walk of the guest's
/// tables finds for the address, and by which size of entry), stage 2 (a device on its nest parent or on bypass is "stage-1 bypassed";
/// no S2 fault, no S2 TLB), walk caches (LEAF and TTL are honoured by invalidating every matching entry,
/// which is always allowed), global (nG = 0) entries, TLB capacity (entries stay until invalidated),
/// stalls and PRI, and PASID attachments.
///
/// **Tenants.** Host devices, named nest parents and object ids are scoped per tenant (``TenantID``), as
/// a real host scopes them per VMM iommufd: each tenant has the whole device range, and another
/// tenant's objects do not exist for it. This class's own methods work in ``TenantID/host``; a daemon
/// gives each VMM its view, ``tenant(_:)``.
///
/// Thread safety: every call takes one pthread mutex for a short, bounded time (a pthread mutex rather
/// than `Synchronization.Mutex`, which ThreadSanitizer cannot see on Linux); the cost model's wait and
/// stalls happen outside it, so viommus invalidated from different threads only serialise on the
/// model's bookkeeping (and on the shared command queue, if the cost model says so).
public final class SimulatedSMMU: PSMMUBackend {
    public let name: String
    /// The host devices behind this pSMMU: host device id (iommufd `dev_id`) → physical StreamID.
    public let devices: [UInt32: StreamID]
    /// The ID registers ``hardwareInfo(viommu:)`` reports.
    public let idRegisters: IDRegisters
    /// The kernel whose rules the model follows where they changed between releases.
    public let kernelVersion: KernelVersion
    let state: Locked<SimulatedSMMUState>

    /// A pSMMU named `name` with `devices` (host device id → physical StreamID, all distinct) behind it.
    /// - Parameters:
    ///   - costModel: the time calls take; free by default.
    ///   - eventQueueDepth: event records a viommu holds before further ones are lost.
    ///   - kernelVersion: the kernel to behave like; the rig's (7.3) by default.
    public init(name: String, devices: [UInt32: StreamID], costModel: CostModel = .free,
                eventQueueDepth: Int = 1024, idRegisters: IDRegisters = .simulatedDefault,
                kernelVersion: KernelVersion = .rig) {
        precondition(Set(devices.values).count == devices.count, "two devices share a physical StreamID")
        self.name = name
        self.devices = devices
        self.idRegisters = idRegisters
        self.kernelVersion = kernelVersion
        state = Locked(SimulatedSMMUState(devices: devices, costModel: costModel, eventQueueDepth: eventQueueDepth,
                                          kernelVersion: kernelVersion, atsSupported: idRegisters.ats))
    }

    /// A pSMMU with `deviceCount` devices: host device ids `firstHostDeviceID + i` with physical
    /// StreamIDs `firstStreamID + i`.
    public convenience init(name: String, deviceCount: Int, firstHostDeviceID: UInt32 = 0,
                            firstStreamID: StreamID = 0, costModel: CostModel = .free,
                            eventQueueDepth: Int = 1024, idRegisters: IDRegisters = .simulatedDefault,
                            kernelVersion: KernelVersion = .rig) {
        var devices: [UInt32: StreamID] = [:]
        for i in 0..<deviceCount { devices[firstHostDeviceID + UInt32(i)] = firstStreamID + StreamID(i) }
        self.init(name: name, devices: devices, costModel: costModel, eventQueueDepth: eventQueueDepth,
                  idRegisters: idRegisters, kernelVersion: kernelVersion)
    }

    /// The time calls take; may be changed at any time (calls in flight keep their cost).
    public var costModel: CostModel {
        get { state.withLock { $0.costModel } }
        set { state.withLock { $0.costModel = newValue } }
    }

    // MARK: - PSMMUBackend: control path

    /// Allocates a viommu on the nest-parent S2 `request.nestParentHWPT` names, whose VMID it takes
    /// (`arm_vsmmu_init`): a viommu on an S2 already in use shares its VMID; a new S2 gets the lowest
    /// VMID free on this pSMMU, from 1. `nestParentHWPT` = 0 names no S2: the viommu gets a private one,
    /// hence a VMID of its own (what every VM on the simulated backend gets, as they all pass 0).
    /// - Throws: `.invalidArgument` when `request.hostDeviceID` is not behind this pSMMU; `.failed`
    ///   (ENOSPC) when every VMID is taken.
    public func attachViommu(_ request: ViommuAttachRequest) throws(BackendError) -> ViommuHandle {
        try state.withLock { s throws(BackendError) in try s.attachViommu(request, tenant: .host, name: name) }
    }

    /// Destroys a viommu. Its armed faults and stall gates go with it. Its VMID stays with its nest
    /// parent: other viommus on the same S2 keep it, and their TLB entries, untouched.
    ///
    /// The daemon never sees the VMM destroy its S2 HWPT, so the model stands in for it: when the last
    /// viommu of an S2 detaches, the S2 is taken as destroyed (a private S2 always, a named one unless
    /// ``retainsNestParents``): its VMID's TLB entries are flushed and the VMID freed, as
    /// `arm_smmu_domain_free_paging` does (TLBI_S12_VMALL, then the VMID back to the pool).
    /// - Throws: `.unknownHandle`; `.busy` while it has vdevices or HWPTs.
    public func detachViommu(_ viommu: ViommuHandle) throws(BackendError) {
        try state.withLock { s throws(BackendError) in try s.detachViommu(viommu, tenant: .host, name: name) }
    }

    /// Whether a named nest-parent S2 outlives its last viommu's detach (keeping its VMID and the TLB
    /// entries tagged with it) until ``destroyNestParent(_:)``, as a VMM that keeps its S2 would. `false`
    /// by default: the S2 is taken as destroyed with its last viommu (see ``detachViommu(_:)``).
    /// Private S2s (`nestParentHWPT` = 0) always go with their viommu.
    public var retainsNestParents: Bool {
        get { state.withLock { $0.retainsNestParents } }
        set { state.withLock { $0.retainsNestParents = newValue } }
    }

    /// Destroys the named nest-parent S2 HWPT `hwptID`, as the VMM's `IOMMU_DESTROY` of it would: its
    /// VMID's TLB entries are flushed and the VMID freed (`arm_smmu_domain_free_paging`). For tests and
    /// tools; with ``retainsNestParents`` off the S2 already went with its last viommu.
    /// - Throws: `.unknownHandle` (ENOENT) for an S2 no viommu named or already destroyed; `.busy`
    ///   (EBUSY) while a viommu is on it (each viommu holds a reference on its S2).
    public func destroyNestParent(_ hwptID: UInt32) throws(BackendError) {
        try state.withLock { s throws(BackendError) in try s.destroyNestParent(hwptID, tenant: .host, name: name) }
    }

    /// The device stays where it is attached (its nest parent, for a fresh device) until
    /// ``attachDevice(_:to:)``.
    /// - Throws: `.unknownHandle` for an unknown viommu; `.invalidArgument` (EINVAL) for a device not
    ///   behind this pSMMU; `.alreadyExists` (EEXIST) for a vSID in use on the viommu, and from kernel
    ///   6.17 for a device that already has a vdevice (`iommufd_vdevice_alloc_ioctl`: `idev->vdev`).
    ///
    /// A VFIO descriptor in `device` is not needed (the model attaches by host device id): it is closed.
    public func allocateVDevice(viommu: ViommuHandle, device: HostDevice,
                                virtualStreamID: StreamID) throws(BackendError) -> VDeviceHandle {
        try allocateVDevice(viommu: viommu, device: device, virtualStreamID: virtualStreamID, tenant: .host)
    }

    func allocateVDevice(viommu: ViommuHandle, device: HostDevice, virtualStreamID: StreamID,
                         tenant: TenantID) throws(BackendError) -> VDeviceHandle {
        if let fd = device.vfioDevice { _ = Glibc.close(fd) }
        return try state.withLock { s throws(BackendError) in
            try s.allocateVDevice(viommu: viommu, tenant: tenant, hostDeviceID: device.id, virtualStreamID: virtualStreamID,
                                  name: name)
        }
    }

    /// The ID registers this pSMMU was configured with, as `IOMMU_GET_HW_INFO` (`arm_smmu_hw_info`)
    /// reads them through the viommu's device.
    /// - Throws: `.unknownHandle` (ENOENT) for an unknown viommu.
    public func hardwareInfo(viommu: ViommuHandle) throws(BackendError) -> IDRegisters {
        try hardwareInfo(viommu: viommu, tenant: .host)
    }

    func hardwareInfo(viommu: ViommuHandle, tenant: TenantID) throws(BackendError) -> IDRegisters {
        try state.withLock { s throws(BackendError) in
            guard s.viommu(viommu, of: tenant) != nil else {
                throw BackendError(.unknownHandle, errno: Errno.noSuchFileOrDirectory.rawValue, "\(name): \(viommu) is not attached")
            }
            return idRegisters
        }
    }

    /// Attaches the vdevice's device to `domain`, replacing its attachment in one step
    /// (`VFIO_DEVICE_ATTACH_IOMMUFD_PT` → `iommufd_device_replace`, make-before-break: the device is
    /// never without a domain, and a refused attach leaves it where it was). Its DMA then translates
    /// through `domain`: a nested HWPT's vSTE (stage 1, then stage 2); ``DeviceDomain/abort``: every
    /// transaction aborted, no event; ``DeviceDomain/bypass`` and ``DeviceDomain/nestParent``: stage 2
    /// only. Events of a nested, abort or bypass attachment go to the viommu with the device's vSID
    /// there (the kernel's vmaster); on the nest parent, a paging domain, nowhere.
    ///
    /// The STE write drops the device's cached STE and CDs, and `arm_smmu_attach_commit` its ATC.
    /// Attaching to the domain the device is already on changes nothing (`iommufd_device_do_replace`).
    /// - Throws: `.unknownHandle` (ENOENT) for an unknown vdevice or HWPT; `.invalidArgument` (EINVAL)
    ///   for a nested HWPT of another viommu. (The kernel itself would refuse that one with ENOENT in
    ///   `arm_vsmmu_attach_prepare` for a translating vSTE, the device having no vSID on that viommu,
    ///   and accept it for an abort or bypass vSTE; the backends refuse it before asking, as the iommufd
    ///   backend does.)
    public func attachDevice(_ vdevice: VDeviceHandle, to domain: DeviceDomain) throws(BackendError) {
        try state.withLock { s throws(BackendError) in try s.attachDevice(vdevice, to: domain, tenant: .host, name: name) }
    }

    /// Destroys a vdevice. A device attached through it is first put back on its nest parent (an STE
    /// write), as the iommufd backend does, so that its HWPT can then be destroyed.
    /// - Throws: `.unknownHandle`.
    public func destroyVDevice(_ vdevice: VDeviceHandle) throws(BackendError) {
        try state.withLock { s throws(BackendError) in try s.destroyVDevice(vdevice, tenant: .host, name: name) }
    }

    /// Allocates a nested HWPT on `viommu` (`IOMMU_HWPT_ALLOC` with `pt_id` = the viommu): the STE the
    /// kernel would write (``StreamTableEntry/nestingValidated()``), with `contextDescriptors` as its CD
    /// table in guest memory (index = SubstreamID; CDs not given read as invalid). It only allocates:
    /// no device uses it until ``attachDevice(_:to:)``.
    /// - Throws: `.invalidArgument` for an unknown viommu (EINVAL: `iommufd_hwpt_alloc` turns a failed
    ///   `iommufd_get_object` into `-EINVAL`), a device not behind this pSMMU (EINVAL), a vSTE the kernel
    ///   rejects (EIO; the message gives the reason) or more CDs than the STE links (EINVAL).
    public func allocateNestedHWPT(viommu: ViommuHandle, hostDeviceID: UInt32, ste: StreamTableEntry,
                                   contextDescriptors: [ContextDescriptor]) throws(BackendError) -> HWPTHandle {
        try state.withLock { s throws(BackendError) in
            try s.allocateNestedHWPT(viommu: viommu, tenant: .host, hostDeviceID: hostDeviceID, ste: ste,
                                     contextDescriptors: contextDescriptors, name: name)
        }
    }

    /// Destroys a nested HWPT that no device is attached to.
    /// - Throws: `.unknownHandle` (ENOENT); `.busy` (EBUSY) while a device is attached to it (each
    ///   attachment holds a reference, so `iommufd_object_remove` refuses).
    public func destroyHWPT(_ hwpt: HWPTHandle) throws(BackendError) {
        try state.withLock { s throws(BackendError) in try s.destroyHWPT(hwpt, tenant: .host, name: name) }
    }

    // MARK: - PSMMUBackend: commands and events

    /// Executes `commands` on `viommu` in order and returns once the cost model's time has passed.
    ///
    /// Each command goes through the kernel's conversion (``ViommuCommandConversion``), then the armed
    /// faults, then the caches. The first command refused (`CERROR_ILL`, errno EIO, a message naming the
    /// opcode) or failed by an injected fault stops the batch: `completed` is its index and nothing after
    /// it is processed. A command the kernel passes but the SMMU finds illegal (an ATC_INV or CFGI_CD
    /// with SSEC set) is skipped without effect and counts as completed
    /// (``SimulatedSMMUCounters/illegalCommandsSkipped``). An unknown viommu fails the whole batch with
    /// `CERROR_ABT` (errno ENOENT: `iommufd_get_object` fails before any command is read).
    /// Armed stall gates block the call on entry, outside the model's lock.
    public func invalidate(viommu: ViommuHandle, commands: UnsafeBufferPointer<Command>) -> InvalidationResult {
        invalidate(viommu: viommu, commands: commands, tenant: .host)
    }

    func invalidate(viommu: ViommuHandle, commands: UnsafeBufferPointer<Command>, tenant: TenantID) -> InvalidationResult {
        var gatesPassed = false
        while true {
            var stallOn: [StallGate] = []
            let outcome: SimulatedSMMUState.InvalidationOutcome? = state.withLock { s in
                if !gatesPassed, !s.gates.isEmpty {
                    s.gates.removeAll { $0.isReleased }
                    stallOn = s.gates.filter { $0.covers(viommu) }
                    if !stallOn.isEmpty { return nil }
                }
                return s.invalidate(viommu: viommu, tenant: tenant, commands: commands)
            }
            guard let outcome else {
                var stalled = 0
                for gate in stallOn where gate.stall() { stalled += 1 }
                if stalled > 0 { state.withLock { $0.model.callsStalled += 1 } }
                gatesPassed = true
                continue
            }
            if let deadline = outcome.deadline {
                CostWait.wait(until: deadline, spinNanoseconds: outcome.spinNanoseconds)
            }
            return outcome.result
        }
    }

    /// Takes the event records queued for `viommu` since the last call, oldest first, with vSIDs: the
    /// pull path, for a tenant without a sink (with one, the queue drains into the sink as events are
    /// raised). A loss recorded in the queue is forgotten here (it was counted:
    /// ``SimulatedSMMUCounters/eventsLost``).
    public func takeEvents(viommu: ViommuHandle) -> [EventRecord] {
        state.withLock { $0.takeEvents(viommu: viommu, tenant: .host) }
    }

    /// Where the events of ``TenantID/host``'s viommus go from now on; see
    /// ``setEventSink(_:tenant:)``.
    public func setEventSink(_ sink: (any ViommuEventSink)?) { setEventSink(sink, tenant: .host) }

    /// Where the events of `tenant`'s viommus go from now on (`nil`: they stay queued for
    /// ``takeEvents(viommu:)``). Records already queued, and a loss, are delivered now.
    ///
    /// **The model of delivery.** Each viommu keeps its vEVENTQ (`eventQueueDepth` records, as the
    /// kernel's `veventq_depth`). With a sink the queue drains into the sink at once: the thread that
    /// raised an event (``simulateDMA(_:)``) delivers it, after the model's lock is released, before it
    /// returns. If another thread is delivering already, that thread delivers it instead (one thread
    /// delivers at a time, in queue order, so one viommu's events reach the sink in the order they were
    /// raised, and no thread waits for another's sink call). So a queue overflows only without a sink or
    /// when the sink is slower than the events raised meanwhile; the batch after the loss has
    /// ``ViommuEvents/lostBefore`` set, as a read of the kernel's vEVENTQ after an overflow starts with its
    /// `IOMMU_VEVENTQ_FLAG_LOST_EVENTS` header (`iommufd_veventq_fops_read`). A batch already taken by a
    /// delivering thread may reach the sink after its viommu was detached.
    func setEventSink(_ sink: (any ViommuEventSink)?, tenant: TenantID) {
        state.withLock { $0.setEventSink(sink, tenant: tenant) }
        deliverPendingEvents()
    }

    /// Delivers what the queues hold for the sinks, outside the model's lock, unless another thread is
    /// doing it (it then delivers these too): see ``setEventSink(_:tenant:)``.
    func deliverPendingEvents() {
        var batches: [(any ViommuEventSink, ViommuEvents)] = state.withLock { s in
            guard !s.delivering, !s.pendingDelivery.isEmpty else { return [] }
            let batches = s.drainForSinks()
            s.delivering = !batches.isEmpty
            return batches
        }
        while !batches.isEmpty {
            for (sink, events) in batches { sink.viommuEventsArrived(events) }
            batches = state.withLock { s in
                let batches = s.drainForSinks()
                if batches.isEmpty { s.delivering = false }
                return batches
            }
        }
    }

    public var counters: BackendCounters { state.withLock { $0.backendCounters } }

    /// The model's own counters: caches, DMA, faults, stalls, cost.
    public var simulationCounters: SimulatedSMMUCounters { state.withLock { $0.simulationCounters } }

    // MARK: - Device DMA

    /// Models one DMA access of a simulated device, as the SMMU translates it through the domain the
    /// device is attached to (``attachDevice(_:to:)``; its nest parent until then), filling the caches
    /// on the way, and delivers the event the kernel would forward to the device's viommu (to the sink,
    /// ``setEventSink(_:)``, or its queue for ``takeEvents(viommu:)``).
    ///
    /// The TLB serves a hit within the permission the filling walk found: a write hitting a read-only
    /// entry is F_PERMISSION, any other hit is served whatever the tables now hold (a stale entry, what
    /// a missed invalidation looks like). A miss walks to `access.walk`: ``StageOneWalk/unmapped`` is
    /// F_TRANSLATION, ``StageOneWalk/readOnly`` F_PERMISSION for a write (a read fills a read-only entry),
    /// ``StageOneWalk/accessFlagClear`` F_ACCESS and ``StageOneWalk/outputAddressTooLarge`` F_ADDR_SIZE
    /// (a fault caches nothing), ``StageOneWalk/readWrite`` fills a writable entry. Configuration errors
    /// come first: C_BAD_STE, F_STREAM_DISABLED, C_BAD_SUBSTREAMID, C_BAD_CD (see the STE and CD rules
    /// in ``SimulatedSMMUState``'s `translate`).
    ///
    /// - `access.size`: the size of the page-table entry that maps the address (4 KiB page, 2 MiB block,
    ///   …): a power of two of at least 4 KiB. A fill caches `[address aligned to size, + size)`.
    /// - `access.throughATS`: an ATS translation: served by the device's ATC when it holds the address,
    ///   otherwise translated by the SMMU (F_BAD_ATS_TREQ unless the STE has EATS = 1) and cached in the
    ///   ATC. A failed ATS translation records no event except F_BAD_ATS_TREQ.
    /// - Returns: what happened; a fault's record carries the physical StreamID. The viommu the device
    ///   is attached through (its vmaster) receives it with the vSID when the kernel forwards that
    ///   record (``ViommuEventForwarding``); other records, and every record of a device on its nest
    ///   parent, are only counted (``SimulatedSMMUCounters/eventsNotForwarded``).
    /// - Throws: `.invalidArgument` for a device not behind this pSMMU or a bad `size`.
    @discardableResult
    public func simulateDMA(_ access: SimulatedDMA) throws(BackendError) -> DMAOutcome {
        try simulateDMA(access, tenant: .host)
    }

    func simulateDMA(_ access: SimulatedDMA, tenant: TenantID) throws(BackendError) -> DMAOutcome {
        let outcome = try state.withLock { s throws(BackendError) in try s.access(access, of: tenant, name: name) }
        deliverPendingEvents()
        return outcome
    }

    /// A read of `hostDeviceID` at `address` (``simulateDMA(_:)``), `mapped` saying whether the guest's
    /// page tables map it read/write now or not at all: a TLB miss on an unmapped address is
    /// F_TRANSLATION; a TLB hit is served regardless (a stale entry).
    @discardableResult
    public func touch(hostDeviceID: UInt32, substreamID: SubstreamID? = nil, address: UInt64,
                      size: UInt64 = 4096, mapped: Bool = true,
                      throughATS: Bool = false) throws(BackendError) -> DMAOutcome {
        try touch(hostDeviceID: hostDeviceID, substreamID: substreamID, address: address, size: size, mapped: mapped,
                  throughATS: throughATS, tenant: .host)
    }

    func touch(hostDeviceID: UInt32, substreamID: SubstreamID?, address: UInt64, size: UInt64, mapped: Bool,
               throughATS: Bool, tenant: TenantID) throws(BackendError) -> DMAOutcome {
        try simulateDMA(SimulatedDMA(hostDeviceID: hostDeviceID, substreamID: substreamID, address: address, size: size,
                                     write: false, throughATS: throughATS, walk: mapped ? .readWrite : .unmapped),
                        tenant: tenant)
    }

    /// Replaces `hwpt`'s CD table in guest memory, as the guest rewrites its CDs (the STE is unchanged).
    /// Like real hardware, the configuration cache keeps the CDs it holds until a `CMD_CFGI_CD(_ALL)`
    /// drops them; the next fetch reads the new table.
    /// - Throws: `.unknownHandle`; `.invalidArgument` for more CDs than the STE links.
    public func updateContextDescriptors(_ hwpt: HWPTHandle,
                                         _ contextDescriptors: [ContextDescriptor]) throws(BackendError) {
        try updateContextDescriptors(hwpt, contextDescriptors, tenant: .host)
    }

    func updateContextDescriptors(_ hwpt: HWPTHandle, _ contextDescriptors: [ContextDescriptor],
                                  tenant: TenantID) throws(BackendError) {
        try state.withLock { s throws(BackendError) in
            guard var record = s.hwpts[hwpt], record.tenant == tenant else {
                throw BackendError(.unknownHandle, errno: Errno.noSuchFileOrDirectory.rawValue, "\(hwpt) is not a HWPT of \(name)")
            }
            guard record.ste.translatesStage1 else { return }
            guard contextDescriptors.count <= record.ste.contextDescriptorCount else {
                throw BackendError(.invalidArgument, errno: Errno.invalidArgument.rawValue,
                                   "\(contextDescriptors.count) CDs given for an STE that links \(record.ste.contextDescriptorCount)")
            }
            record.contextDescriptors = contextDescriptors
            s.hwpts[hwpt] = record
        }
    }

    /// Writes CD `substreamID` of `hwpt`'s CD table, as the guest rewrites a CD in its memory: the
    /// configuration cache keeps the old one until a `CMD_CFGI_CD(_ALL)` drops it.
    /// - Throws: `.unknownHandle`; `.invalidArgument` when the STE links no CD `substreamID`.
    public func writeContextDescriptor(_ cd: ContextDescriptor, hwpt: HWPTHandle,
                                       substreamID: SubstreamID) throws(BackendError) {
        try state.withLock { s throws(BackendError) in
            guard var record = s.hwpts[hwpt], record.tenant == .host else {
                throw BackendError(.unknownHandle, errno: Errno.noSuchFileOrDirectory.rawValue, "\(hwpt) is not a HWPT of \(name)")
            }
            guard record.ste.translatesStage1, Int(substreamID) < record.ste.contextDescriptorCount else {
                throw BackendError(.invalidArgument, errno: Errno.invalidArgument.rawValue, "the STE of \(hwpt) links no CD \(substreamID)")
            }
            let index = Int(substreamID)
            if record.contextDescriptors.count <= index {
                record.contextDescriptors += Array(repeating: ContextDescriptor(),
                                                   count: index + 1 - record.contextDescriptors.count)
            }
            record.contextDescriptors[index] = cd
            s.hwpts[hwpt] = record
        }
    }

    /// Writes CD `substreamID` of the CD table of the nested HWPT `hostDeviceID` is attached to.
    /// - Throws: `.invalidArgument` for a device not behind this pSMMU, not attached to a nested HWPT,
    ///   or whose STE links no such CD.
    public func writeContextDescriptor(_ cd: ContextDescriptor, hostDeviceID: UInt32,
                                       substreamID: SubstreamID) throws(BackendError) {
        guard let hwpt = installedHWPT(hostDeviceID: hostDeviceID) else {
            throw BackendError(.invalidArgument, errno: Errno.invalidArgument.rawValue, "device \(hostDeviceID) is not attached to a nested HWPT on \(name)")
        }
        try writeContextDescriptor(cd, hwpt: hwpt, substreamID: substreamID)
    }

    // MARK: - Queries

    /// The viommus attached, ascending.
    public var viommus: [ViommuHandle] {
        state.withLock { $0.viommus.keys.sorted { $0.rawValue < $1.rawValue } }
    }

    /// The VMID of `viommu` (its nest parent's), `nil` for an unknown one.
    public func vmid(of viommu: ViommuHandle) -> VMID? { state.withLock { $0.viommus[viommu]?.vmid } }

    /// The VMID of the named nest-parent S2 `hwptID`, `nil` when there is none (never named, or destroyed).
    public func vmid(ofNestParent hwptID: UInt32) -> VMID? {
        vmid(ofNestParent: hwptID, tenant: .host)
    }

    func vmid(ofNestParent hwptID: UInt32, tenant: TenantID) -> VMID? {
        state.withLock { $0.nestParents[.named(tenant, hwptID)]?.vmid }
    }

    /// vSID → pSID of `viommu`'s vdevices.
    public func streamIDMap(viommu: ViommuHandle) -> [StreamID: StreamID] {
        state.withLock { $0.viommus[viommu]?.physicalStreamIDs ?? [:] }
    }

    /// Commands `viommu` processed (executed or failed) since attach: the count
    /// ``FaultCountOrigin/attach`` refers to.
    public func commandsProcessed(viommu: ViommuHandle) -> UInt64? {
        state.withLock { $0.viommus[viommu]?.processed }
    }

    /// The nested HWPT `hostDeviceID` is attached to, if any.
    public func installedHWPT(hostDeviceID: UInt32) -> HWPTHandle? {
        state.withLock { $0.device(hostDeviceID, of: .host)?.hwpt }
    }

    /// The domain `hostDeviceID` is attached to (``DeviceDomain/nestParent`` until its first attach);
    /// `nil` for a device not behind this pSMMU.
    public func domain(hostDeviceID: UInt32) -> DeviceDomain? { domain(hostDeviceID: hostDeviceID, tenant: .host) }

    func domain(hostDeviceID: UInt32, tenant: TenantID) -> DeviceDomain? {
        state.withLock { $0.device(hostDeviceID, of: tenant)?.domain }
    }

    /// The vdevice of `hostDeviceID` (its first, when a kernel before 6.17 let it have several), if any.
    public func vdevice(hostDeviceID: UInt32) -> VDeviceHandle? {
        state.withLock { $0.device(hostDeviceID, of: .host)?.vdevices.first }
    }

    /// The vdevices of `hostDeviceID`, in allocation order.
    public func vdevices(hostDeviceID: UInt32) -> [VDeviceHandle] { vdevices(hostDeviceID: hostDeviceID, tenant: .host) }

    func vdevices(hostDeviceID: UInt32, tenant: TenantID) -> [VDeviceHandle] {
        state.withLock { $0.device(hostDeviceID, of: tenant)?.vdevices ?? [] }
    }

    /// Every TLB entry tagged with `viommu`'s VMID (shared with the other viommus on its nest parent),
    /// sorted by (ASID, address, size).
    public func tlbEntries(viommu: ViommuHandle) -> [TLBEntry] {
        state.withLock { s in s.viommus[viommu].map { s.tlb.entries(vmid: $0.vmid) } ?? [] }
    }

    /// Every TLB entry, sorted by (VMID, ASID, address, size).
    public func tlbEntries() -> [TLBEntry] { state.withLock { $0.tlb.entries() } }

    /// Number of TLB entries.
    public var tlbEntryCount: Int { state.withLock { $0.tlb.count } }

    /// Whether the TLB holds an entry of (`viommu`'s VMID, `asid`) translating `address`.
    public func isCached(viommu: ViommuHandle, asid: ASID, address: UInt64) -> Bool {
        state.withLock { s in
            guard let vmid = s.viommus[viommu]?.vmid else { return false }
            return s.tlb.entry(vmid: vmid, asid: asid, covering: address) != nil
        }
    }

    /// The configuration cache of ``TenantID/host``'s devices, by physical StreamID.
    public var configCache: ConfigCacheSnapshot {
        state.withLock { $0.spaces[.host]?.config.snapshot ?? ConfigCacheSnapshot() }
    }

    /// The cached STE of `hostDeviceID`.
    public func cachedSTE(hostDeviceID: UInt32) -> StreamTableEntry? {
        guard let sid = devices[hostDeviceID] else { return nil }
        return state.withLock { $0.spaces[.host]?.config.ste(sid) }
    }

    /// The cached CDs of `hostDeviceID`, by SubstreamID.
    public func cachedCDs(hostDeviceID: UInt32) -> [SubstreamID: ContextDescriptor] {
        guard let sid = devices[hostDeviceID] else { return [:] }
        return state.withLock { $0.spaces[.host]?.config.contextDescriptors[sid] ?? [:] }
    }

    /// The ATC entries of `hostDeviceID`, sorted by (SubstreamID, address).
    public func atcEntries(hostDeviceID: UInt32) -> [ATCEntry] {
        guard let sid = devices[hostDeviceID] else { return [] }
        return state.withLock { $0.spaces[.host]?.atc.entries(streamID: sid) ?? [] }
    }

    /// Event records waiting in `viommu`'s queue.
    public func pendingEventCount(viommu: ViommuHandle) -> Int {
        state.withLock { $0.viommus[viommu]?.events.count ?? 0 }
    }

    // MARK: - Fault injection

    /// Arms a fault that fails one command of `viommu`: the one at 0-based position `index` of the
    /// commands it processes, counted from its attach or from now. The command is not executed; the
    /// batch stops there with `error` (no errno). Commands past a failure are not processed, so they
    /// do not advance the count.
    /// - Throws: `.unknownHandle` for an unknown viommu; `.invalidArgument` when, counted from attach,
    ///   the position has already passed.
    @discardableResult
    public func failCommand(at index: UInt64, countedFrom origin: FaultCountOrigin = .arming,
                            on viommu: ViommuHandle,
                            with error: CommandQueueError = .illegal) throws(BackendError) -> InjectedFaultID {
        try state.withLock { s throws(BackendError) in
            guard let processed = s.viommus[viommu]?.processed else {
                throw BackendError(.unknownHandle, errno: Errno.noSuchFileOrDirectory.rawValue, "\(viommu) is not a viommu of \(name)")
            }
            let position: UInt64
            switch origin {
            case .arming: position = processed &+ index
            case .attach:
                guard index >= processed else {
                    throw BackendError(.invalidArgument, errno: Errno.invalidArgument.rawValue, "\(viommu) has already processed command #\(index)")
                }
                position = index
            }
            let id = InjectedFaultID(rawValue: s.nextFaultID)
            s.nextFaultID += 1
            s.faults.append(ArmedFault(id: id, viommu: viommu, trigger: .position(position), error: error, remaining: 1))
            return id
        }
    }

    /// Arms a fault that fails every command `predicate` accepts (given the command as the guest wrote
    /// it, before the kernel's rewrite), `times` times (`nil`: until disarmed), on `viommu` or, with
    /// `nil`, on every viommu.
    /// - Throws: `.unknownHandle` for an unknown viommu.
    @discardableResult
    public func failCommands(on viommu: ViommuHandle? = nil, with error: CommandQueueError = .illegal,
                             times: Int? = nil,
                             where predicate: @escaping @Sendable (Command) -> Bool) throws(BackendError) -> InjectedFaultID {
        try state.withLock { s throws(BackendError) in
            if let viommu, s.viommus[viommu] == nil {
                throw BackendError(.unknownHandle, errno: Errno.noSuchFileOrDirectory.rawValue, "\(viommu) is not a viommu of \(name)")
            }
            let id = InjectedFaultID(rawValue: s.nextFaultID)
            s.nextFaultID += 1
            s.faults.append(ArmedFault(id: id, viommu: viommu, trigger: .matching(predicate), error: error,
                                       remaining: times))
            return id
        }
    }

    /// Disarms a fault. - Returns: whether it was still armed.
    @discardableResult
    public func disarmFault(_ id: InjectedFaultID) -> Bool {
        state.withLock { s in
            guard let i = s.faults.firstIndex(where: { $0.id == id }) else { return false }
            s.faults.remove(at: i)
            return true
        }
    }

    /// Disarms every fault.
    public func disarmAllFaults() { state.withLock { $0.faults.removeAll() } }

    /// Faults still armed.
    public var armedFaultCount: Int { state.withLock { $0.faults.count } }

    /// Arms a stall: from now until the gate is released, every `invalidate` call on `viommu` (`nil`:
    /// on every viommu) blocks on entry until ``StallGate/release()`` or, with `duration`, until that
    /// long has passed for the call.
    public func stallInvalidations(on viommu: ViommuHandle? = nil, for duration: Duration? = nil) -> StallGate {
        let gate = StallGate(viommu: viommu, duration: duration)
        state.withLock { $0.gates.append(gate) }
        return gate
    }
}
