import SMMUv3
import VSMMUProtocol

// Concurrency notes (PROTOCOL.md §9.2, §9.4, §9.5).
//
// One producer per event queue, used by one thread at a time (the daemon serialises the event batches of
// a vSMMU's viommus under one lock); the consumer is the VMM, in another process, which writes CONS and
// `vmm_sleeping` whenever it likes, and may write anything anywhere. The producer keeps PROD (with OVFLG)
// and the sequence in private copies: it reads the shared PROD once, when it is made, and afterwards only
// stores it, so a PROD the peer scribbled over never changes what this side believes it published. It
// reads CONS once per batch (acquire) into a local, and once more when that local says the queue is full,
// and checks it: a CONS with a bit outside index, wrap and bit 31, or more than 2^n behind PROD, is a full
// queue. A slot is written through its position's index only, masked by the geometry.
//
// Orderings: the slots are written relaxed, then PROD is published with release (§9.2); after each store
// of PROD or `state`, a full fence, then `vmm_sleeping` (the Dekker pair of §9.5: either the VMM sees the
// new PROD before it sleeps, or this side sees its flag and the caller signals call). No system call is
// made here: the caller writes the call eventfd when a result says so.

/// What one ``EventQueueProducer/write(_:viommu:lostBefore:)`` did.
public struct EventQueueWrite: Hashable, Sendable {
    /// Events written into slots and published.
    public var written: Int = 0
    /// Events dropped because the queue was full (each still took a sequence number).
    public var dropped: Int = 0
    /// This call toggled OVFLG: an overflow began (the guest's EVTQ_PROD.OVFLG is to toggle).
    public var overflowRaised: Bool = false
    /// PROD was stored and the VMM said it sleeps: the caller writes 1 to the call eventfd.
    public var signalCall: Bool = false

    public init() {}
}

/// The daemon's side of a vSMMU's event queue (PROTOCOL.md §9.2, §9.4) over an ``EventQueueRegion``: writes
/// events at PROD with their sequence and attribution, drops them when the queue is full with the SMMUv3
/// EVTQ overflow rule (OVFLG toggled once per overflow, LOST_BEFORE on the next event written), and
/// publishes PROD. Pure: no system calls; the caller owns the mapping and the call eventfd, and signals it
/// when a result says so.
public struct EventQueueProducer: @unchecked Sendable {
    /// The mapped queue.
    public let region: EventQueueRegion
    /// The vSMMU whose queue this is (each slot's `vsmmu_id`).
    public let vsmmu: UInt32
    /// PROD as this producer published it (position and OVFLG): never re-read from the memory.
    public private(set) var producer: UInt32
    /// The sequence number of the last event this producer wrote or dropped (0: none yet).
    public private(set) var sequence: UInt64
    /// Events were dropped (or the kernel lost some) since the last event written: the next one gets
    /// ``EventQueueLayout/lostBeforeFlag``.
    public private(set) var lostPending: Bool = false

    /// A producer over `region` that goes on from the PROD in memory now (read once, with the bits a PROD
    /// may not have cleared: the daemon checked it when it mapped the queue). The sequence goes on from
    /// `lastSequence`, or else from the slot before PROD when that slot is `vsmmu`'s (a re-map after a
    /// restart, §9.7), or else from 0 (the first event is 1).
    public init(region: EventQueueRegion, vsmmu: UInt32, lastSequence: UInt64? = nil) {
        let geometry = region.geometry
        let prod = region.loadProducer() & geometry.validBits
        self.region = region
        self.vsmmu = vsmmu
        self.producer = prod
        if let lastSequence {
            sequence = lastSequence
        } else {
            let before = region.loadEntry(at: geometry.advance(prod, by: UInt32.max)) // position − 1
            sequence = before.vsmmu == vsmmu ? before.sequence : 0
        }
    }

    /// The queue's geometry.
    @inlinable public var geometry: EventQueueGeometry { region.geometry }

    /// Whether an overflow is active as far as `consumer` (a CONS read from the memory) says: OVFLG ≠ OVACKFLG.
    @inlinable func overflowActive(consumer: UInt32) -> Bool {
        geometry.overflowFlag(of: producer) != geometry.overflowFlag(of: consumer)
    }

    /// The free slots `consumer` leaves: 0 for a full queue, and for a CONS that cannot be (a bit outside
    /// index, wrap and bit 31, or more than 2^n behind PROD), which is treated as full.
    @inlinable func room(consumer: UInt32, producer: UInt32) -> UInt32 {
        let geometry = geometry
        guard geometry.isValid(consumer) else { return 0 }
        let used = geometry.distance(from: geometry.position(of: consumer), to: geometry.position(of: producer))
        return used >= geometry.entries ? 0 : geometry.entries - used
    }

    /// Writes `records` (one viommu's, oldest first) into the slots from PROD on, each with the next sequence
    /// number, and publishes PROD once. Events that find the queue full are dropped: the first drop of an
    /// overflow toggles OVFLG (when OVFLG = OVACKFLG), and the next event written carries LOST_BEFORE.
    /// `lostBefore` (the kernel's LOST_EVENTS header before `records`) is an overflow too: OVFLG toggled if
    /// none is active, LOST_BEFORE on the next event written.
    public mutating func write<Records: Collection>(_ records: Records, viommu: UInt32,
                                                    lostBefore: Bool = false) -> EventQueueWrite where Records.Element == EventRecord {
        var result = EventQueueWrite()
        var prod = producer
        var consumer = region.loadConsumer()
        var rechecked = false
        if lostBefore {
            lostPending = true
            if !overflowActive(consumer: consumer) {
                prod ^= EventQueueLayout.overflowFlag
                result.overflowRaised = true
            }
        }
        var room = room(consumer: consumer, producer: prod)
        for record in records {
            sequence &+= 1
            if room == 0 && !rechecked {
                // The VMM may have consumed since: one more look at CONS before dropping.
                rechecked = true
                consumer = region.loadConsumer()
                room = self.room(consumer: consumer, producer: prod)
            }
            guard room > 0 else {
                result.dropped += 1
                lostPending = true
                if geometry.overflowFlag(of: prod) == geometry.overflowFlag(of: consumer) {
                    prod ^= EventQueueLayout.overflowFlag
                    result.overflowRaised = true
                }
                continue
            }
            let flags = lostPending ? EventQueueLayout.lostBeforeFlag : 0
            region.storeEntry(EventQueueEntry(record: record, sequence: sequence, vsmmu: vsmmu, viommu: viommu, flags: flags), at: prod)
            lostPending = false
            prod = geometry.advance(prod, by: 1)
            room -= 1
            result.written += 1
        }
        if prod != producer {
            producer = prod
            region.storeProducer(prod)
            result.signalCall = publish()
        }
        return result
    }

    /// Stores `state` = RUNNING (the queue was mapped). Returns whether the VMM sleeps (signal call).
    public func start() -> Bool {
        region.storeState(.running)
        return publish()
    }

    /// Stores `state` = STOPPED (§9.7): nothing more is written. The caller signals call whatever this
    /// returns (a waiter must see the state); the return says whether the VMM sleeps.
    @discardableResult
    public func stop() -> Bool {
        region.storeState(.stopped)
        return publish()
    }

    /// After a store the VMM may wait on: a full fence, then `vmm_sleeping` (§9.5). Whether to signal call.
    @inline(__always) private func publish() -> Bool {
        EventQueueRegion.fullFence()
        return region.loadVMMSleeping() != 0
    }
}
