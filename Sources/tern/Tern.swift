import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import TernCore
import TernRelay
import TernTopology

@main
struct Tern: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tern",
        abstract: "Regional presence and fan-out relays.",
        subcommands: [RelayCommand.self, UpCommand.self, TopologyCommand.self, SimCommand.self, TokenCommand.self, BenchCommand.self]
    )
}

/// Options every command that reads a topology shares.
struct LogOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func bootstrap() {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Options for what a relay serves to browsers.
struct WebOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "The directory holding clients/js/tern.js and web/ (the Tern checkout).",
        discussion: "Default: found by walking up from the working directory, then from the tern executable."))
    var webRoot: String?

    @Option(name: .long, help: ArgumentHelp(
        "Access-Control-Allow-Origin for /sse, /poll, /api/publish, /status and /client/*: '*', an origin, or a comma-separated list; 'none' sends no CORS headers."))
    var corsOrigin: String = "*"

    func options(devTokens: Bool) -> RelayWebOptions {
        RelayWebOptions(root: webRoot, allowOrigin: corsOrigin == "none" ? nil : corsOrigin, devTokens: devTokens)
    }
}

func loadTopology(_ path: String) throws -> Topology {
    do {
        return try TopologyLoader.load(path: path)
    } catch {
        throw ValidationError("\(error)")
    }
}

struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Run one region's relay."
    )

    @Option(name: .long, help: "The topology file.")
    var topology: String

    @Option(name: .long, help: "The region this relay serves.")
    var region: String

    @Option(name: .long, help: "Event loops (threads) serving client connections; default: one per core.")
    var eventLoops: Int?

    @OptionGroup var web: WebOptions

    @OptionGroup var log: LogOptions

    func validate() throws {
        if let n = eventLoops, !(1...Relay.maxEventLoops).contains(n) {
            throw ValidationError("--event-loops \(n) is out of range; give 1 to \(Relay.maxEventLoops)")
        }
    }

    func run() async throws {
        log.bootstrap()
        let topology = try loadTopology(self.topology)
        let relay: Relay
        do {
            relay = try await Relay(topology: topology, region: region, web: web.options(devTokens: false), eventLoops: eventLoops)
        } catch let error as RelayConfigError {
            throw ValidationError(error.description)
        }
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: relay)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: Logger(label: "tern")))
        try await group.run()
    }
}

struct UpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "up",
        abstract: "Run the regions of a topology in this process (all of them unless --region says), for local development.",
        discussion: """
        Secrets the topology reads from environment variables that are unset are \
        replaced by throwaway values, printed at start, so the mesh runs with no setup. \
        Each relay serves the demo room at / and the mesh status at /status.html, and \
        hands out development tokens (room:* only) at /dev/token to loopback callers. \
        With --region, only the named regions run here; start the others in other \
        processes with the same secrets (exported), e.g. to stop and restart one region.
        """
    )

    @Argument(help: "The topology file.")
    var topology: String = "Topology/local.yaml"

    @Option(name: .long, help: "Run only this region (repeat for several); the default is every region of the topology.")
    var region: [String] = []

    @OptionGroup var web: WebOptions

    @OptionGroup var log: LogOptions

    func validate() throws {
        guard !region.isEmpty, let topology = try? TopologyLoader.load(path: self.topology) else { return }
        let names = Set(topology.regions.map(\.name))
        for r in region where !names.contains(r) {
            throw ValidationError("region '\(r)' is not in \(self.topology); choose from: \(topology.regions.map(\.name).joined(separator: ", "))")
        }
    }

    func run() async throws {
        log.bootstrap()
        let topology = try loadTopology(self.topology)
        let chosen = topology.regions.filter { region.isEmpty || region.contains($0.name) }
        var environment = ProcessInfo.processInfo.environment
        var generated: [String] = []
        for source in [topology.auth.hs256Secret, topology.auth.apiKey].compactMap({ $0 }) {
            if case .environment(let name) = source, (environment[name] ?? "").isEmpty {
                environment[name] = randomSecret()
                generated.append(name)
            }
        }
        let secrets = SecretResolver(environment: environment)
        var relays: [Relay] = []
        for region in chosen {
            do {
                relays.append(try await Relay(topology: topology, region: region.name, secrets: secrets, web: web.options(devTokens: true)))
            } catch let error as RelayConfigError {
                throw ValidationError(error.description)
            }
        }
        let group = ServiceGroup(configuration: .init(
            services: relays.map { .init(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: Logger(label: "tern")))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            for relay in relays { _ = await relay.waitUntilListening() }
            printBanner(topology: topology, running: chosen, environment: environment, generated: generated)
            try await tasks.next()
            tasks.cancelAll()
        }
    }

    private func printBanner(topology: Topology, running: [Region], environment: [String: String], generated: [String]) {
        var out = running.count == topology.regions.count
            ? "tern: mesh '\(topology.mesh)' is up with \(topology.regions.count) regions\n\n"
            : "tern: \(running.count) of the \(topology.regions.count) regions of mesh '\(topology.mesh)' run here\n\n"
        for r in running {
            let base = "\(r.client.host):\(r.client.port)"
            out += "  \(r.name.padding(toLength: 12, withPad: " ", startingAt: 0)) ws://\(base)/ws   http://\(base)/sse   http://\(base)/api/publish   http://\(base)/metrics\n"
        }
        if let first = running.first {
            out += "\nDemo room: open http://\(first.client)/"
            if running.count > 1 { out += " and http://\(running[1].client)/ in two windows" }
            out += "\nMesh status: http://\(first.client)/status.html\n"
        }
        if !generated.isEmpty {
            out += "\nThrowaway secrets for this run (set them yourself to keep them):\n"
            for name in generated { out += "  export \(name)=\(environment[name]!)\n" }
        }
        out += "\nPress Ctrl-C to drain and stop.\n"
        FileHandle.standardOutput.write(Data(out.utf8))
    }
}

func randomSecret() -> String {
    var generator = SystemRandomNumberGenerator()
    return (0..<24).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
}

struct TopologyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "topology",
        abstract: "Check or show topology files.",
        subcommands: [Check.self, Show.self]
    )

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate topology files; errors name the file and line.")

        @Argument(help: "Topology files.")
        var files: [String]

        func run() throws {
            var failed = false
            for file in files {
                do {
                    let t = try TopologyLoader.load(path: file)
                    print("\(file): ok (mesh \(t.mesh), \(t.regions.count) regions, \(t.links.count) links, hash \(t.hash))")
                } catch {
                    FileHandle.standardError.write(Data("\(error)\n".utf8))
                    failed = true
                }
            }
            if failed { throw ExitCode.failure }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a topology's regions, links and namespaces.")

        @Argument(help: "The topology file.")
        var file: String

        @Option(name: .long, help: "Also print this topic's home region and fan-out tree.")
        var topic: String?

        func run() throws {
            let t = try loadTopology(file)
            if let topic {
                if let problem = TopicName.problem(with: topic) { throw ValidationError(problem) }
                print(fanoutDescription(t, topic: topic))
                return
            }
            print("mesh \(t.mesh)  (hash \(t.hash))\n")
            print("regions:")
            for r in t.regions {
                let parent = r.parent.map { "  parent \($0)" } ?? ""
                print("  \(r.name.padding(toLength: 14, withPad: " ", startingAt: 0)) client \(r.client)  link \(r.link)\(parent)")
            }
            print("\nlinks:")
            for l in t.links {
                var extra = ""
                if let bw = l.bandwidthMbps { extra += "  \(bw) Mbit/s" }
                extra += l.plaintext ? "  plaintext (loopback)" : "  mTLS"
                print("  \(l.between.0) <-> \(l.between.1)  \(l.latency.ternMillisecondsText)\(extra)")
            }
            print("\nnamespaces:")
            for name in t.namespaces.keys.sorted() {
                let o = t.namespaces[name]!
                print("  \(name): presence=\(o.presence) join_leave=\(o.joinLeave) history=\(o.historySize)/\(o.historyTTL.ternMillisecondsText) anonymous=\(o.anonymous) client_publish=\(o.clientPublish)")
            }
        }
    }
}

/// The home of `topic` and its shortest-latency fan-out tree, drawn as an indented outline.
func fanoutDescription(_ t: Topology, topic: String) -> String {
    let mesh = t.meshConfig
    let ns = TopicName.namespace(of: topic).map(String.init) ?? ""
    let pinned = mesh.pinnedHomes[ns]
    let home = pinned ?? Rendezvous.ranking(topic: topic, regions: mesh.graph.regions)[0]
    let tree = mesh.graph.shortestPaths(from: home)
    var out = "topic \(topic)\nhome  \(home) (\(pinned == nil ? "rendezvous hashing" : "pinned by namespace \(ns)"))\n"
    out += "failover order: \(Rendezvous.ranking(topic: topic, regions: mesh.graph.regions).joined(separator: " > "))\n\ntree:\n"
    func walk(_ region: String, _ depth: Int) {
        let ms = tree.distance[region] ?? 0
        out += String(repeating: "  ", count: depth + 1) + region + (depth == 0 ? "" : "  (+\(ms) ms from home)") + "\n"
        for child in tree.children(of: region) { walk(child, depth + 1) }
    }
    walk(home, 0)
    return out
}

extension Duration {
    var ternMillisecondsText: String {
        let ms = ternNanosecondsValue / 1_000_000
        if ms % 3_600_000 == 0, ms > 0 { return "\(ms / 3_600_000)h" }
        if ms % 60_000 == 0, ms > 0 { return "\(ms / 60_000)m" }
        if ms % 1000 == 0, ms > 0 { return "\(ms / 1000)s" }
        return "\(ms)ms"
    }

    private var ternNanosecondsValue: Int64 {
        let (s, a) = components
        return s * 1_000_000_000 + a / 1_000_000_000
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Mint an HS256 client token with the secret in $TERN_JWT_SECRET (development)."
    )

    @Option(name: .long, help: "The user id (sub claim).")
    var user: String

    @Option(name: .long, parsing: .upToNextOption, help: "Topic patterns the user may subscribe to.")
    var subscribe: [String] = []

    @Option(name: .long, parsing: .upToNextOption, help: "Topic patterns the user may publish to.")
    var publish: [String] = []

    @Option(name: .long, parsing: .upToNextOption, help: "Topic patterns whose presence the user may read.")
    var presence: [String] = []

    @Option(name: .long, help: "Seconds until the token expires.")
    var ttl: Int = 3600

    @Option(name: .long, help: "The environment variable holding the HS256 secret.")
    var secretEnv: String = "TERN_JWT_SECRET"

    func run() async throws {
        guard let secret = ProcessInfo.processInfo.environment[secretEnv], !secret.isEmpty else {
            throw ValidationError("$\(secretEnv) is not set; export the same secret the relays use")
        }
        let claims = TernClaims(
            user: user, expires: Date().addingTimeInterval(TimeInterval(ttl)),
            permissions: TernPermissionsClaim(subscribe: subscribe, publish: publish, presence: presence))
        print(try await Authenticator.signHS256(secret: secret, claims: claims))
    }
}
