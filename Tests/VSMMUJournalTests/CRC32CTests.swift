import Testing
import VSMMUJournal

/// CRC-32C against the test vectors of RFC 3720 §B.4 (the CRC as a value; the RFC lists its bytes little-endian).
struct CRC32CTests {
    @Test func thirtyTwoZeroBytesGiveRFC3720sVector() {
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
    }

    @Test func thirtyTwoOnesBytesGiveRFC3720sVector() {
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
    }

    @Test func incrementingBytesGiveRFC3720sVector() {
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
    }

    @Test func decrementingBytesGiveRFC3720sVector() {
        #expect(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }) == 0x113F_DB5C)
    }

    @Test func anISCSIReadCommandPDUGivesRFC3720sVector() {
        var pdu: [UInt8] = [0x01, 0xC0] + [UInt8](repeating: 0, count: 14)
        pdu += [0x14, 0, 0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0x14, 0, 0, 0, 0x18, 0x28, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0]
        pdu += [UInt8](repeating: 0, count: 4)
        #expect(pdu.count == 48)
        #expect(CRC32C.checksum(pdu) == 0xD996_3A56)
    }

    @Test func feedingInPiecesEqualsFeedingAtOnce() {
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let pieces = CRC32C.finalize(CRC32C.update(CRC32C.update(CRC32C.initial, bytes[..<333]), bytes[333...]))
        #expect(pieces == CRC32C.checksum(bytes))
        #expect(CRC32C.checksum([]) == 0)
    }
}
