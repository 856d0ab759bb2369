import CIOMMUFD
import IOMMUFD
import IOMMUFDSimulation
import PSMMU
import SMMUv3
import SystemPackage

/// A host the way the real rig is before the daemon sees anything: one iommufd, `pSMMUs` pSMMUs,
/// `devicesPerPSMMU` bound devices behind each, one IOAS, a nest-parent S2 per pSMMU, every device
/// attached to its pSMMU's S2.
struct Rig {
    let kernel: SimulatedIOMMUFD
    let ioas: UInt32
    /// `devices[p][d]`: device `d` behind pSMMU `p`, physical StreamID `pSID(p, d)`.
    let devices: [[SimulatedIOMMUFD.BoundDevice]]
    /// The nest-parent HWPT of each pSMMU.
    let nestParents: [UInt32]

    static func pSID(_ pSMMU: Int, _ device: Int) -> StreamID { StreamID(0x100 * (pSMMU + 1) + device) }

    init(kernel version: KernelVersion = .rig, pSMMUs: Int = 2, devicesPerPSMMU: Int = 2,
         smmus: [PhysicalSMMU]? = nil) throws {
        let kernel = SimulatedIOMMUFD(kernel: version, smmus: smmus ?? (0 ..< pSMMUs).map {
            // QEMU's emulated SMMUv3 with ATS (IDR0 bit 10), so that ATC_INV is accepted.
            PhysicalSMMU(name: "smmu\($0)", idRegisters: IDRegisters(idr: [0x0d44_141b, 0x0273_0010, 0, 0x1414, 0, 0x74],
                                                                    iidr: UInt32(0x43b + $0), aidr: 0x1))
        })
        let devices = kernel.smmus.indices.map { p in
            (0 ..< devicesPerPSMMU).map { d in kernel.bindDevice(pSMMU: p, streamID: Rig.pSID(p, d)) }
        }
        let ioas = kernel.allocateIOAS()
        var parents: [UInt32] = []
        for p in kernel.smmus.indices {
            let parent = try kernel.allocateNestParent(device: devices[p][0].devID, ioas: ioas)
            parents.append(parent)
            for device in devices[p] { try kernel.attach(vfio: device.vfio, to: parent) }
        }
        self.kernel = kernel
        self.devices = devices
        self.ioas = ioas
        self.nestParents = parents
    }

    func device(_ pSMMU: Int, _ index: Int = 0) -> SimulatedIOMMUFD.BoundDevice { devices[pSMMU][index] }

    /// A backend on pSMMU `pSMMU` of the rig's iommufd.
    func backend(_ pSMMU: Int, eventQueueDepth: UInt32? = 64,
                 maximumEntriesPerCall: Int = 1008) -> IOMMUFDBackend {
        IOMMUFDBackend(name: "smmu\(pSMMU)", device: kernel,
                       configuration: .init(maximumEntriesPerCall: maximumEntriesPerCall, eventQueueDepth: eventQueueDepth))
    }

    /// The request that allocates a viommu through device `index` of pSMMU `pSMMU` on its S2.
    func request(_ pSMMU: Int, device index: Int = 0) -> ViommuAttachRequest {
        ViommuAttachRequest(hostDeviceID: device(pSMMU, index).devID, nestParentHWPT: nestParents[pSMMU])
    }

    /// The VFIO descriptor the VMM hands the daemon for a device: a duplicate of its own.
    func hostDevice(_ pSMMU: Int, _ index: Int = 0) throws -> HostDevice {
        let device = device(pSMMU, index)
        return HostDevice(id: device.devID, vfioDevice: try kernel.duplicate(vfio: device.vfio))
    }
}

// MARK: - Raw ioctls, as a caller that writes the structs itself

extension SimulatedIOMMUFD {
    /// An ioctl with `value` as the argument (its first u32 set to `size`, default the struct's size).
    func call<T>(_ request: IOMMUFDRequest, _ value: inout T) -> Errno? {
        withUnsafeMutableBytes(of: &value) { ioctl(request: request, argument: $0) }
    }

    /// An ioctl whose argument is `bytes`: what a caller with a newer or older struct passes.
    func call(_ request: IOMMUFDRequest, bytes: inout [UInt8]) -> Errno? {
        bytes.withUnsafeMutableBytes { ioctl(request: request, argument: $0) }
    }

    func destroy(_ id: UInt32) -> Errno? {
        var cmd = iommu_destroy(size: 8, id: id)
        return call(.destroy, &cmd)
    }

    func allocateViommu(device: UInt32, hwpt: UInt32, type: UInt32 = UInt32(IOMMU_VIOMMU_TYPE_ARM_SMMUV3)) -> Result<UInt32, Errno> {
        var cmd = iommu_viommu_alloc()
        cmd.size = UInt32(MemoryLayout<iommu_viommu_alloc>.size)
        cmd.type = type
        cmd.dev_id = device
        cmd.hwpt_id = hwpt
        if let errno = call(.viommuAlloc, &cmd) { return .failure(errno) }
        return .success(cmd.out_viommu_id)
    }

    func allocateVDevice(viommu: UInt32, device: UInt32, virtualID: UInt64) -> Result<UInt32, Errno> {
        var cmd = iommu_vdevice_alloc()
        cmd.size = UInt32(MemoryLayout<iommu_vdevice_alloc>.size)
        cmd.viommu_id = viommu
        cmd.dev_id = device
        cmd.virt_id = virtualID
        if let errno = call(.vdeviceAlloc, &cmd) { return .failure(errno) }
        return .success(cmd.out_vdevice_id)
    }

    /// `IOMMU_HWPT_ALLOC` of a nested HWPT from `ste` words 0-1, `dataLength` bytes of them.
    func allocateNested(device: UInt32, pt: UInt32, ste: (UInt64, UInt64), dataLength: UInt32 = 16,
                        dataType: UInt32 = UInt32(IOMMU_HWPT_DATA_ARM_SMMUV3)) -> Result<UInt32, Errno> {
        var data: [UInt64] = [ste.0.littleEndian, ste.1.littleEndian, 0, 0]
        var cmd = iommu_hwpt_alloc()
        cmd.size = UInt32(MemoryLayout<iommu_hwpt_alloc>.size)
        cmd.dev_id = device
        cmd.pt_id = pt
        cmd.data_type = dataType
        cmd.data_len = dataLength
        let errno = data.withUnsafeMutableBytes { payload -> Errno? in
            cmd.data_uptr = UInt64(UInt(bitPattern: payload.baseAddress))
            return call(.hwptAlloc, &cmd)
        }
        if let errno { return .failure(errno) }
        return .success(cmd.out_hwpt_id)
    }

    func allocateNested(device: UInt32, viommu: UInt32, ste: StreamTableEntry) -> Result<UInt32, Errno> {
        allocateNested(device: device, pt: viommu, ste: (ste.word(0), ste.word(1)))
    }

    /// `IOMMU_HWPT_INVALIDATE` of `commands` on `hwpt`: the errno and the `entry_num` written back.
    func invalidate(_ hwpt: UInt32, _ commands: [Command], entryLength: Int = 16,
                    entryNum: UInt32? = nil) -> (errno: Errno?, entryNum: UInt32) {
        var entries = [UInt8](repeating: 0, count: max(1, commands.count * entryLength))
        for (index, command) in commands.enumerated() {
            let bytes = withUnsafeBytes(of: command.w0.littleEndian) { Array($0) } + withUnsafeBytes(of: command.w1.littleEndian) { Array($0) }
            for (offset, byte) in bytes.prefix(entryLength).enumerated() { entries[index * entryLength + offset] = byte }
        }
        var cmd = iommu_hwpt_invalidate()
        cmd.size = UInt32(MemoryLayout<iommu_hwpt_invalidate>.size)
        cmd.hwpt_id = hwpt
        cmd.data_type = UInt32(IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3)
        cmd.entry_len = UInt32(entryLength)
        cmd.entry_num = entryNum ?? UInt32(commands.count)
        let errno = entries.withUnsafeMutableBytes { raw -> Errno? in
            cmd.data_uptr = UInt64(UInt(bitPattern: raw.baseAddress))
            return call(.hwptInvalidate, &cmd)
        }
        return (errno, cmd.entry_num)
    }

    func allocateEventQueue(viommu: UInt32, depth: UInt32 = 8,
                            type: UInt32 = UInt32(IOMMU_VEVENTQ_TYPE_ARM_SMMUV3)) -> Result<(id: UInt32, fd: Int32), Errno> {
        var cmd = iommu_veventq_alloc()
        cmd.size = UInt32(MemoryLayout<iommu_veventq_alloc>.size)
        cmd.viommu_id = viommu
        cmd.type = type
        cmd.veventq_depth = depth
        if let errno = call(.veventqAlloc, &cmd) { return .failure(errno) }
        return .success((cmd.out_veventq_id, Int32(bitPattern: cmd.out_veventq_fd)))
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` as an errno.
    func attachErrno(vfio: Int32, to pt: UInt32) -> Errno? {
        do { try attach(vfio: vfio, to: pt); return nil } catch { return error }
    }

    /// One `read(2)` of a vEVENTQ into a buffer of `capacity` bytes.
    func readEvents(_ fd: Int32, capacity: Int = 4096) -> Result<[UInt8], Errno> {
        var buffer = [UInt8](repeating: 0xEE, count: capacity)
        let result = buffer.withUnsafeMutableBytes { read(eventQueue: FileDescriptor(rawValue: fd), into: $0) }
        return result.map { Array(buffer[0 ..< $0]) }
    }
}

extension Result {
    var value: Success? { try? get() }
    var error: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}

/// A translating vSTE (V=1, CONFIG=S1_TRANS) with its CD table at `table`.
func translatingSTE(table: UInt64 = 0x8000_0000) -> StreamTableEntry { .stage1(contextTable: table) }

func u32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
    (0 ..< 4).reduce(0) { $0 | UInt32(bytes[offset + $1]) << UInt32(8 * $1) }
}

func u64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
    (0 ..< 8).reduce(0) { $0 | UInt64(bytes[offset + $1]) << UInt64(8 * $1) }
}

/// Runs `body` and returns the ``BackendError`` it throws.
func backendError(_ body: () throws -> Void) -> BackendError? {
    do {
        try body()
        return nil
    } catch let error as BackendError {
        return error
    } catch {
        return nil
    }
}
