import Foundation
import PSMMU
import SMMUv3
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

/// The recorded Linux guest stream through the socket.
@Suite struct TraceReplayTests {
    /// `../shared` of the workspace: `$VSMMUD_SHARED`, else found from this file's path.
    static func sharedDirectory() -> URL {
        if let env = ProcessInfo.processInfo.environment["VSMMUD_SHARED"], !env.isEmpty { return URL(fileURLWithPath: env) }
        // #filePath = <repo>/Tests/VSMMUDaemonTests/TraceReplayTests.swift; ../shared is beside <repo>.
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared")
    }

    static func commands(_ name: String) throws -> [Command] {
        let data = try Data(contentsOf: sharedDirectory().appendingPathComponent("traces/\(name)"))
        let bytes = [UInt8](data)
        try #require(bytes.count % 16 == 0)
        return try stride(from: 0, to: bytes.count, by: 16).map { try Command(bytes: bytes[$0..<($0 + 16)]) }
    }

    @Test func lazyLinuxGuestStreamReplaysWithZeroErrors() throws {
        let commands = try Self.commands("linux-lazy-cmdq.bin")
        #expect(commands.count == 1500)
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try client.createVSMMU(name: "linux-lazy")
        // From linux-lazy-ste-cd.csv: the STE words and the CD (ASID, TTB0) of each StreamID.
        let devices: [(sid: StreamID, steW0: UInt64, asid: ASID, ttb0: UInt64)] = [
            (0x8, 0x0000_0000_438a_400b, 3, 0x438a_5000),
            (0x10, 0x0000_0000_445c_b00b, 1, 0x445c_a000),
            (0x18, 0x0000_0000_4396_800b, 2, 0x4397_1000),
        ]
        for (i, device) in devices.enumerated() {
            let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu\(i)", hostDeviceID: UInt32(16 * i)).viommu
            try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: UInt32(16 * i), streamID: device.sid)
            try client.linkSTE(vsmmu: vsmmu, streamID: device.sid, ste: StreamTableEntry(w0: device.steW0, w1: 0xd6),
                               contextDescriptors: [.valid(asid: device.asid, ttb0: device.ttb0)])
        }
        var batch: [Command] = []
        var failures: [String] = []
        var syncs = 0, consumed = 0
        func flush() throws {
            guard !batch.isEmpty else { return }
            let reply = try client.invalidate(vsmmu: vsmmu, commands: batch)
            if let failure = reply.failure { failures.append("batch at \(consumed): \(failure)") }
            consumed += Int(reply.consumed)
            syncs += Int(reply.syncsCompleted)
            batch = []
        }
        for command in commands {
            batch.append(command)
            if command.opcode == .sync { try flush() }
        }
        try flush()
        #expect(failures.isEmpty, "\(failures.prefix(5))")
        #expect(consumed == 1500)
        #expect(syncs == commands.filter { $0.opcode == .sync }.count)
        let stats = try client.stats(vsmmu: vsmmu)
        #expect(stats.value(.errors) == 0)
        #expect(stats.value(.commandsReceived) == 1500)
        #expect(t.pSMMUs.allSatisfy { $0.counters.commandsFailed == 0 })
    }
}
