/// A counter's key in a STATS reply (`VSMMU_STAT_*`, `PROTOCOL.md` §6.1).
///
/// Keys are grouped by the object they describe (``scope``); a reply may hold keys this version does not
/// name: clients skip them.
public struct StatKey: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    /// What a key describes.
    public enum Scope: Hashable, Sendable {
        /// The daemon's own counters (`vsmmu_id` 0).
        case daemon
        /// One vSMMU's router and engine.
        case vsmmu
        /// One viommu: what its own queue did (`viommu` = its index).
        case viommu
        /// The pSMMU a viommu sits on, over every vSMMU that used it (`viommu` = the index of this vSMMU's
        /// viommu on it, which names the pSMMU in LIST viommus).
        case psmmu
        case unknown
    }

    // vSMMU keys
    /// Guest commands routed. `VSMMU_STAT_COMMANDS_RECEIVED` (0x0001).
    public static let commandsReceived = StatKey(rawValue: 0x0001)
    /// Commands handed to viommus, a broadcast counted per viommu. `VSMMU_STAT_COMMANDS_DELIVERED` (0x0002).
    public static let commandsDelivered = StatKey(rawValue: 0x0002)
    /// Device-scoped commands sent to their vSID's viommu. `VSMMU_STAT_DEVICE_ROUTED` (0x0003).
    public static let deviceRouted = StatKey(rawValue: 0x0003)
    /// TLBI_NH_ASID / TLBI_NH_VA sent to their ASID's viommus. `VSMMU_STAT_ASID_ROUTED` (0x0004).
    public static let asidRouted = StatKey(rawValue: 0x0004)
    /// Commands sent to every viommu. `VSMMU_STAT_BROADCAST` (0x0005).
    public static let broadcast = StatKey(rawValue: 0x0005)
    /// viommus an ASID-routed command did not reach but a broadcast would have. `VSMMU_STAT_BROADCASTS_AVOIDED` (0x0006).
    public static let broadcastsAvoided = StatKey(rawValue: 0x0006)
    /// Commands accepted and not forwarded. `VSMMU_STAT_DROPPED_BY_RULE` (0x0007).
    public static let droppedByRule = StatKey(rawValue: 0x0007)
    /// Commands that failed routing. `VSMMU_STAT_ERRORS` (0x0008).
    public static let errors = StatKey(rawValue: 0x0008)
    /// CERROR_ILL commands. `VSMMU_STAT_ILLEGAL_COMMANDS` (0x0009).
    public static let illegalCommands = StatKey(rawValue: 0x0009)
    /// Device commands naming an unregistered vSID. `VSMMU_STAT_UNKNOWN_STREAM_ID` (0x000A).
    public static let unknownStreamID = StatKey(rawValue: 0x000A)
    /// CMD_SYNCs. `VSMMU_STAT_SYNCS` (0x000B).
    public static let syncs = StatKey(rawValue: 0x000B)
    /// ASID-routed commands whose ASID no HWPT carries. `VSMMU_STAT_ASID_WITHOUT_TARGET` (0x000C).
    public static let asidWithoutTarget = StatKey(rawValue: 0x000C)
    /// Deliveries owed to a retiring ASID. `VSMMU_STAT_RETIRING_DELIVERIES` (0x000D).
    public static let retiringDeliveries = StatKey(rawValue: 0x000D)
    /// Retiring (ASID, viommu) pairs ended. `VSMMU_STAT_RETIREMENTS_ENDED` (0x000E).
    public static let retirementsEnded = StatKey(rawValue: 0x000E)
    /// CFGI_STE / CFGI_STE_RANGE / CFGI_ALL. `VSMMU_STAT_CONFIG_STE_INVALIDATIONS` (0x000F).
    public static let configSTEInvalidations = StatKey(rawValue: 0x000F)
    /// INVALIDATE requests served. `VSMMU_STAT_INVALIDATE_REQUESTS` (0x0010).
    public static let invalidateRequests = StatKey(rawValue: 0x0010)
    /// viommus attached now. `VSMMU_STAT_VIOMMUS` (0x0011).
    public static let viommus = StatKey(rawValue: 0x0011)
    /// Devices registered now. `VSMMU_STAT_DEVICES` (0x0012).
    public static let devices = StatKey(rawValue: 0x0012)
    /// Stage-1 HWPTs now. `VSMMU_STAT_HWPTS` (0x0013).
    public static let hwpts = StatKey(rawValue: 0x0013)
    /// CMD_SYNCs timed. `VSMMU_STAT_SYNC_LATENCY_COUNT` (0x0014).
    public static let syncLatencyCount = StatKey(rawValue: 0x0014)
    /// Their total latency in ns. `VSMMU_STAT_SYNC_LATENCY_SUM_NS` (0x0015).
    public static let syncLatencySumNanoseconds = StatKey(rawValue: 0x0015)
    /// Commands consumed through the shared queue (PROTOCOL.md §8). `VSMMU_STAT_QUEUE_COMMANDS` (0x0016).
    public static let queueCommands = StatKey(rawValue: 0x0016)
    /// CMD_SYNCs completed through it. `VSMMU_STAT_QUEUE_SYNCS` (0x0017).
    public static let queueSyncs = StatKey(rawValue: 0x0017)
    /// Queue errors raised: refused commands and bad PRODs. `VSMMU_STAT_QUEUE_ERRORS` (0x0018).
    public static let queueErrors = StatKey(rawValue: 0x0018)
    /// Sleeps on the kick eventfd that a kick ended. `VSMMU_STAT_QUEUE_KICKS` (0x0019).
    public static let queueKicks = StatKey(rawValue: 0x0019)
    /// Writes to the call eventfd. `VSMMU_STAT_QUEUE_CALLS` (0x001A).
    public static let queueCalls = StatKey(rawValue: 0x001A)
    /// Idle polls of PROD that caught the next command. `VSMMU_STAT_QUEUE_POLLS_CAUGHT` (0x001B).
    public static let queuePollsCaught = StatKey(rawValue: 0x001B)
    /// Idle polls that ended in a sleep. `VSMMU_STAT_QUEUE_POLLS_MISSED` (0x001C).
    public static let queuePollsMissed = StatKey(rawValue: 0x001C)
    /// Histogram bucket *b* (0-63) of sync latency: syncs with 2^b ≤ t (ns) < 2^(b+1).
    /// `VSMMU_STAT_SYNC_LATENCY_LOG2_NS(b)` (0x0200 + b).
    public static func syncLatencyLog2Nanoseconds(bucket: Int) -> StatKey {
        StatKey(rawValue: 0x0200 + UInt16(clamping: min(max(bucket, 0), 63)))
    }

    // viommu keys
    /// `VSMMU_STAT_VIOMMU_COMMANDS_DELIVERED` (0x0040).
    public static let viommuCommandsDelivered = StatKey(rawValue: 0x0040)
    /// Commands queued and not consumed, now. `VSMMU_STAT_VIOMMU_RING_OCCUPANCY` (0x0041).
    public static let viommuRingOccupancy = StatKey(rawValue: 0x0041)
    /// The most commands ever queued at once. `VSMMU_STAT_VIOMMU_RING_HIGH_WATER` (0x0042).
    public static let viommuRingHighWater = StatKey(rawValue: 0x0042)
    /// Backend invalidate calls. `VSMMU_STAT_VIOMMU_BACKEND_CALLS` (0x0043).
    public static let viommuBackendCalls = StatKey(rawValue: 0x0043)
    /// Commands handed to them. `VSMMU_STAT_VIOMMU_BACKEND_COMMANDS` (0x0044).
    public static let viommuBackendCommands = StatKey(rawValue: 0x0044)
    /// Commands completed. `VSMMU_STAT_VIOMMU_BACKEND_COMPLETED` (0x0045).
    public static let viommuBackendCompleted = StatKey(rawValue: 0x0045)
    /// Commands failed. `VSMMU_STAT_VIOMMU_BACKEND_FAILED` (0x0046).
    public static let viommuBackendFailed = StatKey(rawValue: 0x0046)
    /// Sync fences reached. `VSMMU_STAT_VIOMMU_SYNCS` (0x0047).
    public static let viommuSyncs = StatKey(rawValue: 0x0047)
    /// Times a producer found the ring full. `VSMMU_STAT_VIOMMU_RING_FULL_WAITS` (0x0048).
    public static let viommuRingFullWaits = StatKey(rawValue: 0x0048)
    /// Devices behind the viommu now. `VSMMU_STAT_VIOMMU_DEVICES` (0x0049).
    public static let viommuDevices = StatKey(rawValue: 0x0049)
    /// Events forwarded into the vSMMU's event queue from this viommu (PROTOCOL.md §9).
    /// `VSMMU_STAT_VIOMMU_EVENTS` (0x004A).
    public static let viommuEvents = StatKey(rawValue: 0x004A)
    /// Events of this viommu dropped because the event queue was full (§9.4).
    /// `VSMMU_STAT_VIOMMU_EVENTS_DROPPED_OVERFLOW` (0x004B).
    public static let viommuEventsDroppedOverflow = StatKey(rawValue: 0x004B)
    /// Events dropped because their vSID is no longer registered on this viommu.
    /// `VSMMU_STAT_VIOMMU_EVENTS_DROPPED_DEVICE_GONE` (0x004C).
    public static let viommuEventsDroppedDeviceGone = StatKey(rawValue: 0x004C)
    /// Events dropped because the vSMMU has no event queue mapped.
    /// `VSMMU_STAT_VIOMMU_EVENTS_DROPPED_NO_QUEUE` (0x004D).
    public static let viommuEventsDroppedNoQueue = StatKey(rawValue: 0x004D)
    /// LOST_EVENTS reports from the kernel's vEVENTQ (or a simulated pSMMU's full queue).
    /// `VSMMU_STAT_VIOMMU_EVENTS_LOST_UPSTREAM` (0x004E).
    public static let viommuEventsLostUpstream = StatKey(rawValue: 0x004E)
    /// Histogram bucket *b* (0-63) of backend batch sizes: calls with 2^b ≤ n < 2^(b+1) commands.
    /// `VSMMU_STAT_VIOMMU_BATCH_SIZE_LOG2(b)` (0x0300 + b).
    public static func viommuBatchSizeLog2(bucket: Int) -> StatKey {
        StatKey(rawValue: 0x0300 + UInt16(clamping: min(max(bucket, 0), 63)))
    }

    // pSMMU keys: the pSMMU backend's totals, over every vSMMU's viommus on it
    /// Backend invalidate calls. `VSMMU_STAT_PSMMU_BACKEND_CALLS` (0x0060).
    public static let psmmuBackendCalls = StatKey(rawValue: 0x0060)
    /// Commands handed to them. `VSMMU_STAT_PSMMU_BACKEND_COMMANDS` (0x0061).
    public static let psmmuBackendCommands = StatKey(rawValue: 0x0061)
    /// Commands completed. `VSMMU_STAT_PSMMU_BACKEND_COMPLETED` (0x0062).
    public static let psmmuBackendCompleted = StatKey(rawValue: 0x0062)
    /// Commands failed. `VSMMU_STAT_PSMMU_BACKEND_FAILED` (0x0063).
    public static let psmmuBackendFailed = StatKey(rawValue: 0x0063)
    /// Event records the pSMMU reported. `VSMMU_STAT_PSMMU_EVENTS` (0x0064).
    public static let psmmuEvents = StatKey(rawValue: 0x0064)

    // daemon keys
    /// `VSMMU_STAT_DAEMON_CONNECTIONS` (0x0080).
    public static let daemonConnections = StatKey(rawValue: 0x0080)
    /// `VSMMU_STAT_DAEMON_VSMMUS` (0x0081).
    public static let daemonVSMMUs = StatKey(rawValue: 0x0081)
    /// `VSMMU_STAT_DAEMON_UPTIME_NS` (0x0082).
    public static let daemonUptimeNanoseconds = StatKey(rawValue: 0x0082)
    /// `VSMMU_STAT_DAEMON_FRAMES_RECEIVED` (0x0083).
    public static let daemonFramesReceived = StatKey(rawValue: 0x0083)
    /// `VSMMU_STAT_DAEMON_PROTOCOL_ERRORS` (0x0084).
    public static let daemonProtocolErrors = StatKey(rawValue: 0x0084)
    /// `VSMMU_STAT_DAEMON_CONNECTIONS_TOTAL` (0x0085).
    public static let daemonConnectionsTotal = StatKey(rawValue: 0x0085)
    /// Events from a backend viommu that no vSMMU owns (destroyed): dropped. `VSMMU_STAT_DAEMON_EVENTS_ORPHANED` (0x0086).
    public static let daemonEventsOrphaned = StatKey(rawValue: 0x0086)

    /// The histogram bucket of a `*_LOG2*` key, else `nil`.
    public var histogramBucket: Int? {
        switch rawValue {
        case 0x0200...0x023F: return Int(rawValue - 0x0200)
        case 0x0300...0x033F: return Int(rawValue - 0x0300)
        default: return nil
        }
    }

    /// The object the key describes.
    public var scope: Scope {
        switch rawValue {
        case 0x0001...0x001C, 0x0200...0x023F: return .vsmmu
        case 0x0040...0x004E, 0x0300...0x033F: return .viommu
        case 0x0060...0x0064: return .psmmu
        case 0x0080...0x0086: return .daemon
        default: return .unknown
        }
    }

    /// The `vsmmu.h` name without `VSMMU_STAT_`, or the hex value for a key this version does not name.
    public var name: String {
        switch rawValue {
        case 0x0200...0x023F: return "SYNC_LATENCY_LOG2_NS(\(rawValue - 0x0200))"
        case 0x0300...0x033F: return "VIOMMU_BATCH_SIZE_LOG2(\(rawValue - 0x0300))"
        default: break
        }
        let names: [UInt16: String] = [
            0x01: "COMMANDS_RECEIVED", 0x02: "COMMANDS_DELIVERED", 0x03: "DEVICE_ROUTED", 0x04: "ASID_ROUTED",
            0x05: "BROADCAST", 0x06: "BROADCASTS_AVOIDED", 0x07: "DROPPED_BY_RULE", 0x08: "ERRORS",
            0x09: "ILLEGAL_COMMANDS", 0x0A: "UNKNOWN_STREAM_ID", 0x0B: "SYNCS", 0x0C: "ASID_WITHOUT_TARGET",
            0x0D: "RETIRING_DELIVERIES", 0x0E: "RETIREMENTS_ENDED", 0x0F: "CONFIG_STE_INVALIDATIONS",
            0x10: "INVALIDATE_REQUESTS", 0x11: "VIOMMUS", 0x12: "DEVICES", 0x13: "HWPTS",
            0x14: "SYNC_LATENCY_COUNT", 0x15: "SYNC_LATENCY_SUM_NS",
            0x16: "QUEUE_COMMANDS", 0x17: "QUEUE_SYNCS", 0x18: "QUEUE_ERRORS", 0x19: "QUEUE_KICKS", 0x1A: "QUEUE_CALLS",
            0x1B: "QUEUE_POLLS_CAUGHT", 0x1C: "QUEUE_POLLS_MISSED",
            0x40: "VIOMMU_COMMANDS_DELIVERED", 0x41: "VIOMMU_RING_OCCUPANCY", 0x42: "VIOMMU_RING_HIGH_WATER",
            0x43: "VIOMMU_BACKEND_CALLS", 0x44: "VIOMMU_BACKEND_COMMANDS", 0x45: "VIOMMU_BACKEND_COMPLETED",
            0x46: "VIOMMU_BACKEND_FAILED", 0x47: "VIOMMU_SYNCS", 0x48: "VIOMMU_RING_FULL_WAITS",
            0x49: "VIOMMU_DEVICES", 0x4A: "VIOMMU_EVENTS", 0x4B: "VIOMMU_EVENTS_DROPPED_OVERFLOW",
            0x4C: "VIOMMU_EVENTS_DROPPED_DEVICE_GONE", 0x4D: "VIOMMU_EVENTS_DROPPED_NO_QUEUE", 0x4E: "VIOMMU_EVENTS_LOST_UPSTREAM",
            0x60: "PSMMU_BACKEND_CALLS", 0x61: "PSMMU_BACKEND_COMMANDS", 0x62: "PSMMU_BACKEND_COMPLETED",
            0x63: "PSMMU_BACKEND_FAILED", 0x64: "PSMMU_EVENTS",
            0x80: "DAEMON_CONNECTIONS", 0x81: "DAEMON_VSMMUS", 0x82: "DAEMON_UPTIME_NS",
            0x83: "DAEMON_FRAMES_RECEIVED", 0x84: "DAEMON_PROTOCOL_ERRORS", 0x85: "DAEMON_CONNECTIONS_TOTAL",
            0x86: "DAEMON_EVENTS_ORPHANED",
        ]
        return names[rawValue] ?? "0x" + hex(rawValue, digits: 4)
    }

    public var description: String { name }
}

/// STATS (`struct vsmmu_stats`, 8 bytes). Reply: ``StatsReply``.
public struct StatsRequest: Hashable, Sendable {
    /// The vSMMU whose counters (and its viommus') are wanted; `nil` for the daemon's own.
    public var vsmmu: VSMMUID?
    public init(vsmmu: VSMMUID?) { self.vsmmu = vsmmu }
}

extension StatsRequest: PayloadCoding {
    static let fixedLength = 8
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32()
        try r.reserved32()
        self.init(vsmmu: .optional(id))
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.wireValue)
        w.u32(0)
    }
}

/// One counter (`struct vsmmu_stat_entry`, 16 bytes).
public struct StatEntry: Hashable, Sendable, CustomStringConvertible {
    /// The vSMMU, `nil` for a daemon counter.
    public var vsmmu: VSMMUID?
    /// The viommu index, `nil` for a daemon or vSMMU counter (`0xFFFF` on the wire).
    public var viommu: UInt16?
    public var key: StatKey
    public var value: UInt64

    public init(vsmmu: VSMMUID?, viommu: UInt16? = nil, key: StatKey, value: UInt64) {
        self.vsmmu = vsmmu
        self.viommu = viommu
        self.key = key
        self.value = value
    }

    /// `VSMMU_STAT_NO_VIOMMU`.
    public static let noViommu: UInt16 = 0xFFFF

    public var description: String {
        let object = vsmmu.map { v in viommu.map { "\(v).viommu\($0)" } ?? "\(v)" } ?? "daemon"
        return "\(object) \(key.name)=\(value)"
    }
}

/// STATS reply (`struct vsmmu_stats_reply`, 8 + 16 × `entry_count` bytes).
public struct StatsReply: Hashable, Sendable {
    public var entries: [StatEntry]
    public init(entries: [StatEntry]) { self.entries = entries }

    /// The value of `key` for the daemon / vSMMU (`viommu == nil`) or one viommu, if present.
    public func value(_ key: StatKey, viommu: UInt16? = nil) -> UInt64? {
        entries.first { $0.key == key && $0.viommu == viommu }?.value
    }
}

extension StatsReply: PayloadCoding {
    static let fixedLength = 8
    static let entrySize = 16
    static func requiredLength(_ payload: [UInt8]) -> UInt64 {
        requiredLength(payload, countAt: 0, elementSize: entrySize)
    }
    init(from r: inout WireReader) throws(ProtocolError) {
        let count = Int(r.u32())
        try r.reserved32()
        var entries: [StatEntry] = []
        entries.reserveCapacity(min(count, r.remaining / Self.entrySize))
        for _ in 0..<count where r.remaining >= Self.entrySize {
            let id = r.u32(), viommu = r.u16(), key = r.u16(), value = r.u64()
            entries.append(StatEntry(vsmmu: .optional(id), viommu: viommu == StatEntry.noViommu ? nil : viommu,
                                     key: StatKey(rawValue: key), value: value))
        }
        self.init(entries: entries)
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(UInt32(clamping: entries.count))
        w.u32(0)
        for (i, e) in entries.enumerated() {
            guard e.viommu != StatEntry.noViommu else {
                throw .badField(w.type, offset: Self.fixedLength + i * Self.entrySize + 4, value: 0xFFFF,
                                "viommu 0xFFFF is VSMMU_STAT_NO_VIOMMU: use nil")
            }
            w.u32(e.vsmmu.wireValue)
            w.u16(e.viommu ?? StatEntry.noViommu)
            w.u16(e.key.rawValue)
            w.u64(e.value)
        }
    }
}
