import InvalidationEngine
import PSMMU
import SMMUv3
import VirtualSMMU
import VSMMUJournal
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

/// One vSMMU the daemon serves: its engine, its owner and the figures the engine does not keep.
///
/// Only its owner's connection thread changes it (control operations and INVALIDATE, in order);
/// admin requests from other connections read it concurrently (the engine and ``statistics`` are
/// thread-safe).
final class ServedVSMMU: Sendable {
    /// Per-request figures kept by the daemon: INVALIDATE requests and the sync latency histogram.
    struct Statistics: Sendable {
        var invalidateRequests: UInt64 = 0
        var syncLatencyCount: UInt64 = 0
        var syncLatencySumNanoseconds: UInt64 = 0
        /// Bucket b counts latencies t with 2^b ≤ t < 2^(b+1) (b = 0 also counts t = 0).
        var syncLatencyLog2: [UInt64] = Array(repeating: 0, count: 64)
        /// The shared command queue's figures (PROTOCOL.md §8).
        var queue = QueueStatistics()

        mutating func recordSync(latencyNanoseconds t: UInt64) {
            syncLatencyCount += 1
            syncLatencySumNanoseconds &+= t
            syncLatencyLog2[Self.bucket(t)] += 1
        }

        static func bucket(_ t: UInt64) -> Int { t == 0 ? 0 : 63 - t.leadingZeroBitCount }
    }

    /// The shared command queue's figures, kept by its consumer thread (PROTOCOL.md §8).
    struct QueueStatistics: Sendable {
        /// Commands and CMD_SYNCs consumed through the queue.
        var commands: UInt64 = 0
        var syncs: UInt64 = 0
        /// Queue errors raised (a refused command, a bad PROD).
        var errors: UInt64 = 0
        /// Sleeps on kick that the kick ended, and writes to call.
        var kicksReceived: UInt64 = 0
        var callsSent: UInt64 = 0
        /// Idle polls of PROD that caught the next command, and those that ended in a sleep.
        var pollsCaught: UInt64 = 0
        var pollsMissed: UInt64 = 0

        /// Adds `other`'s figures to these.
        mutating func add(_ other: QueueStatistics) {
            commands &+= other.commands
            syncs &+= other.syncs
            errors &+= other.errors
            kicksReceived &+= other.kicksReceived
            callsSent &+= other.callsSent
            pollsCaught &+= other.pollsCaught
            pollsMissed &+= other.pollsMissed
        }
    }

    /// Who owns it: a connection, or nobody yet after a restart (``awaitingOwner``).
    struct Ownership: Sendable {
        /// The owning connection's id; 0 while awaiting its owner (connection ids start at 1).
        var connection: UInt64
        var credentials: PeerCredentials?
        /// Whether the owner took it over with RESUME_VSMMU (reply replay applies then).
        var resumed = false
    }

    /// What an iommufd vSMMU rebuilt from the journal still waits for before it serves: the descriptors
    /// its objects live in did not come back from the fd store (PROTOCOL.md §5.14). RESUME_VSMMU brings
    /// the VMM's iommufd, SET_DEV_ID each device's VFIO cdev; once every one is there the engine is
    /// restored from ``snapshot`` by id.
    struct AwaitedDescriptors: Sendable {
        /// The engine's registrations as journaled.
        var snapshot: EngineSnapshot
        /// The VMM's iommufd for each iommufd viommu (owned; a duplicate per viommu).
        var iommufds: [ViommuIndex: Int32] = [:]
        /// Each device's VFIO cdev on an iommufd viommu, by vSID (owned).
        var vfioDevices: [StreamID: Int32] = [:]
        /// Each iommufd viommu's vEVENTQ, when it came back from the fd store (owned). Not awaited: a
        /// viommu whose queue did not come back gets a new one (the events the old one held are lost).
        var eventQueues: [ViommuIndex: Int32] = [:]
        /// The iommufd viommus, which must come back, and the devices behind them, whose cdevs may come
        /// later (a device re-adopted without its cdev is pending in the backend until SET_DEV_ID hands it
        /// back: `IOMMUFDBackend.restoreViommu`).
        var neededIOMMUFDs: Set<ViommuIndex>
        var neededVFIODevices: Set<StreamID>

        /// Whether the restore can run: every iommufd is back (the objects live in it; invalidations need
        /// nothing else).
        var isComplete: Bool { neededIOMMUFDs.isSubset(of: Set(iommufds.keys)) }

        /// What is still missing, for the error that says so.
        var missing: String {
            neededIOMMUFDs.isSubset(of: Set(iommufds.keys)) ? "nothing" : "the VMM's iommufd (RESUME_VSMMU)"
        }

        /// Closes the descriptors held.
        func close() {
            for fd in iommufds.values { _ = Glibc.close(fd) }
            for fd in vfioDevices.values { _ = Glibc.close(fd) }
            for fd in eventQueues.values { _ = Glibc.close(fd) }
        }
    }

    let id: VSMMUID
    let name: String
    private let engineSlot: Locked<VSMMUEngine>
    /// The engine. Replaced once, when an iommufd vSMMU that awaited its descriptors is restored.
    var engine: VSMMUEngine { engineSlot.withLock { $0 } }
    /// Set while an iommufd vSMMU rebuilt from the journal awaits its descriptors.
    let awaited = Locked<AwaitedDescriptors?>(nil)
    /// The service manager's fd store, and the names this vSMMU's descriptors are kept under there.
    let fileDescriptorStore: (any FileDescriptorStore)?
    let storedNames = Locked<Set<String>>([])
    let statistics = Locked(Statistics())
    /// The owner's uid when it was created (kept in the journal; a resume must come from the same uid).
    let ownerUserID: UInt32
    /// The tenant whose namespace its simulated host devices live in: the connection that created it
    /// (``VSMMUServer/tenant(of:)``), kept across resumes and restarts (journaled). Never 0 (the
    /// simulated pSMMU's own namespace, ``TenantID/host``).
    let tenant: UInt64
    /// The resume token (`nil`: created on protocol version 1-2, cannot be resumed).
    let token: ResumeToken?
    let ownership: Locked<Ownership>
    /// The last control request applied and the reply sent, for reply replay after a resume.
    let lastReply = Locked<JournaledReply?>(nil)
    /// The create key of the CREATE_VSMMU that made it (`nil`: none), set when it is created.
    let createKey: CreateKey?
    /// That CREATE_VSMMU and its reply once journaled: a re-sent one is answered with it after a restart.
    let creation = Locked<JournaledCreation?>(nil)
    /// The journal write that failed, while the vSMMU refuses control requests because of it.
    let journalFailure = Locked<JournalError?>(nil)
    /// The shared command queue, while one is mapped (MAP_QUEUE, or handed back by the fd store).
    let sharedQueue = Locked<SharedQueueService?>(nil)
    /// The event queue and the per-viommu event counters (PROTOCOL.md §9).
    let events = VSMMUEvents()
    /// The daemon's event service, which routes its viommus' events here (`nil`: a vSMMU outside a server).
    weak let eventService: EventService?

    init(id: VSMMUID, name: String, owner: UInt64, ownerCredentials: PeerCredentials?, engine: VSMMUEngine,
         ownerUserID: UInt32? = nil, tenant: UInt64 = 0, token: ResumeToken? = nil, createKey: CreateKey? = nil,
         fileDescriptorStore: (any FileDescriptorStore)? = nil, eventService: EventService? = nil) {
        self.id = id
        self.eventService = eventService
        self.name = name
        engineSlot = Locked(engine)
        self.fileDescriptorStore = fileDescriptorStore
        self.ownerUserID = ownerUserID ?? ownerCredentials?.userID ?? 0
        // 0: a tenant of its own (a journal record written before tenants were kept).
        self.tenant = tenant != 0 ? tenant : VSMMUServer.newTenant()
        self.token = token
        self.createKey = createKey
        ownership = Locked(Ownership(connection: owner, credentials: ownerCredentials))
    }

    /// The owning connection's id (0: awaiting its owner after a restart).
    var owner: UInt64 { ownership.withLock { $0.connection } }
    /// The owning connection's peer credentials.
    var ownerCredentials: PeerCredentials? { ownership.withLock { $0.credentials } }
    /// Whether the vSMMU was rebuilt from the journal and its owner has not resumed it yet.
    var awaitingOwner: Bool { owner == 0 }

    /// Whether it awaits descriptors (``AwaitedDescriptors``) and so serves nothing yet.
    var awaitsDescriptors: Bool { awaited.withLock { $0 != nil } }

    /// The restored engine takes over from the one that held the registrations while descriptors were
    /// awaited (that one had no backend: stopping it is all it needs).
    func replaceEngine(with restored: VSMMUEngine) {
        let previous = engineSlot.withLock { slot in
            defer { slot = restored }
            return slot
        }
        previous.stop()
    }

    // MARK: The fd store

    /// The fd-store name of the VMM's iommufd of viommu `index` of vSMMU `vsmmu`.
    static func iommufdName(_ vsmmu: VSMMUID, _ index: ViommuIndex) -> String {
        "iommufd-" + String(vsmmu.rawValue, radix: 16) + "-" + String(index.rawValue)
    }

    /// The fd-store name of the vEVENTQ of viommu `index` of vSMMU `vsmmu`. The daemon allocated the queue
    /// and holds its only descriptor; kept in the store, the queue (and the events it holds) outlives the
    /// process: `iommufd_veventq_fops_release` runs only when the file's last reference goes.
    static func eventQueueName(_ vsmmu: VSMMUID, _ index: ViommuIndex) -> String {
        "eventq-" + String(vsmmu.rawValue, radix: 16) + "-" + String(index.rawValue)
    }

    /// Hands every vEVENTQ descriptor the engine's backends hold and the store lacks to the fd store (after
    /// ATTACH_VIOMMU, and after a restore that had to allocate a queue again). A failure is logged by the
    /// caller: events then do not outlive a restart.
    func storeEventQueues() -> [(ViommuIndex, any Error)] {
        guard fileDescriptorStore != nil else { return [] }
        var failures: [(ViommuIndex, any Error)] = []
        for (index, fd) in engine.heldDescriptors.eventQueues.sorted(by: { $0.key < $1.key }) {
            let name = Self.eventQueueName(id, index)
            guard !storedNames.withLock({ $0.contains(name) }) else { continue }
            if let error = storeDescriptor(fd, name: name) { failures.append((index, error)) }
        }
        return failures
    }

    /// The fd-store name of the VFIO cdev of vSID `streamID` of vSMMU `vsmmu`.
    static func cdevName(_ vsmmu: VSMMUID, _ streamID: StreamID) -> String {
        "cdev-" + String(vsmmu.rawValue, radix: 16) + "-" + String(streamID, radix: 16)
    }

    /// Hands a duplicate of `fd` to the fd store under `name` (the store duplicates it; `fd` stays the
    /// caller's). A failure is returned for the log: the vSMMU serves on, and after a restart its VMM
    /// hands the descriptor back itself (RESUME_VSMMU, SET_DEV_ID).
    func storeDescriptor(_ fd: Int32, name: String) -> (any Error)? {
        guard let store = fileDescriptorStore else { return nil }
        do { try store.store(fd, name: name) } catch { return error }
        storedNames.withLock { _ = $0.insert(name) }
        return nil
    }

    /// Takes `name` out of the fd store (its object went).
    func removeDescriptor(name: String) {
        guard let store = fileDescriptorStore, storedNames.withLock({ $0.remove(name) }) != nil else { return }
        store.remove(name: name)
    }

    /// Takes every name of this vSMMU out of the fd store.
    func removeAllDescriptors() {
        guard let store = fileDescriptorStore else { return }
        let names = storedNames.withLock { names in
            defer { names = [] }
            return names
        }
        for name in names.sorted() { store.remove(name: name) }
    }

    /// Destroys everything under the vSMMU as DESTROY_VSMMU does: takes its viommus out of the event
    /// routes and ends its event queue, ends its shared queue, waits for queued commands,
    /// takes its descriptors out of the fd store, unregisters every device (unlinking its vSTE), detaches
    /// every viommu and stops the engine. A vSMMU that still awaited its descriptors had no backend
    /// object to destroy: the kernel's go with the VMM's iommufd (`iommufd_fops_release`).
    /// - Returns: the backend refusals met on the way (the teardown goes on past them).
    func tearDown() -> [EngineError] {
        // Its viommus' events are orphaned from now on, and its event queue ends (STOPPED, unmapped).
        eventService?.unrouteAll(self)
        endEventQueue()
        // The shared queue first: a batch in flight completes, then nothing more is submitted.
        endSharedQueue()
        // Then: the store's copies of the vEVENTQs would keep the kernel from destroying them (EBUSY).
        removeAllDescriptors()
        if let waiting = awaited.withLock({ a -> AwaitedDescriptors? in
            defer { a = nil }
            return a
        }) {
            waiting.close()
            engine.stop()
            return []
        }
        var failures: [EngineError] = []
        let snapshot = engine.vsmmu
        for streamID in snapshot.devices.keys.sorted() {
            do throws(EngineError) { try engine.unsetDeviceID(streamID: streamID) } catch { failures.append(error) }
        }
        for viommu in snapshot.viommus.compactMap({ $0 }) {
            do throws(EngineError) { try engine.detachViommu(viommu.index) } catch { failures.append(error) }
        }
        engine.stop()
        return failures
    }
}
