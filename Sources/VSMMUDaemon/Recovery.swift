import InvalidationEngine
import IOMMUFD
import Logging
import PSMMU
import SMMUv3
import SystemPackage
import VirtualSMMU
import VSMMUJournal
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Why the daemon cannot rebuild its vSMMUs from the journal: it refuses to start rather than serve part of
/// them (the operator repairs or moves the state directory aside).
public struct RecoveryError: Error, CustomStringConvertible, Sendable {
    public var message: String

    /// The exit status for it: 65 (`EX_DATAERR`, sysexits.h): the input data — the journal — is bad.
    /// Not 78 (`EX_CONFIG`): the configuration is fine, and a restart does not fix the data either, so the
    /// unit's `RestartPreventExitStatus=` lists both.
    public static let exitStatus: Int32 = 65

    public var description: String { message }
}

extension VSMMUServer {
    /// Opens the journal in ``Configuration/stateDirectory`` and rebuilds every vSMMU it holds, each awaiting
    /// its owner, before anything is served. ``start()`` calls it when it was not called; the daemon calls it
    /// first, to tell a damaged journal (exit 65) from a socket that cannot be bound.
    ///
    /// Each record holds the engine's snapshot, and the engine is restored from it
    /// (`VSMMUEngine.restore`), with its viommu indices, StreamIDs, vSTEs, CDs and retiring ASIDs:
    /// - a simulated viommu comes back as a new object with empty caches (a reset SMMU caches nothing);
    /// - an iommufd viommu is re-adopted by its kernel object ids when its VMM's iommufd came back from the
    ///   fd store (``Configuration/inheritedFileDescriptors``): the objects live in the VMM's iommufd file,
    ///   which the VMM still holds (`iommufd_fops_release` destroys them only when the file's last
    ///   reference goes), and an id names the same object for as long as the file lives
    ///   (`iommufd_get_object` looks it up in the file's `objects` xarray). A device's attachment lives in
    ///   its cdev's file (`vfio_df_unbind_iommufd` runs only at that file's release), which the VMM holds
    ///   too: a device whose cdev did not come back is re-adopted with it pending, and SET_DEV_ID hands it
    ///   back later (`IOMMUFDBackend.restoreViommu`, `resupply`). When the iommufd is missing, the vSMMU
    ///   waits for its VMM to bring it (RESUME_VSMMU: ``ServedVSMMU/AwaitedDescriptors``).
    ///
    /// Inherited descriptors that no record claims are closed and removed from the fd store.
    /// - Returns: how many vSMMUs were rebuilt (0 without a state directory).
    /// - Throws: ``RecoveryError`` naming the file and offset of a damaged journal, or the record that does
    ///   not decode.
    @discardableResult
    public func recover() throws(RecoveryError) -> Int {
        if let done = state.withLock({ $0.recovered }) { return done }
        guard let directory = configuration.stateDirectory else {
            releaseInherited(configuration.inheritedFileDescriptors.byName)
            state.withLock { $0.recovered = 0 }
            return 0
        }
        let start = POSIX.monotonicNanoseconds()
        let journal: Journal
        do throws(JournalError) {
            journal = try Journal.open(directory: FilePath(directory), fileSystem: configuration.journalFileSystem ?? POSIXJournalFileSystem(),
                                       logger: logger)
        } catch {
            throw RecoveryError(message: "cannot open the journal in \(directory): \(error)")
        }
        var records: [VSMMURecord] = []
        for (key, bytes) in journal.contents.sorted(by: { $0.key < $1.key }) {
            let record: VSMMURecord
            do throws(VSMMURecord.DecodingError) { record = try VSMMURecord(decoding: bytes) } catch {
                throw RecoveryError(message: "journal in \(directory): the record of vSMMU \(key): \(error)")
            }
            guard UInt64(record.id) == key else {
                throw RecoveryError(message: "journal in \(directory): key \(key) holds the record of vSMMU \(record.id)")
            }
            records.append(record)
        }
        var inherited = configuration.inheritedFileDescriptors.byName
        var rebuilt: [ServedVSMMU] = []
        for record in records {
            // A vSMMU this daemon cannot rebuild (a pSMMU no longer configured, iommufd objects gone with their
            // VMM's iommufd) is dropped and logged, never a reason to refuse the others: its owner finds it gone
            // at RESUME_VSMMU.
            do throws(RecoveryError) { rebuilt.append(try rebuild(record, inherited: &inherited)) } catch {
                logger.error("vSMMU dropped at recovery", metadata: ["vsmmu": "\(record.id)", "reason": "\(error.message)"])
                do throws(JournalError) { try journal.remove(key: UInt64(record.id)) } catch {
                    throw RecoveryError(message: "cannot drop the record of vSMMU \(record.id) from the journal: \(error)")
                }
            }
        }
        releaseInherited(inherited)
        // The rebuilt viommus are new backend objects (simulated) or have a new vEVENTQ (iommufd): the records
        // say so before anything is served.
        for served in rebuilt {
            let bytes: [UInt8]
            do throws(EngineError) { bytes = try record(of: served).encoded() } catch {
                throw RecoveryError(message: "cannot snapshot the rebuilt vSMMU \(served.id.rawValue): \(error)")
            }
            do throws(JournalError) {
                try journal.put(key: UInt64(served.id.rawValue), value: bytes)
            } catch {
                throw RecoveryError(message: "cannot rewrite the record of vSMMU \(served.id.rawValue): \(error)")
            }
        }
        state.withLock { s in
            for served in rebuilt { s.vsmmus[served.id] = served }
            s.recovered = rebuilt.count
            s.journal = journal
        }
        logger.notice("recovered the vSMMUs from the journal: each awaits its owner's RESUME", metadata: [
            "directory": "\(directory)", "vsmmus": "\(rebuilt.count)",
            "devices": "\(rebuilt.reduce(0) { $0 + $1.engine.vsmmu.devices.count })",
            "awaiting_descriptors": "\(rebuilt.filter(\.awaitsDescriptors).count)",
            "milliseconds": "\((POSIX.monotonicNanoseconds() &- start) / 1_000_000)",
            "grace_seconds": "\(configuration.resumeGrace.components.seconds)",
        ])
        return rebuilt.count
    }

    /// Closes the inherited descriptors nobody claimed and takes their names out of the fd store.
    private func releaseInherited(_ unclaimed: [String: [Int32]]) {
        for (name, fds) in unclaimed.sorted(by: { $0.key < $1.key }) {
            for fd in fds { _ = Glibc.close(fd) }
            configuration.fileDescriptorStore?.remove(name: name)
            logger.info("inherited descriptor claimed by no vSMMU: closed and removed from the fd store", metadata: ["name": "\(name)"])
        }
    }

    /// One vSMMU from its record, unowned: restored now, or awaiting its descriptors.
    private func rebuild(_ record: VSMMURecord, inherited: inout [String: [Int32]]) throws(RecoveryError) -> ServedVSMMU {
        let id = VSMMUID(record.id)
        func refuse(_ what: String) -> RecoveryError {
            RecoveryError(message: "cannot rebuild vSMMU \(record.id) (\(record.name)) from the journal: \(what)")
        }
        let snapshot = record.snapshot
        var needed: Set<ViommuIndex> = []
        for viommu in snapshot.viommus {
            guard let provider = providers[viommu.pSMMU] else {
                throw refuse("its viommu \(viommu.index.rawValue) is on pSMMU \(viommu.pSMMU), which the configuration no longer has")
            }
            if case .iommufd = provider { needed.insert(viommu.index) }
        }
        var awaited = ServedVSMMU.AwaitedDescriptors(
            snapshot: snapshot, neededIOMMUFDs: needed,
            neededVFIODevices: Set(snapshot.devices.filter { needed.contains($0.viommu) }.map(\.streamID)))
        var claimed: Set<String> = []
        func take(_ name: String) -> Int32? {
            guard var fds = inherited[name], !fds.isEmpty else { return nil }
            let fd = fds.removeFirst()
            for extra in fds { _ = Glibc.close(extra) }
            inherited[name] = nil
            claimed.insert(name)
            return fd
        }
        for index in needed { if let fd = take(ServedVSMMU.iommufdName(id, index)) { awaited.iommufds[index] = fd } }
        // systemd keeps one fd per open file (`service_add_fd_store` drops an fd whose file it already holds,
        // `same_fd`), so when a VMM attached several viommus with the same iommufd only one of their names
        // comes back. Every viommu of one vSMMU belongs to one VMM: the others use a duplicate of that file
        // (restoreViommu then checks every object id in it before adopting anything).
        if let shared = awaited.iommufds.sorted(by: { $0.key < $1.key }).first?.value {
            for index in needed where awaited.iommufds[index] == nil {
                let copy = dup(shared)
                if copy >= 0 { awaited.iommufds[index] = copy }
            }
        }
        for sid in awaited.neededVFIODevices { if let fd = take(ServedVSMMU.cdevName(id, sid)) { awaited.vfioDevices[sid] = fd } }
        for index in needed { if let fd = take(ServedVSMMU.eventQueueName(id, index)) { awaited.eventQueues[index] = fd } }

        let engine: VSMMUEngine
        let waiting: Bool
        var domains: [ViommuIndex: EventDomain] = [:]
        if awaited.isComplete {
            do throws(EngineRestoreError) {
                (engine, domains) = try restoredEngine(awaited, tenant: record.tenant)
            } catch {
                // The descriptors were consumed; their objects are gone: out of the fd store too.
                for name in claimed { configuration.fileDescriptorStore?.remove(name: name) }
                throw refuse("\(error)")
            }
            waiting = false
        } else {
            do throws(EngineRestoreError) { engine = try VSMMUEngine.awaitingBackends(snapshot, configuration: configuration.engine) } catch {
                awaited.close()
                for name in claimed { configuration.fileDescriptorStore?.remove(name: name) }
                throw refuse("\(error)")
            }
            waiting = true
        }
        let served = ServedVSMMU(id: id, name: record.name, owner: 0, ownerCredentials: nil, engine: engine,
                                 ownerUserID: record.ownerUserID, tenant: record.tenant, token: record.token,
                                 createKey: record.creation?.key, fileDescriptorStore: configuration.fileDescriptorStore,
                                 eventService: eventService)
        routeEvents(of: served, domains: domains)
        served.lastReply.withLock { $0 = record.lastReply }
        served.creation.withLock { $0 = record.creation }
        // Its shared queue, when the fd store handed it back: mapped again now, consumed once it is resumed
        // (PROTOCOL.md §8.6).
        if let queue = recoveredSharedQueue(id, take: take) { served.sharedQueue.withLock { $0 = queue } }
        // Its event queue likewise: written again from now on, its sequence going on (PROTOCOL.md §9).
        if let events = recoveredEventQueue(id, take: take) { _ = served.events.replaceQueue(with: events) }
        // Inherited names stay in the store (systemd keeps them for every later start).
        if configuration.fileDescriptorStore != nil { served.storedNames.withLock { $0 = claimed } }
        if waiting {
            served.awaited.withLock { $0 = awaited }
            logger.notice("iommufd vSMMU awaits its iommufd from its VMM: RESUME_VSMMU with it (SET_DEV_ID then hands back each cdev)", metadata: [
                "vsmmu": "\(record.id)", "missing": "\(awaited.missing)",
            ])
        } else {
            logEventQueueStoreFailures(served)
        }
        return served
    }

    /// Stores the vEVENTQs a restore allocated again (their fds did not come back) and logs what could not be.
    func logEventQueueStoreFailures(_ served: ServedVSMMU) {
        for (index, error) in served.storeEventQueues() {
            logger.error("cannot hand a vEVENTQ to the fd store: its events do not outlive a restart",
                         metadata: ["vsmmu": "\(served.id.rawValue)", "viommu": "\(index.rawValue)", "error": "\(error)"])
        }
    }

    /// The serving engine of a vSMMU whose iommufds are all there (`awaited.isComplete`): restored from
    /// its snapshot, each iommufd viommu on a new ``IOMMUFDBackend`` adopting its iommufd and re-adopting
    /// its objects by id (`IOMMUFDBackend.restoreViommu` checks every id first), each simulated one
    /// re-created. Every descriptor in `awaited` is consumed. Each backend's events go to the event
    /// service: the domains returned route them once the vSMMU holds the engine (``routeEvents(of:domains:)``).
    func restoredEngine(_ awaited: ServedVSMMU.AwaitedDescriptors,
                        tenant: UInt64) throws(EngineRestoreError) -> (VSMMUEngine, [ViommuIndex: EventDomain]) {
        var iommufds = awaited.iommufds
        defer { for fd in iommufds.values { _ = Glibc.close(fd) } }
        let providers = self.providers
        let events = eventService
        var domains: [ViommuIndex: EventDomain] = [:]
        let engine = try VSMMUEngine.restore(
            awaited.snapshot, configuration: configuration.engine,
            backends: { viommu -> (any PSMMUBackend)? in
                let backend: any PSMMUBackend
                guard let provider = providers[viommu.pSMMU] else { return nil }
                switch provider {
                case .simulated(let smmu): backend = smmu.tenant(TenantID(rawValue: tenant))
                case .iommufd(let name, let adoption):
                    guard let fd = iommufds.removeValue(forKey: viommu.index) else { return nil }
                    backend = IOMMUFDBackend(name: name, device: adoption.adopt(FileDescriptor(rawValue: fd)))
                }
                domains[viommu.index] = events.connect(backend, provider: provider)
                return backend
            },
            descriptors: EngineDescriptors(eventQueues: awaited.eventQueues, vfioDevices: awaited.vfioDevices))
        flushAfterRestore(engine, snapshot: awaited.snapshot)
        return (engine, domains)
    }

    /// Routes the events of `served`'s restored viommus to it (after a restore: their handles are this
    /// process's).
    func routeEvents(of served: ServedVSMMU, domains: [ViommuIndex: EventDomain]) {
        for viommu in served.engine.viommuStatistics {
            guard let domain = domains[viommu.index] else { continue }
            eventService.route(domain, handle: viommu.handle, to: served, viommu: viommu.index)
        }
    }

    /// Invalidates everything the restored iommufd viommus may cache: TLBI_NH_ALL (broadcast), CFGI_CD_ALL
    /// for every device and ATC_INV of the whole space for every device whose vSTE enables ATS, then a
    /// CMD_SYNC. The previous process answered some commands once they were queued (an INVALIDATE without
    /// CMD_SYNC, a shared queue's CONS past commands not followed by one) and may have died before it
    /// executed them; their kernel objects outlived it (the VMM's iommufd), and so may stale entries in the
    /// pSMMU's TLB and the devices' ATCs. An invalidation more than the guest asked for is always safe; one
    /// lost is not. Simulated viommus come back new and empty, so a vSMMU without an iommufd viommu skips it.
    private func flushAfterRestore(_ engine: VSMMUEngine, snapshot: EngineSnapshot) {
        let iommufdViommus = Set(snapshot.viommus.compactMap { viommu -> ViommuIndex? in
            if case .iommufd = providers[viommu.pSMMU] { return viommu.index }
            return nil
        })
        guard !iommufdViommus.isEmpty else { return }
        var commands: [Command] = [.tlbiNHAll()]
        for device in snapshot.devices where iommufdViommus.contains(device.viommu) {
            commands.append(.cfgiCDAll(streamID: device.streamID))
            if device.link?.ste.eats == 1 { commands.append(.atcInv(streamID: device.streamID)) }
        }
        commands.append(.sync())
        let result = commands.withUnsafeBufferPointer { engine.execute($0) }
        if let failure = result.failure {
            logger.warning("the invalidation of a restored vSMMU's caches failed", metadata: [
                "command_index": "\(failure.index)", "cerror": "\(failure.queueError)", "message": "\(failure.message)",
            ])
        }
    }

    /// Tears down the vSMMUs whose owners did not resume them within ``Configuration/resumeGrace`` of the
    /// start, journals that, and logs each at notice. Runs on its own thread, started by ``start()``.
    func reclaimUnclaimed(deadline: UInt64) {
        while POSIX.monotonicNanoseconds() < deadline {
            if isStopping { return }
            usleep(10_000)
        }
        let unclaimed = state.withLock { s in s.vsmmus.values.filter(\.awaitingOwner).sorted { $0.id < $1.id } }
        for served in unclaimed {
            // Claimed meanwhile, or the daemon is stopping: leave it (a stopping daemon keeps what it journaled).
            guard !isStopping, served.ownership.withLock({ o -> Bool in
                guard o.connection == 0 else { return false }
                o.connection = UInt64.max // no connection has this id: nobody resumes it from here on
                return true
            }) else { continue }
            let failures = served.tearDown()
            do throws(JournalError) { try journalRemoval(of: served.id) } catch {
                logger.error("cannot journal the reclaim of a vSMMU", metadata: ["vsmmu": "\(served.id.rawValue)", "error": "\(error)"])
            }
            logger.notice("reclaimed a vSMMU its owner did not resume within the grace period", metadata: [
                "vsmmu": "\(served.id.rawValue)", "name": "\(served.name)", "owner_uid": "\(served.ownerUserID)",
                "grace_seconds": "\(configuration.resumeGrace.components.seconds)", "failures": "\(failures)",
            ])
            // Torn down, journaled and logged before it leaves the registry (LIST, HEALTH).
            state.withLock { _ = $0.vsmmus.removeValue(forKey: served.id) }
        }
    }
}
