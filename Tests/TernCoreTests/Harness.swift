import NIOCore
import Synchronization
import TernCore

/// Encodes each message as its index in a log, so tests read back the exact `ServerMessage`s a client was sent.
final class RecordingEncoder: ServerMessageEncoding {
    private let log = Mutex<[ServerMessage]>([])

    func encode(_ message: ServerMessage) -> ByteBuffer {
        let index = log.withLock { log in
            log.append(message)
            return log.count - 1
        }
        return ByteBuffer(string: String(index))
    }

    func encodeSSE(_ message: ServerMessage, cursor: inout [String: StreamPosition]) -> ByteBuffer {
        if case .publication(let p) = message { cursor[p.topic] = p.position }
        return encode(message)
    }

    func message(_ frame: OutboundFrame) -> ServerMessage {
        let index = Int(String(buffer: frame.bytes))!
        return log.withLock { $0[index] }
    }
}

/// A relay core on a manual clock.
/// Frames a core wrote straight to WebSockets (`RelayAction.write`), per client, until taken; what a
/// driver would write. Taking a client's frames also takes what its queue holds, which comes after.
struct WrittenFrames {
    var byClient: [ClientID: [OutboundFrame]] = [:]

    mutating func record(_ actions: [RelayAction]) {
        for case .write(let frame, let clients) in actions {
            for c in clients { byClient[c, default: []].append(frame) }
        }
    }

    mutating func take(_ c: ClientID, from core: inout RelayCore) -> [OutboundFrame] {
        (byClient.removeValue(forKey: c) ?? []) + core.takeOutbound(c, maxBytes: .max)
    }
}

struct CoreHarness {
    var core: RelayCore
    let encoder = RecordingEncoder()
    var now = TernInstant.zero
    var actions: [RelayAction] = []
    var written = WrittenFrames()

    init(namespaces: [String: NamespaceOptions] = CoreHarness.defaultNamespaces, limits: RelayLimits = RelayLimits(), seed: UInt64 = 1) {
        core = RelayCore(config: RelayCoreConfig(region: "eu-west", namespaces: namespaces, limits: limits),
                         encoder: encoder, seed: seed, now: .zero)
    }

    static let defaultNamespaces: [String: NamespaceOptions] = [
        "room": NamespaceOptions(presence: true, joinLeave: true, historySize: 5, historyTTL: .seconds(60), anonymous: false),
        "news": NamespaceOptions(presence: false, joinLeave: false, historySize: 100, historyTTL: .seconds(60), anonymous: true, clientPublish: false),
    ]

    static func user(_ name: String, expiresAt: TernInstant? = nil) -> ClientIdentity {
        ClientIdentity(user: name, expiresAt: expiresAt, subscribe: [TopicPattern("room:*"), TopicPattern("news:*")],
                       publish: [TopicPattern("room:*")], presence: [TopicPattern("room:*")])
    }

    @discardableResult
    mutating func send(_ event: RelayEvent) -> [RelayAction] {
        actions = core.handle(event, now: now)
        written.record(actions)
        return actions
    }

    mutating func advance(_ d: Duration) {
        now = now + d
        send(.tick)
    }

    /// Opens a WebSocket client and authenticates it as `identity`.
    mutating func connect(_ id: UInt64, as identity: ClientIdentity) -> ClientID {
        let c = ClientID(id)
        send(.opened(c, .websocket))
        send(.command(c, ref: 0, .connect(token: identity.isAnonymous ? nil : "token")))
        if !identity.isAnonymous { send(.authenticated(c, ref: 0, identity)) }
        _ = received(c)
        return c
    }

    /// Everything queued for a client since the last call.
    mutating func received(_ c: ClientID) -> [ServerMessage] {
        frames(c).map(encoder.message)
    }

    /// Clients 1 and 2, connected and subscribed to `topic`, with their replies read.
    mutating func twoSubscribers(_ topic: String) -> (ClientID, ClientID) {
        let first = connect(1, as: CoreHarness.user("u1"))
        let second = connect(2, as: CoreHarness.user("u2"))
        _ = subscribe(first, topic)
        _ = subscribe(second, topic)
        _ = received(first)
        _ = received(second)
        return (first, second)
    }

    /// The frames written or queued for a client since the last call, in order.
    mutating func frames(_ c: ClientID) -> [OutboundFrame] {
        written.take(c, from: &core)
    }

    mutating func publish(_ c: ClientID, _ topic: String, _ data: String, id: String = "") -> ServerMessage? {
        send(.command(c, ref: 9, .publish(topic: topic, id: id, data: data, volatile: false)))
        return received(c).first { if case .reply(ref: 9, _) = $0 { true } else if case .error(ref: 9, _) = $0 { true } else { false } }
    }

    mutating func subscribe(_ c: ClientID, _ topic: String, since: StreamPosition? = nil) -> ServerMessage? {
        send(.command(c, ref: 7, .subscribe(topic: topic, since: since)))
        return received(c).first
    }
}

func publications(_ messages: [ServerMessage]) -> [Publication] {
    messages.compactMap { if case .publication(let p) = $0 { p } else { nil } }
}

func subscribed(_ message: ServerMessage?) -> SubscribeReply? {
    if case .reply(_, .subscribed(let r))? = message { return r }
    return nil
}

func errorCode(_ message: ServerMessage?) -> ErrorCode? {
    if case .error(_, let e)? = message { return e.code }
    return nil
}
