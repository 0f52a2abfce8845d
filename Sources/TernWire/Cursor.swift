import TernCore

/// The resume token of SSE event ids and long-poll cursors: every topic's
/// last position, as `topic|epoch|offset` joined with commas, topics sorted.
public enum Cursor {
    /// Encodes positions by topic.
    public static func encode(_ positions: [String: StreamPosition]) -> String {
        positions.keys.sorted().map { topic in
            let p = positions[topic]!
            return "\(topic)|\(p.epoch)|\(p.offset)"
        }.joined(separator: ",")
    }

    /// Decodes a cursor; nil when it is malformed.
    public static func decode(_ text: String) -> [String: StreamPosition]? {
        var out: [String: StreamPosition] = [:]
        if text.isEmpty { return out }
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let fields = part.split(separator: "|", omittingEmptySubsequences: false)
            guard fields.count == 3, !fields[0].isEmpty, !fields[1].isEmpty, let offset = UInt64(fields[2]) else { return nil }
            out[String(fields[0])] = StreamPosition(epoch: String(fields[1]), offset: offset)
        }
        return out
    }
}
