/// An SMMUv3's identification registers as `IOMMU_GET_HW_INFO` reports them
/// (`struct iommu_hw_info_arm_smmuv3`, read by `arm_smmu_hw_info` with `readl_relaxed`): IDR0-IDR5,
/// IIDR and AIDR, each a 32-bit register value.
public struct IDRegisters: Hashable, Sendable {
    /// IDR0 … IDR5, in order; always six values.
    public var idr: [UInt32]
    /// The implementation identification register.
    public var iidr: UInt32
    /// The architecture version register (ArchMajorRev, ArchMinorRev).
    public var aidr: UInt32

    /// Registers from their raw values; `idr` is padded with zeros or cut to six values.
    public init(idr: [UInt32], iidr: UInt32 = 0, aidr: UInt32 = 0) {
        self.idr = Array((idr + Array(repeating: 0, count: 6)).prefix(6))
        self.iidr = iidr
        self.aidr = aidr
    }
}

extension IDRegisters {
    /// What `IOMMU_GET_HW_INFO` returns on QEMU 10.0's and 11.1's emulated SMMUv3 with
    /// `stage=nested` (the real-kernel rig, `../shared/realkernel`): IDR0 0x0d44101b, IDR1 0x02730010,
    /// IDR3 0x1414, IDR5 0x74, AIDR 0x1 (SMMUv3.1). The simulated pSMMU's default.
    public static let simulatedDefault = IDRegisters(
        idr: [0x0d44_101b, 0x0273_0010, 0, 0x0000_1414, 0, 0x0000_0074], iidr: 0, aidr: 0x1)
}
