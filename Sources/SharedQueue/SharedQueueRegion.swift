import Atomics
import SMMUv3
import VSMMUProtocol

// Concurrency notes (PROTOCOL.md §8).
//
// The region is memory shared with another process, which may be hostile (the VMM, seen from the daemon)
// or simply buggy. Every access below is a single atomic load or store of a naturally aligned u8, u32 or
// u64, so that a concurrent write by the peer is never undefined behaviour here: at worst the value read is
// garbage, which the caller checks. Nothing here keeps a pointer into the region past one access, and
// nothing reads a field twice expecting the same value: a caller reads each field once into a local.
//
// Orderings: the writer of PROD (slots before it), CONS and `error_sequence` (the error record before
// it), and `error_ack` stores with release; the reader loads with acquire. The sleep flags follow the
// Dekker pattern: a side stores its flag, issues ``SharedQueueRegion/fullFence()``, then re-reads the
// peer's index; the peer stores its index, issues the fence, then reads the flag. One of the two always
// sees the other's store.

/// The geometry of a shared queue of 2^n slots: positions in SMMUv3 form (bits [n−1:0] the index, bit n
/// the wrap bit) and their arithmetic.
public struct SharedQueueGeometry: Hashable, Sendable {
    /// n: the queue holds 2^n commands.
    public let log2Entries: Int

    /// A geometry for 2^`log2Entries` slots, or `nil` outside ``SharedQueueLayout/log2EntriesRange``.
    public init?(log2Entries: Int) {
        guard SharedQueueLayout.log2EntriesRange.contains(log2Entries) else { return nil }
        self.log2Entries = log2Entries
    }

    /// 2^n.
    @inlinable public var entries: UInt32 { 1 << UInt32(log2Entries) }
    /// The index bits.
    @inlinable public var indexMask: UInt32 { entries &- 1 }
    /// The index and the wrap bit: every bit a valid position may have.
    @inlinable public var positionMask: UInt32 { (entries << 1) &- 1 }

    /// Whether `position` has no bit above the wrap bit.
    @inlinable public func isValid(_ position: UInt32) -> Bool { position & ~positionMask == 0 }
    /// The slot of a position.
    @inlinable public func index(of position: UInt32) -> Int { Int(position & indexMask) }
    /// Commands from `consumer` up to `producer` (mod 2^(n+1)); more than ``entries`` means the pair is
    /// impossible (a bad PROD). Meaningful for valid positions only.
    @inlinable public func distance(from consumer: UInt32, to producer: UInt32) -> UInt32 {
        (producer &- consumer) & positionMask
    }
    /// `position` moved on by `count` slots, wrap bit flipping as the index wraps.
    @inlinable public func advance(_ position: UInt32, by count: UInt32) -> UInt32 { (position &+ count) & positionMask }

    /// The bytes the memory must hold: the header and the slots.
    public var requiredSize: Int { SharedQueueLayout.requiredSize(log2Entries: log2Entries) }
}

/// A typed view of a mapped shared queue (`struct vsmmu_queue_header` and its slots): one accessor per
/// field, each a single atomic access with the ordering PROTOCOL.md §8 gives it. It owns nothing: the
/// mapping's owner keeps it alive while a view is in use.
public struct SharedQueueRegion: @unchecked Sendable {
    /// The start of the mapping (the header).
    public let base: UnsafeMutableRawPointer
    public let geometry: SharedQueueGeometry

    /// A view of `length` bytes at `base` for a queue of `geometry`, or `nil` when the bytes are too few
    /// for its slots or `base` is not 64-byte aligned (an `mmap` result always is).
    public init?(base: UnsafeMutableRawPointer, length: Int, geometry: SharedQueueGeometry) {
        guard length >= geometry.requiredSize, Int(bitPattern: base) % SharedQueueLayout.lineSize == 0 else { return nil }
        self.base = base
        self.geometry = geometry
    }

    @inline(__always) private func u32(_ offset: Int) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (base + offset).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
    }
    @inline(__always) private func u8(_ offset: Int) -> UnsafeAtomic<UInt8> {
        UnsafeAtomic(at: (base + offset).assumingMemoryBound(to: UInt8.AtomicRepresentation.self))
    }
    @inline(__always) private func u64(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (base + offset).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }

    /// A sequentially consistent fence: between a side's store of its sleep flag and its re-read of the
    /// peer's index, and between a side's store of its index and its read of the peer's flag (§8.4).
    @inline(__always) public static func fullFence() { atomicMemoryFence(ordering: .sequentiallyConsistent) }

    // MARK: The configuration line (VMM, before MAP_QUEUE)

    /// `magic`, `version` and `log2_entries`, as stored now (read once, when the daemon maps).
    public func loadConfiguration() -> (magic: UInt32, version: UInt16, log2Entries: UInt8) {
        let magic = u32(SharedQueueLayout.magicOffset).load(ordering: .relaxed)
        let word = u32(SharedQueueLayout.versionOffset).load(ordering: .relaxed) // version u16, log2 u8, reserved u8
        return (magic, UInt16(truncatingIfNeeded: word), UInt8(truncatingIfNeeded: word >> 16))
    }

    /// Zeroes the header and writes the configuration line for ``geometry`` with PROD = CONS = 0: what a
    /// VMM does before MAP_QUEUE (§8.1).
    public func initialise() {
        (base).initializeMemory(as: UInt8.self, repeating: 0, count: SharedQueueLayout.slotsOffset)
        u32(SharedQueueLayout.magicOffset).store(SharedQueueLayout.magic, ordering: .relaxed)
        u32(SharedQueueLayout.versionOffset).store(UInt32(SharedQueueLayout.version) | UInt32(geometry.log2Entries) << 16,
                                                   ordering: .releasing)
    }

    // MARK: The VMM's fields

    /// PROD, with acquire: the slots before it are visible.
    @inline(__always) public func loadProducer() -> UInt32 { u32(SharedQueueLayout.prodOffset).load(ordering: .acquiring) }
    /// Publishes PROD with release, after the slots before it were written.
    @inline(__always) public func storeProducer(_ value: UInt32) { u32(SharedQueueLayout.prodOffset).store(value, ordering: .releasing) }
    /// `error_ack`, with acquire.
    @inline(__always) public func loadErrorAcknowledgement() -> UInt32 { u32(SharedQueueLayout.errorAckOffset).load(ordering: .acquiring) }
    /// Acknowledges an error (the guest's GERRORN), with release.
    @inline(__always) public func storeErrorAcknowledgement(_ value: UInt32) {
        u32(SharedQueueLayout.errorAckOffset).store(value, ordering: .releasing)
    }
    /// `vmm_sleeping`.
    @inline(__always) public func loadVMMSleeping() -> UInt32 { u32(SharedQueueLayout.vmmSleepingOffset).load(ordering: .relaxed) }
    @inline(__always) public func storeVMMSleeping(_ value: UInt32) { u32(SharedQueueLayout.vmmSleepingOffset).store(value, ordering: .relaxed) }

    /// The command in the slot of `position`, copied out (two relaxed 64-bit loads: a torn write reads as
    /// some command, which the consumer checks like any other).
    @inline(__always) public func loadCommand(at position: UInt32) -> Command {
        let offset = SharedQueueLayout.slotsOffset + geometry.index(of: position) * SharedQueueLayout.slotSize
        return Command(w0: u64(offset).load(ordering: .relaxed), w1: u64(offset + 8).load(ordering: .relaxed))
    }
    /// Writes `command` into the slot of `position` (the VMM; published by a later ``storeProducer(_:)``).
    @inline(__always) public func storeCommand(_ command: Command, at position: UInt32) {
        let offset = SharedQueueLayout.slotsOffset + geometry.index(of: position) * SharedQueueLayout.slotSize
        u64(offset).store(command.w0, ordering: .relaxed)
        u64(offset + 8).store(command.w1, ordering: .relaxed)
    }

    // MARK: The daemon's fields

    /// CONS, with acquire.
    @inline(__always) public func loadConsumer() -> UInt32 { u32(SharedQueueLayout.consOffset).load(ordering: .acquiring) }
    /// Publishes CONS with release.
    @inline(__always) public func storeConsumer(_ value: UInt32) { u32(SharedQueueLayout.consOffset).store(value, ordering: .releasing) }
    /// `error_sequence`, with acquire: the error record before it is visible.
    @inline(__always) public func loadErrorSequence() -> UInt32 { u32(SharedQueueLayout.errorSequenceOffset).load(ordering: .acquiring) }

    /// The error record (read after ``loadErrorSequence()`` saw a new sequence).
    public func loadErrorRecord() -> (cerror: UInt8, kind: UInt8, consumer: UInt32) {
        (u8(SharedQueueLayout.cerrorOffset).load(ordering: .relaxed), u8(SharedQueueLayout.errorKindOffset).load(ordering: .relaxed),
         u32(SharedQueueLayout.errorConsOffset).load(ordering: .relaxed))
    }

    /// Writes an error record and then `sequence` with release (§8.5). CONS is stored first by the caller.
    public func storeError(sequence: UInt32, cerror: UInt8, kind: SharedQueueLayout.ErrorKind, consumer: UInt32) {
        u8(SharedQueueLayout.cerrorOffset).store(cerror, ordering: .relaxed)
        u8(SharedQueueLayout.errorKindOffset).store(kind.rawValue, ordering: .relaxed)
        u32(SharedQueueLayout.errorConsOffset).store(consumer, ordering: .relaxed)
        u32(SharedQueueLayout.errorSequenceOffset).store(sequence, ordering: .releasing)
    }

    /// `state` (``SharedQueueLayout/State``'s raw value; anything else is what a hostile peer wrote).
    @inline(__always) public func loadState() -> UInt32 { u32(SharedQueueLayout.stateOffset).load(ordering: .acquiring) }
    @inline(__always) public func storeState(_ state: SharedQueueLayout.State) {
        u32(SharedQueueLayout.stateOffset).store(state.rawValue, ordering: .releasing)
    }
    /// `daemon_sleeping`.
    @inline(__always) public func loadDaemonSleeping() -> UInt32 { u32(SharedQueueLayout.daemonSleepingOffset).load(ordering: .relaxed) }
    @inline(__always) public func storeDaemonSleeping(_ value: UInt32) {
        u32(SharedQueueLayout.daemonSleepingOffset).store(value, ordering: .relaxed)
    }
}
