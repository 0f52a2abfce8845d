import NIOCore
import Synchronization

/// Which server a benchmark talks to, and how it publishes there.
public enum BenchTarget: Sendable, Hashable {
    /// A Tern relay's `/ws`; publishing needs a token with a publish pattern for the topic.
    case tern(publishToken: String?)
    /// A nats-server WebSocket listener (`websocket { no_tls: true }`), speaking the NATS text protocol.
    case nats

    public var name: String {
        switch self {
        case .tern: "tern"
        case .nats: "nats"
        }
    }
}

/// Counts deliveries across every connection (from any event loop) and completes once all expected arrived.
final class Tally: Sendable {
    let expected: Int
    private let delivered = Atomic<Int>(0)
    private let disorder = Atomic<Int>(0)
    private let finishedAt = Atomic<UInt64>(0)
    private let samples = Mutex<[Int64]>([])
    let done: EventLoopPromise<Void>

    init(expected: Int, eventLoop: any EventLoop) {
        self.expected = expected
        self.done = eventLoop.makePromise()
    }

    var count: Int { delivered.load(ordering: .relaxed) }
    var outOfOrder: Int { disorder.load(ordering: .relaxed) }
    /// When the last expected delivery arrived (monotonic nanoseconds), or nil before that.
    var finished: UInt64? {
        let v = finishedAt.load(ordering: .acquiring)
        return v == 0 ? nil : v
    }
    var latencies: [Int64] { samples.withLock { $0 } }

    func delivered(inOrder: Bool, sentAt: UInt64?) {
        if !inOrder { disorder.add(1, ordering: .relaxed) }
        if let sentAt {
            let now = NIODeadline.now().uptimeNanoseconds
            let sample = Int64(bitPattern: now &- sentAt)
            samples.withLock { $0.append(sample) }
        }
        let n = delivered.add(1, ordering: .relaxed).newValue
        if n == expected {
            finishedAt.store(NIODeadline.now().uptimeNanoseconds, ordering: .releasing)
            done.succeed(())
        }
    }
}

/// The payload every benchmark publishes: JSON of exactly `size` bytes (when `size` allows),
/// carrying the send time `t` (monotonic nanoseconds of the benchmark process) and a sequence `n`.
enum BenchPayload {
    static func make(n: Int, sentAt: UInt64, size: Int) -> String {
        let head = #"{"t":\#(sentAt),"n":\#(n),"p":""#
        let pad = max(0, size - head.utf8.count - 2)
        return head + String(repeating: "x", count: pad) + #""}"#
    }
}

// MARK: - Tern

/// Sends Tern's connect command, numbered 1, with `token` when there is one.
func sendConnect(_ token: String?, on socket: BenchSocket) {
    if let token {
        socket.send(#"{"ref":1,"op":"connect","token":"\#(token)"}"#)
    } else {
        socket.send(#"{"ref":1,"op":"connect"}"#)
    }
    socket.flush()
}

/// A Tern subscriber: connects (anonymously or with a token), subscribes, then counts publications.
final class TernSubscriber: BenchProtocolHandler, @unchecked Sendable {
    enum Phase { case connecting, subscribing, ready }
    let topic: String
    let token: String?
    let ready: EventLoopPromise<Void>
    let tally: Tally
    let timed: Bool
    var phase = Phase.connecting
    var lastOffset: UInt64 = 0

    init(topic: String, token: String?, ready: EventLoopPromise<Void>, tally: Tally, timed: Bool) {
        self.topic = topic
        self.token = token
        self.ready = ready
        self.tally = tally
        self.timed = timed
    }

    func opened(_ socket: BenchSocket) { sendConnect(token, on: socket) }

    func received(_ payload: inout ByteBuffer, _ socket: BenchSocket) {
        if payload.starts(with: #"{"push":"pub""#) {
            let offset = payload.integer(after: #""offset":"#) ?? 0
            let inOrder = lastOffset == 0 || offset == lastOffset + 1
            lastOffset = offset
            tally.delivered(inOrder: inOrder, sentAt: timed ? payload.integer(after: #""t":"#) : nil)
            return
        }
        switch phase {
        case .connecting where payload.starts(with: #"{"ref":1,"ok""#):
            phase = .subscribing
            socket.send(#"{"ref":2,"op":"subscribe","topic":"\#(topic)"}"#)
            socket.flush()
        case .subscribing where payload.starts(with: #"{"ref":2,"ok""#):
            phase = .ready
            ready.succeed(())
        default:
            if phase != .ready, payload.starts(with: #"{"ref":"#) || payload.starts(with: #"{"push":"disconnect""#) {
                ready.fail(BenchError("the relay refused the subscriber: \(String(buffer: payload))"))
            }
        }
    }
}

/// A Tern publisher: connects with a publish token, then publishes what it is told to.
final class TernPublisher: BenchProtocolHandler, @unchecked Sendable {
    let topic: String
    let token: String?
    let ready: EventLoopPromise<Void>
    var connected = false
    var refusals = 0
    var lastRefusal: String?

    init(topic: String, token: String?, ready: EventLoopPromise<Void>) {
        self.topic = topic
        self.token = token
        self.ready = ready
    }

    func opened(_ socket: BenchSocket) { sendConnect(token, on: socket) }

    func received(_ payload: inout ByteBuffer, _ socket: BenchSocket) {
        if !connected {
            if payload.starts(with: #"{"ref":1,"ok""#) {
                // One publish to another topic of the namespace proves the token may publish, before the run.
                let namespace = topic.prefix { $0 != ":" }
                socket.send(#"{"ref":2,"op":"publish","topic":"\#(namespace):probe","data":0}"#)
                socket.flush()
            } else if payload.starts(with: #"{"ref":2,"ok""#) {
                connected = true
                ready.succeed(())
            } else if payload.starts(with: #"{"ref":1,"error""#) || payload.starts(with: #"{"ref":2,"error""#) {
                ready.fail(BenchError("the relay refused the publisher: \(String(buffer: payload)); pass --token, or set $TERN_JWT_SECRET to the relay's secret"))
            }
            return
        }
        // Publishes carry no ref, so their refusals are `{"error":...}`.
        if payload.starts(with: #"{"error""#) {
            refusals += 1
            lastRefusal = String(buffer: payload)
        }
    }

    func frame(n: Int, size: Int) -> String {
        #"{"op":"publish","topic":"\#(topic)","data":\#(BenchPayload.make(n: n, sentAt: NIODeadline.now().uptimeNanoseconds, size: size))}"#
    }
}

// MARK: - NATS

/// The NATS text protocol over WebSocket frames, for nats-server's WebSocket listener: a streaming
/// parser (messages may span frames, and one frame may hold many messages).
final class NatsConnection: BenchProtocolHandler, @unchecked Sendable {
    let subject: String
    let subscribe: Bool
    let ready: EventLoopPromise<Void>
    let tally: Tally?
    let timed: Bool
    private var buffer = ByteBuffer()
    private var payloadBytes: Int?
    private var isReady = false
    var lastN: UInt64 = 0

    init(subject: String, subscribe: Bool, ready: EventLoopPromise<Void>, tally: Tally?, timed: Bool) {
        self.subject = subject
        self.subscribe = subscribe
        self.ready = ready
        self.tally = tally
        self.timed = timed
    }

    func opened(_ socket: BenchSocket) {
        var hello = #"CONNECT {"verbose":false,"pedantic":false,"protocol":1,"name":"tern-bench"}"# + "\r\n"
        if subscribe { hello += "SUB \(subject) 1\r\n" }
        hello += "PING\r\n"
        socket.send(hello)
        socket.flush()
    }

    func received(_ payload: inout ByteBuffer, _ socket: BenchSocket) {
        buffer.writeBuffer(&payload)
        while true {
            if let need = payloadBytes {
                guard buffer.readableBytes >= need + 2 else { break }
                let message = buffer.readSlice(length: need)!
                buffer.moveReaderIndex(forwardBy: 2)
                payloadBytes = nil
                if let tally {
                    let n = message.integer(after: #""n":"#) ?? 0
                    let inOrder = lastN == 0 || n == lastN + 1
                    lastN = n
                    tally.delivered(inOrder: inOrder, sentAt: timed ? message.integer(after: #""t":"#) : nil)
                }
                continue
            }
            guard let end = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\r")),
                  end + 1 < buffer.writerIndex else { break }
            let line = buffer.readSlice(length: end - buffer.readerIndex)!
            buffer.moveReaderIndex(forwardBy: 2)
            if line.starts(with: "MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let text = String(buffer: line)
                guard let size = text.split(separator: " ").last.flatMap({ Int($0) }) else {
                    ready.fail(BenchError("nats-server sent a malformed MSG line: \(text)"))
                    socket.close()
                    return
                }
                payloadBytes = size
            } else if line.starts(with: "PING") {
                socket.send("PONG\r\n")
                socket.flush()
            } else if line.starts(with: "PONG") {
                if !isReady {
                    isReady = true
                    ready.succeed(())
                }
            } else if line.starts(with: "-ERR") {
                ready.fail(BenchError("nats-server: \(String(buffer: line))"))
            }
        }
        if buffer.readerIndex > 65536 { buffer.discardReadBytes() }
    }

    func frame(n: Int, size: Int) -> String {
        let body = BenchPayload.make(n: n, sentAt: NIODeadline.now().uptimeNanoseconds, size: size)
        return "PUB \(subject) \(body.utf8.count)\r\n\(body)\r\n"
    }
}
