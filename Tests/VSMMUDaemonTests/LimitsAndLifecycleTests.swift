import Logging
import PSMMU
import SMMUv3
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The limits HELLO announces are the ones enforced; the socket's lifecycle.
@Suite struct LimitsAndLifecycleTests {
    @Test func announcedLimitsAreEnforcedWithLimitExceeded() throws {
        let t = try TestServer(limits: ServerLimits(maximumCommandsPerInvalidate: 4, maximumVSMMUs: 2, maximumContextDescriptors: 1))
        defer { t.stop() }
        let client = try t.client(hello: false)
        let hello = try client.hello()
        #expect(hello.limits.maximumCommandsPerInvalidate == 4 && hello.limits.maximumVSMMUs == 2)
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        _ = try client.createVSMMU()
        let third = refusal("a third vSMMU") { _ = try client.createVSMMU() }
        #expect(third?.code == .limitExceeded && third?.detail == 2 && third?.value == 3)
        let batch = refusal("5 commands") { _ = try client.invalidate(vsmmu: vsmmu, commands: Array(repeating: .sync(), count: 5)) }
        #expect(batch?.code == .limitExceeded && batch?.detail == 4 && batch?.value == 5)
        let cds = refusal("2 CDs") {
            try client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: s1STE(), contextDescriptors: [.valid(asid: 1), .valid(asid: 2)])
        }
        #expect(cds?.code == .limitExceeded && cds?.detail == 1 && cds?.value == 2)
        #expect(try client.invalidate(vsmmu: vsmmu, commands: Array(repeating: .sync(), count: 4)).syncsCompleted == 4)
    }

    @Test func pipelinedRequestsAreAppliedAndAnsweredInOrder() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client(hello: false)
        var bytes: [UInt8] = []
        try Request.hello(Hello(processID: 1, clientName: "pipelined")).encode(requestID: 1, into: &bytes)
        try Request.createVSMMU(CreateVSMMU(name: "a")).encode(requestID: 2, into: &bytes)
        try client.sendBytes(bytes)
        var replies: [(UInt64, Response)] = [try client.receive(), try client.receive()]
        // vSMMU ids are random: the rest of the pipeline names the one CREATE_VSMMU answered.
        guard case .createVSMMU(let created) = replies[1].1 else { Issue.record("CREATE_VSMMU refused"); return }
        let vsmmu = created.vsmmu
        bytes = []
        try Request.attachViommu(AttachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 0, nestParentHWPT: 0))
            .encode(requestID: 3, into: &bytes)
        try Request.setDeviceID(DeviceRegistration(vsmmu: vsmmu, viommu: 0, hostDeviceID: 0, streamID: 0x8))
            .encode(requestID: 4, into: &bytes)
        try Request.invalidate(Invalidate(vsmmu: vsmmu, commands: [.atcInv(streamID: 0x8), .sync()])).encode(requestID: 5, into: &bytes)
        try client.sendBytes(bytes)
        for _ in 3...5 { replies.append(try client.receive()) }
        #expect(replies.map(\.0) == [1, 2, 3, 4, 5])
        #expect(replies.allSatisfy { if case .error = $0.1 { false } else { true } })
        #expect(replies[4].1 == .invalidate(InvalidateReply(consumed: 2, syncsCompleted: 1)))
    }

    @Test func aStaleSocketFileIsReplacedButALiveDaemonIsNot() throws {
        let t = try TestServer()
        // A second server on the live socket refuses to start.
        let rival = VSMMUServer(configuration: .init(socketPath: t.path))
        #expect(throws: SystemCallError.self) { try rival.start() }
        #expect(try t.client().health().status == .ok)
        // Kill the first without removing its file: simulate a crash by re-binding a dead socket file.
        t.stop()
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(t.path.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        close(fd) // the file stays: stale
        #expect(access(t.path, F_OK) == 0)
        let replacement = VSMMUServer(configuration: .init(socketPath: t.path))
        try replacement.start()
        defer { replacement.stop() }
        let client = try VSMMUClient(socketPath: t.path)
        try client.hello()
        #expect(try client.health().pSMMUs.map(\.name) == ["smmu0", "smmu1"])
    }

    @Test func stopClosesConnectionsDestroysTheirVSMMUsAndRemovesTheSocketFile() throws {
        let t = try TestServer()
        let client = try t.client()
        _ = try ServerScenarioTests.seedVSMMU(client)
        t.stop()
        #expect(t.server.vsmmuCount == 0 && t.server.connectionCount == 0)
        #expect(access(t.path, F_OK) != 0)
        #expect(t.pSMMUs.allSatisfy { $0.counters.commandsFailed == 0 })
        #expect(throws: VSMMUClientError.self) { _ = try client.health() }
    }

    @Test func defaultSocketPathFollowsRuntimeDirectory() {
        #expect(VSMMUServer.defaultSocketPath(environment: ["RUNTIME_DIRECTORY": "/run/x"]) == "/run/x/vsmmud.sock")
        #expect(VSMMUServer.defaultSocketPath(environment: ["RUNTIME_DIRECTORY": "/run/x:/run/y"]) == "/run/x/vsmmud.sock")
        #expect(VSMMUServer.defaultSocketPath(environment: [:]) == "/run/vsmmud/vsmmud.sock")
    }
}
