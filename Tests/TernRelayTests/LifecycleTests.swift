import Foundation
import JWTKit
import Logging
import ServiceLifecycle
import Testing
import TernClient
import TernCore
import TernRelay
import TernTopology

@Suite("Relay lifecycle and signing algorithms", .serialized)
struct LifecycleTests {
    @Test("graceful shutdown tells every client to reconnect within the drain window, then the relay exits")
    func drain() async throws {
        var logger = Logger(label: "test.drain")
        logger.logLevel = .warning
        let relay = try await Relay(
            topology: testTopology(limits: "  drain_window: 2s"), region: "eu-west",
            secrets: SecretResolver(environment: ["TEST_JWT_SECRET": jwtSecret, "TEST_API_KEY": apiKey]),
            listenOn: HostPort(host: "127.0.0.1", port: 0), seed: 7, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [.init(service: relay)], gracefulShutdownSignals: [], logger: logger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let port = await relay.waitUntilListening()
            let clients = (0..<5).map { _ in ClientHarness(url: "ws://127.0.0.1:\(port)/ws", token: nil) }
            for c in clients {
                try await c.waitConnected()
                try await c.client.subscribe("news:drain")
            }
            let began = ContinuousClock.now
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            #expect(ContinuousClock.now - began < .seconds(6))
            var delays: [Duration] = []
            var told = 0
            for c in clients {
                try await c.waitFor("drain disconnect") { events in
                    events.contains { if case .disconnected(CloseCode.shutdown.rawValue, _, true, _) = $0 { true } else { false } }
                }
                // A client that reconnected while the relay was still draining is told again; each is told at least once.
                var mine = 0
                for case .disconnected(CloseCode.shutdown.rawValue, _, true, let after) in c.events { delays.append(after); mine += 1 }
                if mine > 0 { told += 1 }
                c.stop()
            }
            #expect(told == 5)
            #expect(delays.allSatisfy { $0 <= .seconds(2) })
        }
    }

    @Test("ES256 tokens verify against the configured public key, and another key's tokens are refused")
    func es256() async throws {
        let key = ES256PrivateKey()
        let other = ES256PrivateKey()
        let pem = FileManager.default.temporaryDirectory.appendingPathComponent("tern-es256-\(UUID()).pem")
        try key.publicKey.pemRepresentation.write(to: pem, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: pem) }
        func sign(_ k: ES256PrivateKey) async throws -> String {
            let keys = JWTKeyCollection()
            await keys.add(ecdsa: k)
            return try await keys.sign(TernClaims(user: "es", expires: Date().addingTimeInterval(600),
                                                  permissions: TernPermissionsClaim(subscribe: ["room:*"])))
        }
        let auth = """
            auth:
              jwt:
                es256_public_key: {file: \(pem.path)}
              api_key: {env: TEST_API_KEY}
            """
        try await withRelay(auth: auth) { relay in
            let good = ClientHarness(url: relay.wsURL, token: try await sign(key))
            try await good.waitConnected()
            try await good.client.subscribe("room:es")
            let forged = ClientHarness(url: relay.wsURL, token: try await sign(other))
            try await forged.waitFor("refusal") { $0.contains { if case .disconnected(CloseCode.unauthorized.rawValue, _, false, _) = $0 { true } else { false } } }
        }
    }

    @Test("a relay whose secret is missing says which variable to set")
    func missingSecret() async throws {
        do {
            _ = try await Relay(topology: testTopology(), region: "eu-west", secrets: SecretResolver(environment: [:]))
            Issue.record("relay started without its secret")
        } catch let error as RelayConfigError {
            #expect(error.description.contains("TEST_JWT_SECRET"))
        }
    }
}
