/// The opcode of an SMMUv3 command, `w0[7:0]`.
///
/// Any byte can be held: a value that is not an SMMUv3 command is kept as it is, reported by
/// ``isDefined`` and refused by ``Command/validate()`` with `CERROR_ILL`, never trapped on.
public struct Opcode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8

    @inlinable
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Prefetch the configuration of a StreamID. The corresponding SMMUv3 opcode is `CMD_PREFETCH_CONFIG` (0x01).
    @inlinable public static var prefetchConfig: Opcode { Opcode(rawValue: 0x01) }
    /// Prefetch the configuration and a translation. The corresponding SMMUv3 opcode is `CMD_PREFETCH_ADDR` (0x02).
    @inlinable public static var prefetchAddress: Opcode { Opcode(rawValue: 0x02) }
    /// Invalidate the cached STE of one StreamID. The corresponding SMMUv3 opcode is `CMD_CFGI_STE` (0x03).
    @inlinable public static var cfgiSTE: Opcode { Opcode(rawValue: 0x03) }
    /// Invalidate the cached STEs of an aligned StreamID range; with RANGE = 31 this is `CMD_CFGI_ALL`.
    /// The corresponding SMMUv3 opcode is `CMD_CFGI_STE_RANGE` (0x04).
    @inlinable public static var cfgiSTERange: Opcode { Opcode(rawValue: 0x04) }
    /// Invalidate one cached CD (StreamID, SubstreamID). The corresponding SMMUv3 opcode is `CMD_CFGI_CD` (0x05).
    @inlinable public static var cfgiCD: Opcode { Opcode(rawValue: 0x05) }
    /// Invalidate every cached CD of a StreamID. The corresponding SMMUv3 opcode is `CMD_CFGI_CD_ALL` (0x06).
    @inlinable public static var cfgiCDAll: Opcode { Opcode(rawValue: 0x06) }
    /// Invalidate all non-secure EL1 stage-1 TLB entries of a VMID. The corresponding SMMUv3 opcode is `CMD_TLBI_NH_ALL` (0x10).
    @inlinable public static var tlbiNHAll: Opcode { Opcode(rawValue: 0x10) }
    /// Invalidate the stage-1 TLB entries of an ASID. The corresponding SMMUv3 opcode is `CMD_TLBI_NH_ASID` (0x11).
    @inlinable public static var tlbiNHASID: Opcode { Opcode(rawValue: 0x11) }
    /// Invalidate the stage-1 TLB entries of an (ASID, VA range). The corresponding SMMUv3 opcode is `CMD_TLBI_NH_VA` (0x12).
    @inlinable public static var tlbiNHVA: Opcode { Opcode(rawValue: 0x12) }
    /// Invalidate a VA range for every ASID. The corresponding SMMUv3 opcode is `CMD_TLBI_NH_VAA` (0x13).
    @inlinable public static var tlbiNHVAA: Opcode { Opcode(rawValue: 0x13) }
    /// The corresponding SMMUv3 opcode is `CMD_TLBI_EL3_ALL` (0x18).
    @inlinable public static var tlbiEL3All: Opcode { Opcode(rawValue: 0x18) }
    /// The corresponding SMMUv3 opcode is `CMD_TLBI_EL3_VA` (0x1A).
    @inlinable public static var tlbiEL3VA: Opcode { Opcode(rawValue: 0x1A) }
    /// The corresponding SMMUv3 opcode is `CMD_TLBI_EL2_ALL` (0x20).
    @inlinable public static var tlbiEL2All: Opcode { Opcode(rawValue: 0x20) }
    /// The corresponding SMMUv3 opcode is `CMD_TLBI_EL2_ASID` (0x21).
    @inlinable public static var tlbiEL2ASID: Opcode { Opcode(rawValue: 0x21) }
    /// The corresponding SMMUv3 opcode is `CMD_TLBI_EL2_VA` (0x22).
    @inlinable public static var tlbiEL2VA: Opcode { Opcode(rawValue: 0x22) }
    /// The corresponding SMMUv3 opcode is `CMD_TLBI_EL2_VAA` (0x23).
    @inlinable public static var tlbiEL2VAA: Opcode { Opcode(rawValue: 0x23) }
    /// Invalidate all stage-1 and stage-2 entries of a VMID. The corresponding SMMUv3 opcode is `CMD_TLBI_S12_VMALL` (0x28).
    @inlinable public static var tlbiS12VMAll: Opcode { Opcode(rawValue: 0x28) }
    /// Invalidate stage-2 entries of an IPA range. The corresponding SMMUv3 opcode is `CMD_TLBI_S2_IPA` (0x2A).
    @inlinable public static var tlbiS2IPA: Opcode { Opcode(rawValue: 0x2A) }
    /// Invalidate every non-secure non-hyp entry. The corresponding SMMUv3 opcode is `CMD_TLBI_NSNH_ALL` (0x30).
    @inlinable public static var tlbiNSNHAll: Opcode { Opcode(rawValue: 0x30) }
    /// Invalidate a device's ATC (ATS) entries. The corresponding SMMUv3 opcode is `CMD_ATC_INV` (0x40).
    @inlinable public static var atcInv: Opcode { Opcode(rawValue: 0x40) }
    /// Respond to a PRI page request group. The corresponding SMMUv3 opcode is `CMD_PRI_RESP` (0x41).
    @inlinable public static var priResp: Opcode { Opcode(rawValue: 0x41) }
    /// Resume or terminate a stalled transaction. The corresponding SMMUv3 opcode is `CMD_RESUME` (0x44).
    @inlinable public static var resume: Opcode { Opcode(rawValue: 0x44) }
    /// Terminate every stalled transaction of a StreamID. The corresponding SMMUv3 opcode is `CMD_STALL_TERM` (0x45).
    @inlinable public static var stallTerm: Opcode { Opcode(rawValue: 0x45) }
    /// Completion point for everything before it. The corresponding SMMUv3 opcode is `CMD_SYNC` (0x46).
    @inlinable public static var sync: Opcode { Opcode(rawValue: 0x46) }

    /// The family of an opcode: which field layout its command uses.
    public enum Family: UInt8, Hashable, Sendable {
        case prefetch, cfgi, tlbi, atcInv, priResp, resume, stallTerm, sync, undefined
    }

    /// One row of ``definitions``.
    public struct Definition: Sendable {
        public let opcode: Opcode
        /// The spec's name, `CMD_TLBI_NH_VA`.
        public let name: String
        /// Whether the kernel takes it on a viommu (`IOMMU_HWPT_INVALIDATE` with the vSMMU's array; the
        /// switch in `arm_vsmmu_convert_user_cmd`): the stage-1 TLBIs and the vSID-scoped commands. Every
        /// other opcode makes that call fail with `-EIO` at it.
        public let acceptedOnViommu: Bool
        /// The field layout (``Opcode/family``).
        public var family: Family { opcode.family }

        init(_ opcode: Opcode, _ name: String, viommu: Bool = false) {
            self.opcode = opcode
            self.name = name
            self.acceptedOnViommu = viommu
        }
    }

    /// The opcode table: every opcode the SMMUv3 architecture defines, in numeric order, with its name
    /// and whether a viommu accepts it. The one home of these facts: ``name``, ``allDefined``
    /// and ``isAcceptedOnViommu`` read it; ``family`` is its own switch.
    public static let definitions: [Definition] = [
        Definition(.prefetchConfig, "CMD_PREFETCH_CONFIG"),
        Definition(.prefetchAddress, "CMD_PREFETCH_ADDR"),
        Definition(.cfgiSTE, "CMD_CFGI_STE"),
        Definition(.cfgiSTERange, "CMD_CFGI_STE_RANGE"),
        Definition(.cfgiCD, "CMD_CFGI_CD", viommu: true),
        Definition(.cfgiCDAll, "CMD_CFGI_CD_ALL", viommu: true),
        Definition(.tlbiNHAll, "CMD_TLBI_NH_ALL", viommu: true),
        Definition(.tlbiNHASID, "CMD_TLBI_NH_ASID", viommu: true),
        Definition(.tlbiNHVA, "CMD_TLBI_NH_VA", viommu: true),
        Definition(.tlbiNHVAA, "CMD_TLBI_NH_VAA", viommu: true),
        Definition(.tlbiEL3All, "CMD_TLBI_EL3_ALL"),
        Definition(.tlbiEL3VA, "CMD_TLBI_EL3_VA"),
        Definition(.tlbiEL2All, "CMD_TLBI_EL2_ALL"),
        Definition(.tlbiEL2ASID, "CMD_TLBI_EL2_ASID"),
        Definition(.tlbiEL2VA, "CMD_TLBI_EL2_VA"),
        Definition(.tlbiEL2VAA, "CMD_TLBI_EL2_VAA"),
        Definition(.tlbiS12VMAll, "CMD_TLBI_S12_VMALL"),
        Definition(.tlbiS2IPA, "CMD_TLBI_S2_IPA"),
        Definition(.tlbiNSNHAll, "CMD_TLBI_NSNH_ALL", viommu: true),
        Definition(.atcInv, "CMD_ATC_INV", viommu: true),
        Definition(.priResp, "CMD_PRI_RESP"),
        Definition(.resume, "CMD_RESUME"),
        Definition(.stallTerm, "CMD_STALL_TERM"),
        Definition(.sync, "CMD_SYNC"),
    ]

    /// Every opcode the SMMUv3 architecture defines, in numeric order.
    public static let allDefined: [Opcode] = definitions.map(\.opcode)

    /// Per opcode byte: its row in ``definitions`` + 1, or 0 for a byte that is no SMMUv3 opcode.
    private static let rows: [UInt8] = {
        var rows = [UInt8](repeating: 0, count: 256)
        for (row, definition) in definitions.enumerated() { rows[Int(definition.opcode.rawValue)] = UInt8(row + 1) }
        return rows
    }()

    /// This opcode's row in ``definitions``, `nil` for a byte that is no SMMUv3 opcode.
    public var definition: Definition? {
        let row = Self.rows[Int(rawValue)]
        return row == 0 ? nil : Self.definitions[Int(row) - 1]
    }

    /// The command family, `.undefined` for a byte that is no SMMUv3 opcode.
    ///
    /// The one home of this fact, a switch rather than a column of ``definitions`` so that it folds to a
    /// constant wherever the opcode is known, as in each arm of the router's switch and of
    /// ``Command/validate()``. `OpcodeNameTests` pins that it and ``definitions`` name the same opcodes.
    @inlinable
    public var family: Family {
        switch rawValue {
        case Opcode.prefetchConfig.rawValue, Opcode.prefetchAddress.rawValue:
            return .prefetch
        case Opcode.cfgiSTE.rawValue, Opcode.cfgiSTERange.rawValue, Opcode.cfgiCD.rawValue, Opcode.cfgiCDAll.rawValue:
            return .cfgi
        case Opcode.tlbiNHAll.rawValue, Opcode.tlbiNHASID.rawValue, Opcode.tlbiNHVA.rawValue, Opcode.tlbiNHVAA.rawValue,
            Opcode.tlbiEL3All.rawValue, Opcode.tlbiEL3VA.rawValue,
            Opcode.tlbiEL2All.rawValue, Opcode.tlbiEL2ASID.rawValue, Opcode.tlbiEL2VA.rawValue, Opcode.tlbiEL2VAA.rawValue,
            Opcode.tlbiS12VMAll.rawValue, Opcode.tlbiS2IPA.rawValue, Opcode.tlbiNSNHAll.rawValue:
            return .tlbi
        case Opcode.atcInv.rawValue: return .atcInv
        case Opcode.priResp.rawValue: return .priResp
        case Opcode.resume.rawValue: return .resume
        case Opcode.stallTerm.rawValue: return .stallTerm
        case Opcode.sync.rawValue: return .sync
        default: return .undefined
        }
    }

    /// Whether the SMMUv3 architecture defines this opcode.
    @inlinable public var isDefined: Bool { family != .undefined }

    /// Whether the kernel takes this opcode on a viommu (``Definition/acceptedOnViommu``).
    public var isAcceptedOnViommu: Bool { definition?.acceptedOnViommu ?? false }

    /// The spec's name (`CMD_TLBI_NH_VA`), or `UNKNOWN(0x07)`.
    public var name: String {
        if let definition { return definition.name }
        let hex = String(rawValue, radix: 16, uppercase: true)
        return "UNKNOWN(0x\(hex.count < 2 ? "0" + hex : hex))"
    }

    public var description: String { name }
}
