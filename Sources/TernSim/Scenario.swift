import Foundation
import TernCore
import TernTopology
import Yams

/// How a latency sample is drawn for a link or a client connection.
public enum LatencyDistribution: Sendable, Equatable {
    /// Always the link's configured latency.
    case constant
    /// Uniform in [latency - jitter, latency + jitter].
    case uniform(jitter: Duration)
    /// Exponential with the link's latency as its mean.
    case exponential
    /// Normal around the latency, with `jitter` as the standard deviation (clamped at zero).
    case normal(jitter: Duration)
}

/// The network model of one scenario.
public struct NetworkModel: Sendable {
    /// How link latencies are drawn (the mean is each link's `latency_ms`).
    public var latency: LatencyDistribution = .constant
    /// Probability that a batch's packets are lost once; TCP retransmits after about two round trips.
    public var loss: Double = 0
    /// Probability that a batch is duplicated below TCP (TCP discards the copy; counted only).
    public var duplication: Double = 0
    /// Packets may arrive this much out of order; TCP holds later ones back (head-of-line blocking).
    public var reorderWindow: Duration = .zero
    /// Link bandwidth when the topology gives none, in megabits per second (0 means unlimited).
    public var bandwidthMbps: Double = 0
    /// Consecutive losses after which the connection breaks and must be re-established.
    public var maxRetransmits = 6
    /// Client ↔ relay latency (one way).
    public var clientLatency: Duration = .milliseconds(5)
    /// Client ↔ relay latency distribution.
    public var clientLatencyDistribution: LatencyDistribution = .uniform(jitter: .milliseconds(2))
    /// How long a broken link waits before it reconnects.
    public var reconnectDelay: Duration = .milliseconds(500)

    public init() {}
}

/// The clients and traffic of one scenario.
public struct Workload: Sendable {
    /// Ordinary topics: `namespace:t0 ... t(n-1)`.
    public var topics = 4
    /// The namespace of the ordinary topics.
    public var namespace = "room"
    /// Subscribers per region, spread over the ordinary topics.
    public var subscribersPerRegion = 20
    /// Publications per second over the whole mesh (Poisson), on ordinary topics.
    public var publishRate = 20.0
    /// A celebrity topic with many subscribers in every region.
    public var celebrity: Celebrity?
    /// Clients joining and leaving a presence room, per second per region.
    public var presenceChurn = 0.0
    /// The presence room the churning clients use.
    public var presenceTopic = "room:presence"
    /// When publishing stops, so the run can drain before the checkers look.
    public var quietAfter: Duration?
    /// Regions whose clients subscribe (nil: every region).
    public var subscriberRegions: [String]?
    /// Regions whose clients publish (nil: every region).
    public var publisherRegions: [String]?
    /// Clients per region that join and leave the presence room.
    public var churnersPerRegion = 10
    /// While set, odd-numbered topics get no publications between these two times, then resume
    /// (topics that go idle and come back; the swarm draws it).
    public var idleWindow: (from: Duration, to: Duration)?

    /// One topic with many subscribers in all regions.
    public struct Celebrity: Sendable {
        public var topic: String
        public var subscribersPerRegion: Int
        public var publishRate: Double
    }

    public init() {}
}

/// A fault, scheduled or drawn in swarm mode.
public enum Fault: Sendable, Equatable {
    /// Cut every link between the groups (a group not listed keeps its links).
    case partition([[String]])
    /// Cut one direction only: `from` can no longer send to `to`.
    case oneWay(from: String, to: String)
    /// Cut every link of one region.
    case isolate(String)
    /// Packets on one link are silently dropped both ways: no disconnect, no reset, and no new
    /// connection gets through, until a heal. Only the relays' read deadlines can notice.
    case blackhole(String, String)
    /// Every link of one region becomes a blackhole.
    case blackholeRegion(String)
    /// Restore every link.
    case heal
    /// Break and restore a link repeatedly.
    case flap(String, String, times: Int, every: Duration)
    /// Extreme delay on a link for a while.
    case clog(String, String, delay: Duration, duration: Duration)
    /// The relay loses its memory; its clients are disconnected.
    case crash(String)
    /// A crashed relay starts again, fresh.
    case restart(String)
    /// The region's clock moves forward by this much (skew accumulates).
    case clockJump(String, Duration)
    /// A fraction of a region's clients stop reading for a while.
    case slowClients(String, fraction: Double, duration: Duration)

    var label: String {
        switch self {
        case .partition(let g): "partition \(g.map { $0.joined(separator: ",") }.joined(separator: " | "))"
        case .oneWay(let a, let b): "one-way cut \(a) → \(b)"
        case .isolate(let r): "isolate \(r)"
        case .blackhole(let a, let b): "blackhole \(a)–\(b)"
        case .blackholeRegion(let r): "blackhole \(r)"
        case .heal: "heal"
        case .flap(let a, let b, let n, _): "flap \(a)–\(b) ×\(n)"
        case .clog(let a, let b, let d, _): "clog \(a)–\(b) +\(d)"
        case .crash(let r): "crash \(r)"
        case .restart(let r): "restart \(r)"
        case .clockJump(let r, let d): "clock \(r) +\(d)"
        case .slowClients(let r, let f, _): "slow clients \(r) \(Int(f * 100))%"
        }
    }
}

/// A fault at a time.
public struct ScheduledFault: Sendable, Equatable {
    public var at: Duration
    public var fault: Fault

    /// `fault` at `at` after the start.
    public init(at: Duration, fault: Fault) {
        self.at = at
        self.fault = fault
    }
}

/// What the checkers demand of a run.
public struct Invariants: Sendable {
    /// Presence must match the connected clients this long after the last heal.
    public var presenceConvergesWithin: Duration = .seconds(10)
    /// If set, the 99th percentile publish→deliver latency must stay under this.
    public var maxP99Latency: Duration?

    public init() {}
}

/// Deliberate defects to prove the checkers can fail (tests only).
public struct DebugFaults: Sendable {
    /// Drop one acknowledged publication on its way to one client.
    public var dropOneDelivery = false
    /// Swap two consecutive publications for one client.
    public var reorderOneDelivery = false
    /// Lose one presence join on its way down a fan-out tree (in the last seconds of churn), as a bug
    /// would: only the periodic presence digests can repair it.
    public var dropOnePresence = false

    public init() {}
}

/// A whole simulation scenario.
public struct Scenario: Sendable {
    public var name: String
    public var file: String
    public var topology: Topology
    public var duration: Duration
    public var seed: UInt64
    public var network = NetworkModel()
    public var workload = Workload()
    public var faults: [ScheduledFault] = []
    public var invariants = Invariants()
    public var debug = DebugFaults()
    /// Items each relay's full invariant sweep visits per event, on average (`RelayCoreConfig.invariantBudgetPerEvent`):
    /// cores of fewer than 64 items are swept after every event, larger ones after every size/budget
    /// events. Whatever the size, every client and topic an event changed is checked after that event.
    public var invariantBudgetPerEvent = 8
}

/// A problem in a scenario file, with its line.
public struct ScenarioError: Error, CustomStringConvertible {
    public var description: String
}

/// Reads scenario YAML files.
public enum ScenarioLoader {
    /// Loads `path`; the topology path inside is relative to the scenario file.
    public static func load(path: String) throws -> Scenario {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ScenarioError(description: "\(path):1:1: error: cannot read the scenario (\(error.localizedDescription))")
        }
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: text) else { throw ScenarioError(description: "\(path):1:1: error: the file is empty") }
            root = node
        } catch let error as ScenarioError {
            throw error
        } catch {
            throw ScenarioError(description: "\(path):1:1: error: not valid YAML: \(error)")
        }
        var r = NodeReader(file: path)
        let scenario = r.scenario(root)
        if !r.problems.isEmpty || scenario == nil {
            throw ScenarioError(description: r.problems.joined(separator: "\n"))
        }
        return scenario!
    }
}

private struct NodeReader {
    let file: String
    var problems: [String] = []

    mutating func fail(_ node: Node?, _ message: String) {
        problems.append("\(file):\(node?.mark?.line ?? 1):\(node?.mark?.column ?? 1): error: \(message)")
    }

    mutating func map(_ node: Node, _ what: String, _ known: [String]) -> [String: Node]? {
        guard case .mapping(let m) = node else {
            fail(node, "\(what) must be a mapping")
            return nil
        }
        var out: [String: Node] = [:]
        for (k, v) in m {
            guard let key = k.string else { continue }
            if !known.contains(key) {
                fail(k, "unknown option '\(key)' in \(what); known: \(known.joined(separator: ", "))")
            } else {
                out[key] = v
            }
        }
        return out
    }

    mutating func duration(_ node: Node?, _ what: String) -> Duration? {
        guard let node else { return nil }
        guard let s = node.string, let d = parseDuration(s) else {
            fail(node, "\(what) must be a duration such as 250ms, 30s or 2m")
            return nil
        }
        return d
    }

    mutating func number(_ node: Node?, _ what: String) -> Double? {
        guard let node else { return nil }
        guard let s = node.string, let d = Double(s), d >= 0 else {
            fail(node, "\(what) must be a number of at least 0")
            return nil
        }
        return d
    }

    mutating func int(_ node: Node?, _ what: String) -> Int? {
        guard let node else { return nil }
        guard let s = node.string, let n = Int(s), n >= 0 else {
            fail(node, "\(what) must be a whole number of at least 0")
            return nil
        }
        return n
    }

    mutating func regionList(_ node: Node?, _ what: String) -> [String]? {
        guard let node, case .sequence(let seq) = node else {
            fail(node, "\(what) must be a list of region names")
            return nil
        }
        return seq.compactMap(\.string)
    }

    mutating func distribution(_ node: Node?) -> LatencyDistribution? {
        guard let node else { return nil }
        guard let m = map(node, "latency", ["distribution", "jitter"]) else { return nil }
        let jitter = duration(m["jitter"], "jitter") ?? .milliseconds(5)
        switch m["distribution"]?.string ?? "constant" {
        case "constant": return .constant
        case "uniform": return .uniform(jitter: jitter)
        case "exponential": return .exponential
        case "normal": return .normal(jitter: jitter)
        default:
            fail(m["distribution"], "distribution must be constant, uniform, exponential or normal")
            return nil
        }
    }

    mutating func scenario(_ root: Node) -> Scenario? {
        guard let top = map(root, "the scenario", ["name", "topology", "duration", "seed", "network", "workload", "faults", "invariants", "debug"]) else { return nil }
        guard let topologyNode = top["topology"], let topologyPath = topologyNode.string else {
            fail(root, "missing 'topology: PATH' (relative to this file)")
            return nil
        }
        let absolute = file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file
        let base = URL(fileURLWithPath: absolute).deletingLastPathComponent()
        let resolved = topologyPath.hasPrefix("/") ? topologyPath : base.appendingPathComponent(topologyPath).standardized.path
        let topology: Topology
        do {
            topology = try TopologyLoader.load(path: resolved)
        } catch {
            fail(topologyNode, "the topology \(resolved) is broken:\n\(error)")
            return nil
        }
        let names = Set(topology.regions.map(\.name))
        var s = Scenario(name: top["name"]?.string ?? URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent,
                         file: file, topology: topology,
                         duration: duration(top["duration"], "duration") ?? .seconds(30),
                         seed: UInt64(int(top["seed"], "seed") ?? 1))
        if let n = top["network"], let m = map(n, "network", ["latency", "loss", "duplication", "reorder_window", "bandwidth_mbps",
                                                              "max_retransmits", "client_latency", "reconnect_delay"]) {
            if let d = distribution(m["latency"]) { s.network.latency = d }
            if let v = number(m["loss"], "loss") { s.network.loss = min(v, 0.9) }
            if let v = number(m["duplication"], "duplication") { s.network.duplication = min(v, 0.9) }
            if let v = duration(m["reorder_window"], "reorder_window") { s.network.reorderWindow = v }
            if let v = number(m["bandwidth_mbps"], "bandwidth_mbps") { s.network.bandwidthMbps = v }
            if let v = int(m["max_retransmits"], "max_retransmits") { s.network.maxRetransmits = max(1, v) }
            if let v = duration(m["client_latency"], "client_latency") { s.network.clientLatency = v }
            if let v = duration(m["reconnect_delay"], "reconnect_delay") { s.network.reconnectDelay = v }
        }
        if let n = top["workload"], let m = map(n, "workload", ["topics", "namespace", "subscribers_per_region", "publish_rate",
                                                                "celebrity", "presence_churn", "presence_topic", "quiet_after",
                                                                "subscriber_regions", "publisher_regions", "churners_per_region"]) {
            if let v = int(m["topics"], "topics") { s.workload.topics = max(1, v) }
            if let v = m["namespace"]?.string { s.workload.namespace = v }
            if let v = int(m["subscribers_per_region"], "subscribers_per_region") { s.workload.subscribersPerRegion = v }
            if let v = number(m["publish_rate"], "publish_rate") { s.workload.publishRate = v }
            if let v = number(m["presence_churn"], "presence_churn") { s.workload.presenceChurn = v }
            if let v = m["presence_topic"]?.string { s.workload.presenceTopic = v }
            if let v = duration(m["quiet_after"], "quiet_after") { s.workload.quietAfter = v }
            let known = Set(topology.regions.map(\.name))
            for (key, set) in [("subscriber_regions", { (s: inout Scenario, v: [String]) in s.workload.subscriberRegions = v }),
                               ("publisher_regions", { (s: inout Scenario, v: [String]) in s.workload.publisherRegions = v })] {
                guard let n = m[key], let list = regionList(n, key) else { continue }
                if let unknown = list.first(where: { !known.contains($0) }) {
                    fail(n, "\(key) names '\(unknown)', which is not a region of the topology (\(known.sorted().joined(separator: ", ")))")
                } else {
                    set(&s, list)
                }
            }
            if let v = int(m["churners_per_region"], "churners_per_region") { s.workload.churnersPerRegion = max(1, v) }
            if let c = m["celebrity"], let cm = map(c, "celebrity", ["topic", "subscribers_per_region", "publish_rate"]) {
                s.workload.celebrity = .init(topic: cm["topic"]?.string ?? "room:celebrity",
                                             subscribersPerRegion: int(cm["subscribers_per_region"], "subscribers_per_region") ?? 100,
                                             publishRate: number(cm["publish_rate"], "publish_rate") ?? 5)
            }
        }
        for namespaceTopic in [s.workload.namespace + ":t0", s.workload.presenceTopic] + [s.workload.celebrity?.topic].compactMap({ $0 }) {
            if let ns = TopicName.namespace(of: namespaceTopic), topology.namespaces[String(ns)] == nil {
                fail(top["workload"], "namespace '\(ns)' is not in the topology; add it there or change the workload")
            }
        }
        if let n = top["faults"] {
            guard case .sequence(let items) = n else {
                fail(n, "'faults' must be a list")
                return nil
            }
            for item in items { if let f = fault(item, names) { s.faults.append(f) } }
        }
        if let n = top["invariants"], let m = map(n, "invariants", ["presence_converges_within", "max_p99_latency"]) {
            if let v = duration(m["presence_converges_within"], "presence_converges_within") { s.invariants.presenceConvergesWithin = v }
            if let v = duration(m["max_p99_latency"], "max_p99_latency") { s.invariants.maxP99Latency = v }
        }
        if let n = top["debug"], let m = map(n, "debug", ["drop_one_delivery", "reorder_one_delivery", "drop_one_presence"]) {
            s.debug.dropOneDelivery = m["drop_one_delivery"]?.string == "true"
            s.debug.reorderOneDelivery = m["reorder_one_delivery"]?.string == "true"
            s.debug.dropOnePresence = m["drop_one_presence"]?.string == "true"
        }
        return s
    }

    mutating func fault(_ node: Node, _ regions: Set<String>) -> ScheduledFault? {
        let kinds = ["partition", "one_way", "isolate", "blackhole", "heal", "flap", "clog", "crash", "restart", "clock_jump", "slow_clients"]
        guard let m = map(node, "a fault", ["at"] + kinds + ["times", "every", "delay", "for", "fraction"]) else { return nil }
        guard let at = duration(m["at"], "at") else {
            fail(node, "a fault needs 'at: TIME'")
            return nil
        }
        func region(_ n: Node?, _ what: String) -> String? {
            guard let name = n?.string, regions.contains(name) else {
                fail(n ?? node, "\(what) must name a region of the topology (\(regions.sorted().joined(separator: ", ")))")
                return nil
            }
            return name
        }
        func pair(_ n: Node?, _ what: String) -> (String, String)? {
            guard let list = regionList(n, what), list.count == 2, list.allSatisfy(regions.contains) else {
                fail(n ?? node, "\(what) must be [region, region]")
                return nil
            }
            return (list[0], list[1])
        }
        let chosen = kinds.filter { m[$0] != nil }
        guard chosen.count == 1 else {
            fail(node, "a fault needs exactly one of: \(kinds.joined(separator: ", "))")
            return nil
        }
        let f: Fault?
        switch chosen[0] {
        case "partition":
            guard case .sequence(let groups)? = m["partition"] else { fail(m["partition"], "partition is a list of region lists"); return nil }
            let g = groups.compactMap { regionList($0, "a partition group") }
            f = .partition(g)
        case "one_way": f = pair(m["one_way"], "one_way").map { .oneWay(from: $0.0, to: $0.1) }
        case "isolate": f = region(m["isolate"], "isolate").map { .isolate($0) }
        case "blackhole":
            if case .sequence? = m["blackhole"] {
                f = pair(m["blackhole"], "blackhole").map { .blackhole($0.0, $0.1) }
            } else {
                f = region(m["blackhole"], "blackhole (a region, or a link as [region, region])").map { .blackholeRegion($0) }
            }
        case "heal": f = .heal
        case "flap": f = pair(m["flap"], "flap").map { .flap($0.0, $0.1, times: int(m["times"], "times") ?? 3, every: duration(m["every"], "every") ?? .seconds(1)) }
        case "clog": f = pair(m["clog"], "clog").map { .clog($0.0, $0.1, delay: duration(m["delay"], "delay") ?? .seconds(2), duration: duration(m["for"], "for") ?? .seconds(5)) }
        case "crash": f = region(m["crash"], "crash").map { .crash($0) }
        case "restart": f = region(m["restart"], "restart").map { .restart($0) }
        case "clock_jump":
            guard let r = region(m["clock_jump"], "clock_jump") else { return nil }
            f = .clockJump(r, duration(m["delay"], "delay") ?? .milliseconds(500))
        case "slow_clients":
            guard let r = region(m["slow_clients"], "slow_clients") else { return nil }
            f = .slowClients(r, fraction: min(1, number(m["fraction"], "fraction") ?? 0.1), duration: duration(m["for"], "for") ?? .seconds(5))
        default: f = nil
        }
        return f.map { ScheduledFault(at: at, fault: $0) }
    }
}
