/// The journal's on-disk format, version 1. All integers little-endian.
///
/// Both files start with a 32-byte header:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic: `VSMMUJL\0` (log) or `VSMMUJC\0` (checkpoint) |
/// | 8 | 4 | format version (1) |
/// | 12 | 4 | reserved, 0 |
/// | 16 | 8 | base sequence: the log's records start after it; the checkpoint holds every change up to it |
/// | 24 | 4 | reserved, 0 |
/// | 28 | 4 | CRC-32C of bytes 0..<28 |
///
/// Then records, back to back, each a 20-byte header and its payload:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | payload length |
/// | 4 | 2 | kind: 1 put (key u64, value), 2 remove (key u64), 3 checkpoint end (record count u64) |
/// | 6 | 2 | reserved, 0 |
/// | 8 | 8 | sequence number |
/// | 16 | 4 | CRC-32C of header bytes 0..<16 and the payload |
///
/// A log's records are numbered base+1, base+2, … without gaps. A checkpoint's are numbered 1…n and end with
/// one checkpoint-end record (number n+1, payload n) that is the file's last byte.
public enum JournalFormat {
    /// The format version this build writes and reads.
    public static let version: UInt32 = 1
    /// The log file's magic.
    static let logMagic: [UInt8] = Array("VSMMUJL".utf8) + [0]
    /// The checkpoint file's magic.
    static let checkpointMagic: [UInt8] = Array("VSMMUJC".utf8) + [0]
    /// Bytes in a file header.
    static let fileHeaderSize = 32
    /// Bytes in a record header.
    static let recordHeaderSize = 20

    /// What a record says.
    enum Kind: UInt16 {
        case put = 1
        case remove = 2
        case checkpointEnd = 3
    }

    /// One decoded record.
    struct Record: Equatable {
        var kind: Kind
        var sequence: UInt64
        var payload: ArraySlice<UInt8>
    }

    static func appendLE<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    static func readLE<T: FixedWidthInteger>(_: T.Type, _ bytes: [UInt8], at offset: Int) -> T {
        var value = T.zero
        for index in 0..<MemoryLayout<T>.size {
            value |= T(truncatingIfNeeded: bytes[offset + index]) << (8 * index)
        }
        return value
    }

    /// A file header.
    static func fileHeader(magic: [UInt8], baseSequence: UInt64) -> [UInt8] {
        var bytes = magic
        appendLE(version, to: &bytes)
        appendLE(UInt32(0), to: &bytes)
        appendLE(baseSequence, to: &bytes)
        appendLE(UInt32(0), to: &bytes)
        appendLE(CRC32C.checksum(bytes), to: &bytes)
        return bytes
    }

    /// A file header's complaint, or its base sequence.
    enum HeaderCheck {
        case valid(baseSequence: UInt64)
        case invalid(reason: String)
        case unsupportedVersion(UInt32)
    }

    static func checkFileHeader(_ bytes: [UInt8], magic: [UInt8]) -> HeaderCheck {
        guard bytes.count >= fileHeaderSize else {
            return .invalid(reason: "the file is \(bytes.count) bytes, shorter than its \(fileHeaderSize)-byte header")
        }
        guard Array(bytes[0..<8]) == magic else { return .invalid(reason: "bad magic (not a vsmmud journal file of this kind)") }
        guard CRC32C.checksum(bytes[0..<28]) == readLE(UInt32.self, bytes, at: 28) else {
            return .invalid(reason: "the header's CRC-32C does not match")
        }
        let version = readLE(UInt32.self, bytes, at: 8)
        guard version == JournalFormat.version else { return .unsupportedVersion(version) }
        guard readLE(UInt32.self, bytes, at: 12) == 0, readLE(UInt32.self, bytes, at: 24) == 0 else {
            return .invalid(reason: "reserved header fields are not zero")
        }
        return .valid(baseSequence: readLE(UInt64.self, bytes, at: 16))
    }

    /// One encoded record.
    static func record(_ kind: Kind, sequence: UInt64, payload: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(recordHeaderSize + payload.count)
        appendLE(UInt32(payload.count), to: &bytes)
        appendLE(kind.rawValue, to: &bytes)
        appendLE(UInt16(0), to: &bytes)
        appendLE(sequence, to: &bytes)
        let crc = CRC32C.finalize(CRC32C.update(CRC32C.update(CRC32C.initial, bytes), payload))
        appendLE(crc, to: &bytes)
        bytes.append(contentsOf: payload)
        return bytes
    }

    static func putPayload(key: UInt64, value: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + value.count)
        appendLE(key, to: &bytes)
        bytes.append(contentsOf: value)
        return bytes
    }

    static func keyPayload(_ key: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        appendLE(key, to: &bytes)
        return bytes
    }

    /// What lies at an offset of a file.
    enum Scan {
        /// A record whose checksum matches, and the offset after it.
        case record(rawKind: UInt16, reservedIsZero: Bool, sequence: UInt64, payload: ArraySlice<UInt8>, end: Int)
        /// Too few bytes for the header or for the payload its length announces.
        case short
        /// A whole record whose checksum does not match.
        case badChecksum(end: Int)
    }

    static func scan(_ bytes: [UInt8], at offset: Int) -> Scan {
        guard bytes.count - offset >= recordHeaderSize else { return .short }
        let length = Int(readLE(UInt32.self, bytes, at: offset))
        guard bytes.count - offset - recordHeaderSize >= length else { return .short }
        let payloadStart = offset + recordHeaderSize
        let end = payloadStart + length
        let crc = CRC32C.finalize(CRC32C.update(CRC32C.update(CRC32C.initial, bytes[offset..<offset + 16]), bytes[payloadStart..<end]))
        guard crc == readLE(UInt32.self, bytes, at: offset + 16) else { return .badChecksum(end: end) }
        return .record(
            rawKind: readLE(UInt16.self, bytes, at: offset + 4),
            reservedIsZero: readLE(UInt16.self, bytes, at: offset + 6) == 0,
            sequence: readLE(UInt64.self, bytes, at: offset + 8),
            payload: bytes[payloadStart..<end], end: end
        )
    }
}
