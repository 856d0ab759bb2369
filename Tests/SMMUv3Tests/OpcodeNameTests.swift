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

    @Test func theOpcodeTableHoldsEachDefinedOpcodeOnceInNumericOrderAndEveryOtherByteIsUndefined() {
        let raws = Opcode.definitions.map(\.opcode.rawValue)
        #expect(raws == raws.sorted() && Set(raws).count == raws.count)
        #expect(raws.count == 24, "SMMUv3 defines 24 command opcodes")
        for byte in 0...255 {
            let opcode = Opcode(rawValue: UInt8(byte))
            let row = Opcode.definitions.first { $0.opcode == opcode }
            #expect(opcode.isDefined == (row != nil), "the family switch and the table disagree on \(opcode)")
            #expect(opcode.definition?.name == row?.name)
        }
        // The spec's grouping (SMMUv3 4.1-4.7), written out here rather than read back from the code.
        let families: [Opcode.Family: [UInt8]] = [
            .prefetch: [0x01, 0x02], .cfgi: [0x03, 0x04, 0x05, 0x06],
            .tlbi: [0x10, 0x11, 0x12, 0x13, 0x18, 0x1A, 0x20, 0x21, 0x22, 0x23, 0x28, 0x2A, 0x30],
            .atcInv: [0x40], .priResp: [0x41], .resume: [0x44], .stallTerm: [0x45], .sync: [0x46],
        ]
        for (family, raws) in families {
            for raw in raws { #expect(Opcode(rawValue: raw).family == family) }
        }
    }

    @Test func aViommuTakesExactlyTheStage1TLBIsAndTheVSIDScopedCommandsLikeArmVsmmuConvertUserCmd() {
        let accepted = Set(Opcode.definitions.filter(\.acceptedOnViommu).map(\.opcode))
        #expect(accepted == [.tlbiNHAll, .tlbiNHASID, .tlbiNHVA, .tlbiNHVAA, .tlbiNSNHAll, .atcInv, .cfgiCD, .cfgiCDAll])
        #expect(!Opcode(rawValue: 0x07).isAcceptedOnViommu && !Opcode.sync.isAcceptedOnViommu)
    }
}
