import PSMMU
import SMMUv3
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// What PROTOCOL.md says so that a client needs neither the README nor the SMMUv3 specification
/// (issue 11 §4, "The spec stands alone"), each answered over the socket as written there.
@Suite struct SpecStandsAloneTests {
    /// An ATTACH_VIOMMU payload (80 bytes) with the given reserved word and pSMMU name.
    static func attachPayload(vsmmu: VSMMUID, reserved: UInt32 = 0, pSMMU: String = "smmu0") -> [UInt8] {
        var p: [UInt8] = []
        func le(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { p.append(contentsOf: $0) } }
        le(vsmmu.rawValue); le(0); le(0); le(reserved)
        var name = Array(pSMMU.utf8)
        name += [UInt8](repeating: 0, count: 64 - name.count)
        return p + name
    }

    @Test func attachViommuWithFDAttachedAndNoFDAnswersBadFileDescriptorBeforeAnyFieldCheck() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try client.createVSMMU()
        // A reserved word not zero, and an empty pSMMU name: field errors (step 6) — the missing fd (step 5) wins.
        for payload in [Self.attachPayload(vsmmu: vsmmu, reserved: 7), Self.attachPayload(vsmmu: vsmmu, pSMMU: "")] {
            try client.sendBytes(rawFrame(type: 0x0012, flags: 0x0001, requestID: 31, payload: payload))
            let (id, error) = try client.receiveError()
            #expect(id == 31 && error?.code == .badFileDescriptor && error?.detail == FileDescriptorProblem.missing.rawValue)
        }
        // Without the flag the same frames are BAD_FIELD at their offsets.
        try client.sendBytes(rawFrame(type: 0x0012, requestID: 32, payload: Self.attachPayload(vsmmu: vsmmu, reserved: 7)))
        let reserved = try client.receiveError().error
        #expect(reserved?.code == .badField && reserved?.detail == 12 && reserved?.value == 7)
        try client.sendBytes(rawFrame(type: 0x0012, requestID: 33, payload: Self.attachPayload(vsmmu: vsmmu, pSMMU: "")))
        let empty = try client.receiveError().error
        #expect(empty?.code == .badField && empty?.detail == 16 && empty?.value == 0)
        // A state error (an unknown vSMMU) also yields to the missing fd.
        try client.sendBytes(rawFrame(type: 0x0012, flags: 0x0001, requestID: 34, payload: Self.attachPayload(vsmmu: VSMMUID(1))))
        #expect(try client.receiveError().error?.detail == FileDescriptorProblem.missing.rawValue)
        #expect(try client.list(.viommus, vsmmu: vsmmu).total == 0)
    }

    @Test func reservedFlagBitsAreBadFieldAtHeaderOffset6EvenWithFDAttached() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try client.createVSMMU()
        try client.sendBytes(rawFrame(type: 0x0012, flags: 0x0003, requestID: 40, payload: Self.attachPayload(vsmmu: vsmmu)))
        let e = try client.receiveError().error
        #expect(e?.code == .badField && e?.detail == 0x10006 && e?.value == 3)
    }

    @Test func fdAttachedWithoutAnFDOnATypeThatTakesNoneIsDetail2() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        try client.sendBytes(rawFrame(type: 0x0042, flags: 0x0001, requestID: 41))
        let e = try client.receiveError().error
        #expect(e?.code == .badFileDescriptor && e?.detail == FileDescriptorProblem.unexpected.rawValue)
    }

    @Test func minVersionAboveMaxVersionIsBadFieldAtOffset6WithMaxVersion() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client(hello: false)
        var p: [UInt8] = []
        func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { p.append(contentsOf: $0) } }
        le(UInt32(0x554D_5356)); le(UInt16(3)); le(UInt16(2)); le(UInt32(1)); le(UInt32(0))
        p += [UInt8](repeating: 0, count: 64)
        try client.sendBytes(rawFrame(type: 0x0001, requestID: 42, payload: p))
        let bad = try client.receiveError().error
        #expect(bad?.code == .badField && bad?.detail == 6 && bad?.value == 2)
    }

    @Test func aHostDeviceBehindAnotherPSMMUIsBackendFailureEINVAL() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try client.createVSMMU()
        // The test server's smmu0 has host devices 0…15, smmu1 16…31.
        let attach = refusal("attach through smmu1's device") { _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 16) }
        #expect(attach?.code == .backendFailure && attach?.detail == UInt32(EINVAL) && attach?.value == 0xFFFF_FFFF)
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 0).viommu
        let set = refusal("SET_DEV_ID of smmu1's device") { try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: 16, streamID: 0x10) }
        #expect(set?.code == .backendFailure && set?.detail == UInt32(EINVAL) && set?.value == UInt64(viommu))
        #expect(try client.list(.devices, vsmmu: vsmmu).total == 0)
    }

    @Test func aHostDeviceOnAnotherOfTheSameVMMsVSMMUsIsBackendFailureEEXISTAndAnotherVMMsIsNoConflict() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let a = try client.createVSMMU(), b = try client.createVSMMU()
        for v in [a, b] { _ = try client.attachViommu(vsmmu: v, pSMMU: "smmu0", hostDeviceID: 0) }
        try client.setDeviceID(vsmmu: a, viommu: 0, hostDeviceID: 5, streamID: 0x5)
        let e = refusal("same host device on a second vSMMU") { try client.setDeviceID(vsmmu: b, viommu: 0, hostDeviceID: 5, streamID: 0x5) }
        #expect(e?.code == .backendFailure && e?.detail == UInt32(EEXIST) && e?.value == 0)
        // Another connection (another VMM) has the pSMMU's device range of its own.
        let other = try t.client()
        let c = try other.createVSMMU()
        _ = try other.attachViommu(vsmmu: c, pSMMU: "smmu0", hostDeviceID: 0)
        try other.setDeviceID(vsmmu: c, viommu: 0, hostDeviceID: 5, streamID: 0x5)
    }

    @Test func steWords2To7AreIgnoredAndAV0STEWithGarbageIsAnAbortSTE() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try client.createVSMMU()
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 0)
        try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: 1, streamID: 0x8)
        var ste = s1STE()
        for w in 2..<8 { ste.setWord(w, 0xFFFF_FFFF_FFFF_FFFF) }
        let linked = try client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: ste, contextDescriptors: [.valid(asid: 3)])
        #expect(linked.s1HWPT != nil)
        // V=0 with every other bit of every word set, and CDs: accepted, no HWPT, CDs dropped.
        var garbage = StreamTableEntry()
        for w in 0..<8 { garbage.setWord(w, 0xFFFF_FFFF_FFFF_FFFE) }
        let aborted = try client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: garbage,
                                         contextDescriptors: [.valid(asid: 4), .valid(asid: 5)])
        #expect(aborted.s1HWPT == nil && !aborted.isNew)
        #expect(try client.list(.hwpts, vsmmu: vsmmu).total == 0)
    }

    @Test func ssecIsCERROR_ILLOnlyOnCommandsThatHaveIt() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        let ssec: UInt64 = 1 << 10
        // SSEC on a TLBI or CMD_SYNC is not looked at.
        let tlbi = try client.invalidate(vsmmu: vsmmu, commands: [Command(w0: 0x10 | ssec, w1: 0), Command(w0: 0x46 | ssec, w1: 0)])
        #expect(tlbi.failure == nil && tlbi.consumed == 2)
        for opcode: UInt64 in [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x40, 0x41, 0x44, 0x45] {
            let reply = try client.invalidate(vsmmu: vsmmu, commands: [Command(w0: opcode | ssec | (0x8 << 32), w1: 0), .sync()])
            #expect(reply.consumed == 0 && reply.failure?.index == 0 && reply.failure?.queueError == .illegal, "opcode \(opcode)")
        }
    }
}
