import ArgumentParser
import Foundation
import TernBench
import TernRelay

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure a relay (and optionally nats-server) with a NIO WebSocket load generator.",
        discussion: """
            The same client code drives a Tern relay's /ws and, with --nats, nats-server's WebSocket
            listener in the same run, so the ratio is measured on one machine at one time.
            scripts/bench.sh starts both servers on loopback and runs the whole suite.
            """,
        subcommands: [FanoutBench.self, LatencyBench.self, ConnectionsBench.self]
    )
}

/// Options every benchmark shares.
struct BenchOptions: ParsableArguments {
    @Option(name: .long, help: "The relay's WebSocket URL.")
    var url: String = "ws://127.0.0.1:7101/ws"

    @Option(name: .long, help: "nats-server's WebSocket URL (websocket { no_tls: true }): run the same benchmark against it too.")
    var nats: String?

    @Option(name: .long, help: "Event loops of the load generator.")
    var threads: Int = 2

    @Option(name: .long, help: "The namespace the benchmark's topics live in (anonymous subscribe must be allowed).")
    var namespace: String = "bench"

    @Option(name: .long, help: "A token that may publish to the benchmark's topics; default: one minted with $TERN_JWT_SECRET.")
    var token: String?

    @Flag(name: .long, help: "Print the results as JSON instead of a table.")
    var json = false

    func publishToken() async throws -> String? {
        if let token { return token }
        guard let secret = ProcessInfo.processInfo.environment["TERN_JWT_SECRET"], !secret.isEmpty else { return nil }
        let claims = TernClaims(user: "bench", expires: Date().addingTimeInterval(3600),
                                permissions: TernPermissionsClaim(subscribe: ["\(namespace):*"], publish: ["\(namespace):*"], presence: []))
        return try await Authenticator.signHS256(secret: secret, claims: claims)
    }

    func runner() -> BenchRunner {
        let tty = isatty(2) == 1
        return BenchRunner(threads: threads, progress: { line in
            guard tty else { return }
            FileHandle.standardError.write(Data("\r\u{1B}[K\(line)".utf8))
        })
    }

    /// Runs `body` with a load generator, shutting it down (and ending the progress line) afterwards.
    func withRunner<T>(_ body: (BenchRunner) async throws -> T) async throws -> T {
        let runner = runner()
        do {
            let value = try await body(runner)
            endProgress()
            try await runner.shutdown()
            return value
        } catch {
            endProgress()
            try? await runner.shutdown()
            throw error
        }
    }

    func endProgress() {
        if isatty(2) == 1 { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }

    func printJSON<T: Encodable>(_ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(String(decoding: try encoder.encode(value), as: UTF8.self))
    }
}

func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
func fmt(_ v: Double, _ digits: Int = 0) -> String { String(format: "%.\(digits)f", v) }

struct FanoutBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fanout",
        abstract: "One publisher, many subscribers of one topic: deliveries per second.")

    @OptionGroup var options: BenchOptions

    @Option(name: .long, help: "Subscriber connections.")
    var subscribers: Int = 1000

    @Option(name: .long, help: "Publications sent, as fast as the publisher can.")
    var messages: Int = 2000

    @Option(name: .long, help: "Bytes of each publication's data.")
    var size: Int = 100

    @Option(name: .long, help: "Give up waiting for deliveries after this many seconds.")
    var timeout: Int = 120

    struct Report: Encodable {
        var results: [FanoutResult]
        var ratio: Double?
    }

    func run() async throws {
        guard subscribers > 0, messages > 0, size >= 32 else { throw ValidationError("--subscribers and --messages must be positive and --size at least 32") }
        let results = try await options.withRunner { runner -> [FanoutResult] in
            var results: [FanoutResult] = []
            let token = try await options.publishToken()
            results.append(try await runner.fanout(try BenchEndpoint(url: options.url), target: .tern(publishToken: token),
                                                   subscribers: subscribers, messages: messages, size: size,
                                                   name: "fan-\(UInt32.random(in: 0...UInt32.max))", namespace: options.namespace, timeout: .seconds(timeout)))
            if let nats = options.nats {
                results.append(try await runner.fanout(try BenchEndpoint(url: nats), target: .nats, subscribers: subscribers,
                                                       messages: messages, size: size, timeout: .seconds(timeout)))
            }
            return results
        }
        let ratio = results.count == 2 ? results[0].deliveriesPerSecond / results[1].deliveriesPerSecond : nil
        if options.json { return try options.printJSON(Report(results: results, ratio: ratio)) }
        print("fan-out: 1 publisher → \(subscribers) subscribers, \(messages) messages of \(size) B")
        print([pad("server", 8), pad("delivered", 12), pad("seconds", 9), pad("deliveries/s", 14), pad("out of order", 13), pad("complete", 9)].joined(separator: " "))
        for r in results {
            print([pad(r.target, 8), pad("\(r.delivered)", 12), pad(fmt(r.seconds, 3), 9), pad(fmt(r.deliveriesPerSecond), 14),
                   pad("\(r.outOfOrder)", 13), pad(r.complete ? "yes" : "NO", 9)].joined(separator: " "))
        }
        if let ratio { print("tern / nats: \(fmt(ratio, 3))×") }
        if let refused = results.first(where: { $0.publisherRefusals > 0 }) {
            print("warning: the relay refused \(refused.publisherRefusals) publishes (rate limit or permissions); raise publish_rate for benchmarks")
        }
        if results.contains(where: { !$0.complete || $0.outOfOrder > 0 }) { throw ExitCode(1) }
    }
}

struct LatencyBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "latency",
        abstract: "Paced publishes: publish→deliver p50, p99 and max, on the benchmark's own clock.")

    @OptionGroup var options: BenchOptions

    @Option(name: .long, help: "Publish to this relay instead of --url (another region of a mesh).")
    var publishUrl: String?

    @Option(name: .long, help: "Subscriber connections.")
    var subscribers: Int = 100

    @Option(name: .long, help: "Publications a second.")
    var rate: Int = 1000

    @Option(name: .long, help: "Seconds to publish for.")
    var duration: Int = 5

    @Option(name: .long, help: "Bytes of each publication's data.")
    var size: Int = 100

    @Option(name: .long, help: "The topic's name within the namespace; default: a fresh one per run. On a mesh the name decides the topic's home region, and with it the path a publication takes.")
    var topic: String?

    struct Report: Encodable { var results: [LatencyResult] }

    func run() async throws {
        guard subscribers > 0, rate > 0, duration > 0, size >= 32 else { throw ValidationError("counts must be positive and --size at least 32") }
        let results = try await options.withRunner { runner -> [LatencyResult] in
            var results: [LatencyResult] = []
            let token = try await options.publishToken()
            results.append(try await runner.latency(try BenchEndpoint(url: options.url), publishEndpoint: try publishUrl.map(BenchEndpoint.init(url:)),
                                                    target: .tern(publishToken: token), subscribers: subscribers, rate: rate,
                                                    duration: .seconds(duration), size: size, name: topic ?? "lat-\(UInt32.random(in: 0...UInt32.max))",
                                                    namespace: options.namespace))
            if let nats = options.nats {
                results.append(try await runner.latency(try BenchEndpoint(url: nats), target: .nats, subscribers: subscribers, rate: rate,
                                                        duration: .seconds(duration), size: size))
            }
            return results
        }
        if options.json { return try options.printJSON(Report(results: results)) }
        print("latency: \(rate) publications/s for \(duration) s to \(subscribers) subscribers, \(size) B")
        print([pad("server", 8), pad("delivered", 10), pad("expected", 10), pad("p50 ms", 9), pad("p99 ms", 9), pad("max ms", 9)].joined(separator: " "))
        for r in results {
            print([pad(r.target, 8), pad("\(r.delivered)", 10), pad("\(r.expected)", 10), pad(fmt(r.p50Milliseconds, 3), 9),
                   pad(fmt(r.p99Milliseconds, 3), 9), pad(fmt(r.maxMilliseconds, 3), 9)].joined(separator: " "))
        }
        if results.contains(where: { $0.delivered < $0.expected }) { throw ExitCode(1) }
    }
}

struct ConnectionsBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connections",
        abstract: "Idle subscribed connections: the server's resident memory per connection.")

    @OptionGroup var options: BenchOptions

    @Option(name: .long, help: "Connections to open.")
    var connections: Int = 5000

    @Option(name: .long, help: "The relay's process id, to read its RSS from /proc.")
    var pid: Int32?

    @Option(name: .long, help: "nats-server's process id, to read its RSS from /proc.")
    var natsPid: Int32?

    struct Report: Encodable { var results: [ConnectionsResult] }

    func run() async throws {
        guard connections > 0 else { throw ValidationError("--connections must be positive") }
        let results = try await options.withRunner { runner -> [ConnectionsResult] in
            var results: [ConnectionsResult] = []
            results.append(try await runner.connections(try BenchEndpoint(url: options.url), target: .tern(publishToken: nil),
                                                        count: connections, pid: pid, namespace: options.namespace))
            if let nats = options.nats {
                results.append(try await runner.connections(try BenchEndpoint(url: nats), target: .nats, count: connections, pid: natsPid))
            }
            return results
        }
        if options.json { return try options.printJSON(Report(results: results)) }
        print("connections: \(connections) idle subscribed WebSocket connections")
        print([pad("server", 8), pad("open s", 8), pad("RSS before", 12), pad("RSS open", 12), pad("RSS after", 12), pad("per connection", 15)].joined(separator: " "))
        func kib(_ v: Int?) -> String { v.map { "\(fmt(Double($0) / 1024, 1)) MiB" } ?? "–" }
        for r in results {
            print([pad(r.target, 8), pad(fmt(r.secondsToOpen, 2), 8), pad(kib(r.rssBeforeKiB), 12), pad(kib(r.rssOpenKiB), 12),
                   pad(kib(r.rssAfterKiB), 12), pad(r.bytesPerConnection.map { "\(fmt($0 / 1024, 1)) KB" } ?? "– (no --pid)", 15)].joined(separator: " "))
        }
    }
}
