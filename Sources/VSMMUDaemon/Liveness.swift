import InvalidationEngine
import PSMMU
import VSMMUProtocol

/// Whether the daemon's serving path makes progress: what its systemd watchdog pings stand for.
public enum Liveness: Sendable, Hashable, CustomStringConvertible {
    /// Serving: the accept loop runs (the check is made from it) and every viommu with work drains it.
    case alive
    /// A viommu has had commands queued or in its backend with no progress for the wedge timeout.
    case wedged(String)

    public var description: String {
        switch self {
        case .alive: return "alive"
        case .wedged(let why): return "wedged: \(why)"
        }
    }
}

/// A viommu of a vSMMU, as the liveness check tracks it.
struct ViommuKey: Hashable, Sendable {
    var vsmmu: VSMMUID
    var viommu: UInt32
}

/// A viommu's progress at the last liveness check.
struct ProgressMark: Sendable {
    /// Ring slots consumed plus backend commands finished: grows whenever the viommu drains.
    var progress: UInt64
    /// When the viommu was first seen with work and no progress (monotonic ns), `nil` while it moves.
    var stuckSince: UInt64?
}

/// Daemon-wide totals, for systemd's `STATUS=` line and logs.
public struct ServerTotals: Sendable, Hashable {
    public var connections: Int
    public var vsmmus: Int
    public var viommus: Int
    public var commandsReceived: UInt64
    public var syncs: UInt64
    public var protocolErrors: UInt64
    public var refusedConnections: UInt64
    /// Requests a connection thread caught while polling for them, and polls that ended without one
    /// (``VSMMUServer/Configuration/requestPolling``).
    public var requestPollHits: UInt64 = 0
    public var requestPollMisses: UInt64 = 0
}

extension VSMMUServer {
    /// Checks the viommus: one that has had work (ring slots unconsumed, or commands handed to its
    /// backend and not finished) with no progress for ``Configuration/wedgeTimeout`` makes the server
    /// wedged. Meant to be called from the heartbeat (so a wedged accept loop never calls it at all);
    /// keeps what it saw for the next call.
    public func liveness() -> Liveness {
        let now = POSIX.monotonicNanoseconds()
        let timeout = UInt64(max(0, configuration.wedgeTimeout.nanosecondsClamped))
        let served = state.withLock { Array($0.vsmmus.values) }
        var marks: [ViommuKey: ProgressMark] = [:]
        var wedged: [String] = []
        let previous = state.withLock { $0.progress }
        for vsmmu in served {
            for viommu in vsmmu.engine.viommuStatistics {
                let key = ViommuKey(vsmmu: vsmmu.id, viommu: UInt32(viommu.index.rawValue))
                let b = viommu.backend
                let finished = b.commandsCompleted &+ b.commandsFailed
                let hasWork = viommu.occupancy > 0 || b.commandsReceived > finished
                let progress = UInt64(viommu.queue.commandsCompleted &+ viommu.queue.commandsFailed) &+ finished
                var mark = ProgressMark(progress: progress, stuckSince: nil)
                if hasWork, let before = previous[key], before.progress == progress {
                    mark.stuckSince = before.stuckSince ?? now
                }
                if let since = mark.stuckSince, now &- since >= timeout {
                    wedged.append("vSMMU \(vsmmu.id.rawValue) viommu \(key.viommu) (pSMMU \(viommu.pSMMU)): "
                                  + "\(viommu.occupancy) commands queued, no progress for \((now &- since) / 1_000_000) ms")
                }
                marks[key] = mark
            }
        }
        state.withLock { $0.progress = marks }
        return wedged.isEmpty ? .alive : .wedged(wedged.joined(separator: "; "))
    }

    /// Daemon-wide totals now.
    public func totals() -> ServerTotals {
        let (connections, served) = state.withLock { ($0.connections.count, Array($0.vsmmus.values)) }
        var totals = ServerTotals(connections: connections, vsmmus: served.count, viommus: 0, commandsReceived: 0, syncs: 0,
                                  protocolErrors: protocolErrors.load(ordering: .relaxed),
                                  refusedConnections: refusalsTotal.load(ordering: .relaxed),
                                  requestPollHits: requestPollHits.load(ordering: .relaxed),
                                  requestPollMisses: requestPollMisses.load(ordering: .relaxed))
        for vsmmu in served {
            let snapshot = vsmmu.engine.vsmmu
            totals.viommus += snapshot.attachedViommus.count
            totals.commandsReceived &+= snapshot.counters.received
            totals.syncs &+= snapshot.counters.syncs
        }
        return totals
    }

    /// One line for `systemctl status` (systemd's `STATUS=`).
    public func statusLine() -> String {
        let t = totals()
        return "serving \(t.connections) connection\(t.connections == 1 ? "" : "s"), \(t.vsmmus) vSMMU\(t.vsmmus == 1 ? "" : "s"), "
            + "\(t.viommus) viommu\(t.viommus == 1 ? "" : "s"); \(t.commandsReceived) commands, \(t.syncs) syncs, "
            + "\(t.protocolErrors) protocol errors, \(t.refusedConnections) refused"
    }
}
