/// Where each key and array element of a TOML document is written: its line and column.
///
/// TOMLKit gives positions only for syntax errors, not for the values of a parsed document, so a
/// semantic error (a value out of range, an unknown key) is located by scanning the text once more.
/// The scan follows the document's structure the way a TOML parser does — `[table]` and `[[array]]`
/// headers (counting the occurrences of each array of tables, so the third `[[psmmu]]` is `psmmu[2]`),
/// dotted and quoted keys, inline tables and arrays (each element recorded as `key[i]`), and strings of
/// all four kinds and comments, whose contents are skipped — so a key is found in the right section and
/// never inside a string or a comment.
///
/// It is run only on text toml++ accepted, so it does not check the syntax; on anything it does not
/// expect it skips to the next line (it never traps and always advances).
struct TOMLKeyLocations: Sendable {
    /// A 1-based line and column (columns counted in Unicode scalars).
    struct Position: Hashable, Sendable {
        var line: Int
        var column: Int
    }

    /// The first place each path is written: the key of a key/value pair, a table header, an array element.
    private(set) var positions: [ConfigurationKeyPath: Position] = [:]
    /// Basic strings holding an escaped NUL (`\u0000`), which TOMLKit's C-string bridge would cut short.
    private(set) var stringsWithNUL: Set<ConfigurationKeyPath> = []

    init(scanning text: String) {
        var scanner = Scanner(text)
        scanner.scanDocument()
        positions = scanner.positions
        stringsWithNUL = scanner.stringsWithNUL
    }

    /// Where `path` is written, else where its nearest written ancestor is (a missing key is reported at
    /// its table's header); `nil` when neither is in the text.
    func position(of path: ConfigurationKeyPath) -> Position? {
        var path = path
        while !path.isRoot {
            if let position = positions[path] { return position }
            path = path.parent
        }
        return nil
    }

    /// Where exactly `path` is written, without falling back to an ancestor.
    func exactPosition(of path: ConfigurationKeyPath) -> Position? { positions[path] }
}

extension TOMLKeyLocations {
    /// One pass over the document.
    fileprivate struct Scanner {
        let scalars: [Unicode.Scalar]
        var i = 0
        var line = 1
        var lineStart = 0
        var positions: [ConfigurationKeyPath: Position] = [:]
        var stringsWithNUL: Set<ConfigurationKeyPath> = []
        /// The table that key/value lines belong to now.
        var currentTable = ConfigurationKeyPath.root
        /// Elements defined so far of each array of tables (`[[x]]`), by the array's path.
        var arrayTableCounts: [ConfigurationKeyPath: Int] = [:]

        init(_ text: String) {
            var scalars = Array(text.unicodeScalars)
            if scalars.first == "\u{FEFF}" { scalars[0] = " " } // a byte-order mark takes a column, like a space
            self.scalars = scalars
        }

        var atEnd: Bool { i >= scalars.count }
        func peek(_ offset: Int = 0) -> Unicode.Scalar? {
            let j = i + offset
            return j < scalars.count ? scalars[j] : nil
        }
        var position: Position { Position(line: line, column: i - lineStart + 1) }

        /// Moves past one scalar, counting lines.
        mutating func advance() {
            guard i < scalars.count else { return }
            if scalars[i] == "\n" {
                line += 1
                lineStart = i + 1
            }
            i += 1
        }

        mutating func record(_ path: ConfigurationKeyPath, at position: Position) {
            if positions[path] == nil { positions[path] = position }
        }

        mutating func skipSpaces() {
            while let s = peek(), s == " " || s == "\t" || s == "\r" { advance() }
        }

        /// Spaces, newlines and comments (inside arrays and inline tables).
        mutating func skipSpacesNewlinesAndComments() {
            while let s = peek() {
                if s == " " || s == "\t" || s == "\r" || s == "\n" {
                    advance()
                } else if s == "#" {
                    skipToEndOfLine()
                } else {
                    return
                }
            }
        }

        /// Up to (not past) the next newline.
        mutating func skipToEndOfLine() {
            while let s = peek(), s != "\n" { advance() }
        }

        mutating func scanDocument() {
            while !atEnd {
                let start = i
                skipSpaces()
                switch peek() {
                case nil:
                    return
                case "\n":
                    advance()
                case "#":
                    skipToEndOfLine()
                case "[":
                    scanHeader()
                default:
                    scanKeyValue(in: currentTable)
                    skipSpaces()
                    if peek() == "#" { skipToEndOfLine() }
                    if let s = peek(), s != "\n" { skipToEndOfLine() } // unexpected: resynchronise on the next line
                }
                if i == start { advance() } // never stall
            }
        }

        /// `[a.b]` or `[[a.b]]`: makes the named table current.
        mutating func scanHeader() {
            let headerPosition = position
            advance()
            let isArray = peek() == "["
            if isArray { advance() }
            skipSpaces()
            let keys = scanKey()
            skipToEndOfLine()
            guard !keys.isEmpty else { return }
            var path = ConfigurationKeyPath.root
            for (n, key) in keys.enumerated() {
                path = path.appending(key)
                let isLast = n == keys.count - 1
                if isLast && isArray {
                    let index = arrayTableCounts[path, default: 0]
                    arrayTableCounts[path] = index + 1
                    record(path, at: headerPosition)
                    path = path.appending(index: index)
                } else if let count = arrayTableCounts[path] {
                    path = path.appending(index: count - 1) // a sub-table of the latest element
                }
            }
            record(path, at: headerPosition)
            currentTable = path
        }

        /// `key = value`, the key possibly dotted, relative to `table`.
        mutating func scanKeyValue(in table: ConfigurationKeyPath) {
            let keyPosition = position
            let keys = scanKey()
            guard !keys.isEmpty else { return }
            var path = table
            for key in keys {
                path = path.appending(key)
                record(path, at: keyPosition)
            }
            skipSpaces()
            guard peek() == "=" else { return }
            advance()
            skipSpaces()
            scanValue(path)
        }

        /// A dotted key: bare or quoted parts separated by `.`; empty when there is none here.
        mutating func scanKey() -> [String] {
            var keys: [String] = []
            while true {
                skipSpaces()
                guard let s = peek() else { return keys }
                if s == "\"" {
                    advance()
                    keys.append(scanBasicStringBody(path: nil))
                } else if s == "'" {
                    advance()
                    keys.append(scanLiteralStringBody())
                } else if ConfigurationKeyPath.isBareKey(String(s)) {
                    var key = ""
                    while let c = peek(), ConfigurationKeyPath.isBareKey(String(c)) {
                        key.unicodeScalars.append(c)
                        advance()
                    }
                    keys.append(key)
                } else {
                    return keys
                }
                skipSpaces()
                guard peek() == "." else { return keys }
                advance()
            }
        }

        /// Any value; records array elements and inline-table keys under `path`.
        mutating func scanValue(_ path: ConfigurationKeyPath) {
            switch peek() {
            case "\"":
                if peek(1) == "\"" && peek(2) == "\"" {
                    advance(); advance(); advance()
                    scanMultilineBasicString(path: path)
                } else {
                    advance()
                    _ = scanBasicStringBody(path: path)
                }
            case "'":
                if peek(1) == "'" && peek(2) == "'" {
                    advance(); advance(); advance()
                    scanMultilineLiteralString()
                } else {
                    advance()
                    _ = scanLiteralStringBody()
                }
            case "[":
                advance()
                var index = 0
                while true {
                    skipSpacesNewlinesAndComments()
                    guard let s = peek() else { return }
                    if s == "]" { advance(); return }
                    let element = path.appending(index: index)
                    record(element, at: position)
                    let before = i
                    scanValue(element)
                    index += 1
                    skipSpacesNewlinesAndComments()
                    if peek() == "," { advance() } else if peek() != "]" && i == before { return }
                }
            case "{":
                advance()
                while true {
                    skipSpacesNewlinesAndComments()
                    guard let s = peek() else { return }
                    if s == "}" { advance(); return }
                    let before = i
                    scanKeyValue(in: path)
                    skipSpacesNewlinesAndComments()
                    if peek() == "," { advance() } else if peek() != "}" && i == before { return }
                }
            default:
                // Numbers, booleans, dates and times: up to a delimiter.
                while let s = peek(), s != ",", s != "]", s != "}", s != "#", s != "\n" { advance() }
            }
        }

        /// After the opening `"`: up to and past the closing one; returns the decoded text. Notes an
        /// escaped NUL for `path`.
        mutating func scanBasicStringBody(path: ConfigurationKeyPath?) -> String {
            var text = ""
            while let s = peek(), s != "\n" {
                advance()
                if s == "\"" { return text }
                if s == "\\" {
                    if let decoded = scanEscape(path: path) { text.unicodeScalars.append(decoded) }
                } else {
                    text.unicodeScalars.append(s)
                }
            }
            return text
        }

        /// After the opening `"""`: up to and past the closing `"""` (and up to two quotes more, which
        /// belong to the string).
        mutating func scanMultilineBasicString(path: ConfigurationKeyPath) {
            while let s = peek() {
                if s == "\\" {
                    advance()
                    // A line-ending backslash: the escape is the newline and the whitespace after it.
                    if let next = peek(), next == " " || next == "\t" || next == "\r" || next == "\n" { continue }
                    _ = scanEscape(path: path)
                } else if s == "\"" && peek(1) == "\"" && peek(2) == "\"" {
                    advance(); advance(); advance()
                    if peek() == "\"" { advance() }
                    if peek() == "\"" { advance() }
                    return
                } else {
                    advance()
                }
            }
        }

        /// After a backslash in a basic string: the escaped scalar, if it is one.
        mutating func scanEscape(path: ConfigurationKeyPath?) -> Unicode.Scalar? {
            guard let e = peek() else { return nil }
            advance()
            switch e {
            case "b": return "\u{08}"
            case "t": return "\t"
            case "n": return "\n"
            case "f": return "\u{0C}"
            case "r": return "\r"
            case "e": return "\u{1B}"
            case "\"": return "\""
            case "\\": return "\\"
            case "u", "U", "x":
                let digits = e == "U" ? 8 : (e == "u" ? 4 : 2)
                var value: UInt32 = 0
                for _ in 0..<digits {
                    guard let d = peek(), let v = Self.hexValue(d) else { break }
                    value = value << 4 | v
                    advance()
                }
                if value == 0, let path { stringsWithNUL.insert(path) }
                return Unicode.Scalar(value)
            default:
                return e
            }
        }

        static func hexValue(_ s: Unicode.Scalar) -> UInt32? {
            switch s {
            case "0"..."9": return s.value - 48
            case "a"..."f": return s.value - 87
            case "A"..."F": return s.value - 55
            default: return nil
            }
        }

        /// After the opening `'`: up to and past the closing one.
        mutating func scanLiteralStringBody() -> String {
            var text = ""
            while let s = peek(), s != "\n" {
                advance()
                if s == "'" { return text }
                text.unicodeScalars.append(s)
            }
            return text
        }

        /// After the opening `'''`: up to and past the closing `'''` (and up to two quotes more).
        mutating func scanMultilineLiteralString() {
            while let s = peek() {
                if s == "'" && peek(1) == "'" && peek(2) == "'" {
                    advance(); advance(); advance()
                    if peek() == "'" { advance() }
                    if peek() == "'" { advance() }
                    return
                }
                advance()
            }
        }
    }
}
