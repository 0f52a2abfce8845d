import Hummingbird
import NIOCore
import Synchronization
import TernCore
import TernWire

/// A publish rate limit per user, for HTTP publishes made with a client token:
/// each user gets `publish_rate` a second with bursts of `publish_burst`, however
/// many requests (and so connections) they spread them over.
final class UserPublishLimiter: Sendable {
    private struct Entry {
        var bucket: TokenBucket
        var lastUsed: TernInstant
    }

    /// The most users tracked at once; idle users (whose buckets are full again) are forgotten first.
    static let maxUsers = 100_000

    let rate: Double
    let burst: Double
    private let users = Mutex<[String: Entry]>([:])

    init(rate: Double, burst: Double) {
        self.rate = rate
        self.burst = burst
    }

    /// Takes one publish from `user`'s bucket; false when the user is over the limit.
    func take(_ user: String, now: TernInstant) -> Bool {
        users.withLock { users in
            if users[user] == nil, users.count >= Self.maxUsers { evict(&users, now: now) }
            var entry = users[user] ?? Entry(bucket: TokenBucket(rate: rate, burst: burst, now: now), lastUsed: now)
            let allowed = entry.bucket.take(now: now)
            entry.lastUsed = now
            users[user] = entry
            return allowed
        }
    }

    /// Forgets users whose buckets have refilled; if none has, the least recently seen tenth.
    private func evict(_ users: inout [String: Entry], now: TernInstant) {
        let refill = Duration.milliseconds(Int64(max(1, burst / max(rate, 0.001)) * 1000))
        let before = users.count
        users = users.filter { $0.value.lastUsed + refill > now }
        guard users.count == before else { return }
        let oldest = users.sorted { $0.value.lastUsed < $1.value.lastUsed }.prefix(max(1, users.count / 10)).map(\.key)
        for user in oldest { users[user] = nil }
    }

    /// Users tracked now (for tests).
    var trackedUsers: Int { users.withLock { $0.count } }
}

/// What the core answered a publish made on behalf of an HTTP request.
enum ClientPublishOutcome: Sendable {
    /// The reply's `ok` object, as JSON text.
    case published(String)
    /// The core refused the publish.
    case refused(TernError)
    /// The core closed the request's connection without an answer.
    case closed(CloseCode)
}

extension Relay {
    /// `POST /api/publish` with a client token: the publish goes through the core as the
    /// token's user would send it over a WebSocket, so the same permissions apply
    /// (the token's publish patterns, the namespace's `client_publish`) and the
    /// publication carries the user. Each user is also held to `publish_rate`.
    func tokenPublish(token: String, _ request: Request) async throws -> Response {
        let identity: ClientIdentity
        switch await authenticator.verify(token, now: runtime.now()) {
        case .success(let i): identity = i
        case .failure(.expired):
            return errorResponse(TernError(.tokenExpired, "the token has expired; get a fresh one"))
        case .failure(.invalid(let why)):
            return errorResponse(TernError(.unauthorized,
                "'Authorization: Bearer' is neither the API key nor a valid client token (\(why))"))
        }
        let publish: APIPublishRequest
        switch await readPublishBody(request) {
        case .success(let p): publish = p
        case .failure(let e): return errorResponse(e)
        }
        guard userPublishLimiter.take(identity.user, now: runtime.now()) else {
            return errorResponse(TernError(.rateLimited,
                "user '\(identity.user)' is over \(Int(userPublishLimiter.rate)) publishes a second; slow down"))
        }
        switch await publishAsClient(identity, publish) {
        case .published(let ok): return jsonResponse(.ok, ok)
        case .refused(let error): return errorResponse(error)
        case .closed(.connectionRateLimited):
            return errorResponse(TernError(.rateLimited, "the relay is taking too many new connections; retry shortly with the same id"))
        case .closed(.tokenExpired):
            return errorResponse(TernError(.tokenExpired, "the token has expired; get a fresh one"))
        case .closed(let code):
            return errorResponse(TernError(.internalError, "the relay closed the request (\(code.reason)); retry with the same id"))
        }
    }

    /// Reads and decodes a publish body of at most `max_frame_bytes`.
    func readPublishBody(_ request: Request) async -> Result<APIPublishRequest, TernError> {
        let limit = runtime.limits.maxFrameBytes
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: limit)
        } catch {
            return .failure(TernError(.messageTooLarge, "the request body is over the \(limit)-byte limit"))
        }
        return APIPublishRequest.decode(body.readableBytesView)
    }

    /// Publishes through the core as a short-lived client connection of `identity` and waits for the answer.
    func publishAsClient(_ identity: ClientIdentity, _ publish: APIPublishRequest) async -> ClientPublishOutcome {
        let runtime = self.runtime
        let (client, signals) = runtime.register()
        // An SSE connection: authenticated by the driver with no connect command, and its replies are events.
        runtime.handle(.opened(client, .sse))
        runtime.handle(.authenticated(client, ref: 1, identity))
        runtime.handle(.command(client, ref: 1, .publish(topic: publish.topic, id: publish.id, data: publish.data, volatile: false)))
        // The core answers by its own home timeout; this bound only guards against waiting forever.
        let limit = topology.tuning.homeTimeout + .seconds(5)
        let outcome: ClientPublishOutcome? = await withTaskGroup(of: ClientPublishOutcome?.self) { group in
            group.addTask {
                for await signal in signals {
                    switch signal {
                    case .flush:
                        if let answer = Self.publishAnswer(in: runtime.takeOutbound(client)) { return answer }
                    case .close(let code):
                        return Self.publishAnswer(in: runtime.takeOutbound(client)) ?? .closed(code)
                    case .poll, .heartbeat:
                        continue
                    }
                }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: limit)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        runtime.unregister(client)
        return outcome ?? .refused(TernError(.internalError, "the topic's home did not answer in time; retry with the same id"))
    }

    /// The reply or error among a connection's SSE frames, if one is there.
    static func publishAnswer(in frames: [OutboundFrame]) -> ClientPublishOutcome? {
        for frame in frames {
            let text = String(buffer: frame.bytes)
            for line in text.split(separator: "\n") where line.hasPrefix("data: ") {
                guard let message = try? JSONReader.parse(Array(line.dropFirst(6).utf8)) else { continue }
                if let ok = message["ok"] { return .published(ok.rawText) }
                if let error = message["error"] {
                    var code = ErrorCode.internalError
                    if case .number(let raw)? = error["code"], let n = Int(raw), let known = ErrorCode(rawValue: n) { code = known }
                    var text = code.name
                    if case .string(let m)? = error["message"] { text = m }
                    return .refused(TernError(code, text))
                }
            }
        }
        return nil
    }
}
