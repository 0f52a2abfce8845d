import TernCore

/// Draws random fault schedules for swarm testing: each run gets its own mix
/// of partitions, crashes, flaps and clogs, always healed with time to spare
/// so the checkers can judge convergence.
public enum Swarm {
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
                out.append(.init(at: at, fault: .clog(l.0, l.1, delay: .seconds(2), duration: .seconds(3))))
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
