import Foundation
import Testing

/// The C client, through `vmm-sim` (built on it, with nothing but `protocol/vsmmu.h`), against a daemon
/// on a temporary socket: the real Linux guest streams replay with zero errors, and a generated guest
/// workload with device resets and CD rewrites completes every sync.
@Suite struct CClientTests {
    /// In CI (`CI` set, as `.ci/run` runs) a missing executable fails these tests instead of skipping them.
    static var requireBuiltExecutables: Bool { ProcessInfo.processInfo.environment["CI"] != nil }

    /// The built `vmm-sim` beside the test bundle, if it was built.
    static var vmmSimPath: String? {
        guard let daemon = DaemonBinaryTests.daemonPath else { return nil }
        let candidate = URL(fileURLWithPath: daemon).deletingLastPathComponent().appendingPathComponent("vmm-sim").path
        return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
    }

    /// Runs vmm-sim against `server` and returns its exit status and standard output.
    func runVMMSim(_ arguments: [String], server: TestServer) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(Self.vmmSimPath))
        // The test server's pSMMUs: smmu<i> owns host devices 16·i …
        process.arguments = ["--socket", server.path, "--psmmu", "smmu0:0", "--psmmu", "smmu1:16", "--psmmu", "smmu2:32"]
            + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test(.enabled(if: vmmSimPath != nil || requireBuiltExecutables, "vmm-sim was not built beside the tests"),
          arguments: ["lazy", "strict"])
    func cClientReplaysTheRealLinuxGuestStreamWithZeroErrors(mode: String) throws {
        let server = try TestServer("cclient\(mode)")
        defer { server.stop() }
        let traces = TraceReplayTests.sharedDirectory().appendingPathComponent("traces")
        let result = try runVMMSim(["replay", traces.appendingPathComponent("linux-\(mode)-cmdq.bin").path,
                                    traces.appendingPathComponent("linux-\(mode)-ste-cd.csv").path], server: server)
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains(mode == "lazy" ? "1500 commands" : "27843 commands"))
        #expect(result.output.contains(" 0 errors"))
        // Three StreamIDs on three pSMMUs: each pSMMU executed commands.
        for pSMMU in server.pSMMUs { #expect(pSMMU.counters.commandsCompleted > 0) }
    }

    @Test(.enabled(if: vmmSimPath != nil || requireBuiltExecutables, "vmm-sim was not built beside the tests"))
    func cClientGeneratedGuestWorkloadCompletesEverySync() throws {
        let server = try TestServer("cclientgen")
        defer { server.stop() }
        let result = try runVMMSim(["generate", "--commands", "20000", "--devices", "12"], server: server)
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains(" 0 errors"))
    }
}
