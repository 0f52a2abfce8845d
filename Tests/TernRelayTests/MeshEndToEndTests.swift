import Foundation
import Testing
import TernClient
import TernCore
import TernRelay
import TernWire
import NIOCore

@Suite("Three relays on loopback joined by links", .serialized)
struct MeshEndToEndTests {
    @Test("a publish in one region reaches subscribers in all three exactly once, in the same order")
    func delivery() async throws {
        try await withMesh { mesh in
            try await mesh.waitForLinks()
            let topic = mesh.topic(homedAt: "b", namespace: "room")
            var subs: [ClientHarness] = []
            for r in mesh.regions {
                let c = ClientHarness(url: mesh.url(r), token: try await mesh.fixture(r).token("sub-\(r)"))
                try await c.waitConnected()
                try await c.client.subscribe(topic)
                subs.append(c)
            }
            let publishers = try await mesh.regions.asyncMap { r in
                let p = ClientHarness(url: mesh.url(r), token: try await mesh.fixture(r).token("pub-\(r)"))
                try await p.waitConnected()
                return p
            }
            for i in 1...30 {
                let ack = try await publishers[i % 3].client.publish(topic, data: "\(i)", id: "d\(i)")
                #expect(ack.position?.epoch.hasPrefix("b.") == true)
            }
            for s in subs { try await s.waitPublications(30) }
            try await Task.sleep(for: .milliseconds(200))
            let orders = subs.map { $0.publications.map(\.id) }
            #expect(orders.allSatisfy { $0.count == 30 })
            #expect(Set(orders.map { $0.joined(separator: ",") }).count == 1)
            #expect(Set(orders[0]).count == 30)
        }
    }

    @Test("a traced subscription sees every relay on the path with its timestamp, and the home→delivery histogram is exported")
    func perHopTimestamps() async throws {
        try await withMesh { mesh in
            try await mesh.waitForLinks()
            // Home a, tree a→b→c; published in c, subscribed in c.
            let topic = mesh.topic(homedAt: "a", namespace: "room")
            let traced = ClientHarness(url: mesh.url("c"), token: try await mesh.fixture("c").token("tracer"))
            let plain = ClientHarness(url: mesh.url("c"), token: try await mesh.fixture("c").token("plain"))
            try await traced.waitConnected()
            try await plain.waitConnected()
            try await traced.client.subscribe(topic, trace: true)
            try await plain.client.subscribe(topic)
            let publisher = ClientHarness(url: mesh.url("c"), token: try await mesh.fixture("c").token("pub"))
            try await publisher.waitConnected()
            // The home hears of the traced subscription shortly after the subscribe: publish until hops appear.
            var hops: [ClientTraceHop] = []
            for i in 1...40 where hops.count < 5 {
                _ = try await publisher.client.publish(topic, data: "\(i)", id: "t\(i)")
                try await traced.waitPublications(i)
                hops = traced.publications.last?.trace ?? []
            }
            #expect(hops.map { "\($0.region):\($0.step)" } == ["c:received", "a:sequenced", "b:relayed", "c:relayed", "c:delivered"])
            // One machine, one clock: the hops are in time order and recent.
            #expect(zip(hops, hops.dropFirst()).allSatisfy { $0.at <= $1.at })
            #expect(hops.allSatisfy { abs($0.at - Date().timeIntervalSince1970 * 1000) < 60_000 })
            try await plain.waitPublications(traced.publications.count)
            #expect(plain.publications.allSatisfy { $0.trace.isEmpty })
            let metrics = try await mesh.fixture("c").curl(["http://127.0.0.1:\(mesh.clientPorts["c"]!)/metrics"])
            #expect(metrics.body.contains("tern_home_to_deliver_seconds_count{region=\"c\"}"))
        }
    }

    @Test("each message crosses each tree edge exactly once, whatever the subscriber count")
    func celebrity() async throws {
        try await withMesh { mesh in
            try await mesh.waitForLinks()
            let topic = mesh.topic(homedAt: "a")
            var subs: [ClientHarness] = []
            for r in mesh.regions {
                for _ in 0..<8 {
                    let c = ClientHarness(url: mesh.url(r), token: nil)
                    try await c.waitConnected()
                    try await c.client.subscribe(topic)
                    subs.append(c)
                }
            }
            let before = mesh.regions.map { mesh.relays[$0]!.linkDataEntries }
            for i in 1...25 { _ = try await mesh.fixture("a").apiPublish(topic, "\(i)", id: "c\(i)") }
            for s in subs { try await s.waitPublications(25) }
            let after = mesh.regions.map { mesh.relays[$0]!.linkDataEntries }
            func sent(_ i: Int, _ peer: String) -> Int { (after[i][peer] ?? 0) - (before[i][peer] ?? 0) }
            // Tree from a: a→b (10 ms), b→c (10 ms); the 30 ms a–c link carries nothing.
            #expect(sent(0, "b") == 25)
            #expect(sent(1, "c") == 25)
            #expect(sent(0, "c") == 0)
            #expect(sent(1, "a") == 0)
            #expect(sent(2, "a") == 0)
            #expect(sent(2, "b") == 0)
            let metrics = try await mesh.fixture("a").curl(["http://127.0.0.1:\(mesh.clientPorts["a"]!)/metrics"])
            #expect(metrics.body.contains("tern_link_data_entries_total{region=\"a\",peer=\"b\"}"))
            #expect(metrics.body.contains("tern_link_wire_bytes_total"))
        }
    }

    @Test("killing a link's TCP connection mid-stream loses and duplicates nothing")
    func resume() async throws {
        try await withMesh { mesh in
            try await mesh.waitForLinks()
            let topic = mesh.topic(homedAt: "a")
            let sub = ClientHarness(url: mesh.url("c"), token: nil)
            try await sub.waitConnected()
            try await sub.client.subscribe(topic)
            try await Task.sleep(for: .milliseconds(100))
            for i in 1...20 { _ = try await mesh.fixture("a").apiPublish(topic, "\(i)", id: "r\(i)") }
            mesh.relays["b"]!.dropLinks()
            for i in 21...40 { _ = try await mesh.fixture("a").apiPublish(topic, "\(i)", id: "r\(i)") }
            try await mesh.waitForLinks()
            for i in 41...60 { _ = try await mesh.fixture("a").apiPublish(topic, "\(i)", id: "r\(i)") }
            try await sub.waitPublications(60, timeout: .seconds(20))
            try await Task.sleep(for: .milliseconds(300))
            #expect(sub.publications.map(\.data) == (1...60).map(String.init))
            #expect(!sub.events.contains { if case .resyncRequired = $0 { true } else { false } })
        }
    }

    @Test("a topology-hash mismatch is refused with a clear error on both sides")
    func hashMismatch() async throws {
        try await withMesh(topologyFor: { region, base in
            region == "c" ? base.replacingOccurrences(of: "latency_ms: 30", with: "latency_ms: 31") : base
        }) { mesh in
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline, !mesh.capture.contains("topology hash mismatch") {
                try await Task.sleep(for: .milliseconds(20))
            }
            try await Task.sleep(for: .milliseconds(300))
            #expect(mesh.capture.contains("link refused by peer"))
            #expect(mesh.capture.lines.withLock { $0.contains { $0.contains("link refused") && $0.contains("topology hash mismatch") } })
            #expect(mesh.relays["c"]!.upLinks.isEmpty)
            #expect(mesh.relays["a"]!.upLinks == ["b"])
        }
    }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for e in self { out.append(try await transform(e)) }
        return out
    }
}

@Suite("Link mutual TLS", .serialized)
struct LinkTLSTests {
    /// Makes a CA and certificates for a, b and c with the project's script.
    func makeCertificates() async throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-certs-\(UUID())")
        let script = repoRootURL.appendingPathComponent("scripts/dev-certs.sh").path
        _ = try await runProcess("/bin/bash", [script, "-", dir.path, "a", "b", "c"])
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("c-key.pem").path))
        return dir
    }

    func tlsConfig(_ dir: URL) -> String {
        "{ca: \(dir.path)/ca.pem, cert: \"\(dir.path)/{region}.pem\", key: \"\(dir.path)/{region}-key.pem\"}"
    }

    @Test("links come up over mutual TLS and carry publications")
    func tlsMesh() async throws {
        let dir = try await makeCertificates()
        defer { try? FileManager.default.removeItem(at: dir) }
        try await withMesh(tls: tlsConfig(dir)) { mesh in
            try await mesh.waitForLinks()
            #expect(mesh.capture.contains("tls=true"))
            let topic = mesh.topic(homedAt: "a")
            let sub = ClientHarness(url: mesh.url("c"), token: nil)
            try await sub.waitConnected()
            try await sub.client.subscribe(topic)
            for i in 1...5 { _ = try await mesh.fixture("b").apiPublish(topic, "\(i)") }
            try await sub.waitPublications(5)
            #expect(sub.publications.map(\.data) == ["1", "2", "3", "4", "5"])
        }
    }

    @Test("a link presenting another region's certificate is refused")
    func wrongCertificate() async throws {
        let dir = try await makeCertificates()
        defer { try? FileManager.default.removeItem(at: dir) }
        // Region a presents b's certificate and key.
        let wrong = dir.appendingPathComponent("wrong")
        try FileManager.default.createDirectory(at: wrong, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: dir.appendingPathComponent("b.pem"), to: wrong.appendingPathComponent("a.pem"))
        try FileManager.default.copyItem(at: dir.appendingPathComponent("b-key.pem"), to: wrong.appendingPathComponent("a-key.pem"))
        let good = tlsConfig(dir)
        let bad = "{ca: \(dir.path)/ca.pem, cert: \"\(wrong.path)/{region}.pem\", key: \"\(wrong.path)/{region}-key.pem\"}"
        try await withMesh(tls: good, topologyFor: { region, base in
            region == "a" ? base.replacingOccurrences(of: good, with: bad) : base
        }) { mesh in
            // The refused side must never count the link as up, not even for a moment: a checks
            // b's hello and finds it good, but b answers only a hello it accepted.
            var aSawUp: [String] = []
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline, !mesh.capture.contains("certificate names b, not region a") {
                aSawUp += mesh.relays["a"]!.upLinks
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(mesh.capture.contains("certificate names b, not region a"), "\(mesh.capture.lines.withLock { $0.filter { $0.contains("link") }.prefix(6) })")
            let settle = ContinuousClock.now + .milliseconds(500)
            while ContinuousClock.now < settle {
                aSawUp += mesh.relays["a"]!.upLinks
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(mesh.capture.contains("link refused by peer"))
            #expect(aSawUp.isEmpty)
            let linkUpLines = mesh.capture.lines.withLock { $0.filter { $0.contains("link up") } }
            #expect(linkUpLines.allSatisfy { !$0.contains("peer=a") && !$0.contains("region=a") }, "\(linkUpLines)")
            #expect(mesh.relays["b"]!.upLinks == ["c"])
            // A refused dial backs off like a failed one. reconnect_max is 300 ms here, so once grown each
            // wait is at least 150 ms: b refuses a at most 14 times in 2 s. Dialled again at reconnect_min
            // (50 ms, waits of 50-100 ms) there would be about 26.
            let refusals = { mesh.capture.lines.withLock { $0.filter { $0.contains("link refused peer=a") && $0.hasSuffix("region=b") }.count } }
            try await Task.sleep(for: .milliseconds(500))
            let before = refusals()
            try await Task.sleep(for: .seconds(2))
            let refused = refusals() - before
            #expect(refused >= 1 && refused <= 14, "b refused a \(refused) times in 2 s")
        }
    }
}

/// The repository root, from this file's path.
let repoRootURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

@Suite("Presence across three relays", .serialized)
struct MeshPresenceEndToEndTests {
    @Test("a join in one region shows in another region's presence list, and a leave clears it")
    func crossRegionPresence() async throws {
        try await withMesh { mesh in
            try await mesh.waitForLinks()
            let topic = "room:lobby"
            let alice = ClientHarness(url: mesh.url("a"), token: try await mesh.fixture("a").token("alice"))
            let carol = ClientHarness(url: mesh.url("c"), token: try await mesh.fixture("c").token("carol"))
            try await alice.waitConnected()
            try await carol.waitConnected()
            try await alice.client.subscribe(topic)
            try await carol.client.subscribe(topic)
            try await alice.waitFor("carol's join") { $0.contains { if case .join(_, "carol", _) = $0 { true } else { false } } }
            let members = try await alice.client.presence(topic)
            #expect(Set(members.map { "\($0.user)@\($0.region)" }) == ["alice@a", "carol@c"])
            #expect(try await alice.client.presenceStats(topic) == PresenceStats(clients: 2, users: 2))
            carol.stop()
            try await alice.waitFor("carol's leave") { $0.contains { if case .leave(_, "carol", _) = $0 { true } else { false } } }
            #expect(try await alice.client.presence(topic).map(\.user) == ["alice"])
        }
    }
}

@Suite("Failover with real relays", .serialized)
struct MeshFailoverEndToEndTests {
    @Test("stopping the home keeps publishing going in a new epoch; when it returns the streams merge with no acknowledged publish lost")
    func stopHomeAndReturn() async throws {
        try await withMesh { mesh in
            try await mesh.waitForLinks()
            let topic = mesh.topic(homedAt: "a")
            var subs: [ClientHarness] = []
            for r in ["b", "c"] {
                let c = ClientHarness(url: mesh.url(r), token: nil)
                try await c.waitConnected()
                try await c.client.subscribe(topic)
                subs.append(c)
            }
            var acknowledged: [String] = []
            for i in 1...5 {
                let r = try await mesh.fixture("b").apiPublish(topic, "\(i)", id: "f\(i)")
                #expect(r.status == 200)
                if r.status == 200 { acknowledged.append("f\(i)") }
            }
            try await mesh.relays.stop("a")
            // Publishes wait for the failover, then go to the next home in a new epoch. (One racing the
            // shutdown may still be sequenced by a before it stops; it is acknowledged and must arrive too.)
            var newEpoch = 0
            for i in 6...10 {
                let r = try await mesh.fixture(["b", "c"][i % 2]).apiPublish(topic, "\(i)", id: "f\(i)")
                #expect(r.status == 200, "\(r.body)")
                if !r.body.contains("\"epoch\":\"a.") { newEpoch += 1 }
                if r.status == 200 { acknowledged.append("f\(i)") }
            }
            #expect(newEpoch >= 4)
            try await mesh.relays.start("a")
            try await mesh.waitForLinks()
            try await Task.sleep(for: .milliseconds(500))
            for i in 11...12 {
                let r = try await mesh.fixture("c").apiPublish(topic, "\(i)", id: "f\(i)")
                #expect(r.status == 200)
                #expect(r.body.contains("\"epoch\":\"a."), "after the heal the home is a again: \(r.body)")
                if r.status == 200 { acknowledged.append("f\(i)") }
            }
            for s in subs { try await s.waitPublications(acknowledged.count, timeout: .seconds(20)) }
            try await Task.sleep(for: .milliseconds(300))
            for s in subs {
                let ids = s.publications.map(\.id)
                #expect(ids == acknowledged, "\(ids)")
                #expect(s.events.contains { if case .epochChanged = $0 { true } else { false } })
                #expect(!s.events.contains { if case .resyncRequired = $0 { true } else { false } })
            }
        }
    }
}

@Suite("Links whose packets stop flowing", .serialized)
struct SilentLinkTests {
    @Test("a home whose links go silent without a close is declared down within the read deadline, and failover follows")
    func silentHome() async throws {
        let tuning = "  heartbeat_interval: 250ms\n  link_read_timeout: 1s"
        try await withMesh(tuning: tuning, proxyLinksOf: "c") { mesh in
            try await mesh.waitForLinks()
            let topic = mesh.topic(homedAt: "c")
            var subs: [ClientHarness] = []
            for r in ["a", "b"] {
                let c = ClientHarness(url: mesh.url(r), token: nil)
                try await c.waitConnected()
                try await c.client.subscribe(topic)
                subs.append(c)
            }
            for i in 1...3 {
                let r = try await mesh.fixture("a").apiPublish(topic, "\(i)", id: "s\(i)")
                #expect(r.status == 200)
                #expect(r.body.contains("\"epoch\":\"c."), "\(r.body)")
            }
            for s in subs { try await s.waitPublications(3) }
            // Every link of c now passes through a proxy that drops all bytes and closes nothing.
            let silentAt = ContinuousClock.now
            mesh.proxy!.blackhole()
            var downAt: ContinuousClock.Instant?
            while ContinuousClock.now - silentAt < .seconds(10) {
                if !mesh.relays["a"]!.upLinks.contains("c"), !mesh.relays["b"]!.upLinks.contains("c") {
                    downAt = ContinuousClock.now
                    break
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            let noticed = try #require(downAt, "the silent links to c were never declared down") - silentAt
            // link_read_timeout is 1 s; allow scheduling slack on a busy machine, far below TCP's own minutes.
            #expect(noticed < .milliseconds(2_500), "noticed after \(noticed)")
            #expect(mesh.relays["a"]!.upLinks == ["b"])
            #expect(mesh.capture.contains("link dead, resetting"))
            #expect(mesh.capture.contains("link_read_timeout"))
            // failover_after (1 s) later a and b move the topic to a new home and keep publishing.
            var acknowledged = ["s1", "s2", "s3"]
            for i in 4...6 {
                let r = try await mesh.fixture(["a", "b"][i % 2]).apiPublish(topic, "\(i)", id: "s\(i)")
                #expect(r.status == 200, "\(r.body)")
                #expect(!r.body.contains("\"epoch\":\"c."), "still sequenced by the silent home: \(r.body)")
                if r.status == 200 { acknowledged.append("s\(i)") }
            }
            for s in subs { try await s.waitPublications(acknowledged.count, timeout: .seconds(15)) }
            for s in subs { #expect(s.publications.map(\.id) == acknowledged) }
        }
    }
}

@Suite("Bad bytes on a link", .serialized)
struct LinkGarbageTests {
    @Test("a malformed frame resets only that link; the relay and its other links carry on")
    func garbage() async throws {
        try await withMesh { mesh in
            try await mesh.waitForLinks()
            let linkPort = await mesh.relays["b"]!.waitUntilLinksListening()!
            // A connection that sends an absurd frame length right away.
            _ = try await runProcess("/bin/bash", ["-c", "printf '\\377\\377\\377\\377garbage' > /dev/tcp/127.0.0.1/\(linkPort); sleep 0.3"])
            let deadline = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < deadline, !mesh.capture.contains("link reset") {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(mesh.capture.contains("link reset"))
            #expect(mesh.relays["b"]!.upLinks == ["a", "c"])
            let topic = mesh.topic(homedAt: "a")
            let sub = ClientHarness(url: mesh.url("c"), token: nil)
            try await sub.waitConnected()
            try await sub.client.subscribe(topic)
            _ = try await mesh.fixture("b").apiPublish(topic, "1")
            try await sub.waitPublications(1)
        }
    }

    @Test("frames out of the handshake's order are refused with a reason, and the real links stay up")
    func outOfOrder() async throws {
        try await withMesh { mesh in
            try await mesh.waitForLinks()
            let linkPort = await mesh.relays["b"]!.waitUntilLinksListening()!
            let codec = LinkCodec()
            let topology = mesh.relays["b"]!.topology
            let cases: [([LinkFrame], String)] = [
                ([.ready], "a ready out of turn"),
                ([.batch([.heartbeat(sentAt: 1)])], "a batch before the handshake finished"),
                // A good hello from a configured peer, then a batch without waiting for b's answer and ready.
                ([.hello(LinkHello(mesh: topology.mesh, region: "a", topologyHash: topology.hash)), .batch([.heartbeat(sentAt: 2)])],
                 "a batch before the handshake finished"),
            ]
            for (frames, reason) in cases {
                var bytes = ByteBuffer()
                for f in frames { codec.encode(f, into: &bytes) }
                let file = FileManager.default.temporaryDirectory.appendingPathComponent("tern-frames-\(UUID())")
                try Data(bytes.readableBytesView).write(to: file)
                defer { try? FileManager.default.removeItem(at: file) }
                _ = try await runProcess("/bin/bash", ["-c", "cat \(file.path) > /dev/tcp/127.0.0.1/\(linkPort); sleep 0.2"])
                let deadline = ContinuousClock.now + .seconds(5)
                while ContinuousClock.now < deadline, !mesh.capture.contains(reason) {
                    try await Task.sleep(for: .milliseconds(20))
                }
                #expect(mesh.capture.contains(reason))
            }
            #expect(mesh.relays["b"]!.upLinks == ["a", "c"])
            #expect(mesh.relays["a"]!.upLinks == ["b", "c"])
        }
    }
}
