import Foundation
import SMMUv3
import VSMMUTestSupport

// Helpers shared by the SMMUv3 tests. Nothing here calls the code under test to produce an expected
// value: byte layouts and random inputs are built independently.

/// The little-endian bytes of `words`, built by hand (not with ``SMMUWords/bytes``) so that golden
/// vectors are checked against an independent serialiser.
func littleEndianBytes(_ words: UInt64...) -> [UInt8] {
    var out: [UInt8] = []
    for word in words {
        for byte in 0..<8 { out.append(UInt8((word >> UInt64(byte * 8)) & 0xFF)) }
    }
    return out
}

/// `0x0123_4567_89AB_CDEF` style rendering for failure messages.
func hex(_ value: UInt64) -> String {
    let digits = String(value, radix: 16, uppercase: true)
    return "0x" + String(repeating: "0", count: max(0, 16 - digits.count)) + digits
}


// MARK: - The shared folder (reference traces)

/// The shared folder could not be found: the traces are required (CI has them).
struct MissingSharedFolderError: Error, CustomStringConvertible {
    var searched: [String]
    var description: String {
        "the shared folder with the guest traces was not found (looked in: \(searched.joined(separator: ", "))); "
            + "set VSMMUD_SHARED to the folder that holds traces/linux-strict-cmdq.bin"
    }
}

/// A required fixture file is missing or unreadable.
struct MissingFixtureError: Error, CustomStringConvertible {
    var path: String
    var description: String { "required fixture \(path) is missing or unreadable" }
}

/// Locates `/work/shared` (or wherever it lives): `$VSMMUD_SHARED` if set, otherwise `../shared` next
/// to the repository root found from this source file's path.
enum SharedFolder {
    static func path(sourceFile: String = #filePath) throws -> String {
        var candidates: [String] = []
        if let fromEnvironment = ProcessInfo.processInfo.environment["VSMMUD_SHARED"], !fromEnvironment.isEmpty {
            candidates.append(fromEnvironment)
        }
        // <root>/Tests/SMMUv3Tests/<file>.swift → <root> → <root>/../shared
        let repositoryRoot = URL(fileURLWithPath: sourceFile)
            .deletingLastPathComponent()
            .deletingLastPathComponent()
            .deletingLastPathComponent()
        candidates.append(repositoryRoot.deletingLastPathComponent().appendingPathComponent("shared").path)

        for candidate in candidates {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: candidate + "/traces", isDirectory: &isDirectory),
               isDirectory.boolValue {
                return candidate
            }
        }
        throw MissingSharedFolderError(searched: candidates)
    }

    /// The bytes of `traces/<name>`.
    static func traceData(_ name: String) throws -> [UInt8] {
        let path = try Self.path() + "/traces/" + name
        guard let data = FileManager.default.contents(atPath: path) else { throw MissingFixtureError(path: path) }
        return [UInt8](data)
    }

    /// `traces/<name>` parsed as a CSV table.
    static func traceCSV(_ name: String) throws -> CSVTable {
        try CSVTable(bytes: try traceData(name), source: name)
    }
}

// MARK: - CSV

/// A CSV file without quoting (the trace files use none, and end lines with CRLF): a header and rows
/// of fields. Parsed on bytes, not `Character`s: "\r\n" is a single `Character` in Swift, so splitting
/// a `String` on "\n" would not split CRLF lines at all.
struct CSVTable {
    struct MalformedRow: Error, CustomStringConvertible {
        var source: String
        var line: Int
        var fields: Int
        var expected: Int
        var description: String { "\(source) line \(line): \(fields) fields, header has \(expected)" }
    }

    var header: [String]
    var rows: [[Substring]]

    init(bytes: [UInt8], source: String) throws {
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true).map { line in
            line.last == UInt8(ascii: "\r") ? line.dropLast() : line
        }
        guard !lines.isEmpty else { throw MalformedRow(source: source, line: 1, fields: 0, expected: 1) }
        func fields(_ line: ArraySlice<UInt8>) -> [Substring] {
            line.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
                .map { Substring(String(decoding: $0, as: UTF8.self)) }
        }
        header = fields(lines.removeFirst()).map(String.init)
        rows = []
        rows.reserveCapacity(lines.count)
        for (index, line) in lines.enumerated() {
            let row = fields(line)
            guard row.count == header.count else {
                throw MalformedRow(source: source, line: index + 2, fields: row.count, expected: header.count)
            }
            rows.append(row)
        }
    }

    /// The index of column `name`.
    func column(_ name: String) throws -> Int {
        guard let index = header.firstIndex(of: name) else { throw MissingColumn(name: name, header: header) }
        return index
    }

    struct MissingColumn: Error, CustomStringConvertible {
        var name: String
        var header: [String]
        var description: String { "no column \(name) in \(header)" }
    }
}

/// A CSV field that should be a number and is not.
struct MalformedNumber: Error, CustomStringConvertible {
    var field: String
    var description: String { "not a number: \"\(field)\"" }
}

/// Parses `0x1f` or `31`; an empty field is `nil` (the column does not apply to the row).
func parseNumber(_ field: Substring) throws(MalformedNumber) -> UInt64? {
    if field.isEmpty { return nil }
    let value = field.hasPrefix("0x") || field.hasPrefix("0X")
        ? UInt64(field.dropFirst(2), radix: 16) : UInt64(field, radix: 10)
    guard let value else { throw MalformedNumber(field: String(field)) }
    return value
}
