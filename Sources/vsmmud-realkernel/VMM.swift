import IOMMUFDRelay
import PSMMU
import SystemPackage

/// What a VMM does before it hands a device to vsmmud, done in the guest through the relay: one iommufd,
/// each VFIO cdev opened and bound to it, one IOAS with the VM's RAM mapped, a nest-parent (stage-2) HWPT
/// per device — each pSMMU needs its own — and every device attached to its S2 (the rig's
/// `iommufd-multi-test` steps 1-4).
final class VMM: Sendable {
    struct Device {
        var path: String
        /// The VMM's own descriptor of the cdev.
        var vfio: FileDescriptor
        var deviceID: UInt32
        var nestParent: UInt32
    }

    /// The rig's devices: `edu` at 0000:21:00.0 behind SMMU 0 and at 0000:41:00.0 behind SMMU 1
    /// (`./boot --smmus 2`; init binds them in bus order, so vfio0 and vfio1).
    static let devicePaths = ["/dev/vfio/devices/vfio0", "/dev/vfio/devices/vfio1"]

    /// The VM's RAM: (IPA, length). 0x80000000 holds the CD tables of the checks' own vSTEs; the 4 MiB at
    /// 0x43800000 hold those of the recorded Linux guest (`S1ContextPtr` 0x43804000, 0x43abc000, 0x43950000).
    static let ram: [(iova: UInt64, length: UInt64)] = [(0x8000_0000, 2 << 20), (0x4380_0000, 4 << 20)]

    let relay: RelayIOMMUFD
    let ioas: UInt32
    let devices: [Device]

    init(relay: RelayIOMMUFD) throws {
        self.relay = relay
        var devices: [Device] = []
        for path in Self.devicePaths {
            let vfio = try relay.openDevice(path)
            devices.append(Device(path: path, vfio: vfio, deviceID: try relay.bind(vfio), nestParent: 0))
        }
        ioas = try relay.allocateIOAS()
        for region in Self.ram { try relay.mapIOAS(ioas, iova: region.iova, length: region.length) }
        for index in devices.indices {
            devices[index].nestParent = try relay.allocateNestParent(deviceID: devices[index].deviceID, ioas: ioas)
            try relay.attach(devices[index].vfio, to: devices[index].nestParent)
        }
        self.devices = devices
    }

    /// Puts every device back on no domain (`VFIO_DEVICE_DETACH_IOMMUFD_PT`) and destroys the S2s and the
    /// IOAS: this succeeds only when nothing else (a viommu, a nested HWPT) still holds them.
    /// - Returns: what each step answered.
    func tearDown() throws -> [String] {
        var steps: [String] = []
        for device in devices {
            try relay.detach(device.vfio)
            steps.append("\(device.path) detached")
        }
        for device in devices {
            let errno = try relay.destroy(device.nestParent)
            try expect(errno == nil, "IOMMU_DESTROY of the S2 \(device.nestParent): \(errno.map { "\($0)" } ?? "")")
            steps.append("S2 \(device.nestParent) destroyed")
        }
        let errno = try relay.destroy(ioas)
        try expect(errno == nil, "IOMMU_DESTROY of the IOAS \(ioas): \(errno.map { "\($0)" } ?? "")")
        steps.append("IOAS \(ioas) destroyed")
        return steps
    }

    /// Device `index` as SET_DEV_ID hands it to the daemon: its `dev_id` and a copy of the VMM's VFIO
    /// descriptor (`SCM_RIGHTS` gives the daemon its own; here a `dup` in the guest), which the backend
    /// owns and closes.
    func hostDevice(_ index: Int) throws -> HostDevice {
        HostDevice(id: devices[index].deviceID, vfioDevice: try relay.duplicate(devices[index].vfio).rawValue)
    }

    /// The viommu request of device `index`: through its `dev_id`, on its own S2.
    func viommuRequest(_ index: Int) -> ViommuAttachRequest {
        ViommuAttachRequest(hostDeviceID: devices[index].deviceID, nestParentHWPT: devices[index].nestParent)
    }
}
