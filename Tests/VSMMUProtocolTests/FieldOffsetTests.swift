import Testing
import VSMMUProtocol

/// The payload offsets a `BAD_FIELD` names come from the protocol module (issue 12 §6), and they are the
/// offsets at which the codec writes those fields.
@Suite struct FieldOffsetTests {
    /// The payload of `request`'s frame (the 16-byte header dropped).
    func payload(of request: Request) throws -> [UInt8] {
        Array(try request.encode(requestID: 7).dropFirst(16))
    }

    func u32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        (0 ..< 4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * UInt32($1)) }
    }

    @Test func deviceRegistrationFieldOffsetsAreWhereTheCodecWritesEachField() throws {
        let registration = DeviceRegistration(vsmmu: VSMMUID(0x1111_1111), viommu: 0x2222_2222,
                                              hostDeviceID: 0x3333_3333, streamID: 0x4444_4444)
        let bytes = try payload(of: .unsetDeviceID(registration))
        #expect(bytes.count == 16)
        #expect(u32(bytes, at: DeviceRegistration.Field.vsmmu.rawValue) == 0x1111_1111)
        #expect(u32(bytes, at: DeviceRegistration.Field.viommu.rawValue) == 0x2222_2222)
        #expect(u32(bytes, at: DeviceRegistration.Field.hostDeviceID.rawValue) == 0x3333_3333)
        #expect(u32(bytes, at: DeviceRegistration.Field.streamID.rawValue) == 0x4444_4444)
    }

    @Test func createVSMMUFlagsOffsetHoldsTheKeyFlag() throws {
        let key = try #require(CreateKey(bytes: [UInt8](repeating: 0xA5, count: CreateKey.byteCount)))
        let create = CreateVSMMU(name: "vm", createKey: key)
        let bytes = try payload(of: .createVSMMU(create))
        #expect(u32(bytes, at: CreateVSMMU.flagsOffset) == CreateVSMMU.keyFlag)
    }
}
