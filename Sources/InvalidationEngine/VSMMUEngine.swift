#if canImport(Glibc)
import Glibc
#endif
import CommandRing
import PSMMU
import SMMUv3
import VirtualSMMU
import VSMMUSystem

/// One vSMMU's data path and control path: the pure ``VSMMU`` state and router, one ``ViommuQueue``
/// (lock-free ring + drain) per viommu, and the pSMMU backends the queues drain into.
///
/// ```
/// submit(batch) ─▶ VSMMU.route ─▶ ViommuQueue.push (per viommu) ─▶ sink ─▶ PSMMUBackend.invalidate
///                               └▶ SyncFence per CMD_SYNC ─────────────────▶ Submission completes
/// ```
///
/// Control operations (attach, SET_DEV_ID, link, CD update, unlink, UNSET_DEV_ID, detach) update the
/// vSMMU and mirror the change into the viommu's backend (vdevices, nested HWPTs); a backend refusal
/// undoes the vSMMU change, so both always agree. Removals first wait until the viommu's queue has
/// executed everything pushed before, so no queued command names a vdevice that is gone.
///
/// Two locks. Submissions and control operations of one engine are serialised by the *submit* lock;
/// routing, pushing and fence placement happen under it, so each viommu receives the guest's commands in
/// the guest's order. The *state* lock guards the vSMMU and the attached viommus and is held only for
/// short steps — routing, a control operation's bookkeeping and backend calls, reading statistics —
/// never while a queue executes commands: under the inline drain policy the submitting thread executes
/// the commands (backend invalidations, which may be slow or stall) before it returns, which is what keeps
/// a CMD_SYNC round trip free of thread hand-offs, and readers (``vsmmu``, ``viommuStatistics``, the
/// daemon's STATS and watchdog) must not wait behind that. Completion callbacks may run on the submitting
/// thread while the submit lock is held: they must not call back into the engine.
///
/// No thread ever waits for a queue while holding the state lock. A control operation that must wait
/// for a viommu's queue (UNSET_DEV_ID waits until what was queued executed; a detach stops the queue,
/// which drains it) does so under the submit lock only, then takes the state lock for its bookkeeping
/// and backend calls. The submit lock alone is enough to keep the engine's invariant — every change
/// of the vSMMU and its backends is made by one thread at a time, in order with the submissions —
/// because every mutator holds it; the state lock only keeps readers from seeing a change half made.
/// So a stalled pSMMU holds back this vSMMU's own submissions and control operations (which must come
/// after the wait anyway) and nothing else: ``vsmmu``, ``viommuStatistics``, STATS, LIST, liveness and
/// the accept loop's watchdog ping go on.
///
/// A command failure that a control operation's wait consumed, or that arrived after the stall limit
/// abandoned the CMD_SYNC covering it, is kept (``GuestQueueState``) and reported at the guest's next
/// CMD_SYNC, as the SMMU's `CMDQ_CONS.ERR` would be. With a stall limit
/// (``Configuration/stallTimeout``), a CMD_SYNC whose queues consume nothing for the limit fails with
/// CERROR_ABT and its commands stay queued, in order.
public final class VSMMUEngine: Sendable {
    /// How the engine builds its queues.
    public struct Configuration: Hashable, Sendable {
        /// Per-viommu queue settings (ring capacity, drain policy, spin budgets).
        public var queue: ViommuQueue.Configuration
        /// The stall limit: how long a CMD_SYNC waits on queues that consume nothing before it fails
        /// with CERROR_ABT (at its guest index), and how long a push waits for room in a full ring
        /// before it fails the same way at its first command; `nil` (the default): no limit, a
        /// stalled backend holds its syncs until it wakes up. Counted from the last progress (a ring
        /// slot consumed), so a slow backend that keeps consuming is not a stalled one.
        ///
        /// With a limit, no submitting or waiting thread calls a backend: the queues drain on their
        /// drain threads (``ViommuQueue/DrainPolicy/drainThread``) whatever ``queue`` says, because a
        /// submitter stuck in a stalled backend call could not answer its VMM. That costs a thread
        /// hand-off per CMD_SYNC (BENCHMARKS.md). What stays queued behind an abandoned CMD_SYNC still
        /// executes, in order; see ``Submission/expire()`` and ``GuestQueueState``.
        public var stallTimeout: Duration?
        /// Where the queues' drain threads come from: the lane of each viommu's pSMMU in this pool
        /// (shared by every engine of a daemon, so threads do not grow with the VMs), or, when `nil`,
        /// a thread per queue.
        public var drainPool: DrainPool?

        public init(queue: ViommuQueue.Configuration = .init(), stallTimeout: Duration? = nil, drainPool: DrainPool? = nil) {
            self.queue = queue
            self.stallTimeout = stallTimeout
            self.drainPool = drainPool
        }

        /// Makes a queue for a viommu on `pSMMU` with ``effectiveQueue``, on that pSMMU's lane of
        /// ``drainPool`` if there is one.
        func makeQueue(pSMMU: String, sink: @escaping CommandSink) throws(ViommuQueueError) -> ViommuQueue {
            let queue = effectiveQueue
            let lane = try queue.drainPolicy == .inline ? nil : drainPool?.lane(for: pSMMU)
            return try ViommuQueue(configuration: queue, drainLane: lane, sink: sink)
        }

        /// The queue configuration the engine builds its queues with: ``queue``, draining on the drain
        /// threads when there is a stall limit.
        public var effectiveQueue: ViommuQueue.Configuration {
            var queue = self.queue
            if stallTimeout != nil { queue.drainPolicy = .drainThread }
            return queue
        }
    }

    /// A viommu as the engine holds it: its backend, the backend's handle, its queue and the backend
    /// objects mirrored from the vSMMU.
    struct AttachedViommu: Sendable {
        var backend: any PSMMUBackend
        var handle: ViommuHandle
        var queue: ViommuQueue
        /// What the VMM passed at ATTACH_VIOMMU (kept for ``snapshot()``).
        var request = ViommuAttachRequest()
        var vdevices: [StreamID: VDeviceHandle] = [:]
        var hwpts: [S1HWPTID: HWPTHandle] = [:]
        /// Where each registered device is attached; absent: where the VMM had it (the nest parent).
        var domains: [StreamID: DeviceDomain] = [:]
    }

    struct State: Sendable {
        var vsmmu = VSMMU()
        var viommus: [ViommuIndex: AttachedViommu] = [:] {
            didSet { queueTable = (0..<VSMMU.maximumViommus).map { viommus[ViommuIndex($0)]?.queue } }
        }
        /// Each attached viommu's queue by index: what the data path reads, without copying an
        /// ``AttachedViommu`` (backend existential, handle maps) out of `viommus` per fence.
        private(set) var queueTable: [ViommuQueue?] = Array(repeating: nil, count: VSMMU.maximumViommus)
        var stopped = false

        /// The queue of `viommu`, if it is attached.
        @inline(__always)
        func queue(_ viommu: ViommuIndex) -> ViommuQueue? {
            viommu.index < queueTable.count ? queueTable[viommu.index] : nil
        }
    }

    public let configuration: Configuration
    /// A pthread mutex (``Locked``) rather than `Synchronization.Mutex`, which ThreadSanitizer cannot see.
    let state: Locked<State>
    /// Serialises submissions, control operations and stop, in that order of lock acquisition before `state`.
    /// What only a submission and the control operations touch, under ``submitLock``: the spare
    /// submission and the serial counter. (Inside the lock's value rather than beside it: a `Locked<Void>`
    /// hands its body a zero-sized value whose address is the end of the lock object, which
    /// ThreadSanitizer then saw written from two threads as if by two locks.)
    private struct SubmitState: Sendable {
        /// A submission handed back with ``recycle(_:)``, reused by the next ``submit(_:policy:onComplete:)``
        /// once nobody else holds it.
        var spare: Submission?
        /// The serial of the last submission (never 0 once one was made): the tag its commands carry in the
        /// rings. It wraps after 2^32 − 1 batches; a command of a batch that many batches back cannot still be
        /// in a ring.
        var lastSerial: UInt32 = 0
    }
    private let submitLock = Locked(SubmitState())
    /// The router's reusable output: only touched while `submitLock` is held.
    nonisolated(unsafe) private let routed = RoutedBatch()
    /// Per-viommu scratch of a submission being built: only touched while `submitLock` is held.
    nonisolated(unsafe) private let scratch = SubmitScratch()
    /// The guest command queue's state between batches: a carried failure, the stalled viommus.
    let queueState = GuestQueueState()

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.state = Locked(State())
    }

    deinit { stop() }

    // MARK: Observing

    /// A snapshot of the vSMMU state (device table, vSTEs, HWPTs, ASID index, routing counters).
    public var vsmmu: VSMMU { state.withLock { $0.vsmmu } }

    /// Per-viommu figures: the backend's counters and the queue's statistics.
    public struct ViommuStatistics: Sendable {
        public var index: ViommuIndex
        public var pSMMU: String
        public var handle: ViommuHandle
        public var queue: ViommuQueue.Statistics
        public var backend: BackendCounters
        /// Commands accepted and not yet executed (``ViommuQueue/occupancy``).
        public var occupancy: UInt64
    }

    /// The statistics of every attached viommu, by index.
    public var viommuStatistics: [ViommuStatistics] {
        state.withLock { state in
            state.viommus.keys.sorted().compactMap { index -> ViommuStatistics? in
                guard let attached = state.viommus[index], let viommu = try? state.vsmmu.viommu(index) else { return nil }
                let queue = attached.queue
                return ViommuStatistics(index: index, pSMMU: viommu.pSMMU, handle: attached.handle,
                                        queue: queue.statistics, backend: attached.backend.counters,
                                        occupancy: queue.occupancy)
            }
        }
    }

    /// One attached viommu as the control path sees it: where it sits and its backend's handle.
    public struct AttachedViommuBinding: Hashable, Sendable {
        /// The viommu's index in the vSMMU.
        public var index: ViommuIndex
        /// The pSMMU it sits on (the ATTACH_VIOMMU name).
        public var pSMMU: String
        /// The backend's handle of the viommu (the iommufd `viommu_id`).
        public var handle: ViommuHandle
    }

    /// The binding of `index` if it is attached and has a backend, without a statistics pass or a
    /// ``vsmmu`` copy (the viommus ``viommuStatistics`` lists).
    public func viommu(_ index: ViommuIndex) -> AttachedViommuBinding? {
        state.withLock { state in
            guard let attached = state.viommus[index], let viommu = try? state.vsmmu.viommu(index) else { return nil }
            return AttachedViommuBinding(index: index, pSMMU: viommu.pSMMU, handle: attached.handle)
        }
    }

    /// The backend viommu `index` sits on, if it is attached and has one (SIMULATE_DMA calls its
    /// ``PSMMUBackend/simulateDMA(_:)``, outside every engine lock).
    public func backend(of index: ViommuIndex) -> (any PSMMUBackend)? {
        state.withLock { $0.viommus[index]?.backend }
    }

    /// Whether the vSMMU has viommu `index` attached (``VSMMU/attachedViommus``).
    public func isAttached(_ index: ViommuIndex) -> Bool {
        state.withLock { $0.vsmmu.attachedViommus.contains(index) }
    }

    /// The device registered for `streamID`, if any (``VSMMU/devices``).
    public func device(_ streamID: StreamID) -> VSMMU.Device? {
        state.withLock { $0.vsmmu.devices[streamID] }
    }

    /// The queue of an attached viommu (tests: to hold its consumer role and see the ring path).
    func queue(of viommu: ViommuIndex) -> ViommuQueue? {
        state.withLock { $0.queue(viommu) }
    }

    /// The backend handle of a vdevice / HWPT, for diagnostics and tests.
    package func backendHandles(of streamID: StreamID) -> (vdevice: VDeviceHandle?, hwpt: HWPTHandle?) {
        state.withLock { state in
            guard let device = state.vsmmu.devices[streamID], let attached = state.viommus[device.viommu] else {
                return (nil, nil)
            }
            return (attached.vdevices[streamID], device.hwpt.flatMap { attached.hwpts[$0] })
        }
    }

    // MARK: Control path

    /// Attaches a viommu on `backend` (the pSMMU it drives) and creates its queue.
    /// - Throws: ``EngineError``: the vSMMU's refusal, the backend's, or the queue's.
    @discardableResult
    public func attachViommu(pSMMU: String, backend: any PSMMUBackend,
                             request: ViommuAttachRequest = ViommuAttachRequest()) throws(EngineError) -> ViommuIndex {
        let configuration = self.configuration
        return try serialised { (state: inout State) throws(EngineError) -> ViommuIndex in
            guard !state.stopped else { throw .stopped }
            let index: ViommuIndex
            do throws(VSMMUError) { index = try state.vsmmu.attachViommu(pSMMU: pSMMU) } catch { throw .vsmmu(error) }
            let handle: ViommuHandle
            do throws(BackendError) { handle = try backend.attachViommu(request) } catch {
                try? state.vsmmu.detachViommu(index)
                throw .backend(error)
            }
            let queue: ViommuQueue
            do throws(ViommuQueueError) {
                queue = try configuration.makeQueue(pSMMU: pSMMU) { commands in
                    backend.invalidate(viommu: handle, commands: commands)
                }
            } catch {
                try? backend.detachViommu(handle)
                try? state.vsmmu.detachViommu(index)
                throw .queue(error)
            }
            state.viommus[index] = AttachedViommu(backend: backend, handle: handle, queue: queue, request: request)
            return index
        }
    }

    /// Detaches a viommu without devices: drains and stops its queue, then destroys it in the backend.
    ///
    /// The viommu leaves the vSMMU under the state lock; the wait for its queue to drain (which lasts as
    /// long as its backend stalls) holds only the submit lock, so readers go on meanwhile.
    public func detachViommu(_ index: ViommuIndex) throws(EngineError) {
        try submitLock.withLock { (submit: inout SubmitState) throws(EngineError) in
            let attached = try state.withLock { (state: inout State) throws(EngineError) -> AttachedViommu? in
                do throws(VSMMUError) { try state.vsmmu.detachViommu(index) } catch { throw .vsmmu(error) }
                return state.viommus.removeValue(forKey: index)
            }
            guard let attached else { return }
            submit.spare = nil // its fences hold the queues they covered
            attached.queue.stop()
            do throws(BackendError) { try attached.backend.detachViommu(attached.handle) } catch { throw .backend(error) }
        }
    }

    /// SET_DEV_ID: registers `streamID` for `hostDeviceID` behind `viommu` and allocates its vdevice.
    public func setDeviceID(viommu: ViommuIndex, hostDeviceID: HostDeviceID, streamID: StreamID) throws(EngineError) {
        try setDeviceID(viommu: viommu, device: HostDevice(id: hostDeviceID), streamID: streamID)
    }

    /// SET_DEV_ID: registers `streamID` for `device` behind `viommu` and allocates its vdevice, which
    /// takes over `device.vfioDevice` (closed here when the registration is refused). The device stays
    /// where the VMM attached it until its vSTE is linked.
    public func setDeviceID(viommu: ViommuIndex, device: HostDevice, streamID: StreamID) throws(EngineError) {
        try serialised { (state: inout State) throws(EngineError) in
                do throws(VSMMUError) { try state.vsmmu.setDeviceID(viommu: viommu, hostDeviceID: device.id, streamID: streamID) }
                catch {
                    // The descriptor is still the caller's to close; the backend closes it through its seam.
                    if let backend = state.viommus[viommu]?.backend { backend.discard(device) }
                    else if let fd = device.vfioDevice { _ = Glibc.close(fd) }
                    throw .vsmmu(error)
                }
                guard let attached = state.viommus[viommu] else { return }
                do throws(BackendError) {
                    // From here on the backend owns the descriptor, whatever happens.
                    let vdevice = try attached.backend.allocateVDevice(viommu: attached.handle, device: device,
                                                                       virtualStreamID: streamID)
                    state.viommus[viommu]?.vdevices[streamID] = vdevice
                } catch {
                    _ = try? state.vsmmu.unsetDeviceID(streamID: streamID)
                    throw .backend(error)
                }
        }
    }

    /// UNSET_DEV_ID: waits until the device's viommu executed what was queued, then puts the device back
    /// where the VMM had it (the nest parent), destroys its stage-1 HWPT and its vdevice, in that order:
    /// the kernel refuses to destroy an attached HWPT (EBUSY), and a device must not stay on a nested
    /// HWPT whose vdevice is gone.
    ///
    /// The wait holds only the submit lock (which keeps every other control operation and submission
    /// out, so the device cannot change meanwhile), never the state lock: with a stalled backend it
    /// lasts until the backend wakes up, and readers (``vsmmu``, ``viommuStatistics``, the daemon's
    /// STATS, LIST and watchdog) go on meanwhile. A command failure the wait observes is kept for the
    /// guest's next CMD_SYNC (``GuestQueueState``), as the SMMU's `CMDQ_CONS.ERR` would be.
    public func unsetDeviceID(streamID: StreamID) throws(EngineError) {
        try submitLock.withLock { (_: inout SubmitState) throws(EngineError) in
            let pending = try state.withLock { (state: inout State) throws(EngineError) -> (ViommuIndex, ViommuQueue?) in
                guard let device = state.vsmmu.devices[streamID] else { throw .vsmmu(.unknownStreamID(streamID)) }
                return (device.viommu, state.queue(device.viommu))
            }
            if let queue = pending.1 { quiesce(queue, viommu: pending.0) }
            try state.withLock { (state: inout State) throws(EngineError) in try Self.unsetDeviceID(&state, streamID: streamID) }
        }
    }

    /// UNSET_DEV_ID's bookkeeping and backend calls, once the queue executed what was queued.
    private static func unsetDeviceID(_ state: inout State, streamID: StreamID) throws(EngineError) {
        guard let device = state.vsmmu.devices[streamID] else { throw .vsmmu(.unknownStreamID(streamID)) }
        let attached = state.viommus[device.viommu]
        let removed: S1HWPTID?
        do throws(VSMMUError) { removed = try state.vsmmu.unsetDeviceID(streamID: streamID) } catch { throw .vsmmu(error) }
        guard let attached else { return }
        var firstError: BackendError?
        let vdevice = state.viommus[device.viommu]?.vdevices.removeValue(forKey: streamID)
        if let vdevice, let domain = state.viommus[device.viommu]?.domains.removeValue(forKey: streamID),
           domain != .nestParent {
            do throws(BackendError) { try attached.backend.attachDevice(vdevice, to: .nestParent) } catch { firstError = error }
        }
        if let removed, let hwpt = state.viommus[device.viommu]?.hwpts.removeValue(forKey: removed) {
            do throws(BackendError) { try attached.backend.destroyHWPT(hwpt) } catch { firstError = firstError ?? error }
        }
        if let vdevice {
            do throws(BackendError) { try attached.backend.destroyVDevice(vdevice) } catch { firstError = firstError ?? error }
        }
        if let firstError { throw .backend(firstError) }
    }

    /// The ID registers of each attached viommu's pSMMU (``PSMMUBackend/hardwareInfo(viommu:)``), by index.
    public func hardwareInfo() throws(EngineError) -> [(viommu: ViommuIndex, registers: IDRegisters)] {
        try state.withLock { (state: inout State) throws(EngineError) -> [(viommu: ViommuIndex, registers: IDRegisters)] in
            var result: [(viommu: ViommuIndex, registers: IDRegisters)] = []
            for index in state.viommus.keys.sorted() {
                guard let attached = state.viommus[index] else { continue }
                do throws(BackendError) {
                    result.append((index, try attached.backend.hardwareInfo(viommu: attached.handle)))
                } catch { throw .backend(error) }
            }
            return result
        }
    }

    /// Links (or relinks) the guest STE of `streamID` with its CDs (``VSMMU/link(streamID:ste:contextDescriptors:)``)
    /// and installs the nested HWPT in the backend: a new one when the STE's S1 words changed, the same
    /// one with new CDs otherwise. A backend refusal restores the previous link.
    @discardableResult
    public func link(streamID: StreamID, ste: StreamTableEntry,
                     contextDescriptors: [ContextDescriptor]) throws(EngineError) -> VSMMU.HWPTChange {
        try serialised { (state: inout State) throws(EngineError) -> VSMMU.HWPTChange in
            try Self.link(&state, streamID: streamID) { (vsmmu: inout VSMMU) throws(VSMMUError) in
                try vsmmu.link(streamID: streamID, ste: ste, contextDescriptors: contextDescriptors)
            }
        }
    }

    /// Rewrites one CD of a linked, translating vSTE (``VSMMU/updateContextDescriptor(streamID:substreamID:_:)``).
    @discardableResult
    public func updateContextDescriptor(streamID: StreamID, substreamID: SubstreamID,
                                        _ cd: ContextDescriptor) throws(EngineError) -> VSMMU.HWPTChange {
        try serialised { (state: inout State) throws(EngineError) -> VSMMU.HWPTChange in
            try Self.link(&state, streamID: streamID) { (vsmmu: inout VSMMU) throws(VSMMUError) in
                try vsmmu.updateContextDescriptor(streamID: streamID, substreamID: substreamID, cd)
            }
        }
    }

    /// Unlinks the vSTE of `streamID` and destroys its HWPT in the backend.
    public func unlink(streamID: StreamID) throws(EngineError) {
        try serialised { (state: inout State) throws(EngineError) in
            _ = try Self.link(&state, streamID: streamID) { (vsmmu: inout VSMMU) throws(VSMMUError) in
                let removed = try vsmmu.unlink(streamID: streamID)
                return VSMMU.HWPTChange(removed: removed, current: nil, isNew: false)
            }
        }
    }

    /// Where a registered device's DMA must go after a vSTE change, as QEMU's
    /// `smmuv3_accel_install_ste` decides it: a translating vSTE → its nested HWPT; bypass → the bypass
    /// HWPT; V = 0, abort, or an unlinked vSTE → the abort HWPT.
    static func domain(of device: VSMMU.Device, hwpts: [S1HWPTID: HWPTHandle]) -> DeviceDomain {
        if let id = device.hwpt, let handle = hwpts[id] { return .nested(handle) }
        if let ste = device.ste, ste.isValid, ste.config == .bypass { return .bypass }
        return .abort
    }

    /// Applies a vSTE change to the vSMMU, then mirrors it into the backend make-before-break: a new
    /// nested HWPT is allocated, the device is attached to its new domain (which replaces the old
    /// attachment atomically), and only then is the old HWPT destroyed (the kernel refuses to destroy
    /// an attached one: EBUSY). A backend refusal restores the previous link, and the device stays
    /// where it was.
    private static func link(_ state: inout State, streamID: StreamID,
                             _ change: (inout VSMMU) throws(VSMMUError) -> VSMMU.HWPTChange) throws(EngineError) -> VSMMU.HWPTChange {
        guard let before = state.vsmmu.devices[streamID] else { throw .vsmmu(.unknownStreamID(streamID)) }
        let result: VSMMU.HWPTChange
        do throws(VSMMUError) { result = try change(&state.vsmmu) } catch { throw .vsmmu(error) }
        guard var attached = state.viommus[before.viommu], let after = state.vsmmu.devices[streamID] else { return result }
        var allocated: HWPTHandle?
        do throws(BackendError) {
            if let current = result.current, let ste = after.ste {
                if result.isNew {
                    let handle = try attached.backend.allocateNestedHWPT(
                        viommu: attached.handle, hostDeviceID: after.hostDeviceID, ste: ste,
                        contextDescriptors: after.contextDescriptors)
                    allocated = handle
                    attached.hwpts[current] = handle
                } else if let handle = attached.hwpts[current] {
                    try attached.backend.updateContextDescriptors(handle, after.contextDescriptors)
                }
            }
            let target = Self.domain(of: after, hwpts: attached.hwpts)
            if let vdevice = attached.vdevices[streamID], attached.domains[streamID, default: .nestParent] != target {
                try attached.backend.attachDevice(vdevice, to: target)
                attached.domains[streamID] = target
            }
        } catch {
            if let allocated, let current = result.current {
                attached.hwpts[current] = nil
                try? attached.backend.destroyHWPT(allocated)
            }
            // Put the previous link back (its ASIDs were never removed from the backend's view).
            if let ste = before.ste {
                _ = try? state.vsmmu.link(streamID: streamID, ste: ste, contextDescriptors: before.contextDescriptors)
            } else {
                _ = try? state.vsmmu.unlink(streamID: streamID)
            }
            if let restored = state.vsmmu.devices[streamID]?.hwpt, let old = before.hwpt, let handle = attached.hwpts[old], restored != old {
                attached.hwpts[restored] = handle
                attached.hwpts[old] = nil
            }
            state.viommus[before.viommu] = attached
            throw .backend(error)
        }
        var destroyError: BackendError?
        if let removed = result.removed, let handle = attached.hwpts.removeValue(forKey: removed) {
            do throws(BackendError) { try attached.backend.destroyHWPT(handle) } catch { destroyError = error }
        }
        state.viommus[before.viommu] = attached
        if let destroyError { throw .backend(destroyError) }
        return result
    }

    /// Runs a control operation: after any submission in progress, with the state locked.
    func serialised<Result, Failure: Error>(_ body: (inout State) throws(Failure) -> Result) throws(Failure) -> Result {
        try submitLock.withLock { (_: inout SubmitState) throws(Failure) -> Result in
            try state.withLock { (state: inout State) throws(Failure) -> Result in try body(&state) }
        }
    }

    /// Blocks until `queue` executed everything pushed to it so far. The fence consumes the queue's
    /// first failure since its previous fence, which no guest CMD_SYNC has reported yet: it is carried
    /// to the guest's next CMD_SYNC rather than dropped.
    private func quiesce(_ queue: ViommuQueue, viommu: ViommuIndex) {
        do throws(SyncFailure) { try queue.sync().wait() } catch {
            for failure in error.failures {
                guard case .commandFailed(let command) = failure.reason else { continue }
                queueState.carry(.init(queueError: command.queueError, viommu: viommu,
                                       message: "\(command.command.opcode.name) on \(viommu): \(command.message)"))
            }
        }
    }

    // MARK: Data path

    /// Routes a guest batch and pushes each viommu's commands into its queue, with a fence per CMD_SYNC.
    ///
    /// The returned ``Submission`` completes when every CMD_SYNC of the batch completed; under the
    /// inline drain policy that is usually before this returns. Its ``SubmissionResult`` says how many
    /// commands were consumed and, if one failed, which and with what CERROR.
    public func submit(_ batch: UnsafeBufferPointer<Command>, policy: RoutingPolicy = .stopAtFirstError,
                       onComplete: (@Sendable (SubmissionResult) -> Void)? = nil) -> Submission {
        submitLock.withLock { (submit: inout SubmitState) -> Submission in
            guard case .submission(let submission) = submitLocked(&submit, batch, policy: policy, onComplete: onComplete) else {
                preconditionFailure("a batch submitted with needsSubmission has a Submission")
            }
            return submission
        }
    }

    /// Submits `batch`, waits for it and hands its submission back for reuse: ``submit(_:policy:onComplete:)``,
    /// ``Submission/wait()`` and ``recycle(_:)`` in one. A batch that completed while it was submitted
    /// (every viommu it reached was idle: the usual case under an inline drain policy) is recycled under
    /// the lock the submission took anyway, with no second acquisition and no wait.
    public func execute(_ batch: UnsafeBufferPointer<Command>, policy: RoutingPolicy = .stopAtFirstError) -> SubmissionResult {
        let outcome = submitLock.withLock { (submit: inout SubmitState) -> Submitted in
            switch submitLocked(&submit, batch, policy: policy, onComplete: nil, needsSubmission: false) {
            case .completed(let result): return .completed(result)
            case .submission(let submission):
                guard let result = submission.result else { return .submission(submission) }
                submit.spare = submission
                return .completed(result)
            }
        }
        switch outcome {
        case .completed(let result): return result
        case .submission(let submission):
            let result = submission.wait()
            recycle(submission)
            return result
        }
    }

    /// What ``submitLocked(_:_:policy:onComplete:needsSubmission:)`` made of a batch.
    private enum Submitted: @unchecked Sendable {
        /// Every CMD_SYNC of the batch completed while it was submitted, each on idle viommus
        /// (``ViommuQueue/executeAndSync(_:)``): no ``Submission`` was needed to observe it.
        case completed(SubmissionResult)
        case submission(Submission)
    }

    /// ``submit(_:policy:onComplete:)`` with the submit lock held. Without `needsSubmission`, a batch whose
    /// every CMD_SYNC completed at once on idle viommus (nothing pushed to a ring, no stall limit, nothing
    /// carried from an earlier batch) comes back as its result, and no ``Submission`` is made or reset
    /// for it: ``SubmissionBuilder`` makes one only at the first push.
    private func submitLocked(_ submit: inout SubmitState, _ batch: UnsafeBufferPointer<Command>, policy: RoutingPolicy,
                              onComplete: (@Sendable (SubmissionResult) -> Void)?, needsSubmission: Bool = true) -> Submitted {
        let routed = self.routed
        submit.lastSerial = submit.lastSerial == .max ? 1 : submit.lastSerial &+ 1
        let serial = submit.lastSerial
        // Route under the state lock; push, place fences and drain with only the submit lock held.
        let state = state.withLock { (state: inout State) -> QueueSnapshot in
            state.vsmmu.route(batch, into: routed, policy: policy)
            return QueueSnapshot(queueTable: state.queueTable, stopped: state.stopped)
        }
        let stallLimit = configuration.stallTimeout.map { Submission.StallLimit(timeout: $0, queueState: queueState) }
        var submission = SubmissionBuilder(batchCount: batch.count, routed: routed, serial: serial, onComplete: onComplete,
                                           stallLimit: stallLimit, spare: submit.spare)
        submit.spare = nil
        defer { if let unused = submission.spare { submit.spare = unused } }
        if state.stopped {
            let stopped = submission.materialize()
            stopped.finishStopped()
            return .submission(stopped)
        }
        let syncPoints = routed.syncPoints
        // A stall limit, and whatever an earlier batch left, take the general path from the start.
        if stallLimit != nil || queueState.needsAttention { submission.materialize() }
        // What earlier batches left (one atomic load when nothing): a failure for this batch's first
        // CMD_SYNC, and viommus whose abandoned CMD_SYNC is pending, which every sync covers.
        var carried: GuestQueueState.CarriedFailure?
        var stalled: UInt64 = 0
        if queueState.needsAttention {
            if !syncPoints.isEmpty { carried = queueState.takeCarried() }
            stalled = queueState.stalledViommus
        }
        // With a stall limit: viommus this batch gave up pushing to (their ring stayed full).
        var refused: UInt64 = 0
        // Each viommu's commands sync point by sync point: on an idle queue executed and synced at once
        // (``ViommuQueue/executeAndSync(_:)``), else pushed with the sync's fence placed after them.
        // The engine's own scratch arrays (only touched under the submit lock): no closure, which would
        // copy the builder it captures.
        let pushedUpTo = scratch.pushedUpTo
        let covered = scratch.covered
        // Read only for viommus the batch touched (every fence's is one of them).
        for viommu in routed.touched { pushedUpTo.initializeElement(at: viommu.index, to: 0) }
        for sync in syncPoints {
            let fences = routed.fences(of: sync)
            var queues: [ViommuQueue] = []
            var coveredCount = 0
            var immediateFailure = false
            if let failure = carried {
                carried = nil
                submission.recordFailure(.init(index: sync.index, queueError: failure.queueError,
                                               origin: .backend(failure.viommu),
                                               message: failure.message + " (an earlier command, reported at this CMD_SYNC)"))
                immediateFailure = true
            }
            for fence in fences {
                guard let queue = state.queue(fence.viommu) else { continue }
                let start = pushedUpTo[fence.viommu.index]
                pushedUpTo[fence.viommu.index] = fence.end
                if let limit = stallLimit {
                    let bit: UInt64 = 1 << UInt64(fence.viommu.index)
                    guard refused & bit == 0 else { continue }
                    if !Self.pushWithinStallLimit(routed, fence.viommu, from: start, to: fence.end, into: queue,
                                                  recording: submission.materialize(), timeout: limit.timeout) {
                        // Nothing more goes to it in this batch; the sync still covers what it
                        // queued (the slot kept for the marker), and is abandoned with it.
                        refused |= bit
                        guard Self.room(in: queue) >= 1 else { continue }
                    }
                } else {
                    if Self.executeAndSync(routed, fence.viommu, from: start, to: fence.end, on: queue,
                                           syncIndex: sync.index, recording: &submission, failed: &immediateFailure) {
                        continue
                    }
                    Self.push(routed, fence.viommu, from: start, to: fence.end, into: queue, recording: submission.materialize())
                }
                if queues.isEmpty { queues.reserveCapacity(fences.count) }
                queues.append(queue)
                covered.initializeElement(at: coveredCount, to: fence.viommu)
                coveredCount += 1
            }
            // A CMD_SYNC that covers no viommu of its own is how a guest retries an abandoned
            // one (CERROR_ABT leaves CONS at it: __arm_smmu_cmdq_skip_err "retrying command
            // fetch"): it covers the stalled viommus, so it cannot succeed before what is queued
            // on them. A viommu this batch stopped pushing to stays covered for the batch.
            var uncovered = (fences.isEmpty ? stalled : 0) | refused
            while uncovered != 0 {
                let i = uncovered.trailingZeroBitCount
                uncovered &= uncovered - 1
                let viommu = ViommuIndex(i)
                guard let queue = state.queue(viommu),
                      !UnsafeBufferPointer(rebasing: covered[..<coveredCount]).contains(viommu) else { continue }
                guard Self.waitForRoom(in: queue, atLeast: 1, timeout: stallLimit?.timeout ?? .zero) >= 1 else {
                    // Not even a marker fits: the queue is as stalled as it was.
                    submission.recordFailure(Self.stalledFailure(at: sync.index, on: viommu, timeout: stallLimit?.timeout))
                    immediateFailure = true
                    continue
                }
                queues.append(queue)
                covered.initializeElement(at: coveredCount, to: viommu)
                coveredCount += 1
            }
            submission.addSync(index: sync.index, command: sync.command,
                               covering: UnsafeBufferPointer(rebasing: covered[..<coveredCount]), queues: queues,
                               immediateFailure: immediateFailure)
        }
        for viommu in routed.touched {
            let end = routed.count(for: viommu)
            guard end > pushedUpTo[viommu.index], let queue = state.queue(viommu) else { continue }
            if let limit = stallLimit {
                let bit: UInt64 = 1 << UInt64(viommu.index)
                guard refused & bit == 0 else { continue }
                _ = Self.pushWithinStallLimit(routed, viommu, from: pushedUpTo[viommu.index], to: end, into: queue,
                                              recording: submission.materialize(), timeout: limit.timeout)
            } else {
                Self.push(routed, viommu, from: pushedUpTo[viommu.index], to: end, into: queue,
                          recording: submission.materialize())
            }
        }
        if !needsSubmission, let result = submission.immediateResult() { return .completed(result) }
        let built = submission.materialize()
        built.sealed()
        return .submission(built)
    }

    /// Hands back a submission its caller is done with (it waited for it and drops it), so that a later
    /// ``submit(_:policy:onComplete:)`` may reuse it rather than allocate one. The engine keeps at most
    /// one; it reuses it only once it holds the only reference to it and the submission is complete, so
    /// recycling a submission someone still observes is safe (it is then simply not reused).
    public func recycle(_ submission: Submission) {
        submitLock.withLock { $0.spare = submission }
    }

    /// Where a submission being built keeps, per viommu, how far its commands were pushed, and the
    /// viommus a sync covers: one allocation for the engine's life.
    private final class SubmitScratch {
        let pushedUpTo = UnsafeMutableBufferPointer<Int>.allocate(capacity: VSMMU.maximumViommus)
        let covered = UnsafeMutableBufferPointer<ViommuIndex>.allocate(capacity: VSMMU.maximumViommus)

        deinit {
            pushedUpTo.deallocate()
            covered.deallocate()
        }
    }

    /// The queues a submission pushes to, read under the state lock with the routing.
    private struct QueueSnapshot {
        var queueTable: [ViommuQueue?]
        var stopped: Bool

        @inline(__always)
        func queue(_ viommu: ViommuIndex) -> ViommuQueue? {
            viommu.index < queueTable.count ? queueTable[viommu.index] : nil
        }
    }

    /// Routes and submits a batch held in an array.
    public func submit(_ batch: [Command], policy: RoutingPolicy = .stopAtFirstError,
                       onComplete: (@Sendable (SubmissionResult) -> Void)? = nil) -> Submission {
        batch.withUnsafeBufferPointer { submit($0, policy: policy, onComplete: onComplete) }
    }

    /// Executes and syncs `viommu`'s commands `start..<end` at once if its queue is idle, recording a
    /// failure (at its guest index, or at the sync's for an earlier unsynced command) in `submission`.
    /// Returns `false`, having done nothing, when the queue is busy.
    private static func executeAndSync(_ routed: RoutedBatch, _ viommu: ViommuIndex, from start: Int, to end: Int,
                                       on queue: ViommuQueue, syncIndex: Int, recording submission: inout SubmissionBuilder,
                                       failed: inout Bool) -> Bool {
        let commands = routed.commandBuffer(for: viommu)
        guard let outcome = queue.executeAndSync(UnsafeBufferPointer(rebasing: commands[start..<end])) else { return false }
        if let failure = outcome.failure {
            let index = outcome.failedOffset.map { offset in Int(routed.guestIndexBuffer(for: viommu)[start + offset]) } ?? syncIndex
            submission.recordBackendFailure(failure, on: viommu, at: index)
            failed = true
        }
        return true
    }

    private static func push(_ routed: RoutedBatch, _ viommu: ViommuIndex, from start: Int, to end: Int,
                             into queue: ViommuQueue, recording submission: Submission) {
        guard end > start else { return }
        let commands = routed.commandBuffer(for: viommu)
        let indices = routed.guestIndexBuffer(for: viommu)
        // Each command carries its guest index in its ring slot: a failure comes back in guest terms.
        _ = try? queue.push(UnsafeBufferPointer(rebasing: commands[start..<end]),
                            tag: { submission.ringTag(guestIndex: indices[start + $0]) })
    }

    /// Free ring slots of `queue`. Only this engine pushes to its queues, under its submit lock, so
    /// while it holds that lock the room can only grow.
    private static func room(in queue: ViommuQueue) -> Int {
        queue.ring.freeSlots
    }

    /// With a stall limit: pushes `viommu`'s commands `start..<end` in pieces that fit the ring, each
    /// leaving a slot for the marker of the fence that follows, so that no push or fence placement
    /// ever blocks on a full ring. While the ring is full it waits for room as long as the queue keeps
    /// consuming; once it consumed nothing for `timeout` it gives up and records CERROR_ABT at the
    /// guest index of the first command not pushed (CONS stops there; the guest retries from it). A
    /// stalled backend thereby holds back only the producers of its own viommu, for at most the limit
    /// per INVALIDATE, and no memory grows: the ring is fixed.
    /// - Returns: whether every command was pushed.
    private static func pushWithinStallLimit(_ routed: RoutedBatch, _ viommu: ViommuIndex, from start: Int, to end: Int,
                                             into queue: ViommuQueue, recording submission: Submission,
                                             timeout: Duration) -> Bool {
        var offset = start
        while offset < end {
            let room = waitForRoom(in: queue, atLeast: 2, timeout: timeout) - 1
            guard room > 0 else {
                let index = routed.withGuestIndices(for: viommu) { Int($0[offset]) }
                submission.recordFailure(stalledFailure(at: index, on: viommu, timeout: timeout))
                return false
            }
            let next = min(end, offset + room)
            push(routed, viommu, from: offset, to: next, into: queue, recording: submission)
            offset = next
        }
        return true
    }

    /// The room in `queue` once it has at least `slots` free slots, or what it has when it consumed
    /// nothing for `timeout`.
    private static func waitForRoom(in queue: ViommuQueue, atLeast slots: Int, timeout: Duration) -> Int {
        var room = room(in: queue)
        if room >= slots { return room }
        var consumed = queue.consumedPosition
        var deadline = ContinuousClock.now + timeout
        var polls = 0
        while room < slots {
            polls += 1
            if polls < 64 { sched_yield() } else { usleep(100) }
            room = Self.room(in: queue)
            let now = queue.consumedPosition
            if now != consumed {
                consumed = now
                deadline = ContinuousClock.now + timeout
            } else if ContinuousClock.now >= deadline {
                break
            }
        }
        return room
    }

    /// The CERROR_ABT of a command the engine did not queue because `viommu`'s ring stayed full.
    private static func stalledFailure(at index: Int, on viommu: ViommuIndex, timeout: Duration?) -> SubmissionResult.Failure {
        .init(index: index, queueError: .abort, origin: .backend(viommu),
              message: "\(viommu)'s pSMMU is stalled: its ring is full and consumed nothing for \(timeout ?? .zero) "
                  + "(stall limit); this command and the rest of the batch for \(viommu) were not queued")
    }

    /// Stops every queue: what was pushed is executed, pending syncs complete; later submissions fail.
    public func stop() {
        let queues = serialised { (state: inout State) -> [ViommuQueue] in
            state.stopped = true
            return state.viommus.values.map(\.queue)
        }
        submitLock.withLock { $0.spare = nil }
        for queue in queues { queue.stop() }
    }
}

/// A refused control operation.
public enum EngineError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The vSMMU refused it (unknown StreamID, conflicting registration, invalid vSTE, …).
    case vsmmu(VSMMUError)
    /// The pSMMU backend refused it.
    case backend(BackendError)
    /// The viommu's queue could not be created.
    case queue(ViommuQueueError)
    /// The engine was stopped.
    case stopped

    public var description: String {
        switch self {
        case .vsmmu(let e): return e.description
        case .backend(let e): return "backend: \(e)"
        case .queue(let e): return "queue: \(e)"
        case .stopped: return "the vSMMU engine is stopped"
        }
    }
}
