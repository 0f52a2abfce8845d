import Foundation
import TernTestSupport
import Testing
import TernTopology

/// The repository root, found from this file's path.
let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

@Suite("Topology files")
struct TopologyTests {
    @Test("every file shipped in Topology/ passes the check")
    func shippedFilesPass() throws {
        let dir = repoRoot.appendingPathComponent("Topology")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(files.count >= 2)
        for file in files {
            let t = try TopologyLoader.load(path: dir.appendingPathComponent(file).path)
            #expect(!t.regions.isEmpty, "\(file)")
        }
        let local = try TopologyLoader.load(path: dir.appendingPathComponent("local.yaml").path)
        #expect(local.regions.count == 3)
        #expect(local.regions.allSatisfy { $0.client.isLoopback })
        let global = try TopologyLoader.load(path: dir.appendingPathComponent("global.yaml").path)
        #expect(global.regions.count >= 5)
    }

    func diagnostics(_ yaml: String) -> [TopologyDiagnostic] {
        do {
            _ = try TopologyLoader.parse(yaml, file: "broken.yaml")
            return []
        } catch {
            return error.diagnostics
        }
    }

    static let valid = """
        mesh: t
        regions:
          - name: a
            client: 127.0.0.1:7101
            link: 127.0.0.1:7201
          - name: b
            client: 127.0.0.1:7102
            link: 127.0.0.1:7202
        links:
          - between: [a, b]
            latency_ms: 10
        namespaces:
          room: {presence: true}
        link_tls: {ca: certs/ca.pem, cert: "certs/{region}.pem", key: "certs/{region}-key.pem"}
        """

    @Test("a valid file parses with its options")
    func valid() throws {
        let t = try TopologyLoader.parse(Self.valid, file: "ok.yaml")
        #expect(t.links.count == 1)
        #expect(t.namespaces["room"]?.presence == true)
        #expect(t.hash.count == 16)
    }

    @Test("an unknown region in a link names the file, the line and the known regions")
    func unknownRegion() {
        let d = diagnostics(Self.valid.replacingOccurrences(of: "[a, b]", with: "[a, c]"))
        #expect(d.count == 1)
        #expect(d.first?.line == 10)
        #expect(d.first?.description.hasPrefix("broken.yaml:10:") == true)
        #expect(d.first?.message.contains("unknown region 'c'") == true)
        #expect(d.first?.message.contains("a, b") == true)
    }

    @Test("a duplicate port is reported on the second use")
    func duplicatePort() {
        let d = diagnostics(Self.valid.replacingOccurrences(of: "127.0.0.1:7202", with: "127.0.0.1:7101"))
        #expect(d.map(\.line) == [8])
        #expect(d.first?.message.contains("already used by region a") == true)
    }

    @Test("a bad address says how to write one")
    func badAddress() {
        let d = diagnostics(Self.valid.replacingOccurrences(of: "127.0.0.1:7102", with: "300.0.0.1:7102"))
        #expect(d.map(\.line) == [7])
        #expect(d.first?.message.contains("not a valid IPv4 address") == true)
        let noPort = diagnostics(Self.valid.replacingOccurrences(of: "127.0.0.1:7102", with: "localhost"))
        #expect(noPort.first?.message.contains("has no port") == true)
    }

    @Test("a disconnected graph names the unreachable regions")
    func disconnected() {
        let yaml = Self.valid.replacingOccurrences(of: "links:\n  - between: [a, b]\n    latency_ms: 10\n", with: "links: []\n")
        let d = diagnostics(yaml)
        #expect(d.count == 1)
        #expect(d.first?.message.contains("disconnected") == true)
        #expect(d.first?.message.contains("b cannot be reached") == true)
    }

    @Test("an unknown option lists the known ones")
    func unknownOption() {
        let d = diagnostics(Self.valid.replacingOccurrences(of: "{presence: true}", with: "{presence: true, histroy_size: 5}"))
        #expect(d.map(\.line) == [13])
        #expect(d.first?.message.contains("unknown option 'histroy_size'") == true)
        #expect(d.first?.message.contains("history_size") == true)
    }

    @Test("TLS links need link_tls, and pinned homes must be regions")
    func tlsAndHomes() {
        let noTLS = Self.valid.replacingOccurrences(of: "link_tls: {ca: certs/ca.pem, cert: \"certs/{region}.pem\", key: \"certs/{region}-key.pem\"}", with: "")
        #expect(diagnostics(noTLS).first?.message.contains("add 'link_tls") == true)
        let pinned = Self.valid.replacingOccurrences(of: "{presence: true}", with: "{presence: true, home: mars}")
        #expect(diagnostics(pinned).first?.message.contains("pins its home to 'mars'") == true)
        let t = try? TopologyLoader.parse(Self.valid, file: "ok.yaml")
        #expect(t?.linkTLS?.resolved(for: "a").certificateFile == "certs/a.pem")
    }

    @Test("link liveness limits parse, and a read timeout shorter than two heartbeats names the line and the fix")
    func linkLiveness() throws {
        let ok = try TopologyLoader.parse(Self.valid + "\nmesh_tuning:\n  heartbeat_interval: 500ms\n", file: "ok.yaml")
        #expect(ok.tuning.heartbeatInterval == .milliseconds(500))
        #expect(ok.tuning.linkReadTimeout == .milliseconds(1500))
        #expect(ok.meshConfig.linkReadTimeout == .milliseconds(1500))
        let broken = Self.valid + "\nmesh_tuning:\n  heartbeat_interval: 2s\n  link_read_timeout: 3s\n"
        let line = broken.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.contains("link_read_timeout") }! + 1
        let d = diagnostics(broken)
        #expect(d.map(\.line) == [line])
        #expect(d.first?.message.contains("at least twice heartbeat_interval") == true)
    }

    @Test("a namespace chooses its acknowledgment mode, and a wrong one names the choices")
    func ackMode() throws {
        let leader = try TopologyLoader.parse(Self.valid.replacingOccurrences(of: "{presence: true}", with: "{presence: true, ack: leader}"), file: "ok.yaml")
        #expect(leader.namespaces["room"]?.ack == .leader)
        let standard = try TopologyLoader.parse(Self.valid, file: "ok.yaml")
        #expect(standard.namespaces["room"]?.ack == .replicated)
        let d = diagnostics(Self.valid.replacingOccurrences(of: "{presence: true}", with: "{presence: true, ack: fast}"))
        #expect(d.first?.message.contains("'replicated'") == true && d.first?.message.contains("'leader'") == true, "\(d)")
    }

    @Test("inline secrets are refused")
    func inlineSecret() {
        let d = diagnostics(Self.valid + "\nauth:\n  api_key: hunter2\n")
        #expect(d.first?.message.contains("must not be written inline") == true)
    }

    @Test("plaintext links are only for loopback")
    func plaintextNeedsLoopback() {
        let yaml = Self.valid
            .replacingOccurrences(of: "127.0.0.1:7202", with: "10.0.0.2:7202")
            .replacingOccurrences(of: "latency_ms: 10", with: "latency_ms: 10\n    plaintext: true")
        #expect(diagnostics(yaml).first?.message.contains("loopback development only") == true)
    }

    @Test("YAML syntax errors carry the line")
    func syntax() {
        let d = diagnostics("mesh: t\nregions:\n  - name: [unclosed\n")
        #expect(d.count == 1)
        #expect(d.first?.message.hasPrefix("YAML syntax") == true)
        #expect((d.first?.line ?? 0) >= 3)
    }

    @Test("durations accept ms, s, m and h")
    func durations() {
        #expect(parseDuration("250ms") == .milliseconds(250))
        #expect(parseDuration("30s") == .seconds(30))
        #expect(parseDuration("5m") == .seconds(300))
        #expect(parseDuration("1h") == .seconds(3600))
        #expect(parseDuration("soon") == nil)
    }

    @Test("the check command fails with file and line on a broken file")
    func checkCommand() throws {
        guard let binary = builtTern(in: repoRoot) else {
            Issue.record("build the tern binary first (swift build)")
            return
        }
        let broken = FileManager.default.temporaryDirectory.appendingPathComponent("tern-broken-\(UUID()).yaml")
        try Self.valid.replacingOccurrences(of: "[a, b]", with: "[a, zz]").write(to: broken, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: broken) }
        let (status, output) = try run(binary.path, ["topology", "check", broken.path])
        #expect(status != 0)
        #expect(output.contains("\(broken.path):10:"))
        let files = try FileManager.default.contentsOfDirectory(atPath: repoRoot.appendingPathComponent("Topology").path)
            .filter { $0.hasSuffix(".yaml") }.map { repoRoot.appendingPathComponent("Topology/\($0)").path }
        let (okStatus, okOutput) = try run(binary.path, ["topology", "check"] + files)
        #expect(okStatus == 0, "\(okOutput)")
    }

    func run(_ path: String, _ args: [String]) throws -> (Int32, String) {
        try runToCompletion(path, args)
    }
}

