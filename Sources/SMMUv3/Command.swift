/// One SMMUv3 command-queue entry: 16 bytes, two little-endian 64-bit words.
///
/// A `Command` holds any 16 bytes a guest wrote, including an undefined opcode or reserved field
/// values; ``validate()`` says whether an SMMU would execute it or stop with `CERROR_ILL`. Fields are
/// read and written through the ``Field`` table, and built with the family builders
/// (``tlbiNHVA(asid:vmid:address:leaf:range:)``, ``cfgiCD(streamID:substreamID:leaf:)``, …).
@frozen
public struct Command: Hashable, Sendable, SMMUWords, CustomStringConvertible {
    /// Word 0 (bytes 0-7): opcode and the command's first-word fields.
    public var w0: UInt64
    /// Word 1 (bytes 8-15).
    public var w1: UInt64

    public static let wordCount = 2

    /// A command from its two words.
    @inlinable
    public init(w0: UInt64, w1: UInt64) {
        self.w0 = w0
        self.w1 = w1
    }

    /// A command of `opcode` with every other field zero.
    @inlinable
    public init(opcode: Opcode) {
        self.init(w0: UInt64(opcode.rawValue), w1: 0)
    }

    /// Decodes a command from exactly 16 little-endian bytes.
    /// - Throws: ``WrongLengthError`` when `bytes` is not 16 bytes long.
    public init<C: Collection>(bytes: C) throws(WrongLengthError) where C.Element == UInt8 {
        guard bytes.count == Command.byteCount else {
            throw WrongLengthError(structure: "command", expected: Command.byteCount, actual: bytes.count)
        }
        self.init(w0: 0, w1: 0)
        load(littleEndian: bytes)
    }

    @inlinable
    public func word(_ index: Int) -> UInt64 { index == 0 ? w0 : w1 }

    @inlinable
    public mutating func setWord(_ index: Int, _ value: UInt64) {
        if index == 0 { w0 = value } else { w1 = value }
    }

    /// The command's opcode, `w0[7:0]`.
    @inlinable
    public var opcode: Opcode {
        get { Opcode(rawValue: UInt8(truncatingIfNeeded: w0)) }
        set { self[Field.opcode] = UInt64(newValue.rawValue) }
    }

    public var description: String {
        let hex0 = String(w0, radix: 16), hex1 = String(w1, radix: 16)
        return "\(opcode.name) [\(String(repeating: "0", count: 16 - hex0.count))\(hex0) \(String(repeating: "0", count: 16 - hex1.count))\(hex1)]"
    }
}

// MARK: - Field table

extension Command {
    /// Every command field, declared once by word and bit range (`arm-smmu-v3.h`'s `CMDQ_*` masks).
    public enum Field {
        /// `w0[7:0]`, all commands.
        @inlinable public static var opcode: BitField { BitField(word: 0, high: 7, low: 0) }
        /// Secure StreamID, `w0[10]`: set on a non-secure queue it is illegal.
        @inlinable public static var ssec: BitField { BitField(word: 0, bit: 10) }
        /// SubstreamID valid, `w0[11]`.
        @inlinable public static var ssv: BitField { BitField(word: 0, bit: 11) }
        /// SubstreamID, `w0[31:12]` (CFGI_CD, ATC_INV, PREFETCH, PRI_RESP).
        @inlinable public static var substreamID: BitField { BitField(word: 0, high: 31, low: 12) }
        /// StreamID, `w0[63:32]` (CFGI, ATC_INV, PREFETCH, PRI_RESP, RESUME, STALL_TERM).
        @inlinable public static var streamID: BitField { BitField(word: 0, high: 63, low: 32) }
        /// Leaf, `w1[0]` (CFGI_STE, CFGI_CD, TLBI by address).
        @inlinable public static var leaf: BitField { BitField(word: 1, bit: 0) }
        /// CFGI_STE_RANGE: the range covers 2^(RANGE+1) StreamIDs, `w1[4:0]`.
        @inlinable public static var cfgiRange: BitField { BitField(word: 1, high: 4, low: 0) }

        /// TLBI range NUM, `w0[16:12]`: (NUM+1) × 2^SCALE pages when TG ≠ 0.
        @inlinable public static var tlbiNum: BitField { BitField(word: 0, high: 16, low: 12) }
        /// TLBI range SCALE, `w0[24:20]`.
        @inlinable public static var tlbiScale: BitField { BitField(word: 0, high: 24, low: 20) }
        /// TLBI VMID, `w0[47:32]`.
        @inlinable public static var vmid: BitField { BitField(word: 0, high: 47, low: 32) }
        /// TLBI ASID, `w0[63:48]`.
        @inlinable public static var asid: BitField { BitField(word: 0, high: 63, low: 48) }
        /// TLBI translation-table level hint, `w1[9:8]`.
        @inlinable public static var tlbiTTL: BitField { BitField(word: 1, high: 9, low: 8) }
        /// TLBI translation granule of a range invalidation, `w1[11:10]` (0: not a range).
        @inlinable public static var tlbiTG: BitField { BitField(word: 1, high: 11, low: 10) }
        /// TLBI virtual address bits [63:12], `w1[63:12]`.
        @inlinable public static var tlbiVA: BitField { BitField(word: 1, high: 63, low: 12) }
        /// TLBI_S2_IPA intermediate physical address bits [51:12], `w1[51:12]`.
        @inlinable public static var tlbiIPA: BitField { BitField(word: 1, high: 51, low: 12) }

        /// ATC_INV Global, `w0[9]`.
        @inlinable public static var atcGlobal: BitField { BitField(word: 0, bit: 9) }
        /// ATC_INV size: 2^SIZE pages, `w1[5:0]` (52 covers everything).
        @inlinable public static var atcSize: BitField { BitField(word: 1, high: 5, low: 0) }
        /// ATC_INV / PREFETCH_ADDR address bits [63:12], `w1[63:12]`.
        @inlinable public static var address: BitField { BitField(word: 1, high: 63, low: 12) }

        /// PREFETCH_ADDR size, `w1[4:0]`.
        @inlinable public static var prefetchSize: BitField { BitField(word: 1, high: 4, low: 0) }

        /// PRI_RESP page-request group index, `w1[8:0]`.
        @inlinable public static var priGroupID: BitField { BitField(word: 1, high: 8, low: 0) }
        /// PRI_RESP response, `w1[13:12]`.
        @inlinable public static var priResponse: BitField { BitField(word: 1, high: 13, low: 12) }

        /// RESUME response, `w0[13:12]`.
        @inlinable public static var resumeResponse: BitField { BitField(word: 0, high: 13, low: 12) }
        /// RESUME stall tag, `w1[15:0]`.
        @inlinable public static var resumeSTAG: BitField { BitField(word: 1, high: 15, low: 0) }

        /// SYNC completion signal, `w0[13:12]` (0 none, 1 IRQ, 2 SEV, 3 reserved).
        @inlinable public static var syncCS: BitField { BitField(word: 0, high: 13, low: 12) }
        /// SYNC MSI shareability, `w0[23:22]`.
        @inlinable public static var syncMSH: BitField { BitField(word: 0, high: 23, low: 22) }
        /// SYNC MSI memory attributes, `w0[27:24]`.
        @inlinable public static var syncMSIAttr: BitField { BitField(word: 0, high: 27, low: 24) }
        /// SYNC MSI data, `w0[63:32]`.
        @inlinable public static var syncMSIData: BitField { BitField(word: 0, high: 63, low: 32) }
        /// SYNC MSI address bits [51:2], `w1[51:2]`.
        @inlinable public static var syncMSIAddress: BitField { BitField(word: 1, high: 51, low: 2) }
    }
}

// MARK: - Typed accessors

/// A guest-visible StreamID (the vSID a VMM registers with SET_DEV_ID) or a physical one.
public typealias StreamID = UInt32
/// A SubstreamID (PASID): 20 bits.
public typealias SubstreamID = UInt32
/// A stage-1 address-space identifier, 16 bits.
public typealias ASID = UInt16
/// A stage-2 virtual-machine identifier, 16 bits.
public typealias VMID = UInt16

extension Command {
    /// StreamID, `w0[63:32]` (CFGI, ATC_INV, PREFETCH, PRI_RESP, RESUME, STALL_TERM).
    @inlinable public var streamID: StreamID {
        get { StreamID(truncatingIfNeeded: self[Field.streamID]) }
        set { self[Field.streamID] = UInt64(newValue) }
    }
    /// SubstreamID, `w0[31:12]`.
    @inlinable public var substreamID: SubstreamID {
        get { SubstreamID(truncatingIfNeeded: self[Field.substreamID]) }
        set { self[Field.substreamID] = UInt64(newValue) }
    }
    /// Secure StreamID flag, `w0[10]`.
    @inlinable public var ssec: Bool {
        get { self[flag: Field.ssec] }
        set { self[flag: Field.ssec] = newValue }
    }
    /// SubstreamID-valid flag, `w0[11]`.
    @inlinable public var ssv: Bool {
        get { self[flag: Field.ssv] }
        set { self[flag: Field.ssv] = newValue }
    }
    /// Leaf flag, `w1[0]`.
    @inlinable public var leaf: Bool {
        get { self[flag: Field.leaf] }
        set { self[flag: Field.leaf] = newValue }
    }
    /// TLBI ASID, `w0[63:48]`.
    @inlinable public var asid: ASID {
        get { ASID(truncatingIfNeeded: self[Field.asid]) }
        set { self[Field.asid] = UInt64(newValue) }
    }
    /// TLBI VMID, `w0[47:32]`.
    @inlinable public var vmid: VMID {
        get { VMID(truncatingIfNeeded: self[Field.vmid]) }
        set { self[Field.vmid] = UInt64(newValue) }
    }
    /// TLBI virtual address: `w1[63:12]` in place (the low 12 bits are zero).
    @inlinable public var virtualAddress: UInt64 {
        get { w1 & Field.tlbiVA.mask }
        set { w1 = (w1 & ~Field.tlbiVA.mask) | (newValue & Field.tlbiVA.mask) }
    }
    /// TLBI_S2_IPA address: `w1[51:12]` in place.
    @inlinable public var ipa: UInt64 {
        get { w1 & Field.tlbiIPA.mask }
        set { w1 = (w1 & ~Field.tlbiIPA.mask) | (newValue & Field.tlbiIPA.mask) }
    }
    /// ATC_INV / PREFETCH_ADDR address: `w1[63:12]` in place.
    @inlinable public var address: UInt64 {
        get { w1 & Field.address.mask }
        set { w1 = (w1 & ~Field.address.mask) | (newValue & Field.address.mask) }
    }
    /// The TLBI range fields NUM, SCALE, TG and TTL.
    @inlinable public var tlbiRange: TLBIRange {
        get {
            TLBIRange(num: UInt8(self[Field.tlbiNum]), scale: UInt8(self[Field.tlbiScale]),
                      granule: UInt8(self[Field.tlbiTG]), ttl: UInt8(self[Field.tlbiTTL]))
        }
        set {
            self[Field.tlbiNum] = UInt64(newValue.num)
            self[Field.tlbiScale] = UInt64(newValue.scale)
            self[Field.tlbiTG] = UInt64(newValue.granule)
            self[Field.tlbiTTL] = UInt64(newValue.ttl)
        }
    }
    /// CFGI_STE_RANGE RANGE, `w1[4:0]`: the command covers 2^(RANGE+1) StreamIDs.
    @inlinable public var cfgiRange: UInt8 {
        get { UInt8(self[Field.cfgiRange]) }
        set { self[Field.cfgiRange] = UInt64(newValue) }
    }
    /// The StreamIDs a CFGI_STE_RANGE covers: 2^(RANGE+1) of them, aligned (start = SID & ~mask).
    public var cfgiStreamIDs: ClosedRange<UInt64> {
        let span = UInt64(1) << (UInt64(cfgiRange) + 1)
        let start = UInt64(streamID) & ~(span - 1)
        return start...(start + span - 1)
    }
    /// ATC_INV Global flag, `w0[9]`.
    @inlinable public var atcGlobal: Bool {
        get { self[flag: Field.atcGlobal] }
        set { self[flag: Field.atcGlobal] = newValue }
    }
    /// ATC_INV SIZE, `w1[5:0]`: 2^SIZE pages of 4 KiB from ``address``; 52 covers everything.
    @inlinable public var atcSize: UInt8 {
        get { UInt8(self[Field.atcSize]) }
        set { self[Field.atcSize] = UInt64(newValue) }
    }
    /// SYNC completion signal, `w0[13:12]`.
    @inlinable public var syncCompletion: SyncCompletion {
        get { SyncCompletion(rawValue: UInt8(self[Field.syncCS])) }
        set { self[Field.syncCS] = UInt64(newValue.rawValue) }
    }
}

/// The range part of a TLBI command: NUM `w0[16:12]`, SCALE `w0[24:20]`, TG `w1[11:10]`, TTL `w1[9:8]`.
///
/// With TG = 0 the command names one page (the granule is then the leaf's, unknown to the SMMU's
/// command); with TG ≠ 0 it names (NUM+1) × 2^SCALE pages of the granule 2^(TG×2+10) bytes.
public struct TLBIRange: Hashable, Sendable {
    /// NUM, 5 bits.
    public var num: UInt8
    /// SCALE, 5 bits.
    public var scale: UInt8
    /// TG: 0 not a range, 1 = 4 KiB, 2 = 16 KiB, 3 = 64 KiB.
    public var granule: UInt8
    /// TTL: level hint of the leaf entries, 2 bits.
    public var ttl: UInt8

    public init(num: UInt8 = 0, scale: UInt8 = 0, granule: UInt8 = 0, ttl: UInt8 = 0) {
        self.num = num
        self.scale = scale
        self.granule = granule
        self.ttl = ttl
    }

    /// Not a range: one page at the command's address.
    public static let singlePage = TLBIRange()

    /// Whether this is a range invalidation (TG ≠ 0).
    @inlinable public var isRange: Bool { granule != 0 }

    /// Number of pages: (NUM+1) × 2^SCALE for a range, 1 otherwise; saturating at `UInt64.max` for
    /// values wider than the 5-bit wire fields (a shift would wrap to a too-small count).
    @inlinable public var pages: UInt64 {
        guard isRange else { return 1 }
        let count = UInt64(num) + 1, shift = UInt64(scale)
        return shift < 64 && count <= UInt64.max >> shift ? count << shift : .max
    }

    /// log2 of the granule: TG×2+10 (12, 14, 16), or 12 when TG = 0 (the smallest granule).
    @inlinable public var granuleShift: UInt64 { isRange ? UInt64(granule) * 2 + 10 : 12 }

    /// Bytes covered: ``pages`` × granule, saturating at `UInt64.max`.
    @inlinable public var byteCount: UInt64 {
        guard granuleShift < 64 else { return .max }
        let (product, overflow) = pages.multipliedReportingOverflow(by: UInt64(1) << granuleShift)
        return overflow ? .max : product
    }
}

/// CMD_SYNC's completion signal, `CS` in `w0[13:12]`.
public struct SyncCompletion: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// No signal; software polls CONS. The corresponding SMMUv3 value is `CMDQ_SYNC_0_CS_NONE` (0).
    public static let none = SyncCompletion(rawValue: 0)
    /// Raise the MSI/IRQ. The corresponding SMMUv3 value is `CMDQ_SYNC_0_CS_IRQ` (1).
    public static let irq = SyncCompletion(rawValue: 1)
    /// Send an event (SEV). The corresponding SMMUv3 value is `CMDQ_SYNC_0_CS_SEV` (2).
    public static let sev = SyncCompletion(rawValue: 2)
}
