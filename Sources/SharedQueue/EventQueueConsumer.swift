import SMMUv3
import VSMMUProtocol

// Concurrency notes (PROTOCOL.md §9.3, §9.5).
//
// One consumer per event queue, used by one thread at a time (the VMM's thread that fills the guest's
// EVTQ). The producer is the daemon, in another process, which writes PROD, the slots and `state`. The
// consumer keeps CONS (with OVACKFLG) in a private copy: it reads the shared CONS once, when it is made,
// and afterwards only stores it. It reads PROD once per look (acquire) into a local and checks it before
// copying any slot: a PROD with a bit outside index, wrap and bit 31, or more than 2^n ahead of CONS, is a
// corrupt daemon side (``EventQueuePoll/invalidProducer``), and nothing is read. A slot is addressed through
// its position's index only, masked by the geometry.
//
// Orderings: PROD is loaded with acquire (the slots before it are visible), each slot is copied once, then
// CONS is stored with release (the daemon may rewrite those slots after it sees that CONS). Before sleeping
// the consumer stores `vmm_sleeping` = 1, issues a full fence and looks at PROD and `state` again (§9.5).

/// One look at the daemon's side of an event queue.
public struct EventQueuePoll: Hashable, Sendable {
    /// Events published and not consumed.
    public var available: Int
    /// PROD.OVFLG ≠ CONS.OVACKFLG: events were dropped since the last acknowledgement (§9.4).
    public var overflow: Bool
    /// `state` (``EventQueueLayout/State``'s raw value, or garbage).
    public var state: UInt32
    /// The PROD read, when it cannot be (a bit outside index, wrap and bit 31, or more than 2^n ahead of
    /// CONS): the daemon's side of the memory is corrupt and nothing was read. `nil` otherwise.
    public var invalidProducer: UInt32?

    public init(available: Int, overflow: Bool, state: UInt32, invalidProducer: UInt32? = nil) {
        self.available = available
        self.overflow = overflow
        self.state = state
        self.invalidProducer = invalidProducer
    }

    /// Whether the daemon stopped writing (`state` = STOPPED).
    public var isStopped: Bool { state == EventQueueLayout.State.stopped.rawValue }
    /// Whether a waiter has something to look at: events, an overflow, a stop, a corrupt PROD.
    public var hasNews: Bool { available > 0 || overflow || isStopped || invalidProducer != nil }
}

/// The VMM's side of a vSMMU's event queue (PROTOCOL.md §9.3, §9.5) over an ``EventQueueRegion``: copies the
/// events the daemon published, in order, stores CONS, sees and acknowledges an overflow (the kernel's
/// `queue_sync_cons_ovf`), and the sleep half of §9.5. Pure: no system calls (the caller polls the call
/// eventfd when ``prepareToSleep()`` says it may sleep).
public struct EventQueueConsumer: @unchecked Sendable {
    /// The mapped queue.
    public let region: EventQueueRegion
    /// CONS as this consumer stored it (position and OVACKFLG): never re-read from the memory.
    public private(set) var consumer: UInt32
    /// PROD as last read and found valid (position and OVFLG).
    public private(set) var lastProducer: UInt32

    /// A consumer of `region` that goes on from the CONS in memory now (read once; the bits a CONS may not
    /// have are cleared). For a new queue, ``EventQueueRegion/initialise()`` first.
    public init(region: EventQueueRegion) {
        let geometry = region.geometry
        self.region = region
        consumer = region.loadConsumer() & geometry.validBits
        lastProducer = consumer // no event and no overflow until the first look
    }

    /// The queue's geometry.
    @inlinable public var geometry: EventQueueGeometry { region.geometry }

    /// Whether the last PROD read carries an overflow not acknowledged yet (OVFLG ≠ OVACKFLG).
    public var overflowPending: Bool { geometry.overflowFlag(of: lastProducer) != geometry.overflowFlag(of: consumer) }

    /// One look: PROD (acquire) once, checked, and `state` once.
    public mutating func poll() -> EventQueuePoll {
        let prod = region.loadProducer()
        let state = region.loadState()
        let geometry = geometry
        let available = geometry.distance(from: geometry.position(of: consumer), to: geometry.position(of: prod))
        guard geometry.isValid(prod), available <= geometry.entries else {
            return EventQueuePoll(available: 0, overflow: overflowPending, state: state, invalidProducer: prod)
        }
        lastProducer = prod
        return EventQueuePoll(available: Int(available), overflow: overflowPending, state: state) // with this PROD's OVFLG
    }

    /// The next event, copied out of its slot, with CONS stored past it; `nil` when there is none (or PROD
    /// is corrupt: ``poll()`` says so).
    public mutating func next() -> EventQueueEntry? {
        var available = geometry.distance(from: geometry.position(of: consumer), to: geometry.position(of: lastProducer))
        if available == 0 {
            let look = poll()
            guard look.invalidProducer == nil else { return nil }
            available = UInt32(look.available)
        }
        guard available > 0 else { return nil }
        let entry = region.loadEntry(at: consumer)
        consumer = geometry.advance(consumer, by: 1)
        region.storeConsumer(consumer)
        return entry
    }

    /// Every event published now (at most `limit`), copied out in order, with CONS stored once past them.
    public mutating func drain(limit: Int = .max) -> [EventQueueEntry] {
        let look = poll()
        guard look.invalidProducer == nil, look.available > 0, limit > 0 else { return [] }
        let count = min(look.available, limit)
        var entries: [EventQueueEntry] = []
        entries.reserveCapacity(count)
        var position = consumer
        for _ in 0..<count {
            entries.append(region.loadEntry(at: position))
            position = geometry.advance(position, by: 1)
        }
        consumer = position
        region.storeConsumer(position)
        return entries
    }

    /// Acknowledges an overflow the last PROD read shows: copies OVFLG into CONS bit 31 (OVACKFLG) and
    /// stores CONS with release, as the kernel's `queue_sync_cons_ovf` does. Returns whether there was one
    /// to acknowledge (the VMM then toggles the guest's EVTQ_PROD.OVFLG).
    @discardableResult
    public mutating func acknowledgeOverflow() -> Bool {
        guard overflowPending else { return false }
        consumer ^= EventQueueLayout.overflowFlag
        region.storeConsumer(consumer)
        return true
    }

    // MARK: Going to sleep (§9.5)

    /// The first half of going to sleep: stores `vmm_sleeping` = 1, issues a full fence and looks at PROD and
    /// `state` again. Returns `true` when the caller may sleep on the call eventfd (nothing is new: the
    /// daemon's next store will signal it); `false` when something is new, having stored `vmm_sleeping` = 0.
    public mutating func prepareToSleep() -> Bool {
        region.storeVMMSleeping(1)
        EventQueueRegion.fullFence()
        guard poll().hasNews else { return true }
        region.storeVMMSleeping(0)
        return false
    }

    /// The consumer woke from its sleep on the call eventfd: stores `vmm_sleeping` = 0.
    public func wokeUp() { region.storeVMMSleeping(0) }
}
