import CIOMMUFD
import IOMMUFD
import IOMMUFDSimulation
import InvalidationEngine
import PSMMU
import SMMUv3
import SystemPackage
import Testing
import VirtualSMMU

/// A daemon restart against the kernel model: the kernel objects live in the VMM's iommufd, which
/// outlives the daemon process (`iommufd_fops_release` destroys them only when the file closes).
@Suite struct ReadoptionTests {
    /// An engine with one viommu on pSMMU 0 of `rig`, device 0 registered as vSID 0x10 and linked to a
    /// translating vSTE (ASID 5), device 1 as vSID 0x11 with a bypass vSTE.
    private func populated(_ rig: Rig) throws -> (VSMMUEngine, IOMMUFDBackend) {
        let backend = rig.backend(0)
        let engine = VSMMUEngine()
        let v = try engine.attachViommu(pSMMU: "smmu0", backend: backend, request: rig.request(0))
        try engine.setDeviceID(viommu: v, device: try rig.hostDevice(0, 0), streamID: 0x10)
        try engine.setDeviceID(viommu: v, device: try rig.hostDevice(0, 1), streamID: 0x11)
        try engine.link(streamID: 0x10, ste: .stage1(contextTable: 0x1000), contextDescriptors: [.valid(asid: 5)])
        try engine.link(streamID: 0x11, ste: .bypass, contextDescriptors: [])
        return (engine, backend)
    }

    @Test func aRestartKeepsTheKernelObjectsAndANewBackendReadoptsThemByIdWithoutAllocating() throws {
        let rig = try Rig()
        let (engine, backend) = try populated(rig)
        let snapshot = try EngineSnapshot(decoding: engine.snapshot().encode())
        let held = engine.heldDescriptors
        let objectsBefore = rig.kernel.liveObjects()
        // The daemon dies: its vEVENTQ descriptor closes (no fd store for it); the VFIO cdevs come back
        // from the fd store. Nothing is destroyed: the VMM still holds the iommufd.
        let lostQueue = try #require(held.eventQueues[ViommuIndex(0)])
        try rig.kernel.close(descriptor: lostQueue)
        _ = backend
        #expect(rig.kernel.liveObjects() == objectsBefore)

        let second = rig.backend(0)
        let restored = try VSMMUEngine.restore(snapshot, backends: { _ in second },
                                               descriptors: EngineDescriptors(vfioDevices: held.vfioDevices))
        // Same viommu, vdevices, nested HWPTs; only the vEVENTQ is new (destroyed by id, allocated again).
        let viommu = snapshot.viommus[0].handle
        #expect(restored.viommuStatistics.first?.handle == viommu)
        #expect(restored.backendHandles(of: 0x10).vdevice == snapshot.devices[0].vdevice)
        #expect(restored.backendHandles(of: 0x10).hwpt == snapshot.devices[0].link?.hwpt)
        let kinds = { (objects: [SimulatedIOMMUFD.LiveObject]) in objects.filter { $0.kind != .veventq } }
        #expect(kinds(rig.kernel.liveObjects()) == kinds(objectsBefore))
        #expect(rig.kernel.liveObjects(.veventq).count == 1)
        #expect(second.hasEventQueue(viommu))
        #expect(rig.kernel.attachment(ofDevice: rig.device(0, 0).devID) == snapshot.devices[0].link?.hwpt?.rawValue)
    }

    @Test func afterReadoptionAnInvalidationReachesTheSameViommu() throws {
        // arm_vsmmu_cache_invalidate runs on the viommu named by hwpt_id: the re-adopted id.
        let rig = try Rig()
        let (engine, _) = try populated(rig)
        let snapshot = try engine.snapshot()
        let held = engine.heldDescriptors
        // The dead daemon's vEVENTQ descriptor closed with it.
        try rig.kernel.close(descriptor: try #require(held.eventQueues[ViommuIndex(0)]))
        let second = rig.backend(0)
        let restored = try VSMMUEngine.restore(snapshot, backends: { _ in second },
                                               descriptors: EngineDescriptors(vfioDevices: held.vfioDevices))
        rig.kernel.clearIssuedCommands()
        let result = restored.submit([.tlbiNHASID(asid: 5), .sync()]).wait()
        #expect(result.failure == nil)
        let issued = rig.kernel.issuedCommands(pSMMU: 0)
        #expect(issued.map(\.viommu) == [snapshot.viommus[0].handle.rawValue])
        #expect(issued.first?.command.opcode == .tlbiNHASID)
    }

    @Test func aDeviceWhoseCdevDidNotComeBackIsReadoptedPendingAndResupplyLetsItMoveAgain() throws {
        // The VMM still holds the cdev, and with it the attachment (vfio_df_unbind_iommufd runs only at
        // the file's release): the first engine's descriptors stay open here, as the VMM's would.
        let rig = try Rig()
        let (engine, _) = try populated(rig)
        let snapshot = try engine.snapshot()
        try rig.kernel.close(descriptor: try #require(engine.heldDescriptors.eventQueues[ViommuIndex(0)]))
        let second = rig.backend(0)
        let restored = try VSMMUEngine.restore(snapshot, backends: { _ in second }, descriptors: EngineDescriptors())
        #expect(restored.heldDescriptors.vfioDevices.isEmpty, "both cdevs pending")
        // Invalidations need only the iommufd (arm_vsmmu_cache_invalidate on the re-adopted viommu id).
        rig.kernel.clearIssuedCommands()
        #expect(restored.submit([.tlbiNHASID(asid: 5), .sync()]).wait().failure == nil)
        #expect(rig.kernel.issuedCommands(pSMMU: 0).map(\.command.opcode) == [.tlbiNHASID])
        // The device stays where it was; moving it needs VFIO_DEVICE_ATTACH_IOMMUFD_PT on its cdev.
        let hwpt = try #require(snapshot.devices[0].link?.hwpt)
        #expect(rig.kernel.attachment(ofDevice: rig.device(0, 0).devID) == hwpt.rawValue)
        var refusal: EngineError?
        do { try restored.link(streamID: 0x10, ste: .abort, contextDescriptors: []) } catch { refusal = error }
        #expect("\(String(describing: refusal))".contains("has not been handed back since the restart"))
        #expect(rig.kernel.attachment(ofDevice: rig.device(0, 0).devID) == hwpt.rawValue, "not moved")
        // Another device's cdev is not this device's: refused (the host device ids differ).
        #expect(throws: EngineError.self) {
            try restored.resupplyDevice(viommu: ViommuIndex(0), device: try rig.hostDevice(0, 1), streamID: 0x10)
        }
        // The right cdev is checked by an attach to the HWPT the device is on (iommufd_device_do_replace
        // returns early) and kept; the device then moves.
        #expect(try restored.resupplyDevice(viommu: ViommuIndex(0), device: try rig.hostDevice(0, 0), streamID: 0x10))
        #expect(restored.heldDescriptors.vfioDevices.keys.sorted() == [0x10])
        #expect(try restored.resupplyDevice(viommu: ViommuIndex(0), device: try rig.hostDevice(0, 0), streamID: 0x10) == false,
                "a second cdev is closed: the backend holds one")
        try restored.link(streamID: 0x10, ste: .abort, contextDescriptors: [])
        #expect(rig.kernel.attachment(ofDevice: rig.device(0, 0).devID) != hwpt.rawValue)
        // The other device, still pending and on its bypass HWPT, is torn down where it is: its vdevice
        // goes, and the registration with it.
        let vdevice = try #require(snapshot.devices.first { $0.streamID == 0x11 }?.vdevice)
        try? restored.unsetDeviceID(streamID: 0x11)
        #expect(!rig.kernel.liveObjects(.vdevice).contains(vdevice.rawValue))
        #expect(restored.vsmmu.devices[0x11] == nil)
    }

    @Test func relinkUnlinkAndUnregisterAfterReadoptionDestroyTheRightObjects() throws {
        let rig = try Rig()
        let (engine, _) = try populated(rig)
        let snapshot = try engine.snapshot()
        let held = engine.heldDescriptors
        let oldQueue = try #require(held.eventQueues[ViommuIndex(0)])
        let second = rig.backend(0)
        let restored = try VSMMUEngine.restore(snapshot, backends: { _ in second },
                                               descriptors: EngineDescriptors(eventQueues: [ViommuIndex(0): oldQueue],
                                                                              vfioDevices: held.vfioDevices))
        let oldHWPT = try #require(snapshot.devices[0].link?.hwpt)
        try restored.link(streamID: 0x10, ste: .stage1(contextTable: 0x2000), contextDescriptors: [.valid(asid: 6)])
        #expect(!rig.kernel.liveObjects(.nestedHWPT).contains(oldHWPT.rawValue)) // the re-adopted HWPT went
        try restored.unsetDeviceID(streamID: 0x10)
        try restored.unsetDeviceID(streamID: 0x11)
        try restored.detachViommu(ViommuIndex(0))
        // Only what the VMM made is left: its devices, IOAS and nest parents.
        #expect(rig.kernel.liveObjects(.viommu).isEmpty && rig.kernel.liveObjects(.vdevice).isEmpty
                && rig.kernel.liveObjects(.nestedHWPT).isEmpty && rig.kernel.liveObjects(.veventq).isEmpty)
        #expect(rig.kernel.attachment(ofDevice: rig.device(0, 0).devID) == rig.nestParents[0])
    }

    @Test func objectsGoneSinceTheRestartAreAClearBackendFailureNotACrash() throws {
        let rig = try Rig()
        let (engine, _) = try populated(rig)
        let snapshot = try engine.snapshot()
        let held = engine.heldDescriptors
        // Meanwhile the VMM's objects went (iommufd_fops_release when it closed its iommufd destroys
        // them all; here each is destroyed the way the release does, children first).
        try rig.kernel.close(descriptor: try #require(held.eventQueues[ViommuIndex(0)]))
        for fd in held.vfioDevices.values { try rig.kernel.close(descriptor: fd) }
        for device in rig.devices[0] { try rig.kernel.attach(vfio: device.vfio, to: rig.nestParents[0]) }
        for kind in [ObjectKind.nestedHWPT, .veventq, .vdevice, .viommu] {
            for id in rig.kernel.liveObjects(kind) { #expect(rig.kernel.destroy(id) == nil) }
        }
        let second = rig.backend(0)
        let vfio = try rig.hostDevice(0, 0).vfioDevice, vfio1 = try rig.hostDevice(0, 1).vfioDevice
        #expect {
            try VSMMUEngine.restore(snapshot, backends: { _ in second },
                                    descriptors: EngineDescriptors(vfioDevices: [0x10: vfio!, 0x11: vfio1!]))
        } throws: { error in
            guard let error = error as? EngineRestoreError, case .backend(let backend) = error.reason else { return false }
            return backend.errno == Errno.noSuchFileOrDirectory.rawValue && backend.message.contains("no longer exists")
        }
        #expect(!second.hasEventQueue(snapshot.viommus[0].handle))
    }
}
