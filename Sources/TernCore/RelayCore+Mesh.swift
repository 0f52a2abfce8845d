/// Link state one region reports: its up links, per incarnation.
struct LinkStateAdvert: Sendable, Hashable {
    var incarnation: UInt64
    var sequence: UInt64
    var neighbours: Set<String>
}

/// The messages waiting for one link, and its flow-control window.
struct LinkOutbox: Sendable {
    /// Messages in order; `live` marks publications of the live stream, the ones shed under pressure.
    /// `bytes` is the message's `estimatedBytes`, worked out once when it is queued.
    var queue: [(message: LinkMessage, live: Bool, bytes: Int)] = []
    var queuedBytes = 0
    var unacknowledged = 0
    var oldestQueuedAt: TernInstant?
    var flushScheduled = false
    /// When anything last arrived from the peer; past `linkReadTimeout` the path is silent and the link is down.
    var lastReceivedAt: TernInstant
    /// When a batch last went to the peer.
    var lastSentAt: TernInstant
    /// When the last heartbeat went to the peer; one goes every `heartbeatInterval`.
    var lastHeartbeatAt: TernInstant
    /// When presence digests last went to the peer; they go every `presenceDigestInterval`.
    var lastDigestAt: TernInstant
    /// When this link's liveness check is due (earlier scheduled checks are stale).
    var livenessAt: TernInstant?
    /// The smoothed round-trip time measured with heartbeats.
    var roundTrip: Duration?

    init(now: TernInstant) {
        lastReceivedAt = now
        lastSentAt = now
        lastHeartbeatAt = now
        lastDigestAt = now
    }

    /// Queues `message` at `now`.
    mutating func append(_ message: LinkMessage, live: Bool, now: TernInstant) {
        let bytes = message.estimatedBytes
        queue.append((message, live, bytes))
        queuedBytes += bytes
        if oldestQueuedAt == nil { oldestQueuedAt = now }
    }
}

/// Where a publish came from, so its acknowledgement finds its way back.
enum PublishOrigin: Sendable, Hashable {
    case client(ClientID, ref: UInt64?)
    case api(request: UInt64)
    /// A publication of a failover epoch on its way to the canonical home; nobody waits for the answer.
    case resequence
    /// Another region's publish this region holds because it has no route to the home yet.
    case relay(origin: String, ref: UInt64, topic: String)
}

/// A publish this region forwarded towards a home and has not heard back about.
extension MeshState {
    /// Where an incarnation's publish references start: the top 24 bits come from the incarnation
    /// (mixed, so consecutive incarnations differ there), the low 40 bits count up from 1.
    static func firstRef(incarnation: UInt64) -> UInt64 {
        ((incarnation &* 0x9E37_79B9_7F4A_7C15) >> 40) << 40 | 1
    }
}

struct PendingPublish: Sendable {
    var origin: PublishOrigin
    var topic: String
    var id: String
    var data: String
    var user: String?
    /// When the origin relay took the publish, by its wall clock (the first hop of a trace).
    var receivedAtWall: Int64
    /// Where a failover home sequenced it, for a publication of a failover log.
    var firstAt: StreamPosition? = nil
    var sentVia: String?
    var sentTo: String?
}

/// A child region's standing for one topic.
enum ChildState: Sendable, Hashable {
    /// Receiving live data.
    case live
    /// Its link fell behind; it gets nothing until it asks again from its own position.
    case resyncing
}

/// Counters for one link, exported as metrics.
public struct LinkCounters: Sendable, Hashable {
    /// Batches sent.
    public var batches = 0
    /// Messages sent, all kinds.
    public var messages = 0
    /// Publications sent (data entries).
    public var dataEntries = 0
    /// Times the link's queue overflowed and topics were switched to resync.
    public var overflows = 0
}

/// The backlog of one link, for status pages.
public struct LinkQueueDepth: Sendable, Hashable {
    /// Messages queued and not yet sent.
    public var messages: Int
    /// Their estimated size in bytes.
    public var bytes: Int
    /// Batches sent that the peer has not credited yet.
    public var unacknowledgedBatches: Int
}

/// Everything a relay knows about the mesh around it.
struct MeshState: Sendable {
    var config: MeshConfig
    var incarnation: UInt64
    var sequence: UInt64 = 0
    var up: Set<String> = []
    var adverts: [String: LinkStateAdvert] = [:]
    var routes: ShortestPaths
    var trees: [String: ShortestPaths] = [:]
    var links: TrackedMap<String, LinkOutbox> = [:]
    var upstream: TrackedMap<String, String> = [:]
    var children: TrackedMap<String, IndexedMap<String, ChildState>> = [:]
    var awaitingSync: TrackedMap<String, [(child: String, since: StreamPosition?, fork: StreamPosition?)]> = [:]
    var lingering: TrackedSet<String> = []
    /// The reference of this region's next routed publish. References start from a point drawn from
    /// the incarnation (`firstRef`), so that an acknowledgment addressed to an earlier incarnation of
    /// this region (sent before a crash, delivered after the restart) matches nothing here.
    var nextRef: UInt64 = 1
    var pending: [UInt64: PendingPublish] = [:]
    var dirty: Set<String> = []
    var counters: [String: LinkCounters] = [:]
    /// Per topic: the sequence number of this region's last own presence change. Numbers come from
    /// `presenceClock`, so they keep growing within an incarnation even when a topic is swept and comes back.
    var presenceSequence: TrackedMap<String, UInt64> = [:]
    /// The last presence sequence number handed out, over all topics.
    var presenceClock: UInt64 = 0
    /// Per topic and owner: the newest (incarnation, sequence) applied.
    var presenceSeen: TrackedMap<String, [String: (incarnation: UInt64, sequence: UInt64)]> = [:]
    /// Per topic: the hop this region last sent its own presence snapshot through.
    var presenceRoute: TrackedMap<String, String> = [:]
    /// Per topic and owner: since when the owner has been unreachable.
    var stalePresence: TrackedMap<String, [String: TernInstant]> = [:]
    /// Per topic: this region's presence changes not yet sent.
    var presencePending: TrackedMap<String, [PresenceChange]> = [:]
    /// Since when each unreachable region has been unreachable.
    var unreachableSince: [String: TernInstant] = [:]
    /// Regions passed over as homes: unreachable for `failoverAfter`, as of the last topology change.
    /// Homes move only when this set is recomputed, together with the epoch changes that go with it,
    /// so nothing is ever sequenced in another region's epoch in between.
    var failed: Set<String> = []
    /// The home each topic had at the last topology change.
    var lastHome: TrackedMap<String, String> = [:]
    /// Topics whose replica report is due at the end of the current batch.
    var replicaReports: TrackedSet<String> = []

    /// Turns on recording which keys of the per-topic maps and link queues change, for the
    /// per-event invariant check.
    mutating func trackChanges() {
        links.tracking = true
        upstream.tracking = true
        children.tracking = true
        awaitingSync.tracking = true
        lingering.tracking = true
        presenceSequence.tracking = true
        presenceSeen.tracking = true
        presenceRoute.tracking = true
        stalePresence.tracking = true
        presencePending.tracking = true
        lastHome.tracking = true
        replicaReports.tracking = true
    }
}

extension RelayCore {
    /// A link whose queue stays past this many times `maxLinkQueueBytes` after its live data is
    /// shed is reset.
    static let linkQueueResetFactor = 4

    /// How far ahead a restarted home continues an epoch it adopts from a child.
    static let adoptionJump: UInt64 = 1_000_000

    /// Per-link counters, by neighbour.
    public var linkCounters: [String: LinkCounters] { mesh?.counters ?? [:] }

    /// The smoothed round-trip time of each up link, measured with heartbeats.
    public var linkRoundTrips: [String: Duration] { mesh?.links.compactMapValues(\.roundTrip) ?? [:] }

    /// What waits to be sent on each link: messages and their estimated bytes not yet handed to
    /// the driver, and batches sent but not yet credited by the peer.
    public var linkQueues: [String: LinkQueueDepth] {
        mesh?.links.mapValues { LinkQueueDepth(messages: $0.queue.count, bytes: $0.queuedBytes, unacknowledgedBatches: $0.unacknowledged) } ?? [:]
    }

    /// The neighbours whose links are up.
    public var upLinks: [String] { mesh?.up.sorted() ?? [] }

    /// The regions no route reaches now (each fails over `failover_after` after it became unreachable).
    public var unreachableRegions: [String] { mesh?.unreachableSince.keys.sorted() ?? [] }

    /// The region that sequences `topic`: pinned by namespace, else first by rendezvous order among
    /// the regions not unreachable for longer than failover_after. For drivers and tests; the core's
    /// own code, which changes state, asks `currentHome(of:)`.
    public func home(of topic: String) -> String {
        guard mesh != nil else { return config.region }
        return Self.home(of: topic, in: mesh!.config, excluding: mesh!.failed) ?? config.region
    }

    /// `home(of:)` for mutating code: a non-mutating method called from a mutating one makes Swift
    /// copy the whole core first, and this is asked on every subscribe and presence message.
    mutating func currentHome(of topic: String) -> String {
        guard mesh != nil else { return config.region }
        return Self.home(of: topic, in: mesh!.config, excluding: mesh!.failed) ?? config.region
    }

    mutating func isHome(_ topic: String) -> Bool { mesh == nil || currentHome(of: topic) == config.region }

    /// The region that sequences `topic` when every region is alive: a failover home is any other.
    func canonicalHome(of topic: String) -> String {
        guard mesh != nil else { return config.region }
        return Self.home(of: topic, in: mesh!.config, excluding: []) ?? config.region
    }

    /// The home of `topic` in a mesh: pinned by its namespace, else the first region by rendezvous
    /// order that is not `excluded`.
    static func home(of topic: String, in config: MeshConfig, excluding excluded: Set<String>) -> String? {
        if !config.pinnedHomes.isEmpty, let ns = TopicName.namespace(of: topic), let pinned = config.pinnedHomes[String(ns)] { return pinned }
        return Rendezvous.first(topic: topic, regions: config.graph.regions, excluding: excluded)
    }

    // MARK: Link events

    mutating func linkUp(_ peer: String, now: TernInstant) {
        guard mesh != nil, mesh!.config.graph.neighbours(of: config.region).contains(peer) else { return }
        mesh!.up.insert(peer)
        mesh!.links.updateValue(LinkOutbox(now: now), forKey: peer)
        scheduleLiveness(peer, at: now + mesh!.config.heartbeatInterval)
        for (origin, a) in mesh!.adverts.sorted(by: { $0.key < $1.key }) {
            enqueueLink(peer, .linkState(origin: origin, incarnation: a.incarnation, sequence: a.sequence, neighbours: a.neighbours.sorted()))
        }
        advertiseOwnLinks()
        topologyChanged(now: now)
    }

    mutating func linkDown(_ peer: String, now: TernInstant) {
        guard mesh != nil, mesh!.up.remove(peer) != nil else { return }
        mesh!.links.removeValue(forKey: peer)
        mesh!.dirty.remove(peer)
        for topic in mesh!.children.keys.sorted() where mesh!.children[topic]?.contains(peer) == true {
            mesh!.children.update(topic) { $0.removeValue(forKey: peer) }
            if mesh!.children[topic]?.isEmpty == true { mesh!.children.removeValue(forKey: topic) }
        }
        for topic in mesh!.awaitingSync.keys.sorted() {
            mesh!.awaitingSync.update(topic) { $0.removeAll { $0.child == peer } }
            if mesh!.awaitingSync[topic]?.isEmpty == true { mesh!.awaitingSync.removeValue(forKey: topic) }
        }
        for topic in mesh!.upstream.keys.sorted() where mesh!.upstream[topic] == peer {
            mesh!.upstream.removeValue(forKey: topic)
            // The cache may fall behind until a new upstream catches it up; children must wait for that.
            topics.update(topic) { $0.stream.catchUp() }
        }
        for ref in mesh!.pending.keys.sorted() where mesh!.pending[ref]?.sentVia == peer {
            mesh!.pending.update(ref) { $0.sentVia = nil }
        }
        advertiseOwnLinks()
        topologyChanged(now: now)
    }

    /// Handles one batch from `peer`, then grants it credit for another.
    mutating func linkBatch(_ peer: String, _ messages: [LinkMessage], now: TernInstant) {
        guard mesh != nil, mesh!.up.contains(peer) else { return }
        mesh!.links.update(peer) { $0.lastReceivedAt = now }
        var needsCredit = false
        for message in messages {
            if !message.isControl { needsCredit = true }
            linkMessage(peer, message, now: now)
        }
        sendReplicaReports()
        if needsCredit { enqueueLink(peer, .credit(batches: 1)) }
    }

    mutating func linkMessage(_ peer: String, _ message: LinkMessage, now: TernInstant) {
        switch message {
        case .linkState(let origin, let incarnation, let sequence, let neighbours):
            receiveAdvert(from: peer, origin: origin, LinkStateAdvert(incarnation: incarnation, sequence: sequence, neighbours: Set(neighbours)), now: now)
        case .interest(let topic, let since, let fork):
            childInterest(peer, topic: topic, since: since, fork: fork, now: now)
        case .epochSwitch(let topic, let from, let to):
            receiveEpochSwitch(topic, from: from, to: to, from: peer, now: now)
        case .uninterest(let topic):
            mesh!.children.update(topic) { $0.removeValue(forKey: peer) }
            if mesh!.children[topic]?.isEmpty == true { mesh!.children.removeValue(forKey: topic) }
            mesh!.awaitingSync.update(topic) { $0.removeAll { $0.child == peer } }
            if mesh!.awaitingSync[topic]?.isEmpty == true { mesh!.awaitingSync.removeValue(forKey: topic) }
            reconcileInterest(topic, now: now)
            sweepIfIdle(topic, now: now)
        case .data(let publication):
            receiveData(publication, from: peer)
        case .caughtUp(let topic, let position):
            // Only the current upstream speaks for the stream; a former parent's late words are ignored.
            if mesh!.upstream[topic] == peer { receiveCaughtUp(topic, position, now: now) }
        case .gap(let topic, let position, let reason):
            if mesh!.upstream[topic] == peer { receiveGap(topic, position, reason, now: now) }
        case .resync(let topic):
            if mesh!.upstream[topic] == peer { askAgain(topic, from: peer) }
        case .publish(let topic, let id, let data, let user, let origin, let ref, let receivedAtWall, let firstAt):
            receivePublish(topic: topic, id: id, data: data, user: user, origin: origin, ref: ref, receivedAtWall: receivedAtWall,
                           firstAt: firstAt, now: now)
        case .trace(let topic, let region, let home, let on):
            receiveTraceRequest(topic: topic, region: region, home: home, on: on, now: now)
        case .ack(let origin, let ref, let topic, let result):
            receiveAck(origin: origin, ref: ref, topic: topic, result: result)
        case .recover(let topic, let home, let replica, let after):
            receiveRecover(topic: topic, home: home, replica: replica, after: after)
        case .recovered(let topic, let home, let replica, let publication, let position):
            receiveRecovered(topic: topic, home: home, from: replica, publication: publication, position: position, now: now)
        case .presenceDigest(let topic, let owners):
            if mesh!.upstream[topic] == peer { receivePresenceDigest(topic, owners, from: peer) }
        case .presence(let topic, let owner, let incarnation, let sequence, let change, let towardsHome):
            // Down the tree, only the upstream speaks for a topic: a late message from a former parent
            // would plant entries in a region that no longer follows the topic.
            if towardsHome || mesh!.upstream[topic] == peer {
                receivePresence(topic: topic, owner: owner, incarnation: incarnation, sequence: sequence, change: change,
                                towardsHome: towardsHome, now: now)
            }
        case .heartbeat(let sentAt):
            enqueueLink(peer, .heartbeatReply(sentAt: sentAt))
        case .heartbeatReply(let sentAt):
            // Smoothed like TCP's estimate: an eighth of each new sample.
            let sample = Duration.nanoseconds(max(0, now.nanoseconds - sentAt))
            if let rtt = mesh!.links[peer]?.roundTrip {
                mesh!.links.update(peer) { $0.roundTrip = .nanoseconds(rtt.ternNanoseconds + (sample.ternNanoseconds - rtt.ternNanoseconds) / 8) }
            } else {
                mesh!.links.update(peer) { $0.roundTrip = sample }
            }
        case .follow(let topic, let replica, let home, let from):
            receiveFollow(topic: topic, replica: replica, home: home, from: from, now: now)
        case .unfollow(let topic, let replica):
            receiveUnfollow(topic: topic, replica: replica, now: now)
        case .replicated(let topic, let epoch, let from, let to, let home):
            receiveReplicated(topic: topic, epoch: epoch, from: from, to: to, home: home)
        case .credit(let batches):
            let outstanding = mesh!.links[peer]?.unacknowledged ?? 0
            mesh!.links.update(peer) { $0.unacknowledged = max(0, outstanding - batches) }
            mesh!.dirty.insert(peer)
        }
    }

    /// Re-expresses interest in `topic` to its upstream from this region's own position: the upstream
    /// catches it up and sends full presence snapshots again.
    mutating func askAgain(_ topic: String, from peer: String) {
        guard var t = topics[topic] else { return }
        t.stream.catchUp()
        topics.updateValue(t, forKey: topic)
        enqueueLink(peer, .interest(topic: topic, since: t.stream.synced ? t.stream.position : nil, fork: t.stream.fork))
    }

    // MARK: Link state and routes

    mutating func advertiseOwnLinks() {
        mesh!.sequence += 1
        let advert = LinkStateAdvert(incarnation: mesh!.incarnation, sequence: mesh!.sequence, neighbours: mesh!.up)
        mesh!.adverts[config.region] = advert
        for peer in mesh!.up.sorted() {
            enqueueLink(peer, .linkState(origin: config.region, incarnation: advert.incarnation, sequence: advert.sequence, neighbours: advert.neighbours.sorted()))
        }
    }

    mutating func receiveAdvert(from peer: String, origin: String, _ advert: LinkStateAdvert, now: TernInstant) {
        guard origin != config.region else { return }
        // Newer incarnations win; within one, higher sequences. A report from an older incarnation is stale.
        if let known = mesh!.adverts[origin],
           known.incarnation > advert.incarnation || (known.incarnation == advert.incarnation && known.sequence >= advert.sequence) {
            return
        }
        let restarted = mesh!.adverts[origin].map { $0.incarnation < advert.incarnation } ?? false
        mesh!.adverts[origin] = advert
        if restarted { presenceOwnerRestarted(origin, incarnation: advert.incarnation) }
        for next in mesh!.up.sorted() where next != peer {
            enqueueLink(next, .linkState(origin: origin, incarnation: advert.incarnation, sequence: advert.sequence, neighbours: advert.neighbours.sorted()))
        }
        topologyChanged(now: now)
    }

    /// Whether the edge between `a` and `b` is up: this region's own links by `up`, others by both
    /// ends' adverts. Takes only what it reads, so that a path search does not copy the whole core.
    static func edgeIsUp(_ a: String, _ b: String, region: String, up: Set<String>, adverts: [String: LinkStateAdvert]) -> Bool {
        if a == region { return up.contains(b) }
        if b == region { return up.contains(a) }
        return adverts[a]?.neighbours.contains(b) == true && adverts[b]?.neighbours.contains(a) == true
    }

    /// Shortest paths from `source` over the edges that are up now (in a mesh).
    func shortestPathsNow(from source: String) -> ShortestPaths {
        let region = config.region
        let up = mesh!.up
        let adverts = mesh!.adverts
        return mesh!.config.graph.shortestPaths(from: source) { Self.edgeIsUp($0, $1, region: region, up: up, adverts: adverts) }
    }

    mutating func topologyChanged(now: TernInstant) {
        mesh!.routes = shortestPathsNow(from: config.region)
        mesh!.trees = [:]
        for r in mesh!.config.graph.regions where r != config.region {
            if mesh!.routes.reaches(r) {
                mesh!.unreachableSince[r] = nil
            } else if mesh!.unreachableSince[r] == nil {
                mesh!.unreachableSince[r] = now
                schedule(now + mesh!.config.failoverAfter, .failoverCheck)
            }
            if let since = mesh!.unreachableSince[r], since + mesh!.config.failoverAfter <= now {
                mesh!.failed.insert(r)
            } else {
                mesh!.failed.remove(r)
            }
        }
        for topic in topics.keys.sorted() {
            let home = self.currentHome(of: topic)
            if let last = mesh!.lastHome[topic], last != home { homeChanged(topic, from: last, to: home, now: now) }
            mesh!.lastHome.updateValue(home, forKey: topic)
            if home == config.region {
                if topics[topic]?.stream.recovery != nil { askForRecovery(topic) }
                updateReplica(topic)
            } else if let following = topics[topic]?.stream.replicaOf, following != home {
                // The home changed; the new one chooses its own replica.
                topics.update(topic) { $0.stream.replicaOf = nil }
            }
            reconcileInterest(topic, now: now)
            refreshTrace(topic)
        }
        for ref in mesh!.pending.keys.sorted() {
            // Forwarding one may settle others (a publish sequenced here answers its relayed copies).
            guard let p = mesh!.pending[ref] else { continue }
            if p.sentVia == nil || p.sentTo != currentHome(of: p.topic) { forwardPending(ref) }
        }
        refreshPresenceRoutes(now: now)
    }

    /// A failover or a heal moved `topic`'s home.
    mutating func homeChanged(_ topic: String, from old: String, to new: String, now: TernInstant) {
        guard topics.contains(topic) else { return }
        if new == config.region {
            topics.update(topic) { $0.stream.replicaOf = nil }
        } else if old == config.region {
            topics.update(topic) { $0.stream.recovery = nil }
            failAcknowledgments(topic, where: { _ in true },
                "the home of '\(topic)' moved to \(new) before a second region confirmed the publication; retry with the same id")
            releaseReplica(topic)
        }
        guard var t = topics[topic] else { return }
        if new == config.region {
            // This region takes over: continue in a new epoch of its own, remembering where the old one was left.
            let (left, wasSynced) = t.stream.takeOver(epoch: "\(config.region).\(String(rng.next() & 0xFFFF_FFFF, radix: 16))",
                                               serial: joinSerial, now: now)
            topics.updateValue(t, forKey: topic)
            let to = t.stream.position
            if wasSynced {
                broadcast(topic, .epochChanged(topic: topic, position: to), volatileKey: nil)
                for child in mesh!.children[topic]?.orderedKeys ?? [] where mesh!.children[topic]?[child] == .live {
                    enqueueLink(child, .epochSwitch(topic: topic, from: left, to: to))
                }
            }
            if let upstream = mesh!.upstream.removeValue(forKey: topic), mesh!.up.contains(upstream) {
                enqueueLink(upstream, .uninterest(topic: topic))
            }
            becameSynced(topic, now: now)
        } else if old == config.region {
            // The canonical home is back: follow it; once it has caught this region up, hand it what
            // this region accepted meanwhile (`resequenceFailoverLog`).
            topics.update(topic) { $0.stream.catchUp() }
        }
    }

    /// Sends the publications this region accepted as a failover home to the canonical home,
    /// which sequences them again, deduplicated by id.
    mutating func resequenceFailoverLog(_ topic: String, now: TernInstant) {
        // Only the canonical home's stream is final: while another failover home sequences, the log waits.
        guard topics[topic]?.stream.failoverLog.isEmpty == false, !isHome(topic),
              currentHome(of: topic) == canonicalHome(of: topic), let log = topics.update(topic, { $0.stream.takeFailoverLog() }) ?? nil else { return }
        for p in log {
            routePublish(.resequence, topic: topic, id: p.id, data: p.data, user: p.user,
                         firstAt: p.position.epoch.isEmpty ? p.firstPosition : p.position, now: now)
        }
        // The log kept the topic wanted here; what remains is ordinary interest.
        reconcileInterest(topic, now: now)
    }

    /// A publication of the failover log that the canonical home did not take (it timed out on the
    /// way, or the home moved): back into the log, to go again once this region is synced with the home.
    mutating func resequenceFailed(_ pending: PendingPublish, now: TernInstant) {
        guard topics[pending.topic] != nil else { return }
        topics.update(pending.topic) { $0.stream.logAgain(pending, now: now) }
        reconcileInterest(pending.topic, now: now)
        if isCurrent(pending.topic) { resequenceFailoverLog(pending.topic, now: now) }
    }

    /// The upstream moved this region's stream to another epoch (a failover, or the merge after a heal).
    mutating func receiveEpochSwitch(_ topic: String, from: StreamPosition, to: StreamPosition, from peer: String, now: TernInstant) {
        guard var t = topics[topic], mesh!.upstream[topic] == peer else { return }
        if !t.stream.synced {
            // This region asked to start at `from` in the canonical epoch, and the upstream moves it across to
            // a failover epoch from there: it stands at `from` first, as when the first publication after
            // `from` arrives, so that the failover epoch's publications are kept (as that home's replica, it
            // confirms them) and delivered. From a failover epoch this region never held (it restarted),
            // the switch back is not taken: it does not know which of that epoch's publications its resumed
            // subscribers have (`learnEpochBefore` has not answered), and publishers' retries of them come
            // without a first position. It is positioned where the upstream has caught it up to, and those
            // subscribers are told.
            guard t.stream.awaitingFrom == from, from.epoch.hasPrefix(canonicalHome(of: topic) + ".") else { return }
            withTopic(topic) { t in
                t.stream.adopt(from)
                t.stream.sync = .catchingUp
            }
            learnEpochBefore(topic, from: from, upstream: peer)
            becameSynced(topic, now: clock)
            guard let positioned = topics[topic], positioned.stream.synced else { return }
            t = positioned
        }
        guard t.stream.position == from else {
            if !t.stream.resyncing {
                topics.update(topic) { $0.stream.catchUp() }
                enqueueLink(peer, .interest(topic: topic, since: t.stream.position, fork: t.stream.fork))
            }
            return
        }
        t.stream.switchEpoch(from: from, to: to, canonical: canonicalHome(of: topic) + ".", serial: joinSerial,
                      mergeUntil: now + config.limits.idempotencyWindow)
        topics.updateValue(t, forKey: topic)
        broadcast(topic, .epochChanged(topic: topic, position: to), volatileKey: nil)
        for child in mesh!.children[topic]?.orderedKeys ?? [] where mesh!.children[topic]?[child] == .live {
            enqueueLink(child, .epochSwitch(topic: topic, from: from, to: to))
        }
        // Children that were waiting for this region to reach them in the old epoch are served in the new one.
        if t.stream.synced, !t.stream.resyncing, let parked = mesh!.awaitingSync.removeValue(forKey: topic) {
            for (child, since, fork) in parked where mesh!.up.contains(child) {
                serveChild(child, topic: topic, since: since, fork: fork, now: now)
            }
        }
    }

    mutating func tree(rootedAt home: String) -> ShortestPaths {
        if let t = mesh!.trees[home] { return t }
        let t = shortestPathsNow(from: home)
        mesh!.trees[home] = t
        return t
    }

    /// This region's parent in `topic`'s fan-out tree, if the home is reachable.
    mutating func parent(of topic: String) -> String? {
        tree(rootedAt: currentHome(of: topic)).parent[config.region]
    }

    /// Regions that cannot reach a topic's home skip it; this answers whether one can.
    mutating func canReach(_ region: String) -> Bool { region == config.region || mesh?.routes.reaches(region) == true }

    // MARK: Interest

    mutating func hasInterest(_ topic: String) -> Bool {
        let children = mesh == nil ? false : !(mesh!.children[topic]?.isEmpty ?? true)
        return topics.reading(topic) { t in
            !t.subscribers.isEmpty || !t.pollWaiters.isEmpty || children
                || !t.pendingSubscribes.isEmpty || t.stream.replicaOf != nil || !t.stream.failoverLog.isEmpty
        } ?? false
    }

    /// Subscribes upstream when the first local subscriber or child appears, moves
    /// the subscription when the tree changes, and lets it go after a linger.
    mutating func reconcileInterest(_ topic: String, now: TernInstant) {
        guard mesh != nil, topics.contains(topic) else { return }
        let wanted = !isHome(topic) && hasInterest(topic)
        if wanted {
            mesh!.lingering.remove(topic)
            let parent = self.parent(of: topic)
            let current = mesh!.upstream[topic]
            guard current != parent else { return }
            if let old = current, mesh!.up.contains(old) { enqueueLink(old, .uninterest(topic: topic)) }
            mesh!.upstream.setValue(parent, forKey: topic)
            if let parent, let (since, fork) = topics.update(topic, { t -> (StreamPosition?, StreamPosition?) in
                // Where it stands is read before catching up, as it always was.
                let since = t.stream.synced ? t.stream.position : t.stream.awaitingFrom
                let fork = t.stream.fork
                t.stream.catchUp()
                return (since, fork)
            }) {
                enqueueLink(parent, .interest(topic: topic, since: since, fork: fork))
            }
        } else if let current = mesh!.upstream[topic] {
            if isHome(topic) || current != parent(of: topic) {
                // No longer the way to the home: lingering there would keep a stale stream looking current.
                if mesh!.up.contains(current) { enqueueLink(current, .uninterest(topic: topic)) }
                mesh!.upstream.removeValue(forKey: topic)
                mesh!.lingering.remove(topic)
                if !isHome(topic) { forgetRemotePresence(topic) }
            } else if !mesh!.lingering.contains(topic) {
                mesh!.lingering.insert(topic)
                schedule(now + mesh!.config.interestLinger, .interestLinger(topic))
            }
        }
    }

    mutating func interestLingerEnded(_ topic: String, now: TernInstant) {
        guard mesh != nil, mesh!.lingering.remove(topic) != nil, !hasInterest(topic) else { return }
        if let current = mesh!.upstream.removeValue(forKey: topic), mesh!.up.contains(current) {
            enqueueLink(current, .uninterest(topic: topic))
        }
        if !isHome(topic) { forgetRemotePresence(topic) }
        sweepIfIdle(topic, now: now)
    }

    /// Whether this region's cache of `topic` is the home's stream as of now: synced, not catching up,
    /// and fed by its parent in the home's tree. A cache whose upstream lapsed or is no longer the
    /// way to the home may be stale (the home moved meanwhile) and must not serve children.
    mutating func isCurrent(_ topic: String) -> Bool {
        guard topics.reading(topic, { $0.stream.synced && !$0.stream.resyncing }) == true, let up = mesh?.upstream[topic] else { return false }
        return up == parent(of: topic)
    }

    /// A child region wants `topic`: serve it from this region's stream, or wait until this region has one.
    mutating func childInterest(_ child: String, topic: String, since: StreamPosition?, fork: StreamPosition?, now: TernInstant) {
        guard case .success(let options) = namespaceOptions(for: topic) else { return }
        ensureTopic(topic, options, now: now)
        topics.update(topic) { $0.lastActivity = now }
        if mesh!.children[topic] == nil { mesh!.children.updateValue(IndexedMap(), forKey: topic) }
        mesh!.children.update(topic) { $0[child] = .resyncing }
        // Serve from this region's stream only when it is current: the home always is; a cache is
        // once its upstream has caught it up. A child may be ahead of a cache that is catching up.
        if isHome(topic) || isCurrent(topic) {
            serveChild(child, topic: topic, since: since, fork: fork, now: now)
        } else {
            mesh!.awaitingSync[topic, default: []].removeAll { $0.child == child }
            mesh!.awaitingSync[topic, default: []].append((child, since, fork))
            if topics[topic]?.stream.synced == false, topics[topic]?.stream.awaitingFrom == nil, mesh!.upstream[topic] == nil, let since {
                // Not asked upstream yet: ask from where the child stands, so the data it needs passes through here.
                topics.update(topic) { $0.stream.sync = .unsynced(from: since) }
            }
            reconcileInterest(topic, now: now)
        }
    }

    /// Sends a child what it missed after `since` (or a gap marker), then live data.
    /// A child on another epoch is moved across with an epoch switch where the
    /// rings allow: back to the canonical epoch from its fork after a heal, or
    /// from the old epoch into this failover epoch.
    mutating func serveChild(_ child: String, topic: String, since: StreamPosition?, fork: StreamPosition? = nil, now: TernInstant) {
        if isHome(topic), topics[topic]?.stream.fresh == true,
           let held = [fork, since].compactMap({ $0 }).first(where: { $0.epoch.hasPrefix(config.region + ".") }),
           held.offset.saturatingAdd(Self.adoptionJump) < UInt64.max / 2 {
            // This home restarted and lost the stream, but a child still holds this region's epoch:
            // recover the epoch from the replica, then continue it (see `beginRecovery`).
            beginRecovery(topic, held: held, now: now)
        }
        if topics[topic]?.stream.recovery != nil {
            if let held = [fork, since].compactMap({ $0 }).first(where: { $0.epoch == topics[topic]?.stream.recovery?.held.epoch }) {
                noteHeld(topic, held)
            }
            mesh!.awaitingSync[topic, default: []].removeAll { $0.child == child }
            mesh!.awaitingSync[topic, default: []].append((child, since, fork))
            return
        }
        topics.update(topic) { $0.stream.fresh = false }
        guard let current = topics[topic]?.stream.position else { return }
        if isHome(topic), let adopted = topics[topic]?.stream.adoptedFrom,
           case let jumped = adopted.offset.saturatingAdd(Self.adoptionJump),
           [since, fork].contains(where: { $0.map { $0.epoch == adopted.epoch && $0.offset > adopted.offset && $0.offset < jumped } ?? false }) {
            // The child holds publications past where this home continued the epoch, which no region it
            // recovered from held (its successor did not answer in time). Ask the child for them before
            // anything below reaches it; each one not sequenced here yet (by id) is sequenced again, so
            // the regions that missed it get it (`resequenceUnrecovered`).
            route(.recover(topic: topic, home: config.region, replica: child, after: adopted), to: child)
        }
        if let left = topics[topic]?.stream.fork, left.epoch != current.epoch,
           [since, fork].contains(where: { $0.map { $0.epoch == left.epoch && $0.offset > left.offset } ?? false }) {
            // This region left the old home's epoch at `left` (it took over, or followed the region that
            // did), but the child went further in it: it followed the old home's replica, which held what
            // the old home acknowledged last. Ask the child for those publications; the home sequences
            // each one it has not sequenced yet again, under its id (`resequenceUnrecovered`).
            route(.recover(topic: topic, home: currentHome(of: topic), replica: child, after: left), to: child)
        }
        if !isHome(topic), let since, since.epoch == current.epoch, since.offset > current.offset {
            // The child is further on than this region (it followed a parent that was ahead): sending
            // it back with a gap would repeat what its subscribers have. Serve it once this region is there.
            mesh!.awaitingSync[topic, default: []].removeAll { $0.child == child }
            mesh!.awaitingSync[topic, default: []].append((child, since, fork))
            return
        }
        let home = isHome(topic)
        guard let plan = withTopic(topic, { $0.stream.catchUpPlan(since: since, fork: fork, isHome: home, now: now) }) else { return }
        switch plan {
        case .serve(let replay, let switchFrom, let switchTo, let then, let at):
            for p in replay { sendData(child, p) }
            if let switchFrom, let switchTo { enqueueLink(child, .epochSwitch(topic: topic, from: switchFrom, to: switchTo)) }
            for p in then { sendData(child, p) }
            enqueueLink(child, .caughtUp(topic: topic, position: at))
        case .gap(let at, let reason):
            enqueueLink(child, .gap(topic: topic, position: at, reason: reason))
        }
        mesh!.children.update(topic) { $0[child] = .live }
        sendPresenceSnapshots(topic, to: child)
    }

    mutating func sendData(_ child: String, _ publication: Publication, live: Bool = false) {
        enqueueLink(child, .data(publication), live: live)
        mesh!.counters[child, default: LinkCounters()].dataEntries += 1
    }

    // MARK: Data from upstream

    mutating func receiveData(_ publication: Publication, from peer: String) {
        let topic = publication.topic
        guard topics.contains(topic), mesh!.upstream[topic] == peer else { return }
        // The topic's state is changed in place (never copied out and written back, which would copy
        // its history ring on every publication).
        if withTopic(topic, { $0.stream.synced }) == false {
            // Data from where this region asked to start: it is now positioned there, still catching up.
            let positioned = withTopic(topic) { t -> StreamPosition? in
                guard let from = t.stream.awaitingFrom, publication.position.epoch == from.epoch,
                      publication.position.offset.follows(from.offset) else { return nil }
                t.stream.adopt(from)
                t.stream.sync = .catchingUp
                return from
            }
            guard let from = positioned ?? nil else { return }
            learnEpochBefore(topic, from: from, upstream: peer)
            // Subscribers and children waiting for this region are answered at `from` first, so the
            // publications that follow reach them as live data, in order.
            becameSynced(topic, now: clock)
            guard topics.contains(topic) else { return }
        }
        switch withTopic(topic, { $0.stream.place(publication.position) }) {
        case nil, .stale?: return
        case .behind(let position, let fork)?:
            enqueueLink(peer, .interest(topic: topic, since: position, fork: fork))
            return
        case .next?: break
        }
        var publication = publication
        // The last place is kept for the `delivered` hop, so that a subscriber always sees where it was delivered.
        if var hops = publication.trace, hops.count < TraceHop.maxHops - 1 {
            hops.append(TraceHop(region: config.region, step: .relayed, at: wallNow))
            publication.trace = hops
        }
        let waiting = withTopic(topic) { t -> Bool in
            t.stream.append(relayed: publication)
            return !t.pendingSubscribes.isEmpty
        } ?? false
        replicaReceived(publication)
        stats.relayedPublications += 1
        deliver(publication)
        serveChildrenCaughtUp(topic, now: clock)
        if waiting { answerSubscribersReached(topic, now: clock) }
    }

    mutating func receiveCaughtUp(_ topic: String, _ position: StreamPosition, now: TernInstant) {
        guard var t = topics[topic], !t.stream.isBehind(position) else { return }
        if t.stream.synced && (position.epoch != t.stream.epoch || position.offset != t.stream.offset) {
            receiveGap(topic, position, .evicted, now: now)
            return
        }
        let positioning = !t.stream.synced
        t.stream.adopt(position)
        t.stream.sync = .current
        topics.updateValue(t, forKey: topic)
        if positioning, let upstream = mesh!.upstream[topic] { learnEpochBefore(topic, from: position, upstream: upstream) }
        becameSynced(topic, now: now)
    }

    /// The upstream cannot fill this region's gap: reset the regional cache and tell everyone downstream.
    mutating func receiveGap(_ topic: String, _ position: StreamPosition, _ reason: RecoveryFailure, now: TernInstant) {
        guard var t = topics[topic], !t.stream.isBehind(position) else { return }
        let wasSynced = t.stream.synced
        t.stream.reset(to: position)
        topics.updateValue(t, forKey: topic)
        if wasSynced {
            broadcast(topic, .gap(topic: topic, position: position, reason: reason), volatileKey: nil)
            for child in mesh!.children[topic]?.orderedKeys ?? [] where mesh!.children[topic]?[child] == .live {
                enqueueLink(child, .gap(topic: topic, position: position, reason: reason))
            }
            for client in t.pollWaiters.orderedKeys { completePoll(client) }
        }
        becameSynced(topic, now: now)
    }

    /// Serves children that were further on than this region once it has reached them.
    mutating func serveChildrenCaughtUp(_ topic: String, now: TernInstant) {
        guard let waiting = mesh!.awaitingSync[topic], let t = topics[topic], t.stream.synced else { return }
        let ready = waiting.filter { $0.since.map { $0.epoch == t.stream.epoch && $0.offset <= t.stream.offset } ?? false }
        guard !ready.isEmpty else { return }
        mesh!.awaitingSync.update(topic) { $0.removeAll { w in ready.contains { $0.child == w.child } } }
        if mesh!.awaitingSync[topic]?.isEmpty == true { mesh!.awaitingSync.removeValue(forKey: topic) }
        for (child, since, fork) in ready where mesh!.up.contains(child) {
            serveChild(child, topic: topic, since: since, fork: fork, now: now)
        }
    }

    mutating func becameSynced(_ topic: String, now: TernInstant) {
        resequenceFailoverLog(topic, now: now)
        for (child, since, fork) in mesh!.awaitingSync.removeValue(forKey: topic) ?? [] where mesh!.up.contains(child) {
            serveChild(child, topic: topic, since: since, fork: fork, now: now)
        }
        // Serving children never removes the topic; should it be gone, nobody here waits for it.
        answerSubscribersReached(topic, now: now)
        for client in topics[topic]?.pollWaiters.orderedKeys ?? [] where clients[client]?.pollNeedsSync.contains(topic) == true {
            completePoll(client)
        }
    }

    /// Answers the subscribes that waited for this region's stream, except those of clients that stand
    /// further on in the same epoch than the region: they are answered once the region reaches them
    /// (`receiveData`), or when the subscribe times out, rather than sent backwards. A region can be
    /// behind a client while catching up, and also while current, when its upstream is itself behind
    /// (this region restarted, and its clients had publications its new upstream has yet to receive).
    mutating func answerSubscribersReached(_ topic: String, now: TernInstant) {
        guard let waiting = topics[topic]?.pendingSubscribes, !waiting.isEmpty, let current = topics[topic]?.stream.position,
              topics[topic]?.stream.synced == true else { return }
        topics.update(topic) { $0.pendingSubscribes = [] }
        for pending in waiting where clients[pending.client]?.subscriptions.contains(topic) == true {
            if let since = pending.since, since.epoch == current.epoch, since.offset > current.offset {
                topics.update(topic) { $0.pendingSubscribes.append(pending) }
                continue
            }
            let reply = subscribeReply(topic, since: pending.since, now: now)
            sendSubscribed(pending.client, ref: pending.ref, reply, now: now)
        }
    }

    // MARK: Publishing across regions

    /// Sends a publish towards its home, or sequences it here when this region is the home.
    mutating func routePublish(_ origin: PublishOrigin, topic: String, id: String, data: String, user: String?,
                               firstAt: StreamPosition? = nil, now: TernInstant) {
        if isHome(topic), topics[topic]?.stream.recovery == nil {
            let result = publish(topic: topic, id: id, data: data, user: user, volatile: false, firstAt: firstAt, now: now)
            answerOnceHeld(topic, origin, result)
            return
        }
        let ref = mesh!.nextRef
        mesh!.nextRef += 1
        let id = id.isEmpty ? generatedPublishID() : id
        mesh!.pending[ref] = PendingPublish(origin: origin, topic: topic, id: id, data: data, user: user, receivedAtWall: wallNow,
                                            firstAt: firstAt, sentVia: nil)
        schedule(now + mesh!.config.homeTimeout, .publishTimeout(ref))
        forwardPending(ref)
    }

    mutating func forwardPending(_ ref: UInt64) {
        guard let p = mesh!.pending[ref] else { return }
        var origin = config.region
        var originRef = ref
        if case .relay(let o, let r, _) = p.origin {
            origin = o
            originRef = r
        }
        let home = self.currentHome(of: p.topic)
        if home == config.region, topics[p.topic]?.stream.recovery != nil {
            // Recovering its epoch: the publish waits (until `finishRecovery` or its timeout).
            mesh!.pending.update(ref) { $0.sentVia = nil }
            return
        }
        if home == config.region {
            // A failover made this region the home while the publish was on its way.
            mesh!.pending.removeValue(forKey: ref)
            let received = TraceHop(region: origin, step: .received, at: p.receivedAtWall)
            let result = publish(topic: p.topic, id: p.id, data: p.data, user: p.user, volatile: false,
                                 received: received, firstAt: p.firstAt, now: clock)
            if case .resequence = p.origin, case .failure = result {
                // Not taken here (see `publish`): back into this region's log.
                resequenceFailed(p, now: clock)
                return
            }
            answerOnceHeld(p.topic, p.origin, result)
            return
        }
        guard let hop = mesh!.routes.firstHop(to: home) else {
            mesh!.pending.update(ref) { $0.sentVia = nil }
            return
        }
        mesh!.pending.update(ref) { $0.sentVia = hop }
        mesh!.pending.update(ref) { $0.sentTo = home }
        enqueueLink(hop, .publish(topic: p.topic, id: p.id, data: p.data, user: p.user, origin: origin, ref: originRef,
                                  receivedAtWall: p.receivedAtWall, firstAt: p.firstAt))
        if case .relay = p.origin {
            // Handed on: the origin keeps its own copy and retries if this hop fails.
            mesh!.pending.removeValue(forKey: ref)
        }
    }

    mutating func receivePublish(topic: String, id: String, data: String, user: String?, origin: String, ref: UInt64, receivedAtWall: Int64,
                                 firstAt: StreamPosition?, now: TernInstant) {
        let home = self.currentHome(of: topic)
        if home != config.region || topics[topic]?.stream.recovery != nil {
            if home != config.region, let hop = mesh!.routes.firstHop(to: home) {
                enqueueLink(hop, .publish(topic: topic, id: id, data: data, user: user, origin: origin, ref: ref, receivedAtWall: receivedAtWall,
                                          firstAt: firstAt))
            } else {
                // No route to the home as this region sees it (it may be about to fail over):
                // hold the publish until the view settles, rather than drop it.
                let local = mesh!.nextRef
                mesh!.nextRef += 1
                mesh!.pending[local] = PendingPublish(origin: .relay(origin: origin, ref: ref, topic: topic), topic: topic, id: id, data: data,
                                                      user: user, receivedAtWall: receivedAtWall, firstAt: firstAt, sentVia: nil)
                schedule(now + mesh!.config.homeTimeout, .publishTimeout(local))
            }
            return
        }
        let received = TraceHop(region: origin, step: .received, at: receivedAtWall)
        let result = publish(topic: topic, id: id, data: data, user: user, volatile: false, received: received, firstAt: firstAt, now: now)
        answerOnceHeld(topic, .relay(origin: origin, ref: ref, topic: topic), result)
    }

    mutating func receiveAck(origin: String, ref: UInt64, topic: String, result: PublishResult) {
        if origin != config.region {
            if let hop = mesh!.routes.firstHop(to: origin) { enqueueLink(hop, .ack(origin: origin, ref: ref, topic: topic, result: result)) }
            return
        }
        // An acknowledgment for another topic is not for this publish (it was addressed to another
        // incarnation of this region, or is a peer's mistake): it must not answer it.
        guard mesh!.pending[ref]?.topic == topic, let pending = mesh!.pending.removeValue(forKey: ref) else { return }
        if case .resequence = pending.origin, case .refused = result {
            resequenceFailed(pending, now: clock)
            return
        }
        switch result {
        case .accepted(let position, let duplicate):
            answer(pending.origin, .success(.published(topic: topic, position: position, duplicate: duplicate)))
        case .refused(let code, let message):
            answer(pending.origin, .failure(TernError(code, message)))
        }
    }

    mutating func publishTimedOut(_ ref: UInt64) {
        guard let pending = mesh?.pending.removeValue(forKey: ref) else { return }
        // A held publish of another region just lapses: its origin has its own timeout and retries.
        if case .relay = pending.origin { return }
        if case .resequence = pending.origin {
            resequenceFailed(pending, now: clock)
            return
        }
        answer(pending.origin, .failure(TernError(.internalError,
            "the home of '\(pending.topic)' (\(currentHome(of: pending.topic))) did not answer in time; retry with the same id")))
    }

    mutating func answer(_ origin: PublishOrigin, _ result: Result<ReplyBody, TernError>) {
        switch origin {
        case .client(let client, let ref):
            switch result {
            case .success(let body): send(client, .reply(ref: ref, body))
            case .failure(let error): send(client, .error(ref: ref, error))
            }
        case .api(let request):
            actions.append(.apiReply(request: request, result))
        case .resequence:
            break
        case .relay(let origin, let ref, let topic):
            let ack: PublishResult = switch result {
            case .success(.published(_, let position?, let duplicate)): .accepted(position: position, duplicate: duplicate)
            case .success: .refused(code: .internalError, message: "the home did not sequence the publication")
            case .failure(let error): .refused(code: error.code, message: error.message)
            }
            receiveAck(origin: origin, ref: ref, topic: topic, result: ack)
        }
    }

    mutating func subscribeTimedOut(_ topic: String, now: TernInstant) {
        guard let t = topics[topic], !t.pendingSubscribes.isEmpty else { return }
        if t.stream.synced {
            // Waiting for this region to catch up past the client's own position took too long:
            // answer with what the region has (the client is told if it cannot be recovered).
            topics.update(topic) { $0.pendingSubscribes = [] }
            for pending in t.pendingSubscribes where clients[pending.client]?.subscriptions.contains(topic) == true {
                sendSubscribed(pending.client, ref: pending.ref, subscribeReply(topic, since: pending.since, now: now), now: now)
            }
            return
        }
        topics.update(topic) { $0.pendingSubscribes = [] }
        for pending in t.pendingSubscribes where clients[pending.client]?.subscriptions.contains(topic) == true {
            setTraced(pending.client, topic, false, now: now)
            clients.update(pending.client) { $0.removeSubscription(topic) }
            clients.update(pending.client) { $0.cursor[topic] = nil }
            removeSubscriber(pending.client, from: topic, now: now)
            send(pending.client, .error(ref: pending.ref, TernError(.internalError,
                "the home of '\(topic)' (\(currentHome(of: topic))) cannot be reached from \(config.region); retry")))
        }
    }

    // MARK: Link output

    mutating func enqueueLink(_ peer: String, _ message: LinkMessage, live: Bool = false) {
        // Only up links have a queue (an invariant checked after every event).
        let now = clock
        guard mesh != nil, mesh!.links.update(peer, { $0.append(message, live: live, now: now) }) != nil else { return }
        mesh!.dirty.insert(peer)
    }

    /// Sends what each link may send: at once when idle, otherwise when a batch
    /// is full or has waited `maxBatchDelay`, within the receiver's credit.
    mutating func flushLinks(now: TernInstant) {
        guard mesh != nil, !mesh!.dirty.isEmpty else { return }
        let dirty = mesh!.dirty.sorted()
        mesh!.dirty.removeAll()
        let config = mesh!.config
        for peer in dirty {
            // Taken out of the map while it is worked on, so that changing its queue does not copy it.
            guard var link = mesh!.links.removeValue(forKey: peer) else { continue }
            // Credit messages travel at once and outside the window.
            if link.queue.contains(where: { $0.message.isControl }) {
                let entries = link.queue.filter(\.message.isControl)
                let control = entries.map(\.message)
                link.queue.removeAll(where: { $0.message.isControl })
                link.queuedBytes -= entries.reduce(0) { $0 + $1.bytes }
                actions.append(.sendLink(peer, control))
                link.lastSentAt = now
                mesh!.counters[peer, default: LinkCounters()].batches += 1
                mesh!.counters[peer, default: LinkCounters()].messages += control.count
            }
            if link.queuedBytes > config.maxLinkQueueBytes { link = shedLink(peer, link) }
            if link.queuedBytes > config.maxLinkQueueBytes * Self.linkQueueResetFactor {
                // Even without live data the backlog (catch-up, presence, control) is past every bound:
                // the peer is not draining the link. Start it over; both sides resync on reconnect.
                actions.append(.resetLink(peer, reason: "\(link.queuedBytes) bytes queued after shedding live data "
                    + "(max_link_queue_bytes is \(config.maxLinkQueueBytes)); the peer is not keeping up"))
                linkDown(peer, now: now)
                continue
            }
            while !link.queue.isEmpty, link.unacknowledged < config.sendWindowBatches {
                let due = link.unacknowledged == 0 || link.queuedBytes >= config.maxBatchBytes
                    || (link.oldestQueuedAt.map { $0 + config.maxBatchDelay <= now } ?? false)
                guard due else { break }
                var taken = 0
                var bytes = 0
                while taken < link.queue.count {
                    let size = link.queue[taken].bytes
                    guard taken == 0 || bytes + size <= config.maxBatchBytes else { break }
                    bytes += size
                    taken += 1
                }
                let batch = link.queue[..<taken].map(\.message)
                link.queue.removeFirst(taken)
                link.queuedBytes -= bytes
                link.unacknowledged += 1
                link.oldestQueuedAt = link.queue.isEmpty ? nil : now
                actions.append(.sendLink(peer, batch))
                link.lastSentAt = now
                mesh!.counters[peer, default: LinkCounters()].batches += 1
                mesh!.counters[peer, default: LinkCounters()].messages += batch.count
            }
            if !link.queue.isEmpty, link.unacknowledged < config.sendWindowBatches, !link.flushScheduled {
                link.flushScheduled = true
                schedule((link.oldestQueuedAt ?? now) + config.maxBatchDelay, .linkFlush(peer))
            }
            mesh!.links.updateValue(link, forKey: peer)
        }
    }

    /// A link's queue is over its limit: drop its queued live publications and switch
    /// their topics to resync, so the child asks again from its own position.
    /// Catch-up already queued stays: it is bounded by the history ring and
    /// moves the child forward, so the next catch-up is smaller.
    mutating func shedLink(_ peer: String, _ link: LinkOutbox) -> LinkOutbox {
        var link = link
        var topicsToResync: [String] = []
        link.queue.removeAll { entry in
            guard entry.live, case .data(let p) = entry.message else { return false }
            if !topicsToResync.contains(p.topic) { topicsToResync.append(p.topic) }
            return true
        }
        for topic in topicsToResync {
            mesh!.children.update(topic) { $0[peer] = .resyncing }
            let resync = LinkMessage.resync(topic: topic)
            link.queue.append((resync, false, resync.estimatedBytes))
        }
        link.queuedBytes = link.queue.reduce(0) { $0 + $1.bytes }
        mesh!.counters[peer, default: LinkCounters()].overflows += 1
        return link
    }

    // MARK: Link liveness

    mutating func scheduleLiveness(_ peer: String, at: TernInstant) {
        mesh!.links.update(peer) { $0.livenessAt = at }
        schedule(at, .linkLiveness(peer))
    }

    /// Sends a heartbeat on a link quiet for `heartbeatInterval`, and declares a link down that has
    /// heard nothing for `linkReadTimeout`: a path that silently drops packets is noticed in seconds,
    /// not when TCP gives up.
    mutating func linkLivenessDue(_ peer: String, at: TernInstant, now: TernInstant) {
        guard mesh != nil, let link = mesh!.links[peer], link.livenessAt == at else { return }
        let config = mesh!.config
        let silent = now - link.lastReceivedAt
        if silent >= config.linkReadTimeout {
            actions.append(.resetLink(peer, reason: "nothing received for \(silent.ternMilliseconds) ms (link_read_timeout is \(config.linkReadTimeout.ternMilliseconds) ms)"))
            linkDown(peer, now: now)
            return
        }
        if now - link.lastHeartbeatAt >= config.heartbeatInterval {
            enqueueLink(peer, .heartbeat(sentAt: now.nanoseconds))
            mesh!.links.update(peer) { $0.lastHeartbeatAt = now }
        }
        if now - link.lastDigestAt >= config.presenceDigestInterval {
            mesh!.links.update(peer) { $0.lastDigestAt = now }
            sendPresenceDigests(to: peer)
        }
        let next = min(now + config.heartbeatInterval, link.lastReceivedAt + config.linkReadTimeout)
        scheduleLiveness(peer, at: max(next, now + .milliseconds(1)))
    }

    mutating func linkFlushDue(_ peer: String, now: TernInstant) {
        guard mesh != nil, mesh!.links[peer] != nil else { return }
        mesh!.links.update(peer) { $0.flushScheduled = false }
        mesh!.dirty.insert(peer)
    }
}
