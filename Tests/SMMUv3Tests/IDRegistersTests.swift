import SMMUv3
import Testing

private typealias Field = IDRegisters.Field

/// Where the SMMUv3 spec (IHI 0070 §6.3.1-6.3.8; QEMU's `smmuv3-internal.h` `FIELD(IDRn, …)`, the
/// kernel's `arm-smmu-v3.h` `IDR0_*`/`IDR1_*`/`IDR3_*`/`IDR5_*`/`IIDR_*`) puts each field, written out
/// by hand: register and in-place mask.
private let specifiedFields: [(field: Field, register: IDRegisters.Register, mask: UInt32)] = [
    (.s2p, .idr0, 1 << 0), (.s1p, .idr0, 1 << 1), (.ttf, .idr0, 0x0000_000C), (.cohacc, .idr0, 1 << 4),
    (.btm, .idr0, 1 << 5), (.httu, .idr0, 0x0000_00C0), (.dormhint, .idr0, 1 << 8), (.hyp, .idr0, 1 << 9),
    (.ats, .idr0, 1 << 10), (.ns1ats, .idr0, 1 << 11), (.asid16, .idr0, 1 << 12), (.msi, .idr0, 1 << 13),
    (.sev, .idr0, 1 << 14), (.atos, .idr0, 1 << 15), (.pri, .idr0, 1 << 16), (.vmw, .idr0, 1 << 17),
    (.vmid16, .idr0, 1 << 18), (.cd2l, .idr0, 1 << 19), (.vatos, .idr0, 1 << 20), (.ttEndian, .idr0, 0x0060_0000),
    (.atsRecErr, .idr0, 1 << 23), (.stallModel, .idr0, 0x0300_0000), (.termModel, .idr0, 1 << 26),
    (.stLevel, .idr0, 0x1800_0000), (.rmeImpl, .idr0, 1 << 30),
    (.sidSize, .idr1, 0x0000_003F), (.ssidSize, .idr1, 0x0000_07C0), (.priqs, .idr1, 0x0000_F800),
    (.evtqs, .idr1, 0x001F_0000), (.cmdqs, .idr1, 0x03E0_0000), (.attrPermsOvr, .idr1, 1 << 26),
    (.attrTypesOvr, .idr1, 1 << 27), (.rel, .idr1, 1 << 28), (.queuesPreset, .idr1, 1 << 29),
    (.tablesPreset, .idr1, 1 << 30), (.ecmdq, .idr1, 1 << 31),
    (.baVATOS, .idr2, 0x0000_03FF),
    (.had, .idr3, 1 << 2), (.pbha, .idr3, 1 << 3), (.xnx, .idr3, 1 << 4), (.pps, .idr3, 1 << 5), (.mpam, .idr3, 1 << 7),
    (.fwb, .idr3, 1 << 8), (.stt, .idr3, 1 << 9), (.ril, .idr3, 1 << 10), (.bbml, .idr3, 0x0000_1800),
    (.e0pd, .idr3, 1 << 13), (.ptwnnc, .idr3, 1 << 14), (.dpt, .idr3, 1 << 15), (.pasidtt, .idr3, 1 << 16),
    (.epan, .idr3, 1 << 17), (.s1pi, .idr3, 1 << 18), (.s2pi, .idr3, 1 << 19), (.s2po, .idr3, 1 << 20),
    (.the, .idr3, 1 << 21), (.mtePerm, .idr3, 1 << 22), (.aie, .idr3, 1 << 23),
    (.idr4ImplementationDefined, .idr4, 0xFFFF_FFFF),
    (.oas, .idr5, 0x0000_0007), (.gran4K, .idr5, 1 << 4), (.gran16K, .idr5, 1 << 5), (.gran64K, .idr5, 1 << 6),
    (.ds, .idr5, 1 << 7), (.d128, .idr5, 1 << 8), (.vax, .idr5, 0x0000_0C00), (.stallMax, .idr5, 0xFFFF_0000),
    (.implementer, .iidr, 0x0000_0FFF), (.revision, .iidr, 0x0000_F000), (.variant, .iidr, 0x000F_0000),
    (.productID, .iidr, 0xFFF0_0000),
    (.archMinorRev, .aidr, 0x0000_000F), (.archMajorRev, .aidr, 0x0000_00F0),
]

/// The real-kernel rig's pSMMU (QEMU's emulated SMMUv3, `stage=nested`).
private let rig = IDRegisters.qemuEmulatedSMMUv3

/// A pSMMU that has everything: every capability, no restriction, every size and level at its
/// largest defined value, stall and terminate, mixed endianness, and some implementation values.
/// ``IDRegisters/common(_:)`` of it alone is itself.
private let everything: IDRegisters = {
    var registers = IDRegisters(idr: [], iidr: 0x0481_243B, aidr: 0x2)
    for field in Field.all {
        switch field.combination {
        case .everyPSMMU: registers[field] = field.maxValue
        case .smallest(let largestDefined): registers[field] = largestDefined
        default: break
        }
    }
    registers[.baVATOS] = 0x12
    registers[.idr4ImplementationDefined] = 0xDEAD_BEEF
    return registers
}()

private func fields(_ matching: (IDRegisters.Combination) -> Bool) -> [Field] {
    Field.all.filter { matching($0.combination) }
}

private func with(_ registers: IDRegisters, _ field: Field, _ value: UInt32) -> IDRegisters {
    var copy = registers
    copy[field] = value
    return copy
}

@Suite struct IDRegisterFieldTableTests {
    @Test func everyFieldSitsWhereTheSpecPutsIt() {
        #expect(Field.all.count == specifiedFields.count, "a field was added to IDRegisters.Field.all but not here")
        for (field, register, mask) in specifiedFields {
            #expect(field.register == register, "\(field)")
            #expect(field.mask == mask, "\(field): mask 0x\(String(field.mask, radix: 16))")
            #expect(Field.all.contains(field), "\(field) is not in Field.all")
        }
    }

    @Test func noTwoFieldsOfARegisterOverlap() {
        for register in IDRegisters.Register.allCases {
            var seen: UInt32 = 0
            for field in register.fields {
                #expect(seen & field.mask == 0, "\(field) overlaps another field of \(register)")
                seen |= field.mask
            }
        }
        #expect(Set(Field.all).count == Field.all.count)
    }

    @Test func registersSitAtTheirPage0Offsets() {
        #expect(IDRegisters.Register.allCases.map(\.offset) == [0x0, 0x4, 0x8, 0xC, 0x10, 0x14, 0x18, 0x1C])
        #expect(IDRegisters.Register.allCases.map(\.description) == ["IDR0", "IDR1", "IDR2", "IDR3", "IDR4", "IDR5", "IIDR", "AIDR"])
    }

    @Test func writingAFieldChangesOnlyItsBits() {
        for field in Field.all {
            var registers = IDRegisters(idr: Array(repeating: 0xFFFF_FFFF, count: 6), iidr: 0xFFFF_FFFF, aidr: 0xFFFF_FFFF)
            registers[field] = 0
            #expect(registers[field.register] == ~field.mask, "\(field)")
            registers[field] = 0xFFFF_FFFF // extra bits are discarded
            #expect(registers[field.register] == 0xFFFF_FFFF, "\(field)")
        }
    }

    @Test func aShortIDRArrayReadsAsZerosRatherThanTrapping() {
        var registers = IDRegisters(idr: [])
        registers.idr = [0x3]
        #expect(registers[.idr5] == 0 && registers.oas == 0 && registers.s1p)
        registers.ril = true
        #expect(registers.idr == [0x3, 0, 0, 0x400])
        #expect(IDRegisters.common([registers]) == IDRegisters(idr: [0x3, 0, 0, 0x400]))
    }

    @Test func rigValuesDecodeToQEMUsNestedSMMUv3() {
        #expect(rig.s2p && rig.s1p)
        #expect(rig.ttf == .aarch64)
        #expect(rig.cohacc && rig.asid16 && rig.vmid16)
        #expect(!rig.btm && !rig.ats && !rig.pri && !rig.msi && !rig.sev && !rig.cd2l && !rig.hyp && !rig.ns1ats)
        #expect(rig.httu == .none)
        #expect(rig.ttEndian == .littleEndian)
        #expect(rig.stallModel == .terminateOnly)
        #expect(rig.termModel)
        #expect(rig.stLevel == .twoLevel)
        #expect(rig.sidSize == 16 && rig.ssidSize == 0 && rig.priqs == 0 && rig.evtqs == 19 && rig.cmdqs == 19)
        #expect(rig[flag: .had] && rig[flag: .xnx] && rig.ril && rig.bbml == 2 && !rig.fwb)
        #expect(rig.oas == 4 && rig.outputAddressBits == 44)
        #expect(rig.granules == [.size4K, .size16K, .size64K])
        #expect(rig.vax == 0 && rig.virtualAddressBits == 48)
        #expect(rig.stallMax == 0)
        #expect(rig.architectureRevision == (0, 1))
    }

    @Test func typedAccessorsWriteTheirFields() {
        var registers = IDRegisters(idr: [])
        registers.sidSize = 20
        registers.ssidSize = 8
        registers.stallModel = .stallForced
        registers.ttEndian = .bigEndian
        registers.ttf = [.aarch32, .aarch64]
        registers.granules = [.size64K]
        registers.httu = .accessFlagAndDirty
        registers.stLevel = .twoLevel
        registers.oas = 5
        registers.vax = 1
        registers.ril = true
        registers.stallMax = 0x80
        #expect(registers.idr[0] == 0x0A60_008C) // ST_LEVEL 1, STALL 2, TTENDIAN 3, HTTU 2, TTF 3
        #expect(registers.idr[1] == 0x0000_0214)
        #expect(registers.idr[3] == 0x0000_0400)
        #expect(registers.idr[5] == 0x0080_0445)
        #expect(registers.outputAddressBits == 48 && registers.virtualAddressBits == 52)
        registers.vax = 3
        #expect(registers.virtualAddressBits == nil)
    }

    @Test func descriptionNamesTheSetFieldsOfEachRegister() {
        let text = rig.description
        #expect(text.contains("IDR0=0x0d44101b [S2P S1P TTF=AArch64 COHACC ASID16 VMID16 TTENDIAN=LE STALL_MODEL=terminate TERM_MODEL ST_LEVEL=2-level]"), "\(text)")
        #expect(text.contains("IDR1=0x02730010 [SIDSIZE=16 EVENTQS=19 CMDQS=19]"), "\(text)")
        #expect(text.contains("IDR2=0x00000000 "), "\(text)")
        #expect(text.contains("IDR3=0x00001414 [HAD XNX RIL BBML=2]"), "\(text)")
        #expect(text.contains("IDR5=0x00000074 [OAS=44-bit GRAN4K GRAN16K GRAN64K]"), "\(text)")
        #expect(text.hasSuffix("AIDR=0x00000001 [ArchMinorRev=1]"), "\(text)")
        let reserved = IDRegisters(idr: [0x8000_0001])
        #expect(reserved.description.hasPrefix("IDR0=0x80000001 [S2P RES0=0x80000000]"), "\(reserved)")
    }
}

@Suite struct CommonIDRegistersTests {
    @Test func noPSMMUsGiveNoRegisters() {
        #expect(IDRegisters.common([IDRegisters]()) == nil)
        #expect(IDRegisters.common(Set<IDRegisters>()) == nil)
    }

    @Test func theRigsRegistersIntersectedWithThemselvesStayThemselves() {
        #expect(IDRegisters.common([rig]) == rig)
        #expect(IDRegisters.common([rig, rig, rig]) == rig)
        #expect(IDRegisters.common([rig][...]) == rig)
    }

    @Test func aPSMMUWithEverythingIsItsOwnCommonGround() {
        #expect(IDRegisters.common([everything]) == everything)
    }

    @Test func theRigBesideARicherPSMMUGivesTheRig() {
        // An SMMUv3.2 with more of everything: the rig is what both offer.
        #expect(IDRegisters.common([rig, everything]) == rig)
        #expect(IDRegisters.common([everything, rig]) == rig)
    }

    // MARK: One rule per field

    @Test(arguments: fields { $0 == .everyPSMMU })
    func aCapabilityIsAdvertisedOnlyIfEveryPSMMUHasIt(_ field: IDRegisters.Field) {
        #expect(IDRegisters.common([everything, everything])?[field] == field.maxValue, "set on all → advertised")
        let lacking = with(everything, field, 0)
        // Nothing else changes, but for what depends on the field: BA_VATOS (RES0 without VATOS) and
        // a 56-bit OAS (needs D128, else 52).
        var expected = lacking
        if field == .vatos { expected[.baVATOS] = 0 }
        if field == .d128 { expected.oas = 6 }
        #expect(IDRegisters.common([everything, lacking]) == expected, "missing on one → not advertised")
        #expect(IDRegisters.common([lacking, everything, everything]) == expected)
    }

    @Test(arguments: fields { $0 == .anyPSMMU })
    func aRestrictionIsAdvertisedIfAnyPSMMUHasIt(_ field: IDRegisters.Field) {
        #expect(everything[field] == 0)
        let restricted = with(everything, field, 1)
        #expect(IDRegisters.common([everything, restricted]) == restricted)
        #expect(IDRegisters.common([restricted, everything]) == restricted)
        #expect(IDRegisters.common([everything, everything]) == everything)
    }

    @Test(arguments: fields { if case .smallest = $0 { true } else { false } })
    func theSmallestSizeOrLevelWins(_ field: IDRegisters.Field) throws {
        guard case .smallest(let largestDefined) = field.combination else { return }
        let small = with(everything, field, 1), large = with(everything, field, largestDefined)
        #expect(IDRegisters.common([large, small]) == small)
        #expect(IDRegisters.common([small, large, large]) == small)
        #expect(IDRegisters.common([large, large]) == large)
        let none = with(everything, field, 0)
        #expect(IDRegisters.common([none, large]) == none)
        if largestDefined < field.maxValue {
            // A reserved encoding promises nothing known: read as 0, even on every pSMMU.
            let reserved = with(everything, field, largestDefined + 1)
            #expect(IDRegisters.common([reserved, reserved])?[field] == 0)
            #expect(IDRegisters.common([reserved, large])?[field] == 0)
        }
    }

    @Test(arguments: fields { $0 == .cleared })
    func presetQueuesAndTablesAreClearedBecauseTheGuestOwnsTheVSMMUs(_ field: IDRegisters.Field) {
        // arm_smmu_device_hw_probe refuses REL/QUEUES_PRESET/TABLES_PRESET ("embedded implementation
        // not supported"); the vSMMU's queues and tables are the guest's in any case.
        let preset = with(rig, field, 1)
        #expect(IDRegisters.common([preset]) == rig)
        #expect(IDRegisters.common([preset, preset]) == rig)
    }

    @Test(arguments: fields { $0 == .sameRegisterOrZero })
    func anImplementationFieldIsKeptOnlyIfItsWholeRegisterAgrees(_ field: IDRegisters.Field) {
        let a = with(with(everything, .vatos, 1), field, 0x5), b = with(a, field, 0x6)
        #expect(IDRegisters.common([a, a])?[field] == 0x5)
        let mixed = IDRegisters.common([a, b])
        #expect(mixed?[field] == 0)
        #expect(mixed?[field.register] == 0, "the whole \(field.register) is dropped, not just \(field.name)")
        #expect(mixed.map { var m = $0; m[field.register] = a[field.register]; return m } == a, "other registers keep theirs")
    }

    // MARK: TTF, TTENDIAN, STALL_MODEL

    @Test func translationTableFormatsIntersect() {
        let both = with(rig, .ttf, 0b11), only64 = rig, only32 = with(rig, .ttf, 0b01)
        #expect(IDRegisters.common([both, both])?.ttf == [.aarch32, .aarch64])
        #expect(IDRegisters.common([both, only64])?.ttf == .aarch64)
        #expect(IDRegisters.common([only32, both])?.ttf == .aarch32)
    }

    @Test func noCommonTranslationTableFormatGivesTheReservedTTFArmSmmuDeviceHwProbeRefuses() {
        // arm_smmu_device_hw_probe: TTF neither AArch64 nor AArch32+64 → "AArch64 table format not supported!"
        let only32 = with(rig, .ttf, 0b01)
        #expect(IDRegisters.common([only32, rig])?[.ttf] == 0b00)
    }

    @Test func translationTableEndiannessIsTheIntersectionOfTheSupportedOnes() {
        typealias E = IDRegisters.TTEndian
        // (a, b) → common: mixed = {LE, BE}; reserved = {} (unknown meaning).
        let expected: [(E, E, E)] = [
            (.mixed, .mixed, .mixed), (.mixed, .littleEndian, .littleEndian), (.mixed, .bigEndian, .bigEndian),
            (.littleEndian, .littleEndian, .littleEndian), (.bigEndian, .bigEndian, .bigEndian),
            (.littleEndian, .bigEndian, .reserved), (.mixed, .reserved, .reserved), (.reserved, .reserved, .reserved),
            (.littleEndian, .reserved, .reserved), (.bigEndian, .reserved, .reserved),
        ]
        for (a, b, result) in expected {
            var x = rig, y = rig
            x.ttEndian = a
            y.ttEndian = b
            #expect(IDRegisters.common([x, y])?.ttEndian == result, "\(a) ∩ \(b)")
            #expect(IDRegisters.common([y, x])?.ttEndian == result, "\(b) ∩ \(a)")
        }
    }

    @Test func noCommonEndiannessGivesTheReservedTTENDIANArmSmmuDeviceHwProbeRefuses() {
        // arm_smmu_device_hw_probe: TTENDIAN 0b01 → "unknown/unsupported TT endianness!", -ENXIO.
        var big = rig
        big.ttEndian = .bigEndian
        #expect(IDRegisters.common([rig, big])?[.ttEndian] == 0b01)
    }

    @Test func stallModelIsTheConservativeOne() {
        typealias S = IDRegisters.StallModel
        let expected: [(S, S, S)] = [
            (.stallAndTerminate, .stallAndTerminate, .stallAndTerminate),
            (.terminateOnly, .terminateOnly, .terminateOnly),
            (.stallForced, .stallForced, .stallForced),
            // One without stall: nobody may stall.
            (.stallAndTerminate, .terminateOnly, .terminateOnly),
            // CD.S = 1 is valid on both; CD.S = 0 is not on the stall-forced one.
            (.stallAndTerminate, .stallForced, .stallForced),
            // No faithful answer: terminate only (see common(_:)).
            (.terminateOnly, .stallForced, .terminateOnly),
            // A reserved model is read as terminate only.
            (.reserved, .reserved, .terminateOnly), (.stallAndTerminate, .reserved, .terminateOnly),
            (.stallForced, .reserved, .terminateOnly),
        ]
        for (a, b, result) in expected {
            var x = everything, y = everything
            x.stallModel = a
            y.stallModel = b
            #expect(IDRegisters.common([x, y])?.stallModel == result, "\(a) + \(b)")
            #expect(IDRegisters.common([y, x])?.stallModel == result, "\(b) + \(a)")
        }
    }

    // MARK: AIDR, reserved bits

    @Test func theLowestArchitectureRevisionIsAdvertised() {
        let v31 = with(everything, .archMinorRev, 1), v32 = with(everything, .archMinorRev, 2)
        #expect(IDRegisters.common([v32, v31])?.aidr == 0x1)
        #expect(IDRegisters.common([v31, v32])?.aidr == 0x1)
        // Major first: 3.x (major 0) is below a hypothetical major 1, whatever the minors.
        let v03 = IDRegisters(idr: [], aidr: 0x03), v10 = IDRegisters(idr: [], aidr: 0x10)
        #expect(IDRegisters.common([v10, v03])?.aidr == 0x03)
        #expect(IDRegisters.common([v03, v10])?.aidr == 0x03)
    }

    @Test func reservedBitsAreCleared() {
        let reserved = IDRegisters(
            idr: [0xA000_0000, 0, 0xFFFF_FC00, 0xFF00_0043, 0, 0x0000_F208], iidr: 0, aidr: 0xFFFF_FF00)
        for register in IDRegisters.Register.allCases where register != .idr4 {
            #expect(reserved[register] & register.declaredMask == 0, "\(register): the test sets only reserved bits")
        }
        #expect(IDRegisters.common([reserved]) == IDRegisters(idr: []))
        var withRig = rig
        for register in IDRegisters.Register.allCases { withRig[register] |= reserved[register] }
        #expect(IDRegisters.common([withRig, withRig]) == rig)
    }

    @Test func mixedCollectionsOfManyPSMMUsCombineFieldByField() {
        var a = everything, b = everything, c = everything
        a.sidSize = 16
        b.ssidSize = 10
        c.ril = false
        b.ttEndian = .littleEndian
        c.stallModel = .stallForced
        a[flag: .termModel] = true
        let common = IDRegisters.common([a, b, c])
        #expect(common?.sidSize == 16 && common?.ssidSize == 10 && common?.ril == false)
        #expect(common?.ttEndian == .littleEndian && common?.stallModel == .stallForced && common?.termModel == true)
        #expect(common?.cmdqs == 19 && common?.btm == true)
    }

    // MARK: Dependencies the OR and minimum rules could break

    @Test func splitStageATSRestrictionIsDroppedWhenATSIsNotCommon() {
        // NS1ATS is RES0 unless ATS, S1P and S2P: OR-ing a pSMMU's NS1ATS beside one without ATS
        // would otherwise advertise it with ATS = 0.
        let noATS = with(everything, .ats, 0), restricted = with(everything, .ns1ats, 1)
        #expect(IDRegisters.common([noATS, restricted]) == noATS)
        let noS2 = with(everything, .s2p, 0)
        #expect(IDRegisters.common([noS2, restricted])?.ns1ats == false)
        #expect(IDRegisters.common([everything, restricted])?.ns1ats == true)
    }

    @Test func vatosBaseIsDroppedWithoutVATOS() {
        let a = with(everything, .vatos, 0)
        #expect(IDRegisters.common([a, a])?[.baVATOS] == 0)
        #expect(IDRegisters.common([everything, everything])?[.baVATOS] == 0x12)
    }

    @Test func stallMaxIsDroppedWhenOnlyTerminateIsCommon() {
        var terminate = everything
        terminate.stallModel = .reserved // read as terminate only; its STALL_MAX was not RES0
        #expect(IDRegisters.common([terminate, everything])?.stallMax == 0)
        #expect(IDRegisters.common([everything, everything])?.stallMax == 0xFFFF)
    }

    @Test func lpa2IsDroppedWithoutA4KOr16KGranuleInCommon() {
        let only4K = with(with(everything, .gran16K, 0), .gran64K, 0)
        let only16K = with(with(everything, .gran4K, 0), .gran64K, 0)
        let common = IDRegisters.common([only4K, only16K])
        #expect(common?.granules == [])
        #expect(common?[flag: .ds] == false)
        #expect(common?.vax == 0, "52-bit VA needs GRAN64K or DS")
        #expect(common?.oas == 7, "56-bit OA stays with D128")
        #expect(IDRegisters.common([only4K, only4K])?[flag: .ds] == true)
    }

    @Test func fiftyTwoBitAddressesNeedAGranuleThatCanMapThemOnEveryPSMMU() {
        // A: 52-bit VA/PA through the 64K granule; B: through LPA2 (DS) with 4K. Neither way is common.
        var a = IDRegisters(idr: [])
        a.granules = [.size4K, .size64K]
        a.vax = 1
        a.oas = 6
        var b = IDRegisters(idr: [])
        b.granules = [.size4K]
        b[flag: .ds] = true
        b.vax = 1
        b.oas = 6
        #expect(IDRegisters.common([a])?.vax == 1 && IDRegisters.common([b])?.vax == 1)
        let common = IDRegisters.common([a, b])
        #expect(common?.granules == [.size4K])
        #expect(common?.vax == 0 && common?.virtualAddressBits == 48)
        #expect(common?.oas == 5 && common?.outputAddressBits == 48)
    }

    @Test func fiftySixBitOutputNeedsD128() {
        var a = IDRegisters(idr: [])
        a.oas = 7
        a.granules = [.size64K]
        #expect(IDRegisters.common([a])?.oas == 6)
        a[flag: .d128] = true
        #expect(IDRegisters.common([a])?.oas == 7)
    }
}

@Suite struct SimulatedDefaultRegistersTests {
    @Test func theSimulatedDefaultIsQEMUsSMMUv3WithATSBecauseTheSimulatorModelsAnATC() {
        var expected = IDRegisters.qemuEmulatedSMMUv3
        #expect(!expected.ats)
        expected.idr[0] |= 1 << 10
        #expect(IDRegisters.simulatedDefault == expected)
        #expect(IDRegisters.simulatedDefault.ats)
    }
}

/// What a vSMMU advertises: only the fields the kernel's UAPI says a VMM may take from
/// `IOMMU_GET_HW_INFO` (plus OAS and ATS), combined over every pSMMU; S1P and COHACC assumed.
@Suite struct AdvertisedRegistersTests {
    static let everything = IDRegisters(idr: [0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF],
                                        iidr: 0x43B, aidr: 0x2)

    @Test func onlyTheFieldsTheKernelSaysAVMMMayUseAreForwarded() throws {
        var hardware = IDRegisters.qemuEmulatedSMMUv3
        hardware.btm = true
        hardware[.httu] = 2
        hardware[flag: .mpam] = true
        let guest = try #require(IDRegisters.advertised([hardware]))
        // Not supported by the kernel for nesting, or the host's: never forwarded.
        #expect(!guest.btm && guest[.httu] == 0 && !guest[flag: .mpam])
        #expect(!guest[flag: .s2p] && !guest.vmid16 && !guest[flag: .had] && !guest[flag: .xnx])
        #expect(guest[.cmdqs] == 0 && guest[.evtqs] == 0)
        // Forwarded as the hardware has them.
        for field in IDRegisters.forwardedToGuests {
            #expect(guest[field] == hardware[field], "\(field)")
        }
        // Assumed, per the UAPI comment.
        #expect(guest[flag: .s1p] && guest[flag: .cohacc])
    }

    @Test func everyOtherBitIsZeroEvenWhenTheHardwareSetsThemAll() throws {
        let guest = try #require(IDRegisters.advertised([Self.everything]))
        var allowed = IDRegisters(idr: [])
        for field in IDRegisters.forwardedToGuests + [.s1p, .cohacc] { allowed[field] = field.maxValue }
        for register in 0..<6 {
            #expect(guest.idr[register] & ~allowed.idr[register] == 0, "IDR\(register) 0x\(String(guest.idr[register], radix: 16))")
        }
    }

    @Test func aFeatureOneOfThePSMMUsLacksIsNotAdvertised() throws {
        var a = IDRegisters.qemuEmulatedSMMUv3, b = IDRegisters.qemuEmulatedSMMUv3
        a.ats = true
        b[flag: .ril] = false
        let guest = try #require(IDRegisters.advertised([a, b]))
        #expect(!guest.ats && !guest[flag: .ril])
        #expect(try #require(IDRegisters.advertised([a])).ats)
    }

    @Test func withoutGRAN64KNeitherA52BitVANorA52BitOAIsAdvertised() throws {
        var hardware = IDRegisters.qemuEmulatedSMMUv3
        hardware[flag: .gran64K] = false
        hardware[flag: .ds] = true
        hardware[.vax] = 1
        hardware[.oas] = 6
        let guest = try #require(IDRegisters.advertised([hardware]))
        #expect(guest[.vax] == 0 && guest[.oas] == 5)
    }

    @Test func noPSMMUAdvertisesNothing() {
        #expect(IDRegisters.advertised([IDRegisters]()) == nil)
    }
}
