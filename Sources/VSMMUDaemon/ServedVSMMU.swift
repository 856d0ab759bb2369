import InvalidationEngine
import PSMMU
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

    let id: VSMMUID
    let name: String
    let owner: UInt64
    let ownerCredentials: PeerCredentials?
    let engine: VSMMUEngine
    let statistics = Locked(Statistics())

    init(id: VSMMUID, name: String, owner: UInt64, ownerCredentials: PeerCredentials?, engine: VSMMUEngine) {
        self.id = id
        self.name = name
        self.owner = owner
        self.ownerCredentials = ownerCredentials
        self.engine = engine
    }

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
