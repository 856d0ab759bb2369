/// A stage-1 Context Descriptor: 64 bytes, eight little-endian words. It carries the ASID that tags
/// the TLB entries its translation tables fill, which is what routes a `TLBI_NH_ASID`/`TLBI_NH_VA`.
public struct ContextDescriptor: Hashable, Sendable, SMMUWords {
    public static let wordCount = 8
    /// The eight words, `w0`…`w7`.
    public var words = EightWords()

    /// An all-zero CD: V = 0.
    public init() {}

    /// A CD from its first words; the rest are zero.
    public init(w0: UInt64, w1: UInt64 = 0, w2: UInt64 = 0, w3: UInt64 = 0) {
        words[0] = w0
        words[1] = w1
        words[2] = w2
        words[3] = w3
    }

    /// A valid AArch64 CD for `asid` with translation table `ttb0`: the shape Linux writes.
    public static func valid(asid: ASID, ttb0: UInt64 = 0) -> ContextDescriptor {
        var cd = ContextDescriptor()
        cd.isValid = true
        cd[Field.aa64] = 1
        cd.asid = asid
        cd.ttb0 = ttb0
        return cd
    }

    /// Decodes 64 little-endian bytes.
    public init<C: Collection>(bytes: C) throws(WrongLengthError) where C.Element == UInt8 {
        guard bytes.count == Self.byteCount else {
            throw WrongLengthError(structure: "CD", expected: Self.byteCount, actual: bytes.count)
        }
        self.init()
        load(littleEndian: bytes)
    }

    public func word(_ index: Int) -> UInt64 { words[index] }

    public mutating func setWord(_ index: Int, _ value: UInt64) { words[index] = value }

    /// Every CD field, declared by word and bit range (`CTXDESC_CD_*`).
    public enum Field {
        @inlinable public static var t0sz: BitField { BitField(word: 0, high: 5, low: 0) }
        @inlinable public static var tg0: BitField { BitField(word: 0, high: 7, low: 6) }
        @inlinable public static var irgn0: BitField { BitField(word: 0, high: 9, low: 8) }
        @inlinable public static var orgn0: BitField { BitField(word: 0, high: 11, low: 10) }
        @inlinable public static var sh0: BitField { BitField(word: 0, high: 13, low: 12) }
        @inlinable public static var epd0: BitField { BitField(word: 0, bit: 14) }
        @inlinable public static var endi: BitField { BitField(word: 0, bit: 15) }
        /// Valid, `w0[31]`.
        @inlinable public static var valid: BitField { BitField(word: 0, bit: 31) }
        @inlinable public static var ips: BitField { BitField(word: 0, high: 34, low: 32) }
        @inlinable public static var aa64: BitField { BitField(word: 0, bit: 41) }
        @inlinable public static var hd: BitField { BitField(word: 0, bit: 42) }
        @inlinable public static var ha: BitField { BitField(word: 0, bit: 43) }
        @inlinable public static var s: BitField { BitField(word: 0, bit: 44) }
        @inlinable public static var r: BitField { BitField(word: 0, bit: 45) }
        @inlinable public static var a: BitField { BitField(word: 0, bit: 46) }
        @inlinable public static var aset: BitField { BitField(word: 0, bit: 47) }
        /// ASID, `w0[63:48]`.
        @inlinable public static var asid: BitField { BitField(word: 0, high: 63, low: 48) }
        /// TTB0, `w1[51:4]`.
        @inlinable public static var ttb0: BitField { BitField(word: 1, high: 51, low: 4) }
        /// MAIR, `w3[63:0]`.
        @inlinable public static var mair: BitField { BitField(word: 3, high: 63, low: 0) }
    }

    /// V, `w0[31]`. An invalid CD carries no ASID the SMMU could cache.
    public var isValid: Bool {
        get { self[flag: Field.valid] }
        set { self[flag: Field.valid] = newValue }
    }
    /// ASID, `w0[63:48]`.
    public var asid: ASID {
        get { ASID(truncatingIfNeeded: self[Field.asid]) }
        set { self[Field.asid] = UInt64(newValue) }
    }
    /// Translation table base 0, `w1[51:4]` in place.
    public var ttb0: UInt64 {
        get { self[Field.ttb0] << 4 }
        set { self[Field.ttb0] = newValue >> 4 }
    }
    /// The ASID the SMMU may tag TLB entries with through this CD: `asid` when valid, else `nil`.
    public var activeASID: ASID? { isValid ? asid : nil }
}
