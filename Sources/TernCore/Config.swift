/// Options a namespace carries for every topic in it.
public struct NamespaceOptions: Hashable, Sendable {
    /// Whether the relay tracks who is in each topic.
    public var presence: Bool = false
    /// Whether subscribers receive join and leave events (needs `presence`).
    public var joinLeave: Bool = false
    /// How many publications each topic's history ring keeps (0 disables recovery).
    public var historySize: Int = 0
    /// How long a publication stays in the history ring.
    public var historyTTL: Duration = .seconds(300)
    /// Whether clients without a token may subscribe and read presence.
    public var anonymous: Bool = false
    /// Whether connected clients may publish (backends always may, with the API key).
    public var clientPublish: Bool = true
    /// The most subscribers one topic accepts in this region (0 means no limit).
    public var maxSubscribers: Int = 0
    /// The region every topic of this namespace lives in, instead of one chosen by rendezvous hashing.
    public var home: String?
    /// When a publish is acknowledged: once a second region holds it (the default), or as soon
    /// as the home has sequenced it.
    public var ack: AckMode = .replicated

    /// Defaults: no presence, no history, tokens required.
    public init() {}

    /// All options spelled out.
    public init(
        presence: Bool, joinLeave: Bool, historySize: Int, historyTTL: Duration,
        anonymous: Bool, clientPublish: Bool = true, maxSubscribers: Int = 0
    ) {
        self.presence = presence
        self.joinLeave = joinLeave
        self.historySize = historySize
        self.historyTTL = historyTTL
        self.anonymous = anonymous
        self.clientPublish = clientPublish
        self.maxSubscribers = maxSubscribers
    }
}

/// When a topic's home acknowledges a publish.
public enum AckMode: String, Hashable, Sendable, CaseIterable {
    /// Once the topic's successor (the region that takes over if the home fails) holds the
    /// publication: an acknowledgment survives the crash of any one region. Costs one link round trip.
    case replicated
    /// As soon as the home has sequenced it: faster, but a home that crashes before the
    /// publication reaches another region loses it although it was acknowledged.
    case leader
}

/// Limits that protect one relay from its clients. Every one has a default.
public struct RelayLimits: Hashable, Sendable {
    /// The largest client message accepted, in bytes; larger ones get an error reply.
    public var maxFrameBytes: Int = 65_536
    /// The most bytes queued for one client before volatile events are shed and then the client is closed.
    public var maxQueueBytes: Int = 1_048_576
    /// The most topics one client may subscribe to.
    public var maxSubscriptionsPerClient: Int = 128
    /// Sustained publishes per second allowed for one client.
    public var publishRatePerSecond: Double = 50
    /// Publishes one client may burst above the sustained rate.
    public var publishBurst: Double = 100
    /// Sustained new connections per second the relay accepts.
    public var acceptRatePerSecond: Double = 500
    /// New connections the relay accepts in a burst above the sustained rate.
    public var acceptBurst: Double = 1_000
    /// How long a WebSocket may stay open without a successful connect command.
    public var connectTimeout: Duration = .seconds(10)
    /// The most presence entries one presence reply carries.
    public var maxPresenceList: Int = 1_000
    /// How long an idempotency id is remembered per topic.
    public var idempotencyWindow: Duration = .seconds(120)
    /// How many idempotency ids are remembered per topic at most.
    public var idempotencyCapacity: Int = 10_000
    /// The longest a long-poll request is held.
    public var maxPollTimeout: Duration = .seconds(30)
    /// How long an idle topic's stream (and its epoch) is kept after its last subscriber, publish or poll.
    public var streamLinger: Duration = .seconds(300)
    /// The spread of reconnect delays told to clients when the relay drains.
    public var drainWindow: Duration = .seconds(10)

    /// The defaults.
    public init() {}
}

/// What one relay's core needs to know: its region, namespaces and limits.
public struct RelayCoreConfig: Sendable {
    /// The region this relay serves.
    public var region: String
    /// Options by namespace name.
    public var namespaces: [String: NamespaceOptions]
    /// Limits for this relay.
    public var limits: RelayLimits
    /// The mesh this relay belongs to; nil for a relay on its own.
    public var mesh: MeshConfig?
    /// Whether the core checks its own invariants after every event (`invariantFailures`). On in
    /// debug builds; the simulator turns it on in every build.
    public var checkInvariants: Bool = {
        #if DEBUG
        true
        #else
        false
        #endif
    }()
    /// How much of the full invariant sweep an event pays for, on average, in items visited (clients,
    /// topics, queued link messages). A core smaller than this is swept after every event; a larger
    /// one after every size/budget events, so a big simulated mesh is not slowed down by its checks.
    /// Whatever the size, every client and topic an event changed, and the totals over them, are
    /// checked after that event (`RelayCore.checkChangedAfterEvent`).
    public var invariantBudgetPerEvent: Int = 256
    /// A core with fewer items than this is swept after every event, whatever the budget.
    public var invariantSweepEveryEventBelow: Int = 64

    /// A config for `region` with `namespaces` and `limits`.
    public init(region: String, namespaces: [String: NamespaceOptions], limits: RelayLimits = RelayLimits(), mesh: MeshConfig? = nil) {
        self.region = region
        self.namespaces = namespaces
        self.limits = limits
        self.mesh = mesh
    }
}
