/// A field of an SMMUv3 structure, declared once by the 64-bit word that holds it and its bit range,
/// like the Linux driver's `GENMASK_ULL(hi, lo)` constants.
///
/// Every structure in this module (``Command``, ``StreamTableEntry``, ``ContextDescriptor``,
/// ``EventRecord``) reads and writes its fields through one pair of helpers on a field table, the
/// way `FIELD_GET`/`FIELD_PREP` are used in `arm-smmu-v3.h`; no shift or mask is written by hand at a
/// use site.
public struct BitField: Hashable, Sendable, CustomStringConvertible {
    /// Index of the little-endian 64-bit word that holds the field.
    public let word: Int
    /// Lowest bit of the field within its word.
    public let low: Int
    /// Number of bits, 1...64.
    public let width: Int

    /// Declares the field `w<word>[high:low]`.
    @inlinable
    public init(word: Int, high: Int, low: Int) {
        precondition(high >= low && high < 64 && low >= 0, "bad field declaration")
        self.word = word
        self.low = low
        self.width = high - low + 1
    }

    /// Declares the one-bit field `w<word>[bit]`.
    @inlinable
    public init(word: Int, bit: Int) {
        self.init(word: word, high: bit, low: bit)
    }

    /// The highest bit of the field.
    @inlinable public var high: Int { low + width - 1 }

    /// The field's mask, unshifted (`(1 << width) - 1`).
    @inlinable public var valueMask: UInt64 { width == 64 ? ~0 : (UInt64(1) << UInt64(width)) - 1 }

    /// The field's mask in place within its word (`GENMASK_ULL(high, low)`).
    @inlinable public var mask: UInt64 { valueMask << UInt64(low) }

    /// The largest value the field can hold.
    @inlinable public var maxValue: UInt64 { valueMask }

    /// Extracts the field from its word (`FIELD_GET`).
    @inlinable
    public func get(_ word: UInt64) -> UInt64 { (word >> UInt64(low)) & valueMask }

    /// Returns `word` with the field replaced by `value`; bits of `value` beyond the field's width are
    /// discarded (`FIELD_PREP` into a cleared field).
    @inlinable
    public func set(_ value: UInt64, in word: UInt64) -> UInt64 {
        (word & ~mask) | ((value & valueMask) << UInt64(low))
    }

    public var description: String {
        width == 1 ? "w\(word)[\(low)]" : "w\(word)[\(high):\(low)]"
    }
}

/// A fixed number of little-endian 64-bit words: the storage shared by the SMMUv3 structures.
public protocol SMMUWords {
    /// Number of 64-bit words of the structure.
    static var wordCount: Int { get }
    /// Word `index`, `0 ..< wordCount`.
    func word(_ index: Int) -> UInt64
    /// Replaces word `index`.
    mutating func setWord(_ index: Int, _ value: UInt64)
}

extension SMMUWords {
    /// Size of the structure in bytes.
    @inlinable public static var byteCount: Int { wordCount * 8 }

    /// Reads a field.
    @inlinable
    public subscript(field: BitField) -> UInt64 {
        get { field.get(word(field.word)) }
        set { setWord(field.word, field.set(newValue, in: word(field.word))) }
    }

    /// Reads a one-bit field as a Boolean.
    @inlinable
    public subscript(flag field: BitField) -> Bool {
        get { field.get(word(field.word)) != 0 }
        set { self[field] = newValue ? 1 : 0 }
    }

    /// The structure as little-endian bytes, as it sits in guest memory or on the wire.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.byteCount)
        for i in 0..<Self.wordCount {
            let w = word(i)
            for b in 0..<8 { out.append(UInt8(truncatingIfNeeded: w >> UInt64(b * 8))) }
        }
        return out
    }

    /// Reads the little-endian words from `bytes` into `self`; `bytes.count` must be `byteCount`.
    @inlinable
    mutating func load<C: Collection>(littleEndian bytes: C) where C.Element == UInt8 {
        var i = bytes.startIndex
        for w in 0..<Self.wordCount {
            var v: UInt64 = 0
            for b in 0..<8 {
                v |= UInt64(bytes[i]) << UInt64(b * 8)
                i = bytes.index(after: i)
            }
            setWord(w, v)
        }
    }
}

/// A structure given the wrong number of bytes.
public struct WrongLengthError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The structure's name, e.g. `"command"`.
    public var structure: String
    public var expected: Int
    public var actual: Int
    public init(structure: String, expected: Int, actual: Int) {
        self.structure = structure
        self.expected = expected
        self.actual = actual
    }
    public var description: String { "\(structure) must be \(expected) bytes, got \(actual)" }
}

/// Eight little-endian 64-bit words: the storage of the 64-byte structures (STE, CD).
public struct EightWords: Hashable, Sendable {
    private var w: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

    /// All zero.
    public init() {}

    /// Word `index`, `0 ..< 8`.
    public subscript(index: Int) -> UInt64 {
        get {
            precondition(index >= 0 && index < 8, "word index out of range")
            return withUnsafeBytes(of: w) { $0.load(fromByteOffset: index * 8, as: UInt64.self) }
        }
        set {
            precondition(index >= 0 && index < 8, "word index out of range")
            withUnsafeMutableBytes(of: &w) { $0.storeBytes(of: newValue, toByteOffset: index * 8, as: UInt64.self) }
        }
    }

    public static func == (a: Self, b: Self) -> Bool { (0..<8).allSatisfy { a[$0] == b[$0] } }

    public func hash(into hasher: inout Hasher) {
        for i in 0..<8 { hasher.combine(self[i]) }
    }
}
