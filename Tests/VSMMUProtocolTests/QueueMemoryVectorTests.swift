import Foundation
import SMMUv3
import Testing
import VSMMUProtocol

/// The shared queue's memory vectors (`queue-header.hex`, `queue-slots.hex`, PROTOCOL.md §7, §8.1), written by
/// `make_vectors.py` from PROTOCOL.md, read here through ``SharedQueueLayout``'s offsets: the Swift home of the
/// layout and the specification agree on every field.
@Suite struct QueueMemoryVectorTests {
    /// Each header field's width, by its name in the vectors, at the offset ``SharedQueueLayout`` gives it.
    static let headerFields: [String: (offset: Int, size: Int)] = [
        "magic": (SharedQueueLayout.magicOffset, 4),
        "version": (SharedQueueLayout.versionOffset, 2),
        "log2_entries": (SharedQueueLayout.log2EntriesOffset, 1),
        "prod": (SharedQueueLayout.prodOffset, 4),
        "cons": (SharedQueueLayout.consOffset, 4),
        "error_sequence": (SharedQueueLayout.errorSequenceOffset, 4),
        "cerror": (SharedQueueLayout.cerrorOffset, 1),
        "error_kind": (SharedQueueLayout.errorKindOffset, 1),
        "error_cons": (SharedQueueLayout.errorConsOffset, 4),
        "state": (SharedQueueLayout.stateOffset, 4),
        "error_ack": (SharedQueueLayout.errorAckOffset, 4),
        "daemon_sleeping": (SharedQueueLayout.daemonSleepingOffset, 4),
        "vmm_sleeping": (SharedQueueLayout.vmmSleepingOffset, 4),
    ]

    /// The memory a vector describes: zeros up to its `#! offset`, then its bytes.
    func memory(_ name: String) throws -> (bytes: [UInt8], assertions: [String: UInt64], kind: String) {
        var assertions: [String: UInt64] = [:]
        var kind = "", offset: Int?
        for (key, value) in try ProtocolFolder.vectorAssertions(name) {
            switch key {
            case "kind": kind = value
            case "offset": offset = try Int(#require(number(value), "\(name): offset \(value)"))
            default: assertions[key] = try #require(number(value), "\(name): \(key) = \(value)")
            }
        }
        let start = try #require(offset, "\(name) has no #! offset")
        return ([UInt8](repeating: 0, count: start) + (try ProtocolFolder.vectorBytes(name)), assertions, kind)
    }

    func number(_ text: String) -> UInt64? {
        text.hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
    }

    /// The little-endian value of `size` bytes at `offset`.
    func read(_ bytes: [UInt8], at offset: Int, size: Int) -> UInt64 {
        (0..<size).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
    }

    @Test func theMemoryVectorsAreTheTwoQueuesHeadersTheCommandSlotsAndAnEventSlot() throws {
        #expect(try ProtocolFolder.memoryVectorNames() == ["event-queue-header.hex", "event-slot.hex", "queue-header.hex", "queue-slots.hex"])
    }

    @Test func everyHeaderFieldOfTheVectorSitsAtTheOffsetTheLayoutGivesIt() throws {
        let (bytes, assertions, kind) = try memory("queue-header.hex")
        #expect(kind == "queue_header")
        // The header's first lines, up to the end of vmm_sleeping's line.
        #expect(bytes.count == SharedQueueLayout.vmmSleepingOffset + SharedQueueLayout.lineSize)
        #expect(Set(assertions.keys) == Set(Self.headerFields.keys.map { "queue_header.\($0)" }))
        var named = Set<Int>()
        for (field, place) in Self.headerFields {
            let expected = try #require(assertions["queue_header.\(field)"])
            #expect(read(bytes, at: place.offset, size: place.size) == expected, "\(field) at 0x\(String(place.offset, radix: 16))")
            named.formUnion(place.offset..<(place.offset + place.size))
        }
        // Every other byte is reserved and zero.
        for i in bytes.indices where !named.contains(i) { #expect(bytes[i] == 0, "reserved byte 0x\(String(i, radix: 16))") }
        // The values, as the layout's constants and enumerations read them (written by hand from the vector's
        // comments).
        #expect(read(bytes, at: SharedQueueLayout.magicOffset, size: 4) == UInt64(SharedQueueLayout.magic))
        #expect(read(bytes, at: SharedQueueLayout.versionOffset, size: 2) == UInt64(SharedQueueLayout.version))
        let log2 = Int(read(bytes, at: SharedQueueLayout.log2EntriesOffset, size: 1))
        #expect(log2 == 10 && SharedQueueLayout.log2EntriesRange.contains(log2))
        #expect(SharedQueueLayout.State(rawValue: UInt32(read(bytes, at: SharedQueueLayout.stateOffset, size: 4))) == .stopped)
        #expect(SharedQueueLayout.ErrorKind(rawValue: UInt8(read(bytes, at: SharedQueueLayout.errorKindOffset, size: 1))) == .command)
        #expect(read(bytes, at: SharedQueueLayout.cerrorOffset, size: 1) == UInt64(CommandQueueError.abort.rawValue))
        // PROD 0x405 and CONS 0x402: index 5 and 2 with the wrap bit (bit 10) of 1024 slots.
        #expect(read(bytes, at: SharedQueueLayout.prodOffset, size: 4) == 1 << 10 | 5)
        #expect(read(bytes, at: SharedQueueLayout.consOffset, size: 4) == 1 << 10 | 2)
    }

    @Test func theSlotsStartAtTheLayoutsOffsetOneCommandEachWordZeroFirst() throws {
        let (bytes, assertions, kind) = try memory("queue-slots.hex")
        #expect(kind == "queue_slots")
        #expect(bytes.count == SharedQueueLayout.slotsOffset + 2 * SharedQueueLayout.slotSize)
        #expect(assertions.count == 4)
        for (name, value) in assertions {
            let slot = try #require(Int(name.split(separator: "[")[1].prefix { $0.isNumber }))
            let word = try #require(Int(name.split(separator: "[")[2].prefix { $0.isNumber }))
            #expect(read(bytes, at: SharedQueueLayout.slotsOffset + slot * SharedQueueLayout.slotSize + 8 * word, size: 8) == value, "\(name)")
        }
        // TLBI_NH_VA then CMD_SYNC CS=IRQ, the first and last commands of invalidate.hex.
        let commands = try (0..<2).map { i in
            let at = SharedQueueLayout.slotsOffset + i * SharedQueueLayout.slotSize
            return try Command(bytes: bytes[at..<(at + SharedQueueLayout.slotSize)])
        }
        #expect(commands == [vectorCommands[0], vectorCommands[2]])
        #expect(commands.map(\.opcode) == [.tlbiNHVA, .sync])
    }
}
