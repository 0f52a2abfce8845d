import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// What a fan-out run measured.
public struct FanoutResult: Sendable, Codable, Hashable {
    public var target: String
    public var subscribers: Int
    public var messages: Int
    public var size: Int
    public var expected: Int
    public var delivered: Int
    /// Deliveries whose position did not follow the subscriber's previous one.
    public var outOfOrder: Int
    /// From the first publish written to the last expected delivery read (or to the timeout).
    public var seconds: Double
    public var deliveriesPerSecond: Double
    public var complete: Bool
    public var publisherRefusals: Int
}

/// What a latency run measured: publish→deliver as seen by the benchmark process (one clock).
public struct LatencyResult: Sendable, Codable, Hashable {
    public var target: String
    public var subscribers: Int
    public var rate: Int
    public var seconds: Double
    public var published: Int
    public var delivered: Int
    public var expected: Int
    public var p50Milliseconds: Double
    public var p99Milliseconds: Double
    public var maxMilliseconds: Double
}

/// What a connections run measured: the server's resident memory per idle subscribed connection.
public struct ConnectionsResult: Sendable, Codable, Hashable {
    public var target: String
    public var connections: Int
    public var secondsToOpen: Double
    /// The server's RSS before connecting, with every connection open, and after they closed (KiB), when its pid was given.
    public var rssBeforeKiB: Int?
    public var rssOpenKiB: Int?
    public var rssAfterKiB: Int?
    public var bytesPerConnection: Double?
}

/// Runs benchmarks with a NIO load generator on its own event loops, so the same client code
/// measures a Tern relay and nats-server.
public final class BenchRunner: Sendable {
    let group: MultiThreadedEventLoopGroup
    let progress: @Sendable (String) -> Void

    /// A runner with `threads` event loops; `progress` receives a line now and then.
    public init(threads: Int, progress: @escaping @Sendable (String) -> Void = { _ in }) {
        BenchRunner.raiseFileLimit()
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        self.progress = progress
    }

    public func shutdown() async throws { try await group.shutdownGracefully() }

    /// The topic (Tern, in `namespace`) or subject (NATS) a benchmark uses for `name`.
    static func channel(_ name: String, _ target: BenchTarget, namespace: String) -> String {
        switch target {
        case .tern: "\(namespace):\(name)"
        case .nats: "bench.\(name)"
        }
    }

    // MARK: Connections

    func openSubscribers(_ endpoint: BenchEndpoint, _ target: BenchTarget, count: Int, channel: String, tally: Tally,
                         timed: Bool, label: String) async throws -> [BenchSocket] {
        var sockets: [BenchSocket] = []
        sockets.reserveCapacity(count)
        var opened = 0
        while opened < count {
            let batch = min(250, count - opened)
            var readies: [EventLoopFuture<Void>] = []
            var connects: [EventLoopFuture<BenchSocket>] = []
            for _ in 0..<batch {
                let loop = group.next()
                let ready = loop.makePromise(of: Void.self)
                let handler: any BenchProtocolHandler = switch target {
                case .tern: TernSubscriber(topic: channel, token: nil, ready: ready, tally: tally, timed: timed)
                case .nats: NatsConnection(subject: channel, subscribe: true, ready: ready, tally: tally, timed: timed)
                }
                let connect = BenchSocket.connect(endpoint, group: loop, handler: handler)
                connect.whenFailure { ready.fail($0) }
                connects.append(connect)
                readies.append(ready.futureResult)
            }
            // Every attempt settles before an error is reported, so nothing is left running on the loops.
            var failure: (any Error)?
            for c in connects {
                do { sockets.append(try await c.get()) } catch { failure = failure ?? error }
            }
            if let failure {
                await closeAll(sockets)
                throw failure
            }
            let all = EventLoopFuture.andAllSucceed(readies, on: group.next())
            _ = try await awaitFuture(all, timeout: .seconds(30), "\(label): subscribers did not get their subscribe answered within 30 s")
            opened += batch
            progress("\(label): \(opened)/\(count) subscribers ready")
        }
        return sockets
    }

    func openPublisher(_ endpoint: BenchEndpoint, _ target: BenchTarget, channel: String) async throws
        -> (BenchSocket, @Sendable (Int, Int) -> String, @Sendable () -> Int) {
        let loop = group.next()
        let ready = loop.makePromise(of: Void.self)
        switch target {
        case .tern(let token):
            let publisher = TernPublisher(topic: channel, token: token, ready: ready)
            let socket = try await BenchSocket.connect(endpoint, group: loop, handler: publisher).get()
            _ = try await awaitFuture(ready.futureResult, timeout: .seconds(10), "the publisher was not connected within 10 s")
            return (socket, { publisher.frame(n: $0, size: $1) }, { publisher.refusals })
        case .nats:
            let publisher = NatsConnection(subject: channel, subscribe: false, ready: ready, tally: nil, timed: false)
            let socket = try await BenchSocket.connect(endpoint, group: loop, handler: publisher).get()
            _ = try await awaitFuture(ready.futureResult, timeout: .seconds(10), "the publisher was not connected within 10 s")
            return (socket, { publisher.frame(n: $0, size: $1) }, { 0 })
        }
    }

    func closeAll(_ sockets: [BenchSocket]) async {
        for s in sockets { s.eventLoop?.execute { s.close() } }
        for s in sockets { try? await s.closedPromise.futureResult.get() }
    }

    // MARK: Benchmarks

    /// One publisher sends `messages` publications of `size` bytes as fast as it can; `subscribers`
    /// connections read them. Deliveries per second over the time until the last one arrived.
    public func fanout(_ endpoint: BenchEndpoint, target: BenchTarget, subscribers: Int, messages: Int, size: Int,
                       name: String = "fan", namespace: String = "bench", timeout: Duration = .seconds(120)) async throws -> FanoutResult {
        let channel = Self.channel(name, target, namespace: namespace)
        let tally = Tally(expected: subscribers * messages, eventLoop: group.next())
        let subs = try await openSubscribers(endpoint, target, count: subscribers, channel: channel, tally: tally, timed: false, label: target.name)
        let (publisher, frame, refusals) = try await openPublisher(endpoint, target, channel: channel)
        let start = NIODeadline.now().uptimeNanoseconds
        publisher.eventLoop!.execute {
            for n in 1...messages {
                publisher.send(frame(n, size))
                if n % 32 == 0 { publisher.flush() }
            }
            publisher.flush()
        }
        let label = target.name
        let watcher = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(500))
                progress("\(label): \(tally.count)/\(tally.expected) deliveries")
            }
        }
        let complete = (try? await awaitFuture(tally.done.futureResult, timeout: timeout, "")) != nil
        watcher.cancel()
        let end = tally.finished ?? NIODeadline.now().uptimeNanoseconds
        let seconds = Double(end - start) / 1e9
        let result = FanoutResult(
            target: target.name, subscribers: subscribers, messages: messages, size: size, expected: tally.expected,
            delivered: tally.count, outOfOrder: tally.outOfOrder, seconds: seconds,
            deliveriesPerSecond: Double(tally.count) / max(seconds, 1e-9), complete: complete,
            publisherRefusals: await onLoop(publisher) { refusals() })
        await closeAll(subs + [publisher])
        return result
    }

    /// One publisher (on `publishEndpoint`, by default the same server) sends `rate` publications a
    /// second for `duration`; `subscribers` connections read them. Publish→deliver on one clock.
    public func latency(_ endpoint: BenchEndpoint, publishEndpoint: BenchEndpoint? = nil, target: BenchTarget, subscribers: Int,
                        rate: Int, duration: Duration, size: Int, name: String = "lat", namespace: String = "bench") async throws -> LatencyResult {
        let channel = Self.channel(name, target, namespace: namespace)
        let total = max(1, Int(Double(rate) * Double(duration.ternNanoseconds) / 1e9))
        let tally = Tally(expected: subscribers * total, eventLoop: group.next())
        let subs = try await openSubscribers(endpoint, target, count: subscribers, channel: channel, tally: tally, timed: true, label: target.name)
        let (publisher, frame, _) = try await openPublisher(publishEndpoint ?? endpoint, target, channel: channel)
        let loop = publisher.eventLoop!
        let start = NIODeadline.now()
        let sentBox = NIOLoopBoundBox.makeBoxSendingValue(0, as: Int.self, eventLoop: loop)
        let finished = loop.makePromise(of: Void.self)
        let task = try await loop.submit {
            loop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(1)) { task in
                let elapsed = Double((NIODeadline.now() - start).nanoseconds) / 1e9
                let due = min(total, Int(elapsed * Double(rate)) + 1)
                while sentBox.value < due {
                    sentBox.value += 1
                    publisher.send(frame(sentBox.value, size))
                }
                publisher.flush()
                if sentBox.value >= total {
                    task.cancel()
                    finished.succeed(())
                }
            }
        }.get()
        _ = task
        try await finished.futureResult.get()
        _ = try? await awaitFuture(tally.done.futureResult, timeout: .seconds(10), "")
        let seconds = Double((NIODeadline.now() - start).nanoseconds) / 1e9
        var samples = tally.latencies.sorted()
        if samples.isEmpty { samples = [0] }
        func pick(_ q: Double) -> Double { Double(samples[min(samples.count - 1, Int(Double(samples.count) * q))]) / 1e6 }
        let result = LatencyResult(target: target.name, subscribers: subscribers, rate: rate, seconds: seconds, published: total,
                                   delivered: tally.count, expected: tally.expected, p50Milliseconds: pick(0.5),
                                   p99Milliseconds: pick(0.99), maxMilliseconds: Double(samples.last!) / 1e6)
        await closeAll(subs + [publisher])
        return result
    }

    /// Opens `count` idle subscribed connections and reads the server's RSS (from /proc) before,
    /// with them open, and after they closed.
    public func connections(_ endpoint: BenchEndpoint, target: BenchTarget, count: Int, pid: Int32?, name: String = "idle",
                            namespace: String = "bench") async throws -> ConnectionsResult {
        let channel = Self.channel(name, target, namespace: namespace)
        let before = pid.flatMap(Self.residentKiB)
        let tally = Tally(expected: .max, eventLoop: group.next())
        let start = NIODeadline.now()
        let subs = try await openSubscribers(endpoint, target, count: count, channel: channel, tally: tally, timed: false, label: target.name)
        let opened = Double((NIODeadline.now() - start).nanoseconds) / 1e9
        try await Task.sleep(for: .seconds(2))
        let open = pid.flatMap(Self.residentKiB)
        await closeAll(subs)
        // A relay returns freed memory to the system within a few seconds of a drop (MemoryTrimService).
        try await Task.sleep(for: .seconds(7))
        let after = pid.flatMap(Self.residentKiB)
        var perConnection: Double?
        if let before, let open { perConnection = Double(open - before) * 1024 / Double(count) }
        return ConnectionsResult(target: target.name, connections: count, secondsToOpen: opened, rssBeforeKiB: before,
                                 rssOpenKiB: open, rssAfterKiB: after, bytesPerConnection: perConnection)
    }

    // MARK: Helpers

    /// The resident set size of process `pid` in KiB, from /proc/PID/status.
    public static func residentKiB(_ pid: Int32) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return line.split(separator: " ").compactMap { Int($0) }.first
        }
        return nil
    }

    /// Raises the open-file limit to its hard maximum: thousands of connections need thousands of descriptors.
    static func raiseFileLimit() {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }

    func onLoop<T: Sendable>(_ socket: BenchSocket, _ body: @escaping @Sendable () -> T) async -> T {
        guard let loop = socket.eventLoop, let value = try? await loop.submit(body).get() else { return body() }
        return value
    }
}

/// Waits for `future`, failing with `message` if it is not complete within `limit`.
func awaitFuture<T: Sendable>(_ future: EventLoopFuture<T>, timeout limit: Duration, _ message: String) async throws -> T {
    let loop = future.eventLoop
    let raced = loop.makePromise(of: T.self)
    let settled = Atomic<Bool>(false)
    let timer = loop.scheduleTask(in: .nanoseconds(limit.ternNanoseconds)) {
        guard settled.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        raced.fail(BenchError(message.isEmpty ? "timed out after \(limit)" : message))
    }
    future.whenComplete { result in
        guard settled.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        timer.cancel()
        raced.completeWith(result)
    }
    return try await raced.futureResult.get()
}

extension Duration {
    var ternNanoseconds: Int64 {
        let (s, a) = components
        return s * 1_000_000_000 + a / 1_000_000_000
    }
}
