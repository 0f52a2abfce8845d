import HeapModule
import NIOCore

/// How a client is connected to the relay.
public enum Transport: String, Sendable, Hashable {
    case websocket
    case sse
    case poll
}

/// Something that happened, reported by a driver to the relay core.
public enum RelayEvent: Sendable {
    /// A transport connection arrived. It still has to authenticate (WebSocket) or is authenticated with it (SSE, poll).
    case opened(ClientID, Transport)
    /// A decoded client command, numbered `ref` by the client.
    case command(ClientID, ref: UInt64?, ClientCommand)
    /// The driver verified the token of a connect command.
    case authenticated(ClientID, ref: UInt64?, ClientIdentity)
    /// The driver refused the token of a connect command.
    case authenticationFailed(ClientID, ref: UInt64?, AuthFailure)
    /// A frame that could not be turned into a command (malformed, oversized, unknown).
    case badFrame(ClientID, ref: UInt64?, TernError)
    /// The transport connection is gone.
    case closed(ClientID)
    /// A WebSocket's socket filled up (false) or drained (true). While it is full, frames wait in the
    /// client's bounded queue; when it drains, what waited is flushed and frames go straight out again.
    case writable(ClientID, Bool)
    /// An SSE client resumed with this cursor: keep every topic in its event ids, even ones that fail to subscribe.
    case resumeCursor(ClientID, [String: StreamPosition])
    /// A backend published through the HTTP API; answered with `apiReply(request:)`.
    case apiPublish(request: UInt64, topic: String, id: String, data: String)
    /// An inter-region link to a neighbour completed its handshake.
    case linkUp(String)
    /// An inter-region link is gone.
    case linkDown(String)
    /// A batch of messages arrived on the link from a neighbour.
    case linkBatch(String, [LinkMessage])
    /// A long-poll request; answered with `pollReply` now or when something arrives or at the timeout.
    case poll(ClientID, ClientIdentity, topics: [(topic: String, since: StreamPosition?)], timeout: Duration)
    /// The relay is shutting down: tell every client to reconnect, spread over the drain window.
    case drain
    /// Time passed; fire due deadlines.
    case tick
}

/// What a long-poll request gets back.
public struct PollReply: Sendable, Hashable {
    /// The state of one polled topic after this reply.
    public struct TopicState: Sendable, Hashable {
        public var topic: String
        public var position: StreamPosition
        /// False when the cursor's gap could not be filled: the client must resync this topic.
        public var recovered: Bool
        public var failure: RecoveryFailure?
    }

    /// Publications after the cursor, oldest first per topic.
    public var publications: [Publication]
    /// Where each topic stands, to build the next cursor from.
    public var topics: [TopicState]
    /// Why the poll was refused, if it was.
    public var error: TernError?

    /// A reply with every field given.
    public init(publications: [Publication], topics: [TopicState], error: TernError?) {
        self.publications = publications
        self.topics = topics
        self.error = error
    }
}

/// What the core asks its driver to do.
public enum RelayAction: Sendable {
    /// Write this frame to each of these WebSockets, after everything handed over to them before.
    /// Their sockets take frames and nothing of theirs waits in the core's queue, so the frame is not
    /// queued here: the fan-out to them costs the core one entry per subscriber, and the buffer is shared.
    case write(OutboundFrame, [ClientID])
    /// The client's outbox has frames: take them with `takeOutbound` and write them.
    case flush(ClientID)
    /// Verify this token and report `authenticated` or `authenticationFailed`.
    case verifyToken(ClientID, ref: UInt64?, token: String)
    /// Write what is queued (unless the code is slow consumer), then close with `code`.
    case close(ClientID, CloseCode)
    /// The answer to an HTTP publish.
    case apiReply(request: UInt64, Result<ReplyBody, TernError>)
    /// The answer to a long-poll request; the poll client is gone afterwards.
    case pollReply(ClientID, PollReply)
    /// Send this batch to a neighbour, in order after the batches before it.
    case sendLink(String, [LinkMessage])
    /// Close the connection to this neighbour (the core already treats the link as down) and dial again.
    case resetLink(String, reason: String)
}

/// Counters and gauges the driver exports as metrics.
public struct RelayStats: Sendable, Hashable {
    public var connections = 0
    public var subscriptions = 0
    public var topics = 0
    public var publications = 0
    public var deliveries = 0
    public var duplicatePublishes = 0
    public var volatileShed = 0
    public var slowConsumerCloses = 0
    public var rejectedConnections = 0
    /// Publications received from upstream regions and cached here.
    public var relayedPublications = 0
    /// Times a presence digest from upstream showed this region's presence had diverged, and it asked for snapshots again.
    public var presenceResyncs = 0

    /// All zero.
    public init() {}
}

/// The sans-IO heart of one region's relay: clients, topics, presence,
/// history, recovery, permissions and limits.
///
/// Drivers feed it events with `now` and carry out the actions it returns.
/// It never reads a clock, never touches a socket and draws randomness
/// only from the generator it was given.
public struct RelayCore: Sendable {
    struct ClientState: Sendable {
        var transport: Transport
        var identity: ClientIdentity?
        var authenticating = false
        /// Whether `identity` is set, read in place. `identity != nil` compiles to Equatable's `!=` on
        /// two optionals, which copies the identity (and retains its fields) to compare it.
        var hasIdentity: Bool { if case .some = identity { true } else { false } }
        /// Its subscriptions, changed only with `addSubscription` and `removeSubscription`.
        private(set) var subscriptions = IndexedMap<String, Void>()
        /// The number of subscriptions and the sum of their topics' checksums (`RelayCore.checksum`),
        /// and the sum for `traced`: kept beside the collections, by the only methods that change them,
        /// so that the full invariant sweep reads this state alone rather than every client's
        /// collections (`checkInvariantsInPlace`).
        private(set) var subscriptionCount = 0
        private(set) var subscriptionSum: UInt64 = 0
        private(set) var tracedSum: UInt64 = 0
        var outbox: Outbox
        var publishBucket: TokenBucket
        var cursor: [String: StreamPosition] = [:]
        var closing = false
        var counted = false
        var pollNeedsSync: Set<String> = []
        var pollLostCursor: Set<String> = []
        /// Topics this client subscribed to with `trace: true` (changed with `setTrace`).
        private(set) var traced: Set<String> = []
        /// Whether its socket takes frames (WebSockets; the driver reports changes with `writable`).
        var socket: Socket = .writable
        /// What the per-event invariant check last saw of this client (nil before its first check).
        /// Kept here rather than in a map of its own, so that checking a changed client costs no lookup.
        var checked: InvariantShadow.Client?

        /// Whether a frame for this client goes to the driver at once (`RelayAction.write`): a
        /// WebSocket whose socket takes frames, not closing, with nothing waiting in its queue (every
        /// encoded frame holds at least one byte, so no queued bytes means no queued frames).
        var takesFramesDirectly: Bool { transport == .websocket && socket == .writable && !closing && outbox.queuedBytes == 0 }

        mutating func addSubscription(_ topic: String) {
            guard !subscriptions.contains(topic) else { return }
            subscriptions[topic] = ()
            subscriptionCount += 1
            subscriptionSum &+= RelayCore.checksum(topic)
        }

        mutating func removeSubscription(_ topic: String) {
            guard case .some = subscriptions.removeValue(forKey: topic) else { return }
            subscriptionCount -= 1
            subscriptionSum &-= RelayCore.checksum(topic)
        }

        /// Marks `topic` traced or not.
        mutating func setTrace(_ topic: String, _ on: Bool) {
            if on {
                if traced.insert(topic).inserted { tracedSum &+= RelayCore.checksum(topic) }
            } else if traced.remove(topic) != nil {
                tracedSum &-= RelayCore.checksum(topic)
            }
        }
    }

    /// A WebSocket's socket, as its driver last reported it.
    enum Socket: Sendable, Equatable {
        /// It takes frames: they are handed to the driver at once while nothing waits in the queue.
        case writable
        /// It is full: frames wait in the client's queue, bounded in bytes, until it drains.
        case full
    }

    struct TopicState: Sendable {
        var options: NamespaceOptions
        /// The topic's stream at this region: epoch, offset, history, idempotency, and the replica and
        /// failover state (`TopicStream`).
        var stream: TopicStream
        /// Local subscribers, each with the region's subscription serial when it joined and the
        /// position it said it had seen up to.
        var subscribers = IndexedMap<ClientID, Joined>()
        /// Local subscribers that asked for per-hop timestamps.
        var traceSubscribers = 0
        /// At the home: regions that have subscribers asking for per-hop timestamps.
        var tracedBy: Set<String> = []
        var presence = PresenceTable()
        var pollWaiters = IndexedMap<ClientID, Void>()
        var lastActivity: TernInstant
        /// When a sweep of this topic is already scheduled.
        var sweepAt: TernInstant?
        /// Subscribes waiting for the stream to be positioned.
        var pendingSubscribes: [(client: ClientID, ref: UInt64?, since: StreamPosition?)] = []
    }

    /// Where a region's copy of a topic's stream stands against the home's.
    enum StreamSync: Sendable, Equatable {
        /// Not positioned yet: waiting for the upstream to say where the stream stands. When this
        /// region asked from a position (as a replica, or for a child standing there), the data
        /// right after `from` positions it too.
        case unsynced(from: StreamPosition?)
        /// Positioned, while the upstream catches it up. Children are not served from it meanwhile.
        case catchingUp
        /// Positioned and current; the home's stream always is.
        case current
    }

    struct Deadline: Comparable, Sendable {
        enum Kind: Sendable {
            case connectTimeout(ClientID)
            case tokenExpiry(ClientID)
            case pollTimeout(ClientID)
            case topicSweep(String)
            case interestLinger(String)
            case publishTimeout(UInt64)
            case subscribeTimeout(String)
            case linkFlush(String)
            case linkLiveness(String)
            case ackTimeout(String)
            case presenceTimeout(String, String)
            case presenceFlush(String)
            case failoverCheck
            case recoveryTimeout(String)
        }
        var at: TernInstant
        var sequence: UInt64
        var kind: Kind
        static func < (a: Deadline, b: Deadline) -> Bool { (a.at, a.sequence) < (b.at, b.sequence) }
        static func == (a: Deadline, b: Deadline) -> Bool { a.at == b.at && a.sequence == b.sequence }
    }

    /// The region, namespaces and limits this core was built with.
    public let config: RelayCoreConfig
    /// Counters for metrics.
    public internal(set) var stats = RelayStats()
    /// Whether `drain` has been received.
    public private(set) var draining = false

    let encoder: any ServerMessageEncoding
    var rng: SplitMix64
    var clients = TrackedMap<ClientID, ClientState>()
    var topics = TrackedMap<String, TopicState>()
    var deadlines = Heap<Deadline>()
    var deadlineSequence: UInt64 = 0
    var acceptBucket: TokenBucket
    var actions: [RelayAction] = []
    var mesh: MeshState?
    /// What the invariant checks found (see `RelayCore+Invariants.swift`).
    var invariantLog = InvariantLog()
    /// Idempotency ids this core has generated; never reused within an incarnation.
    var generatedIDs: UInt64 = 0
    /// The `now` of the event being handled.
    var clock = TernInstant.zero
    /// One local subscription: the region's subscription serial when it was made, and the position the
    /// client said it had seen up to.
    struct Joined: Sendable {
        var serial: UInt64
        /// Where the subscriber's stream starts: the position it resumed from, and once its
        /// subscribe is answered, the position the reply put it at. A publication first sequenced at
        /// or before it is not delivered to it again (`deliverAgain`).
        var since: StreamPosition?
        /// Up to where the subscriber is known to have the stream: the position it resumed from, and,
        /// once its subscribe reply recovered what followed, the position the reply put it at. Nil for
        /// a subscriber that started fresh: its stream starts at `since`, but it had nothing before.
        var hadThrough: StreamPosition?
    }

    /// Counts subscriptions made in this region: a publication it delivered before a subscriber's
    /// serial was not delivered to that subscriber.
    var joinSerial: UInt64 = 0
    /// Wall-clock nanoseconds since the Unix epoch at this core's monotonic origin. The driver sets it
    /// (the runtime from the system clock, the simulator per region), so the core never reads a clock;
    /// it is used only for the timestamps of traced publications and home→delivery latency.
    public var wallClockOffset: Int64 = 0
    /// The wall clock at the event being handled.
    var wallNow: Int64 { clock.nanoseconds &+ wallClockOffset }

    /// A core for `config`, encoding with `encoder`, drawing randomness from `seed`.
    public init(config: RelayCoreConfig, encoder: any ServerMessageEncoding, seed: UInt64, now: TernInstant) {
        self.config = config
        self.encoder = encoder
        self.rng = SplitMix64(seed: seed)
        self.acceptBucket = TokenBucket(rate: config.limits.acceptRatePerSecond, burst: config.limits.acceptBurst, now: now)
        clients.tracking = config.checkInvariants
        clients.keepsReplaced = config.checkInvariants
        topics.tracking = config.checkInvariants
        if let meshConfig = config.mesh {
            let incarnation = meshConfig.incarnation != 0 ? meshConfig.incarnation : rng.next() >> 1
            var state = MeshState(config: meshConfig, incarnation: incarnation,
                                  routes: meshConfig.graph.shortestPaths(from: config.region, isUp: { _, _ in false }))
            state.adverts[config.region] = LinkStateAdvert(incarnation: incarnation, sequence: 0, neighbours: [])
            state.nextRef = MeshState.firstRef(incarnation: incarnation)
            if config.checkInvariants { state.trackChanges() }
            self.mesh = state
        }
    }

    /// Deadlines held, live or stale (bounded by compaction).
    public var pendingDeadlines: Int { deadlines.count }

    /// When the driver must send `tick` next, if ever.
    public var nextDeadline: TernInstant? { deadlines.min?.at }

    /// Handles one event at `now` and returns what the driver must do.
    public mutating func handle(_ event: RelayEvent, now: TernInstant) -> [RelayAction] {
        actions.removeAll(keepingCapacity: true)
        clock = now
        switch event {
        case .opened(let client, let transport): opened(client, transport, now: now)
        case .command(let client, let ref, let command): commandReceived(client, ref: ref, command, now: now)
        case .authenticated(let client, let ref, let identity): authenticated(client, ref: ref, identity, now: now)
        case .authenticationFailed(let client, let ref, let failure): authenticationFailed(client, ref: ref, failure)
        case .badFrame(let client, let ref, let error): send(client, .error(ref: ref, error))
        case .closed(let client): closed(client, now: now)
        case .writable(let client, let writable): socketChanged(client, writable: writable)
        case .resumeCursor(let client, let cursor):
            if clients[client]?.transport == .sse { clients.update(client) { $0.cursor.merge(cursor) { current, _ in current } } }
        case .apiPublish(let request, let topic, let id, let data):
            if case .failure(let error) = namespaceOptions(for: topic) {
                actions.append(.apiReply(request: request, .failure(error)))
            } else {
                routePublish(.api(request: request), topic: topic, id: id, data: data, user: nil, now: now)
            }
        case .linkUp(let peer): linkUp(peer, now: now)
        case .linkDown(let peer): linkDown(peer, now: now)
        case .linkBatch(let peer, let messages): linkBatch(peer, messages, now: now)
        case .poll(let client, let identity, let wanted, let timeout): poll(client, identity, wanted, timeout: timeout, now: now)
        case .drain: drain()
        case .tick: fireDeadlines(now: now)
        }
        flushLinks(now: now)
        if config.checkInvariants { checkInvariantsAfterEvent() }
        // Moved out, not copied: emptying a buffer the returned array still shares would allocate a
        // new one of the same capacity on every event, and after one large fan-out that capacity
        // is thousands of actions.
        var out: [RelayAction] = []
        swap(&out, &actions)
        return out
    }

    /// Takes up to `maxBytes` of a client's queued frames for writing.
    public mutating func takeOutbound(_ client: ClientID, maxBytes: Int = 256 * 1024) -> [OutboundFrame] {
        var frames: [OutboundFrame] = []
        takeOutbound(client, maxBytes: maxBytes) { frames.append($0) }
        return frames
    }

    /// Takes up to `maxBytes` of a client's queued frames, oldest first, giving each to `body`: the
    /// same as `takeOutbound(_:maxBytes:)` without building an array.
    public mutating func takeOutbound(_ client: ClientID, maxBytes: Int = 256 * 1024, _ body: (OutboundFrame) -> Void) {
        // In place: a copy of the client would copy its queue.
        guard let i = clients.index(forKey: client) else { return }
        let delta = clients.inPlace(i) { c -> Int in
            let before = c.outbox.queuedBytes
            c.outbox.take(maxBytes: maxBytes, body)
            return c.outbox.queuedBytes - before
        }
        queuedBytes += delta
    }

    /// Bytes queued for all clients.
    public internal(set) var queuedBytes = 0

    /// The current position of `topic`'s stream, if the relay holds it.
    public func position(of topic: String) -> StreamPosition? { topics[topic]?.stream.position }

    // MARK: - Connections

    mutating func opened(_ client: ClientID, _ transport: Transport, now: TernInstant) {
        var state = ClientState(
            transport: transport,
            outbox: Outbox(maxBytes: config.limits.maxQueueBytes),
            publishBucket: TokenBucket(rate: config.limits.publishRatePerSecond, burst: config.limits.publishBurst, now: now)
        )
        let limited = transport != .poll && !acceptBucket.take(now: now)
        if draining || limited {
            clients.updateValue(state, forKey: client)
            stats.rejectedConnections += 1
            let code: CloseCode = draining ? .shutdown : .connectionRateLimited
            send(client, .disconnect(code: code, reconnectAfter: jitter(up: config.limits.drainWindow)))
            beginClose(client, code)
            return
        }
        state.counted = true
        clients.updateValue(state, forKey: client)
        stats.connections += 1
        if transport == .websocket {
            schedule(now + config.limits.connectTimeout, .connectTimeout(client))
        }
    }

    mutating func closed(_ client: ClientID, now: TernInstant) {
        guard let state = clients.removeValue(forKey: client) else { return }
        if state.counted { stats.connections -= 1 }
        queuedBytes -= state.outbox.queuedBytes
        for topic in state.traced.sorted() { traceSubscriberGone(topic, now: now) }
        for topic in state.subscriptions.orderedKeys {
            removeSubscriber(client, from: topic, now: now)
        }
        if state.transport == .poll {
            for topic in state.cursor.keys.sorted() {
                topics.update(topic) { $0.pollWaiters.removeValue(forKey: client) }
                sweepIfIdle(topic, now: now)
            }
        }
    }

    mutating func commandReceived(_ client: ClientID, ref: UInt64?, _ command: ClientCommand, now: TernInstant) {
        // Only the fields needed, read in place: a copy of the client kept over the command would make
        // every change to its queue or subscriptions below copy them.
        guard let (closing, identity, authenticating) = clients.reading(client, { ($0.closing, $0.identity, $0.authenticating) }),
              !closing else { return }
        if case .connect(let token) = command {
            if identity != nil || authenticating {
                send(client, .error(ref: ref, TernError(.alreadyConnected, "this connection is already connected")))
            } else if let token, !token.isEmpty {
                clients.update(client) { $0.authenticating = true }
                actions.append(.verifyToken(client, ref: ref, token: token))
            } else {
                authenticated(client, ref: ref, .anonymous, now: now)
            }
            return
        }
        if case .ping = command {
            send(client, .reply(ref: ref, .pong))
            return
        }
        guard let identity else {
            send(client, .error(ref: ref, TernError(.notConnected, "send a connect command first")))
            return
        }
        switch command {
        case .connect, .ping:
            return
        case .subscribe(let topic, let since, let trace):
            let result = subscribe(client, identity, topic: topic, since: since, now: now)
            if case .success = result, trace { setTraced(client, topic, true, now: now) }
            switch result {
            case .success(let reply?): sendSubscribed(client, ref: ref, reply, now: now)
            case .success(nil):
                // Waiting for the upstream region to say where the stream stands.
                topics.update(topic) { $0.pendingSubscribes.append((client, ref, since)) }
                schedule(now + (mesh?.config.homeTimeout ?? .seconds(10)), .subscribeTimeout(topic))
                reconcileInterest(topic, now: now)
            case .failure(let error): send(client, .error(ref: ref, error))
            }
        case .unsubscribe(let topic):
            guard clients[client]?.subscriptions.contains(topic) == true else {
                send(client, .error(ref: ref, TernError(.notSubscribed, "not subscribed to '\(topic)'")))
                return
            }
            setTraced(client, topic, false, now: now)
            clients.update(client) { $0.removeSubscription(topic) }
            clients.update(client) { $0.cursor[topic] = nil }
            topics.update(topic) { $0.pendingSubscribes.removeAll { $0.client == client } }
            removeSubscriber(client, from: topic, now: now)
            send(client, .reply(ref: ref, .unsubscribed(topic: topic)))
        case .publish(let topic, let id, let data, let volatile):
            clientPublish(client, ref: ref, identity, topic: topic, id: id, data: data, volatile: volatile, now: now)
        case .presence(let topic, let limit):
            send(client, presence(identity, topic: topic, limit: limit, ref: ref))
        case .presenceStats(let topic):
            send(client, presenceStats(identity, topic: topic, ref: ref))
        }
    }

    mutating func authenticated(_ client: ClientID, ref: UInt64?, _ identity: ClientIdentity, now: TernInstant) {
        guard let (closing, transport) = clients.reading(client, { ($0.closing, $0.transport) }), !closing else { return }
        if let expiry = identity.expiresAt, expiry <= now {
            authenticationFailed(client, ref: ref, .expired)
            return
        }
        clients.update(client) { $0.authenticating = false }
        clients.update(client) { $0.identity = identity }
        if let expiry = identity.expiresAt { schedule(expiry, .tokenExpiry(client)) }
        if transport == .websocket {
            send(client, .reply(ref: ref, .connected(client: client, user: identity.user, region: config.region)))
        }
    }

    mutating func authenticationFailed(_ client: ClientID, ref: UInt64?, _ failure: AuthFailure) {
        guard clients.contains(client) else { return }
        clients.update(client) { $0.authenticating = false }
        let (error, code): (TernError, CloseCode) = switch failure {
        case .expired: (TernError(.tokenExpired, "the token has expired; connect with a fresh one"), .tokenExpired)
        case .invalid(let why): (TernError(.unauthorized, "the token was refused: \(why)"), .unauthorized)
        }
        send(client, .error(ref: ref, error))
        beginClose(client, code)
    }

    /// A WebSocket's socket filled up or drained. On draining, what waited in its queue is flushed;
    /// until the driver has taken it, new frames queue behind it.
    mutating func socketChanged(_ client: ClientID, writable: Bool) {
        guard let i = clients.index(forKey: client) else { return }
        let (transport, socket, queued) = clients.reading(i) { ($0.transport, $0.socket, $0.outbox.queuedBytes) }
        let now: Socket = writable ? .writable : .full
        guard transport == .websocket, socket != now else { return }
        clients.inPlace(i) { $0.socket = now }
        if writable, queued > 0 { actions.append(.flush(client)) }
    }

    mutating func beginClose(_ client: ClientID, _ code: CloseCode) {
        guard clients[client]?.closing == false else { return }
        clients.update(client) { $0.closing = true }
        actions.append(.close(client, code))
    }

    mutating func drain() {
        guard !draining else { return }
        draining = true
        for client in clients.keys.sorted() where clients[client]?.closing == false {
            if clients[client]?.transport == .poll {
                completePoll(client, error: TernError(.internalError, "the relay is shutting down; poll again shortly"))
                continue
            }
            send(client, .disconnect(code: .shutdown, reconnectAfter: jitter(up: config.limits.drainWindow)))
            beginClose(client, .shutdown)
        }
    }

    // MARK: - Topics

    /// `topic`'s namespace options, or why there are none. A topic held here was checked when it was
    /// created and keeps its namespace's options: for it this is one lookup.
    mutating func namespaceOptions(for topic: String) -> Result<NamespaceOptions, TernError> {
        if let options = topics.reading(topic, { $0.options }) { return .success(options) }
        return namespaceOptions(named: topic)
    }

    /// `topic`'s namespace options from its name, after checking the name.
    func namespaceOptions(named topic: String) -> Result<NamespaceOptions, TernError> {
        if let problem = TopicName.problem(with: topic) { return .failure(TernError(.invalidTopic, problem)) }
        let ns = String(TopicName.namespace(of: topic)!)
        guard let options = config.namespaces[ns] else {
            let known = config.namespaces.keys.sorted().joined(separator: ", ")
            return .failure(TernError(.unknownNamespace, "namespace '\(ns)' is not configured (known: \(known))"))
        }
        return .success(options)
    }

    mutating func ensureTopic(_ topic: String, _ options: NamespaceOptions, now: TernInstant) {
        guard !topics.contains(topic) else { return }
        let generation = String(rng.next() & 0xFFFF_FFFF, radix: 16)
        topics.updateValue(TopicState(
            options: options,
            stream: TopicStream(
                epoch: "\(config.region).\(generation)",
                history: HistoryRing(capacity: options.historySize, ttl: options.historyTTL),
                idempotency: IdempotencyCache(capacity: config.limits.idempotencyCapacity, window: config.limits.idempotencyWindow)
            ),
            lastActivity: now
        ), forKey: topic)
        let canonical = canonicalHome(of: topic)
        topics.update(topic) { $0.stream.canonicalHome = canonical }
        // The home it has now, so the next topology change that moves it here (or away) is seen as a move.
        if mesh != nil { mesh!.lastHome.updateValue(currentHome(of: topic), forKey: topic) }
        if !isHome(topic) {
            // A regional cache: its epoch and offset come from upstream.
            topics.update(topic) { $0.stream.sync = .unsynced(from: nil) }
            topics.update(topic) { $0.stream.epoch = "" }
        } else {
            // Nothing sequenced or served yet: a restarted home may still adopt an epoch a child holds.
            if mesh != nil { topics.update(topic) { $0.stream.start = .fresh } }
        }
        stats.topics += 1
    }

    /// Drops a topic's stream once nothing has referred to it for the stream
    /// linger and its history has expired. Until then its epoch stays, so
    /// clients that come back soon still recover.
    mutating func sweepIfIdle(_ topic: String, now: TernInstant) {
        // Whether it is idle is read in place; most calls end there, and a copy would retain everything the topic holds.
        guard topics.reading(topic, { t in
            t.subscribers.isEmpty && t.presence.count == 0 && t.pollWaiters.isEmpty && t.pendingSubscribes.isEmpty
                && t.stream.replication.pending.isEmpty && t.stream.replicaOf == nil && t.stream.failoverLog.isEmpty
        }) == true, var state = topics[topic] else { return }
        if let mesh {
            // At the home, the replica following the topic does not keep it alive: it is told to stop when the topic goes.
            let children = mesh.children[topic]?.orderedKeys ?? []
            let onlyReplica = isHome(topic) && children.allSatisfy { $0 == state.stream.replication.replica }
            if (!children.isEmpty && !onlyReplica) || mesh.upstream[topic] != nil || mesh.awaitingSync[topic] != nil { return }
        }
        state.stream.history.expire(now: now)
        // Idempotency ids must outlive the stream's own linger, or a late retry would be delivered twice.
        let lingerEnds = state.lastActivity + max(config.limits.streamLinger, config.limits.idempotencyWindow)
        if state.stream.history.isEmpty, lingerEnds <= now {
            releaseReplica(topic)
            removeTopic(topic)
        } else {
            let at = max(lingerEnds, state.stream.history.nextExpiry ?? lingerEnds)
            if state.sweepAt == nil || state.sweepAt! > at {
                state.sweepAt = at
                schedule(at, .topicSweep(topic))
            }
            topics.updateValue(state, forKey: topic)
        }
    }

    /// Adds a subscriber and answers with the stream's position (and recovery), or
    /// nil when this region must first hear from its upstream where the stream stands.
    mutating func subscribe(
        _ client: ClientID, _ identity: ClientIdentity, topic: String, since: StreamPosition?, now: TernInstant
    ) -> Result<SubscribeReply?, TernError> {
        let options: NamespaceOptions
        switch namespaceOptions(for: topic) {
        case .success(let o): options = o
        case .failure(let e): return .failure(e)
        }
        let permitted = options.anonymous || (!identity.isAnonymous && ClientIdentity.allowed(identity.subscribe, topic))
        guard permitted else {
            return .failure(TernError(.permissionDenied, identity.isAnonymous
                ? "namespace of '\(topic)' does not allow anonymous clients; connect with a token"
                : "the token does not grant subscribe on '\(topic)'"))
        }
        guard let (subscribed, subscriptions) = clients.reading(client, { ($0.subscriptions.contains(topic), $0.subscriptions.count) }) else {
            return .failure(TernError(.internalError, "unknown client"))
        }
        if subscribed {
            return .failure(TernError(.alreadySubscribed, "already subscribed to '\(topic)'"))
        }
        if subscriptions >= config.limits.maxSubscriptionsPerClient {
            return .failure(TernError(.limitExceeded, "at most \(config.limits.maxSubscriptionsPerClient) subscriptions per connection"))
        }
        if options.maxSubscribers > 0, let count = topics.reading(topic, { $0.subscribers.count }), count >= options.maxSubscribers {
            return .failure(TernError(.limitExceeded, "'\(topic)' has reached its \(options.maxSubscribers) subscribers in this region"))
        }
        ensureTopic(topic, options, now: now)
        clients.update(client) { $0.addSubscription(topic) }
        joinSerial += 1
        topics.update(topic) { $0.subscribers[client] = Joined(serial: joinSerial, since: since, hadThrough: since) }
        topics.update(topic) { $0.lastActivity = now }
        stats.subscriptions += 1
        guard topics[topic]?.stream.synced == true else { return .success(nil) }
        reconcileInterest(topic, now: now)
        return .success(subscribeReply(topic, since: since, now: now))
    }

    /// The stream's position and, when asked, everything after `since` from this region's ring.
    mutating func subscribeReply(_ topic: String, since: StreamPosition?, now: TernInstant) -> SubscribeReply {
        topics.update(topic) { $0.stream.fresh = false }
        let current = topics[topic]?.stream.position ?? StreamPosition(epoch: "", offset: 0)
        var reply = SubscribeReply(topic: topic, position: current, recovered: nil, failure: nil, publications: [])
        if let since, let adopted = topics[topic]?.stream.adoptedFrom, since.epoch == adopted.epoch, current.epoch == adopted.epoch,
           since.offset < adopted.offset.saturatingAdd(Self.adoptionJump), current.offset >= adopted.offset.saturatingAdd(Self.adoptionJump) {
            // A restarted home continued this epoch past a jump: a client from before the jump resyncs.
            reply.recovered = false
            reply.failure = .evicted
        } else if let since {
            switch topics.update(topic, { $0.stream.history.publications(after: since, current: current, now: now) }) ?? .failed(.evicted) {
            case .recovered(let publications):
                // The reply must fit the client's send queue, or the client would be closed on every retry.
                let bytes = publications.reduce(0) { $0 + $1.data.utf8.count + $1.topic.utf8.count + 96 }
                if bytes > config.limits.maxQueueBytes / 2 {
                    reply.recovered = false
                    reply.failure = .tooLarge
                } else {
                    reply.recovered = true
                    reply.publications = publications
                }
            case .failed(let failure):
                reply.recovered = false
                reply.failure = failure
            }
        }
        return reply
    }

    /// Answers a subscribe, then announces the subscriber's presence, so the reply comes first.
    mutating func sendSubscribed(_ client: ClientID, ref: UInt64?, _ reply: SubscribeReply, now: TernInstant) {
        send(client, .reply(ref: ref, .subscribed(withoutUnaskedHops(reply, for: client))))
        let topic = reply.topic
        // The reply puts the client at its position, whether it resumed (recovered up to it, or told
        // of a gap) or not: what was sequenced up to there is before its stream, now and when this
        // region delivers a publication again after a failover.
        topics.update(topic) { t in
            if t.subscribers[client] != nil {
                t.subscribers[client]!.since = reply.position
                if reply.recovered == true { t.subscribers[client]!.hadThrough = reply.position }
            }
        }
        guard let options = topics[topic]?.options, options.presence,
              let identity = clients[client]?.identity, !identity.isAnonymous else { return }
        let entry = PresenceEntry(client: client, user: identity.user, region: config.region)
        topics.update(topic) { $0.presence.insert(entry) }
        if options.joinLeave {
            broadcast(topic, .join(topic: topic, entry), volatileKey: "presence/\(topic)/\(config.region)/\(client)")
        }
        localPresenceChanged(topic, .join(entry))
    }

    mutating func removeSubscriber(_ client: ClientID, from topic: String, now: TernInstant) {
        guard topics.update(topic, { $0.subscribers.removeValue(forKey: client) }) ?? nil != nil else { return }
        topics.update(topic) { $0.lastActivity = now }
        stats.subscriptions -= 1
        let region = config.region
        if let entry = topics.update(topic, { $0.presence.remove(client, region: region) }) ?? nil {
            if topics[topic]?.options.joinLeave == true {
                broadcast(topic, .leave(topic: topic, entry), volatileKey: "presence/\(topic)/\(config.region)/\(client)")
            }
            localPresenceChanged(topic, .leave(client))
        }
        reconcileInterest(topic, now: now)
        sweepIfIdle(topic, now: now)
    }

    // MARK: - Publishing

    mutating func clientPublish(
        _ client: ClientID, ref: UInt64?, _ identity: ClientIdentity, topic: String, id: String, data: String, volatile: Bool, now: TernInstant
    ) {
        let options: NamespaceOptions
        switch namespaceOptions(for: topic) {
        case .success(let o): options = o
        case .failure(let e): return send(client, .error(ref: ref, e))
        }
        guard options.clientPublish, !identity.isAnonymous, ClientIdentity.allowed(identity.publish, topic) else {
            return send(client, .error(ref: ref, TernError(.permissionDenied, !options.clientPublish
                ? "namespace of '\(topic)' accepts publishes from backends only"
                : "the token does not grant publish on '\(topic)'")))
        }
        guard clients.update(client, { $0.publishBucket.take(now: now) }) == true else {
            return send(client, .error(ref: ref, TernError(.rateLimited, "more than \(Int(config.limits.publishRatePerSecond)) publishes a second; slow down")))
        }
        if volatile {
            answer(.client(client, ref: ref), publish(topic: topic, id: id, data: data, user: identity.user, volatile: true, now: now))
        } else {
            routePublish(.client(client, ref: ref), topic: topic, id: id, data: data, user: identity.user, now: now)
        }
    }

    /// Sequences a publication in this region and delivers it to local subscribers.
    ///
    /// The mesh will route this to the topic's home region; here every topic's home is local.
    ///
    /// `received` is the trace hop of the relay that took the publish, when that was another region.
    mutating func publish(
        topic: String, id: String, data: String, user: String?, volatile: Bool, received: TraceHop? = nil,
        firstAt: StreamPosition? = nil, now: TernInstant
    ) -> Result<ReplyBody, TernError> {
        let options: NamespaceOptions
        switch namespaceOptions(for: topic) {
        case .success(let o): options = o
        case .failure(let e): return .failure(e)
        }
        if volatile {
            if topics.contains(topic) {
                broadcast(topic, .volatile(topic: topic, user: user, data: data), volatileKey: "volatile/\(topic)/\(user ?? "")")
            }
            return .success(.published(topic: topic, position: nil, duplicate: false))
        }
        ensureTopic(topic, options, now: now)
        var id = id
        if id.isEmpty, mesh != nil {
            // Publications may have to be sequenced again after a failover, deduplicated by id: give each one.
            id = generatedPublishID()
        }
        let failoverHome = mesh != nil && canonicalHome(of: topic) != config.region
        if !id.isEmpty, let earlier = topics.update(topic, { $0.stream.idempotency.lookup(id, now: now) }) ?? nil {
            if firstAt != nil, failoverHome, let current = topics.reading(topic, { $0.stream.epoch }), earlier.epoch != current,
               case let canonical = canonicalHome(of: topic), !earlier.epoch.hasPrefix(canonical + ".") {
                // A failover log's publication on its way to the canonical home, which this region sequenced in
                // an earlier failover epoch: no log here holds it any more, so taking it as a duplicate would
                // drop it. The sender keeps it in its log, for when the canonical home is reachable again.
                return .failure(TernError(.internalError,
                    "'\(topic)' has a failover home; \(id) waits for the canonical home \(canonical)"))
            }
            stats.duplicatePublishes += 1
            return .success(.published(topic: topic, position: earlier, duplicate: true))
        }
        if topics[topic]?.stream.recovery != nil {
            // Publishes wait for a recovering home (`forwardPending`); should one get here, the home
            // continues from what it knows rather than sequence into offsets it may not hold.
            finishRecovery(topic, now: now)
        }
        guard let offset = topics[topic]?.stream.offset, offset < UInt64.max else {
            // Only a peer's nonsense position could bring an epoch here; refuse rather than wrap.
            return .failure(TernError(.internalError, "'\(topic)' has no offsets left in its epoch"))
        }
        replicationWillSequence(topic)
        let wall = wallNow
        var trace: [TraceHop]?
        if topics.reading(topic, { $0.traceSubscribers > 0 || !$0.tracedBy.isEmpty }) == true {
            trace = [received ?? TraceHop(region: config.region, step: .received, at: wall),
                     TraceHop(region: config.region, step: .sequenced, at: wall)]
        }
        // Delivered to every subscriber here right after, so its mark is the current subscription serial.
        let mark = joinSerial
        guard let publication = withTopic(topic, { t -> Publication in
            t.lastActivity = now
            return t.stream.sequence(topic: topic, id: id, data: data, user: user, acceptedAt: now, wall: wall, trace: trace,
                                     firstAt: firstAt, mark: mark, failoverHome: failoverHome)
        }) else {
            return .failure(TernError(.internalError, "'\(topic)' went away while it was being published to"))
        }
        stats.publications += 1
        deliver(publication, sequencedHere: true)
        sweepIfIdle(topic, now: now)
        return .success(.published(topic: topic, position: publication.position, duplicate: false))
    }

    /// Gives `body` the state of `topic` in place (nil when the relay does not hold it). Changing a
    /// topic through a copy and writing it back would copy its collections (history, subscribers)
    /// on every change; this never does.
    @inline(__always) @discardableResult
    mutating func withTopic<T>(_ topic: String, _ body: (inout TopicState) -> T) -> T? {
        guard let i = topics.index(forKey: topic) else { return nil }
        return topics.inPlace(i, body)
    }

    /// Writes one publication to every local subscriber, encoding it once for all WebSockets.
    ///
    /// The hot path: per subscriber it costs a lookup and an append to that client's queue. Stored
    /// state is read and changed in place, never copied out: a copy of a topic or client held while
    /// its collections change would make Swift copy those collections (copy-on-write) each time.
    mutating func deliver(_ publication: Publication, sequencedHere: Bool = false) {
        let topic = publication.topic
        guard topics.contains(topic) else { return }
        if mesh != nil, let children = mesh!.children[topic] {
            for child in children.orderedKeys where children[child] == .live { sendData(child, publication, live: true) }
        }
        // A publication this region delivered before goes only to the subscribers that joined since.
        let serial = joinSerial
        let inMesh = mesh != nil
        let now = clock
        let delivery = withTopic(topic) {
            $0.stream.delivery(of: publication, sequencedHere: sequencedHere, inMesh: inMesh, serial: serial, now: now)
        } ?? .everyone
        if case .again(let mark, let firstAt) = delivery {
            deliverAgain(publication, toSubscribersAfter: mark, firstAt: firstAt)
            return
        }
        // Ordinary subscribers get the publication without hops; those that asked for them get the
        // hops so far plus their own delivery, encoded once for all of them.
        var plain = publication
        plain.trace = nil
        let shared = OutboundFrame(bytes: encoder.encode(.publication(plain)), acceptedAt: publication.acceptedAt,
                                   sequencedAtWall: publication.sequencedAtWall)
        var traced: Publication?
        var sharedTraced: OutboundFrame?
        // Read in place: reading `topics[topic]?.field` copies the whole topic state first.
        guard let (traceSubscribers, subscribers, waiting) = topics.reading(topic, { t in
            (t.traceSubscribers, t.subscribers.orderedKeys, t.pendingSubscribes.isEmpty ? [] : Set(t.pendingSubscribes.map(\.client)))
        }) else { return }
        if traceSubscribers > 0 {
            var p = publication
            var hops = p.trace ?? []
            if hops.count < TraceHop.maxHops { hops.append(TraceHop(region: config.region, step: .delivered, at: wallNow)) }
            p.trace = hops
            traced = p
            sharedTraced = OutboundFrame(bytes: encoder.encode(.publication(p)), acceptedAt: publication.acceptedAt,
                                         sequencedAtWall: publication.sequencedAtWall)
        }
        // Clients still waiting for their subscribe reply (`waiting`) get the stream through that reply, not before it.
        // WebSockets that take frames directly are gathered into one `write` action per frame (one for
        // those that trace the topic, one for the rest), after everything else is done for the others:
        // each client gets one frame here, so only the order of different clients' writes changes.
        var plainRun: [ClientID] = []
        var tracedRun: [ClientID] = []
        // A Bool, not `traced != nil` inside the loop: that comparison copied the whole publication,
        // with a retain of each of its references, once per subscriber.
        let anyTracing = traced != nil
        for client in subscribers where waiting.isEmpty || !waiting.contains(client) {
            guard let i = clients.index(forKey: client) else { continue }
            let (transport, wantsTrace, direct) = clients.reading(i) {
                ($0.transport, anyTracing && !$0.traced.isEmpty && $0.traced.contains(topic), $0.takesFramesDirectly)
            }
            if direct {
                if wantsTrace { tracedRun.append(client) } else { plainRun.append(client) }
                stats.deliveries += 1
            } else if transport == .websocket {
                enqueue(client, at: i, wantsTrace ? sharedTraced! : shared, volatileKey: nil)
            } else {
                send(client, .publication(wantsTrace ? traced! : plain))
            }
        }
        if !plainRun.isEmpty { actions.append(.write(shared, plainRun)) }
        if !tracedRun.isEmpty { actions.append(.write(sharedTraced!, tracedRun)) }
        if let waiters = topics.reading(topic, { $0.pollWaiters.isEmpty ? nil : $0.pollWaiters.orderedKeys }) ?? nil {
            for client in waiters { completePoll(client, publications: [plain]) }
        }
    }

    /// Delivers a publication this region delivered before (at subscription serial `mark`, first at
    /// `firstAt`) to the subscribers that joined since and have not had it: a subscriber that resumed
    /// from a position at or past `firstAt`, or whose subscribe reply recovered it up to such a position,
    /// had it (on an earlier connection, or in that reply), and one whose stream
    /// starts at or past the publication's position in its epoch has it or began after it (sending
    /// it would go back in that epoch). Rare: only after failovers and resets.
    mutating func deliverAgain(_ publication: Publication, toSubscribersAfter mark: UInt64, firstAt: StreamPosition?) {
        let topic = publication.topic
        guard let t = topics[topic], t.subscribers.count > 0, joinSerial > mark else { return }
        var plain = publication
        plain.trace = nil
        let waiting = Set(t.pendingSubscribes.map(\.client))
        var newer: [ClientID] = []
        func atOrPast(_ since: StreamPosition?, _ position: StreamPosition?) -> Bool {
            guard let since, let position else { return false }
            return since.epoch == position.epoch && since.offset >= position.offset
        }
        t.subscribers.forEach { client, joined in
            let hadIt = atOrPast(joined.hadThrough, firstAt) || atOrPast(joined.since, publication.position)
            if joined.serial > mark, !hadIt, !waiting.contains(client) { newer.append(client) }
            return true
        }
        var traced = publication
        if t.traceSubscribers > 0 {
            var hops = traced.trace ?? []
            if hops.count < TraceHop.maxHops { hops.append(TraceHop(region: config.region, step: .delivered, at: wallNow)) }
            traced.trace = hops
        }
        for client in newer {
            let wantsTrace = t.traceSubscribers > 0 && clients[client]?.traced.contains(topic) == true
            send(client, .publication(wantsTrace ? traced : plain))
        }
    }

    mutating func broadcast(_ topic: String, _ message: ServerMessage, volatileKey: String?) {
        guard let subscribers = topics.reading(topic, { $0.subscribers.orderedKeys }) else { return }
        let shared = OutboundFrame(bytes: encoder.encode(message), acceptedAt: nil)
        for client in subscribers {
            guard let i = clients.index(forKey: client) else { continue }
            if clients.reading(i, { $0.transport }) == .websocket {
                enqueue(client, at: i, shared, volatileKey: volatileKey)
            } else {
                send(client, message, volatileKey: volatileKey)
            }
        }
    }

    // MARK: - Presence

    func presenceAllowed(_ identity: ClientIdentity, _ topic: String) -> Result<TopicState?, TernError> {
        let options: NamespaceOptions
        switch namespaceOptions(named: topic) {
        case .success(let o): options = o
        case .failure(let e): return .failure(e)
        }
        guard options.presence else {
            return .failure(TernError(.badRequest, "presence is off for the namespace of '\(topic)'"))
        }
        let permitted = options.anonymous
            || ClientIdentity.allowed(identity.presence, topic) || ClientIdentity.allowed(identity.subscribe, topic)
        guard permitted else {
            return .failure(TernError(.permissionDenied, "the token does not grant presence on '\(topic)'"))
        }
        return .success(topics[topic])
    }

    func presence(_ identity: ClientIdentity, topic: String, limit: Int?, ref: UInt64?) -> ServerMessage {
        switch presenceAllowed(identity, topic) {
        case .failure(let e): return .error(ref: ref, e)
        case .success(let state):
            let cap = min(max(1, limit ?? 100), config.limits.maxPresenceList)
            let entries = state?.presence.list(limit: cap) ?? []
            return .reply(ref: ref, .presence(topic: topic, entries: entries, total: state?.presence.count ?? 0))
        }
    }

    func presenceStats(_ identity: ClientIdentity, topic: String, ref: UInt64?) -> ServerMessage {
        switch presenceAllowed(identity, topic) {
        case .failure(let e): return .error(ref: ref, e)
        case .success(let state):
            return .reply(ref: ref, .presenceStats(topic: topic, clients: state?.presence.count ?? 0, users: state?.presence.userCount ?? 0))
        }
    }

    // MARK: - Long-poll

    mutating func poll(
        _ client: ClientID, _ identity: ClientIdentity, _ wanted: [(topic: String, since: StreamPosition?)],
        timeout: Duration, now: TernInstant
    ) {
        opened(client, .poll, now: now)
        guard clients[client]?.closing == false else {
            clients.removeValue(forKey: client)
            actions.removeAll { if case .close(client, _) = $0 { true } else { false } }
            actions.append(.pollReply(client, PollReply(publications: [], topics: [], error: TernError(.internalError, "the relay is shutting down; poll again shortly"))))
            return
        }
        clients.update(client) { $0.identity = identity }
        var reply = PollReply(publications: [], topics: [], error: nil)
        var mustAnswer = false
        // Check every topic before creating any, so a refused poll leaves nothing behind.
        var optionsByTopic: [String: NamespaceOptions] = [:]
        for (topic, _) in wanted {
            let options: NamespaceOptions
            switch namespaceOptions(for: topic) {
            case .success(let o): options = o
            case .failure(let e):
                completePoll(client, error: e)
                return
            }
            optionsByTopic[topic] = options
            let permitted = options.anonymous || (!identity.isAnonymous && ClientIdentity.allowed(identity.subscribe, topic))
            guard permitted else {
                completePoll(client, error: TernError(.permissionDenied, "not allowed to subscribe to '\(topic)'"))
                return
            }
        }
        for (topic, since) in wanted {
            guard let options = optionsByTopic[topic] else { continue }
            ensureTopic(topic, options, now: now)
            topics.update(topic) { $0.lastActivity = now }
            if topics[topic]?.stream.synced != true {
                // This region's cache has not heard from upstream yet: answer once it has.
                clients.update(client) { $0.pollNeedsSync.insert(topic) }
                if since != nil { clients.update(client) { $0.pollLostCursor.insert(topic) } }
                continue
            }
            guard let current = topics[topic]?.stream.position else { continue }
            var recovered = true
            var failure: RecoveryFailure?
            if let since {
                switch topics.update(topic, { $0.stream.history.publications(after: since, current: current, now: now) }) ?? .failed(.evicted) {
                case .recovered(let publications):
                    reply.publications += publications.map { p in
                        var plain = p
                        plain.trace = nil
                        return plain
                    }
                    if !publications.isEmpty { mustAnswer = true }
                case .failed(let f):
                    recovered = false
                    failure = f
                    mustAnswer = true
                }
            } else {
                mustAnswer = true
            }
            reply.topics.append(.init(topic: topic, position: current, recovered: recovered, failure: failure))
        }
        let timeout = min(timeout, config.limits.maxPollTimeout)
        let needsSync = clients[client]?.pollNeedsSync ?? []
        if !needsSync.isEmpty {
            for t in reply.topics { clients.update(client) { $0.cursor[t.topic] = t.position } }
            for (topic, _) in wanted { topics.update(topic) { $0.pollWaiters[client] = () } }
            for topic in needsSync.sorted() { reconcileInterest(topic, now: now) }
            schedule(now + (mesh?.config.homeTimeout ?? timeout), .pollTimeout(client))
            return
        }
        if mustAnswer || timeout <= .zero {
            if clients.removeValue(forKey: client)?.counted == true { stats.connections -= 1 }
            for t in reply.topics { sweepIfIdle(t.topic, now: now) }
            actions.append(.pollReply(client, reply))
            return
        }
        for t in reply.topics {
            clients.update(client) { $0.cursor[t.topic] = t.position }
            topics.update(t.topic) { $0.pollWaiters[client] = () }
        }
        schedule(now + timeout, .pollTimeout(client))
    }

    mutating func completePoll(_ client: ClientID, publications: [Publication] = [], error: TernError? = nil) {
        guard let state = clients.removeValue(forKey: client) else { return }
        if state.counted { stats.connections -= 1 }
        var reply = PollReply(publications: publications, topics: [], error: error)
        for topic in Set(state.cursor.keys).union(state.pollNeedsSync).sorted() {
            topics.update(topic) { $0.pollWaiters.removeValue(forKey: client) }
            var position = state.cursor[topic] ?? topics[topic]?.stream.position ?? StreamPosition(epoch: "", offset: 0)
            if let last = publications.last(where: { $0.topic == topic }) { position = last.position }
            let lost = state.pollLostCursor.contains(topic)
            reply.topics.append(.init(topic: topic, position: position, recovered: !lost, failure: lost ? .evicted : nil))
        }
        actions.append(.pollReply(client, reply))
        for t in reply.topics { sweepIfIdle(t.topic, now: clock) }
    }

    // MARK: - Deadlines

    mutating func schedule(_ at: TernInstant, _ kind: Deadline.Kind) {
        deadlineSequence += 1
        deadlines.insert(Deadline(at: at, sequence: deadlineSequence, kind: kind))
        if deadlines.count > 4 * (clients.count + topics.count) + 1024 { compactDeadlines() }
    }

    /// Drops deadlines whose client or topic is gone (for example the token
    /// expiry of a client that disconnected), so the heap stays proportional to live state.
    mutating func compactDeadlines() {
        let live = deadlines.unordered.filter { d in
            switch d.kind {
            case .connectTimeout(let c), .tokenExpiry(let c), .pollTimeout(let c): clients[c] != nil
            case .topicSweep(let t), .interestLinger(let t), .subscribeTimeout(let t), .presenceTimeout(let t, _), .presenceFlush(let t),
                 .ackTimeout(let t), .recoveryTimeout(let t): topics.contains(t)
            case .publishTimeout(let ref): mesh?.pending[ref] != nil
            case .linkFlush(let peer), .linkLiveness(let peer): mesh?.links[peer] != nil
            case .failoverCheck: true
            }
        }
        deadlines = Heap(live)
    }

    mutating func fireDeadlines(now: TernInstant) {
        while let next = deadlines.min, next.at <= now {
            _ = deadlines.removeMin()
            switch next.kind {
            case .connectTimeout(let client):
                // Fields read in place: a copy of the client state would retain everything it holds.
                if clients.reading(client, { !$0.hasIdentity && !$0.authenticating }) == true {
                    beginClose(client, .connectTimeout)
                }
            case .tokenExpiry(let client):
                if let expiry = clients.reading(client, { $0.identity?.expiresAt }) ?? nil, expiry <= now {
                    send(client, .error(ref: nil, TernError(.tokenExpired, "the token has expired; reconnect with a fresh one")))
                    beginClose(client, .tokenExpired)
                }
            case .pollTimeout(let client):
                if clients.reading(client, { $0.transport }) == .poll { completePoll(client) }
            case .topicSweep(let topic):
                if topics.reading(topic, { $0.sweepAt }) == next.at { topics.update(topic) { $0.sweepAt = nil } }
                sweepIfIdle(topic, now: now)
            case .interestLinger(let topic):
                interestLingerEnded(topic, now: now)
            case .publishTimeout(let ref):
                publishTimedOut(ref)
            case .subscribeTimeout(let topic):
                subscribeTimedOut(topic, now: now)
            case .linkFlush(let peer):
                linkFlushDue(peer, now: now)
            case .linkLiveness(let peer):
                linkLivenessDue(peer, at: next.at, now: now)
            case .ackTimeout(let topic):
                ackTimedOut(topic, now: now)
            case .presenceTimeout(let topic, let owner):
                presenceTimedOut(topic, owner: owner, now: now)
            case .failoverCheck:
                if mesh != nil { topologyChanged(now: now) }
            case .presenceFlush(let topic):
                flushPresence(topic)
            case .recoveryTimeout(let topic):
                recoveryTimedOut(topic, now: now)
            }
        }
    }

    // MARK: - Output

    mutating func send(_ client: ClientID, _ message: ServerMessage, volatileKey: String? = nil) {
        guard let i = clients.index(forKey: client) else { return }
        let bytes: ByteBuffer
        switch clients.reading(i, { $0.transport }) {
        case .websocket:
            bytes = encoder.encode(message)
        case .sse:
            var cursor = clients.reading(i) { $0.cursor }
            bytes = encoder.encodeSSE(message, cursor: &cursor)
            clients.inPlace(i) { $0.cursor = cursor }
        case .poll:
            return
        }
        var frame = OutboundFrame(bytes: bytes, acceptedAt: nil)
        if case .publication(let p) = message {
            frame.acceptedAt = p.acceptedAt
            frame.sequencedAtWall = p.sequencedAtWall
        }
        enqueue(client, at: i, frame, volatileKey: volatileKey)
    }

    mutating func enqueue(_ client: ClientID, _ frame: OutboundFrame, volatileKey: String?) {
        guard let i = clients.index(forKey: client) else { return }
        enqueue(client, at: i, frame, volatileKey: volatileKey)
    }

    /// `enqueue` for a client whose place in `clients` the caller already looked up.
    mutating func enqueue(_ client: ClientID, at i: Dictionary<ClientID, ClientState>.Index, _ frame: OutboundFrame, volatileKey: String?) {
        // A WebSocket whose socket takes frames and that has nothing waiting gets the frame at once.
        if clients.reading(i, { $0.takesFramesDirectly }) {
            stats.deliveries += 1
            actions.append(.write(frame, [client]))
            return
        }
        // The client's queue is changed where it is stored: copying the client out first would copy
        // its whole queue on every frame.
        // Nothing more is queued for a closing client: what it was told before closing is already queued.
        let result = clients.inPlace(i) { c -> (outcome: Outbox.Outcome, wasEmpty: Bool, delta: Int)? in
            guard !c.closing else { return nil }
            let wasEmpty = c.outbox.isEmpty
            let before = c.outbox.queuedBytes
            let outcome = c.outbox.enqueue(frame, volatileKey: volatileKey)
            if outcome == .overflow { c.outbox.removeAll() }
            return (outcome, wasEmpty, c.outbox.queuedBytes - before)
        }
        guard let result else { return }
        queuedBytes += result.delta
        switch result.outcome {
        case .queued, .coalesced:
            stats.deliveries += 1
            // A full socket is flushed when it drains (`socketChanged`).
            if result.wasEmpty, clients.reading(i, { $0.socket == .writable }) { actions.append(.flush(client)) }
        case .droppedVolatile:
            stats.volatileShed += 1
        case .overflow:
            stats.slowConsumerCloses += 1
            beginClose(client, .slowConsumer)
        }
    }

    /// An idempotency id for a publish that came without one: the region, the full incarnation
    /// (which grows with every restart) and a counter, so no id repeats across epochs or restarts.
    mutating func generatedPublishID() -> String {
        generatedIDs += 1
        let incarnation = mesh.map { String($0.incarnation, radix: 16) } ?? "0"
        return "\(config.region)~\(incarnation)~\(generatedIDs)"
    }

    mutating func jitter(up limit: Duration) -> Duration {
        let ms = max(1, limit.ternMilliseconds)
        return .milliseconds(Int64.random(in: 0...ms, using: &rng))
    }
}
