import Foundation
import SMMUv3
import Testing
import VSMMUTestSupport
import VSMMUClient
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The real `vsmmud` executable, started on a temporary socket and driven with the client.
@Suite struct DaemonBinaryTests {
    /// The built `vsmmud` beside the test bundle (`.build/<config>/vsmmud`), if it was built.
    static var daemonPath: String? {
        guard let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else { return nil }
        var directory = URL(fileURLWithPath: executable).deletingLastPathComponent()
        // The test runner is .build/<config>/<package>PackageTests.xctest: vsmmud sits in .build/<config>.
        if directory.lastPathComponent.hasSuffix(".xctest") { directory.deleteLastPathComponent() }
        let candidate = directory.appendingPathComponent("vsmmud").path
        return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
    }

    @Test(.enabled(if: daemonPath != nil || CClientTests.requireBuiltExecutables, "vsmmud was not built beside the tests"))
    func realDaemonServesTheSeedScenarioAndExitsCleanlyOnSIGTERM() throws {
        let path = uniqueSocketPath("binary")
        let process = ChildProcess()
        process.executableURL = URL(fileURLWithPath: try #require(Self.daemonPath))
        process.arguments = ["--socket", path, "--log-level", "warning"]
        try process.run()
        defer { if process.isRunning { process.terminate() } }

        var client: VSMMUClient?
        eventually { client = try? VSMMUClient(socketPath: path); return client != nil }
        let connected = try #require(client)
        let hello = try connected.hello(name: "binary-test")
        #expect(hello.serverProcessID == UInt32(process.processIdentifier))
        let health = try connected.health()
        #expect(health.pSMMUs.map(\.name) == ["smmu0", "smmu1"])

        // The embedded default: smmu0 has host devices 0…63, smmu1 64…127.
        let vsmmu = try connected.createVSMMU(name: "vm")
        for (i, (hostDevice, sid, asid)) in [(UInt32(5), StreamID(0x8), ASID(3)), (UInt32(70), StreamID(0x10), ASID(1))].enumerated() {
            let viommu = try connected.attachViommu(vsmmu: vsmmu, pSMMU: "smmu\(i)", hostDeviceID: hostDevice).viommu
            try connected.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: hostDevice, streamID: sid)
            try connected.linkSTE(vsmmu: vsmmu, streamID: sid, ste: s1STE(), contextDescriptors: [.valid(asid: asid)])
        }
        let reply = try connected.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 1), .tlbiNHAll(), .sync()])
        #expect(reply == InvalidateReply(consumed: 3, syncsCompleted: 1))
        let stats = try connected.stats(vsmmu: vsmmu)
        #expect(stats.value(.asidRouted) == 1 && stats.value(.broadcast) == 1 && stats.value(.broadcastsAvoided) == 1)
        let refused = refusal("INVALIDATE before HELLO") {
            let raw = try VSMMUClient(socketPath: path)
            _ = try raw.invalidate(vsmmu: vsmmu, commands: [.sync()])
        }
        #expect(refused?.code == .handshakeRequired)

        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)
        #expect(access(path, F_OK) != 0) // the socket file is gone
    }
}
