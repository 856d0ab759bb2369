import Foundation
import Testing

/// The C client's event queue (`vsmmu_client_map_event_queue`, PROTOCOL.md §9) and SIMULATE_DMA (§6.4), through
/// `vmm-sim` (built on it, with nothing but `protocol/vsmmu.h`) against an in-process daemon, with the harness
/// of ``CClientTests``: the fault scenario's F_TRANSLATION arrives through the event queue with the device's vSID
/// whether the guest's unmap goes by INVALIDATE or through the shared command queue, each event is printed on
/// one line, and a workload that faults nothing receives nothing.
@Suite struct CClientEventTests {
    static var enabled: Bool { CClientTests.vmmSimPath != nil || CClientTests.requireBuiltExecutables }

    /// vmm-sim's event line for the scenario's fault: vSMMU, viommu 0, sequence 1, the type, the vSID, no SSID,
    /// the address, no LOST_BEFORE.
    static func faultLine(in output: String) -> Substring? {
        output.split(separator: "\n").first { $0.hasPrefix("vmm-sim: event vsmmu 0x") }
    }

    @Test(.enabled(if: enabled, "vmm-sim was not built beside the tests"), arguments: [[String](), ["--shared-queue"]])
    func theFaultScenariosTranslationFaultArrivesThroughTheEventQueueWithTheDevicesVSID(path: [String]) throws {
        let server = try TestServer("cclientfault\(path.count)")
        defer { server.stop() }
        let result = try CClientTests().runVMMSim(path + ["fault"], server: server)
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("while mapped: TLB_FILL"), "\(result.output)")
        #expect(result.output.contains("after the unmap: FAULT F_TRANSLATION"), "\(result.output)")
        let line = try #require(Self.faultLine(in: result.output), "no event line in \(result.output)")
        #expect(line.hasSuffix("viommu 0 seq 1 F_TRANSLATION vsid 0x10 ssid - address 0x7f001000 lost_before 0"), "\(line)")
        #expect(result.output.contains("vmm-sim fault: ok: DMA after unmap FAULT, event F_TRANSLATION arrived through the event queue (vsid 0x10, seq 1), 1 events received, 0 errors"),
                "\(result.output)")
        // The daemon's pSMMU saw the fault (the simulated device's translation fault on smmu0).
        #expect(server.pSMMUs[0].simulationCounters.translationFaults == 1)
    }

    @Test(.enabled(if: enabled, "vmm-sim was not built beside the tests"))
    func aWorkloadThatFaultsNothingReceivesNoEventAndEndsWithItsQueueUnmapped() throws {
        let server = try TestServer("cclientnoevents")
        defer { server.stop() }
        let result = try CClientTests().runVMMSim(["--events", "--event-log2", "4", "generate", "--commands", "3000", "--devices", "6"],
                                                  server: server)
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains(" 0 errors"), "\(result.output)")
        #expect(result.output.contains("vmm-sim events: 0 received, 0 after lost events, 0 overflows"), "\(result.output)")
        #expect(Self.faultLine(in: result.output) == nil)
    }
}
