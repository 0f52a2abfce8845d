/// A relay-local handle for one client connection (WebSocket, SSE or long-poll).
public struct ClientID: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The number the driver assigned to the connection.
    public let raw: UInt64
    /// Wraps a driver-assigned number.
    public init(_ raw: UInt64) { self.raw = raw }
    public static func < (lhs: ClientID, rhs: ClientID) -> Bool { lhs.raw < rhs.raw }
    public var description: String { "c\(String(raw, radix: 16))" }

    public func hash(into hasher: inout Hasher) { hasher.combine(raw) }

    /// The hash sets and dictionaries keyed by client id use: a lookup per subscriber per publication
    /// is on the fan-out path, and SipHash (what `Hasher` runs) was a fifth of that lookup's cost.
    /// Ids are numbers relays assign (this one, or a peer relay over an authenticated link), never
    /// chosen by a client, so no client can aim collisions at them, and a fast mix of the number with
    /// the table's seed (SplitMix64's finalizer) is enough.
    /// The order of a dictionary's keys was never stable (Swift seeds hashing per process), so
    /// nothing depends on it.
    public func _rawHashValue(seed: Int) -> Int {
        var x = raw ^ UInt64(bitPattern: Int64(seed))
        x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
        x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
        return Int(truncatingIfNeeded: x ^ (x >> 31))
    }
}

/// Where a publication sits in its topic's stream: the epoch names the
/// stream's home and generation, the offset counts publications within it.
public struct StreamPosition: Hashable, Sendable, CustomStringConvertible {
    /// The stream generation; changes when the stream's state is lost.
    public var epoch: String
    /// The sequence number of the publication within the epoch (the first is 1).
    public var offset: UInt64

    /// A position `offset` within `epoch`.
    public init(epoch: String, offset: UInt64) {
        self.epoch = epoch
        self.offset = offset
    }

    public var description: String { "\(epoch)/\(offset)" }
}

/// Rules for topic names: `namespace:name`, printable and bounded.
public enum TopicName {
    /// The longest topic name accepted, in bytes.
    public static let maxBytes = 255

    /// The namespace part of `topic`, or nil when it has none.
    public static func namespace(of topic: String) -> Substring? {
        guard let colon = topic.firstIndex(of: ":") else { return nil }
        return topic[topic.startIndex..<colon]
    }

    /// Why `topic` is not a valid name, or nil when it is.
    ///
    /// Names are `namespace:name` built from letters, digits and `_ - . : @ /`,
    /// so they can stand unescaped in SSE event ids and poll cursors.
    public static func problem(with topic: String) -> String? {
        if topic.isEmpty { return "topic is empty" }
        if topic.utf8.count > maxBytes { return "topic is longer than \(maxBytes) bytes" }
        guard let ns = namespace(of: topic), !ns.isEmpty else {
            return "topic '\(topic)' has no namespace; write it as namespace:name"
        }
        if topic.utf8.last == UInt8(ascii: ":") { return "topic '\(topic)' has an empty name after the namespace" }
        for byte in topic.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: ":"),
                UInt8(ascii: "@"), UInt8(ascii: "/"):
                continue
            default:
                return "topic '\(topic)' has a character outside letters, digits and _ - . : @ /"
            }
        }
        return nil
    }
}

extension UInt64 {
    /// Whether this offset comes right after `offset`. Offsets arrive from peers, so nothing here
    /// may overflow: nothing comes after the largest.
    @inline(__always)
    func follows(_ offset: UInt64) -> Bool { offset != .max && self == offset + 1 }

    /// `self + other`, or the largest value when that overflows.
    @inline(__always)
    func saturatingAdd(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}
