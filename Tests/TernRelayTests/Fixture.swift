import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import ServiceLifecycle
import Synchronization
import Testing
import TernClient
import TernCore
import TernRelay
import TernTopology

let jwtSecret = "test-secret-0123456789abcdef-0123456789"
let apiKey = "test-api-key"

let testAuth = """
    auth:
      jwt:
        hs256_secret: {env: TEST_JWT_SECRET}
      api_key: {env: TEST_API_KEY}
    """

/// A topology for one relay on an ephemeral loopback port.
func testTopology(limits: String = "", auth: String = testAuth) -> Topology {
    let yaml = """
        mesh: test
        regions:
          - name: eu-west
            client: 127.0.0.1:7101
            link: 127.0.0.1:7201
        namespaces:
          room: {presence: true, join_leave: true, history_size: 100, history_ttl: 300s}
          news: {history_size: 1000, history_ttl: 300s, anonymous: true, client_publish: false}
          big: {history_size: 10, anonymous: true, client_publish: true}
        limits:
          publish_rate: 100000
          publish_burst: 100000
        \(limits)
        \(auth)
        """
    return try! TopologyLoader.parse(yaml, file: "test.yaml")
}

/// A running relay and helpers to reach it.
struct RelayFixture {
    let port: Int
    var wsURL: String { "ws://127.0.0.1:\(port)/ws" }
    var httpURL: String { "http://127.0.0.1:\(port)" }

    /// A client token for `user` with room and news permissions.
    func token(_ user: String, expiresIn: TimeInterval = 3600) async throws -> String {
        try await Authenticator.signHS256(secret: jwtSecret, claims: TernClaims(
            user: user, expires: Date().addingTimeInterval(expiresIn),
            permissions: TernPermissionsClaim(subscribe: ["room:*", "news:*", "big:*"], publish: ["room:*", "big:*"], presence: ["room:*"])))
    }

    /// An HTTP request through curl; returns the status and body.
    func curl(_ args: [String], timeout: Double = 10) async throws -> (status: Int, body: String) {
        let out = try await runProcess("/usr/bin/env", ["curl", "-s", "-N", "--max-time", String(timeout), "-w", "\n%{http_code}"] + args)
        let lines = out.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
    }

    /// Publishes through the HTTP API.
    func apiPublish(_ topic: String, _ data: String, id: String = "", key: String? = apiKey) async throws -> (status: Int, body: String) {
        var args = ["-X", "POST", "\(httpURL)/api/publish", "-H", "Content-Type: application/json",
                    "-d", "{\"topic\":\"\(topic)\",\"id\":\"\(id)\",\"data\":\(data)}"]
        if let key { args += ["-H", "X-API-Key: \(key)"] }
        return try await curl(args)
    }
}

/// Runs a process to completion without blocking a cooperative thread.
///
/// Completion is detected by polling `waitpid` rather than through Foundation's termination
/// notification, which can be missed when several tests start processes at once.
func runProcess(_ path: String, _ args: [String]) async throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = args
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    // Read to the end on a dispatch thread (not one of the few Swift-concurrency threads the relay
    // under test needs) while the child runs, so a full pipe never blocks it and no chunk is lost
    // between a readability callback and the last read.
    let reader = pipe.fileHandleForReading
    let output = Task {
        await withCheckedContinuation { (continuation: CheckedContinuation<Data, Never>) in
            DispatchQueue.global().async { continuation.resume(returning: (try? reader.readToEnd()) ?? Data()) }
        }
    }
    let pid = process.processIdentifier
    while true {
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid || (r == -1 && errno == ECHILD) || !process.isRunning { break }
        try await Task.sleep(for: .milliseconds(10))
    }
    return String(decoding: await output.value, as: UTF8.self)
}

/// Runs `relay` in a service group, runs `body` against it once it listens, then shuts it down gracefully.
func serve(_ relay: Relay, logger: Logger, _ body: (RelayFixture) async throws -> Void) async throws {
    let group = ServiceGroup(configuration: .init(services: [.init(service: relay)], gracefulShutdownSignals: [], logger: logger))
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        let port = await relay.waitUntilListening()
        var failure: (any Error)?
        do {
            try await body(RelayFixture(port: port))
        } catch {
            failure = error
        }
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
        if let failure { throw failure }
    }
}

/// Starts a relay, runs `body` against it, then shuts it down gracefully.
func withRelay(limits: String = "", auth: String = testAuth, _ body: (RelayFixture) async throws -> Void) async throws {
    var logger = Logger(label: "test.relay")
    logger.logLevel = .warning
    let relay = try await Relay(
        topology: testTopology(limits: limits, auth: auth), region: "eu-west",
        secrets: SecretResolver(environment: ["TEST_JWT_SECRET": jwtSecret, "TEST_API_KEY": apiKey]),
        listenOn: HostPort(host: "127.0.0.1", port: 0), seed: 42, logger: logger)
    try await serve(relay, logger: logger, body)
}

/// A client running in the background of a test, with its events collected.
final class ClientHarness: Sendable {
    final class EventLog: Sendable {
        let events = Mutex<[TernClientEvent]>([])
    }

    let client: TernClient
    private let received = EventLog()
    private let task: Task<Void, Never>
    private let pump: Task<Void, Never>

    init(url: String, token: String?) {
        let client = TernClient(url: url, backoff: Backoff(initial: .milliseconds(20), maximum: .milliseconds(200)), token: { token })
        self.client = client
        self.task = Task { await client.run() }
        let received = self.received
        self.pump = Task {
            for await event in client.events { received.events.withLock { $0.append(event) } }
        }
    }

    deinit {
        task.cancel()
        pump.cancel()
    }

    var events: [TernClientEvent] { received.events.withLock { $0 } }

    var publications: [ClientPublication] {
        events.compactMap { if case .publication(let p) = $0 { p } else { nil } }
    }

    /// Waits until `condition` holds over the events, or fails after `timeout`.
    func waitFor(_ what: String, timeout: Duration = .seconds(10), _ condition: ([TernClientEvent]) -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition(events) { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("timed out waiting for \(what); events: \(events.suffix(8))")
        throw CancellationError()
    }

    func waitConnected(count: Int = 1) async throws {
        try await waitFor("connected") { $0.filter { if case .connected = $0 { true } else { false } }.count >= count }
    }

    func waitPublications(_ n: Int, timeout: Duration = .seconds(10)) async throws {
        try await waitFor("\(n) publications", timeout: timeout) { events in
            events.filter { if case .publication = $0 { true } else { false } }.count >= n
        }
    }

    func stop() {
        task.cancel()
    }
}
