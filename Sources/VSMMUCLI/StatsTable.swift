import VSMMUProtocol

/// `vsmmud-cli stats` as a readable table: the daemon's figures, then per vSMMU its counters and sync
/// latency, then a table of its viommus. With rates (`--watch`), each counter's per-second rate is shown
/// beside its total.
public enum StatsTable {
    /// The whole report, ending in a newline.
    public static func render(_ snapshot: StatsSnapshot, rates: StatsRates? = nil) -> String {
        var out = daemonSection(snapshot.daemon, rates: rates)
        let pSMMUs = snapshot.pSMMUs
        if !pSMMUs.isEmpty { out += "\n" + pSMMUSection(pSMMUs) }
        if snapshot.vsmmus.isEmpty { out += "\nno vSMMUs\n" }
        for vsmmu in snapshot.vsmmus { out += "\n" + vsmmuSection(vsmmu, rates: rates) }
        return out
    }

    /// The daemon's figures.
    public static func daemonSection(_ daemon: DaemonFigures, rates: StatsRates?) -> String {
        var table = TextTable(["", "", ""], alignments: [.left, .right, .right])
        table.append(["uptime", Format.uptime(nanoseconds: daemon.uptimeNanoseconds)])
        for field in StatField.daemon where daemon.values[field.key] != nil {
            table.append([field.label, String(daemon[field.key]), rateCell(rates?.daemon[field.key])])
        }
        return "vsmmud\n" + table.render(indent: "  ", header: false)
    }

    /// The pSMMU table: each pSMMU's backend totals, over every vSMMU on it.
    public static func pSMMUSection(_ pSMMUs: [PSMMUFigures]) -> String {
        var table = TextTable(["pSMMU"] + StatField.psmmu.map(\.label),
                              alignments: [.left] + Array(repeating: .right, count: StatField.psmmu.count))
        for p in pSMMUs {
            table.append([p.name] + StatField.psmmu.map { p.values[$0.key].map { String($0) } ?? "-" })
        }
        return "pSMMUs (all vSMMUs)\n" + table.render(indent: "  ")
    }

    /// One vSMMU: counters, sync latency and the viommu table.
    public static func vsmmuSection(_ vsmmu: VSMMUFigures, rates: StatsRates?) -> String {
        var out = "vSMMU \(vsmmu.id.rawValue)" + (vsmmu.name.isEmpty ? "" : " \"\(vsmmu.name)\"") + "\n"
        var table = TextTable(["", "", ""], alignments: [.left, .right, .right])
        for field in StatField.vsmmu where vsmmu.values[field.key] != nil {
            table.append([field.label, String(vsmmu[field.key]), rateCell(rates?.rate(field.key, vsmmu: vsmmu.id))])
        }
        out += table.render(indent: "  ", header: false)
        out += "  sync latency: " + latencySummary(vsmmu.syncLatency) + "\n"
        guard !vsmmu.viommus.isEmpty else { return out + "  no viommus\n" }
        var viommus = TextTable(["viommu", "pSMMU", "devices", "delivered", "backend calls", "mean batch",
                                 "ring occ/high", "ring-full waits", "syncs", "failed", "events", "dropped full",
                                 "dropped gone", "dropped no queue"],
                                alignments: [.right, .left] + Array(repeating: .right, count: 12))
        for v in vsmmu.viommus {
            func counter(_ key: StatKey) -> String {
                let total = String(v[key])
                guard let rate = rates?.rate(key, vsmmu: vsmmu.id, viommu: v.index) else { return total }
                return total + " (" + Format.rate(rate) + ")"
            }
            viommus.append([
                String(v.index), v.pSMMU.isEmpty ? "?" : v.pSMMU, String(v[.viommuDevices]),
                counter(.viommuCommandsDelivered), counter(.viommuBackendCalls),
                v.meanBatch.map { Format.fixed($0, decimals: 2) } ?? "-",
                "\(v[.viommuRingOccupancy])/\(v[.viommuRingHighWater])", counter(.viommuRingFullWaits),
                counter(.viommuSyncs), counter(.viommuBackendFailed), counter(.viommuEvents),
                counter(.viommuEventsDroppedOverflow), counter(.viommuEventsDroppedDeviceGone),
                counter(.viommuEventsDroppedNoQueue),
            ])
        }
        return out + "\n" + viommus.render(indent: "  ")
    }

    /// `"3 syncs timed, mean 5.10 µs; p50 in [4.10 µs, 8.19 µs), p99 in [8.19 µs, 16.4 µs) (log2
    /// histogram bucket bounds, not exact values)"`, or `"no syncs timed"`.
    public static func latencySummary(_ h: Log2Histogram) -> String {
        guard h.count > 0, let p50 = h.quantileBounds(0.5), let p99 = h.quantileBounds(0.99) else { return "no syncs timed" }
        func bounds(_ b: (lower: UInt64, upper: UInt64)) -> String {
            "[" + Format.duration(nanoseconds: Double(b.lower)) + ", " + Format.duration(nanoseconds: Double(b.upper)) + ")"
        }
        let mean = h.mean.map { ", mean " + Format.duration(nanoseconds: $0) } ?? ""
        return "\(h.count) syncs timed\(mean); p50 in \(bounds(p50)), p99 in \(bounds(p99)) "
            + "(log2 histogram bucket bounds, not exact values)"
    }

    private static func rateCell(_ rate: Double?) -> String { rate.map(Format.rate) ?? "" }
}
