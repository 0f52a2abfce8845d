/// A topic pattern from a token's claims: `*` matches any run of characters.
public struct TopicPattern: Hashable, Sendable, CustomStringConvertible {
    /// The pattern as written, e.g. `room:*`.
    public let pattern: String
    private let parts: [Substring]

    /// Parses a pattern; every string is a valid pattern.
    public init(_ pattern: String) {
        self.pattern = pattern
        self.parts = pattern.split(separator: "*", omittingEmptySubsequences: false)
    }

    /// Whether `topic` matches.
    public func matches(_ topic: String) -> Bool {
        if parts.count == 1 { return topic == pattern }
        var rest = Substring(topic)
        guard rest.hasPrefix(parts[0]) else { return false }
        rest = rest.dropFirst(parts[0].count)
        for part in parts[1..<(parts.count - 1)] where !part.isEmpty {
            guard let range = rest.firstRange(of: part) else { return false }
            rest = rest[range.upperBound...]
        }
        return rest.hasSuffix(parts[parts.count - 1])
    }

    public var description: String { pattern }
}

/// Who a client is, as established by its token (or anonymity).
public struct ClientIdentity: Hashable, Sendable {
    /// The user id (`sub` claim); empty for anonymous clients.
    public var user: String
    /// Whether the client connected without a token.
    public var isAnonymous: Bool
    /// When the token expires, on the driver's monotonic timeline.
    public var expiresAt: TernInstant?
    /// Topics the client may subscribe to.
    public var subscribe: [TopicPattern]
    /// Topics the client may publish to.
    public var publish: [TopicPattern]
    /// Topics whose presence the client may read.
    public var presence: [TopicPattern]

    /// An identity with every field given.
    public init(user: String, expiresAt: TernInstant?, subscribe: [TopicPattern], publish: [TopicPattern], presence: [TopicPattern]) {
        self.user = user
        self.isAnonymous = false
        self.expiresAt = expiresAt
        self.subscribe = subscribe
        self.publish = publish
        self.presence = presence
    }

    /// A client that presented no token.
    public static let anonymous: ClientIdentity = {
        var identity = ClientIdentity(user: "", expiresAt: nil, subscribe: [], publish: [], presence: [])
        identity.isAnonymous = true
        return identity
    }()

    /// Whether any pattern in `patterns` matches `topic`.
    static func allowed(_ patterns: [TopicPattern], _ topic: String) -> Bool {
        patterns.contains { $0.matches(topic) }
    }
}

/// Why a token was refused.
public enum AuthFailure: Error, Hashable, Sendable {
    /// The token is malformed, badly signed, or lacks required claims.
    case invalid(String)
    /// The token's `exp` has passed.
    case expired
}
