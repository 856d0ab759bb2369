import CIOMMUFD
import IOMMUFD
import SMMUv3
import Testing

/// The declared UAPI structs against the kernel's `include/uapi/linux/iommufd.h` (Linux 6.13+): every
/// size and every field offset, the ioctl numbers and the constants.
@Suite struct UAPILayoutTests {
    @Test func iommuDestroyIs8BytesSizeThenID() {
        #expect(MemoryLayout<iommu_destroy>.size == 8)
        #expect(MemoryLayout<iommu_destroy>.offset(of: \.size) == 0)
        #expect(MemoryLayout<iommu_destroy>.offset(of: \.id) == 4)
    }

    @Test func iommuViommuAllocHasThe24ByteLinux613Layout() {
        typealias T = iommu_viommu_alloc
        #expect(MemoryLayout<T>.size == 24)
        #expect(MemoryLayout<T>.offset(of: \.size) == 0)
        #expect(MemoryLayout<T>.offset(of: \.flags) == 4)
        #expect(MemoryLayout<T>.offset(of: \.type) == 8)
        #expect(MemoryLayout<T>.offset(of: \.dev_id) == 12)
        #expect(MemoryLayout<T>.offset(of: \.hwpt_id) == 16)
        #expect(MemoryLayout<T>.offset(of: \.out_viommu_id) == 20)
    }

    @Test func iommuVdeviceAllocIs24BytesWithAnAlignedVirtID() {
        typealias T = iommu_vdevice_alloc
        #expect(MemoryLayout<T>.size == 24)
        #expect(MemoryLayout<T>.alignment == 8)
        #expect(MemoryLayout<T>.offset(of: \.size) == 0)
        #expect(MemoryLayout<T>.offset(of: \.viommu_id) == 4)
        #expect(MemoryLayout<T>.offset(of: \.dev_id) == 8)
        #expect(MemoryLayout<T>.offset(of: \.out_vdevice_id) == 12)
        #expect(MemoryLayout<T>.offset(of: \.virt_id) == 16)
    }

    @Test func iommuHwptAllocIs48BytesEndingWithFaultID() {
        typealias T = iommu_hwpt_alloc
        #expect(MemoryLayout<T>.size == 48)
        #expect(MemoryLayout<T>.alignment == 8)
        #expect(MemoryLayout<T>.offset(of: \.size) == 0)
        #expect(MemoryLayout<T>.offset(of: \.flags) == 4)
        #expect(MemoryLayout<T>.offset(of: \.dev_id) == 8)
        #expect(MemoryLayout<T>.offset(of: \.pt_id) == 12)
        #expect(MemoryLayout<T>.offset(of: \.out_hwpt_id) == 16)
        #expect(MemoryLayout<T>.offset(of: \.__reserved) == 20)
        #expect(MemoryLayout<T>.offset(of: \.data_type) == 24)
        #expect(MemoryLayout<T>.offset(of: \.data_len) == 28)
        #expect(MemoryLayout<T>.offset(of: \.data_uptr) == 32)
        #expect(MemoryLayout<T>.offset(of: \.fault_id) == 40)
        #expect(MemoryLayout<T>.offset(of: \.__reserved2) == 44)
    }

    @Test func iommuHwptArmSMMUv3IsTwoSTEWords() {
        #expect(MemoryLayout<iommu_hwpt_arm_smmuv3>.size == 16)
        #expect(MemoryLayout<iommu_hwpt_arm_smmuv3>.alignment == 8)
        #expect(MemoryLayout<iommu_hwpt_arm_smmuv3>.offset(of: \.ste) == 0)
    }

    @Test func iommuHwptInvalidateIs32Bytes() {
        typealias T = iommu_hwpt_invalidate
        #expect(MemoryLayout<T>.size == 32)
        #expect(MemoryLayout<T>.alignment == 8)
        #expect(MemoryLayout<T>.offset(of: \.size) == 0)
        #expect(MemoryLayout<T>.offset(of: \.hwpt_id) == 4)
        #expect(MemoryLayout<T>.offset(of: \.data_uptr) == 8)
        #expect(MemoryLayout<T>.offset(of: \.data_type) == 16)
        #expect(MemoryLayout<T>.offset(of: \.entry_len) == 20)
        #expect(MemoryLayout<T>.offset(of: \.entry_num) == 24)
        #expect(MemoryLayout<T>.offset(of: \.__reserved) == 28)
    }

    @Test func iommuViommuArmSMMUv3InvalidateIsOneCommand() {
        #expect(MemoryLayout<iommu_viommu_arm_smmuv3_invalidate>.size == 16)
        #expect(MemoryLayout<iommu_viommu_arm_smmuv3_invalidate>.stride == 16)
        #expect(MemoryLayout<iommu_viommu_arm_smmuv3_invalidate>.offset(of: \.cmd) == 0)
    }

    @Test func iommuVeventqAllocIs32Bytes() {
        typealias T = iommu_veventq_alloc
        #expect(MemoryLayout<T>.size == 32)
        #expect(MemoryLayout<T>.offset(of: \.size) == 0)
        #expect(MemoryLayout<T>.offset(of: \.flags) == 4)
        #expect(MemoryLayout<T>.offset(of: \.viommu_id) == 8)
        #expect(MemoryLayout<T>.offset(of: \.type) == 12)
        #expect(MemoryLayout<T>.offset(of: \.veventq_depth) == 16)
        #expect(MemoryLayout<T>.offset(of: \.out_veventq_id) == 20)
        #expect(MemoryLayout<T>.offset(of: \.out_veventq_fd) == 24)
        #expect(MemoryLayout<T>.offset(of: \.__reserved) == 28)
    }

    @Test func veventHeaderAndArmRecordSizes() {
        #expect(MemoryLayout<iommufd_vevent_header>.size == 8)
        #expect(MemoryLayout<iommufd_vevent_header>.offset(of: \.flags) == 0)
        #expect(MemoryLayout<iommufd_vevent_header>.offset(of: \.sequence) == 4)
        #expect(MemoryLayout<iommu_vevent_arm_smmuv3>.size == 32)
        #expect(MemoryLayout<iommu_vevent_arm_smmuv3>.offset(of: \.evt) == 0)
    }

    @Test func commandEnumerationCountsUpFrom0x80LikeTheKernel() {
        let expected: [(Int, Int)] = [
            (Int(IOMMUFD_CMD_DESTROY), 0x80), (Int(IOMMUFD_CMD_IOAS_ALLOC), 0x81),
            (Int(IOMMUFD_CMD_IOAS_ALLOW_IOVAS), 0x82), (Int(IOMMUFD_CMD_IOAS_COPY), 0x83),
            (Int(IOMMUFD_CMD_IOAS_IOVA_RANGES), 0x84), (Int(IOMMUFD_CMD_IOAS_MAP), 0x85),
            (Int(IOMMUFD_CMD_IOAS_UNMAP), 0x86), (Int(IOMMUFD_CMD_OPTION), 0x87),
            (Int(IOMMUFD_CMD_VFIO_IOAS), 0x88), (Int(IOMMUFD_CMD_HWPT_ALLOC), 0x89),
            (Int(IOMMUFD_CMD_GET_HW_INFO), 0x8a), (Int(IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING), 0x8b),
            (Int(IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP), 0x8c), (Int(IOMMUFD_CMD_HWPT_INVALIDATE), 0x8d),
            (Int(IOMMUFD_CMD_FAULT_QUEUE_ALLOC), 0x8e), (Int(IOMMUFD_CMD_IOAS_MAP_FILE), 0x8f),
            (Int(IOMMUFD_CMD_VIOMMU_ALLOC), 0x90), (Int(IOMMUFD_CMD_VDEVICE_ALLOC), 0x91),
            (Int(IOMMUFD_CMD_IOAS_CHANGE_PROCESS), 0x92), (Int(IOMMUFD_CMD_VEVENTQ_ALLOC), 0x93),
            (Int(IOMMUFD_CMD_HW_QUEUE_ALLOC), 0x94),
        ]
        for (value, kernel) in expected { #expect(value == kernel) }
    }

    @Test func ioctlNumbersAreIOSemicolonCommand() {
        // _IO(';', nr) on arm64 and x86-64: no direction, no size, type 0x3B in bits 15:8.
        #expect(IOMMUFDRequest.destroy.rawValue == 0x3B80)
        #expect(IOMMUFDRequest.hwptAlloc.rawValue == 0x3B89)
        #expect(IOMMUFDRequest.hwptInvalidate.rawValue == 0x3B8D)
        #expect(IOMMUFDRequest.viommuAlloc.rawValue == 0x3B90)
        #expect(IOMMUFDRequest.vdeviceAlloc.rawValue == 0x3B91)
        #expect(IOMMUFDRequest.veventqAlloc.rawValue == 0x3B93)
        #expect(IOMMUFDRequest.viommuAlloc.command == 0x90)
        #expect(IOMMUFDRequest.hwptInvalidate.description == "IOMMU_HWPT_INVALIDATE")
    }

    @Test func typeAndFlagConstantsMatchTheKernel() {
        #expect(IOMMU_VIOMMU_TYPE_DEFAULT == 0)
        #expect(IOMMU_VIOMMU_TYPE_ARM_SMMUV3 == 1)
        #expect(IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV == 2)
        #expect(IOMMU_HWPT_DATA_NONE == 0)
        #expect(IOMMU_HWPT_DATA_VTD_S1 == 1)
        #expect(IOMMU_HWPT_DATA_ARM_SMMUV3 == 2)
        #expect(IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 == 0)
        #expect(IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 == 1)
        #expect(IOMMU_HWPT_ALLOC_NEST_PARENT == 1)
        #expect(IOMMU_HWPT_ALLOC_DIRTY_TRACKING == 2)
        #expect(IOMMU_HWPT_FAULT_ID_VALID == 4)
        #expect(IOMMU_HWPT_ALLOC_PASID == 8)
        #expect(IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 == 1)
        #expect(IOMMU_VEVENTQ_FLAG_LOST_EVENTS == 1)
    }

    @Test func aCommandBufferIsTheKernelEntryArrayOnThisHost() {
        #expect(MemoryLayout<Command>.stride == MemoryLayout<iommu_viommu_arm_smmuv3_invalidate>.stride)
        #expect(IOMMUFDBackend.commandsAreKernelEntries)
    }
}
