import NIOCore
import NIOTestUtils
import Testing
import TernCore
import TernWire
@testable import TernRelay

@Suite("Link frames")
struct LinkCodecTests {
    static let messages: [LinkMessage] = [
        .linkState(origin: "eu-west", incarnation: 7, sequence: 3, neighbours: ["us-east", "ap-south"]),
        .interest(topic: "room:x", since: StreamPosition(epoch: "eu-west.1f", offset: 9), fork: nil),
        .interest(topic: "room:y", since: StreamPosition(epoch: "us-east.9", offset: 2), fork: StreamPosition(epoch: "eu-west.1f", offset: 7)),
        .epochSwitch(topic: "room:y", from: StreamPosition(epoch: "us-east.9", offset: 2), to: StreamPosition(epoch: "eu-west.1f", offset: 7)),
        .data(Publication(topic: "room:x", position: StreamPosition(epoch: "eu-west.1f", offset: 10), id: "m1",
                          data: #"{"text":"hello"}"#, user: "alice", acceptedAt: .zero, sequencedAtWall: 1_763_900_000_123_456_789,
                          trace: [TraceHop(region: "us-east", step: .received, at: 1_763_900_000_100_000_000),
                                  TraceHop(region: "eu-west", step: .sequenced, at: 1_763_900_000_123_456_789)])),
        .data(Publication(topic: "room:x", position: StreamPosition(epoch: "eu-west.1f", offset: 11), id: "",
                          data: #"{"text":"hello again"}"#, user: nil, acceptedAt: .zero, sequencedAtWall: 43,
                          firstPosition: StreamPosition(epoch: "us-east.2a", offset: 3))),
        .trace(topic: "room:x", region: "ap-south", home: "eu-west", on: true),
        .caughtUp(topic: "room:x", position: StreamPosition(epoch: "eu-west.1f", offset: 11)),
        .gap(topic: "room:y", position: StreamPosition(epoch: "us-east.2", offset: 4), reason: .evicted),
        .resync(topic: "room:x"),
        .publish(topic: "room:y", id: "p", data: "1", user: "bob", origin: "ap-south", ref: 5, receivedAtWall: 1, firstAt: nil),
        .publish(topic: "room:y", id: "q", data: "2", user: nil, origin: "ap-south", ref: 6, receivedAtWall: 2,
                 firstAt: StreamPosition(epoch: "us-east.1f", offset: 7)),
        .ack(origin: "ap-south", ref: 5, topic: "room:y", result: .accepted(position: StreamPosition(epoch: "us-east.2", offset: 5), duplicate: false)),
        .ack(origin: "ap-south", ref: 6, topic: "room:y", result: .refused(code: .permissionDenied, message: "no")),
        .uninterest(topic: "room:y"),
        .credit(batches: 2),
        .heartbeat(sentAt: 123_456_789),
        .heartbeatReply(sentAt: 123_456_789),
        .follow(topic: "room:x", replica: "us-east", home: "eu-west", from: StreamPosition(epoch: "eu-west.1f", offset: 2)),
        .unfollow(topic: "room:x", replica: "us-east"),
        .replicated(topic: "room:x", epoch: "eu-west.1f", from: 3, to: 9, home: "eu-west"),
        .recover(topic: "room:x", home: "eu-west", replica: "us-east", after: StreamPosition(epoch: "eu-west.1f", offset: 0)),
        .recovered(topic: "room:x", home: "eu-west", replica: "us-east",
                   publication: Publication(topic: "room:x", position: StreamPosition(epoch: "eu-west.1f", offset: 3), id: "p3", data: "{}",
                                            user: "ann", acceptedAt: .zero, sequencedAtWall: 77),
                   position: nil),
        .recovered(topic: "room:x", home: "eu-west", replica: "us-east", publication: nil, position: StreamPosition(epoch: "eu-west.1f", offset: 3)),
        .presenceDigest(topic: "room:x", owners: [PresenceDigestEntry(owner: "eu-west", incarnation: 7, count: 2, checksum: 0xdead_beef),
                                                  PresenceDigestEntry(owner: "us-east", incarnation: 0, count: 0, checksum: 0)]),
        .presence(topic: "room:x", owner: "ap-south", incarnation: 9, sequence: 3,
                  change: .join(PresenceEntry(client: ClientID(4), user: "carol", region: "ap-south")), towardsHome: true),
        .presence(topic: "room:x", owner: "ap-south", incarnation: 9, sequence: 4, change: .leave(ClientID(4)), towardsHome: false),
        .presence(topic: "room:x", owner: "eu-west", incarnation: 1, sequence: 0,
                  change: .snapshot([PresenceEntry(client: ClientID(1), user: "a", region: "eu-west"),
                                     PresenceEntry(client: ClientID(2), user: "b", region: "eu-west")]), towardsHome: false),
    ]

    static let frames: [LinkFrame] = [
        .hello(LinkHello(mesh: "m", region: "eu-west", topologyHash: "0123456789abcdef")),
        .ready,
        .batch(Array(messages.prefix(6))),
        .batch(Array(messages.dropFirst(6))),
        .batch(Array(repeating: messages[3], count: 20)),
        .reject(reason: "bye"),
    ]

    @Test("the decoder yields the same frames however the bytes are split, one byte at a time included")
    func decoderVerifier() throws {
        let encoder = LinkCodec()
        var bytes = ByteBuffer()
        for f in Self.frames { encoder.encode(f, into: &bytes) }
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [(bytes, Self.frames)],
            decoderFactory: { LinkFrameDecoder(codec: LinkCodec()) })
    }

    @Test("batches of similar messages are compressed across frames")
    func compression() {
        let encoder = LinkCodec()
        var bytes = ByteBuffer()
        for _ in 0..<50 { encoder.encode(.batch([Self.messages[3]]), into: &bytes) }
        #expect(encoder.wireBytesSent * 2 < encoder.rawBytesSent, "raw \(encoder.rawBytesSent), wire \(encoder.wireBytesSent)")
    }

    @Test("malformed and oversized frames are errors, never crashes")
    func malformed() {
        func decodes(_ bytes: [UInt8], max: Int = 1024) -> Bool {
            var buffer = ByteBuffer(bytes: bytes)
            do {
                _ = try LinkCodec(maxFrameBytes: max).decode(&buffer)
                return true
            } catch {
                return false
            }
        }
        #expect(!decodes([0, 0, 0x10, 0, 3]))                      // longer than the limit
        #expect(!decodes([0, 0, 0, 1, 99]))                         // unknown frame type
        #expect(!decodes([0, 0, 0, 6, 3, 0, 0, 0, 0, 1]))           // a batch that claims an entry and ends
        #expect(!decodes([0, 0, 0, 11, 3, 0, 0, 0, 0, 1, 3, 0, 0, 0, 9])) // an undefined topic id
        #expect(!decodes([0, 0, 0, 0]))                             // empty frame
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let n = Int.random(in: 5...64, using: &rng)
            var junk = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            junk[0] = 0; junk[1] = 0; junk[2] = 0; junk[3] = UInt8(n - 4)
            junk[4] = UInt8.random(in: 1...3, using: &rng)
            _ = decodes(junk)
        }
    }

    @Test("topic interning is bounded: the sender starts its table over, and a receiver refuses to grow past the bound")
    func internedTopicsBounded() throws {
        let sender = LinkCodec(maxInternedTopics: 4)
        let receiver = LinkCodec(maxInternedTopics: 4)
        var bytes = ByteBuffer()
        var sent: [LinkMessage] = []
        for i in 0..<10 {
            let m = LinkMessage.uninterest(topic: "room:t\(i)")
            sent.append(m)
            sender.encode(.batch([m]), into: &bytes)
        }
        #expect(sender.internedTopics.sent <= 4)
        var received: [LinkMessage] = []
        while let frame = try receiver.decode(&bytes) {
            if case .batch(let ms) = frame { received += ms }
        }
        #expect(received == sent)
        #expect(receiver.internedTopics.received <= 4)
        // A peer that keeps defining topics without starting over is refused.
        let greedy = LinkCodec(maxInternedTopics: 100)
        let strict = LinkCodec(maxInternedTopics: 4)
        var more = ByteBuffer()
        greedy.encode(.batch((0..<6).map { .uninterest(topic: "room:g\($0)") }), into: &more)
        #expect(throws: LinkProtocolError.self) { _ = try strict.decode(&more) }
    }
}
