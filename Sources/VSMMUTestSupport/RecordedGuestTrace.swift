import Foundation
import SMMUv3

/// A recorded Linux guest command stream (`../shared/traces`, see its README): the raw 16-byte commands in
/// guest order and, per StreamID, the STE and CD the guest left in RAM (the `ram_dump_final` rows of
/// `<name>-ste-cd.csv`). Replays, benchmarks and the real-kernel suite all read traces through this.
public struct RecordedGuestTrace: Sendable {
    public var commands: [Command]
    public var stes: [StreamID: StreamTableEntry] = [:]
    public var cds: [StreamID: ContextDescriptor] = [:]

    /// Why a trace could not be read.
    public struct ReadError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Loads `<directory>/<name>-cmdq.bin` and `<directory>/<name>-ste-cd.csv`.
    public init(directory: String, name: String) throws(ReadError) {
        let binPath = "\(directory)/\(name)-cmdq.bin", csvPath = "\(directory)/\(name)-ste-cd.csv"
        guard let bin = FileManager.default.contents(atPath: binPath) else { throw ReadError(description: "cannot read \(binPath)") }
        guard let csvData = FileManager.default.contents(atPath: csvPath) else { throw ReadError(description: "cannot read \(csvPath)") }
        let bytes = [UInt8](bin)
        guard bytes.count % Command.byteCount == 0 else {
            throw ReadError(description: "\(binPath): \(bytes.count) bytes, not a whole number of 16-byte commands")
        }
        var commands: [Command] = []
        commands.reserveCapacity(bytes.count / Command.byteCount)
        for start in stride(from: 0, to: bytes.count, by: Command.byteCount) {
            guard let command = try? Command(bytes: bytes[start ..< start + Command.byteCount]) else {
                throw ReadError(description: "\(binPath): command at byte \(start) is not 16 bytes")
            }
            commands.append(command)
        }
        self.commands = commands
        let rows = String(decoding: csvData, as: UTF8.self).split(whereSeparator: \.isNewline)
            .map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        guard let header = rows.first, let source = header.firstIndex(of: "source"), let sid = header.firstIndex(of: "sid"),
              let steW0 = header.firstIndex(of: "ste_dw0"), let steW1 = header.firstIndex(of: "ste_dw1"),
              let cdW0 = header.firstIndex(of: "cd_dw0"), let ttb0 = header.firstIndex(of: "ttb0") else {
            throw ReadError(description: "\(csvPath): unexpected header")
        }
        func hex(_ text: String) -> UInt64? { UInt64(text.hasPrefix("0x") ? String(text.dropFirst(2)) : text, radix: 16) }
        for row in rows.dropFirst() where row.count == header.count && row[source] == "ram_dump_final" {
            guard let s = hex(row[sid]), let w0 = hex(row[steW0]), let w1 = hex(row[steW1]),
                  let c0 = hex(row[cdW0]), let t = hex(row[ttb0]) else { continue }
            stes[StreamID(s)] = StreamTableEntry(w0: w0, w1: w1)
            cds[StreamID(s)] = ContextDescriptor(w0: c0, w1: t)
        }
    }

    /// The commands cut after each CMD_SYNC, as the guest's driver publishes them (a trailing run without
    /// a sync is its own batch).
    public var batches: [[Command]] {
        var out: [[Command]] = []
        var current: [Command] = []
        for command in commands {
            current.append(command)
            if command.opcode == .sync {
                out.append(current)
                current = []
            }
        }
        if !current.isEmpty { out.append(current) }
        return out
    }
}
