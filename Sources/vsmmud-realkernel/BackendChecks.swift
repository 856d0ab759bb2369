import CIOMMUFD
import IOMMUFD
import IOMMUFDRelay
import PSMMU
import SMMUv3
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The ID registers the rig's emulated SMMUv3s report (QEMU 11.1, `stage=nested`): IDR0 0x0d44101b,
/// IDR1 0x02730010, IDR3 0x1414, IDR5 0x74, AIDR 0x1 (the rig's README, measured with
/// `iommufd-multi-test`).
let rigIDRegisters = IDRegisters(idr: [0x0d44_101b, 0x0273_0010, 0, 0x0000_1414, 0, 0x0000_0074], iidr: 0, aidr: 0x1)

/// The checks' own translating vSTEs: V=1, CONFIG=S1_TRANS, a linear CD table of one CD in the VM's
/// RAM at 0x80000000 (and a second table for relinks).
let steA = StreamTableEntry.stage1(contextTable: 0x8000_0000)
let steB = StreamTableEntry.stage1(contextTable: 0x8000_1000)

/// The checks of ``IOMMUFDBackend`` on the real kernel, one `IOMMUFDBackend` per pSMMU, both on the
/// VMM's iommufd (the adopted-iommufd case: vsmmud's objects next to the VMM's devices, IOAS and S2s).
struct BackendChecks {
    let vmm: VMM
    let spy: RecordingDevice
    let checks: Checks
    let backends: [IOMMUFDBackend]
    var viommus: [ViommuHandle?] = [nil, nil]
    /// The objects' ids of each viommu, from the kernel's answers: (abort HWPT, bypass HWPT).
    var proxies: [(abort: UInt32, bypass: UInt32)] = [(0, 0), (0, 0)]
    /// Device 0's vdevice and nested HWPTs while the link checks run.
    var vdevice: VDeviceHandle?
    var hwpts: [HWPTHandle] = []
    let start: Int

    init(vmm: VMM, spy: RecordingDevice, checks: Checks) {
        self.vmm = vmm
        self.spy = spy
        self.checks = checks
        backends = ["smmu0", "smmu1"].map { IOMMUFDBackend(name: $0, device: spy) }
        start = spy.count
    }

    var relay: RelayIOMMUFD { vmm.relay }

    mutating func run() {
        checks.run("GET_HW_INFO: IDRegisters per device through backend.hardwareInfo(viommu:)") { try hardwareInfo() }
        guard viommus.allSatisfy({ $0 != nil }) else {
            checks.skip("the backend's viommu objects", because: "no viommu was allocated")
            return
        }
        checks.run("viommu: VIOMMU_ALLOC, abort and bypass nested HWPTs, vEVENTQ (hasEventQueue) on each pSMMU") { try viommuObjects() }
        checks.run("link: a vdevice at vSID 0x8, a nested HWPT from its vSTE, attachDevice(.nested)") { try link() }
        guard vdevice != nil, !hwpts.isEmpty else {
            checks.skip("relink, unlink, EBUSY and destroyVDevice", because: "the link failed")
            return
        }
        checks.run("a device fault reaches the viommu's vEVENTQ: edu DMA through the nested HWPT (CD table of zeros) → C_BAD_CD with vSID 0x8") {
            try deviceFault()
        }
        checks.run("EBUSY: destroying the attached nested HWPT, raw IOMMU_DESTROY and backend.destroyHWPT") { try busy() }
        checks.run("relink make-before-break: a new HWPT, attach, then the old one destroys") { try relink() }
        checks.run("unlink: attachDevice(.abort), then (.bypass): the kernel moves the device") { try unlink() }
        checks.run("destroyVDevice: the device goes home to its S2 parent first") { try destroyVDevice() }
        checks.run("EINVAL: a viommu on the other SMMU's S2; a vdevice of the device behind the other SMMU") { try crossSMMU() }
        checks.run("an illegal command in mid-batch: completed 1, CERROR_ILL at index 1, entry_num 1 from the kernel") { try illegalInMidBatch() }
        checks.run("teardown leaves no object behind: every id the backends allocated is gone (ENOENT)") { try teardown() }
    }

    // MARK: The checks

    private mutating func hardwareInfo() throws -> [String] {
        var details: [String] = []
        for (index, device) in vmm.devices.enumerated() {
            // Straight through the relay first: the data buffer goes out and comes back.
            let raw = try relay.hardwareInfo(deviceID: device.deviceID)
            try expect(raw.dataType == UInt32(IOMMU_HW_INFO_TYPE_ARM_SMMUV3), "dev_id \(device.deviceID): out_data_type \(raw.dataType), not ARM_SMMUV3 (2)")
            try expect(raw.dataLength == 40, "dev_id \(device.deviceID): data_len \(raw.dataLength) written back, not 40")
            try expect(raw.capabilities & UInt64(IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED) != 0,
                       "dev_id \(device.deviceID): out_capabilities \(hex(raw.capabilities)) lacks PCI_ATS_NOT_SUPPORTED")

            let mark = spy.count
            let viommu = try backends[index].attachViommu(vmm.viommuRequest(index))
            viommus[index] = viommu
            let registers = try backends[index].hardwareInfo(viommu: viommu)
            try expect(registers == rigIDRegisters,
                       "\(backends[index].name): IDR \(registers.idr.map(hex)) AIDR \(hex(registers.aidr)), expected \(rigIDRegisters.idr.map(hex)) AIDR 0x1")
            try expect(registers.idr == raw.idr && registers.iidr == raw.iidr && registers.aidr == raw.aidr,
                       "the backend's registers differ from the relay's own GET_HW_INFO")
            let calls = spy.calls(since: mark)
            try expect(calls.first?.request == .getHWInfo && calls.first?.errno == nil,
                       "attachViommu did not start with a successful IOMMU_GET_HW_INFO")
            details.append("\(device.path) dev_id \(device.deviceID) (\(backends[index].name), \(viommu)): type 2, data_len 40, caps \(hex(raw.capabilities)); "
                           + "IDR0 \(hex(registers.idr[0])) IDR1 \(hex(registers.idr[1])) IDR3 \(hex(registers.idr[3])) IDR5 \(hex(registers.idr[5])) AIDR \(hex(registers.aidr))")
        }
        return details
    }

    private mutating func viommuObjects() throws -> [String] {
        var details: [String] = []
        let calls = spy.calls(since: start)
        for index in 0..<2 {
            guard let viommu = viommus[index] else { continue }
            try expect(backends[index].hasEventQueue(viommu), "\(viommu) has no vEVENTQ")
            // This viommu's allocations: the VIOMMU_ALLOC, then two nested HWPTs and the vEVENTQ.
            guard let at = calls.firstIndex(where: { $0.request == .viommuAlloc && $0.errno == nil && $0.u32(20) == viommu.rawValue }) else {
                throw CheckFailure(description: "no successful IOMMU_VIOMMU_ALLOC of \(viommu) recorded")
            }
            let after = Array(calls[(at + 1)...].prefix(3))
            try expect(after.map(\.request) == [.hwptAlloc, .hwptAlloc, .veventqAlloc] && after.allSatisfy { $0.errno == nil },
                       "after VIOMMU_ALLOC: \(after.map { "\($0.request.map { "\($0)" } ?? "?") \($0.errno.map { "\($0)" } ?? "OK")" })")
            let abort = after[0].u32(16), bypass = after[1].u32(16)
            try expect(after[0].u32(12, after: false) == viommu.rawValue && after[1].u32(12, after: false) == viommu.rawValue,
                       "the proxy HWPTs were not allocated on \(viommu) (pt_id)")
            proxies[index] = (abort, bypass)
            let queueFD = Int32(bitPattern: after[2].u32(24))
            try expect(queueFD > 2, "out_veventq_fd \(queueFD)")
            let mark = spy.count
            let events = backends[index].takeEvents(viommu: viommu)
            let reads = spy.calls(since: mark).filter { if case .read(let fd) = $0.kind { fd == queueFD } else { false } }
            try expect(events.isEmpty && !reads.isEmpty, "takeEvents: \(events.count) events, \(reads.count) reads of fd \(queueFD)")
            details.append("\(backends[index].name): \(viommu) (nest parent \(vmm.devices[index].nestParent)), abort HWPT \(abort), bypass HWPT \(bypass), "
                           + "vEVENTQ \(after[2].u32(20)) fd \(queueFD), depth 64; takeEvents read it: no events")
        }
        return details
    }

    private func lastAttach(since mark: Int) throws -> (fd: Int32, ptID: UInt32, reported: UInt32, errno: Errno?) {
        guard let attach = spy.calls(since: mark).attaches.last else {
            throw CheckFailure(description: "no VFIO_DEVICE_ATTACH_IOMMUFD_PT was made")
        }
        return attach
    }

    private mutating func link() throws -> [String] {
        guard let viommu = viommus[0] else { throw CheckFailure(description: "no viommu") }
        let backend = backends[0], device = vmm.devices[0]
        let vdevice = try backend.allocateVDevice(viommu: viommu, device: try vmm.hostDevice(0), virtualStreamID: 0x8)
        self.vdevice = vdevice
        let mark = spy.count
        let first = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: device.deviceID, ste: steA, contextDescriptors: [])
        hwpts.append(first)
        try backend.attachDevice(vdevice, to: .nested(first))
        let attach = try lastAttach(since: mark)
        try expect(attach.errno == nil && attach.ptID == first.rawValue && attach.reported == first.rawValue,
                   "attach to \(first): pt_id \(attach.ptID) → \(attach.reported), \(String(describing: attach.errno))")
        return ["IOMMU_VDEVICE_ALLOC: \(vdevice) = dev_id \(device.deviceID) as vSID 0x8 on \(viommu)",
                "IOMMU_HWPT_ALLOC(vSTE V=1 S1_TRANS, CD table 0x80000000) → \(first); VFIO_DEVICE_ATTACH_IOMMUFD_PT(\(first.rawValue)) → pt_id \(attach.reported)"]
    }

    /// Device 0 (the rig's QEMU `edu`), attached to the nested HWPT of `steA`, DMAs; its CD table, at IPA
    /// 0x80000000 of the VM's RAM, is zeros (CD.V = 0), so the emulated SMMU records C_BAD_CD, and the
    /// kernel hands it to the viommu's vEVENTQ with the vSID in place of the StreamID:
    /// `arm_smmu_evtq_thread` → `arm_smmu_handle_event` (EVT_ID_BAD_CD_CONFIG is one of the types it
    /// forwards; STALL and S2 are clear) → `arm_vmaster_report_event` (the vdevice's virtual ID) →
    /// `iommufd_viommu_report_event`. The backend reads it through its pull path (`takeEvents`, the
    /// relay's READ: the vEVENTQ lives in the guest, so the host's epoll watcher cannot poll it).
    ///
    /// The DMA is started through the VFIO cdev: vfio-pci regions sit at `VFIO_PCI_INDEX_TO_OFFSET(index)`
    /// = index << 40 (drivers/vfio/pci/vfio_pci_priv.h), BAR0 at index 0 and config space at
    /// `VFIO_PCI_CONFIG_REGION_INDEX` = 7, and a 2- or 4-byte pwrite is one device access
    /// (`vfio_pci_core_do_io_rw`). edu (QEMU hw/misc/edu.c) takes 4-byte writes of its DMA source (0x80),
    /// destination (0x88, its buffer at 0x40000), count (0x90) and command (0x98; bit 0 runs, bit 1 clear
    /// reads from RAM), and its DMA timer then reads the source through the IOMMU (`pci_dma_read`).
    private mutating func deviceFault() throws -> [String] {
        guard let viommu = viommus[0] else { throw CheckFailure(description: "no viommu") }
        let backend = backends[0], vfio = vmm.devices[0].vfio, channel = relay.channel
        let bar0: UInt64 = 0, config: UInt64 = 7 << 40
        func write(_ offset: UInt64, _ value: UInt32, bytes: Int = 4) throws {
            let data = (0..<bytes).map { UInt8(truncatingIfNeeded: value >> (8 * UInt32($0))) }
            switch try channel.pwrite(vfio, offset: offset, data) {
            case .success(let count): try expect(count == bytes, "pwrite at 0x\(String(offset, radix: 16)): \(count) of \(bytes) bytes")
            case .failure(let errno): throw CheckFailure(description: "pwrite at 0x\(String(offset, radix: 16)): \(errno)")
            }
        }
        // PCI_COMMAND: memory space (bit 1) and bus master (bit 2), or the device's DMA never leaves it.
        let command: [UInt8]
        switch try channel.pread(vfio, offset: config + 4, count: 2) {
        case .success(let bytes): command = bytes
        case .failure(let errno): throw CheckFailure(description: "pread of PCI_COMMAND: \(errno)")
        }
        try expect(command.count == 2, "PCI_COMMAND: \(command.count) bytes")
        try write(config + 4, (UInt32(command[0]) | UInt32(command[1]) << 8) | 0x6, bytes: 2)
        let before = backend.takeEvents(viommu: viommu)
        try write(bar0 + 0x80, 0x8000_2000)
        try write(bar0 + 0x88, 0x4_0000)
        try write(bar0 + 0x90, 8)
        try write(bar0 + 0x98, 1)
        var events: [EventRecord] = []
        let deadline = ContinuousClock.now + .seconds(30)
        while events.isEmpty, ContinuousClock.now < deadline {
            events = backend.takeEvents(viommu: viommu)
            if events.isEmpty { usleep(20_000) }
        }
        try expect(!events.isEmpty, "no event on the vEVENTQ within 30 s of the DMA (\(before.count) before it)")
        let record = events[0]
        func word(_ w: UInt64) -> String { "0x" + String(w, radix: 16) }
        try expect(record.id == .badCD && record.streamID == 0x8,
                   "first event \(record.id) StreamID 0x\(String(record.streamID, radix: 16)), expected C_BAD_CD with vSID 0x8 "
                   + "(w0 \(word(record.w0)) w1 \(word(record.w1)))")
        return ["PCI_COMMAND 0x\(String(UInt32(command[0]) | UInt32(command[1]) << 8, radix: 16)) | bus master; edu DMA of 8 bytes from IOVA 0x80002000",
                "vEVENTQ of \(viommu): \(events.count) event(s) (\(events.map { "\($0.id) vSID 0x\(String($0.streamID, radix: 16))" }.joined(separator: ", "))); the first \(record.id), StreamID = vSID 0x\(String(record.streamID, radix: 16)) "
                + "(physical StreamID replaced), w0 \(word(record.w0)) w1 \(word(record.w1)) w2 \(word(record.w2))"]
    }

    /// An attached HWPT holds a reference per attachment, so `iommufd_object_remove` answers EBUSY.
    private func busy() throws -> [String] {
        guard let attached = hwpts.last else { throw CheckFailure(description: "no nested HWPT") }
        let raw = try relay.destroy(attached.rawValue)
        try expect(raw == .resourceBusy, "IOMMU_DESTROY of the attached \(attached): \(raw.map { "\($0)" } ?? "destroyed"), expected EBUSY")
        do {
            try backends[0].destroyHWPT(attached)
            throw CheckFailure(description: "backend.destroyHWPT of the attached \(attached) succeeded")
        } catch let error as BackendError {
            try expect(error.kind == .busy && error.errno == Errno.resourceBusy.rawValue, "backend.destroyHWPT of the attached \(attached): \(error)")
        }
        return ["IOMMU_DESTROY(\(attached.rawValue)) while attached → EBUSY (iommufd_object_remove); "
                + "backend.destroyHWPT → BackendError .busy, errno 16; the handle stays"]
    }

    private mutating func relink() throws -> [String] {
        guard let viommu = viommus[0], let vdevice, let old = hwpts.last else { throw CheckFailure(description: "no link") }
        let backend = backends[0], device = vmm.devices[0]
        let mark = spy.count
        let new = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: device.deviceID, ste: steB, contextDescriptors: [])
        hwpts.append(new)
        try backend.attachDevice(vdevice, to: .nested(new))
        let attach = try lastAttach(since: mark)
        try expect(attach.errno == nil && attach.reported == new.rawValue, "relink attach: \(attach)")
        try backend.destroyHWPT(old)
        hwpts.removeAll { $0 == old }
        let gone = try relay.destroy(old.rawValue)
        try expect(gone == .noSuchFileOrDirectory, "\(old) after destroyHWPT: \(gone.map { "\($0)" } ?? "destroyed again")")
        return ["\(new) (CD table 0x80001000); attach replaces \(old) (pt_id → \(attach.reported)); destroyHWPT(\(old)) OK, then ENOENT"]
    }

    private mutating func unlink() throws -> [String] {
        guard let vdevice, let nested = hwpts.last else { throw CheckFailure(description: "no link") }
        let backend = backends[0]
        var mark = spy.count
        try backend.attachDevice(vdevice, to: .abort)
        var attach = try lastAttach(since: mark)
        try expect(attach.errno == nil && attach.ptID == proxies[0].abort && attach.reported == proxies[0].abort,
                   "attach .abort: pt_id \(attach.ptID) (abort HWPT \(proxies[0].abort)) → \(attach.reported)")
        // The device left the nested HWPT, so the kernel lets it go.
        try backend.destroyHWPT(nested)
        hwpts.removeAll { $0 == nested }
        mark = spy.count
        try backend.attachDevice(vdevice, to: .bypass)
        attach = try lastAttach(since: mark)
        try expect(attach.errno == nil && attach.ptID == proxies[0].bypass && attach.reported == proxies[0].bypass,
                   "attach .bypass: pt_id \(attach.ptID) (bypass HWPT \(proxies[0].bypass)) → \(attach.reported)")
        return ["attachDevice(.abort) → pt_id \(proxies[0].abort) (vSTE V=1 CONFIG=abort); \(nested), which the device left, then destroys",
                "attachDevice(.bypass) → pt_id \(proxies[0].bypass) (vSTE V=1 CONFIG=bypass)"]
    }

    private mutating func destroyVDevice() throws -> [String] {
        guard let viommu = viommus[0], let vdevice else { throw CheckFailure(description: "no vdevice") }
        let backend = backends[0], device = vmm.devices[0]
        let nested = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: device.deviceID, ste: steA, contextDescriptors: [])
        try backend.attachDevice(vdevice, to: .nested(nested))
        let mark = spy.count
        try backend.destroyVDevice(vdevice)
        self.vdevice = nil
        let calls = spy.calls(since: mark)
        let steps = calls.map { call -> String in
            switch call.kind {
            case .vfio(_, .attachIOMMUFDPT): return "attach(\(call.u32(8, after: false)))"
            case .iommufd(.destroy): return "destroy(\(call.u32(4, after: false)))"
            case .closeVFIO(let fd): return "close(fd \(fd))"
            default: return "\(call.kind)"
            }
        }
        try expect(steps.count == 3 && steps[0] == "attach(\(device.nestParent))" && steps[1] == "destroy(\(vdevice.rawValue))"
                   && steps[2].hasPrefix("close(") && calls.allSatisfy { $0.errno == nil },
                   "destroyVDevice made \(steps), expected attach(\(device.nestParent)), destroy(\(vdevice.rawValue)), close")
        try backend.destroyHWPT(nested)
        return ["from \(nested): \(steps.joined(separator: ", ")) (S2 parent = \(device.nestParent)); \(nested) then destroys"]
    }

    /// `arm_vsmmu_init` refuses a nest parent of another SMMU (`s2_parent->smmu != smmu`: EINVAL), and a
    /// device behind another SMMU cannot even be attached to the viommu's nest parent (EINVAL), which
    /// the backend does before `IOMMU_VDEVICE_ALLOC` (whose own check,
    /// `viommu->iommu_dev != __iommu_get_iommu_dev(idev->dev)`, would give EINVAL too).
    private func crossSMMU() throws -> [String] {
        guard let viommu = viommus[0] else { throw CheckFailure(description: "no viommu") }
        var details: [String] = []
        let mark = spy.count
        do {
            let wrong = try backends[0].attachViommu(ViommuAttachRequest(hostDeviceID: vmm.devices[0].deviceID,
                                                                         nestParentHWPT: vmm.devices[1].nestParent))
            try? backends[0].detachViommu(wrong)
            throw CheckFailure(description: "IOMMU_VIOMMU_ALLOC of dev_id \(vmm.devices[0].deviceID) on the S2 of the other SMMU succeeded (\(wrong))")
        } catch let error as BackendError {
            try expect(error.errno == Errno.invalidArgument.rawValue && error.kind == .invalidArgument, "attachViommu on the other SMMU's S2: \(error)")
            details.append("attachViommu(dev_id \(vmm.devices[0].deviceID), S2 \(vmm.devices[1].nestParent) of SMMU 1) → EINVAL: \(error.message)")
        }
        try expect(spy.calls(since: mark).allocatedObjects.isEmpty, "the refused attachViommu left objects: \(spy.calls(since: mark).allocatedObjects)")

        let host = try vmm.hostDevice(1)
        let vdeviceMark = spy.count
        do {
            let wrong = try backends[0].allocateVDevice(viommu: viommu, device: host, virtualStreamID: 0x77)
            try? backends[0].destroyVDevice(wrong)
            throw CheckFailure(description: "IOMMU_VDEVICE_ALLOC of the device behind the other SMMU succeeded (\(wrong))")
        } catch let error as BackendError {
            // The backend first attaches the device to the viommu's nest parent through its VFIO cdev: the
            // kernel refuses a device behind SMMU 1 on SMMU 0's S2 with EINVAL there (as the rig's own
            // multi-SMMU test saw), so the descriptor is unusable for this viommu and no vdevice is tried.
            try expect(error.errno == Errno.invalidArgument.rawValue && error.kind == .unusableDescriptor,
                       "allocateVDevice of the other SMMU's device: \(error)")
            details.append("allocateVDevice(\(viommu) of SMMU 0, dev_id \(host.id) behind SMMU 1) → EINVAL at the attach to SMMU 0's S2")
        }
        try expect(spy.calls(since: vdeviceMark).allocatedObjects.isEmpty,
                   "the refused allocateVDevice left objects: \(spy.calls(since: vdeviceMark).allocatedObjects)")
        let closed = spy.calls(since: vdeviceMark).contains { if case .closeVFIO(let fd) = $0.kind { fd == host.vfioDevice } else { false } }
        try expect(closed, "the refused allocateVDevice did not close the VFIO descriptor it was handed (fd \(host.vfioDevice ?? -1))")
        details.append("the refused allocateVDevice closed its copy of the VFIO descriptor (guest fd \(host.vfioDevice ?? -1))")
        return details
    }

    /// `arm_vsmmu_cache_invalidate` converts each command (`arm_vsmmu_convert_user_cmd`: EIO for an
    /// opcode a viommu does not take, or a vSID without a vdevice) and `iommufd_hwpt_invalidate` writes
    /// back how many it counted in `entry_num`, also on failure.
    private func illegalInMidBatch() throws -> [String] {
        guard let viommu = viommus[0] else { throw CheckFailure(description: "no viommu") }
        let backend = backends[0]
        let batch: [Command] = [.tlbiNHASID(asid: 1), .tlbiS12VMAll(), .tlbiNHASID(asid: 2)]
        let ioctls = backend.invalidateIoctlCount
        var mark = spy.count
        let result = batch.withUnsafeBufferPointer { backend.invalidate(viommu: viommu, commands: $0) }
        try expect(result.completed == 1 && result.failure?.queueError == .illegal && result.failure?.errno == Errno.ioError.rawValue,
                   "invalidate [TLBI_NH_ASID, TLBI_S12_VMALL, TLBI_NH_ASID]: completed \(result.completed), \(String(describing: result.failure))")
        let calls = spy.calls(since: mark).invalidations
        // The kernel's answer to the batch (arm_vsmmu_cache_invalidate refuses the S12 TLBI at index 1 and
        // reports entry_num 1); the backend then sends command 0 again, which the kernel had not issued.
        try expect(calls.count == 2 && calls[0].sent == 3 && calls[0].reported == 1 && calls[0].errno == .ioError
                   && calls[1].sent == 1 && calls[1].reported == 1 && calls[1].errno == nil,
                   "IOMMU_HWPT_INVALIDATE calls (entry_num in → out, errno): \(calls)")
        try expect(backend.invalidateIoctlCount == ioctls + 2, "invalidateIoctlCount +\(backend.invalidateIoctlCount - ioctls)")
        var details = ["invalidate → completed 1, \(result.failure.map { "\($0.queueError)" } ?? "-") (errno 5); kernel: entry_num 3 → 1 with EIO, "
                       + "then the re-sent TLBI_NH_ASID: entry_num 1 → 1 OK"]

        // A device command for a vSID without a vdevice on this viommu: EIO at index 0.
        mark = spy.count
        let unknown = [Command.cfgiCD(streamID: 0x99)].withUnsafeBufferPointer { backend.invalidate(viommu: viommu, commands: $0) }
        let cfgi = spy.calls(since: mark).invalidations
        try expect(unknown.completed == 0 && unknown.failure?.queueError == .illegal && cfgi.count == 1 && cfgi[0].reported == 0
                   && cfgi[0].errno == .ioError,
                   "CFGI_CD to vSID 0x99: completed \(unknown.completed), \(String(describing: unknown.failure)), kernel \(cfgi)")
        details.append("CFGI_CD to vSID 0x99 (no vdevice): completed 0, CERROR_ILL; kernel: entry_num 1 → 0 with EIO")
        return details
    }

    private mutating func teardown() throws -> [String] {
        for index in 0..<2 {
            guard let viommu = viommus[index] else { continue }
            try backends[index].detachViommu(viommu)
            viommus[index] = nil
        }
        let calls = spy.calls(since: start)
        let objects = calls.allocatedObjects
        var left: [String] = []
        for object in objects {
            let errno = try relay.destroy(object.id)
            if errno != .noSuchFileOrDirectory { left.append("\(object): \(errno.map { "\($0)" } ?? "was still there (destroyed now)")") }
        }
        try expect(left.isEmpty, "objects left behind: \(left)")
        let queues = calls.eventQueueDescriptors
        let closed = Set(calls.compactMap { if case .closeEventQueue(let fd) = $0.kind { fd } else { nil } })
        try expect(queues.allSatisfy(closed.contains), "vEVENTQ descriptors \(queues) not all closed (\(closed.sorted()))")
        let counters = backends.map(\.counters)
        return ["detachViommu on both; the \(objects.count) objects the backends allocated (\(objects.map(\.description).joined(separator: ", "))) "
                + "all answer ENOENT; vEVENTQ fds \(queues) closed",
                "counters: " + zip(backends, counters).map { "\($0.name) viommus \($1.viommusAttached) vdevices \($1.vdevicesAllocated) hwpts \($1.hwptsAllocated) "
                    + "invalidate calls \($1.invalidateCalls) ioctls \($0.invalidateIoctlCount)" }.joined(separator: "; ")]
    }
}
