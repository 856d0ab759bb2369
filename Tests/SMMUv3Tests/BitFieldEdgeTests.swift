import SMMUv3
import Testing

/// A declared field and where the reference says it lives: its word and its in-place mask, written
/// out by hand from `shared/reference/smmuv3.md`.
struct FieldDeclaration: Sendable, CustomTestStringConvertible {
    enum Structure: String, Sendable { case command, ste, cd, event }

    var structure: Structure
    var name: String
    var field: BitField
    var word: Int
    var mask: UInt64

    var testDescription: String { "\(structure.rawValue).\(name) \(field)" }

    /// Every field of ``Command/Field``, ``StreamTableEntry/Field``, ``ContextDescriptor/Field`` and
    /// ``EventRecord/Field``. A field added to the module must be added here.
    static let all: [FieldDeclaration] = command + ste + cd + event

    static let command: [FieldDeclaration] = [
        .init(structure: .command, name: "opcode", field: Command.Field.opcode, word: 0, mask: 0x0000_0000_0000_00FF),
        .init(structure: .command, name: "ssec", field: Command.Field.ssec, word: 0, mask: 0x0000_0000_0000_0400),
        .init(structure: .command, name: "ssv", field: Command.Field.ssv, word: 0, mask: 0x0000_0000_0000_0800),
        .init(structure: .command, name: "substreamID", field: Command.Field.substreamID, word: 0, mask: 0x0000_0000_FFFF_F000),
        .init(structure: .command, name: "streamID", field: Command.Field.streamID, word: 0, mask: 0xFFFF_FFFF_0000_0000),
        .init(structure: .command, name: "leaf", field: Command.Field.leaf, word: 1, mask: 0x0000_0000_0000_0001),
        .init(structure: .command, name: "cfgiRange", field: Command.Field.cfgiRange, word: 1, mask: 0x0000_0000_0000_001F),
        .init(structure: .command, name: "tlbiNum", field: Command.Field.tlbiNum, word: 0, mask: 0x0000_0000_0001_F000),
        .init(structure: .command, name: "tlbiScale", field: Command.Field.tlbiScale, word: 0, mask: 0x0000_0000_01F0_0000),
        .init(structure: .command, name: "vmid", field: Command.Field.vmid, word: 0, mask: 0x0000_FFFF_0000_0000),
        .init(structure: .command, name: "asid", field: Command.Field.asid, word: 0, mask: 0xFFFF_0000_0000_0000),
        .init(structure: .command, name: "tlbiTTL", field: Command.Field.tlbiTTL, word: 1, mask: 0x0000_0000_0000_0300),
        .init(structure: .command, name: "tlbiTG", field: Command.Field.tlbiTG, word: 1, mask: 0x0000_0000_0000_0C00),
        .init(structure: .command, name: "tlbiVA", field: Command.Field.tlbiVA, word: 1, mask: 0xFFFF_FFFF_FFFF_F000),
        .init(structure: .command, name: "tlbiIPA", field: Command.Field.tlbiIPA, word: 1, mask: 0x000F_FFFF_FFFF_F000),
        .init(structure: .command, name: "atcGlobal", field: Command.Field.atcGlobal, word: 0, mask: 0x0000_0000_0000_0200),
        .init(structure: .command, name: "atcSize", field: Command.Field.atcSize, word: 1, mask: 0x0000_0000_0000_003F),
        .init(structure: .command, name: "address", field: Command.Field.address, word: 1, mask: 0xFFFF_FFFF_FFFF_F000),
        .init(structure: .command, name: "prefetchSize", field: Command.Field.prefetchSize, word: 1, mask: 0x0000_0000_0000_001F),
        .init(structure: .command, name: "priGroupID", field: Command.Field.priGroupID, word: 1, mask: 0x0000_0000_0000_01FF),
        .init(structure: .command, name: "priResponse", field: Command.Field.priResponse, word: 1, mask: 0x0000_0000_0000_3000),
        .init(structure: .command, name: "resumeResponse", field: Command.Field.resumeResponse, word: 0, mask: 0x0000_0000_0000_3000),
        .init(structure: .command, name: "resumeSTAG", field: Command.Field.resumeSTAG, word: 1, mask: 0x0000_0000_0000_FFFF),
        .init(structure: .command, name: "syncCS", field: Command.Field.syncCS, word: 0, mask: 0x0000_0000_0000_3000),
        .init(structure: .command, name: "syncMSH", field: Command.Field.syncMSH, word: 0, mask: 0x0000_0000_00C0_0000),
        .init(structure: .command, name: "syncMSIAttr", field: Command.Field.syncMSIAttr, word: 0, mask: 0x0000_0000_0F00_0000),
        .init(structure: .command, name: "syncMSIData", field: Command.Field.syncMSIData, word: 0, mask: 0xFFFF_FFFF_0000_0000),
        .init(structure: .command, name: "syncMSIAddress", field: Command.Field.syncMSIAddress, word: 1, mask: 0x000F_FFFF_FFFF_FFFC),
    ]

    static let ste: [FieldDeclaration] = [
        .init(structure: .ste, name: "valid", field: StreamTableEntry.Field.valid, word: 0, mask: 0x0000_0000_0000_0001),
        .init(structure: .ste, name: "config", field: StreamTableEntry.Field.config, word: 0, mask: 0x0000_0000_0000_000E),
        .init(structure: .ste, name: "s1Fmt", field: StreamTableEntry.Field.s1Fmt, word: 0, mask: 0x0000_0000_0000_0030),
        .init(structure: .ste, name: "s1ContextPtr", field: StreamTableEntry.Field.s1ContextPtr, word: 0, mask: 0x000F_FFFF_FFFF_FFC0),
        .init(structure: .ste, name: "s1CDMax", field: StreamTableEntry.Field.s1CDMax, word: 0, mask: 0xF800_0000_0000_0000),
        .init(structure: .ste, name: "s1DSS", field: StreamTableEntry.Field.s1DSS, word: 1, mask: 0x0000_0000_0000_0003),
        .init(structure: .ste, name: "s1CIR", field: StreamTableEntry.Field.s1CIR, word: 1, mask: 0x0000_0000_0000_000C),
        .init(structure: .ste, name: "s1COR", field: StreamTableEntry.Field.s1COR, word: 1, mask: 0x0000_0000_0000_0030),
        .init(structure: .ste, name: "s1CSH", field: StreamTableEntry.Field.s1CSH, word: 1, mask: 0x0000_0000_0000_00C0),
        .init(structure: .ste, name: "mev", field: StreamTableEntry.Field.mev, word: 1, mask: 0x0000_0000_0008_0000),
        .init(structure: .ste, name: "s2FWB", field: StreamTableEntry.Field.s2FWB, word: 1, mask: 0x0000_0000_0200_0000),
        .init(structure: .ste, name: "s1StallD", field: StreamTableEntry.Field.s1StallD, word: 1, mask: 0x0000_0000_0800_0000),
        .init(structure: .ste, name: "eats", field: StreamTableEntry.Field.eats, word: 1, mask: 0x0000_0000_3000_0000),
        .init(structure: .ste, name: "strw", field: StreamTableEntry.Field.strw, word: 1, mask: 0x0000_0000_C000_0000),
        .init(structure: .ste, name: "shcfg", field: StreamTableEntry.Field.shcfg, word: 1, mask: 0x0000_3000_0000_0000),
        .init(structure: .ste, name: "s2VMID", field: StreamTableEntry.Field.s2VMID, word: 2, mask: 0x0000_0000_0000_FFFF),
        .init(structure: .ste, name: "vtcr", field: StreamTableEntry.Field.vtcr, word: 2, mask: 0x0007_FFFF_0000_0000),
        .init(structure: .ste, name: "s2TTB", field: StreamTableEntry.Field.s2TTB, word: 3, mask: 0x000F_FFFF_FFFF_FFF0),
    ]

    static let cd: [FieldDeclaration] = [
        .init(structure: .cd, name: "t0sz", field: ContextDescriptor.Field.t0sz, word: 0, mask: 0x0000_0000_0000_003F),
        .init(structure: .cd, name: "tg0", field: ContextDescriptor.Field.tg0, word: 0, mask: 0x0000_0000_0000_00C0),
        .init(structure: .cd, name: "irgn0", field: ContextDescriptor.Field.irgn0, word: 0, mask: 0x0000_0000_0000_0300),
        .init(structure: .cd, name: "orgn0", field: ContextDescriptor.Field.orgn0, word: 0, mask: 0x0000_0000_0000_0C00),
        .init(structure: .cd, name: "sh0", field: ContextDescriptor.Field.sh0, word: 0, mask: 0x0000_0000_0000_3000),
        .init(structure: .cd, name: "epd0", field: ContextDescriptor.Field.epd0, word: 0, mask: 0x0000_0000_0000_4000),
        .init(structure: .cd, name: "endi", field: ContextDescriptor.Field.endi, word: 0, mask: 0x0000_0000_0000_8000),
        .init(structure: .cd, name: "valid", field: ContextDescriptor.Field.valid, word: 0, mask: 0x0000_0000_8000_0000),
        .init(structure: .cd, name: "ips", field: ContextDescriptor.Field.ips, word: 0, mask: 0x0000_0007_0000_0000),
        .init(structure: .cd, name: "aa64", field: ContextDescriptor.Field.aa64, word: 0, mask: 0x0000_0200_0000_0000),
        .init(structure: .cd, name: "hd", field: ContextDescriptor.Field.hd, word: 0, mask: 0x0000_0400_0000_0000),
        .init(structure: .cd, name: "ha", field: ContextDescriptor.Field.ha, word: 0, mask: 0x0000_0800_0000_0000),
        .init(structure: .cd, name: "s", field: ContextDescriptor.Field.s, word: 0, mask: 0x0000_1000_0000_0000),
        .init(structure: .cd, name: "r", field: ContextDescriptor.Field.r, word: 0, mask: 0x0000_2000_0000_0000),
        .init(structure: .cd, name: "a", field: ContextDescriptor.Field.a, word: 0, mask: 0x0000_4000_0000_0000),
        .init(structure: .cd, name: "aset", field: ContextDescriptor.Field.aset, word: 0, mask: 0x0000_8000_0000_0000),
        .init(structure: .cd, name: "asid", field: ContextDescriptor.Field.asid, word: 0, mask: 0xFFFF_0000_0000_0000),
        .init(structure: .cd, name: "ttb0", field: ContextDescriptor.Field.ttb0, word: 1, mask: 0x000F_FFFF_FFFF_FFF0),
        .init(structure: .cd, name: "mair", field: ContextDescriptor.Field.mair, word: 3, mask: 0xFFFF_FFFF_FFFF_FFFF),
    ]

    static let event: [FieldDeclaration] = [
        .init(structure: .event, name: "id", field: EventRecord.Field.id, word: 0, mask: 0x0000_0000_0000_00FF),
        .init(structure: .event, name: "ssv", field: EventRecord.Field.ssv, word: 0, mask: 0x0000_0000_0000_0800),
        .init(structure: .event, name: "substreamID", field: EventRecord.Field.substreamID, word: 0, mask: 0x0000_0000_FFFF_F000),
        .init(structure: .event, name: "streamID", field: EventRecord.Field.streamID, word: 0, mask: 0xFFFF_FFFF_0000_0000),
        .init(structure: .event, name: "inputAddress", field: EventRecord.Field.inputAddress, word: 2, mask: 0xFFFF_FFFF_FFFF_FFFF),
        .init(structure: .event, name: "fetchAddress", field: EventRecord.Field.fetchAddress, word: 3, mask: 0xFFFF_FFFF_FFFF_FFFF),
    ]
}

/// A structure that can be made all-zero, so that one generic check serves all four.
protocol BlankStructure: SMMUWords {
    init()
}

extension Command: BlankStructure {
    init() { self.init(w0: 0, w1: 0) }
}
extension StreamTableEntry: BlankStructure {}
extension ContextDescriptor: BlankStructure {}
extension EventRecord: BlankStructure {
    init() { self.init(w0: 0, w1: 0, w2: 0, w3: 0) }
}

/// Calls `body` with the structure type the declaration belongs to.
private func withStructure(_ structure: FieldDeclaration.Structure, _ body: (any BlankStructure.Type) -> Void) {
    switch structure {
    case .command: body(Command.self)
    case .ste: body(StreamTableEntry.self)
    case .cd: body(ContextDescriptor.self)
    case .event: body(EventRecord.self)
    }
}

/// A structure of type `S` with every word set to `fill`.
private func filled<S: BlankStructure>(_ type: S.Type, with fill: UInt64) -> S {
    var value = S()
    for i in 0..<S.wordCount { value.setWord(i, fill) }
    return value
}

/// The words of `value`, for comparisons and messages.
private func words<S: SMMUWords>(_ value: S) -> [String] { (0..<S.wordCount).map { hex(value.word($0)) } }

/// The words of a structure with `mask` in word `index` and `rest` in every other word.
private func expectedWords(count: Int, index: Int, mask: UInt64, rest: UInt64) -> [String] {
    (0..<count).map { hex($0 == index ? mask : rest) }
}

@Suite("Fields at their bit edges")
struct BitFieldEdgeTests {
    @Test(arguments: FieldDeclaration.all)
    func declarationMatchesTheReferenceWordAndBits(_ declaration: FieldDeclaration) {
        #expect(declaration.field.word == declaration.word)
        #expect(hex(declaration.field.mask) == hex(declaration.mask))
        #expect(declaration.field.maxValue == declaration.mask >> UInt64(declaration.field.low))
        #expect(declaration.field.high == 63 - declaration.mask.leadingZeroBitCount)
        #expect(declaration.field.low == declaration.mask.trailingZeroBitCount)
    }

    @Test(arguments: FieldDeclaration.all)
    func allOnesSetsExactlyTheFieldsBits(_ declaration: FieldDeclaration) {
        func check<S: BlankStructure>(_ type: S.Type) {
            var value = filled(S.self, with: 0)
            value[declaration.field] = declaration.field.maxValue
            #expect(words(value) == expectedWords(count: S.wordCount, index: declaration.word, mask: declaration.mask, rest: 0))
            #expect(value[declaration.field] == declaration.field.maxValue)
        }
        withStructure(declaration.structure) { type in check(type) }
    }

    @Test(arguments: FieldDeclaration.all.filter { $0.field.width < 64 })
    func aValueOneBitTooWideIsTruncatedToTheField(_ declaration: FieldDeclaration) {
        func check<S: BlankStructure>(_ type: S.Type) {
            let width = UInt64(declaration.field.width)
            // All ones, one bit wider than the field: the extra top bit is dropped.
            var value = filled(S.self, with: 0)
            value[declaration.field] = (UInt64(1) << (width + 1)) &- 1
            #expect(words(value) == expectedWords(count: S.wordCount, index: declaration.word, mask: declaration.mask, rest: 0))
            #expect(value[declaration.field] == declaration.field.maxValue)
            // Only the bit just past the field: nothing is stored.
            var overflowOnly = filled(S.self, with: 0)
            overflowOnly[declaration.field] = UInt64(1) << width
            #expect(words(overflowOnly) == expectedWords(count: S.wordCount, index: 0, mask: 0, rest: 0))
        }
        withStructure(declaration.structure) { type in check(type) }
    }

    @Test(arguments: FieldDeclaration.all)
    func writingAFieldLeavesEveryOtherBitAlone(_ declaration: FieldDeclaration) {
        func check<S: BlankStructure>(_ type: S.Type) {
            var value = filled(S.self, with: ~0)
            value[declaration.field] = 0
            #expect(words(value) == expectedWords(count: S.wordCount, index: declaration.word, mask: ~declaration.mask, rest: ~0))
            #expect(value[declaration.field] == 0)
            value[declaration.field] = declaration.field.maxValue
            #expect(words(value) == expectedWords(count: S.wordCount, index: 0, mask: ~0, rest: ~0))
        }
        withStructure(declaration.structure) { type in check(type) }
    }

    @Test(arguments: FieldDeclaration.all)
    func readingAFieldIgnoresTheBitsAroundIt(_ declaration: FieldDeclaration) {
        func check<S: BlankStructure>(_ type: S.Type) {
            // Everything set except the field: the field reads 0.
            var value = filled(S.self, with: ~0)
            value.setWord(declaration.word, ~declaration.mask)
            #expect(value[declaration.field] == 0)
            // Only the field's lowest and highest bits set: the field reads 1 | 1 << (width-1).
            var ends = filled(S.self, with: 0)
            let lowBit = UInt64(1) << UInt64(declaration.field.low)
            let highBit = UInt64(1) << UInt64(declaration.field.high)
            ends.setWord(declaration.word, lowBit | highBit)
            #expect(ends[declaration.field] == (1 | UInt64(1) << UInt64(declaration.field.width - 1)))
        }
        withStructure(declaration.structure) { type in check(type) }
    }

    @Test func bitFieldDescribesItselfLikeTheReference() {
        #expect(Command.Field.asid.description == "w0[63:48]")
        #expect(Command.Field.leaf.description == "w1[0]")
        #expect(StreamTableEntry.Field.s2TTB.description == "w3[51:4]")
    }

    @Test func bitFieldGetAndSetFollowFieldGetAndFieldPrep() {
        let field = BitField(word: 0, high: 23, low: 8)
        #expect(field.width == 16)
        #expect(field.valueMask == 0xFFFF)
        #expect(field.mask == 0x00FF_FF00)
        #expect(field.get(0x1234_5678_9ABC_DEF0) == 0xBCDE)
        #expect(field.set(0x1_ABCD, in: 0xFFFF_FFFF_FFFF_FFFF) == 0xFFFF_FFFF_FFAB_CDFF)
        let whole = BitField(word: 3, high: 63, low: 0)
        #expect(whole.valueMask == ~0)
        #expect(whole.set(0x0123_4567_89AB_CDEF, in: ~0) == 0x0123_4567_89AB_CDEF)
    }
}

// MARK: - Typed accessors next to their neighbours

@Suite("Typed command accessors at their edges")
struct CommandAccessorEdgeTests {
    @Test func maximalASIDDoesNotSpillIntoVMID() {
        var command = Command(opcode: .tlbiNHASID)
        command.asid = 0xFFFF
        #expect(command.w0 == 0xFFFF_0000_0000_0011)
        #expect(command.vmid == 0)
        command.vmid = 0xFFFF
        #expect(command.w0 == 0xFFFF_FFFF_0000_0011)
        command.asid = 0
        #expect(command.w0 == 0x0000_FFFF_0000_0011)
        #expect(command.vmid == 0xFFFF)
        #expect(command.asid == 0)
        #expect(command.opcode == .tlbiNHASID)
    }

    @Test func maximalStreamIDFillsTheUpperWordOnly() {
        var command = Command(opcode: .cfgiCD)
        command.streamID = 0xFFFF_FFFF
        #expect(command.w0 == 0xFFFF_FFFF_0000_0005)
        #expect(command.substreamID == 0)
        command.substreamID = 0xFFFFF
        #expect(command.w0 == 0xFFFF_FFFF_FFFF_F005)
        command.streamID = 0
        #expect(command.w0 == 0x0000_0000_FFFF_F005)
        #expect(command.w1 == 0)
    }

    @Test func substreamIDWiderThanTwentyBitsIsTruncatedNotSpilledIntoStreamID() {
        var command = Command(opcode: .cfgiCD)
        command.substreamID = 0xFFFF_FFFF
        #expect(command.w0 == 0x0000_0000_FFFF_F005)
        #expect(command.substreamID == 0xFFFFF)
        #expect(command.streamID == 0)
        #expect(!command.ssv && !command.ssec)
    }

    @Test func virtualAddressKeepsBits63To12AndLeavesTheRangeFieldsAndLeafAlone() {
        var command = Command.tlbiNHVA(asid: 1, address: 0, leaf: true,
                                       range: TLBIRange(num: 0, scale: 0, granule: 3, ttl: 3))
        #expect(command.w1 == 0x0000_0000_0000_0F01)
        command.virtualAddress = 0xFFFF_FFFF_FFFF_FFFF
        #expect(command.w1 == 0xFFFF_FFFF_FFFF_FF01)
        #expect(command.virtualAddress == 0xFFFF_FFFF_FFFF_F000)
        command.virtualAddress = 0
        #expect(command.w1 == 0x0000_0000_0000_0F01)
        #expect(command.tlbiRange == TLBIRange(num: 0, scale: 0, granule: 3, ttl: 3))
        #expect(command.leaf)
    }

    @Test func ipaKeepsBits51To12Only() {
        var command = Command(opcode: .tlbiS2IPA)
        command.ipa = 0xFFFF_FFFF_FFFF_FFFF
        #expect(command.w1 == 0x000F_FFFF_FFFF_F000)
        #expect(command.ipa == 0x000F_FFFF_FFFF_F000)
    }

    @Test func atcAddressKeepsBits63To12AndLeavesSizeAlone() {
        var command = Command.atcInv(streamID: 1, address: 0, size: 63)
        #expect(command.w1 == 0x3F)
        command.address = 0xFFFF_FFFF_FFFF_FFFF
        #expect(command.w1 == 0xFFFF_FFFF_FFFF_F03F)
        #expect(command.atcSize == 63)
    }

    @Test func syncMSIAddressOccupiesBits51To2() {
        let command = Command.sync(msiAddress: 0xFFFF_FFFF_FFFF_FFFF)
        #expect(command.w1 == 0x000F_FFFF_FFFF_FFFC)
        #expect(command.w0 == 0x46)
        let data = Command.sync(msiData: 0xFFFF_FFFF)
        #expect(data.w0 == 0xFFFF_FFFF_0000_0046)
        #expect(data.w1 == 0)
    }

    @Test func tlbiRangeFieldsDoNotOverlapTheirNeighbours() {
        var command = Command(opcode: .tlbiNHVA)
        command.tlbiRange = TLBIRange(num: 31, scale: 31, granule: 3, ttl: 3)
        #expect(command.w0 == 0x0000_0000_01F1_F012)
        #expect(command.w1 == 0x0000_0000_0000_0F00)
        // One bit too wide in every range field: truncated, neighbours untouched.
        command.tlbiRange = TLBIRange(num: 0x3F, scale: 0x3F, granule: 0x7, ttl: 0x7)
        #expect(command.w0 == 0x0000_0000_01F1_F012)
        #expect(command.w1 == 0x0000_0000_0000_0F00)
        #expect(command.tlbiRange == TLBIRange(num: 31, scale: 31, granule: 3, ttl: 3))
    }

    @Test func opcodeSetterChangesOnlyTheLowByte() {
        var command = Command(w0: 0xFFFF_FFFF_FFFF_FF00, w1: ~0)
        command.opcode = .sync
        #expect(command.w0 == 0xFFFF_FFFF_FFFF_FF46)
        #expect(command.w1 == ~0)
        #expect(command.opcode == .sync)
    }

    @Test func cfgiRangeWiderThanFiveBitsIsTruncated() {
        var command = Command(opcode: .cfgiSTERange)
        command.cfgiRange = 0xFF
        #expect(command.w1 == 0x1F)
        #expect(command.cfgiRange == 31)
    }
}
