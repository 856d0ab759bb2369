/// How figures are written for people: uptimes, latencies, rates and viommu masks.
public enum Format {
    /// A long duration, e.g. `"2d 03h 04m 05s"`, `"4m 05s"`, `"7s"`.
    public static func uptime(nanoseconds: UInt64) -> String {
        let total = nanoseconds / 1_000_000_000
        let days = total / 86_400, hours = total / 3_600 % 24, minutes = total / 60 % 60, seconds = total % 60
        if days > 0 { return "\(days)d \(pad(hours))h \(pad(minutes))m \(pad(seconds))s" }
        if hours > 0 { return "\(hours)h \(pad(minutes))m \(pad(seconds))s" }
        if minutes > 0 { return "\(minutes)m \(pad(seconds))s" }
        return "\(seconds)s"
    }

    /// A short duration with three significant digits and its unit, e.g. `"850 ns"`, `"1.02 µs"`,
    /// `"3.46 ms"`, `"1.20 s"`.
    public static func duration(nanoseconds: Double) -> String {
        let units: [(Double, String)] = [(1e9, "s"), (1e6, "ms"), (1e3, "µs")]
        for (scale, unit) in units where nanoseconds >= scale { return significant(nanoseconds / scale) + " " + unit }
        return significant(nanoseconds) + " ns"
    }

    /// A per-second rate, e.g. `"12.5/s"`, `"1234/s"`.
    public static func rate(_ perSecond: Double) -> String {
        (perSecond >= 100 || perSecond == 0 ? String(Int64(perSecond.rounded())) : fixed(perSecond, decimals: 1)) + "/s"
    }

    /// The set bits of a viommu mask as an index list: `"0,2,5"`, runs of three or more as ranges
    /// (`"0-3,7"`), `"-"` for none.
    public static func indexList(mask: UInt64) -> String {
        var parts: [String] = []
        var bit = 0
        while bit < 64 {
            guard mask & (1 << UInt64(bit)) != 0 else { bit += 1; continue }
            var end = bit
            while end + 1 < 64 && mask & (1 << UInt64(end + 1)) != 0 { end += 1 }
            switch end - bit {
            case 0: parts.append("\(bit)")
            case 1: parts.append("\(bit),\(end)")
            default: parts.append("\(bit)-\(end)")
            }
            bit = end + 1
        }
        return parts.isEmpty ? "-" : parts.joined(separator: ",")
    }

    /// `value` with `decimals` digits after the point (no locale, no exponent).
    public static func fixed(_ value: Double, decimals: Int) -> String {
        guard value.isFinite else { return value.isNaN ? "nan" : (value < 0 ? "-inf" : "inf") }
        var scale = 1.0
        for _ in 0..<max(decimals, 0) { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        guard scaled < 9.0e18 else { return String(value) }
        let whole = UInt64(scaled)
        let sign = value < 0 && whole != 0 ? "-" : ""
        guard decimals > 0 else { return sign + String(whole) }
        let digits = String(whole % UInt64(scale))
        let fraction = String(repeating: "0", count: decimals - digits.count) + digits
        return sign + String(whole / UInt64(scale)) + "." + fraction
    }

    /// Three significant digits: `"1.02"`, `"34.6"`, `"512"`.
    static func significant(_ value: Double) -> String {
        value >= 100 ? fixed(value, decimals: 0) : value >= 10 ? fixed(value, decimals: 1) : fixed(value, decimals: 2)
    }

    private static func pad(_ n: UInt64) -> String { n < 10 ? "0\(n)" : "\(n)" }
}
