import Logging
import NIOCore
import Synchronization
import TernCore
import TernWire
import NIOWebSocket
import WSClient

/// A publication as a client receives it.
public struct ClientPublication: Sendable, Hashable {
    public var topic: String
    public var position: StreamPosition
    /// The publisher's idempotency id ("" when none).
    public var id: String
    /// The publishing user, when known.
    public var user: String?
    /// The payload as JSON text.
    public var data: String
    /// The hops that handled it, on a subscription made with `trace: true` (empty otherwise).
    public var trace: [ClientTraceHop] = []
}

/// One relay's handling of a traced publication (see docs/PROTOCOL.md, "Per-hop timestamps").
public struct ClientTraceHop: Sendable, Hashable {
    /// The relay's region.
    public var region: String
    /// `received`, `sequenced`, `relayed` or `delivered`.
    public var step: String
    /// When, in Unix milliseconds by that relay's wall clock.
    public var at: Double
}

/// Something the client observed.
public enum TernClientEvent: Sendable, Hashable {
    /// The connect command succeeded.
    case connected(client: String, region: String)
    /// A subscription is active; `recovered` tells whether missed publications were replayed.
    case subscribed(topic: String, position: StreamPosition, recovered: Bool?)
    /// A publication, delivered once per position even across reconnects.
    case publication(ClientPublication)
    /// History could not fill a gap: reload this topic's state from its source of truth.
    case resyncRequired(topic: String, reason: String)
    /// The stream continues in another epoch (a failover or its heal); nothing was lost.
    case epochChanged(topic: String, position: StreamPosition)
    /// Someone joined a topic.
    case join(topic: String, user: String, client: String)
    /// Someone left a topic.
    case leave(topic: String, user: String, client: String)
    /// A volatile publication.
    case volatile(topic: String, data: String)
    /// An error the server sent without a request to answer.
    case error(code: Int, message: String)
    /// The connection ended; the client reconnects after `reconnectAfter` unless told not to.
    case disconnected(code: Int?, reason: String, willReconnect: Bool, reconnectAfter: Duration)
}

/// An error reply, or a request that could not be sent.
public enum TernClientError: Error, Sendable, Hashable {
    /// The server refused the request.
    case server(code: Int, name: String, message: String)
    /// There is no open connection to send on.
    case notConnected
    /// The connection closed before the reply arrived.
    case connectionLost
}

/// The acknowledgement of a publish.
public struct PublishAck: Sendable, Hashable {
    public var topic: String
    /// Nil for volatile publications.
    public var position: StreamPosition?
    /// True when the idempotency id had been seen: the earlier position is returned and nothing is delivered again.
    public var duplicate: Bool
}

/// Presence counts for a topic.
public struct PresenceStats: Sendable, Hashable {
    public var clients: Int
    public var users: Int

    public init(clients: Int, users: Int) {
        self.clients = clients
        self.users = users
    }
}

/// A presence entry.
public struct PresenceMember: Sendable, Hashable {
    public var client: String
    public var user: String
    public var region: String
}

/// Reconnect delays: exponential backoff with full jitter.
public struct Backoff: Sendable {
    /// The first delay's upper bound.
    public var initial: Duration
    /// The largest delay's upper bound.
    public var maximum: Duration

    public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(10)) {
        self.initial = initial
        self.maximum = maximum
    }

    /// A random delay in [0, min(maximum, initial * 2^attempt)].
    public func delay(attempt: Int, using rng: inout some RandomNumberGenerator) -> Duration {
        let (scaled, overflow) = initial.ternNanoseconds.multipliedReportingOverflow(by: Int64(1) << min(attempt, 40))
        let cap = overflow ? maximum.ternNanoseconds : min(maximum.ternNanoseconds, scaled)
        return .nanoseconds(Int64.random(in: 0...max(0, cap), using: &rng))
    }
}

/// A Tern WebSocket client: connects, resubscribes and recovers by position
/// after every reconnect, and delivers each publication once.
public final class TernClient: Sendable {
    private struct State {
        var nextRef: UInt64 = 1
        var pending: [UInt64: (continuation: CheckedContinuation<JSONReader.Value, any Error>, subscribeTopic: String?)] = [:]
        var outgoing: AsyncStream<String>.Continuation?
        var connected = false
        var subscriptions: [String: StreamPosition?] = [:]
        var traced: Set<String> = []
        var order: [String] = []
        var advisedDelay: Duration?
        var stopReconnecting = false
        var lastClose: (code: Int?, reason: String)?
        var handshakeDone = false
    }

    /// The relay's WebSocket URL, e.g. `ws://127.0.0.1:7101/ws`.
    public let url: String
    /// Everything the client observes, in order.
    public let events: AsyncStream<TernClientEvent>
    private let eventSink: AsyncStream<TernClientEvent>.Continuation
    private let token: @Sendable () async -> String?
    private let backoff: Backoff
    private let logger: Logger
    private let state = Mutex(State())

    /// A client for `url`; `token` is asked for before every connect (nil connects anonymously).
    public init(url: String, backoff: Backoff = Backoff(), logger: Logger = Logger(label: "tern.client"),
                token: @escaping @Sendable () async -> String? = { nil }) {
        self.url = url
        self.backoff = backoff
        self.logger = logger
        self.token = token
        (events, eventSink) = AsyncStream.makeStream(bufferingPolicy: .unbounded)
    }

    /// Connects and keeps reconnecting until cancelled or refused for good.
    public func run() async {
        var attempt = 0
        var rng = SystemRandomNumberGenerator()
        while !Task.isCancelled {
            state.withLock { $0.handshakeDone = false }
            do {
                let close = try await WebSocketClient.connect(
                    url: url, configuration: .init(maxFrameSize: 1 << 24), logger: logger
                ) { [self] inbound, outbound, _ in
                    try await session(inbound: inbound, outbound: outbound)
                }
                if let close {
                    state.withLock { $0.lastClose = (Int(UInt16(webSocketErrorCode: close.closeCode)), close.reason ?? "") }
                }
            } catch {
                state.withLock { $0.lastClose = $0.lastClose ?? (nil, "\(error)") }
            }
            if state.withLock({ $0.handshakeDone }) { attempt = 0 } else { attempt += 1 }
            let (close, advised, stop) = state.withLock { s -> ((code: Int?, reason: String), Duration?, Bool) in
                defer { s.lastClose = nil; s.advisedDelay = nil }
                let close = s.lastClose ?? (nil, "connection closed")
                if close.code == CloseCode.unauthorized.rawValue { s.stopReconnecting = true }
                return (close, s.advisedDelay, s.stopReconnecting)
            }
            let delay = advised ?? backoff.delay(attempt: attempt, using: &rng)
            eventSink.yield(.disconnected(code: close.code, reason: close.reason, willReconnect: !stop, reconnectAfter: delay))
            if stop { break }
            do { try await Task.sleep(for: delay) } catch { break }
        }
        eventSink.finish()
    }

    private func session(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async throws {
        let (outgoing, sink) = AsyncStream<String>.makeStream(bufferingPolicy: .unbounded)
        state.withLock { $0.outgoing = sink }
        defer {
            let pending = state.withLock { s -> [CheckedContinuation<JSONReader.Value, any Error>] in
                s.outgoing = nil
                s.connected = false
                defer { s.pending = [:] }
                return s.pending.values.map(\.continuation)
            }
            for p in pending { p.resume(throwing: TernClientError.connectionLost) }
            sink.finish()
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            // When reading stops, fail every request still waiting, so the handshake task cannot hang the group.
            defer { failPending() }
            group.addTask {
                for await text in outgoing { try await outbound.write(.text(text)) }
                // The stream ends when `disconnect()` is called: close this connection so `run` reconnects.
                try? await outbound.close(.goingAway, reason: "client reconnecting")
            }
            group.addTask { [self] in
                try await handshake()
                state.withLock { $0.handshakeDone = true }
            }
            for try await message in inbound.messages(maxSize: 1 << 24) {
                guard case .text(let text) = message, let value = try? JSONReader.parse(text.utf8) else { continue }
                dispatch(value)
            }
            group.cancelAll()
        }
    }

    private func failPending() {
        let pending = state.withLock { s -> [CheckedContinuation<JSONReader.Value, any Error>] in
            s.connected = false
            s.outgoing?.finish()
            s.outgoing = nil
            defer { s.pending = [:] }
            return s.pending.values.map(\.continuation)
        }
        for p in pending { p.resume(throwing: TernClientError.connectionLost) }
    }

    private func handshake() async throws {
        let token = await self.token()
        var fields = "\"op\":\"connect\""
        if let token { fields += ",\"token\":\(JSONText.quoted(token))" }
        let reply = try await send(fields, requireConnected: false)
        if case .string(let client)? = reply["client"], case .string(let region)? = reply["region"] {
            eventSink.yield(.connected(client: client, region: region))
        }
        let topics = state.withLock { s -> [(String, StreamPosition?)] in
            s.connected = true
            return s.order.compactMap { t in s.subscriptions[t].map { (t, $0) } }
        }
        for (topic, since) in topics {
            do {
                _ = try await sendSubscribe(topic, since: since)
            } catch let error as TernClientError {
                if case .server(_, _, let message) = error { eventSink.yield(.error(code: 0, message: message)) } else { throw error }
            }
        }
    }

    // MARK: - Requests

    /// Subscribes to `topic` (and again after every reconnect, recovering from the last position seen).
    /// With `trace`, each publication carries the hops that handled it (`ClientPublication.trace`).
    @discardableResult
    public func subscribe(_ topic: String, trace: Bool = false) async throws -> StreamPosition {
        let (connected, since): (Bool, StreamPosition?) = state.withLock { s in
            guard s.connected else { return (false, nil) }
            if s.subscriptions[topic] == nil {
                s.subscriptions[topic] = .some(nil)
                s.order.append(topic)
            }
            if trace { s.traced.insert(topic) } else { s.traced.remove(topic) }
            return (true, s.subscriptions[topic] ?? nil)
        }
        guard connected else { throw TernClientError.notConnected }
        return try await sendSubscribe(topic, since: since)
    }

    private func sendSubscribe(_ topic: String, since: StreamPosition?) async throws -> StreamPosition {
        var fields = "\"op\":\"subscribe\",\"topic\":\(JSONText.quoted(topic))"
        if state.withLock({ $0.traced.contains(topic) }) { fields += ",\"trace\":true" }
        if let since { fields += ",\"since\":{\"epoch\":\(JSONText.quoted(since.epoch)),\"offset\":\(since.offset)}" }
        let reply = try await send(fields, requireConnected: false, subscribeTopic: topic)
        guard let position = Self.position(reply) else { throw TernClientError.connectionLost }
        return position
    }

    /// Stops receiving `topic`.
    public func unsubscribe(_ topic: String) async throws {
        state.withLock { s in
            s.subscriptions[topic] = nil
            s.traced.remove(topic)
            s.order.removeAll { $0 == topic }
        }
        _ = try await send("\"op\":\"unsubscribe\",\"topic\":\(JSONText.quoted(topic))")
    }

    /// Publishes JSON `data` to `topic`; `id` makes retries safe.
    @discardableResult
    public func publish(_ topic: String, data: String, id: String = "", volatile: Bool = false) async throws -> PublishAck {
        let reply = try await send("\"op\":\"publish\",\"topic\":\(JSONText.quoted(topic)),\"id\":\(JSONText.quoted(id)),\"data\":\(data)\(volatile ? ",\"volatile\":true" : "")")
        var duplicate = false
        if case .bool(let d)? = reply["duplicate"] { duplicate = d }
        return PublishAck(topic: topic, position: Self.position(reply), duplicate: duplicate)
    }

    /// Counts the clients and users in `topic`.
    public func presenceStats(_ topic: String) async throws -> PresenceStats {
        let reply = try await send("\"op\":\"presence_stats\",\"topic\":\(JSONText.quoted(topic))")
        guard case .number(let c)? = reply["clients"], case .number(let u)? = reply["users"] else { throw TernClientError.connectionLost }
        return PresenceStats(clients: Int(c) ?? 0, users: Int(u) ?? 0)
    }

    /// Lists up to `limit` members of `topic`.
    public func presence(_ topic: String, limit: Int = 100) async throws -> [PresenceMember] {
        let reply = try await send("\"op\":\"presence\",\"topic\":\(JSONText.quoted(topic)),\"limit\":\(limit)")
        guard case .array(let items, _)? = reply["entries"] else { return [] }
        return items.compactMap { item in
            guard case .string(let c)? = item["client"], case .string(let u)? = item["user"], case .string(let r)? = item["region"] else { return nil }
            return PresenceMember(client: c, user: u, region: r)
        }
    }

    /// Round-trips a ping.
    public func ping() async throws { _ = try await send("\"op\":\"ping\"") }

    /// Ends the current connection; `run` reconnects with backoff and recovers every subscription.
    public func disconnect() {
        state.withLock { $0.outgoing?.finish() }
    }

    /// Sends raw text on the open connection (for protocol tests).
    public func sendRaw(_ text: String) throws {
        guard let out = state.withLock({ $0.outgoing }) else { throw TernClientError.notConnected }
        out.yield(text)
    }

    private func send(_ fields: String, requireConnected: Bool = true, subscribeTopic: String? = nil) async throws -> JSONReader.Value {
        try await withCheckedThrowingContinuation { continuation in
            let out: AsyncStream<String>.Continuation? = state.withLock { s in
                guard let out = s.outgoing, s.connected || !requireConnected else { return nil }
                let ref = s.nextRef
                s.nextRef += 1
                s.pending[ref] = (continuation, subscribeTopic)
                out.yield("{\"ref\":\(ref),\(fields)}")
                return out
            }
            if out == nil { continuation.resume(throwing: TernClientError.notConnected) }
        }
    }

    // MARK: - Incoming

    private func dispatch(_ value: JSONReader.Value) {
        if case .number(let refText)? = value["ref"], let ref = UInt64(refText) {
            guard let (continuation, subscribeTopic) = state.withLock({ $0.pending.removeValue(forKey: ref) }) else { return }
            if let ok = value["ok"] {
                if let topic = subscribeTopic { applySubscribed(topic, ok) }
                continuation.resume(returning: ok)
            } else {
                continuation.resume(throwing: Self.serverError(value["error"]))
            }
            return
        }
        if let error = value["error"] {
            if case .server(let code, _, let message) = Self.serverError(error) { eventSink.yield(.error(code: code, message: message)) }
            return
        }
        guard case .string(let push)? = value["push"] else { return }
        switch push {
        case "pub":
            deliver(value)
        case "join", "leave":
            guard case .string(let topic)? = value["topic"], case .string(let user)? = value["user"], case .string(let client)? = value["client"] else { return }
            eventSink.yield(push == "join" ? .join(topic: topic, user: user, client: client) : .leave(topic: topic, user: user, client: client))
        case "volatile":
            guard case .string(let topic)? = value["topic"], let data = value["data"] else { return }
            eventSink.yield(.volatile(topic: topic, data: data.rawText))
        case "epoch":
            guard case .string(let topic)? = value["topic"], let position = Self.position(value) else { return }
            state.withLock { s in
                if s.subscriptions[topic] != nil { s.subscriptions[topic] = .some(position) }
            }
            eventSink.yield(.epochChanged(topic: topic, position: position))
        case "gap":
            guard case .string(let topic)? = value["topic"], let position = Self.position(value) else { return }
            var reason = "unknown"
            if case .string(let r)? = value["reason"] { reason = r }
            state.withLock { s in
                if s.subscriptions[topic] != nil { s.subscriptions[topic] = .some(position) }
            }
            eventSink.yield(.resyncRequired(topic: topic, reason: reason))
        case "disconnect":
            if case .number(let ms)? = value["reconnect_after_ms"], let n = Int64(ms) {
                state.withLock { $0.advisedDelay = .milliseconds(n) }
            }
            if case .bool(false)? = value["reconnect"] { state.withLock { $0.stopReconnecting = true } }
        default:
            break
        }
    }

    /// Replays recovered publications and moves the topic's position, before
    /// any later frame is read, so live publications are never counted twice.
    private func applySubscribed(_ topic: String, _ reply: JSONReader.Value) {
        guard let position = Self.position(reply) else { return }
        var recovered: Bool?
        if case .bool(let b)? = reply["recovered"] { recovered = b }
        eventSink.yield(.subscribed(topic: topic, position: position, recovered: recovered))
        if recovered == true, case .array(let items, _)? = reply["publications"] {
            for item in items { deliver(item) }
        } else {
            state.withLock { s in
                if s.subscriptions[topic] != nil { s.subscriptions[topic] = .some(position) }
            }
        }
        if recovered == false {
            var reason = "unknown"
            if case .string(let r)? = reply["reason"] { reason = r }
            eventSink.yield(.resyncRequired(topic: topic, reason: reason))
        }
    }

    /// Emits a publication unless this position was already delivered.
    private func deliver(_ value: JSONReader.Value) {
        guard case .string(let topic)? = value["topic"], let position = Self.position(value), let data = value["data"] else { return }
        let fresh = state.withLock { s -> Bool in
            guard let entry = s.subscriptions[topic] else { return false }
            if let last = entry, last.epoch == position.epoch, position.offset <= last.offset { return false }
            s.subscriptions[topic] = .some(position)
            return true
        }
        guard fresh else { return }
        var id = ""
        if case .string(let i)? = value["id"] { id = i }
        var user: String?
        if case .string(let u)? = value["user"] { user = u }
        var trace: [ClientTraceHop] = []
        if case .array(let hops, _)? = value["trace"] {
            for hop in hops {
                guard case .string(let region)? = hop["region"], case .string(let step)? = hop["step"],
                      case .number(let at)? = hop["at"], let ms = Double(at) else { continue }
                trace.append(ClientTraceHop(region: region, step: step, at: ms))
            }
        }
        eventSink.yield(.publication(ClientPublication(topic: topic, position: position, id: id, user: user, data: data.rawText, trace: trace)))
    }

    private static func position(_ value: JSONReader.Value) -> StreamPosition? {
        guard case .string(let epoch)? = value["epoch"], case .number(let o)? = value["offset"], let offset = UInt64(o) else { return nil }
        return StreamPosition(epoch: epoch, offset: offset)
    }

    private static func serverError(_ value: JSONReader.Value?) -> TernClientError {
        guard let value, case .number(let c)? = value["code"] else { return .server(code: 0, name: "unknown", message: "malformed error") }
        var name = "", message = ""
        if case .string(let n)? = value["name"] { name = n }
        if case .string(let m)? = value["message"] { message = m }
        return .server(code: Int(c) ?? 0, name: name, message: message)
    }
}
