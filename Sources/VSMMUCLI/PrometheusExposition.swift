import Prometheus
import VSMMUProtocol

/// `vsmmud-cli stats --prometheus`: the Prometheus text exposition format (0.0.4), for node_exporter's
/// textfile collector.
///
/// Counters and gauges go through a `PrometheusCollectorRegistry` made for each call (a registry
/// keeps its metrics for its lifetime); their names come from ``StatField`` (`vsmmud_…`, counters
/// ending in `_total`) with labels `vsmmu`, `viommu` and `psmmu` (the `vsmmud_psmmu_*` series carry `psmmu`
/// alone: a pSMMU's totals over every vSMMU). The registry emits its families in no
/// stable order, so the output is regrouped and sorted by family name and label set. The sync latency
/// is already a histogram in STATS (log2 buckets, nanoseconds), which swift-prometheus cannot take (it
/// records single observations): it is written here as a Prometheus histogram in seconds,
/// `vsmmud_vsmmu_sync_latency_seconds`, appended after the registry's output.
public enum PrometheusExposition {
    /// The log2 buckets given a `le` bound: 2^8 ns (≈ 0.5 µs) to 2^34 ns (≈ 17 s). Fewer, larger
    /// latencies are counted only in `+Inf`; smaller ones in the first bucket (cumulative counts).
    public static let latencyBuckets: ClosedRange<Int> = 8...33

    /// The name of the sync latency histogram family.
    public static let syncLatencyName = "vsmmud_vsmmu_sync_latency_seconds"

    /// The whole exposition for `snapshot`, ending in a newline.
    public static func render(_ snapshot: StatsSnapshot) -> String {
        let registry = PrometheusCollectorRegistry()
        func counter(_ name: String, _ help: String, _ labels: [(String, String)], _ value: UInt64) {
            let descriptor = MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
            let c = labels.isEmpty ? registry.makeCounter(descriptor: descriptor) : registry.makeCounter(descriptor: descriptor, labels: labels)
            c.increment(by: Int64(clamping: value))
        }
        func gauge(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Double) {
            let descriptor = MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
            let g = labels.isEmpty ? registry.makeGauge(descriptor: descriptor) : registry.makeGauge(descriptor: descriptor, labels: labels)
            g.set(to: value)
        }
        func record(_ fields: [StatField], _ values: [StatKey: UInt64], _ labels: [(String, String)]) {
            for field in fields {
                guard let value = values[field.key] else { continue }
                let labels = labels + field.metricLabels.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
                switch field.kind {
                case .counter: counter(field.prometheusName, field.help, labels, value)
                case .gauge: gauge(field.prometheusName, field.help, labels, Double(value))
                }
            }
        }

        gauge("vsmmud_uptime_seconds", "Seconds since the daemon started.", [],
              Double(snapshot.daemon.uptimeNanoseconds) / 1e9)
        record(StatField.daemon, snapshot.daemon.values, [])
        for v in snapshot.vsmmus {
            let vsmmuLabel = ("vsmmu", String(v.id.rawValue))
            gauge("vsmmud_vsmmu_info", "Always 1; the vSMMU's name as given by its VMM.", [vsmmuLabel, ("name", v.name)], 1)
            record(StatField.vsmmu, v.values, [vsmmuLabel])
            for o in v.viommus {
                record(StatField.viommu, o.values, [vsmmuLabel, ("viommu", String(o.index)), ("psmmu", o.pSMMU)])
            }
        }
        for p in snapshot.pSMMUs { record(StatField.psmmu, p.values, [("psmmu", p.name)]) }
        var out = sortedFamilies(registry.emitToString())
        if !snapshot.vsmmus.isEmpty {
            out += "# HELP \(syncLatencyName) CMD_SYNC latency, INVALIDATE request received to sync completed "
                + "(from the daemon's log2 nanosecond histogram).\n"
            out += "# TYPE \(syncLatencyName) histogram\n"
            for v in snapshot.vsmmus { out += latencyHistogram(v.syncLatency, labels: "vsmmu=\"\(v.id.rawValue)\"") }
        }
        return out
    }

    /// The samples of one sync latency histogram: cumulative `_bucket{le=…}` (bucket *b* of the log2
    /// histogram holds 2^b ≤ t < 2^(b+1) ns, i.e. t ≤ 2^(b+1) − 1 ns: that is its `le`, in seconds), then
    /// `+Inf`, `_sum` (seconds) and `_count`.
    public static func latencyHistogram(_ h: Log2Histogram, labels: String) -> String {
        let count = max(h.count, h.bucketTotal)
        var out = ""
        var cumulative: UInt64 = 0
        for (b, n) in h.buckets.enumerated() where b <= latencyBuckets.upperBound {
            cumulative &+= n
            guard b >= latencyBuckets.lowerBound else { continue }
            let le = Double((UInt64(1) << UInt64(b + 1)) - 1) / 1e9
            out += "\(syncLatencyName)_bucket{\(labels),le=\"\(le)\"} \(cumulative)\n"
        }
        out += "\(syncLatencyName)_bucket{\(labels),le=\"+Inf\"} \(count)\n"
        out += "\(syncLatencyName)_sum{\(labels)} \(Double(h.sum ?? 0) / 1e9)\n"
        out += "\(syncLatencyName)_count{\(labels)} \(count)\n"
        return out
    }

    /// `text` (an exposition) with its families sorted by name, each keeping its `# HELP` and `# TYPE`
    /// lines first and its samples sorted.
    static func sortedFamilies(_ text: String) -> String {
        var comments: [String: [String]] = [:]
        var samples: [String: [String]] = [:]
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("# ") {
                let parts = line.split(separator: " ", maxSplits: 3)
                guard parts.count >= 3 else { continue }
                comments[String(parts[2]), default: []].append(String(line))
            } else {
                let name = line.prefix { $0 != "{" && $0 != " " }
                samples[String(name), default: []].append(String(line))
            }
        }
        var out = ""
        for name in Set(comments.keys).union(samples.keys).sorted() {
            let lines = comments[name] ?? []
            let header = lines.filter { $0.hasPrefix("# HELP ") } + lines.filter { !$0.hasPrefix("# HELP ") }
            for line in header + (samples[name] ?? []).sorted() { out += line + "\n" }
        }
        return out
    }
}
