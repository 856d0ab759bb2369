import Foundation
import Testing
import VSMMUCLI
import VSMMUClient
import VSMMUProtocol

/// `stats` rendered from the replies of a real in-process daemon after a known scenario.
@Suite struct StatsRenderingTests {
    @Test func scenarioCountsAreWhatTheRouterDid() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let raw = try scenario.admin().stats(vsmmu: scenario.vsmmu)
        // Pinned from the scenario itself, so that the renderings below are compared with the right truth.
        #expect(raw.value(.syncs) == 4)
        #expect(raw.value(.asidRouted) == 2)
        #expect(raw.value(.broadcast) == 1)
        #expect(raw.value(.broadcastsAvoided) == 1)
        #expect(raw.value(.deviceRouted) == 2)
        #expect(raw.value(.invalidateRequests) == 5)
        #expect(raw.value(.syncLatencyCount) == UInt64(Scenario.syncBatches))
        #expect(raw.value(.viommus) == 2 && raw.value(.devices) == 3)
    }

    @Test func snapshotJoinsStatsWithTheNamesFromList() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let snapshot = try DaemonSession(socketPath: scenario.path).snapshot()
        let raw = try scenario.admin().stats(vsmmu: scenario.vsmmu)
        let vsmmu = try #require(snapshot.vsmmus.first)
        #expect(snapshot.vsmmus.count == 1)
        #expect(vsmmu.id == scenario.vsmmu && vsmmu.name == "vm-cli")
        #expect(vsmmu.viommus.map(\.pSMMU) == ["smmu0", "smmu1"])
        #expect(vsmmu.viommus.map { $0[.viommuDevices] } == [2, 1])
        for field in StatField.vsmmu { #expect(vsmmu.values[field.key] == raw.value(field.key), "\(field.key)") }
        #expect(vsmmu.syncLatency.count == 4 && vsmmu.syncLatency.bucketTotal == 4)
        #expect(vsmmu.syncLatency.sum == raw.value(.syncLatencySumNanoseconds))
        #expect(snapshot.daemon[.daemonVSMMUs] == 1)
        #expect(snapshot.daemon.uptimeNanoseconds > 0)
        // Only one vSMMU asked for: the same figures.
        let one = try DaemonSession(socketPath: scenario.path).snapshot(vsmmu: scenario.vsmmu)
        #expect(one.vsmmus.map(\.values) == snapshot.vsmmus.map(\.values))
    }

    @Test func tableShowsDaemonVSMMUAndViommuFigures() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let snapshot = try DaemonSession(socketPath: scenario.path).snapshot()
        let vsmmu = try #require(snapshot.vsmmus.first)
        let text = StatsTable.render(snapshot)
        let lines = text.split(separator: "\n").map(String.init)
        func row(_ label: String) -> [String]? {
            lines.first { $0.hasPrefix("  " + label + " ") }.map { $0.split(separator: " ").map(String.init) }
        }
        #expect(row("vSMMUs")?.last == "1")
        #expect(row("uptime") != nil)
        #expect(text.contains("vSMMU \(scenario.vsmmu.rawValue) \"vm-cli\""))
        for (label, key) in [("commands received", StatKey.commandsReceived), ("commands delivered", .commandsDelivered),
                             ("ASID-routed", .asidRouted), ("broadcasts avoided", .broadcastsAvoided),
                             ("syncs (CMD_SYNC)", .syncs)] {
            #expect(row(label)?.last == String(vsmmu[key]), "\(label)")
        }
        #expect(text.contains("4 syncs timed"))
        #expect(text.contains("bucket bounds"))
        // The viommu table: one row per viommu with its pSMMU, devices and delivered commands.
        // (Its lines follow the vSMMU's heading; the pSMMU table above it names the pSMMUs too.)
        let vsmmuLines = lines.drop { !$0.hasPrefix("vSMMU \(scenario.vsmmu.rawValue)") }
        let viommuRows = vsmmuLines.filter { $0.contains("smmu0") || $0.contains("smmu1") }.map { $0.split(separator: " ").map(String.init) }
        #expect(viommuRows.count == 2)
        for (row, figures) in zip(viommuRows, vsmmu.viommus) {
            #expect(row[0] == String(figures.index) && row[1] == figures.pSMMU)
            #expect(row[2] == String(figures[.viommuDevices]) && row[3] == String(figures[.viommuCommandsDelivered]))
            #expect(row[4] == String(figures[.viommuBackendCalls]))
            #expect(row[6] == "\(figures[.viommuRingOccupancy])/\(figures[.viommuRingHighWater])")
            #expect(row[8] == String(figures[.viommuSyncs]))
        }
        #expect(!lines.contains { $0.hasSuffix(" ") })
        // The pSMMU table, above the vSMMUs: one row per pSMMU with its backend's totals (here only this
        // vSMMU used them, so they equal its viommus' own counts).
        #expect(lines.contains("pSMMUs (all vSMMUs)"))
        let pSMMURows = lines.prefix { !$0.hasPrefix("vSMMU ") }.filter { $0.hasPrefix("  smmu") }
            .map { $0.split(separator: " ").map(String.init) }
        #expect(pSMMURows.map { $0[0] } == ["smmu0", "smmu1"])
        for (row, figures) in zip(pSMMURows, vsmmu.viommus) {
            #expect(row[1] == String(figures[.viommuBackendCalls]) && row[2] == String(figures[.viommuBackendCommands]))
            #expect(row[3] == String(figures[.viommuBackendCompleted]) && row[4] == String(figures[.viommuBackendFailed]))
        }
    }

    @Test func pSMMUFiguresAreTheBackendTotalsByName() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let snapshot = try DaemonSession(socketPath: scenario.path).snapshot()
        let vsmmu = try #require(snapshot.vsmmus.first)
        #expect(snapshot.pSMMUs.map(\.name) == ["smmu0", "smmu1"])
        #expect(snapshot.pSMMUs.map { $0[.psmmuBackendCommands] } == [4, 3])
        #expect(snapshot.pSMMUs.map { $0[.psmmuBackendCommands] } == vsmmu.viommus.map { $0[.viommuBackendCommands] })
        #expect(snapshot.pSMMUs.map { $0[.psmmuBackendCompleted] } == [4, 3])
        #expect(snapshot.pSMMUs.allSatisfy { $0.values[.psmmuEvents] == 0 && $0.values[.psmmuBackendFailed] == 0 })
    }

    @Test func jsonDecodesBackToTheSameNumbers() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let snapshot = try DaemonSession(socketPath: scenario.path).snapshot()
        let text = CommandRunner.render(snapshot, format: .json)
        let data = Data(text.utf8)
        let document = try JSONDecoder().decode(StatsDocument.self, from: data)
        #expect(document == StatsDocument(snapshot))
        let vsmmu = try #require(snapshot.vsmmus.first)

        // And read without the Codable types, as a script would.
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let daemon = try #require(object["daemon"] as? [String: Any])
        #expect((daemon["uptime_ns"] as? NSNumber)?.uint64Value == snapshot.daemon.uptimeNanoseconds)
        #expect(((daemon["counters"] as? [String: Any])?["vsmmus"] as? NSNumber)?.intValue == 1)
        let vsmmus = try #require(object["vsmmus"] as? [[String: Any]])
        #expect(vsmmus.count == 1)
        let first = try #require(vsmmus.first)
        #expect((first["id"] as? NSNumber)?.uint32Value == scenario.vsmmu.rawValue && first["name"] as? String == "vm-cli")
        let counters = try #require(first["counters"] as? [String: Any])
        for field in StatField.vsmmu {
            #expect((counters[field.jsonName] as? NSNumber)?.uint64Value == vsmmu[field.key], "\(field.jsonName)")
        }
        let latency = try #require(first["sync_latency_ns"] as? [String: Any])
        #expect((latency["count"] as? NSNumber)?.intValue == 4)
        let buckets = try #require(latency["buckets"] as? [[String: Any]])
        #expect(buckets.compactMap { ($0["count"] as? NSNumber)?.intValue }.reduce(0, +) == 4)
        let p50 = try #require(latency["p50"] as? [String: Any])
        #expect(((p50["upper"] as? NSNumber)?.uint64Value ?? 0) > ((p50["lower"] as? NSNumber)?.uint64Value ?? .max))
        let viommus = try #require(first["viommus"] as? [[String: Any]])
        #expect(viommus.compactMap { $0["psmmu"] as? String } == ["smmu0", "smmu1"])
        for (json, figures) in zip(viommus, vsmmu.viommus) {
            let c = try #require(json["counters"] as? [String: Any])
            for field in StatField.viommu {
                #expect((c[field.jsonName] as? NSNumber)?.uint64Value == figures[field.key], "\(field.jsonName)")
            }
        }
        #expect(object["elapsed_seconds"] == nil && first["rates"] == nil) // only under --watch
        // The pSMMU rows: the backend totals by pSMMU name, as the table's pSMMU section and `vsmmud_psmmu_*` show them.
        let pSMMUs = try #require(object["psmmus"] as? [[String: Any]])
        #expect(pSMMUs.compactMap { $0["name"] as? String } == snapshot.pSMMUs.map(\.name))
        #expect(snapshot.pSMMUs.map(\.name) == ["smmu0", "smmu1"])
        for (json, figures) in zip(pSMMUs, snapshot.pSMMUs) {
            let c = try #require(json["counters"] as? [String: Any])
            for field in StatField.psmmu {
                #expect((c[field.jsonName] as? NSNumber)?.uint64Value == figures[field.key], "\(field.jsonName)")
            }
        }
        #expect(snapshot.pSMMUs.contains { $0[.psmmuBackendCommands] > 0 })
    }

    @Test func prometheusOutputIsValidExpositionWithTheRightValues() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        let snapshot = try DaemonSession(socketPath: scenario.path).snapshot()
        let text = PrometheusExposition.render(snapshot)
        let exposition = Exposition(text)
        #expect(exposition.problems == [])
        let vsmmu = try #require(snapshot.vsmmus.first)
        let id = String(scenario.vsmmu.rawValue)

        #expect(exposition.types["vsmmud_vsmmus"] == "gauge")
        #expect(exposition.value("vsmmud_vsmmus") == 1)
        #expect(exposition.types["vsmmud_frames_received_total"] == "counter")
        #expect(exposition.value("vsmmud_uptime_seconds").map { $0 > 0 } == true)
        #expect(exposition.value("vsmmud_vsmmu_info", ["vsmmu": id, "name": "vm-cli"]) == 1)
        for field in StatField.vsmmu {
            #expect(exposition.value(field.prometheusName, ["vsmmu": id]) == Double(vsmmu[field.key]), "\(field.prometheusName)")
        }
        for figures in vsmmu.viommus {
            let labels = ["vsmmu": id, "viommu": String(figures.index), "psmmu": figures.pSMMU]
            for field in StatField.viommu {
                #expect(exposition.value(field.prometheusName, labels.merging(field.metricLabels) { a, _ in a }) == Double(figures[field.key]),
                        "\(field.prometheusName)")
            }
        }
        // The pSMMU series: labelled by pSMMU alone.
        for figures in snapshot.pSMMUs {
            for field in StatField.psmmu {
                #expect(exposition.value(field.prometheusName, ["psmmu": figures.name]) == Double(figures[field.key]),
                        "\(field.prometheusName)")
            }
        }
        #expect(exposition.types["vsmmud_psmmu_backend_calls_total"] == "counter")
        #expect(exposition.value("vsmmud_psmmu_backend_commands_total", ["psmmu": "smmu0"]) == 4)
        let latency = PrometheusExposition.syncLatencyName
        #expect(exposition.types[latency] == "histogram")
        #expect(exposition.value(latency + "_count", ["vsmmu": id]) == 4)
        #expect(exposition.value(latency + "_bucket", ["vsmmu": id, "le": "+Inf"]) == 4)
        let sum = try #require(exposition.value(latency + "_sum", ["vsmmu": id]))
        #expect(abs(sum - Double(vsmmu.syncLatency.sum ?? 0) / 1e9) < 1e-12)
        // Stable: the same snapshot renders to the same text (the registry's own order is not).
        #expect(PrometheusExposition.render(snapshot) == text)
    }

    @Test func prometheusHistogramBucketsAreCumulativeLog2Bounds() throws {
        // 2 values in [1 µs, 2 µs) (bucket 10), 1 in [4 µs, 8 µs) (bucket 12), 1 far above the last bound.
        let h = Log2Histogram(buckets: [(10, 2), (12, 1), (40, 1)], count: 4, sum: 3_000 + 5_000 + 1 << 40)
        let text = "# HELP vsmmud_x test\n# TYPE vsmmud_x histogram\n"
            + PrometheusExposition.latencyHistogram(h, labels: "vsmmu=\"1\"").replacingOccurrences(
                of: PrometheusExposition.syncLatencyName, with: "vsmmud_x")
        let e = Exposition(text)
        #expect(e.problems == [])
        // le = (2^(b+1) − 1) ns: bucket 10 ends at 2047 ns.
        #expect(e.value("vsmmud_x_bucket", ["vsmmu": "1", "le": "\(Double(2047) / 1e9)"]) == 2)
        #expect(e.value("vsmmud_x_bucket", ["vsmmu": "1", "le": "\(Double(4095) / 1e9)"]) == 2)
        #expect(e.value("vsmmud_x_bucket", ["vsmmu": "1", "le": "\(Double(8191) / 1e9)"]) == 3)
        #expect(e.value("vsmmud_x_bucket", ["vsmmu": "1", "le": "+Inf"]) == 4)
        #expect(e.value("vsmmud_x_count", ["vsmmu": "1"]) == 4)
        #expect(e.samples.filter { $0.name == "vsmmud_x_bucket" }.count == PrometheusExposition.latencyBuckets.count + 1)
    }

    @Test func validatorRejectsBrokenExpositions() {
        // The oracle must be able to fail.
        #expect(!Exposition("vsmmud_a_total 1\n").problems.isEmpty) // no TYPE
        #expect(!Exposition("# HELP vsmmud_a x\n# TYPE vsmmud_a counter\nvsmmud_a 1\n").problems.isEmpty) // no _total
        #expect(!Exposition("# HELP vsmmud_g x\n# TYPE vsmmud_g gauge\nvsmmud_g{a=\"1} 1\n").problems.isEmpty)
        #expect(!Exposition("""
            # HELP vsmmud_h x
            # TYPE vsmmud_h histogram
            vsmmud_h_bucket{le="1"} 3
            vsmmud_h_bucket{le="2"} 2
            vsmmud_h_bucket{le="+Inf"} 3
            vsmmud_h_sum 1
            vsmmud_h_count 3

            """).problems.isEmpty)
        #expect(!Exposition("""
            # HELP vsmmud_h x
            # TYPE vsmmud_h histogram
            vsmmud_h_bucket{le="1"} 1
            vsmmud_h_bucket{le="+Inf"} 3
            vsmmud_h_sum 1
            vsmmud_h_count 4

            """).problems.isEmpty)
    }

    @Test func emptyDaemonRendersInEveryFormat() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        try scenario.vmm.destroyVSMMU(scenario.vsmmu)
        let snapshot = try DaemonSession(socketPath: scenario.path).snapshot()
        #expect(snapshot.vsmmus.isEmpty)
        #expect(StatsTable.render(snapshot).contains("no vSMMUs"))
        #expect(try JSONDecoder().decode(StatsDocument.self, from: Data(CommandRunner.render(snapshot, format: .json).utf8)).vsmmus == [])
        #expect(Exposition(PrometheusExposition.render(snapshot)).problems == [])
    }
}
