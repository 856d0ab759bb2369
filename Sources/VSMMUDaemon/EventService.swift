import InvalidationEngine
import PSMMU
import SMMUv3
import VirtualSMMU
import Synchronization
import VSMMUProtocol
import VSMMUSystem

// Concurrency notes (issue 14, PROTOCOL.md §9).
//
// Who calls the sink: every backend pushes its viommus' events to an ``EventSinkAdapter`` the daemon set
// on it (``EventService/connect(_:provider:)``): the iommufd backend from its vEVENTQ watcher thread, a
// simulated pSMMU from the thread whose SIMULATE_DMA made the device fault (any connection thread). So
// several threads may deliver at once, for different viommus of one vSMMU or of different vSMMUs; a
// backend delivers one viommu's events from one thread at a time and in order (``ViommuEventSink``).
//
// What they touch: the route table (``EventService/routes``, a mutex held only to look a route up or to
// change it: attach, detach, restore, teardown on connection threads); the engine's device table
// (``VSMMUEngine/device(_:)``, its state lock, short, never held across a backend call, so a watcher
// thread never waits on a backend call that waits on it); the vSMMU's per-viommu counters (their own
// mutex); and the vSMMU's event queue (``VSMMUEvents/queue``). A queue's writes and its teardown are
// serialised by the queue's own mutex (``EventQueueTarget`` implementations hold it across each batch's
// slot writes, PROD store and call signal, and across the teardown's STOPPED store, signal and munmap):
// an unmap never munmaps under a writer, and a writer that comes after finds the queue closed and counts
// its events as "no queue". One mutex per queue is also what makes one ring have one producer: PROD has a
// single writer at any moment whatever the number of delivering threads.
//
// The sink never blocks for long: no daemon-side buffer, no wait on the VMM. A full ring drops (the ring
// is the bound, §9); the call eventfd is written non-blocking (O_NONBLOCK set at map time).

/// Which backend's handle space a viommu handle belongs to: a simulated pSMMU's handles are unique across
/// its tenants (one object-id space, ``SimulatedSMMU``), so its name is the domain; each iommufd backend
/// (one per ATTACH_VIOMMU, over the VMM's own iommufd) numbers its objects on its own, so it is a domain.
enum EventDomain: Hashable, Sendable {
    case pSMMU(String)
    case backend(UInt64)
}

/// A backend's viommu in the route table.
struct EventRouteKey: Hashable, Sendable {
    var domain: EventDomain
    var handle: ViommuHandle
}

/// What one event batch turned into, per reason (the counters of PROTOCOL.md §6 STATS, issue 14).
struct ViommuEventCounters: Hashable, Sendable {
    /// Records written into the vSMMU's event queue.
    var forwarded: UInt64 = 0
    /// Records dropped because the queue was full (the VMM did not read).
    var droppedOverflow: UInt64 = 0
    /// Records whose vSID is not registered on the viommu (UNSET_DEV_ID raced the event).
    var droppedDeviceGone: UInt64 = 0
    /// Records that arrived while the vSMMU had no mapped event queue.
    var droppedNoQueue: UInt64 = 0
    /// LOST_EVENTS reports from the kernel's vEVENTQ or a simulated pSMMU's queue.
    var lostUpstream: UInt64 = 0

    mutating func add(_ other: ViommuEventCounters) {
        forwarded &+= other.forwarded
        droppedOverflow &+= other.droppedOverflow
        droppedDeviceGone &+= other.droppedDeviceGone
        droppedNoQueue &+= other.droppedNoQueue
        lostUpstream &+= other.lostUpstream
    }
}

/// What a queue did with a batch (``EventQueueTarget/write(_:viommu:lostBefore:)``).
struct EventWriteOutcome: Hashable, Sendable {
    /// Records written into slots.
    var written: Int
    /// Records dropped because the ring was full.
    var droppedFull: Int
    /// The queue was closed (unmapped) before the batch: nothing was written.
    var closed = false
}

/// A vSMMU's mapped event queue as the event service writes into it: the mapped memfd
/// (``EventQueueService``), or a recorder in tests. Thread-safe: see the notes at the top of this file.
protocol EventQueueTarget: AnyObject, Sendable {
    /// Writes `records` (the guest's vSIDs in them) as events of viommu `viommu`, in order; `lostBefore`:
    /// events were lost upstream just before them (the next slot written carries LOST_BEFORE). Never blocks.
    func write(_ records: [EventRecord], viommu: UInt32, lostBefore: Bool) -> EventWriteOutcome
    /// Ends the queue (state STOPPED, call signalled, memory unmapped, descriptors closed). Idempotent;
    /// waits for a write in progress, and every later write answers `closed`.
    func close()
}

/// A vSMMU's event side: its mapped queue and the per-viommu counters (PROTOCOL.md §9).
final class VSMMUEvents: Sendable {
    /// The event queue, while one is mapped.
    let queue = Locked<(any EventQueueTarget)?>(nil)
    /// Each attached viommu's counters, and its route (to take it out at detach).
    private let viommus = Locked<[ViommuIndex: (route: EventRouteKey, counters: ViommuEventCounters)]>([:])

    /// The counters of viommu `index` (zeros when not routed).
    func counters(_ index: ViommuIndex) -> ViommuEventCounters {
        viommus.withLock { $0[index]?.counters ?? ViommuEventCounters() }
    }

    /// Adds `counts` to viommu `index`'s counters (a viommu that was detached meanwhile is not counted).
    func count(_ counts: ViommuEventCounters, viommu index: ViommuIndex) {
        viommus.withLock { $0[index]?.counters.add(counts) }
    }

    /// Records viommu `index`'s route, with zero counters (a new viommu at that index).
    func setRoute(_ route: EventRouteKey, viommu index: ViommuIndex) {
        viommus.withLock { $0[index] = (route, ViommuEventCounters()) }
    }

    /// Forgets viommu `index` and returns its route.
    func removeRoute(_ index: ViommuIndex) -> EventRouteKey? {
        viommus.withLock { $0.removeValue(forKey: index)?.route }
    }

    /// Forgets every viommu and returns their routes.
    func removeAllRoutes() -> [EventRouteKey] {
        viommus.withLock { v in
            defer { v = [:] }
            return v.values.map(\.route)
        }
    }

    /// Installs `target` as the queue and returns the one it replaces.
    func replaceQueue(with target: (any EventQueueTarget)?) -> (any EventQueueTarget)? {
        queue.withLock { q in
            defer { q = target }
            return q
        }
    }
}

/// The daemon's event path (issue 14): the sink of every backend, which attributes each batch to the
/// vSMMU and viommu that own the backend viommu it came from, keeps only records whose vSID is registered
/// on that viommu now, and writes them into that vSMMU's event queue. No event ever reaches another
/// vSMMU's queue: a route names one vSMMU, and a record's vSID is checked against that vSMMU's viommu.
final class EventService: Sendable {
    /// Which vSMMU and viommu each backend viommu belongs to.
    private let routes = Locked<[EventRouteKey: (served: ServedVSMMU, viommu: ViommuIndex)]>([:])
    /// Records (and LOST_EVENTS reports) from a backend viommu no vSMMU owns (destroyed, or detached).
    let orphaned = Atomic<UInt64>(0)
    private let nextBackendDomain = Atomic<UInt64>(1)

    init() {}

    /// The sink for the viommus of `domain`.
    func sink(_ domain: EventDomain) -> EventSinkAdapter { EventSinkAdapter(service: self, domain: domain) }

    /// Sets this service's sink on `backend` (made by `provider` for an ATTACH_VIOMMU or a restore) and
    /// returns the domain its viommu handles live in.
    func connect(_ backend: any PSMMUBackend, provider: PSMMUProvider) -> EventDomain {
        let domain: EventDomain
        switch provider {
        case .simulated: domain = .pSMMU(provider.name)
        case .iommufd: domain = .backend(nextBackendDomain.add(1, ordering: .relaxed).oldValue)
        }
        backend.setEventSink(sink(domain))
        return domain
    }

    /// Sets the sink of every simulated pSMMU of `providers` (at start: their viommus of every tenant).
    func connectSimulated(_ providers: [PSMMUProvider]) {
        for provider in providers {
            if case .simulated(let smmu) = provider { smmu.setEventSink(sink(.pSMMU(provider.name))) }
        }
    }

    /// Routes the events of `domain`'s viommu `handle` to viommu `index` of `served` (its counters start at 0).
    func route(_ domain: EventDomain, handle: ViommuHandle, to served: ServedVSMMU, viommu index: ViommuIndex) {
        let key = EventRouteKey(domain: domain, handle: handle)
        served.events.setRoute(key, viommu: index)
        routes.withLock { $0[key] = (served, index) }
    }

    /// Takes viommu `index` of `served` out of the table (DETACH_VIOMMU): its later events are orphaned.
    func unroute(_ served: ServedVSMMU, viommu index: ViommuIndex) {
        guard let key = served.events.removeRoute(index) else { return }
        routes.withLock { table in
            if table[key]?.served === served { table[key] = nil }
        }
    }

    /// Takes every viommu of `served` out of the table (DESTROY_VSMMU, teardown, a daemon's stop).
    func unrouteAll(_ served: ServedVSMMU) {
        let keys = served.events.removeAllRoutes()
        guard !keys.isEmpty else { return }
        routes.withLock { table in
            for key in keys where table[key]?.served === served { table[key] = nil }
        }
    }

    /// How many backend viommus are routed (tests: the table does not grow with events).
    var routeCount: Int { routes.withLock { $0.count } }

    /// One batch from a backend (the sink's work; see the notes at the top of the file).
    func deliver(_ events: ViommuEvents, domain: EventDomain) {
        let key = EventRouteKey(domain: domain, handle: events.viommu)
        guard let (served, index) = routes.withLock({ $0[key] }) else {
            orphaned.add(UInt64(events.records.count) + (events.lostBefore ? 1 : 0), ordering: .relaxed)
            return
        }
        var counts = ViommuEventCounters()
        if events.lostBefore { counts.lostUpstream = 1 }
        // Only the records of devices registered on this viommu now (SET_DEV_ID): the vSID was the one the
        // kernel substituted when it raised the event; a device unregistered since is gone.
        let engine = served.engine
        var kept: [EventRecord] = []
        kept.reserveCapacity(events.records.count)
        for record in events.records {
            if let device = engine.device(record.streamID), device.viommu == index {
                kept.append(record)
            } else {
                counts.droppedDeviceGone &+= 1
            }
        }
        if !kept.isEmpty || events.lostBefore {
            if let queue = served.events.queue.withLock({ $0 }) {
                let outcome = queue.write(kept, viommu: UInt32(index.rawValue), lostBefore: events.lostBefore)
                if outcome.closed {
                    counts.droppedNoQueue &+= UInt64(kept.count)
                } else {
                    counts.forwarded &+= UInt64(outcome.written)
                    counts.droppedOverflow &+= UInt64(outcome.droppedFull)
                }
            } else {
                counts.droppedNoQueue &+= UInt64(kept.count)
            }
        }
        served.events.count(counts, viommu: index)
    }
}

/// The ``ViommuEventSink`` the daemon sets on a backend: hands each batch to the event service with the
/// backend's handle domain. Holds the service weakly (a backend outlives no server, but a simulated pSMMU
/// a test made may).
final class EventSinkAdapter: ViommuEventSink {
    private weak let service: EventService?
    let domain: EventDomain

    init(service: EventService, domain: EventDomain) {
        self.service = service
        self.domain = domain
    }

    func viommuEventsArrived(_ events: ViommuEvents) {
        service?.deliver(events, domain: domain)
    }
}

extension ServedVSMMU {
    /// Takes the vSMMU's event queue away and ends it (UNMAP_EVENT_QUEUE, teardown, a daemon's stop):
    /// STOPPED, call signalled, unmapped, closed; its names leave the fd store unless `keepingStore` (a
    /// daemon that stops and leaves the queue to the next process). Nothing happens without a queue.
    func endEventQueue(keepingStore: Bool = false) {
        guard let queue = events.replaceQueue(with: nil) else { return }
        queue.close()
        guard !keepingStore else { return }
        let names = EventQueueService.storeNames(id)
        for name in [names.memory, names.call] { removeDescriptor(name: name) }
    }
}
