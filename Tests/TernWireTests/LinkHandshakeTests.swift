import Testing
import TernCore
import TernWire

@Suite("Link handshake")
struct LinkHandshakeTests {
    static func hello(_ region: String) -> LinkHello { LinkHello(mesh: "m", region: region, topologyHash: "h") }
    static func accept(_ hello: LinkHello) -> String? { nil }

    /// Runs a dialling and an accepting side against each other, carrying each side's sent frames to
    /// the other, until neither sends anything. Returns every action of each side.
    static func converse(_ a: inout LinkHandshake, _ b: inout LinkHandshake,
                         aChecks: (LinkHello) -> String? = accept, bChecks: (LinkHello) -> String? = accept)
        -> (a: [LinkHandshake.Action], b: [LinkHandshake.Action]) {
        var aActions = a.opened(), bActions = b.opened()
        var toB = aActions.compactMap(\.frame), toA = bActions.compactMap(\.frame)
        while !toA.isEmpty || !toB.isEmpty {
            var nextToA: [LinkFrame] = [], nextToB: [LinkFrame] = []
            for f in toB { let out = b.received(f, problem: bChecks); bActions += out; nextToA += out.compactMap(\.frame) }
            for f in toA { let out = a.received(f, problem: aChecks); aActions += out; nextToB += out.compactMap(\.frame) }
            toA = nextToA
            toB = nextToB
        }
        return (aActions, bActions)
    }

    @Test("dialling and accepting sides both come up, each attached for the other, after hello, hello, ready")
    func bothUp() {
        var a = LinkHandshake(role: .dialling(expectedPeer: "b"), hello: Self.hello("a"))
        var b = LinkHandshake(role: .accepting, hello: Self.hello("b"))
        #expect(b.opened().isEmpty, "the accepting side waits for the dialler's hello")
        let (aActions, bActions) = Self.converse(&a, &b)
        #expect(aActions == [.send(.hello(Self.hello("a"))), .send(.ready), .attach(peer: "b")])
        #expect(bActions == [.send(.hello(Self.hello("b"))), .attach(peer: "a")])
        #expect(a.phase == .up(peer: "b"))
        #expect(b.phase == .up(peer: "a"))
        #expect(a.received(.batch([.heartbeat(sentAt: 7)]), problem: Self.accept) == [.deliver([.heartbeat(sentAt: 7)], from: "b")])
    }

    @Test("a hello the accepting side refuses leaves both sides down: neither ever attaches")
    func acceptingSideRefuses() {
        var a = LinkHandshake(role: .dialling(expectedPeer: "b"), hello: Self.hello("a"))
        var b = LinkHandshake(role: .accepting, hello: Self.hello("b"))
        let (aActions, bActions) = Self.converse(&a, &b, bChecks: { "certificate names b, not region \($0.region)" })
        // The refusal is one action; the driver logs it and writes the `reject` frame.
        #expect(bActions == [.refuse(reason: "certificate names b, not region a", claimed: "a")])
        #expect(aActions == [.send(.hello(Self.hello("a")))])
        #expect(!aActions.contains { if case .attach = $0 { true } else { false } })
        #expect(!bActions.contains { if case .attach = $0 { true } else { false } })
        #expect(b.phase == .closing(attached: nil))
        // The driver sends the reject; the dialling side then closes without having come up.
        #expect(a.received(.reject(reason: "certificate names b, not region a"), problem: Self.accept)
                == [.refusedByPeer(reason: "certificate names b, not region a")])
        #expect(a.phase == .closing(attached: nil))
        #expect(a.attachedPeer == nil)
    }

    @Test("an answering hello the dialling side refuses leaves the accepting side waiting, never attached")
    func diallingSideRefuses() {
        var a = LinkHandshake(role: .dialling(expectedPeer: "b"), hello: Self.hello("a"))
        var b = LinkHandshake(role: .accepting, hello: Self.hello("b"))
        let (aActions, bActions) = Self.converse(&a, &b, aChecks: { "dialled b but the peer says it is \($0.region)x" })
        #expect(aActions.last == .refuse(reason: "dialled b but the peer says it is bx", claimed: "b"))
        #expect(bActions == [.send(.hello(Self.hello("b")))])
        #expect(b.phase == .awaitingReady(peer: "a"))
        #expect(b.received(.reject(reason: "no"), problem: Self.accept) == [.refusedByPeer(reason: "no")])
        #expect(b.attachedPeer == nil)
    }

    @Test("frames out of the handshake's order are refused with a reason, and nothing is read after")
    func outOfOrder() {
        var b = LinkHandshake(role: .accepting, hello: Self.hello("b"))
        #expect(b.received(.ready, problem: Self.accept) == [.refuse(reason: "a ready out of turn", claimed: nil)])
        #expect(b.received(.hello(Self.hello("a")), problem: Self.accept) == [], "a closing connection reads nothing more")

        b = LinkHandshake(role: .accepting, hello: Self.hello("b"))
        #expect(b.received(.batch([]), problem: Self.accept) == [.refuse(reason: "a batch before the handshake finished", claimed: nil)])

        // A batch after the hello but before `ready`.
        b = LinkHandshake(role: .accepting, hello: Self.hello("b"))
        _ = b.received(.hello(Self.hello("a")), problem: Self.accept)
        #expect(b.received(.batch([]), problem: Self.accept) == [.refuse(reason: "a batch before the handshake finished", claimed: nil)])

        // A second hello on an up link: refused, and the link stays attached until it closes.
        var a = LinkHandshake(role: .dialling(expectedPeer: "b"), hello: Self.hello("a"))
        _ = a.opened()
        _ = a.received(.hello(Self.hello("b")), problem: Self.accept)
        #expect(a.received(.hello(Self.hello("b")), problem: Self.accept) == [.refuse(reason: "a hello out of turn", claimed: "b")])
        #expect(a.phase == .closing(attached: "b"))
        #expect(a.attachedPeer == "b")
    }

    @Test("a reset while up keeps the attached peer, so closing detaches it; frames after are ignored")
    func resetKeepsAttachment() {
        var a = LinkHandshake(role: .dialling(expectedPeer: "b"), hello: Self.hello("a"))
        _ = a.opened()
        _ = a.received(.hello(Self.hello("b")), problem: Self.accept)
        a.reset()
        #expect(a.attachedPeer == "b")
        #expect(a.received(.batch([.heartbeat(sentAt: 1)]), problem: Self.accept) == [])
    }
}

extension LinkHandshake.Action {
    /// The frame this action sends, if it sends one.
    var frame: LinkFrame? {
        if case .send(let f) = self { return f }
        return nil
    }
}
