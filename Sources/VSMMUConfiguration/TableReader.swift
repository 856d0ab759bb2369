import TOMLKit

/// What every check of one document needs: the file's name for errors and where each key is written.
struct ParseContext: Sendable {
    let file: String
    let locations: TOMLKeyLocations

    /// An error about the value at `path`, located at its key (or, when the key is absent, at its table).
    /// Control characters of quoted values are escaped, so the error prints on one line.
    func error(at path: ConfigurationKeyPath, _ message: String) -> ConfigurationError {
        let position = locations.position(of: path)
        return ConfigurationError(file: file, line: position?.line, column: position?.column,
                                  key: path.isRoot ? nil : ConfigurationParser.escapingControlCharacters(path.description),
                                  message: ConfigurationParser.escapingControlCharacters(message))
    }
}

/// One TOML table of the configuration, read with typed accessors that refuse a value of the wrong type
/// with the key's path and line (rather than TOMLKit's `Decodable` path, which reports a wrong type as a
/// missing key).
///
/// Holds a `TOMLTable` (a class, not `Sendable`): made and dropped within one parse call.
struct TableReader {
    let table: TOMLTable
    let path: ConfigurationKeyPath
    let context: ParseContext

    func error(_ key: String, _ message: String) -> ConfigurationError {
        context.error(at: path.appending(key), message)
    }

    /// Refuses the first key (in the text's order) that is not in `allowed`, so a misspelt key is an
    /// error rather than a silently ignored line; suggests the allowed key it is closest to.
    func refuseUnknownKeys(allowed: [String], hint: (String) -> String? = { _ in nil }) throws(ConfigurationError) {
        let unknown = table.keys.filter { !allowed.contains($0) }
        let first = unknown.min { a, b in
            let pa = context.locations.exactPosition(of: path.appending(a)), pb = context.locations.exactPosition(of: path.appending(b))
            return (pa?.line ?? .max, pa?.column ?? .max, a) < (pb?.line ?? .max, pb?.column ?? .max, b)
        }
        guard let key = first else { return }
        var message = "unknown key"
        if let extra = hint(key) {
            message += " (\(extra))"
        } else if let near = Self.nearest(to: key, in: allowed) {
            message += " (did you mean \"\(near)\"?)"
        } else {
            message += "; \(path.isRoot ? "the file" : "[\(path)]") may hold: \(allowed.joined(separator: ", "))"
        }
        throw error(key, message)
    }

    /// The value of `key`, if present, of any type.
    func value(_ key: String) -> TOMLValueConvertible? { table[key] }

    func contains(_ key: String) -> Bool { table[key] != nil }

    /// A string. Refuses other types and a string holding a NUL.
    func string(_ key: String) throws(ConfigurationError) -> String? {
        guard let value = table[key] else { return nil }
        guard value.type == .string, let string = value.string else {
            throw error(key, "expected a string, found \(Self.describe(value))")
        }
        guard !context.locations.stringsWithNUL.contains(path.appending(key)) else {
            throw error(key, "a NUL character is not allowed here")
        }
        return string
    }

    /// An integer in `range`.
    func integer(_ key: String, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int? {
        guard let value = table[key] else { return nil }
        return try Self.integer(value, in: range) { message throws(ConfigurationError) in
            throw error(key, message)
        }
    }

    /// A boolean.
    func bool(_ key: String) throws(ConfigurationError) -> Bool? {
        guard let value = table[key] else { return nil }
        guard value.type == .bool, let bool = value.bool else {
            throw error(key, "expected a boolean (true or false), found \(Self.describe(value))")
        }
        return bool
    }

    /// An array of integers, each in `range`; an element of another type or out of range is reported
    /// with its index (`key[i]`) and line.
    func integerArray(_ key: String, in range: ClosedRange<Int>) throws(ConfigurationError) -> [Int]? {
        guard let value = table[key] else { return nil }
        guard value.type == .array, let array = value.array else {
            throw error(key, "expected an array of integers, found \(Self.describe(value))")
        }
        var integers: [Int] = []
        for index in 0..<array.count {
            let elementPath = path.appending(key).appending(index: index)
            integers.append(try Self.integer(array[index], in: range) { message throws(ConfigurationError) in
                throw context.error(at: elementPath, message)
            })
        }
        return integers
    }

    /// A sub-table (`[path.key]`, `key = { … }` or dotted keys).
    func table(_ key: String) throws(ConfigurationError) -> TableReader? {
        guard let value = table[key] else { return nil }
        guard value.type == .table, let table = value.table else {
            throw error(key, "expected a table ([\(path.appending(key))]), found \(Self.describe(value))")
        }
        return TableReader(table: table, path: path.appending(key), context: context)
    }

    /// An array of tables (`[[key]]` sections, or `key = [{ … }, …]`).
    func arrayOfTables(_ key: String) throws(ConfigurationError) -> [TableReader]? {
        guard let value = table[key] else { return nil }
        let arrayPath = path.appending(key)
        guard value.type == .array, let array = value.array else {
            throw error(key, "expected an array of tables ([[\(arrayPath)]] sections), found \(Self.describe(value))")
        }
        var tables: [TableReader] = []
        for index in 0..<array.count {
            let element = array[index]
            let elementPath = arrayPath.appending(index: index)
            guard element.type == .table, let table = element.table else {
                throw context.error(at: elementPath, "expected a table, found \(Self.describe(element))")
            }
            tables.append(TableReader(table: table, path: elementPath, context: context))
        }
        return tables
    }

    // MARK: - Helpers

    static func integer(_ value: TOMLValueConvertible, in range: ClosedRange<Int>,
                        fail: (String) throws(ConfigurationError) -> Never) throws(ConfigurationError) -> Int {
        guard value.type == .int, let integer = value.int else {
            try fail("expected an integer, found \(describe(value))")
        }
        guard range.contains(integer) else {
            try fail("\(integer) is out of range \(range.lowerBound)...\(range.upperBound)")
        }
        return integer
    }

    /// A value as an error message names it: `the string "64"`, `the integer 3`, `a table`.
    static func describe(_ value: TOMLValueConvertible) -> String {
        switch value.type {
        case .string: return "the string \"\(value.string ?? "")\""
        case .int: return "the integer \(value.int.map(String.init) ?? "?")"
        case .double: return "the float \(value.double.map { "\($0)" } ?? "?")"
        case .bool: return "the boolean \(value.bool.map(String.init) ?? "?")"
        case .array: return "an array"
        case .table: return "a table"
        case .date: return "a date"
        case .time: return "a time"
        case .dateTime: return "a date-time"
        }
    }

    /// The allowed key within edit distance 2 of `key` (the closest, first on ties), if any.
    static func nearest(to key: String, in allowed: [String]) -> String? {
        var best: (distance: Int, key: String)?
        for candidate in allowed {
            let d = editDistance(Array(key.unicodeScalars), Array(candidate.unicodeScalars))
            if d <= 2, best.map({ d < $0.distance }) ?? true { best = (d, candidate) }
        }
        return best?.key
    }

    /// Levenshtein distance.
    static func editDistance(_ a: [Unicode.Scalar], _ b: [Unicode.Scalar]) -> Int {
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}
