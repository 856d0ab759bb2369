/// CRC-32C (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78), as iSCSI uses it (RFC 3720 §B.4):
/// initial value all ones, reflected input and output, final XOR all ones.
///
/// Table driven, one byte at a time. The journal checks every record with it, and the daemon uses it for
/// the payload checksum of the control request it journals for reply replay.
public enum CRC32C {
    /// The reflected-polynomial lookup table (256 entries).
    @usableFromInline static let table: [UInt32] = (0..<256).map { index in
        var crc = UInt32(index)
        for _ in 0..<8 {
            crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1
        }
        return crc
    }

    /// The running value before any byte (the register after the initial value is loaded).
    public static let initial: UInt32 = 0xFFFF_FFFF

    /// Feeds `bytes` into a running CRC register `crc` (start with ``initial``); finish with ``finalize(_:)``.
    @inlinable
    public static func update<Bytes: Sequence>(_ crc: UInt32, _ bytes: Bytes) -> UInt32 where Bytes.Element == UInt8 {
        var crc = crc
        let table = CRC32C.table
        for byte in bytes {
            crc = (crc >> 8) ^ table[Int((crc ^ UInt32(byte)) & 0xFF)]
        }
        return crc
    }

    /// The CRC of everything fed into the register `crc`.
    @inlinable
    public static func finalize(_ crc: UInt32) -> UInt32 { crc ^ 0xFFFF_FFFF }

    /// The CRC-32C of `bytes`.
    @inlinable
    public static func checksum<Bytes: Sequence>(_ bytes: Bytes) -> UInt32 where Bytes.Element == UInt8 {
        finalize(update(initial, bytes))
    }
}
