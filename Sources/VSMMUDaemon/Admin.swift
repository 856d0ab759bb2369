import InvalidationEngine
import PSMMU
import SMMUv3
import VirtualSMMU
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// STATS, LIST and HEALTH (PROTOCOL.md §6): read-only views of the daemon's state.
extension VSMMUServer {
    /// The STATS reply for `vsmmu` (`nil`: the daemon's own counters).
    /// - Throws: `UNKNOWN_VSMMU`.
    func statistics(of vsmmu: VSMMUID?, type: MessageType) throws(ProtocolError) -> StatsReply {
        guard let id = vsmmu else {
            let (connections, vsmmus) = state.withLock { ($0.connections.count, $0.vsmmus.count) }
            return StatsReply(entries: [
                StatEntry(vsmmu: nil, key: .daemonConnections, value: UInt64(connections)),
                StatEntry(vsmmu: nil, key: .daemonVSMMUs, value: UInt64(vsmmus)),
                StatEntry(vsmmu: nil, key: .daemonUptimeNanoseconds, value: POSIX.monotonicNanoseconds() &- startTime),
                StatEntry(vsmmu: nil, key: .daemonFramesReceived, value: framesReceived.load(ordering: .relaxed)),
                StatEntry(vsmmu: nil, key: .daemonProtocolErrors, value: protocolErrors.load(ordering: .relaxed)),
                StatEntry(vsmmu: nil, key: .daemonConnectionsTotal, value: connectionsTotal.load(ordering: .relaxed)),
                StatEntry(vsmmu: nil, key: .daemonEventsOrphaned, value: eventService.orphaned.load(ordering: .relaxed)),
            ])
        }
        guard let served = state.withLock({ $0.vsmmus[id] }) else { throw .unknownVSMMU(id, type: type) }
        let snapshot = served.engine.vsmmu
        let c = snapshot.counters
        let daemonStats = served.statistics.withLock { $0 }
        var entries: [StatEntry] = []
        func add(_ key: StatKey, _ value: UInt64, viommu: UInt16? = nil) {
            entries.append(StatEntry(vsmmu: id, viommu: viommu, key: key, value: value))
        }
        add(.commandsReceived, c.received)
        add(.commandsDelivered, c.deliveries)
        add(.deviceRouted, c.deviceRouted)
        add(.asidRouted, c.asidRouted)
        add(.broadcast, c.broadcast)
        add(.broadcastsAvoided, c.broadcastsAvoided)
        add(.droppedByRule, c.droppedByRule)
        add(.errors, c.errors)
        add(.illegalCommands, c.illegalCommands)
        add(.unknownStreamID, c.unknownStreamID)
        add(.syncs, c.syncs)
        add(.asidWithoutTarget, c.asidWithoutTarget)
        add(.retiringDeliveries, c.retiringDeliveries)
        add(.retirementsEnded, c.retirementsEnded)
        add(.configSTEInvalidations, c.configSTEInvalidations)
        add(.invalidateRequests, daemonStats.invalidateRequests)
        add(.viommus, UInt64(snapshot.attachedViommus.count))
        add(.devices, UInt64(snapshot.devices.count))
        add(.hwpts, UInt64(snapshot.hwpts.count))
        add(.syncLatencyCount, daemonStats.syncLatencyCount)
        add(.syncLatencySumNanoseconds, daemonStats.syncLatencySumNanoseconds)
        let queue = daemonStats.queue
        add(.queueCommands, queue.commands)
        add(.queueSyncs, queue.syncs)
        add(.queueErrors, queue.errors)
        add(.queueKicks, queue.kicksReceived)
        add(.queueCalls, queue.callsSent)
        add(.queuePollsCaught, queue.pollsCaught)
        add(.queuePollsMissed, queue.pollsMissed)
        for (bucket, count) in daemonStats.syncLatencyLog2.enumerated() where count > 0 {
            add(.syncLatencyLog2Nanoseconds(bucket: bucket), count)
        }
        for viommu in served.engine.viommuStatistics {
            let v = UInt16(viommu.index.rawValue)
            let delivered = viommu.index.index < c.deliveriesPerViommu.count ? c.deliveriesPerViommu[viommu.index.index] : 0
            add(.viommuCommandsDelivered, delivered, viommu: v)
            add(.viommuRingOccupancy, viommu.occupancy, viommu: v)
            add(.viommuRingHighWater, viommu.queue.occupancyHighWater, viommu: v)
            for (bucket, calls) in viommu.queue.sinkBatchSizeLog2.enumerated() where calls > 0 {
                add(.viommuBatchSizeLog2(bucket: bucket), UInt64(calls), viommu: v)
            }
            // What this viommu's queue handed to its backend, not the pSMMU backend's totals (which count
            // every vSMMU's viommus on that pSMMU).
            add(.viommuBackendCalls, UInt64(viommu.queue.sinkCalls), viommu: v)
            add(.viommuBackendCommands, UInt64(viommu.queue.sinkCommands), viommu: v)
            add(.viommuBackendCompleted, UInt64(viommu.queue.commandsCompleted), viommu: v)
            add(.viommuBackendFailed, UInt64(viommu.queue.commandsFailed), viommu: v)
            add(.viommuSyncs, UInt64(viommu.queue.fencesReached), viommu: v)
            add(.viommuRingFullWaits, UInt64(viommu.queue.fullRingWaits), viommu: v)
            add(.viommuDevices, UInt64((try? snapshot.viommu(viommu.index))?.streamIDs.count ?? 0), viommu: v)
            // The events of this viommu: forwarded into the vSMMU's event queue, and dropped, by reason.
            let events = served.events.counters(viommu.index)
            add(.viommuEvents, events.forwarded, viommu: v)
            add(.viommuEventsDroppedOverflow, events.droppedOverflow, viommu: v)
            add(.viommuEventsDroppedDeviceGone, events.droppedDeviceGone, viommu: v)
            add(.viommuEventsDroppedNoQueue, events.droppedNoQueue, viommu: v)
            add(.viommuEventsLostUpstream, events.lostUpstream, viommu: v)
            // The pSMMU's totals, on the entry of this vSMMU's one viommu on it.
            add(.psmmuBackendCalls, viommu.backend.invalidateCalls, viommu: v)
            add(.psmmuBackendCommands, viommu.backend.commandsReceived, viommu: v)
            add(.psmmuBackendCompleted, viommu.backend.commandsCompleted, viommu: v)
            add(.psmmuBackendFailed, viommu.backend.commandsFailed, viommu: v)
            add(.psmmuEvents, viommu.backend.events, viommu: v)
        }
        return StatsReply(entries: entries)
    }

    /// The LIST reply: one page of a fresh snapshot.
    /// - Throws: `UNKNOWN_VSMMU`.
    /// - Parameter awaitingOwnerFlag: whether LIST's vSMMU entries carry `VSMMU_LIST_VSMMU_AWAITING_OWNER`
    ///   (version 3; the field is reserved, 0, for versions 1-2).
    func listing(_ request: ListRequest, type: MessageType, awaitingOwnerFlag: Bool = true) throws(ProtocolError) -> ListReply {
        let served: [ServedVSMMU]
        if let id = request.vsmmu {
            guard let one = state.withLock({ $0.vsmmus[id] }) else { throw .unknownVSMMU(id, type: type) }
            served = [one]
        } else {
            served = state.withLock { $0.vsmmus.values.sorted { $0.id < $1.id } }
        }
        let entrySize = request.kind.entrySize ?? 1
        let fit = max(1, (Int(limits.maximumFrameSize) - FrameHeader.byteCount - 16) / entrySize)
        let pageSize = request.maximumEntries == 0 ? fit : min(fit, Int(request.maximumEntries))
        func page<T>(_ all: [T]) -> (ArraySlice<T>, UInt32) {
            let start = min(Int(request.start), all.count)
            return (all[start..<min(all.count, start + pageSize)], UInt32(clamping: all.count))
        }
        let entries: ListEntries
        let total: UInt32
        switch request.kind {
        case .vsmmus:
            let all = served.map { s -> VSMMUListEntry in
                let v = s.engine.vsmmu
                return VSMMUListEntry(vsmmu: s.id, ownerProcessID: UInt32(bitPattern: s.ownerCredentials?.processID ?? 0),
                                      ownerUserID: s.ownerCredentials?.userID ?? 0,
                                      viommuCount: UInt32(v.attachedViommus.count), deviceCount: UInt32(v.devices.count),
                                      hwptCount: UInt32(v.hwpts.count), asidCount: UInt32(v.asidIndex.knownASIDs.count),
                                      name: s.name, awaitingOwner: awaitingOwnerFlag && s.owner == 0)
            }
            let (p, t) = page(all); entries = .vsmmus(Array(p)); total = t
        case .viommus:
            let all = served.flatMap { s -> [ViommuListEntry] in
                let v = s.engine.vsmmu
                return s.engine.viommuStatistics.map { stats in
                    ViommuListEntry(vsmmu: s.id, viommu: UInt32(stats.index.rawValue), backendViommuID: stats.handle.rawValue,
                                    deviceCount: UInt32((try? v.viommu(stats.index))?.streamIDs.count ?? 0), pSMMU: stats.pSMMU)
                }
            }
            let (p, t) = page(all); entries = .viommus(Array(p)); total = t
        case .devices:
            let all = served.flatMap { s -> [DeviceListEntry] in
                s.engine.vsmmu.devices.values.sorted { $0.streamID < $1.streamID }.map { d in
                    DeviceListEntry(vsmmu: s.id, streamID: d.streamID, viommu: UInt32(d.viommu.rawValue),
                                    hostDeviceID: d.hostDeviceID, s1HWPT: d.hwpt?.rawValue, steLinked: d.ste != nil)
                }
            }
            let (p, t) = page(all); entries = .devices(Array(p)); total = t
        case .hwpts:
            let all = served.flatMap { s -> [HWPTListEntry] in
                s.engine.vsmmu.hwpts.values.sorted { $0.id < $1.id }.map { h in
                    HWPTListEntry(vsmmu: s.id, s1HWPT: h.id.rawValue, streamID: h.streamID, viommu: UInt32(h.viommu.rawValue),
                                  backendHWPTID: s.engine.backendHandles(of: h.streamID).hwpt?.rawValue ?? 0,
                                  asidCount: UInt32(h.asids.count))
                }
            }
            let (p, t) = page(all); entries = .hwpts(Array(p)); total = t
        default:
            let all = served.flatMap { s -> [ASIDListEntry] in
                let index = s.engine.vsmmu.asidIndex
                return index.knownASIDs.sorted().map { asid in
                    ASIDListEntry(vsmmu: s.id, asid: asid, hwptCount: UInt16(clamping: index.hwpts(carrying: asid).count),
                                  targetMask: index.targets(of: asid).mask, retiringMask: index.retiringViommus(of: asid).mask)
                }
            }
            let (p, t) = page(all); entries = .asids(Array(p)); total = t
        }
        return ListReply(entries: entries, total: total, start: request.start)
    }

    /// The HEALTH reply.
    func health() -> HealthReply {
        let (connections, served, stopping) = state.withLock { ($0.connections.count, Array($0.vsmmus.values), $0.stopping) }
        var viommusPerPSMMU: [String: Int] = [:]
        for s in served {
            for viommu in s.engine.vsmmu.viommus.compactMap({ $0 }) { viommusPerPSMMU[viommu.pSMMU, default: 0] += 1 }
        }
        let pSMMUs = configuration.pSMMUs.map { p in
            PSMMUHealth(name: p.name, status: .ok, backend: p.backendKind, viommuCount: UInt32(viommusPerPSMMU[p.name] ?? 0))
        }
        return HealthReply(status: stopping ? .shuttingDown : .ok, connectionCount: UInt32(connections),
                           vsmmuCount: UInt32(served.count), uptimeNanoseconds: POSIX.monotonicNanoseconds() &- startTime,
                           serverProcessID: UInt32(bitPattern: getpid()), pSMMUs: pSMMUs)
    }
}
