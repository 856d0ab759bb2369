/// The opcode of an SMMUv3 command, `w0[7:0]`.
///
/// Any byte can be held: a value that is not an SMMUv3 command is kept as it is, reported by
/// ``isDefined`` and refused by ``Command/validate()`` with `CERROR_ILL`, never trapped on.
public struct Opcode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8

    @inlinable
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Prefetch the configuration of a StreamID. The corresponding SMMUv3 opcode is `CMD_PREFETCH_CONFIG` (0x01).
    public static let prefetchConfig = Opcode(rawValue: 0x01)
    /// Prefetch the configuration and a translation. The corresponding SMMUv3 opcode is `CMD_PREFETCH_ADDR` (0x02).
    public static let prefetchAddress = Opcode(rawValue: 0x02)
    /// Invalidate the cached STE of one StreamID. The corresponding SMMUv3 opcode is `CMD_CFGI_STE` (0x03).
    public static let cfgiSTE = Opcode(rawValue: 0x03)
    /// Invalidate the cached STEs of an aligned StreamID range; with RANGE = 31 this is `CMD_CFGI_ALL`.
    /// The corresponding SMMUv3 opcode is `CMD_CFGI_STE_RANGE` (0x04).
    public static let cfgiSTERange = Opcode(rawValue: 0x04)
    /// Invalidate one cached CD (StreamID, SubstreamID). The corresponding SMMUv3 opcode is `CMD_CFGI_CD` (0x05).
    public static let cfgiCD = Opcode(rawValue: 0x05)
    /// Invalidate every cached CD of a StreamID. The corresponding SMMUv3 opcode is `CMD_CFGI_CD_ALL` (0x06).
    public static let cfgiCDAll = Opcode(rawValue: 0x06)
    /// Invalidate all non-secure EL1 stage-1 TLB entries of a VMID. The corresponding SMMUv3 opcode is `CMD_TLBI_NH_ALL` (0x10).
    public static let tlbiNHAll = Opcode(rawValue: 0x10)
    /// Invalidate the stage-1 TLB entries of an ASID. The corresponding SMMUv3 opcode is `CMD_TLBI_NH_ASID` (0x11).
    public static let tlbiNHASID = Opcode(rawValue: 0x11)
    /// Invalidate the stage-1 TLB entries of an (ASID, VA range). The corresponding SMMUv3 opcode is `CMD_TLBI_NH_VA` (0x12).
    public static let tlbiNHVA = Opcode(rawValue: 0x12)
    /// Invalidate a VA range for every ASID. The corresponding SMMUv3 opcode is `CMD_TLBI_NH_VAA` (0x13).
    public static let tlbiNHVAA = Opcode(rawValue: 0x13)
    /// The corresponding SMMUv3 opcode is `CMD_TLBI_EL3_ALL` (0x18).
    public static let tlbiEL3All = Opcode(rawValue: 0x18)
    /// The corresponding SMMUv3 opcode is `CMD_TLBI_EL3_VA` (0x1A).
    public static let tlbiEL3VA = Opcode(rawValue: 0x1A)
    /// The corresponding SMMUv3 opcode is `CMD_TLBI_EL2_ALL` (0x20).
    public static let tlbiEL2All = Opcode(rawValue: 0x20)
    /// The corresponding SMMUv3 opcode is `CMD_TLBI_EL2_ASID` (0x21).
    public static let tlbiEL2ASID = Opcode(rawValue: 0x21)
    /// The corresponding SMMUv3 opcode is `CMD_TLBI_EL2_VA` (0x22).
    public static let tlbiEL2VA = Opcode(rawValue: 0x22)
    /// The corresponding SMMUv3 opcode is `CMD_TLBI_EL2_VAA` (0x23).
    public static let tlbiEL2VAA = Opcode(rawValue: 0x23)
    /// Invalidate all stage-1 and stage-2 entries of a VMID. The corresponding SMMUv3 opcode is `CMD_TLBI_S12_VMALL` (0x28).
    public static let tlbiS12VMAll = Opcode(rawValue: 0x28)
    /// Invalidate stage-2 entries of an IPA range. The corresponding SMMUv3 opcode is `CMD_TLBI_S2_IPA` (0x2A).
    public static let tlbiS2IPA = Opcode(rawValue: 0x2A)
    /// Invalidate every non-secure non-hyp entry. The corresponding SMMUv3 opcode is `CMD_TLBI_NSNH_ALL` (0x30).
    public static let tlbiNSNHAll = Opcode(rawValue: 0x30)
    /// Invalidate a device's ATC (ATS) entries. The corresponding SMMUv3 opcode is `CMD_ATC_INV` (0x40).
    public static let atcInv = Opcode(rawValue: 0x40)
    /// Respond to a PRI page request group. The corresponding SMMUv3 opcode is `CMD_PRI_RESP` (0x41).
    public static let priResp = Opcode(rawValue: 0x41)
    /// Resume or terminate a stalled transaction. The corresponding SMMUv3 opcode is `CMD_RESUME` (0x44).
    public static let resume = Opcode(rawValue: 0x44)
    /// Terminate every stalled transaction of a StreamID. The corresponding SMMUv3 opcode is `CMD_STALL_TERM` (0x45).
    public static let stallTerm = Opcode(rawValue: 0x45)
    /// Completion point for everything before it. The corresponding SMMUv3 opcode is `CMD_SYNC` (0x46).
    public static let sync = Opcode(rawValue: 0x46)

    /// Every opcode the SMMUv3 architecture defines, in numeric order.
    public static let allDefined: [Opcode] = [
        .prefetchConfig, .prefetchAddress, .cfgiSTE, .cfgiSTERange, .cfgiCD, .cfgiCDAll,
        .tlbiNHAll, .tlbiNHASID, .tlbiNHVA, .tlbiNHVAA, .tlbiEL3All, .tlbiEL3VA,
        .tlbiEL2All, .tlbiEL2ASID, .tlbiEL2VA, .tlbiEL2VAA, .tlbiS12VMAll, .tlbiS2IPA,
        .tlbiNSNHAll, .atcInv, .priResp, .resume, .stallTerm, .sync,
    ]

    /// The family of an opcode: which field layout its command uses.
    public enum Family: Hashable, Sendable {
        case prefetch, cfgi, tlbi, atcInv, priResp, resume, stallTerm, sync, undefined
    }

    /// The command family, `.undefined` for a byte that is no SMMUv3 opcode.
    @inlinable
    public var family: Family {
        switch rawValue {
        case 0x01, 0x02: return .prefetch
        case 0x03, 0x04, 0x05, 0x06: return .cfgi
        case 0x10, 0x11, 0x12, 0x13, 0x18, 0x1A, 0x20, 0x21, 0x22, 0x23, 0x28, 0x2A, 0x30: return .tlbi
        case 0x40: return .atcInv
        case 0x41: return .priResp
        case 0x44: return .resume
        case 0x45: return .stallTerm
        case 0x46: return .sync
        default: return .undefined
        }
    }

    /// Whether the SMMUv3 architecture defines this opcode.
    @inlinable public var isDefined: Bool { family != .undefined }

    /// The spec's name (`CMD_TLBI_NH_VA`), or `UNKNOWN(0x07)`.
    public var name: String {
        switch rawValue {
        case 0x01: return "CMD_PREFETCH_CONFIG"
        case 0x02: return "CMD_PREFETCH_ADDR"
        case 0x03: return "CMD_CFGI_STE"
        case 0x04: return "CMD_CFGI_STE_RANGE"
        case 0x05: return "CMD_CFGI_CD"
        case 0x06: return "CMD_CFGI_CD_ALL"
        case 0x10: return "CMD_TLBI_NH_ALL"
        case 0x11: return "CMD_TLBI_NH_ASID"
        case 0x12: return "CMD_TLBI_NH_VA"
        case 0x13: return "CMD_TLBI_NH_VAA"
        case 0x18: return "CMD_TLBI_EL3_ALL"
        case 0x1A: return "CMD_TLBI_EL3_VA"
        case 0x20: return "CMD_TLBI_EL2_ALL"
        case 0x21: return "CMD_TLBI_EL2_ASID"
        case 0x22: return "CMD_TLBI_EL2_VA"
        case 0x23: return "CMD_TLBI_EL2_VAA"
        case 0x28: return "CMD_TLBI_S12_VMALL"
        case 0x2A: return "CMD_TLBI_S2_IPA"
        case 0x30: return "CMD_TLBI_NSNH_ALL"
        case 0x40: return "CMD_ATC_INV"
        case 0x41: return "CMD_PRI_RESP"
        case 0x44: return "CMD_RESUME"
        case 0x45: return "CMD_STALL_TERM"
        case 0x46: return "CMD_SYNC"
        default:
            let hex = String(rawValue, radix: 16, uppercase: true)
            return "UNKNOWN(0x\(hex.count < 2 ? "0" + hex : hex))"
        }
    }

    public var description: String { name }
}
