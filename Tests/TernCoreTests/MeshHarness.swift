import Testing
import TernCore

/// Several relay cores joined by in-memory links that deliver batches in
/// order, on a manual clock. A fault can cut a link (losing what is in
/// flight, as a broken TCP connection does) and restore it.
struct MeshHarness {
    var cores: [String: RelayCore] = [:]
    var encoders: [String: RecordingEncoder] = [:]
    var written: [String: WrittenFrames] = [:]
    var now = TernInstant.zero
    /// Batches in flight per directed link, delivered in order.
    var wires: [String: [[LinkMessage]]] = [:]
    var up: Set<String> = []
    var apiReplies: [UInt64: Result<ReplyBody, TernError>] = [:]
    var dataEntriesByLink: [String: Int] = [:]
    /// Every publication sent on any link, with the directed link it crossed.
    var dataSent: [(link: String, publication: Publication)] = []
    let graph: MeshGraph
    var trace = false
    /// Directed links whose batches are held back (not delivered) until released.
    var held: Set<String> = []
    /// Links a core declared dead: (region, peer, reason).
    var resets: [(region: String, peer: String, reason: String)] = []

    static let namespaces: [String: NamespaceOptions] = [
        "room": NamespaceOptions(presence: true, joinLeave: true, historySize: 50, historyTTL: .seconds(300), anonymous: false),
        "news": NamespaceOptions(presence: false, joinLeave: false, historySize: 20, historyTTL: .seconds(300), anonymous: true, clientPublish: false),
        "fast": {
            var o = NamespaceOptions(presence: false, joinLeave: false, historySize: 20, historyTTL: .seconds(300), anonymous: true, clientPublish: false)
            o.ack = .leader
            return o
        }(),
    ]

    init(regions: [String] = ["a", "b", "c"], links: [(String, String, Int64)] = [("a", "b", 10), ("b", "c", 10), ("a", "c", 30)],
         pinned: [String: String] = [:], tune: (inout MeshConfig) -> Void = { _ in }) {
        graph = MeshGraph(regions: regions, links: links.map { ($0.0, $0.1, .milliseconds($0.2)) })
        for (i, r) in regions.enumerated() {
            var mesh = MeshConfig(graph: graph, pinnedHomes: pinned)
            tune(&mesh)
            let encoder = RecordingEncoder()
            encoders[r] = encoder
            cores[r] = RelayCore(config: RelayCoreConfig(region: r, namespaces: Self.namespaces, mesh: mesh),
                                 encoder: encoder, seed: UInt64(i + 1), now: .zero)
        }
        for (a, b, _) in links { connect(a, b) }
        settle()
    }

    static func key(_ from: String, _ to: String) -> String { "\(from)>\(to)" }

    mutating func handle(_ region: String, _ event: RelayEvent) {
        let before = cores[region]!.invariantFailureCount
        let actions = cores[region]!.handle(event, now: now)
        written[region, default: WrittenFrames()].record(actions)
        if cores[region]!.invariantFailureCount > before {
            Issue.record("invariant broken in \(region) after \(event): \(cores[region]!.invariantFailures.suffix(3))")
        }
        for action in actions {
            switch action {
            case .sendLink(let peer, let batch):
                let k = Self.key(region, peer)
                guard up.contains(k) else { continue }
                wires[k, default: []].append(batch)
                if trace { print("TRACE \(k): \(batch.filter { if case .linkState = $0 { false } else if case .credit = $0 { false } else { true } })") }
                for case .data(let p) in batch { dataSent.append((k, p)) }
                let entries = batch.filter { if case .data = $0 { true } else { false } }.count
                if entries > 0 { dataEntriesByLink[k, default: 0] += entries }
            case .apiReply(let request, let result):
                apiReplies[request] = result
            case .resetLink(let peer, let reason):
                resets.append((region, peer, reason))
                cut(region, peer)
            default:
                break
            }
        }
    }

    /// Replaces a region's relay with a fresh one, as a crash and restart would: every link drops first.
    mutating func crashAndRestart(_ region: String, seed: UInt64, links: [String]) {
        for peer in links { cut(region, peer) }
        var mesh = MeshConfig(graph: graph, pinnedHomes: [:])
        mesh.failoverAfter = cores[region]!.config.mesh!.failoverAfter
        mesh.homeTimeout = cores[region]!.config.mesh!.homeTimeout
        mesh.incarnation = UInt64.max >> 2
        let encoder = RecordingEncoder()
        encoders[region] = encoder
        cores[region] = RelayCore(config: RelayCoreConfig(region: region, namespaces: Self.namespaces, mesh: mesh),
                                  encoder: encoder, seed: seed, now: now)
    }

    mutating func connect(_ a: String, _ b: String) {
        up.insert(Self.key(a, b))
        up.insert(Self.key(b, a))
        handle(a, .linkUp(b))
        handle(b, .linkUp(a))
    }

    /// Breaks the link both ways; batches in flight are lost.
    mutating func cut(_ a: String, _ b: String) {
        up.remove(Self.key(a, b))
        up.remove(Self.key(b, a))
        wires[Self.key(a, b)] = nil
        wires[Self.key(b, a)] = nil
        handle(a, .linkDown(b))
        handle(b, .linkDown(a))
    }

    /// Delivers batches until the wires are empty, firing due deadlines as time passes.
    mutating func settle(maxRounds: Int = 10_000) {
        var rounds = 0
        while rounds < maxRounds {
            rounds += 1
            if let k = wires.keys.sorted().first(where: { !(wires[$0]?.isEmpty ?? true) && !held.contains($0) }) {
                let batch = wires[k]!.removeFirst()
                let parts = k.split(separator: ">").map(String.init)
                handle(parts[1], .linkBatch(parts[0], batch))
                continue
            }
            let next = cores.values.compactMap(\.nextDeadline).min()
            guard let next, next <= now + .milliseconds(50) else { return }
            now = max(now, next)
            for r in cores.keys.sorted() where (cores[r]!.nextDeadline ?? .init(nanoseconds: .max)) <= now { handle(r, .tick) }
        }
    }

    mutating func advance(_ d: Duration) {
        let target = now + d
        while true {
            settle()
            guard let next = cores.values.compactMap(\.nextDeadline).min(), next <= target else { break }
            now = max(now, next)
            for r in cores.keys.sorted() { handle(r, .tick) }
        }
        now = target
        for r in cores.keys.sorted() { handle(r, .tick) }
        settle()
    }

    mutating func connectClient(_ region: String, _ id: UInt64, user: String = "u") -> ClientID {
        let c = ClientID(id)
        handle(region, .opened(c, .websocket))
        handle(region, .command(c, ref: 0, .connect(token: "t")))
        handle(region, .authenticated(c, ref: 0, ClientIdentity(user: user, expiresAt: nil,
            subscribe: [TopicPattern("*")], publish: [TopicPattern("*")], presence: [TopicPattern("*")])))
        _ = received(region, c)
        return c
    }

    mutating func received(_ region: String, _ c: ClientID) -> [ServerMessage] {
        let frames = written[region, default: WrittenFrames()].take(c, from: &cores[region]!)
        return frames.map { encoders[region]!.message($0) }
    }

    mutating func apiPublish(_ region: String, _ request: UInt64, _ topic: String, _ data: String, id: String = "") {
        handle(region, .apiPublish(request: request, topic: topic, id: id, data: data))
    }
}
