/// Who is in one topic in this region, with O(1) join, leave and counts.
public struct PresenceTable: Sendable {
    private var entries = IndexedMap<ClientID, PresenceEntry>()
    private var connectionsPerUser: [String: Int] = [:]

    /// An empty table.
    public init() {}

    /// The number of connections present.
    public var count: Int { entries.count }
    /// The number of distinct users present.
    public var userCount: Int { connectionsPerUser.count }

    /// Adds or replaces the entry for its client.
    public mutating func insert(_ entry: PresenceEntry) {
        if let old = entries[entry.client] { release(old.user) }
        entries[entry.client] = entry
        connectionsPerUser[entry.user, default: 0] += 1
    }

    /// Removes a client's entry and returns it.
    @discardableResult
    public mutating func remove(_ client: ClientID) -> PresenceEntry? {
        guard let old = entries.removeValue(forKey: client) else { return nil }
        release(old.user)
        return old
    }

    /// At most `limit` entries, in a stable order.
    public func list(limit: Int) -> [PresenceEntry] {
        var out: [PresenceEntry] = []
        out.reserveCapacity(min(limit, entries.count))
        entries.forEach { _, entry in
            out.append(entry)
            return out.count < limit
        }
        return out
    }

    private mutating func release(_ user: String) {
        if let n = connectionsPerUser[user], n > 1 {
            connectionsPerUser[user] = n - 1
        } else {
            connectionsPerUser[user] = nil
        }
    }
}
