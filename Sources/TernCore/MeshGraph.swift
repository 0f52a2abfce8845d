/// The regions of a mesh and the latency of each configured link.
///
/// Every relay computes routes, homes and fan-out trees from the same graph
/// and the same view of which links are up, so they agree without talking.
public struct MeshGraph: Sendable, Hashable {
    /// Region names, sorted.
    public let regions: [String]
    /// Link latency in milliseconds by region pair (both directions present).
    public let latency: [String: [String: Int64]]

    /// A graph of `regions` joined by `links` (region, region, one-way latency).
    public init(regions: [String], links: [(String, String, Duration)]) {
        self.regions = regions.sorted()
        var latency: [String: [String: Int64]] = [:]
        for r in regions { latency[r] = [:] }
        for (a, b, d) in links {
            latency[a, default: [:]][b] = max(1, d.ternMilliseconds)
            latency[b, default: [:]][a] = max(1, d.ternMilliseconds)
        }
        self.latency = latency
    }

    /// Configured neighbours of `region`, sorted.
    public func neighbours(of region: String) -> [String] { (latency[region] ?? [:]).keys.sorted() }

    /// Shortest-latency paths from `source` over the links `isUp` accepts.
    ///
    /// Ties break towards the alphabetically smaller predecessor, so every
    /// relay derives the same tree from the same view.
    public func shortestPaths(from source: String, isUp: (String, String) -> Bool = { _, _ in true }) -> ShortestPaths {
        var distance: [String: Int64] = [source: 0]
        var parent: [String: String] = [:]
        var done: Set<String> = []
        while true {
            var best: (String, Int64)?
            for (r, d) in distance where !done.contains(r) {
                if best == nil || d < best!.1 || (d == best!.1 && r < best!.0) { best = (r, d) }
            }
            guard let (current, d) = best else { break }
            done.insert(current)
            for (next, w) in latency[current] ?? [:] where !done.contains(next) && isUp(current, next) {
                let candidate = d + w
                if let known = distance[next] {
                    if candidate < known || (candidate == known && parent[next].map { current < $0 } == true) {
                        distance[next] = candidate
                        parent[next] = current
                    }
                } else {
                    distance[next] = candidate
                    parent[next] = current
                }
            }
        }
        return ShortestPaths(source: source, distance: distance, parent: parent)
    }
}

/// The result of a shortest-path search from one region.
public struct ShortestPaths: Sendable, Hashable {
    /// Where the search started (the root of the tree).
    public let source: String
    /// Total latency in milliseconds to each reachable region.
    public let distance: [String: Int64]
    /// Each reachable region's predecessor on its path from the source.
    public let parent: [String: String]

    /// Whether `region` can be reached.
    public func reaches(_ region: String) -> Bool { distance[region] != nil }

    /// The regions whose parent is `region`, sorted.
    public func children(of region: String) -> [String] {
        parent.filter { $0.value == region }.map(\.key).sorted()
    }

    /// The first hop from the source towards `target`.
    public func firstHop(to target: String) -> String? {
        guard target != source, var current = parent[target] == nil ? nil : target else { return nil }
        while let p = parent[current], p != source { current = p }
        return current
    }
}

/// Rendezvous (highest random weight) hashing: every relay ranks the same
/// regions for a topic the same way, and losing a region moves only the
/// topics it was home to.
public enum Rendezvous {
    /// A stable 64-bit score for `topic` in `region` (the same in every process).
    public static func score(topic: String, region: String) -> UInt64 {
        score(prefix: prefix(topic), region: region)
    }

    /// The part of every score of `topic` that does not depend on the region.
    static func prefix(_ topic: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in topic.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return (h ^ 0xFF) &* 0x100_0000_01b3
    }

    static func score(prefix: UInt64, region: String) -> UInt64 {
        var h = prefix
        for b in region.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        // SplitMix64's finaliser spreads FNV's weak low bits.
        h = (h ^ (h >> 30)) &* 0xBF58_476D_1CE4_E5B9
        h = (h ^ (h >> 27)) &* 0x94D0_49BB_1331_11EB
        return h ^ (h >> 31)
    }

    /// The first of `regions` in `ranking(topic:regions:)` order that is not `excluded`, without
    /// building the ranking: the highest score, ties to the lower name.
    public static func first(topic: String, regions: [String], excluding excluded: Set<String> = []) -> String? {
        let prefix = prefix(topic)
        var best: (region: String, score: UInt64)?
        for region in regions where excluded.isEmpty || !excluded.contains(region) {
            let s = score(prefix: prefix, region: region)
            if let b = best, b.score > s || (b.score == s && b.region <= region) { continue }
            best = (region, s)
        }
        return best?.region
    }

    /// `regions` ranked for `topic`, best first.
    public static func ranking(topic: String, regions: [String]) -> [String] {
        regions.map { ($0, score(topic: topic, region: $0)) }
            .sorted { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0 < $1.0 }
            .map(\.0)
    }
}
