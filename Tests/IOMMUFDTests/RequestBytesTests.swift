import IOMMUFD
import PSMMU
import SMMUv3
import Testing

/// The exact argument bytes of each control-path ioctl, little-endian, as the kernel reads them.
@Suite struct RequestBytesTests {
    /// A backend on a fake without vEVENTQs unless asked.
    func makeBackend(eventQueueDepth: UInt32? = nil) -> (IOMMUFDBackend, FakeIOMMUFD) {
        let fake = FakeIOMMUFD()
        let backend = IOMMUFDBackend(name: "smmu0", device: fake,
                                     configuration: .init(eventQueueDepth: eventQueueDepth))
        return (backend, fake)
    }

    /// Attach reads the pSMMU's ID registers, allocates the viommu on the nest parent, then its abort and
    /// bypass nested HWPTs (QEMU's `smmuv3_accel_alloc_viommu`).
    @Test func attachReadsHWInfoThenAllocatesTheViommuAndItsAbortAndBypassHWPTs() throws {
        let (backend, fake) = makeBackend()
        fake.script(.viommuAlloc, .succeed(objectID: 0x55))
        fake.idRegisters = IDRegisters(idr: [1, 2, 3, 4, 5, 6], iidr: 7, aidr: 8)
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 0x0102_0304, nestParentHWPT: 7))

        #expect(viommu == ViommuHandle(rawValue: 0x55))
        let calls = fake.calls
        try #require(calls.count == 4)
        #expect(calls.map(\.request) == [.getHWInfo, .viommuAlloc, .hwptAlloc, .hwptAlloc])
        // size 40, flags, dev_id, data_len 40, data_uptr, out_data_type, out_max_pasid_log2 + reserved, caps
        let info = calls[0]
        #expect(info.bytes == le32(40) + le32(0) + le32(0x0102_0304) + le32(40) + le64(info.u64(at: 16))
            + le32(0) + le32(0) + le64(0))
        #expect(calls[1].bytes == le32(24) + le32(0) + le32(1) + le32(0x0102_0304) + le32(7) + le32(0))
        // Both proxy HWPTs are nested on the viommu through the same device: abort V=1, bypass V=1 CONFIG=4.
        for call in calls[2...] {
            #expect(Array(call.bytes[0..<32]) == le32(48) + le32(0) + le32(0x0102_0304) + le32(0x55) + le32(0) + le32(0)
                + le32(2) + le32(16))
        }
        #expect(calls[2].payload == le64(0x1) + le64(0))
        #expect(calls[3].payload == le64(0x9) + le64(0))
        #expect(try backend.hardwareInfo(viommu: viommu) == IDRegisters(idr: [1, 2, 3, 4, 5, 6], iidr: 7, aidr: 8))
        #expect(backend.counters.viommusAttached == 1)
    }

    @Test func attachWithAnEventQueueAllocatesAVEventQueueOnTheNewViommu() throws {
        let (backend, fake) = makeBackend(eventQueueDepth: 128)
        fake.script(.viommuAlloc, .succeed(objectID: 9))
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))

        let call = try #require(fake.calls(.veventqAlloc).first)
        // size, flags, viommu_id, type ARM_SMMUV3, depth, out_veventq_id, out_veventq_fd, __reserved
        #expect(call.bytes == le32(32) + le32(0) + le32(9) + le32(1) + le32(128) + le32(0) + le32(0) + le32(0))
        #expect(fake.calls.last?.request == .veventqAlloc)
        #expect(backend.hasEventQueue(viommu))
    }

    @Test func aDeviceBehindAnotherKindOfIOMMUIsUnavailable() throws {
        let (backend, fake) = makeBackend()
        fake.script(.getHWInfo, .fail(.invalidArgument))
        #expect(throws: BackendError.self) { _ = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2)) }
        #expect(fake.calls.map(\.request) == [.getHWInfo])
    }

    @Test func allocateVDeviceSendsTheVSIDAsVirtID() throws {
        let (backend, fake) = makeBackend()
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 3, nestParentHWPT: 4))
        fake.script(.vdeviceAlloc, .succeed(objectID: 0x77))
        fake.forgetCalls()
        let vdevice = try backend.allocateVDevice(viommu: viommu, device: HostDevice(id: 3, vfioDevice: 40),
                                                  virtualStreamID: 0x0001_0008)

        #expect(vdevice == VDeviceHandle(rawValue: 0x77))
        // First the device is put (or found) on the nest parent through its VFIO cdev, then the vdevice.
        #expect(fake.journal == ["VFIO_DEVICE_ATTACH_IOMMUFD_PT(40) 4", "IOMMU_VDEVICE_ALLOC"])
        // argsz 12, flags 0, pt_id = the nest parent
        #expect(fake.vfioCalls.first?.bytes == le32(12) + le32(0) + le32(4))
        let call = try #require(fake.calls(.vdeviceAlloc).first)
        #expect(call.bytes == le32(24) + le32(viommu.rawValue) + le32(3) + le32(0) + le64(0x0001_0008))
        #expect(backend.counters.vdevicesAllocated == 1)
    }

    @Test func allocateNestedHWPTSendsTheFirstTwoSTEWordsOnTheViommu() throws {
        let (backend, fake) = makeBackend()
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 3, nestParentHWPT: 4))
        var ste = StreamTableEntry.stage1(contextTable: 0x8_1234_5000, cdMax: 4)
        ste.eats = 1
        ste.setWord(2, 0xDEAD) // not part of a nested vSTE: must not travel
        fake.script(.hwptAlloc, .succeed(objectID: 0x31))
        fake.forgetCalls()

        let hwpt = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: 3, ste: ste, contextDescriptors: [])

        #expect(hwpt == HWPTHandle(rawValue: 0x31))
        let call = try #require(fake.calls(.hwptAlloc).first)
        let pointer = call.u64(at: 32)
        #expect(pointer != 0)
        // size, flags, dev_id, pt_id = viommu, out_hwpt_id, __reserved, data_type ARM_SMMUV3, data_len 16,
        // data_uptr, fault_id, __reserved2
        #expect(call.bytes == le32(48) + le32(0) + le32(3) + le32(viommu.rawValue) + le32(0) + le32(0)
            + le32(2) + le32(16) + le64(pointer) + le32(0) + le32(0))
        #expect(call.payload == le64(ste.word(0)) + le64(ste.word(1)))
        #expect(backend.counters.hwptsAllocated == 1)
    }

    @Test func destroySendsTheObjectID() throws {
        let (backend, fake) = makeBackend()
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 3, nestParentHWPT: 4))
        fake.script(.vdeviceAlloc, .succeed(objectID: 0x0A0B_0C0D))
        let vdevice = try backend.allocateVDevice(viommu: viommu, device: HostDevice(id: 3, vfioDevice: 40), virtualStreamID: 1)
        try backend.destroyVDevice(vdevice)

        let call = try #require(fake.calls(.destroy).first)
        #expect(call.bytes == le32(8) + le32(0x0A0B_0C0D))
    }

    @Test func invalidateSendsTheViommuIDAndTheBatchVerbatim() throws {
        let (backend, fake) = makeBackend()
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 3, nestParentHWPT: 4))
        let commands: [Command] = [
            .tlbiNHVA(asid: 0x1234, address: 0x7fff_0000_1000),
            .cfgiCD(streamID: 0x42, substreamID: 3),
            .atcInv(streamID: 0x42),
        ]
        let result = commands.withUnsafeBufferPointer { backend.invalidate(viommu: viommu, commands: $0) }

        #expect(result == InvalidationResult(completed: 3))
        let call = try #require(fake.calls(.hwptInvalidate).first)
        let pointer = call.u64(at: 8)
        // size, hwpt_id = viommu, data_uptr, data_type ARM_SMMUV3, entry_len 16, entry_num 3, __reserved
        #expect(call.bytes == le32(32) + le32(viommu.rawValue) + le64(pointer) + le32(1) + le32(16) + le32(3) + le32(0))
        #expect(call.payload == commands.flatMap(\.bytes))
    }
}
