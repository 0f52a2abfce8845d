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
        core.topics.update("news:x") { $0.subscribers.removeValue(forKey: ClientID(1)) }
        _ = core.handle(.tick, now: .zero + .milliseconds(1))
        #expect(core.invariantFailures.contains { $0.contains("client c1 is subscribed to news:x but is not among its subscribers") },
                "\(core.invariantFailures)")
        _ = core.handle(.apiPublish(request: 2, topic: "news:x", id: "p2", data: "2"), now: .zero + .milliseconds(2))
        #expect(core.position(of: "news:x")?.offset == 2)
    }

    @Test("a topic that lists a client not subscribed to it is caught")
    func strayTopicSubscriberIsCaught() {
        var core = subscribedCore()
        core.topics.update("news:x") { $0.subscribers[ClientID(99)] = .init(serial: 1, since: nil) }
        #expect(core.checkInvariants().contains { $0.contains("topics list 2 subscribers but clients hold 1 subscriptions") },
                "\(core.checkInvariants())")
    }

    @Test("the sweep's checksums catch a subscriber swapped for another with every count unchanged, and a traced count off by one, and name them")
    func swappedSubscriberIsCaughtBySweep() {
        var core = subscribedCore()
        core.topics.update("news:x") { t in
            t.subscribers.removeValue(forKey: ClientID(1))
            t.subscribers[ClientID(99)] = .init(serial: 1, since: nil)
        }
        let problems = core.checkInvariants()
        #expect(!problems.contains { $0.contains("topics list") }, "the totals still agree: \(problems)")
        #expect(problems.contains { $0.contains("client c1 is subscribed to news:x but is not among its subscribers") }, "\(problems)")
        #expect(problems.contains { $0.contains("news:x lists subscriber c63, which is not subscribed to it") }, "\(problems)")

        var traced = subscribedCore()
        traced.topics.update("news:x") { $0.traceSubscribers += 1 }
        #expect(traced.checkInvariants().contains { $0.contains("news:x counts 1 traced subscribers but clients trace it 0 times") },
                "\(traced.checkInvariants())")
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
        meshCore.mesh!.lastHome.updateValue("a", forKey: "news:gone")
        _ = meshCore.handle(.tick, now: .zero + .milliseconds(1))
        #expect(meshCore.invariantFailures.contains { $0.contains("mesh.lastHome still holds news:gone") }, "\(meshCore.invariantFailures)")
    }
}

@Suite("Core invariants, checked after every event on a large core")
struct ChangedStateInvariantTests {
    /// A core with 60 subscribed clients whose full sweep runs only every 60 or so events, so that
    /// what is caught after the next event is caught by the check of what that event changed.
    func largeCore() -> RelayCore {
        var config = RelayCoreConfig(region: "a", namespaces: InvariantTests.namespaces)
        config.checkInvariants = true
        config.invariantBudgetPerEvent = 1
        config.invariantSweepEveryEventBelow = 0
        var core = RelayCore(config: config, encoder: RecordingEncoder(), seed: 1, now: .zero)
        for i in 1...60 {
            let c = ClientID(UInt64(i))
            _ = core.handle(.opened(c, .websocket), now: .zero)
            _ = core.handle(.command(c, ref: 1, .connect(token: nil)), now: .zero)
            _ = core.handle(.command(c, ref: 2, .subscribe(topic: i.isMultiple(of: 2) ? "news:x" : "news:y", since: nil)), now: .zero)
        }
        return core
    }

    /// Runs events until the full sweep is due, and returns how many ran before it.
    func eventsUntilSweep(_ core: RelayCore) -> Int {
        let size = core.clients.count + core.topics.count
        return size - core.invariantLog.eventsSinceCheck - 1
    }

    @Test("a consistent large core passes the per-event check through publishes, closes and sweeps")
    func consistent() {
        var core = largeCore()
        for i in 1...30 { _ = core.handle(.apiPublish(request: UInt64(i), topic: "news:x", id: "p\(i)", data: "\(i)"), now: .zero) }
        for i in 1...20 { _ = core.handle(.closed(ClientID(UInt64(i))), now: .zero + .seconds(1)) }
        _ = core.handle(.tick, now: .zero + .seconds(1_000))
        #expect(core.invariantFailures.isEmpty, "\(core.invariantFailures)")
        #expect(core.checkInvariants().isEmpty)
    }

    @Test("mesh state left for a topic the relay does not hold, or a miscounted link queue, is caught by the very next event")
    func meshCaughtBeforeTheSweep() {
        var mesh = MeshConfig(graph: MeshGraph(regions: ["a", "b"], links: [("a", "b", .milliseconds(10))]))
        mesh.incarnation = 1
        var config = RelayCoreConfig(region: "a", namespaces: InvariantTests.namespaces, mesh: mesh)
        config.checkInvariants = true
        config.invariantBudgetPerEvent = 1
        config.invariantSweepEveryEventBelow = 0
        var core = RelayCore(config: config, encoder: RecordingEncoder(), seed: 1, now: .zero)
        _ = core.handle(.linkUp("b"), now: .zero)
        for i in 1...60 {
            let c = ClientID(UInt64(i))
            _ = core.handle(.opened(c, .websocket), now: .zero)
            _ = core.handle(.command(c, ref: 1, .connect(token: nil)), now: .zero)
        }
        #expect(core.invariantFailures.isEmpty, "\(core.invariantFailures)")
        #expect(eventsUntilSweep(core) > 1)
        core.mesh!.lastHome.updateValue("a", forKey: "news:gone")
        core.mesh!.links.update("b") { $0.queuedBytes += 5 }
        _ = core.handle(.tick, now: .zero + .milliseconds(1))
        #expect(core.invariantFailures.contains { $0.contains("mesh.lastHome still holds news:gone") }, "\(core.invariantFailures)")
        #expect(core.invariantFailures.contains { $0.contains("the link to b counts") }, "\(core.invariantFailures)")
    }

    @Test("a client's subscription count and checksum sums, which the sweep reads, follow its subscriptions and traces")
    func clientSums() {
        var c = RelayCore.ClientState(transport: .websocket, outbox: Outbox(maxBytes: 1 << 20), publishBucket: TokenBucket(rate: 1, burst: 1, now: .zero))
        func expectMatching() {
            #expect(c.subscriptionCount == c.subscriptions.count)
            #expect(c.subscriptionSum == c.subscriptions.orderedKeys.reduce(0) { $0 &+ RelayCore.checksum($1) })
            #expect(c.tracedSum == c.traced.reduce(0) { $0 &+ RelayCore.checksum($1) })
        }
        for t in ["news:a", "news:b", "news:a", "room:c"] { c.addSubscription(t) }
        #expect(c.subscriptionCount == 3)
        expectMatching()
        c.setTrace("news:b", true)
        c.setTrace("news:b", true)
        c.setTrace("room:c", true)
        expectMatching()
        c.removeSubscription("news:a")
        c.removeSubscription("news:zzz")
        c.setTrace("room:c", false)
        c.setTrace("room:c", false)
        #expect(c.subscriptionCount == 2 && c.traced == ["news:b"])
        expectMatching()
        for t in ["news:b", "room:c"] { c.removeSubscription(t) }
        c.setTrace("news:b", false)
        #expect(c.subscriptionCount == 0 && c.subscriptionSum == 0 && c.tracedSum == 0)
    }

    @Test("a broken subscriber list, queue count or trace is caught by the very next event, before the sweep")
    func caughtBeforeTheSweep() {
        var core = largeCore()
        #expect(eventsUntilSweep(core) > 1)
        core.topics.update("news:x") { $0.subscribers.removeValue(forKey: ClientID(2)) }
        _ = core.handle(.apiPublish(request: 1, topic: "news:y", id: "q1", data: "1"), now: .zero)
        #expect(core.invariantFailures.contains { $0.contains("topics list 59 subscribers but clients hold 60 subscriptions") },
                "\(core.invariantFailures)")

        var queued = largeCore()
        queued.queuedBytes += 7
        _ = queued.handle(.apiPublish(request: 1, topic: "news:y", id: "q1", data: "1"), now: .zero)
        #expect(queued.invariantFailures.contains { $0.contains("queuedBytes is") }, "\(queued.invariantFailures)")

        var traced = largeCore()
        traced.clients.update(ClientID(3)) { $0.setTrace("news:x", true) }
        _ = traced.handle(.apiPublish(request: 1, topic: "news:y", id: "q1", data: "1"), now: .zero)
        #expect(traced.invariantFailures.contains { $0.contains("client c3 traces news:x without being subscribed to it") },
                "\(traced.invariantFailures)")
        #expect(traced.invariantFailures.contains { $0.contains("news:x counts 0 traced subscribers but clients trace it 1 times") },
                "\(traced.invariantFailures)")
    }
}
