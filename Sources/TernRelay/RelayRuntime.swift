import Foundation
import Logging
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

/// The driver's shared state: the relay core behind a lock, and a signal
/// channel per connection. It only translates: events in, actions out.
final class RelayRuntime: Sendable {
    private struct State: ~Copyable {
        var core: RelayCore
        var sinks: [ClientID: AsyncStream<ClientSignal>.Continuation] = [:]
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
        let closers = state.withLock { Array($0.forceClosers.values) }
        for close in closers { close(code) }
    }

    /// Feeds one event to the core, signals the affected connections and
    /// returns the actions the caller itself must carry out (token checks,
    /// API replies).
    @discardableResult
    func handle(_ event: RelayEvent) -> [RelayAction] {
        let now = self.now()
        var closes: [(@Sendable (CloseCode) -> Void, CloseCode)] = []
        defer { for (close, code) in closes { close(code) } }
        return state.withLock { state in
            // The wall clock is read here, never in the core; re-read per event so a stepped clock is followed.
            state.core.wallClockOffset = Self.wallNanoseconds() &- now.nanoseconds
            let actions = state.core.handle(event, now: now)
            if Self.traceFile != nil { trace(event, actions, region: state.core.config.region) }
            var callerActions: [RelayAction] = []
            for action in actions {
                switch action {
                case .flush(let client):
                    state.sinks[client]?.yield(.flush)
                case .close(let client, let code):
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
        let now = self.now()
        metrics.deliveries.increment(by: Int64(frames.count))
        let wall = Self.wallNanoseconds()
        for frame in frames {
            if let accepted = frame.acceptedAt { metrics.publishToDeliver.record(now - accepted) }
            // Across regions this includes the clock skew between the home and this relay (clamped at zero).
            if frame.sequencedAtWall != 0 { metrics.homeToDeliver.record(.nanoseconds(max(0, wall &- frame.sequencedAtWall))) }
        }
    }

    /// Whether the core is draining.
    var draining: Bool { state.withLock { $0.core.draining } }

    /// When the core next needs a tick.
    var nextDeadline: TernInstant? { state.withLock { $0.core.nextDeadline } }

    /// Open connections, as the core counts them.
    var connectionCount: Int { state.withLock { $0.core.stats.connections } }

    /// Open connection tasks, whether or not the core counts them.
    var openSinks: Int { state.withLock { $0.sinks.count } }
}
