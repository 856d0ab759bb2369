import Atomics
import SMMUv3
import VSMMUProtocol

// Concurrency notes (PROTOCOL.md §9).
//
// The region is memory shared with another process, which may be hostile (the VMM, seen from the daemon;
// the daemon, seen from a careful VMM) or simply buggy. Every access below is a single atomic load or store
// of a naturally aligned u32 or u64, so that a concurrent write by the peer is never undefined behaviour
// here: at worst the value read is garbage, which the caller checks. Nothing keeps a pointer into the
// region past one access, and nothing reads a field twice expecting the same value: a caller reads each
// field once into a local. A slot is addressed through its position's index only, which the geometry
// masks: no value read from the memory can make an access fall outside the slots.
//
// Orderings: the daemon writes a slot (relaxed stores) and then PROD with release; the VMM loads PROD with
// acquire and then copies the slots before it, then stores CONS with release (the daemon, which loads CONS
// with acquire, may reuse those slots after that). The sleep flag follows the Dekker pattern: the VMM
// stores `vmm_sleeping` = 1, issues ``EventQueueRegion/fullFence()``, then re-reads PROD and `state`; the
// daemon stores PROD or `state`, issues the fence, then reads `vmm_sleeping`. One of the two always sees
// the other's store.

/// The geometry of an event queue of 2^n slots: positions in SMMUv3 EVTQ form (bits [n−1:0] the index,
/// bit n the wrap bit, bit 31 the overflow flag) and their arithmetic.
public struct EventQueueGeometry: Hashable, Sendable {
    /// n: the queue holds 2^n events.
    public let log2Entries: Int

    /// A geometry for 2^`log2Entries` slots, or `nil` outside ``EventQueueLayout/log2EntriesRange``.
    public init?(log2Entries: Int) {
        guard EventQueueLayout.log2EntriesRange.contains(log2Entries) else { return nil }
        self.log2Entries = log2Entries
    }

    /// 2^n.
    @inlinable public var entries: UInt32 { 1 << UInt32(log2Entries) }
    /// The index bits.
    @inlinable public var indexMask: UInt32 { entries &- 1 }
    /// The index and the wrap bit.
    @inlinable public var positionMask: UInt32 { (entries << 1) &- 1 }
    /// Every bit PROD or CONS may have: the position and bit 31.
    @inlinable public var validBits: UInt32 { positionMask | EventQueueLayout.overflowFlag }

    /// Whether `value` (a PROD or a CONS) has no bit but the position's and bit 31.
    @inlinable public func isValid(_ value: UInt32) -> Bool { value & ~validBits == 0 }
    /// The position of a PROD or CONS: index and wrap bit, without the overflow flag.
    @inlinable public func position(of value: UInt32) -> UInt32 { value & positionMask }
    /// The overflow flag of a PROD (OVFLG) or a CONS (OVACKFLG).
    @inlinable public func overflowFlag(of value: UInt32) -> Bool { value & EventQueueLayout.overflowFlag != 0 }
    /// The slot of a PROD or CONS.
    @inlinable public func index(of value: UInt32) -> Int { Int(value & indexMask) }
    /// Events from `consumer` up to `producer` (their positions, mod 2^(n+1)); more than ``entries`` means
    /// the pair is impossible.
    @inlinable public func distance(from consumer: UInt32, to producer: UInt32) -> UInt32 {
        (producer &- consumer) & positionMask
    }
    /// `value`'s position moved on by `count` slots (wrap bit flipping as the index wraps), its overflow
    /// flag kept.
    @inlinable public func advance(_ value: UInt32, by count: UInt32) -> UInt32 {
        (value & EventQueueLayout.overflowFlag) | ((value &+ count) & positionMask)
    }

    /// The bytes the memory must hold: the header and the slots.
    public var requiredSize: Int { EventQueueLayout.requiredSize(log2Entries: log2Entries) }
}

/// One slot of the event queue (`struct vsmmu_event_slot`), as copied out of the memory.
public struct EventQueueEntry: Hashable, Sendable, CustomStringConvertible {
    /// The SMMUv3 event record, StreamID = the guest's vSID.
    public var record: EventRecord
    /// The vSMMU's event sequence number (first event 1; a gap: events dropped while the queue was mapped).
    public var sequence: UInt64
    /// `vsmmu_id`.
    public var vsmmu: UInt32
    /// `viommu_id`: the index of the viommu whose pSMMU raised the event.
    public var viommu: UInt32
    /// `flags` (``EventQueueLayout/lostBeforeFlag``; other bits are what a peer wrote).
    public var flags: UInt32

    public init(record: EventRecord, sequence: UInt64, vsmmu: UInt32, viommu: UInt32, flags: UInt32 = 0) {
        self.record = record
        self.sequence = sequence
        self.vsmmu = vsmmu
        self.viommu = viommu
        self.flags = flags
    }

    /// Events were lost just before this one (the queue was full, or the kernel reported LOST_EVENTS).
    public var lostBefore: Bool { flags & EventQueueLayout.lostBeforeFlag != 0 }

    public var description: String {
        "event #\(sequence) vsmmu \(vsmmu) viommu \(viommu) \(record.id) sid 0x\(String(record.streamID, radix: 16))"
            + (lostBefore ? " (lost before)" : "")
    }
}

/// A typed view of a mapped event queue (`struct vsmmu_event_queue_header` and its slots): one accessor per
/// field, each a single atomic access with the ordering PROTOCOL.md §9 gives it. It owns nothing: the
/// mapping's owner keeps it alive while a view is in use.
public struct EventQueueRegion: @unchecked Sendable {
    /// The start of the mapping (the header).
    public let base: UnsafeMutableRawPointer
    public let geometry: EventQueueGeometry

    /// A view of `length` bytes at `base` for a queue of `geometry`, or `nil` when the bytes are too few
    /// for its slots or `base` is not 64-byte aligned (an `mmap` result always is).
    public init?(base: UnsafeMutableRawPointer, length: Int, geometry: EventQueueGeometry) {
        guard length >= geometry.requiredSize, Int(bitPattern: base) % EventQueueLayout.lineSize == 0 else { return nil }
        self.base = base
        self.geometry = geometry
    }

    @inline(__always) private func u32(_ offset: Int) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (base + offset).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
    }
    @inline(__always) private func u64(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (base + offset).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }

    /// A sequentially consistent fence: between the VMM's store of `vmm_sleeping` and its re-read of PROD,
    /// and between the daemon's store of PROD or `state` and its read of `vmm_sleeping` (§9.5).
    @inline(__always) public static func fullFence() { atomicMemoryFence(ordering: .sequentiallyConsistent) }

    // MARK: The configuration line (VMM, before MAP_EVENT_QUEUE)

    /// `magic`, `version` and `log2_entries`, as stored now (read once, when the daemon maps).
    public func loadConfiguration() -> (magic: UInt32, version: UInt16, log2Entries: UInt8) {
        let magic = u32(EventQueueLayout.magicOffset).load(ordering: .relaxed)
        let word = u32(EventQueueLayout.versionOffset).load(ordering: .relaxed) // version u16, log2 u8, reserved u8
        return (magic, UInt16(truncatingIfNeeded: word), UInt8(truncatingIfNeeded: word >> 16))
    }

    /// Zeroes the header and writes the configuration line for ``geometry`` with PROD = CONS = 0: what a
    /// VMM does before MAP_EVENT_QUEUE of a new queue (§9.1).
    public func initialise() {
        base.initializeMemory(as: UInt8.self, repeating: 0, count: EventQueueLayout.slotsOffset)
        u32(EventQueueLayout.magicOffset).store(EventQueueLayout.magic, ordering: .relaxed)
        u32(EventQueueLayout.versionOffset).store(UInt32(EventQueueLayout.version) | UInt32(geometry.log2Entries) << 16,
                                                  ordering: .releasing)
    }

    // MARK: The daemon's fields

    /// PROD, with acquire: the slots before it are visible.
    @inline(__always) public func loadProducer() -> UInt32 { u32(EventQueueLayout.prodOffset).load(ordering: .acquiring) }
    /// Publishes PROD with release, after the slots before it were written.
    @inline(__always) public func storeProducer(_ value: UInt32) { u32(EventQueueLayout.prodOffset).store(value, ordering: .releasing) }
    /// `state` (``EventQueueLayout/State``'s raw value; anything else is what a peer wrote).
    @inline(__always) public func loadState() -> UInt32 { u32(EventQueueLayout.stateOffset).load(ordering: .acquiring) }
    @inline(__always) public func storeState(_ state: EventQueueLayout.State) {
        u32(EventQueueLayout.stateOffset).store(state.rawValue, ordering: .releasing)
    }

    /// Writes `entry` into the slot of `position` (relaxed stores, reserved bytes zeroed; published by a later
    /// ``storeProducer(_:)``).
    public func storeEntry(_ entry: EventQueueEntry, at position: UInt32) {
        let slot = EventQueueLayout.slotsOffset + geometry.index(of: position) * EventQueueLayout.slotSize
        for i in 0..<EventRecord.wordCount {
            u64(slot + EventQueueLayout.slotRecordOffset + 8 * i).store(entry.record.word(i), ordering: .relaxed)
        }
        u64(slot + EventQueueLayout.slotSequenceOffset).store(entry.sequence, ordering: .relaxed)
        u32(slot + EventQueueLayout.slotVSMMUOffset).store(entry.vsmmu, ordering: .relaxed)
        u32(slot + EventQueueLayout.slotViommuOffset).store(entry.viommu, ordering: .relaxed)
        u32(slot + EventQueueLayout.slotFlagsOffset).store(entry.flags, ordering: .relaxed)
        var reserved = EventQueueLayout.slotFlagsOffset + 4
        while reserved < EventQueueLayout.slotSize {
            u32(slot + reserved).store(0, ordering: .relaxed)
            reserved += 4
        }
    }

    // MARK: The VMM's fields

    /// CONS, with acquire (the VMM copied the slots before it).
    @inline(__always) public func loadConsumer() -> UInt32 { u32(EventQueueLayout.consOffset).load(ordering: .acquiring) }
    /// Publishes CONS with release, after the slots before it were copied.
    @inline(__always) public func storeConsumer(_ value: UInt32) { u32(EventQueueLayout.consOffset).store(value, ordering: .releasing) }
    /// `vmm_sleeping`.
    @inline(__always) public func loadVMMSleeping() -> UInt32 { u32(EventQueueLayout.vmmSleepingOffset).load(ordering: .relaxed) }
    @inline(__always) public func storeVMMSleeping(_ value: UInt32) {
        u32(EventQueueLayout.vmmSleepingOffset).store(value, ordering: .relaxed)
    }

    /// The slot of `position`, copied out (relaxed loads, each field once: a slot the daemon is rewriting
    /// reads as some entry, which the caller treats like any other).
    public func loadEntry(at position: UInt32) -> EventQueueEntry {
        let slot = EventQueueLayout.slotsOffset + geometry.index(of: position) * EventQueueLayout.slotSize
        var record = EventRecord()
        for i in 0..<EventRecord.wordCount {
            record.setWord(i, u64(slot + EventQueueLayout.slotRecordOffset + 8 * i).load(ordering: .relaxed))
        }
        return EventQueueEntry(record: record, sequence: u64(slot + EventQueueLayout.slotSequenceOffset).load(ordering: .relaxed),
                               vsmmu: u32(slot + EventQueueLayout.slotVSMMUOffset).load(ordering: .relaxed),
                               viommu: u32(slot + EventQueueLayout.slotViommuOffset).load(ordering: .relaxed),
                               flags: u32(slot + EventQueueLayout.slotFlagsOffset).load(ordering: .relaxed))
    }
}
