import ArgumentParser
import Foundation
import Synchronization
import TernCore
import TernSim

struct SimCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sim",
        abstract: "Run a scenario in the deterministic network simulator.",
        discussion: """
        The simulator runs every region's real relay core on a simulated clock with one seeded \
        random generator: the same seed replays the same run. It exits non-zero when an invariant \
        fails and prints the command that replays the failing seed.
        """
    )

    @Argument(help: "A scenario file (see Simulations/).")
    var file: String

    @Option(name: .long, help: "Run this seed (default: the scenario's).")
    var seed: UInt64?

    @Option(name: .long, help: "Run a range of seeds, e.g. 1..20.")
    var seeds: String?

    @Option(name: .long, help: "Run N seeds with randomly drawn faults instead of the scenario's.")
    var swarm: Int?

    @Flag(name: .long, help: "Print results as JSON.")
    var json = false

    @Option(name: .long, help: "Write an HTML report (latency histogram, timeline of faults and deliveries).")
    var report: String?

    @Flag(name: .long, help: "Run each seed twice and compare trace hashes.")
    var checkDeterminism = false

    @Option(name: .long, help: ArgumentHelp(
        "Runs to do at once (default: one per CPU core).",
        discussion: "Each run is single-threaded and depends only on its scenario and seed, so running several at once changes no result; they are reported in seed order. The sim/wall column is each run's own, measured while it shared the machine with the others: measure speed with --jobs 1."))
    var jobs: Int?

    @Option(name: .long, help: ArgumentHelp(
        "Items each relay's full invariant sweep may visit per event on average (default 8).",
        discussion: "After every event, each relay checks every client and topic that event changed. It also sweeps its whole state: after every event when it holds fewer than 64 clients, topics and queued link messages (or fewer than this budget), otherwise after every size/budget events. Use a large value to sweep after every event."))
    var invariantBudget: Int?

    @Option(name: .long, help: "Override every namespace's acknowledgment mode: replicated or leader (to compare their cost).")
    var ack: String?

    func validate() throws {
        if seeds != nil, parseSeeds() == nil { throw ValidationError("--seeds takes a range like 1..20") }
        if let swarm, swarm < 1 { throw ValidationError("--swarm takes a positive number of runs") }
        if let jobs, jobs < 1 { throw ValidationError("--jobs takes a positive number of runs to do at once") }
        if let ack, AckMode(rawValue: ack) == nil { throw ValidationError("--ack takes 'replicated' or 'leader'") }
    }

    func parseSeeds() -> [UInt64]? {
        guard let seeds else { return nil }
        let parts = seeds.split(separator: ".", omittingEmptySubsequences: true)
        guard parts.count == 2, let a = UInt64(parts[0]), let b = UInt64(parts[1]), a <= b, b - a < 100_000 else { return nil }
        return Array(a...b)
    }

    func run() throws {
        var base: Scenario
        do { base = try ScenarioLoader.load(path: file) } catch { throw ValidationError("\(error)") }
        if let invariantBudget { base.invariantBudgetPerEvent = max(1, invariantBudget) }
        if let ack, let mode = AckMode(rawValue: ack) {
            for name in base.topology.namespaces.keys { base.topology.namespaces[name]!.ack = mode }
        }
        var runs: [(UInt64, Scenario)] = []
        if let swarm {
            let first = seed ?? base.seed
            for s in first..<(first + UInt64(swarm)) {
                runs.append((s, Swarm.scenario(base, seed: s)))
            }
        } else {
            for s in parseSeeds() ?? [seed ?? base.seed] { runs.append((s, base)) }
        }
        let tty = isatty(2) == 1 && !json
        let jobs = max(1, min(self.jobs ?? ProcessInfo.processInfo.activeProcessorCount, runs.count))
        let file = self.file, swarm = self.swarm, checkDeterminism = self.checkDeterminism
        /// One seed's run and its wall time.
        @Sendable func runOne(_ s: UInt64, _ scenario: Scenario, progress: ((Double) -> Void)?) -> (SimulationResult, Double) {
            let began = Date()
            var r = Simulation(scenario: scenario, seed: s).run(progress: progress)
            let wall = Date().timeIntervalSince(began)
            if checkDeterminism {
                let again = Simulation(scenario: scenario, seed: s).run()
                if again.traceHash != r.traceHash {
                    r.violations.append("not deterministic: trace \(r.traceHash) then \(again.traceHash) for the same seed")
                }
            }
            return (r, wall)
        }
        @Sendable func failure(_ s: UInt64, _ scenario: Scenario, _ r: SimulationResult) -> String {
            let replay = swarm != nil ? "tern sim \(file) --swarm 1 --seed \(s)" : "tern sim \(file) --seed \(s)"
            return "FAILED \(scenario.name) seed \(s):\n\(r.violations.prefix(20).map { "  - \($0)" }.joined(separator: "\n"))\n  replay: \(replay)\n"
        }
        var outcomes: [(SimulationResult, Double)] = []
        if jobs == 1 {
            for (s, scenario) in runs {
                let outcome = runOne(s, scenario, progress: tty ? { p in
                    let width = 30
                    let done = Int(p * Double(width))
                    FileHandle.standardError.write(Data("\r\(scenario.name) seed \(s) [\(String(repeating: "#", count: done))\(String(repeating: ".", count: width - done))] \(Int(p * 100))%".utf8))
                } : nil)
                if tty { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
                if !outcome.0.passed { FileHandle.standardError.write(Data(failure(s, scenario, outcome.0).utf8)) }
                outcomes.append(outcome)
            }
        } else {
            // Each run is one thread and depends only on its scenario and seed: `jobs` threads take
            // the runs in turn, and the results are reported in seed order whichever ends first.
            let state = Mutex(ParallelRuns(outcomes: Array(repeating: nil, count: runs.count)))
            let total = runs.count, all = runs
            let group = DispatchGroup()
            for _ in 0..<jobs {
                group.enter()
                let thread = Thread {
                    while let i = state.withLock({ $0.take(total) }) {
                        let (s, scenario) = all[i]
                        let outcome = runOne(s, scenario, progress: nil)
                        state.withLock { shared in
                            shared.outcomes[i] = outcome
                            shared.finished += 1
                            if !outcome.0.passed { shared.failed += 1 }
                            if tty { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
                            if !outcome.0.passed { FileHandle.standardError.write(Data(failure(s, scenario, outcome.0).utf8)) }
                            if tty {
                                FileHandle.standardError.write(Data("\r\(scenario.name): \(shared.finished) of \(total) runs done, \(shared.failed) failed, \(jobs) at a time".utf8))
                            }
                        }
                    }
                    group.leave()
                }
                thread.stackSize = 8 << 20
                thread.start()
            }
            group.wait()
            if tty { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
            outcomes = state.withLock { $0.outcomes.map { $0! } }
        }
        let results = outcomes.map(\.0), walls = outcomes.map(\.1)
        let failed = results.contains { !$0.passed }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            let data = try encoder.encode(results.enumerated().map { JSONRun(result: $0.element, wallSeconds: walls[$0.offset]) })
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(summary(results, walls))
        }
        if let report {
            try htmlReport(results, walls).write(toFile: report, atomically: true, encoding: .utf8)
            if !json { print("report: \(report)") }
        }
        if failed { throw ExitCode(1) }
    }

    struct JSONRun: Encodable {
        var result: SimulationResult
        var wallSeconds: Double
        var simulatedSecondsPerWallSecond: Double { result.simulatedSeconds / max(wallSeconds, 1e-9) }

        enum CodingKeys: String, CodingKey { case result, wallSeconds, simulatedSecondsPerWallSecond }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(result, forKey: .result)
            try c.encode(wallSeconds, forKey: .wallSeconds)
            try c.encode(simulatedSecondsPerWallSecond, forKey: .simulatedSecondsPerWallSecond)
        }
    }

    func summary(_ results: [SimulationResult], _ walls: [Double]) -> String {
        func pad(_ s: String, _ n: Int, left: Bool = false) -> String {
            s.count >= n ? s : (left ? s + String(repeating: " ", count: n - s.count) : String(repeating: " ", count: n - s.count) + s)
        }
        func f(_ v: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", v) }
        let header = [pad("scenario", 22, left: true), pad("seed", 6), pad("result", 6), pad("clients", 8), pad("publish", 8),
                      pad("deliveries", 10), pad("p50 ms", 8), pad("p99 ms", 8), pad("msgs/pub", 9), pad("bytes/pub", 9),
                      pad("ack p50", 8), pad("sim/wall", 9), "  trace"]
        var out = header.joined(separator: " ") + "\n"
        for (r, wall) in zip(results, walls) {
            out += [pad(r.scenario, 22, left: true), pad(String(r.seed), 6), pad(r.passed ? "ok" : "FAIL", 6),
                    pad(String(r.clients), 8), pad(String(r.publishes), 8), pad(String(r.deliveries), 10),
                    pad(f(r.latency.p50Ms), 8), pad(f(r.latency.p99Ms), 8), pad(f(r.linkMessagesPerPublish, 2), 9),
                    pad(f(r.linkBytesPerPublish), 9), pad(f(r.ackLatency.p50Ms), 8),
                    pad(f(r.simulatedSeconds / max(wall, 1e-9)), 9), "  " + r.traceHash].joined(separator: " ") + "\n"
        }
        if let r = results.first, results.count == 1 {
            out += "\npublish → acknowledgment: p50 \(f(r.ackLatency.p50Ms)) ms  p90 \(f(r.ackLatency.p90Ms)) ms  p99 \(f(r.ackLatency.p99Ms)) ms  (\(r.ackLatency.count) acknowledged)\n"
            out += "\nper region (publish → deliver):\n"
            for region in r.latencyByRegion.keys.sorted() {
                let p = r.latencyByRegion[region]!
                out += "  \(pad(region, 14, left: true)) p50 \(pad(f(p.p50Ms), 7)) ms  p90 \(pad(f(p.p90Ms), 7)) ms  p99 \(pad(f(p.p99Ms), 7)) ms  max \(pad(f(p.maxMs), 7)) ms  (\(p.count) deliveries)\n"
            }
            if !r.timeline.isEmpty {
                out += "\nfaults:\n" + r.timeline.map { "  \(pad(f($0.seconds), 6))s  \($0.label)" }.joined(separator: "\n") + "\n"
            }
        }
        let failedCount = results.count { !$0.passed }
        out += "\n\(results.count - failedCount) passed, \(failedCount) failed\n"
        return out
    }

    func htmlReport(_ results: [SimulationResult], _ walls: [Double]) -> String {
        func esc(_ s: String) -> String { s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;") }
        var body = ""
        for (r, wall) in zip(results, walls) {
            let buckets = r.histogram.keys.sorted()
            let maxCount = max(1, r.histogram.values.max() ?? 1)
            var bars = ""
            for (i, b) in buckets.enumerated() {
                let h = Double(r.histogram[b]!) / Double(maxCount) * 150
                bars += "<rect x='\(i * 44 + 10)' y='\(170 - h)' width='36' height='\(h)' fill='#4a7'/>"
                bars += "<text x='\(i * 44 + 28)' y='190' font-size='10' text-anchor='middle'>\(b >= SimulationResult.overflowBucket ? ">10000" : "≤" + String(Int(b)))</text>"
                bars += "<text x='\(i * 44 + 28)' y='\(165 - h)' font-size='9' text-anchor='middle'>\(r.histogram[b]!)</text>"
            }
            let perSecond = r.deliveriesPerSecond
            let peak = max(1, perSecond.max() ?? 1)
            let width = max(1, perSecond.count)
            var line = ""
            for (i, v) in perSecond.enumerated() {
                line += "\(i == 0 ? "M" : "L")\(Double(i) / Double(width) * 760 + 20),\(170 - Double(v) / Double(peak) * 150) "
            }
            var marks = ""
            for t in r.timeline {
                let x = t.seconds / max(r.simulatedSeconds, 1) * 760 + 20
                marks += "<line x1='\(x)' x2='\(x)' y1='10' y2='170' stroke='#c33' stroke-dasharray='3'/><text x='\(x + 2)' y='20' font-size='9' fill='#c33'>\(esc(t.label))</text>"
            }
            body += """
            <h2>\(esc(r.scenario)), seed \(r.seed): \(r.passed ? "passed" : "FAILED")</h2>
            <p>\(r.clients) clients, \(r.publishes) publishes (\(r.acknowledged) acknowledged), \(r.deliveries) deliveries,
            \(String(format: "%.2f", r.linkMessagesPerPublish)) link messages and \(String(format: "%.0f", r.linkBytesPerPublish)) link bytes per publish,
            \(String(format: "%.1f", r.simulatedSeconds / max(wall, 1e-9))) simulated seconds per wall second, trace \(r.traceHash).</p>
            \(r.violations.isEmpty ? "" : "<ul>" + r.violations.prefix(50).map { "<li>\(esc($0))</li>" }.joined() + "</ul>")
            <h3>Publish → deliver latency (ms)</h3><svg width='\(buckets.count * 44 + 20)' height='200'>\(bars)</svg>
            <h3>Deliveries per second, with faults</h3>
            <svg width='800' height='180'><path d='\(line)' fill='none' stroke='#36c' stroke-width='1.5'/>\(marks)</svg>
            """
        }
        return "<!doctype html><meta charset='utf-8'><title>tern sim</title><body style='font-family:sans-serif;max-width:900px;margin:auto'><h1>tern sim report</h1>\(body)</body>"
    }
}

/// The runs `tern sim --jobs` shares among its threads: which to take next, and what each gave.
struct ParallelRuns: Sendable {
    var next = 0
    var finished = 0
    var failed = 0
    var outcomes: [(SimulationResult, Double)?]

    /// The index of the next run to do, if any is left.
    mutating func take(_ total: Int) -> Int? {
        guard next < total else { return nil }
        next += 1
        return next - 1
    }
}
