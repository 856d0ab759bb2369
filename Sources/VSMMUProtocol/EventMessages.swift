import SMMUv3

// The guest's event queue (protocol version 5, PROTOCOL.md §5.17, §5.18, §6.4, §9): the requests that map
// and unmap it, SIMULATE_DMA (the admin request that makes a simulated device fault), and the layout of the
// event queue's memory.

/// MAP_EVENT_QUEUE (`struct vsmmu_map_event_queue`, 16 bytes, version 5): the vSMMU's event queue
/// (`PROTOCOL.md` §5.17, §9). The frame carries `FD_ATTACHED` and two fds in one `SCM_RIGHTS` message: the
/// memfd and the call eventfd (daemon → VMM). Reply: ``EventQueueMapped``.
public struct MapEventQueue: Hashable, Sendable {
    public var vsmmu: VSMMUID
    /// The queue holds 2^`log2Entries` event slots (``EventQueueLayout/log2EntriesRange``).
    public var log2Entries: UInt32
    public init(vsmmu: VSMMUID, log2Entries: UInt32) {
        self.vsmmu = vsmmu
        self.log2Entries = log2Entries
    }
}

extension MapEventQueue: PayloadCoding {
    static let fixedLength = 16
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32(), log2 = r.u32(), flags = r.u32()
        let range = EventQueueLayout.log2EntriesRange
        guard range.contains(Int(log2)) else {
            throw .badField(r.type, offset: 4, value: UInt64(log2),
                            "log2_entries \(log2) is outside \(range.lowerBound)...\(range.upperBound)")
        }
        guard flags == 0 else {
            throw .badField(r.type, offset: 8, value: UInt64(flags), "MAP_EVENT_QUEUE flags 0x\(hex(flags)): none is defined")
        }
        try r.reserved32()
        self.init(vsmmu: VSMMUID(id), log2Entries: log2)
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(log2Entries)
        w.u32(0)
        w.u32(0)
    }
}

/// MAP_EVENT_QUEUE's reply (`struct vsmmu_map_event_queue_reply`, 8 bytes): the PROD at which the daemon
/// writes its next event, in the form of §9.1 (index, wrap bit and OVFLG).
public struct EventQueueMapped: Hashable, Sendable {
    public var producer: UInt32
    public init(producer: UInt32) { self.producer = producer }
}

extension EventQueueMapped: PayloadCoding {
    static let fixedLength = 8
    init(from r: inout WireReader) throws(ProtocolError) {
        let prod = r.u32()
        try r.reserved32()
        self.init(producer: prod)
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(producer)
        w.u32(0)
    }
}

/// UNMAP_EVENT_QUEUE (`struct vsmmu_unmap_event_queue`, 8 bytes, version 5): stop writing the vSMMU's event
/// queue and unmap it (`PROTOCOL.md` §5.18). Reply: empty.
public struct UnmapEventQueue: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public init(vsmmu: VSMMUID) { self.vsmmu = vsmmu }
}

extension UnmapEventQueue: PayloadCoding {
    static let fixedLength = 8
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32()
        try r.reserved32()
        self.init(vsmmu: VSMMUID(id))
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(0)
    }
}

/// SIMULATE_DMA's `walk`: what the guest's stage-1 tables hold for the accessed address. The VMM owns the
/// guest's memory, so it says what a table walk finds (PROTOCOL.md §6.4). The values are those of the
/// backend seam's `StageOneWalk`.
public enum DMAWalk: UInt32, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// No valid descriptor: F_TRANSLATION. The corresponding C constant is `VSMMU_DMA_WALK_UNMAPPED` (0).
    case unmapped = 0
    /// A valid read-write descriptor. The corresponding C constant is `VSMMU_DMA_WALK_READ_WRITE` (1).
    case readWrite = 1
    /// A valid read-only descriptor: a write is F_PERMISSION. The corresponding C constant is
    /// `VSMMU_DMA_WALK_READ_ONLY` (2).
    case readOnly = 2
    /// A descriptor with its access flag clear: F_ACCESS. The corresponding C constant is
    /// `VSMMU_DMA_WALK_ACCESS_FLAG_CLEAR` (3).
    case accessFlagClear = 3
    /// An output address beyond the SMMU's OAS: F_ADDR_SIZE. The corresponding C constant is
    /// `VSMMU_DMA_WALK_OUTPUT_TOO_LARGE` (4).
    case outputTooLarge = 4

    /// The `vsmmu.h` name without `VSMMU_DMA_WALK_`.
    public var description: String {
        switch self {
        case .unmapped: return "UNMAPPED"
        case .readWrite: return "READ_WRITE"
        case .readOnly: return "READ_ONLY"
        case .accessFlagClear: return "ACCESS_FLAG_CLEAR"
        case .outputTooLarge: return "OUTPUT_TOO_LARGE"
        }
    }
}

/// SIMULATE_DMA (`struct vsmmu_simulate_dma`, 40 bytes, version 5, admin range): one access of a simulated
/// device, by its vSID, on a vSMMU the connection owns (`PROTOCOL.md` §6.4). The one admin request that
/// changes state: it fills the simulated caches, and a fault raises an event into the event queue.
/// Reply: ``DMASimulated``.
public struct SimulateDMA: Hashable, Sendable {
    public var vsmmu: VSMMUID
    /// The device, by the guest's StreamID.
    public var streamID: StreamID
    /// The access's SubstreamID (PASID), `nil` for none (`VSMMU_DMA_SSID_VALID` clear, `ssid` 0).
    public var substreamID: SubstreamID?
    /// A write (`VSMMU_DMA_WRITE`), else a read.
    public var write: Bool
    /// An ATS translation request (`VSMMU_DMA_ATS`), else an untranslated transaction.
    public var throughATS: Bool
    /// The input address (IOVA).
    public var address: UInt64
    /// The size of the mapping that holds `address`: a power of two of at least 4096.
    public var size: UInt64
    /// What a walk of the guest's stage-1 tables finds for `address`.
    public var walk: DMAWalk

    public init(vsmmu: VSMMUID, streamID: StreamID, substreamID: SubstreamID? = nil, write: Bool = false,
                throughATS: Bool = false, address: UInt64, size: UInt64 = 4096, walk: DMAWalk) {
        self.vsmmu = vsmmu
        self.streamID = streamID
        self.substreamID = substreamID
        self.write = write
        self.throughATS = throughATS
        self.address = address
        self.size = size
        self.walk = walk
    }

    /// `flags` bit 0: the access writes. The corresponding C constant is `VSMMU_DMA_WRITE`.
    public static let writeFlag: UInt32 = 1 << 0
    /// `flags` bit 1: `ssid` is valid. The corresponding C constant is `VSMMU_DMA_SSID_VALID`.
    public static let substreamValidFlag: UInt32 = 1 << 1
    /// `flags` bit 2: an ATS translation request. The corresponding C constant is `VSMMU_DMA_ATS`.
    public static let atsFlag: UInt32 = 1 << 2
    /// The smallest `size`: one 4 KiB page. The corresponding C constant is `VSMMU_DMA_MIN_SIZE`.
    public static let minimumSize: UInt64 = 4096
    /// SubstreamIDs are 20 bits wide (SMMUv3 SSIDSIZE ≤ 20).
    public static let substreamIDLimit: UInt32 = 1 << 20

    var flags: UInt32 {
        (write ? Self.writeFlag : 0) | (substreamID != nil ? Self.substreamValidFlag : 0) | (throughATS ? Self.atsFlag : 0)
    }
}

extension SimulateDMA: PayloadCoding {
    static let fixedLength = 40
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32(), vsid = r.u32(), ssid = r.u32()
        let flags = try r.flags32(known: Self.writeFlag | Self.substreamValidFlag | Self.atsFlag)
        let address = r.u64(), size = r.u64(), walkValue = r.u32()
        let substreamValid = flags & Self.substreamValidFlag != 0
        guard substreamValid ? ssid < Self.substreamIDLimit : ssid == 0 else {
            throw .badField(r.type, offset: 8, value: UInt64(ssid), substreamValid
                ? "ssid 0x\(hex(ssid)) is wider than 20 bits"
                : "ssid 0x\(hex(ssid)) without VSMMU_DMA_SSID_VALID: it must be 0")
        }
        guard size >= Self.minimumSize, size.nonzeroBitCount == 1 else {
            throw .badField(r.type, offset: 24, value: size, "size 0x\(hex(size)) is not a power of two of at least 4096")
        }
        guard let walk = DMAWalk(rawValue: walkValue) else {
            throw .badField(r.type, offset: 32, value: UInt64(walkValue), "walk \(walkValue) is not 0...4")
        }
        try r.reserved32()
        self.init(vsmmu: VSMMUID(id), streamID: vsid, substreamID: substreamValid ? ssid : nil,
                  write: flags & Self.writeFlag != 0, throughATS: flags & Self.atsFlag != 0,
                  address: address, size: size, walk: walk)
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(streamID)
        w.u32(substreamID ?? 0)
        w.u32(flags)
        w.u64(address)
        w.u64(size)
        w.u32(walk.rawValue)
        w.u32(0)
    }
}

/// What a simulated access did (SIMULATE_DMA's reply `outcome`), with the event record of a fault.
public enum SimulatedDMAOutcome: Hashable, Sendable, CustomStringConvertible {
    /// Served by the device's ATC. The corresponding C constant is `VSMMU_DMA_ATC_HIT` (1).
    case atcHit
    /// Translated by a TLB entry already cached. The corresponding C constant is `VSMMU_DMA_TLB_HIT` (2).
    case tlbHit
    /// Translated after a walk, which filled a TLB entry. The corresponding C constant is `VSMMU_DMA_TLB_FILL` (3).
    case tlbFill
    /// Stage 1 bypassed. The corresponding C constant is `VSMMU_DMA_BYPASSED` (4).
    case bypassed
    /// Aborted without an event (CONFIG = abort). The corresponding C constant is `VSMMU_DMA_ABORTED` (5).
    case aborted
    /// Faulted: the event record as the guest sees it (StreamID = the vSID). The corresponding C constant
    /// is `VSMMU_DMA_FAULT` (6).
    case fault(EventRecord)

    /// The wire value of `outcome`.
    public var code: UInt32 {
        switch self {
        case .atcHit: return 1
        case .tlbHit: return 2
        case .tlbFill: return 3
        case .bypassed: return 4
        case .aborted: return 5
        case .fault: return 6
        }
    }

    /// The event record of a fault.
    public var event: EventRecord? {
        if case .fault(let record) = self { return record }
        return nil
    }

    /// The `vsmmu.h` name without `VSMMU_DMA_` (a fault with its event type: `FAULT F_TRANSLATION`).
    public var description: String {
        switch self {
        case .atcHit: return "ATC_HIT"
        case .tlbHit: return "TLB_HIT"
        case .tlbFill: return "TLB_FILL"
        case .bypassed: return "BYPASSED"
        case .aborted: return "ABORTED"
        case .fault(let record): return "FAULT \(record.id)"
        }
    }
}

/// SIMULATE_DMA's reply (`struct vsmmu_simulate_dma_reply`, 40 bytes): the outcome, and for a fault the
/// 32-byte event record as the guest sees it (zeros otherwise).
public struct DMASimulated: Hashable, Sendable {
    public var outcome: SimulatedDMAOutcome
    public init(outcome: SimulatedDMAOutcome) { self.outcome = outcome }
}

extension DMASimulated: PayloadCoding {
    static let fixedLength = 40
    /// Offset of the event record in the reply.
    static let eventOffset = 8
    init(from r: inout WireReader) throws(ProtocolError) {
        let code = r.u32()
        try r.reserved32()
        var record = EventRecord()
        r.words(into: &record)
        switch code {
        case 6:
            self.init(outcome: .fault(record))
        case 1...5:
            guard record == EventRecord() else {
                throw .badField(r.type, offset: Self.eventOffset, value: record.w0,
                                "outcome \(code) is not FAULT: its event record must be zero")
            }
            let outcomes: [SimulatedDMAOutcome] = [.atcHit, .tlbHit, .tlbFill, .bypassed, .aborted]
            self.init(outcome: outcomes[Int(code) - 1])
        default:
            throw .badField(r.type, offset: 0, value: UInt64(code), "outcome \(code) is not 1...6")
        }
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(outcome.code)
        w.u32(0)
        w.words(outcome.event ?? EventRecord())
    }
}

/// The memory of a vSMMU's event queue (`PROTOCOL.md` §9.1, `struct vsmmu_event_queue_header` and
/// `struct vsmmu_event_slot`): one home for every offset and constant, which the daemon's producer and the
/// clients' consumers use and `CHeaderTests` pins against `vsmmu.h`.
///
/// Each field has one writer and each writer's fields sit on cache lines of their own. PROD and CONS are
/// in SMMUv3 EVTQ form: bits [n−1:0] the slot index, bit n the wrap bit, bit 31 the overflow flag (OVFLG
/// in PROD, OVACKFLG in CONS), no other bit set.
public enum EventQueueLayout {
    /// The configuration line's magic, the bytes `"VSME"`. The corresponding C constant is
    /// `VSMMU_EVENT_QUEUE_MAGIC`.
    public static let magic: UInt32 = 0x454D_5356
    /// The layout's version. The corresponding C constant is `VSMMU_EVENT_QUEUE_VERSION`.
    public static let version: UInt16 = 1
    /// Accepted `log2_entries`. The corresponding C constants are `VSMMU_EVENT_QUEUE_MIN_LOG2_ENTRIES` and
    /// `VSMMU_EVENT_QUEUE_MAX_LOG2_ENTRIES`.
    public static let log2EntriesRange: ClosedRange<Int> = 4...12
    /// Where the slots start: the header's size. The corresponding C constant is
    /// `VSMMU_EVENT_QUEUE_SLOTS_OFFSET`.
    public static let slotsOffset = 0x1000
    /// The size of a slot. The corresponding C constant is `VSMMU_EVENT_SLOT_SIZE`.
    public static let slotSize = 64
    /// The cache line each writer's fields sit on (as the command queue's, `VSMMU_QUEUE_LINE_SIZE`).
    public static let lineSize = SharedQueueLayout.lineSize
    /// PROD's bit 31, OVFLG, and CONS's bit 31, OVACKFLG (SMMUv3 `EVTQ_PROD.OVFLG`, `EVTQ_CONS.OVACKFLG`).
    /// The corresponding C constant is `VSMMU_EVENT_QUEUE_OVERFLOW`.
    public static let overflowFlag: UInt32 = 1 << 31

    // Header field offsets (`offsetof(struct vsmmu_event_queue_header, …)`).
    /// `u32 magic` (VMM, before MAP_EVENT_QUEUE).
    public static let magicOffset = 0x000
    /// `u16 version` (VMM, before MAP_EVENT_QUEUE).
    public static let versionOffset = 0x004
    /// `u8 log2_entries` (VMM, before MAP_EVENT_QUEUE).
    public static let log2EntriesOffset = 0x006
    /// `u32 prod` (daemon): index, wrap, OVFLG.
    public static let prodOffset = 0x040
    /// `u32 cons` (VMM): index, wrap, OVACKFLG.
    public static let consOffset = 0x080
    /// `u32 state` (daemon), ``State``.
    public static let stateOffset = 0x0C0
    /// `u32 vmm_sleeping` (VMM).
    public static let vmmSleepingOffset = 0x100

    // Slot field offsets (`offsetof(struct vsmmu_event_slot, …)`).
    /// `u64 record[4]`: the 32-byte SMMUv3 event record, StreamID = the guest's vSID.
    public static let slotRecordOffset = 0x00
    /// `u64 sequence`: the vSMMU's event sequence number (first event 1).
    public static let slotSequenceOffset = 0x20
    /// `u32 vsmmu_id`.
    public static let slotVSMMUOffset = 0x28
    /// `u32 viommu_id`: the protocol's viommu index.
    public static let slotViommuOffset = 0x2C
    /// `u32 flags`: ``lostBeforeFlag``.
    public static let slotFlagsOffset = 0x30
    /// Slot `flags` bit 0: events were lost just before this one (the queue was full, or the kernel reported
    /// LOST_EVENTS). The corresponding C constant is `VSMMU_EVENT_LOST_BEFORE`.
    public static let lostBeforeFlag: UInt32 = 1 << 0

    /// `state`: the command queue's constants (`VSMMU_QUEUE_STATE_*`, §8.1), one home for both queues.
    public typealias State = SharedQueueLayout.State

    /// The bytes a queue of 2^`log2Entries` slots needs: the header and the slots.
    public static func requiredSize(log2Entries: Int) -> Int { slotsOffset + slotSize << log2Entries }

    /// The bits of PROD or CONS that may be set for a queue of 2^`log2Entries` slots: index, wrap and bit 31.
    public static func validBits(log2Entries: Int) -> UInt32 { (UInt32(2 << log2Entries) - 1) | overflowFlag }
}
