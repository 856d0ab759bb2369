import InvalidationEngine
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
    /// A simulated viommu comes back as a new object with empty caches (a reset SMMU caches nothing), its
    /// devices registered and its vSTEs and CDs linked again, and keeps its index.
    /// - Returns: how many vSMMUs were rebuilt (0 without a state directory).
    /// - Throws: ``RecoveryError`` naming the file and offset of a damaged journal, the record that does not
    ///   decode, or the registration the pSMMUs refused.
    @discardableResult
    public func recover() throws(RecoveryError) -> Int {
        if let done = state.withLock({ $0.recovered }) { return done }
        guard let directory = configuration.stateDirectory else {
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
        var rebuilt: [ServedVSMMU] = []
        for (key, bytes) in journal.contents.sorted(by: { $0.key < $1.key }) {
            let record: VSMMURecord
            do throws(VSMMURecord.DecodingError) { record = try VSMMURecord(decoding: bytes) } catch {
                throw RecoveryError(message: "journal in \(directory): the record of vSMMU \(key): \(error)")
            }
            guard UInt64(record.id) == key else {
                throw RecoveryError(message: "journal in \(directory): key \(key) holds the record of vSMMU \(record.id)")
            }
            // A vSMMU this daemon cannot rebuild (an iommufd viommu, a pSMMU no longer configured) is dropped
            // and logged, never a reason to refuse the others: its owner finds it gone at RESUME_VSMMU.
            do throws(RecoveryError) { rebuilt.append(try rebuild(record)) } catch {
                logger.error("vSMMU dropped at recovery", metadata: ["vsmmu": "\(record.id)", "reason": "\(error.message)"])
                do throws(JournalError) { try journal.remove(key: key) } catch {
                    throw RecoveryError(message: "cannot drop the record of vSMMU \(record.id) from the journal: \(error)")
                }
            }
        }
        // The rebuilt viommus are new backend objects: the records say so before anything is served.
        for served in rebuilt {
            do throws(JournalError) {
                try journal.put(key: UInt64(served.id.rawValue), value: record(of: served).encoded())
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
            "milliseconds": "\((POSIX.monotonicNanoseconds() &- start) / 1_000_000)",
            "grace_seconds": "\(configuration.resumeGrace.components.seconds)",
        ])
        return rebuilt.count
    }

    /// One vSMMU from its record, unowned.
    private func rebuild(_ record: VSMMURecord) throws(RecoveryError) -> ServedVSMMU {
        let engine = VSMMUEngine(configuration: configuration.engine)
        let served = ServedVSMMU(id: VSMMUID(record.id), name: record.name, owner: 0, ownerCredentials: nil, engine: engine,
                                 ownerUserID: record.ownerUserID, tenant: record.tenant, token: record.token)
        served.lastReply.withLock { $0 = record.lastReply }
        func refuse(_ what: String) -> RecoveryError {
            engine.stop()
            return RecoveryError(message: "cannot rebuild vSMMU \(record.id) (\(record.name)) from the journal: \(what)")
        }
        // Viommus keep their indices: the engine gives the lowest free one, so a gap is held by a placeholder
        // viommu until every journaled one is attached.
        var placeholders: [ViommuIndex] = []
        var next: UInt32 = 0
        for viommu in record.viommus.sorted(by: { $0.index < $1.index }) {
            guard let provider = providers[viommu.pSMMU] else {
                throw refuse("its viommu \(viommu.index) is on pSMMU \(viommu.pSMMU), which the configuration no longer has")
            }
            guard case .simulated(let smmu) = provider else {
                throw refuse("its viommu \(viommu.index) is on the iommufd pSMMU \(viommu.pSMMU), whose objects this vsmmud cannot re-adopt")
            }
            while next < viommu.index {
                do throws(EngineError) {
                    placeholders.append(try engine.attachViommu(pSMMU: "journal-placeholder-\(next)", backend: PlaceholderBackend()))
                } catch {
                    throw refuse("holding viommu index \(next): \(error)")
                }
                next += 1
            }
            let request = ViommuAttachRequest(hostDeviceID: viommu.hostDeviceID, nestParentHWPT: viommu.nestParentHWPT)
            let index: ViommuIndex
            do throws(EngineError) {
                index = try engine.attachViommu(pSMMU: viommu.pSMMU, backend: smmu.tenant(TenantID(rawValue: served.tenant)),
                                                request: request)
            } catch {
                throw refuse("re-attaching viommu \(viommu.index) on \(viommu.pSMMU): \(error)")
            }
            guard index.rawValue == viommu.index else { throw refuse("viommu \(viommu.index) came back as \(index.rawValue)") }
            served.attachRequests.withLock { $0[viommu.index] = request }
            next = viommu.index + 1
        }
        for index in placeholders {
            do throws(EngineError) { try engine.detachViommu(index) } catch { throw refuse("releasing a placeholder viommu: \(error)") }
        }
        for device in record.devices {
            do throws(EngineError) {
                try engine.setDeviceID(viommu: ViommuIndex(Int(device.viommu)), hostDeviceID: device.hostDeviceID, streamID: device.streamID)
                if let ste = device.ste {
                    _ = try engine.link(streamID: device.streamID, ste: ste, contextDescriptors: device.contextDescriptors)
                }
            } catch {
                throw refuse("registering StreamID 0x\(String(device.streamID, radix: 16)) for host device \(device.hostDeviceID): \(error)")
            }
        }
        return served
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

/// Holds a viommu index that the journal's viommus skip while a vSMMU is rebuilt; detached before serving.
private final class PlaceholderBackend: PSMMUBackend {
    let name = "journal-placeholder"
    var counters: BackendCounters { BackendCounters() }
    private func unused() -> BackendError { BackendError(.failed, "a placeholder viommu serves nothing") }
    func attachViommu(_ request: ViommuAttachRequest) throws(BackendError) -> ViommuHandle { ViommuHandle(rawValue: 0) }
    func detachViommu(_ viommu: ViommuHandle) throws(BackendError) {}
    func hardwareInfo(viommu: ViommuHandle) throws(BackendError) -> IDRegisters { throw unused() }
    func allocateVDevice(viommu: ViommuHandle, device: HostDevice, virtualStreamID: StreamID) throws(BackendError) -> VDeviceHandle {
        throw unused()
    }
    func destroyVDevice(_ vdevice: VDeviceHandle) throws(BackendError) { throw unused() }
    func attachDevice(_ vdevice: VDeviceHandle, to domain: DeviceDomain) throws(BackendError) { throw unused() }
    func allocateNestedHWPT(viommu: ViommuHandle, hostDeviceID: UInt32, ste: StreamTableEntry,
                            contextDescriptors: [ContextDescriptor]) throws(BackendError) -> HWPTHandle { throw unused() }
    func destroyHWPT(_ hwpt: HWPTHandle) throws(BackendError) { throw unused() }
    func invalidate(viommu: ViommuHandle, commands: UnsafeBufferPointer<Command>) -> InvalidationResult {
        InvalidationResult(completed: 0, failure: InvalidationFailure(queueError: .illegal, message: "a placeholder viommu serves nothing"))
    }
    func takeEvents(viommu: ViommuHandle) -> [EventRecord] { [] }
}
