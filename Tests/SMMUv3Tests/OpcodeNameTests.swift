import SMMUv3
import Testing

@Suite struct OpcodeNameTests {
    @Test func definedOpcodesCarryTheSpecsNames() {
        #expect(Opcode.tlbiNHVA.name == "CMD_TLBI_NH_VA")
        #expect(Opcode.sync.name == "CMD_SYNC")
        #expect(Opcode.cfgiSTERange.name == "CMD_CFGI_STE_RANGE")
        #expect(Set(Opcode.allDefined.map(\.name)).count == Opcode.allDefined.count)
        #expect(Opcode.allDefined.allSatisfy { $0.name.hasPrefix("CMD_") })
    }

    @Test func undefinedOpcodesAreNamedWithTwoHexDigits() {
        #expect(Opcode(rawValue: 0x07).name == "UNKNOWN(0x07)")
        #expect(Opcode(rawValue: 0x00).name == "UNKNOWN(0x00)")
        #expect(Opcode(rawValue: 0xFF).name == "UNKNOWN(0xFF)")
    }
}
