import Foundation
import Logging
import PSMMU
import SMMUv3
import Synchronization
import Testing
import VSMMUTestSupport
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

private let socketCounter = Atomic<Int>(0)

/// A socket path unique to this process and call, under /tmp.
func uniqueSocketPath(_ label: String) -> String {
    "/tmp/vsmmud-cli-test-\(getpid())-\(socketCounter.add(1, ordering: .relaxed).newValue)-\(label).sock"
}

/// A translating guest STE (V=1, CONFIG=S1_TRANS, one CD).
func s1STE() -> StreamTableEntry {
    .stage1(contextTable: 0x4380_4000)
}

/// An in-process daemon on a fresh socket with pSMMUs `smmu0` (host devices 0…15) and `smmu1`
/// (16…31), and a VMM connection that built this vSMMU "vm-cli":
///
/// | viommu | pSMMU | host device → vSID | ASID of its CD |
/// |---|---|---|---|
/// | 0 | smmu0 | 1 → 0x8, 2 → 0x9 | 3, 5 |
/// | 1 | smmu1 | 17 → 0x10 | 3 |
///
/// and sent four INVALIDATE batches with a CMD_SYNC each (TLBI_NH_ASID 3: both viommus; TLBI_NH_ASID 5:
/// viommu 0 only, one broadcast avoided; TLBI_NH_ALL: both; ATC_INV 0x10: viommu 1) and one without
/// (CFGI_CD 0x8). Stop it with ``stop()``.
final class Scenario {
    let server: VSMMUServer
    let path: String
    /// The VMM's connection: keeps the vSMMU alive.
    let vmm: VSMMUClient
    let vsmmu: VSMMUID

    static let syncBatches = 4

    init(_ label: String = #function) throws {
        let name = String(label.prefix { $0.isLetter || $0.isNumber }.prefix(20))
        path = uniqueSocketPath(name)
        let pSMMUs = (0..<2).map { i in
            SimulatedSMMU(name: "smmu\(i)", deviceCount: 16, firstHostDeviceID: UInt32(16 * i), firstStreamID: StreamID(16 * i))
        }
        var logger = Logger(label: "vsmmud-cli-test")
        logger.logLevel = .critical
        server = VSMMUServer(configuration: .init(socketPath: path, pSMMUs: pSMMUs.map { .simulated($0) }), logger: logger)
        try server.start()
        vmm = try VSMMUClient(socketPath: path)
        try vmm.hello(name: "scenario-vmm")
        vsmmu = try vmm.createVSMMU(name: "vm-cli")
        let v0 = try vmm.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 1).viommu
        let v1 = try vmm.attachViommu(vsmmu: vsmmu, pSMMU: "smmu1", hostDeviceID: 17).viommu
        for (viommu, host, sid, asid) in [(v0, UInt32(1), StreamID(0x8), ASID(3)), (v0, 2, 0x9, 5), (v1, 17, 0x10, 3)] {
            try vmm.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: host, streamID: sid)
            try vmm.linkSTE(vsmmu: vsmmu, streamID: sid, ste: s1STE(), contextDescriptors: [.valid(asid: asid)])
        }
        for batch: [Command] in [[.tlbiNHASID(asid: 3), .sync()], [.tlbiNHASID(asid: 5), .sync()], [.tlbiNHAll(), .sync()],
                                 [.atcInv(streamID: 0x10), .sync()], [.cfgiCD(streamID: 0x8)]] {
            _ = try vmm.invalidate(vsmmu: vsmmu, commands: batch)
        }
    }

    /// An admin connection, handshaken.
    func admin() throws -> VSMMUClient {
        let client = try VSMMUClient(socketPath: path)
        try client.hello(name: "test-admin")
        return client
    }

    func stop() { server.stop() }
}

/// The built `vsmmud-cli` beside the test bundle (`.build/<config>/vsmmud-cli`), if it was built.
enum CLIBinary {
    static var path: String? {
        guard let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else { return nil }
        var directory = URL(fileURLWithPath: executable).deletingLastPathComponent()
        if directory.lastPathComponent.hasSuffix(".xctest") { directory.deleteLastPathComponent() }
        let candidate = directory.appendingPathComponent("vsmmud-cli").path
        return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
    }

    /// The built `vsmmud` beside `vsmmud-cli`, if it was built.
    static var daemonPath: String? {
        guard let cli = path else { return nil }
        let candidate = URL(fileURLWithPath: cli).deletingLastPathComponent().appendingPathComponent("vsmmud").path
        return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
    }

    /// CI must run the binary tests: there a missing binary is a failure, not a skip.
    static var required: Bool { ProcessInfo.processInfo.environment["CI"] != nil }

    struct Result {
        var status: Int32
        var standardOutput: String
        var standardError: String
        var exitedNormally: Bool
    }

    /// Runs `vsmmud-cli arguments` to completion with `environment` added to the test's own.
    static func run(_ arguments: [String], environment: [String: String] = [:]) throws -> Result {
        let process = ChildProcess()
        process.executableURL = URL(fileURLWithPath: try #require(path))
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // stdout to its end first (a large report must not block the child), then stderr: the CLI writes
        // at most a paragraph there, well under a pipe's buffer.
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Result(status: process.terminationStatus, standardOutput: String(decoding: outData, as: UTF8.self),
                      standardError: String(decoding: errData, as: UTF8.self),
                      exitedNormally: process.terminationReason == .exit)
    }
}
