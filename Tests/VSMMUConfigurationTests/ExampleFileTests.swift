import Foundation
import Testing
@testable import VSMMUConfiguration
import PSMMU
import VSMMUProtocol

/// `systemd/vsmmud.toml` is the configuration reference: it must parse, say what it configures, and
/// mention every key the parser knows.
@Suite struct ExampleFileTests {
    let text: String

    init() throws {
        text = try String(contentsOfFile: exampleFilePath, encoding: .utf8)
    }

    @Test func exampleFileParsesToTheEmbeddedDefaultItShowsKeyByKey() throws {
        let configuration = try DaemonConfiguration.load(path: exampleFilePath)
        #expect(configuration == DaemonConfiguration.embeddedDefault)
    }

    @Test func exampleFileShowsEveryKeyTheParserAccepts() {
        let sections = ["[daemon]", "[socket]", "[access]", "[limits]", "[queue]", "[[psmmu]]", "[psmmu.cost]"]
        for section in sections {
            #expect(text.contains("\n\(section)\n"), "section \(section) is not in the example")
        }
        typealias Keys = ConfigurationParser.Keys
        let valueKeys = Keys.daemon + Keys.socket + Keys.access + Keys.limits + Keys.queue
            + Keys.psmmu.filter { $0 != "cost" } + Keys.cost
        for key in valueKeys {
            let shown = text.split(separator: "\n").contains { line in
                var body = line.drop { $0 == " " }
                if body.hasPrefix("# ") { body = body.dropFirst(2) }
                return body.hasPrefix("\(key) = ")
            }
            #expect(shown, "key \(key) is not shown with a value in the example")
        }
    }

    @Test func exampleFileWithItsCommentedSettingsUncommentedParsesToThem() throws {
        // Uncomment "# key = value" lines and the "# [[psmmu]]" block: the socket settings and the
        // iommufd pSMMU.
        let setting = #/^[a-z_]+ = /#
        let uncommented = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> Substring in
            guard line.hasPrefix("# ") else { return line }
            let body = line.dropFirst(2)
            return body == "[[psmmu]]" || body.prefixMatch(of: setting) != nil ? body : line
        }.joined(separator: "\n")
        let configuration = try accepted(uncommented)
        #expect(configuration.socket == SocketSettings(path: "/run/vsmmud/vsmmud.sock", mode: 0o660, group: "kvm"))
        #expect(configuration.pSMMUs.map(\.name) == ["smmu0", "smmu1", "smmu3.0x0000000009050000"])
        #expect(configuration.pSMMUs.last?.backend == .iommufd)
        #expect(configuration.limits == ServerLimits())
    }
}
