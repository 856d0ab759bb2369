import Atomics
import SMMUv3

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A bounded, lock-free ring of 16-byte SMMUv3 commands: many producers, one consumer at a time.
///
/// This is the per-viommu command queue in memory. Positions are monotonically increasing `UInt64`s
/// (position `p` lives in slot `p & (capacity - 1)`), so a position never means two things (no ABA)
/// and a consumer can name "everything before position `p`".
///
/// **Producers** (connections) never take a lock while the ring has room. A batch of up to
/// ``capacity`` commands is claimed as one contiguous range of positions with a single
/// compare-and-swap on the tail, copied into the slots, then published in one step: a release store
/// of the batch's header (its length) in the header word of its first slot. The consumer reads that
/// one word, acquiring, and then owns the whole batch; it clears the header before moving past it, so
/// a non-zero header always belongs to the current lap (no sequence numbers, no ABA). A batch larger
/// than the ring is pushed in pieces of at most ``capacity`` commands, in order. When the ring is
/// full the producer spins, yields, then parks on a condition variable that the consumer signals only
/// when it sees a parked producer (and half the ring free): a command is never dropped, duplicated or
/// reordered within one producer's stream, and memory stays bounded.
///
/// **The consumer role** is a flag: exactly one thread at a time may hold it
/// (``tryAcquireConsumerRole()``), drain what is published (``ConsumerRole/drain(upTo:into:)``, which
/// hands every contiguous run of commands to the visitor in one call) and release it
/// (``ConsumerRole/release()``). Releasing re-checks the ring after a sequentially consistent fence
/// and reports whether commands were published meanwhile: a producer that publishes and then fails
/// to take the role relies on that re-check (the classic lost-wakeup race; see
/// ``ConsumerRole/release()``).
///
/// **Memory grows with use.** The slots, headers and tags live in one anonymous mapping that the kernel
/// commits page by page on first touch, so a ring nobody pushes to costs no resident memory, and a
/// ring's resident memory is bounded by the slots its positions have reached (at most ``capacity``
/// × 24 bytes once it has carried a lap of commands, × 32 when they were tagged, as the engine's are).
///
/// **Tags.** Each slot has a 64-bit tag the producer writes with the command
/// (``push(_:tag:whileFull:)``; an untagged push and a marker leave it), before the batch's releasing
/// publication, and the consumer reads back for a command that failed (``tag(at:)``) while it visits
/// it: the engine tags a command with its submission's serial and its guest index, so a failure comes
/// back in guest terms without any lookup.
///
/// **Markers** (``pushMarker(_:whileFull:)``) are ``RingMarker``s, 16-byte tokens of their own type
/// ordered with the commands, that the consumer receives separately
/// (``CommandRingVisitor/visit(marker:at:)``), never inside a command run: ``ViommuQueue`` places its
/// sync fences in the stream with them. A marker occupies one slot of the buffer (the slots hold
/// commands back to back, as the backends take them), told apart by its header's ``markerBit``; it never
/// reaches a visitor, nor leaves this file, as a `Command`.
///
/// `@unchecked Sendable`: all shared state is either atomic (tail, consumed position, role flag,
/// batch headers, counters) or slot memory whose ownership passes between a producer and the consumer
/// through those atomics with release/acquire ordering; the consumer's cursors are only written by the
/// holder of the consumer role.
public final class CommandRing: @unchecked Sendable {
    /// The number of slots: a power of two.
    public let capacity: Int
    private let mask: UInt64

    /// The command slots, contiguous so that a run of positions is an `UnsafeBufferPointer<Command>`.
    /// With ``headers``, in one anonymous mapping (``mapping``) committed lazily by the kernel.
    private let slots: UnsafeMutablePointer<Command>
    /// Per-slot header words: non-zero only in the first slot of a published, not yet scanned batch,
    /// where it holds the batch's length (| ``markerBit`` for a marker).
    private let headers: UnsafeMutablePointer<UInt64.AtomicRepresentation>
    /// Per-slot tags: what the producer said a command is (the engine: its submission and guest index),
    /// written with the command before the batch is published and read back only for a failed command
    /// (``tag(at:)``), so a failure comes back in the producer's terms.
    private let tags: UnsafeMutablePointer<UInt64>
    /// Control words, each on its own cache-line pair so producers and the consumer don't false-share.
    private let control: UnsafeMutableRawPointer
    /// The mapping holding ``slots``, ``headers`` then ``tags``, and its length (whole pages).
    private let mapping: UnsafeMutableRawPointer
    private let mappingLength: Int

    /// The next position to claim, with ``closedBit`` set once the ring is closed.
    private let tail: UnsafeAtomic<UInt64>
    /// The first position not yet consumed.
    private let consumed: UnsafeAtomic<UInt64>
    /// The end of the batches whose headers the consumer already read (≥ `consumed`): a consumer
    /// that stopped inside a batch resumes from here without a header. Written by the role holder,
    /// before `consumed`; on the same cache line.
    private let scannedEnd: UnsafeAtomic<UInt64>
    /// 1 while some thread holds the consumer role.
    private let consumerFlag: UnsafeAtomic<Int>
    /// How many producers are parked (or about to park) waiting for room.
    private let spaceWaiters: UnsafeAtomic<Int>
    /// A recent value of `consumed` for producers: they check room against it and reload `consumed`
    /// only when it says the ring is full, so the line the consumer writes after every run is not
    /// pulled into every producer's cache on every push (the Disruptor's cached gating sequence).
    /// Always ≤ `consumed`, which only grows, so a stale hint can only make a producer look again.
    private let consumedHint: UnsafeAtomic<UInt64>
    /// How many times a producer found the ring full / had to park.
    private let fullEvents: UnsafeAtomic<Int>
    private let parkEvents: UnsafeAtomic<Int>
    private let spaceParker = Parker()

    /// A producer facing a full ring re-checks this many times, then yields this many times, then
    /// parks. Short on purpose: on 2 cores a spinning or yielding producer takes CPU time from the
    /// consumer (or from a producer preempted between claiming and publishing) that it is waiting for.
    private static let fullRingSpins = 64
    private static let fullRingYields = 2

    static let markerBit: UInt64 = 1 << 63
    static let closedBit: UInt64 = 1 << 63
    private static let lineStride = 128
    private static let controlLines = 7

    /// The largest capacity accepted: 2^30 slots (16 GiB of commands).
    public static let maximumCapacity = 1 << 30

    /// Creates an empty ring of `capacity` slots. Its memory is reserved, not committed: pages become
    /// resident as the ring uses them.
    /// - Throws: ``CommandRingError/invalidCapacity(_:)`` unless `capacity` is a power of two in
    ///   `2...maximumCapacity`; ``CommandRingError/memoryUnavailable(errno:)`` when the slots cannot be mapped.
    public init(capacity: Int) throws(CommandRingError) {
        guard capacity >= 2, capacity <= Self.maximumCapacity, capacity & (capacity - 1) == 0 else {
            throw .invalidCapacity(capacity)
        }
        self.capacity = capacity
        self.mask = UInt64(capacity - 1)
        // Slots first (16-byte aligned at the page start), then the 8-byte headers. Anonymous memory
        // reads as zeros, which is an empty slot and an unpublished header: nothing to initialise, so
        // nothing is touched until used.
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let bytes = capacity * (MemoryLayout<Command>.stride + MemoryLayout<UInt64.AtomicRepresentation>.stride
            + MemoryLayout<UInt64>.stride)
        let length = (bytes + page - 1) / page * page
        guard let mapped = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              mapped != MAP_FAILED else {
            throw .memoryUnavailable(errno: errno)
        }
        mapping = mapped
        mappingLength = length
        slots = mapped.bindMemory(to: Command.self, capacity: capacity)
        headers = (mapped + capacity * MemoryLayout<Command>.stride)
            .bindMemory(to: UInt64.AtomicRepresentation.self, capacity: capacity)
        tags = (mapped + capacity * (MemoryLayout<Command>.stride + MemoryLayout<UInt64.AtomicRepresentation>.stride))
            .bindMemory(to: UInt64.self, capacity: capacity)

        let control = UnsafeMutableRawPointer.allocate(
            byteCount: Self.lineStride * Self.controlLines, alignment: Self.lineStride)
        self.control = control
        func word<T: AtomicValue>(_ line: Int, _: T.Type, _ initial: T, offset: Int = 0) -> UnsafeAtomic<T> {
            let pointer = (control + line * Self.lineStride + offset)
                .bindMemory(to: T.AtomicRepresentation.self, capacity: 1)
            pointer.initialize(to: T.AtomicRepresentation(initial))
            return UnsafeAtomic(at: pointer)
        }
        tail = word(0, UInt64.self, 0)
        consumed = word(1, UInt64.self, 0)
        scannedEnd = word(1, UInt64.self, 0, offset: 8)
        consumerFlag = word(2, Int.self, 0)
        spaceWaiters = word(3, Int.self, 0)
        consumedHint = word(4, UInt64.self, 0)
        fullEvents = word(5, Int.self, 0)
        parkEvents = word(6, Int.self, 0)
    }

    deinit {
        // Commands and atomic words are trivial: unmapping is their deinitialisation.
        munmap(mapping, mappingLength)
        control.deallocate()
    }

    // MARK: Observing

    /// The first position not yet consumed: every command at a lower position was handed to a
    /// consumer and its visitor returned. Monotonically increasing; published with release ordering
    /// after the visitor returned, so an acquiring reader also sees the visitor's effects.
    public var consumedPosition: UInt64 { consumed.load(ordering: .acquiring) }

    /// The next position a producer will claim: every lower position is claimed (maybe not yet published).
    public var claimedPosition: UInt64 { tail.load(ordering: .acquiring) & ~Self.closedBit }

    /// Whether ``close()`` was called: pushes now fail and ``claimedPosition`` is final.
    public var isClosed: Bool { tail.load(ordering: .acquiring) & Self.closedBit != 0 }

    /// Whether some thread holds the consumer role right now (a snapshot).
    public var isConsumerRoleHeld: Bool { consumerFlag.load(ordering: .relaxed) != 0 }

    /// Whether the entry at ``consumedPosition`` is published and waiting for a consumer.
    public var hasPublishedEntries: Bool {
        let position = consumed.load(ordering: .acquiring)
        // Stored before `consumed` by the consumer, so at least as recent.
        if scannedEnd.load(ordering: .acquiring) > position { return true }
        return header(position).load(ordering: .acquiring) != 0
    }

    /// Claimed entries not yet consumed, at most ``capacity``: a snapshot that reads the consumed
    /// position before the tail, so that it never underflows (both only grow).
    public var occupancy: Int {
        let consumedNow = consumed.load(ordering: .acquiring)
        let claimed = tail.load(ordering: .acquiring) & ~Self.closedBit
        return Int(min(claimed &- consumedNow, UInt64(capacity)))
    }

    /// The slots free for producers: ``capacity`` minus ``occupancy``.
    public var freeSlots: Int { capacity - occupancy }

    /// The bytes of the ring's slots and headers the kernel holds resident (`mincore`): for tests
    /// and diagnostics of the lazily committed memory. A page only read (never written) may count.
    package var residentBytes: Int {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let pages = mappingLength / page
        var vector = [UInt8](repeating: 0, count: pages)
        let status = vector.withUnsafeMutableBufferPointer { mincore(mapping, mappingLength, $0.baseAddress) }
        guard status == 0 else { return -1 }
        return vector.reduce(0) { $0 + Int($1 & 1) } * page
    }

    /// How many times a producer found the ring full (one count per piece that had to wait).
    public var fullRingWaits: Int { fullEvents.load(ordering: .relaxed) }

    /// How many times a producer parked on the condition variable waiting for room.
    public var producerParks: Int { parkEvents.load(ordering: .relaxed) }

    /// How many producers are parked (or about to park) for room right now.
    public var parkedProducers: Int { spaceWaiters.load(ordering: .relaxed) }

    @inline(__always)
    private func header(_ position: UInt64) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: headers + Int(position & mask))
    }

    // MARK: Producing

    /// Pushes `commands` and publishes them, waiting for room when the ring is full.
    ///
    /// A batch of at most ``capacity`` commands is claimed and published as one contiguous range; a
    /// larger one is pushed in pieces of ``capacity`` commands, in order (other producers' batches may
    /// fall between pieces). Returns once every command is published (not consumed).
    ///
    /// - Parameter whileFull: called each time the producer finds the ring full, before it spins
    ///   again: ``ViommuQueue`` drains inline or wakes its drain thread there. It must not push to this ring.
    /// - Returns: the positions of the batch, or of its last piece when it was split.
    /// - Throws: ``CommandRingClosedError`` once the ring is closed; pieces pushed before stay pushed.
    @discardableResult
    public func push(
        _ commands: UnsafeBufferPointer<Command>,
        whileFull: () -> Void = {}
    ) throws(CommandRingClosedError) -> Range<UInt64> {
        try push(commands, tags: { (_: Int) -> UInt64 in 0 }, writesTags: false, whileFull: whileFull)
    }

    /// Pushes `commands` as ``push(_:whileFull:)-(UnsafeBufferPointer<Command>,_)`` does, with a tag per
    /// command: `tag(i)` for `commands[i]`, stored in its slot before the batch is published and read
    /// back with ``tag(at:)`` (the engine tags a command with its submission and guest index).
    @discardableResult
    public func push(
        _ commands: UnsafeBufferPointer<Command>,
        tag: (Int) -> UInt64,
        whileFull: () -> Void = {}
    ) throws(CommandRingClosedError) -> Range<UInt64> {
        try push(commands, tags: tag, writesTags: true, whileFull: whileFull)
    }

    @inline(__always)
    private func push(
        _ commands: UnsafeBufferPointer<Command>,
        tags tag: (Int) -> UInt64,
        writesTags: Bool,
        whileFull: () -> Void
    ) throws(CommandRingClosedError) -> Range<UInt64> {
        var remaining = commands[...]
        var positions = claimedPosition..<claimedPosition
        var done = 0
        while !remaining.isEmpty {
            let piece = UnsafeBufferPointer(rebasing: remaining.prefix(capacity))
            guard let source = piece.baseAddress else { break }
            positions = try pushPiece(count: piece.count, whileFull: whileFull) { destination, range in
                destination.update(from: source + range.lowerBound, count: range.count)
                // An untagged push leaves the slots' tags as they were: its producer never asks for them
                // (the engine tags every push), and the store would cost the bare ring ~7 % (`ring` bench).
                if writesTags {
                    let tagDestination = tags + (destination - slots)
                    for i in range.indices { tagDestination[i - range.lowerBound] = tag(done + i) }
                }
            }
            publish(positions, marker: false)
            done += piece.count
            remaining = remaining.dropFirst(piece.count)
        }
        return positions
    }

    /// The tag pushed with the command at `position` (for a command pushed without a tag, whatever the slot
    /// held before: only a producer that tags its pushes asks, and never for a marker).
    /// Meaningful only for a position the caller knows holds that command still: the role holder's run
    /// being visited (it is consumed, and its slot reused, only after the visit).
    public func tag(at position: UInt64) -> UInt64 { tags[Int(position & mask)] }

    /// Pushes `commands` (see ``push(_:whileFull:)-(UnsafeBufferPointer<Command>,_)``).
    @discardableResult
    public func push(_ commands: [Command], whileFull: () -> Void = {}) throws(CommandRingClosedError) -> Range<UInt64> {
        // `withUnsafeBufferPointer` rethrows untyped errors; carry the typed one out by hand.
        let result: Result<Range<UInt64>, CommandRingClosedError> = commands.withUnsafeBufferPointer { buffer in
            do throws(CommandRingClosedError) { return .success(try push(buffer, whileFull: whileFull)) }
            catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Pushes a marker: a 16-byte token the consumer receives through
    /// ``CommandRingVisitor/visit(marker:at:)``, after every entry before it and never inside a command run.
    /// - Returns: the marker's position.
    @discardableResult
    public func pushMarker(_ marker: RingMarker, whileFull: () -> Void = {}) throws(CommandRingClosedError) -> UInt64 {
        let positions = try pushPiece(count: 1, whileFull: whileFull) { destination, _ in
            destination.pointee = Command(w0: marker.first, w1: marker.second)
        }
        publish(positions, marker: true)
        return positions.lowerBound
    }

    private enum Claim {
        case claimed(UInt64)
        case full
        case closed
    }

    /// Whether `count` more entries after `tail` would overwrite entries not consumed yet. A `tail`
    /// older than `consumed` (loaded before other producers moved on) is stale: its compare-and-swap
    /// will fail and be retried, so it is not called full.
    @inline(__always)
    private func lacksRoom(tail: UInt64, consumed: UInt64, count: Int) -> Bool {
        consumed <= tail && tail &+ UInt64(count) &- consumed > UInt64(capacity)
    }

    /// Claims `count` consecutive positions with one compare-and-swap, if the ring has room.
    @inline(__always)
    private func claim(_ count: Int) -> Claim {
        var current = tail.load(ordering: .relaxed)
        // Acquiring loads of the hint and of `consumed`, releasing stores of the hint: the consumer's
        // reads of the slots we are about to overwrite happen before our writes, through the hint too.
        var consumedNow = consumedHint.load(ordering: .acquiring)
        while true {
            if current & Self.closedBit != 0 { return .closed }
            if lacksRoom(tail: current, consumed: consumedNow, count: count) {
                let latest = consumed.load(ordering: .acquiring)
                if lacksRoom(tail: current, consumed: latest, count: count) { return .full }
                consumedNow = latest
                consumedHint.store(latest, ordering: .releasing)
            }
            let (exchanged, original) = tail.weakCompareExchange(
                expected: current, desired: current &+ UInt64(count),
                successOrdering: .relaxed, failureOrdering: .relaxed)
            if exchanged { return .claimed(current) }
            current = original
        }
    }

    /// Claims room for `count` ≤ capacity entries (waiting while full) and lets `write` fill them:
    /// `write(destination, range)` copies the piece's entries `range` to `destination`; it is called
    /// twice when the claimed positions wrap at the end of the buffer.
    @inline(__always)
    private func pushPiece(
        count: Int,
        whileFull: () -> Void,
        write: (UnsafeMutablePointer<Command>, Range<Int>) -> Void
    ) throws(CommandRingClosedError) -> Range<UInt64> {
        var backoff = Backoff(spins: Self.fullRingSpins, yields: Self.fullRingYields)
        var countedFull = false
        while true {
            switch claim(count) {
            case .claimed(let start):
                let index = Int(start & mask)
                let firstPart = min(count, capacity - index)
                write(slots + index, 0..<firstPart)
                if firstPart < count {
                    write(slots, firstPart..<count)
                }
                return start..<(start &+ UInt64(count))
            case .closed:
                throw CommandRingClosedError()
            case .full:
                if !countedFull {
                    countedFull = true
                    fullEvents.wrappingIncrement(ordering: .relaxed)
                }
                whileFull()
                if backoff.pause() { continue }
                parkUntilRoom(for: count)
                backoff = Backoff(spins: Self.fullRingSpins, yields: Self.fullRingYields)
            }
        }
    }

    /// Makes a claimed batch readable by the consumer: one releasing store of its header.
    @inline(__always)
    private func publish(_ positions: Range<UInt64>, marker: Bool) {
        header(positions.lowerBound).store(
            UInt64(positions.count) | (marker ? Self.markerBit : 0), ordering: .releasing)
    }

    private func hasRoom(for count: Int) -> Bool {
        let consumedNow = consumed.load(ordering: .acquiring)
        let current = tail.load(ordering: .acquiring)
        if current & Self.closedBit != 0 { return true }
        return !lacksRoom(tail: current, consumed: consumedNow, count: count)
    }

    /// The slow path of a full ring: park until the consumer made room for `count` or the ring closed.
    private func parkUntilRoom(for count: Int) {
        parkEvents.wrappingIncrement(ordering: .relaxed)
        // Dekker with `advanceConsumed`: we announce ourselves, then read `consumed`; the consumer
        // writes `consumed`, then reads `spaceWaiters`. With a fence on each side, at least one of us
        // sees the other's write: either we see the room, or it sees us and broadcasts under the mutex
        // (after our check under the same mutex, so the broadcast finds us asleep).
        spaceWaiters.wrappingIncrement(ordering: .sequentiallyConsistent)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        spaceParker.withLock {
            while !hasRoom(for: count) { spaceParker.waitLocked() }
        }
        spaceWaiters.wrappingDecrement(ordering: .relaxed)
    }

    // MARK: Closing

    /// Closes the ring: later pushes throw ``CommandRingClosedError`` and parked producers wake up
    /// and throw. Entries claimed before stay and can be drained; ``claimedPosition`` is then final.
    /// Idempotent.
    public func close() {
        _ = tail.loadThenBitwiseOr(with: Self.closedBit, ordering: .acquiringAndReleasing)
        spaceParker.broadcast()
    }

    // MARK: Consuming

    /// Takes the consumer role if no other thread holds it.
    ///
    /// - Returns: the role, to drain with and then release; `nil` when another thread holds it.
    @inline(__always)
    public func tryAcquireConsumerRole() -> ConsumerRole? {
        // Test before the compare-and-swap so that contending threads don't bounce the line.
        if consumerFlag.load(ordering: .relaxed) != 0 { return nil }
        guard consumerFlag.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing).exchanged else {
            return nil
        }
        return ConsumerRole(ring: self)
    }

    /// Releases the role, then re-checks for published entries (see ``ConsumerRole/release()``).
    fileprivate func releaseConsumerRole() -> Bool {
        consumerFlag.store(0, ordering: .releasing)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return hasPublishedEntries
    }

    /// Publishes the consumer's progress and wakes producers parked for room, if any, once at least
    /// half the ring is free: waking them a few slots at a time would cost the consumer a futex wake
    /// per run and the producers a context switch per batch. (Parked producers stop claiming, so the
    /// free room only grows until it crosses the mark; a producer that parks after it looks at the
    /// room itself before sleeping.)
    @inline(__always)
    private func advanceConsumed(to position: UInt64, scanned: UInt64) {
        scannedEnd.store(scanned, ordering: .relaxed)
        consumed.store(position, ordering: .releasing)
        // Dekker with `parkUntilRoom`: see there.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if spaceWaiters.load(ordering: .relaxed) != 0,
           (tail.load(ordering: .relaxed) & ~Self.closedBit) &- position <= UInt64(capacity / 2) {
            spaceParker.broadcast()
        }
    }

    /// The consumer's loop; only called through a ``ConsumerRole``.
    fileprivate func drain<Visitor: CommandRingVisitor>(upTo limit: UInt64, into visitor: inout Visitor) -> UInt64 {
        let start = consumed.load(ordering: .relaxed)
        var position = start
        // Positions below `known` are published: their batch headers were read (and cleared).
        var known = max(scannedEnd.load(ordering: .relaxed), position)
        while position < limit {
            // A run stops at the limit, at the end of the buffer, at a marker or at an unpublished batch.
            let runLimit = min(limit, position &+ UInt64(capacity - Int(position & mask)))
            var end = min(known, runLimit)
            while end == known, end < runLimit {
                let word = header(end)
                let value = word.load(ordering: .acquiring)
                guard value != 0, value & Self.markerBit == 0 else { break }
                word.store(0, ordering: .relaxed)  // ordered before our releasing store of `consumed`
                known = end &+ value
                end = min(known, runLimit)
            }
            if end > position {
                let index = Int(position & mask)
                visitor.visit(commands: UnsafeBufferPointer(start: slots + index, count: Int(end &- position)), at: position)
                position = end
                advanceConsumed(to: position, scanned: known)
                continue
            }
            // Nothing to run: a published marker here, or nothing published yet.
            guard position == known else { break }
            let word = header(position)
            guard word.load(ordering: .acquiring) & Self.markerBit != 0 else { break }
            word.store(0, ordering: .relaxed)
            let slot = slots[Int(position & mask)]
            visitor.visit(marker: RingMarker(slot.w0, slot.w1), at: position)
            position &+= 1
            known = position
            advanceConsumed(to: position, scanned: known)
        }
        return position &- start
    }
}

/// The consumer role of a ``CommandRing``: proof that this thread is its one consumer.
///
/// Obtained from ``CommandRing/tryAcquireConsumerRole()``; not copyable, so it cannot be duplicated.
/// Release it with ``release()`` (which tells you whether work arrived meanwhile); dropping it
/// releases it too, without the answer. It keeps the ring alive while held.
public struct ConsumerRole: ~Copyable {
    private let ring: Unmanaged<CommandRing>

    fileprivate init(ring: CommandRing) {
        self.ring = .passRetained(ring)
    }

    deinit {
        _ = ring.takeUnretainedValue().releaseConsumerRole()
        ring.release()
    }

    /// The next position this consumer will consume (the ring's ``CommandRing/consumedPosition``).
    public var position: UInt64 { ring.takeUnretainedValue().consumedPosition }

    /// Consumes every published entry from ``position`` up to (not including) `limit`, in order,
    /// stopping at the first position not yet published.
    ///
    /// Each maximal run of consecutive published commands that does not cross the end of the buffer
    /// goes to `visitor` in one ``CommandRingVisitor/visit(commands:at:)`` call (a run that wraps is
    /// two calls); each marker in its own ``CommandRingVisitor/visit(marker:at:)`` call.
    /// ``CommandRing/consumedPosition`` advances (with release ordering) after each call returns,
    /// which is also when producers waiting for room are woken.
    ///
    /// - Returns: how many positions were consumed.
    @discardableResult
    public func drain<Visitor: CommandRingVisitor>(upTo limit: UInt64 = .max, into visitor: inout Visitor) -> UInt64 {
        ring.takeUnretainedValue().drain(upTo: limit, into: &visitor)
    }

    /// Releases the role and re-checks the ring.
    ///
    /// The re-check closes the lost-wakeup race: a producer that published after this consumer's last
    /// look, and then failed to take the role because we still held it, counts on us to notice. The
    /// role flag is cleared, a sequentially consistent fence follows, and the entry at the consumed
    /// position is read; the producer publishes, fences, then reads the flag. One of the two sees the
    /// other, so either the producer takes the role itself or this returns `true`.
    ///
    /// - Returns: `true` when a published entry is waiting: the caller must take the role again or
    ///   hand the work to someone who will (e.g. wake a drain thread).
    public consuming func release() -> Bool {
        let ring = self.ring
        discard self
        let pending = ring.takeUnretainedValue().releaseConsumerRole()
        ring.release()
        return pending
    }
}

/// What a ``ConsumerRole`` hands the entries of a ``CommandRing`` to.
public protocol CommandRingVisitor {
    /// A run of published commands at positions `position ..< position + commands.count`,
    /// contiguous in the ring's memory. Valid only during the call: the slots are reused after it.
    mutating func visit(commands: UnsafeBufferPointer<Command>, at position: UInt64)
    /// A marker pushed with ``CommandRing/pushMarker(_:whileFull:)``, at `position`.
    mutating func visit(marker: RingMarker, at position: UInt64)
}

/// The payload of a ring marker: two words the ring carries in order with the commands and hands to the
/// consumer untouched, never as a command. What they mean is the pusher's (``ViommuQueue``: a sync
/// fence's reference and the queue's index in it).
public struct RingMarker: Hashable, Sendable, BitwiseCopyable {
    public var first: UInt64
    public var second: UInt64

    @inlinable
    public init(_ first: UInt64, _ second: UInt64) {
        self.first = first
        self.second = second
    }
}

/// Why a ``CommandRing`` could not be created.
public enum CommandRingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The capacity is not a power of two in `2...CommandRing.maximumCapacity`.
    case invalidCapacity(Int)
    /// `mmap` refused the ring's memory (e.g. `ENOMEM` under an address-space limit).
    case memoryUnavailable(errno: Int32)

    public var description: String {
        switch self {
        case .invalidCapacity(let capacity):
            return "ring capacity \(capacity) is not a power of two in 2...\(CommandRing.maximumCapacity)"
        case .memoryUnavailable(let errno):
            return "cannot map the ring's memory (errno \(errno))"
        }
    }
}

/// A push to a closed ring (a stopped ``ViommuQueue``).
public struct CommandRingClosedError: Error, Hashable, Sendable, CustomStringConvertible {
    public init() {}
    public var description: String { "the command ring is closed" }
}
