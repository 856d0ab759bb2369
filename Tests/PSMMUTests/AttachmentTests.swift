import Foundation
import PSMMU
import SMMUv3
import Testing
import VSMMUSystem

/// `attachDevice`: where a device's STE points (`VFIO_DEVICE_ATTACH_IOMMUFD_PT` → `iommufd_device_replace`),
/// and what its DMA translates through.
@Suite struct AttachmentTests {
    let smmu = makeSMMU()

    /// A viommu with device 1 as vSID 0x10 (not attached yet) and a nested HWPT with one CD of `asid`.
    func setUp(asid: ASID = 1, eats: UInt8 = 0) throws -> (ViommuHandle, VDeviceHandle, HWPTHandle) {
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let vdevice = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x10)
        let hwpt = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(eats: eats),
                                               contextDescriptors: [.valid(asid: asid)])
        return (viommu, vdevice, hwpt)
    }

    @Test func aFreshVDevicesDeviceIsOnItsNestParentAndTranslatesThroughStage2Only() throws {
        let (viommu, _, _) = try setUp()

        #expect(smmu.domain(hostDeviceID: 1) == .nestParent)
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .bypassed)
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x2000, mapped: false) == .bypassed)
        #expect(smmu.tlbEntryCount == 0)
        #expect(smmu.takeEvents(viommu: viommu).isEmpty)
    }

    @Test func allocatingANestedHWPTInstallsNothingOnlyAttachingDoesLikeIommuHwptAllocAndIommufdDeviceReplace() throws {
        let (viommu, vdevice, hwpt) = try setUp(asid: 7)

        #expect(smmu.installedHWPT(hostDeviceID: 1) == nil)
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .bypassed)
        #expect(smmu.cachedSTE(hostDeviceID: 1) == nil)

        try smmu.attachDevice(vdevice, to: .nested(hwpt))

        #expect(smmu.installedHWPT(hostDeviceID: 1) == hwpt)
        #expect(smmu.domain(hostDeviceID: 1) == .nested(hwpt))
        let vmid = try #require(smmu.vmid(of: viommu))
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .tlbFill(TLBEntry(vmid: vmid, asid: 7, address: 0x1000, size: 4096)))
    }

    @Test func aDeviceOnAbortAbortsEveryTransactionAndTheSMMURecordsNoEventForAnAbortSTE() throws {
        // STE.Config = abort: "report abort to device, no event recorded" (SMMUv3, STE.Config), unlike
        // V = 0, which would be C_BAD_STE; the kernel installs abort STEs only.
        let (viommu, vdevice, _) = try setUp()
        try smmu.attachDevice(vdevice, to: .abort)

        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .aborted)
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000, mapped: false) == .aborted)
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000, throughATS: true) == .aborted)
        #expect(smmu.takeEvents(viommu: viommu).isEmpty)
        #expect(smmu.simulationCounters.eventsNotForwarded == 0, "nothing was recorded")
        #expect(smmu.simulationCounters.aborts == 3)
    }

    @Test func aDeviceOnBypassTranslatesThroughStage2OnlyAndHasNoATS() throws {
        let (viommu, vdevice, _) = try setUp()
        try smmu.attachDevice(vdevice, to: .bypass)

        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .bypassed)
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000, throughATS: true).event?.id == .badATSTranslationRequest)
        #expect(smmu.takeEvents(viommu: viommu).isEmpty, "F_BAD_ATS_TREQ is not forwarded")
        #expect(smmu.tlbEntryCount == 0)
    }

    @Test func attachingToANestedHWPTOfAnotherViommuIsEINVALAndLeavesTheDeviceWhereItWas() throws {
        let (_, vdevice, own) = try setUp()
        let other = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 2))
        let foreign = try smmu.allocateNestedHWPT(viommu: other, hostDeviceID: 2, ste: s1STE(),
                                                  contextDescriptors: [.valid(asid: 9)])
        try smmu.attachDevice(vdevice, to: .nested(own))

        let error = backendError { try smmu.attachDevice(vdevice, to: .nested(foreign)) }

        #expect(error?.kind == .invalidArgument)
        #expect(error?.errno == 22)
        #expect(smmu.domain(hostDeviceID: 1) == .nested(own))
        try smmu.destroyHWPT(foreign)
    }

    @Test func attachingAnUnknownVDeviceOrToAnUnknownHWPTIsENOENTLikeIommufdDeviceChangePt() throws {
        let (_, vdevice, _) = try setUp()

        let unknownVDevice = backendError { try smmu.attachDevice(VDeviceHandle(rawValue: 999), to: .abort) }
        let unknownHWPT = backendError { try smmu.attachDevice(vdevice, to: .nested(HWPTHandle(rawValue: 999))) }

        #expect(unknownVDevice?.kind == .unknownHandle && unknownVDevice?.errno == 2)
        #expect(unknownHWPT?.kind == .unknownHandle && unknownHWPT?.errno == 2)
        #expect(smmu.domain(hostDeviceID: 1) == .nestParent)
    }

    @Test func anAttachReplacesTheDomainInOneSTEWriteAndDropsTheCachedSTEAndCDs() throws {
        let (viommu, vdevice, first) = try setUp(asid: 1)
        let second = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(),
                                                 contextDescriptors: [.valid(asid: 2)])
        try smmu.attachDevice(vdevice, to: .nested(first))
        try smmu.touch(hostDeviceID: 1, address: 0x1000)
        let writes = smmu.simulationCounters.steWrites

        try smmu.attachDevice(vdevice, to: .nested(second))

        #expect(smmu.simulationCounters.steWrites == writes + 1)
        #expect(smmu.cachedSTE(hostDeviceID: 1) == nil)
        #expect(smmu.cachedCDs(hostDeviceID: 1).isEmpty)
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x2000).tlbEntry?.asid == 2)
        try smmu.destroyHWPT(first)
    }

    @Test func whileAttachmentsAreReplacedTheDeviceNeverTranslatesWithoutADomainMakeBeforeBreak() throws {
        let (viommu, vdevice, first) = try setUp(asid: 1)
        let second = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(),
                                                 contextDescriptors: [.valid(asid: 2)])
        try smmu.attachDevice(vdevice, to: .nested(first))
        let smmu = self.smmu
        let done = Locked(false)
        // DMA on another thread for as long as the attachments change: every access must translate
        // through one of the two HWPTs, never through the nest parent or nothing in between.
        let dma = Spawned { () -> (asids: Set<ASID>, others: [DMAOutcome], accesses: Int) in
            var asids: Set<ASID> = []
            var others: [DMAOutcome] = []
            var accesses = 0
            while !done.withLock({ $0 }) || accesses < 1000 {
                guard let outcome = try? smmu.touch(hostDeviceID: 1, address: UInt64(accesses % 64) << 12) else {
                    return (asids, [.aborted], accesses)
                }
                if let asid = outcome.tlbEntry?.asid { asids.insert(asid) } else { others.append(outcome) }
                accesses += 1
            }
            return (asids, others, accesses)
        }
        for i in 0..<20_000 {
            try smmu.attachDevice(vdevice, to: .nested(i % 2 == 0 ? second : first))
        }
        done.withLock { $0 = true }
        let seen = dma.wait()

        #expect(seen.others.count == 0, "DMA saw \(seen.others.prefix(3)) between two nested HWPTs")
        #expect(seen.asids.isSubset(of: [1, 2]))
    }

    @Test func aRefusedAttachKeepsTheOldDomainAndItsCachedConfiguration() throws {
        let (_, vdevice, hwpt) = try setUp()
        try smmu.attachDevice(vdevice, to: .nested(hwpt))
        try smmu.touch(hostDeviceID: 1, address: 0x1000)

        #expect(backendError { try smmu.attachDevice(vdevice, to: .nested(HWPTHandle(rawValue: 999))) } != nil)

        #expect(smmu.cachedSTE(hostDeviceID: 1) != nil)
        #expect(smmu.cachedCDs(hostDeviceID: 1).count == 1)
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000).tlbEntry != nil)
    }

    @Test func attachingToTheDomainTheDeviceIsOnChangesNothingLikeIommufdDeviceDoReplace() throws {
        let (_, vdevice, hwpt) = try setUp()
        try smmu.attachDevice(vdevice, to: .nested(hwpt))
        try smmu.touch(hostDeviceID: 1, address: 0x1000)
        let writes = smmu.simulationCounters.steWrites

        try smmu.attachDevice(vdevice, to: .nested(hwpt))
        try smmu.attachDevice(vdevice, to: .abort)
        try smmu.attachDevice(vdevice, to: .abort)

        #expect(smmu.simulationCounters.steWrites == writes + 1)
    }

    @Test func anAttachInvalidatesTheDevicesATCWhenATSWasOnLikeArmSmmuAttachCommit() throws {
        let (_, vdevice, hwpt) = try setUp(eats: 1)
        try smmu.attachDevice(vdevice, to: .nested(hwpt))
        try smmu.touch(hostDeviceID: 1, address: 0x1000, throughATS: true)
        try smmu.touch(hostDeviceID: 1, substreamID: nil, address: 0x2000, throughATS: true)
        #expect(smmu.atcEntries(hostDeviceID: 1).count == 2)

        try smmu.attachDevice(vdevice, to: .bypass)

        #expect(smmu.atcEntries(hostDeviceID: 1).isEmpty)
        #expect(smmu.simulationCounters.atcEntriesDroppedOnAttach == 2)
    }

    @Test func destroyingAHWPTADeviceIsAttachedToIsEBUSYLikeIommufdObjectRemove() throws {
        let (_, vdevice, hwpt) = try setUp()
        try smmu.attachDevice(vdevice, to: .nested(hwpt))

        let error = backendError { try smmu.destroyHWPT(hwpt) }

        #expect(error?.kind == .busy)
        #expect(error?.errno == 16)
        #expect(smmu.installedHWPT(hostDeviceID: 1) == hwpt, "the device keeps its HWPT")

        try smmu.attachDevice(vdevice, to: .abort)
        try smmu.destroyHWPT(hwpt)
    }

    @Test func destroyingAVDevicePutsItsDeviceBackOnTheNestParentSoItsHWPTCanGo() throws {
        let (viommu, vdevice, hwpt) = try setUp()
        try smmu.attachDevice(vdevice, to: .nested(hwpt))
        try smmu.touch(hostDeviceID: 1, address: 0x1000)

        try smmu.destroyVDevice(vdevice)

        #expect(smmu.domain(hostDeviceID: 1) == .nestParent)
        #expect(smmu.cachedSTE(hostDeviceID: 1) == nil)
        try smmu.destroyHWPT(hwpt)
        try smmu.detachViommu(viommu)
    }

    @Test func faultsOfANestedAttachmentReachTheViommuWithTheVSIDAndNoneFromTheNestParent() throws {
        let viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: 1))
        let vdevice = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: 1, virtualStreamID: 0x10)
        let hwpt = try smmu.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: s1STE(),
                                               contextDescriptors: [ContextDescriptor()])
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .bypassed)

        try smmu.attachDevice(vdevice, to: .nested(hwpt))
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000).event?.id == .badCD)

        let events = smmu.takeEvents(viommu: viommu)
        #expect(events.map(\.id) == [.badCD])
        #expect(events.map(\.streamID) == [0x10])
    }
}
