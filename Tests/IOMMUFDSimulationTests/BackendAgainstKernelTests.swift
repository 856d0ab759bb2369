import IOMMUFD
import IOMMUFDSimulation
import PSMMU
import SMMUv3
import SystemPackage
import Testing

/// ``IOMMUFDBackend`` driven against the kernel model: what the kernel *did* with its ioctls.
@Suite struct BackendAgainstKernelTests {
    /// A backend on pSMMU 0 of a two-pSMMU rig with a viommu, and device (0, 0) as vSID 0x8 on it.
    struct Setup {
        let rig: Rig
        let backend: IOMMUFDBackend
        let viommu: ViommuHandle
        let vdevice: VDeviceHandle
        init(kernel version: KernelVersion = .rig, maximumEntriesPerCall: Int = 1008) throws {
            rig = try Rig(kernel: version, pSMMUs: 2)
            backend = rig.backend(0, maximumEntriesPerCall: maximumEntriesPerCall)
            viommu = try backend.attachViommu(rig.request(0))
            vdevice = try backend.allocateVDevice(viommu: viommu, device: try rig.hostDevice(0), virtualStreamID: 0x8)
        }
        var kernel: SimulatedIOMMUFD { rig.kernel }
        var vmid: VMID { rig.kernel.vmid(of: viommu.rawValue) ?? 0 }

        func invalidate(_ commands: [Command]) -> InvalidationResult {
            commands.withUnsafeBufferPointer { backend.invalidate(viommu: viommu, commands: $0) }
        }
    }

    /// `count` distinct TLBIs, and what the pSMMU executes for them (the viommu's VMID forced).
    static func tlbis(_ count: Int, vmid: VMID = 0) -> [Command] {
        (0 ..< count).map { .tlbiNHVA(asid: 1, vmid: vmid, address: UInt64($0 + 1) << 12) }
    }

    // MARK: Invalidation: re-sending what the kernel accepted but never issued

    @Test(arguments: [1, 62, 63, 64, 130])
    func theBackendsResendMakesThePSMMUExecuteExactlyCommandsZeroToIOnceEachInOrder(index: Int) throws {
        // arm_vsmmu_cache_invalidate reports EIO with entry_num = i but issued only the chunks before
        // i's; the backend sends i's chunk's accepted commands again, so the pSMMU executes 0 ..< i
        // once each and the guest sees CERROR_ILL at i.
        let setup = try Setup()
        var batch = Self.tlbis(200)
        batch[index] = .cfgiCD(streamID: 0x99) // vSID 0x99 has no vdevice
        let result = setup.invalidate(batch)
        #expect(result.completed == index)
        #expect(result.failure?.queueError == .illegal)
        #expect(setup.kernel.executedCommands(pSMMU: 0) == Self.tlbis(index, vmid: setup.vmid))
        let resent = index % 63
        #expect(setup.backend.invalidateIoctlCount == (resent > 0 ? 2 : 1))
    }

    @Test func chunkBoundariesCountFromEachCallsFirstEntryWhenTheBackendSplitsABatch() throws {
        // Calls of 100 entries: the refusal at batch index 130 is index 30 of the second call, whose
        // kernel chunk started at 100, so 100 ..< 130 are re-sent.
        let setup = try Setup(maximumEntriesPerCall: 100)
        var batch = Self.tlbis(250)
        batch[130] = .sync()
        let result = setup.invalidate(batch)
        #expect(result.completed == 130)
        #expect(setup.kernel.executedCommands(pSMMU: 0) == Self.tlbis(130, vmid: setup.vmid))
        #expect(setup.backend.invalidateIoctlCount == 3)
    }

    @Test func aCommandTheSMMURefusesIsSkippedByTheKernelSoTheBackendReportsTheBatchComplete() throws {
        let setup = try Setup()
        var secure = Command.atcInv(streamID: 0x8)
        secure.ssec = true
        let result = setup.invalidate([.tlbiNHAll(), secure, .cfgiCDAll(streamID: 0x8)])
        #expect(result.isComplete(of: 3))
        #expect(setup.kernel.issuedCommands(pSMMU: 0).compactMap(\.skipped).count == 1)
        #expect(setup.kernel.executedCommands(pSMMU: 0) == [.tlbiNHAll(vmid: setup.vmid), .cfgiCDAll(streamID: Rig.pSID(0, 0))])
    }

    // MARK: Lifecycle

    @Test func theBackendsViommuLifecycleLeavesNoObjectOrDescriptorBehind() throws {
        let rig = try Rig(pSMMUs: 2)
        let baselineObjects = rig.kernel.liveObjects()
        let baselineDescriptors = rig.kernel.openDescriptors()
        let backend = rig.backend(0)
        let viommu = try backend.attachViommu(rig.request(0))
        #expect(backend.hasEventQueue(viommu))
        #expect(try backend.hardwareInfo(viommu: viommu) == rig.kernel.smmus[0].idRegisters)
        let vdevice = try backend.allocateVDevice(viommu: viommu, device: try rig.hostDevice(0), virtualStreamID: 0x8)
        let hwpt = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: rig.device(0).devID,
                                                   ste: translatingSTE(), contextDescriptors: [])
        try backend.attachDevice(vdevice, to: .nested(hwpt))
        #expect(rig.kernel.attachment(ofDevice: rig.device(0).devID) == hwpt.rawValue)
        // viommu, abort and bypass HWPTs, vEVENTQ, vdevice, nested HWPT.
        #expect(rig.kernel.liveObjects().count == baselineObjects.count + 6)

        try backend.attachDevice(vdevice, to: .nestParent)
        try backend.destroyHWPT(hwpt)
        try backend.destroyVDevice(vdevice)
        try backend.detachViommu(viommu)
        #expect(rig.kernel.liveObjects() == baselineObjects)
        #expect(rig.kernel.openDescriptors() == baselineDescriptors)
        #expect(rig.kernel.attachment(ofDevice: rig.device(0).devID) == rig.nestParents[0])
    }

    @Test func onAKernelWithoutVEventQsTheViommuWorksWithoutOneAndStillLeavesNothing() throws {
        let rig = try Rig(kernel: KernelVersion(6, 14), pSMMUs: 1)
        let baseline = rig.kernel.liveObjects()
        let backend = rig.backend(0)
        let viommu = try backend.attachViommu(rig.request(0))
        #expect(!backend.hasEventQueue(viommu))
        try backend.detachViommu(viommu)
        #expect(rig.kernel.liveObjects() == baseline)
    }

    @Test func aNestedHWPTTakesEffectOnlyOnceTheBackendAttachesTheDevice() throws {
        // What a byte-level fake cannot see: IOMMU_HWPT_ALLOC attaches nothing.
        let setup = try Setup()
        let device = setup.rig.device(0)
        let hwpt = try setup.backend.allocateNestedHWPT(viommu: setup.viommu, hostDeviceID: device.devID,
                                                         ste: translatingSTE(), contextDescriptors: [])
        #expect(setup.kernel.attachment(ofDevice: device.devID) == setup.rig.nestParents[0])
        let fault = EventRecord(id: .translation, streamID: device.streamID, inputAddress: 0x4000)
        #expect(setup.kernel.raiseEvent(pSMMU: 0, fault) == .notForwarded(.noVirtualMaster))
        try setup.backend.attachDevice(setup.vdevice, to: .nested(hwpt))
        #expect(setup.kernel.attachment(ofDevice: device.devID) == hwpt.rawValue)
        setup.kernel.raiseEvent(pSMMU: 0, fault)
        var expected = fault
        expected.streamID = 0x8
        #expect(setup.backend.takeEvents(viommu: setup.viommu) == [expected])
    }

    @Test func abortAndBypassAttachTheViommusOwnHWPTs() throws {
        let setup = try Setup()
        let device = setup.rig.device(0)
        try setup.backend.attachDevice(setup.vdevice, to: .abort)
        let abort = try #require(setup.kernel.attachment(ofDevice: device.devID))
        #expect(setup.kernel.nestedSTE(of: abort).map { [$0.0, $0.1] } == [StreamTableEntry.abort.word(0), 0])
        try setup.backend.attachDevice(setup.vdevice, to: .bypass)
        let bypass = try #require(setup.kernel.attachment(ofDevice: device.devID))
        #expect(setup.kernel.nestedSTE(of: bypass).map { [$0.0, $0.1] } == [StreamTableEntry.bypass.word(0), 0])
    }

    // MARK: attachDevice and destroyHWPT

    @Test func makeBeforeBreakWorksAndDestroyingTheAttachedHWPTFirstIsEBUSY() throws {
        let setup = try Setup()
        let device = setup.rig.device(0)
        let first = try setup.backend.allocateNestedHWPT(viommu: setup.viommu, hostDeviceID: device.devID,
                                                          ste: translatingSTE(table: 0x1000), contextDescriptors: [])
        try setup.backend.attachDevice(setup.vdevice, to: .nested(first))
        let second = try setup.backend.allocateNestedHWPT(viommu: setup.viommu, hostDeviceID: device.devID,
                                                           ste: translatingSTE(table: 0x2000), contextDescriptors: [])
        // Break before make: the kernel holds the attached HWPT.
        let busy = backendError { try setup.backend.destroyHWPT(first) }
        #expect(busy?.kind == .busy)
        #expect(busy?.errno == Errno.resourceBusy.rawValue)
        // Make before break.
        try setup.backend.attachDevice(setup.vdevice, to: .nested(second))
        try setup.backend.destroyHWPT(first)
        #expect(setup.kernel.attachment(ofDevice: device.devID) == second.rawValue)
        #expect(!setup.kernel.liveObjects(.nestedHWPT).contains(first.rawValue))
    }

    @Test func destroyVDevicePutsTheDeviceBackOnItsS2AndClosesTheBackendsDescriptor() throws {
        let rig = try Rig(pSMMUs: 1)
        let backend = rig.backend(0)
        let viommu = try backend.attachViommu(rig.request(0))
        let host = try rig.hostDevice(0)
        let vdevice = try backend.allocateVDevice(viommu: viommu, device: host, virtualStreamID: 0x8)
        let hwpt = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: host.id, ste: translatingSTE(), contextDescriptors: [])
        try backend.attachDevice(vdevice, to: .nested(hwpt))
        try backend.destroyVDevice(vdevice)
        #expect(rig.kernel.attachment(ofDevice: host.id) == rig.nestParents[0])
        #expect(rig.kernel.vmaster(ofDevice: host.id) == nil)
        #expect(rig.kernel.closedDescriptors() == [try #require(host.vfioDevice)])
        #expect(rig.kernel.vdevices(ofViommu: viommu.rawValue).isEmpty)
        try backend.destroyHWPT(hwpt)
        try backend.detachViommu(viommu)
    }

    // MARK: Cross-pSMMU refusals

    @Test func aViommuOnTheS2OfAnotherPSMMUIsRefusedAndLeavesNothing() throws {
        let rig = try Rig(pSMMUs: 2)
        let baseline = rig.kernel.liveObjects()
        let error = backendError {
            _ = try rig.backend(0).attachViommu(ViommuAttachRequest(hostDeviceID: rig.device(0).devID,
                                                                    nestParentHWPT: rig.nestParents[1]))
        }
        #expect(error?.kind == .invalidArgument)
        #expect(error?.errno == Errno.invalidArgument.rawValue)
        #expect(rig.kernel.liveObjects() == baseline)
    }

    @Test func aVDeviceOrNestedHWPTForADeviceOfAnotherPSMMUIsInvalidArgument() throws {
        let setup = try Setup()
        let other = try setup.rig.hostDevice(1)
        let vdevice = backendError {
            _ = try setup.backend.allocateVDevice(viommu: setup.viommu, device: other, virtualStreamID: 0x10)
        }
        // Refused at the backend's first step, the attach of the device to this viommu's nest parent
        // (a device behind another SMMU: EINVAL, as on the real rig), so its descriptor is unusable here.
        #expect(vdevice?.kind == .unusableDescriptor)
        #expect(vdevice?.errno == Errno.invalidArgument.rawValue)
        #expect(setup.kernel.closedDescriptors().contains(try #require(other.vfioDevice)), "the backend closes what it took")
        let hwpt = backendError {
            _ = try setup.backend.allocateNestedHWPT(viommu: setup.viommu, hostDeviceID: other.id,
                                                     ste: .bypass, contextDescriptors: [])
        }
        #expect(hwpt?.kind == .invalidArgument)
        #expect(hwpt?.errno == Errno.invalidArgument.rawValue)
    }

    @Test func twoBackendsOnOneIommufdGetTheirOwnPSMMUsRegistersAndVMIDs() throws {
        let rig = try Rig(pSMMUs: 2)
        let backends = [rig.backend(0), rig.backend(1)]
        let viommus = try (0 ..< 2).map { try backends[$0].attachViommu(rig.request($0)) }
        for p in 0 ..< 2 {
            #expect(try backends[p].hardwareInfo(viommu: viommus[p]) == rig.kernel.smmus[p].idRegisters)
        }
        let commands: [Command] = [.tlbiNHASID(asid: 4)]
        for p in 0 ..< 2 {
            let result = commands.withUnsafeBufferPointer { backends[p].invalidate(viommu: viommus[p], commands: $0) }
            #expect(result.isComplete(of: 1))
            #expect(rig.kernel.executedCommands(pSMMU: p) == [.tlbiNHASID(asid: 4, vmid: rig.kernel.vmid(of: rig.nestParents[p]) ?? 0)])
        }
    }
}
