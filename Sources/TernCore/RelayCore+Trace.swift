/// Per-hop timestamps: a subscriber asks for them per subscription (`trace: true`), its region asks
/// the topic's home, and while any region wants them the home starts each publication's hop list
/// (received, sequenced), every region on the fan-out tree adds a `relayed` hop and the subscriber's
/// relay adds `delivered`. Publications of topics nobody traces carry no hops, on links or to clients.
extension RelayCore {
    /// Marks `client`'s subscription to `topic` as traced, or no longer traced.
    mutating func setTraced(_ client: ClientID, _ topic: String, _ on: Bool, now: TernInstant) {
        guard let (subscribed, traced) = clients.reading(client, { ($0.subscriptions.contains(topic), $0.traced.contains(topic)) }) else { return }
        if on {
            guard subscribed, !traced, topics.contains(topic) else { return }
            clients.update(client) { $0.setTrace(topic, true) }
            topics.update(topic) { $0.traceSubscribers += 1 }
            if topics[topic]?.traceSubscribers == 1 { tellHomeAboutTrace(topic, on: true) }
        } else if traced {
            clients.update(client) { $0.setTrace(topic, false) }
            traceSubscriberGone(topic, now: now)
        }
    }

    /// One traced subscription of `topic` ended.
    mutating func traceSubscriberGone(_ topic: String, now: TernInstant) {
        guard let count = topics[topic]?.traceSubscribers, count > 0 else { return }
        topics.update(topic) { $0.traceSubscribers = count - 1 }
        if count == 1 { tellHomeAboutTrace(topic, on: false) }
    }

    /// Tells the topic's home whether this region's subscribers want hops.
    mutating func tellHomeAboutTrace(_ topic: String, on: Bool) {
        guard mesh != nil else { return }
        let home = self.currentHome(of: topic)
        guard home != config.region else { return }
        route(.trace(topic: topic, region: config.region, home: home, on: on), to: home)
    }

    /// A region's request for hops, on its way to the home or arrived there.
    mutating func receiveTraceRequest(topic: String, region: String, home: String, on: Bool, now: TernInstant) {
        guard home == config.region else {
            route(.trace(topic: topic, region: region, home: home, on: on), to: home)
            return
        }
        // A request for a home this region no longer is (or is not yet) is dropped: the region asks
        // the right home again when its view of the mesh changes.
        guard self.currentHome(of: topic) == config.region else { return }
        if on {
            guard case .success(let options) = namespaceOptions(for: topic) else { return }
            ensureTopic(topic, options, now: now)
            topics.update(topic) { $0.tracedBy.insert(region) }
            sweepIfIdle(topic, now: now)
        } else {
            topics.update(topic) { $0.tracedBy.remove(region) }
        }
    }

    /// After the mesh changed shape: a home forgets regions it cannot reach (they ask again when they
    /// come back), a region that is no longer the home forgets them all, and every region with traced
    /// subscribers asks the topic's current home again.
    mutating func refreshTrace(_ topic: String) {
        // Read in place: `topics[topic]` copies the whole topic state.
        guard let (tracedBy, traceSubscribers) = topics.reading(topic, { ($0.tracedBy, $0.traceSubscribers) }) else { return }
        if !tracedBy.isEmpty {
            let kept: Set<String> = isHome(topic) ? tracedBy.filter { canReach($0) } : []
            topics.update(topic) { $0.tracedBy = kept }
        }
        if traceSubscribers > 0 { tellHomeAboutTrace(topic, on: true) }
    }

    /// `reply` as `client` may see it: recovered publications carry hops only for a traced subscription.
    func withoutUnaskedHops(_ reply: SubscribeReply, for client: ClientID) -> SubscribeReply {
        if clients[client]?.traced.contains(reply.topic) == true { return reply }
        guard reply.publications.contains(where: { $0.trace != nil }) else { return reply }
        var plain = reply
        for i in plain.publications.indices { plain.publications[i].trace = nil }
        return plain
    }
}
