import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Testing
import TernClient
import TernCore
@testable import TernRelay
import TernTopology

/// The repository root, which holds `clients/js/tern.js` and `web/`.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// One HTTP exchange as curl saw it.
struct HTTPExchange {
    var status: Int
    var headers: [String: String]
    var body: String

    func header(_ name: String) -> String? { headers[name.lowercased()] }

    /// The body as a JSON object.
    var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:] }
}

extension RelayFixture {
    /// An HTTP request through curl, with the response headers.
    func http(_ args: [String], timeout: Double = 10) async throws -> HTTPExchange {
        let out = try await runProcess("/usr/bin/env", ["curl", "-s", "-N", "-i", "--max-time", String(timeout), "-w", "\n%{http_code}"] + args)
        var lines = out.split(separator: "\n", omittingEmptySubsequences: false)
        let status = Int(lines.popLast() ?? "") ?? 0
        let text = lines.joined(separator: "\n")
        guard let split = text.range(of: "\r\n\r\n") else { return HTTPExchange(status: status, headers: [:], body: text) }
        var headers: [String: String] = [:]
        for line in text[..<split.lowerBound].split(separator: "\r\n").dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return HTTPExchange(status: status, headers: headers, body: String(text[split.upperBound...]))
    }

    /// A POST to `/api/publish` with the given headers.
    func publish(_ topic: String, _ data: String, id: String = "", headers: [String]) async throws -> HTTPExchange {
        try await http(["-X", "POST", "\(httpURL)/api/publish", "-H", "Content-Type: application/json",
                        "-d", "{\"topic\":\"\(topic)\",\"id\":\"\(id)\",\"data\":\(data)}"] + headers.flatMap { ["-H", $0] })
    }

    /// A token for `user` with exactly these patterns.
    func token(_ user: String, subscribe: [String], publish: [String], expiresIn: TimeInterval = 3600) async throws -> String {
        try await Authenticator.signHS256(secret: jwtSecret, claims: TernClaims(
            user: user, expires: Date().addingTimeInterval(expiresIn),
            permissions: TernPermissionsClaim(subscribe: subscribe, publish: publish, presence: subscribe)))
    }
}

/// Starts one relay of a one-region test topology (its own limits replace the defaults) with `web` options, runs `body`, then shuts it down.
func withWebRelay(limits: String = "", web: RelayWebOptions = RelayWebOptions(root: repositoryRoot), capture: LogCapture? = nil,
                  _ body: (RelayFixture) async throws -> Void) async throws {
    var logger = capture.map { Logger(label: "test.web", factory: $0.handler) } ?? Logger(label: "test.web")
    logger.logLevel = capture == nil ? .error : .info
    var yaml = """
        mesh: test
        regions:
          - name: eu-west
            client: 127.0.0.1:7101
            link: 127.0.0.1:7201
        namespaces:
          room: {presence: true, join_leave: true, history_size: 100, history_ttl: 300s}
          news: {history_size: 100, history_ttl: 300s, anonymous: true, client_publish: false}
          big: {history_size: 10, anonymous: true, client_publish: true}
        """
    yaml += "\nlimits:\n" + (limits.isEmpty ? "  publish_rate: 100000\n  publish_burst: 100000" : limits) + "\n" + testAuth
    let relay = try await Relay(
        topology: try TopologyLoader.parse(yaml, file: "web-test.yaml"), region: "eu-west",
        secrets: SecretResolver(environment: ["TEST_JWT_SECRET": jwtSecret, "TEST_API_KEY": apiKey]),
        listenOn: HostPort(host: "127.0.0.1", port: 0), seed: 7, logger: logger, web: web)
    try await serve(relay, logger: logger, body)
}

/// The SSE events in a stream's text, as (event name, data) pairs.
func sseEvents(_ text: String) -> [(event: String, data: String)] {
    text.components(separatedBy: "\n\n").compactMap { block in
        var event = "message", data: String?
        for line in block.split(separator: "\n") {
            if line.hasPrefix("event: ") { event = String(line.dropFirst(7)) }
            if line.hasPrefix("data: ") { data = String(line.dropFirst(6)) }
        }
        return data.map { (event, $0) }
    }
}

@Suite("What a relay serves to browsers", .serialized)
struct WebTests {
    @Test("the JavaScript client is served with a content tag, a cache lifetime and 304 when unchanged")
    func clientFiles() async throws {
        try await withWebRelay { relay in
            let js = try await relay.http(["\(relay.httpURL)/client/tern.js"])
            #expect(js.status == 200)
            #expect(js.header("Content-Type") == "text/javascript; charset=utf-8")
            #expect(js.header("Cache-Control") == "public, max-age=300")
            let onDisk = try String(contentsOfFile: repositoryRoot + "/clients/js/tern.js", encoding: .utf8)
            #expect(js.body == onDisk)
            let etag = try #require(js.header("ETag"))
            #expect(etag.hasPrefix("\"") && etag.hasSuffix("\""))
            let again = try await relay.http(["-H", "If-None-Match: \(etag)", "\(relay.httpURL)/client/tern.js"])
            #expect(again.status == 304)
            #expect(again.body.isEmpty)
            let weak = try await relay.http(["-H", "If-None-Match: \"old\", W/\(etag)", "\(relay.httpURL)/client/tern.js"])
            #expect(weak.status == 304)
            let stale = try await relay.http(["-H", "If-None-Match: \"0000000000000000-1\"", "\(relay.httpURL)/client/tern.js"])
            #expect(stale.status == 200)
            let types = try await relay.http(["\(relay.httpURL)/client/tern.d.ts"])
            #expect(types.status == 200)
            #expect(types.body.contains("export interface Position"))
            #expect(types.header("ETag") != etag)
            let page = try await relay.http(["\(relay.httpURL)/"])
            #expect(page.status == 200)
            #expect(page.header("Content-Type") == "text/html; charset=utf-8")
            #expect(page.body.contains("/demo.js"))
            let status = try await relay.http(["\(relay.httpURL)/status.html"])
            #expect(status.status == 200)
            #expect(status.body.contains("/status.js"))
            for path in ["/client/../Package.swift", "/client/tern.jsx", "/../README.md", "/.gitignore"] {
                let r = try await relay.http(["--path-as-is", "\(relay.httpURL)\(path)"])
                #expect(r.status == 404, "\(path)")
            }
        }
    }

    @Test("a relay without a web root logs why and keeps serving the protocol")
    func missingWebRoot() async throws {
        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("tern-no-web-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        let capture = LogCapture()
        try await withWebRelay(web: RelayWebOptions(root: empty), capture: capture) { relay in
            #expect(capture.contains("browser files are incomplete"))
            #expect(capture.contains("clients/js/tern.js cannot be read"))
            let js = try await relay.http(["\(relay.httpURL)/client/tern.js"])
            #expect(js.status == 404)
            #expect(js.body.contains("cannot be read"))
            let page = try await relay.http(["\(relay.httpURL)/"])
            #expect(page.status == 404)
            #expect(page.body.contains("web"))
            #expect(try await relay.http(["\(relay.httpURL)/health"]).status == 200)
            #expect(try await relay.publish("news:x", "1", headers: ["X-API-Key: \(apiKey)"]).status == 200)
        }
    }

    @Test("the web root is found by walking up from a directory inside it, and not found outside one")
    func locateWebRoot() throws {
        #expect(WebRoot.locate(searchFrom: [repositoryRoot + "/Sources/TernRelay"]) == repositoryRoot)
        #expect(WebRoot.locate(searchFrom: [repositoryRoot]) == repositoryRoot)
        let outside = FileManager.default.temporaryDirectory.appendingPathComponent("tern-outside-\(UUID().uuidString)/a/b").path
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: (outside as NSString).deletingLastPathComponent) }
        #expect(WebRoot.locate(searchFrom: [outside]) == nil)
        #expect(WebRoot.locate(searchFrom: [outside, repositoryRoot + "/web"]) == repositoryRoot)
        #expect(WebRoot.locate(configured: "/srv/tern/") == "/srv/tern")
    }

    @Test("a client token publishes over HTTP as its user, within its token's patterns and the namespace's rules")
    func tokenPublish() async throws {
        try await withWebRelay { relay in
            let sub = ClientHarness(url: relay.wsURL, token: try await relay.token("watcher"))
            try await sub.waitConnected()
            try await sub.client.subscribe("room:team-a")
            let alice = try await relay.token("alice", subscribe: ["room:*"], publish: ["room:team-*"])
            let ok = try await relay.publish("room:team-a", "{\"text\":\"hi\"}", id: "m1", headers: ["Authorization: Bearer \(alice)"])
            #expect(ok.status == 200, "\(ok.body)")
            #expect(ok.json["duplicate"] as? Bool == false)
            #expect(ok.json["offset"] as? Int == 1)
            let retry = try await relay.publish("room:team-a", "{\"text\":\"hi\"}", id: "m1", headers: ["Authorization: Bearer \(alice)"])
            #expect(retry.json["duplicate"] as? Bool == true)
            try await sub.waitPublications(1)
            try await Task.sleep(for: .milliseconds(100))
            #expect(sub.publications.map(\.user) == ["alice"])
            #expect(sub.publications.map(\.id) == ["m1"])

            let outside = try await relay.publish("room:lobby", "1", headers: ["Authorization: Bearer \(alice)"])
            #expect(outside.status == 403)
            #expect(outside.body.contains("\"code\":103"))
            let backendOnly = try await relay.publish("news:x", "1", headers: ["Authorization: Bearer \(try await relay.token("bob", subscribe: ["*"], publish: ["*"]))"])
            #expect(backendOnly.status == 403)
            #expect(backendOnly.body.contains("\"code\":103"))
            #expect(backendOnly.body.contains("backends only"))
            let expired = try await relay.publish("room:team-a", "1", headers: ["Authorization: Bearer \(try await relay.token("late", subscribe: [], publish: ["room:*"], expiresIn: -60))"])
            #expect(expired.status == 401)
            #expect(expired.body.contains("\"code\":111"))
            let forged = try await relay.publish("room:team-a", "1", headers: ["Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bad"])
            #expect(forged.status == 401)
            #expect(forged.body.contains("\"code\":101"))
            let unknown = try await relay.publish("nope:x", "1", headers: ["Authorization: Bearer \(alice)"])
            #expect(unknown.status == 404)
            let badTopic = try await relay.publish("no namespace", "1", headers: ["Authorization: Bearer \(alice)"])
            #expect(badTopic.status == 400)
            #expect(badTopic.body.contains("\"code\":114"))

            // The API key keeps working in both headers, and a wrong X-API-Key is not read as a token.
            #expect(try await relay.publish("news:x", "1", headers: ["Authorization: Bearer \(apiKey)"]).status == 200)
            #expect(try await relay.publish("news:x", "2", headers: ["X-API-Key: \(apiKey)"]).status == 200)
            #expect(try await relay.publish("room:team-a", "3", headers: ["X-API-Key: \(alice)"]).status == 401)
            let none = try await relay.publish("news:x", "1", headers: [])
            #expect(none.status == 401)
            #expect(none.body.contains("missing credentials"))
            try await Task.sleep(for: .milliseconds(100))
            #expect(sub.publications.count == 1)
        }
    }

    @Test("HTTP publishes with a token are limited per user, however many requests carry them")
    func tokenPublishRateLimit() async throws {
        try await withWebRelay(limits: "  publish_rate: 0.5\n  publish_burst: 3") { relay in
            let carol = try await relay.token("carol", subscribe: [], publish: ["room:*"])
            var statuses: [Int] = []
            for i in 1...5 {
                statuses.append(try await relay.publish("room:r", "\(i)", headers: ["Authorization: Bearer \(carol)"]).status)
            }
            #expect(statuses == [200, 200, 200, 429, 429])
            let limited = try await relay.publish("room:r", "6", headers: ["Authorization: Bearer \(carol)"])
            #expect(limited.body.contains("\"code\":110"))
            #expect(limited.body.contains("carol"))
            // Another user has a bucket of their own; backends with the API key are not limited per user.
            let dave = try await relay.token("dave", subscribe: [], publish: ["room:*"])
            #expect(try await relay.publish("room:r", "7", headers: ["Authorization: Bearer \(dave)"]).status == 200)
            for i in 0..<5 { #expect(try await relay.publish("room:r", "\(i)", headers: ["X-API-Key: \(apiKey)"]).status == 200) }
        }
    }

    @Test("the per-user limiter refills, and forgets idle users when it is full")
    func userLimiter() {
        let limiter = UserPublishLimiter(rate: 2, burst: 2)
        let t0 = TernInstant.zero
        #expect(limiter.take("u", now: t0))
        #expect(limiter.take("u", now: t0))
        #expect(!limiter.take("u", now: t0))
        #expect(limiter.take("u", now: t0 + .milliseconds(500)))

        let idle = UserPublishLimiter(rate: 2, burst: 2)
        for i in 0..<UserPublishLimiter.maxUsers { _ = idle.take("user-\(i)", now: t0) }
        #expect(idle.trackedUsers == UserPublishLimiter.maxUsers)
        // Long after, every bucket is full again: a new user makes room by forgetting them all.
        #expect(idle.take("newcomer", now: t0 + .seconds(60)))
        #expect(idle.trackedUsers == 1)

        let busy = UserPublishLimiter(rate: 2, burst: 2)
        for i in 0..<UserPublishLimiter.maxUsers { _ = busy.take("user-\(i)", now: t0) }
        // Everyone was active just now: the least recently seen tenth is forgotten.
        #expect(busy.take("newcomer", now: t0))
        #expect(busy.trackedUsers == UserPublishLimiter.maxUsers - UserPublishLimiter.maxUsers / 10 + 1)
    }

    @Test("pages on other origins may read the browser-facing endpoints, and publish after a preflight")
    func crossOrigin() async throws {
        try await withWebRelay { relay in
            let origin = ["-H", "Origin: http://app.example"]
            for path in ["/status", "/poll?topic=news:c&timeout=0", "/client/tern.js"] {
                let r = try await relay.http(origin + ["\(relay.httpURL)\(path)"])
                #expect(r.header("Access-Control-Allow-Origin") == "*", "\(path)")
            }
            let sse = try await relay.http(origin + ["\(relay.httpURL)/sse?topic=news:c"], timeout: 1)
            #expect(sse.header("Access-Control-Allow-Origin") == "*")
            let refused = try await relay.http(origin + ["-X", "POST", "\(relay.httpURL)/api/publish", "-d", "{}"])
            #expect(refused.status == 401)
            #expect(refused.header("Access-Control-Allow-Origin") == "*")
            let preflight = try await relay.http(origin + ["-X", "OPTIONS", "-H", "Access-Control-Request-Method: POST",
                                                           "-H", "Access-Control-Request-Headers: authorization, content-type",
                                                           "\(relay.httpURL)/api/publish"])
            #expect(preflight.status == 204)
            #expect(preflight.header("Access-Control-Allow-Origin") == "*")
            #expect(preflight.header("Access-Control-Allow-Methods")?.contains("POST") == true)
            #expect(preflight.header("Access-Control-Allow-Headers") == "Authorization, Content-Type, X-API-Key")
            #expect(try await relay.http(origin + ["\(relay.httpURL)/health"]).header("Access-Control-Allow-Origin") == nil)
            #expect(try await relay.http(origin + ["\(relay.httpURL)/metrics"]).header("Access-Control-Allow-Origin") == nil)
        }
        try await withWebRelay(web: RelayWebOptions(root: repositoryRoot, allowOrigin: "http://a.example, http://b.example")) { relay in
            let listed = try await relay.http(["-H", "Origin: http://b.example", "\(relay.httpURL)/status"])
            #expect(listed.header("Access-Control-Allow-Origin") == "http://b.example")
            #expect(listed.header("Vary") == "Origin")
            let other = try await relay.http(["-H", "Origin: http://evil.example", "\(relay.httpURL)/status"])
            #expect(other.status == 200)
            #expect(other.header("Access-Control-Allow-Origin") == nil)
        }
        try await withWebRelay(web: RelayWebOptions(root: repositoryRoot, allowOrigin: nil)) { relay in
            let r = try await relay.http(["-H", "Origin: http://app.example", "\(relay.httpURL)/status"])
            #expect(r.header("Access-Control-Allow-Origin") == nil)
        }
    }

    @Test("a refused SSE token arrives as events an EventSource can read: an error, then a disconnect")
    func sseRefusal() async throws {
        try await withWebRelay { relay in
            let forged = try await relay.http(["\(relay.httpURL)/sse?topic=news:x&token=garbage"], timeout: 5)
            #expect(forged.status == 200)
            #expect(forged.header("Content-Type") == "text/event-stream")
            let events = sseEvents(forged.body)
            #expect(events.map(\.event) == ["error", "disconnect"])
            #expect(events.first?.data.hasPrefix("{\"error\":{\"code\":101,\"name\":\"unauthorized\",\"message\":") == true)
            #expect(events.last?.data == "{\"push\":\"disconnect\",\"code\":4001,\"reason\":\"unauthorized\",\"reconnect\":false}")

            let late = try await relay.token("late", expiresIn: -60)
            let expired = try await relay.http(["-H", "Authorization: Bearer \(late)", "\(relay.httpURL)/sse?topic=news:x"], timeout: 5)
            #expect(expired.status == 200)
            let e2 = sseEvents(expired.body)
            #expect(e2.map(\.event) == ["error", "disconnect"])
            #expect(e2.first?.data.contains("\"code\":111,\"name\":\"token_expired\"") == true)
            #expect(e2.last?.data == "{\"push\":\"disconnect\",\"code\":4002,\"reason\":\"token expired\",\"reconnect\":true}")
        }
    }

    @Test("an SSE subscribe error names its topic, and the other topics still subscribe")
    func sseErrorNamesTopic() async throws {
        try await withWebRelay { relay in
            let r = try await relay.http(["\(relay.httpURL)/sse?topic=news:ok&topic=room:secret&topic=nope:x"], timeout: 1)
            let events = sseEvents(r.body)
            let errors = events.filter { $0.event == "error" }.map(\.data)
            #expect(errors.count == 2)
            #expect(errors.contains { $0.hasPrefix("{\"topic\":\"room:secret\",\"error\":{\"code\":103,") })
            #expect(errors.contains { $0.hasPrefix("{\"topic\":\"nope:x\",\"error\":{\"code\":102,") })
            #expect(events.contains { $0.event == "subscribed" && $0.data.contains("\"topic\":\"news:ok\"") })
        }
        let plain = ByteBuffer(string: "event: pub\ndata: {\"ref\":1}\n\n")
        #expect(Relay.naming(["a:b"], in: plain) == plain)
        let outOfRange = ByteBuffer(string: "event: error\ndata: {\"ref\":9,\"error\":{}}\n\n")
        #expect(Relay.naming(["a:b"], in: outOfRange) == outOfRange)
    }

    @Test("development tokens are handed out only when enabled, for room topics only")
    func devTokens() async throws {
        try await withWebRelay(web: RelayWebOptions(root: repositoryRoot, devTokens: true, devTokenLifetime: .seconds(120))) { relay in
            let r = try await relay.http(["\(relay.httpURL)/dev/token?user=alice"])
            #expect(r.status == 200, "\(r.body)")
            #expect(r.header("Cache-Control") == "no-store")
            #expect(r.json["user"] as? String == "alice")
            #expect(r.json["expires_in"] as? Int == 120)
            let token = try #require(r.json["token"] as? String)
            let alice = ClientHarness(url: relay.wsURL, token: token)
            try await alice.waitConnected()
            try await alice.client.subscribe("room:lobby")
            let ack = try await alice.client.publish("room:lobby", data: "{\"text\":\"hi\"}")
            #expect(ack.position?.offset == 1)
            try await alice.waitPublications(1)
            #expect(alice.publications.first?.user == "alice")
            await #expect(throws: TernClientError.self) { try await alice.client.publish("big:x", data: "1") }
            let guest = try await relay.http(["\(relay.httpURL)/dev/token"])
            #expect((guest.json["user"] as? String)?.hasPrefix("guest-") == true)
            let bad = try await relay.http(["\(relay.httpURL)/dev/token?user=\(String(repeating: "x", count: 65))"])
            #expect(bad.status == 400)
            let odd = try await relay.http(["-G", "\(relay.httpURL)/dev/token", "--data-urlencode", "user=<script>"])
            #expect(odd.status == 400)
        }
        try await withWebRelay { relay in
            let r = try await relay.http(["\(relay.httpURL)/dev/token?user=alice"])
            #expect(r.status == 404)
            #expect(r.body.contains("only 'tern up'"))
        }
        #expect(Relay.isLoopback(try SocketAddress(ipAddress: "127.0.0.1", port: 1)))
        #expect(Relay.isLoopback(try SocketAddress(ipAddress: "::1", port: 1)))
        #expect(!Relay.isLoopback(try SocketAddress(ipAddress: "10.1.2.3", port: 1)))
        #expect(!Relay.isLoopback(nil))
    }

    @Test("hostile and malformed requests get errors and leave the relay serving")
    func hostileRequests() async throws {
        try await withWebRelay(web: RelayWebOptions(root: repositoryRoot, devTokens: true)) { relay in
            let token = try await relay.token("mallory", subscribe: ["*"], publish: ["*"])
            let big = String(repeating: "x", count: 70_000)
            let huge = try await relay.http(["-X", "POST", "\(relay.httpURL)/api/publish", "-H", "Authorization: Bearer \(token)",
                                             "-d", "{\"topic\":\"room:x\",\"data\":\"\(big)\"}"])
            #expect(huge.status == 413)
            let malformed = try await relay.publish("room:x", "{", headers: ["Authorization: Bearer \(token)"])
            #expect(malformed.status == 400)
            #expect(try await relay.http(["-X", "POST", "\(relay.httpURL)/api/publish", "-H", "Authorization: Bearer ", "-d", "{}"]).status == 401)
            for query in ["topic=", "topic=%00", "topic=room:\(String(repeating: "y", count: 300))", "topic=room:a&topic=room:b"] {
                let r = try await relay.http(["\(relay.httpURL)/status?\(query)"])
                #expect(r.status == 400 || r.status == 200, "\(query): \(r.status)")
            }
            #expect(try await relay.http(["-H", "If-None-Match: \(String(repeating: ",", count: 5000))", "\(relay.httpURL)/client/tern.js"]).status == 200)
            let undecodable = try await relay.http(["\(relay.httpURL)/dev/token?user=%FF%FE"]).status
            #expect(undecodable == 400 || undecodable == 200)
            #expect(try await relay.http(["\(relay.httpURL)/sse?topic=news:x&token=\(String(repeating: "a.", count: 2000))"], timeout: 3).status == 200)
            #expect(try await relay.http(["\(relay.httpURL)/health"]).status == 200)
        }
    }

    @Test("Prometheus samples are read back with their labels")
    func prometheusSamples() {
        let text = """
            # TYPE tern_link_raw_bytes_total counter
            tern_link_raw_bytes_total{region="eu-west",peer="us-east"} 1234
            tern_link_wire_bytes_total{peer="us-east",region="eu-west"} 617
            tern_link_received_batches_total{region="eu-west",peer="ap-south"} 9
            tern_link_raw_bytes_total{region="us-east",peer="eu-west"} 5
            tern_link_broken{region="eu-west",peer="x} 1
            """
        let parsed = LinkByteCounters.parse(text, region: "eu-west")
        #expect(parsed["us-east"]?.rawBytes == 1234)
        #expect(parsed["us-east"]?.wireBytes == 617)
        #expect(parsed["ap-south"]?.receivedBatches == 9)
        #expect(parsed.count == 2)
        let escaped = PrometheusSample("m{a=\"q\\\"uote\",b=\"x\"} 2.5")
        #expect(escaped?.labels == ["a": "q\"uote", "b": "x"])
        #expect(escaped?.value == 2.5)
    }
}

@Suite("The mesh status endpoint", .serialized)
struct MeshStatusTests {
    @Test("/status lists every region and link, counts each own link, and describes a topic; a stopped peer shows as down")
    func status() async throws {
        try await withMesh { mesh in
            try await mesh.waitForLinks()
            let topic = mesh.topic(homedAt: "b")
            for i in 1...12 { _ = try await mesh.fixture("a").apiPublish(topic, "{\"n\":\(i),\"text\":\"the same words again\"}", id: "s\(i)") }
            let a = mesh.fixture("a")
            let status = try await a.http(["\(a.httpURL)/status"])
            #expect(status.status == 200)
            let json = status.json
            #expect(json["region"] as? String == "a")
            #expect(json["mesh"] as? String == "test-mesh")
            let regions = try #require(json["regions"] as? [[String: Any]])
            #expect(regions.compactMap { $0["name"] as? String } == ["a", "b", "c"])
            #expect(regions.allSatisfy { $0["reachable"] as? Bool == true })
            #expect(regions.first?["self"] as? Bool == true)
            #expect(regions.compactMap { $0["url"] as? String } == ["a", "b", "c"].map { "http://127.0.0.1:\(mesh.clientPorts[$0]!)" })
            let links = try #require(json["links"] as? [[String: Any]])
            #expect(links.count == 3)
            let own = links.filter { $0["own"] as? Bool == true }
            #expect(Set(own.compactMap { $0["peer"] as? String }) == ["b", "c"])
            #expect(own.allSatisfy { $0["state"] as? String == "up" })
            let other = try #require(links.first { $0["own"] as? Bool == false })
            #expect(other["between"] as? [String] == ["b", "c"])
            #expect(other["state"] == nil)
            let toB = try #require(own.first { $0["peer"] as? String == "b" }?["sent"] as? [String: Any])
            // The publishes travel a→b to the home: each one is an entry on that link.
            #expect((toB["entries"] as? Int ?? 0) >= 12)
            #expect((toB["batches"] as? Int ?? 0) >= 1)
            #expect((toB["raw_bytes"] as? Int ?? 0) > 0)
            #expect((toB["wire_bytes"] as? Int ?? 0) > 0)
            #expect(toB["compression_ratio"] is Double)
            #expect(toB["entries_per_batch"] is Double)
            // The queue is reported per link; with nothing in flight it is empty and within the send window.
            let queue = try #require(own.first { $0["peer"] as? String == "b" }?["queue"] as? [String: Any])
            #expect(queue["messages"] is Int)
            #expect(queue["bytes"] is Int)
            #expect((queue["unacknowledged_batches"] as? Int ?? -1) >= 0)
            let counts = try #require(json["counts"] as? [String: Any])
            #expect(counts["connections"] is Int)
            // Round trips come from the links' heartbeats (one a second): wait for the first answers.
            var roundTrips: [Double] = []
            for _ in 0..<40 where roundTrips.count < 2 {
                try await Task.sleep(for: .milliseconds(100))
                let links = try #require(try await a.http(["\(a.httpURL)/status"]).json["links"] as? [[String: Any]])
                roundTrips = links.filter { $0["own"] as? Bool == true }.compactMap { $0["rtt_ms"] as? Double }
            }
            #expect(roundTrips.count == 2, "no round trip measured on a's links")
            #expect(roundTrips.allSatisfy { $0 >= 0 && $0 < 1000 }, "\(roundTrips)")

            let described = try await a.http(["-G", "\(a.httpURL)/status", "--data-urlencode", "topic=\(topic)"])
            let t = try #require(described.json["topic"] as? [String: Any])
            #expect(t["home"] as? String == "b")
            #expect(t["canonical_home"] as? String == "b")
            #expect(t["failover_order"] as? [String] == Rendezvous.ranking(topic: topic, regions: ["a", "b", "c"]))
            #expect(t["offset"] as? Int == 12)
            #expect((t["epoch"] as? String)?.hasPrefix("b.") == true)
            let tree = try #require(t["tree"] as? [String: Any])
            #expect(tree["region"] as? String == "b")
            let children = (tree["children"] as? [[String: Any]] ?? []).compactMap { $0["region"] as? String }
            #expect(Set(children) == ["a", "c"])
            let invalid = try await a.http(["\(a.httpURL)/status?topic=nope:x"])
            #expect(invalid.status == 404)

            try await mesh.relays.stop("c")
            var cState: String?
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline {
                let links = try await a.http(["\(a.httpURL)/status"]).json["links"] as? [[String: Any]] ?? []
                cState = links.first { $0["peer"] as? String == "c" }?["state"] as? String
                if cState == "down" { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(cState == "down")
            let after = try await a.http(["\(a.httpURL)/status"]).json
            let c = (after["regions"] as? [[String: Any]] ?? []).first { $0["name"] as? String == "c" }
            #expect(c?["reachable"] as? Bool == false)
        }
    }
}
