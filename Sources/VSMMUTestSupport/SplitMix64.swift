/// SplitMix64: a small, fast, deterministic pseudo-random generator, so that every randomised test,
/// workload generator and benchmark replays the same sequence in every run and in CI.
///
/// Not for anything that needs unpredictability.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    /// A generator whose sequence is fixed by `seed`.
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in `0 ..< bound` (`bound` > 0), with the slight modulo bias tests can live with.
    public mutating func next(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}
