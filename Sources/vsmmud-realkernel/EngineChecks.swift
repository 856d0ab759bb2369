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
        checks.run("engine relink and unlink of StreamID 0x10: make-before-break, then the abort HWPT") { try linkCycle() }
        checks.run("routing: ASID-routed TLBIs reach only the viommu whose S1 HWPT holds the ASID; CFGI_CD and ATC_INV the device's own") { try routing() }
        checks.run("replay of linux-strict-cmdq.bin through VSMMUEngine + router onto both pSMMUs: 0 errors") { try replay() }
        checks.run("re-adoption: snapshot, new backends on the same iommufd restore the engine by id, invalidate through it; a cdev pending, then handed back; a wrong id fails with ENOENT") { try readoption() }
        checks.run("engine teardown: UNSET_DEV_ID, detach; every id the engine's backends allocated is gone (ENOENT)") { try teardown() }
        engine.stop()
    }

    private mutating func setUp() throws -> [String] {
        let trace = try Trace(checking: traceDirectory, name: "linux-strict")
        var details: [String] = []
        for (slot, entry) in traceDevices.enumerated() {
            let device = vmm.devices[entry.device]
            let viommu = try engine.attachViommu(pSMMU: backends[slot].name, backend: backends[slot], request: vmm.viommuRequest(entry.device))
            viommus.append(viommu)
            let host = try vmm.hostDevice(entry.device)
            try engine.setDeviceID(viommu: viommu, device: host, streamID: entry.streamID)
            guard let ste = trace.stes[entry.streamID], let cd = trace.cds[entry.streamID] else {
                throw CheckFailure(description: "the trace has no STE/CD for StreamID \(hex(entry.streamID))")
            }
            let mark = spy.count
            try engine.link(streamID: entry.streamID, ste: ste, contextDescriptors: [cd])
            let handles = engine.backendHandles(of: entry.streamID)
            guard let hwpt = handles.hwpt else { throw CheckFailure(description: "StreamID \(hex(entry.streamID)) has no HWPT after link") }
            let attaches = spy.calls(since: mark).attaches
            try expect(attaches.count == 1 && attaches[0].fd == host.vfioDevice && attaches[0].reported == hwpt.rawValue && attaches[0].errno == nil,
                       "link of \(hex(entry.streamID)) attached \(attaches), expected the daemon's fd \(host.vfioDevice ?? -1) to \(hwpt)")
            details.append("\(viommu) on \(backends[slot].name) (dev_id \(device.deviceID), S2 \(device.nestParent)): StreamID \(hex(entry.streamID)) → "
                           + "\(handles.vdevice.map(\.description) ?? "no vdevice") (daemon's VFIO fd \(host.vfioDevice ?? -1)), "
                           + "vSTE \(hex(ste.word(0)))/\(hex(ste.word(1))) → \(hwpt), attached; CD ASID \(cd.asid)")
        }
        let registers = try engine.hardwareInfo()
        try expect(registers.count == 2 && registers.allSatisfy { $0.registers == rigIDRegisters },
                   "engine.hardwareInfo(): \(registers.map { ($0.viommu, $0.registers.idr.map(hex)) })")
        details.append("engine.hardwareInfo(): both viommus report the rig's IDR0 \(hex(rigIDRegisters.idr[0]))")
        return details
    }

    /// The abort HWPT the engine's backend allocated with the viommu of `deviceID` (the first nested
    /// HWPT after its VIOMMU_ALLOC).
    private func abortHWPT(of deviceID: UInt32) -> UInt32? {
        let calls = spy.calls(since: start)
        guard let at = calls.firstIndex(where: { $0.request == .viommuAlloc && $0.errno == nil && $0.u32(12, after: false) == deviceID }),
              let hwpt = calls[(at + 1)...].first(where: { $0.request == .hwptAlloc }) else { return nil }
        return hwpt.u32(16)
    }

    /// One step of a recorded call sequence, for comparing orders.
    private func steps(since mark: Int) -> [String] {
        spy.calls(since: mark).compactMap { call -> String? in
            switch call.kind {
            case .iommufd(.hwptAlloc): return "alloc(\(call.u32(16)))"
            case .iommufd(.destroy): return "destroy(\(call.u32(4, after: false)))"
            case .vfio(_, .attachIOMMUFDPT): return "attach(\(call.u32(8, after: false)))"
            case .iommufd(.vdeviceAlloc): return "vdevice(\(call.u32(12)))"
            case .closeVFIO: return "close"
            default: return nil
            }
        }
    }

    private func linkCycle() throws -> [String] {
        let streamID: StreamID = 0x10
        let device = vmm.devices[1]
        guard let ste = try Trace(checking: traceDirectory, name: "linux-strict").stes[streamID],
              let old = engine.backendHandles(of: streamID).hwpt, let abort = abortHWPT(of: device.deviceID) else {
            throw CheckFailure(description: "StreamID 0x10 is not linked")
        }
        var details: [String] = []
        // Relink to a vSTE with another CD table: make-before-break.
        var mark = spy.count
        try engine.link(streamID: streamID, ste: steA, contextDescriptors: [.valid(asid: 1)])
        guard let new = engine.backendHandles(of: streamID).hwpt else { throw CheckFailure(description: "no HWPT after the relink") }
        var seen = steps(since: mark)
        try expect(seen == ["alloc(\(new.rawValue))", "attach(\(new.rawValue))", "destroy(\(old.rawValue))"],
                   "relink made \(seen), expected alloc, attach, destroy of the old")
        details.append("relink (CD table 0x80000000): \(seen.joined(separator: ", "))")
        // Unlink: the device goes to the abort HWPT, then the nested one goes.
        mark = spy.count
        try engine.unlink(streamID: streamID)
        seen = steps(since: mark)
        try expect(seen == ["attach(\(abort))", "destroy(\(new.rawValue))"], "unlink made \(seen), expected attach(\(abort)) (abort), destroy(\(new.rawValue))")
        details.append("unlink: \(seen.joined(separator: ", ")) (\(abort) = the viommu's abort HWPT)")
        // Back to the trace's vSTE for the replay.
        mark = spy.count
        try engine.link(streamID: streamID, ste: ste, contextDescriptors: [.valid(asid: 1)])
        seen = steps(since: mark)
        try expect(seen.count == 2 && seen[0].hasPrefix("alloc(") && seen[1].hasPrefix("attach("), "link again made \(seen)")
        details.append("link again with the trace's vSTE: \(seen.joined(separator: ", "))")
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

    /// What a restarted daemon does with its journal: the engine's snapshot, encoded and decoded, restored
    /// on new backends over the same iommufd (the relay's stays open, as the VMM's does across a daemon
    /// restart: `iommufd_fops_release` destroys the objects only at the file's last release, and an id
    /// names the same object for as long as the file lives, `iommufd_get_object`). The first engine is
    /// dropped without destroying anything. The new backends have no vEVENTQ (the old one's fd is still
    /// open here, so the kernel would refuse its destroy, EBUSY, and a second one, EEXIST).
    private func readoption() throws -> [String] {
        let snapshot = try EngineSnapshot(decoding: try engine.snapshot().encode())
        let fresh = ["smmu0", "smmu1"].map {
            IOMMUFDBackend(name: $0, device: spy, configuration: IOMMUFDBackend.Configuration(eventQueueDepth: nil))
        }
        var cdevs: [StreamID: Int32] = [:]
        for entry in traceDevices { cdevs[entry.streamID] = try vmm.hostDevice(entry.device).vfioDevice }
        let mark = spy.count
        let restored = try VSMMUEngine.restore(snapshot, backends: { viommu in
            viommu.index.index < fresh.count ? fresh[viommu.index.index] : nil
        }, descriptors: EngineDescriptors(vfioDevices: cdevs))
        defer { restored.stop() }
        let allocations = spy.calls(since: mark).filter {
            [.viommuAlloc, .vdeviceAlloc, .hwptAlloc].contains($0.request) && $0.errno == nil
        }
        try expect(allocations.isEmpty, "the restore allocated \(allocations.count) objects; re-adoption allocates none")
        for entry in traceDevices {
            let before = engine.backendHandles(of: entry.streamID), after = restored.backendHandles(of: entry.streamID)
            try expect(before.vdevice == after.vdevice && before.hwpt == after.hwpt,
                       "StreamID \(hex(entry.streamID)): vdevice \(String(describing: before.vdevice)) → \(String(describing: after.vdevice)), HWPT \(String(describing: before.hwpt)) → \(String(describing: after.hwpt))")
        }
        let ioctls = fresh.map(\.invalidateIoctlCount)
        let result = restored.submit([.tlbiNHAll(), .sync()]).wait()
        try expect(result.failure == nil && result.syncs == 1, "TLBI_NH_ALL + CMD_SYNC through the restored engine: \(result)")
        let sent = zip(fresh, ioctls).map { $0.invalidateIoctlCount - $1 }
        try expect(sent == [1, 1], "IOMMU_HWPT_INVALIDATE calls through the new backends: \(sent)")

        // A device whose cdev did not come back (no fd store): re-adopted with it pending. Invalidations
        // flow; moving it is refused before any ioctl; the cdev handed back is checked with
        // VFIO_DEVICE_ATTACH_IOMMUFD_PT to the HWPT the device is on, which the kernel accepts without
        // moving it (iommufd_device_do_replace returns early for the HWPT the device is on). Nothing moves,
        // so the first engine's teardown below still finds every object where it left it.
        let pendingEntry = traceDevices[0]
        guard let pendingDevice = snapshot.devices.first(where: { $0.streamID == pendingEntry.streamID }) else {
            throw CheckFailure(description: "the snapshot has no StreamID \(hex(pendingEntry.streamID))")
        }
        let later = ["smmu0", "smmu1"].map {
            IOMMUFDBackend(name: $0, device: spy, configuration: IOMMUFDBackend.Configuration(eventQueueDepth: nil))
        }
        var someCdevs: [StreamID: Int32] = [:]
        for entry in traceDevices where entry.streamID != pendingEntry.streamID {
            someCdevs[entry.streamID] = try vmm.hostDevice(entry.device).vfioDevice
        }
        let pending = try VSMMUEngine.restore(snapshot, backends: { viommu in
            viommu.index.index < later.count ? later[viommu.index.index] : nil
        }, descriptors: EngineDescriptors(vfioDevices: someCdevs))
        defer { pending.stop() }
        let flowed = pending.submit([.tlbiNHAll(), .sync()]).wait()
        try expect(flowed.failure == nil && flowed.syncs == 1, "TLBI_NH_ALL + CMD_SYNC with a cdev pending: \(flowed)")
        var refusal: EngineError?
        do throws(EngineError) { try pending.link(streamID: pendingEntry.streamID, ste: .abort, contextDescriptors: []) } catch { refusal = error }
        try expect(refusal.map { "\($0)".contains("has not been handed back since the restart") } == true,
                   "moving StreamID \(hex(pendingEntry.streamID)) with its cdev pending: \(String(describing: refusal))")
        let handedBack = try vmm.hostDevice(pendingEntry.device)
        let kept = try pending.resupplyDevice(viommu: pendingDevice.viommu, device: handedBack, streamID: pendingEntry.streamID)
        try expect(kept, "the cdev handed back for StreamID \(hex(pendingEntry.streamID)) was not kept")
        let again = try pending.resupplyDevice(viommu: pendingDevice.viommu, device: try vmm.hostDevice(pendingEntry.device),
                                               streamID: pendingEntry.streamID)
        try expect(!again, "a second cdev for StreamID \(hex(pendingEntry.streamID)) was kept")
        let attachedTo = pending.backendHandles(of: pendingEntry.streamID).hwpt
        try expect(attachedTo == pendingDevice.link?.hwpt, "StreamID \(hex(pendingEntry.streamID)) moved: \(String(describing: attachedTo))")

        // A snapshot naming a viommu id the iommufd does not hold: the kernel's ENOENT, a clear BackendError.
        var wrong = snapshot
        wrong.devices = []
        wrong.retiring = []
        let bogus: UInt32 = 0xFFFF
        var objects = wrong.viommus[0].objects.bytes
        if objects.count >= 5 { for i in 0 ..< 4 { objects[1 + i] = UInt8(truncatingIfNeeded: bogus >> (8 * UInt32(i))) } }
        wrong.viommus[0].objects = ViommuObjects(bytes: objects)
        wrong.viommus[0].handle = ViommuHandle(rawValue: bogus)
        let spare = ["smmu0", "smmu1"].map {
            IOMMUFDBackend(name: $0, device: spy, configuration: IOMMUFDBackend.Configuration(eventQueueDepth: nil))
        }
        do {
            let engine = try VSMMUEngine.restore(wrong, backends: { spare[$0.index.index] })
            engine.stop()
            throw CheckFailure(description: "a restore naming viommu id \(bogus) succeeded")
        } catch let error as EngineRestoreError {
            guard case .backend(let backendError) = error.reason, backendError.errno == 2 else {
                throw CheckFailure(description: "a restore naming viommu id \(bogus): \(error), not the kernel's ENOENT")
            }
        }
        return ["snapshot of \(snapshot.viommus.count) viommus, \(snapshot.devices.count) devices → \(snapshot.encode().count) bytes; "
                + "restored on new backends: no object allocated, the same vdevices and HWPTs",
                "TLBI_NH_ALL + CMD_SYNC through the restored engine: one IOMMU_HWPT_INVALIDATE per viommu, no error",
                "StreamID \(hex(pendingEntry.streamID))'s cdev pending: invalidations flow, a move is refused; the cdev handed back passes VFIO_DEVICE_ATTACH_IOMMUFD_PT to its own HWPT and is kept",
                "a snapshot naming viommu id \(bogus): restore refused with the kernel's ENOENT"]
    }

    private func replay() throws -> [String] {
        let trace = try Trace(checking: traceDirectory, name: "linux-strict")
        let batches = Array(trace.batches.prefix(replayBatches ?? Int.max))
        let commandCount = batches.reduce(0) { $0 + $1.count }
        let before = backends.map { ($0.counters, $0.invalidateIoctlCount) }
        let routedBefore = engine.vsmmu.counters
        let relayTimeBefore = spy.invalidateTime
        let clock = ContinuousClock()
        let began = clock.now
        var consumed = 0, syncs = 0
        var failures: [String] = []
        var first = 0
        for (number, batch) in batches.enumerated() {
            let result = engine.submit(batch).wait()
            consumed += result.consumed
            syncs += result.syncs
            if let failure = result.failure, failures.count < 5 {
                failures.append("batch \(number) (trace commands \(first)..<\(first + batch.count)): \(failure)")
            }
            first += batch.count
            if let broken = vmm.relay.seamFailure {
                failures.append("stopped after batch \(number): \(broken)")
                break
            }
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
        let asidRouted = counters.asidRouted - routedBefore.asidRouted
        let withoutTarget = counters.asidWithoutTarget - routedBefore.asidWithoutTarget
        let broadcast = counters.broadcast - routedBefore.broadcast
        let configSTE = counters.configSTEInvalidations - routedBefore.configSTEInvalidations
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let relayTime = spy.invalidateTime - relayTimeBefore
        let relaySeconds = Double(relayTime.components.seconds) + Double(relayTime.components.attoseconds) / 1e18
        return ["\(commandCount) commands\(commandCount < trace.commands.count ? " (of \(trace.commands.count))" : "") in \(batches.count) batches cut after CMD_SYNC, \(syncs) syncs, 0 errors, "
                + "\(tenths(seconds)) s, of which \(tenths(relaySeconds)) s in the relay's IOMMU_HWPT_INVALIDATE calls",
                "router: \(asidRouted) ASID-routed (\(withoutTarget) of them for ASID 2, which no viommu holds), "
                + "\(broadcast) broadcast, \(configSTE) CFGI_STE* counted, not forwarded"] + lines
    }

    private mutating func teardown() throws -> [String] {
        var details: [String] = []
        for (slot, entry) in traceDevices.enumerated() {
            let handles = engine.backendHandles(of: entry.streamID)
            let mark = spy.count
            try engine.unsetDeviceID(streamID: entry.streamID)
            let seen = steps(since: mark)
            let home = vmm.devices[entry.device].nestParent
            let expected = ["attach(\(home))", "destroy(\(handles.hwpt?.rawValue ?? 0))", "destroy(\(handles.vdevice?.rawValue ?? 0))", "close"]
            try expect(seen == expected, "UNSET_DEV_ID of \(hex(entry.streamID)) made \(seen), expected \(expected): home to the S2, the HWPT, the vdevice, its fd")
            details.append("UNSET_DEV_ID \(hex(entry.streamID)) on \(backends[slot].name): \(seen.joined(separator: ", "))")
        }
        for viommu in viommus { try engine.detachViommu(viommu) }
        viommus = []
        let objects = spy.calls(since: start).allocatedObjects
        var left: [String] = []
        for object in objects {
            let errno = try vmm.relay.destroy(object.id)
            if errno != .noSuchFileOrDirectory { left.append("\(object): \(errno.map { "\($0)" } ?? "was still there (destroyed now)")") }
        }
        try expect(left.isEmpty, "objects left behind: \(left)")
        return details + ["detach of both viommus; \(objects.count) objects (\(objects.map(\.description).joined(separator: ", "))) all answer ENOENT"]
    }
}
