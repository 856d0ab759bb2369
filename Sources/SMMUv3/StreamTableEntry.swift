/// A Stream Table Entry: 64 bytes, eight little-endian words, as the guest wrote it in its stream table.
///
/// The VMM reads a guest STE from guest memory and hands it to the daemon; ``nestingValidated()``
/// applies the kernel's rules for a user-supplied vSTE (`arm_smmu_validate_vste`) before the daemon
/// builds a nested stage-1 HWPT from it.
public struct StreamTableEntry: Hashable, Sendable, SMMUWords {
    public static let wordCount = 8
    /// The eight words, `w0`…`w7`.
    public var words = EightWords()

    /// An all-zero STE: V = 0, which the SMMU treats as abort.
    public init() {}

    /// An STE from its first words; the rest are zero. Only `w0` and `w1` matter for a nested vSTE.
    public init(w0: UInt64, w1: UInt64 = 0, w2: UInt64 = 0, w3: UInt64 = 0) {
        words[0] = w0
        words[1] = w1
        words[2] = w2
        words[3] = w3
    }

    /// A valid stage-1 STE (V = 1, CONFIG = S1_TRANS) whose linear CD table at `contextTable` holds
    /// 2^`cdMax` CDs, with `S1DSS` = `defaultSubstream`: the shape a Linux guest writes for a translating
    /// device.
    public static func stage1(contextTable: UInt64, cdMax: UInt8 = 0,
                              defaultSubstream: S1DefaultSubstream = .substream0) -> StreamTableEntry {
        var ste = StreamTableEntry()
        ste.isValid = true
        ste.config = .s1Translate
        ste.s1ContextPointer = contextTable
        ste.s1CDMax = cdMax
        ste.s1DSS = defaultSubstream
        return ste
    }

    /// A valid STE that aborts every transaction (V = 1, CONFIG = abort): the vSTE of QEMU's abort
    /// proxy HWPT (`abort_data` in `smmuv3_accel_alloc_viommu`).
    public static let abort: StreamTableEntry = {
        var ste = StreamTableEntry()
        ste.isValid = true
        ste.config = .abort
        return ste
    }()

    /// A valid STE that bypasses stage 1 (V = 1, CONFIG = bypass): the vSTE of QEMU's bypass proxy HWPT
    /// (`bypass_data`).
    public static let bypass: StreamTableEntry = {
        var ste = StreamTableEntry()
        ste.isValid = true
        ste.config = .bypass
        return ste
    }()

    /// Decodes 64 little-endian bytes.
    public init<C: Collection>(bytes: C) throws(WrongLengthError) where C.Element == UInt8 {
        guard bytes.count == Self.byteCount else {
            throw WrongLengthError(structure: "STE", expected: Self.byteCount, actual: bytes.count)
        }
        self.init()
        load(littleEndian: bytes)
    }

    public func word(_ index: Int) -> UInt64 { words[index] }

    public mutating func setWord(_ index: Int, _ value: UInt64) { words[index] = value }

    /// Every STE field that vsmmud reads, declared by word and bit range (`STRTAB_STE_*`).
    public enum Field {
        /// Valid, `w0[0]`.
        @inlinable public static var valid: BitField { BitField(word: 0, bit: 0) }
        /// CONFIG, `w0[3:1]`.
        @inlinable public static var config: BitField { BitField(word: 0, high: 3, low: 1) }
        /// S1Fmt, `w0[5:4]`.
        @inlinable public static var s1Fmt: BitField { BitField(word: 0, high: 5, low: 4) }
        /// S1ContextPtr, `w0[51:6]`: the CD table's address >> 6.
        @inlinable public static var s1ContextPtr: BitField { BitField(word: 0, high: 51, low: 6) }
        /// S1CDMax, `w0[63:59]`: log2 of the number of CDs.
        @inlinable public static var s1CDMax: BitField { BitField(word: 0, high: 63, low: 59) }
        /// S1DSS, `w1[1:0]`.
        @inlinable public static var s1DSS: BitField { BitField(word: 1, high: 1, low: 0) }
        /// S1CIR, `w1[3:2]`.
        @inlinable public static var s1CIR: BitField { BitField(word: 1, high: 3, low: 2) }
        /// S1COR, `w1[5:4]`.
        @inlinable public static var s1COR: BitField { BitField(word: 1, high: 5, low: 4) }
        /// S1CSH, `w1[7:6]`.
        @inlinable public static var s1CSH: BitField { BitField(word: 1, high: 7, low: 6) }
        /// MEV, `w1[19]`.
        @inlinable public static var mev: BitField { BitField(word: 1, bit: 19) }
        /// S2FWB, `w1[25]`.
        @inlinable public static var s2FWB: BitField { BitField(word: 1, bit: 25) }
        /// S1STALLD, `w1[27]`.
        @inlinable public static var s1StallD: BitField { BitField(word: 1, bit: 27) }
        /// EATS, `w1[29:28]`.
        @inlinable public static var eats: BitField { BitField(word: 1, high: 29, low: 28) }
        /// STRW, `w1[31:30]`.
        @inlinable public static var strw: BitField { BitField(word: 1, high: 31, low: 30) }
        /// SHCFG, `w1[45:44]`.
        @inlinable public static var shcfg: BitField { BitField(word: 1, high: 45, low: 44) }
        /// S2VMID, `w2[15:0]`.
        @inlinable public static var s2VMID: BitField { BitField(word: 2, high: 15, low: 0) }
        /// VTCR, `w2[50:32]`.
        @inlinable public static var vtcr: BitField { BitField(word: 2, high: 50, low: 32) }
        /// S2TTB, `w3[51:4]`.
        @inlinable public static var s2TTB: BitField { BitField(word: 3, high: 51, low: 4) }
    }

    /// Bits of `w0` that user space may set in a nested vSTE (`STRTAB_STE_0_NESTING_ALLOWED`):
    /// V, CONFIG, S1Fmt, S1ContextPtr, S1CDMax.
    public static let nestingAllowedW0: UInt64 = 0xF80F_FFFF_FFFF_FFFF
    /// Bits of `w1` that user space may set in a nested vSTE (`STRTAB_STE_1_NESTING_ALLOWED`):
    /// S1DSS, S1CIR, S1COR, S1CSH, S1STALLD, EATS.
    public static let nestingAllowedW1: UInt64 = 0x3800_00FF

    // MARK: Typed fields

    /// V, `w0[0]`. An invalid STE makes the SMMU abort the stream's transactions.
    public var isValid: Bool {
        get { self[flag: Field.valid] }
        set { self[flag: Field.valid] = newValue }
    }
    /// CONFIG, `w0[3:1]`.
    public var config: StreamConfig {
        get { StreamConfig(rawValue: UInt8(self[Field.config])) }
        set { self[Field.config] = UInt64(newValue.rawValue) }
    }
    /// S1Fmt, `w0[5:4]`.
    public var s1Fmt: S1Format {
        get { S1Format(rawValue: UInt8(self[Field.s1Fmt])) }
        set { self[Field.s1Fmt] = UInt64(newValue.rawValue) }
    }
    /// The guest-physical address of the CD table (S1ContextPtr << 6).
    public var s1ContextPointer: UInt64 {
        get { self[Field.s1ContextPtr] << 6 }
        set { self[Field.s1ContextPtr] = newValue >> 6 }
    }
    /// S1CDMax, `w0[63:59]`: the CD table holds 2^S1CDMax CDs (SubstreamIDs).
    public var s1CDMax: UInt8 {
        get { UInt8(self[Field.s1CDMax]) }
        set { self[Field.s1CDMax] = UInt64(newValue) }
    }
    /// The number of CDs the STE links: 2^S1CDMax.
    public var contextDescriptorCount: Int { 1 << Int(s1CDMax) }
    /// S1DSS, `w1[1:0]`: what a transaction without a SubstreamID uses.
    public var s1DSS: S1DefaultSubstream {
        get { S1DefaultSubstream(rawValue: UInt8(self[Field.s1DSS])) }
        set { self[Field.s1DSS] = UInt64(newValue.rawValue) }
    }
    /// EATS, `w1[29:28]`: 0 ATS aborted, 1 full ATS, 2 split-stage ATS.
    public var eats: UInt8 {
        get { UInt8(self[Field.eats]) }
        set { self[Field.eats] = UInt64(newValue) }
    }

    /// Whether the STE, once valid, translates through stage 1 and so links CDs (CONFIG = S1_TRANS or NESTED).
    public var translatesStage1: Bool { isValid && (config == .s1Translate || config == .nested) }
}

/// An STE's CONFIG field, `w0[3:1]`.
public struct StreamConfig: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue & 0x7 }
    /// Abort every transaction. The corresponding SMMUv3 value is `STRTAB_STE_0_CFG_ABORT` (0); 1-3 abort too.
    public static let abort = StreamConfig(rawValue: 0)
    /// Bypass both stages. The corresponding SMMUv3 value is `STRTAB_STE_0_CFG_BYPASS` (4).
    public static let bypass = StreamConfig(rawValue: 4)
    /// Stage-1 translation only. The corresponding SMMUv3 value is `STRTAB_STE_0_CFG_S1_TRANS` (5).
    public static let s1Translate = StreamConfig(rawValue: 5)
    /// Stage-2 translation only. The corresponding SMMUv3 value is `STRTAB_STE_0_CFG_S2_TRANS` (6).
    public static let s2Translate = StreamConfig(rawValue: 6)
    /// Both stages. The corresponding SMMUv3 value is `STRTAB_STE_0_CFG_NESTED` (7).
    public static let nested = StreamConfig(rawValue: 7)

    /// Whether transactions are aborted (CONFIG 0-3).
    public var aborts: Bool { rawValue < 4 }

    public var description: String {
        switch rawValue {
        case 0, 1, 2, 3: return rawValue == 0 ? "abort" : "abort(\(rawValue))"
        case 4: return "bypass"
        case 5: return "s1_trans"
        case 6: return "s2_trans"
        default: return "nested"
        }
    }
}

/// An STE's S1Fmt field: how the CD table is laid out.
public struct S1Format: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue & 0x3 }
    /// One linear table of 2^S1CDMax CDs. The corresponding SMMUv3 value is `STRTAB_STE_0_S1FMT_LINEAR` (0).
    public static let linear = S1Format(rawValue: 0)
    /// Two levels, 4 KiB leaf tables. The corresponding SMMUv3 value is 1.
    public static let twoLevel4K = S1Format(rawValue: 1)
    /// Two levels, 64 KiB leaf tables. The corresponding SMMUv3 value is `STRTAB_STE_0_S1FMT_64K_L2` (2).
    public static let twoLevel64K = S1Format(rawValue: 2)
}

/// An STE's S1DSS field: what a transaction without a SubstreamID gets.
public struct S1DefaultSubstream: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue & 0x3 }
    /// Terminate. The corresponding SMMUv3 value is `STRTAB_STE_1_S1DSS_TERMINATE` (0).
    public static let terminate = S1DefaultSubstream(rawValue: 0)
    /// Bypass stage 1. The corresponding SMMUv3 value is `STRTAB_STE_1_S1DSS_BYPASS` (1).
    public static let bypass = S1DefaultSubstream(rawValue: 1)
    /// Use CD 0. The corresponding SMMUv3 value is `STRTAB_STE_1_S1DSS_SSID0` (2).
    public static let substream0 = S1DefaultSubstream(rawValue: 2)
}

// MARK: - Nesting rules

/// Why the kernel refuses a user-supplied vSTE for a nested HWPT (`-EIO` from `IOMMU_HWPT_ALLOC`).
public enum NestedSTEError: Error, Hashable, Sendable, CustomStringConvertible {
    /// `w0` has bits outside ``StreamTableEntry/nestingAllowedW0``.
    case disallowedBitsW0(UInt64)
    /// `w1` has bits outside ``StreamTableEntry/nestingAllowedW1``.
    case disallowedBitsW1(UInt64)
    /// CONFIG is not ABORT (0), BYPASS (4) or S1_TRANS (5).
    case disallowedConfig(StreamConfig)
    /// EATS is neither 0 (abort) nor 1 (translate).
    case disallowedEATS(UInt8)

    public var description: String {
        func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
        switch self {
        case .disallowedBitsW0(let bits): return "vSTE word 0 sets bits a nested STE may not set: \(hex(bits))"
        case .disallowedBitsW1(let bits): return "vSTE word 1 sets bits a nested STE may not set: \(hex(bits))"
        case .disallowedConfig(let cfg): return "vSTE CONFIG \(cfg) (\(cfg.rawValue)) is not abort, bypass or s1_trans"
        case .disallowedEATS(let eats): return "vSTE EATS \(eats) is not 0 or 1"
        }
    }
}

extension StreamTableEntry {
    /// Applies the kernel's rules for a user-supplied nested vSTE (`arm_smmu_validate_vste`).
    ///
    /// - Returns: the STE the kernel would install: an all-zero (abort) STE when V = 0, otherwise `self`
    ///   with words 2-7 cleared (only `w0` and `w1` travel in `iommu_hwpt_arm_smmuv3`).
    /// - Throws: ``NestedSTEError`` for any bit outside the allowed masks, a CONFIG other than
    ///   abort/bypass/s1_trans, or EATS > 1.
    public func nestingValidated() throws(NestedSTEError) -> StreamTableEntry {
        guard isValid else { return StreamTableEntry() }
        let w0 = word(0), w1 = word(1)
        if w0 & ~Self.nestingAllowedW0 != 0 { throw .disallowedBitsW0(w0 & ~Self.nestingAllowedW0) }
        if w1 & ~Self.nestingAllowedW1 != 0 { throw .disallowedBitsW1(w1 & ~Self.nestingAllowedW1) }
        let cfg = config
        guard cfg == .abort || cfg == .bypass || cfg == .s1Translate else { throw .disallowedConfig(cfg) }
        let e = eats
        guard e <= 1 else { throw .disallowedEATS(e) }
        return StreamTableEntry(w0: w0, w1: w1)
    }
}
