import TernCore

/// One link connection's handshake and framing rules, as a state machine without I/O: frames in,
/// actions out. The relay's channel handler feeds it what it reads and carries out what it returns.
///
/// The handshake takes three frames (see `LinkFrame`): the dialling side sends `hello`; the accepting
/// side checks it and answers with its own `hello`; the dialling side checks that and sends `ready`.
/// A side attaches the link to its relay core only once it has accepted the other's hello and knows
/// its own was accepted, so a refused side never sees the link up.
public struct LinkHandshake: Sendable {
    /// Which end of the connection this is.
    public enum Role: Sendable, Equatable {
        /// This side dialled `expectedPeer`.
        case dialling(expectedPeer: String)
        /// This side accepted the connection and learns the peer from its hello.
        case accepting
    }

    /// Where the connection is.
    public enum Phase: Sendable, Equatable {
        /// Waiting for the peer's hello (the dialling side has sent its own, the accepting side has not).
        case awaitingHello
        /// The accepting side accepted the dialler's hello and answered; waiting for `ready`.
        case awaitingReady(peer: String)
        /// Both hellos were accepted; the link is attached to the relay core.
        case up(peer: String)
        /// Refused or reset by either side; nothing more is read. `attached` is the peer when the link
        /// had come up, so that closing detaches it.
        case closing(attached: String?)
    }

    /// What the driver does.
    public enum Action: Sendable, Equatable {
        /// Write this frame.
        case send(LinkFrame)
        /// Attach the link to the relay core for `peer`.
        case attach(peer: String)
        /// Hand a batch received on the up link to the relay core.
        case deliver([LinkMessage], from: String)
        /// Refuse the connection: log `reason` (naming `claimed`, the region the peer said it was, if
        /// known), send it in a `reject` frame, then close.
        case refuse(reason: String, claimed: String?)
        /// The peer refused this side: log `reason` and close.
        case refusedByPeer(reason: String)
    }

    public let role: Role
    public private(set) var phase = Phase.awaitingHello
    /// This side's hello.
    public let hello: LinkHello

    public init(role: Role, hello: LinkHello) {
        self.role = role
        self.hello = hello
    }

    /// The peer the link is attached for: while up, and while closing after it was up.
    public var attachedPeer: String? {
        switch phase {
        case .up(let peer), .closing(attached: let peer?): peer
        case .awaitingHello, .awaitingReady, .closing(attached: nil): nil
        }
    }

    /// The region this side dialled, if it dialled.
    public var expectedPeer: String? {
        if case .dialling(let peer) = role { return peer }
        return nil
    }

    /// The connection is open: the dialling side speaks first.
    public mutating func opened() -> [Action] {
        guard case .dialling = role, phase == .awaitingHello else { return [] }
        return [.send(.hello(hello))]
    }

    /// A frame arrived. `problem` says why a hello is refused (version, mesh, topology, certificate),
    /// or nil when the peer may join.
    public mutating func received(_ frame: LinkFrame, problem: (LinkHello) -> String?) -> [Action] {
        if case .closing = phase { return [] }
        switch (phase, frame) {
        case (_, .reject(let reason)):
            phase = .closing(attached: attachedPeer)
            return [.refusedByPeer(reason: reason)]
        case (.awaitingHello, .hello(let peerHello)):
            if let reason = problem(peerHello) { return refuse(reason, claimed: peerHello.region) }
            switch role {
            case .dialling:
                // The accepting side answers only a hello it accepted: the link is up on both sides.
                phase = .up(peer: peerHello.region)
                return [.send(.ready), .attach(peer: peerHello.region)]
            case .accepting:
                phase = .awaitingReady(peer: peerHello.region)
                return [.send(.hello(hello))]
            }
        case (.awaitingReady(let peer), .ready):
            phase = .up(peer: peer)
            return [.attach(peer: peer)]
        case (.up(let peer), .batch(let messages)):
            return [.deliver(messages, from: peer)]
        case (_, .hello):
            return refuse("a hello out of turn", claimed: nil)
        case (_, .ready):
            return refuse("a ready out of turn", claimed: nil)
        case (_, .batch):
            return refuse("a batch before the handshake finished", claimed: nil)
        }
    }

    /// The connection failed to decode or errored: nothing more is read.
    public mutating func reset() {
        phase = .closing(attached: attachedPeer)
    }

    private mutating func refuse(_ reason: String, claimed: String?) -> [Action] {
        phase = .closing(attached: attachedPeer)
        return [.refuse(reason: reason, claimed: claimed ?? attachedPeer ?? expectedPeer)]
    }
}
