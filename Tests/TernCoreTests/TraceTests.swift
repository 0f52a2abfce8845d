import Testing
import TernCore

@Suite("Per-hop timestamps")
struct TraceTests {
    static let base: Int64 = 1_763_900_000_000_000_000

    func publications(_ messages: [ServerMessage]) -> [Publication] {
        messages.compactMap { if case .publication(let p) = $0 { p } else { nil } }
    }

    @Test("in one relay, a traced subscriber sees received, sequenced and delivered; others see no hops")
    func singleRelay() {
        var h = CoreHarness()
        h.core.wallClockOffset = Self.base
        let traced = h.connect(1, as: CoreHarness.user("alice"))
        let plain = h.connect(2, as: CoreHarness.user("bob"))
        let publisher = h.connect(3, as: CoreHarness.user("carol"))
        h.send(.command(traced, ref: 1, .subscribe(topic: "room:a", since: nil, trace: true)))
        h.send(.command(plain, ref: 1, .subscribe(topic: "room:a", since: nil)))
        _ = h.received(traced)
        _ = h.received(plain)
        h.now = TernInstant(nanoseconds: 5_000_000)
        _ = h.publish(publisher, "room:a", #"{"n":1}"#)
        let got = publications(h.received(traced))
        #expect(got.count == 1)
        let hops = got.first?.trace ?? []
        #expect(hops.map(\.step) == [.received, .sequenced, .delivered])
        #expect(hops.allSatisfy { $0.region == "eu-west" && $0.at == Self.base + 5_000_000 })
        let other = publications(h.received(plain))
        #expect(other.count == 1)
        #expect(other.first?.trace == nil)
        #expect(other.first?.sequencedAtWall == Self.base + 5_000_000)

        // Recovery hands hops only to a traced subscription.
        h.send(.command(plain, ref: 2, .unsubscribe(topic: "room:a")))
        h.send(.command(plain, ref: 3, .subscribe(topic: "room:a", since: StreamPosition(epoch: got[0].position.epoch, offset: 0))))
        let recovered = h.received(plain).compactMap { m -> SubscribeReply? in
            if case .reply(3, .subscribed(let r)) = m { r } else { nil }
        }
        #expect(recovered.first?.publications.count == 1)
        #expect(recovered.first?.publications.first?.trace == nil)

        // Once the traced subscriber leaves, publications carry no hops at all.
        h.send(.command(traced, ref: 4, .unsubscribe(topic: "room:a")))
        _ = h.publish(publisher, "room:a", #"{"n":2}"#)
        let later = publications(h.received(plain))
        #expect(later.count == 1)
        #expect(later.first?.trace == nil)
        #expect(h.core.checkInvariants().isEmpty)
    }

    @Test("across regions the hops name every relay on the path, each by its own clock, and only traced topics carry them")
    func acrossRegions() {
        var m = MeshHarness()
        // Each region's wall clock is off by its own skew.
        m.cores["a"]!.wallClockOffset = Self.base
        m.cores["b"]!.wallClockOffset = Self.base + 1_000
        m.cores["c"]!.wallClockOffset = Self.base + 2_000
        let t = (0..<1000).map { "news:t\($0)" }.first { Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"])[0] == "a" }!
        let plainC = m.connectClient("c", 10)
        let plainB = m.connectClient("b", 11)
        m.handle("c", .command(plainC, ref: 1, .subscribe(topic: t, since: nil)))
        m.handle("b", .command(plainB, ref: 1, .subscribe(topic: t, since: nil)))
        m.settle()
        _ = m.received("c", plainC)
        _ = m.received("b", plainB)

        // Nobody traces yet: nothing on the links carries hops.
        m.apiPublish("b", 1, t, "1", id: "p1")
        m.settle()
        #expect(!m.dataSent.isEmpty)
        #expect(m.dataSent.allSatisfy { $0.publication.trace == nil })
        #expect(m.dataSent.allSatisfy { $0.publication.sequencedAtWall >= Self.base })

        let traced = m.connectClient("c", 12)
        m.handle("c", .command(traced, ref: 1, .subscribe(topic: t, since: nil, trace: true)))
        m.settle()
        _ = m.received("c", traced)
        _ = m.received("c", plainC)
        _ = m.received("b", plainB)
        m.dataSent = []
        m.apiPublish("b", 2, t, "2", id: "p2")
        m.settle()
        let hops = publications(m.received("c", traced)).first?.trace ?? []
        // Published in b, sequenced at the home a, relayed down the tree a → b → c, delivered in c.
        #expect(hops.map { "\($0.region):\($0.step.rawValue)" } == ["b:received", "a:sequenced", "b:relayed", "c:relayed", "c:delivered"])
        #expect(hops.first { $0.step == .sequenced }.map { ($0.at - Self.base) % 1_000_000 } == 0)
        #expect(hops.first { $0.step == .delivered }.map { ($0.at - Self.base) % 1_000_000 } == 2_000)
        #expect(publications(m.received("c", plainC)).first.map { $0.trace == nil } == true)
        #expect(publications(m.received("b", plainB)).first.map { $0.trace == nil } == true)
        #expect(m.dataSent.contains { $0.publication.trace != nil })

        // The last traced subscriber leaves: the home stops stamping.
        m.handle("c", .command(traced, ref: 2, .unsubscribe(topic: t)))
        m.settle()
        m.dataSent = []
        m.apiPublish("b", 3, t, "3", id: "p3")
        m.settle()
        #expect(!m.dataSent.isEmpty)
        #expect(m.dataSent.allSatisfy { $0.publication.trace == nil })
    }
}
