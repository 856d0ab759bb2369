import SMMUv3
import Testing

@Suite("Decoding from the wrong number of bytes")
struct WrongLengthTests {
    @Test(arguments: [0, 15, 17, 32])
    func commandNeedsExactlySixteenBytes(count: Int) {
        let error = #expect(throws: WrongLengthError.self) {
            try Command(bytes: [UInt8](repeating: 0x46, count: count))
        }
        #expect(error?.expected == 16)
        #expect(error?.actual == count)
        #expect(error?.structure == "command")
    }

    @Test(arguments: [0, 63, 65, 128])
    func streamTableEntryNeedsExactlySixtyFourBytes(count: Int) {
        let error = #expect(throws: WrongLengthError.self) {
            try StreamTableEntry(bytes: [UInt8](repeating: 0xFF, count: count))
        }
        #expect(error?.expected == 64)
        #expect(error?.actual == count)
    }

    @Test(arguments: [0, 63, 65, 128])
    func contextDescriptorNeedsExactlySixtyFourBytes(count: Int) {
        let error = #expect(throws: WrongLengthError.self) {
            try ContextDescriptor(bytes: [UInt8](repeating: 0xFF, count: count))
        }
        #expect(error?.expected == 64)
        #expect(error?.actual == count)
    }

    @Test(arguments: [0, 31, 33, 64])
    func eventRecordNeedsExactlyThirtyTwoBytes(count: Int) {
        let error = #expect(throws: WrongLengthError.self) {
            try EventRecord(bytes: [UInt8](repeating: 0xFF, count: count))
        }
        #expect(error?.expected == 32)
        #expect(error?.actual == count)
    }

    @Test func structureSizesAreTheArchitecturalOnes() {
        #expect(Command.byteCount == 16)
        #expect(StreamTableEntry.byteCount == 64)
        #expect(ContextDescriptor.byteCount == 64)
        #expect(EventRecord.byteCount == 32)
    }

    @Test func wrongLengthErrorSaysWhatWasExpected() {
        #expect(WrongLengthError(structure: "command", expected: 16, actual: 15).description
                == "command must be 16 bytes, got 15")
    }
}
