#if canImport(Glibc)
import Glibc
#endif
import SMMUv3

/// A software model of one physical SMMUv3 behind the kernel's iommufd vIOMMU interface: the
/// embedded default backend, used on hosts without the hardware, in tests and in benchmarks.
///
/// What it models:
/// - **Objects**, with the kernel's rules: viommus (each with a VMID unique on this pSMMU), vdevices
///   (a device behind this pSMMU, one vdevice per device, a vSID unique per viommu) and nested
///   stage-1 HWPTs from a vSTE (checked with ``StreamTableEntry/nestingValidated()``; installing one
///   makes it the device's STE).
/// - **Caches**: a stage-1 TLB of range entries tagged (VMID, ASID); a configuration cache (STE by
///   pSID, CD by (pSID, SSID)); an ATC per device for ATS. Device DMA fills them:
///   ``touch(hostDeviceID:substreamID:address:size:mapped:throughATS:)``.
/// - **Commands**: ``invalidate(viommu:commands:)`` applies what the kernel accepts on a viommu with
///   the hardware's semantics, after the kernel's rewrite (VMID overwritten, TLBI_NSNH_ALL turned into
///   TLBI_NH_ALL, vSID replaced by pSID); everything else stops the batch with `CERROR_ILL`.
/// - **Events**, delivered per viommu with the vSID substituted, as the kernel's vEVENTQ does.
/// - **Time** (``CostModel``), **faults** (``failCommand(at:countedFrom:on:with:)``,
///   ``failCommands(on:with:times:where:)``), **stalls** (``stallInvalidations(on:for:)``) and
///   counters of everything (``counters``, ``simulationCounters``).
///
/// What it does not model: page tables (the caller of `touch` says whether the address is mapped and
/// by which size of entry), stage 2, walk caches (LEAF and TTL are honoured by invalidating every
/// matching entry, which is always allowed), global (nG = 0) entries, and TLB capacity (entries stay
/// until invalidated).
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
    private let state: Locked<SimulatedSMMUState>

    /// A pSMMU named `name` with `devices` (host device id → physical StreamID, all distinct) behind it.
    /// - Parameters:
    ///   - costModel: the time calls take; free by default.
    ///   - eventQueueDepth: event records a viommu holds before further ones are lost.
    public init(name: String, devices: [UInt32: StreamID], costModel: CostModel = .free,
                eventQueueDepth: Int = 1024, idRegisters: IDRegisters = .simulatedDefault) {
        precondition(Set(devices.values).count == devices.count, "two devices share a physical StreamID")
        self.name = name
        self.devices = devices
        self.idRegisters = idRegisters
        state = Locked(SimulatedSMMUState(devices: devices, costModel: costModel, eventQueueDepth: eventQueueDepth))
    }

    /// A pSMMU with `deviceCount` devices: host device ids `firstHostDeviceID + i` with physical
    /// StreamIDs `firstStreamID + i`.
    public convenience init(name: String, deviceCount: Int, firstHostDeviceID: UInt32 = 0,
                            firstStreamID: StreamID = 0, costModel: CostModel = .free,
                            eventQueueDepth: Int = 1024, idRegisters: IDRegisters = .simulatedDefault) {
        var devices: [UInt32: StreamID] = [:]
        for i in 0..<deviceCount { devices[firstHostDeviceID + UInt32(i)] = firstStreamID + StreamID(i) }
        self.init(name: name, devices: devices, costModel: costModel, eventQueueDepth: eventQueueDepth,
                  idRegisters: idRegisters)
    }

    /// The time calls take; may be changed at any time (calls in flight keep their cost).
    public var costModel: CostModel {
        get { state.withLock { $0.costModel } }
        set { state.withLock { $0.costModel = newValue } }
    }

    // MARK: - PSMMUBackend: control path

    /// Allocates a viommu with a VMID unused on this pSMMU (the lowest free one, from 1).
    /// - Throws: `.invalidArgument` when `request.hostDeviceID` is not behind this pSMMU; `.failed`
    ///   when every VMID is taken.
    public func attachViommu(_ request: ViommuAttachRequest) throws(BackendError) -> ViommuHandle {
        try state.withLock { s throws(BackendError) in try s.attachViommu(request, name: name) }
    }

    /// Destroys a viommu and frees its VMID, after flushing the TLB entries tagged with it (as the
    /// kernel does before reusing a VMID). Its armed faults and stall gates go with it.
    /// - Throws: `.unknownHandle`; `.busy` while it has vdevices or HWPTs.
    public func detachViommu(_ viommu: ViommuHandle) throws(BackendError) {
        try state.withLock { s throws(BackendError) in try s.detachViommu(viommu, name: name) }
    }

    /// - Throws: `.unknownHandle` for an unknown viommu; `.invalidArgument` (EINVAL) for a device not
    ///   behind this pSMMU; `.alreadyExists` (EEXIST) for a device that has a vdevice or a vSID in use
    ///   on the viommu.
    ///
    /// A VFIO descriptor in `device` is not needed (the model attaches by host device id): it is closed.
    public func allocateVDevice(viommu: ViommuHandle, device: HostDevice,
                                virtualStreamID: StreamID) throws(BackendError) -> VDeviceHandle {
        if let fd = device.vfioDevice { _ = Glibc.close(fd) }
        return try state.withLock { s throws(BackendError) in
            try s.allocateVDevice(viommu: viommu, hostDeviceID: device.id, virtualStreamID: virtualStreamID,
                                  name: name)
        }
    }

    /// The ID registers this pSMMU was configured with.
    public func hardwareInfo(viommu: ViommuHandle) throws(BackendError) -> IDRegisters {
        try state.withLock { s throws(BackendError) in
            guard s.viommus[viommu] != nil else {
                throw BackendError(.unknownHandle, errno: 2, "\(name): \(viommu) is not attached")
            }
            return idRegisters
        }
    }

    public func attachDevice(_ vdevice: VDeviceHandle, to domain: DeviceDomain) throws(BackendError) {
        throw BackendError(.failed, "\(name): attachDevice is being written")
    }

    /// - Throws: `.unknownHandle`.
    public func destroyVDevice(_ vdevice: VDeviceHandle) throws(BackendError) {
        try state.withLock { s throws(BackendError) in try s.destroyVDevice(vdevice, name: name) }
    }

    /// Installs a nested HWPT: the STE the kernel would write (``StreamTableEntry/nestingValidated()``)
    /// becomes the device's STE, `contextDescriptors` its CD table in guest memory (index = SubstreamID;
    /// CDs not given read as invalid). The kernel's STE write drops the device's cached STE and CDs.
    /// - Throws: `.unknownHandle` for an unknown viommu; `.invalidArgument` for a device not behind this
    ///   pSMMU, a vSTE the kernel rejects (the message gives the reason) or more CDs than the STE links.
    public func allocateNestedHWPT(viommu: ViommuHandle, hostDeviceID: UInt32, ste: StreamTableEntry,
                                   contextDescriptors: [ContextDescriptor]) throws(BackendError) -> HWPTHandle {
        try state.withLock { s throws(BackendError) in
            try s.allocateNestedHWPT(viommu: viommu, hostDeviceID: hostDeviceID, ste: ste,
                                     contextDescriptors: contextDescriptors, name: name)
        }
    }

    /// Destroys a HWPT. If it was the device's STE, the device is left with no vSTE (stage-1 bypass)
    /// and its cached STE and CDs are dropped.
    /// - Throws: `.unknownHandle`.
    public func destroyHWPT(_ hwpt: HWPTHandle) throws(BackendError) {
        try state.withLock { s throws(BackendError) in try s.destroyHWPT(hwpt, name: name) }
    }

    // MARK: - PSMMUBackend: commands and events

    /// Executes `commands` on `viommu` in order and returns once the cost model's time has passed.
    ///
    /// Each command goes through the kernel's conversion (``ViommuCommandConversion``), then the armed
    /// faults, then the caches. The first command refused (`CERROR_ILL`, errno EIO, a message naming the
    /// opcode) or failed by an injected fault stops the batch: `completed` is its index and nothing after
    /// it is processed. An unknown viommu fails the whole batch with `CERROR_ILL` (errno ENOENT).
    /// Armed stall gates block the call on entry, outside the model's lock.
    public func invalidate(viommu: ViommuHandle, commands: UnsafeBufferPointer<Command>) -> InvalidationResult {
        var gatesPassed = false
        while true {
            var stallOn: [StallGate] = []
            let outcome: SimulatedSMMUState.InvalidationOutcome? = state.withLock { s in
                if !gatesPassed, !s.gates.isEmpty {
                    s.gates.removeAll { $0.isReleased }
                    stallOn = s.gates.filter { $0.covers(viommu) }
                    if !stallOn.isEmpty { return nil }
                }
                return s.invalidate(viommu: viommu, commands: commands)
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

    /// Takes the event records queued for `viommu` since the last call, oldest first, with vSIDs.
    public func takeEvents(viommu: ViommuHandle) -> [EventRecord] {
        state.withLock { $0.takeEvents(viommu: viommu) }
    }

    public var counters: BackendCounters { state.withLock { $0.backendCounters } }

    /// The model's own counters: caches, DMA, faults, stalls, cost.
    public var simulationCounters: SimulatedSMMUCounters { state.withLock { $0.simulationCounters } }

    // MARK: - Device DMA

    /// Models one DMA access of `hostDeviceID` to `address`, as the SMMU translates it, filling the
    /// caches on the way.
    ///
    /// - Parameters:
    ///   - substreamID: the access's SubstreamID (PASID); `nil` for none (the STE's S1DSS applies).
    ///   - size: the size of the page-table entry that maps `address` (4 KiB page, 2 MiB block, …):
    ///     a power of two of at least 4 KiB. A fill caches `[address aligned to size, + size)`.
    ///   - mapped: whether the guest's page tables map `address` now. A TLB miss on an unmapped address
    ///     is an F_TRANSLATION fault; a TLB hit is served regardless (a stale entry).
    ///   - throughATS: the access is an ATS translation: served by the device's ATC when it holds the
    ///     address, otherwise translated by the SMMU (F_BAD_ATS_TREQ unless the STE has EATS = 1) and
    ///     cached in the ATC. A failed ATS translation records no event except F_BAD_ATS_TREQ.
    /// - Returns: what happened; a fault's record carries the physical StreamID, the viommu of the
    ///   device's vdevice receives it with the vSID (devices without a vdevice lose it).
    /// - Throws: `.invalidArgument` for a device not behind this pSMMU or a bad `size`.
    @discardableResult
    public func touch(hostDeviceID: UInt32, substreamID: SubstreamID? = nil, address: UInt64,
                      size: UInt64 = 4096, mapped: Bool = true,
                      throughATS: Bool = false) throws(BackendError) -> DMAOutcome {
        try state.withLock { s throws(BackendError) in
            try s.touch(hostDeviceID: hostDeviceID, substreamID: substreamID, address: address, size: size,
                        mapped: mapped, throughATS: throughATS, name: name)
        }
    }

    /// Replaces `hwpt`'s CD table in guest memory, as the guest rewrites its CDs (the STE is unchanged).
    /// Like real hardware, the configuration cache keeps the CDs it holds until a `CMD_CFGI_CD(_ALL)`
    /// drops them; the next fetch reads the new table.
    /// - Throws: `.unknownHandle`; `.invalidArgument` for more CDs than the STE links.
    public func updateContextDescriptors(_ hwpt: HWPTHandle,
                                         _ contextDescriptors: [ContextDescriptor]) throws(BackendError) {
        try state.withLock { s throws(BackendError) in
            guard var record = s.hwpts[hwpt] else {
                throw BackendError(.unknownHandle, errno: Errno.noEntry, "\(hwpt) is not a HWPT of \(name)")
            }
            guard record.ste.translatesStage1 else { return }
            guard contextDescriptors.count <= record.ste.contextDescriptorCount else {
                throw BackendError(.invalidArgument, errno: Errno.invalid,
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
            guard var record = s.hwpts[hwpt] else {
                throw BackendError(.unknownHandle, errno: Errno.noEntry, "\(hwpt) is not a HWPT of \(name)")
            }
            guard record.ste.translatesStage1, Int(substreamID) < record.ste.contextDescriptorCount else {
                throw BackendError(.invalidArgument, errno: Errno.invalid, "the STE of \(hwpt) links no CD \(substreamID)")
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

    /// Writes CD `substreamID` of the CD table of the HWPT installed for `hostDeviceID`.
    /// - Throws: `.invalidArgument` for a device not behind this pSMMU, with no HWPT installed, or whose
    ///   STE links no such CD.
    public func writeContextDescriptor(_ cd: ContextDescriptor, hostDeviceID: UInt32,
                                       substreamID: SubstreamID) throws(BackendError) {
        guard let hwpt = installedHWPT(hostDeviceID: hostDeviceID) else {
            throw BackendError(.invalidArgument, errno: Errno.invalid, "device \(hostDeviceID) has no HWPT installed on \(name)")
        }
        try writeContextDescriptor(cd, hwpt: hwpt, substreamID: substreamID)
    }

    // MARK: - Queries

    /// The viommus attached, ascending.
    public var viommus: [ViommuHandle] {
        state.withLock { $0.viommus.keys.sorted { $0.rawValue < $1.rawValue } }
    }

    /// The VMID of `viommu`, `nil` for an unknown one.
    public func vmid(of viommu: ViommuHandle) -> VMID? { state.withLock { $0.viommus[viommu]?.vmid } }

    /// vSID → pSID of `viommu`'s vdevices.
    public func streamIDMap(viommu: ViommuHandle) -> [StreamID: StreamID] {
        state.withLock { $0.viommus[viommu]?.physicalStreamIDs ?? [:] }
    }

    /// Commands `viommu` processed (executed or failed) since attach: the count
    /// ``FaultCountOrigin/attach`` refers to.
    public func commandsProcessed(viommu: ViommuHandle) -> UInt64? {
        state.withLock { $0.viommus[viommu]?.processed }
    }

    /// The HWPT whose STE `hostDeviceID` uses, if any.
    public func installedHWPT(hostDeviceID: UInt32) -> HWPTHandle? {
        state.withLock { $0.deviceRecords[hostDeviceID]?.hwpt }
    }

    /// The vdevice of `hostDeviceID`, if any.
    public func vdevice(hostDeviceID: UInt32) -> VDeviceHandle? {
        state.withLock { $0.deviceRecords[hostDeviceID]?.vdevice }
    }

    /// Every TLB entry tagged with `viommu`'s VMID, sorted by (ASID, address, size).
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

    /// The configuration cache, by physical StreamID.
    public var configCache: ConfigCacheSnapshot { state.withLock { $0.config.snapshot } }

    /// The cached STE of `hostDeviceID`.
    public func cachedSTE(hostDeviceID: UInt32) -> StreamTableEntry? {
        guard let sid = devices[hostDeviceID] else { return nil }
        return state.withLock { $0.config.ste(sid) }
    }

    /// The cached CDs of `hostDeviceID`, by SubstreamID.
    public func cachedCDs(hostDeviceID: UInt32) -> [SubstreamID: ContextDescriptor] {
        guard let sid = devices[hostDeviceID] else { return [:] }
        return state.withLock { $0.config.contextDescriptors[sid] ?? [:] }
    }

    /// The ATC entries of `hostDeviceID`, sorted by (SubstreamID, address).
    public func atcEntries(hostDeviceID: UInt32) -> [ATCEntry] {
        guard let sid = devices[hostDeviceID] else { return [] }
        return state.withLock { $0.atc.entries(streamID: sid) }
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
                throw BackendError(.unknownHandle, errno: Errno.noEntry, "\(viommu) is not a viommu of \(name)")
            }
            let position: UInt64
            switch origin {
            case .arming: position = processed &+ index
            case .attach:
                guard index >= processed else {
                    throw BackendError(.invalidArgument, errno: Errno.invalid, "\(viommu) has already processed command #\(index)")
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
                throw BackendError(.unknownHandle, errno: Errno.noEntry, "\(viommu) is not a viommu of \(name)")
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
