import Foundation
import Testing
import VSMMUCLI
import VSMMUClient
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// `list` and `health` against a real in-process daemon.
@Suite struct ListAndHealthTests {
    @Test func listPagesThroughLISTUntilTotal() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let session = try DaemonSession(socketPath: scenario.path)
        // One entry per page: three devices need three LIST requests, and all three are there in order.
        let paged = try session.list(.devices, pageSize: 1)
        guard case .devices(let devices) = paged else { Issue.record("not devices"); return }
        #expect(devices.map(\.streamID) == [0x8, 0x9, 0x10])
        #expect(paged == (try session.list(.devices)))
        guard case .asids(let asids) = try session.list(.asids, vsmmu: scenario.vsmmu, pageSize: 1) else {
            Issue.record("not asids"); return
        }
        #expect(asids.map(\.asid) == [3, 5])
    }

    @Test func listTablesShowEachKind() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let session = try DaemonSession(socketPath: scenario.path)
        let id = String(scenario.vsmmu.rawValue)
        func rows(_ kind: ListKind) throws -> [[String]] {
            let lines = ListOutput.table(try session.list(kind)).split(separator: "\n")
            return lines.dropFirst().map { $0.split(separator: " ").map(String.init) }
        }
        let vsmmus = try rows(.vsmmus)
        #expect(vsmmus.count == 1 && vsmmus[0][0] == id && vsmmus[0][1] == "vm-cli")
        #expect(Array(vsmmus[0][3...]) == [String(getuid()), "2", "3", "3", "2"]) // owner uid, viommus, devices, HWPTs, ASIDs
        #expect(try rows(.viommus).map { [$0[1], $0[2], $0[4]] } == [["0", "smmu0", "2"], ["1", "smmu1", "1"]])
        #expect(try rows(.devices).map { [$0[1], $0[2], $0[3], $0[5]] }
            == [["0x8", "0", "1", "linked"], ["0x9", "0", "2", "linked"], ["0x10", "1", "17", "linked"]])
        #expect(try rows(.hwpts).map { [$0[2], $0[3], $0[5]] } == [["0x8", "0", "1"], ["0x9", "0", "1"], ["0x10", "1", "1"]])
        // Masks as viommu index lists: ASID 3 reaches viommus 0 and 1, ASID 5 only 0; none retiring.
        #expect(try rows(.asids).map { Array($0[1...]) } == [["3", "2", "0,1", "-"], ["5", "1", "0", "-"]])
    }

    @Test func listJSONDecodesToTheListedEntries() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let session = try DaemonSession(socketPath: scenario.path)
        let devices = try JSONDecoder().decode(ListDocument<DeviceItem>.self, from: Data(ListOutput.json(try session.list(.devices)).utf8))
        #expect(devices.kind == "devices" && devices.total == 3)
        #expect(devices.entries.map(\.vsid) == [0x8, 0x9, 0x10] && devices.entries.allSatisfy(\.steLinked))
        #expect(devices.entries.map(\.hostDeviceID) == [1, 2, 17])
        let asids = try JSONDecoder().decode(ListDocument<ASIDItem>.self, from: Data(ListOutput.json(try session.list(.asids)).utf8))
        #expect(asids.entries.map(\.viommus) == [[0, 1], [0]] && asids.entries.map(\.retiringOn) == [[], []])
        let viommus = try JSONSerialization.jsonObject(with: Data(ListOutput.json(try session.list(.viommus)).utf8)) as? [String: Any]
        let entries = try #require(viommus?["entries"] as? [[String: Any]])
        #expect(entries.compactMap { $0["psmmu"] as? String } == ["smmu0", "smmu1"])
        for kind in ListKind.all {
            #expect((try? JSONSerialization.jsonObject(with: Data(ListOutput.json(try session.list(kind)).utf8))) != nil, "\(kind)")
        }
    }

    @Test func healthReportsStatusPSMMUsAndExitStatus() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let reply = try DaemonSession(socketPath: scenario.path).health()
        #expect(HealthOutput.exitStatus(reply) == 0)
        let text = HealthOutput.text(reply)
        #expect(text.hasPrefix("vsmmud: OK (healthy)"))
        #expect(text.contains("vSMMUs 1"))
        let rows = text.split(separator: "\n").filter { $0.hasPrefix("  smmu") }.map { $0.split(separator: " ").map(String.init) }
        #expect(rows == [["smmu0", "simulated", "OK", "1"], ["smmu1", "simulated", "OK", "1"]])
        let document = try JSONDecoder().decode(HealthDocument.self, from: Data(HealthOutput.json(reply).utf8))
        #expect(document.healthy && document.status == "OK" && document.vsmmus == 1)
        #expect(document.pSMMUs.map(\.name) == ["smmu0", "smmu1"] && document.serverPID == UInt32(getpid()))
    }

    @Test func healthIsNotHealthyWhenShuttingDownOrAPSMMUFailed() {
        let ok = PSMMUHealth(name: "smmu0", status: .ok, backend: .iommufd, viommuCount: 0)
        let failed = PSMMUHealth(name: "smmu1", status: .failed, backend: .iommufd, viommuCount: 2)
        func reply(_ status: HealthStatus, _ pSMMUs: [PSMMUHealth]) -> HealthReply {
            HealthReply(status: status, connectionCount: 1, vsmmuCount: 0, uptimeNanoseconds: 90_061_000_000_000,
                        serverProcessID: 42, pSMMUs: pSMMUs)
        }
        #expect(HealthOutput.exitStatus(reply(.ok, [ok])) == 0)
        #expect(HealthOutput.exitStatus(reply(.shuttingDown, [ok])) == 1)
        #expect(HealthOutput.exitStatus(reply(.degraded, [ok, failed])) == 1)
        #expect(HealthOutput.exitStatus(reply(.ok, [ok, failed])) == 1)
        let text = HealthOutput.text(reply(.shuttingDown, [ok, failed]))
        #expect(text.hasPrefix("vsmmud: SHUTTING_DOWN (not healthy), pid 42, up 1d 01h 01m 01s"))
        #expect(text.contains("smmu1  iommufd  FAILED"))
    }

    @Test func runnerWritesReportsAndReturnsTheExitStatus() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        var out = "", err = ""
        let runner = CommandRunner(socketPath: scenario.path, standardOutput: { out += $0 }, standardError: { err += $0 })
        #expect(runner.health() == 0 && out.hasPrefix("vsmmud: OK") && err.isEmpty)
        out = ""
        #expect(runner.list(.viommus, vsmmu: scenario.vsmmu.rawValue) == 0 && out.contains("smmu1"))
        out = ""
        #expect(runner.stats(vsmmu: 999) == 1)
        #expect(err.contains("no vSMMU 999") && out.isEmpty)
        err = ""
        #expect(runner.stats(vsmmu: 0) == 64 && err.contains("--vsmmu"))
    }
}
