import Foundation
import SMMUv3
import Testing
import VSMMUCLI
import VSMMUProtocol

/// `stats --watch`: rates between two snapshots, and the frames drawn from them.
@Suite struct WatchTests {
    /// A snapshot with one vSMMU (id 1) and one viommu on smmu0.
    static func snapshot(uptimeSeconds: UInt64, received: UInt64, delivered: UInt64, frames: UInt64, viommus: UInt64 = 1,
                         pSMMU: String = "smmu0") -> StatsSnapshot {
        StatsSnapshot(
            daemon: DaemonFigures(uptimeNanoseconds: uptimeSeconds * 1_000_000_000,
                                  values: [.daemonFramesReceived: frames, .daemonConnections: 2]),
            vsmmus: [VSMMUFigures(id: VSMMUID(1), name: "vm", values: [.commandsReceived: received, .viommus: viommus],
                                  syncLatency: Log2Histogram(),
                                  viommus: [ViommuFigures(index: 0, pSMMU: pSMMU, values: [.viommuCommandsDelivered: delivered,
                                                                                          .viommuRingOccupancy: 7])])])
    }

    @Test func ratesAreCounterDeltasOverDaemonUptimeDelta() throws {
        let before = Self.snapshot(uptimeSeconds: 10, received: 1_000, delivered: 500, frames: 40)
        let after = Self.snapshot(uptimeSeconds: 14, received: 3_000, delivered: 1_500, frames: 50, viommus: 3)
        let rates = try #require(StatsRates(from: before, to: after))
        #expect(rates.elapsedSeconds == 4)
        #expect(rates.rate(.commandsReceived, vsmmu: VSMMUID(1)) == 500)
        #expect(rates.rate(.viommuCommandsDelivered, vsmmu: VSMMUID(1), viommu: 0) == 250)
        #expect(rates.daemon[.daemonFramesReceived] == 2.5)
        // Gauges have no rate.
        #expect(rates.rate(.viommus, vsmmu: VSMMUID(1)) == nil)
        #expect(rates.daemon[.daemonConnections] == nil)
        #expect(rates.rate(.viommuRingOccupancy, vsmmu: VSMMUID(1), viommu: 0) == nil)
    }

    @Test func noRateWithoutElapsedTimeOrAcrossAResetCounter() {
        let a = Self.snapshot(uptimeSeconds: 10, received: 1_000, delivered: 500, frames: 40)
        #expect(StatsRates(from: a, to: a) == nil)
        #expect(StatsRates(from: a, to: Self.snapshot(uptimeSeconds: 5, received: 0, delivered: 0, frames: 0)) == nil)
        // viommu 0 detached and attached again elsewhere: its counters started over.
        let reattached = Self.snapshot(uptimeSeconds: 12, received: 1_200, delivered: 10, frames: 41, pSMMU: "smmu1")
        let rates = StatsRates(from: a, to: reattached)
        #expect(rates?.rate(.commandsReceived, vsmmu: VSMMUID(1)) == 100)
        #expect(rates?.rate(.viommuCommandsDelivered, vsmmu: VSMMUID(1), viommu: 0) == nil)
    }

    @Test func framesShowRatesFromTheSecondOnAndClearOnlyATerminal() throws {
        var watcher = StatsWatcher(format: .table, interval: .seconds(2), clearScreen: false)
        let first = watcher.frame(Self.snapshot(uptimeSeconds: 10, received: 1_000, delivered: 500, frames: 40))
        #expect(!first.contains("/s") && first.hasPrefix("vsmmud-cli stats --watch: every 2.0 s (Ctrl-C to stop)"))
        let second = watcher.frame(Self.snapshot(uptimeSeconds: 12, received: 1_500, delivered: 700, frames: 44))
        let received = try #require(second.split(separator: "\n").first { $0.contains("commands received") })
        #expect(received.split(separator: " ").suffix(2) == ["1500", "250/s"])
        #expect(second.contains("700 (100/s)"))
        #expect(second.contains("rates over the last 2.00 s"))

        var terminal = StatsWatcher(format: .table, interval: .seconds(2), clearScreen: true)
        #expect(terminal.frame(Self.snapshot(uptimeSeconds: 1, received: 0, delivered: 0, frames: 0)).hasPrefix(StatsWatcher.clearSequence))
    }

    @Test func jsonFramesAreOneDocumentPerLineWithRates() throws {
        var watcher = StatsWatcher(format: .json, interval: .seconds(1), clearScreen: true)
        let first = watcher.frame(Self.snapshot(uptimeSeconds: 10, received: 1_000, delivered: 500, frames: 40))
        let second = watcher.frame(Self.snapshot(uptimeSeconds: 11, received: 1_010, delivered: 505, frames: 40))
        for frame in [first, second] {
            #expect(frame.hasSuffix("\n") && frame.dropLast().split(separator: "\n").count == 1)
            #expect(!frame.contains(StatsWatcher.clearSequence))
        }
        let document = try JSONDecoder().decode(StatsDocument.self, from: Data(second.utf8))
        #expect(document.elapsedSeconds == 1)
        #expect(document.vsmmus.first?.rates?["commands_received"] == 10)
        #expect(document.vsmmus.first?.viommus.first?.rates?["commands_delivered"] == 5)
        #expect(document.daemon.rates?["frames_received"] == 0)
        #expect(try JSONDecoder().decode(StatsDocument.self, from: Data(first.utf8)).elapsedSeconds == nil)
    }

    @Test func watchAgainstARealDaemonDrawsTheRequestedFrames() throws {
        let scenario = try Scenario()
        defer { scenario.stop() }
        var out = ""
        let runner = CommandRunner(socketPath: scenario.path, standardOutput: { out += $0 }, standardError: { _ in })
        #expect(runner.watch(format: .json, interval: .milliseconds(1), iterations: 2) == 0)
        let documents = try out.split(separator: "\n").map { try JSONDecoder().decode(StatsDocument.self, from: Data($0.utf8)) }
        #expect(documents.count == 2)
        #expect(documents.last?.vsmmus.first?.rates?["commands_received"] == 0) // nothing happened in between
        #expect(runner.watch(format: .prometheus, iterations: 1) == 64)
    }
}

/// The log2 histogram and the formats people read.
@Suite struct FormattingTests {
    @Test func quantilesAreTheBucketsHoldingThem() {
        // 90 values in bucket 10 ([1024, 2048) ns), 10 in bucket 20.
        let h = Log2Histogram(buckets: [(10, 90), (20, 10)], count: 100, sum: 100_000)
        #expect(h.quantileBucket(0.5) == 10)
        #expect(h.quantileBucket(0.9) == 10)
        #expect(h.quantileBucket(0.91) == 20)
        #expect(h.quantileBucket(0.99) == 20)
        #expect(h.quantileBounds(0.5)?.lower == 1024 && h.quantileBounds(0.5)?.upper == 2048)
        #expect(h.mean == 1_000)
        #expect(Log2Histogram().quantileBucket(0.5) == nil && Log2Histogram().mean == nil)
        #expect(Log2Histogram.bounds(ofBucket: 0).lower == 0 && Log2Histogram.bounds(ofBucket: 0).upper == 2)
        #expect(Log2Histogram.bounds(ofBucket: 63).upper == .max)
        #expect(StatsTable.latencySummary(h).contains("p50 in [1.02 µs, 2.05 µs), p99 in [1.05 ms, 2.10 ms)"))
    }

    @Test func everyCounterHasItsOwnJSONKeyAndMetricName() {
        let all = StatField.daemon + StatField.vsmmu + StatField.viommu
        // A series is its name and its field's own labels (`reason` of vsmmud_viommu_events_dropped_total).
        let names = all.map { $0.prometheusName + $0.metricLabels.sorted { $0.key < $1.key }.map { "{\($0.key)=\($0.value)}" }.joined() }
            + ["vsmmud_uptime_seconds", "vsmmud_vsmmu_info", PrometheusExposition.syncLatencyName]
        #expect(Set(names).count == names.count)
        for group in [StatField.daemon, StatField.vsmmu, StatField.viommu] {
            #expect(Set(group.map(\.jsonName)).count == group.count)
            #expect(Set(group.map(\.key)).count == group.count)
        }
        #expect(all.allSatisfy { $0.kind == .gauge || $0.prometheusName.hasSuffix("_total") })
        // Every counter STATS defines for a vSMMU or viommu is shown (histograms apart).
        let shown = Set(all.map(\.key))
        for raw in UInt16(0x0001)...0x004A {
            let key = StatKey(rawValue: raw)
            guard key.scope != .unknown, ![.syncLatencyCount, .syncLatencySumNanoseconds].contains(key) else { continue }
            #expect(shown.contains(key), "\(key)")
        }
    }

    @Test func durationsAndMasksReadWell() {
        #expect(Format.uptime(nanoseconds: 7_000_000_000) == "7s")
        #expect(Format.uptime(nanoseconds: 245_000_000_000) == "4m 05s")
        #expect(Format.uptime(nanoseconds: 183_845_000_000_000) == "2d 03h 04m 05s")
        #expect(Format.duration(nanoseconds: 850) == "850 ns")
        #expect(Format.duration(nanoseconds: 3_456_000) == "3.46 ms")
        #expect(Format.rate(12.34) == "12.3/s" && Format.rate(1234.4) == "1234/s")
        #expect(Format.indexList(mask: 0) == "-")
        #expect(Format.indexList(mask: 0b1011) == "0,1,3")
        #expect(Format.indexList(mask: 0b1111_0100) == "2,4-7")
        #expect(Format.indexList(mask: 1 << 63) == "63")
        #expect(ListOutput.kind(named: "hwpts") == .hwpts && ListOutput.kind(named: "streams") == nil)
    }
}
