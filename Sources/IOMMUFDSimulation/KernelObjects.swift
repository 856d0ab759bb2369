import SMMUv3

/// One physical SMMUv3 the model's kernel drives.
public struct PhysicalSMMU: Hashable, Sendable {
    /// A name for messages and tests (`smmu0`).
    public var name: String
    /// What `arm_smmu_hw_info` reads from the SMMU's registers.
    public var idRegisters: IDRegisters
    /// `ARM_SMMU_FEAT_NESTING` (with S2FWB or coherent masters): without it `arm_smmu_get_viommu_size`
    /// returns 0, so `IOMMU_VIOMMU_ALLOC` is `EOPNOTSUPP`, and a nest-parent paging domain is refused
    /// (`EOPNOTSUPP`) too.
    public var supportsNesting: Bool
    /// `smmu->vmid_bits`: VMIDs come from `[1, 2^vmidBits - 1]` (VMID 0 is the bypass STEs').
    public var vmidBits: Int

    public init(name: String, idRegisters: IDRegisters = .simulatedDefault, supportsNesting: Bool = true,
                vmidBits: Int = 16) {
        self.name = name
        self.idRegisters = idRegisters
        self.supportsNesting = supportsNesting
        self.vmidBits = vmidBits
    }
}

/// The kind of a live iommufd object (`enum iommufd_object_type`).
public enum ObjectKind: Hashable, Sendable, CustomStringConvertible {
    /// `IOMMUFD_OBJ_DEVICE`: a VFIO device bound to the iommufd; the id is its `dev_id`.
    case device
    /// `IOMMUFD_OBJ_IOAS`.
    case ioas
    /// `IOMMUFD_OBJ_HWPT_PAGING`; `nestParent` for `IOMMU_HWPT_ALLOC_NEST_PARENT` (a stage-2 domain).
    case pagingHWPT(nestParent: Bool)
    /// `IOMMUFD_OBJ_HWPT_NESTED`, allocated on a viommu.
    case nestedHWPT
    /// `IOMMUFD_OBJ_VIOMMU`.
    case viommu
    /// `IOMMUFD_OBJ_VDEVICE`.
    case vdevice
    /// `IOMMUFD_OBJ_VEVENTQ`.
    case veventq

    public var description: String {
        switch self {
        case .device: return "device"
        case .ioas: return "ioas"
        case .pagingHWPT(let nestParent): return nestParent ? "hwpt_paging(nest_parent)" : "hwpt_paging"
        case .nestedHWPT: return "hwpt_nested"
        case .viommu: return "viommu"
        case .vdevice: return "vdevice"
        case .veventq: return "veventq"
        }
    }
}

/// A host device the model's kernel knows: behind which pSMMU, with which StreamID.
struct HostDeviceState {
    var pSMMU: Int
    /// `master->streams[0].id`: iommufd supports PCI devices with one SID only.
    var streamID: StreamID
    /// `out_capabilities` of `IOMMU_GET_HW_INFO` (`IOMMU_HW_CAP_*`).
    var capabilities: UInt64
    /// `out_max_pasid_log2`.
    var maxPASIDLog2: UInt8
}

/// An open VFIO device cdev file (`struct vfio_device_file`): several descriptors may share one.
struct VFIOFile {
    var hostDevice: Int
    /// The iommufd `dev_id` once `VFIO_DEVICE_BIND_IOMMUFD` succeeded (`df->access_granted`).
    var devID: UInt32?
}

/// What a descriptor number the model handed out refers to.
enum Descriptor {
    case vfio(file: Int)
    case veventq(UInt32)
}

/// `arm_smmu_master::vmaster`: set when the device is attached to a nested domain of a viommu on which
/// it has a vdevice (`arm_smmu_attach_prepare_vmaster`), cleared by any other attach.
struct VirtualMaster: Hashable {
    var viommu: UInt32
    var virtualStreamID: StreamID
}

struct DeviceObject {
    var hostDevice: Int
    /// The HWPT the device is attached to (`vdev->iommufd_attached` and `idev`'s attach handle).
    var attached: UInt32?
    var vmaster: VirtualMaster?
    /// `idev->vdev`.
    var vdevice: UInt32?
}

struct PagingHWPT {
    var pSMMU: Int
    var ioas: UInt32
    var nestParent: Bool
    /// `s2_cfg.vmid` of a stage-2 domain, allocated when the domain is finalised.
    var vmid: VMID?
}

struct NestedHWPT {
    var viommu: UInt32
    /// `nested_domain->ste[0..1]`, as `arm_smmu_validate_vste` left them (EATS cleared).
    var steWords: (UInt64, UInt64)
    var enableATS: Bool
}

struct ViommuObject {
    var pSMMU: Int
    /// The nest-parent HWPT (`viommu->hwpt`).
    var parent: UInt32
    /// `vsmmu->vmid = s2_parent->s2_cfg.vmid` (`arm_vsmmu_init`).
    var vmid: VMID
    /// `viommu->vdevs`: virt_id → vdevice id, in xarray (index) order.
    var vdevs: [UInt64: UInt32] = [:]
}

struct VDeviceObject {
    var viommu: UInt32
    var device: UInt32
    var virtID: UInt64
}

/// One item of a vEVENTQ's `deliver` list.
struct QueuedVEvent {
    var sequence: UInt32
    /// The event record's bytes, or `nil` for the lost-events header.
    var data: [UInt8]?
}

struct VEventQueueObject {
    var viommu: UInt32
    var type: UInt32
    var depth: UInt32
    var deliver: [QueuedVEvent] = []
    /// Normal events queued (the lost-events header is not counted).
    var numEvents: UInt32 = 0
    var sequence: UInt32 = 0
    /// The descriptor from `IOMMU_VEVENTQ_ALLOC` while it is open: the file holds a user reference
    /// on the object (`iommufd_eventq_init`, released by `iommufd_eventq_fops_release`).
    var descriptor: Int32?
    /// A real eventfd standing in for the descriptor's poll (`iommufd_eventq_fops_poll`: `EPOLLIN`
    /// while `deliver` is not empty), so that an epoll watcher can wait on a model's vEVENTQ: its count
    /// is non-zero exactly while `deliver` is not empty. Closed with the descriptor.
    var readiness: Int32?
}

enum KernelObject {
    case device(DeviceObject)
    case ioas
    case paging(PagingHWPT)
    case nested(NestedHWPT)
    case viommu(ViommuObject)
    case vdevice(VDeviceObject)
    case veventq(VEventQueueObject)

    var kind: ObjectKind {
        switch self {
        case .device: return .device
        case .ioas: return .ioas
        case .paging(let hwpt): return .pagingHWPT(nestParent: hwpt.nestParent)
        case .nested: return .nestedHWPT
        case .viommu: return .viommu
        case .vdevice: return .vdevice
        case .veventq: return .veventq
        }
    }
}
