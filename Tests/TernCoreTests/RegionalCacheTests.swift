import Testing
import TernCore

/// A regional cache fed by hand-made link messages: one relay, region b, whose topics are
/// pinned to region a, so every step of the upstream's side is chosen by the test.
@Suite("Regional cache, driven message by message")
struct RegionalCacheTests {
    static let graph = MeshGraph(regions: ["a", "b"], links: [("a", "b", .milliseconds(10))])

    struct Cache {
        var core: RelayCore
        let encoder = RecordingEncoder()
        var now = TernInstant.zero
        var sent: [LinkMessage] = []
        var written = WrittenFrames()

        init() {
            let mesh = MeshConfig(graph: RegionalCacheTests.graph, pinnedHomes: ["news": "a"])
            core = RelayCore(config: RelayCoreConfig(region: "b", namespaces: CoreHarness.defaultNamespaces, mesh: mesh),
                             encoder: encoder, seed: 1, now: .zero)
            handle(.linkUp("a"))
            // a credits every batch at once, so what b queues goes out on the next event.
            fromA(.credit(batches: 1))
        }

        mutating func handle(_ event: RelayEvent) {
            now = now + .milliseconds(1)
            let actions = core.handle(event, now: now)
            written.record(actions)
            for case .sendLink("a", let batch) in actions { sent += batch }
            #expect(core.invariantFailures.isEmpty, "\(core.invariantFailures)")
        }

        mutating func fromA(_ messages: LinkMessage...) { handle(.linkBatch("a", messages + [.credit(batches: 1)])) }

        mutating func client(_ id: UInt64) -> ClientID {
            let c = ClientID(id)
            handle(.opened(c, .websocket))
            handle(.command(c, ref: 0, .connect(token: nil)))
            _ = received(c)
            return c
        }

        mutating func received(_ c: ClientID) -> [ServerMessage] { written.take(c, from: &core).map(encoder.message) }
    }

    static func publication(_ epoch: String, _ offset: UInt64, id: String) -> Publication {
        Publication(topic: "news:x", position: StreamPosition(epoch: epoch, offset: offset), id: id, data: "\"\(id)\"", user: nil,
                    acceptedAt: .zero)
    }

    @Test("a publication the region delivered before its stream was reset reaches only the subscribers that joined since")
    func redeliveryAfterReset() {
        var b = Cache()
        let early = b.client(1)
        b.handle(.command(early, ref: 1, .subscribe(topic: "news:x", since: nil)))
        #expect(b.sent.contains { if case .interest("news:x", _, _) = $0 { true } else { false } })
        b.fromA(.caughtUp(topic: "news:x", position: StreamPosition(epoch: "a.1", offset: 0)),
                .data(Self.publication("a.1", 1, id: "x1")))
        #expect(publications(b.received(early)).map(\.id) == ["x1"])

        // The upstream resets the stream (say the home moved and x1 is sequenced again in the new epoch).
        b.fromA(.gap(topic: "news:x", position: StreamPosition(epoch: "a.2", offset: 0), reason: .epochChanged))
        let late = b.client(2)
        b.handle(.command(late, ref: 1, .subscribe(topic: "news:x", since: nil)))
        #expect(subscribed(b.received(late).first)?.position == StreamPosition(epoch: "a.2", offset: 0))
        b.fromA(.data(Self.publication("a.2", 1, id: "x1")), .data(Self.publication("a.2", 2, id: "x2")))

        // The early subscriber, told of the gap, had x1 already; the late one never had it and stands at a.2/0.
        #expect(publications(b.received(early)).map(\.id) == ["x2"])
        let got = publications(b.received(late))
        #expect(got.map(\.id) == ["x1", "x2"])
        #expect(got.map(\.position.offset) == [1, 2])

        // A third copy reaches nobody: everyone here has it.
        b.fromA(.gap(topic: "news:x", position: StreamPosition(epoch: "a.3", offset: 0), reason: .epochChanged),
                .data(Self.publication("a.3", 1, id: "x1")))
        #expect(publications(b.received(early)).isEmpty)
        #expect(publications(b.received(late)).isEmpty)
    }

    @Test("a subscriber never gets again what came before the position its subscribe put it at, wherever it was first sequenced")
    func noRedeliveryBeforeTheStart() {
        var b = Cache()
        let early = b.client(1)
        b.handle(.command(early, ref: 1, .subscribe(topic: "news:x", since: nil)))
        // x2 was first sequenced in a failover epoch (c.5) and again here in a.1 after the merge.
        var x2 = Self.publication("a.1", 2, id: "x2")
        x2.firstPosition = StreamPosition(epoch: "c.5", offset: 1)
        b.fromA(.caughtUp(topic: "news:x", position: StreamPosition(epoch: "a.1", offset: 0)),
                .data(Self.publication("a.1", 1, id: "x1")), .data(x2))
        #expect(publications(b.received(early)).map(\.id) == ["x1", "x2"])

        // A fresh subscriber starts at a.1/2, then gets x3.
        let late = b.client(2)
        b.handle(.command(late, ref: 1, .subscribe(topic: "news:x", since: nil)))
        #expect(subscribed(b.received(late).first)?.position == StreamPosition(epoch: "a.1", offset: 2))
        b.fromA(.data(Self.publication("a.1", 3, id: "x3")))
        #expect(publications(b.received(late)).map(\.id) == ["x3"])
        _ = b.received(early)

        // The stream goes to a failover epoch and back to a.1 from before x1: the upstream sends
        // a.1 again from there.
        b.fromA(.gap(topic: "news:x", position: StreamPosition(epoch: "d.9", offset: 0), reason: .epochChanged))
        b.fromA(.epochSwitch(topic: "news:x", from: StreamPosition(epoch: "d.9", offset: 0), to: StreamPosition(epoch: "a.1", offset: 0)),
                .data(Self.publication("a.1", 1, id: "x1")), .data(x2), .data(Self.publication("a.1", 3, id: "x3")),
                .data(Self.publication("a.1", 4, id: "x4")))

        // x1 and x2 lie before where the late subscriber started, and x3 it has: going back in a.1
        // would deliver out of order. Each gets only what is new.
        let got = publications(b.received(late))
        #expect(got.map(\.id) == ["x4"], "\(got.map(\.position))")
        #expect(publications(b.received(early)).map(\.id) == ["x4"])
    }

    @Test("a failover epoch and the merge back: what was delivered in the failover epoch reaches each subscriber once")
    func failoverAndMerge() {
        var b = Cache()
        let early = b.client(1)
        b.handle(.command(early, ref: 1, .subscribe(topic: "news:x", since: nil)))
        b.fromA(.caughtUp(topic: "news:x", position: StreamPosition(epoch: "a.1", offset: 0)),
                .data(Self.publication("a.1", 1, id: "x1")))
        _ = b.received(early)

        // The home fails over: the upstream moves b to the failover epoch c.7 at its fork point.
        b.fromA(.epochSwitch(topic: "news:x", from: StreamPosition(epoch: "a.1", offset: 1), to: StreamPosition(epoch: "c.7", offset: 0)),
                .data(Self.publication("c.7", 1, id: "f1")), .data(Self.publication("c.7", 2, id: "f2")))
        var got = b.received(early)
        #expect(got.contains { if case .epochChanged(_, StreamPosition(epoch: "c.7", offset: 0)) = $0 { true } else { false } })
        #expect(publications(got).map(\.id) == ["f1", "f2"])

        // A subscriber joins during the failover epoch, after f1 and f2.
        let late = b.client(2)
        b.handle(.command(late, ref: 1, .subscribe(topic: "news:x", since: nil)))
        #expect(subscribed(b.received(late).first)?.position == StreamPosition(epoch: "c.7", offset: 2))
        // Another resumes from c.7/0 (it reconnected): its subscribe reply recovers f1 and f2.
        let resumed = b.client(3)
        b.handle(.command(resumed, ref: 1, .subscribe(topic: "news:x", since: StreamPosition(epoch: "c.7", offset: 0))))
        let reply = subscribed(b.received(resumed).first)
        #expect(reply?.recovered == true)
        #expect(reply?.publications.map(\.id) == ["f1", "f2"])

        // Heal: back to the canonical epoch at the fork; the canonical home sends what it sequenced
        // meanwhile (a2) and then the failover log re-sequenced (f1, f2 again), then new traffic.
        b.fromA(.epochSwitch(topic: "news:x", from: StreamPosition(epoch: "c.7", offset: 2), to: StreamPosition(epoch: "a.1", offset: 1)),
                .data(Self.publication("a.1", 2, id: "a2")), .data(Self.publication("a.1", 3, id: "f1")),
                .data(Self.publication("a.1", 4, id: "f2")), .data(Self.publication("a.1", 5, id: "a5")))
        got = b.received(early)
        #expect(got.contains { if case .epochChanged(_, StreamPosition(epoch: "a.1", offset: 1)) = $0 { true } else { false } })
        #expect(publications(got).map(\.id) == ["a2", "a5"])
        // The late subscriber joined after f1 and f2 were delivered here: it gets the canonical stream
        // from the fork whole, f1 and f2 included, each once.
        #expect(publications(b.received(late)).map(\.id) == ["a2", "f1", "f2", "a5"])
        // The resumed one had them in its reply: it gets each once, so only what is new.
        #expect(publications(b.received(resumed)).map(\.id) == ["a2", "a5"])
        #expect(b.core.position(of: "news:x") == StreamPosition(epoch: "a.1", offset: 5))
    }
}

@Suite("Presence where a region stops following a topic")
struct PresenceFollowTests {
    @Test("a region that stops following a room forgets other regions' members, and learns them afresh when it follows again")
    func forgetsWhenNotFollowing() {
        var m = MeshHarness(tune: { $0.interestLinger = .seconds(2) })
        let topic = (0..<1000).map { "room:r\($0)" }.first { Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"]) == ["a", "b", "c"] }!
        let alice = m.connectClient("a", 1, user: "alice")
        let carol = m.connectClient("c", 2, user: "carol")
        m.handle("a", .command(alice, ref: 1, .subscribe(topic: topic, since: nil)))
        m.handle("c", .command(carol, ref: 1, .subscribe(topic: topic, since: nil)))
        m.settle()
        #expect(m.cores["c"]!.presenceCounts(topic).clients == 2)
        #expect(m.cores["c"]!.tracksMeshPresence(topic))

        m.handle("c", .command(carol, ref: 2, .unsubscribe(topic: topic)))
        m.advance(.seconds(5))
        // c no longer follows the room: it holds none of a's members (they would go stale there).
        #expect(!m.cores["c"]!.tracksMeshPresence(topic))
        #expect(m.cores["c"]!.presenceCounts(topic).clients == 0)
        #expect(m.cores["a"]!.presenceCounts(topic).clients == 1)

        // a's membership changes while c does not follow; c learns the current state when it follows again.
        let bob = m.connectClient("a", 3, user: "bob")
        m.handle("a", .command(bob, ref: 1, .subscribe(topic: topic, since: nil)))
        m.handle("a", .closed(alice))
        m.settle()
        m.handle("c", .command(carol, ref: 3, .subscribe(topic: topic, since: nil)))
        m.settle()
        #expect(m.cores["c"]!.tracksMeshPresence(topic))
        #expect(m.cores["c"]!.presenceCounts(topic).clients == 2)
        #expect(m.cores["a"]!.presenceCounts(topic).clients == 2)
    }
}
