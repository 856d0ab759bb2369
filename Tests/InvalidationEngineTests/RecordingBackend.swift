import PSMMU
import SMMUv3
import VSMMUSystem

/// A backend double that records every call and can be told to refuse things. It checks the contract
/// the engine must keep (no command ever reaches it that a viommu would refuse).
final class RecordingBackend: PSMMUBackend {
    struct Record: Sendable {
        var viommus: [ViommuHandle] = []
        var vdevices: [VDeviceHandle: (viommu: ViommuHandle, device: UInt32, vsid: StreamID)] = [:]
        var hwpts: [HWPTHandle: (viommu: ViommuHandle, device: UInt32, ste: StreamTableEntry, cds: [ContextDescriptor])] = [:]
        var executed: [ViommuHandle: [Command]] = [:]
        /// Where each vdevice's device is attached; absent: where the VMM had it (the nest parent).
        var attachments: [VDeviceHandle: DeviceDomain] = [:]
        /// Every attach, in order.
        var attachLog: [(VDeviceHandle, DeviceDomain)] = []
        /// The control calls in order: `hwpt 4`, `attach 3 nested hwpt#4`, `destroy hwpt 4`, `destroy vdevice 3`.
        var log: [String] = []
        var calls = 0
        var next: UInt32 = 1
    }

    let name: String
    let record = Locked(Record())
    /// Commands matching this fail with CERROR_ILL (the batch stops there).
    let failing = Locked<(@Sendable (Command) -> Bool)?>(nil)
    /// Refuse the next allocation of this kind.
    let refuseNext = Locked<Set<String>>([])
    /// Holds `invalidate` calls while closed (a stalled pSMMU, on demand).
    let gate = InvalidationGate()

    init(name: String) { self.name = name }

    private func allocate() -> UInt32 {
        record.withLock { r in
            defer { r.next += 1 }
            return r.next
        }
    }

    private func refused(_ what: String) -> Bool {
        refuseNext.withLock { $0.remove(what) != nil }
    }

    func attachViommu(_ request: ViommuAttachRequest) throws(BackendError) -> ViommuHandle {
        if refused("viommu") { throw BackendError(.failed, "refused viommu") }
        let handle = ViommuHandle(rawValue: allocate())
        record.withLock { $0.viommus.append(handle) }
        return handle
    }

    func detachViommu(_ viommu: ViommuHandle) throws(BackendError) {
        let busy = record.withLock { r in r.vdevices.values.contains { $0.viommu == viommu } || r.hwpts.values.contains { $0.viommu == viommu } }
        if busy { throw BackendError(.busy, "viommu busy") }
        record.withLock { $0.viommus.removeAll { $0 == viommu } }
    }

    func allocateVDevice(viommu: ViommuHandle, device: HostDevice, virtualStreamID: StreamID) throws(BackendError) -> VDeviceHandle {
        let hostDeviceID = device.id
        if refused("vdevice") { throw BackendError(.invalidArgument, errno: 22, "device not behind this pSMMU") }
        let handle = VDeviceHandle(rawValue: allocate())
        record.withLock { $0.vdevices[handle] = (viommu, hostDeviceID, virtualStreamID) }
        return handle
    }

    func destroyVDevice(_ vdevice: VDeviceHandle) throws(BackendError) {
        let found = record.withLock {
            $0.log.append("destroy vdevice \(vdevice.rawValue)")
            $0.attachments[vdevice] = nil
            return $0.vdevices.removeValue(forKey: vdevice) != nil
        }
        if !found { throw BackendError(.unknownHandle, "no \(vdevice)") }
    }

    func allocateNestedHWPT(viommu: ViommuHandle, hostDeviceID: UInt32, ste: StreamTableEntry,
                            contextDescriptors: [ContextDescriptor]) throws(BackendError) -> HWPTHandle {
        if refused("hwpt") { throw BackendError(.invalidArgument, errno: 5, "hwpt refused") }
        let handle = HWPTHandle(rawValue: allocate())
        record.withLock {
            $0.hwpts[handle] = (viommu, hostDeviceID, ste, contextDescriptors)
            $0.log.append("hwpt \(handle.rawValue)")
        }
        return handle
    }

    func hardwareInfo(viommu: ViommuHandle) throws(BackendError) -> IDRegisters { idRegisters }

    /// What ``hardwareInfo(viommu:)`` answers.
    let idRegisters = IDRegisters.simulatedDefault

    func attachDevice(_ vdevice: VDeviceHandle, to domain: DeviceDomain) throws(BackendError) {
        if refused("attach") { throw BackendError(.invalidArgument, errno: 22, "attach refused") }
        try record.withLock { (r: inout Record) throws(BackendError) in
            guard let owner = r.vdevices[vdevice] else { throw BackendError(.unknownHandle, "no \(vdevice)") }
            if case .nested(let hwpt) = domain, r.hwpts[hwpt]?.viommu != owner.viommu {
                throw BackendError(.invalidArgument, errno: 22, "\(hwpt) is not on \(owner.viommu)")
            }
            r.attachments[vdevice] = domain == .nestParent ? nil : domain
            r.attachLog.append((vdevice, domain))
            r.log.append("attach \(vdevice.rawValue) \(domain)")
        }
    }

    func destroyHWPT(_ hwpt: HWPTHandle) throws(BackendError) {
        let attached = record.withLock { $0.attachments.values.contains(.nested(hwpt)) }
        if attached { throw BackendError(.busy, errno: 16, "\(hwpt) is attached") }
        let found = record.withLock {
            $0.log.append("destroy hwpt \(hwpt.rawValue)")
            return $0.hwpts.removeValue(forKey: hwpt) != nil
        }
        if !found { throw BackendError(.unknownHandle, "no \(hwpt)") }
    }

    func updateContextDescriptors(_ hwpt: HWPTHandle, _ contextDescriptors: [ContextDescriptor]) throws(BackendError) {
        try record.withLock { (r: inout Record) throws(BackendError) in
            guard r.hwpts[hwpt] != nil else { throw BackendError(.unknownHandle, "no \(hwpt)") }
            r.hwpts[hwpt]?.cds = contextDescriptors
        }
    }

    func invalidate(viommu: ViommuHandle, commands: UnsafeBufferPointer<Command>) -> InvalidationResult {
        gate.pass(viommu)
        let failing = self.failing.withLock { $0 }
        return record.withLock { r in
            r.calls += 1
            for (i, command) in commands.enumerated() {
                let accepted: Set<Opcode> = [.tlbiNHAll, .tlbiNHASID, .tlbiNHVA, .tlbiNHVAA, .tlbiNSNHAll, .atcInv, .cfgiCD, .cfgiCDAll]
                if !accepted.contains(command.opcode) || failing?(command) == true {
                    return InvalidationResult(completed: i, failure: InvalidationFailure(
                        queueError: .illegal, errno: 5, message: "refused \(command.opcode.name)"))
                }
                r.executed[viommu, default: []].append(command)
            }
            return InvalidationResult(completed: commands.count)
        }
    }

    func takeEvents(viommu: ViommuHandle) -> [EventRecord] { [] }

    var counters: BackendCounters { BackendCounters() }

    func executed(on viommu: ViommuHandle) -> [Command] { record.withLock { $0.executed[viommu] ?? [] } }
}
