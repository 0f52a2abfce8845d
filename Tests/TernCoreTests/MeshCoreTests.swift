import Testing
import TernCore

@Suite("Mesh logic in the core, over in-memory links")
struct MeshCoreTests {
    @Test("rendezvous ranking is stable and spreads topics over regions")
    func rendezvous() {
        let regions = ["a", "b", "c", "d", "e"]
        #expect(Rendezvous.ranking(topic: "room:x", regions: regions) == Rendezvous.ranking(topic: "room:x", regions: regions.reversed()))
        var homes: [String: Int] = [:]
        for i in 0..<1000 { homes[Rendezvous.ranking(topic: "room:\(i)", regions: regions)[0], default: 0] += 1 }
        #expect(homes.count == 5)
        #expect(homes.values.allSatisfy { $0 > 120 })
        // Removing one region moves only that region's topics.
        var moved = 0
        for i in 0..<1000 {
            let before = Rendezvous.ranking(topic: "room:\(i)", regions: regions)[0]
            let after = Rendezvous.ranking(topic: "room:\(i)", regions: regions.filter { $0 != "c" })[0]
            if before != after { moved += 1; #expect(before == "c") }
        }
        #expect(moved == homes["c"])
    }

    @Test("the fan-out tree follows the shortest latency paths")
    func tree() {
        let g = MeshGraph(regions: ["a", "b", "c", "d"], links: [("a", "b", .milliseconds(10)), ("b", "c", .milliseconds(10)),
                                                               ("a", "c", .milliseconds(50)), ("c", "d", .milliseconds(5))])
        let t = g.shortestPaths(from: "a")
        #expect(t.parent == ["b": "a", "c": "b", "d": "c"])
        #expect(t.firstHop(to: "d") == "b")
        let without = g.shortestPaths(from: "a", isUp: { x, y in !(Set([x, y]) == ["b", "c"]) })
        #expect(without.parent["c"] == "a")
    }

    func topic(homedAt home: String, namespace: String = "news", regions: [String] = ["a", "b", "c"]) -> String {
        (0..<1000).map { "\(namespace):t\($0)" }.first { Rendezvous.ranking(topic: $0, regions: regions)[0] == home }!
    }

    @Test("a publish in one region reaches subscribers in every region once, in the same order")
    func delivery() {
        var m = MeshHarness()
        let t = topic(homedAt: "a")
        var subs: [(String, ClientID)] = []
        for (i, r) in ["a", "b", "c"].enumerated() {
            let c = m.connectClient(r, UInt64(10 + i))
            m.handle(r, .command(c, ref: 1, .subscribe(topic: t, since: nil)))
            subs.append((r, c))
        }
        m.settle()
        for (r, c) in subs {
            guard case .reply(1, .subscribed(let reply))? = m.received(r, c).first else {
                Issue.record("\(r) got no subscribe reply")
                continue
            }
            #expect(reply.position.epoch.hasPrefix("a."))
        }
        for i in 1...20 { m.apiPublish(["b", "c", "a"][i % 3], UInt64(i), t, "\(i)", id: "m\(i)") }
        m.settle()
        var orders: [[String]] = []
        for (r, c) in subs {
            let pubs = m.received(r, c).compactMap { if case .publication(let p) = $0 { p.id } else { nil } }
            #expect(pubs.count == 20, "\(r)")
            orders.append(pubs)
        }
        #expect(Set(orders).count == 1)
        #expect(m.apiReplies.count == 20)
        #expect(m.apiReplies.values.allSatisfy { if case .success(.published(_, _?, false)) = $0 { true } else { false } })
    }

    @Test("each publication crosses each tree edge exactly once, whatever the subscriber count")
    func celebrity() {
        var m = MeshHarness()
        let t = topic(homedAt: "a")
        var id: UInt64 = 100
        for r in ["a", "b", "c"] {
            for _ in 0..<25 {
                id += 1
                let c = m.connectClient(r, id)
                m.handle(r, .command(c, ref: 1, .subscribe(topic: t, since: nil)))
            }
        }
        m.settle()
        m.dataEntriesByLink = [:]
        for i in 1...40 { m.apiPublish("a", UInt64(i), t, "\(i)") }
        m.settle()
        // Tree rooted at a: a→b (10ms), b→c (10ms) beats a→c (30ms).
        #expect(m.dataEntriesByLink == ["a>b": 40, "b>c": 40])
    }

    @Test("a link cut mid-stream resumes with nothing lost and nothing duplicated")
    func resume() {
        var m = MeshHarness()
        let t = topic(homedAt: "a")
        let c = m.connectClient("c", 1)
        m.handle("c", .command(c, ref: 1, .subscribe(topic: t, since: nil)))
        m.settle()
        _ = m.received("c", c)
        var got: [String] = []
        for i in 1...10 { m.apiPublish("a", UInt64(i), t, "\(i)") }
        // Deliver only part of the stream, then break b–c with batches in flight.
        for _ in 0..<3 {
            if let k = m.wires.keys.sorted().first(where: { !(m.wires[$0]?.isEmpty ?? true) }) {
                let batch = m.wires[k]!.removeFirst()
                let parts = k.split(separator: ">").map(String.init)
                m.handle(parts[1], .linkBatch(parts[0], batch))
            }
        }
        m.cut("b", "c")
        for i in 11...15 { m.apiPublish("a", UInt64(i), t, "\(i)") }
        m.settle()
        m.connect("b", "c")
        m.settle()
        for i in 16...20 { m.apiPublish("a", UInt64(i), t, "\(i)") }
        m.settle()
        got = m.received("c", c).compactMap { if case .publication(let p) = $0 { p.data } else { nil } }
        #expect(got == (1...20).map(String.init))
    }

    @Test("a child that stops granting credit is switched to resync instead of buffered without bound, then catches up losslessly")
    func creditAndResync() {
        var m = MeshHarness(links: [("a", "b", 10), ("b", "c", 10)], tune: {
            $0.sendWindowBatches = 1
            $0.maxLinkQueueBytes = 2_000
            $0.maxBatchBytes = 512
        })
        let t = (0..<1000).map { "news:q\($0)" }.first { Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"])[0] == "a" }!
        let c = m.connectClient("c", 1)
        m.handle("c", .command(c, ref: 1, .subscribe(topic: t, since: nil)))
        m.settle()
        _ = m.received("c", c)
        // c stops reading its link from b: b's batches to c pile up unacknowledged.
        m.held.insert("b>c")
        for i in 1...15 { m.apiPublish("a", UInt64(i), t, "\"\(String(repeating: "x", count: 200))-\(i)\"") }
        m.settle()
        #expect((m.cores["b"]!.linkCounters["c"]?.overflows ?? 0) + (m.cores["a"]!.linkCounters["b"]?.overflows ?? 0) >= 1)
        let queued = m.wires["b>c"]?.count ?? 0
        #expect(queued <= 3, "b kept \(queued) batches for c instead of switching it to resync")
        m.held.remove("b>c")
        m.settle()
        for i in 16...18 { m.apiPublish("a", UInt64(i), t, "\"late-\(i)\"") }
        m.settle()
        let got = m.received("c", c).compactMap { if case .publication(let p) = $0 { p.position.offset } else { nil } }
        #expect(got == Array(1...18))
    }

    @Test("a peer that keeps asking for catch-up without draining its link gets the link reset, not an unbounded queue")
    func undrainedLinkIsReset() {
        var m = MeshHarness(links: [("a", "b", 10), ("b", "c", 10)], tune: {
            $0.sendWindowBatches = 1
            $0.maxLinkQueueBytes = 2_000
            $0.maxBatchBytes = 512
        })
        let t = (0..<1000).map { "room:q\($0)" }.first { Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"])[0] == "a" }!
        let c = m.connectClient("c", 1)
        m.handle("c", .command(c, ref: 1, .subscribe(topic: t, since: nil)))
        m.settle()
        for i in 1...40 {
            m.apiPublish("a", UInt64(i), t, "\"\(String(repeating: "x", count: 200))-\(i)\"")
            m.settle()
        }
        let epoch = m.cores["a"]!.position(of: t)!.epoch
        // c stops reading, yet asks b again and again for everything from the start: catch-up is not
        // live data, so shedding cannot drop it.
        m.held.insert("b>c")
        for _ in 0..<6 {
            m.handle("b", .linkBatch("c", [.interest(topic: t, since: StreamPosition(epoch: epoch, offset: 0), fork: nil)]))
        }
        #expect(m.resets.contains { $0.region == "b" && $0.peer == "c" && $0.reason.contains("not keeping up") }, "\(m.resets)")
        #expect(m.cores["b"]!.linkQueues["c"] == nil)
        #expect(m.cores["b"]!.upLinks == ["a"])
    }

    @Test("a traced subscribe that times out waiting for an unreachable home leaves no trace behind")
    func tracedSubscribeTimesOut() {
        var m = MeshHarness(tune: { $0.failoverAfter = .seconds(60); $0.homeTimeout = .seconds(2) })
        let t = (0..<1000).map { "news:w\($0)" }.first { Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"])[0] == "a" }!
        m.cut("a", "b")
        m.cut("a", "c")
        let c = m.connectClient("c", 1)
        m.handle("c", .command(c, ref: 1, .subscribe(topic: t, since: nil, trace: true)))
        m.advance(.seconds(3))
        let errors = m.received("c", c).compactMap { if case .error(ref: 1, let e) = $0 { e.code } else { nil } }
        #expect(errors == [.internalError])
        // The harness checks every invariant after each event; the client holds nothing for the topic.
        #expect(m.cores["c"]!.checkInvariants().isEmpty, "\(m.cores["c"]!.checkInvariants())")
        m.handle("c", .command(c, ref: 2, .subscribe(topic: t, since: nil, trace: true)))
        m.connect("a", "c")
        m.settle()
        #expect(m.received("c", c).contains { if case .reply(ref: 2, .subscribed) = $0 { true } else { false } })
    }

    @Test("a home that restarts before anyone fails over recovers what it acknowledged from the regions that hold it, even when a child behind asks first")
    func restartedHomeRecoversFromReplica() {
        // a is the home and b its successor (the replica); c hangs off a directly.
        var m = MeshHarness(links: [("a", "b", 10), ("a", "c", 10), ("b", "c", 30)], tune: { $0.failoverAfter = .seconds(30) })
        let t = (0..<1000).map { "news:r\($0)" }.first { Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"]) == ["a", "b", "c"] }!
        let c = m.connectClient("c", 1)
        m.handle("c", .command(c, ref: 1, .subscribe(topic: t, since: nil)))
        m.settle()
        for i in 1...3 { m.apiPublish("a", UInt64(i), t, "\(i)", id: "p\(i)") }
        m.settle()
        // c stops hearing from a; 4 and 5 are acknowledged once b holds them.
        m.held.insert("a>c")
        for i in 4...5 { m.apiPublish("a", UInt64(i), t, "\(i)", id: "p\(i)") }
        m.settle()
        #expect((4...5).allSatisfy { if case .success(.published(_, _?, _))? = m.apiReplies[UInt64($0)] { true } else { false } })
        // a crashes and comes straight back; c, which is behind, reaches it first.
        m.held.remove("a>c")
        m.crashAndRestart("a", seed: 99, links: ["b", "c"])
        m.connect("a", "c")
        m.settle()
        m.connect("a", "b")
        m.settle()
        m.advance(.seconds(4))
        m.apiPublish("a", 6, t, "6", id: "p6")
        m.settle()
        let got = m.received("c", c).compactMap { if case .publication(let p) = $0 { p.id } else { nil } }
        #expect(got == ["p1", "p2", "p3", "p4", "p5", "p6"], "\(got)")
    }

    @Test("a restarted home that continued without its successor sequences again what only the successor held, once it reaches it")
    func restartedHomePullsFromLateSuccessor() {
        // a is the home and b its successor (the replica); c hangs off a. b and c reach each other only through a.
        var m = MeshHarness(links: [("a", "b", 10), ("a", "c", 10)], tune: { $0.failoverAfter = .seconds(30) })
        let t = (0..<1000).map { "news:l\($0)" }.first { Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"]) == ["a", "b", "c"] }!
        let c = m.connectClient("c", 1)
        m.handle("c", .command(c, ref: 1, .subscribe(topic: t, since: nil)))
        let b = m.connectClient("b", 1)
        m.handle("b", .command(b, ref: 1, .subscribe(topic: t, since: nil)))
        m.settle()
        for i in 1...3 { m.apiPublish("a", UInt64(i), t, "\(i)", id: "p\(i)") }
        m.settle()
        // c stops hearing from a; 4 and 5 are acknowledged once b holds them.
        m.held.insert("a>c")
        for i in 4...5 { m.apiPublish("a", UInt64(i), t, "\(i)", id: "p\(i)") }
        m.settle()
        #expect((4...5).allSatisfy { if case .success(.published(_, _?, _))? = m.apiReplies[UInt64($0)] { true } else { false } })
        // a crashes and comes back reaching only c: it recovers from c alone and continues past the jump.
        m.held.remove("a>c")
        m.crashAndRestart("a", seed: 99, links: ["c"])
        m.connect("a", "c")
        m.settle()
        m.advance(.seconds(4))
        m.apiPublish("a", 6, t, "6", id: "p6")
        m.settle()
        // Then a reaches b, which still names where it stood (past the point a continued from).
        m.connect("a", "b")
        m.settle()
        m.advance(.seconds(1))
        m.settle()
        let atC = m.received("c", c).compactMap { if case .publication(let p) = $0 { p.id } else { nil } }
        #expect(atC == ["p1", "p2", "p3", "p6", "p4", "p5"], "\(atC)")
        let atB = m.received("b", b).compactMap { if case .publication(let p) = $0 { p.id } else { nil } }
        #expect(atB == ["p1", "p2", "p3", "p4", "p5", "p6"], "\(atB)")
    }

    @Test("when the upstream ring cannot fill a gap, subscribers are told to resync")
    func gapMarker() {
        var m = MeshHarness(links: [("a", "b", 10), ("b", "c", 10)])
        let t = topic(homedAt: "a")
        let c = m.connectClient("c", 1)
        m.handle("c", .command(c, ref: 1, .subscribe(topic: t, since: nil)))
        m.settle()
        _ = m.received("c", c)
        m.cut("b", "c")
        // news history holds 20; 30 publications while c is cut off.
        for i in 1...30 { m.apiPublish("a", UInt64(i), t, "\(i)") }
        m.settle()
        m.connect("b", "c")
        m.settle()
        let messages = m.received("c", c)
        let gaps = messages.compactMap { if case .gap(_, let p, let reason) = $0 { (p, reason) } else { nil } }
        #expect(gaps.count == 1)
        #expect(gaps.first?.0.offset == 30)
        #expect(gaps.first?.1 == .evicted)
        m.apiPublish("a", 99, t, "after")
        m.settle()
        #expect(m.received("c", c).compactMap { if case .publication(let p) = $0 { p.data } else { nil } } == ["after"])
    }

    @Test("a region with no subscribers left drops its interest after the linger, and no data flows to it; the replica keeps following")
    func interestLinger() {
        var m = MeshHarness(tune: { $0.interestLinger = .seconds(2) })
        // Homed at a with b as its successor: b follows as the replica whatever its interest, c only while it has subscribers.
        let t = (0..<1000).map { "news:t\($0)" }.first { Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"]) == ["a", "b", "c"] }!
        let c = m.connectClient("c", 1)
        m.handle("c", .command(c, ref: 1, .subscribe(topic: t, since: nil)))
        m.settle()
        m.handle("c", .closed(c))
        m.settle()
        m.apiPublish("a", 1, t, "1")
        m.settle()
        #expect(m.dataEntriesByLink["b>c"] == 1)
        // c lets go after its linger; then b, which has nobody left, after its own.
        m.advance(.seconds(5))
        m.dataEntriesByLink = [:]
        m.apiPublish("a", 2, t, "2")
        m.settle()
        #expect(m.dataEntriesByLink == ["a>b": 1])
        #expect(m.cores["a"]!.replica(of: t) == "b")
        guard case .success(.published(_, let p?, _))? = m.apiReplies[2] else {
            Issue.record("not acknowledged once the replica held it: \(String(describing: m.apiReplies[2]))")
            return
        }
        #expect(p.offset == 2)
    }

    @Test("recovering clients are served from their own region's cache")
    func regionalRecovery() {
        var m = MeshHarness()
        let t = topic(homedAt: "a")
        let c = m.connectClient("c", 1)
        m.handle("c", .command(c, ref: 1, .subscribe(topic: t, since: nil)))
        m.settle()
        for i in 1...5 { m.apiPublish("a", UInt64(i), t, "\(i)") }
        m.settle()
        let pubs = m.received("c", c).compactMap { if case .publication(let p) = $0 { p } else { nil } }
        let second = pubs[1].position
        m.dataEntriesByLink = [:]
        let late = m.connectClient("c", 2)
        m.handle("c", .command(late, ref: 2, .subscribe(topic: t, since: second)))
        guard case .reply(2, .subscribed(let reply))? = m.received("c", late).first else {
            Issue.record("no immediate reply from the regional cache")
            return
        }
        #expect(reply.recovered == true)
        #expect(reply.publications.map(\.data) == ["3", "4", "5"])
        m.settle()
        #expect(m.dataEntriesByLink.values.reduce(0, +) == 0)
    }

    @Test("a publish is acknowledged only once the topic's successor holds it; ack: leader acknowledges at once")
    func acknowledgedOnceReplicated() {
        var m = MeshHarness(tune: { $0.homeTimeout = .seconds(5) })
        let ordered = { (ns: String) in (0..<1000).map { "\(ns):t\($0)" }.first { Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"]) == ["a", "b", "c"] }! }
        let t = ordered("news"), fast = ordered("fast")
        m.apiPublish("a", 1, t, "1", id: "r1")
        m.settle()
        #expect(m.cores["a"]!.replica(of: t) == "b")
        guard case .success(.published(_, let first?, false))? = m.apiReplies[1] else {
            Issue.record("first publish not acknowledged: \(String(describing: m.apiReplies[1]))")
            return
        }
        #expect(first.offset == 1)
        // Nothing reaches b: the home sequences and delivers, but does not acknowledge.
        m.held.insert("a>b")
        m.apiPublish("a", 2, t, "2", id: "r2")
        m.apiPublish("a", 3, fast, "3", id: "f3")
        m.settle()
        #expect(m.apiReplies[2] == nil, "acknowledged before the successor held it")
        guard case .success(.published(_, _, false))? = m.apiReplies[3] else {
            Issue.record("ack: leader waited: \(String(describing: m.apiReplies[3]))")
            return
        }
        m.held.remove("a>b")
        m.settle()
        guard case .success(.published(_, let second?, false))? = m.apiReplies[2] else {
            Issue.record("not acknowledged once b held it: \(String(describing: m.apiReplies[2]))")
            return
        }
        #expect(second.offset == 2)
        // A report delayed on its way back: the acknowledgment waits for it.
        m.held.insert("b>a")
        m.apiPublish("a", 4, t, "4", id: "r4")
        m.advance(.milliseconds(2_500))
        m.held.remove("b>a")
        m.advance(.milliseconds(100))
        guard case .success(.published(_, let fourth?, false))? = m.apiReplies[4] else {
            Issue.record("not acknowledged after the successor's report arrived: \(String(describing: m.apiReplies[4]))")
            return
        }
        #expect(fourth.offset == 3)
    }

    @Test("a client publish in a far region is acknowledged with the home's position")
    func forwardedAck() {
        var m = MeshHarness()
        let t = topic(homedAt: "a", namespace: "room")
        #expect(Rendezvous.ranking(topic: t, regions: ["a", "b", "c"])[0] == "a")
        let c = m.connectClient("c", 1)
        m.handle("c", .command(c, ref: 5, .publish(topic: t, id: "x1", data: "1", volatile: false)))
        m.settle()
        guard case .reply(5, .published(_, let position?, false))? = m.received("c", c).first else {
            Issue.record("no forwarded ack")
            return
        }
        #expect(position.epoch.hasPrefix("a."))
        #expect(position.offset == 1)
        m.handle("c", .command(c, ref: 6, .publish(topic: t, id: "x1", data: "1", volatile: false)))
        m.settle()
        guard case .reply(6, .published(_, _, true))? = m.received("c", c).first else {
            Issue.record("retry not deduplicated")
            return
        }
    }
}

@Suite("Presence across regions, over in-memory links")
struct MeshPresenceTests {
    func presence(_ m: inout MeshHarness, _ region: String, _ client: ClientID, _ topic: String) -> (Int, Int, [String]) {
        m.handle(region, .command(client, ref: 40, .presenceStats(topic: topic)))
        m.handle(region, .command(client, ref: 41, .presence(topic: topic, limit: 100)))
        var stats = (0, 0)
        var users: [String] = []
        for message in m.received(region, client) {
            if case .reply(40, .presenceStats(_, let c, let u)) = message { stats = (c, u) }
            if case .reply(41, .presence(_, let entries, _)) = message { users = entries.map { "\($0.user)@\($0.region)" }.sorted() }
        }
        return (stats.0, stats.1, users)
    }

    @Test("a join in one region shows in the others, a leave clears it, and stats count the whole mesh")
    func joinAndLeave() {
        var m = MeshHarness()
        let topic = "room:lobby"
        let alice = m.connectClient("a", 1, user: "alice")
        let carol = m.connectClient("c", 2, user: "carol")
        m.handle("a", .command(alice, ref: 1, .subscribe(topic: topic, since: nil)))
        m.settle()
        m.handle("c", .command(carol, ref: 1, .subscribe(topic: topic, since: nil)))
        m.settle()
        let joins = m.received("a", alice).compactMap { if case .join(_, let e) = $0 { "\(e.user)@\(e.region)" } else { nil } }
        #expect(joins.contains("carol@c"))
        #expect(presence(&m, "a", alice, topic) == (2, 2, ["alice@a", "carol@c"]))
        #expect(presence(&m, "c", carol, topic) == (2, 2, ["alice@a", "carol@c"]))
        m.handle("c", .command(carol, ref: 2, .unsubscribe(topic: topic)))
        m.settle()
        let leaves = m.received("a", alice).compactMap { if case .leave(_, let e) = $0 { e.user } else { nil } }
        #expect(leaves == ["carol"])
        #expect(presence(&m, "a", alice, topic) == (1, 1, ["alice@a"]))
    }

    /// A mesh where one client at `topic`'s home watches it, and a region that is not the home.
    func watchedRoom(_ topic: String) -> (m: MeshHarness, home: String, far: String, watcher: ClientID) {
        var m = MeshHarness()
        let home = m.cores["a"]!.home(of: topic)
        let far = ["a", "b", "c"].first { $0 != home }!
        let watcher = m.connectClient(home, 1, user: "w")
        m.handle(home, .command(watcher, ref: 1, .subscribe(topic: topic, since: nil)))
        m.settle()
        return (m, home, far, watcher)
    }

    @Test("a burst of joins and leaves in one room crosses a link as one coalesced message")
    func coalescing() {
        let topic = "room:burst"
        var (m, home, far, watcher) = watchedRoom(topic)
        var presenceMessages = 0
        var clients: [ClientID] = []
        for i in 0..<10 { clients.append(m.connectClient(far, UInt64(100 + i), user: "u\(i)")) }
        // Count presence messages leaving `far` from here on.
        let before = m.wires.values.joined().count
        _ = before
        for c in clients { m.handle(far, .command(c, ref: 2, .subscribe(topic: topic, since: nil))) }
        for c in clients.prefix(4) { m.handle(far, .closed(c)) }
        for (k, batches) in m.wires where k.hasPrefix("\(far)>") {
            for b in batches { presenceMessages += b.filter { if case .presence = $0 { true } else { false } }.count }
        }
        #expect(presenceMessages == 0, "changes wait for the coalescing window")
        m.advance(.milliseconds(20))
        m.handle(home, .command(watcher, ref: 3, .presenceStats(topic: topic)))
        #expect(m.received(home, watcher).contains(.reply(ref: 3, .presenceStats(topic: topic, clients: 7, users: 7))))
    }

    @Test("a few changes in a large room cross a link as deltas; as many changes as half the room, as one snapshot")
    func presenceDeltas() {
        let topic = "room:big"
        var (m, _, far, _) = watchedRoom(topic)
        var members: [ClientID] = []
        func join(_ n: Int) {
            for _ in 0..<n {
                let c = m.connectClient(far, UInt64(100 + members.count), user: "u\(members.count)")
                m.handle(far, .command(c, ref: 2, .subscribe(topic: topic, since: nil)))
                members.append(c)
            }
        }
        join(10)
        m.advance(.milliseconds(20))
        // Hold what `far` sends from here on, to look at it.
        let outgoing = Set(["a", "b", "c"].filter { $0 != far }.map { "\(far)>\($0)" })
        m.held = outgoing
        func sentPresence() -> [PresenceChange] {
            var changes: [PresenceChange] = []
            for k in outgoing.sorted() {
                for batch in m.wires[k] ?? [] {
                    for case .presence(let t, _, _, _, let change, _) in batch where t == topic { changes.append(change) }
                }
                m.wires[k] = []
            }
            return changes
        }
        join(2)
        m.advance(.milliseconds(20))
        let deltas = sentPresence()
        #expect(deltas.count == 2)
        #expect(deltas.allSatisfy { if case .join = $0 { true } else { false } }, "\(deltas)")
        for c in members.prefix(6) { m.handle(far, .closed(c)) }
        m.advance(.milliseconds(20))
        let burst = sentPresence()
        #expect(burst.count == 1)
        if case .snapshot(let entries) = burst.first { #expect(entries.count == 6) } else { Issue.record("expected a snapshot, got \(burst)") }
    }

    @Test("an unreachable region's entries go stale, are dropped after the timeout, and come back on reconnect")
    func staleAndConverge() {
        var m = MeshHarness(links: [("a", "b", 10), ("b", "c", 10)], tune: { $0.presenceTimeout = .seconds(5) })
        let topic = "room:lobby"
        let alice = m.connectClient("a", 1, user: "alice")
        let carol = m.connectClient("c", 2, user: "carol")
        m.handle("a", .command(alice, ref: 1, .subscribe(topic: topic, since: nil)))
        m.handle("c", .command(carol, ref: 1, .subscribe(topic: topic, since: nil)))
        m.settle()
        #expect(presence(&m, "a", alice, topic).2 == ["alice@a", "carol@c"])
        m.cut("b", "c")
        m.settle()
        #expect(m.cores["a"]!.stalePresenceRegions(topic) == ["c"])
        #expect(presence(&m, "a", alice, topic).2 == ["alice@a", "carol@c"])
        m.advance(.seconds(6))
        #expect(presence(&m, "a", alice, topic).2 == ["alice@a"])
        // While cut off, carol's friend dave joins in c; on reconnect a full state exchange brings both.
        let dave = m.connectClient("c", 3, user: "dave")
        m.handle("c", .command(dave, ref: 1, .subscribe(topic: topic, since: nil)))
        m.settle()
        m.connect("b", "c")
        m.settle()
        #expect(presence(&m, "a", alice, topic).2 == ["alice@a", "carol@c", "dave@c"])
        #expect(presence(&m, "c", carol, topic).2 == ["alice@a", "carol@c", "dave@c"])
        #expect(m.cores["a"]!.stalePresenceRegions(topic).isEmpty)
    }
}

@Suite("Presence across restarts, over in-memory links")
struct MeshPresenceRestartTests {
    func users(_ m: inout MeshHarness, _ region: String, _ client: ClientID, _ topic: String) -> [String] {
        m.handle(region, .command(client, ref: 41, .presence(topic: topic, limit: 100)))
        for message in m.received(region, client) {
            if case .reply(41, .presence(_, let entries, _)) = message { return entries.map { "\($0.user)@\($0.region)" }.sorted() }
        }
        return []
    }

    @Test("a region that restarts within presence_timeout leaves none of its earlier members behind, and an owner whose last member left during a partition converges on heal")
    func restartAndEmptyOwner() {
        var m = MeshHarness(tune: { $0.presenceTimeout = .seconds(30); $0.incarnation = 1 })
        let topic = "room:lobby"
        let alice = m.connectClient("a", 1, user: "alice")
        let carol = m.connectClient("c", 2, user: "carol")
        let bob = m.connectClient("b", 3, user: "bob")
        for (r, c) in [("a", alice), ("c", carol), ("b", bob)] { m.handle(r, .command(c, ref: 1, .subscribe(topic: topic, since: nil))) }
        m.advance(.milliseconds(50))
        #expect(users(&m, "a", alice, topic) == ["alice@a", "bob@b", "carol@c"])
        // c crashes and is back within a second, well inside presence_timeout; carol does not come back.
        m.crashAndRestart("c", seed: 99, links: ["a", "b"])
        m.advance(.seconds(1))
        m.connect("a", "c")
        m.connect("b", "c")
        m.advance(.milliseconds(100))
        #expect(users(&m, "a", alice, topic) == ["alice@a", "bob@b"])
        #expect(users(&m, "b", bob, topic) == ["alice@a", "bob@b"])
        // b is cut off; its only member leaves; on heal nobody keeps bob.
        m.cut("a", "b")
        m.cut("b", "c")
        m.handle("b", .command(bob, ref: 2, .unsubscribe(topic: topic)))
        m.advance(.seconds(1))
        m.connect("a", "b")
        m.connect("b", "c")
        m.advance(.milliseconds(100))
        #expect(users(&m, "a", alice, topic) == ["alice@a"])
        let watcher = m.connectClient("c", 4, user: "watcher")
        #expect(users(&m, "c", watcher, topic) == ["alice@a"])
    }
}

@Suite("Failover and heal, over in-memory links")
struct MeshFailoverTests {
    func ids(_ m: inout MeshHarness, _ region: String, _ c: ClientID) -> [String] {
        m.received(region, c).compactMap { if case .publication(let p) = $0 { p.id } else { nil } }
    }

    @Test("when the home is cut off, the next region by rendezvous order takes over; on heal the streams merge with nothing lost or repeated",
          arguments: [("a", 0), ("a", 1), ("b", 0), ("c", 0), ("c", 1)])
    func partitionAndHeal(home: String, variant: Int) {
        var m = MeshHarness(tune: { $0.failoverAfter = .seconds(2); $0.homeTimeout = .seconds(30) })
        let others = ["a", "b", "c"].filter { $0 != home }
        // Pick a topic homed at `home`; the variant picks one whose successor is the first or the second other region.
        let t = (0..<5000).map { "news:f\($0)" }.first {
            Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"])[0] == home
                && Rendezvous.ranking(topic: $0, regions: others)[0] == others[variant]
        }!
        let successor = others[variant]
        let publisherInPartition = others[1 - variant]
        var subs: [(String, ClientID)] = []
        for (i, r) in ["a", "b", "c"].enumerated() {
            let c = m.connectClient(r, UInt64(10 + i))
            m.handle(r, .command(c, ref: 1, .subscribe(topic: t, since: nil)))
            subs.append((r, c))
        }
        m.settle()
        var seen: [String: [String]] = [:]
        for (r, c) in subs { _ = m.received(r, c) }
        for i in 1...5 { m.apiPublish(others[0], UInt64(i), t, "\(i)", id: "p\(i)") }
        m.settle()
        for (r, c) in subs { seen[r, default: []] += ids(&m, r, c) }

        // Partition: the home alone | the other two.
        for o in others { m.cut(home, o) }
        m.settle()
        for i in 6...8 { m.apiPublish(publisherInPartition, UInt64(i), t, "\(i)", id: "p\(i)") }
        m.settle()
        #expect(m.apiReplies[6] == nil, "acknowledged before the failover")
        m.advance(.seconds(3))
        #expect(m.cores[others[0]]!.home(of: t) == successor)
        #expect(m.cores[others[1]]!.home(of: t) == successor)
        #expect(m.cores[home]!.home(of: t) == home)
        for i in 6...8 {
            guard case .success(.published(_, let p?, false))? = m.apiReplies[UInt64(i)] else {
                Issue.record("publish \(i) not acknowledged in the failover epoch: \(String(describing: m.apiReplies[UInt64(i)]))")
                continue
            }
            #expect(p.epoch.hasPrefix("\(successor)."))
        }
        // The home alone sequences and delivers locally, but no second region can hold these yet: no acknowledgment.
        for i in 9...10 { m.apiPublish(home, UInt64(i), t, "\(i)", id: "p\(i)") }
        m.settle()
        #expect(m.apiReplies[9] == nil, "acknowledged by a home that no other region could reach")
        for (r, c) in subs {
            let messages = m.received(r, c)
            if r != home { #expect(messages.contains { if case .epochChanged = $0 { true } else { false } }, "\(r) not told of the epoch change") }
            seen[r, default: []] += messages.compactMap { if case .publication(let p) = $0 { p.id } else { nil } }
        }

        // Heal.
        for o in others { m.connect(home, o) }
        m.settle()
        m.advance(.seconds(1))
        for (r, c) in subs {
            let messages = m.received(r, c)
            seen[r, default: []] += messages.compactMap { if case .publication(let p) = $0 { p.id } else { nil } }
        }
        // Once a replica holds them again, the home's own partition-time publishes are acknowledged.
        for i in 9...10 {
            guard case .success(.published(_, let p?, false))? = m.apiReplies[UInt64(i)] else {
                Issue.record("publish \(i) not acknowledged after the heal: \(String(describing: m.apiReplies[UInt64(i)]))")
                continue
            }
            #expect(p.epoch.hasPrefix("\(home)."))
        }
        let all = Set((1...10).map { "p\($0)" })
        for (r, _) in subs {
            #expect(Set(seen[r]!) == all, "\(r) missed \(all.subtracting(seen[r]!).sorted())")
            #expect(seen[r]!.count == 10, "\(r) got duplicates: \(seen[r]!)")
        }
        // After the heal everyone is on a's epoch again and publishing goes on.
        m.apiPublish(publisherInPartition, 99, t, "after", id: "after")
        m.settle()
        guard case .success(.published(_, let p?, _))? = m.apiReplies[99] else {
            Issue.record("no ack after heal")
            return
        }
        #expect(p.epoch.hasPrefix("\(home)."))
        for (r, c) in subs { #expect(ids(&m, r, c) == ["after"], "\(r)") }
    }

    @Test("a home that crashes and restarts takes its topics back in the epoch its children still hold")
    func crashAndRestart() {
        var m = MeshHarness(tune: { $0.failoverAfter = .seconds(2); $0.homeTimeout = .seconds(30) })
        let t = (0..<1000).map { "news:r\($0)" }.first { Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"])[0] == "a" }!
        var subs: [(String, ClientID)] = []
        for (i, r) in ["b", "c"].enumerated() {
            let c = m.connectClient(r, UInt64(20 + i))
            m.handle(r, .command(c, ref: 1, .subscribe(topic: t, since: nil)))
            subs.append((r, c))
        }
        m.settle()
        for (r, c) in subs { _ = m.received(r, c) }
        for i in 1...5 { m.apiPublish("b", UInt64(i), t, "\(i)", id: "p\(i)") }
        m.settle()
        let original = m.cores["b"]!.position(of: t)!.epoch
        m.crashAndRestart("a", seed: 99, links: ["b", "c"])
        for i in 6...8 { m.apiPublish("c", UInt64(i), t, "\(i)", id: "p\(i)") }
        m.advance(.seconds(3))
        #expect((6...8).allSatisfy { if case .success? = m.apiReplies[UInt64($0)] { true } else { false } })
        m.connect("a", "b")
        m.connect("a", "c")
        m.advance(.seconds(1))
        m.apiPublish("b", 9, t, "9", id: "p9")
        m.settle()
        guard case .success(.published(_, let p?, _))? = m.apiReplies[9] else {
            Issue.record("no ack after the restart")
            return
        }
        #expect(p.epoch == original)
        #expect(p.offset > 5)
        for (r, c) in subs {
            let got = m.received(r, c).compactMap { if case .publication(let p) = $0 { p.id } else { nil } }
            #expect(got == (1...9).map { "p\($0)" }, "\(r) home-successor=\(Rendezvous.ranking(topic: t, regions: ["b", "c"]))")
        }
    }

    @Test("an idle link carries heartbeats and stays up; a silent one is declared down within the read timeout, and failover follows")
    func deadLinkDetection() {
        var m = MeshHarness(links: [("a", "b", 10), ("b", "c", 10), ("a", "c", 10)], tune: {
            $0.heartbeatInterval = .seconds(1)
            $0.linkReadTimeout = .seconds(3)
            $0.failoverAfter = .seconds(2)
        })
        // Idle for a minute: heartbeats keep every link up.
        m.advance(.seconds(60))
        #expect(m.resets.isEmpty, "\(m.resets)")
        #expect(m.cores["a"]!.upLinks == ["b", "c"])
        let t = (0..<1000).map { "news:q\($0)" }.first { Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"])[0] == "a" }!
        let c = m.connectClient("c", 1)
        m.handle("c", .command(c, ref: 1, .subscribe(topic: t, since: nil)))
        m.settle()
        // a's links go silent both ways, without any disconnect: nothing a sends or receives arrives.
        let silentAt = m.now
        for k in ["a>b", "b>a", "a>c", "c>a"] { m.held.insert(k) }
        m.advance(.milliseconds(2_900))
        #expect(m.resets.isEmpty, "declared down before the read timeout: \(m.resets)")
        m.advance(.milliseconds(1_200))
        let cut = m.resets.filter { $0.peer == "a" || $0.region == "a" }
        #expect(Set(cut.map { [$0.region, $0.peer].sorted().joined(separator: "-") }) == ["a-b", "a-c"], "\(m.resets)")
        #expect(cut.allSatisfy { $0.reason.contains("link_read_timeout") })
        #expect(m.now - silentAt <= .milliseconds(4_100))
        #expect(m.cores["b"]!.upLinks == ["c"])
        // failover_after later the topic has a new home on the reachable side, and publishes there are acknowledged.
        m.advance(.seconds(3))
        #expect(m.cores["c"]!.home(of: t) != "a")
        m.apiPublish("c", 1, t, "1", id: "after-blackhole")
        m.settle()
        guard case .success(.published(_, let p?, _))? = m.apiReplies[1] else {
            Issue.record("no acknowledgment on the reachable side: \(String(describing: m.apiReplies[1]))")
            return
        }
        #expect(!p.epoch.hasPrefix("a."))
    }
}
