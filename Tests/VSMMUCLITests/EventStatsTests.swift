import Foundation
import PSMMU
import SMMUv3
import Testing
import VSMMUCLI
import VSMMUClient
@testable import VSMMUDaemon
import VSMMUProtocol
import VSMMUSystem

/// An event queue with room for `capacity` events that keeps none of them.
private final class CountingEventQueue: EventQueueTarget {
    private let used = Locked(0)
    let capacity: Int
    init(capacity: Int) { self.capacity = capacity }

    func write(_ records: [EventRecord], viommu: UInt32, lostBefore: Bool) -> EventWriteOutcome {
        used.withLock { used in
            let written = min(records.count, capacity - used)
            used += written
            return EventWriteOutcome(written: written, droppedFull: records.count - written)
        }
    }

    func close() {}
}

/// The event counters of issue 14 in `vsmmud-cli stats`: the table, `--json` and `--prometheus`.
@Suite struct EventStatsTests {
    /// In the scenario's vSMMU, viommu 0 (smmu0, vSIDs 0x8 and 0x9): 2 events forwarded, 1 dropped for
    /// overflow, 1 for the device gone, 2 for no queue; 1 LOST_EVENTS report; 3 orphaned daemon-wide.
    static func withEvents() throws -> Scenario {
        let scenario = try Scenario()
        let served = try #require(scenario.server.state.withLock { $0.vsmmus[scenario.vsmmu] })
        let handle = try #require(served.engine.viommuStatistics.first?.handle) // viommu 0, on smmu0
        let sink = scenario.server.eventService.sink(.pSMMU("smmu0"))
        func push(_ streamIDs: [StreamID], lostBefore: Bool = false, handle: ViommuHandle = handle) {
            sink.viommuEventsArrived(ViommuEvents(viommu: handle, records: streamIDs.map { EventRecord(id: .translation, streamID: $0) },
                                                  lostBefore: lostBefore))
        }
        _ = served.events.replaceQueue(with: CountingEventQueue(capacity: 2))
        push([0x8, 0x9, 0x8], lostBefore: true)
        push([0x77])
        _ = served.events.replaceQueue(with: nil)
        push([0x8, 0x8])
        push([0x8, 0x8, 0x8], handle: ViommuHandle(rawValue: 0x7fff_fff0))
        return scenario
    }

    @Test func theTableShowsEachViommusEventsForwardedAndDroppedByReason() throws {
        let scenario = try Self.withEvents()
        defer { scenario.stop() }
        let snapshot = try DaemonSession(socketPath: scenario.path).snapshot()
        let text = StatsTable.render(snapshot)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.contains("events") && $0.contains("dropped full") && $0.contains("dropped gone") && $0.contains("dropped no queue") })
        let vsmmuLines = lines.drop { !$0.hasPrefix("vSMMU \(scenario.vsmmu.rawValue)") }
        let row = try #require(vsmmuLines.first { $0.split(separator: " ").first == "0" && $0.contains("smmu0") })
        #expect(Array(row.split(separator: " ").suffix(4)) == ["2", "1", "1", "2"])
        #expect(lines.contains { $0.contains("events orphaned") && $0.hasSuffix(" 3") })
    }

    @Test func jsonAndPrometheusCarryTheEventCounters() throws {
        let scenario = try Self.withEvents()
        defer { scenario.stop() }
        let snapshot = try DaemonSession(socketPath: scenario.path).snapshot()
        let data = try JSONEncoder().encode(StatsDocument(snapshot))
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let daemon = try #require((object["daemon"] as? [String: Any])?["counters"] as? [String: Any])
        #expect((daemon["events_orphaned"] as? NSNumber)?.intValue == 3)
        let vsmmu = try #require((object["vsmmus"] as? [[String: Any]])?.first)
        let viommu = try #require((vsmmu["viommus"] as? [[String: Any]])?.first?["counters"] as? [String: Any])
        for (name, value) in [("events_forwarded", 2), ("events_dropped_overflow", 1), ("events_dropped_device_gone", 1),
                              ("events_dropped_no_queue", 2), ("events_lost_upstream", 1)] {
            #expect((viommu[name] as? NSNumber)?.intValue == value, "\(name)")
        }

        let exposition = Exposition(PrometheusExposition.render(snapshot))
        #expect(exposition.problems == [])
        let labels = ["vsmmu": String(scenario.vsmmu.rawValue), "viommu": "0", "psmmu": "smmu0"]
        #expect(exposition.types["vsmmud_viommu_events_forwarded_total"] == "counter")
        #expect(exposition.value("vsmmud_viommu_events_forwarded_total", labels) == 2)
        #expect(exposition.types["vsmmud_viommu_events_dropped_total"] == "counter")
        for (reason, value) in [("overflow", 1.0), ("device_gone", 1), ("no_queue", 2)] {
            #expect(exposition.value("vsmmud_viommu_events_dropped_total", labels.merging(["reason": reason]) { a, _ in a }) == value, "\(reason)")
        }
        #expect(exposition.value("vsmmud_viommu_events_lost_upstream_total", labels) == 1)
        #expect(exposition.value("vsmmud_events_orphaned_total") == 3)
    }
}
