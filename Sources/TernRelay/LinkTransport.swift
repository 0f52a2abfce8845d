#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Prometheus
import ServiceLifecycle
import Synchronization
import TernCore
import TernTopology
import TernWire
import X509

/// Per-link metrics, created on first use for each neighbour.
final class LinkMetrics: Sendable {
    let batches: Counter
    let entries: Counter
    let dataEntries: Counter
    let rawBytes: Counter
    let wireBytes: Counter
    let receivedBatches: Counter
    let entriesPerBatch: ValueHistogram

    init(registry: PrometheusCollectorRegistry, region: String, peer: String) {
        let labels = [("region", region), ("peer", peer)]
        batches = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "link_batches", unitName: "total", helpText: "Batches sent on the link"), labels: labels)
        entries = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "link_entries", unitName: "total", helpText: "Entries sent on the link"), labels: labels)
        dataEntries = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "link_data_entries", unitName: "total", helpText: "Publications sent on the link"), labels: labels)
        rawBytes = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "link_raw_bytes", unitName: "total", helpText: "Batch bytes before compression"), labels: labels)
        wireBytes = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "link_wire_bytes", unitName: "total", helpText: "Batch bytes as sent, after compression"), labels: labels)
        receivedBatches = registry.makeCounter(descriptor: .init(namespace: "tern", metricName: "link_received_batches", unitName: "total", helpText: "Batches received on the link"), labels: labels)
        entriesPerBatch = registry.makeValueHistogram(
            descriptor: .init(namespace: "tern", metricName: "link_batch_entries", unitName: "", helpText: "Entries per batch sent"),
            labels: labels, buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
    }
}

/// Splits a link's byte stream into frames. A malformed frame throws, which resets the link.
final class LinkFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = LinkFrame
    let codec: LinkCodec

    init(codec: LinkCodec) { self.codec = codec }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try codec.decode(&buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// Writes link frames, compressing batches, and counts what it sends.
final class LinkFrameEncoder: MessageToByteEncoder {
    typealias OutboundIn = LinkFrame
    let codec: LinkCodec
    var metrics: LinkMetrics?

    init(codec: LinkCodec) { self.codec = codec }

    func encode(data: LinkFrame, out: inout ByteBuffer) throws {
        let raw = codec.rawBytesSent, wire = codec.wireBytesSent
        codec.encode(data, into: &out)
        guard case .batch(let messages) = data, let metrics else { return }
        metrics.batches.increment()
        metrics.entries.increment(by: Int64(messages.count))
        metrics.dataEntries.increment(by: Int64(messages.count { if case .data = $0 { true } else { false } }))
        metrics.rawBytes.increment(by: Int64(codec.rawBytesSent - raw))
        metrics.wireBytes.increment(by: Int64(codec.wireBytesSent - wire))
        metrics.entriesPerBatch.record(Double(messages.count))
    }
}

/// One link connection: drives its `LinkHandshake` with the frames read and carries out what it
/// returns (writes, attaching to the relay core, refusals), then passes batches to and from the core.
final class LinkSessionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = LinkFrame
    typealias OutboundOut = LinkFrame

    let links: LinkService
    let encoder: LinkFrameEncoder
    let connection: UInt64
    private var handshake: LinkHandshake
    /// Called once if the link comes up, so the dialler can start its backoff over.
    let onUp: (@Sendable () -> Void)?

    /// The peer the link is attached for, once it is up (and while it closes after that).
    var peer: String? { handshake.attachedPeer }

    init(links: LinkService, expectedPeer: String?, encoder: LinkFrameEncoder, connection: UInt64, onUp: (@Sendable () -> Void)? = nil) {
        self.links = links
        self.encoder = encoder
        self.connection = connection
        self.onUp = onUp
        handshake = LinkHandshake(role: expectedPeer.map { .dialling(expectedPeer: $0) } ?? .accepting, hello: links.hello)
    }

    func channelActive(context: ChannelHandlerContext) {
        perform(handshake.opened(), context)
        // A peer that accepts the connection but never finishes the handshake (a silent path, a stuck
        // process) must not hold the dial forever: give it the read timeout, then close and dial again.
        let channel = context.channel
        let timeout = links.topology.tuning.linkReadTimeout
        let logger = links.logger
        let expected = handshake.expectedPeer
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: .nanoseconds(timeout.ternNanoseconds)) {
            guard handler.value.peer == nil, channel.isActive else { return }
            logger.warning("link handshake timed out", metadata: ["peer": "\(expected ?? "?")", "after": "\(timeout)"])
            channel.close(promise: nil)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Read before the handshake changes: the check runs while `received` is under way.
        let expectedPeer = handshake.expectedPeer
        let links = self.links
        let actions = handshake.received(unwrapInboundIn(data)) { [self] hello in
            // Only a hello is checked, so the certificate is read only then.
            links.problem(with: hello, expectedPeer: expectedPeer, certificateNames: certificateNames(context))
        }
        perform(actions, context)
    }

    private func perform(_ actions: [LinkHandshake.Action], _ context: ChannelHandlerContext) {
        for action in actions {
            switch action {
            case .send(let frame):
                context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
            case .attach(let peer):
                encoder.metrics = links.metrics(for: peer)
                links.attach(peer, connection: connection, channel: context.channel)
                onUp?()
            case .deliver(let messages, let peer):
                links.received(messages, from: peer)
            case .refuse(let reason, let claimed):
                links.logger.error("link refused", metadata: ["peer": "\(claimed ?? "?")", "reason": "\(reason)"])
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(.reject(reason: reason))).whenComplete { _ in channel.close(promise: nil) }
            case .refusedByPeer(let reason):
                links.logger.error("link refused by peer", metadata: ["peer": "\(peer ?? handshake.expectedPeer ?? "?")", "reason": "\(reason)"])
                context.close(promise: nil)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let peer { links.detach(peer, connection: connection) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let reason = (error as? LinkProtocolError)?.description ?? "\(error)"
        links.logger.warning("link reset", metadata: ["peer": "\(peer ?? handshake.expectedPeer ?? "?")", "reason": "\(reason)"])
        handshake.reset()
        if error is LinkProtocolError {
            context.writeAndFlush(wrapOutboundOut(.reject(reason: reason)), promise: nil)
        }
        context.close(promise: nil)
    }

    /// The DNS names in the peer's verified certificate, or nil on a plaintext link.
    private func certificateNames(_ context: ChannelHandlerContext) -> [String]? {
        guard let cert = try? context.pipeline.syncOperations.nioSSL_peerCertificate(),
              let der = try? cert.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else { return nil }
        var names: [String] = []
        if let sans = try? parsed.extensions.subjectAlternativeNames {
            for name in sans { if case .dnsName(let dns) = name { names.append(dns) } }
        }
        for rdn in parsed.subject {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                names.append(String(describing: attribute.value))
            }
        }
        var seen = Set<String>()
        return names.filter { seen.insert($0).inserted }
    }
}

/// Listens for and dials this region's inter-region links, reconnecting
/// with jittered backoff, and connects each one to the relay core.
final class LinkService: Service, Sendable {
    let topology: Topology
    let region: Region
    let runtime: RelayRuntime
    let logger: Logger
    let registry: PrometheusCollectorRegistry
    let hello: LinkHello
    private let serverTLS: NIOSSLContext?
    private let clientTLS: NIOSSLContext?
    private let plaintextPeers: Set<String>
    private let state = Mutex<(next: UInt64, channels: [String: (UInt64, any Channel)], metrics: [String: LinkMetrics])>((1, [:], [:]))
    private let boundPort = BoundPort()
    let listenOn: HostPort

    init(topology: Topology, region: Region, runtime: RelayRuntime, registry: PrometheusCollectorRegistry, logger: Logger, listenOn: HostPort? = nil) throws {
        self.topology = topology
        self.region = region
        self.runtime = runtime
        self.registry = registry
        self.logger = logger
        self.listenOn = listenOn ?? region.link
        self.hello = LinkHello(mesh: topology.mesh, region: region.name, topologyHash: topology.hash)
        let mine = topology.links(of: region.name)
        plaintextPeers = Set(mine.filter { $0.link.plaintext }.map(\.peer.name))
        if mine.contains(where: { !$0.link.plaintext }) {
            guard let tls = topology.linkTLS?.resolved(for: region.name) else {
                throw RelayConfigError("\(topology.file): links of \(region.name) use TLS but 'link_tls' is missing")
            }
            do {
                let chain = try NIOSSLCertificate.fromPEMFile(tls.certificateFile).map { NIOSSLCertificateSource.certificate($0) }
                let key = NIOSSLPrivateKeySource.privateKey(try NIOSSLPrivateKey(file: tls.keyFile, format: .pem))
                var server = TLSConfiguration.makeServerConfigurationWithMTLS(certificateChain: chain, privateKey: key, trustRoots: .file(tls.caFile))
                server.minimumTLSVersion = .tlsv12
                var client = TLSConfiguration.makeClientConfiguration()
                client.certificateChain = chain
                client.privateKey = key
                client.trustRoots = .file(tls.caFile)
                client.minimumTLSVersion = .tlsv12
                client.certificateVerification = .fullVerification
                serverTLS = try NIOSSLContext(configuration: server)
                clientTLS = try NIOSSLContext(configuration: client)
            } catch {
                throw RelayConfigError("link TLS for \(region.name) cannot be loaded (ca \(tls.caFile), cert \(tls.certificateFile), key \(tls.keyFile)): \(error); make them with scripts/dev-certs.sh")
            }
        } else {
            serverTLS = nil
            clientTLS = nil
        }
    }

    /// The port the link listener is bound to.
    func waitUntilListening() async -> Int { await boundPort.wait() }

    func metrics(for peer: String) -> LinkMetrics {
        state.withLock { s in
            if let m = s.metrics[peer] { return m }
            let m = LinkMetrics(registry: registry, region: region.name, peer: peer)
            s.metrics[peer] = m
            return m
        }
    }

    /// Why a hello is refused, or nil when the peer may join.
    func problem(with hello: LinkHello, expectedPeer: String?, certificateNames: [String]?) -> String? {
        if hello.version != LinkCodec.version {
            return "link protocol version \(hello.version) is not \(LinkCodec.version); upgrade both relays to the same release"
        }
        if hello.mesh != topology.mesh { return "mesh '\(hello.mesh)' is not '\(topology.mesh)'" }
        if hello.topologyHash != topology.hash {
            return "topology hash mismatch: \(hello.region) has \(hello.topologyHash), \(region.name) has \(topology.hash); deploy the same topology file to both"
        }
        if let expectedPeer, hello.region != expectedPeer {
            return "dialled \(expectedPeer) but the peer says it is \(hello.region)"
        }
        guard topology.links(of: region.name).contains(where: { $0.peer.name == hello.region }) else {
            return "\(hello.region) has no configured link to \(region.name)"
        }
        if !plaintextPeers.contains(hello.region) {
            guard let names = certificateNames else { return "\(hello.region) must use TLS on this link" }
            guard names.contains(hello.region) else {
                return "certificate names \(names.joined(separator: ", ")), not region \(hello.region)"
            }
        }
        return nil
    }

    func attach(_ peer: String, connection: UInt64, channel: any Channel) {
        let replaced: (any Channel)? = state.withLock { s in
            let old = s.channels[peer]
            s.channels[peer] = (connection, channel)
            return old?.1
        }
        if let replaced {
            runtime.detachLink(peer)
            runtime.handle(.linkDown(peer))
            replaced.close(promise: nil)
        }
        // Called under the runtime's lock: always hop through the event loop's queue so the write never
        // runs inline (a failing write would close the channel and re-enter the runtime), while the
        // queue keeps batches in the order the core produced them.
        let logger = self.logger
        runtime.attachLink(peer, send: { batch in
            channel.eventLoop.execute { channel.writeAndFlush(LinkFrame.batch(batch), promise: nil) }
        }, reset: { reason in
            logger.warning("link dead, resetting", metadata: ["peer": "\(peer)", "reason": "\(reason)"])
            channel.eventLoop.execute { channel.close(promise: nil) }
        })
        logger.info("link up", metadata: ["peer": "\(peer)", "tls": "\(!plaintextPeers.contains(peer))"])
        runtime.handle(.linkUp(peer))
    }

    func detach(_ peer: String, connection: UInt64) {
        let current = state.withLock { s -> Bool in
            guard s.channels[peer]?.0 == connection else { return false }
            s.channels[peer] = nil
            return true
        }
        guard current else { return }
        runtime.detachLink(peer)
        logger.warning("link down", metadata: ["peer": "\(peer)"])
        runtime.handle(.linkDown(peer))
    }

    func received(_ messages: [LinkMessage], from peer: String) {
        metrics(for: peer).receivedBatches.increment()
        // Acceptance times are on the sender's clock; restamp publications with this relay's.
        let now = runtime.now()
        let local = messages.map { m -> LinkMessage in
            guard case .data(var p) = m else { return m }
            p.acceptedAt = now
            return .data(p)
        }
        runtime.handle(.linkBatch(peer, local))
    }

    /// Closes every link connection (used by tests to simulate a broken TCP connection).
    func dropAllLinks() {
        let channels = state.withLock { Array($0.channels.values.map(\.1)) }
        for c in channels { c.close(promise: nil) }
    }

    private func nextConnection() -> UInt64 {
        state.withLock { s in
            defer { s.next += 1 }
            return s.next
        }
    }

    private func initialize(_ channel: any Channel, expectedPeer: String?, tls: NIOSSLContext?, server: Bool,
                            onUp: (@Sendable () -> Void)? = nil) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            let ops = channel.pipeline.syncOperations
            if let tls {
                if server {
                    try ops.addHandler(NIOSSLServerHandler(context: tls))
                } else {
                    try ops.addHandler(NIOSSLClientHandler(context: tls, serverHostname: expectedPeer))
                }
            }
            let maxFrame = max(8 * 1024 * 1024, topology.tuning.maxBatchBytes * 4)
            let encoder = LinkFrameEncoder(codec: LinkCodec(maxFrameBytes: maxFrame))
            try ops.addHandler(ByteToMessageHandler(LinkFrameDecoder(codec: LinkCodec(maxFrameBytes: maxFrame))))
            try ops.addHandler(MessageToByteHandler(encoder))
            try ops.addHandler(LinkSessionHandler(links: self, expectedPeer: expectedPeer, encoder: encoder, connection: nextConnection(), onUp: onUp))
        }
    }

    func run() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let listener = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelOption(Self.keepIdle, value: keepAlive.idle)
            .childChannelOption(Self.keepInterval, value: keepAlive.interval)
            .childChannelOption(Self.keepCount, value: keepAlive.count)
            .childChannelInitializer { [self] channel in initialize(channel, expectedPeer: nil, tls: serverTLS, server: true) }
            .bind(host: listenOn.host, port: listenOn.port).get()
        let port = listener.localAddress?.port ?? listenOn.port
        boundPort.set(port)
        logger.info("links listening", metadata: ["address": "\(listenOn.host):\(port)"])
        // The region whose name sorts first dials, so each pair has one connection.
        let dials = topology.links(of: region.name).filter { region.name < $0.peer.name }
        await withTaskGroup(of: Void.self) { tasks in
            for (peer, link) in dials {
                tasks.addTask { [self] in await dialLoop(peer, plaintext: link.plaintext) }
            }
            tasks.addTask {
                try? await gracefulShutdown()
            }
            await tasks.next()
            tasks.cancelAll()
        }
        try? await listener.close()
        let open = state.withLock { Array($0.channels.values.map(\.1)) }
        for c in open { try? await c.close() }
        logger.info("links closed")
    }

    static let keepIdle = ChannelOptions.tcpOption(NIOBSDSocket.Option(rawValue: CInt(TCP_KEEPIDLE)))
    static let keepInterval = ChannelOptions.tcpOption(NIOBSDSocket.Option(rawValue: CInt(TCP_KEEPINTVL)))
    static let keepCount = ChannelOptions.tcpOption(NIOBSDSocket.Option(rawValue: CInt(TCP_KEEPCNT)))

    /// TCP keepalive for link sockets, a second line behind the heartbeats: probes start after the
    /// read timeout and the kernel gives up after three unanswered ones, a heartbeat interval apart.
    var keepAlive: (idle: Int, interval: Int, count: Int) {
        let idle = max(1, topology.tuning.linkReadTimeout.ternMilliseconds / 1000)
        let interval = max(1, topology.tuning.heartbeatInterval.ternMilliseconds / 1000)
        return (Int(min(idle, 32_767)), Int(min(interval, 32_767)), 3)
    }

    /// Dials `peer` until cancelled, waiting a jittered, growing delay after each failure. A connection
    /// that closes before the link came up (refused, or a handshake that timed out) counts as a failure,
    /// so a peer that keeps refusing is dialled less and less often.
    private func dialLoop(_ peer: Region, plaintext: Bool) async {
        var attempt = 0
        var rng = SystemRandomNumberGenerator()
        while !Task.isCancelled {
            let cameUp = Mutex(false)
            let onUp: @Sendable () -> Void = { cameUp.withLock { $0 = true } }
            do {
                let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .channelOption(.socketOption(.so_keepalive), value: 1)
                    .channelOption(Self.keepIdle, value: keepAlive.idle)
                    .channelOption(Self.keepInterval, value: keepAlive.interval)
                    .channelOption(Self.keepCount, value: keepAlive.count)
                    .connectTimeout(.seconds(5))
                    .channelInitializer { [self] channel in initialize(channel, expectedPeer: peer.name, tls: plaintext ? nil : clientTLS, server: false, onUp: onUp) }
                    .connect(host: peer.link.host, port: peer.link.port).get()
                try? await withTaskCancellationHandler {
                    try await channel.closeFuture.get()
                } onCancel: {
                    channel.close(promise: nil)
                }
            } catch {
                logger.debug("link dial failed", metadata: ["peer": "\(peer.name)", "error": "\(error)"])
            }
            if cameUp.withLock({ $0 }) { attempt = 0 }
            attempt += 1
            let cap = min(topology.tuning.reconnectMax.ternNanoseconds,
                          topology.tuning.reconnectMin.ternNanoseconds << min(attempt, 16))
            let delay = Duration.nanoseconds(Int64.random(in: cap / 2...max(cap / 2, cap), using: &rng))
            do { try await Task.sleep(for: delay) } catch { return }
        }
    }
}
