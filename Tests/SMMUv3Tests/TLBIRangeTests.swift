import SMMUv3
import Testing
import VSMMUTestSupport

@Suite("TLBI range arithmetic and CFGI_STE_RANGE coverage")
struct TLBIRangeTests {
    @Test(arguments: [UInt8(1), 2, 3])
    func rangeCoversNumPlusOneTimesTwoToTheScalePages(granule: UInt8) {
        for num in UInt8(0)...31 {
            for scale in UInt8(0)...31 {
                let range = TLBIRange(num: num, scale: scale, granule: granule, ttl: 3)
                let expectedPages = (UInt64(num) + 1) * (UInt64(1) << UInt64(scale))
                #expect(range.isRange)
                #expect(range.pages == expectedPages, "num \(num) scale \(scale)")
            }
        }
    }

    @Test func granuleZeroIsOnePageWhateverNumAndScaleSay() {
        for num in UInt8(0)...31 {
            for scale in UInt8(0)...31 {
                let range = TLBIRange(num: num, scale: scale, granule: 0, ttl: 2)
                #expect(!range.isRange)
                #expect(range.pages == 1)
                #expect(range.granuleShift == 12)
                #expect(range.byteCount == 4096)
            }
        }
        #expect(TLBIRange.singlePage == TLBIRange(num: 0, scale: 0, granule: 0, ttl: 0))
    }

    @Test(arguments: [(UInt8(0), UInt64(12)), (1, 12), (2, 14), (3, 16)])
    func granuleShiftIsTGTimesTwoPlusTen(granule: UInt8, shift: UInt64) {
        #expect(TLBIRange(granule: granule).granuleShift == shift)
    }

    @Test func byteCountIsPagesTimesGranule() {
        #expect(TLBIRange(num: 0, scale: 0, granule: 1).byteCount == 4096)
        #expect(TLBIRange(num: 1, scale: 0, granule: 2).byteCount == 2 * 16384)
        #expect(TLBIRange(num: 2, scale: 3, granule: 3).byteCount == 3 * 8 * 65536)
        // The largest range a command can encode: 32 × 2^31 pages of 64 KiB = 2^52 bytes, no overflow.
        #expect(TLBIRange(num: 31, scale: 31, granule: 3).byteCount == UInt64(1) << 52)
        // The real guest's ranges (traces/linux-strict-summary.txt): 13 pages of 4 KiB.
        #expect(TLBIRange(num: 12, scale: 0, granule: 1, ttl: 3).byteCount == 13 * 4096)
    }

    @Test func byteCountSaturatesInsteadOfWrapping() {
        // Values beyond the 5-bit wire fields can only be built in memory; they must not wrap.
        #expect(TLBIRange(num: 31, scale: 50, granule: 3).byteCount == .max)
        #expect(TLBIRange(num: 255, scale: 63, granule: 1).byteCount == .max)
        #expect(TLBIRange(num: 255, scale: 60, granule: 1).pages == .max)
        #expect(TLBIRange(num: 0, scale: 64, granule: 1).pages == .max)
        #expect(TLBIRange(num: 0, scale: 255, granule: 3).byteCount == .max)
        #expect(TLBIRange(num: 0, scale: 0, granule: 255).byteCount == .max)
        // The largest page count that fits is not saturated.
        #expect(TLBIRange(num: 0, scale: 63, granule: 1).pages == UInt64(1) << 63)
        #expect(TLBIRange(num: 127, scale: 56, granule: 1).pages == UInt64(1) << 63)
        #expect(TLBIRange(num: 255, scale: 56, granule: 1).pages == .max)
    }

    @Test func rangeReadFromACommandCarriesEveryField() {
        let command = Command(w0: 0x0000_0000_0150_7012, w1: 0x0000_0000_0000_0A00)
        // NUM 7 w0[16:12], SCALE 0x15 w0[24:20], TG 2 w1[11:10], TTL 2 w1[9:8]
        #expect(command.tlbiRange == TLBIRange(num: 7, scale: 0x15, granule: 2, ttl: 2))
        #expect(command.tlbiRange.pages == 8 << 0x15)
    }

    // MARK: CFGI_STE_RANGE

    @Test func cfgiRangeCoversTwoToTheRangePlusOneAlignedStreamIDs() {
        var rng = SplitMix64(seed: 0x5EED_CF61)
        for range in UInt8(0)...31 {
            for _ in 0..<64 {
                let sid = StreamID(truncatingIfNeeded: rng.next())
                let covered = Command.cfgiSTERange(streamID: sid, range: range).cfgiStreamIDs
                let span = UInt64(1) << (UInt64(range) + 1)
                #expect(UInt64(covered.count) == span, "range \(range)")
                #expect(covered.lowerBound % span == 0, "range \(range) sid \(sid)")
                #expect(covered.contains(UInt64(sid)), "range \(range) sid \(sid)")
                #expect(covered.upperBound <= UInt64(UInt32.max))
            }
        }
    }

    @Test func cfgiRangeExamples() {
        #expect(Command.cfgiSTERange(streamID: 0x13, range: 0).cfgiStreamIDs == 0x12...0x13)
        #expect(Command.cfgiSTERange(streamID: 0x1234, range: 4).cfgiStreamIDs == 0x1220...0x123F)
        #expect(Command.cfgiSTERange(streamID: 0x8000_0001, range: 30).cfgiStreamIDs == 0x8000_0000...0xFFFF_FFFF)
    }

    @Test(arguments: [StreamID(0), 0x10, 0x8000_0000, 0xFFFF_FFFF])
    func cfgiAllRange31CoversEveryStreamID(streamID: StreamID) {
        let command = Command.cfgiSTERange(streamID: streamID, range: 31)
        #expect(command.cfgiStreamIDs == 0...0xFFFF_FFFF)
        #expect(Command.cfgiAll().cfgiStreamIDs == 0...0xFFFF_FFFF)
    }
}
