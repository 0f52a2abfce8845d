import Foundation
import TernCore
import Yams

/// One problem in a topology file: where it is and what to change.
public struct TopologyDiagnostic: Error, Hashable, Sendable, CustomStringConvertible {
    /// The file the problem is in.
    public var file: String
    /// The 1-based line.
    public var line: Int
    /// The 1-based column.
    public var column: Int
    /// What is wrong and what to change.
    public var message: String

    public var description: String { "\(file):\(line):\(column): error: \(message)" }
}

/// All problems found in a topology file; reading stops only at YAML syntax errors.
public struct TopologyError: Error, Sendable, CustomStringConvertible {
    /// The problems, in file order.
    public var diagnostics: [TopologyDiagnostic]
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}

/// Reads and validates topology files.
public enum TopologyLoader {
    /// Reads the file at `path`.
    public static func load(path: String) throws(TopologyError) -> Topology {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw TopologyError(diagnostics: [TopologyDiagnostic(file: path, line: 1, column: 1,
                message: "cannot read the file (\(error.localizedDescription)); check the path")])
        }
        return try parse(text, file: path)
    }

    /// Parses topology YAML `text`, naming `file` in every diagnostic.
    public static func parse(_ text: String, file: String) throws(TopologyError) -> Topology {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw TopologyError(diagnostics: [syntaxDiagnostic(error, file: file)])
        } catch {
            throw TopologyError(diagnostics: [TopologyDiagnostic(file: file, line: 1, column: 1, message: "not valid YAML: \(error)")])
        }
        var reader = Reader(file: file)
        guard let root else {
            throw TopologyError(diagnostics: [TopologyDiagnostic(file: file, line: 1, column: 1,
                message: "the file is empty; it needs at least 'mesh' and 'regions'")])
        }
        let topology = reader.topology(root)
        if !reader.diagnostics.isEmpty || topology == nil {
            throw TopologyError(diagnostics: reader.diagnostics.sorted { ($0.line, $0.column) < ($1.line, $1.column) })
        }
        return topology!
    }

    private static func syntaxDiagnostic(_ error: YamlError, file: String) -> TopologyDiagnostic {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _):
            return TopologyDiagnostic(file: file, line: mark.line, column: mark.column, message: "YAML syntax: \(problem)")
        default:
            return TopologyDiagnostic(file: file, line: 1, column: 1, message: "YAML: \(error)")
        }
    }
}

/// Parses a duration written `250ms`, `30s`, `5m` or `1h`.
public func parseDuration(_ text: String) -> Duration? {
    let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
    for (suffix, ms) in units where text.hasSuffix(suffix) {
        let number = text.dropLast(suffix.count)
        if let n = Int64(number), n >= 0 { return .milliseconds(n * ms) }
        if let d = Double(number), d >= 0, d.isFinite { return .milliseconds(Int64(d * Double(ms))) }
        return nil
    }
    return nil
}

private struct Reader {
    let file: String
    var diagnostics: [TopologyDiagnostic] = []
    /// Every region name written, including regions with other errors, so links to them are not reported twice.
    var declaredRegions: [String] = []

    mutating func fail(_ node: Node?, _ message: String) {
        let mark = node?.mark
        diagnostics.append(TopologyDiagnostic(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1, message: message))
    }

    /// The mapping's entries after checking every key is known.
    mutating func mapping(_ node: Node, what: String, known: [String]) -> [String: Node]? {
        guard case .mapping(let m) = node else {
            fail(node, "\(what) must be a mapping of key: value")
            return nil
        }
        var out: [String: Node] = [:]
        for (k, v) in m {
            guard let key = k.string else {
                fail(k, "keys in \(what) must be plain words")
                continue
            }
            if !known.contains(key) {
                fail(k, "unknown option '\(key)' in \(what); known options: \(known.joined(separator: ", "))")
            } else if out[key] != nil {
                fail(k, "'\(key)' appears twice in \(what); keep one")
            } else {
                out[key] = v
            }
        }
        return out
    }

    mutating func string(_ node: Node?, _ what: String) -> String? {
        guard let node, case .scalar(let s) = node, !s.string.isEmpty else {
            fail(node, "\(what) must be a non-empty string")
            return nil
        }
        return s.string
    }

    mutating func bool(_ node: Node, _ what: String) -> Bool? {
        guard case .scalar(let s) = node, let b = Bool(s.string.lowercased()) ?? (s.string == "yes" ? true : s.string == "no" ? false : nil) else {
            fail(node, "\(what) must be true or false")
            return nil
        }
        return b
    }

    mutating func int(_ node: Node, _ what: String, min: Int = 0) -> Int? {
        guard case .scalar(let s) = node, let n = Int(s.string.replacingOccurrences(of: "_", with: "")), n >= min else {
            fail(node, "\(what) must be a whole number of at least \(min)")
            return nil
        }
        return n
    }

    mutating func number(_ node: Node, _ what: String) -> Double? {
        guard case .scalar(let s) = node, let d = Double(s.string), d > 0, d.isFinite else {
            fail(node, "\(what) must be a positive number")
            return nil
        }
        return d
    }

    mutating func duration(_ node: Node, _ what: String) -> Duration? {
        guard case .scalar(let s) = node, let d = parseDuration(s.string) else {
            fail(node, "\(what) must be a duration such as 250ms, 30s, 5m or 1h")
            return nil
        }
        return d
    }

    mutating func address(_ node: Node?, _ what: String) -> HostPort? {
        guard let text = string(node, what) else { return nil }
        switch HostPort.parse(text) {
        case .success(let hp): return hp
        case .failure(let problem):
            fail(node, "\(what): \(problem.reason)")
            return nil
        }
    }

    mutating func topology(_ root: Node) -> Topology? {
        guard let top = mapping(root, what: "the topology", known: ["mesh", "regions", "links", "namespaces", "limits", "auth", "link_tls", "mesh_tuning"]) else {
            return nil
        }
        let mesh = top["mesh"].flatMap { string($0, "mesh") }
        if top["mesh"] == nil { fail(root, "missing 'mesh: NAME' naming this mesh") }
        var regions: [Region] = []
        if let node = top["regions"] {
            regions = self.regions(node)
        } else {
            fail(root, "missing 'regions': list at least one region with name, client and link")
        }
        let links = top["links"].map { self.links($0, regions: regions) } ?? []
        let namespaces = top["namespaces"].map { self.namespaces($0) } ?? [:]
        let limits = top["limits"].map { self.limits($0) } ?? RelayLimits()
        let auth = top["auth"].map { self.auth($0) } ?? AuthConfig()
        let linkTLS = top["link_tls"].flatMap { self.linkTLS($0) }
        let tuning = top["mesh_tuning"].map { self.tuning($0) } ?? MeshTuning()
        for (name, options) in namespaces.sorted(by: { $0.key < $1.key }) {
            if let home = options.home, !declaredRegions.contains(home) {
                fail(top["namespaces"], "namespace '\(name)' pins its home to '\(home)', which is not a region; use one of \(declaredRegions.joined(separator: ", "))")
            }
        }
        if linkTLS == nil, let tlsLink = links.first(where: { !$0.plaintext }) {
            fail(top["links"] ?? root, "the link between \(tlsLink.between.0) and \(tlsLink.between.1) uses TLS (line \(tlsLink.line)), so add 'link_tls: {ca: ..., cert: ..., key: ...}' or mark it 'plaintext: true' for loopback development")
        }
        if namespaces.isEmpty {
            fail(top["namespaces"] ?? root, "no namespaces: add at least one, e.g. 'namespaces: {room: {presence: true}}'")
        }
        if diagnostics.isEmpty { checkConnected(regions, links, node: top["links"] ?? root) }
        guard let mesh else { return nil }
        var topology = Topology(file: file, mesh: mesh, regions: regions, links: links, namespaces: namespaces, limits: limits, auth: auth)
        topology.linkTLS = linkTLS
        topology.tuning = tuning
        return topology
    }

    mutating func regions(_ node: Node) -> [Region] {
        guard case .sequence(let seq) = node, !seq.isEmpty else {
            fail(node, "'regions' must be a list of regions, each with name, client and link")
            return []
        }
        var out: [Region] = []
        var addresses: [HostPort: (String, Node)] = [:]
        for item in seq {
            guard let m = mapping(item, what: "a region", known: ["name", "client", "link", "parent"]) else { continue }
            guard let name = string(m["name"] ?? item, "the region's 'name'") else { continue }
            declaredRegions.append(name)
            if !name.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "-" }) || name.first == "-" {
                fail(m["name"], "region name '\(name)' may use only lowercase letters, digits and '-'")
            }
            if out.contains(where: { $0.name == name }) {
                fail(m["name"], "region '\(name)' is defined twice; rename one")
            }
            let client = address(m["client"] ?? item, "'client' of region \(name)")
            let link = address(m["link"] ?? item, "'link' of region \(name)")
            for (key, hp) in [("client", client), ("link", link)] {
                guard let hp else { continue }
                if let (owner, _) = addresses[hp] {
                    fail(m[key], "\(hp) is already used by \(owner); give region \(name) its own port")
                } else {
                    addresses[hp] = ("region \(name) (\(key))", m[key]!)
                }
            }
            let parent = m["parent"].flatMap { string($0, "'parent' of region \(name)") }
            guard let client, let link else { continue }
            out.append(Region(name: name, client: client, link: link, parent: parent, line: item.mark?.line ?? 1))
        }
        for (i, r) in out.enumerated() {
            guard let parent = r.parent else { continue }
            if !out.contains(where: { $0.name == parent }) {
                fail(seq[i], "region \(r.name) names parent '\(parent)', which is not a region; use one of \(out.map(\.name).joined(separator: ", "))")
            } else if parent == r.name {
                fail(seq[i], "region \(r.name) cannot be its own parent")
            }
        }
        return out
    }

    mutating func links(_ node: Node, regions: [Region]) -> [Link] {
        guard case .sequence(let seq) = node else {
            fail(node, "'links' must be a list, each entry with 'between: [a, b]' and 'latency_ms'")
            return []
        }
        let names = declaredRegions
        var out: [Link] = []
        for item in seq {
            guard let m = mapping(item, what: "a link", known: ["between", "latency_ms", "bandwidth_mbps", "plaintext"]) else { continue }
            guard let b = m["between"], case .sequence(let pair) = b, pair.count == 2,
                  let a = pair[0].string, let c = pair[1].string else {
                fail(m["between"] ?? item, "a link needs 'between: [region-a, region-b]' with exactly two regions")
                continue
            }
            var ok = true
            for (n, name) in [(pair[0], a), (pair[1], c)] where !names.contains(name) {
                fail(n, "link names unknown region '\(name)'; known regions: \(names.joined(separator: ", "))")
                ok = false
            }
            if a == c {
                fail(b, "a link must join two different regions, not \(a) to itself")
                ok = false
            }
            if out.contains(where: { $0.joins(a, c) }) {
                fail(b, "the link between \(a) and \(c) is defined twice; keep one")
                ok = false
            }
            var latency = Duration.milliseconds(1)
            if let l = m["latency_ms"] {
                if let ms = int(l, "latency_ms") { latency = .milliseconds(ms) } else { ok = false }
            } else {
                fail(item, "link between \(a) and \(c) needs 'latency_ms' (expected one-way latency)")
                ok = false
            }
            let bandwidth = m["bandwidth_mbps"].flatMap { number($0, "bandwidth_mbps") }
            let plaintext = m["plaintext"].flatMap { bool($0, "plaintext") } ?? false
            if !regions.contains(where: { $0.name == a }) || !regions.contains(where: { $0.name == c }) { ok = false }
            if plaintext, ok {
                let ends = [a, c].compactMap { n in regions.first { $0.name == n } }
                if let remote = ends.first(where: { !$0.link.isLoopback }) {
                    fail(m["plaintext"], "plaintext links are for loopback development only, but region \(remote.name) links on \(remote.link); remove 'plaintext' to use TLS")
                    ok = false
                }
            }
            if ok {
                out.append(Link(between: (a, c), latency: latency, bandwidthMbps: bandwidth, plaintext: plaintext, line: item.mark?.line ?? 1))
            }
        }
        return out
    }

    mutating func checkConnected(_ regions: [Region], _ links: [Link], node: Node) {
        guard regions.count > 1 else { return }
        var seen: Set<String> = [regions[0].name]
        var frontier = [regions[0].name]
        while let r = frontier.popLast() {
            for l in links {
                for (x, y) in [(l.between.0, l.between.1), (l.between.1, l.between.0)] where x == r && !seen.contains(y) {
                    seen.insert(y)
                    frontier.append(y)
                }
            }
        }
        let cut = regions.map(\.name).filter { !seen.contains($0) }
        if !cut.isEmpty {
            fail(node, "the link graph is disconnected: \(cut.joined(separator: ", ")) cannot be reached from \(regions[0].name); add a link to join them")
        }
    }

    mutating func namespaces(_ node: Node) -> [String: NamespaceOptions] {
        guard case .mapping(let m) = node else {
            fail(node, "'namespaces' must map namespace names to options")
            return [:]
        }
        let known = ["presence", "join_leave", "history_size", "history_ttl", "anonymous", "client_publish", "max_subscribers", "home", "ack"]
        var out: [String: NamespaceOptions] = [:]
        for (k, v) in m {
            guard let name = k.string, !name.isEmpty,
                  name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }) else {
                fail(k, "a namespace name may use only letters, digits, '_' and '-'")
                continue
            }
            var options = NamespaceOptions()
            if case .scalar(let s) = v, s.string.isEmpty || s.string == "~" || s.string == "null" {
                out[name] = options
                continue
            }
            guard let o = mapping(v, what: "namespace '\(name)'", known: known) else { continue }
            if let n = o["presence"], let b = bool(n, "presence") { options.presence = b }
            if let n = o["join_leave"], let b = bool(n, "join_leave") { options.joinLeave = b }
            if let n = o["history_size"], let i = int(n, "history_size") { options.historySize = i }
            if let n = o["history_ttl"], let d = duration(n, "history_ttl") { options.historyTTL = d }
            if let n = o["anonymous"], let b = bool(n, "anonymous") { options.anonymous = b }
            if let n = o["client_publish"], let b = bool(n, "client_publish") { options.clientPublish = b }
            if let n = o["max_subscribers"], let i = int(n, "max_subscribers") { options.maxSubscribers = i }
            if let n = o["home"], let h = string(n, "home") { options.home = h }
            if let n = o["ack"], let a = string(n, "ack") {
                if let mode = AckMode(rawValue: a) {
                    options.ack = mode
                } else {
                    fail(n, "ack must be 'replicated' (acknowledge once a second region holds the publication, the default) or 'leader' (acknowledge at once; a crash of the home can lose it)")
                }
            }
            if options.joinLeave && !options.presence {
                fail(o["join_leave"], "join_leave needs presence: set 'presence: true' in namespace '\(name)'")
            }
            out[name] = options
        }
        return out
    }

    mutating func limits(_ node: Node) -> RelayLimits {
        var l = RelayLimits()
        let known = ["max_frame_bytes", "max_queue_bytes", "max_subscriptions", "publish_rate", "publish_burst",
                     "accept_rate", "accept_burst", "connect_timeout", "max_presence_list", "idempotency_window",
                     "idempotency_capacity", "max_poll_timeout", "drain_window", "stream_linger"]
        guard let m = mapping(node, what: "limits", known: known) else { return l }
        if let n = m["max_frame_bytes"], let v = int(n, "max_frame_bytes", min: 256) { l.maxFrameBytes = v }
        if let n = m["max_queue_bytes"], let v = int(n, "max_queue_bytes", min: 1024) { l.maxQueueBytes = v }
        if let n = m["max_subscriptions"], let v = int(n, "max_subscriptions", min: 1) { l.maxSubscriptionsPerClient = v }
        if let n = m["publish_rate"], let v = number(n, "publish_rate") { l.publishRatePerSecond = v }
        if let n = m["publish_burst"], let v = number(n, "publish_burst") { l.publishBurst = v }
        if let n = m["accept_rate"], let v = number(n, "accept_rate") { l.acceptRatePerSecond = v }
        if let n = m["accept_burst"], let v = number(n, "accept_burst") { l.acceptBurst = v }
        if let n = m["connect_timeout"], let v = duration(n, "connect_timeout") { l.connectTimeout = v }
        if let n = m["max_presence_list"], let v = int(n, "max_presence_list", min: 1) { l.maxPresenceList = v }
        if let n = m["idempotency_window"], let v = duration(n, "idempotency_window") { l.idempotencyWindow = v }
        if let n = m["idempotency_capacity"], let v = int(n, "idempotency_capacity", min: 1) { l.idempotencyCapacity = v }
        if let n = m["max_poll_timeout"], let v = duration(n, "max_poll_timeout") { l.maxPollTimeout = v }
        if let n = m["drain_window"], let v = duration(n, "drain_window") { l.drainWindow = v }
        if let n = m["stream_linger"], let v = duration(n, "stream_linger") { l.streamLinger = v }
        if l.maxQueueBytes < l.maxFrameBytes * 2 {
            fail(m["max_queue_bytes"] ?? node, "max_queue_bytes (\(l.maxQueueBytes)) must be at least twice max_frame_bytes (\(l.maxFrameBytes))")
        }
        return l
    }

    mutating func secret(_ node: Node, _ what: String) -> SecretSource? {
        if case .scalar = node {
            fail(node, "\(what) must not be written inline; use {env: VARIABLE} or {file: path}")
            return nil
        }
        guard let m = mapping(node, what: what, known: ["env", "file"]) else { return nil }
        if m.count != 1 {
            fail(node, "\(what) needs exactly one of 'env' or 'file'")
            return nil
        }
        if let e = m["env"], let name = string(e, "env") { return .environment(name) }
        if let f = m["file"], let path = string(f, "file") { return .file(path) }
        return nil
    }

    mutating func linkTLS(_ node: Node) -> LinkTLSConfig? {
        guard let m = mapping(node, what: "link_tls", known: ["ca", "cert", "key"]) else { return nil }
        guard let ca = m["ca"].flatMap({ string($0, "link_tls.ca") }),
              let cert = m["cert"].flatMap({ string($0, "link_tls.cert") }),
              let key = m["key"].flatMap({ string($0, "link_tls.key") }) else {
            fail(node, "link_tls needs 'ca', 'cert' and 'key' (paths; {region} is replaced by the region name)")
            return nil
        }
        return LinkTLSConfig(caFile: ca, certificateFile: cert, keyFile: key)
    }

    mutating func tuning(_ node: Node) -> MeshTuning {
        var t = MeshTuning()
        let known = ["max_batch_bytes", "max_batch_delay", "send_window_batches", "max_link_queue_bytes",
                     "interest_linger", "home_timeout", "reconnect_min", "reconnect_max", "presence_timeout", "failover_after",
                     "heartbeat_interval", "link_read_timeout", "presence_digest_interval"]
        guard let m = mapping(node, what: "mesh_tuning", known: known) else { return t }
        if let n = m["max_batch_bytes"], let v = int(n, "max_batch_bytes", min: 512) { t.maxBatchBytes = v }
        if let n = m["max_batch_delay"], let v = duration(n, "max_batch_delay") { t.maxBatchDelay = v }
        if let n = m["send_window_batches"], let v = int(n, "send_window_batches", min: 1) { t.sendWindowBatches = v }
        if let n = m["max_link_queue_bytes"], let v = int(n, "max_link_queue_bytes", min: 65536) { t.maxLinkQueueBytes = v }
        if let n = m["interest_linger"], let v = duration(n, "interest_linger") { t.interestLinger = v }
        if let n = m["home_timeout"], let v = duration(n, "home_timeout") { t.homeTimeout = v }
        if let n = m["reconnect_min"], let v = duration(n, "reconnect_min") { t.reconnectMin = v }
        if let n = m["reconnect_max"], let v = duration(n, "reconnect_max") { t.reconnectMax = v }
        if let n = m["presence_timeout"], let v = duration(n, "presence_timeout") { t.presenceTimeout = v }
        if let n = m["failover_after"], let v = duration(n, "failover_after") { t.failoverAfter = v }
        if let n = m["presence_digest_interval"], let v = duration(n, "presence_digest_interval") {
            if v < .milliseconds(100) {
                fail(n, "presence_digest_interval \(v.ternMilliseconds) ms is too short; use 100ms or more (default 10s)")
            } else {
                t.presenceDigestInterval = v
            }
        }
        if let n = m["heartbeat_interval"], let v = duration(n, "heartbeat_interval") {
            if v < .milliseconds(10) {
                fail(n, "heartbeat_interval \(v.ternMilliseconds) ms is too short; use 10ms or more (default 1s)")
            } else {
                t.heartbeatInterval = v
            }
        }
        if let n = m["link_read_timeout"], let v = duration(n, "link_read_timeout") {
            if v < t.heartbeatInterval * 2 {
                fail(n, "link_read_timeout must be at least twice heartbeat_interval (\(t.heartbeatInterval.ternMilliseconds) ms), or an idle link would be declared down; three intervals is usual")
            } else {
                t.linkReadTimeout = v
            }
        } else {
            t.linkReadTimeout = t.heartbeatInterval * 3
        }
        return t
    }

    mutating func auth(_ node: Node) -> AuthConfig {
        var a = AuthConfig()
        guard let m = mapping(node, what: "auth", known: ["jwt", "api_key"]) else { return a }
        if let j = m["jwt"], let jm = mapping(j, what: "auth.jwt", known: ["hs256_secret", "rs256_public_key", "es256_public_key"]) {
            a.hs256Secret = jm["hs256_secret"].flatMap { secret($0, "hs256_secret") }
            a.rs256PublicKey = jm["rs256_public_key"].flatMap { secret($0, "rs256_public_key") }
            a.es256PublicKey = jm["es256_public_key"].flatMap { secret($0, "es256_public_key") }
        }
        a.apiKey = m["api_key"].flatMap { secret($0, "api_key") }
        return a
    }
}
