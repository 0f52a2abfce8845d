/// Identifies one presence entry across the mesh: the owning region and its connection.
public struct PresenceKey: Hashable, Sendable {
    public var region: String
    public var client: ClientID

    public init(region: String, client: ClientID) {
        self.region = region
        self.client = client
    }
}

/// Who is in one topic, across the regions this relay knows about, with O(1)
/// join, leave and counts.
public struct PresenceTable: Sendable {
    private var entries = IndexedMap<PresenceKey, PresenceEntry>()
    private var connectionsPerUser: [String: Int] = [:]
    /// Per region, how many entries it owns and the wrapping sum of their hashes (see `checksum(of:)`).
    private var perRegion: [String: (count: Int, checksum: UInt64)] = [:]

    /// An empty table.
    public init() {}

    /// The number of connections present.
    public var count: Int { entries.count }
    /// The number of distinct users present.
    public var userCount: Int { connectionsPerUser.count }

    /// An order-independent checksum of the connections `region` holds here, for digests.
    public func checksum(of region: String) -> UInt64 { perRegion[region]?.checksum ?? 0 }

    private static func hash(_ entry: PresenceEntry) -> UInt64 {
        (entry.client.raw &+ 1) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(truncatingIfNeeded: entry.user.utf8.count)
    }

    /// The number of entries owned by `region`.
    public func count(in region: String) -> Int { perRegion[region]?.count ?? 0 }

    /// Adds or replaces the entry for its region and client; returns whether it is new.
    @discardableResult
    public mutating func insert(_ entry: PresenceEntry) -> Bool {
        let key = PresenceKey(region: entry.region, client: entry.client)
        let old = entries.updateValue(entry, forKey: key)
        // A snapshot repeats entries the table already holds: leave those as they are.
        if let old, old == entry { return false }
        if let old { release(old) }
        connectionsPerUser[entry.user, default: 0] += 1
        Self.add(&perRegion[entry.region, default: (0, 0)], Self.hash(entry))
        return old == nil
    }

    /// Removes an entry and returns it.
    @discardableResult
    public mutating func remove(_ key: PresenceKey) -> PresenceEntry? {
        guard let old = entries.removeValue(forKey: key) else { return nil }
        release(old)
        return old
    }

    /// Removes a local connection's entry.
    @discardableResult
    public mutating func remove(_ client: ClientID, region: String) -> PresenceEntry? {
        remove(PresenceKey(region: region, client: client))
    }

    /// Every entry owned by `region`, in a stable order.
    public func entries(of region: String) -> [PresenceEntry] {
        var out: [PresenceEntry] = []
        entries.forEach { key, entry in
            if key.region == region { out.append(entry) }
            return true
        }
        return out
    }

    /// The regions that own entries here, sorted.
    public var regions: [String] { perRegion.keys.sorted() }

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

    private mutating func release(_ entry: PresenceEntry) {
        if let n = connectionsPerUser[entry.user], n > 1 {
            connectionsPerUser[entry.user] = n - 1
        } else {
            connectionsPerUser[entry.user] = nil
        }
        guard let i = perRegion.index(forKey: entry.region) else { return }
        if perRegion.values[i].count > 1 {
            perRegion.values[i].count -= 1
            perRegion.values[i].checksum &-= Self.hash(entry)
        } else {
            perRegion.remove(at: i)
        }
    }

    private static func add(_ owned: inout (count: Int, checksum: UInt64), _ hash: UInt64) {
        owned.count += 1
        owned.checksum &+= hash
    }
}
