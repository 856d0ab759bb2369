import PSMMU
import SMMUv3
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Every error case of PROTOCOL.md §2.2 and §4, answered exactly, and the daemon serving on afterwards.
@Suite struct ProtocolErrorTests {
    /// After an error: the same connection (unless it was closed) and a new one still work, and
    /// `vsmmu` (owned by `owner`) is still registered.
    static func expectStillServing(_ t: TestServer, owner: VSMMUClient? = nil, vsmmu: VSMMUID? = nil) throws {
        let other = try t.client()
        #expect(try other.health().status == .ok)
        if let owner, let vsmmu {
            #expect(try owner.invalidate(vsmmu: vsmmu, commands: [.tlbiNHAll(), .sync()]).failure == nil)
        }
    }

    @Test func requestsBeforeHELLOAreRefusedWithHandshakeRequiredAndHELLOStillWorks() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client(hello: false)
        let id = try client.send(.createVSMMU(CreateVSMMU(name: "x")))
        let (replyID, error) = try client.receiveError()
        #expect(replyID == id)
        #expect(error?.code == .handshakeRequired && error?.value == 0x10 && error?.requestType == .createVSMMU)
        #expect(t.server.vsmmuCount == 0)
        try client.hello()
        // A second HELLO: ALREADY_EXISTS, detail 4.
        let second = refusal("second HELLO") { try client.hello() }
        #expect(second?.code == .alreadyExists && second?.detail == 4)
        _ = try client.createVSMMU()
    }

    @Test func unsupportedVersionLeavesTheConnectionUnhandshaken() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client(hello: false)
        // The server speaks versions 1-5: detail its lowest, value its highest.
        let e = refusal("versions 6…7") { try client.hello(versions: 6...7) }
        #expect(e?.code == .unsupportedVersion && e?.detail == 1 && e?.value == 5)
        try client.hello()
    }

    @Test func unknownMessageTypeIsAnsweredAndTheFrameSkipped() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        try client.sendBytes(rawFrame(type: 0x0099, requestID: 77, payload: [1, 2, 3, 4, 5]))
        let (id, error) = try client.receiveError()
        #expect(id == 77 && error?.code == .unknownMessageType && error?.value == 0x99 && error?.requestType.rawValue == 0x99)
        // A reply type sent as a request is unknown too.
        try client.sendBytes(rawFrame(type: 0x8042, requestID: 78))
        #expect(try client.receiveError().error?.code == .unknownMessageType)
        #expect(try client.health().status == .ok)
    }

    @Test func wrongPayloadLengthIsAnsweredAndTheFrameSkipped() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        try client.sendBytes(rawFrame(type: 0x0042, requestID: 5, payload: [0, 0, 0, 0]))
        let (id, error) = try client.receiveError()
        #expect(id == 5 && error?.code == .badPayloadLength && error?.detail == 0 && error?.value == 4)
        // INVALIDATE announcing 2 commands but carrying 1: the length the counts need is 48.
        var payload = [UInt8](repeating: 0, count: 32)
        payload[0] = 1
        payload[4] = 2
        try client.sendBytes(rawFrame(type: 0x0020, requestID: 6, payload: payload))
        let second = try client.receiveError()
        #expect(second.error?.code == .badPayloadLength && second.error?.detail == 48 && second.error?.value == 32)
        #expect(try client.health().status == .ok)
    }

    @Test func reservedFlagsAreBadField() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        try client.sendBytes(rawFrame(type: 0x0042, flags: 0x0004, requestID: 9))
        let error = try client.receiveError().error
        #expect(error?.code == .badField && error?.detail == 0x10006 && error?.value == 4)
    }

    @Test func frameTooLargeIsAnsweredThenTheConnectionClosed() throws {
        let t = try TestServer()
        defer { t.stop() }
        let owner = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(owner)
        let client = try t.client()
        try client.sendBytes(rawFrame(type: 0x0020, requestID: 11, payloadLength: 2 << 20))
        let (id, error) = try client.receiveError()
        #expect(id == 11 && error?.code == .frameTooLarge)
        #expect(error?.detail == UInt32(WireProtocol.maximumFrameSize) && error?.value == UInt64(16 + (2 << 20)))
        #expect(throws: VSMMUClientError.connectionClosed) { _ = try client.receive() }
        try Self.expectStillServing(t, owner: owner, vsmmu: vsmmu)
    }

    @Test func streamEndingInsideAHeaderGetsTruncatedFrameWithRequestIDZero() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        try client.sendBytes(Array(rawFrame(type: 0x0042, requestID: 3).prefix(10)))
        client.shutdownWrite()
        let (id, error) = try client.receiveError()
        #expect(id == 0 && error?.code == .truncatedFrame && error?.detail == 16 && error?.value == 10)
        #expect(throws: VSMMUClientError.connectionClosed) { _ = try client.receive() }
        try Self.expectStillServing(t)
    }

    @Test func streamEndingInsideAPayloadGetsTruncatedFrameWithTheHeadersRequestID() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let frame = try Request.invalidate(Invalidate(vsmmu: VSMMUID(1), commands: [.sync(), .sync()])).encode(requestID: 44)
        try client.sendBytes(Array(frame.prefix(40)))
        client.shutdownWrite()
        let (id, error) = try client.receiveError()
        #expect(id == 44 && error?.code == .truncatedFrame && error?.detail == UInt32(frame.count) && error?.value == 40)
    }

    @Test func anotherConnectionsVSMMUIsAnsweredAsOneThatNeverExistedWithoutTouchingTheOwnersState() throws {
        let t = try TestServer()
        defer { t.stop() }
        let owner = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(owner)
        let intruder = try t.client()
        let unknown = refusal("unknown vSMMU") { try intruder.destroyVSMMU(VSMMUID(999)) }
        #expect(unknown?.code == .unknownVSMMU && unknown?.value == 999)
        let attempts: [() throws -> Void] = [
            { try intruder.destroyVSMMU(vsmmu) },
            { _ = try intruder.invalidate(vsmmu: vsmmu, commands: [.tlbiNHAll(), .sync()]) },
            { try intruder.unsetDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: 0, streamID: 0x8) },
            { _ = try intruder.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 1) },
        ]
        for attempt in attempts {
            let e = refusal("another connection's vSMMU", attempt)
            #expect(e?.code == .unknownVSMMU && e?.value == UInt64(vsmmu.rawValue) && e?.detail == 0)
        }
        #expect(try owner.list(.devices, vsmmu: vsmmu).total == 3)
        try Self.expectStillServing(t, owner: owner, vsmmu: vsmmu)
    }

    @Test func unknownStreamIDInInvalidateStopsTheBatchWithCERROR_ILLAtItsIndex() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        let reply = try client.invalidate(vsmmu: vsmmu, commands: [
            .tlbiNHASID(asid: 3), .sync(), .atcInv(streamID: 0x99), .tlbiNHAll(), .sync(),
        ])
        #expect(reply.consumed == 2 && reply.syncsCompleted == 1)
        #expect(reply.failure?.index == 2 && reply.failure?.queueError == .illegal)
        // Undefined opcode: CERROR_ILL at index 0.
        let bad = try client.invalidate(vsmmu: vsmmu, commands: [Command(w0: 0x7F, w1: 0), .sync()])
        #expect(bad.consumed == 0 && bad.failure?.index == 0 && bad.failure?.queueError == .illegal)
        try Self.expectStillServing(t, owner: client, vsmmu: vsmmu)
    }

    @Test func invalidVSTEIsRefusedWithItsReason() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        var s2Only = StreamTableEntry()
        s2Only.isValid = true
        s2Only.config = StreamConfig(rawValue: 6)
        let config = refusal("S2 STE") { try client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: s2Only) }
        #expect(config?.code == .invalidSTE && config?.detail == InvalidSTEReason.disallowedConfig.rawValue && config?.value == 6)
        let ssid = refusal("SSID 4") { try client.updateCD(vsmmu: vsmmu, streamID: 0x8, substreamID: 4, .valid(asid: 1)) }
        #expect(ssid?.code == .invalidSTE && ssid?.detail == InvalidSTEReason.substreamOutOfRange.rawValue && ssid?.value == 4)
        let unknown = refusal("unknown vSID") { try client.linkSTE(vsmmu: vsmmu, streamID: 0x77, ste: s1STE()) }
        #expect(unknown?.code == .unknownStreamID && unknown?.value == 0x77)
        // The refused link left the old one in place.
        #expect(try client.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 3), .sync()]).failure == nil)
        #expect(t.pSMMUs[0].counters.commandsReceived == 1)
    }

    @Test func conflictsAreAlreadyExistsWithWhatConflicts() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        func expectConflict(_ kind: ConflictKind, value: UInt64, _ body: () throws -> Void) {
            let e = refusal("conflict \(kind)", body)
            #expect(e?.code == .alreadyExists && e?.detail == kind.rawValue && e?.value == value)
        }
        expectConflict(.pSMMU, value: 1) { _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu1", hostDeviceID: 17) }
        expectConflict(.streamID, value: 0x10) { try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: 2, streamID: 0x10) }
        expectConflict(.hostDevice, value: 0) { try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: 0, streamID: 0x40) }
        // Other refusals of the control path.
        let inUse = refusal("detach with a device") { try client.detachViommu(vsmmu: vsmmu, viommu: 0) }
        #expect(inUse?.code == .inUse && inUse?.detail == 1 && inUse?.value == 0)
        let mismatch = refusal("mismatched UNSET_DEV_ID") { try client.unsetDeviceID(vsmmu: vsmmu, viommu: 1, hostDeviceID: 0, streamID: 0x8) }
        #expect(mismatch?.code == .badField && mismatch?.detail == 4)
        let pSMMU = refusal("unknown pSMMU") { _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu9", hostDeviceID: 0) }
        #expect(pSMMU?.code == .unknownPSMMU)
        let viommu = refusal("unknown viommu") { try client.setDeviceID(vsmmu: vsmmu, viommu: 9, hostDeviceID: 3, streamID: 0x50) }
        #expect(viommu?.code == .unknownViommu && viommu?.value == 9)
        #expect(try client.list(.devices, vsmmu: vsmmu).total == 3)
        try Self.expectStillServing(t, owner: client, vsmmu: vsmmu)
    }

    @Test func aClientVanishingMidBatchLosesItsVSMMUAndOthersKeepTheirs() throws {
        let t = try TestServer()
        defer { t.stop() }
        let survivor = try t.client()
        let kept = try survivor.createVSMMU(name: "kept")
        _ = try survivor.attachViommu(vsmmu: kept, pSMMU: "smmu2", hostDeviceID: 40)
        try survivor.setDeviceID(vsmmu: kept, viommu: 0, hostDeviceID: 40, streamID: 0x28)

        do {
            let doomed = try t.client()
            let vsmmu = try ServerScenarioTests.seedVSMMU(doomed)
            #expect(t.server.vsmmuCount == 2)
            let frame = try Request.invalidate(Invalidate(vsmmu: vsmmu, commands: Array(repeating: .tlbiNHAll(), count: 8) + [.sync()]))
                .encode(requestID: 1)
            try doomed.sendBytes(Array(frame.prefix(frame.count / 2)))
        } // the client closes its socket here
        eventually { t.server.vsmmuCount == 1 }
        #expect(t.server.vsmmuCount == 1)
        // The doomed vSMMU's host devices were unregistered: the survivor can take host device 0.
        _ = try survivor.attachViommu(vsmmu: kept, pSMMU: "smmu0", hostDeviceID: 0)
        try survivor.setDeviceID(vsmmu: kept, viommu: 1, hostDeviceID: 0, streamID: 0x8)
        #expect(try survivor.invalidate(vsmmu: kept, commands: [.atcInv(streamID: 0x28), .sync()]).failure == nil)
        #expect(try survivor.list(.devices, vsmmu: kept).total == 2)
    }

    @Test func adminRequestsWorkBeforeAnyVSMMUExists() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let daemon = try client.stats()
        #expect(daemon.value(.daemonConnections) == 1 && daemon.value(.daemonVSMMUs) == 0)
        #expect((daemon.value(.daemonFramesReceived) ?? 0) >= 2)
        #expect(try client.list(.vsmmus).total == 0)
        let e = refusal("STATS of an unknown vSMMU") { _ = try client.stats(vsmmu: VSMMUID(5)) }
        #expect(e?.code == .unknownVSMMU)
    }
}
