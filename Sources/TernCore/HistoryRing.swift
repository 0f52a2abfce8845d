import DequeModule

/// One sequenced publication on a topic.
public struct Publication: Sendable, Hashable {
    /// The topic it was published to.
    public var topic: String
    /// Its place in the topic's stream.
    public var position: StreamPosition
    /// The publisher's idempotency id (empty when the publisher gave none).
    public var id: String
    /// The payload, as compact JSON text.
    public var data: String
    /// The publishing user, when known.
    public var user: String?
    /// When this relay accepted it (sequenced it, or received it from upstream), on this relay's
    /// monotonic timeline, for publish→deliver latency and history expiry.
    public var acceptedAt: TernInstant
    /// When the home sequenced it, in wall-clock nanoseconds since the Unix epoch on the home's clock
    /// (0 when unknown), for the home→delivery latency of each region.
    public var sequencedAtWall: Int64
    /// The hops that handled it, when a subscriber somewhere asked for them (`trace: true`); nil otherwise.
    public var trace: [TraceHop]?
    /// Where a failover home first sequenced it, when the canonical home sequenced it again after the
    /// heal (nil otherwise). A region that does not remember delivering it skips subscribers that
    /// resumed from at or past this position: they have it.
    public var firstPosition: StreamPosition?

    /// A publication with every field given.
    public init(topic: String, position: StreamPosition, id: String, data: String, user: String?, acceptedAt: TernInstant,
                sequencedAtWall: Int64 = 0, trace: [TraceHop]? = nil, firstPosition: StreamPosition? = nil) {
        self.topic = topic
        self.position = position
        self.id = id
        self.data = data
        self.user = user
        self.acceptedAt = acceptedAt
        self.sequencedAtWall = sequencedAtWall
        self.trace = trace
        self.firstPosition = firstPosition
    }
}

/// One relay's handling of a traced publication: which region, what it did, and when by its wall clock.
public struct TraceHop: Sendable, Hashable {
    /// What a relay did with the publication.
    public enum Step: String, Sendable, Hashable, CaseIterable {
        /// The relay a client or backend published to took the publish.
        case received
        /// The topic's home gave it its position.
        case sequenced
        /// A region received it from its upstream on the fan-out tree (and cached it).
        case relayed
        /// The subscriber's relay queued it on the subscriber's connection.
        case delivered
    }

    /// The region of the relay.
    public var region: String
    /// What it did.
    public var step: Step
    /// When, in wall-clock nanoseconds since the Unix epoch on that relay's clock.
    public var at: Int64

    /// A hop with every field given.
    public init(region: String, step: Step, at: Int64) {
        self.region = region
        self.step = step
        self.at = at
    }

    /// Hops kept on one publication at most; a longer path keeps its first hops and the `delivered` one
    /// (a mesh path is usually far shorter, but a grid with links down can reach it).
    public static let maxHops = 16
}

/// Why a recovery request could not be served from history.
public enum RecoveryFailure: String, Sendable, Hashable {
    /// The client's epoch is not the stream's current epoch.
    case epochChanged = "epoch_changed"
    /// The publications after the client's offset have left the ring (size or TTL).
    case evicted = "evicted"
    /// The client claims an offset the stream has not reached.
    case positionAhead = "position_ahead"
    /// The namespace keeps no history.
    case noHistory = "no_history"
    /// What was missed is more than one reply may carry; resync instead.
    case tooLarge = "too_large"
}

/// The result of asking a history ring for everything after a position.
public enum RecoveryResult: Sendable, Hashable {
    /// Every publication after the position, in order (possibly none).
    case recovered([Publication])
    /// The gap cannot be filled; the client must resync from its source of truth.
    case failed(RecoveryFailure)
}

/// A bounded, TTL-limited ring of a topic's most recent publications.
///
/// It serves late joiners and reconnecting clients from the local region.
public struct HistoryRing: Sendable {
    /// The most publications kept.
    public let capacity: Int
    /// How long one publication is kept.
    public let ttl: Duration
    private var entries: Deque<Publication> = []
    /// Appends that did not follow the newest entry (another epoch, or an offset not past it).
    /// Entries only leave from the front, so the ring is ordered exactly when this is zero.
    private var misplacedAppends = 0

    /// An empty ring keeping at most `capacity` publications for `ttl`.
    public init(capacity: Int, ttl: Duration) {
        self.capacity = max(0, capacity)
        self.ttl = ttl
    }

    /// The number of publications held.
    public var count: Int { entries.count }
    /// Every publication held, oldest first.
    public var all: [Publication] { Array(entries) }
    /// Whether the ring holds nothing.
    public var isEmpty: Bool { entries.isEmpty }
    /// The newest publication held, if any.
    public var newest: Publication? { entries.last }
    /// The oldest offset held, if any.
    public var oldestOffset: UInt64? { entries.first?.position.offset }
    /// When the oldest held publication expires, if any.
    public var nextExpiry: TernInstant? { entries.first.map { $0.acceptedAt + ttl } }

    /// Appends a publication, evicting the oldest when full.
    public mutating func append(_ publication: Publication) {
        guard capacity > 0 else { return }
        if let last = entries.last?.position,
           last.epoch != publication.position.epoch || last.offset >= publication.position.offset {
            misplacedAppends += 1
        }
        if entries.count == capacity { entries.removeFirst() }
        entries.append(publication)
    }

    /// Drops every publication older than the TTL at `now`.
    public mutating func expire(now: TernInstant) {
        while let first = entries.first, first.acceptedAt + ttl <= now {
            entries.removeFirst()
        }
    }

    /// Everything after `position`, given the stream is now at `current`.
    ///
    /// Expired entries are dropped first, so a TTL-evicted gap is reported as one.
    public mutating func publications(after position: StreamPosition, current: StreamPosition, now: TernInstant) -> RecoveryResult {
        expire(now: now)
        if position.epoch != current.epoch { return .failed(.epochChanged) }
        if position.offset > current.offset { return .failed(.positionAhead) }
        if position.offset == current.offset { return .recovered([]) }
        if capacity == 0 { return .failed(.noHistory) }
        guard let oldest = entries.first?.position.offset, oldest <= position.offset + 1 else {
            return .failed(.evicted)
        }
        // Offsets grow but need not be contiguous (an adopted epoch continues past a jump):
        // find the first publication after `position` by binary search, never by arithmetic.
        return .recovered(Array(entries[firstIndex(after: position.offset)...]))
    }

    /// The index of the first held publication whose offset is greater than `offset` (or `count`).
    func firstIndex(after offset: UInt64) -> Int {
        var low = 0
        var high = entries.count
        while low < high {
            let mid = (low + high) / 2
            if entries[mid].position.offset <= offset { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// Whether offsets strictly increase from oldest to newest, all in one epoch (checked as an
    /// invariant after every event, so it costs O(1): each append is checked against the newest entry).
    public var isOrdered: Bool { misplacedAppends == 0 }
}
