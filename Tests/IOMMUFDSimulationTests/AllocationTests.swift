import PSMMU
import CIOMMUFD
import IOMMUFD
import IOMMUFDSimulation
import SMMUv3
import SystemPackage
import Testing

/// `IOMMU_GET_HW_INFO`, `IOMMU_VIOMMU_ALLOC`, `IOMMU_VDEVICE_ALLOC`, `IOMMU_HWPT_ALLOC` and the struct
/// size rules of `iommufd_fops_ioctl`.
@Suite struct AllocationTests {
    // MARK: IOMMU_GET_HW_INFO

    func hwInfo(_ kernel: SimulatedIOMMUFD, device: UInt32, dataLength: Int = 40,
                size: UInt32 = 40) -> (Errno?, iommu_hw_info, [UInt8]) {
        var data = [UInt8](repeating: 0xAA, count: max(dataLength, 64))
        var info = iommu_hw_info()
        info.size = size
        info.dev_id = device
        info.data_len = UInt32(dataLength)
        info.out_capabilities = 0xDEAD
        let errno = data.withUnsafeMutableBytes { raw -> Errno? in
            info.data_uptr = UInt64(UInt(bitPattern: raw.baseAddress))
            return kernel.call(.getHWInfo, &info)
        }
        return (errno, info, data)
    }

    @Test func getHWInfoGivesTheIDRegistersOfTheDevicesOwnPSMMULikeArmSmmuHwInfo() throws {
        let rig = try Rig(pSMMUs: 2)
        for p in 0 ..< 2 {
            let (errno, info, data) = hwInfo(rig.kernel, device: rig.device(p).devID)
            #expect(errno == nil)
            #expect(info.out_data_type == UInt32(IOMMU_HW_INFO_TYPE_ARM_SMMUV3))
            #expect(info.data_len == 40)
            let registers = rig.kernel.smmus[p].idRegisters
            #expect((0 ..< 6).map { u32(data, 8 + 4 * $0) } == registers.idr)
            #expect(u32(data, 32) == registers.iidr)
            #expect(u32(data, 36) == 0x1)
        }
        #expect(rig.kernel.smmus[0].idRegisters != rig.kernel.smmus[1].idRegisters)
    }

    @Test func getHWInfoCopiesMinOfDataLenAndZeroFillsALargerBufferLikeIommufdGetHwInfo() throws {
        let rig = try Rig(pSMMUs: 1)
        let (shortErrno, short, shortData) = hwInfo(rig.kernel, device: rig.device(0).devID, dataLength: 12)
        #expect(shortErrno == nil)
        #expect(short.data_len == 40, "the kernel reports the length it has")
        #expect(u32(shortData, 8) == rig.kernel.smmus[0].idRegisters.idr[0])
        #expect(shortData[12] == 0xAA, "nothing written past data_len")
        let (_, long, longData) = hwInfo(rig.kernel, device: rig.device(0).devID, dataLength: 56)
        #expect(long.data_len == 40)
        #expect(longData[40 ..< 56].allSatisfy { $0 == 0 }, "clear_user of the rest")
        #expect(longData[56] == 0xAA)
    }

    @Test func getHWInfoReportsTheDevicesCapabilitiesAndWritesThemOnlyIntoA40ByteStruct() throws {
        let kernel = SimulatedIOMMUFD(pSMMUCount: 1)
        let ats = UInt64(IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED)
        let device = kernel.bindDevice(pSMMU: 0, streamID: 0x10, capabilities: ats, maxPASIDLog2: 5)
        let (errno, full, _) = hwInfo(kernel, device: device.devID)
        #expect(errno == nil)
        #expect(full.out_capabilities == ats)
        #expect(full.out_max_pasid_log2 == 5)
        // offsetofend(__reserved) = 32 is the first version: a 32-byte caller gets 32 bytes back.
        let (shortErrno, short, _) = hwInfo(kernel, device: device.devID, size: 32)
        #expect(shortErrno == nil)
        #expect(short.out_capabilities == 0xDEAD)
        #expect(hwInfo(kernel, device: device.devID, size: 28).0 == .invalidArgument)
    }

    @Test func getHWInfoOfAnIdThatIsNoDeviceIsENOENT() throws {
        let rig = try Rig(pSMMUs: 1)
        #expect(hwInfo(rig.kernel, device: rig.ioas).0 == .noSuchFileOrDirectory)
    }

    // MARK: IOMMU_VIOMMU_ALLOC

    @Test func viommuAllocOnTheS2OfAnotherPSMMUIsEINVALLikeArmVsmmuInit() throws {
        let rig = try Rig(pSMMUs: 2)
        #expect(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: rig.nestParents[1]).error == .invalidArgument)
        #expect(rig.kernel.allocateViommu(device: rig.device(1).devID, hwpt: rig.nestParents[0]).error == .invalidArgument)
        #expect(rig.kernel.allocateViommu(device: rig.device(1).devID, hwpt: rig.nestParents[1]).error == nil)
    }

    @Test func viommuAllocOnAPagingHWPTThatIsNoNestParentIsEINVAL() throws {
        // iommufd_viommu_alloc_ioctl: if (!hwpt_paging->nest_parent) return -EINVAL.
        let rig = try Rig(pSMMUs: 1)
        var alloc = iommu_hwpt_alloc()
        alloc.size = UInt32(MemoryLayout<iommu_hwpt_alloc>.size)
        alloc.dev_id = rig.device(0).devID
        alloc.pt_id = rig.ioas
        #expect(rig.kernel.call(.hwptAlloc, &alloc) == nil)
        #expect(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: alloc.out_hwpt_id).error == .invalidArgument)
    }

    @Test func viommuAllocOnAnIdThatIsNoPagingHWPTIsENOENTAndWithoutAKnownDeviceToo() throws {
        // iommufd_get_hwpt_paging / iommufd_get_device: a missing object or one of another type.
        let rig = try Rig(pSMMUs: 1)
        #expect(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: rig.ioas).error == .noSuchFileOrDirectory)
        #expect(rig.kernel.allocateViommu(device: rig.ioas, hwpt: rig.nestParents[0]).error == .noSuchFileOrDirectory)
        #expect(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: rig.nestParents[0],
                                          type: UInt32(IOMMU_VIOMMU_TYPE_DEFAULT)).error == .notSupported)
    }

    @Test func viommuAllocOnAPSMMUWithoutNestingIsEOPNOTSUPPLikeArmSmmuGetViommuSize() throws {
        let kernel = SimulatedIOMMUFD(smmus: [PhysicalSMMU(name: "smmu0", supportsNesting: false)])
        let device = kernel.bindDevice(pSMMU: 0, streamID: 0x10)
        #expect(throws: Errno.notSupported) { try kernel.allocateNestParent(device: device.devID, ioas: kernel.allocateIOAS()) }
    }

    @Test(arguments: [KernelVersion(6, 15), KernelVersion(7, 3)])
    func viommuAllocBytesPastTheKernelsStructMustBeZeroElseE2BIG(kernel version: KernelVersion) throws {
        // iommufd_fops_ioctl → copy_struct_from_user: 6.17 extended the struct to 40 bytes (data_len,
        // data_uptr), which an earlier kernel does not know.
        let rig = try Rig(kernel: version, pSMMUs: 1)
        var bytes = [UInt8](repeating: 0, count: 40)
        func put(_ value: UInt32, at offset: Int) { for i in 0 ..< 4 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) } }
        put(40, at: 0)
        put(UInt32(IOMMU_VIOMMU_TYPE_ARM_SMMUV3), at: 8)
        put(rig.device(0).devID, at: 12)
        put(rig.nestParents[0], at: 16)
        put(4, at: 24) // data_len
        let errno = rig.kernel.call(.viommuAlloc, bytes: &bytes)
        if version < KernelVersion(6, 17) {
            #expect(errno == .argListTooLong)
        } else {
            #expect(errno == nil)
            #expect(u32(bytes, 20) != 0, "out_viommu_id")
        }
        put(0, at: 24)
        #expect(rig.kernel.call(.viommuAlloc, bytes: &bytes) == nil)
    }

    @Test func aStructSizeBelowTheFirstVersionIsEINVALAndAnUnknownCommandENOTTY() throws {
        let rig = try Rig(pSMMUs: 1)
        var alloc = iommu_viommu_alloc()
        alloc.size = 20
        #expect(rig.kernel.call(.viommuAlloc, &alloc) == .invalidArgument)
        var destroy = iommu_destroy(size: 4, id: 1)
        #expect(rig.kernel.call(.destroy, &destroy) == .invalidArgument)
        #expect(rig.kernel.call(IOMMUFDRequest(command: 0x99), &destroy) == .inappropriateIOCTLForDevice)
    }

    // MARK: IOMMU_VDEVICE_ALLOC

    @Test func vdeviceAllocForADeviceBehindAnotherPSMMUIsEINVAL() throws {
        let rig = try Rig(pSMMUs: 2)
        let viommu = try #require(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: rig.nestParents[0]).value)
        #expect(rig.kernel.allocateVDevice(viommu: viommu, device: rig.device(1).devID, virtualID: 8).error == .invalidArgument)
    }

    @Test func vdeviceAllocOfAVirtIDInUseOnTheViommuIsEEXISTLikeXaCmpxchg() throws {
        let rig = try Rig(pSMMUs: 1)
        let viommu = try #require(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: rig.nestParents[0]).value)
        #expect(rig.kernel.allocateVDevice(viommu: viommu, device: rig.device(0).devID, virtualID: 8).error == nil)
        #expect(rig.kernel.allocateVDevice(viommu: viommu, device: rig.device(0, 1).devID, virtualID: 8).error == .fileExists)
        #expect(rig.kernel.allocateVDevice(viommu: 77, device: rig.device(0, 1).devID, virtualID: 9).error == .noSuchFileOrDirectory)
    }

    @Test(arguments: [KernelVersion(6, 16), KernelVersion(6, 17), KernelVersion(7, 3)])
    func aSecondVDeviceOfOneDeviceIsEEXISTFrom6_17OnlyLikeTheIdevVdevCheck(kernel version: KernelVersion) throws {
        // iommufd_vdevice_alloc_ioctl: if (idev->vdev) return -EEXIST, added with "iommufd: Destroy
        // vdevice on idev destroy" (6.17). Before it a device could have one per virt_id.
        let rig = try Rig(kernel: version, pSMMUs: 1)
        let device = rig.device(0)
        let viommu = try #require(rig.kernel.allocateViommu(device: device.devID, hwpt: rig.nestParents[0]).value)
        let other = try #require(rig.kernel.allocateViommu(device: device.devID, hwpt: rig.nestParents[0]).value)
        #expect(rig.kernel.allocateVDevice(viommu: viommu, device: device.devID, virtualID: 8).error == nil)
        let second = rig.kernel.allocateVDevice(viommu: viommu, device: device.devID, virtualID: 9).error
        let onAnotherViommu = rig.kernel.allocateVDevice(viommu: other, device: device.devID, virtualID: 8).error
        if version >= KernelVersion(6, 17) {
            #expect(second == .fileExists)
            #expect(onAnotherViommu == .fileExists)
        } else {
            #expect(second == nil)
            #expect(onAnotherViommu == nil)
        }
    }

    // MARK: IOMMU_HWPT_ALLOC (nested)

    @Test func nestedHWPTAllocOnAnUnknownPtIDIsEINVALNotENOENT() throws {
        // iommufd_hwpt_alloc: a failed iommufd_get_object(…, IOMMUFD_OBJ_ANY) is rc = -EINVAL.
        let rig = try Rig(pSMMUs: 1)
        #expect(rig.kernel.allocateNested(device: rig.device(0).devID, pt: 77, ste: (0, 0)).error == .invalidArgument)
        #expect(rig.kernel.allocateNested(device: 77, pt: rig.nestParents[0], ste: (0, 0)).error == .noSuchFileOrDirectory)
    }

    @Test func nestedHWPTAllocOnTheViommuOfAnotherPSMMUIsEINVAL() throws {
        let rig = try Rig(pSMMUs: 2)
        let viommu = try #require(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: rig.nestParents[0]).value)
        #expect(rig.kernel.allocateNested(device: rig.device(1).devID, viommu: viommu, ste: .abort).error == .invalidArgument)
    }

    @Test(arguments: [
        (StreamTableEntry(w0: 0x1 | 0x5 << 1 | 1 << 52), "w0 bit 52 (outside NESTING_ALLOWED)"),
        (StreamTableEntry(w0: 0x1 | 0x6 << 1), "CONFIG s2_trans"),
        (StreamTableEntry(w0: 0x1 | 0x7 << 1), "CONFIG nested"),
        (StreamTableEntry(w0: 0x1 | 0x5 << 1, w1: 2 << 28), "EATS 2 (split-stage)"),
        (StreamTableEntry(w0: 0x1 | 0x5 << 1, w1: 1 << 19), "w1 MEV"),
    ])
    func aVSTEArmSmmuValidateVsteRefusesIsEIO(ste: StreamTableEntry, what: String) throws {
        let rig = try Rig(pSMMUs: 1)
        let viommu = try #require(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: rig.nestParents[0]).value)
        #expect(rig.kernel.allocateNested(device: rig.device(0).devID, viommu: viommu, ste: ste).error == .ioError, "\(what)")
    }

    @Test func aVSTEWithVZeroIsAcceptedAsAnAllZeroSTEAndEATSIsDroppedFromTheKeptOne() throws {
        // arm_smmu_validate_vste: V = 0 → memset(arg->ste, 0); EATS is cleared once checked.
        let rig = try Rig(pSMMUs: 1)
        let viommu = try #require(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: rig.nestParents[0]).value)
        let invalid = try #require(rig.kernel.allocateNested(device: rig.device(0).devID, pt: viommu,
                                                             ste: (0xFFFF_FFFF_FFFF_FFFE, 0xFFFF)).value)
        #expect(try #require(rig.kernel.nestedSTE(of: invalid)) == (0, 0))
        var ats = translatingSTE()
        ats.eats = 1
        let translating = try #require(rig.kernel.allocateNested(device: rig.device(0).devID, viommu: viommu, ste: ats).value)
        #expect(ats.word(1) & StreamTableEntry.Field.eats.mask != 0)
        #expect(try #require(rig.kernel.nestedSTE(of: translating)) == (ats.word(0), ats.word(1) & ~StreamTableEntry.Field.eats.mask))
    }

    @Test(arguments: [UInt32(8), 24, 32])
    func aNestedDataLenOtherThanTheKernelsSixteenIsEINVALLikeIommuCopyStructFromUser(length: UInt32) throws {
        // __iommu_copy_struct_from_user: src len < min_len || data_len < src len → EINVAL, before any
        // copy_struct_from_user: a longer iommu_hwpt_arm_smmuv3 is refused even with zero tail bytes.
        let rig = try Rig(pSMMUs: 1)
        let viommu = try #require(rig.kernel.allocateViommu(device: rig.device(0).devID, hwpt: rig.nestParents[0]).value)
        #expect(rig.kernel.allocateNested(device: rig.device(0).devID, pt: viommu, ste: (1 | 4 << 1, 0),
                                          dataLength: length).error == .invalidArgument)
        #expect(rig.kernel.allocateNested(device: rig.device(0).devID, pt: viommu, ste: (1 | 4 << 1, 0),
                                          dataType: UInt32(IOMMU_HWPT_DATA_VTD_S1)).error == .invalidArgument)
    }

    @Test func hwptAllocBytesPastItsFortyEightMustBeZeroElseE2BIG() throws {
        let rig = try Rig(pSMMUs: 1)
        var bytes = [UInt8](repeating: 0, count: 56)
        bytes[0] = 56
        bytes[4] = UInt8(IOMMU_HWPT_ALLOC_NEST_PARENT)
        bytes[8] = UInt8(rig.device(0).devID)
        bytes[12] = UInt8(rig.ioas)
        bytes[50] = 1
        #expect(rig.kernel.call(.hwptAlloc, bytes: &bytes) == .argListTooLong)
        bytes[50] = 0
        #expect(rig.kernel.call(.hwptAlloc, bytes: &bytes) == nil)
        #expect(u32(bytes, 16) != 0, "out_hwpt_id")
        // The 24-byte first version is enough.
        var short = Array(bytes[0 ..< 24])
        short[0] = 24
        #expect(rig.kernel.call(.hwptAlloc, bytes: &short) == nil)
    }
}
