import Glibc
import InvalidationEngine
import PSMMU
import SMMUv3
import Testing
import VirtualSMMU

/// The engine owns each device's vSTE lifecycle: which domain a vSTE puts the device on, and the one
/// order the kernel accepts (allocate, attach, then destroy the old HWPT; home before the vdevice goes).
@Suite struct DeviceAttachmentTests {
    /// One viommu on a recording backend, vSID 0x10 registered (vdevice handle 2: the viommu took 1).
    func makeEngine() throws -> (VSMMUEngine, RecordingBackend) {
        let backend = RecordingBackend(name: "pSMMU0")
        let engine = VSMMUEngine()
        let index = try engine.attachViommu(pSMMU: backend.name, backend: backend)
        try engine.setDeviceID(viommu: index, hostDeviceID: 7, streamID: 0x10)
        return (engine, backend)
    }

    func log(_ backend: RecordingBackend) -> [String] { backend.record.withLock { $0.log } }
    func clearLog(_ backend: RecordingBackend) { backend.record.withLock { $0.log.removeAll() } }

    @Test func aRelinkAttachesTheNewHWPTBeforeTheOldOneIsDestroyed() throws {
        let (engine, backend) = try makeEngine()
        defer { engine.stop() }
        try engine.link(streamID: 0x10, ste: s1STE(cdTable: 0x1000), contextDescriptors: [.valid(asid: 3)])
        try engine.link(streamID: 0x10, ste: s1STE(cdTable: 0x2000), contextDescriptors: [.valid(asid: 4)])
        #expect(log(backend) == ["hwpt 3", "attach 2 nested hwpt#3", "hwpt 4", "attach 2 nested hwpt#4", "destroy hwpt 3"])
    }

    @Test func eachVSTEPutsTheDeviceOnTheDomainQEMUsInstallSTEChooses() throws {
        let (engine, backend) = try makeEngine()
        defer { engine.stop() }
        try engine.link(streamID: 0x10, ste: .bypass, contextDescriptors: [])
        try engine.link(streamID: 0x10, ste: StreamTableEntry(), contextDescriptors: [])       // V = 0
        try engine.link(streamID: 0x10, ste: s1STE(), contextDescriptors: [.valid(asid: 1)])
        try engine.link(streamID: 0x10, ste: .abort, contextDescriptors: [])
        try engine.link(streamID: 0x10, ste: .bypass, contextDescriptors: [])
        try engine.unlink(streamID: 0x10)
        #expect(backend.record.withLock { $0.attachLog.map(\.1) } == [.bypass, .abort, .nested(HWPTHandle(rawValue: 3)), .abort, .bypass, .abort])
        // The same domain twice is no call: the abort after an abort above was not repeated.
        try engine.link(streamID: 0x10, ste: .abort, contextDescriptors: [])
        #expect(backend.record.withLock { $0.attachLog.count } == 6)
    }

    @Test func unsetPutsTheDeviceHomeThenDestroysItsHWPTThenItsVDevice() throws {
        let (engine, backend) = try makeEngine()
        defer { engine.stop() }
        try engine.link(streamID: 0x10, ste: s1STE(), contextDescriptors: [.valid(asid: 1)])
        clearLog(backend)
        try engine.unsetDeviceID(streamID: 0x10)
        #expect(log(backend) == ["attach 2 nest parent", "destroy hwpt 3", "destroy vdevice 2"])
    }

    @Test func aRefusedAttachRestoresTheLinkTheASIDsAndFreesTheNewHWPT() throws {
        let (engine, backend) = try makeEngine()
        defer { engine.stop() }
        try engine.link(streamID: 0x10, ste: s1STE(cdTable: 0x1000), contextDescriptors: [.valid(asid: 3)])
        backend.refuseNext.withLock { _ = $0.insert("attach") }
        #expect(throws: EngineError.self) {
            try engine.link(streamID: 0x10, ste: s1STE(cdTable: 0x2000), contextDescriptors: [.valid(asid: 4)])
        }
        #expect(engine.vsmmu.devices[0x10]?.ste == s1STE(cdTable: 0x1000))
        #expect(!engine.vsmmu.asidIndex.liveViommus(of: 3).isEmpty)
        #expect(engine.vsmmu.asidIndex.liveViommus(of: 4).isEmpty)
        #expect(engine.backendHandles(of: 0x10).hwpt == HWPTHandle(rawValue: 3))
        #expect(backend.record.withLock { $0.attachments[VDeviceHandle(rawValue: 2)] } == .nested(HWPTHandle(rawValue: 3)))
        #expect(backend.record.withLock { $0.hwpts.keys.map(\.rawValue).sorted() } == [3])
        // A TLBI for the kept ASID still reaches the viommu.
        _ = engine.submit([.tlbiNHASID(asid: 3), .sync()]).wait()
        #expect(backend.executed(on: ViommuHandle(rawValue: 1)).contains(.tlbiNHASID(asid: 3)))
    }

    @Test func aRegistrationTheVSMMURefusesClosesTheVFIODescriptor() throws {
        let (engine, _) = try makeEngine()
        defer { engine.stop() }
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        defer { close(ends[0]) }
        // vSID 0x10 is taken: the engine owns the descriptor and must close it.
        #expect(throws: EngineError.self) {
            try engine.setDeviceID(viommu: ViommuIndex(0), device: HostDevice(id: 8, vfioDevice: ends[1]), streamID: 0x10)
        }
        var byte: UInt8 = 0
        #expect(read(ends[0], &byte, 1) == 0) // EOF: no writer left
    }

    @Test func hardwareInfoListsEveryViommusRegisters() throws {
        let (engine, backend) = try makeEngine()
        defer { engine.stop() }
        let info = try engine.hardwareInfo()
        #expect(info.map(\.viommu) == [ViommuIndex(0)])
        #expect(info.first?.registers == backend.idRegisters)
    }
}
