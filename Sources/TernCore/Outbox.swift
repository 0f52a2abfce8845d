import DequeModule
import NIOCore

/// One frame queued for a client.
public struct OutboundFrame: Sendable {
    /// The encoded bytes; shared between every subscriber of a publication.
    public var bytes: ByteBuffer
    /// When the publication was accepted, for publish→deliver latency (nil for other messages).
    public var acceptedAt: TernInstant?
    /// When the home sequenced the publication, by the home's wall clock (0 for other messages),
    /// for the home→delivery latency.
    public var sequencedAtWall: Int64

    /// A frame of `bytes`, stamped with the publication's acceptance and sequencing times when it carries one.
    public init(bytes: ByteBuffer, acceptedAt: TernInstant?, sequencedAtWall: Int64 = 0) {
        self.bytes = bytes
        self.acceptedAt = acceptedAt
        self.sequencedAtWall = sequencedAtWall
    }
}

/// A per-client send queue bounded in bytes.
///
/// Under pressure (more than half full) volatile events with the same key
/// are coalesced, keeping only the newest. Past the limit, queued volatile
/// events are dropped, and if that is not enough the client must be closed
/// as a slow consumer.
public struct Outbox: Sendable {
    private struct Entry: Sendable {
        var frame: OutboundFrame?
        var size: Int
        var volatileKey: String?
    }

    /// What happened to a frame offered to the queue.
    public enum Outcome: Equatable, Sendable {
        case queued
        case coalesced
        case droppedVolatile
        case overflow
    }

    /// The byte limit.
    public let maxBytes: Int
    /// Bytes queued and not yet taken by the driver.
    public private(set) var queuedBytes = 0
    /// Volatile frames dropped or replaced so far.
    public private(set) var shedVolatile = 0
    private var entries: Deque<Entry> = []
    private var headSequence = 0
    private var volatileSlots: [String: Int] = [:]

    /// An empty queue holding at most `maxBytes`.
    public init(maxBytes: Int) { self.maxBytes = maxBytes }

    /// Whether nothing is queued.
    public var isEmpty: Bool { queuedBytes == 0 && entries.allSatisfy { $0.frame == nil } }

    /// Offers a frame; `volatileKey` marks it volatile and names what it may replace.
    public mutating func enqueue(_ frame: OutboundFrame, volatileKey: String? = nil) -> Outcome {
        let size = frame.bytes.readableBytes
        let underPressure = queuedBytes + size > maxBytes / 2
        if let key = volatileKey, underPressure, let sequence = volatileSlots[key] {
            let i = sequence - headSequence
            if i >= 0, i < entries.count, entries[i].frame != nil {
                queuedBytes -= entries[i].size
                entries[i].frame = nil
                entries[i].size = 0
                shedVolatile += 1
                append(Entry(frame: frame, size: size, volatileKey: key))
                return .coalesced
            }
        }
        if queuedBytes + size > maxBytes {
            dropQueuedVolatile()
            if volatileKey != nil {
                shedVolatile += 1
                return .droppedVolatile
            }
            if queuedBytes + size > maxBytes { return .overflow }
        }
        append(Entry(frame: frame, size: size, volatileKey: volatileKey))
        return .queued
    }

    /// Takes up to `maxBytes` of frames (at least one), oldest first, giving each to `body`.
    public mutating func take(maxBytes limit: Int = .max, _ body: (OutboundFrame) -> Void) {
        var taken = 0
        var any = false
        while let first = entries.first {
            if first.frame != nil, any, taken + first.size > limit { break }
            entries.removeFirst()
            headSequence += 1
            if let key = first.volatileKey, volatileSlots[key] == headSequence - 1 { volatileSlots[key] = nil }
            guard let frame = first.frame else { continue }
            queuedBytes -= first.size
            taken += first.size
            any = true
            body(frame)
        }
    }

    /// Empties the queue.
    public mutating func removeAll() {
        headSequence += entries.count
        entries.removeAll()
        volatileSlots.removeAll()
        queuedBytes = 0
    }

    private mutating func append(_ entry: Entry) {
        if let key = entry.volatileKey { volatileSlots[key] = headSequence + entries.count }
        entries.append(entry)
        queuedBytes += entry.size
    }

    private mutating func dropQueuedVolatile() {
        for i in entries.indices where entries[i].volatileKey != nil && entries[i].frame != nil {
            queuedBytes -= entries[i].size
            entries[i].frame = nil
            entries[i].size = 0
            shedVolatile += 1
        }
        volatileSlots.removeAll()
    }
}
