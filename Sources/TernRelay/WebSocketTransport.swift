import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket
import TernCore
import TernWire

/// The relay's HTTP server connection: a request to upgrade `/ws` becomes a WebSocket served by
/// NIO channel handlers on the connection's event loop (no task, no async stream, no lock held
/// while writing); every other request goes to Hummingbird's router as before.
///
/// Modelled on hummingbird-websocket's `HTTP1WebSocketUpgradeChannel`, whose WebSocket side runs a
/// Swift-concurrency task per connection: an idle subscribed connection costs that task's memory,
/// and every frame written costs an `await`. Here a connection is a handler object and frames
/// written in one wake-up go out with one flush.
struct RelayServerChannel: ServerChildChannel, HTTPChannelHandler {
    enum UpgradeResult: Sendable {
        case websocket
        case notUpgraded(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        case failedUpgrade(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
    }

    struct Value: ServerChildChannelValue {
        let upgradeResult: EventLoopFuture<UpgradeResult>
        let channel: any Channel
    }

    let responder: HTTPChannelHandler.Responder
    /// The largest WebSocket frame read at all (bigger ones close the connection with 1009).
    let maxFrameSize: Int
    /// Builds the handler of an upgraded connection, on its event loop.
    let makeHandler: @Sendable (any EventLoop) -> RelayWebSocketHandler

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let upgradeAttempted = NIOLoopBoundBox(false, eventLoop: channel.eventLoop)
            let makeHandler = self.makeHandler
            let upgrader = NIOTypedWebSocketServerUpgrader<UpgradeResult>(
                maxFrameSize: maxFrameSize,
                shouldUpgrade: { channel, head in
                    upgradeAttempted.value = true
                    let path = head.uri.split(separator: "?", maxSplits: 1).first ?? ""
                    return channel.eventLoop.makeSucceededFuture(path == "/ws" ? HTTPHeaders() : nil)
                },
                upgradePipelineHandler: { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(makeHandler(channel.eventLoop))
                        return UpgradeResult.websocket
                    }
                })
            let upgradeConfiguration = NIOTypedHTTPServerUpgradeConfiguration(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                        try channel.pipeline.syncOperations.addHandler(HTTPConnectionStateHandler(idleTimeout: nil, logger: logger))
                        let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
                        return upgradeAttempted.value ? .failedUpgrade(asyncChannel) : .notUpgraded(asyncChannel)
                    }
                })
            var configuration = NIOUpgradableHTTPServerPipelineConfiguration(upgradeConfiguration: upgradeConfiguration)
            configuration.enablePipelining = false
            configuration.enableErrorHandling = false
            configuration.enableResponseHeaderValidation = false
            let result = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: configuration)
            return Value(upgradeResult: result, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.upgradeResult.get() {
            case .websocket:
                // The channel handlers own the connection from here on.
                return
            case .notUpgraded(let http):
                await handleHTTP(asyncChannel: http, logger: logger)
            case .failedUpgrade(let http):
                try await http.executeThenClose { _, outbound in
                    let head = HTTPResponse(status: .badRequest, headerFields: [.connection: "close", .contentLength: "0"])
                    try await outbound.write(contentsOf: [.head(head), .end(nil)])
                }
            }
        } catch {
            logger.debug("connection ended during the upgrade", metadata: ["error": "\(error)"])
        }
    }
}

/// One client's WebSocket: reads commands into the relay core and writes what the core wrote to it.
///
/// Everything runs on the connection's event loop. The runtime hands it frames (`append`) in one
/// task on this loop for all its connections; at the end of the task they are written as one
/// buffer and flushed once (`flushAppended`). When the socket cannot take more (`isWritable`
/// false), the handler tells the runtime, and the core keeps the connection's frames in its
/// bounded per-client queue, where the slow-consumer rules apply, until the socket drains.
final class RelayWebSocketHandler: ChannelInboundHandler, ConnectionWriter, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let runtime: RelayRuntime
    private let authenticator: Authenticator
    private let logger: Logger
    private let maxMessageBytes: Int
    private let pingInterval: TimeAmount
    private var context: ChannelHandlerContext?
    /// The frame encoder's context: what is written on it skips the encoder and goes straight to
    /// the socket. Text frames are framed here, several to a buffer (see `flushAppended`).
    private var rawContext: ChannelHandlerContext?
    /// The core's id for this connection, while it is open.
    private(set) var client: ClientID?
    /// A text message arriving in several frames.
    private var fragments: ByteBuffer?
    /// Messages that arrived while a token was being verified; handled in order once it is.
    private var held: [ByteBuffer] = []
    private var verifying = false
    private var closing = false
    private var receivedSincePing = true
    private var pingTask: RepeatedTask?
    /// Frames handed over and not yet flushed (`append`); released once written, so an idle
    /// connection holds no buffer.
    private var appended: [OutboundFrame] = []
    let eventLoop: any EventLoop

    init(runtime: RelayRuntime, authenticator: Authenticator, logger: Logger, maxMessageBytes: Int,
         pingInterval: TimeAmount = .seconds(30), eventLoop: any EventLoop) {
        self.runtime = runtime
        self.authenticator = authenticator
        self.logger = logger
        self.maxMessageBytes = maxMessageBytes
        self.pingInterval = pingInterval
        self.eventLoop = eventLoop
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        rawContext = try? context.pipeline.syncOperations.context(handlerType: WebSocketFrameEncoder.self)
        let client = runtime.registerWriter(self)
        self.client = client
        runtime.handle(.opened(client, .websocket))
        if !context.channel.isWritable { runtime.setWritable(client, false, on: context.eventLoop) }
        // A peer that answers nothing for two ping intervals is gone, even if TCP has not noticed.
        pingTask = context.eventLoop.scheduleRepeatedTask(initialDelay: pingInterval, delay: pingInterval) { [weak self] _ in
            self?.pingDue()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        pingTask?.cancel()
        pingTask = nil
        if let client {
            self.client = nil
            runtime.unregister(client)
        }
        self.context = nil
        context.fireChannelInactive()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Everything this read produced for WebSockets goes out now, one write per connection.
        runtime.dispatchWrites()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if let client { runtime.setWritable(client, context.channel.isWritable, on: context.eventLoop) }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The server allows half-closed connections (for HTTP); a WebSocket peer that stops sending is gone.
        if let event = event as? ChannelEvent, event == .inputClosed {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("websocket error", metadata: ["client": "\(client.map { "\($0)" } ?? "-")", "error": "\(error)"])
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        receivedSincePing = true
        switch frame.opcode {
        case .text, .binary:
            if frame.fin {
                fragments = nil
                message(frame.unmaskedData)
            } else {
                fragments = frame.unmaskedData
            }
        case .continuation:
            guard var partial = fragments else { return }
            var more = frame.unmaskedData
            partial.writeBuffer(&more)
            if partial.readableBytes > maxMessageBytes * 4 {
                // Past what the relay reads at all: as for one oversized frame.
                fragments = nil
                closeNow(code: .messageTooLarge, reason: "message too big")
                return
            }
            if frame.fin {
                fragments = nil
                message(partial)
            } else {
                fragments = partial
            }
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .connectionClose:
            // The peer closes: answer with a close frame, then close.
            guard !closing else {
                context.close(promise: nil)
                return
            }
            closing = true
            var data = frame.unmaskedData
            let code = data.readInteger(as: UInt16.self) ?? 1000
            var payload = context.channel.allocator.buffer(capacity: 2)
            payload.writeInteger(code)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload))).whenComplete { _ in
                channel.close(promise: nil)
            }
        default:
            break
        }
    }

    // MARK: Commands

    private func message(_ bytes: ByteBuffer) {
        guard !verifying else {
            // Bounded: a client may pipeline commands behind its connect, not flood while it is checked.
            if held.count < 256 {
                held.append(bytes)
            } else if let client {
                runtime.handle(.badFrame(client, ref: nil, TernError(.rateLimited,
                    "more than 256 commands sent before the connect was answered; this one was dropped")))
            }
            return
        }
        guard let client else { return }
        if bytes.readableBytes > maxMessageBytes {
            runtime.handle(.badFrame(client, ref: nil, TernError(.messageTooLarge,
                "message of \(bytes.readableBytes) bytes is over the \(maxMessageBytes)-byte limit; it was dropped")))
            return
        }
        switch ClientMessageDecoder.decode(bytes.readableBytesView) {
        case .failure(let failure):
            runtime.handle(.badFrame(client, ref: failure.ref, failure.error))
        case .success(let (ref, command)):
            for action in runtime.handle(.command(client, ref: ref, command), deferWrites: true) {
                guard case .verifyToken(let c, let ref, let token) = action else { continue }
                verify(c, ref: ref, token: token)
            }
        }
    }

    /// Checks a token off the event loop, holding later messages until the answer is in.
    private func verify(_ client: ClientID, ref: UInt64?, token: String) {
        verifying = true
        let runtime = self.runtime, authenticator = self.authenticator, loop = eventLoop
        Task {
            let result = await authenticator.verify(token, now: runtime.now())
            switch result {
            case .success(let identity): runtime.handle(.authenticated(client, ref: ref, identity))
            case .failure(let failure): runtime.handle(.authenticationFailed(client, ref: ref, failure))
            }
            loop.execute { self.verified() }
        }
    }

    private func verified() {
        verifying = false
        while !verifying, !held.isEmpty {
            message(held.removeFirst())
        }
        runtime.dispatchWrites()
    }

    private func pingDue() {
        guard let context, !closing else { return }
        if !receivedSincePing {
            logger.debug("websocket peer stopped answering pings", metadata: ["client": "\(client.map { "\($0)" } ?? "-")"])
            context.close(promise: nil)
            return
        }
        receivedSincePing = false
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: context.channel.allocator.buffer(capacity: 0))), promise: nil)
    }

    // MARK: Writing (ConnectionWriter)

    func append(_ frame: OutboundFrame) -> Bool {
        guard context != nil, !closing else { return false }
        appended.append(frame)
        return appended.count == 1
    }

    func flushAppended() {
        guard !appended.isEmpty else { return }
        let frames = appended
        appended = []
        guard let context else { return }
        guard let raw = rawContext else {
            for frame in frames {
                context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: frame.bytes)), promise: nil)
            }
            context.flush()
            return
        }
        // The frames of one hand-over go out as one buffer: each frame's header followed by a copy
        // of its payload. NIOWebSocket's encoder would write a separately allocated header and the
        // payload for every frame (two writes); copying a payload of a few hundred bytes costs less
        // than that, and one write per connection keeps the socket's write queue short.
        var size = 0
        for frame in frames { size += frame.bytes.readableBytes + WebSocketFraming.maxHeaderBytes }
        var out = context.channel.allocator.buffer(capacity: size)
        for frame in frames {
            WebSocketFraming.writeTextHeader(length: frame.bytes.readableBytes, into: &out)
            out.writeImmutableBuffer(frame.bytes)
        }
        raw.write(NIOAny(out), promise: nil)
        context.flush()
    }

    func finish(_ code: CloseCode, after frames: [OutboundFrame]) {
        guard let context, !closing else { return }
        // A slow consumer is not reading: it gets nothing more but the close frame, behind what is
        // already buffered, and the connection ends once that is out (or after a grace period).
        // Others get what was queued first, then a moment to answer the close.
        let slow = code == .slowConsumer
        if !slow { for frame in frames { _ = append(frame) } }
        flushAppended()
        closing = true
        var payload = context.channel.allocator.buffer(capacity: 2 + code.reason.utf8.count)
        payload.writeInteger(UInt16(code.rawValue))
        payload.writeString(code.reason)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload))).whenComplete { _ in
            if slow {
                channel.close(promise: nil)
            } else {
                channel.eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
            }
        }
        if slow { channel.eventLoop.scheduleTask(in: .seconds(10)) { channel.close(promise: nil) } }
    }

    func forceClose() {
        eventLoop.execute { self.context?.close(promise: nil) }
    }

    private func closeNow(code: WebSocketErrorCode, reason: String) {
        guard let context else { return }
        closing = true
        var payload = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        payload.write(webSocketErrorCode: code)
        payload.writeString(reason)
        context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)), promise: nil)
        context.flush()
        context.close(promise: nil)
    }
}

/// The header of an unmasked server-to-client WebSocket frame (RFC 6455, section 5.2), written in
/// front of payloads the relay has already encoded. Only final text frames are written this way;
/// control frames go through NIOWebSocket's encoder.
enum WebSocketFraming {
    /// The longest header: two bytes and a 64-bit length.
    static let maxHeaderBytes = 10

    static func writeTextHeader(length: Int, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0x81))  // FIN, opcode 1 (text)
        if length < 126 {
            buffer.writeInteger(UInt8(length))
        } else if length <= Int(UInt16.max) {
            buffer.writeInteger(UInt8(126))
            buffer.writeInteger(UInt16(length))
        } else {
            buffer.writeInteger(UInt8(127))
            buffer.writeInteger(UInt64(length))
        }
    }
}
