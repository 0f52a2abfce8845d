import Foundation
import Testing
import TernClient
import TernCore
import TernTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Three `tern relay` processes on loopback, one per region, that a test can kill with SIGKILL
/// and start again.
final class RelayProcesses: @unchecked Sendable {
    let regions = ["a", "b", "c"]
    let clientPorts: [String: Int]
    let topologyFile: URL
    private var processes: [String: Process] = [:]
    private let binary = repoRootURL.appendingPathComponent(".build/debug/tern")

    init() throws {
        clientPorts = Dictionary(uniqueKeysWithValues: regions.map { ($0, freePort()) })
        let linkPorts = Dictionary(uniqueKeysWithValues: regions.map { ($0, freePort()) })
        var fixture = MeshFixture()
        fixture.clientPorts = clientPorts
        let yaml = fixture.yaml(linkPorts: linkPorts, clientPorts: clientPorts)
        topologyFile = FileManager.default.temporaryDirectory.appendingPathComponent("tern-kill-\(UUID()).yaml")
        try yaml.write(to: topologyFile, atomically: true, encoding: .utf8)
    }

    func start(_ region: String) throws {
        let p = Process()
        p.executableURL = binary
        p.arguments = ["relay", "--topology", topologyFile.path, "--region", region]
        var env = ProcessInfo.processInfo.environment
        env["TEST_JWT_SECRET"] = jwtSecret
        env["TEST_API_KEY"] = apiKey
        p.environment = env
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        processes[region] = p
    }

    /// Kills a relay at once, as a crash would: no drain, nothing flushed.
    func kill(_ region: String) {
        guard let p = processes.removeValue(forKey: region) else { return }
        Glibc.kill(p.processIdentifier, SIGKILL)
        var status: Int32 = 0
        waitpid(p.processIdentifier, &status, 0)
    }

    func stopAll() {
        for (_, p) in processes {
            Glibc.kill(p.processIdentifier, SIGKILL)
            var status: Int32 = 0
            waitpid(p.processIdentifier, &status, 0)
        }
        processes = [:]
        try? FileManager.default.removeItem(at: topologyFile)
    }

    func fixture(_ region: String) -> RelayFixture { RelayFixture(port: clientPorts[region]!) }

    func url(_ region: String) -> String { "ws://127.0.0.1:\(clientPorts[region]!)/ws" }

    /// Waits until each listed relay answers /status with all its links up.
    func waitForLinks(_ regions: [String], timeout: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            var ready = true
            for r in regions {
                let status = try await fixture(r).curl(["http://127.0.0.1:\(clientPorts[r]!)/status"], timeout: 2)
                let up = status.body.components(separatedBy: "\"up\"").count - 1
                if status.status != 200 || up < 2 { ready = false }
            }
            if ready { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("relays \(regions) did not bring their links up")
        throw CancellationError()
    }
}

@Suite("A home relay killed with SIGKILL", .serialized)
struct KillHomeTests {
    @Test("every acknowledged publish reaches every subscriber in the surviving regions exactly once, in one order per epoch")
    func sigkillHome() async throws {
        let mesh = try RelayProcesses()
        defer { mesh.stopAll() }
        for r in mesh.regions { try mesh.start(r) }
        try await mesh.waitForLinks(mesh.regions)
        let topic = (0..<10_000).map { "news:k\($0)" }.first { Rendezvous.ranking(topic: $0, regions: mesh.regions)[0] == "a" }!
        var subs: [ClientHarness] = []
        for r in ["b", "c"] {
            let c = ClientHarness(url: mesh.url(r), token: nil)
            try await c.waitConnected()
            try await c.client.subscribe(topic)
            subs.append(c)
        }
        var acknowledged: [String] = []
        for i in 1...45 {
            if i == 16 { mesh.kill("a") }
            if i == 31 { try mesh.start("a") }
            let r = try await mesh.fixture(["b", "c"][i % 2]).apiPublish(topic, "\(i)", id: "k\(i)")
            if r.status == 200 { acknowledged.append("k\(i)") }
            try await Task.sleep(for: .milliseconds(20))
        }
        try await mesh.waitForLinks(mesh.regions)
        #expect(acknowledged.count >= 40, "only \(acknowledged.count) of 45 publishes were acknowledged")
        for s in subs { try await s.waitPublications(acknowledged.count, timeout: .seconds(20)) }
        try await Task.sleep(for: .milliseconds(300))
        for (s, region) in zip(subs, ["b", "c"]) {
            let got = s.publications
            let ids = got.map(\.id)
            // The kill mattered: some publications were sequenced by the successor in its own epoch.
            #expect(got.contains { !$0.position.epoch.hasPrefix("a.") }, "\(region) saw no failover epoch")
            for id in acknowledged { #expect(ids.filter { $0 == id }.count == 1, "\(region): \(id) arrived \(ids.filter { $0 == id }.count) times") }
            var last: [String: UInt64] = [:]
            for p in got {
                if let before = last[p.position.epoch] { #expect(p.position.offset > before, "\(region): \(p.position) after offset \(before)") }
                last[p.position.epoch] = p.position.offset
            }
            let resyncs = s.events.compactMap { e -> String? in if case .resyncRequired(let t, let reason) = e { "\(t): \(reason)" } else { nil } }
            #expect(resyncs.isEmpty, "\(region) was told to resync: \(resyncs); publications \(got.map { "\($0.id)@\($0.position)" })")
        }
    }
}
