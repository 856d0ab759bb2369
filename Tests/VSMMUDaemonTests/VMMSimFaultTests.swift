import Foundation
import Testing
import VSMMUTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `vmm-sim fault` against the real `vsmmud` executable (its embedded default: simulated pSMMUs smmu0 with host
/// devices 0…63 and smmu1 64…127): a device DMAs to an address whose translation the guest just invalidated and
/// unmapped, and the guest sees F_TRANSLATION with its vSID through the event queue (PROTOCOL.md §9), end to end,
/// with the unmap sent by INVALIDATE or through the shared command queue. The daemon then stops cleanly.
@Suite struct VMMSimFaultTests {
    static var executablesBuilt: Bool { VMMSimSharedQueueTests.executablesBuilt }

    /// The real daemon on a fresh socket, stopped with SIGTERM by `stop`.
    struct RealDaemon {
        let process = ChildProcess()
        let path = uniqueSocketPath("vmmsimfault")

        init() throws {
            process.executableURL = URL(fileURLWithPath: try #require(DaemonBinaryTests.daemonPath))
            process.arguments = ["--socket", path, "--log-level", "warning"]
            try process.run()
            eventually { access(path, F_OK) == 0 }
        }

        func vmmSim(_ arguments: [String]) throws -> (status: Int32, output: String) {
            try CClientTests().runVMMSim(arguments, socketPath: path, pSMMUs: ["smmu0:0", "smmu1:64"])
        }

        func stop() -> Bool {
            guard process.isRunning else { return false }
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
            return process.terminationReason == .exit && process.terminationStatus == 0
        }
    }

    @Test(.enabled(if: executablesBuilt, "vsmmud and vmm-sim were not built beside the tests"),
          arguments: [[String](), ["--shared-queue"]])
    func aDeviceDMAToAnAddressTheGuestInvalidatedAndUnmappedFaultsAndTheGuestSeesFTranslationWithItsVSID(path: [String]) throws {
        let daemon = try RealDaemon()
        let result = try daemon.vmmSim(path + ["fault"])
        let first = try daemon.vmmSim(path + ["fault"]) // a second VM on the same daemon: its own queue, its own sequence
        #expect(daemon.stop(), "the daemon did not exit cleanly on SIGTERM")
        for run in [result, first] {
            #expect(run.status == 0, "\(run.output)")
            #expect(run.output.contains("while mapped: TLB_FILL"), "\(run.output)")
            #expect(run.output.contains("after the unmap: FAULT F_TRANSLATION"), "\(run.output)")
            #expect(run.output.contains("viommu 0 seq 1 F_TRANSLATION vsid 0x10 ssid - address 0x7f001000 lost_before 0"), "\(run.output)")
            #expect(run.output.contains("vmm-sim fault: ok:"), "\(run.output)")
            #expect(run.output.contains("1 events received, 0 errors"), "\(run.output)")
        }
    }

    /// The C client re-sends MAP_EVENT_QUEUE with the same memory after an automatic reconnect and RESUME
    /// (PROTOCOL.md §9, restarts), and the restarted daemon accepts it: the replay, killed mid-way, ends with
    /// zero errors and one re-map of its event queue.
    @Test(.enabled(if: executablesBuilt, "vsmmud and vmm-sim were not built beside the tests"))
    func vmmSimsEventQueueIsMappedAgainAfterTheDaemonIsKilledAndTheReplayEndsWithZeroErrors() throws {
        let result = try ClientReconnectTests().replayAcrossARestart(signal: SIGKILL, label: "evkill", vmmSimArguments: ["--events"])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains(" 0 errors;"), "\(result.output)")
        #expect(result.output.contains("; 1 reconnects, 0 vSMMUs lost"), "\(result.output)")
        #expect(result.output.contains("vmm-sim events: 0 received, 0 after lost events, 0 overflows, 1 re-maps"), "\(result.output)")
    }
}
