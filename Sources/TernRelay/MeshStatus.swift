import Foundation
import Hummingbird
import TernCore
import TernTopology
import TernWire

/// A JSON value built in order, for status documents.
enum StatusJSON {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case null
    case array([StatusJSON])
    case object([(String, StatusJSON)])

    var text: String {
        switch self {
        case .string(let s): JSONText.quoted(s)
        case .int(let n): String(n)
        case .double(let d): d.isFinite ? String(format: "%.3f", d) : "null"
        case .bool(let b): b ? "true" : "false"
        case .null: "null"
        case .array(let items): "[" + items.map(\.text).joined(separator: ",") + "]"
        case .object(let members): "{" + members.map { JSONText.quoted($0.0) + ":" + $0.1.text }.joined(separator: ",") + "}"
        }
    }
}

/// Samples of the link metrics a relay exports, read back from its own Prometheus registry.
struct LinkByteCounters {
    var rawBytes = 0
    var wireBytes = 0
    var receivedBatches = 0

    /// The counters of each peer of `region`, from Prometheus text exposition.
    static func parse(_ exposition: String, region: String) -> [String: LinkByteCounters] {
        var out: [String: LinkByteCounters] = [:]
        for line in exposition.split(separator: "\n") where line.hasPrefix("tern_link_") {
            guard let sample = PrometheusSample(line), sample.labels["region"] == region, let peer = sample.labels["peer"] else { continue }
            let value = Int(sample.value)
            switch sample.name {
            case "tern_link_raw_bytes_total": out[peer, default: .init()].rawBytes = value
            case "tern_link_wire_bytes_total": out[peer, default: .init()].wireBytes = value
            case "tern_link_received_batches_total": out[peer, default: .init()].receivedBatches = value
            default: continue
            }
        }
        return out
    }
}

/// One sample line of the Prometheus text format: `name{label="value",...} number`.
struct PrometheusSample {
    var name: String
    var labels: [String: String] = [:]
    var value: Double

    init?(_ line: Substring) {
        var rest = line[...]
        let nameEnd = rest.firstIndex { $0 == "{" || $0 == " " } ?? rest.endIndex
        name = String(rest[..<nameEnd])
        rest = rest[nameEnd...]
        if rest.first == "{" {
            rest = rest.dropFirst()
            while let eq = rest.firstIndex(of: "=") {
                let key = rest[..<eq].trimmingCharacters(in: CharacterSet(charactersIn: ", "))
                rest = rest[rest.index(after: eq)...]
                guard rest.first == "\"" else { return nil }
                rest = rest.dropFirst()
                var value = ""
                var escaped = false
                var closed = false
                while let c = rest.first {
                    rest = rest.dropFirst()
                    if escaped {
                        value.append(c == "n" ? "\n" : c)
                        escaped = false
                    } else if c == "\\" {
                        escaped = true
                    } else if c == "\"" {
                        closed = true
                        break
                    } else {
                        value.append(c)
                    }
                }
                guard closed else { return nil }
                labels[key] = value
                if rest.first == "," { rest = rest.dropFirst() }
                if rest.first == "}" { break }
            }
            guard rest.first == "}" else { return nil }
            rest = rest.dropFirst()
        }
        let number = rest.trimmingCharacters(in: .whitespaces).split(separator: " ").first.map(String.init) ?? ""
        guard let v = Double(number) else { return nil }
        value = v
    }
}

extension Relay {
    /// The longest `/status?topic=` waits for this region to learn where a topic's stream stands.
    static let statusPositionWait = Duration.seconds(2)

    /// `GET /status`: this region, every region and link of the mesh as this relay
    /// sees them, per-link counters, topic counts; `?topic=NAME` adds the topic's
    /// home, position, failover order and fan-out tree.
    func statusResponse(_ request: Request) async -> Response {
        var topicSection: StatusJSON?
        if let topic = request.uri.queryParameters.get("topic") {
            switch await topicStatus(topic) {
            case .success(let json): topicSection = json
            case .failure(let error): return errorResponse(error)
            }
        }
        var members = meshStatus()
        if let topicSection { members.append(("topic", topicSection)) }
        var response = jsonResponse(.ok, StatusJSON.object(members).text)
        response.headers[.cacheControl] = "no-store"
        return response
    }

    /// Everything in `/status` but the topic section.
    func meshStatus() -> [(String, StatusJSON)] {
        let up = Set(runtime.upLinks)
        let neighbours = Set(topology.links(of: region).map(\.peer.name))
        let counters = runtime.linkCounters
        let roundTrips = runtime.linkRoundTrips
        let queues = runtime.linkQueues
        let bytes = LinkByteCounters.parse(String(decoding: metrics.registry.emitToBuffer(), as: UTF8.self), region: region)
        let stats = metrics.coreStats

        let regions: [StatusJSON] = topology.regions.map { r in
            var m: [(String, StatusJSON)] = [("name", .string(r.name)), ("url", .string("http://\(r.client)"))]
            if r.name == region {
                m.append(("self", .bool(true)))
                m.append(("reachable", .bool(true)))
            } else if neighbours.contains(r.name) {
                // A neighbour is reachable from here while the link to it is up; farther regions are
                // reached through links this relay does not own, whose state it does not report.
                m.append(("reachable", .bool(up.contains(r.name))))
            }
            return .object(m)
        }
        let links: [StatusJSON] = topology.links.map { l in
            var m: [(String, StatusJSON)] = [
                ("between", .array([.string(l.between.0), .string(l.between.1)])),
                ("latency_ms", .int(Int(l.latency.ternMilliseconds))),
                ("tls", .bool(!l.plaintext)),
            ]
            let peer: String? = l.between.0 == region ? l.between.1 : l.between.1 == region ? l.between.0 : nil
            guard let peer else {
                m.append(("own", .bool(false)))
                return .object(m)
            }
            m.append(("own", .bool(true)))
            m.append(("peer", .string(peer)))
            m.append(("state", .string(up.contains(peer) ? "up" : "down")))
            m.append(("rtt_ms", roundTrips[peer].map { .double(Double($0.ternNanoseconds) / 1e6) } ?? .null))
            let c = counters[peer]
            let batches = c?.batches ?? 0, entries = c?.messages ?? 0
            let b = bytes[peer] ?? LinkByteCounters()
            m.append(("sent", .object([
                ("batches", .int(batches)),
                ("entries", .int(entries)),
                ("publications", .int(c?.dataEntries ?? 0)),
                ("entries_per_batch", batches > 0 ? .double(Double(entries) / Double(batches)) : .null),
                ("raw_bytes", .int(b.rawBytes)),
                ("wire_bytes", .int(b.wireBytes)),
                ("compression_ratio", b.wireBytes > 0 ? .double(Double(b.rawBytes) / Double(b.wireBytes)) : .null),
                ("overflows", .int(c?.overflows ?? 0)),
            ])))
            m.append(("received", .object([("batches", .int(b.receivedBatches))])))
            if let q = queues[peer] {
                m.append(("queue", .object([
                    ("messages", .int(q.messages)),
                    ("bytes", .int(q.bytes)),
                    ("unacknowledged_batches", .int(q.unacknowledgedBatches)),
                ])))
            } else {
                m.append(("queue", .null))
            }
            return .object(m)
        }
        return [
            ("region", .string(region)),
            ("mesh", .string(topology.mesh)),
            ("topology_hash", .string(topology.hash)),
            ("draining", .bool(runtime.draining)),
            ("regions", .array(regions)),
            ("links", .array(links)),
            ("counts", .object([
                ("connections", .int(stats.connections)),
                ("subscriptions", .int(stats.subscriptions)),
                ("topics", .int(stats.topics)),
                ("publications", .int(stats.publications)),
                ("relayed_publications", .int(stats.relayedPublications)),
                ("presence_resyncs", .int(stats.presenceResyncs)),
                ("deliveries", .int(stats.deliveries)),
            ])),
        ]
    }

    /// The topic section of `/status?topic=NAME`.
    func topicStatus(_ topic: String) async -> Result<StatusJSON, TernError> {
        if let problem = TopicName.problem(with: topic) { return .failure(TernError(.invalidTopic, problem)) }
        let ns = String(TopicName.namespace(of: topic)!)
        guard topology.namespaces[ns] != nil else {
            let known = topology.namespaces.keys.sorted().joined(separator: ", ")
            return .failure(TernError(.unknownNamespace, "namespace '\(ns)' is not configured (known: \(known))"))
        }
        let graph = topology.meshConfig.graph
        let ranking = Rendezvous.ranking(topic: topic, regions: graph.regions)
        let pinned = topology.namespaces[ns]?.home
        let home = runtime.home(of: topic)
        // The tree over configured links, leaving out this relay's own links that are down (the others' state is not known here).
        let up = Set(runtime.upLinks)
        let neighbours = Set(topology.links(of: region).map(\.peer.name))
        let tree = graph.shortestPaths(from: home) { a, b in
            if a == region, neighbours.contains(b) { return up.contains(b) }
            if b == region, neighbours.contains(a) { return up.contains(a) }
            return true
        }
        func node(_ r: String) -> StatusJSON {
            .object([
                ("region", .string(r)),
                ("ms_from_home", .int(Int(tree.distance[r] ?? 0))),
                ("children", .array(tree.children(of: r).map(node))),
            ])
        }
        var m: [(String, StatusJSON)] = [
            ("name", .string(topic)),
            ("home", .string(home)),
            ("home_by", .string(pinned != nil ? "pinned by namespace \(ns)" : "rendezvous hashing")),
            ("canonical_home", .string(pinned ?? ranking.first ?? region)),
            ("failover_order", .array(ranking.map { .string($0) })),
            ("tree", node(home)),
            ("unreached", .array(graph.regions.filter { !tree.reaches($0) }.map { .string($0) })),
        ]
        switch await currentPosition(of: topic) {
        case .success(let p):
            m.append(("epoch", .string(p.epoch)))
            m.append(("offset", .int(Int(clamping: p.offset))))
        case .failure(let why):
            m.append(("position_unknown", .string(why.message)))
        }
        return .success(.object(m))
    }

    /// Where `topic`'s stream stands in this region, asked the way a long-poll without a cursor asks:
    /// a region that holds nothing for the topic first hears from upstream (bounded by `statusPositionWait`).
    func currentPosition(of topic: String) async -> Result<StreamPosition, TernError> {
        let runtime = self.runtime
        let (client, signals) = runtime.register()
        let reader = ClientIdentity(user: "", expiresAt: nil, subscribe: [TopicPattern(topic)], publish: [], presence: [])
        runtime.handle(.poll(client, reader, topics: [(topic, nil)], timeout: .zero))
        let reply: PollReply? = await withTaskGroup(of: PollReply?.self) { group in
            group.addTask {
                for await signal in signals {
                    if case .poll(let r) = signal { return r }
                }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: Self.statusPositionWait)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        runtime.unregister(client)
        guard let reply else {
            return .failure(TernError(.internalError, "this region has not yet heard from upstream where the stream stands"))
        }
        if let error = reply.error { return .failure(error) }
        guard let state = reply.topics.first(where: { $0.topic == topic }), !state.position.epoch.isEmpty else {
            return .failure(TernError(.internalError, "this region has not yet heard from upstream where the stream stands"))
        }
        return .success(state.position)
    }
}
