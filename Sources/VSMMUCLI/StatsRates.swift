import VSMMUProtocol

/// Per-second rates of the counters between two snapshots (`stats --watch`): (current − previous) /
/// elapsed, the elapsed time taken from the daemon's own uptime so that the time spent fetching does
/// not skew it.
///
/// Only counters (``StatField/Kind/counter``) get a rate, and only when present in both snapshots and
/// not decreased (a viommu detached and attached again starts from zero).
public struct StatsRates: Hashable, Sendable {
    /// A viommu across snapshots.
    public struct ViommuKey: Hashable, Sendable {
        public var vsmmu: VSMMUID
        public var viommu: UInt16
        public init(vsmmu: VSMMUID, viommu: UInt16) {
            self.vsmmu = vsmmu
            self.viommu = viommu
        }
    }

    /// Seconds of daemon uptime between the snapshots.
    public var elapsedSeconds: Double
    public var daemon: [StatKey: Double]
    public var vsmmus: [VSMMUID: [StatKey: Double]]
    public var viommus: [ViommuKey: [StatKey: Double]]

    /// The rates from `previous` to `current`; `nil` when no daemon time passed between them (or the
    /// daemon restarted: its uptime went back).
    public init?(from previous: StatsSnapshot, to current: StatsSnapshot) {
        guard current.daemon.uptimeNanoseconds > previous.daemon.uptimeNanoseconds else { return nil }
        let elapsed = Double(current.daemon.uptimeNanoseconds - previous.daemon.uptimeNanoseconds) / 1e9
        elapsedSeconds = elapsed
        func rates(_ fields: [StatField], _ old: [StatKey: UInt64], _ new: [StatKey: UInt64]) -> [StatKey: Double] {
            var out: [StatKey: Double] = [:]
            for field in fields where field.kind == .counter {
                guard let a = old[field.key], let b = new[field.key], b >= a else { continue }
                out[field.key] = Double(b - a) / elapsed
            }
            return out
        }
        daemon = rates(StatField.daemon, previous.daemon.values, current.daemon.values)
        let before = Dictionary(previous.vsmmus.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        var vsmmus: [VSMMUID: [StatKey: Double]] = [:]
        var viommus: [ViommuKey: [StatKey: Double]] = [:]
        for v in current.vsmmus {
            guard let old = before[v.id] else { continue }
            vsmmus[v.id] = rates(StatField.vsmmu, old.values, v.values)
            let oldViommus = Dictionary(old.viommus.map { ($0.index, $0) }, uniquingKeysWith: { a, _ in a })
            for viommu in v.viommus {
                guard let o = oldViommus[viommu.index], o.pSMMU == viommu.pSMMU else { continue }
                viommus[ViommuKey(vsmmu: v.id, viommu: viommu.index)] = rates(StatField.viommu, o.values, viommu.values)
            }
        }
        self.vsmmus = vsmmus
        self.viommus = viommus
    }

    /// The rate of a vSMMU counter.
    public func rate(_ key: StatKey, vsmmu: VSMMUID) -> Double? { vsmmus[vsmmu]?[key] }

    /// The rate of a viommu counter.
    public func rate(_ key: StatKey, vsmmu: VSMMUID, viommu: UInt16) -> Double? {
        viommus[ViommuKey(vsmmu: vsmmu, viommu: viommu)]?[key]
    }
}
