import Testing

/// A checker of the Prometheus text exposition format (0.0.4) as `vsmmud-cli stats --prometheus`
/// must write it: the test oracle, independent of the code under test.
struct Exposition {
    struct Sample: Hashable {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    /// Every sample, in order.
    private(set) var samples: [Sample] = []
    /// `# TYPE` of each family.
    private(set) var types: [String: String] = [:]
    /// What is wrong with the text; empty when it is valid.
    private(set) var problems: [String] = []

    init(_ text: String) {
        var helps: [String: Int] = [:]
        var finished: Set<String> = []
        var current: String?
        var seen: Set<String> = []
        if !text.isEmpty && !text.hasSuffix("\n") { problems.append("the text does not end in a newline") }
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where !line.isEmpty {
            let at = "line \(number + 1) '\(line)'"
            var family: String
            if line.hasPrefix("#") {
                let parts = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false).map(String.init)
                guard parts.count >= 3, parts[0] == "#", parts[1] == "HELP" || parts[1] == "TYPE" else {
                    problems.append("\(at): a comment that is neither HELP nor TYPE"); continue
                }
                family = parts[2]
                if parts[1] == "HELP" {
                    helps[family, default: 0] += 1
                    if types[family] != nil { problems.append("\(at): HELP after TYPE") }
                } else {
                    guard parts.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(parts[3]) else {
                        problems.append("\(at): bad TYPE"); continue
                    }
                    if types[family] != nil { problems.append("\(at): second TYPE for \(family)") }
                    types[family] = parts[3]
                }
            } else {
                guard let sample = Self.parseSample(String(line)) else { problems.append("\(at): not a sample"); continue }
                family = sample.name
                for suffix in ["_bucket", "_sum", "_count"] where sample.name.hasSuffix(suffix) {
                    let base = String(sample.name.dropLast(suffix.count))
                    if types[base] == "histogram" { family = base }
                }
                guard types[family] != nil else { problems.append("\(at): sample before its family's TYPE"); continue }
                let key = sample.name + "{" + sample.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",") + "}"
                if !seen.insert(key).inserted { problems.append("\(at): duplicate series \(key)") }
                samples.append(sample)
            }
            if current != family {
                if finished.contains(family) { problems.append("\(at): family \(family) is split") }
                if let current { finished.insert(current) }
                current = family
            }
        }
        for (family, type) in types {
            if helps[family] != 1 { problems.append("\(family): \(helps[family] ?? 0) HELP lines") }
            if type == "counter" && !family.hasSuffix("_total") { problems.append("\(family): a counter not ending in _total") }
            if !family.hasPrefix("vsmmud_") { problems.append("\(family): not in the vsmmud_ namespace") }
            if type == "histogram" { checkHistogram(family) }
        }
        for family in helps.keys where types[family] == nil { problems.append("\(family): HELP without TYPE") }
    }

    /// Buckets cumulative in `le` order, ending in `+Inf` equal to `_count`; `_sum` present.
    private mutating func checkHistogram(_ family: String) {
        var series: [[String: String]: [(le: Double, value: Double)]] = [:]
        for s in samples where s.name == family + "_bucket" {
            var labels = s.labels
            guard let le = labels.removeValue(forKey: "le"), let bound = Double(le == "+Inf" ? "inf" : le) else {
                problems.append("\(family): bucket without a numeric le"); continue
            }
            series[labels, default: []].append((bound, s.value))
        }
        if series.isEmpty { problems.append("\(family): no buckets") }
        for (labels, buckets) in series {
            let sorted = buckets.sorted { $0.le < $1.le }
            if zip(sorted, sorted.dropFirst()).contains(where: { $0.value > $1.value }) {
                problems.append("\(family)\(labels): buckets not cumulative")
            }
            if sorted.last?.le != .infinity { problems.append("\(family)\(labels): no +Inf bucket") }
            let count = value(family + "_count", labels)
            if count == nil || sorted.last?.value != count { problems.append("\(family)\(labels): +Inf is not _count") }
            if value(family + "_sum", labels) == nil { problems.append("\(family)\(labels): no _sum") }
        }
    }

    /// The value of the series `name` with exactly `labels`.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }

    /// `name{a="x",b="y"} value`, strictly.
    static func parseSample(_ line: String) -> Sample? {
        var rest = Substring(line)
        let name = rest.prefix { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == ":") }
        guard let first = name.first, !first.isNumber else { return nil }
        rest = rest.dropFirst(name.count)
        var labels: [String: String] = [:]
        if rest.first == "{" {
            rest = rest.dropFirst()
            while rest.first != "}" {
                let label = rest.prefix { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }
                guard let f = label.first, !f.isNumber else { return nil }
                rest = rest.dropFirst(label.count)
                guard rest.hasPrefix("=\"") else { return nil }
                rest = rest.dropFirst(2)
                var value = ""
                while let c = rest.first, c != "\"" {
                    if c == "\\" {
                        rest = rest.dropFirst()
                        guard let e = rest.first, "\\\"n".contains(e) else { return nil }
                        value.append(e == "n" ? "\n" : e)
                    } else {
                        value.append(c)
                    }
                    rest = rest.dropFirst()
                }
                guard rest.first == "\"" else { return nil }
                rest = rest.dropFirst()
                guard labels.updateValue(value, forKey: String(label)) == nil else { return nil }
                if rest.first == "," { rest = rest.dropFirst() } else if rest.first != "}" { return nil }
            }
            rest = rest.dropFirst()
        }
        guard rest.first == " " else { return nil }
        let text = rest.dropFirst()
        let number: Double?
        switch text {
        case "+Inf": number = .infinity
        case "-Inf": number = -.infinity
        case "NaN": number = .nan
        default: number = text.contains(" ") ? nil : Double(text)
        }
        guard let number else { return nil }
        return Sample(name: String(name), labels: labels, value: number)
    }
}
