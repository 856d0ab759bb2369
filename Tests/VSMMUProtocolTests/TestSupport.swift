import Foundation
import SMMUv3
@_exported import VSMMUTestSupport
@testable import VSMMUProtocol

// Helpers shared by the protocol tests. Byte layouts here are built independently of the codec;
// `SplitMix64` (seeded randomness) comes from VSMMUTestSupport.

/// A required fixture is missing or malformed.
struct FixtureError: Error, CustomStringConvertible {
    var description: String
}

/// The repository's `protocol/` folder, found from this source file's path.
enum ProtocolFolder {
    static func url(sourceFile: String = #filePath) -> URL {
        URL(fileURLWithPath: sourceFile)
            .deletingLastPathComponent() // VSMMUProtocolTests
            .deletingLastPathComponent() // Tests
            .deletingLastPathComponent() // repository
            .appendingPathComponent("protocol")
    }

    static var vectors: URL { url().appendingPathComponent("vectors") }

    /// Every `*.hex` file of `protocol/vectors`, sorted by name: the frames and the queue-memory vectors.
    static func allVectorNames() throws -> [String] {
        let names = try FileManager.default.contentsOfDirectory(atPath: vectors.path)
        return names.filter { $0.hasSuffix(".hex") }.sorted()
    }

    /// The vectors that hold one frame each, sorted by name.
    static func vectorNames() throws -> [String] {
        let memory = Set(try memoryVectorNames())
        return try allVectorNames().filter { !memory.contains($0) }
    }

    /// The vectors that hold bytes of the shared queue's memory (`#! kind = …`, PROTOCOL.md §7), not frames.
    static func memoryVectorNames() throws -> [String] {
        try allVectorNames().filter { try !vectorAssertions($0).filter { $0.name == "kind" }.isEmpty }
    }

    /// A vector's `#! name = value` lines, in file order.
    static func vectorAssertions(_ name: String) throws -> [(name: String, value: String)] {
        let text = try String(contentsOf: vectors.appendingPathComponent(name), encoding: .utf8)
        return text.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("#!"), let equals = line.firstIndex(of: "=") else { return nil }
            let key = line[line.index(line.startIndex, offsetBy: 2)..<equals].trimmingCharacters(in: .whitespaces)
            return (key, line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces))
        }
    }

    /// The bytes of one vector: hex digits, whitespace ignored, `#` comments to the end of the line.
    static func vectorBytes(_ name: String) throws -> [UInt8] {
        let text = try String(contentsOf: vectors.appendingPathComponent(name), encoding: .utf8)
        return try parseHex(text, name: name)
    }

    static func parseHex(_ text: String, name: String) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var pending: UInt8?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            for ch in line.prefix(while: { $0 != "#" }) where !ch.isWhitespace {
                guard let digit = ch.hexDigitValue else { throw FixtureError(description: "\(name): '\(ch)' is not a hex digit") }
                if let high = pending {
                    bytes.append(high << 4 | UInt8(digit))
                    pending = nil
                } else {
                    pending = UInt8(digit)
                }
            }
        }
        guard pending == nil else { throw FixtureError(description: "\(name): odd number of hex digits") }
        return bytes
    }
}

/// Little-endian bytes built by hand (not with the codec's writer).
func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
}

/// A frame built by hand: header fields then payload.
func rawFrame(type: UInt16, flags: UInt16 = 0, requestID: UInt64 = 1, payload: [UInt8],
              payloadLength: UInt32? = nil) -> [UInt8] {
    le(payloadLength ?? UInt32(payload.count)) + le(type) + le(flags) + le(requestID) + payload
}

/// A 64-byte NUL-padded name field.
func nameField(_ s: String) -> [UInt8] {
    let utf8 = Array(s.utf8)
    return utf8 + [UInt8](repeating: 0, count: 64 - utf8.count)
}

/// Decodes one whole frame from bytes (frame errors become a failing expectation via `throws`).
func frame(_ bytes: [UInt8]) throws -> Frame { try Frame(bytes: bytes) }

extension Request {
    /// Encodes and decodes back through a frame: the round trip every client and server performs.
    func roundTripped(requestID: UInt64 = 1) throws -> Request {
        try Request.decode(try Frame(bytes: try encode(requestID: requestID)))
    }
}

extension Response {
    func roundTripped(requestID: UInt64 = 1) throws -> Response {
        try Response.decode(try Frame(bytes: try encode(requestID: requestID)))
    }
}
