import NIOCore

/// A command from a client, decoded by TernWire.
public enum ClientCommand: Hashable, Sendable {
    /// Authenticate; the driver verifies the token and reports `authenticated`.
    case connect(token: String?)
    /// Subscribe to a topic, optionally recovering everything after `since`; `trace` asks for the
    /// per-hop timestamps of each publication.
    case subscribe(topic: String, since: StreamPosition?, trace: Bool = false)
    /// Stop receiving a topic.
    case unsubscribe(topic: String)
    /// Publish JSON `data`; `id` makes retries idempotent. Volatile publications skip history.
    case publish(topic: String, id: String, data: String, volatile: Bool)
    /// List who is in a topic, at most `limit` entries.
    case presence(topic: String, limit: Int?)
    /// Count clients and users in a topic.
    case presenceStats(topic: String)
    /// Liveness check.
    case ping
}

/// Error codes sent in error replies. Documented in docs/PROTOCOL.md.
public enum ErrorCode: Int, Sendable, Hashable, CaseIterable {
    case internalError = 100
    case unauthorized = 101
    case unknownNamespace = 102
    case permissionDenied = 103
    case unknownCommand = 104
    case alreadySubscribed = 105
    case limitExceeded = 106
    case badRequest = 107
    case messageTooLarge = 108
    case notSubscribed = 109
    case rateLimited = 110
    case tokenExpired = 111
    case notConnected = 112
    case alreadyConnected = 113
    case invalidTopic = 114

    /// The snake_case name carried next to the number.
    public var name: String {
        switch self {
        case .internalError: "internal_error"
        case .unauthorized: "unauthorized"
        case .unknownNamespace: "unknown_namespace"
        case .permissionDenied: "permission_denied"
        case .unknownCommand: "unknown_command"
        case .alreadySubscribed: "already_subscribed"
        case .limitExceeded: "limit_exceeded"
        case .badRequest: "bad_request"
        case .messageTooLarge: "message_too_large"
        case .notSubscribed: "not_subscribed"
        case .rateLimited: "rate_limited"
        case .tokenExpired: "token_expired"
        case .notConnected: "not_connected"
        case .alreadyConnected: "already_connected"
        case .invalidTopic: "invalid_topic"
        }
    }
}

/// An error reply: a code and a sentence saying what to change.
public struct TernError: Error, Hashable, Sendable {
    /// The machine-readable code.
    public var code: ErrorCode
    /// What went wrong, for a person.
    public var message: String

    /// An error with `code` and `message`.
    public init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// WebSocket close codes the relay uses. Documented in docs/PROTOCOL.md.
public enum CloseCode: Int, Sendable, Hashable, CaseIterable {
    /// The token was refused; do not reconnect with the same token.
    case unauthorized = 4001
    /// The token expired; reconnect with a fresh one.
    case tokenExpired = 4002
    /// The client did not read fast enough; reconnect and recover by position.
    case slowConsumer = 4003
    /// The relay is draining; reconnect after the advised delay.
    case shutdown = 4004
    /// Too many new connections; reconnect after the advised delay.
    case connectionRateLimited = 4005
    /// No connect command arrived in time.
    case connectTimeout = 4006

    /// Whether the client should reconnect after this close.
    public var reconnect: Bool {
        switch self {
        case .unauthorized: false
        default: true
        }
    }

    /// A short reason carried in the close frame.
    public var reason: String {
        switch self {
        case .unauthorized: "unauthorized"
        case .tokenExpired: "token expired"
        case .slowConsumer: "slow consumer"
        case .shutdown: "relay shutting down"
        case .connectionRateLimited: "connection rate limited"
        case .connectTimeout: "connect timeout"
        }
    }
}

/// Everything a subscribe reply carries.
public struct SubscribeReply: Hashable, Sendable {
    /// The topic subscribed to.
    public var topic: String
    /// The stream's current position.
    public var position: StreamPosition
    /// Whether recovery was asked for, and if so whether it succeeded.
    public var recovered: Bool?
    /// Why recovery failed, when it did.
    public var failure: RecoveryFailure?
    /// The recovered publications, oldest first.
    public var publications: [Publication]
}

/// One entry in a topic's presence.
public struct PresenceEntry: Hashable, Sendable {
    /// The connection.
    public var client: ClientID
    /// Its user.
    public var user: String
    /// The region holding the connection.
    public var region: String

    /// An entry with every field given.
    public init(client: ClientID, user: String, region: String) {
        self.client = client
        self.user = user
        self.region = region
    }
}

/// The body of a successful reply.
public enum ReplyBody: Hashable, Sendable {
    case connected(client: ClientID, user: String, region: String)
    case subscribed(SubscribeReply)
    case unsubscribed(topic: String)
    case published(topic: String, position: StreamPosition?, duplicate: Bool)
    case presence(topic: String, entries: [PresenceEntry], total: Int)
    case presenceStats(topic: String, clients: Int, users: Int)
    case pong
}

/// A message from the relay to one client.
///
/// Indirect: a message is built once and then passed on, kept and copied (the simulator's clients
/// get each one through its event queue), so a copy is one reference rather than the whole payload
/// of a publication.
public indirect enum ServerMessage: Hashable, Sendable {
    /// The answer to the request numbered `ref`.
    case reply(ref: UInt64?, ReplyBody)
    /// A refusal of the request numbered `ref` (nil when it could not be read).
    case error(ref: UInt64?, TernError)
    /// A sequenced publication.
    case publication(Publication)
    /// A volatile publication: not sequenced, not kept in history.
    case volatile(topic: String, user: String?, data: String)
    /// Someone joined a topic.
    case join(topic: String, PresenceEntry)
    /// Someone left a topic.
    case leave(topic: String, PresenceEntry)
    /// The relay is about to close the connection.
    case disconnect(code: CloseCode, reconnectAfter: Duration?)
    /// The stream jumped to `position` and what came between is lost: reload the topic, then continue.
    case gap(topic: String, position: StreamPosition, reason: RecoveryFailure)
    /// The stream continues in another epoch from `position` (a failover or its heal); nothing is lost,
    /// and publications already delivered are not delivered again.
    case epochChanged(topic: String, position: StreamPosition)
}

/// Turns server messages into transport frames. TernWire implements it.
///
/// Injected so that a publication is serialised once per region and the same
/// buffer is written to every WebSocket subscriber.
public protocol ServerMessageEncoding: Sendable {
    /// A WebSocket text frame's payload.
    func encode(_ message: ServerMessage) -> ByteBuffer
    /// One or more Server-Sent Events; `cursor` is advanced past any publication.
    func encodeSSE(_ message: ServerMessage, cursor: inout [String: StreamPosition]) -> ByteBuffer
}
