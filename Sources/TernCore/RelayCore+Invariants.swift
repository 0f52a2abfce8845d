/// The core's own consistency checks. With `RelayCoreConfig.checkInvariants` on (debug builds and
/// the simulator), `handle` checks after every event and records what it finds in
/// `invariantFailures`; drivers report those (the simulator fails the run, the relay logs them).
/// A check never traps: a relay keeps serving, and the failure names what broke.
extension RelayCore {
    /// Invariant failures found so far, oldest first (at most `maxRecordedInvariantFailures`).
    public var invariantFailures: [String] { invariantLog.failures }

    /// Invariant failures found since the start, including those no longer recorded.
    public var invariantFailureCount: Int { invariantLog.count }

    /// Everything that is inconsistent in this core's state now; empty when all holds.
    ///
    /// Visits every client, subscription, topic and link queue once, so the cost is linear in
    /// the core's state.
    public func checkInvariants() -> [String] {
        var copy = self
        return copy.checkInvariantsInPlace()
    }

    /// `checkInvariants`, reading the stored states in place instead of copying each one out.
    mutating func checkInvariantsInPlace() -> [String] {
        var problems: [String] = []
        func fail(_ text: String) { if problems.count < 20 { problems.append(text) } }

        // Clients and their subscriptions, seen from both sides. Every (client, topic) subscription and
        // trace is summed into an order-independent checksum from the clients' side and from the
        // topics' side; equal sums mean the two sides list the same pairs. Only when they differ are
        // the pairs looked up one by one (`subscriptionProblems`), to name what is wrong.
        //
        // A (client, topic) pair's term is the client's weight times the topic's checksum, so a client's
        // terms sum to its weight times the sum it keeps of its topics' checksums (`subscriptionSum`).
        // The sweep reads that, and the count and traced sum beside it, rather than each client's
        // collections: they are kept by the only methods that change the collections. Whether a client
        // traces only topics it subscribes to is checked after every event that changes either.
        var subscriptions = 0
        var counted = 0
        var queued = 0
        var pairsByClients: UInt64 = 0
        var tracesByClients: UInt64 = 0
        // By index, reading fields in place: binding each client would copy (and retain) all of it.
        var i = clients.startIndex
        while i != clients.endIndex {
            let id = clients.keys[i]
            let (subscriptionSum, tracedSum, count, isCounted, bytes, fullNonWebSocket) = clients.reading(i) { c in
                (c.subscriptionSum, c.tracedSum, c.subscriptionCount, c.counted, c.outbox.queuedBytes,
                 c.socket == .full && c.transport != .websocket)
            }
            // Only a WebSocket's driver writes without taking from the queue, so only its socket can be full.
            if fullNonWebSocket { fail("client \(id) is not a WebSocket but its socket is marked full") }
            tracesByClients &+= tracedSum
            if isCounted { counted += 1 }
            queued += bytes
            subscriptions += count
            pairsByClients &+= Self.weight(id) &* subscriptionSum
            clients.formIndex(after: &i)
        }
        if counted != stats.connections { fail("stats.connections is \(stats.connections) but \(counted) connections are counted") }
        if subscriptions != stats.subscriptions { fail("stats.subscriptions is \(stats.subscriptions) but clients hold \(subscriptions)") }
        if queued != queuedBytes { fail("queuedBytes is \(queuedBytes) but client queues hold \(queued)") }
        if topics.count != stats.topics { fail("stats.topics is \(stats.topics) but \(topics.count) topics are held") }

        var topicSubscriptions = 0
        var pairsByTopics: UInt64 = 0
        var tracesByTopics: UInt64 = 0
        var ti = topics.startIndex
        while ti != topics.endIndex {
            let name = topics.keys[ti]
            let sum = Self.checksum(name)
            let (subscribers, traceSubscribers) = topics.reading(ti) { ($0.subscribers.orderedKeys, $0.traceSubscribers) }
            for id in subscribers { pairsByTopics &+= Self.weight(id) &* sum }
            tracesByTopics &+= sum &* UInt64(truncatingIfNeeded: traceSubscribers)
            // Its traced-subscriber count against the clients tracing it is in the checksums.
            for problem in topicProblems(name, at: ti, tracing: traceSubscribers) { fail(problem) }
            topicSubscriptions += subscribers.count
            topics.formIndex(after: &ti)
        }
        if topicSubscriptions != subscriptions {
            fail("topics list \(topicSubscriptions) subscribers but clients hold \(subscriptions) subscriptions: some topic lists a client that is not subscribed to it")
        }
        if pairsByClients != pairsByTopics || tracesByClients != tracesByTopics {
            let found = subscriptionProblems()
            for problem in found { fail(problem) }
            if found.isEmpty { fail("the clients' subscriptions and traces and the topics' subscriber lists and traced counts differ") }
        }

        guard let mesh else { return problems }
        // Every per-topic structure lives only as long as its topic.
        let perTopic = mesh.perTopicKeys
        for (map, keys) in perTopic {
            for topic in keys where !topics.contains(topic) { fail("mesh.\(map) still holds \(topic), which the relay no longer holds") }
        }
        for topic in Set(mesh.awaitingSync.keys).union(mesh.children.keys).union(mesh.stalePresence.keys) {
            for map in mesh.maps(holdingEmptyEntryFor: topic) { fail("mesh.\(map) holds an empty entry for \(topic)") }
        }
        // Link queues: what is counted is what is queued, and only up links have one.
        if Set(mesh.links.keys) != mesh.up { fail("link queues exist for \(mesh.links.keys.sorted()) but the up links are \(mesh.up.sorted())") }
        for (peer, link) in mesh.links {
            let bytes = link.queue.reduce(0) { $0 + $1.bytes }
            if bytes != link.queuedBytes { fail("the link to \(peer) counts \(link.queuedBytes) queued bytes but holds \(bytes)") }
            if link.unacknowledged < 0 { fail("the link to \(peer) has \(link.unacknowledged) unacknowledged batches") }
        }
        for (topic, upstream) in mesh.upstream where !mesh.up.contains(upstream) {
            fail("\(topic)'s upstream \(upstream) is not an up link")
        }
        return problems
    }

    /// Every (client, topic) pair the clients and the topics disagree on, looked up one by one: the
    /// sweep's checksums found that they differ.
    mutating func subscriptionProblems() -> [String] {
        var problems: [String] = []
        var tracedByTopic: [String: Int] = [:]
        var i = clients.startIndex
        while i != clients.endIndex {
            let id = clients.keys[i]
            let (traced, subscribed) = clients.reading(i) { ($0.traced, $0.subscriptions.orderedKeys) }
            for topic in traced { tracedByTopic[topic, default: 0] += 1 }
            for topic in subscribed {
                guard let ti = topics.index(forKey: topic) else {
                    problems.append("client \(id) is subscribed to \(topic), which the relay does not hold")
                    continue
                }
                if !topics.reading(ti, { $0.subscribers.contains(id) }) { problems.append("client \(id) is subscribed to \(topic) but is not among its subscribers") }
            }
            clients.formIndex(after: &i)
        }
        var ti = topics.startIndex
        while ti != topics.endIndex {
            let name = topics.keys[ti]
            let (subscribers, traceSubscribers) = topics.reading(ti) { ($0.subscribers.orderedKeys, $0.traceSubscribers) }
            for id in subscribers where clients.reading(id, { $0.subscriptions.contains(name) }) != true {
                problems.append("\(name) lists subscriber \(id), which is not subscribed to it")
            }
            let tracing = tracedByTopic.removeValue(forKey: name) ?? 0
            if traceSubscribers != tracing {
                problems.append("\(name) counts \(traceSubscribers) traced subscribers but clients trace it \(tracing) times")
            }
            topics.formIndex(after: &ti)
        }
        for (topic, n) in tracedByTopic.sorted(by: { $0.key < $1.key }) { problems.append("\(n) clients trace \(topic), which the relay does not hold") }
        return problems
    }

    /// A topic's term in the sweep's checksums.
    static func checksum(_ topic: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in topic.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return mixed(h)
    }

    /// A client's weight in the sweep's checksums: a (client, topic) pair's term is the client's weight
    /// times the topic's checksum. Odd, so that no topic's term vanishes.
    static func weight(_ client: ClientID) -> UInt64 {
        mixed(client.raw &* 0x9E37_79B9_7F4A_7C15) | 1
    }

    /// SplitMix64's finaliser: spreads every input bit over the output, so that sums of terms do not cancel.
    static func mixed(_ x: UInt64) -> UInt64 {
        var h = x
        h = (h ^ (h >> 30)) &* 0xBF58_476D_1CE4_E5B9
        h = (h ^ (h >> 27)) &* 0x94D0_49BB_1331_11EB
        return h ^ (h >> 31)
    }

    /// What is inconsistent in one topic on its own: its traced-subscriber count against the
    /// `tracing` clients that trace it, its long-poll waiters, and its stream.
    mutating func topicProblems(_ name: String, at ti: TrackedMap<String, TopicState>.Index, tracing: Int) -> [String] {
        var problems: [String] = []
        let (traceSubscribers, waiters) = topics.reading(ti) { ($0.traceSubscribers, $0.pollWaiters.orderedKeys) }
        if traceSubscribers != tracing {
            problems.append("\(name) counts \(traceSubscribers) traced subscribers but clients trace it \(tracing) times")
        }
        for client in waiters {
            guard let ci = clients.index(forKey: client), clients.reading(ci, { $0.transport == .poll }) else {
                problems.append("\(name) has poll waiter \(client), which is not a waiting long-poll")
                continue
            }
        }
        // Working out the home hashes the name once per region: only a stream without one of its
        // own needs to know.
        let home = topics.reading(ti, { $0.stream.problemDependsOnHome }) ? isHome(name) : false
        if let problem = topics.reading(ti, { $0.stream.problem(isHome: home) }) { problems.append("\(name) \(problem)") }
        return problems
    }

    /// Runs the invariant checks after an event and records what they find.
    ///
    /// After every event, every client and topic the event changed is checked, and the totals over
    /// all of them are compared with the core's counters (`checkChangedAfterEvent`); the cost follows
    /// the event's own work. The whole state is also swept (`checkInvariantsInPlace`), which sees
    /// what no single change shows (per-topic mesh maps, link queues): on a core of fewer than
    /// `invariantSweepEveryEventBelow` items after every event, on a larger one every
    /// size/`invariantBudgetPerEvent` events.
    mutating func checkInvariantsAfterEvent() {
        for problem in checkChangedAfterEvent() { invariantLog.record("t=\(clock) \(config.region): \(problem)") }
        invariantLog.eventsSinceCheck += 1
        let budget = invariantLog.eventsSinceCheck * max(1, config.invariantBudgetPerEvent)
        // Clients and topics alone already make the sweep not due: the link queues need not be counted.
        let held = clients.count + topics.count
        if held >= config.invariantSweepEveryEventBelow, budget < held { return }
        var queued = 0
        if mesh != nil {
            var i = mesh!.links.startIndex
            while i != mesh!.links.endIndex {
                queued += mesh!.links.reading(i) { $0.queue.count }
                mesh!.links.formIndex(after: &i)
            }
        }
        let size = held + queued
        guard size < config.invariantSweepEveryEventBelow || budget >= size else { return }
        invariantLog.eventsSinceCheck = 0
        for problem in checkInvariantsInPlace() { invariantLog.record("t=\(clock) \(config.region): \(problem)") }
    }

    /// Checks every client and topic changed since the last call (`TrackedMap`), and the totals
    /// over all of them, kept up to date from what each changed one held before and holds now.
    ///
    /// Per changed client whose subscriptions or traces changed: what it traces it is subscribed to,
    /// and each topic it is subscribed to exists and lists it. Per changed topic: its traced-subscriber count matches the clients
    /// tracing it, its long-poll waiters are waiting long-polls, its stream is consistent
    /// (`TopicStream.problem`), and a removed topic left nothing in the mesh's per-topic maps.
    /// Totals: connections, subscriptions and queued bytes match the core's counters, and the topics
    /// list as many subscribers as the clients hold subscriptions (with every client's subscriptions
    /// listed, no topic lists a client that is not subscribed).
    mutating func checkChangedAfterEvent() -> [String] {
        var problems: [String] = []
        func fail(_ text: String) { if problems.count < 20 { problems.append(text) } }
        let changedClients = clients.takeChanged()
        var changedTopics = topics.takeChanged()
        // Topics whose tracing clients changed are checked too.
        var tracesMoved = false
        // Moved out and back, never copied: a copy would retain everything it holds.
        var seen = InvariantShadow()
        swap(&seen, &invariantLog.seen)
        defer { swap(&seen, &invariantLog.seen) }

        // A client replaced or removed during the event: what was last seen of it is on the value it replaced.
        let replaced = clients.takeReplaced()
        for id in changedClients {
            let before = replaced.isEmpty ? nil : replaced[id]
            guard let ci = clients.index(forKey: id) else {
                if let old = before?.checked {
                    seen.connections -= old.counted ? 1 : 0
                    seen.queuedBytes -= old.queuedBytes
                    seen.subscriptions -= old.subscribed.count
                    for topic in old.traced { seen.untrace(topic); changedTopics.append(topic); tracesMoved = true }
                }
                continue
            }
            let (recorded, now) = clients.updateUnnoted(ci) { c -> (InvariantShadow.Client?, InvariantShadow.Client) in
                let now = InvariantShadow.Client(counted: c.counted, queuedBytes: c.outbox.queuedBytes,
                                                 subscribed: c.subscriptions.orderedKeys, traced: c.traced)
                let recorded = c.checked
                c.checked = now
                return (recorded, now)
            }
            let old = if let before { before.checked } else { recorded }
            // The subscriptions and traces are looked at only when they changed: the array and set are
            // shared with the client's own until either changes, so comparing unchanged ones is O(1).
            let tracedChanged = old?.traced != now.traced
            if let old {
                seen.connections -= old.counted ? 1 : 0
                seen.queuedBytes -= old.queuedBytes
                seen.subscriptions -= old.subscribed.count
                if tracedChanged { for topic in old.traced { seen.untrace(topic); changedTopics.append(topic); tracesMoved = true } }
            }
            if tracedChanged || old?.subscribed != now.subscribed {
                for topic in now.traced where !clients.reading(ci, { $0.subscriptions.contains(topic) }) {
                    fail("client \(id) traces \(topic) without being subscribed to it")
                }
                for topic in now.subscribed {
                    guard let ti = topics.index(forKey: topic) else {
                        fail("client \(id) is subscribed to \(topic), which the relay does not hold")
                        continue
                    }
                    if !topics.reading(ti, { $0.subscribers.contains(id) }) { fail("client \(id) is subscribed to \(topic) but is not among its subscribers") }
                }
            }
            seen.connections += now.counted ? 1 : 0
            seen.queuedBytes += now.queuedBytes
            seen.subscriptions += now.subscribed.count
            if tracedChanged {
                for topic in now.traced {
                    seen.tracing[topic, default: 0] += 1
                    changedTopics.append(topic); tracesMoved = true
                }
            }
        }

        if tracesMoved { changedTopics = changedTopics.uniqued() }
        for name in changedTopics {
            if let old = seen.topicSubscribers.removeValue(forKey: name) { seen.topicSubscriptions -= old }
            guard let ti = topics.index(forKey: name) else {
                if let tracing = seen.tracing[name] { fail("\(tracing) clients trace \(name), which the relay no longer holds") }
                for map in mesh?.maps(holding: name) ?? [] { fail("mesh.\(map) still holds \(name), which the relay no longer holds") }
                continue
            }
            for problem in topicProblems(name, at: ti, tracing: seen.tracing[name, default: 0]) { fail(problem) }
            let subscribers = topics.reading(ti) { $0.subscribers.count }
            seen.topicSubscribers[name] = subscribers
            seen.topicSubscriptions += subscribers
        }

        if seen.connections != stats.connections { fail("stats.connections is \(stats.connections) but \(seen.connections) connections are counted") }
        if seen.subscriptions != stats.subscriptions { fail("stats.subscriptions is \(stats.subscriptions) but clients hold \(seen.subscriptions)") }
        if seen.queuedBytes != queuedBytes { fail("queuedBytes is \(queuedBytes) but client queues hold \(seen.queuedBytes)") }
        if topics.count != stats.topics { fail("stats.topics is \(stats.topics) but \(topics.count) topics are held") }
        if seen.topicSubscriptions != seen.subscriptions {
            fail("topics list \(seen.topicSubscriptions) subscribers but clients hold \(seen.subscriptions) subscriptions: some topic lists a client that is not subscribed to it")
        }
        guard mesh != nil else { return problems }
        for problem in checkChangedMeshState(upBefore: seen.up) { fail(problem) }
        seen.up = mesh?.up ?? []
        return problems
    }

    /// The per-event check of the mesh's state: every key of a per-topic map and every link queue
    /// changed since the last call (and, when the set of up links changed, every upstream).
    mutating func checkChangedMeshState(upBefore: Set<String>) -> [String] {
        guard mesh != nil else { return [] }
        let (changedTopics, changedUpstreams) = mesh!.takeChangedTopics()
        let changedLinks = mesh!.links.takeChanged()
        var problems: [String] = []
        func fail(_ text: String) { if problems.count < 20 { problems.append(text) } }
        for topic in changedTopics {
            if topics.index(forKey: topic) == nil {
                for map in mesh!.maps(holding: topic) { fail("mesh.\(map) still holds \(topic), which the relay no longer holds") }
            }
            for map in mesh!.maps(holdingEmptyEntryFor: topic) { fail("mesh.\(map) holds an empty entry for \(topic)") }
        }
        // Which links have a queue changes only with the links changed or the up links.
        if (!changedLinks.isEmpty || mesh!.up != upBefore),
           mesh!.links.count != mesh!.up.count || mesh!.links.keys.contains(where: { !mesh!.up.contains($0) }) {
            fail("link queues exist for \(mesh!.links.keys.sorted()) but the up links are \(mesh!.up.sorted())")
        }
        for peer in changedLinks {
            // Read in place: a copy of the link would retain every queued message.
            guard let (bytes, counted, unacknowledged) = mesh!.links.reading(peer, { link in
                (link.queue.reduce(0) { $0 + $1.bytes }, link.queuedBytes, link.unacknowledged)
            }) else { continue }
            if bytes != counted { fail("the link to \(peer) counts \(counted) queued bytes but holds \(bytes)") }
            if unacknowledged < 0 { fail("the link to \(peer) has \(unacknowledged) unacknowledged batches") }
        }
        // An upstream must be an up link: check the upstreams that changed, or all of them when a link went down.
        let upstreams = mesh!.up == upBefore ? changedUpstreams : Array(mesh!.upstream.keys)
        for topic in upstreams {
            if let upstream = mesh!.upstream[topic], !mesh!.up.contains(upstream) { fail("\(topic)'s upstream \(upstream) is not an up link") }
        }
        return problems
    }

    /// Removes a topic and every structure kept for it: one removal, nothing left behind.
    mutating func removeTopic(_ topic: String) {
        guard topics.removeValue(forKey: topic) != nil else { return }
        stats.topics -= 1
        guard mesh != nil else { return }
        mesh!.children.removeValue(forKey: topic)
        mesh!.replicaReports.remove(topic)
        mesh!.upstream.removeValue(forKey: topic)
        mesh!.awaitingSync.removeValue(forKey: topic)
        mesh!.lastHome.removeValue(forKey: topic)
        mesh!.presenceSequence.removeValue(forKey: topic)
        mesh!.presenceSeen.removeValue(forKey: topic)
        mesh!.presenceRoute.removeValue(forKey: topic)
        mesh!.stalePresence.removeValue(forKey: topic)
        mesh!.presencePending.removeValue(forKey: topic)
        mesh!.lingering.remove(topic)
    }
}

/// The invariant failures a core has found, bounded.
struct InvariantLog: Sendable {
    var failures: [String] = []
    var count = 0
    var eventsSinceCheck = 0
    /// What the per-event check last saw.
    var seen = InvariantShadow()

    mutating func record(_ failure: String) {
        count += 1
        if failures.count < RelayCore.maxRecordedInvariantFailures { failures.append(failure) }
    }
}

/// What the per-event invariant check last saw of each client and topic, and the totals over them,
/// so that it checks the totals after every event while visiting only what the event changed.
struct InvariantShadow: Sendable {
    struct Client: Sendable {
        var counted: Bool
        var queuedBytes: Int
        /// The client's subscriptions, in order (sharing the client's own array while unchanged).
        var subscribed: [String]
        var traced: Set<String>
    }
    var topicSubscribers: [String: Int] = [:]
    /// Per topic, how many clients trace it.
    var tracing: [String: Int] = [:]
    var connections = 0
    var queuedBytes = 0
    var subscriptions = 0
    var topicSubscriptions = 0
    /// The mesh's up links after the last event.
    var up: Set<String> = []

    /// One client fewer traces `topic`.
    mutating func untrace(_ topic: String) {
        tracing[topic, default: 0] -= 1
        if tracing[topic] == 0 { tracing[topic] = nil }
    }
}

extension RelayCore {
    /// The most invariant failures kept for reporting.
    public static let maxRecordedInvariantFailures = 100
}

extension RelayCore {
    /// One line describing this region's view of `topic`, for debugging traces
    /// (`TERN_SIM_TRACE_TOPIC`): home, upstream, stream position and failover state.
    public func debugSummary(of topic: String) -> String {
        guard let t = topics[topic] else { return "absent" }
        var parts = ["home=\(home(of: topic))", "at=\(t.stream.position)", "links=\(mesh?.up.sorted().joined(separator: ",") ?? "")"]
        if !t.stream.synced { parts.append("unsynced(from \(t.stream.awaitingFrom.map { "\($0)" } ?? "-"))") }
        if t.stream.resyncing { parts.append("resyncing") }
        if let up = mesh?.upstream[topic] { parts.append("up=\(up)") }
        if let children = mesh?.children[topic], !children.isEmpty {
            parts.append("children=" + children.orderedKeys.map { "\($0)\(children[$0] == .live ? "" : "?")" }.joined(separator: ","))
        }
        if let parked = mesh?.awaitingSync[topic], !parked.isEmpty { parts.append("parked=" + parked.map(\.child).joined(separator: ",")) }
        if let fork = t.stream.fork { parts.append("fork=\(fork)") }
        if let sw = t.stream.lastSwitch { parts.append("switch=\(sw.from)->\(sw.to)") }
        if !t.stream.failoverLog.isEmpty { parts.append("log=\(t.stream.failoverLog.count)") }
        if let r = t.stream.replicaOf { parts.append("replicaOf=\(r)") }
        if let r = t.stream.replication.replica { parts.append("replica=\(r)") }
        if !t.subscribers.isEmpty { parts.append("subs=\(t.subscribers.count)") }
        if t.presence.count > 0 {
            let owners = mesh?.config.graph.regions ?? [config.region]
            parts.append("presence=" + owners.filter { t.presence.count(in: $0) > 0 }.map { "\($0):\(t.presence.count(in: $0))" }.joined(separator: ","))
        }
        if let seen = mesh?.presenceSeen[topic], !seen.isEmpty {
            parts.append("seen=" + seen.sorted { $0.key < $1.key }.map { "\($0.key)@\($0.value.sequence)" }.joined(separator: ","))
        }
        if let stale = mesh?.stalePresence[topic], !stale.isEmpty { parts.append("stale=" + stale.keys.sorted().joined(separator: ",")) }
        if let oldest = t.stream.history.all.first, let newest = t.stream.history.newest { parts.append("ring=\(oldest.position.offset)...\(newest.position)") }
        return parts.joined(separator: " ")
    }
}

extension MeshState {
    /// Every per-topic map, by name, with the topics it holds an entry for (for the full sweep).
    var perTopicKeys: [(map: String, topics: [String])] {
        [("children", Array(children.keys)), ("upstream", Array(upstream.keys)), ("awaitingSync", Array(awaitingSync.keys)),
         ("lastHome", Array(lastHome.keys)), ("presenceSequence", Array(presenceSequence.keys)),
         ("presenceSeen", Array(presenceSeen.keys)), ("presenceRoute", Array(presenceRoute.keys)),
         ("stalePresence", Array(stalePresence.keys)), ("presencePending", Array(presencePending.keys)),
         ("lingering", Array(lingering)), ("replicaReports", Array(replicaReports))]
    }

    /// The per-topic maps, by name, that hold an entry for `topic`.
    func maps(holding topic: String) -> [String] {
        [("children", children[topic] != nil), ("upstream", upstream[topic] != nil), ("awaitingSync", awaitingSync[topic] != nil),
         ("lastHome", lastHome[topic] != nil), ("presenceSequence", presenceSequence[topic] != nil),
         ("presenceSeen", presenceSeen[topic] != nil), ("presenceRoute", presenceRoute[topic] != nil),
         ("stalePresence", stalePresence[topic] != nil), ("presencePending", presencePending[topic] != nil),
         ("lingering", lingering.contains(topic)), ("replicaReports", replicaReports.contains(topic))]
            .filter(\.1).map(\.0)
    }

    /// The per-topic maps, by name, whose entry for `topic` is an empty collection: an entry that
    /// should have been removed with its last element.
    func maps(holdingEmptyEntryFor topic: String) -> [String] {
        [("children", children[topic]?.isEmpty == true), ("awaitingSync", awaitingSync[topic]?.isEmpty == true),
         ("stalePresence", stalePresence[topic]?.isEmpty == true)]
            .filter(\.1).map(\.0)
    }

    /// The topics whose entry in any per-topic map changed since the last call, and those whose
    /// upstream changed; forgets them.
    mutating func takeChangedTopics() -> (topics: [String], upstreams: [String]) {
        let changedUpstreams = upstream.takeChanged()
        var changed = changedUpstreams
        var merged = false
        func add(_ more: [String]) {
            guard !more.isEmpty else { return }
            if changed.isEmpty { changed = more } else { changed += more; merged = true }
        }
        add(children.takeChanged())
        add(awaitingSync.takeChanged())
        add(lastHome.takeChanged())
        add(presenceSequence.takeChanged())
        add(presenceSeen.takeChanged())
        add(presenceRoute.takeChanged())
        add(stalePresence.takeChanged())
        add(presencePending.takeChanged())
        add(lingering.takeChanged())
        add(replicaReports.takeChanged())
        return (merged ? changed.uniqued() : changed, changedUpstreams)
    }
}
