import Foundation
import Testing
import TernBench
@testable import TernRelay

@Suite("Fan-out to a thousand real WebSocket subscribers", .serialized)
struct FanoutEndToEndTests {
    @Test("1,000 subscribers on loopback each receive every publication once, in order")
    func thousandSubscribers() async throws {
        try await withRelay(limits: "  accept_rate: 100000\n  accept_burst: 100000") { relay in
            let runner = BenchRunner(threads: 2)
            defer { Task { try? await runner.shutdown() } }
            let result = try await runner.fanout(
                try BenchEndpoint(url: relay.wsURL), target: .tern(publishToken: try await relay.token("fan-publisher")),
                subscribers: 1000, messages: 50, size: 100, name: "thousand", namespace: "big", timeout: .seconds(60))
            #expect(result.complete, "\(result.delivered) of \(result.expected) delivered")
            #expect(result.delivered == 50_000)
            #expect(result.outOfOrder == 0)
            #expect(result.publisherRefusals == 0)
        }
    }
}
