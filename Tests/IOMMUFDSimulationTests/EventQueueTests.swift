import PSMMU
import CIOMMUFD
import IOMMUFD
import IOMMUFDSimulation
import SMMUv3
import SystemPackage
import Testing

/// `IOMMU_VEVENTQ_ALLOC`, the forwarding of `arm_smmu_handle_event` / `arm_vmaster_report_event` and
/// `read(2)` of the queue (`iommufd_veventq_fops_read`).
@Suite struct EventQueueTests {
    /// Device (0, 0) as vSID 0x8 on a viommu of pSMMU 0, attached to a translating nested HWPT, and a
    /// vEVENTQ of `depth`.
    struct Setup {
        let rig: Rig
        let viommu: UInt32
        let queue: (id: UInt32, fd: Int32)
        init(depth: UInt32 = 8, attach: Bool = true) throws {
            rig = try Rig(pSMMUs: 2)
            let device = rig.device(0)
            viommu = try #require(rig.kernel.allocateViommu(device: device.devID, hwpt: rig.nestParents[0]).value)
            _ = try #require(rig.kernel.allocateVDevice(viommu: viommu, device: device.devID, virtualID: 0x8).value)
            queue = try #require(rig.kernel.allocateEventQueue(viommu: viommu, depth: depth).value)
            if attach {
                let nested = try #require(rig.kernel.allocateNested(device: device.devID, viommu: viommu, ste: translatingSTE()).value)
                try rig.kernel.attach(vfio: device.vfio, to: nested)
            }
        }
        var kernel: SimulatedIOMMUFD { rig.kernel }
    }

    static func fault(_ streamID: StreamID, address: UInt64 = 0x1000, id: EventID = .translation) -> EventRecord {
        EventRecord(id: id, streamID: streamID, inputAddress: address)
    }

    @Test func oneVEventQPerViommuAndTypeAndASecondIsEEXIST() throws {
        let setup = try Setup()
        #expect(setup.kernel.allocateEventQueue(viommu: setup.viommu).error == .fileExists)
        #expect(setup.kernel.allocateEventQueue(viommu: setup.viommu, type: UInt32(IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV)).error == nil)
        #expect(setup.kernel.allocateEventQueue(viommu: setup.viommu, type: UInt32(IOMMU_VEVENTQ_TYPE_DEFAULT)).error == .notSupported)
        #expect(setup.kernel.allocateEventQueue(viommu: setup.viommu, depth: 0, type: 7).error == .invalidArgument)
        #expect(setup.kernel.allocateEventQueue(viommu: 99).error == .noSuchFileOrDirectory)
        #expect(setup.queue.fd >= SimulatedIOMMUFD.firstDescriptor)
    }

    @Test func aKernelBefore6_15HasNoVEventQAllocAndAnswersENOTTY() throws {
        let rig = try Rig(kernel: KernelVersion(6, 14), pSMMUs: 1)
        let viommu = try #require(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: rig.nestParents[0]).value)
        #expect(rig.kernel.allocateEventQueue(viommu: viommu).error == .inappropriateIOCTLForDevice)
    }

    @Test func aForwardedEventReadsAsHeaderAndRecordWithTheVSIDInPlaceOfThePSID() throws {
        let setup = try Setup()
        let record = Self.fault(Rig.pSID(0, 0), address: 0xABC000)
        #expect(setup.kernel.raiseEvent(pSMMU: 0, record) == .queued(veventq: setup.queue.id, virtualStreamID: 0x8))
        let bytes = try #require(setup.kernel.readEvents(setup.queue.fd).value)
        #expect(bytes.count == 8 + 32)
        #expect(u32(bytes, 0) == 0, "flags")
        #expect(u32(bytes, 4) == 0, "sequence")
        var expected = record
        expected.streamID = 0x8
        #expect((0 ..< 4).map { u64(bytes, 8 + 8 * $0) } == [expected.w0, expected.w1, expected.w2, expected.w3])
        #expect(try #require(setup.kernel.readEvents(setup.queue.fd).value).isEmpty, "empty: 0 bytes, no blocking")
    }

    @Test func aFullQueueDropsTheEventAndQueuesTheLostEventsHeaderWithTheNextSequence() throws {
        // iommufd_viommu_report_event: num_events == depth → the lost_events_header, re-queued at the
        // tail with a new sequence per drop (iommufd_vevent_handler).
        let setup = try Setup(depth: 2)
        for n in 0 ..< 5 { setup.kernel.raiseEvent(pSMMU: 0, Self.fault(Rig.pSID(0, 0), address: UInt64(n) << 12)) }
        let bytes = try #require(setup.kernel.readEvents(setup.queue.fd).value)
        #expect(bytes.count == 2 * 40 + 8)
        #expect([u32(bytes, 4), u32(bytes, 44)] == [0, 1])
        #expect(u32(bytes, 80) == UInt32(IOMMU_VEVENTQ_FLAG_LOST_EVENTS))
        #expect(u32(bytes, 84) == 4, "three drops took sequences 2, 3, 4; only the last header stays")
        var decoder = VEventDecoder()
        var events: [EventRecord] = []
        bytes.withUnsafeBytes { _ = decoder.decode($0, into: &events) }
        #expect(events.count == 2)
        #expect(decoder.lostEvents == 3)
    }

    @Test func aReadStopsAtTheFirstEventThatDoesNotFitAndReturnsZeroWhenNoneDoes() throws {
        let setup = try Setup()
        for _ in 0 ..< 2 { setup.kernel.raiseEvent(pSMMU: 0, Self.fault(Rig.pSID(0, 0))) }
        #expect(try #require(setup.kernel.readEvents(setup.queue.fd, capacity: 39).value).isEmpty)
        #expect(try #require(setup.kernel.readEvents(setup.queue.fd, capacity: 79).value).count == 40)
        #expect(setup.kernel.pendingEvents(veventq: setup.queue.id) == 1)
    }

    @Test func onlyTheEventsArmSmmuHandleEventForwardsReachTheQueue() throws {
        let setup = try Setup()
        let pSID = Rig.pSID(0, 0)
        var stall = Self.fault(pSID)
        stall.w1 |= 1 << 31
        var stage2 = Self.fault(pSID)
        stage2.w1 |= 1 << 39
        #expect(setup.kernel.raiseEvent(pSMMU: 0, Self.fault(pSID, id: .badStreamID)) == .notForwarded(.unhandledEventType(.badStreamID)))
        #expect(setup.kernel.raiseEvent(pSMMU: 0, Self.fault(pSID, id: .tlbConflict)) == .notForwarded(.unhandledEventType(.tlbConflict)))
        #expect(setup.kernel.raiseEvent(pSMMU: 0, Self.fault(0x7777)) == .notForwarded(.unknownStreamID(0x7777)))
        #expect(setup.kernel.raiseEvent(pSMMU: 1, Self.fault(pSID)) == .notForwarded(.unknownStreamID(pSID)), "pSIDs are per pSMMU")
        #expect(setup.kernel.raiseEvent(pSMMU: 0, stall) == .notForwarded(.stall))
        #expect(setup.kernel.raiseEvent(pSMMU: 0, stage2) == .notForwarded(.stage2))
        // Device (0, 1) is on the S2, not on a nested HWPT: no vmaster.
        #expect(setup.kernel.raiseEvent(pSMMU: 0, Self.fault(Rig.pSID(0, 1))) == .notForwarded(.noVirtualMaster))
        for id in [EventID.badSTE, .streamDisabled, .badSubstreamID, .badCD, .translation, .addressSize, .access, .permission] {
            #expect(setup.kernel.raiseEvent(pSMMU: 0, Self.fault(pSID, id: id)) == .queued(veventq: setup.queue.id, virtualStreamID: 0x8))
        }
    }

    @Test func theVmasterFollowsTheAttachmentNotTheVDevice() throws {
        // arm_smmu_attach_prepare_vmaster runs for nested domains only; any other attach commits a NULL
        // vmaster, so a device on its S2 reports nothing, though its vdevice exists.
        let setup = try Setup(attach: false)
        let device = setup.rig.device(0)
        #expect(setup.kernel.vmaster(ofDevice: device.devID) == nil)
        #expect(setup.kernel.raiseEvent(pSMMU: 0, Self.fault(device.streamID)) == .notForwarded(.noVirtualMaster))
        let abort = try #require(setup.kernel.allocateNested(device: device.devID, viommu: setup.viommu, ste: .abort).value)
        try setup.kernel.attach(vfio: device.vfio, to: abort)
        #expect(setup.kernel.vmaster(ofDevice: device.devID)?.virtualStreamID == 0x8, "abort HWPT with a vdevice: vmaster")
        try setup.kernel.attach(vfio: device.vfio, to: setup.rig.nestParents[0])
        #expect(setup.kernel.vmaster(ofDevice: device.devID) == nil)
    }

    @Test func withoutAnEventQueueTheEventIsNotForwarded() throws {
        let setup = try Setup()
        setup.kernel.close(eventQueue: FileDescriptor(rawValue: setup.queue.fd))
        #expect(setup.kernel.destroy(setup.queue.id) == nil)
        #expect(setup.kernel.raiseEvent(pSMMU: 0, Self.fault(Rig.pSID(0, 0))) == .notForwarded(.noEventQueue))
    }
}
