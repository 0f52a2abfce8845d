import NIOCore
import TernCore

/// Encodes server messages as the JSON documented in docs/PROTOCOL.md.
public struct JSONServerEncoder: ServerMessageEncoding {
    /// The encoder.
    public init() {}

    public func encode(_ message: ServerMessage) -> ByteBuffer {
        ByteBuffer(string: Self.json(message))
    }

    public func encodeSSE(_ message: ServerMessage, cursor: inout [String: StreamPosition]) -> ByteBuffer {
        var out = ""
        switch message {
        case .publication(let p):
            out += Self.sseEvent(publication: p, cursor: &cursor)
        case .gap(let topic, let position, _), .epochChanged(let topic, let position):
            cursor[topic] = position
            out += "id: \(Cursor.encode(cursor))\nevent: \(Self.kind(message))\ndata: \(Self.json(message))\n\n"
        case .reply(_, .subscribed(let reply)):
            var head = reply
            head.publications = []
            for p in reply.publications { out += Self.sseEvent(publication: p, cursor: &cursor) }
            cursor[reply.topic] = reply.position
            out += "id: \(Cursor.encode(cursor))\nevent: subscribed\ndata: \(Self.json(.reply(ref: nil, .subscribed(head))))\n\n"
        case .disconnect(_, let after?):
            // `retry` makes a browser EventSource wait the advised delay before reconnecting.
            out += "retry: \(max(1, after.ternMilliseconds))\nevent: disconnect\ndata: \(Self.json(message))\n\n"
        default:
            out += "event: \(Self.kind(message))\ndata: \(Self.json(message))\n\n"
        }
        return ByteBuffer(string: out)
    }

    static func sseEvent(publication p: Publication, cursor: inout [String: StreamPosition]) -> String {
        cursor[p.topic] = p.position
        return "id: \(Cursor.encode(cursor))\nevent: pub\ndata: \(json(.publication(p)))\n\n"
    }

    static func kind(_ message: ServerMessage) -> String {
        switch message {
        case .reply: "reply"
        case .error: "error"
        case .publication: "pub"
        case .volatile: "volatile"
        case .join: "join"
        case .leave: "leave"
        case .disconnect: "disconnect"
        case .gap: "gap"
        case .epochChanged: "epoch"
        }
    }

    /// The JSON text of one message.
    public static func json(_ message: ServerMessage) -> String {
        var w = ObjectWriter()
        switch message {
        case .reply(let ref, let body):
            if let ref { w.raw("ref", String(ref)) }
            w.raw("ok", replyJSON(body))
        case .error(let ref, let error):
            if let ref { w.raw("ref", String(ref)) }
            w.raw("error", errorJSON(error))
        case .publication(let p):
            w.string("push", "pub")
            publicationFields(p, into: &w)
        case .volatile(let topic, let user, let data):
            w.string("push", "volatile")
            w.string("topic", topic)
            if let user { w.string("user", user) }
            w.raw("data", data)
        case .join(let topic, let entry), .leave(let topic, let entry):
            if case .join = message { w.string("push", "join") } else { w.string("push", "leave") }
            w.string("topic", topic)
            presenceFields(entry, into: &w)
        case .disconnect(let code, let after):
            w.string("push", "disconnect")
            w.raw("code", String(code.rawValue))
            w.string("reason", code.reason)
            w.raw("reconnect", code.reconnect ? "true" : "false")
            if let after { w.raw("reconnect_after_ms", String(after.ternMilliseconds)) }
        case .gap(let topic, let position, let reason):
            w.string("push", "gap")
            w.string("topic", topic)
            w.string("epoch", position.epoch)
            w.raw("offset", String(position.offset))
            w.string("reason", reason.rawValue)
        case .epochChanged(let topic, let position):
            w.string("push", "epoch")
            w.string("topic", topic)
            w.string("epoch", position.epoch)
            w.raw("offset", String(position.offset))
        }
        return w.finish()
    }

    /// The JSON of an error object.
    public static func errorJSON(_ error: TernError) -> String {
        var w = ObjectWriter()
        w.raw("code", String(error.code.rawValue))
        w.string("name", error.code.name)
        w.string("message", error.message)
        return w.finish()
    }

    /// The JSON of a reply body.
    public static func replyJSON(_ body: ReplyBody) -> String {
        var w = ObjectWriter()
        switch body {
        case .connected(let client, let user, let region):
            w.string("client", client.description)
            w.string("user", user)
            w.string("region", region)
        case .subscribed(let r):
            w.string("topic", r.topic)
            w.string("epoch", r.position.epoch)
            w.raw("offset", String(r.position.offset))
            if let recovered = r.recovered { w.raw("recovered", recovered ? "true" : "false") }
            if let failure = r.failure { w.string("reason", failure.rawValue) }
            if r.recovered != nil {
                w.raw("publications", "[" + r.publications.map { publicationJSON($0) }.joined(separator: ",") + "]")
            }
        case .unsubscribed(let topic):
            w.string("topic", topic)
        case .published(let topic, let position, let duplicate):
            w.string("topic", topic)
            if let position {
                w.string("epoch", position.epoch)
                w.raw("offset", String(position.offset))
            }
            w.raw("duplicate", duplicate ? "true" : "false")
        case .presence(let topic, let entries, let total):
            w.string("topic", topic)
            w.raw("total", String(total))
            w.raw("truncated", entries.count < total ? "true" : "false")
            w.raw("entries", "[" + entries.map { e in
                var ew = ObjectWriter()
                presenceFields(e, into: &ew)
                return ew.finish()
            }.joined(separator: ",") + "]")
        case .presenceStats(let topic, let clients, let users):
            w.string("topic", topic)
            w.raw("clients", String(clients))
            w.raw("users", String(users))
        case .pong:
            break
        }
        return w.finish()
    }

    /// A publication as a JSON object without the `push` field.
    public static func publicationJSON(_ p: Publication) -> String {
        var w = ObjectWriter()
        publicationFields(p, into: &w)
        return w.finish()
    }

    static func publicationFields(_ p: Publication, into w: inout ObjectWriter) {
        w.string("topic", p.topic)
        w.string("epoch", p.position.epoch)
        w.raw("offset", String(p.position.offset))
        if !p.id.isEmpty { w.string("id", p.id) }
        if let user = p.user { w.string("user", user) }
        w.raw("data", p.data)
        if let hops = p.trace { w.raw("trace", traceJSON(hops)) }
    }

    /// Hops as `[{"region":…,"step":…,"at":…}]`, `at` in Unix milliseconds with microsecond decimals.
    static func traceJSON(_ hops: [TraceHop]) -> String {
        var out = "["
        for (i, hop) in hops.enumerated() {
            if i > 0 { out += "," }
            var w = ObjectWriter()
            w.string("region", hop.region)
            w.string("step", hop.step.rawValue)
            let micros = hop.at / 1_000
            let fraction = String(abs(micros % 1_000))
            w.raw("at", "\(micros / 1_000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)")
            out += w.finish()
        }
        return out + "]"
    }

    static func presenceFields(_ e: PresenceEntry, into w: inout ObjectWriter) {
        w.string("client", e.client.description)
        w.string("user", e.user)
        w.string("region", e.region)
    }

    /// The JSON body of a long-poll response, with the cursor for the next poll.
    public static func pollJSON(_ reply: PollReply, previous: [String: StreamPosition]) -> String {
        var cursor = previous
        for t in reply.topics { cursor[t.topic] = t.position }
        var w = ObjectWriter()
        w.string("cursor", Cursor.encode(cursor))
        w.raw("publications", "[" + reply.publications.map { publicationJSON($0) }.joined(separator: ",") + "]")
        w.raw("topics", "[" + reply.topics.map { t in
            var tw = ObjectWriter()
            tw.string("topic", t.topic)
            tw.string("epoch", t.position.epoch)
            tw.raw("offset", String(t.position.offset))
            tw.raw("recovered", t.recovered ? "true" : "false")
            if let f = t.failure { tw.string("reason", f.rawValue) }
            return tw.finish()
        }.joined(separator: ",") + "]")
        if let error = reply.error { w.raw("error", errorJSON(error)) }
        return w.finish()
    }
}

/// Builds one JSON object field by field.
struct ObjectWriter {
    private var text = "{"
    private var first = true

    mutating func raw(_ key: String, _ json: String) {
        if !first { text += "," }
        first = false
        text += JSONText.quoted(key)
        text += ":"
        text += json
    }

    mutating func string(_ key: String, _ value: String) { raw(key, JSONText.quoted(value)) }

    mutating func finish() -> String { text + "}" }
}
