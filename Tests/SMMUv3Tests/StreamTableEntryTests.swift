import SMMUv3
import Testing
import VSMMUTestSupport

/// One STE + CD pair that the Linux 6.1 guest left in its memory (`traces/linux-*-ste-cd.csv`).
struct RealStreamConfiguration: Sendable, CustomTestStringConvertible {
    var streamID: StreamID
    var steW0: UInt64
    var steW1: UInt64
    var cdAddress: UInt64
    var cdW0: UInt64
    var asid: ASID
    var ttb0: UInt64

    var testDescription: String { "SID \(hex(UInt64(streamID))) ASID \(asid)" }

    /// The `ram_dump_final` rows of `linux-strict-ste-cd.csv`, copied by hand.
    static let strictTrace: [RealStreamConfiguration] = [
        .init(streamID: 0x8, steW0: 0x0000_0000_4380_400B, steW1: 0xD6, cdAddress: 0x4380_4000,
              cdW0: 0x0003_E204_C000_3510, asid: 3, ttb0: 0x4380_5000),
        .init(streamID: 0x10, steW0: 0x0000_0000_43AB_C00B, steW1: 0xD6, cdAddress: 0x43AB_C000,
              cdW0: 0x0001_E204_C000_3510, asid: 1, ttb0: 0x43AB_7000),
        .init(streamID: 0x18, steW0: 0x0000_0000_4395_000B, steW1: 0xD6, cdAddress: 0x4395_0000,
              cdW0: 0x0002_E204_C000_3510, asid: 2, ttb0: 0x4396_9000),
    ]
}

@Suite("STE and CD decoding, and the kernel's nesting rules")
struct StreamTableEntryTests {
    /// A valid s1_trans STE as Linux writes it (SID 0x8 of the strict trace).
    static let linuxSTE = StreamTableEntry(w0: 0x0000_0000_4380_400B, w1: 0xD6)

    // MARK: Decoding the guest's STEs and CDs

    @Test(arguments: RealStreamConfiguration.strictTrace)
    func linuxSTEDecodesAsStage1WithOneCDAndSubstream0Default(_ real: RealStreamConfiguration) throws {
        let ste = try StreamTableEntry(bytes: littleEndianBytes(real.steW0, real.steW1, 0, 0, 0, 0, 0, 0))
        #expect(ste.isValid)
        #expect(ste.config == .s1Translate)
        #expect(ste.config.description == "s1_trans")
        #expect(ste.s1Fmt == .linear)
        #expect(ste.s1ContextPointer == real.cdAddress)
        #expect(ste.s1CDMax == 0)
        #expect(ste.contextDescriptorCount == 1)
        #expect(ste.s1DSS == .substream0)
        #expect(ste.eats == 0)
        #expect(ste[StreamTableEntry.Field.strw] == 0)
        #expect(ste[StreamTableEntry.Field.shcfg] == 0)
        #expect(ste[StreamTableEntry.Field.s2VMID] == 0)
        // 0xD6: S1DSS 2, S1CIR 1 (WBRA), S1COR 1 (WBRA), S1CSH 3 (inner shareable)
        #expect(ste[StreamTableEntry.Field.s1CIR] == 1)
        #expect(ste[StreamTableEntry.Field.s1COR] == 1)
        #expect(ste[StreamTableEntry.Field.s1CSH] == 3)
        #expect(ste.translatesStage1)
        #expect(ste.bytes == littleEndianBytes(real.steW0, real.steW1, 0, 0, 0, 0, 0, 0))
    }

    @Test(arguments: RealStreamConfiguration.strictTrace)
    func linuxCDDecodesAsValidAArch64WithItsASID(_ real: RealStreamConfiguration) throws {
        let cd = try ContextDescriptor(bytes: littleEndianBytes(real.cdW0, real.ttb0, 0, 0xFFFF_FFFF_F404_FF44, 0, 0, 0, 0))
        #expect(cd.isValid)
        #expect(cd.asid == real.asid)
        #expect(cd.activeASID == real.asid)
        #expect(cd[ContextDescriptor.Field.t0sz] == 16)
        #expect(cd[ContextDescriptor.Field.tg0] == 0)
        #expect(cd[ContextDescriptor.Field.ips] == 4)
        #expect(cd[ContextDescriptor.Field.aa64] == 1)
        #expect(cd.ttb0 == real.ttb0)
        #expect(cd[ContextDescriptor.Field.mair] == 0xFFFF_FFFF_F404_FF44)
    }

    @Test func realSTEsAndCDsFromTheSharedCSVsDecodeAsRecorded() throws {
        for file in ["linux-strict-ste-cd.csv", "linux-lazy-ste-cd.csv"] {
            let table = try SharedFolder.traceCSV(file)
            let source = try table.column("source"), sid = try table.column("sid")
            let steW0 = try table.column("ste_dw0"), steW1 = try table.column("ste_dw1")
            let config = try table.column("ste_config"), cdAddress = try table.column("cd_addr")
            let s1cdmax = try table.column("s1cdmax"), s1dss = try table.column("s1dss")
            let eats = try table.column("eats"), strw = try table.column("strw"), shcfg = try table.column("shcfg")
            let s1fmt = try table.column("s1fmt"), s2vmid = try table.column("s2vmid")
            let cdW0 = try table.column("cd_dw0"), cdValid = try table.column("cd_valid"), asid = try table.column("asid")
            let t0sz = try table.column("t0sz"), tg0 = try table.column("tg0"), ips = try table.column("ips")
            let aa64 = try table.column("aa64"), ttb0 = try table.column("ttb0")
            var checked = 0
            for row in table.rows where row[source] == "ram_dump_final" {
                let w0 = try #require(try parseNumber(row[steW0])), w1 = try #require(try parseNumber(row[steW1]))
                let ste = StreamTableEntry(w0: w0, w1: w1)
                let context = "\(file) SID \(row[sid])"
                #expect(ste.config.description == String(row[config]), "\(context)")
                #expect(ste.s1ContextPointer == (try parseNumber(row[cdAddress])), "\(context)")
                #expect(UInt64(ste.s1CDMax) == (try parseNumber(row[s1cdmax])), "\(context)")
                #expect(UInt64(ste.s1DSS.rawValue) == (try parseNumber(row[s1dss])), "\(context)")
                #expect(UInt64(ste.s1Fmt.rawValue) == (try parseNumber(row[s1fmt])), "\(context)")
                #expect(UInt64(ste.eats) == (try parseNumber(row[eats])), "\(context)")
                #expect(ste[StreamTableEntry.Field.strw] == (try parseNumber(row[strw])), "\(context)")
                #expect(ste[StreamTableEntry.Field.shcfg] == (try parseNumber(row[shcfg])), "\(context)")
                #expect(ste[StreamTableEntry.Field.s2VMID] == (try parseNumber(row[s2vmid])), "\(context)")
                #expect(try ste.nestingValidated() == ste, "\(context)")

                let cdWord0 = try #require(try parseNumber(row[cdW0]))
                let cd = ContextDescriptor(w0: cdWord0, w1: try #require(try parseNumber(row[ttb0])))
                #expect((cd.isValid ? 1 : 0) == (try parseNumber(row[cdValid])), "\(context)")
                #expect(UInt64(cd.asid) == (try parseNumber(row[asid])), "\(context)")
                #expect(cd[ContextDescriptor.Field.t0sz] == (try parseNumber(row[t0sz])), "\(context)")
                #expect(cd[ContextDescriptor.Field.tg0] == (try parseNumber(row[tg0])), "\(context)")
                #expect(cd[ContextDescriptor.Field.ips] == (try parseNumber(row[ips])), "\(context)")
                #expect(cd[ContextDescriptor.Field.aa64] == (try parseNumber(row[aa64])), "\(context)")
                checked += 1
            }
            #expect(checked == 3, "\(file): one final STE per StreamID 0x8, 0x10, 0x18")
        }
    }

    @Test func stage1BuilderSetsValidConfigTablePointerCDMaxAndDefaultSubstream() throws {
        let ste = StreamTableEntry.stage1(contextTable: 0x4380_4000, cdMax: 2)
        #expect(ste.word(0) == 0x1000_0000_4380_400B) // S1CDMax 2 | S1ContextPtr | CONFIG s1_trans | V
        #expect(ste.word(1) == 0x2)                    // S1DSS substream0
        #expect((2...7).allSatisfy { ste.word($0) == 0 })
        #expect(throws: Never.self) { _ = try ste.nestingValidated() }
    }

    @Test func validCDBuilderMatchesTheShapeLinuxWrites() {
        let cd = ContextDescriptor.valid(asid: 0xBEEF, ttb0: 0x0000_1234_5678_9000)
        #expect(cd.word(0) == 0xBEEF_0200_8000_0000)
        #expect(cd.word(1) == 0x0000_1234_5678_9000)
        #expect(cd.activeASID == 0xBEEF)
        var invalid = cd
        invalid.isValid = false
        #expect(invalid.activeASID == nil)
    }

    @Test(arguments: [(UInt8(0), "abort"), (1, "abort(1)"), (3, "abort(3)"), (4, "bypass"), (5, "s1_trans"),
                      (6, "s2_trans"), (7, "nested")])
    func streamConfigNamesAndAbortingValues(raw: UInt8, name: String) {
        let config = StreamConfig(rawValue: raw)
        #expect(config.description == name)
        #expect(config.aborts == (raw < 4))
        var ste = StreamTableEntry()
        ste.config = config
        #expect(ste.word(0) == UInt64(raw) << 1)
    }

    @Test func s1ContextPointerKeepsBits51To6() {
        var ste = StreamTableEntry()
        ste.s1ContextPointer = 0xFFFF_FFFF_FFFF_FFFF
        #expect(ste.word(0) == 0x000F_FFFF_FFFF_FFC0)
        #expect(ste.s1ContextPointer == 0x000F_FFFF_FFFF_FFC0)
        #expect(!ste.isValid)
        #expect(ste.config == .abort)
        #expect(ste.s1CDMax == 0)
    }

    @Test func s1CDMaxAtItsMaximumGivesTwoToThe31CDs() {
        var ste = StreamTableEntry()
        ste.s1CDMax = 31
        #expect(ste.word(0) == 0xF800_0000_0000_0000)
        #expect(ste.contextDescriptorCount == 1 << 31)
    }

    // MARK: Nesting rules (arm_smmu_validate_vste)

    @Test func nestingMasksAreTheUnionOfTheFieldsUserSpaceMaySet() {
        typealias F = StreamTableEntry.Field
        #expect(StreamTableEntry.nestingAllowedW0 == 0xF80F_FFFF_FFFF_FFFF)
        #expect(StreamTableEntry.nestingAllowedW0 == F.valid.mask | F.config.mask | F.s1Fmt.mask | F.s1ContextPtr.mask
                | F.s1CDMax.mask)
        #expect(StreamTableEntry.nestingAllowedW1 == 0x3800_00FF)
        #expect(StreamTableEntry.nestingAllowedW1 == F.s1DSS.mask | F.s1CIR.mask | F.s1COR.mask | F.s1CSH.mask
                | F.s1StallD.mask | F.eats.mask)
    }

    @Test func invalidSTEIsAcceptedAsAnAllZeroAbortSTEWhateverElseItHolds() throws {
        let bytes = [UInt8](repeating: 0xFF, count: 64)
        var ste = try StreamTableEntry(bytes: bytes)
        ste.isValid = false
        #expect(ste.word(0) == 0xFFFF_FFFF_FFFF_FFFE)
        let installed = try ste.nestingValidated()
        #expect(installed == StreamTableEntry())
        #expect(installed.bytes == [UInt8](repeating: 0, count: 64))
    }

    @Test func linuxSTEIsAcceptedUnchanged() throws {
        #expect(try Self.linuxSTE.nestingValidated() == Self.linuxSTE)
    }

    @Test(arguments: (0..<64).filter { 0xF80F_FFFF_FFFF_FFFF & (UInt64(1) << UInt64($0)) == 0 })
    func aW0BitOutsideTheNestingMaskIsRejectedWithExactlyThatBit(bit: Int) {
        let ste = StreamTableEntry(w0: Self.linuxSTE.word(0) | UInt64(1) << UInt64(bit), w1: 0xD6)
        #expect(throws: NestedSTEError.disallowedBitsW0(UInt64(1) << UInt64(bit))) { try ste.nestingValidated() }
    }

    @Test func allW0BitsOutsideTheMaskAreReportedTogether() {
        let ste = StreamTableEntry(w0: 0xFFFF_FFFF_FFFF_FFFF, w1: 0)
        #expect(throws: NestedSTEError.disallowedBitsW0(0x07F0_0000_0000_0000)) { try ste.nestingValidated() }
    }

    @Test(arguments: (0..<64).filter { 0x3800_00FF & (UInt64(1) << UInt64($0)) == 0 })
    func aW1BitOutsideTheNestingMaskIsRejectedWithExactlyThatBit(bit: Int) {
        let ste = StreamTableEntry(w0: Self.linuxSTE.word(0), w1: 0xD6 | UInt64(1) << UInt64(bit))
        #expect(throws: NestedSTEError.disallowedBitsW1(UInt64(1) << UInt64(bit))) { try ste.nestingValidated() }
    }

    @Test func allW1BitsOutsideTheMaskAreReportedTogether() {
        let ste = StreamTableEntry(w0: 0x1, w1: 0xFFFF_FFFF_FFFF_FFFF)
        #expect(throws: NestedSTEError.disallowedBitsW1(0xFFFF_FFFF_C7FF_FF00)) { try ste.nestingValidated() }
    }

    @Test(arguments: (4..<64).filter { 0xF80F_FFFF_FFFF_FFFF & (UInt64(1) << UInt64($0)) != 0 })
    func aW0BitInsideTheNestingMaskIsAccepted(bit: Int) throws {
        let ste = StreamTableEntry(w0: Self.linuxSTE.word(0) | UInt64(1) << UInt64(bit), w1: 0xD6)
        #expect(try ste.nestingValidated() == ste)
    }

    @Test(arguments: [0, 1, 2, 3, 4, 5, 6, 7, 27])
    func aW1BitInsideTheNestingMaskOtherThanEATSIsAccepted(bit: Int) throws {
        let ste = StreamTableEntry(w0: Self.linuxSTE.word(0), w1: UInt64(1) << UInt64(bit))
        #expect(try ste.nestingValidated() == ste)
    }

    @Test(arguments: [UInt8(1), 2, 3, 6, 7])
    func configOtherThanAbortBypassOrS1TransIsRejected(config: UInt8) {
        var ste = Self.linuxSTE
        ste.config = StreamConfig(rawValue: config)
        #expect(throws: NestedSTEError.disallowedConfig(StreamConfig(rawValue: config))) { try ste.nestingValidated() }
    }

    @Test(arguments: [StreamConfig.abort, .bypass, .s1Translate])
    func abortBypassAndS1TransAreAccepted(config: StreamConfig) throws {
        var ste = Self.linuxSTE
        ste.config = config
        #expect(try ste.nestingValidated() == ste)
    }

    @Test(arguments: [UInt8(2), 3])
    func eatsOtherThanAbortOrTranslateIsRejected(eats: UInt8) {
        var ste = Self.linuxSTE
        ste.eats = eats
        #expect(ste.word(1) == 0xD6 | UInt64(eats) << 28)
        #expect(throws: NestedSTEError.disallowedEATS(eats)) { try ste.nestingValidated() }
    }

    @Test(arguments: [UInt8(0), 1])
    func eatsAbortOrTranslateIsAccepted(eats: UInt8) throws {
        var ste = Self.linuxSTE
        ste.eats = eats
        #expect(try ste.nestingValidated() == ste)
    }

    @Test func disallowedBitsAreReportedBeforeConfigAndEATS() {
        // The kernel checks the masks first, then CONFIG, then EATS.
        let nestedWithStrayBits = StreamTableEntry(w0: 0x0010_0000_0000_000F, w1: 0x3000_0000)
        #expect(throws: NestedSTEError.disallowedBitsW0(0x0010_0000_0000_0000)) {
            try nestedWithStrayBits.nestingValidated()
        }
        let nestedWithBadEATS = StreamTableEntry(w0: 0xF, w1: 0x3000_0000)
        #expect(throws: NestedSTEError.disallowedConfig(.nested)) { try nestedWithBadEATS.nestingValidated() }
    }

    @Test func wordsTwoToSevenAreClearedInTheInstalledSTE() throws {
        let stage2Garbage: [UInt64] = [0x1111, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666]
        let bytes = littleEndianBytes(0x0000_0000_4380_400B, 0xD6) + stage2Garbage.flatMap { littleEndianBytes($0) }
        let ste = try StreamTableEntry(bytes: bytes)
        #expect(ste.word(7) == 0x6666)
        let installed = try ste.nestingValidated()
        #expect(installed.word(0) == 0x0000_0000_4380_400B)
        #expect(installed.word(1) == 0xD6)
        for i in 2..<8 { #expect(installed.word(i) == 0, "word \(i)") }
    }

    @Test func randomSTEsAreJudgedLikeTheKernelWithoutTrapping() {
        var rng = SplitMix64(seed: 0x57E0_57E0)
        for round in 0..<20_000 {
            // Bias towards valid, mostly-allowed STEs so that every branch is reached.
            var w0 = rng.next(), w1 = rng.next()
            if round % 2 == 0 { w0 &= 0xF80F_FFFF_FFFF_FFFF; w1 &= 0x3800_00FF }
            if round % 4 == 0 { w0 |= 1 }
            let ste = StreamTableEntry(w0: w0, w1: w1, w2: rng.next(), w3: rng.next())
            let expected: Result<StreamTableEntry, NestedSTEError>
            if w0 & 1 == 0 {
                expected = .success(StreamTableEntry())
            } else if w0 & ~0xF80F_FFFF_FFFF_FFFF != 0 {
                expected = .failure(.disallowedBitsW0(w0 & ~0xF80F_FFFF_FFFF_FFFF))
            } else if w1 & ~0x3800_00FF != 0 {
                expected = .failure(.disallowedBitsW1(w1 & ~0x3800_00FF))
            } else if ![0, 4, 5].contains((w0 >> 1) & 0x7) {
                expected = .failure(.disallowedConfig(StreamConfig(rawValue: UInt8((w0 >> 1) & 0x7))))
            } else if (w1 >> 28) & 0x3 > 1 {
                expected = .failure(.disallowedEATS(UInt8((w1 >> 28) & 0x3)))
            } else {
                expected = .success(StreamTableEntry(w0: w0, w1: w1))
            }
            let actual = Result { () throws(NestedSTEError) in try ste.nestingValidated() }
            #expect(actual == expected, "w0 \(hex(w0)) w1 \(hex(w1))")
            _ = (ste.s1ContextPointer, ste.contextDescriptorCount, ste.translatesStage1, ste.config.description)
        }
    }

    @Test func nestedSTEErrorsDescribeTheOffendingBits() {
        #expect(NestedSTEError.disallowedBitsW0(0x0010_0000_0000_0000).description.contains("0x10000000000000"))
        #expect(NestedSTEError.disallowedEATS(2).description.contains("2"))
    }
}
