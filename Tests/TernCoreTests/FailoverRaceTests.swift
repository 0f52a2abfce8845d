import Testing
import TernCore

@Suite("Failover timing, over in-memory links")
struct FailoverRaceTests {
    @Test("publishes made while the home goes away are acknowledged by the new home, whichever region notices first",
          arguments: [0, 3, 7, 20, 150, 600, 990] as [Int64])
    func homeStopsWhilePublishing(skewMs: Int64) {
        var m = MeshHarness(tune: { $0.failoverAfter = .seconds(1); $0.homeTimeout = .seconds(20) })
        let t = (0..<1000).map { "news:f\($0)" }.first { Rendezvous.ranking(topic: $0, regions: ["a", "b", "c"])[0] == "a" }!
        for (i, r) in ["b", "c"].enumerated() {
            let c = m.connectClient(r, UInt64(10 + i))
            m.handle(r, .command(c, ref: 1, .subscribe(topic: t, since: nil)))
        }
        m.settle()
        for i in 1...5 { m.apiPublish("b", UInt64(i), t, "\(i)", id: "f\(i)") }
        m.settle()
        #expect((1...5).allSatisfy { if case .success? = m.apiReplies[UInt64($0)] { true } else { false } })
        // a goes away: one neighbour notices `skewMs` before the other.
        m.cut("a", "b")
        m.advance(.milliseconds(skewMs))
        m.cut("a", "c")
        for i in 6...10 {
            m.apiPublish(["b", "c"][i % 2], UInt64(i), t, "\(i)", id: "f\(i)")
            m.advance(.milliseconds(300))
        }
        m.advance(.seconds(3))
        for i in 6...10 {
            guard case .success(.published(_, let p?, _))? = m.apiReplies[UInt64(i)] else {
                Issue.record("publish \(i) not acknowledged (skew \(skewMs) ms): \(String(describing: m.apiReplies[UInt64(i)]))")
                continue
            }
            #expect(!p.epoch.hasPrefix("a."))
        }
    }
}
