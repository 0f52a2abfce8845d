import Foundation
import Logging
import NIOCore
import Synchronization
import TernCore
import TernWire

/// What the runtime tells one connection's task to do.
enum ClientSignal: Sendable {
    /// Frames are waiting in the core's outbox.
    case flush
    /// Close the connection with this code after writing what is queued.
    case close(CloseCode)
    /// A long-poll is answered.
    case poll(PollReply)
    /// Time to send a keep-alive (SSE).
    case heartbeat
}

/// A connection the runtime writes to directly, on the connection's own event loop (WebSocket).
protocol ConnectionWriter: AnyObject, Sendable {
    /// The loop every call below runs on.
    var eventLoop: any EventLoop { get }
    /// Writes the frames and flushes once.
    func write(_ frames: [OutboundFrame])
    /// Writes the frames (not for a slow consumer), then a close frame with `code`, then closes.
    func finish(_ code: CloseCode, after frames: [OutboundFrame])
    /// Closes the connection at once (after a drain timed out); callable from any thread.
    func forceClose()
}

/// Frames for the writers of one event loop, handed over in one task.
private struct LoopWrites {
    enum Item {
        case write(any ConnectionWriter, [OutboundFrame])
        case finish(any ConnectionWriter, CloseCode, [OutboundFrame])
    }
    let loop: any EventLoop
    var items: [Item]

    func run(_ runtime: RelayRuntime) {
        var written = 0
        // Latency is observed once per publication per hand-over: the connections of one loop
        // write it within microseconds of each other, and one histogram update per delivery
        // would cost more than the delivery.
        var timed: [OutboundFrame] = []
        var seen = Set<Int64>()
        for item in items {
            let frames: [OutboundFrame]
            switch item {
            case .write(let writer, let f):
                writer.write(f)
                frames = f
            case .finish(let writer, let code, let f):
                writer.finish(code, after: f)
                frames = f
            }
            written += frames.count
            for frame in frames {
                if let accepted = frame.acceptedAt, seen.insert(accepted.nanoseconds).inserted { timed.append(frame) }
            }
        }
        runtime.recordWritten(count: written, timed: timed)
    }

    /// Adds `item` to the batch of its writer's loop.
    static func add(_ item: Item, writer: any ConnectionWriter, to batches: inout [LoopWrites]) {
        let loop = writer.eventLoop
        if let i = batches.firstIndex(where: { $0.loop === loop }) {
            batches[i].items.append(item)
        } else {
            batches.append(LoopWrites(loop: loop, items: [item]))
        }
    }
}

/// The driver's shared state: the relay core behind a lock, a signal channel per SSE or
/// long-poll connection and a writer per WebSocket. It only translates: events in, actions out.
///
/// After each event, the frames the core queued for WebSockets are taken while the lock is held
/// and handed to their connections' event loops, one task per loop for all of them; each
/// connection writes its frames with one flush. A connection whose socket is full is skipped
/// until it drains, so its frames wait in the core's bounded queue.
final class RelayRuntime: Sendable {
    private struct State: ~Copyable {
        var core: RelayCore
        var sinks: [ClientID: AsyncStream<ClientSignal>.Continuation] = [:]
        var writers: [ClientID: (writer: any ConnectionWriter, writable: Bool)] = [:]
        /// WebSockets with frames queued in the core since the last hand-over, in order.
        var pendingWrites: [ClientID] = []
        /// Connections closed since the relay started.
        var closedConnections = 0
        var forceClosers: [ClientID: @Sendable (CloseCode) -> Void] = [:]
        var linkSenders: [String: @Sendable ([LinkMessage]) -> Void] = [:]
        var linkResetters: [String: @Sendable (String) -> Void] = [:]
        var apiWaiters: [UInt64: CheckedContinuation<Result<ReplyBody, TernError>, Never>] = [:]
        var nextAPIRequest: UInt64 = 1
        var nextClient: UInt64 = 1
        var lastStats = RelayStats()
        var reportedInvariantFailures = 0
    }

    private let state: Mutex<State>
    private let clock = ContinuousClock()
    private let origin: ContinuousClock.Instant
    let metrics: RelayMetrics
    let limits: RelayLimits
    let invariantLogger = Logger(label: "tern.core")

    init(config: RelayCoreConfig, seed: UInt64, metrics: RelayMetrics) {
        let origin = clock.now
        self.origin = origin
        self.metrics = metrics
        self.limits = config.limits
        self.state = Mutex(State(core: RelayCore(config: config, encoder: JSONServerEncoder(), seed: seed, now: .zero)))
    }

    /// Now, on the core's timeline.
    func now() -> TernInstant { TernInstant(nanoseconds: (clock.now - origin).ternNanoseconds) }

    /// The system's wall clock, in nanoseconds since the Unix epoch.
    static func wallNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec)
    }

    /// Converts a core instant back to the clock's.
    func instant(_ t: TernInstant) -> ContinuousClock.Instant { origin + .nanoseconds(t.nanoseconds) }

    /// Registers a new connection and returns its id and signal stream.
    ///
    /// `forceClose` ends the connection without waiting on its writer; it is
    /// used for slow consumers, whose writer is stuck behind a full socket.
    func register(forceClose: (@Sendable (CloseCode) -> Void)? = nil) -> (ClientID, AsyncStream<ClientSignal>) {
        let (stream, continuation) = AsyncStream<ClientSignal>.makeStream(bufferingPolicy: .unbounded)
        let id = state.withLock { state in
            let id = ClientID(state.nextClient)
            state.nextClient += 1
            state.sinks[id] = continuation
            state.forceClosers[id] = forceClose
            return id
        }
        return (id, stream)
    }

    /// Registers a WebSocket whose frames the runtime writes itself.
    func registerWriter(_ writer: any ConnectionWriter, writable: Bool) -> ClientID {
        state.withLock { state in
            let id = ClientID(state.nextClient)
            state.nextClient += 1
            state.writers[id] = (writer, writable)
            return id
        }
    }

    /// A WebSocket's socket filled up (false) or drained (true); on drain, what waited is written.
    func setWritable(_ client: ClientID, _ writable: Bool) {
        let batches = state.withLock { state -> [LoopWrites] in
            guard let entry = state.writers[client] else { return [] }
            state.writers[client]!.writable = writable
            guard writable else { return [] }
            let frames = state.core.takeOutbound(client, maxBytes: .max)
            guard !frames.isEmpty else { return [] }
            metrics.queueBytes.set(Int64(state.core.queuedBytes))
            return [LoopWrites(loop: entry.writer.eventLoop, items: [.write(entry.writer, frames)])]
        }
        for batch in batches { batch.loop.execute { batch.run(self) } }
    }

    /// Publishes for a backend; the answer may come from another region.
    func apiPublish(topic: String, id: String, data: String) async -> Result<ReplyBody, TernError> {
        await withCheckedContinuation { continuation in
            let request = state.withLock { s in
                defer { s.nextAPIRequest += 1 }
                s.apiWaiters[s.nextAPIRequest] = continuation
                return s.nextAPIRequest
            }
            handle(.apiPublish(request: request, topic: topic, id: id, data: data))
        }
    }

    /// Routes the core's batches for `peer` to a link connection.
    /// `reset` closes the connection when the core finds the link dead; it must not call back into the runtime inline.
    func attachLink(_ peer: String, send: @escaping @Sendable ([LinkMessage]) -> Void, reset: @escaping @Sendable (String) -> Void) {
        state.withLock {
            $0.linkSenders[peer] = send
            $0.linkResetters[peer] = reset
        }
    }

    /// Stops routing batches to `peer`.
    func detachLink(_ peer: String) {
        state.withLock {
            _ = $0.linkSenders.removeValue(forKey: peer)
            _ = $0.linkResetters.removeValue(forKey: peer)
        }
    }

    /// Link counters from the core, by neighbour.
    var linkCounters: [String: LinkCounters] { state.withLock { $0.core.linkCounters } }

    /// The core's home for a topic.
    func home(of topic: String) -> String { state.withLock { $0.core.home(of: topic) } }

    /// The smoothed round-trip time of each up link.
    var linkRoundTrips: [String: Duration] { state.withLock { $0.core.linkRoundTrips } }
    var linkQueues: [String: LinkQueueDepth] { state.withLock { $0.core.linkQueues } }

    /// Neighbours with an up link.
    var upLinks: [String] { state.withLock { $0.core.upLinks } }

    /// Sends a signal to one connection's task.
    func signal(_ client: ClientID, _ signal: ClientSignal) {
        state.withLock { _ = $0.sinks[client]?.yield(signal) }
    }

    /// Ends every remaining connection at once (after a drain timed out).
    func forceCloseAll(_ code: CloseCode) {
        let (closers, writers) = state.withLock { (Array($0.forceClosers.values), $0.writers.values.map(\.writer)) }
        for close in closers { close(code) }
        for writer in writers { writer.forceClose() }
    }

    /// Feeds one event to the core, signals the affected connections and
    /// returns the actions the caller itself must carry out (token checks,
    /// API replies).
    /// `deferWrites` leaves the frames for WebSockets queued until `dispatchWrites()`: a connection
    /// reading a run of commands (a publisher sending many) calls it once the run is read, so each
    /// subscriber gets everything from the run in one write.
    @discardableResult
    func handle(_ event: RelayEvent, deferWrites: Bool = false) -> [RelayAction] {
        let now = self.now()
        var closes: [(@Sendable (CloseCode) -> Void, CloseCode)] = []
        var batches: [LoopWrites] = []
        defer {
            for (close, code) in closes { close(code) }
            // Never run inline, even on the writer's own loop: frames handed over earlier in a task
            // on that loop must be written first.
            for batch in batches { batch.loop.execute { batch.run(self) } }
        }
        return state.withLock { state in
            // The wall clock is read here, never in the core; re-read per event so a stepped clock is followed.
            state.core.wallClockOffset = Self.wallNanoseconds() &- now.nanoseconds
            let actions = state.core.handle(event, now: now)
            if Self.traceFile != nil { trace(event, actions, region: state.core.config.region) }
            var callerActions: [RelayAction] = []
            for action in actions {
                switch action {
                case .flush(let client):
                    if state.writers[client] != nil {
                        state.pendingWrites.append(client)
                    } else {
                        state.sinks[client]?.yield(.flush)
                    }
                case .close(let client, let code):
                    if let entry = state.writers[client] {
                        let frames = code == .slowConsumer ? [] : state.core.takeOutbound(client, maxBytes: .max)
                        LoopWrites.add(.finish(entry.writer, code, frames), writer: entry.writer, to: &batches)
                        continue
                    }
                    state.sinks[client]?.yield(.close(code))
                    if let close = state.forceClosers[client] { closes.append((close, code)) }
                case .pollReply(let client, let reply):
                    state.sinks[client]?.yield(.poll(reply))
                case .sendLink(let peer, let batch):
                    // Sent under the lock so batches reach the channel in the order the core produced them.
                    state.linkSenders[peer]?(batch)
                case .resetLink(let peer, let reason):
                    // The core already counts the link as down; nothing more goes to this connection.
                    state.linkSenders[peer] = nil
                    state.linkResetters.removeValue(forKey: peer)?(reason)
                case .apiReply(let request, let result):
                    state.apiWaiters.removeValue(forKey: request)?.resume(returning: result)
                case .verifyToken:
                    callerActions.append(action)
                }
            }
            if !deferWrites { Self.collectWrites(&state, into: &batches) }
            if state.core.invariantFailureCount > state.reportedInvariantFailures {
                for failure in state.core.invariantFailures.dropFirst(state.reportedInvariantFailures) {
                    invariantLogger.error("relay core invariant broken", metadata: ["failure": "\(failure)"])
                }
                state.reportedInvariantFailures = state.core.invariantFailureCount
            }
            let stats = state.core.stats
            if stats != state.lastStats {
                metrics.update(from: stats, previous: state.lastStats, queued: state.core.queuedBytes)
                state.lastStats = stats
            }
            return callerActions
        }
    }

    /// Hands the frames queued for WebSockets to their event loops (after `handle(_:deferWrites: true)`).
    func dispatchWrites() {
        var batches: [LoopWrites] = []
        state.withLock { state in
            guard !state.pendingWrites.isEmpty else { return }
            Self.collectWrites(&state, into: &batches)
            metrics.queueBytes.set(Int64(state.core.queuedBytes))
        }
        for batch in batches { batch.loop.execute { batch.run(self) } }
    }

    /// Takes the frames of every pending WebSocket whose socket can take them; the others keep
    /// theirs in the core's queue until they drain (`setWritable`).
    private static func collectWrites(_ state: inout State, into batches: inout [LoopWrites]) {
        guard !state.pendingWrites.isEmpty else { return }
        for client in state.pendingWrites {
            guard let entry = state.writers[client], entry.writable else { continue }
            let frames = state.core.takeOutbound(client, maxBytes: .max)
            if !frames.isEmpty { LoopWrites.add(.write(entry.writer, frames), writer: entry.writer, to: &batches) }
        }
        state.pendingWrites.removeAll(keepingCapacity: true)
    }

    /// Where to append a line per mesh event and action (`TERN_TRACE_FILE`), for debugging.
    static let traceFile: String? = ProcessInfo.processInfo.environment["TERN_TRACE_FILE"]

    private func trace(_ event: RelayEvent, _ actions: [RelayAction], region: String) {
        var lines: [String] = []
        switch event {
        case .linkBatch(let peer, let batch):
            let shown = batch.filter { switch $0 { case .credit, .heartbeat, .heartbeatReply, .linkState: false; default: true } }
            if !shown.isEmpty { lines.append("\(region) <- \(peer): \(shown)") }
        case .apiPublish, .linkUp, .linkDown: lines.append("\(region) event \(event)")
        default: break
        }
        for action in actions {
            switch action {
            case .sendLink(let peer, let batch):
                let shown = batch.filter { switch $0 { case .credit, .heartbeat, .heartbeatReply, .linkState: false; default: true } }
                if !shown.isEmpty { lines.append("\(region) -> \(peer): \(shown)") }
            case .apiReply: lines.append("\(region) action \(action)")
            default: break
            }
        }
        guard !lines.isEmpty, let path = Self.traceFile, let data = (lines.joined(separator: "\n") + "\n").data(using: .utf8) else { return }
        if let handle = FileHandle(forWritingAtPath: path) {
            handle.seekToEndOfFile()
            handle.write(data)
            try? handle.close()
        } else {
            FileManager.default.createFile(atPath: path, contents: data)
        }
    }

    /// Removes a finished connection.
    func unregister(_ client: ClientID) {
        handle(.closed(client))
        state.withLock { state in
            state.sinks.removeValue(forKey: client)?.finish()
            state.forceClosers[client] = nil
            state.writers[client] = nil
            state.closedConnections += 1
        }
    }

    /// Takes the frames queued for a connection.
    func takeOutbound(_ client: ClientID) -> [OutboundFrame] {
        state.withLock { state in
            let frames = state.core.takeOutbound(client)
            metrics.queueBytes.set(Int64(state.core.queuedBytes))
            return frames
        }
    }

    /// Records that frames were written, for delivery metrics.
    func recordWritten(_ frames: [OutboundFrame]) {
        recordWritten(count: frames.count, timed: frames)
    }

    /// Records `count` frames written, and the latencies of `timed` (a sample of them).
    func recordWritten(count: Int, timed: [OutboundFrame]) {
        guard count > 0 else { return }
        let now = self.now()
        metrics.deliveries.increment(by: Int64(count))
        let wall = Self.wallNanoseconds()
        for frame in timed {
            if let accepted = frame.acceptedAt { metrics.publishToDeliver.record(now - accepted) }
            // Across regions this includes the clock skew between the home and this relay (clamped at zero).
            if frame.sequencedAtWall != 0 { metrics.homeToDeliver.record(.nanoseconds(max(0, wall &- frame.sequencedAtWall))) }
        }
    }

    /// Whether the core is draining.
    var draining: Bool { state.withLock { $0.core.draining } }

    /// When the core next needs a tick.
    var nextDeadline: TernInstant? { state.withLock { $0.core.nextDeadline } }

    /// Open connections and bytes queued for clients, as the core counts them.
    var load: (closedConnections: Int, queuedBytes: Int, deliveries: Int) {
        state.withLock { ($0.closedConnections, $0.core.queuedBytes, $0.core.stats.deliveries) }
    }

    /// Open connections, as the core counts them.
    var connectionCount: Int { state.withLock { $0.core.stats.connections } }

    /// Open connection tasks, whether or not the core counts them.
    var openSinks: Int { state.withLock { $0.sinks.count + $0.writers.count } }
}
