import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Synchronization

/// Where a load connection points: a WebSocket URL split into its parts.
public struct BenchEndpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var path: String

    /// Parses `ws://HOST:PORT/PATH` (TLS is not supported: benchmarks run on loopback).
    public init(url: String) throws {
        guard url.hasPrefix("ws://") else { throw BenchError("'\(url)' is not a ws:// URL (benchmarks talk plain WebSocket on loopback)") }
        let rest = url.dropFirst("ws://".count)
        let hostPort = rest.prefix { $0 != "/" }
        path = rest.count > hostPort.count ? String(rest.dropFirst(hostPort.count)) : "/"
        guard let colon = hostPort.lastIndex(of: ":"), let p = Int(hostPort[hostPort.index(after: colon)...]), (1...65535).contains(p) else {
            throw BenchError("'\(url)' has no port; write it as ws://HOST:PORT/PATH")
        }
        host = String(hostPort[..<colon])
        port = p
    }

    public var description: String { "ws://\(host):\(port)\(path)" }
}

/// A benchmark that could not run, with what to change.
public struct BenchError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// What a load connection does with the text frames it receives. Called on the connection's event loop.
protocol BenchProtocolHandler: AnyObject {
    /// The WebSocket is open: send the first frames.
    func opened(_ socket: BenchSocket)
    /// One text (or binary) frame's payload.
    func received(_ payload: inout ByteBuffer, _ socket: BenchSocket)
}

/// One WebSocket connection of the load generator: a NIO channel handler on one event loop that
/// hands each frame's payload to a protocol handler and writes frames it is given, masked as a
/// client must.
final class BenchSocket: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let handler: any BenchProtocolHandler
    private var context: ChannelHandlerContext?
    private(set) var closed = false
    let closedPromise: EventLoopPromise<Void>

    init(handler: any BenchProtocolHandler, eventLoop: any EventLoop) {
        self.handler = handler
        self.closedPromise = eventLoop.makePromise()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    /// The upgrade is complete (the HTTP handlers are gone): the protocol may speak.
    func start() {
        guard context != nil, !closed else { return }
        handler.opened(self)
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        closedPromise.succeed(())
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .binary, .continuation:
            var payload = frame.unmaskedData
            handler.received(&payload, self)
        case .ping:
            send(frame.unmaskedData, opcode: .pong)
            flush()
        case .connectionClose:
            context.close(promise: nil)
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// Queues a frame (call `flush` after a run of them).
    func send(_ bytes: ByteBuffer, opcode: WebSocketOpcode = .text) {
        guard let context, !closed else { return }
        // The frame encoder applies the mask.
        context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: opcode, maskKey: .random(), data: bytes)), promise: nil)
    }

    func send(_ text: String) {
        guard let context else { return }
        send(context.channel.allocator.buffer(string: text))
    }

    func flush() { context?.flush() }

    func close() {
        guard let context, !closed else { return }
        context.close(promise: nil)
    }

    var eventLoop: (any EventLoop)? { context?.eventLoop }

    /// Opens a WebSocket to `endpoint` on one of `group`'s loops, with `handler` reading it.
    static func connect(_ endpoint: BenchEndpoint, group: any EventLoopGroup, handler: any BenchProtocolHandler) -> EventLoopFuture<BenchSocket> {
        let loop = group.next()
        let socketPromise = loop.makePromise(of: BenchSocket.self)
        let bootstrap = ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                let upgrader = NIOTypedWebSocketClientUpgrader<Void>(
                    maxFrameSize: 16 << 20,
                    upgradePipelineHandler: { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            let socket = BenchSocket(handler: handler, eventLoop: channel.eventLoop)
                            try channel.pipeline.syncOperations.addHandler(socket)
                            socketPromise.succeed(socket)
                        }
                    })
                var headers = HTTPHeaders()
                headers.add(name: "Host", value: "\(endpoint.host):\(endpoint.port)")
                headers.add(name: "Content-Length", value: "0")
                let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: endpoint.path, headers: headers)
                let config = NIOTypedHTTPClientUpgradeConfiguration<Void>(
                    upgradeRequestHead: head, upgraders: [upgrader],
                    notUpgradingCompletionHandler: { channel in
                        channel.close(promise: nil)
                        return channel.eventLoop.makeFailedFuture(BenchError("\(endpoint) refused the WebSocket upgrade"))
                    })
                return channel.eventLoop.makeCompletedFuture {
                    let upgraded = try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(
                        configuration: .init(upgradeConfiguration: config))
                    upgraded.whenComplete { result in
                        switch result {
                        case .failure(let error): socketPromise.fail(error)
                        case .success: socketPromise.futureResult.whenSuccess { $0.start() }
                        }
                    }
                }
            }
        bootstrap.connect(host: endpoint.host, port: endpoint.port).whenFailure { error in
            socketPromise.fail(BenchError("cannot connect to \(endpoint): \(error)"))
        }
        return socketPromise.futureResult
    }
}

extension ByteBuffer {
    /// Whether the readable bytes start with `prefix`.
    func starts(with prefix: StaticString) -> Bool {
        let count = prefix.utf8CodeUnitCount
        guard readableBytes >= count else { return false }
        return withUnsafeReadableBytes { raw in
            prefix.withUTF8Buffer { p in memcmp(raw.baseAddress!, p.baseAddress!, count) == 0 }
        }
    }

    /// The unsigned integer that follows the first `key` (e.g. `"offset":`), if any.
    func integer(after key: StaticString) -> UInt64? {
        withUnsafeReadableBytes { raw -> UInt64? in
            key.withUTF8Buffer { k -> UInt64? in
                let n = raw.count, m = k.count
                guard n >= m else { return nil }
                var i = 0
                while i <= n - m {
                    if raw[i] == k[0], memcmp(raw.baseAddress! + i, k.baseAddress!, m) == 0 {
                        var j = i + m
                        var value: UInt64 = 0
                        var digits = 0
                        while j < n, raw[j] >= 48, raw[j] <= 57 {
                            value = value &* 10 &+ UInt64(raw[j] - 48)
                            j += 1
                            digits += 1
                        }
                        return digits > 0 ? value : nil
                    }
                    i += 1
                }
                return nil
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
