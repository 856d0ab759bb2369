import SMMUv3

/// One tenant of a simulated pSMMU: a namespace of host devices, nest-parent S2 HWPTs and object ids,
/// as one VMM's iommufd is on a real host.
///
/// On a real host a host device id is an iommufd `dev_id`: `iommufd_device_bind` allocates it in the
/// VMM's own iommufd (`iommufd_object_alloc` → `xa_alloc` in the ictx's `objects` xarray), and every
/// later ioctl looks it up there (`iommufd_get_object(ictx, id, …)`), so VMMs never see each other's
/// devices, HWPTs or viommus. A ``SimulatedSMMU`` scopes the same things per tenant: each tenant has the
/// pSMMU's whole device range (``SimulatedSMMU/devices``), its own named nest parents (hence its own
/// VMIDs), and its own view of the object ids (another tenant's handle is answered as one that does not
/// exist). VMIDs and the TLB stay the pSMMU's, as in hardware.
///
/// ``host`` (0) is the namespace of ``SimulatedSMMU``'s own API, for tests and tools that drive the model
/// directly; a daemon gives each VMM another (``SimulatedSMMU/tenant(_:)``).
public struct TenantID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// The namespace ``SimulatedSMMU``'s own methods work in.
    public static let host = TenantID(rawValue: 0)

    public var description: String { "tenant \(rawValue)" }
}

/// What one tenant holds in a simulated pSMMU besides its viommus: the records of the host devices it
/// touched (a device it never registered has none) and those devices' caches (configuration cache and
/// ATC, tagged by physical StreamID, which is only unique within a tenant).
///
/// Lazy: created at the tenant's first viommu, dropped with its last one. An idle tenant costs nothing;
/// a live one costs this object (three empty dictionaries and two counters) plus one record per
/// registered device. A class for the same reason as ``ViommuRecord``: only touched under the
/// ``SimulatedSMMU``'s mutex, never copied.
final class TenantSpace: @unchecked Sendable {
    /// The tenant's devices that are not pristine (``DeviceRecord/isPristine``), by host device id.
    var devices: [UInt32: DeviceRecord] = [:]
    var atc = ATCModel()
    var config = ConfigCacheModel()
    /// The tenant's viommus on this pSMMU.
    var viommuCount = 0
}

extension SimulatedSMMU {
    /// The backend of `tenant` on this pSMMU: a ``PSMMUBackend`` whose host devices, nest parents and
    /// objects are that tenant's alone (``TenantID``). Views of one tenant are interchangeable (they keep
    /// no state of their own); they share the pSMMU's VMIDs, TLB, cost model, faults and counters.
    public func tenant(_ tenant: TenantID) -> SimulatedSMMUTenant { SimulatedSMMUTenant(smmu: self, tenant: tenant) }

    /// Tenants that hold a namespace now (each with at least one viommu or device record).
    public var tenantsHeld: Int { state.withLock { $0.spaces.count } }

    /// Device records held now, over every tenant: one per registered (or still attached) device.
    public var deviceRecordsHeld: Int { state.withLock { $0.spaces.values.reduce(0) { $0 + $1.devices.count } } }
}

/// One tenant's view of a ``SimulatedSMMU`` (``SimulatedSMMU/tenant(_:)``): the pSMMU as one VMM's iommufd
/// shows it. Every call works in the tenant's namespace; a handle of another tenant gets the error of a
/// handle that never existed, and no error names another tenant's objects.
public final class SimulatedSMMUTenant: PSMMUBackend {
    /// The pSMMU behind the view.
    public let smmu: SimulatedSMMU
    /// Whose namespace the view works in.
    public let tenant: TenantID

    init(smmu: SimulatedSMMU, tenant: TenantID) {
        self.smmu = smmu
        self.tenant = tenant
    }

    public var name: String { smmu.name }

    /// ``SimulatedSMMU/attachViommu(_:)`` in the tenant's namespace: `request.nestParentHWPT` names the
    /// tenant's S2 (two tenants naming the same id get two S2s, and two VMIDs).
    public func attachViommu(_ request: ViommuAttachRequest) throws(BackendError) -> ViommuHandle {
        try smmu.state.withLock { s throws(BackendError) in try s.attachViommu(request, tenant: tenant, name: name) }
    }

    public func detachViommu(_ viommu: ViommuHandle) throws(BackendError) {
        try smmu.state.withLock { s throws(BackendError) in try s.detachViommu(viommu, tenant: tenant, name: name) }
    }

    public func hardwareInfo(viommu: ViommuHandle) throws(BackendError) -> IDRegisters {
        try smmu.hardwareInfo(viommu: viommu, tenant: tenant)
    }

    /// ``SimulatedSMMU/allocateVDevice(viommu:device:virtualStreamID:)`` in the tenant's namespace: the
    /// host device is the tenant's, so another tenant's vdevice of the same id never conflicts.
    public func allocateVDevice(viommu: ViommuHandle, device: HostDevice,
                                virtualStreamID: StreamID) throws(BackendError) -> VDeviceHandle {
        try smmu.allocateVDevice(viommu: viommu, device: device, virtualStreamID: virtualStreamID, tenant: tenant)
    }

    public func destroyVDevice(_ vdevice: VDeviceHandle) throws(BackendError) {
        try smmu.state.withLock { s throws(BackendError) in try s.destroyVDevice(vdevice, tenant: tenant, name: name) }
    }

    public func attachDevice(_ vdevice: VDeviceHandle, to domain: DeviceDomain) throws(BackendError) {
        try smmu.state.withLock { s throws(BackendError) in try s.attachDevice(vdevice, to: domain, tenant: tenant, name: name) }
    }

    public func allocateNestedHWPT(viommu: ViommuHandle, hostDeviceID: UInt32, ste: StreamTableEntry,
                                   contextDescriptors: [ContextDescriptor]) throws(BackendError) -> HWPTHandle {
        try smmu.state.withLock { s throws(BackendError) in
            try s.allocateNestedHWPT(viommu: viommu, tenant: tenant, hostDeviceID: hostDeviceID, ste: ste,
                                     contextDescriptors: contextDescriptors, name: name)
        }
    }

    public func destroyHWPT(_ hwpt: HWPTHandle) throws(BackendError) {
        try smmu.state.withLock { s throws(BackendError) in try s.destroyHWPT(hwpt, tenant: tenant, name: name) }
    }

    public func updateContextDescriptors(_ hwpt: HWPTHandle, _ contextDescriptors: [ContextDescriptor]) throws(BackendError) {
        try smmu.updateContextDescriptors(hwpt, contextDescriptors, tenant: tenant)
    }

    public func invalidate(viommu: ViommuHandle, commands: UnsafeBufferPointer<Command>) -> InvalidationResult {
        smmu.invalidate(viommu: viommu, commands: commands, tenant: tenant)
    }

    public func takeEvents(viommu: ViommuHandle) -> [EventRecord] {
        smmu.state.withLock { $0.takeEvents(viommu: viommu, tenant: tenant) }
    }

    /// ``SimulatedSMMU/setEventSink(_:tenant:)`` for the tenant: its viommus' events go to `sink`.
    public func setEventSink(_ sink: (any ViommuEventSink)?) { smmu.setEventSink(sink, tenant: tenant) }

    /// ``SimulatedSMMU/simulateDMA(_:)`` for the tenant's device `access.hostDeviceID`.
    @discardableResult
    public func simulateDMA(_ access: SimulatedDMA) throws(BackendError) -> DMAOutcome {
        try smmu.simulateDMA(access, tenant: tenant)
    }

    /// The whole pSMMU's counters (the model keeps none per tenant).
    public var counters: BackendCounters { smmu.counters }

    // MARK: - The tenant's devices

    /// ``SimulatedSMMU/touch(hostDeviceID:substreamID:address:size:mapped:throughATS:)`` for the
    /// tenant's device `hostDeviceID`.
    @discardableResult
    public func touch(hostDeviceID: UInt32, substreamID: SubstreamID? = nil, address: UInt64,
                      size: UInt64 = 4096, mapped: Bool = true, throughATS: Bool = false) throws(BackendError) -> DMAOutcome {
        try smmu.touch(hostDeviceID: hostDeviceID, substreamID: substreamID, address: address, size: size,
                       mapped: mapped, throughATS: throughATS, tenant: tenant)
    }

    /// The domain the tenant's device `hostDeviceID` is attached to (``DeviceDomain/nestParent`` until
    /// its first attach); `nil` for a device not behind this pSMMU.
    public func domain(hostDeviceID: UInt32) -> DeviceDomain? { smmu.domain(hostDeviceID: hostDeviceID, tenant: tenant) }

    /// The tenant's vdevices of `hostDeviceID`, in allocation order.
    public func vdevices(hostDeviceID: UInt32) -> [VDeviceHandle] { smmu.vdevices(hostDeviceID: hostDeviceID, tenant: tenant) }

    /// The VMID of the tenant's named nest-parent S2 `hwptID`, `nil` when there is none.
    public func vmid(ofNestParent hwptID: UInt32) -> VMID? { smmu.vmid(ofNestParent: hwptID, tenant: tenant) }

    /// The viommus of the tenant, ascending.
    public var viommus: [ViommuHandle] {
        smmu.state.withLock { s in s.viommus.values.filter { $0.tenant == tenant }.map(\.handle).sorted { $0.rawValue < $1.rawValue } }
    }
}
