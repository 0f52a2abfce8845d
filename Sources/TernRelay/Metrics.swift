import Prometheus
import Synchronization
import TernCore

/// The relay's Prometheus metrics, in a registry of its own so several
/// relays can share a process (`tern up`, tests).
public final class RelayMetrics: Sendable {
    /// The registry `/metrics` renders.
    public let registry: PrometheusCollectorRegistry
    let connections: Gauge
    let subscriptions: Gauge
    let topics: Gauge
    let queueBytes: Gauge
    let publications: Counter
    let deliveries: Counter
    let duplicates: Counter
    let shed: Counter
    let slowConsumers: Counter
    let rejected: Counter
    let presenceResyncs: Counter
    let publishToDeliver: DurationHistogram
    let homeToDeliver: DurationHistogram
    private let latest = Mutex(RelayStats())

    /// The relay core's counters as of the last event that changed them (for `/status`).
    public var coreStats: RelayStats { latest.withLock { $0 } }

    /// Metrics labelled with `region`.
    public init(region: String, registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        let labels = [("region", region)]
        connections = registry.makeGauge(descriptor: .init(namespace: "tern", metricName: "connections", unitName: "", helpText: "Open client connections"), labels: labels)
        subscriptions = registry.makeGauge(descriptor: .init(namespace: "tern", metricName: "subscriptions", unitName: "", helpText: "Active topic subscriptions"), labels: labels)
        topics = registry.makeGauge(descriptor: .init(namespace: "tern", metricName: "topics", unitName: "", helpText: "Topic streams held in memory"), labels: labels)
        queueBytes = registry.makeGauge(descriptor: .init(namespace: "tern", metricName: "client_queue", unitName: "bytes", helpText: "Bytes queued for all clients"), labels: labels)
        publications = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "publications", unitName: "total", helpText: "Publications sequenced"), labels: labels)
        deliveries = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "deliveries", unitName: "total", helpText: "Frames written to clients"), labels: labels)
        duplicates = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "duplicate_publishes", unitName: "total", helpText: "Publishes answered from the idempotency cache"), labels: labels)
        shed = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "volatile_shed", unitName: "total", helpText: "Volatile events coalesced or dropped under pressure"), labels: labels)
        slowConsumers = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "slow_consumer_closes", unitName: "total", helpText: "Clients closed as slow consumers"), labels: labels)
        presenceResyncs = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "presence_resyncs", unitName: "total", helpText: "Presence digests from upstream that showed divergence and made this region ask for snapshots again"), labels: labels)
        rejected = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "rejected_connections", unitName: "total", helpText: "Connections refused by rate limit or drain"), labels: labels)
        publishToDeliver = registry.makeDurationHistogram(
            descriptor: .init(namespace: "tern", metricName: "publish_to_deliver", unitName: "seconds",
                              helpText: "Time from a publication's acceptance to its write to a subscriber"),
            labels: labels,
            buckets: [.microseconds(100), .microseconds(500), .milliseconds(1), .milliseconds(5), .milliseconds(10),
                      .milliseconds(50), .milliseconds(100), .milliseconds(500), .seconds(1), .seconds(5)])
        homeToDeliver = registry.makeDurationHistogram(
            descriptor: .init(namespace: "tern", metricName: "home_to_deliver", unitName: "seconds",
                              helpText: "Time from sequencing at the topic's home (home's wall clock) to the write to a subscriber here (this relay's wall clock)"),
            labels: labels,
            buckets: [.microseconds(100), .microseconds(500), .milliseconds(1), .milliseconds(5), .milliseconds(10),
                      .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5)])
    }

    /// Brings counters and gauges up to date with the core's stats.
    func update(from stats: RelayStats, previous: RelayStats, queued: Int) {
        latest.withLock { $0 = stats }
        connections.set(Int64(stats.connections))
        subscriptions.set(Int64(stats.subscriptions))
        topics.set(Int64(stats.topics))
        queueBytes.set(Int64(queued))
        func add(_ counter: Counter, _ now: Int, _ before: Int) { if now > before { counter.increment(by: Int64(now - before)) } }
        add(publications, stats.publications, previous.publications)
        add(duplicates, stats.duplicatePublishes, previous.duplicatePublishes)
        add(shed, stats.volatileShed, previous.volatileShed)
        add(slowConsumers, stats.slowConsumerCloses, previous.slowConsumerCloses)
        add(rejected, stats.rejectedConnections, previous.rejectedConnections)
        add(presenceResyncs, stats.presenceResyncs, previous.presenceResyncs)
    }
}
