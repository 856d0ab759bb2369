import CommandRing
import InvalidationEngine
import PSMMU
import SMMUv3
import Testing
import VirtualSMMU

/// An engine on two simulated pSMMUs: viommus 0 and 2 (1 was detached), three devices, two linked
/// (one translating with two CDs, one bypass), and ASID 9 retiring from viommu 0.
private func populatedEngine(_ smmus: [SimulatedSMMU]) throws -> VSMMUEngine {
    let engine = VSMMUEngine()
    let v0 = try engine.attachViommu(pSMMU: smmus[0].name, backend: smmus[0])
    let spare = try engine.attachViommu(pSMMU: "spare", backend: SimulatedSMMU(name: "spare", deviceCount: 1))
    let v2 = try engine.attachViommu(pSMMU: smmus[1].name, backend: smmus[1], request: ViommuAttachRequest(hostDeviceID: 64))
    try engine.detachViommu(spare)
    try engine.setDeviceID(viommu: v0, hostDeviceID: 1, streamID: 0x10)
    try engine.setDeviceID(viommu: v0, hostDeviceID: 2, streamID: 0x11)
    try engine.setDeviceID(viommu: v2, hostDeviceID: 65, streamID: 0x20)
    try engine.link(streamID: 0x10, ste: .stage1(contextTable: 0x1000, cdMax: 1),
                    contextDescriptors: [.valid(asid: 9), .valid(asid: 4)])
    // Relinking without ASID 9 leaves it retiring from viommu 0.
    try engine.link(streamID: 0x10, ste: .stage1(contextTable: 0x1000, cdMax: 1),
                    contextDescriptors: [.valid(asid: 5), .valid(asid: 4)])
    try engine.link(streamID: 0x20, ste: .bypass, contextDescriptors: [])
    return engine
}

private func smmuPair() -> [SimulatedSMMU] {
    [SimulatedSMMU(name: "smmu0", deviceCount: 64, firstHostDeviceID: 0),
     SimulatedSMMU(name: "smmu1", deviceCount: 64, firstHostDeviceID: 64, firstStreamID: 64)]
}

@Suite struct EngineSnapshotTests {
    @Test func aSnapshotRoundTripsThroughItsBytes() throws {
        let engine = try populatedEngine(smmuPair())
        let snapshot = try engine.snapshot()
        #expect(snapshot.viommus.map(\.index) == [ViommuIndex(0), ViommuIndex(2)])
        #expect(snapshot.devices.map(\.streamID) == [0x10, 0x11, 0x20])
        #expect(snapshot.retiring == [EngineSnapshot.RetiringASID(asid: 9, viommus: ViommuSet([ViommuIndex(0)]))])
        let decoded = try EngineSnapshot(decoding: snapshot.encode())
        #expect(decoded == snapshot)
    }

    @Test func everyTruncationOfASnapshotIsRefusedNeverHalfRead() throws {
        let bytes = try populatedEngine(smmuPair()).snapshot().encode()
        for length in 0 ..< bytes.count {
            #expect(throws: EngineSnapshotError.self) { try EngineSnapshot(decoding: bytes[0 ..< length]) }
        }
        #expect(throws: EngineSnapshotError.trailingBytes(offset: bytes.count, count: 1)) {
            try EngineSnapshot(decoding: bytes + [0])
        }
    }

    @Test func hostileCountsAndFieldsAreClearErrorsWithoutHugeAllocations() throws {
        let bytes = try populatedEngine(smmuPair()).snapshot().encode()
        func patched(_ offset: Int, _ value: [UInt8]) -> [UInt8] {
            var copy = bytes
            copy.replaceSubrange(offset ..< offset + value.count, with: value)
            return copy
        }
        #expect(throws: EngineSnapshotError.notASnapshot) { try EngineSnapshot(decoding: patched(0, [0x58])) }
        #expect(throws: EngineSnapshotError.unsupportedVersion(2)) { try EngineSnapshot(decoding: patched(4, [2, 0])) }
        // A device count of 2^32 - 1 cannot fit in what is left: refused before any allocation.
        #expect(throws: EngineSnapshotError.self) { try EngineSnapshot(decoding: patched(12, [0xFF, 0xFF, 0xFF, 0xFF])) }
        #expect(throws: EngineSnapshotError.badField(offset: 8, "65 viommus (a vSMMU has at most 64)")) {
            try EngineSnapshot(decoding: patched(8, [65, 0]))
        }
        // The first viommu's reserved byte.
        #expect(throws: EngineSnapshotError.badField(offset: 21, "viommu reserved field is not 0")) {
            try EngineSnapshot(decoding: patched(21, [1]))
        }
        // Random bytes and random single-byte corruptions never crash the decoder.
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; return seed }
        for _ in 0 ..< 2000 {
            var corrupt = bytes
            corrupt[Int(next() % UInt64(corrupt.count))] = UInt8(truncatingIfNeeded: next())
            _ = try? EngineSnapshot(decoding: corrupt)
            let noise = (0 ..< Int(next() % 96)).map { _ in UInt8(truncatingIfNeeded: next()) }
            _ = try? EngineSnapshot(decoding: EngineSnapshot.magic + [1, 0, 0, 0] + noise)
        }
    }

    @Test func anInconsistentSnapshotIsRefusedByName() throws {
        var snapshot = try populatedEngine(smmuPair()).snapshot()
        snapshot.devices[1].viommu = ViommuIndex(1)
        #expect(throws: EngineSnapshotError.inconsistent("StreamID 0x11 is behind viommu 1, which is not attached")) {
            try EngineSnapshot(decoding: snapshot.encode())
        }
    }

    @Test func aRestoredEngineOnResetSimulatedSMMUsHasTheSameRegistrationsAndRetiringASIDs() throws {
        let before = try populatedEngine(smmuPair())
        let snapshot = try EngineSnapshot(decoding: before.snapshot().encode())
        // The next process's simulated pSMMUs: reset SMMUs, nothing cached.
        let smmus = smmuPair()
        let engine = try VSMMUEngine.restore(snapshot, backends: { viommu in smmus.first { $0.name == viommu.pSMMU } })
        let old = before.vsmmu, new = engine.vsmmu
        #expect(new.viommus.map { $0?.pSMMU } == old.viommus.map { $0?.pSMMU })
        #expect(new.devices.mapValues(\.ste) == old.devices.mapValues(\.ste))
        #expect(new.devices.mapValues(\.contextDescriptors) == old.devices.mapValues(\.contextDescriptors))
        #expect(new.asidIndex.knownASIDs == old.asidIndex.knownASIDs)
        #expect(new.asidIndex.retiringViommus(of: 9) == ViommuSet([ViommuIndex(0)]))
        #expect(new.asidIndex.targets(of: 4) == ViommuSet([ViommuIndex(0)]))
        // The backends hold the objects again: vdevices, the nested HWPT attached, the bypass domain.
        #expect(smmus[0].vdevice(hostDeviceID: 1) != nil && smmus[0].vdevice(hostDeviceID: 2) != nil)
        #expect(smmus[0].domain(hostDeviceID: 1) == engine.backendHandles(of: 0x10).hwpt.map(DeviceDomain.nested))
        #expect(smmus[1].domain(hostDeviceID: 65) == .bypass)
        // What the restored engine holds is what it restored, in this process's handles.
        let again = try engine.snapshot()
        #expect(again.devices.map(\.domain) == [engine.backendHandles(of: 0x10).hwpt.map(DeviceDomain.nested), .nestParent, .bypass])
        #expect(again.retiring == snapshot.retiring)
    }

    @Test func theRetiringASIDStillReachesItsViommuAfterARestore() throws {
        let snapshot = try populatedEngine(smmuPair()).snapshot()
        let smmus = smmuPair()
        let engine = try VSMMUEngine.restore(snapshot, backends: { viommu in smmus.first { $0.name == viommu.pSMMU } })
        let handle = try #require(engine.viommuStatistics.first { $0.index == ViommuIndex(0) }?.handle)
        let before = smmus[0].commandsProcessed(viommu: handle) ?? 0
        let result = engine.submit([.tlbiNHASID(asid: 9, vmid: 0), .sync()]).wait()
        #expect(result.failure == nil)
        #expect((smmus[0].commandsProcessed(viommu: handle) ?? 0) == before + 1)
        // The TLBI ended the retirement, as it would have without the restart.
        #expect(engine.vsmmu.asidIndex.retiringViommus(of: 9).isEmpty)
    }

    @Test func relinkUnlinkAndUnregisterAfterARestoreDestroyTheRestoredObjects() throws {
        let snapshot = try populatedEngine(smmuPair()).snapshot()
        let smmus = smmuPair()
        let engine = try VSMMUEngine.restore(snapshot, backends: { viommu in smmus.first { $0.name == viommu.pSMMU } })
        let restoredHWPT = try #require(engine.backendHandles(of: 0x10).hwpt)
        try engine.link(streamID: 0x10, ste: .stage1(contextTable: 0x8000), contextDescriptors: [.valid(asid: 7)])
        let relinked = try #require(engine.backendHandles(of: 0x10).hwpt)
        #expect(relinked != restoredHWPT)
        #expect(throws: BackendError.self) { try smmus[0].destroyHWPT(restoredHWPT) } // already destroyed by the relink
        try engine.unlink(streamID: 0x10)
        try engine.unsetDeviceID(streamID: 0x10)
        try engine.unsetDeviceID(streamID: 0x11)
        try engine.unsetDeviceID(streamID: 0x20)
        #expect(smmus[0].vdevice(hostDeviceID: 1) == nil && smmus[1].vdevice(hostDeviceID: 65) == nil)
        try engine.detachViommu(ViommuIndex(0))
        try engine.detachViommu(ViommuIndex(2))
        #expect(engine.viommuStatistics.isEmpty)
    }

    @Test func aPSMMUNoLongerConfiguredFailsTheRestoreAndLeavesNothingBehind() throws {
        let snapshot = try populatedEngine(smmuPair()).snapshot()
        let smmu0 = smmuPair()[0]
        #expect(throws: EngineRestoreError(viommu: ViommuIndex(2), .noBackend(pSMMU: "smmu1"))) {
            try VSMMUEngine.restore(snapshot, backends: { $0.pSMMU == "smmu0" ? smmu0 : nil })
        }
        // viommu 0 had been restored first: torn down again.
        #expect(smmu0.vdevice(hostDeviceID: 1) == nil && smmu0.vdevice(hostDeviceID: 2) == nil)
    }

    @Test func resupplyingAVFIODeviceRefusesARegistrationThatDiffers() throws {
        let smmus = smmuPair()
        let engine = try VSMMUEngine.restore(try populatedEngine(smmuPair()).snapshot(),
                                             backends: { viommu in smmus.first { $0.name == viommu.pSMMU } })
        try engine.resupplyDevice(viommu: ViommuIndex(0), device: HostDevice(id: 1), streamID: 0x10)
        #expect(throws: EngineError.vsmmu(.streamIDInUse(streamID: 0x10, viommu: ViommuIndex(0), hostDeviceID: 1))) {
            try engine.resupplyDevice(viommu: ViommuIndex(0), device: HostDevice(id: 3), streamID: 0x10)
        }
        #expect(throws: EngineError.vsmmu(.unknownStreamID(0x99))) {
            try engine.resupplyDevice(viommu: ViommuIndex(0), device: HostDevice(id: 1), streamID: 0x99)
        }
    }
}
