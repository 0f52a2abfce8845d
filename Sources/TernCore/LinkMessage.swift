/// What one region says to a neighbour over an inter-region link.
///
/// The link codec (TernWire) turns batches of these into frames; the
/// simulator passes them as values. Every data entry carries its topic,
/// epoch and offset, so a receiver can always tell a duplicate or a gap.
///
/// Indirect: entries are moved between link queues and batches and, in the simulator, through its
/// event queue, so each is one reference rather than its largest case's payload.
public indirect enum LinkMessage: Sendable, Hashable {
    /// A region's up links, flooded so every relay can compute routes and trees.
    /// `incarnation` changes when the relay restarts; `sequence` orders one incarnation's reports.
    case linkState(origin: String, incarnation: UInt64, sequence: UInt64, neighbours: [String])
    /// The sender wants `topic` (it has subscribers or children); resume after `since`, or start at the current position.
    /// `fork` is where the sender left the canonical stream when a failover moved it to another epoch.
    case interest(topic: String, since: StreamPosition?, fork: StreamPosition?)
    /// The stream continues in another epoch: the receiver, at `from`, moves to `to`; data after `to` follows.
    case epochSwitch(topic: String, from: StreamPosition, to: StreamPosition)
    /// The sender no longer wants `topic`.
    case uninterest(topic: String)
    /// A sequenced publication flowing down the topic's fan-out tree.
    case data(Publication)
    /// Catch-up is complete: the stream now stands at `position` for the receiver.
    case caughtUp(topic: String, position: StreamPosition)
    /// The sender cannot fill the receiver's gap: reset to `position` and tell clients to resync.
    case gap(topic: String, position: StreamPosition, reason: RecoveryFailure)
    /// The receiver fell too far behind: re-express interest from its own position.
    case resync(topic: String)
    /// A publish travelling towards the topic's home; `receivedAtWall` is when the origin relay took it,
    /// in wall-clock nanoseconds on the origin's clock (the first hop of a trace). `firstAt` is where a
    /// failover home sequenced it, when its failover log is being sequenced again (nil otherwise).
    case publish(topic: String, id: String, data: String, user: String?, origin: String, ref: UInt64, receivedAtWall: Int64,
                 firstAt: StreamPosition?)
    /// A region's subscribers want (`on`) or no longer want per-hop timestamps on `topic`'s
    /// publications; routed hop by hop to `home`, which stamps them while any region wants them.
    case trace(topic: String, region: String, home: String, on: Bool)
    /// The home's answer to a publish, travelling back to `origin`.
    case ack(origin: String, ref: UInt64, topic: String, result: PublishResult)
    /// The receiver processed `batches` batches; the sender may send that many more.
    case credit(batches: Int)
    /// The home of `topic` asks `replica` to follow the topic as a hot replica, whether or not it has
    /// subscribers, starting after `from` (what is already held by a replica); routed hop by hop to `replica`.
    case follow(topic: String, replica: String, home: String, from: StreamPosition)
    /// The home of `topic` releases `replica`; routed hop by hop to `replica`.
    case unfollow(topic: String, replica: String)
    /// A replica holds the publications `from...to` of `epoch` (received as data, contiguously);
    /// routed hop by hop to `home`, which acknowledges publishes they cover.
    case replicated(topic: String, epoch: String, from: UInt64, to: UInt64, home: String)
    /// Sent on every link once a heartbeat interval, so the peer's read deadline tells a silent
    /// path from an idle one; `sentAt` is the sender's clock, echoed back to measure the round trip.
    case heartbeat(sentAt: Int64)
    /// The answer to a heartbeat, carrying its `sentAt` back.
    case heartbeatReply(sentAt: Int64)
    /// A change to the presence entries `owner` holds for `topic`, numbered per owner incarnation.
    /// It travels up to the topic's home (`towardsHome`), which fans it out down the tree.
    case presence(topic: String, owner: String, incarnation: UInt64, sequence: UInt64, change: PresenceChange, towardsHome: Bool)
    /// What the sender holds of `topic`'s presence, owner by owner, sent down the tree every
    /// `presenceDigestInterval`: a child that holds something else asks for full snapshots.
    case presenceDigest(topic: String, owners: [PresenceDigestEntry])
    /// A home that restarted and lost its stream asks `replica` for the publications of its own epoch
    /// it holds after `after`; routed hop by hop to `replica`.
    case recover(topic: String, home: String, replica: String, after: StreamPosition)
    /// The answer to `recover` from `replica` (the region asked), routed hop by hop to `home`: one held publication per message, then
    /// one with none that ends the answer (`position`: where the replica stands in that epoch, if it does).
    case recovered(topic: String, home: String, replica: String, publication: Publication?, position: StreamPosition?)

    /// Whether this message travels outside flow control (it is never acknowledged).
    public var isControl: Bool {
        switch self {
        case .credit, .heartbeat, .heartbeatReply: true
        default: false
        }
    }

    /// A rough size for batching limits (the codec's real size differs a little).
    public var estimatedBytes: Int {
        switch self {
        case .linkState(let o, _, _, let n): 24 + o.utf8.count + n.reduce(0) { $0 + $1.utf8.count + 2 }
        case .interest(let t, let s, let f): 20 + t.utf8.count + (s?.epoch.utf8.count ?? 0) + (f?.epoch.utf8.count ?? 0)
        case .epochSwitch(let t, let f, let to): 24 + t.utf8.count + f.epoch.utf8.count + to.epoch.utf8.count
        case .uninterest(let t), .resync(let t): 4 + t.utf8.count
        case .data(let p): 24 + p.topic.utf8.count + p.position.epoch.utf8.count + p.id.utf8.count + p.data.utf8.count + (p.user?.utf8.count ?? 0)
            + (p.trace?.reduce(0) { $0 + 10 + $1.region.utf8.count } ?? 0)
        case .caughtUp(let t, let p), .gap(let t, let p, _): 12 + t.utf8.count + p.epoch.utf8.count
        case .publish(let t, let i, let d, let u, let o, _, _, let f): 24 + (f?.epoch.utf8.count ?? 0) + t.utf8.count + i.utf8.count + d.utf8.count + (u?.utf8.count ?? 0) + o.utf8.count
        case .ack(let o, _, let t, _): 32 + o.utf8.count + t.utf8.count
        case .credit: 5
        case .heartbeat, .heartbeatReply: 9
        case .follow(let t, let r, let h, let f): 20 + t.utf8.count + r.utf8.count + h.utf8.count + f.epoch.utf8.count
        case .unfollow(let t, let r): 8 + t.utf8.count + r.utf8.count
        case .trace(let t, let r, let h, _): 8 + t.utf8.count + r.utf8.count + h.utf8.count
        case .replicated(let t, let e, _, _, let h): 28 + t.utf8.count + e.utf8.count + h.utf8.count
        case .presence(let t, let o, _, _, let change, _):
            switch change {
            case .join(let e): 40 + t.utf8.count + o.utf8.count + e.user.utf8.count
            case .leave: 40 + t.utf8.count + o.utf8.count
            case .snapshot(let entries): 40 + t.utf8.count + o.utf8.count + entries.reduce(0) { $0 + 12 + $1.user.utf8.count }
            }
        case .presenceDigest(let t, let owners): 8 + t.utf8.count + owners.reduce(0) { $0 + 24 + $1.owner.utf8.count }
        case .recover(let t, let h, let r, let a): 20 + t.utf8.count + h.utf8.count + r.utf8.count + a.epoch.utf8.count
        case .recovered(let t, let h, let r, let p, let pos): 24 + t.utf8.count + h.utf8.count + r.utf8.count + (pos?.epoch.utf8.count ?? 0)
            + (p.map { 24 + $0.position.epoch.utf8.count + $0.id.utf8.count + $0.data.utf8.count + ($0.user?.utf8.count ?? 0) } ?? 0)
        }
    }
}

/// What a region holds of one owner's presence entries in a topic: how many, and an
/// order-independent checksum of their connections, so two regions can compare without a list.
public struct PresenceDigestEntry: Sendable, Hashable {
    public var owner: String
    public var incarnation: UInt64
    public var count: UInt32
    public var checksum: UInt64

    /// An entry with every field given.
    public init(owner: String, incarnation: UInt64, count: UInt32, checksum: UInt64) {
        self.owner = owner
        self.incarnation = incarnation
        self.count = count
        self.checksum = checksum
    }
}

/// One change to a region's presence entries for a topic.
public enum PresenceChange: Sendable, Hashable {
    /// A connection joined.
    case join(PresenceEntry)
    /// A connection left.
    case leave(ClientID)
    /// Everything the owner holds (a full state exchange).
    case snapshot([PresenceEntry])
}

/// The home's answer to a forwarded publish.
public enum PublishResult: Sendable, Hashable {
    /// Sequenced at `position`; `duplicate` when the idempotency id had been seen.
    case accepted(position: StreamPosition, duplicate: Bool)
    /// Refused, with the code and message the publisher gets.
    case refused(code: ErrorCode, message: String)
}

/// How a relay takes part in a mesh: the graph and the link tuning.
public struct MeshConfig: Sendable {
    /// All regions and links.
    public var graph: MeshGraph
    /// Namespaces whose topics always live in one region.
    public var pinnedHomes: [String: String]
    /// A batch is sent once it holds this many bytes, even while earlier batches are unacknowledged.
    public var maxBatchBytes: Int = 64 * 1024
    /// A partial batch waits at most this long while earlier batches are unacknowledged.
    public var maxBatchDelay: Duration = .milliseconds(5)
    /// Unacknowledged batches allowed on a link (the receiver's credit).
    public var sendWindowBatches: Int = 8
    /// Bytes queued for a link before the slowest topics are switched to resync.
    public var maxLinkQueueBytes: Int = 8 * 1024 * 1024
    /// How long a region keeps its interest upstream after its last subscriber leaves.
    public var interestLinger: Duration = .seconds(5)
    /// How long a publish or a subscribe may wait for the topic's home.
    public var homeTimeout: Duration = .seconds(10)
    /// How long presence entries of an unreachable region are kept (marked stale) before they are dropped.
    public var presenceTimeout: Duration = .seconds(30)
    /// This relay's incarnation: must grow with every restart of the same region (the driver passes
    /// its start time), so link-state reports of an earlier incarnation are recognised as stale.
    /// Zero draws one at random (tests that never restart a region).
    public var incarnation: UInt64 = 0
    /// How long a region must stay unreachable before its topics move to the next region by rendezvous order.
    public var failoverAfter: Duration = .seconds(5)
    /// How often a region sends each child a digest of the presence it holds for their topics.
    public var presenceDigestInterval: Duration = .seconds(10)
    /// A link that has sent nothing for this long sends a heartbeat.
    public var heartbeatInterval: Duration = .seconds(1)
    /// A link that has received nothing (not even a heartbeat) for this long is down: the path is silent.
    public var linkReadTimeout: Duration = .seconds(3)


    /// A mesh over `graph`.
    public init(graph: MeshGraph, pinnedHomes: [String: String] = [:]) {
        self.graph = graph
        self.pinnedHomes = pinnedHomes
    }
}
