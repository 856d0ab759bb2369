import Foundation
import Testing
import VSMMUTestSupport

/// The C client, through `vmm-sim` (built on it, with nothing but `protocol/vsmmu.h`), against a daemon
/// on a temporary socket: the real Linux guest streams replay with zero errors, a generated guest
/// workload with device resets and CD rewrites completes every sync, and the ID registers GET_HW_INFO
/// answers are printed raw and decoded.
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
        // The test server's pSMMUs: smmu<i> owns host devices 16·i …
        try runVMMSim(arguments, socketPath: server.path, pSMMUs: ["smmu0:0", "smmu1:16", "smmu2:32"])
    }

    /// Runs vmm-sim on the daemon at `socketPath` with `--psmmu` for each of `pSMMUs` (`NAME:FIRST_HOST_DEVICE`).
    func runVMMSim(_ arguments: [String], socketPath: String, pSMMUs: [String]) throws -> (status: Int32, output: String) {
        let process = ChildProcess()
        process.executableURL = URL(fileURLWithPath: try #require(Self.vmmSimPath))
        process.arguments = ["--socket", socketPath] + pSMMUs.flatMap { ["--psmmu", $0] } + arguments
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

    @Test(.enabled(if: vmmSimPath != nil || requireBuiltExecutables, "vmm-sim was not built beside the tests"))
    func cClientPrintsTheIDRegistersGetHWInfoAnswersRawAndDecoded() throws {
        let server = try TestServer("cclienthw")
        defer { server.stop() }
        let result = try runVMMSim(["hw-info"], server: server)
        #expect(result.status == 0, "\(result.output)")
        // Three simulated pSMMUs with QEMU's registers and ATS (IDRegisters.simulatedDefault), as a vSMMU
        // advertises them (IDRegisters.advertised: only the fields the kernel lets a VMM forward; S1P and
        // COHACC assumed; S2P, VMID16, HAD, XNX and the queue sizes not forwarded).
        #expect(result.output.contains("GET_HW_INFO over 3 viommus"), "\(result.output)")
        #expect(result.output.contains("IDR0 0x0d40141a IDR1 0x00000010 IDR2 0x00000000 IDR3 0x00001400 IDR4 0x00000000 "
                                       + "IDR5 0x00000074 IIDR 0x00000000 AIDR 0x00000001"), "\(result.output)")
        #expect(result.output.contains("SIDSIZE 16, SSIDSIZE 0, OAS 44 bits (IDR5.OAS 4), granules 4K 16K 64K, RIL yes, "
                                       + "BTM no, ATS yes, PRI no, MSI no, ASID16 yes, VMID16 no, stage1 yes, stage2 no, "
                                       + "HTTU 0, stall model terminate only (1), 2-level stream table, CMDQS 0, EVTQS 0"),
                "\(result.output)")
        #expect(result.output.contains("architecture SMMUv3.1, implementer 0x000"), "\(result.output)")
    }

    @Test(.enabled(if: vmmSimPath != nil || requireBuiltExecutables, "vmm-sim was not built beside the tests"))
    func cClientDecodesAnotherImplementationsRegisters() throws {
        let server = try ProtocolVersion2Tests.server()
        defer { server.stop() }
        // smmuB alone: its registers as advertised (ProtocolVersion2Tests.registersB; BTM is not forwarded).
        let result = try runVMMSim(["hw-info"], socketPath: server.configuration.socketPath, pSMMUs: ["smmuB:16"])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("GET_HW_INFO over 1 viommu)"), "\(result.output)")
        #expect(result.output.contains("IDR0 0x0c40141a IDR1 0x00000154"), "\(result.output)")
        #expect(result.output.contains("SIDSIZE 20, SSIDSIZE 5, OAS 48 bits (IDR5.OAS 5), granules 4K 64K, RIL no, BTM no, "
                                       + "ATS yes, PRI no, MSI no, ASID16 yes, VMID16 no"), "\(result.output)")
        #expect(result.output.contains("stall model stall and terminate (0)"), "\(result.output)")
        #expect(result.output.contains("architecture SMMUv3.2, implementer 0x43b, product 0x000"), "\(result.output)")
    }
}
