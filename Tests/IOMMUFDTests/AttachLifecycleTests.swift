import IOMMUFD
import InvalidationEngine
import PSMMU
import SMMUv3
import Testing
import VirtualSMMU

/// The vSTE lifecycle as the engine drives the iommufd backend: every ioctl of a link, a relink
/// (make-before-break), an abort, a bypass and an unregister, in order and byte for byte.
///
/// The kernel facts the order follows:
/// - `IOMMU_DESTROY` of a HWPT a device is attached to is EBUSY (the attachment holds a reference;
///   `iommufd_object_remove`), so the old HWPT goes only after the device left it;
/// - `VFIO_DEVICE_ATTACH_IOMMUFD_PT` on an attached device replaces the attachment atomically
///   (`iommufd_device_replace`), so the device is never without a domain;
/// - since 6.15 a S1_TRANS nested HWPT attaches only to a device with a vdevice on its viommu
///   (`arm_smmu_attach_prepare_vmaster`, ENOENT), so the vdevice comes first (SET_DEV_ID).
///
/// Object ids come from the fake from 100 up: viommu 100, its abort HWPT 101, bypass HWPT 102, the
/// vdevice 103, then each nested HWPT.
@Suite struct AttachLifecycleTests {
    static let vfio: Int32 = 40
    static let nestParent: UInt32 = 4
    static let viommu: UInt32 = 100, abortHWPT: UInt32 = 101, bypassHWPT: UInt32 = 102, vdevice: UInt32 = 103

    /// An engine with one iommufd viommu (dev_id 3 on nest parent 4) and the device registered as vSID
    /// 0x10 with its VFIO cdev (fd 40); the fake has forgotten the set-up calls.
    func makeEngine() throws -> (VSMMUEngine, FakeIOMMUFD) {
        let fake = FakeIOMMUFD()
        let backend = IOMMUFDBackend(name: "smmu0", device: fake, configuration: .init(eventQueueDepth: nil))
        let engine = VSMMUEngine()
        let index = try engine.attachViommu(pSMMU: "smmu0", backend: backend,
                                            request: ViommuAttachRequest(hostDeviceID: 3, nestParentHWPT: Self.nestParent))
        try engine.setDeviceID(viommu: index, device: HostDevice(id: 3, vfioDevice: Self.vfio), streamID: 0x10)
        fake.forgetCalls()
        return (engine, fake)
    }

    static func translating(_ table: UInt64, asid: ASID) -> (StreamTableEntry, [ContextDescriptor]) {
        (.stage1(contextTable: table), [.valid(asid: asid)])
    }

    /// `struct vfio_device_attach_iommufd_pt`: argsz 12, flags 0, pt_id.
    func expectAttach(_ call: FakeIOMMUFD.Call?, to ptID: UInt32, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(call?.vfio == FakeIOMMUFD.VFIOCall(request: .attachIOMMUFDPT, descriptor: Self.vfio), sourceLocation: sourceLocation)
        #expect(call?.bytes == le32(12) + le32(0) + le32(ptID), sourceLocation: sourceLocation)
    }

    @Test func setDeviceIDPutsTheDeviceOnTheNestParentThenAllocatesTheVDevice() throws {
        let fake = FakeIOMMUFD()
        let backend = IOMMUFDBackend(name: "smmu0", device: fake, configuration: .init(eventQueueDepth: nil))
        let engine = VSMMUEngine()
        let index = try engine.attachViommu(pSMMU: "smmu0", backend: backend,
                                            request: ViommuAttachRequest(hostDeviceID: 3, nestParentHWPT: Self.nestParent))
        fake.forgetCalls()
        try engine.setDeviceID(viommu: index, device: HostDevice(id: 3, vfioDevice: Self.vfio), streamID: 0x10)

        #expect(fake.journal == ["VFIO_DEVICE_ATTACH_IOMMUFD_PT(40) 4", "IOMMU_VDEVICE_ALLOC"])
        expectAttach(fake.calls.first, to: Self.nestParent)
    }

    @Test func linkAllocatesTheNestedHWPTAndAttachesTheDeviceToIt() throws {
        let (engine, fake) = try makeEngine()
        let (ste, cds) = Self.translating(0x8000_0000, asid: 5)
        try engine.link(streamID: 0x10, ste: ste, contextDescriptors: cds)

        #expect(fake.journal == ["IOMMU_HWPT_ALLOC", "VFIO_DEVICE_ATTACH_IOMMUFD_PT(40) 104"])
        let alloc = try #require(fake.calls(.hwptAlloc).first)
        #expect(alloc.u32(at: 8) == 3)             // dev_id
        #expect(alloc.u32(at: 12) == Self.viommu)  // pt_id: the viommu
        #expect(alloc.payload == le64(ste.word(0)) + le64(ste.word(1)))
        expectAttach(fake.calls.last, to: 104)
        #expect(engine.backendHandles(of: 0x10).hwpt == HWPTHandle(rawValue: 104))
    }

    @Test func relinkIsMakeBeforeBreakAllocateAttachThenDestroyTheOld() throws {
        let (engine, fake) = try makeEngine()
        let (first, cds) = Self.translating(0x8000_0000, asid: 5)
        try engine.link(streamID: 0x10, ste: first, contextDescriptors: cds)
        fake.forgetCalls()
        let (second, cds2) = Self.translating(0x9000_0000, asid: 6)
        try engine.link(streamID: 0x10, ste: second, contextDescriptors: cds2)

        #expect(fake.journal == ["IOMMU_HWPT_ALLOC", "VFIO_DEVICE_ATTACH_IOMMUFD_PT(40) 105", "IOMMU_DESTROY 104"])
        #expect(fake.calls(.hwptAlloc).first?.payload == le64(second.word(0)) + le64(second.word(1)))
        expectAttach(fake.vfioCalls.first, to: 105)
        #expect(fake.calls(.destroy).first?.bytes == le32(8) + le32(104))
    }

    @Test func relinkWithTheSameSTEWordsKeepsTheHWPTAndMakesNoCall() throws {
        let (engine, fake) = try makeEngine()
        let (ste, cds) = Self.translating(0x8000_0000, asid: 5)
        try engine.link(streamID: 0x10, ste: ste, contextDescriptors: cds)
        fake.forgetCalls()
        try engine.link(streamID: 0x10, ste: ste, contextDescriptors: [.valid(asid: 9)])
        #expect(fake.journal.isEmpty)
    }

    @Test func anAttachTheKernelRefusesLeavesTheDeviceOnItsOldHWPTAndFreesTheNewOne() throws {
        let (engine, fake) = try makeEngine()
        let (first, cds) = Self.translating(0x8000_0000, asid: 5)
        try engine.link(streamID: 0x10, ste: first, contextDescriptors: cds)
        fake.forgetCalls()
        fake.script(VFIODeviceRequest.attachIOMMUFDPT, .fail(.invalidArgument))
        let (second, cds2) = Self.translating(0x9000_0000, asid: 6)
        #expect(throws: EngineError.self) { try engine.link(streamID: 0x10, ste: second, contextDescriptors: cds2) }

        #expect(fake.journal == ["IOMMU_HWPT_ALLOC", "VFIO_DEVICE_ATTACH_IOMMUFD_PT(40) 105", "IOMMU_DESTROY 105"])
        #expect(engine.vsmmu.devices[0x10]?.ste == first)
        #expect(engine.backendHandles(of: 0x10).hwpt == HWPTHandle(rawValue: 104))
        #expect(!engine.vsmmu.asidIndex.hwpts(carrying: 5).isEmpty)
        #expect(engine.vsmmu.asidIndex.hwpts(carrying: 6).isEmpty)
    }

    @Test func anAbortVSTEAttachesTheAbortHWPTThenFreesTheStage1One() throws {
        let (engine, fake) = try makeEngine()
        let (ste, cds) = Self.translating(0x8000_0000, asid: 5)
        try engine.link(streamID: 0x10, ste: ste, contextDescriptors: cds)
        fake.forgetCalls()
        try engine.link(streamID: 0x10, ste: .abort, contextDescriptors: [])

        #expect(fake.journal == ["VFIO_DEVICE_ATTACH_IOMMUFD_PT(40) \(Self.abortHWPT)", "IOMMU_DESTROY 104"])
        expectAttach(fake.vfioCalls.first, to: Self.abortHWPT)
    }

    @Test func anInvalidVSTEAndAnUnlinkAbortLikeAnSTEWithVZero() throws {
        let (engine, fake) = try makeEngine()
        try engine.link(streamID: 0x10, ste: StreamTableEntry(), contextDescriptors: [])  // V = 0
        #expect(fake.journal == ["VFIO_DEVICE_ATTACH_IOMMUFD_PT(40) \(Self.abortHWPT)"])

        try engine.link(streamID: 0x10, ste: .bypass, contextDescriptors: [])
        fake.forgetCalls()
        try engine.unlink(streamID: 0x10)
        #expect(fake.journal == ["VFIO_DEVICE_ATTACH_IOMMUFD_PT(40) \(Self.abortHWPT)"])
    }

    @Test func aBypassVSTEAttachesTheBypassHWPT() throws {
        let (engine, fake) = try makeEngine()
        try engine.link(streamID: 0x10, ste: .bypass, contextDescriptors: [])

        #expect(fake.journal == ["VFIO_DEVICE_ATTACH_IOMMUFD_PT(40) \(Self.bypassHWPT)"])
        expectAttach(fake.vfioCalls.first, to: Self.bypassHWPT)
        // Abort → bypass → abort: each change is one replace, nothing is allocated or destroyed.
        try engine.link(streamID: 0x10, ste: .abort, contextDescriptors: [])
        try engine.link(streamID: 0x10, ste: .abort, contextDescriptors: [])
        #expect(fake.journal.count == 2)
        #expect(fake.calls(.hwptAlloc).isEmpty && fake.calls(.destroy).isEmpty)
    }

    @Test func unsetDeviceIDPutsTheDeviceHomeBeforeItsHWPTAndVDeviceGo() throws {
        let (engine, fake) = try makeEngine()
        let (ste, cds) = Self.translating(0x8000_0000, asid: 5)
        try engine.link(streamID: 0x10, ste: ste, contextDescriptors: cds)
        fake.forgetCalls()
        try engine.unsetDeviceID(streamID: 0x10)

        #expect(fake.journal == ["VFIO_DEVICE_ATTACH_IOMMUFD_PT(40) \(Self.nestParent)", "IOMMU_DESTROY 104",
                                 "IOMMU_DESTROY \(Self.vdevice)", "close(40)"])
        expectAttach(fake.vfioCalls.first, to: Self.nestParent)
    }

    @Test func unsetDeviceIDOfADeviceThatNeverLinkedMakesNoAttach() throws {
        let (engine, fake) = try makeEngine()
        try engine.unsetDeviceID(streamID: 0x10)
        #expect(fake.journal == ["IOMMU_DESTROY \(Self.vdevice)", "close(40)"])
    }

    @Test func aVDeviceTheKernelRefusesClosesTheVFIODescriptor() throws {
        let fake = FakeIOMMUFD()
        let backend = IOMMUFDBackend(name: "smmu0", device: fake, configuration: .init(eventQueueDepth: nil))
        let engine = VSMMUEngine()
        let index = try engine.attachViommu(pSMMU: "smmu0", backend: backend,
                                            request: ViommuAttachRequest(hostDeviceID: 3, nestParentHWPT: Self.nestParent))
        fake.script(.vdeviceAlloc, .fail(.fileExists))
        #expect(throws: EngineError.self) {
            try engine.setDeviceID(viommu: index, device: HostDevice(id: 3, vfioDevice: Self.vfio), streamID: 0x10)
        }
        #expect(fake.closedDescriptors == [Self.vfio])
        #expect(engine.vsmmu.devices[0x10] == nil)
    }

    @Test func aDescriptorThatIsNoVFIOCdevIsRefusedBeforeTheVDevice() throws {
        let fake = FakeIOMMUFD()
        let backend = IOMMUFDBackend(name: "smmu0", device: fake, configuration: .init(eventQueueDepth: nil))
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 3, nestParentHWPT: Self.nestParent))
        fake.script(VFIODeviceRequest.attachIOMMUFDPT, .fail(.inappropriateIOCTLForDevice))
        fake.forgetCalls()
        #expect(throws: BackendError.self) {
            _ = try backend.allocateVDevice(viommu: viommu, device: HostDevice(id: 3, vfioDevice: Self.vfio), virtualStreamID: 1)
        }
        #expect(fake.journal == ["VFIO_DEVICE_ATTACH_IOMMUFD_PT(40) 4", "close(40)"])
    }

    @Test func aNestedHWPTOfAnotherViommuIsRefusedWithoutAnIoctl() throws {
        let fake = FakeIOMMUFD()
        let backend = IOMMUFDBackend(name: "smmu0", device: fake, configuration: .init(eventQueueDepth: nil))
        let a = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 3, nestParentHWPT: 4))
        let b = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 5, nestParentHWPT: 6))
        let vdevice = try backend.allocateVDevice(viommu: a, device: HostDevice(id: 3, vfioDevice: Self.vfio), virtualStreamID: 1)
        let other = try backend.allocateNestedHWPT(viommu: b, hostDeviceID: 5, ste: .stage1(contextTable: 0x1000), contextDescriptors: [])
        fake.forgetCalls()
        #expect(throws: BackendError.self) { try backend.attachDevice(vdevice, to: .nested(other)) }
        #expect(fake.calls.isEmpty)
    }
}
