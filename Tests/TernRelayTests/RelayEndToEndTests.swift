import Foundation
import Testing
import TernClient
import TernCore
import TernWire

@Suite("A relay over real loopback sockets", .serialized)
struct RelayEndToEndTests {
    @Test("WebSocket publish and subscribe keep the order")
    func publishSubscribeOrder() async throws {
        try await withRelay { relay in
            let sub = ClientHarness(url: relay.wsURL, token: try await relay.token("sub"))
            let pub = ClientHarness(url: relay.wsURL, token: try await relay.token("pub"))
            try await sub.waitConnected()
            try await pub.waitConnected()
            try await sub.client.subscribe("room:order")
            var acks: [UInt64] = []
            for i in 1...50 {
                let ack = try await pub.client.publish("room:order", data: "{\"n\":\(i)}", id: "o-\(i)")
                acks.append(ack.position!.offset)
            }
            try await sub.waitPublications(50)
            #expect(sub.publications.map(\.data) == (1...50).map { "{\"n\":\($0)}" })
            #expect(sub.publications.map(\.position.offset) == acks)
            #expect(sub.publications.allSatisfy { $0.user == "pub" })
        }
    }

    @Test("presence shows joins, leaves and stats")
    func presence() async throws {
        try await withRelay { relay in
            let alice = ClientHarness(url: relay.wsURL, token: try await relay.token("alice"))
            let bob = ClientHarness(url: relay.wsURL, token: try await relay.token("bob"))
            try await alice.waitConnected()
            try await bob.waitConnected()
            try await alice.client.subscribe("room:lobby")
            try await bob.client.subscribe("room:lobby")
            try await alice.waitFor("bob's join") { $0.contains { if case .join("room:lobby", "bob", _) = $0 { true } else { false } } }
            let stats = try await alice.client.presenceStats("room:lobby")
            #expect(stats == PresenceStats(clients: 2, users: 2))
            let members = try await alice.client.presence("room:lobby")
            #expect(Set(members.map(\.user)) == ["alice", "bob"])
            #expect(members.allSatisfy { $0.region == "eu-west" })
            try await bob.client.unsubscribe("room:lobby")
            try await alice.waitFor("bob's leave") { $0.contains { if case .leave("room:lobby", "bob", _) = $0 { true } else { false } } }
            #expect(try await alice.client.presenceStats("room:lobby") == PresenceStats(clients: 1, users: 1))
        }
    }

    @Test("a dropped connection recovers by position with nothing lost or duplicated")
    func recoverByPosition() async throws {
        try await withRelay { relay in
            let sub = ClientHarness(url: relay.wsURL, token: try await relay.token("sub"))
            try await sub.waitConnected()
            try await sub.client.subscribe("news:feed")
            for i in 1...10 { _ = try await relay.apiPublish("news:feed", "\(i)", id: "f\(i)") }
            try await sub.waitPublications(10)
            sub.client.disconnect()
            try await sub.waitFor("disconnect") { $0.contains { if case .disconnected = $0 { true } else { false } } }
            for i in 11...20 { _ = try await relay.apiPublish("news:feed", "\(i)", id: "f\(i)") }
            try await sub.waitConnected(count: 2)
            try await sub.waitPublications(20)
            for i in 21...25 { _ = try await relay.apiPublish("news:feed", "\(i)", id: "f\(i)") }
            try await sub.waitPublications(25)
            try await Task.sleep(for: .milliseconds(200))
            #expect(sub.publications.map(\.data) == (1...25).map(String.init))
            #expect(Set(sub.publications.map(\.id)).count == 25)
            #expect(sub.events.contains { if case .subscribed("news:feed", _, true) = $0 { true } else { false } })
            #expect(!sub.events.contains { if case .resyncRequired = $0 { true } else { false } })
        }
    }

    @Test("SSE resumes through Last-Event-ID")
    func sseResume() async throws {
        try await withRelay { relay in
            for i in 1...3 { _ = try await relay.apiPublish("news:sse", "\(i)") }
            let first = try await relay.curl(["\(relay.httpURL)/sse?topic=news:sse"], timeout: 1)
            let firstIDs = first.body.split(separator: "\n").filter { $0.hasPrefix("id: ") }.map { String($0.dropFirst(4)) }
            #expect(firstIDs.count == 1, "only the subscribed event: \(first.body)")
            let lastID = try #require(firstIDs.last)
            #expect(lastID.hasSuffix("|3"))
            for i in 4...6 { _ = try await relay.apiPublish("news:sse", "\(i)") }
            let resumed = try await relay.curl(["-H", "Last-Event-ID: \(lastID)", "\(relay.httpURL)/sse?topic=news:sse"], timeout: 1)
            let data = resumed.body.split(separator: "\n").filter { $0.hasPrefix("data: {\"push\":\"pub\"") }
            #expect(data.count == 3, "\(resumed.body)")
            #expect(data.map { $0.contains("\"data\":4") || $0.contains("\"data\":5") || $0.contains("\"data\":6") }.allSatisfy { $0 })
            #expect(resumed.body.contains("id: news:sse|"))
            #expect(resumed.body.contains("|6\nevent: pub"))
        }
    }

    @Test("a long-poll cursor returns what came after it, and waits when there is nothing")
    func longPoll() async throws {
        try await withRelay { relay in
            let start = try await relay.curl(["\(relay.httpURL)/poll?topic=news:lp"])
            #expect(start.status == 200)
            let cursor = try #require(try pollCursor(start.body))
            for i in 1...3 { _ = try await relay.apiPublish("news:lp", "\(i)") }
            let next = try await relay.curl(["-G", "\(relay.httpURL)/poll", "--data-urlencode", "topic=news:lp", "--data-urlencode", "cursor=\(cursor)"])
            let body = try JSONReader.parse(Array(next.body.utf8))
            guard case .array(let pubs, _)? = body["publications"] else { Issue.record("no publications: \(next.body)"); return }
            #expect(pubs.map { $0["data"]?.rawText } == ["1", "2", "3"])
            let cursor2 = try #require(try pollCursor(next.body))
            let began = ContinuousClock.now
            let empty = try await relay.curl(["-G", "\(relay.httpURL)/poll", "--data-urlencode", "topic=news:lp",
                                              "--data-urlencode", "cursor=\(cursor2)", "--data-urlencode", "timeout=0.5"])
            #expect(ContinuousClock.now - began >= .milliseconds(400))
            guard case .array(let none, _)? = try JSONReader.parse(Array(empty.body.utf8))["publications"] else { Issue.record("\(empty.body)"); return }
            #expect(none.isEmpty)
            let bad = try await relay.curl(["\(relay.httpURL)/poll?topic=news:lp&cursor=nonsense"])
            #expect(bad.status == 400)
            let huge = try await relay.curl(["\(relay.httpURL)/poll?topic=news:lp&timeout=1e17"])
            #expect(huge.status == 200)
            #expect(try await relay.curl(["\(relay.httpURL)/health"]).status == 200)
        }
    }

    func pollCursor(_ body: String) throws -> String? {
        if case .string(let c)? = try JSONReader.parse(Array(body.utf8))["cursor"] { return c }
        return nil
    }

    @Test("HTTP publish needs the API key, and a retried idempotency id is delivered once")
    func httpPublish() async throws {
        try await withRelay { relay in
            let sub = ClientHarness(url: relay.wsURL, token: nil)
            try await sub.waitConnected()
            try await sub.client.subscribe("news:api")
            let denied = try await relay.apiPublish("news:api", "\"x\"", key: nil)
            #expect(denied.status == 401)
            #expect(denied.body.contains("\"code\":101"))
            let wrong = try await relay.apiPublish("news:api", "\"x\"", key: "nope")
            #expect(wrong.status == 401)
            let first = try await relay.apiPublish("news:api", "{\"v\":1}", id: "order-7")
            let retry = try await relay.apiPublish("news:api", "{\"v\":1}", id: "order-7")
            #expect(first.status == 200)
            #expect(first.body.contains("\"duplicate\":false"))
            #expect(retry.status == 200)
            #expect(retry.body.contains("\"duplicate\":true"))
            _ = try await relay.apiPublish("news:api", "{\"v\":2}", id: "order-8")
            try await sub.waitPublications(2)
            try await Task.sleep(for: .milliseconds(200))
            #expect(sub.publications.map(\.id) == ["order-7", "order-8"])
            let unknown = try await relay.apiPublish("nope:api", "1")
            #expect(unknown.status == 404)
        }
    }

    @Test("a bad or expired token is refused with its documented code")
    func badTokens() async throws {
        try await withRelay { relay in
            let forged = ClientHarness(url: relay.wsURL, token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bad")
            try await forged.waitFor("refusal") { $0.contains { if case .disconnected(CloseCode.unauthorized.rawValue, _, false, _) = $0 { true } else { false } } }
            let expired = ClientHarness(url: relay.wsURL, token: try await relay.token("late", expiresIn: -60))
            try await expired.waitFor("expiry close") { $0.contains { if case .disconnected(CloseCode.tokenExpired.rawValue, _, _, _) = $0 { true } else { false } } }
            expired.stop()
            // An EventSource cannot read a 401: the refusal is a short event stream.
            let sse = try await relay.curl(["\(relay.httpURL)/sse?topic=news:x&token=garbage"])
            #expect(sse.status == 200)
            #expect(sse.body.contains("event: error\ndata: {\"error\":{\"code\":101"))
            #expect(sse.body.contains("event: disconnect\ndata: {\"push\":\"disconnect\",\"code\":4001"))
        }
    }

    @Test("malformed JSON, unknown commands and oversized frames get errors and the connection keeps working")
    func badInput() async throws {
        try await withRelay(limits: "  max_frame_bytes: 4096") { relay in
            let bad = ClientHarness(url: relay.wsURL, token: try await relay.token("bad"))
            let good = ClientHarness(url: relay.wsURL, token: try await relay.token("good"))
            try await bad.waitConnected()
            try await good.waitConnected()
            try await good.client.subscribe("room:ok")
            try await bad.client.subscribe("room:ok")
            try bad.client.sendRaw("{\"op\":\"subscribe\",")
            try await bad.waitFor("bad_request") { $0.contains { if case .error(ErrorCode.badRequest.rawValue, _) = $0 { true } else { false } } }
            try bad.client.sendRaw("{\"op\":\"teleport\"}")
            try await bad.waitFor("unknown_command") { $0.contains { if case .error(ErrorCode.unknownCommand.rawValue, _) = $0 { true } else { false } } }
            try bad.client.sendRaw("{\"op\":\"publish\",\"topic\":\"room:ok\",\"data\":\"\(String(repeating: "x", count: 6000))\"}")
            try await bad.waitFor("message_too_large") { $0.contains { if case .error(ErrorCode.messageTooLarge.rawValue, _) = $0 { true } else { false } } }
            try await bad.client.ping()
            try await bad.client.publish("room:ok", data: "\"still here\"")
            try await good.waitPublications(1)
            #expect(good.publications.map(\.data) == ["\"still here\""])
            #expect(bad.events.contains { if case .disconnected = $0 { true } else { false } } == false)
        }
    }

    @Test("a client that stops reading is closed as a slow consumer while a fast one receives everything")
    func slowConsumer() async throws {
        try await withRelay(limits: "  max_frame_bytes: 65536\n  max_queue_bytes: 262144") { relay in
            let slow = try await RawWebSocket.connect(port: relay.port)
            try await slow.sendText("{\"ref\":1,\"op\":\"connect\"}")
            _ = try await slow.readText()
            try await slow.sendText("{\"ref\":2,\"op\":\"subscribe\",\"topic\":\"big:stream\"}")
            _ = try await slow.readText()
            let fast = ClientHarness(url: relay.wsURL, token: nil)
            try await fast.waitConnected()
            try await fast.client.subscribe("big:stream")
            let publisher = ClientHarness(url: relay.wsURL, token: try await relay.token("pub"))
            try await publisher.waitConnected()
            let blob = "\"" + String(repeating: "z", count: 60_000) + "\""
            let count = 250
            for _ in 1...count { try await publisher.client.publish("big:stream", data: blob) }
            try await fast.waitPublications(count, timeout: .seconds(30))
            #expect(fast.publications.map(\.position.offset) == Array(1...UInt64(count)))
            let frames = try await slow.readUntilClose()
            let close = frames.last
            #expect(close == .close(code: UInt16(CloseCode.slowConsumer.rawValue), reason: "slow consumer"), "last frame: \(String(describing: close))")
            let slowCount = frames.filter { if case .text = $0 { true } else { false } }.count
            #expect(slowCount < count)
            let metrics = try await relay.curl(["\(relay.httpURL)/metrics"])
            #expect(metrics.body.contains("tern_slow_consumer_closes_total{region=\"eu-west\"} 1"))
        }
    }

    @Test("health and metrics answer")
    func healthAndMetrics() async throws {
        try await withRelay { relay in
            let health = try await relay.curl(["\(relay.httpURL)/health"])
            #expect(health.status == 200)
            #expect(health.body.contains("\"status\":\"ok\""))
            _ = try await relay.apiPublish("news:m", "1")
            let metrics = try await relay.curl(["\(relay.httpURL)/metrics"])
            for name in ["tern_connections", "tern_subscriptions", "tern_publications_total", "tern_deliveries_total",
                         "tern_client_queue_bytes", "tern_publish_to_deliver_seconds_bucket"] {
                #expect(metrics.body.contains(name), "\(name) missing")
            }
            #expect(metrics.body.contains("tern_publications_total{region=\"eu-west\"} 1"))
        }
    }
}
