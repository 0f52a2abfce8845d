import DequeModule

/// A token bucket: `rate` tokens a second, holding at most `burst`.
public struct TokenBucket: Sendable {
    /// Tokens added per second.
    public let rate: Double
    /// The most tokens held.
    public let burst: Double
    private var tokens: Double
    private var updated: TernInstant

    /// A full bucket at `now`.
    public init(rate: Double, burst: Double, now: TernInstant) {
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = max(1, burst)
        self.updated = now
    }

    /// Takes one token if there is one; returns whether it did.
    public mutating func take(now: TernInstant) -> Bool {
        if now > updated {
            let elapsed = Double((now - updated).ternNanoseconds) / 1e9
            tokens = min(burst, tokens + elapsed * rate)
            updated = now
        }
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}

/// Remembers recent idempotency ids per topic, bounded in count and age.
public struct IdempotencyCache: Sendable {
    private struct Entry: Sendable {
        var id: String
        var position: StreamPosition
        var at: TernInstant
    }

    /// The most ids remembered.
    public let capacity: Int
    /// How long an id is remembered.
    public let window: Duration
    private var byID: [String: (position: StreamPosition, mark: UInt64)] = [:]
    private var order: Deque<Entry> = []

    /// An empty cache.
    public init(capacity: Int, window: Duration) {
        self.capacity = max(1, capacity)
        self.window = window
    }

    /// The position first assigned to `id`, if it is still remembered.
    public mutating func lookup(_ id: String, now: TernInstant) -> StreamPosition? {
        expire(now: now)
        return byID[id]?.position
    }

    /// The position and mark `id` was remembered with, if it is still remembered.
    public mutating func entry(of id: String, now: TernInstant) -> (position: StreamPosition, mark: UInt64)? {
        expire(now: now)
        return byID[id]
    }

    /// Remembers that `id` was assigned `position`, with a caller's `mark` (a region's subscription
    /// serial when it delivered the id, say).
    public mutating func remember(_ id: String, position: StreamPosition, now: TernInstant, mark: UInt64) {
        expire(now: now)
        if order.count >= capacity, let oldest = order.popFirst() {
            if byID[oldest.id]?.position == oldest.position { byID[oldest.id] = nil }
        }
        byID[id] = (position, mark)
        order.append(Entry(id: id, position: position, at: now))
    }

    private mutating func expire(now: TernInstant) {
        while let first = order.first, first.at + window <= now {
            order.removeFirst()
            if byID[first.id]?.position == first.position { byID[first.id] = nil }
        }
    }
}
