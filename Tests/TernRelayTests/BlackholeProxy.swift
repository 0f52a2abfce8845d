import NIOCore
import NIOPosix
import Synchronization

/// A TCP forwarder on loopback that can go silent: once blackholed, bytes in both
/// directions are dropped without closing anything, as on a path that fails quietly.
final class BlackholeProxy: Sendable {
    let port: Int
    private let listener: any Channel
    private let silent: SilentSwitch

    final class SilentSwitch: Sendable {
        let on = Atomic<Bool>(false)
    }

    /// Forwards one side's bytes to the other unless the switch is on.
    final class Forwarder: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let silent: SilentSwitch
        /// What arrived before the other side was connected.
        var pending: [ByteBuffer] = []
        var partner: (any Channel)? {
            didSet {
                guard let partner else { return }
                for b in pending { partner.write(b, promise: nil) }
                partner.flush()
                pending = []
            }
        }

        init(silent: SilentSwitch) { self.silent = silent }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !silent.on.load(ordering: .relaxed) else { return }
            let bytes = unwrapInboundIn(data)
            guard let partner else { return pending.append(bytes) }
            partner.writeAndFlush(bytes, promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            partner?.close(promise: nil)
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }

    /// Listens on a free loopback port and forwards every connection to `targetPort`.
    init(targetPort: Int) async throws {
        let silent = SilentSwitch()
        self.silent = silent
        let group = MultiThreadedEventLoopGroup.singleton
        listener = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { inbound in
                let inboundSide = Forwarder(silent: silent)
                let outboundSide = Forwarder(silent: silent)
                ClientBootstrap(group: inbound.eventLoop)
                    .channelInitializer { $0.pipeline.addHandler(outboundSide) }
                    .connect(host: "127.0.0.1", port: targetPort)
                    .whenComplete { result in
                        switch result {
                        case .success(let outbound):
                            outboundSide.partner = inbound
                            inboundSide.partner = outbound
                        case .failure:
                            inbound.close(promise: nil)
                        }
                    }
                return inbound.pipeline.addHandler(inboundSide)
            }
            .bind(host: "127.0.0.1", port: 0).get()
        port = listener.localAddress!.port!
    }

    /// Drops every byte from now on, both ways, on open and new connections alike; nothing is closed.
    func blackhole() { silent.on.store(true, ordering: .relaxed) }

    /// Forwards again.
    func restore() { silent.on.store(false, ordering: .relaxed) }

    func close() async { try? await listener.close() }
}
