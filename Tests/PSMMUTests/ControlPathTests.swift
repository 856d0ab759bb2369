import PSMMU
import SMMUv3
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// viommus, vdevices and nested HWPTs, with the kernel's rules.
@Suite struct ControlPathTests {
    let smmu = makeSMMU()

    func expectError(_ kind: BackendError.Kind, _ body: () throws -> Void,
                     sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            try body()
            Issue.record("expected \(kind), got success", sourceLocation: sourceLocation)
        } catch let error as BackendError {
            #expect(error.kind == kind, "\(error)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("expected a BackendError, got \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func everyViommuGetsAVMIDUniqueOnThePSMMUAndAFreedOneIsReused() throws {
        let handles = try (0..<5).map { _ in try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1)) }
        let vmids = handles.compactMap { smmu.vmid(of: $0) }
        #expect(Set(vmids).count == 5)
        #expect(!vmids.contains(0))

        try smmu.detachViommu(handles[2])
        let again = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        #expect(smmu.vmid(of: again) == vmids[2])
        #expect(smmu.vmid(of: handles[2]) == nil)
    }

    @Test func detachingAViommuFlushesItsVMIDFromTheTLB() throws {
        // Both pass nestParentHWPT 0: private S2s, so the detach destroys this one's S2 and its VMID
        // (`arm_smmu_domain_free_paging`).
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        let other = try Guest(smmu, devices: [(2, 0x10, [1])])
        try guest.fill(1, [0x1000, 0x2000])
        try other.fill(2, [0x1000])

        // The vdevice first: it takes the device off the HWPT, which can then be destroyed.
        try smmu.destroyVDevice(try #require(guest.vdevices[1]))
        try smmu.destroyHWPT(try #require(guest.hwpts[1]))
        try smmu.detachViommu(guest.viommu)

        #expect(smmu.tlbEntries() == [TLBEntry(vmid: other.vmid, asid: 1, address: 0x1000, size: 4096)])
        #expect(smmu.simulationCounters.tlbEntriesFlushedOnDetach == 2)
    }

    @Test func aDetachedViommuRefusesInvalidationsEvenRightAfterOneSucceeded() throws {
        // The last viommu invalidated is cached: detaching must drop it from the cache too.
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let tlbi = [Command.tlbiNHAll()]
        let before = tlbi.withUnsafeBufferPointer { smmu.invalidate(viommu: viommu, commands: $0) }
        #expect(before.completed == 1 && before.failure == nil)
        try smmu.detachViommu(viommu)
        let after = tlbi.withUnsafeBufferPointer { smmu.invalidate(viommu: viommu, commands: $0) }
        #expect(after.completed == 0)
        // ENOENT before any command is read: CERROR_ABT, as `CommandQueueError(iommufdInvalidationErrno:)`.
        #expect(after.failure?.queueError == .abort && after.failure?.errno == ENOENT)
    }

    @Test func attachingThroughADeviceNotBehindThePSMMUIsInvalid() {
        expectError(.invalidArgument) { _ = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 99)) }
    }

    @Test func aVDeviceNeedsADeviceBehindThePSMMU() throws {
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        expectError(.invalidArgument) { _ = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: 99, virtualStreamID: 1) }
    }

    @Test func aDeviceHasAtMostOneVDevice() throws {
        let a = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let b = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        _ = try smmu.allocateVDevice(viommu: a, hostDeviceID: 1, virtualStreamID: 0x10)

        expectError(.alreadyExists) { _ = try smmu.allocateVDevice(viommu: a, hostDeviceID: 1, virtualStreamID: 0x11) }
        expectError(.alreadyExists) { _ = try smmu.allocateVDevice(viommu: b, hostDeviceID: 1, virtualStreamID: 0x12) }
    }

    @Test func aVSIDIsUniquePerViommuButMayRepeatAcrossViommus() throws {
        let a = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let b = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        _ = try smmu.allocateVDevice(viommu: a, hostDeviceID: 1, virtualStreamID: 0x10)

        expectError(.alreadyExists) { _ = try smmu.allocateVDevice(viommu: a, hostDeviceID: 2, virtualStreamID: 0x10) }
        _ = try smmu.allocateVDevice(viommu: b, hostDeviceID: 2, virtualStreamID: 0x10)
        #expect(smmu.streamIDMap(viommu: a) == [0x10: 0x101])
        #expect(smmu.streamIDMap(viommu: b) == [0x10: 0x102])
    }

    @Test func aDestroyedVDevicesDeviceAndVSIDCanBeUsedAgain() throws {
        let a = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let vdevice = try smmu.allocateVDevice(viommu: a, hostDeviceID: 1, virtualStreamID: 0x10)
        try smmu.destroyVDevice(vdevice)

        _ = try smmu.allocateVDevice(viommu: a, hostDeviceID: 1, virtualStreamID: 0x10)
        #expect(smmu.streamIDMap(viommu: a) == [0x10: 0x101])
    }

    @Test func controlPathErrorsCarryTheErrnoTheIoctlWouldReturn() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        func errno(_ body: () throws -> Void) -> Int32? {
            do { try body() } catch let error as BackendError { return error.errno } catch {}
            return nil
        }
        #expect(errno { _ = try smmu.allocateVDevice(viommu: guest.viommu, hostDeviceID: 99, virtualStreamID: 1) } == 22)
        #expect(errno { _ = try smmu.allocateVDevice(viommu: guest.viommu, hostDeviceID: 2, virtualStreamID: 0x10) } == 17)
        #expect(errno { try smmu.detachViommu(guest.viommu) } == 16)
        #expect(errno { try smmu.destroyHWPT(HWPTHandle(rawValue: 999)) } == 2)
        var nested = s1STE()
        nested.config = .nested
        #expect(errno { _ = try smmu.allocateNestedHWPT(viommu: guest.viommu, hostDeviceID: 2, ste: nested, contextDescriptors: []) } == 5)
    }

    @Test func aViommuWithVDevicesOrHWPTsIsBusy() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        expectError(.busy) { try smmu.detachViommu(guest.viommu) }

        try smmu.destroyVDevice(try #require(guest.vdevices[1]))
        expectError(.busy) { try smmu.detachViommu(guest.viommu) }

        try smmu.destroyHWPT(try #require(guest.hwpts[1]))
        try smmu.detachViommu(guest.viommu)
        #expect(smmu.viommus.isEmpty)
    }

    @Test func unknownHandlesAreReportedAsSuch() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        let vdevice = try #require(guest.vdevices[1])
        let hwpt = try #require(guest.hwpts[1])
        try smmu.destroyVDevice(vdevice)
        try smmu.destroyHWPT(hwpt)

        expectError(.unknownHandle) { try smmu.destroyVDevice(vdevice) }
        expectError(.unknownHandle) { try smmu.destroyHWPT(hwpt) }
        expectError(.unknownHandle) { try smmu.detachViommu(ViommuHandle(rawValue: 999)) }
        expectError(.unknownHandle) {
            _ = try smmu.allocateVDevice(viommu: ViommuHandle(rawValue: 999), hostDeviceID: 2, virtualStreamID: 1)
        }
        // `iommufd_hwpt_alloc` turns an unknown pt_id into EINVAL, not ENOENT.
        expectError(.invalidArgument) {
            _ = try smmu.allocateNestedHWPT(viommu: ViommuHandle(rawValue: 999), hostDeviceID: 2, ste: s1STE(),
                                            contextDescriptors: [])
        }
    }

    @Test func handlesAreDistinctAcrossObjectKinds() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1]), (2, 0x11, [2])])
        let ids = [guest.viommu.rawValue] + guest.vdevices.values.map(\.rawValue) + guest.hwpts.values.map(\.rawValue)
        #expect(Set(ids).count == 5)
    }

    static let rejectedSTEs: [(StreamTableEntry, String)] = {
        var mev = s1STE()
        mev[StreamTableEntry.Field.mev] = 1
        var nested = s1STE()
        nested.config = .nested
        var eats2 = s1STE()
        eats2.eats = 2
        var w0Bits = s1STE()
        w0Bits.setWord(0, w0Bits.word(0) | 1 << 55)
        return [(mev, "word 1"), (nested, "CONFIG"), (eats2, "EATS"), (w0Bits, "word 0")]
    }()

    @Test(arguments: 0..<rejectedSTEs.count)
    func aVSTETheKernelRejectsIsAnInvalidArgumentNamingTheReason(_ index: Int) throws {
        let (ste, reason) = Self.rejectedSTEs[index]
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        do {
            _ = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: ste, contextDescriptors: [])
            Issue.record("accepted")
        } catch {
            #expect(error.kind == .invalidArgument)
            #expect(error.message.contains(reason), "\(error.message)")
        }
        #expect(smmu.installedHWPT(hostDeviceID: 1) == nil)
    }

    @Test func aHWPTForADeviceNotBehindThePSMMUIsInvalid() throws {
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        expectError(.invalidArgument) {
            _ = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 42, ste: s1STE(), contextDescriptors: [])
        }
    }

    @Test func moreCDsThanTheSTELinksAreInvalid() throws {
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        expectError(.invalidArgument) {
            _ = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(cdMax: 1),
                                            contextDescriptors: [.valid(asid: 1), .valid(asid: 2), .valid(asid: 3)])
        }
    }

    @Test func attachingAHWPTMakesItTheDevicesConfigAndDropsItsCachedSTEAndCDs() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try guest.fill(1, [0x1000])
        #expect(smmu.cachedSTE(hostDeviceID: 1) != nil)
        #expect(smmu.cachedCDs(hostDeviceID: 1).count == 1)

        let replacement = try smmu.allocateNestedHWPT(viommu: guest.viommu, hostDeviceID: 1, ste: s1STE(),
                                                      contextDescriptors: [.valid(asid: 7)])
        try smmu.attachDevice(try #require(guest.vdevices[1]), to: .nested(replacement))

        #expect(smmu.installedHWPT(hostDeviceID: 1) == replacement)
        #expect(smmu.cachedSTE(hostDeviceID: 1) == nil)
        #expect(smmu.cachedCDs(hostDeviceID: 1).isEmpty)
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x2000).tlbEntry?.asid == 7)
        #expect(smmu.simulationCounters.configEntriesDroppedOnSTEChange == 2)
    }

    @Test func aDeviceBackOnItsNestParentFromADestroyedHWPTIsInStage1Bypass() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try smmu.attachDevice(try #require(guest.vdevices[1]), to: .nestParent)
        try smmu.destroyHWPT(try #require(guest.hwpts[1]))

        #expect(smmu.installedHWPT(hostDeviceID: 1) == nil)
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .bypassed)
    }

    @Test func aV0VSTEIsAcceptedAndAbortsWithoutAnEvent() throws {
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let vdevice = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x10)
        var ste = s1STE()
        ste.isValid = false
        let hwpt = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: ste, contextDescriptors: [.valid(asid: 1)])
        try smmu.attachDevice(vdevice, to: .nested(hwpt))

        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .aborted)
        #expect(smmu.takeEvents(viommu: viommu).isEmpty)
    }

    @Test func allocatingANestedHWPTOnAnUnknownViommuIsEINVALLikeIommufdHwptAlloc() throws {
        // `iommufd_get_object(…, IOMMUFD_OBJ_ANY)` failing on pt_id is turned into -EINVAL, not ENOENT.
        let error = backendError {
            _ = try smmu.allocateNestedHWPT(viommu: ViommuHandle(rawValue: 999), hostDeviceID: 1, ste: s1STE(),
                                            contextDescriptors: [])
        }
        #expect(error?.kind == .invalidArgument)
        #expect(error?.errno == 22)
    }

    @Test func hardwareInfoGivesTheConfiguredIDRegistersAndENOENTForAnUnknownViommu() throws {
        let registers = IDRegisters(idr: [0x1, 0x2, 0x3, 0x4, 0x5, 0x6], iidr: 0x43b, aidr: 0x2)
        let smmu = SimulatedSMMU(name: "smmu0", deviceCount: 1, firstHostDeviceID: 1, idRegisters: registers)
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))

        #expect(try smmu.hardwareInfo(viommu: viommu) == registers)
        let error = backendError { _ = try smmu.hardwareInfo(viommu: ViommuHandle(rawValue: 999)) }
        #expect(error?.kind == .unknownHandle)
        #expect(error?.errno == 2)
        try smmu.detachViommu(viommu)
        #expect(backendError { _ = try smmu.hardwareInfo(viommu: viommu) }?.kind == .unknownHandle)
    }

    @Test func controlPathCountersCountWhatWasAllocated() throws {
        _ = try Guest(smmu, devices: [(1, 0x10, [1]), (2, 0x11, [2])])
        let counters = smmu.counters
        #expect(counters.viommusAttached == 1)
        #expect(counters.vdevicesAllocated == 2)
        #expect(counters.hwptsAllocated == 2)
    }
}
