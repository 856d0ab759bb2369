import IOMMUFD
import IOMMUFDRelay
import InvalidationEngine
import PSMMU
import SMMUv3
import VirtualSMMU

/// The trace's devices on the rig's: StreamID 0x8 (the trace's e1000e, ASID 3) on device 0 behind
/// SMMU 0, StreamID 0x10 (virtio-net, ASID 1) on device 1 behind SMMU 1. The trace's third device
/// (0x18, ASID 2) has no rig device: its TLBIs reach no viommu, as for any ASID no S1 HWPT holds.
let traceDevices: [(streamID: StreamID, device: Int)] = [(0x8, 0), (0x10, 1)]

/// The engine and the router on the real kernel: one vSMMU fronting a viommu on each of the two pSMMUs.
struct EngineChecks {
    let vmm: VMM
    let spy: RecordingDevice
    let checks: Checks
    let traceDirectory: String
    /// Replay only the first this many batches of the trace (all when `nil`).
    let replayBatches: Int?
    let engine = VSMMUEngine()
    let backends: [IOMMUFDBackend]
    var viommus: [ViommuIndex] = []
    let start: Int

    init(vmm: VMM, spy: RecordingDevice, checks: Checks, traceDirectory: String, replayBatches: Int?) {
        self.replayBatches = replayBatches
        self.vmm = vmm
        self.spy = spy
        self.checks = checks
        self.traceDirectory = traceDirectory
        backends = ["smmu0", "smmu1"].map { IOMMUFDBackend(name: $0, device: spy) }
        start = spy.count
    }

    mutating func run() {
        checks.run("engine: one vSMMU, a viommu on each pSMMU, SET_DEV_ID at the trace's vSIDs, link with the trace's STEs and CDs") { try setUp() }
        guard viommus.count == 2 else {
            checks.skip("engine routing and trace replay", because: "the engine set-up failed")
            engine.stop()
            return
        }
        checks.run("routing: ASID-routed TLBIs reach only the viommu whose S1 HWPT holds the ASID; CFGI_CD and ATC_INV the device's own") { try routing() }
        checks.run("replay of linux-strict-cmdq.bin through VSMMUEngine + router onto both pSMMUs: 0 errors") { try replay() }
        checks.run("engine teardown: UNSET_DEV_ID, detach; every id the engine's backends allocated is gone (ENOENT)") { try teardown() }
        engine.stop()
    }

    private mutating func setUp() throws -> [String] {
        let trace = try Trace(directory: traceDirectory, name: "linux-strict")
        var details: [String] = []
        for (slot, entry) in traceDevices.enumerated() {
            let backend = HostDeviceHandover(backends[slot]) { [vmm] id in
                guard let index = vmm.devices.firstIndex(where: { $0.deviceID == id }) else { return nil }
                return try? vmm.hostDevice(index).vfioDevice
            }
            let viommu = try engine.attachViommu(pSMMU: backends[slot].name, backend: backend, request: vmm.viommuRequest(entry.device))
            viommus.append(viommu)
            let device = vmm.devices[entry.device]
            try engine.setDeviceID(viommu: viommu, hostDeviceID: device.deviceID, streamID: entry.streamID)
            guard let ste = trace.stes[entry.streamID], let cd = trace.cds[entry.streamID] else {
                throw CheckFailure(description: "the trace has no STE/CD for StreamID \(hex(entry.streamID))")
            }
            try engine.link(streamID: entry.streamID, ste: ste, contextDescriptors: [cd])
            let handles = engine.backendHandles(of: entry.streamID)
            details.append("\(viommu) on \(backends[slot].name) (dev_id \(device.deviceID), S2 \(device.nestParent)): StreamID \(hex(entry.streamID)) → "
                           + "\(handles.vdevice.map(\.description) ?? "no vdevice"), vSTE \(hex(ste.word(0)))/\(hex(ste.word(1))) "
                           + "→ \(handles.hwpt.map(\.description) ?? "no HWPT"), CD ASID \(cd.asid)")
        }
        return details
    }

    /// What one routing case expects: the commands each backend completes, by opcode, the
    /// `IOMMU_HWPT_INVALIDATE` calls each makes, and the guest index of a refused command.
    struct RoutingCase {
        var what: String
        var batch: [Command]
        var completed: [[UInt8: UInt64]]
        var ioctls: [UInt64]
        var refusedAt: Int? = nil
    }

    private func routing() throws -> [String] {
        let ats = rigIDRegisters.idr[0] & (1 << 10) != 0
        let cases: [RoutingCase] = [
            RoutingCase(what: "TLBI_NH_ASID(ASID 3)", batch: [.tlbiNHASID(asid: 3), .sync()], completed: [[0x11: 1], [:]], ioctls: [1, 0]),
            RoutingCase(what: "TLBI_NH_VA(ASID 1)", batch: [.tlbiNHVA(asid: 1, address: 0x1000), .sync()], completed: [[:], [0x12: 1]], ioctls: [0, 1]),
            RoutingCase(what: "TLBI_NH_VA(ASID 2, which no S1 HWPT holds)", batch: [.tlbiNHVA(asid: 2, address: 0x2000), .sync()],
                        completed: [[:], [:]], ioctls: [0, 0]),
            RoutingCase(what: "CFGI_CD(StreamID 0x8)", batch: [.cfgiCD(streamID: 0x8), .sync()], completed: [[0x05: 1], [:]], ioctls: [1, 0]),
            RoutingCase(what: "CFGI_CD_ALL(StreamID 0x10)", batch: [.cfgiCDAll(streamID: 0x10), .sync()], completed: [[:], [0x06: 1]], ioctls: [0, 1]),
            // The rig's SMMUs lack ATS (IDR0.ATS = 0): the kernel refuses ATC_INV with EIO on the viommu it
            // reaches (arm_vsmmu_convert_user_cmd), which the guest sees as CERROR_ILL at its index.
            RoutingCase(what: "ATC_INV(StreamID 0x8)", batch: [.atcInv(streamID: 0x8), .sync()],
                        completed: [ats ? [0x40: 1] : [:], [:]], ioctls: [1, 0], refusedAt: ats ? nil : 0),
            RoutingCase(what: "ATC_INV(StreamID 0x10)", batch: [.atcInv(streamID: 0x10), .sync()],
                        completed: [[:], ats ? [0x40: 1] : [:]], ioctls: [0, 1], refusedAt: ats ? nil : 0),
            RoutingCase(what: "TLBI_NH_ALL (every viommu)", batch: [.tlbiNHAll(), .sync()], completed: [[0x10: 1], [0x10: 1]], ioctls: [1, 1]),
        ]
        var details: [String] = []
        for test in cases {
            let before = backends.map { ($0.counters.commandsByOpcode, $0.invalidateIoctlCount) }
            let result = engine.submit(test.batch).wait()
            let completed = zip(backends, before).map { backend, before -> [UInt8: UInt64] in
                var delta: [UInt8: UInt64] = [:]
                for (op, n) in backend.counters.commandsByOpcode where n != before.0[op, default: 0] { delta[op] = n - before.0[op, default: 0] }
                return delta
            }
            let ioctls = zip(backends, before).map { $0.invalidateIoctlCount - $1.1 }
            if let index = test.refusedAt {
                try expect(result.failure?.index == index && result.failure?.queueError == .illegal,
                           "\(test.what): expected CERROR_ILL at \(index), got \(result)")
            } else {
                try expect(result.failure == nil && result.consumed == test.batch.count, "\(test.what): \(result)")
            }
            try expect(completed == test.completed && ioctls == test.ioctls,
                       "\(test.what): completed by opcode \(completed), IOMMU_HWPT_INVALIDATE calls \(ioctls); expected \(test.completed), \(test.ioctls)")
            let outcome = result.failure.map { " → \($0.queueError) at \($0.index) (the kernel's EIO: no ATS)" } ?? ""
            details.append("\(test.what) + CMD_SYNC: IOMMU_HWPT_INVALIDATE smmu0 \(ioctls[0]), smmu1 \(ioctls[1])\(outcome)")
        }
        return details
    }

    private func replay() throws -> [String] {
        let trace = try Trace(directory: traceDirectory, name: "linux-strict")
        let batches = Array(trace.batches.prefix(replayBatches ?? Int.max))
        let commandCount = batches.reduce(0) { $0 + $1.count }
        let before = backends.map { ($0.counters, $0.invalidateIoctlCount) }
        let clock = ContinuousClock()
        let began = clock.now
        var consumed = 0, syncs = 0
        var failures: [String] = []
        for batch in batches {
            let result = engine.submit(batch).wait()
            consumed += result.consumed
            syncs += result.syncs
            if let failure = result.failure, failures.count < 5 { failures.append("batch at command \(consumed): \(failure)") }
        }
        let elapsed = began.duration(to: clock.now)
        let expectedSyncs = batches.joined().filter { $0.opcode == .sync }.count
        try expect(failures.isEmpty, "failures: \(failures)")
        try expect(consumed == commandCount && syncs == expectedSyncs,
                   "consumed \(consumed) of \(commandCount), \(syncs) of \(expectedSyncs) syncs")
        let lines = zip(backends, before).map { backend, before -> String in
            let after = backend.counters
            return "\(backend.name): \(after.commandsCompleted - before.0.commandsCompleted) commands in "
                + "\(backend.invalidateIoctlCount - before.1) IOMMU_HWPT_INVALIDATE calls, \(after.commandsFailed - before.0.commandsFailed) failed"
        }
        for (backend, before) in zip(backends, before) {
            try expect(backend.counters.commandsFailed == before.0.commandsFailed, "\(backend.name) reported failed commands")
        }
        let counters = engine.vsmmu.counters
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return ["\(commandCount) commands\(commandCount < trace.commands.count ? " (of \(trace.commands.count))" : "") in \(batches.count) batches cut after CMD_SYNC, \(syncs) syncs, 0 errors, "
                + String(format: "%.1f s", seconds),
                "router: \(counters.asidRouted) ASID-routed (\(counters.asidWithoutTarget) to ASID 2, no target), "
                + "\(counters.broadcast) broadcast, \(counters.configSTEInvalidations) CFGI_STE* not forwarded"] + lines
    }

    private mutating func teardown() throws -> [String] {
        for entry in traceDevices { try engine.unsetDeviceID(streamID: entry.streamID) }
        for viommu in viommus { try engine.detachViommu(viommu) }
        viommus = []
        let objects = spy.calls(since: start).allocatedObjects
        var left: [String] = []
        for object in objects {
            let errno = try vmm.relay.destroy(object.id)
            if errno != .noSuchFileOrDirectory { left.append("\(object): \(errno.map { "\($0)" } ?? "was still there (destroyed now)")") }
        }
        try expect(left.isEmpty, "objects left behind: \(left)")
        return ["\(objects.count) objects (\(objects.map(\.description).joined(separator: ", "))) all answer ENOENT"]
    }
}

/// Until `VSMMUEngine.setDeviceID` takes a ``HostDevice``: hands the backend the VFIO descriptor the VMM
/// would pass with SET_DEV_ID (a fresh `dup` of the VMM's), which the engine cannot carry yet.
final class HostDeviceHandover: PSMMUBackend {
    let base: IOMMUFDBackend
    let vfioDescriptor: @Sendable (UInt32) -> Int32?

    init(_ base: IOMMUFDBackend, vfioDescriptor: @escaping @Sendable (UInt32) -> Int32?) {
        self.base = base
        self.vfioDescriptor = vfioDescriptor
    }

    var name: String { base.name }
    var counters: BackendCounters { base.counters }
    func attachViommu(_ request: ViommuAttachRequest) throws(BackendError) -> ViommuHandle { try base.attachViommu(request) }
    func detachViommu(_ viommu: ViommuHandle) throws(BackendError) { try base.detachViommu(viommu) }
    func hardwareInfo(viommu: ViommuHandle) throws(BackendError) -> IDRegisters { try base.hardwareInfo(viommu: viommu) }
    func allocateVDevice(viommu: ViommuHandle, device: HostDevice, virtualStreamID: StreamID) throws(BackendError) -> VDeviceHandle {
        var device = device
        if device.vfioDevice == nil { device.vfioDevice = vfioDescriptor(device.id) }
        return try base.allocateVDevice(viommu: viommu, device: device, virtualStreamID: virtualStreamID)
    }
    func destroyVDevice(_ vdevice: VDeviceHandle) throws(BackendError) { try base.destroyVDevice(vdevice) }
    func attachDevice(_ vdevice: VDeviceHandle, to domain: DeviceDomain) throws(BackendError) { try base.attachDevice(vdevice, to: domain) }
    func allocateNestedHWPT(viommu: ViommuHandle, hostDeviceID: UInt32, ste: StreamTableEntry,
                            contextDescriptors: [ContextDescriptor]) throws(BackendError) -> HWPTHandle {
        try base.allocateNestedHWPT(viommu: viommu, hostDeviceID: hostDeviceID, ste: ste, contextDescriptors: contextDescriptors)
    }
    func destroyHWPT(_ hwpt: HWPTHandle) throws(BackendError) { try base.destroyHWPT(hwpt) }
    func updateContextDescriptors(_ hwpt: HWPTHandle, _ contextDescriptors: [ContextDescriptor]) throws(BackendError) {
        try base.updateContextDescriptors(hwpt, contextDescriptors)
    }
    func invalidate(viommu: ViommuHandle, commands: UnsafeBufferPointer<Command>) -> InvalidationResult {
        base.invalidate(viommu: viommu, commands: commands)
    }
    func takeEvents(viommu: ViommuHandle) -> [EventRecord] { base.takeEvents(viommu: viommu) }
}
