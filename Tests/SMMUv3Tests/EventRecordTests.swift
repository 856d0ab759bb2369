import SMMUv3
import Testing

@Suite("Event records")
struct EventRecordTests {
    @Test func eventIDsAreTheReferenceList() {
        #expect(EventID.allDefined.map(\.rawValue) == [
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x24,
        ])
        #expect(EventID.allDefined.map(\.description) == [
            "F_UUT", "C_BAD_STREAMID", "F_STE_FETCH", "C_BAD_STE", "F_BAD_ATS_TREQ", "F_STREAM_DISABLED",
            "F_TRANS_FORBIDDEN", "C_BAD_SUBSTREAMID", "F_CD_FETCH", "C_BAD_CD", "F_WALK_EABT", "F_TRANSLATION",
            "F_ADDR_SIZE", "F_ACCESS", "F_PERMISSION", "F_TLB_CONFLICT", "F_CFG_CONFLICT", "E_PAGE_REQ",
        ])
    }

    @Test(arguments: EventID.allDefined)
    func eventRoundTripsThroughItsThirtyTwoBytes(_ id: EventID) throws {
        let event = EventRecord(id: id, streamID: 0xFEDC_BA98, substreamID: 0xABCDE,
                                inputAddress: 0xFFFF_8000_1234_5678, fetchAddress: 0x0000_0000_4380_5000)
        let bytes = event.bytes
        #expect(bytes.count == 32)
        // w0: ID | SSV w0[11] | SSID 0xABCDE w0[31:12] | SID 0xFEDC_BA98 w0[63:32]
        #expect(bytes == littleEndianBytes(0xFEDC_BA98_ABCD_E800 | UInt64(id.rawValue), 0,
                                           0xFFFF_8000_1234_5678, 0x0000_0000_4380_5000))
        let decoded = try EventRecord(bytes: bytes)
        #expect(decoded == event)
        #expect(decoded.id == id)
        #expect(decoded.streamID == 0xFEDC_BA98)
        #expect(decoded.substreamID == 0xABCDE)
        #expect(decoded.inputAddress == 0xFFFF_8000_1234_5678)
        #expect(decoded.fetchAddress == 0x0000_0000_4380_5000)
        #expect(decoded.bytes == bytes)
    }

    @Test func eventWithoutSubstreamIDLeavesSSVAndSSIDClear() throws {
        let event = EventRecord(id: .translation, streamID: 0x10, inputAddress: 0xDEAD_B000)
        #expect(event.bytes == littleEndianBytes(0x0000_0010_0000_0010, 0, 0xDEAD_B000, 0))
        #expect(event.substreamID == nil)
        #expect(try EventRecord(bytes: event.bytes).substreamID == nil)
    }

    @Test func substreamIDZeroIsStillASubstreamID() {
        let event = EventRecord(id: .badCD, streamID: 0x18, substreamID: 0)
        #expect(event.w0 == 0x0000_0018_0000_080A)
        #expect(event.substreamID == 0)
    }

    @Test func ssidIsOnlyReportedWhenSSVIsSet() {
        // SSID bits present but SSV clear: no SubstreamID.
        let event = EventRecord(w0: 0x0000_0010_FFFF_F010)
        #expect(event.substreamID == nil)
        #expect(event.streamID == 0x10)
        #expect(event.id == .translation)
    }

    @Test func substreamIDWiderThanTwentyBitsIsTruncatedNotSpilledIntoStreamID() {
        let event = EventRecord(id: .permission, streamID: 0, substreamID: 0xFFFF_FFFF)
        #expect(event.w0 == 0x0000_0000_FFFF_F813)
        #expect(event.substreamID == 0xFFFFF)
        #expect(event.streamID == 0)
    }

    @Test func unknownEventIDIsKeptAndNamed() throws {
        let event = try EventRecord(bytes: littleEndianBytes(0xFF, 0, 0, 0))
        #expect(event.id.rawValue == 0xFF)
        #expect(!EventID.allDefined.contains(event.id))
        #expect(event.id.description == "EVENT(0xff)")
    }
}
