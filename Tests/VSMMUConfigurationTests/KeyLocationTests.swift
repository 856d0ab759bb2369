import Testing
@testable import VSMMUConfiguration

/// The scan that finds a key's line for semantic errors (TOMLKit gives no positions for values).
@Suite struct KeyLocationTests {
    func path(_ text: String) -> ConfigurationKeyPath {
        // "psmmu[1].cost.call_ns" → components
        var components: [ConfigurationKeyPath.Component] = []
        for part in text.split(separator: ".") {
            var name = Substring(part)
            var indices: [Int] = []
            while let open = name.lastIndex(of: "["), name.last == "]" {
                indices.insert(Int(name[name.index(after: open)..<name.index(before: name.endIndex)])!, at: 0)
                name = name[..<open]
            }
            components.append(.key(String(name)))
            components += indices.map { .index($0) }
        }
        return ConfigurationKeyPath(components)
    }

    func position(_ key: String, in text: String) -> TOMLKeyLocations.Position? {
        TOMLKeyLocations(scanning: text).exactPosition(of: path(key))
    }

    @Test func headersInCommentsAndStringsDoNotStartSections() {
        let text = """
            # [[psmmu]] in a comment
            note = \"\"\"
            [[psmmu]]
            devices = 1
            \"\"\"
            other = '''
            [[psmmu]]'''
            quoted = "[[psmmu]] # not a comment"
            [[psmmu]]
            devices = 2
            """
        #expect(position("psmmu[0].devices", in: text) == .init(line: 10, column: 1))
        #expect(position("psmmu[1]", in: text) == nil)
        #expect(position("devices", in: text) == nil)
        #expect(position("quoted", in: text) == .init(line: 8, column: 1))
    }

    @Test func subTableHeaderBelongsToTheLatestArrayElement() {
        let text = """
            [[psmmu]]
            name = "a"
            [psmmu.cost]
            call_ns = 1
            [[psmmu]]
            name = "b"
              [psmmu.cost]
              call_ns = 2
            """
        #expect(position("psmmu[0].cost.call_ns", in: text) == .init(line: 4, column: 1))
        #expect(position("psmmu[1]", in: text) == .init(line: 5, column: 1))
        #expect(position("psmmu[1].cost", in: text) == .init(line: 7, column: 3))
        #expect(position("psmmu[1].cost.call_ns", in: text) == .init(line: 8, column: 3))
    }

    @Test func dottedQuotedAndInlineKeysAreFound() {
        let text = """
            daemon . "log_level" = "info"
            limits = { max_frame_size = 65536, 'max_vsmmus_per_connection' = 2 }
            psmmu = [ { name = "a" },
                      { name = "b", cost = { spin_ns = 0 } } ]
            "a.b" = 1
            """
        #expect(position("daemon", in: text) == .init(line: 1, column: 1))
        #expect(position("daemon.log_level", in: text) == .init(line: 1, column: 1))
        #expect(position("limits.max_frame_size", in: text) == .init(line: 2, column: 12))
        #expect(position("limits.max_vsmmus_per_connection", in: text) == .init(line: 2, column: 36))
        #expect(position("psmmu[0].name", in: text) == .init(line: 3, column: 13))
        #expect(position("psmmu[1]", in: text) == .init(line: 4, column: 11))
        #expect(position("psmmu[1].cost.spin_ns", in: text) == .init(line: 4, column: 34))
        #expect(TOMLKeyLocations(scanning: text).exactPosition(of: ConfigurationKeyPath([.key("a.b")])) == .init(line: 5, column: 1))
    }

    @Test func arrayElementsAreFoundAcrossLinesAndComments() {
        let text = """
            uids = [ # first line
              1,  # one
              # a comment line
              [2, 3], "x,]"
            ]
            after = 1
            """
        #expect(position("uids[0]", in: text) == .init(line: 2, column: 3))
        #expect(position("uids[1]", in: text) == .init(line: 4, column: 3))
        #expect(position("uids[1][1]", in: text) == .init(line: 4, column: 7))
        #expect(position("uids[2]", in: text) == .init(line: 4, column: 11))
        #expect(position("after", in: text) == .init(line: 6, column: 1))
    }

    @Test func escapesInStringsDoNotEndThemEarly() {
        let text = #"""
            a = "quote \" [[psmmu]] \\"
            b = """ two "" quotes, then "\"\"" """
            c = 1
            """#
        #expect(position("c", in: text) == .init(line: 3, column: 1))
        #expect(position("psmmu", in: text) == nil)
    }

    @Test func escapedNULIsNotedForItsStringOnly() {
        let locations = TOMLKeyLocations(scanning: "a = \"x\\u0000\"\nb = \"\\\\u0000\"\nc = '\\u0000'\n")
        #expect(locations.stringsWithNUL == [path("a")])
    }

    @Test func missingKeyFallsBackToItsTablesHeader() {
        let locations = TOMLKeyLocations(scanning: "[a]\nx = 1\n[[b]]\n[[b]]\ny = 2\n")
        #expect(locations.position(of: path("a.missing")) == .init(line: 1, column: 1))
        #expect(locations.position(of: path("b[1].missing")) == .init(line: 4, column: 1))
        #expect(locations.position(of: path("nowhere.missing")) == nil)
    }

    @Test func keyPathsPrintAsTheErrorKeys() {
        #expect(path("psmmu[1].cost.call_ns").description == "psmmu[1].cost.call_ns")
        #expect(ConfigurationKeyPath([.key("a.b"), .key("c")]).description == "\"a.b\".c")
        #expect(ConfigurationKeyPath([.key("access"), .key("allowed_uids"), .index(2)]).description == "access.allowed_uids[2]")
    }
}
