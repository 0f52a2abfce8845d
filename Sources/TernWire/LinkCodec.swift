import NIOCore
import TernCore

/// One frame on an inter-region link.
///
/// Every frame is `u32 length | u8 type | payload`, big-endian. The handshake
/// takes three frames: the dialling side sends `hello`; the accepting side
/// checks it and answers with its own `hello`; the dialling side checks that
/// and sends `ready`. Each side counts the link as up only once it has checked
/// the other's hello and knows its own was accepted, so a refused side never
/// sees the link up. Everything after is `batch` frames (or a `reject` that
/// explains why the link is being closed).
public enum LinkFrame: Sendable, Equatable {
    /// Who is speaking, in which protocol version and topology.
    case hello(LinkHello)
    /// The dialling side accepted the answering hello; the link is up on both sides.
    case ready
    /// The peer refuses the link; the reason is for both sides' logs.
    case reject(reason: String)
    /// A batch of link messages.
    case batch([LinkMessage])
}

/// The handshake each side sends first.
public struct LinkHello: Sendable, Equatable {
    /// The link protocol version spoken.
    public var version: UInt16
    /// The mesh's name.
    public var mesh: String
    /// The sender's region.
    public var region: String
    /// The topology hash (`Topology.hash`); both ends must agree.
    public var topologyHash: String

    public init(version: UInt16 = LinkCodec.version, mesh: String, region: String, topologyHash: String) {
        self.version = version
        self.mesh = mesh
        self.region = region
        self.topologyHash = topologyHash
    }
}

/// Why bytes from a link could not be read. The link is reset; nothing else is touched.
public struct LinkProtocolError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Encodes and decodes link frames for one connection. Topic names are
/// interned per direction and batches are LZ4-compressed across the
/// connection's lifetime, so each connection needs a fresh codec.
public final class LinkCodec {
    /// The link protocol version this build speaks.
    public static let version: UInt16 = 6
    /// Topic names interned per direction before the sender starts the table over.
    public static let defaultMaxInternedTopics = 65_536

    enum FrameType: UInt8 {
        case hello = 1
        case reject = 2
        case batch = 3
        case ready = 4
    }

    enum Kind: UInt8 {
        case topic = 0, linkState, interest, uninterest, data, caughtUp, gap, resync, publish, ack, credit, presence, epochSwitch
        case heartbeat, topicsReset, follow, unfollow, replicated, heartbeatReply, trace, presenceDigest, recover, recovered
    }

    /// The largest frame accepted, in bytes.
    public let maxFrameBytes: Int
    /// Whether batches are compressed.
    public let compress: Bool
    /// The most topic names interned per direction: the sender starts its table over past it,
    /// and a receiver asked to hold more resets the link.
    public let maxInternedTopics: Int

    private var compressor = LZ4StreamCompressor()
    private var decompressor = LZ4StreamDecompressor()
    private var sentTopics: [String: UInt32] = [:]
    private var receivedTopics: [UInt32: String] = [:]

    /// Bytes of batch bodies before compression, for metrics.
    public private(set) var rawBytesSent = 0
    /// Bytes of batch frames as sent, for metrics.
    public private(set) var wireBytesSent = 0

    /// A codec for one connection.
    public init(maxFrameBytes: Int = 8 * 1024 * 1024, compress: Bool = true, maxInternedTopics: Int = LinkCodec.defaultMaxInternedTopics) {
        self.maxFrameBytes = maxFrameBytes
        self.compress = compress
        self.maxInternedTopics = max(1, maxInternedTopics)
    }

    /// Topic names interned for sending and receiving (each bounded by `maxInternedTopics`).
    public var internedTopics: (sent: Int, received: Int) { (sentTopics.count, receivedTopics.count) }

    // MARK: Encoding

    /// Appends one frame to `out`.
    public func encode(_ frame: LinkFrame, into out: inout ByteBuffer) {
        let lengthIndex = out.writerIndex
        out.writeInteger(UInt32(0))
        switch frame {
        case .hello(let h):
            out.writeInteger(FrameType.hello.rawValue)
            out.writeInteger(h.version)
            writeString(h.mesh, &out)
            writeString(h.region, &out)
            writeString(h.topologyHash, &out)
        case .ready:
            out.writeInteger(FrameType.ready.rawValue)
        case .reject(let reason):
            out.writeInteger(FrameType.reject.rawValue)
            writeString(reason, &out)
        case .batch(let messages):
            out.writeInteger(FrameType.batch.rawValue)
            var body = BodyWriter(capacity: 64 + 192 * messages.count)
            body.writeInteger(UInt32(messages.count))
            for m in messages { encodeMessage(m, into: &body) }
            let raw = body.bytes
            rawBytesSent += raw.count
            if compress, let packed = compressor.compress(raw) {
                out.writeInteger(UInt8(1))
                out.writeInteger(UInt32(raw.count))
                out.writeBytes(packed)
            } else {
                out.writeInteger(UInt8(0))
                out.writeBytes(raw)
            }
        }
        let length = out.writerIndex - lengthIndex - 4
        out.setInteger(UInt32(length), at: lengthIndex)
        if case .batch = frame { wireBytesSent += length + 4 }
    }

    private func topicID(_ topic: String, _ out: inout BodyWriter) -> UInt32 {
        if let id = sentTopics[topic] { return id }
        if sentTopics.count >= maxInternedTopics {
            // Start the table over rather than let it grow for the life of the connection.
            sentTopics.removeAll(keepingCapacity: true)
            out.writeInteger(Kind.topicsReset.rawValue)
        }
        let id = UInt32(sentTopics.count + 1)
        sentTopics[topic] = id
        out.writeInteger(Kind.topic.rawValue)
        out.writeInteger(id)
        writeString(topic, &out)
        return id
    }

    private func encodeMessage(_ message: LinkMessage, into out: inout BodyWriter) {
        switch message {
        case .linkState(let origin, let incarnation, let sequence, let neighbours):
            out.writeInteger(Kind.linkState.rawValue)
            writeString(origin, &out)
            out.writeInteger(incarnation)
            out.writeInteger(sequence)
            out.writeInteger(UInt32(neighbours.count))
            for n in neighbours { writeString(n, &out) }
        case .interest(let topic, let since, let fork):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.interest.rawValue)
            out.writeInteger(id)
            writePosition(since, &out)
            writePosition(fork, &out)
        case .epochSwitch(let topic, let from, let to):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.epochSwitch.rawValue)
            out.writeInteger(id)
            writePosition(from, &out)
            writePosition(to, &out)
        case .uninterest(let topic):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.uninterest.rawValue)
            out.writeInteger(id)
        case .data(let p):
            let id = topicID(p.topic, &out)
            out.writeInteger(Kind.data.rawValue)
            out.writeInteger(id)
            writePosition(p.position, &out)
            writeString(p.id, &out)
            writeOptional(p.user, &out)
            writeString(p.data, &out)
            // The receiver restamps its own acceptance time; what crosses is the home's sequencing time.
            out.writeInteger(p.sequencedAtWall)
            writePosition(p.firstPosition, &out)
            let hops = (p.trace ?? []).prefix(TraceHop.maxHops)
            out.writeInteger(UInt8(p.trace == nil ? 0 : 1 + hops.count))
            for hop in hops {
                writeString(hop.region, &out)
                out.writeInteger(UInt8(TraceHop.Step.allCases.firstIndex(of: hop.step)!))
                out.writeInteger(hop.at)
            }
        case .caughtUp(let topic, let position):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.caughtUp.rawValue)
            out.writeInteger(id)
            writePosition(position, &out)
        case .gap(let topic, let position, let reason):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.gap.rawValue)
            out.writeInteger(id)
            writePosition(position, &out)
            writeString(reason.rawValue, &out)
        case .resync(let topic):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.resync.rawValue)
            out.writeInteger(id)
        case .publish(let topic, let pid, let data, let user, let origin, let ref, let receivedAtWall, let firstAt):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.publish.rawValue)
            out.writeInteger(id)
            writeString(pid, &out)
            writeString(data, &out)
            writeOptional(user, &out)
            writeString(origin, &out)
            out.writeInteger(ref)
            out.writeInteger(receivedAtWall)
            writePosition(firstAt, &out)
        case .trace(let topic, let region, let home, let on):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.trace.rawValue)
            out.writeInteger(id)
            writeString(region, &out)
            writeString(home, &out)
            out.writeInteger(UInt8(on ? 1 : 0))
        case .ack(let origin, let ref, let topic, let result):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.ack.rawValue)
            writeString(origin, &out)
            out.writeInteger(ref)
            out.writeInteger(id)
            switch result {
            case .accepted(let position, let duplicate):
                out.writeInteger(UInt8(0))
                writePosition(position, &out)
                out.writeInteger(UInt8(duplicate ? 1 : 0))
            case .refused(let code, let message):
                out.writeInteger(UInt8(1))
                out.writeInteger(UInt16(code.rawValue))
                writeString(message, &out)
            }
        case .credit(let batches):
            out.writeInteger(Kind.credit.rawValue)
            out.writeInteger(UInt32(clamping: batches))
        case .heartbeat(let sentAt):
            out.writeInteger(Kind.heartbeat.rawValue)
            out.writeInteger(sentAt)
        case .heartbeatReply(let sentAt):
            out.writeInteger(Kind.heartbeatReply.rawValue)
            out.writeInteger(sentAt)
        case .follow(let topic, let replica, let home, let from):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.follow.rawValue)
            out.writeInteger(id)
            writeString(replica, &out)
            writeString(home, &out)
            writePosition(from, &out)
        case .unfollow(let topic, let replica):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.unfollow.rawValue)
            out.writeInteger(id)
            writeString(replica, &out)
        case .replicated(let topic, let epoch, let from, let to, let home):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.replicated.rawValue)
            out.writeInteger(id)
            writeString(epoch, &out)
            out.writeInteger(from)
            out.writeInteger(to)
            writeString(home, &out)
        case .recover(let topic, let home, let replica, let after):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.recover.rawValue)
            out.writeInteger(id)
            writeString(home, &out)
            writeString(replica, &out)
            writePosition(after, &out)
        case .recovered(let topic, let home, let replica, let publication, let position):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.recovered.rawValue)
            out.writeInteger(id)
            writeString(home, &out)
            writeString(replica, &out)
            writePosition(position, &out)
            if let p = publication {
                out.writeInteger(UInt8(1))
                writePosition(p.position, &out)
                writeString(p.id, &out)
                writeOptional(p.user, &out)
                writeString(p.data, &out)
                out.writeInteger(p.sequencedAtWall)
            } else {
                out.writeInteger(UInt8(0))
            }
        case .presenceDigest(let topic, let owners):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.presenceDigest.rawValue)
            out.writeInteger(id)
            out.writeInteger(UInt32(clamping: owners.count))
            for o in owners {
                writeString(o.owner, &out)
                out.writeInteger(o.incarnation)
                out.writeInteger(o.count)
                out.writeInteger(o.checksum)
            }
        case .presence(let topic, let owner, let incarnation, let sequence, let change, let towardsHome):
            let id = topicID(topic, &out)
            out.writeInteger(Kind.presence.rawValue)
            out.writeInteger(id)
            writeString(owner, &out)
            out.writeInteger(incarnation)
            out.writeInteger(sequence)
            out.writeInteger(UInt8(towardsHome ? 1 : 0))
            switch change {
            case .join(let e):
                out.writeInteger(UInt8(0))
                writeEntry(e, &out)
            case .leave(let client):
                out.writeInteger(UInt8(1))
                out.writeInteger(client.raw)
            case .snapshot(let entries):
                out.writeInteger(UInt8(2))
                out.writeInteger(UInt32(entries.count))
                for e in entries { writeEntry(e, &out) }
            }
        }
    }

    private func writeString(_ s: String, _ out: inout ByteBuffer) {
        out.writeInteger(UInt32(s.utf8.count))
        out.writeString(s)
    }

    private func writeString(_ s: String, _ out: inout BodyWriter) {
        out.writeInteger(UInt32(s.utf8.count))
        out.writeString(s)
    }

    private func writeEntry(_ e: PresenceEntry, _ out: inout BodyWriter) {
        out.writeInteger(e.client.raw)
        writeString(e.user, &out)
        writeString(e.region, &out)
    }

    private func readEntry(_ b: inout ByteBuffer) throws(LinkProtocolError) -> PresenceEntry {
        let client: UInt64 = try read(&b)
        return PresenceEntry(client: ClientID(client), user: try readString(&b), region: try readString(&b))
    }

    private func writeOptional(_ s: String?, _ out: inout BodyWriter) {
        if let s {
            out.writeInteger(UInt8(1))
            writeString(s, &out)
        } else {
            out.writeInteger(UInt8(0))
        }
    }

    private func writePosition(_ p: StreamPosition?, _ out: inout BodyWriter) {
        guard let p else {
            out.writeInteger(UInt8(0))
            return
        }
        out.writeInteger(UInt8(1))
        writeString(p.epoch, &out)
        out.writeInteger(p.offset)
    }

    private func writePosition(_ p: StreamPosition, _ out: inout BodyWriter) {
        writeString(p.epoch, &out)
        out.writeInteger(p.offset)
    }

    // MARK: Decoding

    /// Reads one whole frame from `buffer`, or returns nil (consuming nothing) when more bytes are needed.
    public func decode(_ buffer: inout ByteBuffer) throws(LinkProtocolError) -> LinkFrame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= 1, Int(length) <= maxFrameBytes else {
            throw LinkProtocolError("frame of \(length) bytes is outside 1...\(maxFrameBytes)")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        var frame = buffer.readSlice(length: Int(length))!
        let typeByte: UInt8 = try read(&frame)
        guard let type = FrameType(rawValue: typeByte) else { throw LinkProtocolError("unknown frame type \(typeByte)") }
        let result: LinkFrame
        switch type {
        case .hello:
            let version: UInt16 = try read(&frame)
            result = .hello(LinkHello(version: version, mesh: try readString(&frame), region: try readString(&frame), topologyHash: try readString(&frame)))
        case .ready:
            result = .ready
        case .reject:
            result = .reject(reason: try readString(&frame))
        case .batch:
            let flags: UInt8 = try read(&frame)
            var body: ByteBuffer
            if flags & 1 == 1 {
                let rawLength: UInt32 = try read(&frame)
                guard Int(rawLength) <= maxFrameBytes * 4 else { throw LinkProtocolError("batch claims \(rawLength) bytes uncompressed") }
                do {
                    body = ByteBuffer(bytes: try decompressor.decompress(Array(frame.readableBytesView), rawLength: Int(rawLength)))
                } catch {
                    throw LinkProtocolError("batch does not decompress: \(error)")
                }
                frame.moveReaderIndex(to: frame.writerIndex)
            } else {
                body = frame
                decompressor.acceptRaw(Array(frame.readableBytesView))
                frame.moveReaderIndex(to: frame.writerIndex)
            }
            result = .batch(try decodeBatch(&body))
        }
        guard frame.readableBytes == 0 else { throw LinkProtocolError("\(frame.readableBytes) stray bytes after a \(type) frame") }
        return result
    }

    private func decodeBatch(_ body: inout ByteBuffer) throws(LinkProtocolError) -> [LinkMessage] {
        let count: UInt32 = try read(&body)
        guard Int(count) <= body.readableBytes else { throw LinkProtocolError("batch claims \(count) entries in \(body.readableBytes) bytes") }
        var messages: [LinkMessage] = []
        messages.reserveCapacity(Int(count))
        while messages.count < Int(count) {
            let kindByte: UInt8 = try read(&body)
            guard let kind = Kind(rawValue: kindByte) else { throw LinkProtocolError("unknown entry kind \(kindByte)") }
            switch kind {
            case .topic:
                let id: UInt32 = try read(&body)
                let name = try readString(&body)
                if let problem = TopicName.problem(with: name) { throw LinkProtocolError("bad topic: \(problem)") }
                if receivedTopics[id] == nil, receivedTopics.count >= maxInternedTopics {
                    throw LinkProtocolError("peer interned more than \(maxInternedTopics) topics without starting over")
                }
                receivedTopics[id] = name
            case .topicsReset:
                receivedTopics.removeAll(keepingCapacity: true)
            case .heartbeat:
                messages.append(.heartbeat(sentAt: try read(&body)))
            case .heartbeatReply:
                messages.append(.heartbeatReply(sentAt: try read(&body)))
            case .follow:
                messages.append(.follow(topic: try readTopic(&body), replica: try readString(&body), home: try readString(&body),
                                        from: try readPosition(&body)))
            case .unfollow:
                messages.append(.unfollow(topic: try readTopic(&body), replica: try readString(&body)))
            case .trace:
                let topic = try readTopic(&body)
                let region = try readString(&body)
                let home = try readString(&body)
                let on: UInt8 = try read(&body)
                messages.append(.trace(topic: topic, region: region, home: home, on: on != 0))
            case .recover:
                let topic = try readTopic(&body)
                let home = try readString(&body)
                let replica = try readString(&body)
                messages.append(.recover(topic: topic, home: home, replica: replica, after: try readPosition(&body)))
            case .recovered:
                let topic = try readTopic(&body)
                let home = try readString(&body)
                let replica = try readString(&body)
                let position = try readOptionalPosition(&body)
                let has: UInt8 = try read(&body)
                var publication: Publication?
                if has != 0 {
                    let at = try readPosition(&body)
                    let id = try readString(&body)
                    let user = try readOptional(&body)
                    let data = try readString(&body)
                    publication = Publication(topic: topic, position: at, id: id, data: data, user: user, acceptedAt: .zero,
                                              sequencedAtWall: try read(&body))
                }
                messages.append(.recovered(topic: topic, home: home, replica: replica, publication: publication, position: position))
            case .presenceDigest:
                let topic = try readTopic(&body)
                let n: UInt32 = try read(&body)
                guard n <= 10_000 else { throw LinkProtocolError("presence digest lists \(n) owners") }
                var owners: [PresenceDigestEntry] = []
                for _ in 0..<n {
                    let owner = try readString(&body)
                    let incarnation: UInt64 = try read(&body)
                    let count: UInt32 = try read(&body)
                    owners.append(PresenceDigestEntry(owner: owner, incarnation: incarnation, count: count, checksum: try read(&body)))
                }
                messages.append(.presenceDigest(topic: topic, owners: owners))
            case .replicated:
                let topic = try readTopic(&body)
                let epoch = try readString(&body)
                let from: UInt64 = try read(&body)
                let to: UInt64 = try read(&body)
                guard from <= to else { throw LinkProtocolError("replicated range \(from)...\(to) runs backwards") }
                messages.append(.replicated(topic: topic, epoch: epoch, from: from, to: to, home: try readString(&body)))
            case .linkState:
                let origin = try readString(&body)
                let incarnation: UInt64 = try read(&body)
                let sequence: UInt64 = try read(&body)
                let n: UInt32 = try read(&body)
                guard n <= 10_000 else { throw LinkProtocolError("link state lists \(n) neighbours") }
                var neighbours: [String] = []
                for _ in 0..<n { neighbours.append(try readString(&body)) }
                messages.append(.linkState(origin: origin, incarnation: incarnation, sequence: sequence, neighbours: neighbours))
            case .interest:
                let topic = try readTopic(&body)
                let since = try readOptionalPosition(&body)
                messages.append(.interest(topic: topic, since: since, fork: try readOptionalPosition(&body)))
            case .epochSwitch:
                let topic = try readTopic(&body)
                let from = try readPosition(&body)
                messages.append(.epochSwitch(topic: topic, from: from, to: try readPosition(&body)))
            case .uninterest:
                messages.append(.uninterest(topic: try readTopic(&body)))
            case .data:
                let topic = try readTopic(&body)
                let position = try readPosition(&body)
                let id = try readString(&body)
                let user = try readOptional(&body)
                let data = try readString(&body)
                let sequencedAtWall: Int64 = try read(&body)
                let firstPosition = try readOptionalPosition(&body)
                let hopCount: UInt8 = try read(&body)
                var trace: [TraceHop]?
                if hopCount > 0 {
                    guard Int(hopCount) - 1 <= TraceHop.maxHops else { throw LinkProtocolError("a publication carries \(hopCount - 1) trace hops; at most \(TraceHop.maxHops) are allowed") }
                    var hops: [TraceHop] = []
                    for _ in 1..<hopCount {
                        let region = try readString(&body)
                        let stepIndex: UInt8 = try read(&body)
                        guard Int(stepIndex) < TraceHop.Step.allCases.count else { throw LinkProtocolError("unknown trace step \(stepIndex)") }
                        hops.append(TraceHop(region: region, step: TraceHop.Step.allCases[Int(stepIndex)], at: try read(&body)))
                    }
                    trace = hops
                }
                // Acceptance is restamped by the receiving relay on its own clock.
                messages.append(.data(Publication(topic: topic, position: position, id: id, data: data, user: user,
                                                  acceptedAt: .zero, sequencedAtWall: sequencedAtWall, trace: trace,
                                                  firstPosition: firstPosition)))
            case .caughtUp:
                let topic = try readTopic(&body)
                messages.append(.caughtUp(topic: topic, position: try readPosition(&body)))
            case .gap:
                let topic = try readTopic(&body)
                let position = try readPosition(&body)
                let reasonText = try readString(&body)
                guard let reason = RecoveryFailure(rawValue: reasonText) else { throw LinkProtocolError("unknown gap reason '\(reasonText)'") }
                messages.append(.gap(topic: topic, position: position, reason: reason))
            case .resync:
                messages.append(.resync(topic: try readTopic(&body)))
            case .publish:
                let topic = try readTopic(&body)
                let id = try readString(&body)
                let data = try readString(&body)
                let user = try readOptional(&body)
                let origin = try readString(&body)
                let ref: UInt64 = try read(&body)
                let receivedAtWall: Int64 = try read(&body)
                messages.append(.publish(topic: topic, id: id, data: data, user: user, origin: origin, ref: ref,
                                         receivedAtWall: receivedAtWall, firstAt: try readOptionalPosition(&body)))
            case .ack:
                let origin = try readString(&body)
                let ref: UInt64 = try read(&body)
                let topic = try readTopic(&body)
                let which: UInt8 = try read(&body)
                let result: PublishResult
                if which == 0 {
                    let position = try readPosition(&body)
                    let duplicate: UInt8 = try read(&body)
                    result = .accepted(position: position, duplicate: duplicate == 1)
                } else {
                    let codeValue: UInt16 = try read(&body)
                    guard let code = ErrorCode(rawValue: Int(codeValue)) else { throw LinkProtocolError("unknown error code \(codeValue)") }
                    result = .refused(code: code, message: try readString(&body))
                }
                messages.append(.ack(origin: origin, ref: ref, topic: topic, result: result))
            case .credit:
                let n: UInt32 = try read(&body)
                messages.append(.credit(batches: Int(n)))
            case .presence:
                let topic = try readTopic(&body)
                let owner = try readString(&body)
                let incarnation: UInt64 = try read(&body)
                let sequence: UInt64 = try read(&body)
                let towards: UInt8 = try read(&body)
                let which: UInt8 = try read(&body)
                let change: PresenceChange
                switch which {
                case 0: change = .join(try readEntry(&body))
                case 1:
                    let client: UInt64 = try read(&body)
                    change = .leave(ClientID(client))
                case 2:
                    let n: UInt32 = try read(&body)
                    guard Int(n) <= body.readableBytes else { throw LinkProtocolError("presence snapshot claims \(n) entries") }
                    var entries: [PresenceEntry] = []
                    for _ in 0..<n { entries.append(try readEntry(&body)) }
                    change = .snapshot(entries)
                default: throw LinkProtocolError("unknown presence change \(which)")
                }
                messages.append(.presence(topic: topic, owner: owner, incarnation: incarnation, sequence: sequence,
                                          change: change, towardsHome: towards == 1))
            }
        }
        guard body.readableBytes == 0 else { throw LinkProtocolError("\(body.readableBytes) stray bytes after a batch") }
        return messages
    }

    private func read<T: FixedWidthInteger>(_ b: inout ByteBuffer) throws(LinkProtocolError) -> T {
        guard let v = b.readInteger(as: T.self) else { throw LinkProtocolError("frame ends inside a field") }
        return v
    }

    private func readString(_ b: inout ByteBuffer) throws(LinkProtocolError) -> String {
        let n: UInt32 = try read(&b)
        guard Int(n) <= b.readableBytes, let s = b.readString(length: Int(n)) else { throw LinkProtocolError("string runs past the frame") }
        return s
    }

    private func readOptional(_ b: inout ByteBuffer) throws(LinkProtocolError) -> String? {
        let present: UInt8 = try read(&b)
        return present == 0 ? nil : try readString(&b)
    }

    private func readPosition(_ b: inout ByteBuffer) throws(LinkProtocolError) -> StreamPosition {
        let epoch = try readString(&b)
        let offset: UInt64 = try read(&b)
        return StreamPosition(epoch: epoch, offset: offset)
    }

    private func readOptionalPosition(_ b: inout ByteBuffer) throws(LinkProtocolError) -> StreamPosition? {
        let present: UInt8 = try read(&b)
        return present == 0 ? nil : try readPosition(&b)
    }

    private func readTopic(_ b: inout ByteBuffer) throws(LinkProtocolError) -> String {
        let id: UInt32 = try read(&b)
        guard let topic = receivedTopics[id] else { throw LinkProtocolError("topic id \(id) was never defined on this link") }
        return topic
    }
}

/// A batch body as it is written: bytes in an array, integers big-endian as `ByteBuffer` writes them.
/// An append to a local array is cheaper per field than a `ByteBuffer` write (each of which checks
/// exclusive access to the buffer's storage), and the compressor reads the array as it is.
struct BodyWriter {
    private(set) var bytes: [UInt8] = []

    init(capacity: Int) { bytes.reserveCapacity(capacity) }

    @inline(__always)
    mutating func writeInteger<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func writeString(_ s: String) {
        var s = s
        s.withUTF8 { bytes.append(contentsOf: $0) }
    }
}
