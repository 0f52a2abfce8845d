import Prometheus
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
    let publishToDeliver: DurationHistogram

    /// Metrics labelled with `region`.
    public init(region: String, registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        let labels = [("region", region)]
        connections = registry.makeGauge(descriptor: .init(metricName: "tern_connections", helpText: "Open client connections"), labels: labels)
        subscriptions = registry.makeGauge(descriptor: .init(metricName: "tern_subscriptions", helpText: "Active topic subscriptions"), labels: labels)
        topics = registry.makeGauge(descriptor: .init(metricName: "tern_topics", helpText: "Topic streams held in memory"), labels: labels)
        queueBytes = registry.makeGauge(descriptor: .init(metricName: "tern_client_queue_bytes", helpText: "Bytes queued for all clients"), labels: labels)
        publications = registry.makeCounter(descriptor: .init(metricName: "tern_publications_total", helpText: "Publications sequenced"), labels: labels)
        deliveries = registry.makeCounter(descriptor: .init(metricName: "tern_deliveries_total", helpText: "Frames written to clients"), labels: labels)
        duplicates = registry.makeCounter(descriptor: .init(metricName: "tern_duplicate_publishes_total", helpText: "Publishes answered from the idempotency cache"), labels: labels)
        shed = registry.makeCounter(descriptor: .init(metricName: "tern_volatile_shed_total", helpText: "Volatile events coalesced or dropped under pressure"), labels: labels)
        slowConsumers = registry.makeCounter(descriptor: .init(metricName: "tern_slow_consumer_closes_total", helpText: "Clients closed as slow consumers"), labels: labels)
        rejected = registry.makeCounter(descriptor: .init(metricName: "tern_rejected_connections_total", helpText: "Connections refused by rate limit or drain"), labels: labels)
        publishToDeliver = registry.makeDurationHistogram(
            name: "tern_publish_to_deliver_seconds", labels: labels,
            buckets: [.microseconds(100), .microseconds(500), .milliseconds(1), .milliseconds(5), .milliseconds(10),
                      .milliseconds(50), .milliseconds(100), .milliseconds(500), .seconds(1), .seconds(5)],
            help: "Time from a publication's acceptance to its write to a subscriber")
    }

    /// Brings counters and gauges up to date with the core's stats.
    func update(from stats: RelayStats, previous: RelayStats, queued: Int) {
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
    }
}
