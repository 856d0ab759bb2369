import Foundation
import Testing
@testable import VSMMUConfiguration

/// The file name the tests parse under, as errors name it.
let testFile = "test.toml"

/// The configuration `text` parses to, or a recorded failure naming the refusal.
func accepted(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> DaemonConfiguration {
    do {
        return try DaemonConfiguration.parse(text, file: testFile)
    } catch {
        Issue.record("refused: \(error)", sourceLocation: sourceLocation)
        throw error
    }
}

/// The error `text` is refused with (a recorded failure if it is accepted).
func refusal(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> ConfigurationError {
    try #require(throws: ConfigurationError.self, sourceLocation: sourceLocation) {
        try DaemonConfiguration.parse(text, file: testFile)
    }
}

/// The repository's `systemd/vsmmud.toml`, found from this file's path.
let exampleFilePath: String = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("systemd/vsmmud.toml").path

/// A scratch file holding `bytes`, removed after `body`.
func withTemporaryFile<T>(_ bytes: [UInt8], _ body: (String) throws -> T) throws -> T {
    let path = NSTemporaryDirectory() + "vsmmud-config-\(UUID().uuidString).toml"
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

/// Checks that `text` is refused at `line` (and `column`, if given) naming `key`, with a message
/// containing `message`.
func expectRefusal(_ text: String, line: Int?, column: Int? = nil, key: String?, message: String,
                   sourceLocation: SourceLocation = #_sourceLocation) throws {
    let error = try refusal(text, sourceLocation: sourceLocation)
    #expect(error.file == testFile, sourceLocation: sourceLocation)
    #expect(error.line == line, "\(error)", sourceLocation: sourceLocation)
    if let column { #expect(error.column == column, "\(error)", sourceLocation: sourceLocation) }
    #expect(error.key == key, "\(error)", sourceLocation: sourceLocation)
    #expect(error.message.contains(message), "\(error)", sourceLocation: sourceLocation)
}
