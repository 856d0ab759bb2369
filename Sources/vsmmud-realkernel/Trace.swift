#if canImport(Glibc)
import Glibc
#endif
import SMMUv3

/// A recorded Linux guest command stream (`../shared/traces`, see its README): the raw 16-byte commands
/// in guest order and, per StreamID, the STE and CD the guest left in RAM (`ram_dump_final` rows of the
/// `-ste-cd.csv`).
struct Trace {
    var commands: [Command]
    var stes: [StreamID: StreamTableEntry] = [:]
    var cds: [StreamID: ContextDescriptor] = [:]

    /// Loads `<directory>/<name>-cmdq.bin` and `<directory>/<name>-ste-cd.csv`.
    init(directory: String, name: String) throws {
        let bin = try readFile("\(directory)/\(name)-cmdq.bin")
        guard bin.count % Command.byteCount == 0 else {
            throw CheckFailure(description: "\(name)-cmdq.bin: \(bin.count) bytes, not a whole number of 16-byte commands")
        }
        commands = try stride(from: 0, to: bin.count, by: Command.byteCount).map {
            try Command(bytes: bin[$0 ..< $0 + Command.byteCount])
        }
        let csv = String(decoding: try readFile("\(directory)/\(name)-ste-cd.csv"), as: UTF8.self)
        let rows = csv.split(whereSeparator: \.isNewline).map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        guard let header = rows.first, let source = header.firstIndex(of: "source"), let sid = header.firstIndex(of: "sid"),
              let steW0 = header.firstIndex(of: "ste_dw0"), let steW1 = header.firstIndex(of: "ste_dw1"),
              let cdW0 = header.firstIndex(of: "cd_dw0"), let ttb0 = header.firstIndex(of: "ttb0") else {
            throw CheckFailure(description: "\(name)-ste-cd.csv: unexpected header")
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
    var batches: [[Command]] {
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

/// The whole of a file.
func readFile(_ path: String) throws -> [UInt8] {
    guard let file = fopen(path, "rb") else {
        throw CheckFailure(description: "cannot open \(path): \(String(cString: strerror(errno)))")
    }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n > 0 { bytes.append(contentsOf: chunk[..<n]) }
        if n < chunk.count { break }
    }
    return bytes
}
