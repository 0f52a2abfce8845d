import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing
import TernCore
import TernWire
@testable import TernRelay

/// Counts writes and flushes that reach the socket, to check one write per hand-over.
final class FlushCounter: ChannelOutboundHandler, @unchecked Sendable {
    typealias OutboundIn = ByteBuffer
    var flushes = 0
    var writes = 0
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        writes += 1
        context.write(data, promise: promise)
    }
    func flush(context: ChannelHandlerContext) {
        flushes += 1
        context.flush()
    }
}

/// Splits what a server wrote into WebSocket frames (server frames are unmasked).
func parseFrames(_ bytes: inout ByteBuffer) -> [(opcode: UInt8, payload: ByteBuffer)] {
    var out: [(UInt8, ByteBuffer)] = []
    while bytes.readableBytes >= 2 {
        let start = bytes.readerIndex
        let b0: UInt8 = bytes.readInteger()!
        let b1: UInt8 = bytes.readInteger()!
        var length = Int(b1 & 0x7F)
        if length == 126 {
            guard let l: UInt16 = bytes.readInteger() else { bytes.moveReaderIndex(to: start); break }
            length = Int(l)
        } else if length == 127 {
            guard let l: UInt64 = bytes.readInteger() else { bytes.moveReaderIndex(to: start); break }
            length = Int(l)
        }
        guard let payload = bytes.readSlice(length: length) else { bytes.moveReaderIndex(to: start); break }
        out.append((b0 & 0x0F, payload))
    }
    return out
}

/// The WebSocket write path with its real parts (runtime, core, channel handler) on embedded channels.
@Suite("WebSocket write path")
struct WritePathTests {
    struct Subscriber {
        let channel: EmbeddedChannel
        let flushes: FlushCounter
        let handler: RelayWebSocketHandler

        /// Runs the loop's tasks and returns the frames written since the last call.
        func frames() throws -> [(opcode: UInt8, payload: ByteBuffer)] {
            channel.embeddedEventLoop.run()
            var bytes = ByteBuffer()
            while var b = try channel.readOutbound(as: ByteBuffer.self) { bytes.writeBuffer(&b) }
            let frames = parseFrames(&bytes)
            #expect(bytes.readableBytes == 0, "a partial frame was written")
            return frames
        }

        func texts() throws -> [String] {
            try frames().filter { $0.opcode == 0x1 }.map { String(buffer: $0.payload) }
        }

        func send(_ text: String) throws {
            try channel.writeInbound(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text)))
            channel.embeddedEventLoop.run()
        }
    }

    static let namespaces: [String: NamespaceOptions] = [
        "feed": NamespaceOptions(presence: false, joinLeave: false, historySize: 100, historyTTL: .seconds(60), anonymous: true, clientPublish: true),
    ]

    func makeRuntime(maxQueueBytes: Int = 1 << 20) -> RelayRuntime {
        var limits = RelayLimits()
        limits.maxQueueBytes = maxQueueBytes
        limits.publishRatePerSecond = 1_000_000
        limits.publishBurst = 1_000_000
        return RelayRuntime(config: RelayCoreConfig(region: "eu-west", namespaces: Self.namespaces, limits: limits),
                            seed: 1, metrics: RelayMetrics(region: "eu-west"))
    }

    func connect(_ runtime: RelayRuntime, topic: String?) async throws -> Subscriber {
        let authenticator = try await Authenticator(auth: testTopology().auth, secrets: SecretResolver(environment: ["TEST_JWT_SECRET": jwtSecret, "TEST_API_KEY": apiKey]))
        let channel = EmbeddedChannel()
        let flushes = FlushCounter()
        // As after a real upgrade: the frame encoder sits between the socket and the handler.
        try channel.pipeline.syncOperations.addHandler(flushes)
        try channel.pipeline.syncOperations.addHandler(WebSocketFrameEncoder())
        let handler = RelayWebSocketHandler(
            runtime: runtime, authenticator: authenticator, logger: .init(label: "test"), maxMessageBytes: 65536,
            eventLoop: channel.embeddedEventLoop)
        try channel.pipeline.syncOperations.addHandler(handler)
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).get()
        let sub = Subscriber(channel: channel, flushes: flushes, handler: handler)
        try sub.send(#"{"ref":1,"op":"connect"}"#)
        if let topic { try sub.send(#"{"ref":2,"op":"subscribe","topic":"\#(topic)"}"#) }
        _ = try sub.frames()
        return sub
    }

    func publish(_ runtime: RelayRuntime, _ topic: String, _ data: String, deferWrites: Bool = false) {
        runtime.handle(.apiPublish(request: 0, topic: topic, id: "", data: data), deferWrites: deferWrites)
    }

    @Test("a publication reaches every subscriber in order, with the same bytes")
    func order() async throws {
        let runtime = makeRuntime()
        let subs = try await [connect(runtime, topic: "feed:a"), connect(runtime, topic: "feed:a"), connect(runtime, topic: "feed:a")]
        // One long publication, so the 16-bit length form of the header is used too.
        for i in 1...5 { publish(runtime, "feed:a", i == 3 ? "\"" + String(repeating: "y", count: 300) + "\"" : "\(i)") }
        var seen: [[String]] = []
        for s in subs {
            let texts = try s.texts()
            let offsets = texts.compactMap { t in t.split(separator: ",").first { $0.hasPrefix("\"offset\":") }.map { String($0.dropFirst("\"offset\":".count)) } }
            #expect(offsets == ["1", "2", "3", "4", "5"])
            seen.append(texts)
        }
        #expect(Set(seen).count == 1)
    }

    @Test("what a read cycle produced goes out in one flush per connection")
    func oneFlushPerHandOver() async throws {
        let runtime = makeRuntime()
        let sub = try await connect(runtime, topic: "feed:b")
        let before = sub.flushes.flushes
        let writesBefore = sub.flushes.writes
        for i in 1...10 { publish(runtime, "feed:b", "\(i)", deferWrites: true) }
        runtime.dispatchWrites()
        #expect(try sub.texts().count == 10)
        #expect(sub.flushes.flushes - before == 1)
        #expect(sub.flushes.writes - writesBefore == 1, "ten frames in one buffer")
    }

    @Test("a connection whose socket is full is closed with 4003 at the byte limit; the others get everything")
    func slowConsumer() async throws {
        let runtime = makeRuntime(maxQueueBytes: 8192)
        let fast = try await connect(runtime, topic: "feed:c")
        let slow = try await connect(runtime, topic: "feed:c")
        slow.channel.isWritable = false
        slow.channel.pipeline.fireChannelWritabilityChanged()
        let blob = "\"" + String(repeating: "z", count: 1000) + "\""
        // Seven frames of about 1,070 bytes fit in 8 KB; the eighth does not.
        for _ in 1...7 { publish(runtime, "feed:c", blob) }
        #expect(try slow.frames().isEmpty, "nothing is written while the socket is full")
        #expect(slow.channel.isActive)
        publish(runtime, "feed:c", blob)
        let last = try slow.frames().last
        #expect(last?.opcode == 0x8)
        var payload = last?.payload ?? ByteBuffer()
        #expect(payload.readInteger(as: UInt16.self) == UInt16(CloseCode.slowConsumer.rawValue))
        #expect(try fast.texts().count == 8)
    }

    @Test("while a socket is full, volatile events with the same key are coalesced to the newest")
    func volatileShedding() async throws {
        let runtime = makeRuntime(maxQueueBytes: 8192)
        let slow = try await connect(runtime, topic: "feed:d")
        let typist = try await connect(runtime, topic: nil)
        // The typist's connection is authenticated as a user who may publish.
        runtime.handle(.authenticated(typist.handler.client!, ref: nil, ClientIdentity(user: "ada", expiresAt: nil, subscribe: [], publish: [TopicPattern("feed:*")], presence: [])))
        slow.channel.isWritable = false
        slow.channel.pipeline.fireChannelWritabilityChanged()
        let blob = "\"" + String(repeating: "z", count: 1000) + "\""
        // Past half the limit, volatile events from one user replace each other.
        for _ in 1...5 { publish(runtime, "feed:d", blob) }
        for i in 1...6 { try typist.send(#"{"op":"publish","topic":"feed:d","data":{"typing":\#(i)},"volatile":true}"#) }
        slow.channel.isWritable = true
        slow.channel.pipeline.fireChannelWritabilityChanged()
        let texts = try slow.texts()
        let volatile = texts.filter { $0.contains(#""push":"volatile""#) }
        #expect(texts.count - volatile.count == 5)
        #expect(volatile == [#"{"push":"volatile","topic":"feed:d","user":"ada","data":{"typing":6}}"#])
    }
}
