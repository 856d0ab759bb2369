import VSMMUProtocol

/// One scalar counter of a STATS reply as `vsmmud-cli` shows it: its key, and its name in the table, in
/// the JSON document and in the Prometheus exposition. The three renderers read this one table, so a
/// counter is named once.
public struct StatField: Hashable, Sendable {
    /// Whether the value only grows (a counter: rates are shown, the metric ends in `_total`) or is a
    /// current level (a gauge).
    public enum Kind: Hashable, Sendable {
        case counter, gauge
    }

    /// The STATS key.
    public let key: StatKey
    /// The row or column label in the table.
    public let label: String
    /// The key in the JSON document (`snake_case`).
    public let jsonName: String
    /// The Prometheus metric name, without the `vsmmud_` prefix and the `_total` suffix of counters.
    public let metricName: String
    /// The `# HELP` text.
    public let help: String
    public let kind: Kind
    /// Labels this field's series carries besides the scope's (e.g. `reason` of
    /// `vsmmud_viommu_events_dropped_total`): several fields then share one metric family.
    public let metricLabels: [String: String]

    public init(_ key: StatKey, label: String, json: String, metric: String? = nil, kind: Kind = .counter,
                metricLabels: [String: String] = [:], help: String) {
        self.key = key
        self.label = label
        self.jsonName = json
        self.metricName = metric ?? json
        self.help = help
        self.kind = kind
        self.metricLabels = metricLabels
    }

    /// The full Prometheus name: `vsmmud_<metricName>`, with `_total` for a counter.
    public var prometheusName: String { "vsmmud_" + metricName + (kind == .counter ? "_total" : "") }
}

extension StatField {
    /// The daemon's own figures (STATS of vSMMU 0), uptime apart (``DaemonFigures/uptimeNanoseconds``).
    public static let daemon: [StatField] = [
        StatField(.daemonConnections, label: "connections open", json: "connections", kind: .gauge,
                  help: "Client connections open now."),
        StatField(.daemonConnectionsTotal, label: "connections accepted", json: "connections_accepted",
                  help: "Client connections accepted since the daemon started."),
        StatField(.daemonVSMMUs, label: "vSMMUs", json: "vsmmus", kind: .gauge, help: "vSMMUs served now."),
        StatField(.daemonFramesReceived, label: "frames received", json: "frames_received",
                  help: "Protocol frames received, all connections."),
        StatField(.daemonProtocolErrors, label: "protocol errors", json: "protocol_errors",
                  help: "ERROR replies sent."),
        StatField(.daemonEventsOrphaned, label: "events orphaned", json: "events_orphaned", metric: "events_orphaned",
                  help: "Events from a backend viommu no vSMMU owns (destroyed or detached): dropped."),
    ]

    /// A vSMMU's router and engine counters, in the order the table shows them (sync latency apart:
    /// ``VSMMUFigures/syncLatency``).
    public static let vsmmu: [StatField] = [
        StatField(.commandsReceived, label: "commands received", json: "commands_received", metric: "vsmmu_commands_received",
                  help: "Guest commands routed."),
        StatField(.commandsDelivered, label: "commands delivered", json: "commands_delivered", metric: "vsmmu_commands_delivered",
                  help: "Commands handed to viommus, a broadcast counted once per viommu."),
        StatField(.deviceRouted, label: "device-routed", json: "device_routed", metric: "vsmmu_device_routed",
                  help: "ATC_INV, CFGI_CD and CFGI_CD_ALL sent to their vSID's viommu."),
        StatField(.asidRouted, label: "ASID-routed", json: "asid_routed", metric: "vsmmu_asid_routed",
                  help: "TLBI_NH_ASID and TLBI_NH_VA sent to the viommus of their ASID."),
        StatField(.broadcast, label: "broadcast", json: "broadcast", metric: "vsmmu_broadcast",
                  help: "TLB invalidations without an ASID sent to every viommu."),
        StatField(.broadcastsAvoided, label: "broadcasts avoided", json: "broadcasts_avoided", metric: "vsmmu_broadcasts_avoided",
                  help: "viommus an ASID-routed command did not reach but a broadcast would have."),
        StatField(.droppedByRule, label: "dropped by rule", json: "dropped_by_rule", metric: "vsmmu_dropped_by_rule",
                  help: "Commands accepted and not forwarded (PREFETCH, CFGI_STE, EL2/EL3, ...)."),
        StatField(.errors, label: "errors", json: "errors", metric: "vsmmu_command_errors",
                  help: "Commands that failed routing (illegal commands and unknown StreamIDs)."),
        StatField(.illegalCommands, label: "  illegal (CERROR_ILL)", json: "illegal_commands", metric: "vsmmu_illegal_commands",
                  help: "Commands refused with CERROR_ILL."),
        StatField(.unknownStreamID, label: "  unknown StreamID", json: "unknown_stream_id", metric: "vsmmu_unknown_stream_id",
                  help: "Device commands naming an unregistered vSID."),
        StatField(.syncs, label: "syncs (CMD_SYNC)", json: "syncs", metric: "vsmmu_syncs", help: "CMD_SYNCs."),
        StatField(.invalidateRequests, label: "INVALIDATE requests", json: "invalidate_requests",
                  metric: "vsmmu_invalidate_requests", help: "INVALIDATE requests served."),
        StatField(.queueCommands, label: "queue commands", json: "queue_commands", metric: "vsmmu_queue_commands",
                  help: "Commands consumed through the shared command queue."),
        StatField(.queueSyncs, label: "  queue syncs", json: "queue_syncs", metric: "vsmmu_queue_syncs",
                  help: "CMD_SYNCs completed through the shared command queue."),
        StatField(.queueErrors, label: "  queue errors", json: "queue_errors", metric: "vsmmu_queue_errors",
                  help: "Shared queue errors raised (refused commands, bad PROD)."),
        StatField(.queueKicks, label: "  queue kicks", json: "queue_kicks", metric: "vsmmu_queue_kicks",
                  help: "Sleeps of the shared queue's consumer that a kick ended."),
        StatField(.queueCalls, label: "  queue calls", json: "queue_calls", metric: "vsmmu_queue_calls",
                  help: "Writes to the shared queue's call eventfd."),
        StatField(.queuePollsCaught, label: "  queue polls caught", json: "queue_polls_caught", metric: "vsmmu_queue_polls_caught",
                  help: "Idle polls of the shared queue's PROD that caught the next command."),
        StatField(.queuePollsMissed, label: "  queue polls missed", json: "queue_polls_missed", metric: "vsmmu_queue_polls_missed",
                  help: "Idle polls of the shared queue's PROD that ended in a sleep."),
        StatField(.asidWithoutTarget, label: "ASID without target", json: "asid_without_target",
                  metric: "vsmmu_asid_without_target", help: "ASID-routed commands whose ASID no HWPT carries."),
        StatField(.retiringDeliveries, label: "retiring deliveries", json: "retiring_deliveries",
                  metric: "vsmmu_retiring_deliveries", help: "Deliveries made only because the ASID is retiring there."),
        StatField(.retirementsEnded, label: "retirements ended", json: "retirements_ended", metric: "vsmmu_retirements_ended",
                  help: "Retiring (ASID, viommu) pairs ended by an invalidation."),
        StatField(.configSTEInvalidations, label: "CFGI_STE*/CFGI_ALL", json: "config_ste_invalidations",
                  metric: "vsmmu_config_ste_invalidations", help: "CFGI_STE, CFGI_STE_RANGE and CFGI_ALL commands."),
        StatField(.viommus, label: "viommus", json: "viommus", metric: "vsmmu_viommus", kind: .gauge,
                  help: "viommus attached now."),
        StatField(.devices, label: "devices", json: "devices", metric: "vsmmu_devices", kind: .gauge,
                  help: "Devices registered now."),
        StatField(.hwpts, label: "stage-1 HWPTs", json: "hwpts", metric: "vsmmu_hwpts", kind: .gauge,
                  help: "Stage-1 HWPTs (nested domains) now."),
    ]

    /// A viommu's counters (its batch-size histogram apart: ``ViommuFigures/batchSizes``).
    public static let viommu: [StatField] = [
        StatField(.viommuDevices, label: "devices", json: "devices", metric: "viommu_devices", kind: .gauge,
                  help: "Devices registered behind the viommu now."),
        StatField(.viommuCommandsDelivered, label: "delivered", json: "commands_delivered", metric: "viommu_commands_delivered",
                  help: "Commands the router delivered to the viommu."),
        StatField(.viommuBackendCalls, label: "backend calls", json: "backend_calls", metric: "viommu_backend_calls",
                  help: "Calls to the pSMMU backend's invalidate (iommufd: IOMMU_HWPT_INVALIDATE ioctls)."),
        StatField(.viommuBackendCommands, label: "backend commands", json: "backend_commands", metric: "viommu_backend_commands",
                  help: "Commands handed to the backend's invalidate calls."),
        StatField(.viommuBackendCompleted, label: "completed", json: "backend_completed", metric: "viommu_backend_completed",
                  help: "Commands the pSMMU completed."),
        StatField(.viommuBackendFailed, label: "failed", json: "backend_failed", metric: "viommu_backend_failed",
                  help: "Commands the pSMMU failed."),
        StatField(.viommuRingOccupancy, label: "ring occupancy", json: "ring_occupancy", metric: "viommu_ring_occupancy",
                  kind: .gauge, help: "Commands queued in the viommu's ring and not yet consumed."),
        StatField(.viommuRingHighWater, label: "ring high-water", json: "ring_high_water", metric: "viommu_ring_high_water",
                  kind: .gauge, help: "The most commands ever queued at once in the viommu's ring."),
        StatField(.viommuRingFullWaits, label: "ring-full waits", json: "ring_full_waits", metric: "viommu_ring_full_waits",
                  help: "Times a producer found the viommu's ring full."),
        StatField(.viommuSyncs, label: "syncs", json: "syncs", metric: "viommu_syncs", help: "Sync fences the viommu reached."),
        StatField(.viommuEvents, label: "events", json: "events_forwarded", metric: "viommu_events_forwarded",
                  help: "Events of the viommu forwarded into the vSMMU's event queue."),
        StatField(.viommuEventsDroppedOverflow, label: "dropped overflow", json: "events_dropped_overflow",
                  metric: "viommu_events_dropped", metricLabels: ["reason": "overflow"], help: StatField.droppedHelp),
        StatField(.viommuEventsDroppedDeviceGone, label: "dropped device gone", json: "events_dropped_device_gone",
                  metric: "viommu_events_dropped", metricLabels: ["reason": "device_gone"], help: StatField.droppedHelp),
        StatField(.viommuEventsDroppedNoQueue, label: "dropped no queue", json: "events_dropped_no_queue",
                  metric: "viommu_events_dropped", metricLabels: ["reason": "no_queue"], help: StatField.droppedHelp),
        StatField(.viommuEventsLostUpstream, label: "lost upstream", json: "events_lost_upstream",
                  metric: "viommu_events_lost_upstream",
                  help: "LOST_EVENTS reports from the kernel's vEVENTQ (or a simulated pSMMU's full queue)."),
    ]

    /// The `# HELP` of `vsmmud_viommu_events_dropped_total`, one for its three reasons.
    static let droppedHelp = "Events of the viommu dropped: the event queue was full (overflow), the vSID was "
        + "no longer registered (device_gone), or the vSMMU had no event queue mapped (no_queue)."

    /// A pSMMU's backend totals, over every vSMMU whose viommus sit on it (labelled by pSMMU name).
    public static let psmmu: [StatField] = [
        StatField(.psmmuBackendCalls, label: "backend calls", json: "backend_calls", metric: "psmmu_backend_calls",
                  help: "Calls to the pSMMU backend's invalidate, all vSMMUs (iommufd: IOMMU_HWPT_INVALIDATE ioctls)."),
        StatField(.psmmuBackendCommands, label: "backend commands", json: "backend_commands", metric: "psmmu_backend_commands",
                  help: "Commands handed to the pSMMU backend's invalidate calls, all vSMMUs."),
        StatField(.psmmuBackendCompleted, label: "completed", json: "backend_completed", metric: "psmmu_backend_completed",
                  help: "Commands the pSMMU completed, all vSMMUs."),
        StatField(.psmmuBackendFailed, label: "failed", json: "backend_failed", metric: "psmmu_backend_failed",
                  help: "Commands the pSMMU failed, all vSMMUs."),
        StatField(.psmmuEvents, label: "events", json: "events", metric: "psmmu_events",
                  help: "Event records the pSMMU reported."),
    ]
}
