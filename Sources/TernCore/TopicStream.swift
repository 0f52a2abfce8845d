/// One topic's stream at one region: where it stands (epoch and offset), what it holds (history and
/// the ids it has seen), and its replica and failover state. The region's subscribers, presence and
/// long-poll waiters live beside it in `RelayCore.TopicState`; every decision about the stream itself
/// (catching up a child, taking over, switching epoch, merging after a heal, who gets a repeated
/// publication) is a method here that returns a plan or an enum, unit-tested with no mesh
/// (`TopicStreamTests`, `LineageTests`, `DeliveryDecisionTests`).
struct TopicStream: Sendable {
    var epoch: String
    var offset: UInt64 = 0
    var history: HistoryRing
    var idempotency: IdempotencyCache
    /// Where this region's copy of the stream stands against the home's.
    var sync = RelayCore.StreamSync.current
    /// Whether this region left the canonical epoch (and where), and the ids it delivered in
    /// failover epochs since, so the merge after a heal skips them for the subscribers that have them.
    var lineage = Lineage.unforked(delivered: [:])
    /// After a heal, the ids not to deliver again while the canonical stream catches this region up.
    var merge: MergeWindow?
    /// The ring of the epoch before the last switch, to catch up children still in it. While this
    /// region has a fork, it keeps the ring of the fork's epoch through later switches: that epoch
    /// is the one children (and a recovering home) may still need from here.
    var priorHistory: HistoryRing?
    /// Publications this region sequenced as a failover home, to re-sequence at the canonical home.
    var failoverLog: [Publication] = []
    /// The most publications a failover log keeps; past it, further ones are not re-sequenced.
    static let maxFailoverLog = 100_000
    /// How this stream began at a home: fresh, recovering a restarted home's epoch, or continued
    /// past the adoption jump (`StreamStart`).
    var start = StreamStart.established
    /// The last epoch switch this region made, so children standing where it stood can follow.
    var lastSwitch: (from: StreamPosition, to: StreamPosition)?
    /// At the home: the replica and the acknowledgments waiting for it.
    var replication = ReplicationState()
    /// At a replica: the home this region follows the topic for, whether or not it has subscribers.
    var replicaOf: String?
    /// The region that sequences this topic when every region is alive.
    var canonicalHome = ""
    /// What this region has received of the stream, contiguously, for replica reports.
    var replicaRun: ReplicaRun?

    init(epoch: String, history: HistoryRing, idempotency: IdempotencyCache) {
        self.epoch = epoch
        self.history = history
        self.idempotency = idempotency
    }

    var position: StreamPosition { StreamPosition(epoch: epoch, offset: offset) }
    /// Positioned in the stream (current, or being caught up).
    var synced: Bool { if case .unsynced = sync { false } else { true } }
    /// Positioned, and the upstream is catching this region up.
    var resyncing: Bool { sync == .catchingUp }
    /// While unsynced: where this region asked its upstream to start.
    var awaitingFrom: StreamPosition? { if case .unsynced(let from) = sync { from } else { nil } }
    /// The upstream is to catch this region up (a gap, a new parent, a lost link): a positioned
    /// stream waits for it; one not yet positioned waits as it was.
    mutating func catchUp() { if synced { sync = .catchingUp } }
    /// Whether `priorHistory` is the ring of the fork's epoch, to keep through a switch.
    var holdsForkHistory: Bool {
        guard let fork, let newest = priorHistory?.newest else { return false }
        return newest.position.epoch == fork.epoch
    }
    /// An empty ring with this stream's capacity and TTL.
    var emptyRing: HistoryRing { HistoryRing(capacity: history.capacity, ttl: history.ttl) }
}

/// What a region sends a child region that asks for a topic from a position (`interest`): the
/// publications it missed, an epoch switch where a failover, a merge or a restarted home moved the
/// stream, and where the child stands afterwards, or a gap when the rings cannot fill it.
///
/// Decided from the topic's own stream state alone (`TopicStream.catchUpPlan`), with no mesh and no
/// links, so the failover cases are unit-tested on their own (`TopicStreamTests`); the mesh turns
/// the plan into link messages (`RelayCore.serveChild`).
enum ChildCatchUp: Equatable, Sendable {
    /// Send `replay` (publications of the child's own epoch that it missed), then move it from
    /// `switchFrom` to `switchTo` when set, then send `then`, then tell it it stands at `at`.
    case serve(replay: [Publication], switchFrom: StreamPosition?, switchTo: StreamPosition?, then: [Publication], at: StreamPosition)
    /// The child's gap cannot be filled: it resets to `at` and its subscribers are told to resync.
    case gap(at: StreamPosition, reason: RecoveryFailure)
}

extension TopicStream {
    /// How to catch up a child that stands at `since` (nil: nowhere yet) and, after a failover it
    /// followed, left the canonical epoch at `fork`. `isHome` says whether this region is the
    /// topic's home. Expires what the history ring holds past its TTL, as every ring read does.
    ///
    /// In order:
    /// 1. A restarted home continued its epoch past the adoption jump from `adoptedFrom`. A child
    ///    behind that point is caught up from the recovered ring and moved across the jump; a child
    ///    past it (it holds publications the home did not recover) is moved across from where it
    ///    stands, if this is the home (which asks it for those publications and sequences them
    ///    again); otherwise the child gets a gap.
    /// 2. A child exactly at `adoptedFrom` (or whose fork is) is moved across the jump.
    /// 3. A child where this region stood before its last epoch switch makes the same switch.
    /// 4. A child in another epoch: from its fork, when the fork is in this region's epoch; or, when
    ///    it stands in the epoch this region forked from (at or before the fork), the rest of that
    ///    epoch from the ring kept of it, then a switch to the start of this region's epoch.
    /// 5. Otherwise what the ring holds after `since`, or a gap.
    mutating func catchUpPlan(since: StreamPosition?, fork: StreamPosition?, isHome: Bool, now: TernInstant) -> ChildCatchUp {
        let current = position
        if let adopted = adoptedFrom, let since, since.epoch == adopted.epoch, current.epoch == adopted.epoch,
           case let jumped = adopted.offset.saturatingAdd(RelayCore.adoptionJump), since.offset != adopted.offset, since.offset < jumped {
            let across = StreamPosition(epoch: adopted.epoch, offset: jumped)
            var behind: [Publication] = []
            if since.offset < adopted.offset {
                behind = history.all.filter {
                    $0.position.epoch == adopted.epoch && $0.position.offset > since.offset && $0.position.offset <= adopted.offset
                }
            }
            if since.offset < adopted.offset, behind.count == Int(adopted.offset - since.offset),
               case .recovered(let publications) = history.publications(after: across, current: current, now: now) {
                return .serve(replay: behind, switchFrom: adopted, switchTo: across, then: publications, at: current)
            }
            if since.offset > adopted.offset, isHome,
               case .recovered(let publications) = history.publications(after: across, current: current, now: now) {
                return .serve(replay: [], switchFrom: since, switchTo: across, then: publications, at: current)
            }
            return .gap(at: current, reason: .evicted)
        }
        if let adopted = adoptedFrom, let from = [since, fork].compactMap({ $0 }).first, from == adopted || fork == adopted,
           case let across = StreamPosition(epoch: adopted.epoch, offset: adopted.offset.saturatingAdd(RelayCore.adoptionJump)),
           case .recovered(let publications) = history.publications(after: across, current: current, now: now) {
            return .serve(replay: [], switchFrom: since ?? adopted, switchTo: across, then: publications, at: current)
        }
        if let sw = lastSwitch, let since, since == sw.from, since.epoch != current.epoch || since.offset < current.offset,
           // A child that left `sw.to`'s epoch earlier than `sw.to` lacks what lies between: the same switch would skip
           // it. Across a restarted home's adoption jump nothing lies between where it continued from and the jump.
           fork.map({ f in f.epoch != sw.to.epoch || f.offset >= sw.to.offset
               || (sw.to.offset >= RelayCore.adoptionJump && f.offset >= sw.to.offset - RelayCore.adoptionJump) }) ?? true,
           case .recovered(let publications) = history.publications(after: sw.to, current: current, now: now) {
            return .serve(replay: [], switchFrom: since, switchTo: sw.to, then: publications, at: current)
        }
        if let since, since.epoch != current.epoch {
            if let fork, fork.epoch == current.epoch, fork.offset <= current.offset,
               case .recovered(let publications) = history.publications(after: fork, current: current, now: now) {
                return .serve(replay: [], switchFrom: since, switchTo: fork, then: publications, at: current)
            }
            if let myFork = self.fork, since.epoch == myFork.epoch, since.offset <= myFork.offset,
               var prior = priorHistory,
               case .recovered(let old) = prior.publications(after: since, current: myFork, now: now),
               case let start = StreamPosition(epoch: current.epoch, offset: 0),
               case .recovered(let publications) = history.publications(after: start, current: current, now: now) {
                return .serve(replay: old, switchFrom: myFork, switchTo: start, then: publications, at: current)
            }
            if let myFork = self.fork, since.epoch == myFork.epoch, since.offset > myFork.offset,
               case let start = StreamPosition(epoch: current.epoch, offset: 0),
               case .recovered(let publications) = history.publications(after: start, current: current, now: now) {
                // The child went further in the epoch this region left than this region did (it was the
                // old home's replica, or followed it): it keeps what it has and moves across to this epoch.
                // What only it held is sequenced again in this epoch under its ids (`RelayCore.serveChild`
                // asks it for them), and regions that delivered it before skip the subscribers that have it.
                return .serve(replay: [], switchFrom: since, switchTo: start, then: publications, at: current)
            }
        }
        guard let since else { return .serve(replay: [], switchFrom: nil, switchTo: nil, then: [], at: current) }
        switch history.publications(after: since, current: current, now: now) {
        case .recovered(let publications): return .serve(replay: [], switchFrom: nil, switchTo: nil, then: publications, at: current)
        case .failed(let reason): return .gap(at: current, reason: reason)
        }
    }
}

/// Where a region's copy of a topic stands against the canonical epoch, for the merge after a heal.
///
/// Publications delivered in a failover epoch come again, re-sequenced, when the stream goes back to
/// the canonical epoch; the ids remembered here (with the subscription serial at delivery) are what
/// keeps them from reaching the same subscribers twice.
enum Lineage: Sendable {
    /// This region did not leave the canonical epoch itself: it is on it, or in a failover epoch it
    /// joined without seeing the fork (it restarted, or came to the topic late). Ids delivered in a
    /// failover epoch are remembered all the same.
    case unforked(delivered: [String: UInt64])
    /// This region left the canonical epoch at `at` (it took over as a failover home, or followed one),
    /// and has delivered `delivered` since.
    case forked(at: StreamPosition, delivered: [String: UInt64])

    /// Where the canonical epoch was left, when this region left it.
    var fork: StreamPosition? { if case .forked(let at, _) = self { at } else { nil } }

    /// The ids delivered in failover epochs, with the subscription serial when each was delivered.
    var delivered: [String: UInt64] {
        switch self {
        case .unforked(let d), .forked(_, let d): d
        }
    }

    /// The most ids remembered; past it, the merge may deliver some again.
    static let maxDelivered = 100_000
}

/// After a heal, the ids this region delivered in the failover epoch, not to deliver again (to the
/// subscribers that joined before each serial) while the canonical stream brings them, until `until`.
struct MergeWindow: Sendable {
    var ids: [String: UInt64]
    var until: TernInstant
}

extension TopicStream {
    /// Where this region left the canonical epoch, if it did.
    var fork: StreamPosition? { lineage.fork }

    /// This region takes the topic over as a failover home and continues in `epoch`, a new epoch of
    /// its own, from offset 0; returns where its stream stood and whether it had one.
    ///
    /// Ids delivered since the first fork stay remembered through later failovers, until the merge,
    /// and the ring of the fork's epoch is kept for children still in it. Publishes sequenced before
    /// the failover may be retried here: their ids are remembered, as delivered to every subscriber
    /// here (as of `serial`). A failover log not yet re-sequenced (an earlier failover that never
    /// healed) is kept: the canonical home deduplicates by id, so sending it again is safe, dropping
    /// it is not.
    mutating func takeOver(epoch newEpoch: String, serial: UInt64, now: TernInstant) -> (left: StreamPosition, wasSynced: Bool) {
        let left = position
        forkForTakeover()
        if !holdsForkHistory { priorHistory = synced ? history : nil }
        for p in history.all where !p.id.isEmpty && idempotency.entry(of: p.id, now: now) == nil {
            idempotency.remember(p.id, position: p.position, now: now, mark: serial)
        }
        fresh = false
        history = emptyRing
        epoch = newEpoch
        offset = 0
        let wasSynced = synced
        sync = .current
        return (left, wasSynced)
    }

    /// The upstream moved this region's stream from `from` (where it stands) to `to`: a failover, or
    /// the merge after a heal (`noteEpochSwitch`). The ring starts over; the old one is kept for
    /// children still in the old epoch, unless the fork's epoch is kept already.
    mutating func switchEpoch(from: StreamPosition, to: StreamPosition, canonical: String, serial: UInt64, mergeUntil: TernInstant) {
        noteEpochSwitch(from: from, to: to, canonical: canonical, serial: serial, mergeUntil: mergeUntil)
        if !holdsForkHistory { priorHistory = history }
        history = emptyRing
        epoch = to.epoch
        offset = to.offset
        lastSwitch = (from, to)
    }

    /// The upstream could not fill this region's gap: the stream restarts at `position`, empty.
    /// Subscribers here are told to resync, so what they had since a fork no longer needs merging.
    mutating func reset(to position: StreamPosition) {
        history = emptyRing
        epoch = position.epoch
        offset = position.offset
        sync = .current
        forgetLineage()
    }

    /// This region takes the topic over as a failover home: it forks where its stream stands, unless
    /// it forked already (a later failover keeps the first fork, and what was delivered since) or has
    /// no stream to fork from.
    mutating func forkForTakeover() {
        guard case .unforked = lineage else { return }
        lineage = synced && !epoch.isEmpty ? .forked(at: position, delivered: [:]) : .unforked(delivered: [:])
    }

    /// The upstream moves this region's stream from `from` to `to`. Back on the canonical epoch (at the
    /// fork, or from a failover epoch joined without one), the ids delivered in failover epochs become
    /// the merge window; from one epoch to another otherwise, this region forks at `from`.
    /// `canonical` is the canonical home's epoch prefix (`"<home>."`) and `serial` the current
    /// subscription serial.
    mutating func noteEpochSwitch(from: StreamPosition, to: StreamPosition, canonical: String, serial: UInt64,
                                  mergeUntil: TernInstant) {
        if let fork, fork.epoch == to.epoch {
            merge = MergeWindow(ids: lineage.delivered, until: mergeUntil)
            lineage = .unforked(delivered: [:])
        } else if to.epoch.hasPrefix(canonical), !from.epoch.hasPrefix(canonical) {
            // Joined without knowing the fork (it restarted meanwhile): skip what it delivered in
            // failover epochs, as far as it remembers, and what its ring holds of them.
            var merging = lineage.delivered
            for p in history.all where !p.position.epoch.hasPrefix(canonical) && merging[p.id] == nil { merging[p.id] = serial }
            merge = MergeWindow(ids: merging, until: mergeUntil)
            lineage = .unforked(delivered: [:])
        } else if from.epoch != to.epoch, case .unforked = lineage {
            lineage = .forked(at: from, delivered: [:])
        }
    }

    /// The stream was reset (a gap): nothing of a fork is left to merge.
    mutating func forgetLineage() {
        lineage = .unforked(delivered: [:])
        lastSwitch = nil
    }

    /// Remembers that `id` was delivered here, when this region is in a failover epoch (forked, or
    /// on an epoch that is not the canonical home's).
    mutating func noteDeliveredInFailover(_ id: String, serial: UInt64, inMesh: Bool) {
        let failover = lineage.fork != nil || (inMesh && !epoch.hasPrefix(canonicalHome + "."))
        guard failover, lineage.delivered.count < Lineage.maxDelivered else { return }
        switch lineage {
        case .unforked(var d):
            lineage = .unforked(delivered: [:])
            d[id] = serial
            lineage = .unforked(delivered: d)
        case .forked(let at, var d):
            lineage = .unforked(delivered: [:])
            d[id] = serial
            lineage = .forked(at: at, delivered: d)
        }
    }

    /// Within the merge window: the serial before which subscribers already have `id`.
    mutating func mergeMark(of id: String, now: TernInstant) -> UInt64? {
        guard let window = merge else { return nil }
        guard now < window.until else {
            merge = nil
            return nil
        }
        return window.ids[id]
    }

    /// Everyone here has `id` now (as of `serial`).
    mutating func mergeDelivered(_ id: String, serial: UInt64) {
        if merge?.ids[id] != nil { merge?.ids[id] = serial }
    }
}

/// How a topic's stream began at a home. A home that restarted has lost its streams; when a child
/// names a position in the home's own epoch before anything was sequenced or served here, the home
/// recovers that epoch from the regions that hold it and continues it past the adoption jump
/// (`RelayCore.beginRecovery`, `finishRecovery`).
enum StreamStart: Sendable {
    /// A home's stream that nothing has been sequenced in or served from yet: a restarted home may
    /// still adopt the epoch its children hold instead of starting a new one.
    case fresh
    /// Recovering this region's epoch from the regions that hold it; nothing is served or sequenced.
    case recovering(HomeRecovery)
    /// Continued the recovered epoch from `from`, past the adoption jump.
    case continued(from: StreamPosition)
    /// Anything else: a cache, or a home that began its own epoch.
    case established
}

/// A home that restarted has lost its streams, but its replica holds every publication it
/// acknowledged. When a child first names a position in the home's own epoch, the home asks every
/// region it can reach (and each one it reaches later, until it is done) for what they hold of that
/// epoch, before it serves anyone or sequences anything. It is done when its usual replica (its
/// successor when every region is up) and everyone else asked have answered, or after
/// `link_read_timeout`. It then continues the epoch past the newest publication it knows (with the
/// adoption jump, so no offset a child may hold is reused), and catches up children that were behind
/// from its ring. Publishes that arrive meanwhile wait, as they do while a home is unreachable.
struct HomeRecovery: Sendable {
    /// The epoch being recovered and the newest position a child named in it.
    var held: StreamPosition
    var asked: Set<String> = []
    var answered: Set<String> = []
    var deadline: TernInstant
}

extension TopicStream {
    /// Whether nothing has been sequenced in or served from this home's stream yet. Setting it false
    /// marks the stream used (only a fresh one changes).
    var fresh: Bool {
        get { if case .fresh = start { true } else { false } }
        set {
            if newValue { start = .fresh } else if case .fresh = start { start = .established }
        }
    }

    /// The recovery of a restarted home's epoch under way, if any. Setting nil abandons it (the home
    /// moved away); setting a value begins or updates it.
    var recovery: HomeRecovery? {
        get { if case .recovering(let r) = start { r } else { nil } }
        set {
            if let newValue { start = .recovering(newValue) } else if case .recovering = start { start = .established }
        }
    }

    /// Where a restarted home continued this epoch from (past the adoption jump), for children in it.
    var adoptedFrom: StreamPosition? { if case .continued(let from) = start { from } else { nil } }
}

extension TopicStream {
    /// This region becomes the replica of `home`. When `home` is a failover home, the replica keeps
    /// its log too, so it outlives that home's crash; what this region already holds of the home's
    /// epoch (it followed the topic as a cache before) counts towards the home's acknowledgments at
    /// once, so it goes into the log now, not only what arrives from here on.
    mutating func logHeldFailoverPublications(of home: String) {
        guard home != canonicalHome else { return }
        let logged = Set(failoverLog.map(\.id))
        for p in history.all where p.position.epoch.hasPrefix(home + ".") && !logged.contains(p.id)
            && failoverLog.count < Self.maxFailoverLog {
            failoverLog.append(p)
        }
    }
}

/// Who gets a publication a region is about to deliver.
enum Delivery: Equatable, Sendable {
    /// Every subscriber: this region has not delivered it before.
    case everyone
    /// Delivered here before: only subscribers that joined after subscription serial `mark` and did
    /// not resume from at or past `firstAt` (where it was first delivered or sequenced), which have it.
    case again(toSubscribersAfter: UInt64, firstAt: StreamPosition?)
}

extension TopicStream {
    /// Decides who gets `publication` here, and remembers that everyone here has it now.
    ///
    /// A publication comes again after a heal (the canonical home sequences the failover epoch's
    /// publications again), after a restarted home's retry, or after this region's stream was reset to
    /// an earlier position. Within the merge window the ids delivered in the failover epoch say who has
    /// it; otherwise every region remembers the ids it delivered, with the serial and position, and a
    /// re-sequenced publication it does not remember (it restarted since) carries where the failover
    /// home first sequenced it. `serial` is the region's current subscription serial.
    mutating func delivery(of publication: Publication, sequencedHere: Bool, inMesh: Bool, serial: UInt64,
                           now: TernInstant) -> Delivery {
        let id = publication.id
        guard !id.isEmpty else { return .everyone }
        var delivery = Delivery.everyone
        if let mark = mergeMark(of: id, now: now) {
            // Subscribers that joined since the failover epoch delivered it here, but whose stream starts at or
            // past where it was first sequenced (or, for a publisher's retry, where this region delivered it),
            // had it too: in their subscribe reply.
            let first = publication.firstPosition ?? (inMesh ? idempotency.entry(of: id, now: now)?.position : nil)
            delivery = .again(toSubscribersAfter: mark, firstAt: first)
        } else if inMesh, !sequencedHere {
            if let earlier = idempotency.entry(of: id, now: now) {
                delivery = .again(toSubscribersAfter: earlier.mark, firstAt: earlier.position)
            } else if let first = publication.firstPosition, first.epoch != publication.position.epoch {
                delivery = .again(toSubscribersAfter: 0, firstAt: first)
            } else {
                idempotency.remember(id, position: publication.position, now: now, mark: serial)
            }
        }
        switch delivery {
        case .everyone:
            noteDeliveredInFailover(id, serial: serial, inMesh: inMesh)
        case .again(_, let firstAt):
            // Everyone here has it now.
            mergeDelivered(id, serial: serial)
            if inMesh, !sequencedHere {
                idempotency.remember(id, position: firstAt ?? publication.position, now: now, mark: serial)
            }
        }
        return delivery
    }
}

/// Where a publication relayed from upstream falls in this region's stream.
enum Placement: Equatable, Sendable {
    /// The next one: append and deliver it.
    case next
    /// Already here (or the upstream is catching this region up anyway): drop it.
    case stale
    /// Past a gap: this region asks its upstream again from `from` (having left the canonical epoch
    /// at `fork`, when it did).
    case behind(from: StreamPosition, fork: StreamPosition?)
}

extension TopicStream {
    /// Where a publication at `position`, relayed from upstream, falls; past a gap, the stream waits
    /// to be caught up.
    mutating func place(_ position: StreamPosition) -> Placement {
        guard position.epoch == epoch, position.offset.follows(offset) else {
            let stale = position.epoch == epoch && position.offset <= offset
            if stale || resyncing { return .stale }
            catchUp()
            return .behind(from: self.position, fork: fork)
        }
        return .next
    }

    /// Sequences a publish at the home: the next offset of the epoch, remembered in the ring and under
    /// its idempotency id (with the subscription serial `mark` it is delivered at), and, at a failover
    /// home, in the failover log until the canonical home has sequenced it again. The caller checked
    /// that the epoch has an offset left.
    mutating func sequence(topic: String, id: String, data: String, user: String?, acceptedAt: TernInstant, wall: Int64,
                           trace: [TraceHop]?, firstAt: StreamPosition?, mark: UInt64, failoverHome: Bool) -> Publication {
        offset += 1
        fresh = false
        let publication = Publication(topic: topic, position: position, id: id, data: data, user: user, acceptedAt: acceptedAt,
                                      sequencedAtWall: wall, trace: trace, firstPosition: firstAt)
        history.append(publication)
        if !id.isEmpty { idempotency.remember(id, position: publication.position, now: acceptedAt, mark: mark) }
        if failoverHome, failoverLog.count < Self.maxFailoverLog { failoverLog.append(publication) }
        return publication
    }

    /// Appends the next publication relayed from upstream. The replica of a failover home logs it
    /// too, so that home's log outlives its crash.
    mutating func append(relayed publication: Publication) {
        offset = publication.position.offset
        history.append(publication)
        if let home = replicaOf, home != canonicalHome, publication.position.epoch.hasPrefix(home + "."),
           failoverLog.count < Self.maxFailoverLog {
            failoverLog.append(publication)
        }
    }

    /// Whether an upstream's `caughtUp` or `gap` names a position behind where this region already stands
    /// in the same epoch. No upstream serving this region sends that (one that is behind waits until it
    /// has caught up), so it is a stale message: sent before this region last left that upstream, and
    /// delivered after it came back to it. Obeying it would move the stream backwards.
    func isBehind(_ position: StreamPosition) -> Bool {
        synced && position.epoch == epoch && position.offset < offset
    }

    /// Sets a cache's position as its upstream states it. A history of another epoch, or reaching past
    /// the position (a former failover home's own epoch, say), no longer describes this stream: it goes,
    /// so the ring holds only the current epoch up to the current offset. Clients recovering into it get
    /// a gap notice, never another stream's publications.
    mutating func adopt(_ position: StreamPosition) {
        if let newest = history.newest, newest.position.epoch != position.epoch || newest.position.offset > position.offset {
            history = emptyRing
        }
        epoch = position.epoch
        offset = position.offset
    }
}

extension TopicStream {
    /// Whether `problem(isHome:)` depends on `isHome`: only for a stream with no epoch of its own
    /// (or not synced) and not recovering one.
    var problemDependsOnHome: Bool { recovery == nil && (epoch.isEmpty || !synced) }

    /// What is inconsistent in this stream, if anything, as a phrase that follows the topic's name.
    /// `isHome` says whether this region is the topic's home now.
    func problem(isHome: Bool) -> String? {
        if isHome, problemDependsOnHome { return "is homed here but has no stream of its own (\(sync))" }
        if !history.isOrdered { return "has a history not in increasing offsets of one epoch" }
        if history.count > history.capacity { return "has a history holding \(history.count) of \(history.capacity)" }
        if synced, let last = history.newest, last.position.epoch == epoch, last.position.offset > offset {
            return "stands at \(position) but its history holds \(last.position)"
        }
        return nil
    }
}

extension TopicStream {
    // MARK: A restarted home recovering its epoch (`StreamStart.recovering`)

    /// At a fresh home, a child named `held`, a position in this region's own epoch: the stream
    /// stands there, unsynced (nothing is served or sequenced) until the epoch is recovered or
    /// `deadline` passes.
    mutating func beginRecovery(held: StreamPosition, deadline: TernInstant) {
        epoch = held.epoch
        offset = held.offset
        recovery = HomeRecovery(held: held, deadline: deadline)
        sync = .unsynced(from: nil)
    }

    /// The regions of `reachable` this recovery has not asked yet, in order; they count as asked now.
    mutating func ask(_ reachable: [String]) -> [String] {
        guard var r = recovery else { return [] }
        let new = reachable.filter { !r.asked.contains($0) }
        r.asked.formUnion(new)
        recovery = r
        return new
    }

    /// A child named a position further on in the epoch being recovered.
    mutating func noteHeld(_ position: StreamPosition) {
        guard var r = recovery, position.epoch == r.held.epoch, position.offset > r.held.offset else { return }
        r.held = position
        recovery = r
    }

    /// At a region asked to help recover (or to say what an epoch brought before): the publications
    /// of `after`'s epoch it holds past `after`, including the ring kept from before its last fork, and
    /// where it stands, when it stands in that epoch.
    func held(after: StreamPosition) -> (publications: [Publication], position: StreamPosition?) {
        let held = (priorHistory?.all ?? []) + history.all
        let publications = held.filter { $0.position.epoch == after.epoch && $0.position.offset > after.offset }
        return (publications, synced && epoch == after.epoch ? position : nil)
    }

    /// One recovered publication: kept in the ring, in order, when it is of the epoch being recovered;
    /// its id is remembered (as of subscription serial `serial`) so a retried publish is a duplicate.
    mutating func recovered(_ p: Publication, serial: UInt64, now: TernInstant) {
        guard let r = recovery, p.position.epoch == r.held.epoch else { return }
        if let newest = history.newest, newest.position.offset >= p.position.offset { return }
        var p = p
        p.acceptedAt = now
        history.append(p)
        if !p.id.isEmpty { idempotency.remember(p.id, position: p.position, now: now, mark: serial) }
    }

    /// `region` has sent all it holds. Only the regions this recovery asked can end it: another
    /// region's end of answer is for an earlier request (a `learnEpochBefore` sent while this region
    /// was not the home). Returns whether the recovery is complete: every asked region answered,
    /// the topic's `successor` (its replica when the home crashed) among them.
    mutating func recoveryAnswered(by region: String, successor: String?) -> Bool {
        guard var r = recovery, r.asked.contains(region) else { return false }
        r.answered.insert(region)
        recovery = r
        return r.answered.isSuperset(of: r.asked) && (successor.map(r.answered.contains) ?? true)
    }

    /// Ends the recovery: continues the epoch past the newest position known (recovered or named by a
    /// child) with the adoption jump, so that no offset a child may hold is used again. Returns false
    /// when no recovery was under way.
    mutating func continueRecoveredEpoch() -> Bool {
        guard let r = recovery else { return false }
        var base = r.held
        if let newest = history.newest, newest.position.epoch == base.epoch, newest.position.offset > base.offset {
            base = newest.position
        }
        start = .continued(from: base)
        epoch = base.epoch
        offset = base.offset.saturatingAdd(RelayCore.adoptionJump)
        sync = .current
        return true
    }

    /// Whether `p`, which a child still held, falls between where this home continued its recovered
    /// epoch and the adoption jump: acknowledged, but never recovered here, so it is sequenced again.
    /// At a failover home, likewise: `p` is of the epoch this home left, past where it left it. The old
    /// home acknowledged it once its replica held it, and that replica went further than this home.
    func isUnrecovered(_ p: Publication) -> Bool {
        guard !p.id.isEmpty else { return false }
        if let adopted = adoptedFrom {
            return p.position.epoch == adopted.epoch && p.position.offset > adopted.offset
                && p.position.offset < adopted.offset.saturatingAdd(RelayCore.adoptionJump)
        }
        guard let fork, epoch != fork.epoch else { return false }
        return p.position.epoch == fork.epoch && p.position.offset > fork.offset
    }

    /// The answer to `learnEpochBefore`: a publication of this region's epoch at or before where it
    /// stands, which its subscribers that resumed from at or past it have. Mark 0: no subscriber is
    /// known to have it by when it joined, only by where it resumed.
    mutating func rememberDeliveredBefore(_ p: Publication, now: TernInstant) {
        guard !p.id.isEmpty, p.position.epoch == epoch, p.position.offset <= offset,
              idempotency.entry(of: p.id, now: now) == nil else { return }
        idempotency.remember(p.id, position: p.position, now: now, mark: 0)
    }

    // MARK: The failover log

    /// The failover log, to re-sequence at the canonical home; the log is empty afterwards.
    mutating func takeFailoverLog() -> [Publication] {
        defer { failoverLog = [] }
        return failoverLog
    }

    /// A publication of the log the canonical home did not take: back into the log, to go again.
    mutating func logAgain(_ pending: PendingPublish, now: TernInstant) {
        failoverLog.append(Publication(topic: pending.topic, position: StreamPosition(epoch: "", offset: 0), id: pending.id,
                                       data: pending.data, user: pending.user, acceptedAt: now, firstPosition: pending.firstAt))
    }
}
