import Glibc
import SMMUv3

// The seam between a backend's event sources and the daemon (issue 14). A backend pushes what its
// viommus' event queues deliver to one ``ViommuEventSink``; the daemon attributes each batch to its
// vSMMU and writes it into that vSMMU's event queue (PROTOCOL.md §9).
//
// Concurrency: a backend calls its sink from its own event thread (the iommufd backend's vEVENTQ
// watcher) or from the thread that caused the event (the simulated pSMMU, inside `simulateDMA`), never
// while it holds one of its own locks, and calls it for one viommu in the order the events were
// raised. The sink must not block for long and must not call back into the backend.

/// What one viommu's event queue delivered: records in the order the pSMMU raised them, each as the
/// guest sees it (the StreamID is the vSID, as `arm_vmaster_report_event` substitutes it).
public struct ViommuEvents: Hashable, Sendable {
    /// The viommu whose event queue (vEVENTQ) delivered the records.
    public var viommu: ViommuHandle
    /// The records, oldest first. May be empty when only ``lostBefore`` is set.
    public var records: [EventRecord]
    /// Whether events were lost just before `records`: the kernel's vEVENTQ overflowed and read back an
    /// `IOMMU_VEVENTQ_FLAG_LOST_EVENTS` header (`iommufd_veventq_fops_read`), or a simulated pSMMU's
    /// queue was full.
    public var lostBefore: Bool

    public init(viommu: ViommuHandle, records: [EventRecord], lostBefore: Bool = false) {
        self.viommu = viommu
        self.records = records
        self.lostBefore = lostBefore
    }
}

/// Where a backend delivers the events its viommus raise (``PSMMUBackend/setEventSink(_:)``).
public protocol ViommuEventSink: AnyObject, Sendable {
    /// `events` arrived from `events.viommu`'s event queue. Called on the backend's event thread, or on
    /// the thread that made a simulated device fault; never under a backend lock; for one viommu, in the
    /// order the pSMMU raised them.
    func viommuEventsArrived(_ events: ViommuEvents)
}

/// What the guest's stage-1 page tables hold for the address a simulated device accesses. The VMM owns
/// the guest's memory, so it is the one that says what a table walk would find (`SIMULATE_DMA`'s `walk`,
/// PROTOCOL.md §6.4).
public enum StageOneWalk: UInt32, Hashable, Sendable, CaseIterable {
    /// No valid descriptor: F_TRANSLATION.
    case unmapped = 0
    /// A valid descriptor that allows reads and writes.
    case readWrite = 1
    /// A valid read-only descriptor: a write is F_PERMISSION.
    case readOnly = 2
    /// A valid descriptor with its access flag clear (and no hardware AF update): F_ACCESS.
    case accessFlagClear = 3
    /// A descriptor whose output address is beyond the SMMU's OAS: F_ADDR_SIZE.
    case outputAddressTooLarge = 4
}

/// One access of a simulated device (``PSMMUBackend/simulateDMA(_:)``).
public struct SimulatedDMA: Hashable, Sendable {
    /// The host device that makes the access.
    public var hostDeviceID: UInt32
    /// The access's SubstreamID (PASID); `nil` for none (the STE's S1DSS applies).
    public var substreamID: SubstreamID?
    /// The input address (IOVA).
    public var address: UInt64
    /// The size of the page-table entry that maps `address`: a power of two of at least 4 KiB.
    public var size: UInt64
    /// A write (else a read).
    public var write: Bool
    /// An ATS translation request rather than an untranslated transaction.
    public var throughATS: Bool
    /// What a stage-1 walk of the guest's tables finds for `address`.
    public var walk: StageOneWalk

    public init(hostDeviceID: UInt32, substreamID: SubstreamID? = nil, address: UInt64, size: UInt64 = 4096,
                write: Bool = false, throughATS: Bool = false, walk: StageOneWalk = .readWrite) {
        self.hostDeviceID = hostDeviceID
        self.substreamID = substreamID
        self.address = address
        self.size = size
        self.write = write
        self.throughATS = throughATS
        self.walk = walk
    }
}

extension PSMMUBackend {
    /// No events: a backend without event sources ignores the sink.
    public func setEventSink(_ sink: (any ViommuEventSink)?) {}

    /// Only a simulated pSMMU has simulated devices: every other backend refuses.
    public func simulateDMA(_ access: SimulatedDMA) throws(BackendError) -> DMAOutcome {
        throw BackendError(.unsupported, errno: EOPNOTSUPP, "this pSMMU backend has no simulated devices")
    }
}
