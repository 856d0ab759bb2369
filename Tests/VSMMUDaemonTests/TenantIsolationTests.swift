import Testing
import SMMUv3
import VSMMUClient
import VSMMUProtocol

/// Tenants cannot see each other (issue 11 §2): another connection's vSMMU is answered exactly as an id
/// that never existed, for every request kind, and ids cannot be counted.
@Suite struct TenantIsolationTests {
    /// Every request kind that names a vSMMU, aimed at `vsmmu`.
    static func requests(naming vsmmu: VSMMUID) -> [Request] {
        [
            .destroyVSMMU(DestroyVSMMU(vsmmu: vsmmu)),
            .attachViommu(AttachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 1, nestParentHWPT: 0)),
            .detachViommu(DetachViommu(vsmmu: vsmmu, viommu: 0)),
            .setDeviceID(DeviceRegistration(vsmmu: vsmmu, viommu: 0, hostDeviceID: 1, streamID: 0x40)),
            .unsetDeviceID(DeviceRegistration(vsmmu: vsmmu, viommu: 0, hostDeviceID: 0, streamID: 0x8)),
            .linkSTE(LinkSTE(vsmmu: vsmmu, streamID: 0x8, ste: s1STE(), contextDescriptors: [.valid(asid: 9)])),
            .unlinkSTE(UnlinkSTE(vsmmu: vsmmu, streamID: 0x8)),
            .updateCD(UpdateCD(vsmmu: vsmmu, streamID: 0x8, substreamID: 0, contextDescriptor: .valid(asid: 9))),
            .getHWInfo(GetHardwareInfo(vsmmu: vsmmu)),
            .invalidate(Invalidate(vsmmu: vsmmu, commands: [.tlbiNHAll(), .sync()])),
        ]
    }

    /// The ERROR `client` gets for `request`, as raw reply bytes minus the request id (bytes 8-15).
    static func refusalBytes(_ client: VSMMUClient, _ request: Request, requestID: UInt64) throws -> (ProtocolError?, [UInt8]) {
        try client.sendBytes(try request.encode(requestID: requestID))
        let (_, response) = try client.receive()
        guard case .error(let error) = response else { return (nil, []) }
        var bytes = error.replyFrame(requestID: 0)
        bytes.replaceSubrange(8..<16, with: [UInt8](repeating: 0, count: 8))
        return (error, bytes)
    }

    @Test func anotherConnectionsVSMMUGetsTheAnswerOfAnIDThatNeverExistedForEveryRequestKind() throws {
        let t = try TestServer()
        defer { t.stop() }
        let owner = try t.client()
        let theirs = try ServerScenarioTests.seedVSMMU(owner)
        let before = try owner.list(.devices, vsmmu: theirs).total
        let prober = try t.client()
        // An id that never existed: any other than the live one.
        let never = VSMMUID(theirs.rawValue == UInt32.max ? 1 : theirs.rawValue + 1)
        for (i, (live, absent)) in zip(Self.requests(naming: theirs), Self.requests(naming: never)).enumerated() {
            let (e1, b1) = try Self.refusalBytes(prober, live, requestID: UInt64(2 * i + 1))
            let (e2, b2) = try Self.refusalBytes(prober, absent, requestID: UInt64(2 * i + 2))
            #expect(e1?.code == .unknownVSMMU, "\(live.type.name)")
            #expect(e2?.code == .unknownVSMMU, "\(absent.type.name)")
            // Byte for byte the same frame, once each id is written as the other.
            let renamed = ProtocolError.unknownVSMMU(never, type: live.type)
            #expect(e1.map { $0.code == renamed.code && $0.detail == renamed.detail && $0.requestType == renamed.requestType } == true)
            #expect(b1.count == b2.count, "\(live.type.name): reply lengths differ")
            #expect(e1?.message.replacingOccurrences(of: "\(theirs)", with: "\(never)") == e2?.message, "\(live.type.name)")
        }
        // Nothing of the owner's changed.
        #expect(try owner.list(.devices, vsmmu: theirs).total == before)
        #expect(try owner.invalidate(vsmmu: theirs, commands: [.tlbiNHAll(), .sync()]).syncsCompleted == 1)
    }

    @Test func vSMMUIDsAreRandomSoTheyCannotBeCountedOrGuessed() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let ids = try (0..<8).map { _ in try client.createVSMMU(name: "vm").rawValue }
        #expect(Set(ids).count == 8)
        #expect(!ids.allSatisfy { $0 < 1000 }, "ids look sequential: \(ids)")
        let steps = zip(ids, ids.dropFirst()).map { Int64($1) - Int64($0) }
        #expect(Set(steps).count > 1, "ids have a constant stride: \(ids)")
    }
}

/// Teardown is synchronous from the client's view (issue 11 §3): after a connection closes, what it held
/// is free before the next request that could collide with it is served.
@Suite struct SynchronousTeardownTests {
    @Test func reRegisteringAHostDeviceRightAfterItsOwnerClosedNeverSeesAGhost() throws {
        let t = try TestServer()
        defer { t.stop() }
        var failures = 0
        for i in 0..<1000 {
            let client = try t.client()
            let vsmmu = try client.createVSMMU(name: "restart-\(i)")
            let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 5).viommu
            do {
                try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: 5, streamID: 0x8)
            } catch {
                failures += 1
            }
            // The VMM exits: the next iteration is its quick restart, on a new connection.
        }
        #expect(failures == 0, "\(failures) of 1000 re-registrations met the previous owner's device")
    }
}
