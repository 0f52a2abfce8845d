/// A point on a monotonic timeline, in nanoseconds since an arbitrary origin.
///
/// TernCore never reads a clock: drivers (the NIO runtime, the simulator,
/// tests) pass `now` into every event.
public struct TernInstant: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// Nanoseconds since the driver's origin.
    public var nanoseconds: Int64

    /// An instant `nanoseconds` after the origin.
    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

    /// The origin of the timeline.
    public static let zero = TernInstant(nanoseconds: 0)

    public static func < (lhs: TernInstant, rhs: TernInstant) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    public static func + (lhs: TernInstant, rhs: Duration) -> TernInstant {
        TernInstant(nanoseconds: lhs.nanoseconds &+ rhs.ternNanoseconds)
    }

    public static func - (lhs: TernInstant, rhs: Duration) -> TernInstant {
        TernInstant(nanoseconds: lhs.nanoseconds &- rhs.ternNanoseconds)
    }

    public static func - (lhs: TernInstant, rhs: TernInstant) -> Duration {
        .nanoseconds(lhs.nanoseconds &- rhs.nanoseconds)
    }

    public var description: String { "t+\(Double(nanoseconds) / 1e9)s" }
}

extension Duration {
    /// This duration in whole nanoseconds, saturating at the bounds of Int64.
    public var ternNanoseconds: Int64 {
        // From the 128-bit attoseconds directly: `components` divides by 10^18 first, which is slower.
        let ns = attoseconds / 1_000_000_000
        if ns > Int128(Int64.max) { return .max }
        if ns < Int128(Int64.min) { return .min }
        return Int64(ns)
    }

    /// This duration in milliseconds, rounded down.
    public var ternMilliseconds: Int64 { ternNanoseconds / 1_000_000 }
}

/// A small, fast, seedable generator (Steele, Lea and Flood's SplitMix64).
///
/// Core logic takes its randomness from one of these, seeded by the driver,
/// so a simulated run replays exactly from its seed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    /// A generator that produces the same sequence for the same seed.
    public init(seed: UInt64) { self.state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
