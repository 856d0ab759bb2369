import SMMUv3
import Testing

/// A command stream recorded from a real Linux 6.1 guest (`shared/traces/`), with the facts its
/// summary file states about it.
struct GuestTrace: Sendable, CustomTestStringConvertible {
    var name: String
    var commandCount: Int
    /// Counts per opcode, from `<name>-summary.txt`.
    var opcodeCounts: [Opcode: Int]

    var testDescription: String { name }

    static let strict = GuestTrace(
        name: "linux-strict", commandCount: 27_843,
        opcodeCounts: [.sync: 13_915, .tlbiNHVA: 13_908, .cfgiSTE: 9, .tlbiNHASID: 5, .prefetchConfig: 4,
                       .cfgiSTERange: 1, .tlbiNSNHAll: 1])
    static let lazy = GuestTrace(
        name: "linux-lazy", commandCount: 1_500,
        opcodeCounts: [.sync: 752, .tlbiNHASID: 733, .cfgiSTE: 9, .prefetchConfig: 4, .cfgiSTERange: 1,
                       .tlbiNSNHAll: 1])
    static let all = [strict, lazy]

    /// The raw commands of `<name>-cmdq.bin`.
    func commands() throws -> [Command] {
        let data = try SharedFolder.traceData("\(name)-cmdq.bin")
        guard data.count % Command.byteCount == 0 else {
            throw WrongLengthError(structure: "\(name)-cmdq.bin", expected: data.count / 16 * 16 + 16, actual: data.count)
        }
        return try stride(from: 0, to: data.count, by: Command.byteCount).map { offset in
            try Command(bytes: data[offset..<offset + Command.byteCount])
        }
    }
}

/// Collects disagreements between a decoded command and its CSV row, so that a failure lists the first
/// few instead of tens of thousands of expectations.
private struct Mismatches {
    private(set) var count = 0
    private(set) var first: [String] = []

    mutating func check(_ actual: UInt64, _ expected: UInt64?, _ what: @autoclosure () -> String) {
        guard let expected, actual != expected else { return }
        record("\(what()): decoded \(hex(actual)), csv \(hex(expected))")
    }

    mutating func record(_ message: String) {
        count += 1
        if first.count < 20 { first.append(message) }
    }
}

@Suite("Real guest command streams")
struct GuestTraceTests {
    @Test(arguments: GuestTrace.all)
    func everyCommandDecodesToTheFieldsItsCSVRowRecords(_ trace: GuestTrace) throws {
        let commands = try trace.commands()
        let table = try SharedFolder.traceCSV("\(trace.name)-cmdq.csv")
        #expect(table.header == ["seq", "opcode_name", "opcode_hex", "sid", "ssid", "asid", "vmid", "addr_hex",
                                 "num", "scale", "tg", "ttl", "leaf", "range"])
        #expect(commands.count == trace.commandCount)
        #expect(table.rows.count == trace.commandCount)

        let seq = try table.column("seq"), opcodeName = try table.column("opcode_name")
        let opcodeHex = try table.column("opcode_hex"), sid = try table.column("sid"), ssid = try table.column("ssid")
        let asid = try table.column("asid"), vmid = try table.column("vmid"), addr = try table.column("addr_hex")
        let num = try table.column("num"), scale = try table.column("scale"), tg = try table.column("tg")
        let ttl = try table.column("ttl"), leaf = try table.column("leaf"), range = try table.column("range")

        var mismatches = Mismatches()
        for (index, (command, row)) in zip(commands, table.rows).enumerated() {
            let at = "seq \(index) \(command)"
            mismatches.check(UInt64(index), try parseNumber(row[seq]), "\(at) seq")
            mismatches.check(UInt64(command.opcode.rawValue), try parseNumber(row[opcodeHex]), "\(at) opcode")
            if command.opcode.name != "CMD_" + row[opcodeName] && command.opcode.name != row[opcodeName] {
                mismatches.record("\(at) opcode name: decoded \(command.opcode.name), csv \(row[opcodeName])")
            }
            mismatches.check(UInt64(command.streamID), try parseNumber(row[sid]), "\(at) sid")
            mismatches.check(UInt64(command.substreamID), try parseNumber(row[ssid]), "\(at) ssid")
            mismatches.check(UInt64(command.asid), try parseNumber(row[asid]), "\(at) asid")
            mismatches.check(UInt64(command.vmid), try parseNumber(row[vmid]), "\(at) vmid")
            if let address = try parseNumber(row[addr]) {
                // The address column is the command's address field: VA for stage-1 TLBIs, IPA for
                // TLBI_S2_IPA, ADDR for ATC_INV and PREFETCH_ADDR.
                switch command.opcode {
                case .tlbiS2IPA: mismatches.check(command.ipa, address, "\(at) ipa")
                case .atcInv, .prefetchAddress: mismatches.check(command.address, address, "\(at) address")
                case _ where command.opcode.family == .tlbi:
                    mismatches.check(command.virtualAddress, address, "\(at) va")
                default: mismatches.record("\(at): an address on an opcode without one")
                }
            }
            let tlbiRange = command.tlbiRange
            mismatches.check(UInt64(tlbiRange.num), try parseNumber(row[num]), "\(at) num")
            mismatches.check(UInt64(tlbiRange.scale), try parseNumber(row[scale]), "\(at) scale")
            mismatches.check(UInt64(tlbiRange.granule), try parseNumber(row[tg]), "\(at) tg")
            mismatches.check(UInt64(tlbiRange.ttl), try parseNumber(row[ttl]), "\(at) ttl")
            mismatches.check(command.leaf ? 1 : 0, try parseNumber(row[leaf]), "\(at) leaf")
            mismatches.check(UInt64(command.cfgiRange), try parseNumber(row[range]), "\(at) range")

            if let error = command.validate() { mismatches.record("\(at): \(error)") }
            if command.bytes != littleEndianBytes(command.w0, command.w1) {
                mismatches.record("\(at): bytes do not round trip")
            }
        }
        #expect(mismatches.count == 0, "\(mismatches.count) mismatches, first: \(mismatches.first.joined(separator: "; "))")
    }

    @Test(arguments: GuestTrace.all)
    func opcodeCountsMatchTheRecordedSummary(_ trace: GuestTrace) throws {
        var counts: [Opcode: Int] = [:]
        for command in try trace.commands() { counts[command.opcode, default: 0] += 1 }
        #expect(counts == trace.opcodeCounts)
    }

    @Test(arguments: GuestTrace.all)
    func theGuestsOnlySyncEncodingIsSEVWithoutMSI(_ trace: GuestTrace) throws {
        let syncs = try trace.commands().filter { $0.opcode == .sync }
        #expect(syncs.count == trace.opcodeCounts[.sync])
        #expect(syncs.allSatisfy { $0 == Command(w0: 0x0000_0000_0FC0_2046, w1: 0) })
        #expect(syncs.allSatisfy { $0.syncCompletion == .sev })
    }

    @Test(arguments: GuestTrace.all)
    func bootStartsWithCFGIAllThenTLBINSNHAll(_ trace: GuestTrace) throws {
        let commands = try trace.commands()
        try #require(commands.count > 4)
        #expect(commands[0] == Command.cfgiAll())
        #expect(commands[0].cfgiStreamIDs == 0...0xFFFF_FFFF)
        #expect(commands[1].opcode == .sync)
        #expect(commands[2] == Command.tlbiNSNHAll())
    }

    @Test func strictTraceRangeSizesMatchTheRecordedHistogram() throws {
        let vas = try GuestTrace.strict.commands().filter { $0.opcode == .tlbiNHVA }
        var pagesHistogram: [UInt64: Int] = [:]
        var perASID: [ASID: Int] = [:]
        for command in vas {
            pagesHistogram[command.tlbiRange.pages, default: 0] += 1
            perASID[command.asid, default: 0] += 1
        }
        // From linux-strict-summary.txt: "TLBI_NH_VA range size in pages ((num+1)<<scale)".
        #expect(pagesHistogram == [1: 11_793, 2: 1_798, 4: 274, 13: 8, 18: 8, 23: 1, 32: 1, 36: 1, 64: 8,
                                   128: 8, 256: 8])
        #expect(perASID == [2: 6_210, 1: 4_052, 3: 3_646])
        // Every one is a 4 KiB-granule range (TG 1), level-3 leaf, VMID 0.
        #expect(vas.allSatisfy { $0.tlbiRange.granule == 1 && $0.tlbiRange.ttl == 3 && $0.leaf && $0.vmid == 0 })
        #expect(vas.allSatisfy { $0.tlbiRange.byteCount == $0.tlbiRange.pages * 4096 })
    }
}
