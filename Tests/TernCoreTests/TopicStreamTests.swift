import Testing
@testable import TernCore

/// The failover and recovery cases of catching up a child region, decided from one topic's stream
/// state with no mesh and no links (`TopicStream.catchUpPlan`).
@Suite("Catching up a child region, from the topic's stream alone")
struct TopicStreamTests {
    static let now = TernInstant.zero + .seconds(10)

    /// A stream at `epoch`, holding the publications at `offsets` (sequenced at `now`).
    static func stream(_ epoch: String, holding offsets: [UInt64], at offset: UInt64? = nil) -> TopicStream {
        var t = TopicStream(epoch: epoch, history: HistoryRing(capacity: 100, ttl: .seconds(300)),
                            idempotency: IdempotencyCache(capacity: 100, window: .seconds(60)))
        for o in offsets { t.history.append(pub(epoch, o)) }
        t.offset = offset ?? offsets.last ?? 0
        return t
    }

    static func pub(_ epoch: String, _ offset: UInt64) -> Publication {
        Publication(topic: "news:x", position: StreamPosition(epoch: epoch, offset: offset), id: "\(epoch)/\(offset)", data: "1",
                    user: nil, acceptedAt: now)
    }

    static func at(_ epoch: String, _ offset: UInt64) -> StreamPosition { StreamPosition(epoch: epoch, offset: offset) }

    @Test("a child on this epoch gets what it missed, or a gap when the ring no longer holds it")
    func sameEpoch() {
        var t = Self.stream("a.1", holding: [3, 4, 5])
        #expect(t.catchUpPlan(since: Self.at("a.1", 3), fork: nil, isHome: true, now: Self.now)
            == .serve(replay: [], switchFrom: nil, switchTo: nil, then: [Self.pub("a.1", 4), Self.pub("a.1", 5)], at: Self.at("a.1", 5)))
        #expect(t.catchUpPlan(since: Self.at("a.1", 1), fork: nil, isHome: true, now: Self.now) == .gap(at: Self.at("a.1", 5), reason: .evicted))
        #expect(t.catchUpPlan(since: nil, fork: nil, isHome: true, now: Self.now)
            == .serve(replay: [], switchFrom: nil, switchTo: nil, then: [], at: Self.at("a.1", 5)))
    }

    @Test("after a failover, a child still on the old epoch moves across from its fork")
    func fromFork() {
        // This region took over in b.2; the child left a.1 at offset 7 and stands further on in a.1's failover.
        var t = Self.stream("b.2", holding: [1, 2])
        #expect(t.catchUpPlan(since: Self.at("c.3", 4), fork: Self.at("b.2", 1), isHome: true, now: Self.now)
            == .serve(replay: [], switchFrom: Self.at("c.3", 4), switchTo: Self.at("b.2", 1), then: [Self.pub("b.2", 2)], at: Self.at("b.2", 2)))
    }

    @Test("a child in the epoch this region forked from gets the rest of it from the kept ring, then the switch")
    func fromOwnFork() {
        var t = Self.stream("b.2", holding: [1, 2])
        t.lineage = .forked(at: Self.at("a.1", 7), delivered: [:])
        var prior = HistoryRing(capacity: 100, ttl: .seconds(300))
        for o in 5...7 as ClosedRange<UInt64> { prior.append(Self.pub("a.1", o)) }
        t.priorHistory = prior
        #expect(t.catchUpPlan(since: Self.at("a.1", 5), fork: nil, isHome: true, now: Self.now)
            == .serve(replay: [Self.pub("a.1", 6), Self.pub("a.1", 7)], switchFrom: Self.at("a.1", 7), switchTo: Self.at("b.2", 0),
                      then: [Self.pub("b.2", 1), Self.pub("b.2", 2)], at: Self.at("b.2", 2)))
        // Past the fork it holds what this region never had (it followed a.1's replica further): it keeps that
        // and moves across to this epoch from where it stands; the home sequences what it lacks again by id.
        #expect(t.catchUpPlan(since: Self.at("a.1", 9), fork: nil, isHome: true, now: Self.now)
            == .serve(replay: [], switchFrom: Self.at("a.1", 9), switchTo: Self.at("b.2", 0),
                      then: [Self.pub("b.2", 1), Self.pub("b.2", 2)], at: Self.at("b.2", 2)))
        #expect(t.catchUpPlan(since: Self.at("a.1", 9), fork: nil, isHome: false, now: Self.now)
            == .serve(replay: [], switchFrom: Self.at("a.1", 9), switchTo: Self.at("b.2", 0),
                      then: [Self.pub("b.2", 1), Self.pub("b.2", 2)], at: Self.at("b.2", 2)))
        // Those publications past the fork are what this failover home sequences again; the rest it has.
        #expect(t.isUnrecovered(Self.pub("a.1", 8)))
        #expect(!t.isUnrecovered(Self.pub("a.1", 7)))
        #expect(!t.isUnrecovered(Self.pub("b.2", 3)))
        // When the ring of this epoch no longer starts at its beginning, the child cannot be moved across.
        var evicted = Self.stream("b.2", holding: [2])
        evicted.lineage = .forked(at: Self.at("a.1", 7), delivered: [:])
        #expect(evicted.catchUpPlan(since: Self.at("a.1", 9), fork: nil, isHome: true, now: Self.now)
            == .gap(at: Self.at("b.2", 2), reason: .epochChanged))
    }

    @Test("a restarted home moves children across the adoption jump: behind it after what it recovered, at it directly, past it from where they stand")
    func acrossTheJump() {
        let jump = RelayCore.adoptionJump
        // Recovered 1...3 of a.1, continued at 3 + jump, sequenced one more since.
        var t = Self.stream("a.1", holding: [1, 2, 3, 3 + jump + 1])
        t.start = .continued(from: Self.at("a.1", 3))
        let across = Self.at("a.1", 3 + jump)
        let now = Self.at("a.1", 3 + jump + 1)
        #expect(t.catchUpPlan(since: Self.at("a.1", 1), fork: nil, isHome: true, now: Self.now)
            == .serve(replay: [Self.pub("a.1", 2), Self.pub("a.1", 3)], switchFrom: Self.at("a.1", 3), switchTo: across,
                      then: [Self.pub("a.1", 3 + jump + 1)], at: now))
        #expect(t.catchUpPlan(since: Self.at("a.1", 3), fork: nil, isHome: true, now: Self.now)
            == .serve(replay: [], switchFrom: Self.at("a.1", 3), switchTo: across, then: [Self.pub("a.1", 3 + jump + 1)], at: now))
        // Past the point: the home sequences what the child holds again, so the child moves across from where it stands.
        #expect(t.catchUpPlan(since: Self.at("a.1", 5), fork: nil, isHome: true, now: Self.now)
            == .serve(replay: [], switchFrom: Self.at("a.1", 5), switchTo: across, then: [Self.pub("a.1", 3 + jump + 1)], at: now))
        // A cache that is not the home cannot have those publications sequenced again: the child gets a gap.
        #expect(t.catchUpPlan(since: Self.at("a.1", 5), fork: nil, isHome: false, now: Self.now) == .gap(at: now, reason: .evicted))
    }

    @Test("a child where this region stood before its last epoch switch makes the same switch")
    func lastSwitch() {
        var t = Self.stream("a.1", holding: [40, 41], at: 41)
        t.lastSwitch = (from: Self.at("b.2", 12), to: Self.at("a.1", 39))
        #expect(t.catchUpPlan(since: Self.at("b.2", 12), fork: nil, isHome: false, now: Self.now)
            == .serve(replay: [], switchFrom: Self.at("b.2", 12), switchTo: Self.at("a.1", 39),
                      then: [Self.pub("a.1", 40), Self.pub("a.1", 41)], at: Self.at("a.1", 41)))
        // A child that left a.1 at 39 or later may make it too.
        #expect(t.catchUpPlan(since: Self.at("b.2", 12), fork: Self.at("a.1", 39), isHome: false, now: Self.now)
            == .serve(replay: [], switchFrom: Self.at("b.2", 12), switchTo: Self.at("a.1", 39),
                      then: [Self.pub("a.1", 40), Self.pub("a.1", 41)], at: Self.at("a.1", 41)))
        // One that left a.1 at 30 lacks 31...39, which this ring no longer holds: not that switch, but a gap.
        #expect(t.catchUpPlan(since: Self.at("b.2", 12), fork: Self.at("a.1", 30), isHome: false, now: Self.now)
            == .gap(at: Self.at("a.1", 41), reason: .epochChanged))
        // A switch across a restarted home's adoption jump: a child that left a.1 where the home continued
        // from lacks nothing, since no offset lies between that point and the jump.
        let jump = RelayCore.adoptionJump
        var u = Self.stream("a.1", holding: [jump + 16], at: jump + 16)
        u.lastSwitch = (from: Self.at("b.2", 16), to: Self.at("a.1", jump + 15))
        #expect(u.catchUpPlan(since: Self.at("b.2", 16), fork: Self.at("a.1", 15), isHome: false, now: Self.now)
            == .serve(replay: [], switchFrom: Self.at("b.2", 16), switchTo: Self.at("a.1", jump + 15),
                      then: [Self.pub("a.1", jump + 16)], at: Self.at("a.1", jump + 16)))
    }
}

@Suite("A topic's lineage across failovers and the merge")
struct LineageTests {
    static let now = TernInstant.zero + .seconds(10)

    @Test("a takeover forks where the stream stands; a later failover keeps the first fork and what was delivered since")
    func takeover() {
        var t = TopicStreamTests.stream("a.1", holding: [1, 2])
        t.canonicalHome = "a"
        t.forkForTakeover()
        #expect(t.fork == TopicStreamTests.at("a.1", 2))
        t.epoch = "b.2"
        t.offset = 0
        t.noteDeliveredInFailover("p1", serial: 3, inMesh: true)
        t.forkForTakeover()
        #expect(t.fork == TopicStreamTests.at("a.1", 2))
        #expect(t.lineage.delivered == ["p1": 3])
    }

    @Test("on the canonical epoch nothing is remembered for a merge; in a failover epoch joined without a fork, it is")
    func deliveredInFailover() {
        var t = TopicStreamTests.stream("a.1", holding: [1])
        t.canonicalHome = "a"
        t.noteDeliveredInFailover("p1", serial: 1, inMesh: true)
        #expect(t.lineage.delivered.isEmpty)
        t.epoch = "b.2"
        t.noteDeliveredInFailover("p2", serial: 2, inMesh: true)
        #expect(t.fork == nil)
        #expect(t.lineage.delivered == ["p2": 2])
    }

    @Test("back at the fork's epoch, what was delivered in the failover becomes the merge window, which ends on time")
    func merge() {
        var t = TopicStreamTests.stream("b.2", holding: [1])
        t.canonicalHome = "a"
        t.lineage = .forked(at: TopicStreamTests.at("a.1", 7), delivered: ["p1": 4])
        t.noteEpochSwitch(from: TopicStreamTests.at("b.2", 1), to: TopicStreamTests.at("a.1", 9), canonical: "a.", serial: 6,
                          mergeUntil: Self.now + .seconds(60))
        #expect(t.fork == nil)
        #expect(t.mergeMark(of: "p1", now: Self.now) == 4)
        t.mergeDelivered("p1", serial: 8)
        #expect(t.mergeMark(of: "p1", now: Self.now) == 8)
        #expect(t.mergeMark(of: "p1", now: Self.now + .seconds(61)) == nil)
        #expect(t.merge == nil)
    }

    /// A region that restarted inside the failover epoch b.2 (no fork), holding b.2/3 and b.2/4, switched
    /// back to the canonical a.1 at subscription serial 5.
    static func restartedInFailoverAndMerged() -> TopicStream {
        var t = TopicStreamTests.stream("b.2", holding: [3, 4])
        t.canonicalHome = "a"
        t.noteEpochSwitch(from: TopicStreamTests.at("b.2", 4), to: TopicStreamTests.at("a.1", 9), canonical: "a.", serial: 5,
                          mergeUntil: now + .seconds(60))
        return t
    }

    @Test("a region that restarted inside a failover epoch merges what its ring holds of it")
    func mergeWithoutFork() {
        var t = Self.restartedInFailoverAndMerged()
        #expect(t.mergeMark(of: "b.2/3", now: Self.now) == 5)
        #expect(t.mergeMark(of: "b.2/4", now: Self.now) == 5)
    }

    @Test("switching between two other epochs forks at the first; a gap forgets the fork")
    func switchAndGap() {
        var t = TopicStreamTests.stream("a.1", holding: [5])
        t.canonicalHome = "a"
        t.noteEpochSwitch(from: TopicStreamTests.at("a.1", 5), to: TopicStreamTests.at("c.3", 0), canonical: "a.", serial: 1,
                          mergeUntil: Self.now)
        #expect(t.fork == TopicStreamTests.at("a.1", 5))
        t.forgetLineage()
        #expect(t.fork == nil)
        #expect(t.lastSwitch == nil)
    }
}

@Suite("Who gets a publication a region delivers")
struct DeliveryDecisionTests {
    static let now = TernInstant.zero + .seconds(10)

    @Test("the first delivery goes to everyone; the same id again goes only to subscribers that joined since, and not to those that resumed past it")
    func again() {
        var t = TopicStreamTests.stream("a.1", holding: [1])
        t.canonicalHome = "a"
        let p = TopicStreamTests.pub("a.1", 2)
        #expect(t.delivery(of: p, sequencedHere: false, inMesh: true, serial: 4, now: Self.now) == .everyone)
        var again = p
        again.position = TopicStreamTests.at("a.1", 9)
        #expect(t.delivery(of: again, sequencedHere: false, inMesh: true, serial: 6, now: Self.now)
            == .again(toSubscribersAfter: 4, firstAt: TopicStreamTests.at("a.1", 2)))
        // Now everyone here (as of serial 6) has it.
        #expect(t.delivery(of: again, sequencedHere: false, inMesh: true, serial: 7, now: Self.now)
            == .again(toSubscribersAfter: 6, firstAt: TopicStreamTests.at("a.1", 2)))
    }

    @Test("a re-sequenced failover publication this region never saw goes to all but the subscribers that resumed past where it was first sequenced")
    func resequencedUnknown() {
        var t = TopicStreamTests.stream("a.1", holding: [1])
        t.canonicalHome = "a"
        var p = TopicStreamTests.pub("a.1", 12)
        p.firstPosition = TopicStreamTests.at("b.2", 3)
        #expect(t.delivery(of: p, sequencedHere: false, inMesh: true, serial: 5, now: Self.now)
            == .again(toSubscribersAfter: 0, firstAt: TopicStreamTests.at("b.2", 3)))
    }

    @Test("within the merge window, a re-sequenced publication names where it was first sequenced, so subscribers that had it up to there skip it")
    func mergeWindowFirstAt() {
        var t = LineageTests.restartedInFailoverAndMerged()
        var p = TopicStreamTests.pub("a.1", 10)
        p.id = "b.2/4"
        p.firstPosition = TopicStreamTests.at("b.2", 4)
        // A subscriber that joined after serial 5 but whose subscribe reply recovered it up to b.2/4 has it.
        #expect(t.delivery(of: p, sequencedHere: false, inMesh: true, serial: 7, now: Self.now)
            == .again(toSubscribersAfter: 5, firstAt: TopicStreamTests.at("b.2", 4)))
        // A publisher's retry carries no first position: where this region delivered the id stands in for it.
        var u = TopicStreamTests.stream("b.2", holding: [3])
        u.canonicalHome = "a"
        let first = TopicStreamTests.pub("b.2", 3)
        #expect(u.delivery(of: first, sequencedHere: false, inMesh: true, serial: 2, now: Self.now) == .everyone)
        u.noteEpochSwitch(from: TopicStreamTests.at("b.2", 3), to: TopicStreamTests.at("a.1", 9), canonical: "a.", serial: 5,
                          mergeUntil: Self.now + .seconds(60))
        var retry = TopicStreamTests.pub("a.1", 10)
        retry.id = first.id
        #expect(u.delivery(of: retry, sequencedHere: false, inMesh: true, serial: 7, now: Self.now)
            == .again(toSubscribersAfter: 2, firstAt: TopicStreamTests.at("b.2", 3)))
    }

    @Test("publications without an id, and a home's own, go to everyone")
    func plain() {
        var t = TopicStreamTests.stream("a.1", holding: [1])
        t.canonicalHome = "a"
        var p = TopicStreamTests.pub("a.1", 2)
        p.id = ""
        #expect(t.delivery(of: p, sequencedHere: false, inMesh: true, serial: 1, now: Self.now) == .everyone)
        let q = TopicStreamTests.pub("a.1", 3)
        #expect(t.delivery(of: q, sequencedHere: true, inMesh: true, serial: 1, now: Self.now) == .everyone)
    }
}

/// A restarted home recovering its own epoch from the regions that hold it, on the stream alone
/// (`TopicStream.beginRecovery` … `continueRecoveredEpoch`).
@Suite("A restarted home recovering its epoch, from the topic's stream alone")
struct HomeRecoveryTests {
    static let now = TopicStreamTests.now
    static func at(_ epoch: String, _ offset: UInt64) -> StreamPosition { TopicStreamTests.at(epoch, offset) }
    static func pub(_ epoch: String, _ offset: UInt64) -> Publication { TopicStreamTests.pub(epoch, offset) }

    /// A fresh home's stream (a new epoch of its own, nothing in it) that a child told about `a.1/3`.
    static func recovering() -> TopicStream {
        var t = TopicStreamTests.stream("a.9", holding: [])
        t.start = .fresh
        t.canonicalHome = "a"
        t.beginRecovery(held: at("a.1", 3), deadline: now + .seconds(5))
        return t
    }

    @Test("the home stands where the child held, unsynced, and asks each reachable region once")
    func asks() {
        var t = Self.recovering()
        #expect(t.position == Self.at("a.1", 3))
        #expect(!t.synced)
        #expect(t.recovery?.held == Self.at("a.1", 3))
        let askedFirst = t.ask(["b", "c"])
        #expect(askedFirst == ["b", "c"])
        let askedThen = t.ask(["c", "d"])
        #expect(askedThen == ["d"])
        t.noteHeld(Self.at("a.1", 5))
        t.noteHeld(Self.at("a.1", 4))
        t.noteHeld(Self.at("z.1", 9))
        #expect(t.recovery?.held == Self.at("a.1", 5))
    }

    @Test("recovered publications of the epoch go into the ring in order; others are ignored")
    func recovered() {
        var t = Self.recovering()
        _ = t.ask(["b"])
        t.recovered(Self.pub("a.1", 1), serial: 7, now: Self.now)
        t.recovered(Self.pub("a.1", 2), serial: 7, now: Self.now)
        t.recovered(Self.pub("a.1", 2), serial: 7, now: Self.now)
        t.recovered(Self.pub("a.1", 1), serial: 7, now: Self.now)
        t.recovered(Self.pub("x.5", 3), serial: 7, now: Self.now)
        #expect(t.history.all.map(\.position) == [Self.at("a.1", 1), Self.at("a.1", 2)])
        // A retried publish of a recovered id is a duplicate at its recovered position.
        #expect(t.idempotency.entry(of: "a.1/2", now: Self.now)?.position == Self.at("a.1", 2))
        #expect(t.idempotency.entry(of: "x.5/3", now: Self.now) == nil)
    }

    @Test("only the regions asked end the recovery, and not before the successor has answered")
    func answered() {
        var t = Self.recovering()
        _ = t.ask(["b", "c"])
        let byUnasked = t.recoveryAnswered(by: "d", successor: "b")
        #expect(!byUnasked)
        #expect(t.recovery?.answered.isEmpty == true)
        let byAnother = t.recoveryAnswered(by: "c", successor: "b")
        #expect(!byAnother)
        let bySuccessor = t.recoveryAnswered(by: "b", successor: "b")
        #expect(bySuccessor)
        // With the successor out of reach (not asked), every asked region is not enough.
        var u = Self.recovering()
        _ = u.ask(["c"])
        let withoutSuccessor = u.recoveryAnswered(by: "c", successor: "b")
        #expect(!withoutSuccessor)
    }

    @Test("the epoch continues past the adoption jump from the newest position known, and what lies between is sequenced again")
    func continues() {
        let jump = RelayCore.adoptionJump
        var t = Self.recovering()
        t.recovered(Self.pub("a.1", 1), serial: 1, now: Self.now)
        t.recovered(Self.pub("a.1", 2), serial: 1, now: Self.now)
        t.recovered(Self.pub("a.1", 4), serial: 1, now: Self.now)
        let continued = t.continueRecoveredEpoch()
        #expect(continued)
        #expect(t.recovery == nil)
        #expect(t.adoptedFrom == Self.at("a.1", 4))
        #expect(t.position == Self.at("a.1", 4 + jump))
        #expect(t.synced && !t.resyncing)
        let continuedAgain = t.continueRecoveredEpoch()
        #expect(!continuedAgain)
        // A child held a.1/6, which no asked region had: acknowledged, so it is sequenced again.
        #expect(t.isUnrecovered(Self.pub("a.1", 6)))
        #expect(!t.isUnrecovered(Self.pub("a.1", 4)))
        #expect(!t.isUnrecovered(Self.pub("a.1", 4 + jump)))
        #expect(!t.isUnrecovered(Self.pub("b.1", 6)))
        var anonymous = Self.pub("a.1", 6)
        anonymous.id = ""
        #expect(!t.isUnrecovered(anonymous))
    }

    @Test("a region asked for an epoch answers from its ring and the one kept from before its fork")
    func heldAfter() {
        var t = TopicStreamTests.stream("b.2", holding: [1])
        var prior = HistoryRing(capacity: 10, ttl: .seconds(300))
        for o: UInt64 in [4, 5, 6] { prior.append(Self.pub("a.1", o)) }
        t.priorHistory = prior
        let (publications, position) = t.held(after: Self.at("a.1", 4))
        #expect(publications.map(\.position) == [Self.at("a.1", 5), Self.at("a.1", 6)])
        #expect(position == nil)
        #expect(t.held(after: Self.at("b.2", 0)).position == Self.at("b.2", 1))
    }

    @Test("the failover log is handed over once, and what the canonical home did not take goes back into it")
    func failoverLog() {
        var t = TopicStreamTests.stream("b.2", holding: [1, 2])
        t.failoverLog = [Self.pub("b.2", 1), Self.pub("b.2", 2)]
        let log = t.takeFailoverLog()
        #expect(log.map(\.id) == ["b.2/1", "b.2/2"])
        #expect(t.failoverLog.isEmpty)
        t.logAgain(PendingPublish(origin: .resequence, topic: "news:x", id: "b.2/2", data: "1", user: nil, receivedAtWall: 0,
                                  firstAt: Self.at("b.2", 2)), now: Self.now)
        #expect(t.failoverLog.map(\.id) == ["b.2/2"])
        #expect(t.failoverLog.first?.firstPosition == Self.at("b.2", 2))
    }
}
