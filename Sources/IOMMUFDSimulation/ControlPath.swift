import CIOMMUFD
import SMMUv3
import SystemPackage
import VSMMUSystem

extension Errno {
    /// `EOPNOTSUPP`, which is `ENOTSUP` (95) on Linux.
    static var operationNotSupported: Errno { .notSupported }
}

extension KernelState {
    // MARK: - IOMMU_DESTROY

    /// `iommufd_destroy`.
    mutating func destroyIoctl(_ bytes: inout [UInt8]) -> Errno? {
        let cmd = UserMemory.load(iommu_destroy.self, from: bytes)
        return destroy(cmd.id)
    }

    // MARK: - IOMMU_VIOMMU_ALLOC

    /// `iommufd_viommu_alloc_ioctl` with arm-smmu-v3's `arm_smmu_get_viommu_size` and `arm_vsmmu_init`.
    mutating func viommuAlloc(_ bytes: inout [UInt8]) -> Errno? {
        var cmd = UserMemory.load(iommu_viommu_alloc.self, from: bytes)
        if cmd.flags != 0 || cmd.type == UInt32(IOMMU_VIOMMU_TYPE_DEFAULT) { return .operationNotSupported }
        guard let device = device(cmd.dev_id) else { return .noSuchFileOrDirectory }
        let pSMMU = pSMMU(ofDevice: device)
        // arm_smmu_get_viommu_size: 0 without nesting, and for a type only an implementation
        // (Tegra241 CMDQV) provides.
        guard smmus[pSMMU].configuration.supportsNesting, cmd.type == UInt32(IOMMU_VIOMMU_TYPE_ARM_SMMUV3) else {
            return .operationNotSupported
        }
        // iommufd_get_hwpt_paging: ENOENT for a missing id or another kind of object.
        guard let parent = paging(cmd.hwpt_id) else { return .noSuchFileOrDirectory }
        guard parent.nestParent, let vmid = parent.vmid else { return .invalidArgument }
        // arm_vsmmu_init: the S2 must be a domain of the same pSMMU.
        guard parent.pSMMU == pSMMU else { return .invalidArgument }
        cmd.out_viommu_id = allocateID(.viommu(ViommuObject(pSMMU: pSMMU, parent: cmd.hwpt_id, vmid: vmid)))
        UserMemory.store(cmd, into: &bytes)
        return nil
    }

    // MARK: - IOMMU_VDEVICE_ALLOC

    /// `iommufd_vdevice_alloc_ioctl`.
    mutating func vdeviceAlloc(_ bytes: inout [UInt8]) -> Errno? {
        var cmd = UserMemory.load(iommu_vdevice_alloc.self, from: bytes)
        // "virt_id indexes an xarray": never larger than ULONG_MAX on a 64-bit kernel.
        guard let viommu = viommu(cmd.viommu_id) else { return .noSuchFileOrDirectory }
        guard let device = device(cmd.dev_id) else { return .noSuchFileOrDirectory }
        // viommu->iommu_dev != __iommu_get_iommu_dev(idev->dev)
        guard viommu.pSMMU == pSMMU(ofDevice: device) else { return .invalidArgument }
        if kernel.refusesASecondVDeviceOfADevice, device.vdevice != nil { return .fileExists }
        // xa_cmpxchg(&viommu->vdevs, virt_id, NULL, vdev): an occupied index is EEXIST.
        guard viommu.vdevs[cmd.virt_id] == nil else { return .fileExists }
        let id = allocateID(.vdevice(VDeviceObject(viommu: cmd.viommu_id, device: cmd.dev_id, virtID: cmd.virt_id)))
        update(viommu: cmd.viommu_id) { $0.vdevs[cmd.virt_id] = id }
        update(device: cmd.dev_id) { if $0.vdevice == nil { $0.vdevice = id } }
        cmd.out_vdevice_id = id
        UserMemory.store(cmd, into: &bytes)
        return nil
    }

    // MARK: - IOMMU_HWPT_ALLOC

    /// `iommufd_hwpt_alloc`: a paging HWPT on an IOAS (`iommufd_hwpt_paging_alloc`: a nest-parent
    /// stage-2 domain with its VMID, or a plain one), or a nested HWPT on a viommu
    /// (`iommufd_viommu_alloc_hwpt_nested` → `arm_vsmmu_alloc_domain_nested`).
    mutating func hwptAlloc(_ bytes: inout [UInt8]) -> Errno? {
        var cmd = UserMemory.load(iommu_hwpt_alloc.self, from: bytes)
        if cmd.__reserved != 0 { return .operationNotSupported }
        let none = UInt32(IOMMU_HWPT_DATA_NONE)
        if (cmd.data_type == none && cmd.data_len != 0) || (cmd.data_type != none && cmd.data_len == 0) {
            return .invalidArgument
        }
        guard let device = device(cmd.dev_id) else { return .noSuchFileOrDirectory }
        let pSMMU = pSMMU(ofDevice: device)
        // iommufd_get_object(…, IOMMUFD_OBJ_ANY) failing is EINVAL here, not ENOENT.
        guard let pt = objects[cmd.pt_id] else { return .invalidArgument }

        let object: KernelObject
        switch pt {
        case .ioas:
            let valid = UInt32(IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                               | IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID)
            if cmd.flags & ~valid != 0 { return .operationNotSupported }
            // The model builds plain paging domains and nest-parent stage-2 ones, without dirty
            // tracking or PASID, and no driver data.
            guard cmd.flags & UInt32(IOMMU_HWPT_ALLOC_DIRTY_TRACKING | IOMMU_HWPT_ALLOC_PASID) == 0,
                  cmd.data_type == none else { return .operationNotSupported }
            if cmd.flags & UInt32(IOMMU_HWPT_ALLOC_NEST_PARENT) != 0 {
                guard smmus[pSMMU].configuration.supportsNesting else { return .operationNotSupported }
                // arm_smmu_domain_alloc_paging_flags finalises the S2 domain at once: its VMID.
                guard let vmid = allocateVMID(on: pSMMU) else { return .noSpace }
                object = .paging(PagingHWPT(pSMMU: pSMMU, ioas: cmd.pt_id, nestParent: true, vmid: vmid))
            } else {
                object = .paging(PagingHWPT(pSMMU: pSMMU, ioas: cmd.pt_id, nestParent: false, vmid: nil))
            }
        case .paging:
            // iommufd_hwpt_nested_alloc on a paging parent: arm-smmu-v3 allocates nested domains only
            // through a viommu.
            return .operationNotSupported
        case .viommu(let viommu):
            guard viommu.pSMMU == pSMMU else { return .invalidArgument }
            if cmd.flags & ~UInt32(IOMMU_HWPT_FAULT_ID_VALID) != 0 { return .operationNotSupported }
            switch copyNestedSTE(cmd) {
            case .success(let (words, enableATS)):
                object = .nested(NestedHWPT(viommu: cmd.pt_id, steWords: words, enableATS: enableATS))
            case .failure(let errno):
                return errno
            }
        default:
            return .invalidArgument
        }
        // IOMMU_HWPT_FAULT_ID_VALID: iommufd_get_fault(fault_id); the model has no fault objects.
        if cmd.flags & UInt32(IOMMU_HWPT_FAULT_ID_VALID) != 0 {
            if case .paging(let hwpt) = object, let vmid = hwpt.vmid { smmus[pSMMU].vmids.remove(vmid) }
            return .noSuchFileOrDirectory
        }
        cmd.out_hwpt_id = allocateID(object)
        UserMemory.store(cmd, into: &bytes)
        return nil
    }

    /// `iommu_copy_struct_from_user(&arg, user_data, IOMMU_HWPT_DATA_ARM_SMMUV3, ste)` then
    /// `arm_smmu_validate_vste`.
    ///
    /// The copy (`__iommu_copy_struct_from_user`) refuses a `data_type` other than ARM_SMMUV3 and any
    /// `data_len` other than the struct's 16 bytes (`len < min_len || data_len < len`) with `EINVAL`;
    /// only then does `copy_struct_from_user` read the 16 bytes.
    func copyNestedSTE(_ cmd: iommu_hwpt_alloc) -> Result<((UInt64, UInt64), Bool), Errno> {
        guard cmd.data_type == UInt32(IOMMU_HWPT_DATA_ARM_SMMUV3) else { return .failure(.invalidArgument) }
        let size = MemoryLayout<iommu_hwpt_arm_smmuv3>.size
        guard Int(cmd.data_len) == size else { return .failure(.invalidArgument) }
        let user: [UInt8]
        switch UserMemory.read(cmd.data_uptr, count: size) {
        case .success(let bytes): user = bytes
        case .failure(let errno): return .failure(errno)
        }
        let w0 = UserMemory.littleEndianUInt64(user[0 ..< 8])
        let w1 = UserMemory.littleEndianUInt64(user[8 ..< 16])
        return Self.validateVSTE(w0, w1)
    }

    /// `arm_smmu_validate_vste`: V = 0 is accepted as an all-zero (abort) STE; otherwise a bit outside
    /// `STRTAB_STE_0/1_NESTING_ALLOWED`, a CONFIG other than abort, bypass or S1_TRANS, or an EATS
    /// other than 0 (abort) or 1 (translate) is `EIO` ("EIO is reserved for invalid STE data"). EATS
    /// is cleared from the kept STE; it enables ATS for an S1_TRANS STE.
    static func validateVSTE(_ w0: UInt64, _ w1: UInt64) -> Result<((UInt64, UInt64), Bool), Errno> {
        let valid = StreamTableEntry.Field.valid, cfg = StreamTableEntry.Field.config, eats = StreamTableEntry.Field.eats
        guard valid.get(w0) != 0 else { return .success(((0, 0), false)) }
        if w0 & ~StreamTableEntry.nestingAllowedW0 != 0 || w1 & ~StreamTableEntry.nestingAllowedW1 != 0 {
            return .failure(.ioError)
        }
        let config = StreamConfig(rawValue: UInt8(cfg.get(w0)))
        guard config == .abort || config == .bypass || config == .s1Translate else { return .failure(.ioError) }
        let atsMode = eats.get(w1)
        guard atsMode == 0 || atsMode == 1 else { return .failure(.ioError) }
        return .success(((w0, w1 & ~eats.mask), config == .s1Translate && atsMode == 1))
    }

    // MARK: - IOMMU_GET_HW_INFO

    /// `iommufd_get_hw_info` with `arm_smmu_hw_info`.
    mutating func getHWInfo(_ bytes: inout [UInt8]) -> Errno? {
        var cmd = UserMemory.load(iommu_hw_info.self, from: bytes)
        let inputType: UInt32 = kernel.hwInfoTakesAnInputType ? 1 : 0 // IOMMU_HW_INFO_FLAG_INPUT_TYPE
        if cmd.flags & ~inputType != 0 { return .operationNotSupported }
        if cmd.__reserved != (0, 0, 0) { return .operationNotSupported }
        // "Clear the type field since drivers don't support a random input".
        if cmd.flags & inputType == 0 { cmd.out_data_type = UInt32(IOMMU_HW_INFO_TYPE_NONE) }
        guard let device = device(cmd.dev_id) else { return .noSuchFileOrDirectory }
        // arm_smmu_hw_info: DEFAULT (0) or ARM_SMMUV3 only, without an implementation's hw_info.
        guard cmd.out_data_type == UInt32(IOMMU_HW_INFO_TYPE_NONE)
                || cmd.out_data_type == UInt32(IOMMU_HW_INFO_TYPE_ARM_SMMUV3) else { return .operationNotSupported }
        let host = hostDevices[device.hostDevice]
        let registers = smmus[host.pSMMU].configuration.idRegisters
        var info = iommu_hw_info_arm_smmuv3()
        withUnsafeMutableBytes(of: &info.idr) { idr in
            for (index, value) in registers.idr.prefix(6).enumerated() {
                idr.storeBytes(of: value.littleEndian, toByteOffset: 4 * index, as: UInt32.self)
            }
        }
        info.iidr = registers.iidr.littleEndian
        info.aidr = registers.aidr.littleEndian
        let data = withUnsafeBytes(of: info) { Array($0) }
        // copy min(data_len, len) to the user, then clear_user the rest of the user's buffer.
        let copyLength = min(Int(cmd.data_len), data.count)
        var user = Array(data[0 ..< copyLength])
        user += [UInt8](repeating: 0, count: Int(cmd.data_len) - copyLength)
        if let errno = UserMemory.write(user, to: cmd.data_uptr) { return errno }
        cmd.data_len = UInt32(data.count)
        cmd.out_data_type = UInt32(IOMMU_HW_INFO_TYPE_ARM_SMMUV3)
        cmd.out_capabilities = host.capabilities
        cmd.out_max_pasid_log2 = host.maxPASIDLog2
        UserMemory.store(cmd, into: &bytes)
        return nil
    }

    // MARK: - IOMMU_VEVENTQ_ALLOC

    /// `iommufd_veventq_alloc`.
    mutating func veventqAlloc(_ bytes: inout [UInt8]) -> Errno? {
        var cmd = UserMemory.load(iommu_veventq_alloc.self, from: bytes)
        if cmd.flags != 0 || cmd.__reserved != 0 || cmd.type == UInt32(IOMMU_VEVENTQ_TYPE_DEFAULT) {
            return .operationNotSupported
        }
        if cmd.veventq_depth == 0 { return .invalidArgument }
        guard viommu(cmd.viommu_id) != nil else { return .noSuchFileOrDirectory }
        // iommufd_viommu_find_veventq: one per (viommu, type).
        let exists = objects.values.contains {
            if case .veventq(let queue) = $0 { return queue.viommu == cmd.viommu_id && queue.type == cmd.type }
            return false
        }
        if exists { return .fileExists }
        let id = allocateID(.veventq(VEventQueueObject(viommu: cmd.viommu_id, type: cmd.type, depth: cmd.veventq_depth)))
        let descriptor = allocateDescriptor(.veventq(id))
        let readiness = try? SystemCall.eventFD()
        update(veventq: id) {
            $0.descriptor = descriptor
            $0.readiness = readiness
        }
        cmd.out_veventq_id = id
        cmd.out_veventq_fd = UInt32(bitPattern: descriptor)
        UserMemory.store(cmd, into: &bytes)
        return nil
    }
}
