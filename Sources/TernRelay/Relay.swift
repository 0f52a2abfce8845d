import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import NIOWebSocket
import ServiceLifecycle
import Synchronization
import TernCore
import TernTopology
import TernWire

/// The request context of every relay route: it keeps the connection's
/// channel so a slow consumer can be closed without waiting on its writer.
public struct RelayRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The HTTP connection.
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
    }
}

/// One region's relay: the HTTP and WebSocket front door of a `RelayCore`.
///
/// It is a `Service`: run it in a `ServiceGroup`; graceful shutdown drains it.
public final class Relay: Service, Sendable {
    /// The region served.
    public let region: String
    /// The metrics this relay exports.
    public let metrics: RelayMetrics
    let runtime: RelayRuntime
    let authenticator: Authenticator
    let logger: Logger
    private let address: HostPort
    private let listening = BoundPort()
    let links: LinkService?
    /// The topology this relay was started with.
    public let topology: Topology
    /// Browser-facing settings.
    let web: RelayWebOptions
    /// The JavaScript client and pages, read at startup.
    let assets: WebAssets
    /// The HS256 secret development tokens are signed with (only when `web.devTokens`).
    let devTokenSecret: String?
    /// The event loops serving client connections.
    let clientLoops: MultiThreadedEventLoopGroup
    /// The most client event loops a relay runs (`eventLoops`): each connection's id names its loop.
    public static let maxEventLoops = RelayRuntime.maxEventLoops
    /// Per-user publish limit of token-authenticated HTTP publishes.
    let userPublishLimiter: UserPublishLimiter

    /// A relay for `region` of `topology`, listening on the region's client address unless `listenOn` overrides it.
    /// `web` says where the browser files are, which origins may call the relay, and whether it hands out development tokens.
    public init(topology: Topology, region: String, secrets: SecretResolver = SecretResolver(),
                listenOn: HostPort? = nil, linkListenOn: HostPort? = nil, seed: UInt64? = nil, logger: Logger? = nil,
                web: RelayWebOptions = RelayWebOptions(), eventLoops: Int? = nil) async throws {
        // Client connections are spread over these loops; by default one per core.
        self.clientLoops = eventLoops.map { MultiThreadedEventLoopGroup(numberOfThreads: max(1, $0)) } ?? MultiThreadedEventLoopGroup.singleton
        guard let r = topology.region(named: region) else {
            let names = topology.regions.map(\.name).joined(separator: ", ")
            throw RelayConfigError("region '\(region)' is not in \(topology.file); choose one of: \(names)")
        }
        self.region = region
        self.address = listenOn ?? r.client
        var logger = logger ?? Logger(label: "tern.relay")
        logger[metadataKey: "region"] = .string(region)
        self.logger = logger
        self.metrics = RelayMetrics(region: region)
        self.authenticator = try await Authenticator(auth: topology.auth, secrets: secrets)
        self.topology = topology
        self.web = web
        let root = WebRoot.locate(configured: web.root)
        self.assets = WebAssets(root: root, clientMaxAge: web.clientMaxAge) { problem in
            logger.warning("browser files are incomplete", metadata: ["problem": "\(problem)"])
        }
        if web.devTokens {
            if let source = topology.auth.hs256Secret {
                self.devTokenSecret = try secrets.resolve(source, for: "auth.jwt.hs256_secret")
                logger.notice("handing out development tokens at /dev/token (room:* only, loopback callers only)")
            } else {
                self.devTokenSecret = nil
                logger.warning("development tokens need auth.jwt.hs256_secret in the topology; /dev/token will refuse")
            }
        } else {
            self.devTokenSecret = nil
        }
        self.userPublishLimiter = UserPublishLimiter(rate: topology.limits.publishRatePerSecond, burst: topology.limits.publishBurst)
        var coreConfig = topology.coreConfig(for: region)
        // The incarnation grows with each start of this region: microseconds of wall-clock time.
        coreConfig.mesh?.incarnation = UInt64(max(1, Date().timeIntervalSince1970 * 1_000_000))
        self.runtime = RelayRuntime(config: coreConfig, seed: seed ?? UInt64.random(in: .min ... .max), metrics: metrics)
        if topology.links(of: region).isEmpty {
            self.links = nil
        } else {
            self.links = try LinkService(topology: topology, region: r, runtime: runtime, registry: metrics.registry,
                                         logger: logger, listenOn: linkListenOn)
        }
    }

    /// The port the link listener is bound to, once it is listening (nil without links).
    public func waitUntilLinksListening() async -> Int? { await links?.waitUntilListening() }

    /// Neighbours whose links are up.
    public var upLinks: [String] { runtime.upLinks }

    /// Regions no route reaches now, as this relay sees it.
    public var unreachableRegions: [String] { runtime.unreachableRegions }

    /// The home region of `topic` as this relay sees it.
    public func home(of topic: String) -> String { runtime.home(of: topic) }

    /// Publications sent on each link, by neighbour (from the core's counters).
    public var linkDataEntries: [String: Int] { runtime.linkCounters.mapValues(\.dataEntries) }

    /// Closes every link connection at once, as a network fault would.
    public func dropLinks() { links?.dropAllLinks() }

    /// The port the relay listens on, once it is listening.
    public func waitUntilListening() async -> Int { await listening.wait() }

    /// Serves until cancelled or shut down gracefully (which drains clients first).
    public func run() async throws {
        let app = Application(
            router: makeRouter(),
            // /ws is served by NIO channel handlers (RelayWebSocketHandler); the rest by the router.
            server: HTTPServerBuilder { [runtime, authenticator, logger] responder in
                RelayServerChannel(
                    responder: responder,
                    maxFrameSize: runtime.limits.maxFrameBytes * 4,
                    makeHandler: { loop in
                        RelayWebSocketHandler(runtime: runtime, authenticator: authenticator, logger: logger,
                                              maxMessageBytes: runtime.limits.maxFrameBytes, eventLoop: loop)
                    })
            },
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: "tern"),
            onServerRunning: { [self] channel in
                let port = channel.localAddress?.port ?? address.port
                listening.set(port)
                logger.info("relay listening", metadata: ["url": "http://\(address.host):\(port)"])
            },
            eventLoopGroupProvider: .shared(clientLoops),
            logger: logger
        )
        // Shutdown runs in reverse: drain the clients, then close the links, then stop the listener.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: app)]
        if let links { services.append(.init(service: links)) }
        services.append(.init(service: DrainService(runtime: runtime, logger: logger)))
        services.append(.init(service: MemoryTrimService(runtime: runtime, logger: logger)))
        let group = ServiceGroup(configuration: .init(
            services: services,
            gracefulShutdownSignals: [],
            logger: logger))
        defer {
            // Loops this relay made itself (`eventLoops`) end with it; the shared singleton stays.
            if clientLoops !== MultiThreadedEventLoopGroup.singleton {
                clientLoops.shutdownGracefully { _ in }
            }
        }
        try await group.run()
    }

    func makeRouter() -> Router<RelayRequestContext> {
        let router = Router(context: RelayRequestContext.self)
        router.add(middleware: CrossOriginMiddleware(policy: CrossOriginPolicy(web.allowOrigin)))
        router.get("/sse") { [self] request, context in try await sse(request, channel: context.channel) }
        router.get("/poll") { [self] request, _ in try await poll(request) }
        router.post("/api/publish") { [self] request, _ in try await apiPublish(request) }
        router.get("/health") { [self] _, _ in
            let draining = runtime.draining
            return jsonResponse(draining ? .serviceUnavailable : .ok,
                                "{\"status\":\"\(draining ? "draining" : "ok")\",\"region\":\(JSONText.quoted(region))}")
        }
        router.get("/metrics") { [self] _, _ in
            Response(status: .ok,
                     headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(bytes: metrics.registry.emitToBuffer())))
        }
        addWebRoutes(to: router)
        return router
    }

    /// Writes a close frame behind whatever is buffered and closes the TCP
    /// connection once it is written or after a grace period.
    static func forceClose(_ channel: any Channel, _ code: CloseCode) {
        guard code == .slowConsumer else {
            // The writer sends the close frame; this only bounds how long a peer that stopped reading can hold on.
            channel.eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
            return
        }
        var payload = channel.allocator.buffer(capacity: 2 + code.reason.utf8.count)
        payload.writeInteger(UInt16(code.rawValue))
        payload.writeString(code.reason)
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)
        channel.writeAndFlush(frame).whenComplete { _ in channel.close(promise: nil) }
        channel.eventLoop.scheduleTask(in: .seconds(10)) { channel.close(promise: nil) }
    }

    // MARK: - Server-Sent Events

    private func identity(for request: Request) async -> Result<ClientIdentity, AuthFailure> {
        var token = request.uri.queryParameters.get("token")
        if token == nil, let header = request.headers[.authorization], header.hasPrefix("Bearer ") {
            token = String(header.dropFirst("Bearer ".count))
        }
        guard let token, !token.isEmpty else { return .success(.anonymous) }
        return await authenticator.verify(token, now: runtime.now())
    }

    private func topics(of request: Request) -> [String] {
        var topics = request.uri.queryParameters.getAll("topic")
        if let list = request.uri.queryParameters.get("topics") {
            topics += list.split(separator: ",").map(String.init)
        }
        var seen = Set<String>()
        return topics.filter { seen.insert($0).inserted }
    }

    private func sse(_ request: Request, channel: any Channel) async throws -> Response {
        let topics = self.topics(of: request)
        guard !topics.isEmpty else {
            return errorResponse(TernError(.badRequest, "name at least one topic: /sse?topic=news:world"))
        }
        let resumeText = request.headers[.init("Last-Event-ID")!] ?? request.uri.queryParameters.get("since")
        var cursor: [String: StreamPosition] = [:]
        if let resumeText {
            guard let decoded = Cursor.decode(resumeText) else {
                return errorResponse(TernError(.badRequest, "Last-Event-ID is not a Tern cursor (topic|epoch|offset,...)"))
            }
            cursor = decoded
        }
        let identity: ClientIdentity
        switch await self.identity(for: request) {
        case .success(let i): identity = i
        case .failure(let f): return Self.sseRefusal(f)
        }
        let runtime = self.runtime
        let resume = cursor
        // `trace=1` asks for per-hop timestamps on every topic of the stream.
        let trace = ["1", "true"].contains(request.uri.queryParameters.get("trace") ?? "")
        let headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache", .init("X-Accel-Buffering")!: "no"]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            let (client, signals) = runtime.register(forceClose: { code in
                // The writer may be stuck behind a full socket: end the connection from the event loop.
                if code == .slowConsumer {
                    channel.close(promise: nil)
                } else {
                    channel.eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
                }
            })
            runtime.handle(.opened(client, .sse))
            runtime.handle(.authenticated(client, ref: nil, identity))
            if !resume.isEmpty { runtime.handle(.resumeCursor(client, resume)) }
            // Each subscribe is numbered by its topic's place in the list, so an error can name its topic.
            for (i, topic) in topics.enumerated() {
                runtime.handle(.command(client, ref: UInt64(i + 1), .subscribe(topic: topic, since: resume[topic], trace: trace)))
            }
            // A comment line now (so proxies and clients see the stream open), then keep-alives.
            try? await writer.write(ByteBuffer(string: ": tern \(topics.joined(separator: ","))\n\n"))
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(15))
                        runtime.signal(client, .heartbeat)
                    }
                }
                do {
                    loop: for await signal in signals {
                        switch signal {
                        case .flush:
                            try await Self.writeQueued(client, to: &writer, runtime: runtime, topics: topics)
                        case .heartbeat:
                            try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                        case .close:
                            try await Self.writeQueued(client, to: &writer, runtime: runtime, topics: topics)
                            break loop
                        case .poll:
                            continue
                        }
                    }
                } catch {}
                group.cancelAll()
            }
            runtime.unregister(client)
            try? await writer.finish(nil)
        })
    }

    private static func writeQueued(_ client: ClientID, to writer: inout any ResponseBodyWriter, runtime: RelayRuntime, topics: [String]) async throws {
        while true {
            let frames = runtime.takeOutbound(client)
            if frames.isEmpty { return }
            try await writer.write(contentsOf: frames.map { naming(topics, in: $0.bytes) })
            runtime.recordWritten(frames)
        }
    }

    /// An SSE subscribe error carries the number of the subscribe it answers (`"ref":N`);
    /// this puts the topic's name in its place, so an `EventSource` knows which topic failed.
    static func naming(_ topics: [String], in frame: ByteBuffer) -> ByteBuffer {
        let prefix = "event: error\ndata: {\"ref\":"
        guard frame.readableBytesView.starts(with: prefix.utf8) else { return frame }
        let text = String(buffer: frame)
        let rest = text.dropFirst(prefix.count)
        let digits = rest.prefix { $0.isASCII && $0.isNumber }
        guard let n = Int(digits), n >= 1, n <= topics.count, rest.dropFirst(digits.count).first == "," else { return frame }
        return ByteBuffer(string: "event: error\ndata: {\"topic\":\(JSONText.quoted(topics[n - 1])),\(rest.dropFirst(digits.count + 1))")
    }

    /// A refused token on `/sse`: a stream an `EventSource` can read (it cannot see a 401),
    /// with the error and a disconnect that says whether to come back, then the end.
    static func sseRefusal(_ failure: AuthFailure) -> Response {
        let close: CloseCode = failure == .expired ? .tokenExpired : .unauthorized
        let body = "event: error\ndata: \(JSONServerEncoder.json(.error(ref: nil, authError(failure))))\n\n"
            + "event: disconnect\ndata: \(JSONServerEncoder.json(.disconnect(code: close, reconnectAfter: nil)))\n\n"
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                         body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    // MARK: - Long-poll

    private func poll(_ request: Request) async throws -> Response {
        let topics = self.topics(of: request)
        guard !topics.isEmpty else {
            return errorResponse(TernError(.badRequest, "name at least one topic: /poll?topic=news:world"))
        }
        var cursor: [String: StreamPosition] = [:]
        if let text = request.uri.queryParameters.get("cursor") {
            guard let decoded = Cursor.decode(text) else {
                return errorResponse(TernError(.badRequest, "'cursor' is not a Tern cursor; pass back the cursor of the previous poll"))
            }
            cursor = decoded
        }
        var timeout = Duration.seconds(25)
        if let t = request.uri.queryParameters.get("timeout") {
            guard let seconds = Double(t), seconds >= 0, seconds.isFinite else {
                return errorResponse(TernError(.badRequest, "'timeout' must be a number of seconds"))
            }
            // The core caps it at max_poll_timeout; clamp first so the conversion cannot overflow.
            timeout = .milliseconds(Int64(min(seconds, 86_400) * 1000))
        }
        let identity: ClientIdentity
        switch await self.identity(for: request) {
        case .success(let i): identity = i
        case .failure(let f): return errorResponse(Self.authError(f))
        }
        let (client, signals) = runtime.register()
        runtime.handle(.poll(client, identity, topics: topics.map { ($0, cursor[$0]) }, timeout: timeout))
        var reply = PollReply(publications: [], topics: [], error: TernError(.internalError, "poll ended without an answer"))
        for await signal in signals {
            if case .poll(let r) = signal {
                reply = r
                break
            }
        }
        runtime.unregister(client)
        if let error = reply.error { return errorResponse(error) }
        return jsonResponse(.ok, JSONServerEncoder.pollJSON(reply, previous: cursor))
    }

    // MARK: - HTTP publish

    /// `POST /api/publish`: a backend with the API key (`X-API-Key`, or `Authorization: Bearer KEY`),
    /// or a client with its token (`Authorization: Bearer TOKEN`, see `tokenPublish`).
    private func apiPublish(_ request: Request) async throws -> Response {
        var bearer: String?
        if let header = request.headers[.authorization], header.hasPrefix("Bearer ") {
            bearer = String(header.dropFirst("Bearer ".count))
        }
        if let key = request.headers[.init("X-API-Key")!] {
            guard authenticator.checkAPIKey(key) else {
                return errorResponse(TernError(.unauthorized, "wrong API key in X-API-Key"))
            }
        } else if let bearer, !bearer.isEmpty {
            if !authenticator.checkAPIKey(bearer) { return try await tokenPublish(token: bearer, request) }
        } else {
            return errorResponse(TernError(.unauthorized,
                "missing credentials: send the API key as 'X-API-Key: KEY', or a client token as 'Authorization: Bearer TOKEN'"))
        }
        let publish: APIPublishRequest
        switch await readPublishBody(request) {
        case .success(let p): publish = p
        case .failure(let e): return errorResponse(e)
        }
        switch await runtime.apiPublish(topic: publish.topic, id: publish.id, data: publish.data) {
        case .success(let body): return jsonResponse(.ok, JSONServerEncoder.replyJSON(body))
        case .failure(let error): return errorResponse(error)
        }
    }

    static func authError(_ failure: AuthFailure) -> TernError {
        switch failure {
        case .expired: TernError(.tokenExpired, "the token has expired; get a fresh one")
        case .invalid(let why): TernError(.unauthorized, "the token was refused: \(why)")
        }
    }
}

func jsonResponse(_ status: HTTPResponse.Status, _ json: String) -> Response {
    Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: json)))
}

func errorResponse(_ error: TernError) -> Response {
    let status: HTTPResponse.Status = switch error.code {
    case .unauthorized, .tokenExpired: .unauthorized
    case .permissionDenied: .forbidden
    case .unknownNamespace: .notFound
    case .messageTooLarge: .contentTooLarge
    case .rateLimited: .tooManyRequests
    case .internalError: .serviceUnavailable
    default: .badRequest
    }
    return jsonResponse(status, "{\"error\":\(JSONServerEncoder.errorJSON(error))}")
}

/// Fires the core's deadlines, and on graceful shutdown drains the relay:
/// every client is told to reconnect after a jittered delay and closed.
struct DrainService: Service {
    let runtime: RelayRuntime
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown { await tickLoop() }
        guard !Task.isCancelled else { return }
        let open = runtime.openSinks
        logger.info("draining", metadata: ["connections": "\(open)"])
        runtime.handle(.drain)
        let deadline = ContinuousClock.now + .seconds(5)
        while runtime.openSinks > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
            runtime.handle(.tick)
        }
        if runtime.openSinks > 0 {
            logger.warning("closing connections that did not finish draining", metadata: ["connections": "\(runtime.openSinks)"])
            runtime.forceCloseAll(.shutdown)
        }
        logger.info("drained")
    }

    private func tickLoop() async {
        while !Task.isCancelled {
            let now = runtime.now()
            var wait = Duration.milliseconds(250)
            if let next = runtime.nextDeadline { wait = max(.zero, min(wait, next - now)) }
            do {
                try await Task.sleep(for: wait)
            } catch {
                return
            }
            runtime.handle(.tick)
        }
    }
}

/// Gives memory back to the system after a burst: glibc's allocator keeps freed pages of
/// thousands of closed connections or drained queues in its arenas, so the relay's RSS would stay
/// at its peak. When many connections have closed, queued bytes have fallen well below their
/// peak, or a busy spell of deliveries has gone quiet, `malloc_trim` returns the free pages.
struct MemoryTrimService: Service {
    let runtime: RelayRuntime
    let logger: Logger
    var interval: Duration = .seconds(5)

    func run() async throws {
        await cancelWhenGracefulShutdown { await trimLoop() }
    }

    private func trimLoop() async {
        var closedAtTrim = 0
        var peakQueued = 0
        var deliveriesAtTrim = 0
        var lastDeliveries = 0
        do {
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                let (closed, queued, deliveries) = runtime.load
                peakQueued = max(peakQueued, queued)
                let quietAfterBurst = deliveries == lastDeliveries && deliveries - deliveriesAtTrim >= 100_000
                lastDeliveries = deliveries
                if closed - closedAtTrim >= 256 || peakQueued - queued >= 8 << 20 || quietAfterBurst {
                    deliveriesAtTrim = deliveries
                    closedAtTrim = closed
                    #if os(Linux)
                    _ = glibcMallocTrim(0)
                    #endif
                    logger.debug("returned free memory", metadata: ["closed connections": "\(closed)"])
                    peakQueued = queued
                }
            }
        }
    }
}

#if os(Linux)
/// glibc's `malloc_trim` (declared in <malloc.h>, which the Glibc module does not import).
@_silgen_name("malloc_trim")
func glibcMallocTrim(_ pad: Int) -> Int32
#endif
