/// Presence across regions: each region owns its connections' entries and
/// sends changes up to the topic's home, which fans them out down the tree
/// like publications. A region that becomes unreachable has its entries
/// marked stale, then dropped after `presenceTimeout`; snapshots on every
/// (re)connection make all regions converge.
extension RelayCore {
    /// Connections and distinct users present in `topic`, as this relay sees the mesh.
    public func presenceCounts(_ topic: String) -> (clients: Int, users: Int) {
        guard let t = topics[topic] else { return (0, 0) }
        return (t.presence.count, t.presence.userCount)
    }

    /// Presence entries for `topic` owned by regions this relay cannot reach, by region.
    public func stalePresenceRegions(_ topic: String) -> [String] {
        mesh?.stalePresence[topic]?.keys.sorted() ?? []
    }

    /// Records a change to this region's own entries; changes to one room within
    /// `maxBatchDelay` are sent together (`flushPresence`).
    mutating func localPresenceChanged(_ topic: String, _ change: PresenceChange) {
        guard mesh != nil else { return }
        mesh!.presencePending[topic, default: []].append(change)
        if mesh!.presencePending[topic]?.count == 1 {
            schedule(clock + mesh!.config.maxBatchDelay, .presenceFlush(topic))
        }
    }

    /// Sends the changes of one room made within the window: as deltas, one sequenced message per
    /// join or leave, in order; or, when there are at least half as many changes as the room has
    /// entries here, as one snapshot of them, which then costs less. In a large room a few joins
    /// cost a few entries on every link, not the whole room.
    mutating func flushPresence(_ topic: String) {
        let region = config.region
        guard mesh != nil, let changes = mesh!.presencePending.removeValue(forKey: topic), !changes.isEmpty,
              let owned = topics.reading(topic, { $0.presence.count(in: region) }) else { return }
        let send: [PresenceChange]
        if changes.count > 1, changes.count * 2 >= owned {
            send = [.snapshot(topics.reading(topic) { $0.presence.entries(of: region) } ?? [])]
        } else {
            send = changes
        }
        let home = isHome(topic)
        let hop = home ? nil : mesh!.routes.firstHop(to: self.currentHome(of: topic))
        if let hop { mesh!.presenceRoute.updateValue(hop, forKey: topic) }
        for change in send {
            mesh!.presenceClock += 1
            let sequence = mesh!.presenceClock
            mesh!.presenceSequence.updateValue(sequence, forKey: topic)
            let message = LinkMessage.presence(topic: topic, owner: config.region, incarnation: mesh!.incarnation,
                                               sequence: sequence, change: change, towardsHome: false)
            if home {
                sendPresenceDown(topic, message)
            } else if let hop {
                enqueueLink(hop, asTowardsHome(message))
            }
        }
    }

    func asTowardsHome(_ message: LinkMessage) -> LinkMessage {
        guard case .presence(let t, let o, let i, let s, let c, _) = message else { return message }
        return .presence(topic: t, owner: o, incarnation: i, sequence: s, change: c, towardsHome: true)
    }

    mutating func sendPresenceDown(_ topic: String, _ message: LinkMessage) {
        guard let children = mesh!.children[topic] else { return }
        for child in children.orderedKeys where children[child] == .live {
            enqueueLink(child, message)
        }
    }

    /// A full state exchange: everything this region knows for `topic`, owner by owner.
    mutating func sendPresenceSnapshots(_ topic: String, to child: String) {
        guard let table = topics[topic]?.presence, topics[topic]?.options.presence == true else { return }
        // Every owner this region knows, including those with no entries left, so the child drops
        // entries it still holds for them.
        var owners = Set(table.regions).union(mesh!.presenceSeen[topic]?.keys ?? [:].keys)
        owners.insert(config.region)
        for owner in owners.sorted() {
            let seen = owner == config.region
                ? (mesh!.incarnation, mesh!.presenceSequence[topic] ?? mesh!.presenceClock)
                : mesh!.presenceSeen[topic]?[owner] ?? (0, 0)
            enqueueLink(child, .presence(topic: topic, owner: owner, incarnation: seen.0, sequence: seen.1,
                                         change: .snapshot(table.entries(of: owner)), towardsHome: false))
        }
    }

    mutating func receivePresence(topic: String, owner: String, incarnation: UInt64, sequence: UInt64,
                                  change: PresenceChange, towardsHome: Bool, now: TernInstant) {
        guard case .success(let options) = namespaceOptions(for: topic), options.presence else { return }
        let message = LinkMessage.presence(topic: topic, owner: owner, incarnation: incarnation, sequence: sequence,
                                           change: change, towardsHome: false)
        if towardsHome && !isHome(topic) {
            if let hop = mesh!.routes.firstHop(to: currentHome(of: topic)) { enqueueLink(hop, asTowardsHome(message)) }
            return
        }
        if owner == config.region {
            // Our own change, back from the home: it is already applied here, but the regions below still need it.
            sendPresenceDown(topic, message)
            return
        }
        ensureTopic(topic, options, now: now)
        if applyPresence(topic, owner: owner, incarnation: incarnation, sequence: sequence, change) {
            sendPresenceDown(topic, message)
        }
    }

    /// Applies a remote change unless it is older than what this region holds; returns whether it applied.
    mutating func applyPresence(_ topic: String, owner: String, incarnation: UInt64, sequence: UInt64, _ change: PresenceChange) -> Bool {
        guard let joinLeave = topics.reading(topic, { $0.options.joinLeave }) else { return false }
        let seen = mesh!.presenceSeen[topic]?[owner]
        // A restarted owner's earlier incarnation has nothing left to say.
        if let seen, incarnation < seen.incarnation { return false }
        if case .snapshot = change {
            if let seen, seen.incarnation == incarnation, seen.sequence > sequence { return false }
        } else if let seen, seen.incarnation == incarnation, seen.sequence >= sequence {
            return false
        }
        if let seen, incarnation > seen.incarnation {
            // A new incarnation replaces everything the old one held: its connections are gone.
            dropPresence(topic, owner: owner)
        }
        mesh!.presenceSeen[topic, default: [:]][owner] = (incarnation, sequence)
        if !mesh!.stalePresence.isEmpty {
            mesh!.stalePresence.update(topic) { $0[owner] = nil }
            if mesh!.stalePresence[topic]?.isEmpty == true { mesh!.stalePresence.removeValue(forKey: topic) }
        }
        guard topics.contains(topic) else { return false }
        switch change {
        case .join(let entry):
            if withTopic(topic, { $0.presence.insert(entry) }) == true, joinLeave {
                broadcast(topic, .join(topic: topic, entry), volatileKey: "presence/\(topic)/\(owner)/\(entry.client)")
            }
        case .leave(let client):
            if let entry = withTopic(topic, { $0.presence.remove(PresenceKey(region: owner, client: client)) }) ?? nil, joinLeave {
                broadcast(topic, .leave(topic: topic, entry), volatileKey: "presence/\(topic)/\(owner)/\(client)")
            }
        case .snapshot(let entries):
            // The table is changed in place in one access; who left and who joined is told afterwards, in the same order.
            let (left, joined) = withTopic(topic) { t -> ([PresenceEntry], [PresenceEntry]) in
                let incoming = Set(entries.map(\.client))
                var left: [PresenceEntry] = []
                for old in t.presence.entries(of: owner) where !incoming.contains(old.client) {
                    t.presence.remove(PresenceKey(region: owner, client: old.client))
                    left.append(old)
                }
                var joined: [PresenceEntry] = []
                for entry in entries where entry.region == owner && t.presence.insert(entry) { joined.append(entry) }
                return (left, joined)
            } ?? ([], [])
            guard joinLeave else { return true }
            for old in left { broadcast(topic, .leave(topic: topic, old), volatileKey: "presence/\(topic)/\(owner)/\(old.client)") }
            for entry in joined { broadcast(topic, .join(topic: topic, entry), volatileKey: "presence/\(topic)/\(owner)/\(entry.client)") }
        }
        return true
    }

    /// After a topology change: resend this region's own entries along a new
    /// route to each home, and mark or clear stale entries of regions that
    /// became unreachable or reachable.
    mutating func refreshPresenceRoutes(now: TernInstant) {
        for topic in topics.keys.sorted() where topics[topic]?.options.presence == true {
            guard let table = topics[topic]?.presence else { continue }
            // Also when this region has no members left but once announced some: the home must learn it holds none.
            if !isHome(topic), table.count(in: config.region) > 0 || mesh!.presenceRoute[topic] != nil || mesh!.presenceSequence[topic] != nil {
                let hop = mesh!.routes.firstHop(to: currentHome(of: topic))
                if let hop, hop != mesh!.presenceRoute[topic] {
                    mesh!.presenceRoute.updateValue(hop, forKey: topic)
                    enqueueLink(hop, .presence(topic: topic, owner: config.region, incarnation: mesh!.incarnation,
                                               sequence: mesh!.presenceSequence[topic] ?? mesh!.presenceClock,
                                               change: .snapshot(table.entries(of: config.region)), towardsHome: true))
                } else if hop == nil {
                    mesh!.presenceRoute.removeValue(forKey: topic)
                }
            }
            for owner in table.regions where owner != config.region {
                if canReach(owner) {
                    mesh!.stalePresence.update(topic) { $0[owner] = nil }
                    if mesh!.stalePresence[topic]?.isEmpty == true { mesh!.stalePresence.removeValue(forKey: topic) }
                } else if mesh!.stalePresence[topic]?[owner] == nil {
                    mesh!.stalePresence[topic, default: [:]][owner] = now
                    schedule(now + mesh!.config.presenceTimeout, .presenceTimeout(topic, owner))
                }
            }
        }
    }

    /// Removes every entry `owner` holds in `topic`, telling local subscribers they left.
    mutating func dropPresence(_ topic: String, owner: String) {
        guard let t = topics[topic] else { return }
        let joinLeave = t.options.joinLeave
        for entry in t.presence.entries(of: owner) {
            topics.update(topic) { $0.presence.remove(PresenceKey(region: owner, client: entry.client)) }
            if joinLeave { broadcast(topic, .leave(topic: topic, entry), volatileKey: "presence/\(topic)/\(owner)/\(entry.client)") }
        }
    }

    /// A region restarted (its link-state report carries a newer incarnation): the connections its
    /// earlier incarnation held are gone, so their presence entries go everywhere at once.
    mutating func presenceOwnerRestarted(_ owner: String, incarnation: UInt64) {
        for topic in mesh!.presenceSeen.keys.sorted() {
            guard let seen = mesh!.presenceSeen[topic]?[owner], seen.incarnation < incarnation else { continue }
            dropPresence(topic, owner: owner)
            mesh!.presenceSeen.update(topic) { $0[owner] = (incarnation, 0) }
            mesh!.stalePresence.update(topic) { $0[owner] = nil }
            if mesh!.stalePresence[topic]?.isEmpty == true { mesh!.stalePresence.removeValue(forKey: topic) }
            // Regions below this one in the topic's tree hear it from here too.
            sendPresenceDown(topic, .presence(topic: topic, owner: owner, incarnation: incarnation, sequence: 0,
                                              change: .snapshot([]), towardsHome: false))
        }
    }

    /// What this region holds of `topic`'s presence, owner by owner: every owner it knows, itself included.
    func presenceDigest(_ topic: String) -> [PresenceDigestEntry] {
        guard let mesh, let table = topics[topic]?.presence else { return [] }
        var owners = Set(table.regions).union(mesh.presenceSeen[topic]?.keys ?? [:].keys)
        owners.insert(config.region)
        return owners.sorted().map { owner in
            let incarnation = owner == config.region ? mesh.incarnation : mesh.presenceSeen[topic]?[owner]?.incarnation ?? 0
            return PresenceDigestEntry(owner: owner, incarnation: incarnation, count: UInt32(clamping: table.count(in: owner)),
                                       checksum: table.checksum(of: owner))
        }
    }

    /// Every `presenceDigestInterval`: a digest of each presence topic this region serves `peer`.
    mutating func sendPresenceDigests(to peer: String) {
        guard mesh != nil else { return }
        for topic in mesh!.children.keys.sorted() where mesh!.children[topic]?[peer] == .live && topics[topic]?.options.presence == true {
            enqueueLink(peer, .presenceDigest(topic: topic, owners: presenceDigest(topic)))
        }
    }

    /// A digest from this region's upstream. Presence flows down the tree in order, so when the digest
    /// arrives this region has applied everything the upstream had: any other owner that differs has
    /// diverged (a lost message, a bug), and this region asks for full snapshots again. Its own
    /// entries travel up separately and may be in flight; if the upstream holds something else for
    /// this region, it sends its own snapshot towards the home again (repeating one is harmless).
    mutating func receivePresenceDigest(_ topic: String, _ owners: [PresenceDigestEntry], from peer: String) {
        // Read in place: `topics[topic]` copies the whole topic state.
        guard mesh != nil, let (presence, table, synced, resyncing) = topics.reading(topic, {
            ($0.options.presence, $0.presence, $0.stream.synced, $0.stream.resyncing)
        }), presence else { return }
        var listed = Set<String>()
        var diverged = false
        var ownDiffers = false
        for e in owners {
            listed.insert(e.owner)
            let differs = e.count != UInt32(clamping: table.count(in: e.owner)) || e.checksum != table.checksum(of: e.owner)
            if e.owner == config.region { ownDiffers = differs } else if differs { diverged = true }
        }
        if table.regions.contains(where: { $0 != config.region && !listed.contains($0) }) { diverged = true }
        if !listed.contains(config.region), table.count(in: config.region) > 0 { ownDiffers = true }
        if ownDiffers, mesh!.presencePending[topic] == nil, !isHome(topic), let hop = mesh!.routes.firstHop(to: currentHome(of: topic)) {
            mesh!.presenceRoute.updateValue(hop, forKey: topic)
            enqueueLink(hop, .presence(topic: topic, owner: config.region, incarnation: mesh!.incarnation,
                                       sequence: mesh!.presenceSequence[topic] ?? mesh!.presenceClock,
                                       change: .snapshot(table.entries(of: config.region)), towardsHome: true))
        }
        if diverged, synced, !resyncing {
            stats.presenceResyncs += 1
            askAgain(topic, from: peer)
        }
    }

    /// Whether this region follows the mesh's presence for `topic`: it is the home, or it follows
    /// the topic from upstream. Elsewhere it knows only its own members.
    public func tracksMeshPresence(_ topic: String) -> Bool {
        guard mesh != nil else { return topics.index(forKey: topic) != nil }
        return topics.index(forKey: topic) != nil && (home(of: topic) == config.region || mesh!.upstream[topic] != nil)
    }

    /// This region stopped following `topic`: other regions' entries would only go stale here, so
    /// they go (its own members stay, and reach the home as before). Following again brings
    /// fresh snapshots of every owner.
    mutating func forgetRemotePresence(_ topic: String) {
        guard mesh != nil, let t = topics[topic] else { return }
        for owner in t.presence.regions where owner != config.region { dropPresence(topic, owner: owner) }
        if let own = mesh!.presenceSeen[topic]?[config.region] {
            mesh!.presenceSeen.updateValue([config.region: own], forKey: topic)
        } else {
            mesh!.presenceSeen.removeValue(forKey: topic)
        }
        mesh!.stalePresence.removeValue(forKey: topic)
    }

    /// Drops the entries of a region that stayed unreachable for `presenceTimeout`.
    mutating func presenceTimedOut(_ topic: String, owner: String, now: TernInstant) {
        guard let since = mesh?.stalePresence[topic]?[owner], since + mesh!.config.presenceTimeout <= now,
              !canReach(owner), topics.contains(topic) else { return }
        mesh!.stalePresence.update(topic) { $0[owner] = nil }
        if mesh!.stalePresence[topic]?.isEmpty == true { mesh!.stalePresence.removeValue(forKey: topic) }
        mesh!.presenceSeen.update(topic) { $0[owner] = nil }
        guard let joinLeave = topics[topic]?.options.joinLeave else { return }
        for entry in topics[topic]?.presence.entries(of: owner) ?? [] {
            topics.update(topic) { $0.presence.remove(PresenceKey(region: owner, client: entry.client)) }
            if joinLeave { broadcast(topic, .leave(topic: topic, entry), volatileKey: "presence/\(topic)/\(owner)/\(entry.client)") }
        }
        sweepIfIdle(topic, now: now)
    }
}
