import TernCore

/// A network address written `host:port`.
public struct HostPort: Hashable, Sendable, CustomStringConvertible {
    /// An IPv4 address, a hostname, or an IPv6 address without brackets.
    public var host: String
    /// The TCP port.
    public var port: Int

    /// An address with `host` and `port`.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Whether the address is on the loopback interface.
    public var isLoopback: Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Why an address could not be read.
    public struct Problem: Error, Sendable {
        /// What is wrong and how to write it instead.
        public var reason: String
    }

    /// Parses `host:port` or `[v6]:port`, or says what is wrong.
    public static func parse(_ text: String) -> Result<HostPort, Problem> {
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                return .failure(Problem(reason: "'\(text)' is not host:port; write an IPv6 address as [::1]:7101"))
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                return .failure(Problem(reason: "'\(text)' has no port; write it as host:port, e.g. 127.0.0.1:7101"))
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { return .failure(Problem(reason: "'\(text)' looks like IPv6; write it as [addr]:port")) }
        }
        guard let port = Int(portText), (1...65535).contains(port) else {
            return .failure(Problem(reason: "'\(portText)' in '\(text)' is not a port between 1 and 65535"))
        }
        guard !host.isEmpty, host.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == ":" }) else {
            return .failure(Problem(reason: "'\(host)' in '\(text)' is not an IP address or hostname"))
        }
        if host.allSatisfy({ $0.isNumber || $0 == "." }) {
            let octets = host.split(separator: ".", omittingEmptySubsequences: false)
            guard octets.count == 4, octets.allSatisfy({ Int($0).map { (0...255).contains($0) } ?? false }) else {
                return .failure(Problem(reason: "'\(host)' in '\(text)' is not a valid IPv4 address"))
            }
        }
        return .success(HostPort(host: String(host), port: port))
    }
}

/// Where a secret comes from: an environment variable or a file, never the config itself.
public enum SecretSource: Hashable, Sendable, CustomStringConvertible {
    case environment(String)
    case file(String)

    public var description: String {
        switch self {
        case .environment(let name): "environment variable \(name)"
        case .file(let path): "file \(path)"
        }
    }
}

/// How clients and backends authenticate.
public struct AuthConfig: Hashable, Sendable {
    /// The shared secret for HS256 tokens.
    public var hs256Secret: SecretSource?
    /// A PEM public key for RS256 tokens.
    public var rs256PublicKey: SecretSource?
    /// A PEM public key for ES256 tokens.
    public var es256PublicKey: SecretSource?
    /// The key backends present to `POST /api/publish`.
    public var apiKey: SecretSource?

    /// No keys configured.
    public init() {}
}

/// Files for mutual TLS on inter-region links. `{region}` in a path is
/// replaced by the relay's region, so one topology serves every relay.
public struct LinkTLSConfig: Hashable, Sendable {
    /// The CA certificate that signs every region's certificate (PEM).
    public var caFile: String
    /// This region's certificate (PEM); its subject alternative name is the region name.
    public var certificateFile: String
    /// This region's private key (PEM).
    public var keyFile: String

    /// The paths for `region`.
    public func resolved(for region: String) -> LinkTLSConfig {
        LinkTLSConfig(caFile: caFile.replacingOccurrences(of: "{region}", with: region),
                      certificateFile: certificateFile.replacingOccurrences(of: "{region}", with: region),
                      keyFile: keyFile.replacingOccurrences(of: "{region}", with: region))
    }
}

/// Tuning for inter-region links and the mesh protocol.
public struct MeshTuning: Hashable, Sendable {
    public var maxBatchBytes = 64 * 1024
    public var maxBatchDelay: Duration = .milliseconds(5)
    public var sendWindowBatches = 8
    public var maxLinkQueueBytes = 8 * 1024 * 1024
    public var interestLinger: Duration = .seconds(5)
    public var homeTimeout: Duration = .seconds(10)
    public var reconnectMin: Duration = .milliseconds(100)
    public var reconnectMax: Duration = .seconds(5)
    public var presenceTimeout: Duration = .seconds(30)
    public var presenceDigestInterval: Duration = .seconds(10)
    public var failoverAfter: Duration = .seconds(5)
    public var heartbeatInterval: Duration = .seconds(1)
    public var linkReadTimeout: Duration = .seconds(3)
    public init() {}
}

/// One region: a place with exactly one relay.
public struct Region: Hashable, Sendable {
    /// The region's name, e.g. `eu-west`.
    public var name: String
    /// Where clients connect (HTTP: WebSocket, SSE, long-poll, publish API, metrics, health).
    public var client: HostPort
    /// Where other regions' links connect.
    public var link: HostPort
    /// An optional parent in a hierarchical fan-out tree.
    public var parent: String?
    /// The line the region starts on, for later diagnostics.
    public var line: Int
}

/// A configured connection between two regions.
public struct Link: Hashable, Sendable {
    /// The two regions, in the order written.
    public var between: (String, String)
    /// Expected one-way latency.
    public var latency: Duration
    /// Optional bandwidth, in megabits per second.
    public var bandwidthMbps: Double?
    /// Whether the link may run without TLS (loopback development only).
    public var plaintext: Bool
    /// The line the link starts on.
    public var line: Int

    public static func == (a: Link, b: Link) -> Bool {
        a.between == b.between && a.latency == b.latency && a.bandwidthMbps == b.bandwidthMbps && a.plaintext == b.plaintext
    }

    public func hash(into h: inout Hasher) {
        h.combine(between.0)
        h.combine(between.1)
        h.combine(latency)
    }

    /// Whether the link joins `a` and `b`, in either order.
    public func joins(_ a: String, _ b: String) -> Bool {
        (between.0 == a && between.1 == b) || (between.0 == b && between.1 == a)
    }
}

/// A whole mesh: regions, links, namespaces, limits and auth, read from one file.
public struct Topology: Sendable {
    /// The file it was read from.
    public var file: String
    /// The mesh's name.
    public var mesh: String
    /// Every region, in file order.
    public var regions: [Region]
    /// Every link, in file order.
    public var links: [Link]
    /// Options by namespace name.
    public var namespaces: [String: NamespaceOptions]
    /// Limits applied by every relay.
    public var limits: RelayLimits
    /// Authentication settings.
    public var auth: AuthConfig
    /// Link TLS files; required unless every link is plaintext.
    public var linkTLS: LinkTLSConfig?
    /// Link batching and mesh timing.
    public var tuning = MeshTuning()

    /// The region named `name`.
    public func region(named name: String) -> Region? { regions.first { $0.name == name } }

    /// The core config for one region's relay (with its mesh when the topology has links).
    public func coreConfig(for region: String) -> RelayCoreConfig {
        RelayCoreConfig(region: region, namespaces: namespaces, limits: limits, mesh: regions.count > 1 ? meshConfig : nil)
    }

    /// The graph and tuning every relay of this topology shares.
    public var meshConfig: MeshConfig {
        var mesh = MeshConfig(
            graph: MeshGraph(regions: regions.map(\.name), links: links.map { ($0.between.0, $0.between.1, $0.latency) }),
            pinnedHomes: namespaces.compactMapValues(\.home))
        mesh.maxBatchBytes = tuning.maxBatchBytes
        mesh.maxBatchDelay = tuning.maxBatchDelay
        mesh.sendWindowBatches = tuning.sendWindowBatches
        mesh.maxLinkQueueBytes = tuning.maxLinkQueueBytes
        mesh.interestLinger = tuning.interestLinger
        mesh.homeTimeout = tuning.homeTimeout
        mesh.presenceTimeout = tuning.presenceTimeout
        mesh.presenceDigestInterval = tuning.presenceDigestInterval
        mesh.failoverAfter = tuning.failoverAfter
        mesh.heartbeatInterval = tuning.heartbeatInterval
        mesh.linkReadTimeout = tuning.linkReadTimeout
        return mesh
    }

    /// The links `region` takes part in, with the neighbour's name.
    public func links(of region: String) -> [(peer: Region, link: Link)] {
        links.compactMap { l in
            if l.between.0 == region, let r = self.region(named: l.between.1) { return (r, l) }
            if l.between.1 == region, let r = self.region(named: l.between.0) { return (r, l) }
            return nil
        }
    }

    /// A stable 64-bit FNV-1a hash of everything two relays must agree on (regions and links).
    public var hash: String {
        var text = "mesh=\(mesh)\n"
        for r in regions.sorted(by: { $0.name < $1.name }) {
            text += "region=\(r.name),\(r.client),\(r.link),\(r.parent ?? "")\n"
        }
        for l in links.map({ [$0.between.0, $0.between.1].sorted() + ["\($0.latency.ternMilliseconds)", "\($0.plaintext)"] }).sorted(by: { $0.joined() < $1.joined() }) {
            text += "link=\(l.joined(separator: ","))\n"
        }
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in text.utf8 {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        let hex = String(h, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}
