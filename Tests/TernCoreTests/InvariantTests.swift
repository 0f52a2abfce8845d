import Testing
@testable import TernCore

@Suite("Core invariants")
struct InvariantTests {
    static let namespaces: [String: NamespaceOptions] = [
        "news": NamespaceOptions(presence: false, joinLeave: false, historySize: 20, historyTTL: .seconds(300), anonymous: true, clientPublish: false),
    ]

    func subscribedCore() -> RelayCore {
        var config = RelayCoreConfig(region: "a", namespaces: Self.namespaces)
        config.checkInvariants = true
        var core = RelayCore(config: config, encoder: RecordingEncoder(), seed: 1, now: .zero)
        let c = ClientID(1)
        _ = core.handle(.opened(c, .websocket), now: .zero)
        _ = core.handle(.command(c, ref: 1, .connect(token: nil)), now: .zero)
        _ = core.handle(.command(c, ref: 2, .subscribe(topic: "news:x", since: nil)), now: .zero)
        _ = core.handle(.apiPublish(request: 1, topic: "news:x", id: "p1", data: "1"), now: .zero)
        return core
    }

    @Test("a consistent core passes every check after every event")
    func consistent() {
        var core = subscribedCore()
        _ = core.handle(.closed(ClientID(1)), now: .zero + .seconds(1))
        _ = core.handle(.tick, now: .zero + .seconds(1_000))
        #expect(core.checkInvariants().isEmpty)
        #expect(core.invariantFailures.isEmpty)
    }

    @Test("a subscriber the topic does not list is caught after the next event, and the core keeps serving")
    func brokenSubscriptionIsCaught() {
        var core = subscribedCore()
        core.topics["news:x"]!.subscribers.removeValue(forKey: ClientID(1))
        _ = core.handle(.tick, now: .zero + .milliseconds(1))
        #expect(core.invariantFailures.contains { $0.contains("client c1 is subscribed to news:x but is not among its subscribers") },
                "\(core.invariantFailures)")
        _ = core.handle(.apiPublish(request: 2, topic: "news:x", id: "p2", data: "2"), now: .zero + .milliseconds(2))
        #expect(core.position(of: "news:x")?.offset == 2)
    }

    @Test("a topic that lists a client not subscribed to it is caught")
    func strayTopicSubscriberIsCaught() {
        var core = subscribedCore()
        core.topics["news:x"]!.subscribers[ClientID(99)] = .init(serial: 1, since: nil)
        #expect(core.checkInvariants().contains { $0.contains("topics list 2 subscribers but clients hold 1 subscriptions") },
                "\(core.checkInvariants())")
    }

    @Test("counters that disagree with the state, and per-topic mesh state that outlives its topic, are caught")
    func brokenCountersAndLeftovers() {
        var core = subscribedCore()
        core.stats.subscriptions += 1
        core.queuedBytes += 7
        #expect(core.checkInvariants().contains { $0.contains("stats.subscriptions is 2 but clients hold 1") })
        #expect(core.checkInvariants().contains { $0.contains("queuedBytes is") })
        var mesh = MeshConfig(graph: MeshGraph(regions: ["a", "b"], links: [("a", "b", .milliseconds(10))]))
        mesh.incarnation = 1
        var config = RelayCoreConfig(region: "a", namespaces: Self.namespaces, mesh: mesh)
        config.checkInvariants = true
        var meshCore = RelayCore(config: config, encoder: RecordingEncoder(), seed: 1, now: .zero)
        meshCore.mesh!.lastHome["news:gone"] = "a"
        _ = meshCore.handle(.tick, now: .zero + .milliseconds(1))
        #expect(meshCore.invariantFailures.contains { $0.contains("mesh.lastHome still holds news:gone") }, "\(meshCore.invariantFailures)")
    }
}
