import Foundation
import HeapModule
import NIOCore
import TernCore
import TernTopology
import TernWire

/// Encodes each message as an index into a log, so simulated clients read
/// back the exact `ServerMessage` without JSON work. Shared frames stay
/// shared: one entry per publication per region, like the real encoder.
final class SimEncoder: ServerMessageEncoding, @unchecked Sendable {
    var log: [ServerMessage] = []

    func encode(_ message: ServerMessage) -> ByteBuffer {
        log.append(message)
        var b = ByteBuffer()
        b.writeInteger(UInt32(log.count - 1))
        return b
    }

    func encodeSSE(_ message: ServerMessage, cursor: inout [String: StreamPosition]) -> ByteBuffer { encode(message) }

    func decode(_ frame: OutboundFrame) -> ServerMessage {
        log[Int(frame.bytes.getInteger(at: frame.bytes.readerIndex, as: UInt32.self)!)]
    }
}

/// Percentiles of a set of latencies.
public struct Percentiles: Sendable, Codable {
    public var count: Int
    public var p50Ms: Double
    public var p90Ms: Double
    public var p99Ms: Double
    public var maxMs: Double

    /// The percentiles of `samples` (nanoseconds): the value at rank ⌊count × q⌋ of the sorted samples.
    /// Each rank is selected in place rather than sorting all, since a run keeps one sample per delivery.
    init(_ samples: [Int64]) {
        var values = samples
        self.init(selectingIn: &values)
    }

    /// The percentiles of `values`, selected in the caller's array (which is left in another order),
    /// so a run's large arrays of samples are not copied.
    init(selectingIn values: inout [Int64]) {
        count = values.count
        guard !values.isEmpty else {
            p50Ms = 0; p90Ms = 0; p99Ms = 0; maxMs = 0
            return
        }
        // Ranks in increasing order, each selected in the part above the one before.
        var low = 0
        func at(_ q: Double) -> Double {
            let rank = min(values.count - 1, Int(Double(values.count) * q))
            Self.select(&values, rank: rank, from: low)
            low = rank
            return Double(values[rank]) / 1e6
        }
        p50Ms = at(0.5)
        p90Ms = at(0.9)
        p99Ms = at(0.99)
        maxMs = Double(values[low...].max()!) / 1e6
    }

    /// Moves the value of rank `rank` (in sorted order) within `values[from...]` to index `rank`, with
    /// no smaller value after it and no larger one before it (Hoare's selection, median-of-three pivot).
    static func select(_ values: inout [Int64], rank: Int, from: Int) {
        values.withUnsafeMutableBufferPointer { v in
            var lo = from
            var hi = v.count - 1
            while lo < hi {
                let mid = lo + (hi - lo) / 2
                // The median of three as the pivot keeps sorted and reversed input linear.
                if v[mid] < v[lo] { v.swapAt(mid, lo) }
                if v[hi] < v[lo] { v.swapAt(hi, lo) }
                if v[hi] < v[mid] { v.swapAt(hi, mid) }
                let pivot = v[mid]
                var i = lo
                var j = hi
                while i <= j {
                    while v[i] < pivot { i += 1 }
                    while pivot < v[j] { j -= 1 }
                    if i <= j {
                        v.swapAt(i, j)
                        i += 1
                        j -= 1
                    }
                }
                // Now v[lo...j] <= pivot <= v[i...hi], and anything between equals the pivot.
                if rank <= j {
                    hi = j
                } else if rank >= i {
                    lo = i
                } else {
                    return
                }
            }
        }
    }
}

/// What one simulated run produced.
public struct SimulationResult: Sendable, Codable {
    public var scenario: String
    public var seed: UInt64
    public var traceHash: String
    public var violations: [String]
    public var simulatedSeconds: Double
    public var events: Int
    public var clients: Int
    public var publishes: Int
    public var acknowledged: Int
    public var deliveries: Int
    public var linkBatches: Int
    public var linkEntries: Int
    public var linkWireBytes: Int
    public var linkRawBytes: Int
    public var linkMessagesPerPublish: Double
    public var linkBytesPerPublish: Double
    /// Link entries sent, by kind.
    public var linkEntriesByKind: [String: Int]
    public var latencyByRegion: [String: Percentiles]
    public var latency: Percentiles
    /// Publish → acknowledgment latency, as the publishing client sees it.
    public var ackLatency: Percentiles
    /// Latency histogram: upper bound in milliseconds → count. The last bucket,
    /// `SimulationResult.overflowBucket`, holds everything above 10 s (JSON has no infinity).
    public var histogram: [Double: Int]
    /// The key of the histogram's open-ended last bucket.
    public static let overflowBucket = 1e9
    /// Faults and notable moments: (seconds, label).
    public var timeline: [TimelineEntry]
    /// Deliveries per second of simulated time, for the report.
    public var deliveriesPerSecond: [Int]

    public struct TimelineEntry: Sendable, Codable {
        public var seconds: Double
        public var label: String
    }

    public var passed: Bool { violations.isEmpty }
}

/// A single-threaded, discrete-event simulation of a whole mesh: the real
/// `RelayCore` of every region, joined by simulated TCP links and clients,
/// driven by one seeded generator and a simulated clock.
public final class Simulation {
    // MARK: State

    enum Kind {
        case linkDeliver(Direction, generation: Int, batch: [LinkMessage])
        case linkReconnect(String, String)
        // Clients are named by their index in `clients` (`ClientKey.index`), which never changes.
        case clientFrames(Int, Int, [ServerMessage])
        /// One frame, the usual case, without an array to hold it.
        case clientFrame(Int, Int, ServerMessage)
        /// A publication frame, read once for all the clients one `write` sends it to.
        case clientPublication(Int, Int, SharedPublication)
        case clientSend(Int, Int, UInt64, ClientCommand)
        case clientClosedByRelay(Int, Int, CloseCode)
        case clientReconnect(Int)
        /// A subscriber's subscribe failed with a retryable error: it tries again on the same connection.
        case clientResubscribe(Int, Int)
        /// A region's next deadline, by its index in `regionNames`.
        case tick(Int)
        case publish
        case celebrityPublish
        case churn(String)
        case fault(Fault)
        case endSlow(String)
        case endClog(String)
        case presenceCheck
    }

    /// The events to come: a heap of small entries ordered by time and then by the order of scheduling,
    /// with each event's kind in a slot table. One value, so that scheduling or taking an event is one
    /// access to the simulation's state (each checked for exclusivity in debug builds) rather than one
    /// per field.
    struct Agenda {
        private var queue = Heap<Event>()
        /// The kinds of queued events, by `Event.slot`; freed slots are used again.
        private var kinds: [Kind?] = []
        private var freeSlots: [Int32] = []
        private var sequence: UInt64 = 0

        mutating func schedule(_ at: TernInstant, _ kind: Kind) {
            sequence += 1
            let slot: Int32
            if let free = freeSlots.popLast() {
                slot = free
                kinds[Int(free)] = kind
            } else {
                slot = Int32(kinds.count)
                kinds.append(kind)
            }
            queue.insert(Event(at: at, sequence: sequence, slot: slot))
        }

        /// Takes the earliest event and its kind.
        mutating func next() -> (Event, Kind)? {
            guard let event = queue.popMin() else { return nil }
            let kind = kinds[Int(event.slot)].take()!
            freeSlots.append(event.slot)
            return (event, kind)
        }
    }

    /// An entry of the event queue: when, the order of scheduling among events at the same instant,
    /// and where its `Kind` is kept (`Agenda`). Small and without references, so the heap
    /// moves 24 bytes, not a payload, and retains nothing.
    struct Event: Comparable {
        var at: TernInstant
        var sequence: UInt64
        var slot: Int32
        static func < (a: Event, b: Event) -> Bool { (a.at, a.sequence) < (b.at, b.sequence) }
        static func == (a: Event, b: Event) -> Bool { a.at == b.at && a.sequence == b.sequence }
    }

    struct ClientKey: Hashable { var region: String; var index: Int }

    /// A publication as the clients of one `write` receive it. Held by reference, so that each
    /// client's event carries a pointer instead of a copy of the publication's fields, each of
    /// which would be retained and released per client.
    final class SharedPublication {
        let message: ServerMessage
        let publication: Publication
        let facts: PublicationFacts
        init(_ message: ServerMessage, _ publication: Publication, _ facts: PublicationFacts) {
            self.message = message
            self.publication = publication
            self.facts = facts
        }
    }

    /// What the checks of a delivery read of the publication alone, whichever client gets it: worked
    /// out once for all the clients of a `write` rather than once per client.
    struct PublicationFacts {
        /// The publish it came from (`sentPublish`), if the simulation sent it.
        var published: (number: Int, topic: String, at: TernInstant)?
        /// Its hops name a region it was sequenced in that its epoch does not belong to.
        var sequencedElsewhere: Bool
    }

    /// A relay's simulated clients by connection id. The simulator numbers connections from 1, so an
    /// array indexed by id serves, with no hashing on the delivery path.
    struct Connections {
        private var slots: [SimClient?] = []

        subscript(id: ClientID) -> SimClient? {
            get {
                let i = Int(id.raw)
                return i < slots.count ? slots[i] : nil
            }
            set {
                let i = Int(id.raw)
                while slots.count <= i { slots.append(nil) }
                slots[i] = newValue
            }
        }
    }

    enum Role { case subscriber(String), publisher, churner }

    final class SimClient {
        let key: ClientKey
        /// The index of the client's region in `regionNames`.
        let regionIndex: Int
        let role: Role
        var connection: ClientID?
        var generation = 0
        var connected = false
        var position: StreamPosition?
        var subscribedAt: TernInstant?
        var wantsPresence = false
        var inPresence = false
        var noticeCount = 0
        /// After an `epoch` push the relay skips publications the client already has, so offsets in that epoch may jump.
        var mergeEpochs: Set<String> = []
        /// The epoch of the last delivery and its number in `Simulation.epochNames`.
        var deliveryEpoch: (name: String, id: Int32)?
        var expectOrderViolation = false
        var slowUntil: TernInstant?
        var lastArrival = TernInstant.zero
        var lastSend = TernInstant.zero
        var nextRef: UInt64 = 1
        /// Publishes waiting for their acknowledgment: ref → publish number.
        var pendingPublishes: [UInt64: Int] = [:]
        /// The ref of the subscribe waiting for its reply.
        var subscribeRef: UInt64?
        var advisedDelay: Duration?
        /// Frames its relay wrote to it in the event being handled, not yet sent on (`Simulation.handle`).
        var written: [ServerMessage] = []
        /// The `Simulation.handle` call whose `write` actions name it more than once, and which gathers
        /// its frames in `written`; and the last call that counted it (both by `Simulation.writeStamp`).
        var gatheredBy = 0
        var countedBy = 0
        /// Every third subscriber asks for per-hop timestamps.
        var traces: Bool { key.index % 3 == 0 }
        init(key: ClientKey, regionIndex: Int, role: Role) { self.key = key; self.regionIndex = regionIndex; self.role = role }
    }

    /// One publication a client received: its position (the epoch by its number in `epochNames`) and
    /// its publish number (`p<n>` is `n`). 16 bytes and without references: a run keeps one per
    /// delivery, and writing fresh memory is a large part of its cost.
    struct Delivery {
        var epoch: Int32
        var publish: Int32
        /// The client's index in `clients`.
        var client: Int32
        /// The offset in `epoch`. Offsets count a run's publishes, which are numbered in 32 bits too
        /// (`publish`); `deliver` reports an offset that does not fit as a violation.
        var offset: UInt32
    }

    /// Every publication a subscriber received, with its publish → deliver latency and the count per
    /// simulated second. One value, so that recording a delivery is one access to the simulation's
    /// state (each checked for exclusivity in debug builds) rather than one per field; and one log for all clients
    /// rather than an array per client, so that appending touches memory already in cache.
    struct DeliveryRecord {
        /// In the order received.
        var log: [Delivery] = []
        /// Publish → deliver latencies in nanoseconds, by the index of the subscriber's region in `regionNames`.
        var latencies: [[Int64]]
        var perSecond: [Int] = []
        var count: Int { log.count }

        /// Room for about `expected` deliveries over `regions` regions, so that the arrays are not copied
        /// as they grow; memory reserved and never written costs nothing.
        init(regions: Int, expected: Int) {
            latencies = Array(repeating: [], count: regions)
            log.reserveCapacity(expected)
            for i in latencies.indices { latencies[i].reserveCapacity(expected / max(1, regions)) }
        }

        mutating func add(_ delivery: Delivery, region: Int, latency: Int64, second: Int) {
            log.append(delivery)
            latencies[region].append(latency)
            while perSecond.count <= second { perSecond.append(0) }
            perSecond[second] += 1
        }
    }

    final class Region {
        let name: String
        /// Its index in `regionNames`.
        let index: Int
        /// The directions of its links, by peer: few enough to search in order.
        var out: [(peer: String, direction: Direction)] = []
        var core: RelayCore?
        /// Whether `core` is running. Kept beside it because testing `core != nil` copies the whole
        /// core (and retains everything it holds) on every event.
        var running = false
        var encoder = SimEncoder()
        var skew: Duration = .zero
        var tickAt: TernInstant?
        var nextClientID: UInt64 = 1
        var clientsByConnection = Connections()
        var restarts: UInt64 = 0
        /// The last `debugSummary` printed for the traced topic.
        var lastSummary = ""
        init(name: String, index: Int) { self.name = name; self.index = index }
    }

    final class Connection {
        var generation = 0
        var up = false
        /// When the last batch each way arrives, by `Direction.side`.
        var lastDelivery: [TernInstant] = [.zero, .zero]
        /// Each way's codec, by `Direction.side`.
        var codecs: [LinkCodec] = []
        var clogUntil: TernInstant?
        var clogDelay: Duration = .zero
        var reconnectScheduled = false
        /// Batches sent into a blackhole: TCP keeps retransmitting them, so they arrive, in order,
        /// once the path heals, unless the connection is reset first.
        var blackholed: [(direction: Direction, generation: Int, batch: [LinkMessage])] = []
    }

    /// One way along a link, with what sending on it reads, worked out once: the link, its
    /// connection, and the keys of `cuts` and `blackholes` that name it.
    final class Direction {
        let from: String
        let to: String
        /// The index of `to` in `regionNames`.
        let toIndex: Int
        /// 0 from the link's first region, 1 from its second.
        let side: Int
        let link: Link
        let connection: Connection
        /// `from>to`, as `cuts` holds it.
        let cutKey: String
        /// The link's key in `connections` and `blackholes`.
        let pairKey: String
        init(from: String, to: String, toIndex: Int, link: Link, connection: Connection) {
            self.from = from
            self.to = to
            self.toIndex = toIndex
            self.side = link.between.0 == from ? 0 : 1
            self.link = link
            self.connection = connection
            self.cutKey = "\(from)>\(to)"
            self.pairKey = Simulation.pairKey(from, to)
        }
    }

    /// A topic whose link traffic is printed as it is delivered (`TERN_SIM_TRACE_TOPIC`), for debugging.
    /// The wall clock every simulated relay starts from (2025-01-01T00:00:00Z), plus its region's skew.
    static let wallOrigin: Int64 = 1_735_689_600 * 1_000_000_000
    static let traceTopic = ProcessInfo.processInfo.environment["TERN_SIM_TRACE_TOPIC"]
    /// A client (`region#index`) whose commands and received messages are printed, for debugging.
    static let traceClient = ProcessInfo.processInfo.environment["TERN_SIM_TRACE_CLIENT"]

    public let scenario: Scenario
    public let seed: UInt64
    /// Observes every link batch delivered: (time, from, to). For tests.
    public var onLinkDelivery: ((TernInstant, String, String) -> Void)?
    /// Observes every client connection accepted by a relay: (time, region). For tests.
    public var onClientConnected: ((TernInstant, String) -> Void)?
    private var rng: SplitMix64
    private var now = TernInstant.zero
    private var agenda = Agenda()
    /// Numbers the `handle` calls that gather a client's frames (`SimClient.gatheredBy`).
    private var writeStamp = 0
    // The regions and links never change after `init`: as constants they are read without the
    // exclusive-access check that every read of a class's variable costs in debug builds.
    private let regions: [String: Region]
    /// The regions in `regionNames` order.
    private let regionList: [Region]
    private let regionNames: [String]
    private let connections: [String: Connection]
    private var cuts: Set<String> = []
    /// Links (pair keys) whose packets vanish silently.
    private var blackholes: Set<String> = []
    private var clients: [SimClient] = []
    private var publishers: [String: SimClient] = [:]
    private var churners: [String: [SimClient]] = [:]
    private var trace: UInt64 = 0xcbf2_9ce4_8422_2325
    private var eventCount = 0
    private var publishCount = 0
    /// Acknowledged publishes, by publish number.
    private var acks: [Int: (topic: String, position: StreamPosition, at: TernInstant)] = [:]
    /// Every publish sent: publish number `n` (id `p<n>`) is at index `n - 1`.
    private var sent: [(topic: String, at: TernInstant)] = []
    /// What subscribers received (`DeliveryRecord`).
    private var record: DeliveryRecord
    private var linkBatches = 0
    /// Link entries by kind, for the report.
    /// By `LinkMessage.kindIndex`.
    private var entryKinds = [Int](repeating: 0, count: LinkMessage.kindNames.count)
    private var linkEntries = 0
    private var linkWire = 0
    private var linkRaw = 0
    private var timeline: [SimulationResult.TimelineEntry] = []
    private var violations: [String] = []
    private var lastHeal: TernInstant?
    /// Every epoch a client received publications in, numbered in the order first seen.
    private var epochNames: [String] = []
    private var epochNumbers: [String: Int32] = [:]
    private var debugDropped = false
    private var debugReordered = false
    private var debugPresenceDropped = false
    private let end: TernInstant

    /// A simulation of `scenario` from `seed`.
    public init(scenario: Scenario, seed: UInt64) {
        self.scenario = scenario
        self.seed = seed
        self.rng = SplitMix64(seed: seed)
        self.regionNames = scenario.topology.regions.map(\.name)
        self.end = TernInstant.zero + scenario.duration
        self.record = DeliveryRecord(regions: regionNames.count, expected: Self.expectedDeliveries(scenario))
        regionList = regionNames.enumerated().map { Region(name: $0.element, index: $0.offset) }
        regions = Dictionary(uniqueKeysWithValues: regionList.map { ($0.name, $0) })
        var connections: [String: Connection] = [:]
        for l in scenario.topology.links {
            let c = Connection()
            connections[Self.pairKey(l.between.0, l.between.1)] = c
            for (a, b) in [(l.between.0, l.between.1), (l.between.1, l.between.0)] {
                guard let from = regions[a], let to = regions[b] else { continue }
                from.out.append((b, Direction(from: a, to: b, toIndex: to.index, link: l, connection: c)))
            }
        }
        self.connections = connections
    }

    /// About as many deliveries as the workload makes when nothing fails, with a margin, capped.
    static func expectedDeliveries(_ scenario: Scenario) -> Int {
        let w = scenario.workload
        let regions = Double(w.subscriberRegions?.count ?? scenario.topology.regions.count)
        let seconds = Double(scenario.duration.ternNanoseconds) / 1e9
        var perSecond = regions * Double(w.subscribersPerRegion) * w.publishRate / Double(max(1, w.topics))
        if let c = w.celebrity { perSecond += regions * Double(c.subscribersPerRegion) * c.publishRate }
        return Int(min(10_000_000, 1.25 * perSecond * seconds))
    }

    private func pairKey(_ a: String, _ b: String) -> String { Self.pairKey(a, b) }
    fileprivate static func pairKey(_ a: String, _ b: String) -> String { a < b ? "\(a)|\(b)" : "\(b)|\(a)" }

    private func mix(_ text: String) {
        var h = trace
        for b in text.utf8 { h = Self.fnv(h, b) }
        trace = h
    }

    private func mix(byte b: UInt8) { trace = Self.fnv(trace, b) }

    /// Mixes the decimal digits of `value`: the same bytes as `mix("\(value)")`, without building a string.
    private func mix(decimal value: Int64) { trace = Self.fnv(trace, decimal: value) }
    private func mix(decimal value: Int) { mix(decimal: Int64(value)) }
    private func mix(decimal value: UInt64) { trace = Self.fnv(trace, decimal: value) }

    /// FNV-1a over the decimal digits of `value`.
    static func fnv(_ h: UInt64, decimal value: UInt64) -> UInt64 {
        if value <= UInt64(Int64.max) { return fnv(h, decimal: Int64(value)) }
        var h = h
        for b in "\(value)".utf8 { h = fnv(h, b) }
        return h
    }

    /// One byte of FNV-1a. The trace is mixed through these pure functions and stored once per
    /// item, because every write to a property of this class is checked for exclusive access in
    /// debug builds.
    @inline(__always)
    static func fnv(_ h: UInt64, _ b: UInt8) -> UInt64 { (h ^ UInt64(b)) &* 0x100_0000_01b3 }

    /// FNV-1a over the decimal digits of `value` (with a leading "-" when negative).
    static func fnv(_ h: UInt64, decimal value: Int64) -> UInt64 {
        var h = h
        if value < 0 { h = fnv(h, UInt8(ascii: "-")) }
        var v = value.magnitude
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            // The digits come out last first.
            var n = 0
            repeat {
                digits[n] = UInt8(48 + v % 10)
                v /= 10
                n += 1
            } while v > 0
            while n > 0 {
                n -= 1
                h = fnv(h, digits[n])
            }
            return h
        }
    }

    /// The publish number of a simulated publication's id (`p<n>`), or nil for any other id.
    static func publishNumber(_ id: String) -> Int? {
        var utf8 = id.utf8.makeIterator()
        guard utf8.next() == UInt8(ascii: "p") else { return nil }
        var n = 0
        var digits = 0
        while let b = utf8.next() {
            guard b >= 48, b <= 57, digits < 18 else { return nil }
            n = n * 10 + Int(b - 48)
            digits += 1
        }
        return digits > 0 ? n : nil
    }

    /// What was sent as publication `id`, if the simulation sent it.
    private func sentPublish(_ id: String) -> (number: Int, topic: String, at: TernInstant)? {
        guard let n = Self.publishNumber(id), n >= 1, n <= sent.count else { return nil }
        return (n, sent[n - 1].topic, sent[n - 1].at)
    }

    private func schedule(_ at: TernInstant, _ kind: Kind) {
        agenda.schedule(max(at, now), kind)
    }

    private func random(_ range: ClosedRange<Double>) -> Double { Double.random(in: range, using: &rng) }

    private func exponential(rate: Double) -> Duration {
        let u = max(1e-12, random(0...1))
        return .nanoseconds(Int64(-log(u) / rate * 1e9))
    }

    private func sample(_ mean: Duration, _ distribution: LatencyDistribution) -> Duration {
        let ns = Double(mean.ternNanoseconds)
        let v: Double = switch distribution {
        case .constant: ns
        case .uniform(let j): ns + random(-1...1) * Double(j.ternNanoseconds)
        case .exponential: -log(max(1e-12, random(0...1))) * ns
        case .normal(let j):
            ns + sqrt(-2 * log(max(1e-12, random(0...1)))) * cos(2 * .pi * random(0...1)) * Double(j.ternNanoseconds)
        }
        return .nanoseconds(Int64(max(0, v)))
    }

    // MARK: Running

    /// Runs to the end of the scenario and checks the invariants.
    public func run(progress: ((Double) -> Void)? = nil) -> SimulationResult {
        for r in regionNames { startRelay(r) }
        for l in scenario.topology.links { schedule(.zero + .milliseconds(1), .linkReconnect(l.between.0, l.between.1)) }
        setUpClients()
        for f in scenario.faults { schedule(.zero + f.at, .fault(f.fault)) }
        if let idle = scenario.workload.idleWindow {
            timeline.append(.init(seconds: seconds(.zero + idle.from), label: "odd-numbered topics go idle"))
            timeline.append(.init(seconds: seconds(.zero + idle.to), label: "idle topics publish again"))
        }
        if scenario.workload.publishRate > 0 { schedule(.zero + .seconds(1) + exponential(rate: scenario.workload.publishRate), .publish) }
        if let c = scenario.workload.celebrity, c.publishRate > 0 { schedule(.zero + .seconds(1) + exponential(rate: c.publishRate), .celebrityPublish) }
        if scenario.workload.presenceChurn > 0 {
            for r in regionNames { schedule(.zero + .seconds(1) + exponential(rate: scenario.workload.presenceChurn), .churn(r)) }
        }
        let presenceCheckAt = min(end - .milliseconds(1), quietAt + scenario.invariants.presenceConvergesWithin)
        var lastReport = 0
        while let (event, kind) = agenda.next() {
            if event.at > end { break }
            now = event.at
            eventCount += 1
            process(kind)
            let second = Int(now.nanoseconds / 1_000_000_000)
            if let progress, second > lastReport {
                lastReport = second
                progress(min(1, Double(now.nanoseconds) / Double(end.nanoseconds)))
            }
            if case .presenceCheck = kind { continue }
            if now >= presenceCheckAt, !presenceChecked {
                presenceChecked = true
                schedule(now, .presenceCheck)
            }
        }
        now = end
        for name in regionNames { collectInvariantFailures(regions[name]!) }
        check()
        return result()
    }

    private var presenceChecked = false

    private func process(_ kind: Kind) {
        switch kind {
        case .linkDeliver(let direction, let generation, let batch):
            let c = direction.connection, from = direction.from, to = direction.to
            guard c.up, c.generation == generation, cuts.isEmpty || !cuts.contains(direction.cutKey) else { return }
            if let topic = Self.traceTopic {
                let shown = batch.filter { "\($0)".contains("\"\(topic)\"") }
                if !shown.isEmpty { print("t=\(String(format: "%.3f", seconds(now))) \(from)->\(to): \(shown)") }
            }
            if !blackholes.isEmpty, blackholes.contains(direction.pairKey) {
                c.blackholed.append((direction, generation, batch))
                return
            }
            var batch = batch
            if scenario.debug.dropOnePresence, !debugPresenceDropped, now > quietAt - .seconds(3),
               let i = batch.firstIndex(where: { if case .presence(_, let owner, _, _, .join, false) = $0 { owner != to } else { false } }) {
                debugPresenceDropped = true
                batch.remove(at: i)
            }
            mix(byte: UInt8(ascii: "L")); mix(decimal: now.nanoseconds); mix(from); mix(to); mix(decimal: batch.count)
            onLinkDelivery?(now, from, to)
            handle(regionList[direction.toIndex], .linkBatch(from, batch))
        case .linkReconnect(let a, let b):
            connectLink(a, b)
        case .clientFrames(let index, let generation, let messages):
            let client = clients[index]
            guard client.generation == generation else { return }
            for m in messages { clientReceived(client, m) }
        case .clientFrame(let index, let generation, let message):
            let client = clients[index]
            guard client.generation == generation else { return }
            clientReceived(client, message)
        case .clientPublication(let index, let generation, let shared):
            let client = clients[index]
            guard client.generation == generation else { return }
            if Self.traceClient != nil {
                clientReceived(client, shared.message)
            } else {
                checkHops(client, shared.publication, shared.facts)
                deliver(client, shared.publication, shared.facts)
            }
        case .clientSend(let index, let generation, let ref, let command):
            let client = clients[index]
            let key = client.key
            guard client.generation == generation, client.connected, let id = client.connection,
                  regionList[client.regionIndex].running else { return }
            mix(byte: UInt8(ascii: "C")); mix(decimal: now.nanoseconds); mix(key.region); mix(decimal: key.index)
            handle(regionList[client.regionIndex], .command(id, ref: ref, command))
        case .clientClosedByRelay(let index, let generation, let code):
            let client = clients[index]
            guard client.generation == generation else { return }
            disconnected(client, reconnect: code.reconnect)
        case .clientResubscribe(let index, let generation):
            let client = clients[index]
            guard client.generation == generation, client.connected,
                  case .subscriber(let topic) = client.role else { return }
            client.subscribeRef = send(client, .subscribe(topic: topic, since: client.position, trace: client.traces))
        case .clientReconnect(let index):
            let client = clients[index]
            guard !client.connected else { return }
            connectClient(client)
        case .tick(let index):
            let r = regionList[index]
            guard r.running, let at = r.tickAt, at <= now else { return }
            r.tickAt = nil
            handle(r, .tick)
        case .publish:
            publishOrdinary()
            if quiet == false { schedule(now + exponential(rate: scenario.workload.publishRate), .publish) }
        case .celebrityPublish:
            if let c = scenario.workload.celebrity {
                publish(topic: c.topic)
                if quiet == false { schedule(now + exponential(rate: c.publishRate), .celebrityPublish) }
            }
        case .churn(let region):
            if quiet { return }
            churn(region)
            schedule(now + exponential(rate: scenario.workload.presenceChurn), .churn(region))
        case .fault(let fault):
            apply(fault)
        case .endSlow(let region):
            for c in clients where c.key.region == region && c.slowUntil != nil && c.slowUntil! <= now {
                c.slowUntil = nil
                // Its socket drains: the relay flushes what waited.
                if let id = c.connection { handle(region, .writable(id, true)) }
            }
        case .endClog(let pair):
            connections[pair]?.clogUntil = nil
        case .presenceCheck:
            checkPresence()
        }
    }

    /// When publishing and churn stop, so that the run drains and the checkers judge a settled mesh.
    private var quietAt: TernInstant {
        if let q = scenario.workload.quietAfter { return .zero + q }
        let settle = max(Duration.seconds(5), scenario.invariants.presenceConvergesWithin + .seconds(1))
        return end - min(settle, scenario.duration / 2)
    }

    private var quiet: Bool { now >= quietAt }

    // MARK: Relays

    private func regionNow(_ region: String) -> TernInstant { now + regions[region]!.skew }

    private func startRelay(_ name: String) {
        let r = regions[name]!
        r.restarts += 1
        r.encoder = SimEncoder()
        r.clientsByConnection = Connections()
        var config = scenario.topology.coreConfig(for: name)
        config.checkInvariants = true
        config.invariantBudgetPerEvent = scenario.invariantBudgetPerEvent
        // Incarnations grow with each restart, as the relay's start time does.
        config.mesh?.incarnation = r.restarts << 40 | UInt64(now.nanoseconds / 1_000_000 + 1)
        r.core = RelayCore(config: config, encoder: r.encoder,
                           seed: rng.next() ^ r.restarts, now: regionNow(name))
        r.running = true
        // A fixed wall-clock origin keeps runs reproducible; each region's skew shows in its trace hops.
        r.core!.wallClockOffset = Self.wallOrigin
        r.tickAt = nil
        mix("R\(now.nanoseconds)\(name)")
    }

    private func handle(_ region: String, _ event: RelayEvent) { handle(regions[region]!, event) }

    /// What a simulated client's token allows: every topic (parsed once, not per token check).
    private static let everyTopic = [TopicPattern("*")]

    private func handle(_ r: Region, _ event: RelayEvent) {
        guard r.running else { return }
        let region = r.name
        let actions = r.core!.handle(event, now: now + r.skew)
        if let topic = Self.traceTopic, case let summary = r.core!.debugSummary(of: topic), summary != r.lastSummary {
            r.lastSummary = summary
            print("t=\(String(format: "%.3f", seconds(now))) [\(region)] \(summary)")
        }
        // A client's frames from one event reach it together, sent when its first frame is. A client
        // that more than one `write` names has its frames gathered first (`written`), and sent at the
        // first of them; the others are sent as each `write` comes.
        var gathered: [SimClient] = []
        var stamp = 0
        if actions.lazy.filter({ if case .write = $0 { true } else { false } }).dropFirst().first != nil {
            writeStamp += 1
            stamp = writeStamp
            for case .write(_, let ids) in actions {
                for id in ids {
                    guard let c = r.clientsByConnection[id] else { continue }
                    if c.countedBy != stamp {
                        c.countedBy = stamp
                    } else if c.gatheredBy != stamp {
                        c.gatheredBy = stamp
                        gathered.append(c)
                    }
                }
            }
            if !gathered.isEmpty {
                for case .write(let frame, let ids) in actions {
                    var message: ServerMessage?
                    for id in ids {
                        guard let c = r.clientsByConnection[id], c.gatheredBy == stamp else { continue }
                        if message == nil { message = r.encoder.decode(frame) }
                        c.written.append(message!)
                    }
                }
            }
        }
        for action in actions {
            switch action {
            case .write(let frame, let ids):
                let message = r.encoder.decode(frame)
                var shared: SharedPublication?
                if case .publication(let p) = message { shared = SharedPublication(message, p, facts(p)) }
                for id in ids {
                    guard let c = r.clientsByConnection[id] else { continue }
                    if stamp != 0, c.gatheredBy == stamp {
                        if !c.written.isEmpty {
                            let messages = c.written
                            c.written = []
                            sendFrames(c, messages)
                        }
                    } else if c.written.isEmpty {
                        if let shared {
                            schedule(arrival(c), .clientPublication(c.key.index, c.generation, shared))
                        } else {
                            sendFrame(c, message)
                        }
                    } else {
                        // An event handled inside another (a token check answered at once) writes
                        // after frames the outer event gathered and has not sent yet: they go first.
                        let messages = c.written + [message]
                        c.written = []
                        sendFrames(c, messages)
                    }
                }
            case .flush(let id):
                if let c = r.clientsByConnection[id] { drainClient(c, id) }
            case .close(let id, let code):
                if let c = r.clientsByConnection[id] {
                    drainClient(c, id, force: true)
                    schedule(now + sample(scenario.network.clientLatency, scenario.network.clientLatencyDistribution),
                             .clientClosedByRelay(c.key.index, c.generation, code))
                }
            case .verifyToken(let id, let ref, _):
                handle(r, .authenticated(id, ref: ref, ClientIdentity(
                    user: r.clientsByConnection[id].map { "u\($0.key.index)" } ?? "u", expiresAt: nil,
                    subscribe: Self.everyTopic, publish: Self.everyTopic, presence: Self.everyTopic)))
                // The inner event may have gathered frames for some of the same clients: those this
                // event gathers are its own again (what the inner one sent is no longer in `written`).
                for c in gathered { c.gatheredBy = stamp }
            case .sendLink(let peer, let batch):
                if let direction = r.out.first(where: { $0.peer == peer })?.direction { sendLink(direction, batch) }
            case .resetLink(let peer, _):
                mix("X\(now.nanoseconds)\(region)\(peer)")
                breakLink(region, peer)
            case .apiReply, .pollReply:
                break
            }
        }
        if let next = r.core?.nextDeadline {
            let at = next - r.skew
            if r.tickAt == nil || at < r.tickAt! {
                r.tickAt = at
                schedule(max(at, now), .tick(r.index))
            }
        }
    }

    /// Turns a core's invariant failures into violations of the run.
    private func collectInvariantFailures(_ region: Region) {
        guard let core = region.core, core.invariantFailureCount > 0 else { return }
        for f in core.invariantFailures.prefix(10) { violations.append("invariant broken in \(region.name): \(f)") }
    }

    private func crash(_ name: String) {
        let r = regions[name]!
        guard r.running else { return }
        collectInvariantFailures(r)
        r.core = nil
        r.running = false
        for l in scenario.topology.links(of: name) { breakLink(name, l.peer.name, reconnect: false) }
        for c in clients where c.key.region == name && c.connected { disconnected(c, reconnect: true) }
    }

    // MARK: Links

    private func linkAllowed(_ a: String, _ b: String) -> Bool {
        regions[a]!.running && regions[b]!.running && !cuts.contains("\(a)>\(b)") && !cuts.contains("\(b)>\(a)")
            && !blackholes.contains(pairKey(a, b))
    }

    private func connectLink(_ a: String, _ b: String) {
        guard let c = connections[pairKey(a, b)] else { return }
        c.reconnectScheduled = false
        guard !c.up else { return }
        guard linkAllowed(a, b) else {
            scheduleReconnect(a, b)
            return
        }
        c.up = true
        c.generation += 1
        c.lastDelivery = [.zero, .zero]
        c.codecs = [LinkCodec(), LinkCodec()]
        mix("U\(now.nanoseconds)\(a)\(b)")
        handle(a, .linkUp(b))
        handle(b, .linkUp(a))
    }

    private func scheduleReconnect(_ a: String, _ b: String) {
        guard let c = connections[pairKey(a, b)], !c.reconnectScheduled else { return }
        c.reconnectScheduled = true
        let jitter = Duration.nanoseconds(Int64(random(0...1) * Double(scenario.network.reconnectDelay.ternNanoseconds)))
        schedule(now + scenario.network.reconnectDelay + jitter, .linkReconnect(a, b))
    }

    private func breakLink(_ a: String, _ b: String, reconnect: Bool = true) {
        guard let c = connections[pairKey(a, b)], c.up else { return }
        c.up = false
        c.generation += 1
        c.blackholed = []
        mix("D\(now.nanoseconds)\(a)\(b)")
        handle(a, .linkDown(b))
        handle(b, .linkDown(a))
        if reconnect { scheduleReconnect(a, b) } else { scheduleReconnect(a, b) }
    }

    private func sendLink(_ direction: Direction, _ batch: [LinkMessage]) {
        let c = direction.connection, from = direction.from, to = direction.to
        guard c.up else { return }
        // A blackholed path swallows the batch for now: no error, no reset; the peer's read deadline must
        // notice. TCP retransmits it once the path heals, if the connection is still there.
        if !blackholes.isEmpty, blackholes.contains(direction.pairKey) {
            c.blackholed.append((direction, c.generation, batch))
            return
        }
        if !cuts.isEmpty, cuts.contains(direction.cutKey) {
            // A one-way cut: the sender's writes go nowhere; TCP notices and breaks the connection.
            breakLink(from, to)
            return
        }
        var frame = ByteBuffer()
        let codec = c.codecs[direction.side]
        let raw = codec.rawBytesSent, wire = codec.wireBytesSent
        codec.encode(.batch(batch), into: &frame)
        linkRaw += codec.rawBytesSent - raw
        linkWire += codec.wireBytesSent - wire
        linkBatches += 1
        linkEntries += batch.count { switch $0 { case .credit, .linkState, .heartbeat, .heartbeatReply: false; default: true } }
        for m in batch { entryKinds[m.kindIndex] += 1 }
        let link = direction.link
        var delay = sample(link.latency, scenario.network.latency)
        let bandwidth = link.bandwidthMbps ?? scenario.network.bandwidthMbps
        if bandwidth > 0 { delay += .nanoseconds(Int64(Double(frame.readableBytes * 8) / (bandwidth * 1e6) * 1e9)) }
        var losses = 0
        while scenario.network.loss > 0, random(0...1) < scenario.network.loss {
            losses += 1
            if losses >= scenario.network.maxRetransmits {
                breakLink(from, to)
                return
            }
            delay += link.latency * 2 + .milliseconds(200)
        }
        if scenario.network.duplication > 0, random(0...1) < scenario.network.duplication { mix("dup") }
        if scenario.network.reorderWindow > .zero {
            delay += .nanoseconds(Int64(random(0...1) * Double(scenario.network.reorderWindow.ternNanoseconds)))
        }
        if let until = c.clogUntil, until > now { delay += c.clogDelay }
        // TCP delivers in order: a batch never overtakes the one before it.
        let at = max(now + delay, c.lastDelivery[direction.side])
        c.lastDelivery[direction.side] = at
        schedule(at, .linkDeliver(direction, generation: c.generation, batch: batch))
    }

    // MARK: Faults

    private func apply(_ fault: Fault) {
        timeline.append(.init(seconds: seconds(now), label: fault.label))
        mix("F\(now.nanoseconds)\(fault.label)")
        switch fault {
        case .partition(let groups):
            var group: [String: Int] = [:]
            for (i, g) in groups.enumerated() { for r in g { group[r] = i } }
            for l in scenario.topology.links {
                let (a, b) = l.between
                if let ga = group[a], let gb = group[b], ga != gb {
                    cuts.insert("\(a)>\(b)"); cuts.insert("\(b)>\(a)")
                    breakLink(a, b)
                }
            }
        case .oneWay(let from, let to):
            cuts.insert("\(from)>\(to)")
        case .isolate(let r):
            for l in scenario.topology.links(of: r) {
                cuts.insert("\(r)>\(l.peer.name)"); cuts.insert("\(l.peer.name)>\(r)")
                breakLink(r, l.peer.name)
            }
        case .blackhole(let a, let b):
            if connections[pairKey(a, b)] != nil { blackholes.insert(pairKey(a, b)) }
        case .blackholeRegion(let r):
            for l in scenario.topology.links(of: r) { blackholes.insert(pairKey(r, l.peer.name)) }
        case .heal:
            cuts.removeAll()
            blackholes.removeAll()
            for key in connections.keys.sorted() {
                let c = connections[key]!
                let held = c.blackholed
                c.blackholed = []
                for h in held where c.up && c.generation == h.generation {
                    let side = h.direction.side
                    let at = max(now + sample(h.direction.link.latency, scenario.network.latency), c.lastDelivery[side])
                    c.lastDelivery[side] = at
                    schedule(at, .linkDeliver(h.direction, generation: h.generation, batch: h.batch))
                }
            }
            lastHeal = now
            for l in scenario.topology.links { scheduleReconnect(l.between.0, l.between.1) }
        case .flap(let a, let b, let times, let every):
            breakLink(a, b)
            if times > 1 { schedule(now + every, .fault(.flap(a, b, times: times - 1, every: every))) }
        case .clog(let a, let b, let delay, let duration):
            if let c = connections[pairKey(a, b)] {
                c.clogUntil = now + duration
                c.clogDelay = delay
                schedule(now + duration, .endClog(pairKey(a, b)))
            }
        case .crash(let r):
            crash(r)
        case .restart(let r):
            if !regions[r]!.running {
                startRelay(r)
                lastHeal = now
                for l in scenario.topology.links(of: r) { scheduleReconnect(r, l.peer.name) }
            }
        case .clockJump(let r, let d):
            regions[r]!.skew += d
            handle(r, .tick)
        case .slowClients(let r, let fraction, let duration):
            for c in clients where c.key.region == r && c.connected && random(0...1) < fraction {
                c.slowUntil = now + duration
                // It stops reading: its socket fills up, and the relay queues for it.
                if let id = c.connection { handle(r, .writable(id, false)) }
            }
            schedule(now + duration, .endSlow(r))
        }
    }

    // MARK: Clients

    private func setUpClients() {
        let w = scenario.workload
        for r in regionNames {
            if w.subscriberRegions?.contains(r) ?? true {
                for i in 0..<w.subscribersPerRegion { addClient(r, .subscriber("\(w.namespace):t\(i % w.topics)")) }
                if let c = w.celebrity { for _ in 0..<c.subscribersPerRegion { addClient(r, .subscriber(c.topic)) } }
            }
            if w.publisherRegions?.contains(r) ?? true { publishers[r] = addClient(r, .publisher) }
            if w.presenceChurn > 0 { churners[r] = (0..<w.churnersPerRegion).map { _ in addClient(r, .churner) } }
        }
    }

    @discardableResult
    private func addClient(_ region: String, _ role: Role) -> SimClient {
        let c = SimClient(key: ClientKey(region: region, index: clients.count), regionIndex: regionNames.firstIndex(of: region)!, role: role)
        clients.append(c)
        schedule(.zero + .nanoseconds(Int64(random(0...0.9) * 1e9)), .clientReconnect(c.key.index))
        return c
    }

    private func connectClient(_ c: SimClient) {
        let r = regions[c.key.region]!
        guard r.running else {
            schedule(now + .milliseconds(Int64(200 + random(0...800))), .clientReconnect(c.key.index))
            return
        }
        c.generation += 1
        let id = ClientID(r.nextClientID)
        r.nextClientID += 1
        c.connection = id
        c.connected = true
        r.clientsByConnection[id] = c
        onClientConnected?(now, c.key.region)
        handle(c.key.region, .opened(id, .websocket))
        if let until = c.slowUntil, until > now { handle(c.key.region, .writable(id, false)) }
        send(c, .connect(token: "t"))
    }

    @discardableResult
    private func send(_ c: SimClient, _ command: ClientCommand) -> UInt64 {
        if let traced = Self.traceClient, traced == "\(c.key.region)#\(c.key.index)" {
            print("t=\(String(format: "%.3f", seconds(now))) \(traced) -> \(command)".prefix(400))
        }
        let ref = c.nextRef
        c.nextRef += 1
        // A client connection is ordered like TCP: a command never overtakes the one before it.
        let at = max(now + sample(scenario.network.clientLatency, scenario.network.clientLatencyDistribution), c.lastSend)
        c.lastSend = at
        schedule(at, .clientSend(c.key.index, c.generation, ref, command))
        return ref
    }

    private func disconnected(_ c: SimClient, reconnect: Bool) {
        guard c.connected else { return }
        c.connected = false
        if let id = c.connection {
            regions[c.key.region]!.clientsByConnection[id] = nil
            handle(c.key.region, .closed(id))
        }
        c.connection = nil
        c.generation += 1
        c.inPresence = false
        c.pendingPublishes = [:]
        c.lastSend = now
        c.lastArrival = now
        guard reconnect else { return }
        let delay = c.advisedDelay ?? .milliseconds(Int64(100 + random(0...900)))
        c.advisedDelay = nil
        schedule(now + delay, .clientReconnect(c.key.index))
    }

    private func drainClient(_ c: SimClient, _ id: ClientID, force: Bool = false) {
        if let until = c.slowUntil, until > now, !force { return }
        let r = regionList[c.regionIndex]
        guard r.running else { return }
        var messages: [ServerMessage] = []
        let encoder = r.encoder
        r.core!.takeOutbound(id, maxBytes: .max) { messages.append(encoder.decode($0)) }
        sendFrames(c, messages)
    }

    /// Sends a client the frames its relay wrote to it, over its connection (in order, after a latency).
    private func sendFrames(_ c: SimClient, _ messages: [ServerMessage]) {
        guard !messages.isEmpty else { return }
        var messages = messages
        if scenario.debug.reorderOneDelivery, !debugReordered, case .subscriber = c.role {
            let pubs = messages.indices.filter { if case .publication = messages[$0] { true } else { false } }
            if pubs.count >= 2 {
                messages.swapAt(pubs[0], pubs[1])
                debugReordered = true
            }
        }
        let at = max(now + sample(scenario.network.clientLatency, scenario.network.clientLatencyDistribution), c.lastArrival)
        c.lastArrival = at
        schedule(at, .clientFrames(c.key.index, c.generation, messages))
    }

    /// Sends a client one frame, as `sendFrames` does.
    private func sendFrame(_ c: SimClient, _ message: ServerMessage) {
        schedule(arrival(c), .clientFrame(c.key.index, c.generation, message))
    }

    /// When a frame sent to `c` now arrives: after the client latency, and not before the frame
    /// sent before it (a connection delivers in order).
    private func arrival(_ c: SimClient) -> TernInstant {
        let at = max(now + sample(scenario.network.clientLatency, scenario.network.clientLatencyDistribution), c.lastArrival)
        c.lastArrival = at
        return at
    }

    private func clientReceived(_ c: SimClient, _ message: ServerMessage) {
        if let traced = Self.traceClient, traced == "\(c.key.region)#\(c.key.index)" {
            print("t=\(String(format: "%.3f", seconds(now))) \(traced) <- \(message)".prefix(400))
        }
        switch message {
        case .reply(_, .connected):
            switch c.role {
            case .subscriber(let topic): c.subscribeRef = send(c, .subscribe(topic: topic, since: c.position, trace: c.traces))
            case .churner: if c.wantsPresence { send(c, .subscribe(topic: scenario.workload.presenceTopic, since: nil)) }
            case .publisher: break
            }
        case .reply(_, .subscribed(let r)):
            if case .churner = c.role { c.inPresence = true; return }
            c.subscribeRef = nil
            if c.subscribedAt == nil { c.subscribedAt = now }
            if r.recovered == false { c.noticeCount += 1 }
            if r.recovered == true {
                for p in r.publications { deliver(c, p, facts(p)) }
            }
            c.position = r.recovered == true ? (r.publications.last?.position ?? r.position) : r.position
        case .reply(_, .unsubscribed):
            c.inPresence = false
        case .reply(let ref?, .published(let topic, let position?, _)):
            if let n = c.pendingPublishes.removeValue(forKey: ref) {
                let sentTo = sent[n - 1].topic
                if topic != sentTo { violations.append("p\(n), published to \(sentTo), was acknowledged for \(topic) at \(position)") }
                acks[n] = (sentTo, position, now)
            }
        case .publication(let p):
            let facts = facts(p)
            checkHops(c, p, facts)
            deliver(c, p, facts)
        case .gap(_, let position, _):
            c.noticeCount += 1
            c.position = position
        case .epochChanged(_, let position):
            c.position = position
            c.mergeEpochs.insert(position.epoch)
        case .disconnect(_, let after):
            c.advisedDelay = after
        case .error(let ref?, let error):
            c.pendingPublishes[ref] = nil
            if ref == c.subscribeRef {
                c.subscribeRef = nil
                // As the clients do: a subscribe refused for now (the home cannot be reached) is tried
                // again on the same connection after a backoff.
                if error.code == .internalError {
                    schedule(now + .milliseconds(500) + .milliseconds(Int64(random(0...500))), .clientResubscribe(c.key.index, c.generation))
                }
            }
        default:
            break
        }
    }

    /// A traced subscriber's live publication ends with its own relay's delivery, and any sequencing hop
    /// names the region whose epoch it is; an untraced subscriber never receives hops.
    private func facts(_ p: Publication) -> PublicationFacts {
        var sequencedElsewhere = false
        if let sequenced = p.trace?.first(where: { $0.step == .sequenced }) {
            sequencedElsewhere = !p.position.epoch.hasPrefix(sequenced.region + ".")
        }
        return PublicationFacts(published: sentPublish(p.id), sequencedElsewhere: sequencedElsewhere)
    }

    private func checkHops(_ c: SimClient, _ p: Publication, _ facts: PublicationFacts) {
        guard case .subscriber = c.role else { return }
        guard c.traces else {
            if case .some = p.trace { violations.append("hops sent to \(c.key.region)#\(c.key.index), which did not ask for them, on \(p.topic) \(p.position)") }
            return
        }
        guard let hops = p.trace, let last = hops.last, last.step == .delivered, last.region == c.key.region else {
            violations.append("traced subscriber \(c.key.region)#\(c.key.index) got \(p.topic) \(p.position) without its delivery hop: \(p.trace ?? [])")
            return
        }
        if facts.sequencedElsewhere, let sequenced = hops.first(where: { $0.step == .sequenced }) {
            violations.append("\(p.topic) \(p.position) says it was sequenced in \(sequenced.region)")
        }
    }

    private func deliver(_ c: SimClient, _ p: Publication, _ facts: PublicationFacts) {
        guard case .subscriber = c.role else { return }
        let published = facts.published
        if scenario.debug.dropOneDelivery, !debugDropped, published != nil, p.position.offset > 2 {
            debugDropped = true
            c.position = p.position
            return
        }
        if let pos = c.position, pos.epoch == p.position.epoch, p.position.offset != pos.offset + 1, c.noticeCount == 0,
           !c.mergeEpochs.contains(p.position.epoch) {
            violations.append("gap without notice: client \(c.key.region)#\(c.key.index) on \(p.topic) went from \(pos) to \(p.position)")
        }
        c.position = p.position
        guard let published else {
            violations.append("\(c.key.region)#\(c.key.index) got \(p.id) on \(p.topic), which no client published")
            return
        }
        let epoch: Int32
        if let e = c.deliveryEpoch, e.name == p.position.epoch {
            epoch = e.id
        } else {
            epoch = epochNumber(p.position.epoch)
            c.deliveryEpoch = (p.position.epoch, epoch)
        }
        guard let offset = UInt32(exactly: p.position.offset) else {
            violations.append("\(c.key.region)#\(c.key.index) got \(p.id) on \(p.topic) at offset \(p.position.offset), past any this run can reach")
            return
        }
        record.add(Delivery(epoch: epoch, publish: Int32(published.number), client: Int32(c.key.index), offset: offset),
                     region: c.regionIndex, latency: now.nanoseconds - published.at.nanoseconds,
                     second: Int(now.nanoseconds / 1_000_000_000))
        var h = Self.fnv(trace, UInt8(ascii: "P"))
        h = Self.fnv(h, decimal: now.nanoseconds)
        h = Self.fnv(h, decimal: Int64(c.key.index))
        h = Self.fnv(h, decimal: p.position.offset)
        trace = h
    }

    /// The number of `epoch` in `epochNames`, given it if it has none yet.
    private func epochNumber(_ epoch: String) -> Int32 {
        if let n = epochNumbers[epoch] { return n }
        let n = Int32(epochNames.count)
        epochNames.append(epoch)
        epochNumbers[epoch] = n
        return n
    }

    private func publishOrdinary() {
        let w = scenario.workload
        let n = Int(random(0...0.999_999) * Double(w.topics))
        if let idle = w.idleWindow, n % 2 == 1, now >= .zero + idle.from, now < .zero + idle.to { return }
        publish(topic: "\(w.namespace):t\(n)")
    }

    private func publish(topic: String) {
        let from = scenario.workload.publisherRegions ?? regionNames
        guard !from.isEmpty else { return }
        let region = from[Int(random(0...0.999_999) * Double(from.count))]
        guard let p = publishers[region], p.connected else { return }
        publishCount += 1
        sent.append((topic, now))
        let ref = send(p, .publish(topic: topic, id: "p\(publishCount)", data: "{\"n\":\(publishCount)}", volatile: false))
        p.pendingPublishes[ref] = publishCount
    }

    private func churn(_ region: String) {
        guard let list = churners[region], !list.isEmpty else { return }
        let c = list[Int(random(0...0.999_999) * Double(list.count))]
        guard c.connected else { return }
        c.wantsPresence.toggle()
        if c.wantsPresence {
            send(c, .subscribe(topic: scenario.workload.presenceTopic, since: nil))
        } else {
            send(c, .unsubscribe(topic: scenario.workload.presenceTopic))
        }
    }

    // MARK: Checking

    private func checkPresence() {
        let topic = scenario.workload.presenceTopic
        guard scenario.workload.presenceChurn > 0 else { return }
        let joined = churners.values.joined().filter { $0.connected && $0.inPresence && regions[$0.key.region]!.running }
        for r in regionNames where regions[r]!.running {
            let (count, _) = regions[r]!.core!.presenceCounts(topic)
            // A region that follows the topic knows every member in the mesh; one that does not, only its own.
            let expected = regions[r]!.core!.tracksMeshPresence(topic) ? joined.count : joined.filter { $0.key.region == r }.count
            if count != expected {
                violations.append("presence did not converge: \(r) counts \(count) in \(topic), \(expected) should (\(regions[r]!.core!.tracksMeshPresence(topic) ? "it follows the topic" : "it does not follow the topic: its own members"); checked at \(String(format: "%.1f", seconds(now)))s)")
            }
        }
    }

    /// Which publish each subscriber saw at each offset of one topic's epoch, to check that all saw the same.
    /// Keyed by offset: offsets in an epoch need not be contiguous (a restarted home continues past a jump).
    final class OffsetTable {
        /// Publish numbers by offset from `base` (0 where none is known yet; publish numbers start
        /// at 1): an epoch's offsets are dense, so an array serves; those far from the first one
        /// seen go to `sparse`.
        private var dense: [Int32] = []
        private var base: UInt64?
        private var sparse: [UInt64: Int32] = [:]
        private static let denseSpan: UInt64 = 1 << 20

        /// The publish number already seen at `offset`, after recording `publish` (1 or more) there if none was.
        func record(_ offset: UInt64, _ publish: Int32) -> Int32 {
            let base = self.base ?? offset
            self.base = base
            guard offset >= base, offset - base < Self.denseSpan else {
                if let known = sparse[offset] { return known }
                sparse[offset] = publish
                return publish
            }
            let i = Int(offset - base)
            if i >= dense.count { dense.append(contentsOf: repeatElement(0, count: max(i + 1 - dense.count, dense.count))) }
            if dense[i] != 0 { return dense[i] }
            dense[i] = publish
            return publish
        }
    }

    private func check() {
        // Within an epoch, every subscriber sees the same publication at each offset, in increasing order.
        struct EpochKey: Hashable { var topic: String; var epoch: String }
        var tables: [EpochKey: OffsetTable] = [:]
        // Per publish number, how many times the client being checked received it.
        var received = [Int](repeating: 0, count: sent.count + 1)
        // Acknowledged publishes sent before the run settled, by topic, in publish order.
        let settleBy = quietAt
        var acknowledged: [String: [Int]] = [:]
        for n in acks.keys.sorted() where sent[n - 1].at < settleBy { acknowledged[acks[n]!.topic, default: []].append(n) }
        var lost: [(publish: Int, client: Int, text: String)] = []
        // The log grouped by client, each client's deliveries in the order received (a counting sort).
        var starts = [Int](repeating: 0, count: clients.count + 1)
        for d in record.log { starts[Int(d.client) + 1] += 1 }
        for i in clients.indices { starts[i + 1] += starts[i] }
        var next = starts
        let byClient = [Delivery](unsafeUninitializedCapacity: record.log.count) { buffer, initialized in
            for d in record.log {
                (buffer.baseAddress! + next[Int(d.client)]).initialize(to: d)
                next[Int(d.client)] += 1
            }
            initialized = record.log.count
        }
        for c in clients {
            guard case .subscriber(let topic) = c.role else { continue }
            var last: Delivery?
            var table: OffsetTable?
            func position(_ d: Delivery) -> StreamPosition { StreamPosition(epoch: epochNames[Int(d.epoch)], offset: UInt64(d.offset)) }
            let deliveries = byClient[starts[c.key.index]..<starts[c.key.index + 1]]
            for d in deliveries {
                let publish = Int(d.publish)
                if table == nil || last?.epoch != d.epoch {
                    let key = EpochKey(topic: topic, epoch: epochNames[Int(d.epoch)])
                    if let t = tables[key] { table = t } else { let t = OffsetTable(); tables[key] = t; table = t }
                }
                let known = Int(table!.record(UInt64(d.offset), d.publish))
                if known != publish {
                    violations.append("order differs within epoch: \(topic) \(position(d)) is p\(known) for one client and p\(publish) for \(c.key.region)#\(c.key.index)")
                }
                if let l = last, l.epoch == d.epoch, d.offset <= l.offset {
                    violations.append("out of order: \(c.key.region)#\(c.key.index) got \(position(d)) after \(position(l)) on \(topic)")
                }
                last = d
                received[publish] += 1
                if received[publish] == 2, c.noticeCount == 0 {
                    violations.append("duplicate: \(c.key.region)#\(c.key.index) got p\(publish) twice on \(topic)")
                }
            }
            // No acknowledged publish is lost: every subscriber subscribed before it, never told of a gap, has it once.
            if c.noticeCount == 0, let since = c.subscribedAt {
                for n in acknowledged[topic] ?? [] where since < sent[n - 1].at && received[n] != 1 {
                    lost.append((n, c.key.index, "acknowledged publish p\(n) (\(acks[n]!.position)) reached \(c.key.region)#\(c.key.index) \(received[n]) times on \(topic)"))
                }
            }
            for d in deliveries { received[Int(d.publish)] = 0 }
        }
        for l in lost.sorted(by: { ($0.publish, $0.client) < ($1.publish, $1.client) }) {
            violations.append(l.text)
            if violations.count > 50 { return }
        }
        if let max = scenario.invariants.maxP99Latency {
            let p99 = latencySummary().all.p99Ms
            if p99 > Double(max.ternNanoseconds) / 1e6 { violations.append("p99 latency \(p99) ms is over the \(max) threshold") }
        }
    }

    private func seconds(_ t: TernInstant) -> Double { Double(t.nanoseconds) / 1e9 }

    /// Publish → deliver percentiles per region and overall, and the histogram, worked out once at the
    /// end of the run. The per-region samples are selected where they lie (their order is not kept),
    /// and only the overall array is new.
    private func latencySummary() -> LatencySummary {
        if let summary = latencySummaryKept { return summary }
        var byRegion: [String: Percentiles] = [:]
        for i in record.latencies.indices where !record.latencies[i].isEmpty {
            byRegion[regionNames[i]] = Percentiles(selectingIn: &record.latencies[i])
        }
        var all = record.latencies.flatMap { $0 }
        let bounds: [Double] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, SimulationResult.overflowBucket]
        var counts = Array(repeating: 0, count: bounds.count)
        for ns in all {
            let ms = Double(ns) / 1e6
            counts[bounds.firstIndex { ms <= $0 }!] += 1
        }
        var histogram: [Double: Int] = [:]
        for (i, n) in counts.enumerated() where n > 0 { histogram[bounds[i]] = n }
        let summary = LatencySummary(byRegion: byRegion, all: Percentiles(selectingIn: &all), histogram: histogram)
        latencySummaryKept = summary
        return summary
    }

    struct LatencySummary {
        var byRegion: [String: Percentiles]
        var all: Percentiles
        var histogram: [Double: Int]
    }

    /// `latencySummary()` once worked out (the check and the result both ask for it).
    private var latencySummaryKept: LatencySummary?

    private func result() -> SimulationResult {
        let latencies = latencySummary()
        let published = max(1, publishCount)
        return SimulationResult(
            scenario: scenario.name, seed: seed, traceHash: String(trace, radix: 16), violations: violations,
            simulatedSeconds: seconds(end), events: eventCount, clients: clients.count,
            publishes: publishCount, acknowledged: acks.count, deliveries: record.count,
            linkBatches: linkBatches, linkEntries: linkEntries, linkWireBytes: linkWire, linkRawBytes: linkRaw,
            linkMessagesPerPublish: Double(linkEntries) / Double(published),
            linkBytesPerPublish: Double(linkWire) / Double(published),
            linkEntriesByKind: Dictionary(uniqueKeysWithValues: entryKinds.indices.filter { entryKinds[$0] > 0 }.map { (LinkMessage.kindNames[$0], entryKinds[$0]) }),
            latencyByRegion: latencies.byRegion, latency: latencies.all,
            ackLatency: Percentiles(acks.map { n, ack in (ack.at - sent[n - 1].at).ternNanoseconds }),
            histogram: latencies.histogram, timeline: timeline.sorted { $0.seconds < $1.seconds }, deliveriesPerSecond: record.perSecond)
    }
}

extension LinkMessage {
    /// The cases' names, for counting entries by kind, in `kindIndex` order.
    static let kindNames = ["linkState", "interest", "epochSwitch", "uninterest", "data", "caughtUp", "gap", "resync", "publish",
                            "trace", "ack", "credit", "follow", "unfollow", "replicated", "heartbeat", "heartbeatReply",
                            "presence", "presenceDigest", "recover", "recovered"]

    /// The case's index in `kindNames`.
    var kindIndex: Int {
        switch self {
        case .linkState: 0
        case .interest: 1
        case .epochSwitch: 2
        case .uninterest: 3
        case .data: 4
        case .caughtUp: 5
        case .gap: 6
        case .resync: 7
        case .publish: 8
        case .trace: 9
        case .ack: 10
        case .credit: 11
        case .follow: 12
        case .unfollow: 13
        case .replicated: 14
        case .heartbeat: 15
        case .heartbeatReply: 16
        case .presence: 17
        case .presenceDigest: 18
        case .recover: 19
        case .recovered: 20
        }
    }
}
