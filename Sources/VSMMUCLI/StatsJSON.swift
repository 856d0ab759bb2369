import Foundation
import VSMMUProtocol

/// `vsmmud-cli stats --json`: one JSON document with a stable shape (keys sorted; documented in the
/// README). Every counter of ``StatField`` is present (0 when the daemon does not report it); `rates`
/// and `elapsed_seconds` only under `--watch`, from the second document on.
public struct StatsDocument: Codable, Hashable, Sendable {
    public struct Daemon: Codable, Hashable, Sendable {
        public var uptimeNanoseconds: UInt64
        public var uptimeSeconds: Double
        /// By ``StatField/jsonName`` of ``StatField/daemon``.
        public var counters: [String: UInt64]
        public var rates: [String: Double]?

        enum CodingKeys: String, CodingKey {
            case uptimeNanoseconds = "uptime_ns", uptimeSeconds = "uptime_seconds", counters, rates
        }
    }

    /// A histogram bucket: `count` values in `lower ..< upper`.
    public struct Bucket: Codable, Hashable, Sendable {
        public var log2: Int
        public var lower: UInt64
        public var upper: UInt64
        public var count: UInt64
    }

    /// Bucket bounds of a quantile (the value lies in `lower ..< upper`).
    public struct Bounds: Codable, Hashable, Sendable {
        public var lower: UInt64
        public var upper: UInt64
    }

    /// A log2 histogram: count, sum and mean when known, p50/p99 as bucket bounds, the non-empty buckets.
    public struct Histogram: Codable, Hashable, Sendable {
        public var count: UInt64
        public var sum: UInt64?
        public var mean: Double?
        public var p50: Bounds?
        public var p99: Bounds?
        public var buckets: [Bucket]

        init(_ h: Log2Histogram) {
            count = h.count
            sum = h.sum
            mean = h.mean
            p50 = h.quantileBounds(0.5).map { Bounds(lower: $0.lower, upper: $0.upper) }
            p99 = h.quantileBounds(0.99).map { Bounds(lower: $0.lower, upper: $0.upper) }
            buckets = h.nonEmptyBuckets.map { b in
                let bounds = Log2Histogram.bounds(ofBucket: b.bucket)
                return Bucket(log2: b.bucket, lower: bounds.lower, upper: bounds.upper, count: b.count)
            }
        }
    }

    public struct Viommu: Codable, Hashable, Sendable {
        public var viommu: UInt16
        public var pSMMU: String
        /// By ``StatField/jsonName`` of ``StatField/viommu``.
        public var counters: [String: UInt64]
        /// `backend_commands / backend_calls`, absent before the first call.
        public var meanBatch: Double?
        /// Backend calls by commands per call.
        public var batchSize: Histogram
        public var rates: [String: Double]?

        enum CodingKeys: String, CodingKey {
            case viommu, pSMMU = "psmmu", counters, meanBatch = "mean_batch", batchSize = "batch_size", rates
        }
    }

    public struct VSMMU: Codable, Hashable, Sendable {
        public var id: UInt32
        public var name: String
        /// By ``StatField/jsonName`` of ``StatField/vsmmu``.
        public var counters: [String: UInt64]
        /// CMD_SYNC latency in nanoseconds (request received → sync completed).
        public var syncLatencyNanoseconds: Histogram
        public var viommus: [Viommu]
        public var rates: [String: Double]?

        enum CodingKeys: String, CodingKey {
            case id, name, counters, syncLatencyNanoseconds = "sync_latency_ns", viommus, rates
        }
    }

    /// A pSMMU: its backend's totals over every vSMMU whose viommus sit on it (the `PSMMU_*` keys; the
    /// same figures as `stats`' pSMMU table and the `vsmmud_psmmu_*` series).
    public struct PSMMU: Codable, Hashable, Sendable {
        public var name: String
        /// By ``StatField/jsonName`` of ``StatField/psmmu``.
        public var counters: [String: UInt64]
    }

    public var daemon: Daemon
    /// The pSMMUs the listed vSMMUs' viommus sit on, by name.
    public var pSMMUs: [PSMMU]
    public var vsmmus: [VSMMU]
    /// Daemon uptime between this document and the previous one (`--watch`).
    public var elapsedSeconds: Double?

    enum CodingKeys: String, CodingKey {
        case daemon, pSMMUs = "psmmus", vsmmus, elapsedSeconds = "elapsed_seconds"
    }

    /// The document for `snapshot`, with `rates` when given.
    public init(_ snapshot: StatsSnapshot, rates: StatsRates? = nil) {
        func counters(_ fields: [StatField], _ values: [StatKey: UInt64]) -> [String: UInt64] {
            Dictionary(fields.map { ($0.jsonName, values[$0.key] ?? 0) }, uniquingKeysWith: { a, _ in a })
        }
        func named(_ fields: [StatField], _ rates: [StatKey: Double]?) -> [String: Double]? {
            guard let rates else { return nil }
            var out: [String: Double] = [:]
            for field in fields { if let r = rates[field.key] { out[field.jsonName] = r } }
            return out
        }
        let d = snapshot.daemon
        daemon = Daemon(uptimeNanoseconds: d.uptimeNanoseconds, uptimeSeconds: Double(d.uptimeNanoseconds) / 1e9,
                        counters: counters(StatField.daemon, d.values), rates: named(StatField.daemon, rates?.daemon))
        pSMMUs = snapshot.pSMMUs.map { PSMMU(name: $0.name, counters: counters(StatField.psmmu, $0.values)) }
        vsmmus = snapshot.vsmmus.map { v in
            VSMMU(id: v.id.rawValue, name: v.name, counters: counters(StatField.vsmmu, v.values),
                  syncLatencyNanoseconds: Histogram(v.syncLatency),
                  viommus: v.viommus.map { o in
                      Viommu(viommu: o.index, pSMMU: o.pSMMU, counters: counters(StatField.viommu, o.values),
                             meanBatch: o.meanBatch, batchSize: Histogram(o.batchSizes),
                             rates: rates.map { named(StatField.viommu, $0.viommus[.init(vsmmu: v.id, viommu: o.index)]) ?? [:] })
                  },
                  rates: rates.map { named(StatField.vsmmu, $0.vsmmus[v.id]) ?? [:] })
        }
        elapsedSeconds = rates?.elapsedSeconds
    }
}

/// JSON output shared by `stats`, `list` and `health`.
public enum JSONOutput {
    /// `value` as sorted-key JSON: pretty-printed, or on one line (`compact`, for `--watch`: one document
    /// per line). Ends in a newline.
    public static func encode<T: Encodable>(_ value: T, compact: Bool = false) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = compact ? [.sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        do {
            return String(decoding: try encoder.encode(value), as: UTF8.self) + "\n"
        } catch {
            // Only non-finite doubles can fail, and none are produced; say so rather than crash.
            return "{\"error\": \"could not encode JSON\"}\n"
        }
    }
}
