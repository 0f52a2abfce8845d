/// Replication before acknowledgment. A topic's home acknowledges a publish only once a second
/// region holds it: the topic's successor (the first region by rendezvous order, other than the
/// home, that the home can reach) follows every topic the home sequences as a hot replica,
/// whether or not it has subscribers. It is a child in the topic's fan-out tree like any other,
/// and reports the publications it received back to the home (`replicated`), which then answers
/// the publishers. If the home crashes, the successor is the region that takes over, and it
/// holds everything that was acknowledged. A mesh of one region, and namespaces with
/// `ack: leader`, acknowledge at once.

/// What the home knows about a topic's replica.
struct ReplicationState: Sendable {
    /// The region following the topic as replica, or nil while none is reachable.
    var replica: String?
    /// The epoch `through` counts in: the home's epoch when it last sequenced.
    var epoch = ""
    /// Every offset of `epoch` up to this one is held by a replica.
    var through: UInt64 = 0
    /// Acknowledgments waiting for a replica, oldest first.
    var pending: [PendingAck] = []
    /// When the oldest pending acknowledgment's deadline is scheduled.
    var timeoutAt: TernInstant?
}

/// A publish sequenced by the home whose acknowledgment waits for the replica.
struct PendingAck: Sendable {
    var position: StreamPosition
    var origin: PublishOrigin
    var duplicate: Bool
    var expires: TernInstant
}

/// What a replica has received of its topic: publications `from...to` of `epoch`, contiguously.
struct ReplicaRun: Sendable, Hashable {
    var epoch: String
    var from: UInt64
    var to: UInt64
}

extension RelayCore {
    /// Whether publishes to `topic` wait for a second region before they are acknowledged.
    func needsReplication(_ topic: String) -> Bool {
        guard mesh != nil, mesh!.config.graph.regions.count > 1, let i = topics.index(forKey: topic) else { return false }
        return topics.storage.values[i].options.ack == .replicated
    }

    /// The region that follows `topic` for this home: the first by rendezvous order, other than
    /// this region, that this region can reach (the region that would take over from it).
    mutating func replicaTarget(_ topic: String) -> String? {
        guard mesh != nil else { return nil }
        let region = config.region
        for candidate in Rendezvous.ranking(topic: topic, regions: mesh!.config.graph.regions) where candidate != region && canReach(candidate) {
            return candidate
        }
        return nil
    }

    /// The region asked to follow `topic`, when this region is its home.
    public func replica(of topic: String) -> String? { topics[topic]?.stream.replication.replica }

    /// Sends `message` one hop towards `region`, if there is a route.
    mutating func route(_ message: LinkMessage, to region: String) {
        guard let hop = mesh?.routes.firstHop(to: region) else { return }
        enqueueLink(hop, message)
    }

    /// At the home: makes sure the topic's replica is the current successor, telling the old
    /// one to stop following and the new one to start.
    mutating func updateReplica(_ topic: String) {
        guard mesh != nil, let current = topics[topic].map({ $0.stream.replication.replica }), isHome(topic), needsReplication(topic) else { return }
        let target = replicaTarget(topic)
        guard target != current else { return }
        if let current, canReach(current) { route(.unfollow(topic: topic, replica: current), to: current) }
        topics.update(topic) { $0.stream.replication.replica = target }
        if let target, let t = topics[topic] {
            let from = StreamPosition(epoch: t.stream.epoch, offset: t.stream.replication.epoch == t.stream.epoch ? t.stream.replication.through : t.stream.offset)
            route(.follow(topic: topic, replica: target, home: config.region, from: from), to: target)
        }
    }

    /// Stops asking anyone to follow `topic` (the topic is going away here, or this region is no longer its home).
    mutating func releaseReplica(_ topic: String) {
        guard mesh != nil, let replica = topics[topic]?.stream.replication.replica else { return }
        topics.update(topic) { $0.stream.replication.replica = nil }
        if canReach(replica) { route(.unfollow(topic: topic, replica: replica), to: replica) }
    }

    /// Answers a publish the home has sequenced: at once when nothing needs to wait, else once
    /// the replica reports that it holds the publication (or an error at `home_timeout`).
    mutating func answerOnceHeld(_ topic: String, _ origin: PublishOrigin, _ result: Result<ReplyBody, TernError>) {
        // Read and changed in place, once per publish: `topics[topic]` copies the whole topic state.
        guard case .success(.published(_, let position?, let duplicate)) = result, needsReplication(topic),
              let (epoch, replicated, through) = topics.reading(topic, { ($0.stream.epoch, $0.stream.replication.epoch, $0.stream.replication.through) }),
              isHome(topic), position.epoch == epoch,
              !(replicated == position.epoch && position.offset <= through) else {
            answer(origin, result)
            return
        }
        let expires = clock + mesh!.config.homeTimeout
        let timerNeeded = topics.update(topic) { t -> Bool in
            t.stream.replication.pending.append(PendingAck(position: position, origin: origin, duplicate: duplicate, expires: expires))
            guard t.stream.replication.timeoutAt == nil else { return false }
            t.stream.replication.timeoutAt = expires
            return true
        } ?? false
        if timerNeeded { schedule(expires, .ackTimeout(topic)) }
        if topics.reading(topic, { $0.stream.replication.replica == nil }) == true { updateReplica(topic) }
    }

    /// Called by the home as it sequences in `epoch`: the first publication of an epoch starts
    /// its replicated count at the offset before it.
    mutating func replicationWillSequence(_ topic: String) {
        // Read and changed in place, once per publication sequenced: `topics[topic]` copies the whole topic state.
        guard topics.reading(topic, { $0.stream.replication.epoch != $0.stream.epoch }) == true else { return }
        topics.update(topic) { t in
            t.stream.replication.epoch = t.stream.epoch
            t.stream.replication.through = t.stream.offset
        }
    }

    /// A replica's report, on its way to the home or arrived there.
    mutating func receiveReplicated(topic: String, epoch: String, from: UInt64, to: UInt64, home: String) {
        guard home == config.region else {
            route(.replicated(topic: topic, epoch: epoch, from: from, to: to, home: home), to: home)
            return
        }
        // Read and changed in place: `topics[topic]` copies the whole topic state.
        guard topics.reading(topic, { $0.stream.replication.epoch == epoch }) == true, isHome(topic) else { return }
        topics.update(topic) { t in
            let through = t.stream.replication.through
            if from <= through.saturatingAdd(1), to > through { t.stream.replication.through = t.stream.epoch == epoch ? min(to, t.stream.offset) : to }
        }
        releaseAcknowledgments(topic)
    }

    /// Answers every pending publish the replica now holds.
    mutating func releaseAcknowledgments(_ topic: String) {
        guard let r = topics.reading(topic, { $0.stream.replication }), !r.pending.isEmpty else { return }
        let held = r.pending.prefix { $0.position.epoch == r.epoch && $0.position.offset <= r.through }
        guard !held.isEmpty else { return }
        topics.update(topic) { $0.stream.replication.pending.removeFirst(held.count) }
        for ack in held {
            answer(ack.origin, .success(.published(topic: topic, position: ack.position, duplicate: ack.duplicate)))
        }
    }

    /// Fails every pending acknowledgment of `topic` with `reason` (the home moved, or time ran out).
    mutating func failAcknowledgments(_ topic: String, where expired: (PendingAck) -> Bool, _ reason: String) {
        guard let pending = topics.reading(topic, { $0.stream.replication.pending }), !pending.isEmpty else { return }
        let failing = pending.filter(expired)
        guard !failing.isEmpty else { return }
        topics.update(topic) { $0.stream.replication.pending.removeAll(where: expired) }
        for ack in failing { answer(ack.origin, .failure(TernError(.internalError, reason))) }
    }

    mutating func ackTimedOut(_ topic: String, now: TernInstant) {
        guard let t = topics[topic], t.stream.replication.timeoutAt != nil else { return }
        topics.update(topic) { $0.stream.replication.timeoutAt = nil }
        failAcknowledgments(topic, where: { $0.expires <= now },
            "'\(topic)' was sequenced but no second region confirmed it within home_timeout; retry with the same id")
        if let next = topics[topic]?.stream.replication.pending.first?.expires {
            topics.update(topic) { $0.stream.replication.timeoutAt = next }
            schedule(next, .ackTimeout(topic))
        }
        sweepIfIdle(topic, now: now)
    }

    // MARK: The replica's side

    mutating func receiveFollow(topic: String, replica: String, home: String, from: StreamPosition, now: TernInstant) {
        guard replica == config.region else {
            route(.follow(topic: topic, replica: replica, home: home, from: from), to: replica)
            return
        }
        guard case .success(let options) = namespaceOptions(for: topic), home != config.region else { return }
        ensureTopic(topic, options, now: now)
        if topics[topic]?.stream.replicaOf != home {
            withTopic(topic) { $0.stream.logHeldFailoverPublications(of: home) }
        }
        topics.update(topic) { $0.stream.replicaOf = home }
        // A replica that holds nothing yet asks for the stream from where the replicated count stands,
        // so it receives, and can confirm, what waits for it.
        if topics[topic]?.stream.synced == false, topics[topic]?.stream.awaitingFrom == nil, mesh!.upstream[topic] == nil {
            topics.update(topic) { $0.stream.sync = .unsynced(from: from) }
        }
        topics.update(topic) { $0.lastActivity = now }
        // What it already holds counts at once (it may have followed the topic as a cache).
        if topics[topic]?.stream.replicaRun != nil { mesh!.replicaReports.insert(topic) }
        reconcileInterest(topic, now: now)
    }

    mutating func receiveUnfollow(topic: String, replica: String, now: TernInstant) {
        guard replica == config.region else {
            route(.unfollow(topic: topic, replica: replica), to: replica)
            return
        }
        guard topics[topic]?.stream.replicaOf != nil else { return }
        topics.update(topic) { $0.stream.replicaOf = nil }
        reconcileInterest(topic, now: now)
        sweepIfIdle(topic, now: now)
    }

    /// A region notes a publication it received and appended, so that as a replica (now or once
    /// asked) it can tell the home exactly what it holds.
    mutating func replicaReceived(_ publication: Publication) {
        let topic = publication.topic
        // Read in place: `topics[topic]` copies the whole topic state, once per replicated publication.
        guard mesh != nil, let (replicaRun, following) = topics.reading(topic, { ($0.stream.replicaRun, $0.stream.replicaOf != nil) }) else { return }
        let p = publication.position
        if var run = replicaRun, run.epoch == p.epoch, p.offset.follows(run.to) {
            run.to = p.offset
            topics.update(topic) { $0.stream.replicaRun = run }
        } else if let run = replicaRun, run.epoch == p.epoch, p.offset >= run.from, p.offset <= run.to {
            return
        } else {
            topics.update(topic) { $0.stream.replicaRun = ReplicaRun(epoch: p.epoch, from: p.offset, to: p.offset) }
        }
        if following { mesh!.replicaReports.insert(topic) }
    }

    /// After a batch: each replica tells its home what it now holds, once per topic.
    mutating func sendReplicaReports() {
        guard mesh != nil, !mesh!.replicaReports.isEmpty else { return }
        let reports = mesh!.replicaReports.sorted()
        mesh!.replicaReports.removeAll()
        for topic in reports {
            guard let (replicaOf, replicaRun) = topics.reading(topic, { ($0.stream.replicaOf, $0.stream.replicaRun) }),
                  let home = replicaOf, let run = replicaRun else { continue }
            route(.replicated(topic: topic, epoch: run.epoch, from: run.from, to: run.to, home: home), to: home)
        }
    }
}

// MARK: A restarted home recovers its epoch from the regions that hold it


extension RelayCore {
    /// At a fresh home: a child named `held`, a position in this region's own epoch.
    mutating func beginRecovery(_ topic: String, held: StreamPosition, now: TernInstant) {
        guard let mesh else { return }
        let deadline = now + mesh.config.linkReadTimeout
        topics.update(topic) { $0.stream.beginRecovery(held: held, deadline: deadline) }
        askForRecovery(topic)
        if topics[topic]?.stream.recovery?.asked.isEmpty ?? true {
            finishRecovery(topic, now: now)
            return
        }
        schedule(deadline, .recoveryTimeout(topic))
    }

    /// Asks every reachable region not asked yet.
    mutating func askForRecovery(_ topic: String) {
        guard let mesh, let epoch = topics[topic]?.stream.recovery?.held.epoch else { return }
        let reachable = mesh.config.graph.regions.filter { $0 != config.region && canReach($0) }
        for region in topics.update(topic, { $0.stream.ask(reachable) }) ?? [] {
            route(.recover(topic: topic, home: config.region, replica: region, after: StreamPosition(epoch: epoch, offset: 0)), to: region)
        }
    }

    /// A child named a position further on in the epoch being recovered.
    mutating func noteHeld(_ topic: String, _ position: StreamPosition) {
        topics.update(topic) { $0.stream.noteHeld(position) }
    }

    /// At an asked region (or on the way there): answers with every publication of the epoch it holds after `after`.
    mutating func receiveRecover(topic: String, home: String, replica: String, after: StreamPosition) {
        guard replica == config.region else {
            route(.recover(topic: topic, home: home, replica: replica, after: after), to: replica)
            return
        }
        let (held, position) = topics[topic]?.stream.held(after: after) ?? ([], nil)
        for p in held { route(.recovered(topic: topic, home: home, replica: replica, publication: p, position: nil), to: home) }
        route(.recovered(topic: topic, home: home, replica: replica, publication: nil, position: position), to: home)
    }

    /// At the home (or on the way there): one recovered publication, or the end of one region's answer.
    mutating func receiveRecovered(topic: String, home: String, from region: String, publication: Publication?,
                                   position: StreamPosition?, now: TernInstant) {
        guard home == config.region else {
            route(.recovered(topic: topic, home: home, replica: region, publication: publication, position: position), to: home)
            return
        }
        guard topics[topic]?.stream.recovery != nil else {
            if let p = publication, p.topic == topic {
                if isHome(topic) { resequenceUnrecovered(p, now: now) } else { rememberDeliveredBefore(p, now: now) }
            }
            return
        }
        if let p = publication {
            guard p.topic == topic else { return }
            topics.update(topic) { $0.stream.recovered(p, serial: joinSerial, now: now) }
            return
        }
        let successor = mesh.flatMap { Rendezvous.ranking(topic: topic, regions: $0.config.graph.regions).first { $0 != config.region } }
        if topics.update(topic, { $0.stream.recoveryAnswered(by: region, successor: successor) }) == true { finishRecovery(topic, now: now) }
    }

    /// At a home that has continued a recovered epoch: a publication of that epoch past the point it
    /// continued from, which a child still held. The home never had it (the regions it recovered from
    /// did not), but it was acknowledged: sequence it again, once, under its id. Regions that delivered
    /// it before skip their subscribers that have it (region-level id memory); the others deliver it.
    /// At a failover home, likewise for a publication of the epoch it left, past where it left it, which a
    /// child that went further in that epoch still held (`TopicStream.isUnrecovered`).
    mutating func resequenceUnrecovered(_ p: Publication, now: TernInstant) {
        guard isHome(p.topic), topics[p.topic]?.stream.isUnrecovered(p) == true else { return }
        // Sequenced again in another epoch (at a failover home), it carries where it was first sequenced,
        // for regions that delivered it there and no longer remember it by id.
        let firstAt = topics[p.topic]?.stream.adoptedFrom == nil ? p.firstPosition ?? p.position : nil
        _ = publish(topic: p.topic, id: p.id, data: p.data, user: p.user, volatile: false, firstAt: firstAt, now: now)
    }

    /// A region that starts following a topic inside a failover epoch, from a position a client gave,
    /// does not know what that epoch brought before it (it restarted meanwhile, or did not follow the
    /// topic). It asks its upstream for the epoch's publications, only to remember their ids: when the
    /// canonical home sequences them again after the heal, the subscribers that resumed from at or past
    /// them have them, and skip them.
    mutating func learnEpochBefore(_ topic: String, from: StreamPosition, upstream: String) {
        guard mesh != nil, from.offset > 0, let canonical = topics[topic]?.stream.canonicalHome,
              !from.epoch.hasPrefix(canonical + ".") else { return }
        route(.recover(topic: topic, home: config.region, replica: upstream, after: StreamPosition(epoch: from.epoch, offset: 0)),
              to: upstream)
    }

    /// The answer to `learnEpochBefore`: a publication of this region's epoch at or before where it
    /// stands, which its subscribers that resumed from at or past it have.
    mutating func rememberDeliveredBefore(_ p: Publication, now: TernInstant) {
        withTopic(p.topic) { $0.stream.rememberDeliveredBefore(p, now: now) }
    }

    mutating func recoveryTimedOut(_ topic: String, now: TernInstant) {
        guard let recovery = topics[topic]?.stream.recovery, recovery.deadline <= now else { return }
        finishRecovery(topic, now: now)
    }

    /// Continues the epoch past the newest position known (recovered or named by a child), then serves
    /// everyone who waited and sequences the publishes held meanwhile.
    mutating func finishRecovery(_ topic: String, now: TernInstant) {
        guard topics.update(topic, { $0.stream.continueRecoveredEpoch() }) == true else { return }
        becameSynced(topic, now: now)
        for ref in mesh!.pending.keys.sorted() where mesh!.pending[ref]?.topic == topic && mesh!.pending[ref]?.sentVia == nil {
            forwardPending(ref)
        }
    }
}
