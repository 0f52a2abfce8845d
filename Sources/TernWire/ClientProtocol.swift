import TernCore

/// Decodes client messages (JSON text) into core commands.
public enum ClientMessageDecoder {
    /// A message that could not be decoded, with the request number when it was readable.
    public struct Failure: Error, Equatable {
        /// The request number, when the message had a readable `ref`.
        public var ref: UInt64?
        /// The error to reply with.
        public var error: TernError
    }

    /// Decodes one client message.
    public static func decode(_ bytes: some Collection<UInt8>) -> Result<(ref: UInt64?, command: ClientCommand), Failure> {
        let root: JSONReader.Value
        do {
            root = try JSONReader.parse(bytes)
        } catch {
            return .failure(Failure(ref: nil, error: TernError(.badRequest, "malformed JSON: \(error)")))
        }
        guard case .object = root else {
            return .failure(Failure(ref: nil, error: TernError(.badRequest, "a message must be a JSON object")))
        }
        var ref: UInt64?
        if let r = root["ref"] {
            guard let n = uint(r) else {
                return .failure(Failure(ref: nil, error: TernError(.badRequest, "'ref' must be a non-negative integer")))
            }
            ref = n
        }
        do {
            return .success((ref, try command(root)))
        } catch {
            return .failure(Failure(ref: ref, error: error))
        }
    }

    private static func command(_ root: JSONReader.Value) throws(TernError) -> ClientCommand {
        guard case .string(let op)? = root["op"] else {
            throw TernError(.badRequest, "missing 'op': one of connect, subscribe, unsubscribe, publish, presence, presence_stats, ping")
        }
        switch op {
        case "connect":
            return .connect(token: try optionalString(root, "token"))
        case "subscribe":
            let topic = try requiredString(root, "topic")
            var since: StreamPosition?
            if let s = root["since"], s != .null {
                since = try position(s, field: "since")
            }
            var trace = false
            if let v = root["trace"], v != .null {
                guard case .bool(let b) = v else { throw TernError(.badRequest, "'trace' must be true or false") }
                trace = b
            }
            return .subscribe(topic: topic, since: since, trace: trace)
        case "unsubscribe":
            return .unsubscribe(topic: try requiredString(root, "topic"))
        case "publish":
            let topic = try requiredString(root, "topic")
            let id = try optionalString(root, "id") ?? ""
            guard let data = root["data"] else { throw TernError(.badRequest, "publish needs 'data' (any JSON value)") }
            var volatile = false
            if let v = root["volatile"] {
                guard case .bool(let b) = v else { throw TernError(.badRequest, "'volatile' must be true or false") }
                volatile = b
            }
            return .publish(topic: topic, id: id, data: data.rawText, volatile: volatile)
        case "presence":
            var limit: Int?
            if let l = root["limit"] {
                guard let n = uint(l), n >= 1, n <= UInt64(Int.max) else { throw TernError(.badRequest, "'limit' must be a positive integer") }
                limit = Int(n)
            }
            return .presence(topic: try requiredString(root, "topic"), limit: limit)
        case "presence_stats":
            return .presenceStats(topic: try requiredString(root, "topic"))
        case "ping":
            return .ping
        default:
            throw TernError(.unknownCommand, "unknown op '\(op)': use connect, subscribe, unsubscribe, publish, presence, presence_stats or ping")
        }
    }

    /// Reads `{"epoch": "...", "offset": N}`.
    public static func position(_ value: JSONReader.Value, field: String) throws(TernError) -> StreamPosition {
        guard case .string(let epoch)? = value["epoch"], let offsetValue = value["offset"], let offset = uint(offsetValue) else {
            throw TernError(.badRequest, "'\(field)' must be {\"epoch\": string, \"offset\": integer}")
        }
        return StreamPosition(epoch: epoch, offset: offset)
    }

    static func requiredString(_ root: JSONReader.Value, _ key: String) throws(TernError) -> String {
        guard case .string(let s)? = root[key] else { throw TernError(.badRequest, "'\(key)' must be a string") }
        return s
    }

    static func optionalString(_ root: JSONReader.Value, _ key: String) throws(TernError) -> String? {
        switch root[key] {
        case nil, .null?: return nil
        case .string(let s)?: return s
        default: throw TernError(.badRequest, "'\(key)' must be a string")
        }
    }

    static func uint(_ value: JSONReader.Value) -> UInt64? {
        guard case .number(let raw) = value else { return nil }
        return UInt64(raw)
    }
}

/// A publish request to `POST /api/publish`.
public struct APIPublishRequest: Equatable, Sendable {
    public var topic: String
    public var id: String
    public var data: String

    /// Decodes `{"topic": ..., "id": ..., "data": ...}`.
    public static func decode(_ bytes: some Collection<UInt8>) -> Result<APIPublishRequest, TernError> {
        let root: JSONReader.Value
        do {
            root = try JSONReader.parse(bytes)
        } catch {
            return .failure(TernError(.badRequest, "malformed JSON: \(error)"))
        }
        do throws(TernError) {
            let topic = try ClientMessageDecoder.requiredString(root, "topic")
            let id = try ClientMessageDecoder.optionalString(root, "id") ?? ""
            guard let data = root["data"] else { throw TernError(.badRequest, "publish needs 'data' (any JSON value)") }
            return .success(APIPublishRequest(topic: topic, id: id, data: data.rawText))
        } catch {
            return .failure(error)
        }
    }
}
