import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing
import TernRelay
import TernTopology
#if canImport(Glibc)
import Glibc
#endif

/// Ports `freePort` has handed out in this test process; none is handed out twice.
private let handedOutPorts = Mutex<Set<Int>>([])

/// A free loopback port below the kernel's ephemeral range, so relays that bind port 0 in
/// other tests never take it between this check and the relay's own bind. A port is handed out
/// once per test process: the check closes its socket at once, so without the record two calls
/// (two regions of one mesh, or two meshes of tests running side by side) could both get it.
func freePort() -> Int {
    for _ in 0..<1000 {
        let port = Int.random(in: 20_000..<30_000)
        guard handedOutPorts.withLock({ $0.insert(port).inserted }) else { continue }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        close(fd)
        if rc == 0 { return port }
    }
    preconditionFailure("no free loopback port left in 20000..<30000 for this test process")
}

/// Log lines captured from relays, for asserting on errors both sides log.
final class LogCapture: Sendable {
    let lines = Mutex<[String]>([])

    func handler(label: String) -> any LogHandler { CapturingLogHandler(capture: self) }

    func contains(_ text: String) -> Bool { lines.withLock { $0.contains { $0.contains(text) } } }
}

struct CapturingLogHandler: LogHandler {
    let capture: LogCapture
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { _, new in new }
        let text = "\(event.level) \(event.message) \(all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))"
        capture.lines.withLock { $0.append(text) }
    }
}

/// Holds the first error of a test body run in a child task.
final class ErrorBox: Sendable {
    let value = Mutex<(any Error)?>(nil)
}

/// The relays of a running mesh; one can be stopped and started again.
final class MeshRelays: @unchecked Sendable {
    private let lock = Mutex<(relays: [String: (Relay, ServiceGroup)], generation: [String: Int], stopped: Set<String>)>(([:], [:], []))
    fileprivate var restart: AsyncStream<String>.Continuation?

    subscript(region: String) -> Relay? { lock.withLock { $0.relays[region]?.0 } }

    func set(_ region: String, _ relay: Relay, _ group: ServiceGroup) {
        lock.withLock {
            $0.relays[region] = (relay, group)
            $0.generation[region, default: 0] += 1
            $0.stopped.remove(region)
        }
    }

    func markStopped(_ region: String) { lock.withLock { _ = $0.stopped.insert(region) } }

    var groups: [ServiceGroup] { lock.withLock { $0.relays.values.map(\.1) } }

    /// Shuts one relay down gracefully and waits until it has stopped.
    func stop(_ region: String) async throws {
        guard let group = lock.withLock({ $0.relays[region]?.1 }) else { return }
        await group.triggerGracefulShutdown()
        let deadline = ContinuousClock.now + .seconds(15)
        while !lock.withLock({ $0.stopped.contains(region) }), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Starts a stopped region again, with fresh state, and waits until it listens.
    func start(_ region: String) async throws {
        let before = lock.withLock { $0.generation[region] ?? 0 }
        restart?.yield(region)
        let deadline = ContinuousClock.now + .seconds(15)
        while lock.withLock({ ($0.generation[region] ?? 0) == before }), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        _ = await self[region]!.waitUntilListening()
    }
}

/// Three regions on loopback: a–b 10 ms, b–c 10 ms, a–c 30 ms, so the shortest tree from a runs a→b→c.
struct MeshFixture {
    var clientPorts: [String: Int] = [:]
    let relays = MeshRelays()
    let regions = ["a", "b", "c"]
    let capture = LogCapture()
    /// The proxy in front of one region's link listener, when the mesh was started with one.
    var proxy: BlackholeProxy?

    func yaml(linkPorts: [String: Int], clientPorts: [String: Int], tls: String? = nil, latencyAC: Int = 30, tuning: String = "") -> String {
        let plaintext = tls == nil ? "\n    plaintext: true" : ""
        return """
            mesh: test-mesh
            regions:
            \(regions.map { "  - name: \($0)\n    client: 127.0.0.1:\(clientPorts[$0]!)\n    link: 127.0.0.1:\(linkPorts[$0]!)" }.joined(separator: "\n"))
            links:
              - between: [a, b]
                latency_ms: 10\(plaintext)
              - between: [b, c]
                latency_ms: 10\(plaintext)
              - between: [a, c]
                latency_ms: \(latencyAC)\(plaintext)
            namespaces:
              room: {presence: true, join_leave: true, history_size: 500, history_ttl: 300s}
              news: {history_size: 500, history_ttl: 300s, anonymous: true, client_publish: false}
            limits:
              publish_rate: 100000
              publish_burst: 100000
            mesh_tuning:
              interest_linger: 2s
              failover_after: 1s
              home_timeout: 20s
              reconnect_min: 50ms
              reconnect_max: 300ms
            \(tuning)
            \(tls.map { "link_tls: \($0)" } ?? "")
            auth:
              jwt:
                hs256_secret: {env: TEST_JWT_SECRET}
              api_key: {env: TEST_API_KEY}
            """
    }
}

/// Starts three relays, runs `body`, then shuts them down.
/// `topologyFor` lets a test give one region a different topology (hash mismatch, wrong certificate).
/// `tuning` adds lines under `mesh_tuning:` (indented two spaces). `proxyLinksOf` puts a
/// `BlackholeProxy` in front of that region's link listener: the topology names the proxy,
/// so every link to the region passes through it (`MeshFixture.proxy`).
func withMesh(tls: String? = nil, tuning: String = "", proxyLinksOf proxied: String? = nil,
              topologyFor: (@Sendable (String, String) -> String)? = nil,
              _ body: @escaping @Sendable (MeshFixture) async throws -> Void) async throws {
    var fixture = MeshFixture()
    var linkPorts = Dictionary(uniqueKeysWithValues: fixture.regions.map { ($0, freePort()) })
    let realLinkPorts = linkPorts
    if let proxied {
        let proxy = try await BlackholeProxy(targetPort: linkPorts[proxied]!)
        fixture.proxy = proxy
        linkPorts[proxied] = proxy.port
    }
    fixture.clientPorts = Dictionary(uniqueKeysWithValues: fixture.regions.map { ($0, freePort()) })
    let base = fixture.yaml(linkPorts: linkPorts, clientPorts: fixture.clientPorts, tls: tls, tuning: tuning)
    let proxy = fixture.proxy
    defer { if let proxy { Task { await proxy.close() } } }
    let capture = fixture.capture
    let relays = fixture.relays
    let groupLogger: Logger = {
        var l = Logger(label: "mesh")
        l.logLevel = .warning
        return l
    }()
    let starts = Mutex(0)
    let makeRelay: @Sendable (String) async throws -> ServiceGroup = { r in
        let generation = starts.withLock { n in n += 1; return n }
        let text = topologyFor?(r, base) ?? base
        let topology = try TopologyLoader.parse(text, file: "mesh-\(r).yaml")
        var logger = Logger(label: "mesh.\(r)", factory: capture.handler)
        logger.logLevel = .info
        let relay = try await Relay(topology: topology, region: r,
                                    secrets: SecretResolver(environment: ["TEST_JWT_SECRET": jwtSecret, "TEST_API_KEY": apiKey]),
                                    linkListenOn: r == proxied ? HostPort(host: "127.0.0.1", port: realLinkPorts[r]!) : nil,
                                    seed: UInt64(r.unicodeScalars.first!.value) &+ UInt64(generation) << 32, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [.init(service: relay)], gracefulShutdownSignals: [], logger: groupLogger))
        relays.set(r, relay, group)
        return group
    }
    let (restarts, restartSink) = AsyncStream<String>.makeStream()
    relays.restart = restartSink
    let failure = ErrorBox()
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        for r in fixture.regions {
            let group = try await makeRelay(r)
            tasks.addTask { try await group.run(); relays.markStopped(r) }
        }
        for r in fixture.regions { _ = await relays[r]!.waitUntilListening() }
        let ready = fixture
        tasks.addTask {
            do {
                try await body(ready)
            } catch {
                failure.value.withLock { $0 = error }
            }
            restartSink.finish()
        }
        for await region in restarts {
            let group = try await makeRelay(region)
            tasks.addTask { try await group.run(); relays.markStopped(region) }
        }
        for group in relays.groups { await group.triggerGracefulShutdown() }
        try await tasks.waitForAll()
    }
    if let error = failure.value.withLock({ $0 }) { throw error }
}

extension MeshFixture {
    func url(_ region: String) -> String { "ws://127.0.0.1:\(clientPorts[region]!)/ws" }

    func fixture(_ region: String) -> RelayFixture { RelayFixture(port: clientPorts[region]!) }

    /// Waits until every relay has all its links up and reaches every region. (A link is up before
    /// the peers' route advertisements have crossed it; until they have, a region that started late
    /// may still count as unreachable, and one unreachable for `failover_after` has its topics failed over.)
    func waitForLinks(timeout: Duration = .seconds(15)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if regions.allSatisfy({ relays[$0]!.upLinks.count == 2 && relays[$0]!.unreachableRegions.isEmpty }) { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("links did not come up: \(regions.map { "\($0): up \(relays[$0]!.upLinks), unreachable \(relays[$0]!.unreachableRegions)" })")
        throw CancellationError()
    }

    /// A topic whose home is `region`.
    func topic(homedAt region: String, namespace: String = "news") -> String {
        (0..<10_000).map { "\(namespace):t\($0)" }.first { relays["a"]!.home(of: $0) == region }!
    }
}
