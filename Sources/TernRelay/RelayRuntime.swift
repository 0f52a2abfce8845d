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
    /// Adds a frame to what goes out at the next `flushAppended`; true if it is the first since
    /// the last flush, so the caller knows to flush this writer.
    func append(_ frame: OutboundFrame) -> Bool
    /// Writes what was appended as one buffer, and flushes.
    func flushAppended()
    /// Writes what was appended, then the frames (not for a slow consumer), then a close frame
    /// with `code`, then closes.
    func finish(_ code: CloseCode, after frames: [OutboundFrame])
    /// Closes the connection at once (after a drain timed out); callable from any thread.
    func forceClose()
}

/// The WebSockets of one event loop, each under its client id. Read and changed only on that loop,
/// so handing frames to them needs no lock and no reference to each writer on the core's side.
final class LoopWriters: @unchecked Sendable {
    let loop: any EventLoop
    /// The loop's number, kept in the low bits of its connections' client ids.
    let slot: UInt64
    private var writers: [ClientID: any ConnectionWriter] = [:]

    init(loop: any EventLoop, slot: UInt64) {
        self.loop = loop
        self.slot = slot
    }

    subscript(client: ClientID) -> (any ConnectionWriter)? {
        loop.assertInEventLoop()
        return writers[client]
    }

    func add(_ client: ClientID, _ writer: any ConnectionWriter) {
        loop.preconditionInEventLoop()
        writers[client] = writer
    }

    func remove(_ client: ClientID) {
        loop.preconditionInEventLoop()
        writers[client] = nil
    }

    /// Closes every connection of the loop at once; callable from any thread.
    func forceCloseAll() {
        loop.execute { for writer in self.writers.values { writer.forceClose() } }
    }
}

/// Frames for the writers of one event loop, handed over in one task.
private struct LoopWrites {
    enum Item {
        /// One frame for several connections (a publication's fan-out), its buffer shared.
        case shared(OutboundFrame, [ClientID])
        /// Frames taken from one connection's queue.
        case frames(ClientID, [OutboundFrame])
        case finish(ClientID, CloseCode, [OutboundFrame])
    }
    let writers: LoopWriters
    var items: [Item] = []

    /// Writes every item in order; each connection is flushed once, after the last of its frames.
    /// A connection gone since the frames were handed over is skipped.
    func run(_ runtime: RelayRuntime) {
        var written = 0
        var touched: [any ConnectionWriter] = []
        // Latency is observed once per publication per hand-over: the connections of one loop
        // write it within microseconds of each other, and one histogram update per delivery
        // would cost more than the delivery.
        var timed: [OutboundFrame] = []
        var seen = Set<Int64>()
        func time(_ frame: OutboundFrame) {
            if let accepted = frame.acceptedAt, seen.insert(accepted.nanoseconds).inserted { timed.append(frame) }
        }
        for item in items {
            switch item {
            case .shared(let frame, let clients):
                for client in clients {
                    guard let writer = writers[client] else { continue }
                    if writer.append(frame) { touched.append(writer) }
                    written += 1
                }
                time(frame)
            case .frames(let client, let frames):
                guard let writer = writers[client] else { continue }
                for frame in frames where writer.append(frame) { touched.append(writer) }
                written += frames.count
                frames.forEach(time)
            case .finish(let client, let code, let frames):
                guard let writer = writers[client] else { continue }
                writer.finish(code, after: frames)
                written += frames.count
                frames.forEach(time)
            }
        }
        for writer in touched { writer.flushAppended() }
        runtime.recordWritten(count: written, timed: timed)
    }

    /// Hands the batch to its loop. Called with the runtime's lock held: two threads handing frames
    /// for one connection to its loop must submit them in the order the core produced them, and
    /// a thread that released the lock first could otherwise submit last. Never run inline, even
    /// on the writer's own loop: frames handed over earlier in a task on that loop must be written first.
    func submit(_ runtime: RelayRuntime) {
        let batch = self
        writers.loop.execute { batch.run(runtime) }
    }
}

/// The driver's shared state: the relay core behind a lock, a signal channel per SSE or
/// long-poll connection and a writer per WebSocket. It only translates: events in, actions out.
///
/// After each event (or each run of a connection's commands), the frames the core wrote to
/// WebSockets, and those it flushed from their queues, are handed to their connections' event
/// loops while the lock is held: one task per loop for all of them, a publication's buffer shared
/// by all its subscribers there, and each connection writing everything with one flush. The core
/// knows which sockets are full (`writable` events) and queues their frames, bounded, until they drain.
final class RelayRuntime: Sendable {
    private struct State: ~Copyable {
        var core: RelayCore
        var sinks: [ClientID: AsyncStream<ClientSignal>.Continuation] = [:]
        /// The WebSockets of each event loop, by slot (the low bits of their client ids).
        var loops: [LoopWriters] = []
        var openWriters = 0
        /// A `dispatchWrites` is scheduled for drained sockets (`setWritable`).
        var dispatchScheduled = false
        /// WebSockets whose queues the core flushed since the last hand-over, in order.
        var pendingWrites: [ClientID] = []
        /// Frames for WebSockets since the last hand-over, by loop slot, in the core's order.
        var handOver: [LoopWrites] = []

        /// The loop table of a WebSocket's client id; nil for SSE and long-poll connections.
        func loop(of client: ClientID) -> LoopWriters? {
            let slot = Int(client.raw & RelayRuntime.slotMask)
            return slot < loops.count ? loops[slot] : nil
        }

        /// Adds an item to the hand-over batch of a loop.
        mutating func hand(_ item: LoopWrites.Item, to writers: LoopWriters) {
            let slot = Int(writers.slot)
            while handOver.count <= slot { handOver.append(LoopWrites(writers: loops[handOver.count])) }
            handOver[slot].items.append(item)
        }
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
            // The sink slot: no loop writes to it, the connection's task takes its frames.
            let id = ClientID(state.nextClient << Self.slotBits | Self.sinkSlot)
            state.nextClient += 1
            state.sinks[id] = continuation
            state.forceClosers[id] = forceClose
            return id
        }
        return (id, stream)
    }

    /// Registers a WebSocket whose frames the runtime writes itself.
    /// Called on the writer's event loop; its id carries the loop's slot in its low bits.
    func registerWriter(_ writer: any ConnectionWriter) -> ClientID {
        let loop = writer.eventLoop
        let (id, table) = state.withLock { state in
            let table: LoopWriters
            if let known = state.loops.first(where: { $0.loop === loop }) {
                table = known
            } else {
                // `tern relay --event-loops` is checked against `maxEventLoops`; a default group has one per core.
                precondition(UInt64(state.loops.count) < Self.sinkSlot, "more than \(Self.maxEventLoops) event loops")
                table = LoopWriters(loop: loop, slot: UInt64(state.loops.count))
                state.loops.append(table)
            }
            let id = ClientID(state.nextClient << Self.slotBits | table.slot)
            state.nextClient += 1
            state.openWriters += 1
            return (id, table)
        }
        table.add(id, writer)
        return id
    }

    /// The low bits of a client id that name its event loop's slot.
    static let slotBits: UInt64 = 12
    static let slotMask: UInt64 = 1 << slotBits - 1
    /// The slot of SSE and long-poll connections (no loop writes to them).
    private static let sinkSlot: UInt64 = slotMask
    /// The most event loops whose connections the runtime can tell apart.
    static let maxEventLoops = Int(sinkSlot)

    /// A WebSocket's socket filled up (false) or drained (true); on drain, what waited is written.
    ///
    /// Called on the connection's loop. What waited is handed over at the end of the loop's current
    /// round of events, together with whatever else is ready by then: when many sockets drain at
    /// once, and while a publisher's run of commands is being read, one hand-over serves them all
    /// rather than one each.
    func setWritable(_ client: ClientID, _ writable: Bool, on loop: any EventLoop) {
        handle(.writable(client, writable), deferWrites: true)
        guard writable else { return }
        let schedule = state.withLock { state in
            defer { state.dispatchScheduled = true }
            return !state.dispatchScheduled
        }
        if schedule { loop.execute { self.dispatchWrites() } }
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

    /// Regions no route reaches now.
    var unreachableRegions: [String] { state.withLock { $0.core.unreachableRegions } }

    /// Sends a signal to one connection's task.
    func signal(_ client: ClientID, _ signal: ClientSignal) {
        state.withLock { _ = $0.sinks[client]?.yield(signal) }
    }

    /// Ends every remaining connection at once (after a drain timed out).
    func forceCloseAll(_ code: CloseCode) {
        let (closers, loops) = state.withLock { (Array($0.forceClosers.values), $0.loops) }
        for close in closers { close(code) }
        for loop in loops { loop.forceCloseAll() }
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
        defer {
            for (close, code) in closes { close(code) }
        }
        return state.withLock { state in
            // The wall clock is read here, never in the core; re-read per event so a stepped clock is followed.
            state.core.wallClockOffset = Self.wallNanoseconds() &- now.nanoseconds
            let actions = state.core.handle(event, now: now)
            if Self.traceFile != nil { trace(event, actions, region: state.core.config.region) }
            var callerActions: [RelayAction] = []
            for action in actions {
                switch action {
                case .write(let frame, let clients):
                    Self.hand(frame, to: clients, &state)
                case .flush(let client):
                    if state.loop(of: client) != nil {
                        state.pendingWrites.append(client)
                    } else {
                        state.sinks[client]?.yield(.flush)
                    }
                case .close(let client, let code):
                    if let loop = state.loop(of: client) {
                        let frames = code == .slowConsumer ? [] : state.core.takeOutbound(client, maxBytes: .max)
                        state.hand(.finish(client, code, frames), to: loop)
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
            if !deferWrites { handOver(&state) }
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
        state.withLock { handOver(&$0) }
    }

    /// Takes the queues the core flushed, then hands everything gathered for WebSockets to their
    /// loops. Under the lock, so that every loop gets its tasks in the core's order.
    private func handOver(_ state: inout State) {
        state.dispatchScheduled = false
        if !state.pendingWrites.isEmpty {
            for client in state.pendingWrites {
                guard let loop = state.loop(of: client) else { continue }
                let frames = state.core.takeOutbound(client, maxBytes: .max)
                if !frames.isEmpty { state.hand(.frames(client, frames), to: loop) }
            }
            state.pendingWrites.removeAll(keepingCapacity: true)
            metrics.queueBytes.set(Int64(state.core.queuedBytes))
        }
        for i in state.handOver.indices where !state.handOver[i].items.isEmpty {
            state.handOver[i].submit(self)
            state.handOver[i].items = []
        }
    }

    /// Splits a frame's clients by loop, one shared item per loop, keeping their order.
    private static func hand(_ frame: OutboundFrame, to clients: [ClientID], _ state: inout State) {
        let loops = state.loops.count
        guard loops > 0 else { return }
        if loops == 1 {
            // Only WebSockets are written to directly, and every WebSocket has a writer.
            state.hand(.shared(frame, clients), to: state.loops[0])
            return
        }
        var bySlot = [[ClientID]](repeating: [], count: loops)
        for client in clients {
            let slot = Int(client.raw & slotMask)
            if slot < loops { bySlot[slot].append(client) }
        }
        for slot in 0..<loops where !bySlot[slot].isEmpty {
            state.hand(.shared(frame, bySlot[slot]), to: state.loops[slot])
        }
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
            _ = FileManager.default.createFile(atPath: path, contents: data)
        }
    }

    /// Removes a finished connection.
    func unregister(_ client: ClientID) {
        handle(.closed(client))
        state.withLock { state in
            state.sinks.removeValue(forKey: client)?.finish()
            state.forceClosers[client] = nil
            if let loop = state.loop(of: client) {
                // Called on the connection's own loop (`channelInactive`).
                loop.remove(client)
                state.openWriters -= 1
            }
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
    var openSinks: Int { state.withLock { $0.sinks.count + $0.openWriters } }
}
