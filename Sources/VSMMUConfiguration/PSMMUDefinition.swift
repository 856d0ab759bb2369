import PSMMU
import SMMUv3

/// One `[[psmmu]]`: a physical SMMU the daemon offers to VMMs under `name` (the name ATTACH_VIOMMU uses).
public struct PSMMUDefinition: Sendable, Equatable {
    /// 1 to 64 UTF-8 bytes (the protocol's `char name[64]`, PROTOCOL.md), unique among the pSMMUs.
    public var name: String
    public var backend: Backend

    public enum Backend: Sendable, Equatable {
        /// The software model of a pSMMU (`backend = "simulated"`).
        case simulated(SimulatedPSMMUSettings)
        /// A physical SMMU reached through the VMM's iommufd (`backend = "iommufd"`); it has no settings
        /// of its own: the devices are the VMM's.
        case iommufd
    }

    public init(name: String, backend: Backend) {
        self.name = name
        self.backend = backend
    }

    /// The embedded default: `smmu0` (host devices and physical StreamIDs 0…63) and `smmu1` (64…127),
    /// both simulated and free.
    public static let embeddedDefault: [PSMMUDefinition] = (0..<2).map { i in
        PSMMUDefinition(name: "smmu\(i)", backend: .simulated(SimulatedPSMMUSettings(
            firstHostDeviceID: UInt32(i * 64), deviceCount: 64)))
    }
}

/// A simulated pSMMU's devices, cost model and event queue (`[[psmmu]]` with `backend = "simulated"`).
/// Host device ids `firstHostDeviceID + i` have physical StreamIDs `firstStreamID + i`, `i < deviceCount`.
public struct SimulatedPSMMUSettings: Sendable, Equatable {
    /// `first_host_device` (default 0): the first host device id (the iommufd `dev_id` VMMs pass).
    public var firstHostDeviceID: UInt32
    /// `devices` (default 64, ``deviceCountRange``): how many devices are behind the pSMMU.
    public var deviceCount: Int
    /// `first_stream_id` (default: `first_host_device`): the first device's physical StreamID.
    public var firstStreamID: StreamID
    /// `[psmmu.cost]` (default free): the time invalidations take.
    public var costModel: CostModel
    /// `event_queue_depth` (default 1024, ``eventQueueDepthRange``): event records a viommu holds
    /// before further ones are lost.
    public var eventQueueDepth: Int
    /// `idr` (six integers, IDR0 … IDR5), `iidr`, `aidr` (default ``IDRegisters/simulatedDefault``,
    /// the real-kernel rig's QEMU SMMUv3): what `IOMMU_GET_HW_INFO` reports for the pSMMU. Each key
    /// left out keeps the default's value.
    public var idRegisters: IDRegisters

    public init(firstHostDeviceID: UInt32 = 0, deviceCount: Int = 64, firstStreamID: StreamID? = nil,
                costModel: CostModel = .free, eventQueueDepth: Int = 1024,
                idRegisters: IDRegisters = .simulatedDefault) {
        self.firstHostDeviceID = firstHostDeviceID
        self.deviceCount = deviceCount
        self.firstStreamID = firstStreamID ?? firstHostDeviceID
        self.costModel = costModel
        self.eventQueueDepth = eventQueueDepth
        self.idRegisters = idRegisters
    }

    public static let deviceCountRange = 1...65_536
    public static let eventQueueDepthRange = 1...1_048_576
    /// The bound on each `[psmmu.cost]` duration: one second, far beyond any real invalidation.
    public static let maximumCostNanoseconds = 1_000_000_000

    /// The host device ids behind the pSMMU. Valid settings never overflow `UInt32`.
    public var hostDeviceIDs: ClosedRange<UInt64> {
        UInt64(firstHostDeviceID)...(UInt64(firstHostDeviceID) + UInt64(max(deviceCount, 1)) - 1)
    }

    /// The physical StreamIDs of those devices.
    public var streamIDs: ClosedRange<UInt64> {
        UInt64(firstStreamID)...(UInt64(firstStreamID) + UInt64(max(deviceCount, 1)) - 1)
    }

    /// The simulated pSMMU these settings describe, named `name`.
    public func makeSMMU(name: String) -> SimulatedSMMU {
        SimulatedSMMU(name: name, deviceCount: deviceCount, firstHostDeviceID: firstHostDeviceID,
                      firstStreamID: firstStreamID, costModel: costModel, eventQueueDepth: eventQueueDepth,
                      idRegisters: idRegisters)
    }
}
