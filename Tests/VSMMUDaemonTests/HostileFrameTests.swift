import HostileInput
import Testing
import SMMUv3
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Hostile input at scale (issue 11 §4, RELIABILITY.md §4.1): a fixed-seed stream of generated
/// connections, each served in memory by the real frame decoder and request handlers of a running
/// server (`InMemoryConnection`), while a VMM on the socket keeps its registrations.
@Suite struct HostileFrameTests {
    /// The seed of the CI run; `scripts/fuzz` and `vsmmud-fuzz generate` take others.
    static let seed: UInt64 = 20261204

    @Test func aHundredThousandHostileFramesNeverTrapNeverAnswerOutsideTheProtocolAndLoseNoRegisteredState() throws {
        let t = try TestServer(pSMMUCount: 2)
        defer { t.stop() }
        // The bystander: a VMM with two viommus, two devices and two linked STEs, on the socket.
        let owner = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(owner, sids: [0x8, 0x10], asids: [3, 1])
        let devicesBefore = try owner.list(.devices, vsmmu: vsmmu).entries
        let asidsBefore = try owner.list(.asids, vsmmu: vsmmu).entries

        let me = PeerCredentials(processID: getpid(), userID: getuid(), groupID: getgid())
        let stranger = PeerCredentials(processID: 1, userID: 54321, groupID: 54321)
        var generator = HostileInputGenerator(seed: Self.seed)
        var totals = HostileInput.Outcome()
        var executions = 0
        var violations: [String] = []
        while totals.frames < 100_000 {
            let input = generator.next()
            // One connection in four is another uid, for which every admin request is refused.
            let outcome = input.withUnsafeBytes {
                HostileInput.execute($0, on: t.server, credentials: executions % 4 == 3 ? stranger : me)
            }
            executions += 1
            totals.frames += outcome.frames
            totals.replies += outcome.replies
            for (code, n) in outcome.errors { totals.errors[code, default: 0] += n }
            if violations.count < 10 { violations += outcome.violations.map { "execution \(executions): \($0)" } }
            let left = t.server.registryCounts
            if left.vsmmus != 1 || left.connections != 1, violations.count < 10 {
                violations.append("execution \(executions): \(left.vsmmus) vSMMUs and \(left.connections) connections after it closed")
            }
        }
        #expect(violations.isEmpty, "\(violations.joined(separator: "\n"))")
        #expect(totals.frames >= 100_000)
        // Every frame got at most one reply, and nearly all one (a frame after a fatal error gets none).
        #expect(totals.replies > totals.frames * 9 / 10)
        // The stream reaches every class of bad input it is built to, each answered with its own code
        // (NOT_OWNER: the admin requests of the other uid; PERMISSION_DENIED is the allow-list's, at accept).
        for code: ProtocolErrorCode in [.badPayloadLength, .unknownMessageType, .frameTooLarge, .truncatedFrame,
                                        .handshakeRequired, .unknownVSMMU, .unknownViommu, .unknownStreamID,
                                        .badField, .badFileDescriptor, .unknownPSMMU, .alreadyExists, .notOwner] {
            #expect(totals.errors[code, default: 0] > 0, "no \(code) in \(totals.errors)")
        }
        // The bystander lost nothing and is served as before.
        #expect(try owner.list(.devices, vsmmu: vsmmu).entries == devicesBefore)
        #expect(try owner.list(.asids, vsmmu: vsmmu).entries == asidsBefore)
        let reply = try owner.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 3), .tlbiNHASID(asid: 1), .sync()])
        #expect(reply.consumed == 3 && reply.syncsCompleted == 1 && reply.failure == nil)
    }

    @Test func aResumeWithAWrongTokenIsAnsweredAsAnIDThatNeverExistedAndTheOwnerKeepsItsVSMMU() throws {
        let t = try TestServer(pSMMUCount: 2)
        defer { t.stop() }
        let owner = try t.client()
        let vsmmu = try owner.createVSMMU(name: "owned")
        let token = try #require(owner.resumeTokens[vsmmu])
        let thief = try t.client()
        var flipped = token.bytes
        flipped[15] ^= 1
        for bytes in [flipped, [UInt8](repeating: 0, count: 16)] {
            let wrong = try #require(ResumeToken(bytes: bytes))
            let refused = refusal("RESUME_VSMMU with a wrong token") { _ = try thief.resumeVSMMU(vsmmu, token: wrong) }
            #expect(refused?.code == .unknownVSMMU && refused?.value == UInt64(vsmmu.rawValue))
        }
        let never = VSMMUID(vsmmu.rawValue &+ 1)
        let absent = refusal("RESUME_VSMMU of an id that never existed") { _ = try thief.resumeVSMMU(never, token: token) }
        #expect(absent?.code == .unknownVSMMU)
        #expect(try owner.invalidate(vsmmu: vsmmu, commands: [.tlbiNHAll(), .sync()]).syncsCompleted == 1)
    }

    @Test func anInMemoryConnectionIsServedByTheSameHandlersAsASocketOne() throws {
        let t = try TestServer(pSMMUCount: 2)
        defer { t.stop() }
        let me = PeerCredentials(processID: getpid(), userID: getuid(), groupID: getgid())
        let connection = InMemoryConnection(server: t.server, credentials: me)
        let hello = try Request.hello(Hello(processID: 7, clientName: "mem")).encode(requestID: 1)
        guard case .hello(let reply)? = try decodeOne(connection.send(hello[...])) else {
            Issue.record("no HELLO_REPLY")
            return
        }
        #expect(reply.version == WireProtocol.version)
        let create = try Request.createVSMMU(CreateVSMMU(name: "mem")).encode(requestID: 2)
        guard case .createVSMMU(let created)? = try decodeOne(connection.send(create[...])) else {
            Issue.record("no CREATE_VSMMU_REPLY")
            return
        }
        #expect(t.server.registryCounts == (vsmmus: 1, connections: 1))
        // Half a frame is held until the rest arrives, as from a socket.
        let attach = try Request.attachViommu(AttachViommu(vsmmu: created.vsmmu, pSMMU: "smmu1", hostDeviceID: 17, nestParentHWPT: 0))
            .encode(requestID: 3)
        #expect(connection.send(attach[..<10]).isEmpty)
        guard case .attachViommu(let attached)? = try decodeOne(connection.send(attach[10...])) else {
            Issue.record("no ATTACH_VIOMMU_REPLY")
            return
        }
        #expect(attached.viommu == 0)
        // The end of the stream tears its vSMMU down, as a closed socket does.
        #expect(connection.close().isEmpty)
        #expect(t.server.registryCounts == (vsmmus: 0, connections: 0))
    }

    /// The one reply in `bytes`.
    private func decodeOne(_ bytes: [UInt8]) throws -> Response? {
        var decoder = FrameDecoder()
        decoder.feed(bytes)
        guard let frame = try decoder.nextFrame() else { return nil }
        return try Response.decode(frame)
    }
}
