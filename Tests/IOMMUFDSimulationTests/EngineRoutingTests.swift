import InvalidationEngine
import IOMMUFD
import IOMMUFDSimulation
import PSMMU
import SMMUv3
import Testing
import VirtualSMMU

/// ``VSMMUEngine`` with two ``IOMMUFDBackend``s on one kernel model (two pSMMUs, one iommufd): what each
/// pSMMU executes for a guest's batch.
@Suite struct EngineRoutingTests {
    /// Device (0, 0) as vSID 0x8 behind viommu 0 (ASID 3), device (1, 0) as vSID 0x10 behind viommu 1
    /// (ASID 5), both linked with a translating vSTE.
    struct Setup {
        let rig: Rig
        let engine: VSMMUEngine
        let baseline: [SimulatedIOMMUFD.LiveObject]
        init() throws {
            rig = try Rig(pSMMUs: 2, devicesPerPSMMU: 1)
            baseline = rig.kernel.liveObjects()
            engine = VSMMUEngine()
            for p in 0 ..< 2 {
                let index = try engine.attachViommu(pSMMU: "smmu\(p)", backend: rig.backend(p), request: rig.request(p))
                try engine.setDeviceID(viommu: index, device: try rig.hostDevice(p), streamID: StreamID(0x8 * (p + 1)))
            }
            try engine.link(streamID: 0x8, ste: translatingSTE(table: 0x1000), contextDescriptors: [.valid(asid: 3)])
            try engine.link(streamID: 0x10, ste: translatingSTE(table: 0x2000), contextDescriptors: [.valid(asid: 5)])
        }
        var kernel: SimulatedIOMMUFD { rig.kernel }
        func vmid(_ p: Int) -> VMID { rig.kernel.vmid(of: rig.nestParents[p]) ?? 0 }
    }

    @Test func linkingAttachesEachDeviceToItsNestedHWPTOnItsOwnPSMMU() throws {
        let setup = try Setup()
        defer { setup.engine.stop() }
        for p in 0 ..< 2 {
            let device = setup.rig.device(p)
            let hwpt = try #require(setup.kernel.attachment(ofDevice: device.devID))
            #expect(setup.kernel.liveObjects(.nestedHWPT).contains(hwpt))
            #expect(setup.kernel.nestedSTE(of: hwpt)?.0 == translatingSTE(table: UInt64(0x1000 * (p + 1))).word(0))
            #expect(setup.kernel.vmaster(ofDevice: device.devID)?.virtualStreamID == StreamID(0x8 * (p + 1)))
        }
    }

    @Test func anASIDScopedTLBIReachesOnlyTheViommuWhoseHWPTCarriesTheASIDAndACFGICDOnlyTheDevicesOwn() throws {
        let setup = try Setup()
        defer { setup.engine.stop() }
        let result = setup.engine.submit([
            .tlbiNHASID(asid: 3), .tlbiNHVA(asid: 5, address: 0x7000), .cfgiCD(streamID: 0x10, substreamID: 0),
            .atcInv(streamID: 0x8), .sync(),
        ]).wait()
        #expect(result == SubmissionResult(consumed: 5, failure: nil, syncs: 1))
        #expect(setup.kernel.executedCommands(pSMMU: 0) == [
            .tlbiNHASID(asid: 3, vmid: setup.vmid(0)), .atcInv(streamID: Rig.pSID(0, 0)),
        ])
        #expect(setup.kernel.executedCommands(pSMMU: 1) == [
            .tlbiNHVA(asid: 5, vmid: setup.vmid(1), address: 0x7000), .cfgiCD(streamID: Rig.pSID(1, 0), substreamID: 0),
        ])
    }

    @Test func unsettingAndDetachingThroughTheEngineLeavesTheKernelAsTheVMMHadIt() throws {
        let setup = try Setup()
        defer { setup.engine.stop() }
        for p in 0 ..< 2 { try setup.engine.unsetDeviceID(streamID: StreamID(0x8 * (p + 1))) }
        for p in 0 ..< 2 {
            #expect(setup.kernel.attachment(ofDevice: setup.rig.device(p).devID) == setup.rig.nestParents[p])
        }
        for index in setup.engine.viommuStatistics.map(\.index) { try setup.engine.detachViommu(index) }
        #expect(setup.kernel.liveObjects() == setup.baseline)
    }
}
