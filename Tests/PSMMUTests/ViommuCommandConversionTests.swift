@testable import PSMMU
import SMMUv3
import Testing

/// The kernel's rewrite of a guest command for a viommu (`arm_vsmmu_convert_user_cmd`) against the one
/// opcode table (`Opcode.definitions`): the two must agree on which opcodes a viommu takes.
@Suite struct ViommuCommandConversionTests {
    @Test func everyOpcodeTheTableSaysAViommuTakesConvertsAndEveryOtherByteIsRefusedWithEIOLikeArmVsmmuConvertUserCmd() {
        let physical: [StreamID: StreamID] = [0x8: 0x108]
        for byte in 0...255 {
            let opcode = Opcode(rawValue: UInt8(byte))
            var command = Command(opcode: opcode)
            if opcode.family == .atcInv || opcode.family == .cfgi { command.streamID = 0x8 }
            let result = ViommuCommandConversion.convert(command, vmid: 7, physicalStreamIDs: physical)
            switch result {
            case .success(let converted):
                #expect(opcode.isAcceptedOnViommu, "\(opcode.name) converted but the table says a viommu refuses it")
                if opcode.family == .tlbi { #expect(converted.vmid == 7, "\(opcode.name) carries the viommu's VMID") }
                if opcode.family == .atcInv || opcode.family == .cfgi { #expect(converted.streamID == 0x108, "\(opcode.name): vSID → pSID") }
            case .failure(let rejection):
                #expect(!opcode.isAcceptedOnViommu, "\(opcode.name) refused (\(rejection)) but the table says a viommu takes it")
            }
            #expect(ViommuCommandConversion.convertsToStage1TLBI[byte] == (opcode.isAcceptedOnViommu && opcode.family == .tlbi))
        }
    }
}
