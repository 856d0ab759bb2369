/// The little-endian byte writer of the daemon's durable formats: ``EngineSnapshot/encode()`` and the
/// daemon's journal record, which carries the snapshot (one home for the encoding of both).
public struct LittleEndianWriter: Sendable {
    /// What was written so far.
    public private(set) var output: [UInt8] = []

    public init() {}

    public mutating func u8(_ v: UInt8) { output.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { output.append(contentsOf: $0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { output.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { output.append(contentsOf: $0) } }
    public mutating func bytes(_ v: [UInt8]) { output.append(contentsOf: v) }
    /// A `u32` length, then the bytes.
    public mutating func blob(_ v: [UInt8]) { u32(UInt32(truncatingIfNeeded: v.count)); bytes(v) }
}

/// The reader of what ``LittleEndianWriter`` wrote: every read checks the bytes left first, so bytes
/// from a torn or corrupt file give an error (``EngineSnapshotError``), never a read past the end.
public struct LittleEndianReader: Sendable {
    let input: [UInt8]
    /// The offset of the next byte to read.
    public private(set) var offset = 0

    public init(_ input: [UInt8]) { self.input = input }

    /// The bytes not read yet.
    public var remaining: Int { input.count - offset }

    mutating func take(_ count: Int) throws(EngineSnapshotError) -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else { throw .truncated(offset: offset, needed: count) }
        defer { offset += count }
        return input[offset ..< offset + count]
    }

    public mutating func u8() throws(EngineSnapshotError) -> UInt8 { try take(1).first ?? 0 }
    public mutating func u16() throws(EngineSnapshotError) -> UInt16 { UInt16(try little(2)) }
    public mutating func u32() throws(EngineSnapshotError) -> UInt32 { UInt32(try little(4)) }
    public mutating func u64() throws(EngineSnapshotError) -> UInt64 { try little(8) }
    public mutating func bytes(_ count: Int) throws(EngineSnapshotError) -> [UInt8] { Array(try take(count)) }
    /// A `u32` length, then that many bytes (checked against the bytes left before anything is copied).
    public mutating func blob() throws(EngineSnapshotError) -> [UInt8] { try bytes(Int(try u32())) }

    private mutating func little(_ count: Int) throws(EngineSnapshotError) -> UInt64 {
        var value: UInt64 = 0
        for (shift, byte) in try take(count).enumerated() { value |= UInt64(byte) << (8 * UInt64(shift)) }
        return value
    }

    mutating func zero8(_ what: String) throws(EngineSnapshotError) {
        let at = offset
        guard try u8() == 0 else { throw .badField(offset: at, "\(what) is not 0") }
    }

    mutating func zero16(_ what: String) throws(EngineSnapshotError) {
        let at = offset
        guard try u16() == 0 else { throw .badField(offset: at, "\(what) is not 0") }
    }

    /// Refuses `count` records of at least `size` bytes each when fewer bytes are left.
    func require(count: Int, of size: Int, at field: Int, _ what: String) throws(EngineSnapshotError) {
        let (needed, overflow) = count.multipliedReportingOverflow(by: size)
        guard !overflow, needed <= remaining else {
            throw .badField(offset: field, "\(count) \(what) cannot fit in the \(remaining) byte(s) left")
        }
    }
}
