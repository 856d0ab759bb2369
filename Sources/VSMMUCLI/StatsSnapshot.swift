import VSMMUProtocol

/// The daemon's own figures (STATS of vSMMU 0).
public struct DaemonFigures: Hashable, Sendable {
    /// Nanoseconds since the daemon started (`DAEMON_UPTIME_NS`).
    public var uptimeNanoseconds: UInt64
    /// The values of ``StatField/daemon``, by key (absent keys: the daemon does not keep them).
    public var values: [StatKey: UInt64]

    public init(uptimeNanoseconds: UInt64, values: [StatKey: UInt64]) {
        self.uptimeNanoseconds = uptimeNanoseconds
        self.values = values
    }

    /// The figures of the daemon's STATS reply (its entries with no vSMMU).
    public init(_ reply: StatsReply) {
        var values: [StatKey: UInt64] = [:]
        for entry in reply.entries where entry.vsmmu == nil && entry.viommu == nil && entry.key.scope == .daemon {
            values[entry.key] = entry.value
        }
        self.init(uptimeNanoseconds: values.removeValue(forKey: .daemonUptimeNanoseconds) ?? 0, values: values)
    }

    /// The value of `key`, 0 when absent.
    public subscript(key: StatKey) -> UInt64 { values[key] ?? 0 }
}

/// One viommu of a vSMMU: its counters and backend batch sizes.
public struct ViommuFigures: Hashable, Sendable {
    /// The viommu index in its vSMMU.
    public var index: UInt16
    /// The pSMMU it sits on (from LIST viommus), empty when unknown.
    public var pSMMU: String
    /// The values of ``StatField/viommu``, by key.
    public var values: [StatKey: UInt64]
    /// Backend calls by batch size (`VIOMMU_BATCH_SIZE_LOG2`), commands per call.
    public var batchSizes: Log2Histogram

    public init(index: UInt16, pSMMU: String, values: [StatKey: UInt64], batchSizes: Log2Histogram = Log2Histogram()) {
        self.index = index
        self.pSMMU = pSMMU
        self.values = values
        self.batchSizes = batchSizes
    }

    /// The value of `key`, 0 when absent.
    public subscript(key: StatKey) -> UInt64 { values[key] ?? 0 }

    /// Commands per backend call: `BACKEND_COMMANDS / BACKEND_CALLS`, `nil` before the first call.
    public var meanBatch: Double? {
        let calls = self[.viommuBackendCalls]
        return calls == 0 ? nil : Double(self[.viommuBackendCommands]) / Double(calls)
    }
}

/// One pSMMU: its backend's totals over every vSMMU whose viommus sit on it (`PSMMU_*` keys).
public struct PSMMUFigures: Hashable, Sendable {
    /// The pSMMU's name (from LIST viommus); `vSMMU <id> viommu <index>` when LIST did not name it.
    public var name: String
    /// The values of ``StatField/psmmu``, by key.
    public var values: [StatKey: UInt64]

    public init(name: String, values: [StatKey: UInt64]) {
        self.name = name
        self.values = values
    }

    /// The value of `key`, 0 when absent.
    public subscript(key: StatKey) -> UInt64 { values[key] ?? 0 }
}

/// One vSMMU: its router and engine counters, its sync latency histogram and its viommus.
public struct VSMMUFigures: Hashable, Sendable {
    public var id: VSMMUID
    /// The name given at CREATE_VSMMU (from LIST vsmmus), possibly empty.
    public var name: String
    /// The values of ``StatField/vsmmu``, by key.
    public var values: [StatKey: UInt64]
    /// CMD_SYNC latency in nanoseconds, request received → sync completed (`SYNC_LATENCY_*`).
    public var syncLatency: Log2Histogram
    /// Its viommus by index.
    public var viommus: [ViommuFigures]
    /// The pSMMUs its viommus sit on, as its STATS reply reported them, by viommu index.
    public var pSMMUs: [PSMMUFigures]

    public init(id: VSMMUID, name: String, values: [StatKey: UInt64], syncLatency: Log2Histogram, viommus: [ViommuFigures],
                pSMMUs: [PSMMUFigures] = []) {
        self.id = id
        self.name = name
        self.values = values
        self.syncLatency = syncLatency
        self.viommus = viommus
        self.pSMMUs = pSMMUs
    }

    /// The figures of vSMMU `id` in its STATS reply; `pSMMUs` names the pSMMU of each viommu index.
    /// Entries of other vSMMUs and keys this version does not know are skipped.
    public init(id: VSMMUID, name: String, reply: StatsReply, pSMMUs: [UInt16: String] = [:]) {
        var values: [StatKey: UInt64] = [:]
        var latencyBuckets: [(bucket: Int, count: UInt64)] = []
        var perViommu: [UInt16: (values: [StatKey: UInt64], batches: [(bucket: Int, count: UInt64)])] = [:]
        var perPSMMU: [UInt16: [StatKey: UInt64]] = [:]
        for entry in reply.entries where entry.vsmmu == id {
            if let viommu = entry.viommu {
                if entry.key.scope == .psmmu { perPSMMU[viommu, default: [:]][entry.key] = entry.value }
                guard entry.key.scope == .viommu else { continue }
                if let bucket = entry.key.histogramBucket {
                    perViommu[viommu, default: ([:], [])].batches.append((bucket, entry.value))
                } else {
                    perViommu[viommu, default: ([:], [])].values[entry.key] = entry.value
                }
            } else if entry.key.scope == .vsmmu {
                if let bucket = entry.key.histogramBucket {
                    latencyBuckets.append((bucket, entry.value))
                } else {
                    values[entry.key] = entry.value
                }
            }
        }
        let count = values.removeValue(forKey: .syncLatencyCount)
        let sum = values.removeValue(forKey: .syncLatencySumNanoseconds)
        let viommus = perViommu.keys.sorted().map { index in
            let v = perViommu[index] ?? ([:], [])
            return ViommuFigures(index: index, pSMMU: pSMMUs[index] ?? "", values: v.values,
                                 batchSizes: Log2Histogram(buckets: v.batches, count: v.values[.viommuBackendCalls]))
        }
        let psmmus = perPSMMU.keys.sorted().map { index in
            PSMMUFigures(name: pSMMUs[index].flatMap { $0.isEmpty ? nil : $0 } ?? "vSMMU \(id.rawValue) viommu \(index)",
                         values: perPSMMU[index] ?? [:])
        }
        self.init(id: id, name: name, values: values,
                  syncLatency: Log2Histogram(buckets: latencyBuckets, count: count, sum: sum), viommus: viommus,
                  pSMMUs: psmmus)
    }

    /// The value of `key`, 0 when absent.
    public subscript(key: StatKey) -> UInt64 { values[key] ?? 0 }
}

/// What `vsmmud-cli stats` shows: the daemon's figures and those of its vSMMUs, fetched together.
public struct StatsSnapshot: Hashable, Sendable {
    public var daemon: DaemonFigures
    /// By id.
    public var vsmmus: [VSMMUFigures]

    public init(daemon: DaemonFigures, vsmmus: [VSMMUFigures]) {
        self.daemon = daemon
        self.vsmmus = vsmmus.sorted { $0.id < $1.id }
    }

    /// Every pSMMU some vSMMU's viommu sits on, by name: its backend's totals. Several vSMMUs report the
    /// same pSMMU, read a moment apart; the counters only grow, so each shows its largest reading.
    public var pSMMUs: [PSMMUFigures] {
        var byName: [String: [StatKey: UInt64]] = [:]
        for v in vsmmus {
            for p in v.pSMMUs { byName[p.name, default: [:]].merge(p.values, uniquingKeysWith: max) }
        }
        return byName.keys.sorted().map { PSMMUFigures(name: $0, values: byName[$0] ?? [:]) }
    }
}
