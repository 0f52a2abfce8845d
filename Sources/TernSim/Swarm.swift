import TernCore

/// Draws random fault schedules for swarm testing: each run gets its own mix
/// of partitions, crashes, flaps and clogs, always healed with time to spare
/// so the checkers can judge convergence.
public enum Swarm {
    /// `scenario` with a fault schedule and a workload shape drawn from `seed`.
    public static func scenario(_ scenario: Scenario, seed: UInt64) -> Scenario {
        var s = scenario
        s.faults = faults(for: scenario, seed: seed)
        s.workload = workload(for: scenario, seed: seed)
        return s
    }

    /// A workload shape for `scenario`, drawn from `seed`: subscribers in only some regions,
    /// publishers in regions with no subscribers (so successors often have no local interest),
    /// one presence member per region or many, more or fewer topics, and topics that go idle and come back.
    public static func workload(for scenario: Scenario, seed: UInt64) -> Workload {
        var rng = SplitMix64(seed: seed ^ 0x0b5e_55ed)
        var w = scenario.workload
        let regions = scenario.topology.regions.map(\.name)
        func subset() -> [String] {
            let picked = regions.filter { _ in Bool.random(using: &rng) }
            return picked.isEmpty ? [regions.randomElement(using: &rng)!] : picked
        }
        if regions.count > 1, Int.random(in: 0..<3, using: &rng) > 0 { w.subscriberRegions = subset() }
        if regions.count > 1, Bool.random(using: &rng) { w.publisherRegions = subset() }
        if w.presenceChurn > 0, Bool.random(using: &rng) { w.churnersPerRegion = Int.random(in: 1...3, using: &rng) }
        if Bool.random(using: &rng) { w.topics = max(1, w.topics + Int.random(in: -2...4, using: &rng)) }
        // Drawn from its own stream, so the other draws of a seed stay as they were.
        var idleRng = SplitMix64(seed: seed ^ 0x1d1e_1d1e)
        if Int.random(in: 0..<3, using: &idleRng) == 0 {
            // Half the topics fall silent for a while, across the faults, and then publish again.
            let total = scenario.duration.ternNanoseconds
            let from = Duration.nanoseconds(total / 100 * Int64.random(in: 10...30, using: &idleRng))
            w.idleWindow = (from, from + .nanoseconds(total / 100 * Int64.random(in: 15...35, using: &idleRng)))
        }
        return w
    }

    /// A fault schedule for `scenario`, drawn from `seed`.
    public static func faults(for scenario: Scenario, seed: UInt64) -> [ScheduledFault] {
        var rng = SplitMix64(seed: seed ^ 0x5eed_5eed)
        let regions = scenario.topology.regions.map(\.name)
        let links = scenario.topology.links.map { ($0.between.0, $0.between.1) }
        let total = Double(scenario.duration.ternNanoseconds) / 1e9
        let healBy = total * 0.6
        var out: [ScheduledFault] = []
        var t = 2.0 + Double.random(in: 0...3, using: &rng)
        var crashed: [String] = []
        while t < healBy {
            let at = Duration.milliseconds(Int64(t * 1000))
            switch Int.random(in: 0..<8, using: &rng) {
            case 0 where regions.count > 1:
                let shuffled = regions.shuffled(using: &rng)
                let cut = Int.random(in: 1..<regions.count, using: &rng)
                out.append(.init(at: at, fault: .partition([Array(shuffled[..<cut]), Array(shuffled[cut...])])))
            case 1:
                out.append(.init(at: at, fault: .isolate(regions.randomElement(using: &rng)!)))
            case 2 where !links.isEmpty:
                let l = links.randomElement(using: &rng)!
                out.append(.init(at: at, fault: .flap(l.0, l.1, times: Int.random(in: 2...5, using: &rng), every: .milliseconds(700))))
            case 3 where !links.isEmpty:
                let l = links.randomElement(using: &rng)!
                // A clog ends by the final heal: what it delays is still in flight `delay` after it
                // ends, and the run must have settled before it checks that everything arrived.
                let lasts = min(3.0, healBy - t)
                out.append(.init(at: at, fault: .clog(l.0, l.1, delay: .seconds(2), duration: .milliseconds(Int64(lasts * 1000)))))
            case 4 where crashed.isEmpty:
                let r = regions.randomElement(using: &rng)!
                crashed.append(r)
                out.append(.init(at: at, fault: .crash(r)))
                out.append(.init(at: at + .seconds(Int64.random(in: 2...6, using: &rng)), fault: .restart(r)))
            case 6 where !links.isEmpty:
                let l = links.randomElement(using: &rng)!
                out.append(.init(at: at, fault: .blackhole(l.0, l.1)))
            case 7:
                out.append(.init(at: at, fault: .blackholeRegion(regions.randomElement(using: &rng)!)))
            default:
                out.append(.init(at: at, fault: .slowClients(regions.randomElement(using: &rng)!, fraction: 0.2, duration: .seconds(3))))
            }
            if Bool.random(using: &rng) { out.append(.init(at: at + .seconds(Int64.random(in: 2...5, using: &rng)), fault: .heal)) }
            t += 3 + Double.random(in: 0...6, using: &rng)
        }
        for r in crashed { out.append(.init(at: .milliseconds(Int64(healBy * 1000)), fault: .restart(r))) }
        out.append(.init(at: .milliseconds(Int64(healBy * 1000)), fault: .heal))
        return out.sorted { $0.at < $1.at }
    }
}
