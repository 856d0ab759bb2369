/// MAP_QUEUE (`struct vsmmu_map_queue`, 16 bytes, version 4): the vSMMU's shared command queue
/// (`PROTOCOL.md` §5.15, §8). The frame carries `FD_ATTACHED` and three fds in one `SCM_RIGHTS` message:
/// the memfd, the kick eventfd and the call eventfd. Reply: ``QueueMapped``.
public struct MapQueue: Hashable, Sendable {
    public var vsmmu: VSMMUID
    /// The queue holds 2^`log2Entries` commands (``SharedQueueLayout/log2EntriesRange``).
    public var log2Entries: UInt32
    public init(vsmmu: VSMMUID, log2Entries: UInt32) {
        self.vsmmu = vsmmu
        self.log2Entries = log2Entries
    }
}

extension MapQueue: PayloadCoding {
    static let fixedLength = 16
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32(), log2 = r.u32(), flags = r.u32()
        guard SharedQueueLayout.log2EntriesRange.contains(Int(log2)) else {
            throw .badField(r.type, offset: 4, value: UInt64(log2),
                            "log2_entries \(log2) is outside \(SharedQueueLayout.log2EntriesRange.lowerBound)...\(SharedQueueLayout.log2EntriesRange.upperBound)")
        }
        guard flags == 0 else { throw .badField(r.type, offset: 8, value: UInt64(flags), "MAP_QUEUE flags 0x\(hex(flags)): none is defined") }
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

/// MAP_QUEUE's reply (`struct vsmmu_map_queue_reply`, 8 bytes): the CONS the daemon starts consuming from,
/// in SMMUv3 form.
public struct QueueMapped: Hashable, Sendable {
    public var consumer: UInt32
    public init(consumer: UInt32) { self.consumer = consumer }
}

extension QueueMapped: PayloadCoding {
    static let fixedLength = 8
    init(from r: inout WireReader) throws(ProtocolError) {
        let cons = r.u32()
        try r.reserved32()
        self.init(consumer: cons)
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(consumer)
        w.u32(0)
    }
}

/// UNMAP_QUEUE (`struct vsmmu_unmap_queue`, 8 bytes, version 4): stop consuming the vSMMU's shared queue
/// and unmap it (`PROTOCOL.md` §5.16). Reply: empty.
public struct UnmapQueue: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public init(vsmmu: VSMMUID) { self.vsmmu = vsmmu }
}

extension UnmapQueue: PayloadCoding {
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

/// The memory of a shared command queue (`PROTOCOL.md` §8.1, `struct vsmmu_queue_header`): one home for
/// every offset and constant, which the daemon's consumer and the Swift client's producer both use and
/// `CHeaderTests` pins against `vsmmu.h`.
///
/// Each field has one writer and each writer's fields sit on cache lines of their own. PROD and CONS are
/// in SMMUv3 form: bits [n−1:0] the slot index, bit n the wrap bit, no other bit set.
public enum SharedQueueLayout {
    /// The configuration line's magic, the bytes `"VSMQ"`. The corresponding C constant is `VSMMU_QUEUE_MAGIC`.
    public static let magic: UInt32 = 0x514D_5356
    /// The layout's version. The corresponding C constant is `VSMMU_QUEUE_VERSION`.
    public static let version: UInt16 = 1
    /// Accepted `log2_entries`. The corresponding C constants are `VSMMU_QUEUE_MIN_LOG2_ENTRIES` and
    /// `VSMMU_QUEUE_MAX_LOG2_ENTRIES`.
    public static let log2EntriesRange: ClosedRange<Int> = 8...16
    /// Where the slots start: the header's size. The corresponding C constant is `VSMMU_QUEUE_SLOTS_OFFSET`.
    public static let slotsOffset = 0x1000
    /// The size of a slot: one 16-byte command.
    public static let slotSize = 16
    /// The cache line each writer's fields sit on. The corresponding C constant is `VSMMU_QUEUE_LINE_SIZE`.
    public static let lineSize = 64

    // Field offsets (`offsetof(struct vsmmu_queue_header, …)`).
    /// `u32 magic` (VMM, before MAP_QUEUE).
    public static let magicOffset = 0x000
    /// `u16 version` (VMM, before MAP_QUEUE).
    public static let versionOffset = 0x004
    /// `u8 log2_entries` (VMM, before MAP_QUEUE).
    public static let log2EntriesOffset = 0x006
    /// `u32 prod` (VMM).
    public static let prodOffset = 0x040
    /// `u32 cons` (daemon).
    public static let consOffset = 0x080
    /// `u32 error_sequence` (daemon).
    public static let errorSequenceOffset = 0x0C0
    /// `u8 cerror` (daemon).
    public static let cerrorOffset = 0x0C4
    /// `u8 error_kind` (daemon).
    public static let errorKindOffset = 0x0C5
    /// `u32 error_cons` (daemon).
    public static let errorConsOffset = 0x0C8
    /// `u32 state` (daemon).
    public static let stateOffset = 0x0CC
    /// `u32 error_ack` (VMM).
    public static let errorAckOffset = 0x100
    /// `u32 daemon_sleeping` (daemon).
    public static let daemonSleepingOffset = 0x140
    /// `u32 vmm_sleeping` (VMM).
    public static let vmmSleepingOffset = 0x180

    /// The bytes a queue of 2^`log2Entries` slots needs: the header and the slots.
    public static func requiredSize(log2Entries: Int) -> Int { slotsOffset + slotSize << log2Entries }

    /// `error_kind`: what stopped the queue.
    public enum ErrorKind: UInt8, Sendable {
        /// The command at `error_cons` failed with `cerror`. The corresponding C constant is `VSMMU_QUEUE_ERROR_COMMAND`.
        case command = 1
        /// PROD was not a valid index for this queue. The corresponding C constant is `VSMMU_QUEUE_ERROR_PROD`.
        case producer = 2
    }

    /// `state`: whether the daemon consumes.
    public enum State: UInt32, Sendable {
        /// The VMM's initial value. The corresponding C constant is `VSMMU_QUEUE_STATE_UNMAPPED`.
        case unmapped = 0
        /// The daemon consumes. The corresponding C constant is `VSMMU_QUEUE_STATE_RUNNING`.
        case running = 1
        /// The daemon stopped consuming (unmapped, vSMMU destroyed, connection closed). The corresponding C
        /// constant is `VSMMU_QUEUE_STATE_STOPPED`.
        case stopped = 2
    }
}
