/// The path of a value in the configuration document: table keys and array indices from the root, e.g.
/// `psmmu[1].cost.call_ns`. What ``ConfigurationError/key`` names, and how ``TOMLKeyLocations`` finds a
/// value's line.
struct ConfigurationKeyPath: Hashable, Sendable, CustomStringConvertible {
    enum Component: Hashable, Sendable {
        /// A key of a table.
        case key(String)
        /// An element of an array (`[[psmmu]]` tables included), from 0.
        case index(Int)
    }

    var components: [Component]

    init(_ components: [Component] = []) { self.components = components }

    static let root = ConfigurationKeyPath()

    /// This path extended by a table key.
    func appending(_ key: String) -> ConfigurationKeyPath { ConfigurationKeyPath(components + [.key(key)]) }

    /// This path extended by an array index.
    func appending(index: Int) -> ConfigurationKeyPath { ConfigurationKeyPath(components + [.index(index)]) }

    /// The path without its last component; the root for the root.
    var parent: ConfigurationKeyPath { ConfigurationKeyPath(Array(components.dropLast())) }

    var isRoot: Bool { components.isEmpty }

    /// Keys joined with `.`, indices as `[i]`; a key that is not a bare TOML key is quoted.
    var description: String {
        var text = ""
        for component in components {
            switch component {
            case .key(let key):
                if !text.isEmpty { text += "." }
                text += Self.isBareKey(key) ? key : "\"\(key)\""
            case .index(let index):
                text += "[\(index)]"
            }
        }
        return text
    }

    /// Whether `key` can be written without quotes: `A-Za-z0-9_-`, at least one.
    static func isBareKey(_ key: String) -> Bool {
        !key.isEmpty && key.unicodeScalars.allSatisfy { s in
            ("a"..."z").contains(s) || ("A"..."Z").contains(s) || ("0"..."9").contains(s) || s == "_" || s == "-"
        }
    }
}
