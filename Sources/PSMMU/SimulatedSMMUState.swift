import SMMUv3

/// A host device behind the pSMMU.
struct DeviceRecord: Sendable {
    let streamID: StreamID
    /// Its vdevice, if a VMM gave it a vSID.
    var vdevice: VDeviceHandle?
    /// The nested HWPT its STE currently comes from; `nil`: no vSTE installed (stage-1 bypass).
    var hwpt: HWPTHandle?
}

/// A viommu: one VM on this pSMMU.
///
/// A class so that the invalidation path reads and updates it where it is (one retain), rather than
/// copying its maps and sets out of the dictionary and back (eight atomic reference-count operations
/// per backend call). `@unchecked Sendable`: like all of ``SimulatedSMMUState``, only touched under the
/// ``SimulatedSMMU``'s mutex, and the state is never copied.
final class ViommuRecord: @unchecked Sendable {
    let handle: ViommuHandle
    let vmid: VMID
    /// vSID → pSID of its vdevices.
    var physicalStreamIDs: [StreamID: StreamID] = [:]
    var vdevices: Set<VDeviceHandle> = []
    var hwpts: Set<HWPTHandle> = []
    /// Event records not yet taken, vSIDs substituted.
    var events: [EventRecord] = []
    /// Commands processed (executed or failed) since attach: the position fault injection counts.
    var processed: UInt64 = 0

    init(handle: ViommuHandle, vmid: VMID) {
        self.handle = handle
        self.vmid = vmid
    }
}

struct VDeviceRecord: Sendable {
    let viommu: ViommuHandle
    let hostDeviceID: UInt32
    let virtualStreamID: StreamID
    let physicalStreamID: StreamID
}

struct HWPTRecord: Sendable {
    let viommu: ViommuHandle
    let hostDeviceID: UInt32
    /// The STE the kernel installed (after `nestingValidated()`).
    let ste: StreamTableEntry
    /// The CD table in guest memory, by SubstreamID; missing entries read as invalid CDs.
    var contextDescriptors: [ContextDescriptor]
}

/// Everything a ``SimulatedSMMU`` holds, guarded by its one mutex.
struct SimulatedSMMUState: Sendable {
    var deviceRecords: [UInt32: DeviceRecord]
    var viommus: [ViommuHandle: ViommuRecord] = [:]
    /// The viommu of the last invalidation: consecutive calls for one viommu skip the dictionary's hash.
    var lastInvalidated: ViommuRecord?
    var vdevices: [VDeviceHandle: VDeviceRecord] = [:]
    var hwpts: [HWPTHandle: HWPTRecord] = [:]
    var usedVMIDs: Set<VMID> = []
    /// iommufd-like object ids, shared by viommus, vdevices and HWPTs.
    var nextObjectID: UInt32 = 1
    var nextFaultID: UInt64 = 1

    var tlb = TLBModel()
    var atc = ATCModel()
    var config = ConfigCacheModel()

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

    init(devices: [UInt32: StreamID], costModel: CostModel, eventQueueDepth: Int) {
        deviceRecords = devices.mapValues { DeviceRecord(streamID: $0) }
        self.costModel = costModel
        self.eventQueueDepth = eventQueueDepth
    }

    mutating func takeObjectID() -> UInt32 {
        defer { nextObjectID &+= 1 }
        return nextObjectID
    }

    // MARK: - Control path

    mutating func attachViommu(_ request: ViommuAttachRequest, name: String) throws(BackendError) -> ViommuHandle {
        guard deviceRecords[request.hostDeviceID] != nil else {
            throw BackendError(.invalidArgument, errno: Errno.invalid, "device \(request.hostDeviceID) is not behind \(name)")
        }
        guard let vmid = (1...VMID.max).first(where: { !usedVMIDs.contains($0) }) else {
            throw BackendError(.failed, errno: Errno.noSpace, "\(name) has no free VMID")
        }
        usedVMIDs.insert(vmid)
        let handle = ViommuHandle(rawValue: takeObjectID())
        viommus[handle] = ViommuRecord(handle: handle, vmid: vmid)
        viommusAttached += 1
        return handle
    }

    mutating func detachViommu(_ viommu: ViommuHandle, name: String) throws(BackendError) {
        guard let record = viommus[viommu] else {
            throw BackendError(.unknownHandle, errno: Errno.noEntry, "\(viommu) is not a viommu of \(name)")
        }
        guard record.vdevices.isEmpty, record.hwpts.isEmpty else {
            throw BackendError(.busy, errno: Errno.busy, "\(viommu) still has \(record.vdevices.count) vdevice(s) and \(record.hwpts.count) HWPT(s)")
        }
        viommus.removeValue(forKey: viommu)
        if lastInvalidated?.handle == viommu { lastInvalidated = nil }
        // The kernel invalidates a VMID before freeing it, so its next owner inherits no entry.
        model.tlbEntriesFlushedOnDetach += UInt64(tlb.invalidate(vmid: record.vmid))
        usedVMIDs.remove(record.vmid)
        faults.removeAll { $0.viommu == viommu }
        gates.removeAll { $0.viommu == viommu }
    }

    mutating func allocateVDevice(viommu: ViommuHandle, hostDeviceID: UInt32, virtualStreamID: StreamID,
                                  name: String) throws(BackendError) -> VDeviceHandle {
        guard let record = viommus[viommu] else {
            throw BackendError(.unknownHandle, errno: Errno.noEntry, "\(viommu) is not a viommu of \(name)")
        }
        guard let device = deviceRecords[hostDeviceID] else {
            throw BackendError(.invalidArgument, errno: Errno.invalid, "device \(hostDeviceID) is not behind \(name)")
        }
        if let existing = device.vdevice {
            throw BackendError(.alreadyExists, errno: Errno.exists, "device \(hostDeviceID) already has \(existing)")
        }
        guard record.physicalStreamIDs[virtualStreamID] == nil else {
            throw BackendError(.alreadyExists, errno: Errno.exists, "vSID \(virtualStreamID) is already used on \(viommu)")
        }
        let handle = VDeviceHandle(rawValue: takeObjectID())
        vdevices[handle] = VDeviceRecord(viommu: viommu, hostDeviceID: hostDeviceID,
                                         virtualStreamID: virtualStreamID, physicalStreamID: device.streamID)
        viommus[viommu]?.physicalStreamIDs[virtualStreamID] = device.streamID
        viommus[viommu]?.vdevices.insert(handle)
        deviceRecords[hostDeviceID]?.vdevice = handle
        vdevicesAllocated += 1
        return handle
    }

    mutating func destroyVDevice(_ vdevice: VDeviceHandle, name: String) throws(BackendError) {
        guard let record = vdevices.removeValue(forKey: vdevice) else {
            throw BackendError(.unknownHandle, errno: Errno.noEntry, "\(vdevice) is not a vdevice of \(name)")
        }
        viommus[record.viommu]?.physicalStreamIDs.removeValue(forKey: record.virtualStreamID)
        viommus[record.viommu]?.vdevices.remove(vdevice)
        deviceRecords[record.hostDeviceID]?.vdevice = nil
    }

    mutating func allocateNestedHWPT(viommu: ViommuHandle, hostDeviceID: UInt32, ste: StreamTableEntry,
                                     contextDescriptors: [ContextDescriptor],
                                     name: String) throws(BackendError) -> HWPTHandle {
        guard viommus[viommu] != nil else {
            throw BackendError(.unknownHandle, errno: Errno.noEntry, "\(viommu) is not a viommu of \(name)")
        }
        guard deviceRecords[hostDeviceID] != nil else {
            throw BackendError(.invalidArgument, errno: Errno.invalid, "device \(hostDeviceID) is not behind \(name)")
        }
        let installed: StreamTableEntry
        do {
            installed = try ste.nestingValidated()
        } catch {
            throw BackendError(.invalidArgument, errno: Errno.io, "vSTE rejected: \(error)")
        }
        if installed.translatesStage1, contextDescriptors.count > installed.contextDescriptorCount {
            throw BackendError(.invalidArgument, errno: Errno.invalid,
                               "\(contextDescriptors.count) CDs given for an STE that links \(installed.contextDescriptorCount)")
        }
        let handle = HWPTHandle(rawValue: takeObjectID())
        hwpts[handle] = HWPTRecord(viommu: viommu, hostDeviceID: hostDeviceID, ste: installed,
                                   contextDescriptors: installed.translatesStage1 ? contextDescriptors : [])
        viommus[viommu]?.hwpts.insert(handle)
        install(hwpt: handle, on: hostDeviceID)
        hwptsAllocated += 1
        return handle
    }

    mutating func destroyHWPT(_ hwpt: HWPTHandle, name: String) throws(BackendError) {
        guard let record = hwpts.removeValue(forKey: hwpt) else {
            throw BackendError(.unknownHandle, errno: Errno.noEntry, "\(hwpt) is not a HWPT of \(name)")
        }
        viommus[record.viommu]?.hwpts.remove(hwpt)
        if deviceRecords[record.hostDeviceID]?.hwpt == hwpt { install(hwpt: nil, on: record.hostDeviceID) }
    }

    /// Makes `hwpt` the device's STE source; the kernel's STE write ends with a CFGI_STE of the pSID,
    /// which drops the cached STE and CDs.
    private mutating func install(hwpt: HWPTHandle?, on hostDeviceID: UInt32) {
        guard let streamID = deviceRecords[hostDeviceID]?.streamID else { return }
        deviceRecords[hostDeviceID]?.hwpt = hwpt
        let dropped = config.dropStream(streamID)
        model.configEntriesDroppedOnSTEChange += UInt64(dropped.stes + dropped.cds)
    }

    // MARK: - Events

    /// Delivers `record` (physical StreamID) to the viommu of the device's vdevice, vSID substituted.
    mutating func report(_ record: EventRecord, hostDeviceID: UInt32) {
        guard let vdevice = deviceRecords[hostDeviceID]?.vdevice, let owner = vdevices[vdevice],
              let queued = viommus[owner.viommu]?.events.count else {
            model.eventsLost += 1
            return
        }
        guard queued < eventQueueDepth else {
            model.eventsLost += 1
            return
        }
        var virtual = record
        virtual.streamID = owner.virtualStreamID
        viommus[owner.viommu]?.events.append(virtual)
        eventsReported += 1
    }

    mutating func takeEvents(viommu: ViommuHandle) -> [EventRecord] {
        guard let events = viommus[viommu]?.events, !events.isEmpty else { return [] }
        viommus[viommu]?.events = []
        return events
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

/// The errno values the simulated pSMMU reports, as the iommufd ioctls would.
enum Errno {
    /// `ENOENT`: no such object.
    static let noEntry: Int32 = 2
    /// `EIO`: the kernel refuses a vSTE or a command.
    static let io: Int32 = 5
    /// `EBUSY`: the object is still in use.
    static let busy: Int32 = 16
    /// `EEXIST`: the object already exists.
    static let exists: Int32 = 17
    /// `EINVAL`: an invalid argument.
    static let invalid: Int32 = 22
    /// `ENOSPC`: no identifier left.
    static let noSpace: Int32 = 28
}
