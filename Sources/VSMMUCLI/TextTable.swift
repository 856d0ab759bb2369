/// A plain-text table: a header row and aligned columns separated by two spaces; text columns are
/// left-aligned, the others right-aligned.
public struct TextTable: Sendable {
    public enum Alignment: Sendable { case left, right }

    public var headers: [String]
    public var alignments: [Alignment]
    public private(set) var rows: [[String]] = []

    /// A table with these column headers; columns are right-aligned unless `alignments` says otherwise.
    public init(_ headers: [String], alignments: [Alignment]? = nil) {
        self.headers = headers
        self.alignments = alignments ?? Array(repeating: .right, count: headers.count)
    }

    /// Adds a row; missing cells are empty, extra ones dropped.
    public mutating func append(_ row: [String]) {
        rows.append(Array((row + Array(repeating: "", count: max(0, headers.count - row.count))).prefix(headers.count)))
    }

    /// The table, one line per row (the header first unless `header` is false), each ending in a newline.
    public func render(indent: String = "", header: Bool = true) -> String {
        var widths = header ? headers.map(\.count) : Array(repeating: 0, count: headers.count)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        func line(_ cells: [String]) -> String {
            var out = indent
            for (i, cell) in cells.enumerated() {
                let padding = String(repeating: " ", count: widths[i] - cell.count)
                let alignment = i < alignments.count ? alignments[i] : .right
                out += (i == 0 ? "" : "  ") + (alignment == .left ? cell + (i == cells.count - 1 ? "" : padding) : padding + cell)
            }
            while out.last == " " { out.removeLast() }
            return out + "\n"
        }
        return (header ? line(headers) : "") + rows.map(line).joined()
    }
}
