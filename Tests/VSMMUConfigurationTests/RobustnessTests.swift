import Foundation
import Testing
@testable import VSMMUConfiguration

/// Whatever the text, parsing ends with a configuration or a ``ConfigurationError``: never a trap, a
/// hang or another error type.
@Suite struct RobustnessTests {
    @Test func everyTruncationOfTheExampleFileIsAcceptedOrRefusedWithALocatedError() throws {
        let scalars = Array(try String(contentsOfFile: exampleFilePath, encoding: .utf8).unicodeScalars)
        var refused = 0
        for end in stride(from: 0, through: scalars.count, by: 7) {
            var text = ""
            text.unicodeScalars.append(contentsOf: scalars[..<end])
            do {
                _ = try DaemonConfiguration.parse(text, file: "prefix.toml")
            } catch {
                refused += 1
                #expect(error.file == "prefix.toml")
                #expect(error.line != nil, "\(error)")
            }
        }
        #expect(refused > 0) // cuts inside a string or a header are syntax errors
    }

    @Test func scannerSurvivesUnterminatedConstructs() {
        for text in ["a = \"unterminated", "a = \"\"\"never closed\n\n", "a = '''x", "[[psmmu", "a = [1, 2",
                     "a = { b = ", "\"\"\" = 1", "= = =", "a = \\u", "a = \"\\U0000", "[", "[[", "{", "\u{FEFF}x = 1"] {
            let locations = TOMLKeyLocations(scanning: text)
            #expect(locations.positions.count <= text.unicodeScalars.count)
        }
        #expect(TOMLKeyLocations(scanning: "\u{FEFF}x = 1").exactPosition(of: ConfigurationKeyPath([.key("x")])) == .init(line: 1, column: 2))
    }
}
