import Foundation
import Testing
import VSMMUTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `vmm-sim --shared-queue` (the C client's shared command queue, PROTOCOL.md §8) against the real `vsmmud`
/// executable: both recorded Linux guest streams replay through the queue with zero errors, and a generated
/// workload with device resets and CD rewrites completes every sync. Across a restart of the daemon
/// mid-replay (SIGKILL, SIGTERM), the client reconnects, resumes the vSMMU and maps the same memory again with
/// fresh eventfds on its own (§8.6): the daemon goes on from CONS and the replay still ends with every
/// CMD_SYNC completed and 0 errors (``ClientReconnectTests`` says why these totals catch a lost or doubled
/// batch).
@Suite struct VMMSimSharedQueueTests {
    static var executablesBuilt: Bool {
        (DaemonBinaryTests.daemonPath != nil && CClientTests.vmmSimPath != nil) || CClientTests.requireBuiltExecutables
    }

    /// The real daemon on a fresh socket (its embedded default: smmu0 with host devices 0…63, smmu1 64…127,
    /// vmm-sim's own default), stopped with SIGTERM by `stop`.
    struct RealDaemon {
        let process = ChildProcess()
        let path = uniqueSocketPath("vmmsimq")

        init() throws {
            process.executableURL = URL(fileURLWithPath: try #require(DaemonBinaryTests.daemonPath))
            process.arguments = ["--socket", path, "--log-level", "warning"]
            try process.run()
            eventually { access(path, F_OK) == 0 }
        }

        /// vmm-sim through the shared queue with `arguments`, on the daemon's default pSMMUs.
        func vmmSim(_ arguments: [String]) throws -> (status: Int32, output: String) {
            try CClientTests().runVMMSim(["--shared-queue"] + arguments, socketPath: path, pSMMUs: ["smmu0:0", "smmu1:64"])
        }

        /// SIGTERM, and the daemon's clean exit.
        func stop() -> Bool {
            guard process.isRunning else { return false }
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
            return process.terminationReason == .exit && process.terminationStatus == 0
        }
    }

    @Test(.enabled(if: executablesBuilt, "vsmmud and vmm-sim were not built beside the tests"), arguments: ["lazy", "strict"])
    func vmmSimReplaysTheRealLinuxGuestStreamThroughTheSharedQueueWithZeroErrors(mode: String) throws {
        let daemon = try RealDaemon()
        let traces = TraceReplayTests.sharedDirectory().appendingPathComponent("traces")
        let result = try daemon.vmmSim(["replay", traces.appendingPathComponent("linux-\(mode)-cmdq.bin").path,
                                        traces.appendingPathComponent("linux-\(mode)-ste-cd.csv").path])
        #expect(daemon.stop(), "the daemon did not exit cleanly on SIGTERM")
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains(mode == "lazy" ? "1500 commands" : "27843 commands"), "\(result.output)")
        #expect(result.output.contains(" 0 errors"), "\(result.output)")
        #expect(result.output.contains("vmm-sim path: shared queue (4096 slots)"), "\(result.output)")
    }

    @Test(.enabled(if: executablesBuilt, "vsmmud and vmm-sim were not built beside the tests"))
    func vmmSimGeneratedWorkloadThroughASmallSharedQueueCompletesEverySync() throws {
        let daemon = try RealDaemon()
        // 256 slots: the queue wraps many times; lazy bursts of up to 33 commands. No spinning: every wait that
        // does not find its CONS at once sleeps on call (the sleep flag, the fence and the re-check, each time).
        let result = try daemon.vmmSim(["--queue-log2", "8", "--queue-spin-us", "0", "generate", "--commands", "20000",
                                        "--devices", "12", "--lazy"])
        #expect(daemon.stop())
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains(" 0 errors"), "\(result.output)")
        #expect(result.output.contains("vmm-sim path: shared queue (256 slots)"), "\(result.output)")
        #expect(!result.output.contains(" 0 sleeps on call"), "\(result.output)")
    }

    @Test(.enabled(if: executablesBuilt, "vsmmud and vmm-sim were not built beside the tests"), arguments: [SIGKILL, SIGTERM])
    func vmmSimReplayThroughTheSharedQueueFinishesWithZeroErrorsAcrossADaemonRestart(signal: Int32) throws {
        let result = try ClientReconnectTests().replayAcrossARestart(signal: signal, label: signal == SIGKILL ? "sqkill" : "sqterm",
                                                                     vmmSimArguments: ["--shared-queue"])
        let syncs = try ClientReconnectTests.syncsInStrictTrace()
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("vmm-sim replay: 27843 commands in "), "\(result.output)")
        #expect(result.output.contains(" \(syncs) syncs completed, 0 errors;"), "\(result.output)")
        #expect(result.output.contains("; 1 reconnects, 0 vSMMUs lost"), "\(result.output)")
        #expect(result.output.contains("vmm-sim path: shared queue (4096 slots)"), "\(result.output)")
        #expect(result.output.contains(", 1 re-maps"), "\(result.output)")
    }
}
