import Testing
import TernCore

@Suite("RelayCore, driven on a manual clock with no I/O")
struct RelayCoreTests {
    @Test("a publication is encoded once: one write action hands the same buffer to every WebSocket subscriber")
    func encodedOnceAndShared() {
        var h = CoreHarness()
        let subs = (1...3).map { i -> ClientID in
            let c = h.connect(UInt64(i), as: CoreHarness.user("u\(i)"))
            h.send(.command(c, ref: 1, .subscribe(topic: "news:shared", since: nil)))
            _ = h.received(c)
            return c
        }
        h.send(.apiPublish(request: 1, topic: "news:shared", id: "", data: "1"))
        let writes = h.actions.compactMap { if case .write(let frame, let clients) = $0 { (frame, clients) } else { nil } }
        #expect(writes.count == 1)
        #expect(writes.first?.1 == subs, "one action for all three, in subscription order")
        #expect(h.core.queuedBytes == 0, "nothing is queued for sockets that take frames")
        let frames = subs.map { h.frames($0) }
        #expect(frames.allSatisfy { $0.count == 1 })
        let addresses = Set(frames.compactMap { $0.first?.bytes.withUnsafeReadableBytes { UnsafeRawPointer($0.baseAddress) } })
        #expect(addresses.count == 1)
    }

    @Test("traced and untraced subscribers, interleaved, get two write actions: the shared frame and the traced one")
    func twoWritesForTracedAndPlain() {
        var h = CoreHarness()
        let subs = (1...6).map { i -> ClientID in
            let c = h.connect(UInt64(i), as: CoreHarness.user("u\(i)"))
            h.send(.command(c, ref: 1, .subscribe(topic: "news:mixed", since: nil, trace: i.isMultiple(of: 2))))
            _ = h.received(c)
            return c
        }
        h.send(.apiPublish(request: 1, topic: "news:mixed", id: "", data: "1"))
        let writes = h.actions.compactMap { if case .write(let frame, let clients) = $0 { (frame, clients) } else { nil } }
        #expect(writes.count == 2)
        #expect(writes.first?.1 == [subs[0], subs[2], subs[4]], "the untraced, in subscription order")
        #expect(writes.last?.1 == [subs[1], subs[3], subs[5]], "the traced, in subscription order")
        for (i, c) in subs.enumerated() {
            let got = h.received(c).compactMap { if case .publication(let p) = $0 { p } else { nil } }
            #expect(got.count == 1)
            #expect((got.first?.trace != nil) == (i % 2 == 1), "only the traced subscribers get hops")
        }
    }

    @Test("publications reach every subscriber in order with increasing offsets")
    func publishOrder() {
        var h = CoreHarness()
        let alice = h.connect(1, as: CoreHarness.user("alice"))
        let bob = h.connect(2, as: CoreHarness.user("bob"))
        #expect(subscribed(h.subscribe(alice, "room:x")) != nil)
        #expect(subscribed(h.subscribe(bob, "room:x")) != nil)
        _ = h.received(alice)
        for i in 1...4 { _ = h.publish(bob, "room:x", "{\"n\":\(i)}") }
        let got = publications(h.received(alice))
        #expect(got.map(\.data) == (1...4).map { "{\"n\":\($0)}" })
        #expect(got.map(\.position.offset) == [1, 2, 3, 4])
        #expect(Set(got.map(\.position.epoch)).count == 1)
    }

    @Test("recovery with an exact fit replays nothing and reports recovered")
    func recoveryExactFit() {
        var h = CoreHarness()
        let a = h.connect(1, as: CoreHarness.user("a"))
        for i in 1...3 { _ = h.publish(a, "room:r", "\(i)") }
        let now = h.core.position(of: "room:r")!
        let b = h.connect(2, as: CoreHarness.user("b"))
        let reply = subscribed(h.subscribe(b, "room:r", since: now))
        #expect(reply?.recovered == true)
        #expect(reply?.publications.isEmpty == true)
        #expect(reply?.position == now)
    }

    @Test("recovery replays exactly the publications after the position")
    func recoveryPartial() {
        var h = CoreHarness()
        let a = h.connect(1, as: CoreHarness.user("a"))
        for i in 1...5 { _ = h.publish(a, "room:r", "\(i)") }
        let epoch = h.core.position(of: "room:r")!.epoch
        let b = h.connect(2, as: CoreHarness.user("b"))
        let reply = subscribed(h.subscribe(b, "room:r", since: StreamPosition(epoch: epoch, offset: 2)))
        #expect(reply?.recovered == true)
        #expect(reply?.publications.map(\.position.offset) == [3, 4, 5])
    }

    @Test("a gap the ring no longer covers is reported as evicted")
    func recoveryEvicted() {
        var h = CoreHarness()
        let a = h.connect(1, as: CoreHarness.user("a"))
        for i in 1...12 { _ = h.publish(a, "room:r", "\(i)") }  // ring holds 5: offsets 8...12
        let epoch = h.core.position(of: "room:r")!.epoch
        let b = h.connect(2, as: CoreHarness.user("b"))
        let evicted = subscribed(h.subscribe(b, "room:r", since: StreamPosition(epoch: epoch, offset: 6)))
        #expect(evicted?.recovered == false)
        #expect(evicted?.failure == .evicted)
        #expect(evicted?.position.offset == 12)
        let c = h.connect(3, as: CoreHarness.user("c"))
        let edge = subscribed(h.subscribe(c, "room:r", since: StreamPosition(epoch: epoch, offset: 7)))
        #expect(edge?.recovered == true)
        #expect(edge?.publications.map(\.position.offset) == [8, 9, 10, 11, 12])
    }

    @Test("a position from another epoch is refused as epoch_changed")
    func recoveryWrongEpoch() {
        var h = CoreHarness()
        let a = h.connect(1, as: CoreHarness.user("a"))
        _ = h.publish(a, "room:r", "1")
        let b = h.connect(2, as: CoreHarness.user("b"))
        let reply = subscribed(h.subscribe(b, "room:r", since: StreamPosition(epoch: "eu-west.dead", offset: 1)))
        #expect(reply?.recovered == false)
        #expect(reply?.failure == .epochChanged)
    }

    @Test("a position ahead of the stream is refused")
    func recoveryAhead() {
        var h = CoreHarness()
        let a = h.connect(1, as: CoreHarness.user("a"))
        _ = h.publish(a, "room:r", "1")
        let epoch = h.core.position(of: "room:r")!.epoch
        let b = h.connect(2, as: CoreHarness.user("b"))
        #expect(subscribed(h.subscribe(b, "room:r", since: StreamPosition(epoch: epoch, offset: 9)))?.failure == .positionAhead)
    }

    @Test("publications older than the history TTL are evicted")
    func recoveryTTL() {
        var h = CoreHarness()
        let a = h.connect(1, as: CoreHarness.user("a"))
        _ = h.subscribe(a, "room:r")
        for i in 1...3 { _ = h.publish(a, "room:r", "\(i)") }
        let epoch = h.core.position(of: "room:r")!.epoch
        h.advance(.seconds(61))
        let b = h.connect(2, as: CoreHarness.user("b"))
        #expect(subscribed(h.subscribe(b, "room:r", since: StreamPosition(epoch: epoch, offset: 1)))?.failure == .evicted)
    }

    @Test("a restarted relay starts a new epoch, so old positions do not recover")
    func restartChangesEpoch() {
        var first = CoreHarness(seed: 1)
        let a = first.connect(1, as: CoreHarness.user("a"))
        _ = first.publish(a, "room:r", "1")
        var second = CoreHarness(seed: 2)
        let b = second.connect(1, as: CoreHarness.user("b"))
        _ = second.publish(b, "room:r", "1")
        #expect(first.core.position(of: "room:r")!.epoch != second.core.position(of: "room:r")!.epoch)
    }

    @Test("a retried idempotency id is acknowledged with the first position and delivered once")
    func idempotency() {
        var h = CoreHarness()
        let a = h.connect(1, as: CoreHarness.user("a"))
        _ = h.subscribe(a, "room:r")
        _ = h.received(a)
        let first = h.publish(a, "room:r", "1", id: "m-1")
        let second = h.publish(a, "room:r", "1", id: "m-1")
        guard case .reply(_, .published(_, let p1, false))? = first, case .reply(_, .published(_, let p2, true))? = second else {
            Issue.record("unexpected replies \(String(describing: first)) \(String(describing: second))")
            return
        }
        #expect(p1 == p2)
        h.send(.apiPublish(request: 1, topic: "room:r", id: "m-1", data: "1"))
        guard case .apiReply(1, .success(.published(_, _, true)))? = h.actions.first else {
            Issue.record("API retry not deduplicated: \(h.actions)")
            return
        }
        #expect(h.core.stats.publications == 1)
    }

    @Test("anonymous clients only reach namespaces that allow them; tokens need a matching pattern")
    func permissions() {
        var h = CoreHarness()
        let anon = h.connect(1, as: .anonymous)
        #expect(errorCode(h.subscribe(anon, "room:x")) == .permissionDenied)
        #expect(subscribed(h.subscribe(anon, "news:x")) != nil)
        #expect(errorCode(h.publish(anon, "news:x", "1")) == .permissionDenied)
        var narrow = CoreHarness.user("n")
        narrow.subscribe = [TopicPattern("room:public-*")]
        let n = h.connect(2, as: narrow)
        #expect(errorCode(h.subscribe(n, "room:secret")) == .permissionDenied)
        #expect(subscribed(h.subscribe(n, "room:public-1")) != nil)
        #expect(errorCode(h.subscribe(n, "nope:x")) == .unknownNamespace)
        #expect(errorCode(h.subscribe(n, "bad topic")) == .invalidTopic)
    }

    @Test("commands before connect are refused, and a refused token closes with 4001")
    func authFlow() {
        var h = CoreHarness()
        let c = ClientID(1)
        h.send(.opened(c, .websocket))
        h.send(.command(c, ref: 1, .subscribe(topic: "room:x", since: nil)))
        #expect(errorCode(h.received(c).first) == .notConnected)
        h.send(.command(c, ref: 2, .connect(token: "bad")))
        guard case .verifyToken(c, 2, "bad")? = h.actions.first else {
            Issue.record("expected a token check, got \(h.actions)")
            return
        }
        h.send(.authenticationFailed(c, ref: 2, .invalid("bad signature")))
        #expect(errorCode(h.received(c).first) == .unauthorized)
        guard case .close(c, .unauthorized)? = h.actions.last else {
            Issue.record("expected close 4001, got \(h.actions)")
            return
        }
    }

    @Test("an expired token is refused with token_expired, and a live one is closed when it expires")
    func tokenExpiry() {
        var h = CoreHarness()
        let c = ClientID(1)
        h.send(.opened(c, .websocket))
        h.send(.command(c, ref: 1, .connect(token: "t")))
        h.send(.authenticationFailed(c, ref: 1, .expired))
        #expect(errorCode(h.received(c).first) == .tokenExpired)
        let d = h.connect(2, as: CoreHarness.user("d", expiresAt: h.now + .seconds(30)))
        h.advance(.seconds(29))
        #expect(h.actions.isEmpty)
        h.advance(.seconds(2))
        guard case .close(d, .tokenExpired)? = h.actions.last else {
            Issue.record("expected close at expiry, got \(h.actions)")
            return
        }
    }

    @Test("a WebSocket that never connects is closed at the connect timeout")
    func connectTimeout() {
        var limits = RelayLimits()
        limits.connectTimeout = .seconds(5)
        var h = CoreHarness(limits: limits)
        let c = ClientID(1)
        h.send(.opened(c, .websocket))
        #expect(h.core.nextDeadline == h.now + .seconds(5))
        h.advance(.seconds(4))
        #expect(h.actions.isEmpty)
        h.advance(.seconds(1))
        guard case .close(c, .connectTimeout)? = h.actions.first else {
            Issue.record("expected connect timeout, got \(h.actions)")
            return
        }
    }

    @Test("presence tracks joins and leaves, counts users once, and sends join/leave events")
    func presence() {
        var h = CoreHarness()
        let a1 = h.connect(1, as: CoreHarness.user("alice"))
        let a2 = h.connect(2, as: CoreHarness.user("alice"))
        let b = h.connect(3, as: CoreHarness.user("bob"))
        _ = h.subscribe(a1, "room:p")
        _ = h.received(a1)
        _ = h.subscribe(a2, "room:p")
        _ = h.subscribe(b, "room:p")
        let joins = h.received(a1).compactMap { if case .join(_, let e) = $0 { e.user } else { nil } }
        #expect(joins == ["alice", "bob"])
        h.send(.command(b, ref: 1, .presenceStats(topic: "room:p")))
        #expect(h.received(b).contains(.reply(ref: 1, .presenceStats(topic: "room:p", clients: 3, users: 2))))
        h.send(.command(b, ref: 2, .presence(topic: "room:p", limit: 2)))
        guard case .reply(2, .presence(_, let entries, let total))? = h.received(b).first else {
            Issue.record("no presence reply")
            return
        }
        #expect(entries.count == 2)
        #expect(total == 3)
        h.send(.closed(a2))
        let leaves = h.received(a1).compactMap { if case .leave(_, let e) = $0 { e.client } else { nil } }
        #expect(leaves == [a2])
        h.send(.command(b, ref: 3, .presenceStats(topic: "room:p")))
        #expect(h.received(b).contains(.reply(ref: 3, .presenceStats(topic: "room:p", clients: 2, users: 2))))
    }

    @Test("a client that stops reading is closed as a slow consumer; the others keep everything")
    func slowConsumer() {
        var limits = RelayLimits()
        limits.maxQueueBytes = 64
        limits.maxFrameBytes = 16
        var h = CoreHarness(limits: limits)
        let (slow, fast) = h.twoSubscribers("news:n")
        let pub = h.connect(3, as: CoreHarness.user("pub"))
        // It stops reading: its socket fills up.
        h.send(.writable(slow, false))
        var fastGot: [Publication] = []
        var closed = false
        for i in 1...40 {
            h.send(.apiPublish(request: UInt64(i), topic: "news:n", id: "", data: "\(i)"))
            if h.actions.contains(where: { if case .close(slow, .slowConsumer) = $0 { true } else { false } }) { closed = true }
            fastGot += publications(h.received(fast))
        }
        _ = h.received(pub)
        #expect(h.core.queuedBytes == 0)
        #expect(closed)
        #expect(h.core.stats.slowConsumerCloses == 1)
        #expect(fastGot.map(\.position.offset) == Array(1...40))
    }

    @Test("while a socket is full its frames wait in the queue; when it drains they are flushed first, in order, then frames go straight out again")
    func fullSocketQueues() {
        var h = CoreHarness()
        let (sub, other) = h.twoSubscribers("news:f")
        h.send(.writable(sub, false))
        #expect(h.actions.isEmpty)
        for i in 1...3 {
            h.send(.apiPublish(request: UInt64(i), topic: "news:f", id: "", data: "\(i)"))
            let writes = h.actions.compactMap { if case .write(_, let clients) = $0 { clients } else { nil } }
            #expect(writes == [[other]], "only the writable socket is written to")
            #expect(!h.actions.contains { if case .flush = $0 { true } else { false } }, "a full socket is not flushed")
        }
        #expect(h.core.queuedBytes > 0)
        h.send(.writable(sub, true))
        guard case .flush(sub)? = h.actions.first, h.actions.count == 1 else {
            Issue.record("draining did not flush the queue: \(h.actions)")
            return
        }
        // Until the driver takes the queue, new frames queue behind it.
        h.send(.apiPublish(request: 4, topic: "news:f", id: "", data: "4"))
        #expect(h.actions.compactMap { if case .write(_, let clients) = $0 { clients } else { nil } } == [[other]])
        #expect(publications(h.received(sub)).map(\.position.offset) == [1, 2, 3, 4])
        #expect(h.core.queuedBytes == 0)
        h.send(.apiPublish(request: 5, topic: "news:f", id: "", data: "5"))
        #expect(h.actions.compactMap { if case .write(_, let clients) = $0 { clients } else { nil } } == [[sub, other]])
        #expect(publications(h.received(sub)).map(\.position.offset) == [5])
        #expect(publications(h.received(other)).map(\.position.offset) == [1, 2, 3, 4, 5])
        #expect(h.core.invariantFailures.isEmpty, "\(h.core.invariantFailures)")
    }

    @Test("under pressure volatile events coalesce, then drop, before anything durable is refused")
    func outboxShedding() {
        var box = Outbox(maxBytes: 100)
        func frame(_ n: Int) -> OutboundFrame { OutboundFrame(bytes: .init(repeating: 0, count: n), acceptedAt: nil) }
        #expect(box.enqueue(frame(40)) == .queued)
        #expect(box.enqueue(frame(10), volatileKey: "typing/a") == .queued)
        #expect(box.enqueue(frame(10), volatileKey: "typing/a") == .coalesced)
        #expect(box.queuedBytes == 50)
        #expect(box.enqueue(frame(45)) == .queued)
        #expect(box.enqueue(frame(10), volatileKey: "typing/b") == .droppedVolatile)
        #expect(box.queuedBytes == 85)
        #expect(box.enqueue(frame(30)) == .overflow)
        var taken: [Int] = []
        box.take { taken.append($0.bytes.readableBytes) }
        #expect(taken == [40, 45])
        #expect(box.queuedBytes == 0)
    }

    @Test("new connections beyond the accept rate are refused with a reconnect delay")
    func acceptRate() {
        var limits = RelayLimits()
        limits.acceptRatePerSecond = 1
        limits.acceptBurst = 2
        var h = CoreHarness(limits: limits)
        h.send(.opened(ClientID(1), .websocket))
        h.send(.opened(ClientID(2), .websocket))
        h.send(.opened(ClientID(3), .websocket))
        guard case .close(ClientID(3), .connectionRateLimited)? = h.actions.last else {
            Issue.record("third connection not limited: \(h.actions)")
            return
        }
        guard case .disconnect(.connectionRateLimited, let after?)? = h.received(ClientID(3)).first else {
            Issue.record("no disconnect advice")
            return
        }
        #expect(after <= limits.drainWindow)
        h.now = h.now + .seconds(1)
        h.send(.opened(ClientID(4), .websocket))
        #expect(h.actions.isEmpty)
    }

    @Test("publishing faster than the per-client rate is refused")
    func publishRate() {
        var limits = RelayLimits()
        limits.publishRatePerSecond = 1
        limits.publishBurst = 3
        var h = CoreHarness(limits: limits)
        let a = h.connect(1, as: CoreHarness.user("a"))
        let codes = (1...5).map { errorCode(h.publish(a, "room:r", "\($0)")) }
        #expect(codes == [nil, nil, nil, .rateLimited, .rateLimited])
    }

    @Test("subscription limits hold per client and per topic")
    func subscriptionLimits() {
        var limits = RelayLimits()
        limits.maxSubscriptionsPerClient = 2
        var ns = CoreHarness.defaultNamespaces
        ns["room"]!.maxSubscribers = 2
        var h = CoreHarness(namespaces: ns, limits: limits)
        let a = h.connect(1, as: CoreHarness.user("a"))
        _ = h.subscribe(a, "room:1")
        _ = h.subscribe(a, "room:2")
        #expect(errorCode(h.subscribe(a, "room:3")) == .limitExceeded)
        #expect(errorCode(h.subscribe(a, "room:1")) == .alreadySubscribed)
        let b = h.connect(2, as: CoreHarness.user("b"))
        let c = h.connect(3, as: CoreHarness.user("c"))
        #expect(subscribed(h.subscribe(b, "room:1")) != nil)
        #expect(errorCode(h.subscribe(c, "room:1")) == .limitExceeded)
    }

    @Test("draining tells every client to reconnect within the window, the same way for the same seed")
    func drain() {
        func run(seed: UInt64) -> [Duration] {
            var h = CoreHarness(seed: seed)
            let clients = (1...20).map { h.connect(UInt64($0), as: CoreHarness.user("u\($0)")) }
            h.send(.drain)
            let closes = h.actions.filter { if case .close(_, .shutdown) = $0 { true } else { false } }
            #expect(closes.count == 20)
            h.send(.opened(ClientID(99), .websocket))
            #expect(h.actions.contains { if case .close(ClientID(99), .shutdown) = $0 { true } else { false } })
            return clients.compactMap { c in
                if case .disconnect(.shutdown, let after?)? = h.received(c).last { after } else { nil }
            }
        }
        let delays = run(seed: 7)
        #expect(delays.count == 20)
        #expect(delays.allSatisfy { $0 >= .zero && $0 <= RelayLimits().drainWindow })
        #expect(Set(delays).count > 10)
        #expect(run(seed: 7) == delays)
    }

    @Test("a long-poll waits for the next publication, or answers empty at its timeout")
    func longPoll() {
        var h = CoreHarness()
        let start = ClientID(50)
        h.send(.poll(start, .anonymous, topics: [("news:p", nil)], timeout: .seconds(10)))
        guard case .pollReply(start, let first)? = h.actions.first else {
            Issue.record("first poll should answer at once")
            return
        }
        let cursor = first.topics[0].position
        let waiting = ClientID(51)
        h.send(.poll(waiting, .anonymous, topics: [("news:p", cursor)], timeout: .seconds(10)))
        #expect(h.actions.isEmpty)
        h.now = h.now + .seconds(1)
        h.send(.apiPublish(request: 1, topic: "news:p", id: "", data: "\"hi\""))
        guard let reply = h.actions.compactMap({ if case .pollReply(waiting, let r) = $0 { r } else { nil } }).first else {
            Issue.record("poll not answered by publication: \(h.actions)")
            return
        }
        #expect(reply.publications.map(\.data) == ["\"hi\""])
        #expect(reply.topics[0].position.offset == cursor.offset + 1)
        let idle = ClientID(52)
        h.send(.poll(idle, .anonymous, topics: [("news:p", reply.topics[0].position)], timeout: .seconds(10)))
        h.advance(.seconds(9))
        #expect(h.actions.isEmpty)
        h.advance(.seconds(1))
        guard case .pollReply(idle, let empty)? = h.actions.first else {
            Issue.record("poll did not time out")
            return
        }
        #expect(empty.publications.isEmpty)
        #expect(h.core.stats.connections == 0)
    }

    @Test("a refused long-poll leaves no topic behind, and an answered one is swept after the linger")
    func pollLeavesNothing() {
        var h = CoreHarness()
        h.send(.poll(ClientID(1), .anonymous, topics: [("news:a", nil), ("nope:b", nil)], timeout: .seconds(5)))
        #expect(h.core.stats.topics == 0)
        h.send(.poll(ClientID(2), .anonymous, topics: [("news:c", nil)], timeout: .seconds(5)))
        #expect(h.core.stats.topics == 1)
        h.advance(RelayLimits().streamLinger)
        #expect(h.core.stats.topics == 0)
    }

    @Test("deadlines of departed clients do not pile up")
    func deadlineCompaction() {
        var h = CoreHarness()
        for i in 1...20_000 {
            let c = h.connect(UInt64(i), as: CoreHarness.user("u", expiresAt: h.now + .seconds(86_400)))
            h.send(.closed(c))
        }
        #expect(h.core.pendingDeadlines < 5_000)
    }

    @Test("a closed client leaves no subscriptions or presence behind, and its idle topic goes after the linger")
    func cleanup() {
        var ns = CoreHarness.defaultNamespaces
        ns["room"]!.historySize = 0
        var h = CoreHarness(namespaces: ns)
        let a = h.connect(1, as: CoreHarness.user("a"))
        _ = h.subscribe(a, "room:gone")
        #expect(h.core.stats.topics == 1)
        h.send(.closed(a))
        #expect(h.core.stats.subscriptions == 0)
        #expect(h.core.stats.connections == 0)
        #expect(h.core.stats.topics == 1)
        h.advance(RelayLimits().streamLinger)
        #expect(h.core.stats.topics == 0)
    }
}

@Suite("HistoryRing and TopicPattern")
struct HistoryRingTests {
    func pub(_ o: UInt64, at t: TernInstant = .zero) -> Publication {
        Publication(topic: "t:t", position: StreamPosition(epoch: "e", offset: o), id: "", data: "\(o)", user: nil, acceptedAt: t)
    }

    @Test("the ring keeps the newest entries and serves contiguous ranges")
    func ring() {
        var ring = HistoryRing(capacity: 3, ttl: .seconds(10))
        for o in UInt64(1)...5 { ring.append(pub(o)) }
        let current = StreamPosition(epoch: "e", offset: 5)
        #expect(ring.publications(after: StreamPosition(epoch: "e", offset: 2), current: current, now: .zero)
            == .recovered([pub(3), pub(4), pub(5)]))
        #expect(ring.publications(after: StreamPosition(epoch: "e", offset: 1), current: current, now: .zero) == .failed(.evicted))
        #expect(ring.publications(after: StreamPosition(epoch: "e", offset: 5), current: current, now: .zero) == .recovered([]))
    }

    @Test("a namespace without history cannot recover a gap")
    func noHistory() {
        var ring = HistoryRing(capacity: 0, ttl: .seconds(10))
        ring.append(pub(1))
        #expect(ring.publications(after: StreamPosition(epoch: "e", offset: 0), current: StreamPosition(epoch: "e", offset: 1), now: .zero) == .failed(.noHistory))
    }

    @Test("patterns match with * anywhere")
    func patterns() {
        #expect(TopicPattern("room:*").matches("room:a"))
        #expect(!TopicPattern("room:*").matches("news:a"))
        #expect(TopicPattern("*:public").matches("room:public"))
        #expect(TopicPattern("room:*-team-*").matches("room:eu-team-1"))
        #expect(!TopicPattern("room:a").matches("room:ab"))
        #expect(TopicPattern("*").matches("anything:at-all"))
    }
}
