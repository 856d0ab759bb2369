/// A histogram with power-of-two buckets as STATS carries them (`*_LOG2*` keys): bucket *b* counts the
/// values *v* with 2^b ≤ *v* < 2^(b+1) (bucket 0 also counts 0).
///
/// Only bucket bounds are known, not the values: a quantile is reported as the bucket holding it.
public struct Log2Histogram: Hashable, Sendable {
    /// Buckets 0…63.
    public private(set) var buckets: [UInt64]
    /// The number of values, as the server counts them (at least the buckets' sum).
    public var count: UInt64
    /// The values' sum, when the server reports it.
    public var sum: UInt64?

    public static let bucketCount = 64

    /// An empty histogram.
    public init() {
        buckets = Array(repeating: 0, count: Self.bucketCount)
        count = 0
        sum = nil
    }

    /// A histogram from `(bucket, count)` pairs; buckets outside 0…63 are ignored. `count` defaults to
    /// the buckets' sum.
    public init(buckets pairs: [(bucket: Int, count: UInt64)], count: UInt64? = nil, sum: UInt64? = nil) {
        self.init()
        for (bucket, n) in pairs where buckets.indices.contains(bucket) { buckets[bucket] &+= n }
        self.count = max(count ?? 0, bucketTotal)
        self.sum = sum
    }

    /// The sum of the bucket counts.
    public var bucketTotal: UInt64 { buckets.reduce(0, &+) }

    /// The non-empty buckets, ascending.
    public var nonEmptyBuckets: [(bucket: Int, count: UInt64)] {
        buckets.enumerated().filter { $0.element > 0 }.map { (bucket: $0.offset, count: $0.element) }
    }

    /// The values bucket `b` holds: `lower ..< upper` = 2^b ..< 2^(b+1) (bucket 0 from 0; bucket 63's upper
    /// bound, 2^64, is given as `UInt64.max`).
    public static func bounds(ofBucket b: Int) -> (lower: UInt64, upper: UInt64) {
        let bucket = min(max(b, 0), 63)
        let lower: UInt64 = bucket == 0 ? 0 : 1 << UInt64(bucket)
        let upper: UInt64 = bucket == 63 ? .max : 1 << UInt64(bucket + 1)
        return (lower, upper)
    }

    /// The bucket holding the `q`-quantile (0 < q ≤ 1): the first bucket whose cumulative count reaches
    /// ⌈q × total⌉. `nil` when the buckets are empty.
    public func quantileBucket(_ q: Double) -> Int? {
        let total = bucketTotal
        guard total > 0 else { return nil }
        let rank = max(1, UInt64((min(max(q, 0), 1) * Double(total)).rounded(.up)))
        var cumulative: UInt64 = 0
        for (b, n) in buckets.enumerated() {
            cumulative &+= n
            if cumulative >= rank { return b }
        }
        return buckets.lastIndex { $0 > 0 }
    }

    /// The bounds of the bucket holding the `q`-quantile.
    public func quantileBounds(_ q: Double) -> (lower: UInt64, upper: UInt64)? {
        quantileBucket(q).map(Self.bounds(ofBucket:))
    }

    /// `sum / count`, when both are known and `count > 0`.
    public var mean: Double? {
        guard let sum, count > 0 else { return nil }
        return Double(sum) / Double(count)
    }
}
