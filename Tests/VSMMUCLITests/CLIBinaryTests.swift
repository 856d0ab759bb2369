import Foundation
import Testing
import VSMMUTestSupport
import VSMMUCLI
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The real `vsmmud-cli` executable against an in-process daemon, and against none.
@Suite(.enabled(if: CLIBinary.path != nil || CLIBinary.required, "vsmmud-cli was not built beside the tests"))
struct CLIBinaryTests {
    @Test func statsTablePrintsTheScenarioCounters() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let result = try CLIBinary.run(["--socket", scenario.path, "stats"])
        #expect(result.status == 0 && result.standardError.isEmpty)
        let syncs = result.standardOutput.split(separator: "\n").first { $0.hasPrefix("  syncs (CMD_SYNC) ") }
        #expect(syncs?.split(separator: " ").last == "4")
        #expect(result.standardOutput.contains("vSMMU \(scenario.vsmmu.rawValue) \"vm-cli\""))
        #expect(result.standardOutput.contains("smmu0") && result.standardOutput.contains("smmu1"))
        #expect(result.standardOutput.contains("bucket bounds"))
        // The option after the subcommand, and the environment variable, work too.
        #expect(try CLIBinary.run(["stats", "--vsmmu", "\(scenario.vsmmu.rawValue)", "--socket", scenario.path]).status == 0)
        #expect(try CLIBinary.run(["stats"], environment: ["VSMMUD_SOCKET": scenario.path]).status == 0)
    }

    @Test func statsJSONIsOneDocumentWithTheCounters() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let result = try CLIBinary.run(["--socket", scenario.path, "stats", "--json"])
        #expect(result.status == 0)
        let document = try JSONDecoder().decode(StatsDocument.self, from: Data(result.standardOutput.utf8))
        let vsmmu = try #require(document.vsmmus.first)
        #expect(vsmmu.counters["syncs"] == 4 && vsmmu.counters["broadcasts_avoided"] == 1)
        #expect(vsmmu.viommus.map(\.pSMMU) == ["smmu0", "smmu1"])
        #expect(vsmmu.syncLatencyNanoseconds.count == 4)
    }

    @Test func statsPrometheusIsValidExposition() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let result = try CLIBinary.run(["--socket", scenario.path, "stats", "--prometheus"])
        #expect(result.status == 0)
        let exposition = Exposition(result.standardOutput)
        #expect(exposition.problems == [])
        let id = String(scenario.vsmmu.rawValue)
        #expect(exposition.value("vsmmud_vsmmu_syncs_total", ["vsmmu": id]) == 4)
        #expect(exposition.value("vsmmud_viommu_devices", ["vsmmu": id, "viommu": "0", "psmmu": "smmu0"]) == 2)
        #expect(exposition.value(PrometheusExposition.syncLatencyName + "_count", ["vsmmu": id]) == 4)
    }

    @Test(arguments: ["vsmmus", "viommus", "devices", "hwpts", "asids"])
    func listPrintsEachKind(kind: String) throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let table = try CLIBinary.run(["--socket", scenario.path, "list", kind])
        #expect(table.status == 0 && table.standardError.isEmpty)
        let expectedRows = ["vsmmus": 1, "viommus": 2, "devices": 3, "hwpts": 3, "asids": 2][kind] ?? -1
        #expect(table.standardOutput.split(separator: "\n").count == 1 + expectedRows)
        let json = try CLIBinary.run(["--socket", scenario.path, "list", kind, "--vsmmu", "\(scenario.vsmmu.rawValue)", "--json"])
        #expect(json.status == 0)
        let object = try JSONSerialization.jsonObject(with: Data(json.standardOutput.utf8)) as? [String: Any]
        #expect(object?["kind"] as? String == kind && (object?["entries"] as? [Any])?.count == expectedRows)
    }

    @Test func healthExitsZeroWhenHealthy() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let text = try CLIBinary.run(["--socket", scenario.path, "health"])
        #expect(text.status == 0 && text.standardOutput.hasPrefix("vsmmud: OK (healthy)"))
        let json = try CLIBinary.run(["--socket", scenario.path, "health", "--json"])
        #expect(json.status == 0)
        #expect(try JSONDecoder().decode(HealthDocument.self, from: Data(json.standardOutput.utf8)).healthy)
    }

    @Test(arguments: [["health"], ["stats"], ["stats", "--prometheus"], ["list", "devices"]])
    func noDaemonExitsSixtyNineWithTheMessage(arguments: [String]) throws {
        let path = uniqueSocketPath("nodaemon")
        let result = try CLIBinary.run(["--socket", path] + arguments)
        #expect(result.exitedNormally && result.status == 69)
        #expect(result.standardOutput.isEmpty)
        #expect(result.standardError.hasPrefix("vsmmud-cli: cannot reach vsmmud: there is no socket at \(path)"))
        #expect(result.standardError.contains("systemctl status vsmmud"))
        #expect(!result.standardError.contains("Fatal error") && !result.standardError.contains("Stack"))
    }

    @Test(.enabled(if: CLIBinary.daemonPath != nil || CLIBinary.required, "vsmmud was not built beside the tests"))
    func allowListRefusalExitsSeventySevenWithTheMessage() throws {
        // The real daemon with an allow-list that names neither this uid nor its groups.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("vsmmud-cli-test-\(getpid())-deny")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = directory.appendingPathComponent("vsmmud.toml")
        let stranger = getuid() == 4_242 ? 4_243 : 4_242
        try "[access]\nallowed_uids = [\(stranger)]\nallowed_gids = [\(stranger)]\n".write(to: config, atomically: true, encoding: .utf8)
        let socketPath = uniqueSocketPath("deny")
        let daemon = ChildProcess()
        daemon.executableURL = URL(fileURLWithPath: try #require(CLIBinary.daemonPath))
        daemon.arguments = ["--config", config.path, "--socket", socketPath, "--log-level", "critical"]
        try daemon.run()
        defer {
            if daemon.isRunning { daemon.terminate() }
            daemon.waitUntilExit()
        }
        for _ in 0..<5_000 where access(socketPath, F_OK) != 0 { usleep(1_000) }
        let result = try CLIBinary.run(["--socket", socketPath, "health"])
        #expect(result.status == 77)
        #expect(result.standardError.contains("PERMISSION_DENIED") && result.standardError.contains("uid \(getuid())"))
        #expect(result.standardError.contains("allowed_uids") && result.standardError.contains("allow-list"))
    }

    @Test func badArgumentsExitSixtyFour() throws {
        #expect(try CLIBinary.run(["stats", "--json", "--prometheus"]).status == 64)
        #expect(try CLIBinary.run(["stats", "--watch", "--prometheus"]).status == 64)
        #expect(try CLIBinary.run(["list", "streams"]).status == 64)
        #expect(try CLIBinary.run(["stats", "--vsmmu", "0"]).status == 64)
    }
}
