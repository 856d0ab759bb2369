import IOMMUFD
import PSMMU
import SMMUv3
import SystemPackage
import VSMMUProtocol

/// A pSMMU the daemon offers to VMMs, by the name ATTACH_VIOMMU uses.
public enum PSMMUProvider: Sendable {
    /// A simulated pSMMU shared by every vSMMU (its viommus are separate objects in it). An fd passed
    /// with ATTACH_VIOMMU is not needed: it is closed and the request goes on (PROTOCOL.md §1).
    case simulated(SimulatedSMMU)
    /// A physical SMMU reached through the VMM's iommufd: ATTACH_VIOMMU must carry the VMM's iommufd
    /// fd (SCM_RIGHTS), which a new ``IOMMUFDBackend`` adopts for that viommu, through `adoption`
    /// (the kernel's `/dev/iommu` on a host; a model of the kernel in tests).
    case iommufd(name: String, adoption: IOMMUFDAdoption = .system)

    /// The name VMMs pass in ATTACH_VIOMMU.
    public var name: String {
        switch self {
        case .simulated(let smmu): return smmu.name
        case .iommufd(let name, _): return name
        }
    }

    /// The backend kind HEALTH reports.
    public var backendKind: BackendKind {
        switch self {
        case .simulated: return .simulated
        case .iommufd: return .iommufd
        }
    }

    /// Whether the pSMMU is simulated (its host devices need no VFIO descriptor).
    var isSimulated: Bool {
        if case .simulated = self { return true }
        return false
    }

    /// The embedded default: two simulated pSMMUs, `smmu0` with host devices 0…63 and `smmu1` with
    /// host devices 64…127 (physical StreamIDs equal to the host device ids), free cost model.
    public static func embeddedDefault(devicesPerPSMMU: Int = 64) -> [PSMMUProvider] {
        (0..<2).map { i in
            .simulated(SimulatedSMMU(name: "smmu\(i)", deviceCount: devicesPerPSMMU,
                                     firstHostDeviceID: UInt32(i * devicesPerPSMMU),
                                     firstStreamID: StreamID(i * devicesPerPSMMU)))
        }
    }
}

extension PSMMUProvider {
    /// The backend an ATTACH_VIOMMU attaches to, given the fd that came with it (owned by this call:
    /// closed or adopted).
    ///
    /// A simulated pSMMU answers with `tenant`'s view (``SimulatedSMMU/tenant(_:)``): the vSMMU's host
    /// devices, nest parents and object ids live in its tenant's namespace, as a real host's live in the
    /// VMM's own iommufd. An iommufd pSMMU needs no tenant: the VMM's iommufd is the namespace.
    /// - Throws: `BAD_FILE_DESCRIPTOR` (detail 1) for an iommufd pSMMU without an fd.
    func backend(for fd: Int32?, type: MessageType, tenant: UInt64) throws(ProtocolError) -> any PSMMUBackend {
        switch self {
        case .simulated(let smmu):
            if let fd { _ = try? FileDescriptor(rawValue: fd).close() }
            return smmu.tenant(TenantID(rawValue: tenant))
        case .iommufd(let name, let adoption):
            guard let fd else {
                throw .badFileDescriptor(.missing, type: type,
                                         message: "pSMMU \(name) is an iommufd backend: ATTACH_VIOMMU must pass the VMM's iommufd")
            }
            return IOMMUFDBackend(name: name, device: adoption.adopt(FileDescriptor(rawValue: fd)))
        }
    }
}


/// How an iommufd pSMMU turns the iommufd a VMM passed into the ``IOMMUFDDevice`` its backend drives:
/// ``system`` adopts the descriptor as the kernel's (``SystemIOMMUFD``); a test can hand it to a model.
public struct IOMMUFDAdoption: Sendable {
    /// Takes ownership of the VMM's iommufd descriptor.
    public var adopt: @Sendable (FileDescriptor) -> any IOMMUFDDevice

    public init(adopt: @escaping @Sendable (FileDescriptor) -> any IOMMUFDDevice) { self.adopt = adopt }

    /// The kernel's iommufd: the backend makes its ioctls on the descriptor itself.
    public static let system = IOMMUFDAdoption { SystemIOMMUFD(adopting: $0) }
}
