import InvalidationEngine
import PSMMU
import VSMMUJournal
import VSMMUProtocol

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

        mutating func recordSync(latencyNanoseconds t: UInt64) {
            syncLatencyCount += 1
            syncLatencySumNanoseconds &+= t
            syncLatencyLog2[Self.bucket(t)] += 1
        }

        static func bucket(_ t: UInt64) -> Int { t == 0 ? 0 : 63 - t.leadingZeroBitCount }
    }

    /// Who owns it: a connection, or nobody yet after a restart (``awaitingOwner``).
    struct Ownership: Sendable {
        /// The owning connection's id; 0 while awaiting its owner (connection ids start at 1).
        var connection: UInt64
        var credentials: PeerCredentials?
        /// Whether the owner took it over with RESUME_VSMMU (reply replay applies then).
        var resumed = false
    }

    let id: VSMMUID
    let name: String
    let engine: VSMMUEngine
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
    /// What each viommu was attached with (the engine keeps only its pSMMU), by viommu index.
    let attachRequests = Locked<[UInt32: ViommuAttachRequest]>([:])
    /// The last control request applied and the reply sent, for reply replay after a resume.
    let lastReply = Locked<JournaledReply?>(nil)
    /// The journal write that failed, while the vSMMU refuses control requests because of it.
    let journalFailure = Locked<JournalError?>(nil)

    init(id: VSMMUID, name: String, owner: UInt64, ownerCredentials: PeerCredentials?, engine: VSMMUEngine,
         ownerUserID: UInt32? = nil, tenant: UInt64 = 0, token: ResumeToken? = nil) {
        self.id = id
        self.name = name
        self.engine = engine
        self.ownerUserID = ownerUserID ?? ownerCredentials?.userID ?? 0
        // 0: a tenant of its own (a journal record written before tenants were kept).
        self.tenant = tenant != 0 ? tenant : VSMMUServer.newTenant()
        self.token = token
        ownership = Locked(Ownership(connection: owner, credentials: ownerCredentials))
    }

    /// The owning connection's id (0: awaiting its owner after a restart).
    var owner: UInt64 { ownership.withLock { $0.connection } }
    /// The owning connection's peer credentials.
    var ownerCredentials: PeerCredentials? { ownership.withLock { $0.credentials } }
    /// Whether the vSMMU was rebuilt from the journal and its owner has not resumed it yet.
    var awaitingOwner: Bool { owner == 0 }

    /// Destroys everything under the vSMMU as DESTROY_VSMMU does: waits for queued commands,
    /// unregisters every device (unlinking its vSTE), detaches every viommu, stops the engine.
    /// - Returns: the backend refusals met on the way (the teardown goes on past them).
    func tearDown() -> [EngineError] {
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
