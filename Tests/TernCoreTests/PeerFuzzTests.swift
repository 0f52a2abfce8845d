import Testing
import TernCore

/// Whatever well-formed messages its neighbours send, in whatever order, a relay core neither
/// traps nor breaks its own invariants. Messages are drawn from a small set of topics, regions,
/// epochs and offsets (including absurd ones), so they collide with the core's real state often.
@Suite("Peers that say anything")
struct PeerFuzzTests {
    static let graph = MeshGraph(regions: ["a", "b", "c"], links: [("a", "b", .milliseconds(10)), ("b", "c", .milliseconds(10)),
                                                                  ("a", "c", .milliseconds(30))])
    static let topics = ["news:t0", "news:t1", "room:r0", "room:r1", "nope:x"]
    static let regions = ["a", "b", "c", "zz"]
    static let epochs = ["a.1", "a.2", "c.7", "b.9", ""]
    static let offsets: [UInt64] = [0, 1, 2, 3, 4, 5, 1_000_001, UInt64.max - 1, UInt64.max]

    struct Draw {
        var rng: SplitMix64
        mutating func int(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }
        mutating func pick<T>(_ items: [T]) -> T { items[int(items.count)] }
        mutating func bool() -> Bool { rng.next() & 1 == 0 }
        mutating func position() -> StreamPosition { StreamPosition(epoch: pick(PeerFuzzTests.epochs), offset: pick(PeerFuzzTests.offsets)) }
        mutating func maybePosition() -> StreamPosition? { bool() ? position() : nil }
        mutating func entry() -> PresenceEntry {
            PresenceEntry(client: ClientID(UInt64(int(4))), user: "u\(int(3))", region: pick(PeerFuzzTests.regions))
        }

        mutating func message() -> LinkMessage {
            let topic = pick(PeerFuzzTests.topics)
            switch int(20) {
            case 0: return .linkState(origin: pick(PeerFuzzTests.regions), incarnation: UInt64(int(3)), sequence: UInt64(int(5)),
                                      neighbours: (0..<int(3)).map { _ in pick(PeerFuzzTests.regions) })
            case 1: return .interest(topic: topic, since: maybePosition(), fork: maybePosition())
            case 2: return .epochSwitch(topic: topic, from: position(), to: position())
            case 3: return .uninterest(topic: topic)
            case 4, 5: return .data(Publication(topic: topic, position: position(), id: bool() ? "" : "p\(int(6))", data: "1",
                                                user: nil, acceptedAt: .zero, firstPosition: maybePosition()))
            case 6: return .caughtUp(topic: topic, position: position())
            case 7: return .gap(topic: topic, position: position(), reason: .evicted)
            case 8: return .resync(topic: topic)
            case 9: return .publish(topic: topic, id: bool() ? "" : "p\(int(6))", data: "2", user: nil, origin: pick(PeerFuzzTests.regions),
                                    ref: UInt64(int(4)), receivedAtWall: 0, firstAt: maybePosition())
            case 10: return .trace(topic: topic, region: pick(PeerFuzzTests.regions), home: pick(PeerFuzzTests.regions), on: bool())
            case 11: return .ack(origin: pick(PeerFuzzTests.regions), ref: UInt64(int(4)), topic: topic,
                                 result: bool() ? .accepted(position: position(), duplicate: bool()) : .refused(code: .internalError, message: "no"))
            case 12: return .follow(topic: topic, replica: pick(PeerFuzzTests.regions), home: pick(PeerFuzzTests.regions), from: position())
            case 13: return .unfollow(topic: topic, replica: pick(PeerFuzzTests.regions))
            case 14: return .replicated(topic: topic, epoch: pick(PeerFuzzTests.epochs), from: pick(PeerFuzzTests.offsets),
                                        to: pick(PeerFuzzTests.offsets), home: pick(PeerFuzzTests.regions))
            case 15:
                let change: PresenceChange = switch int(3) {
                case 0: .join(entry())
                case 1: .leave(ClientID(UInt64(int(4))))
                default: .snapshot((0..<int(3)).map { _ in entry() })
                }
                return .presence(topic: topic, owner: pick(PeerFuzzTests.regions), incarnation: UInt64(int(3)), sequence: UInt64(int(6)),
                                 change: change, towardsHome: bool())
            case 16: return .presenceDigest(topic: topic, owners: (0..<int(4)).map { _ in
                PresenceDigestEntry(owner: pick(PeerFuzzTests.regions), incarnation: UInt64(int(3)), count: UInt32(int(3)), checksum: UInt64(int(3)))
            })
            case 17: return .recover(topic: topic, home: pick(PeerFuzzTests.regions), replica: pick(PeerFuzzTests.regions), after: position())
            case 18: return .recovered(topic: topic, home: pick(PeerFuzzTests.regions), replica: pick(PeerFuzzTests.regions),
                                       publication: bool() ? Publication(topic: topic, position: position(), id: "p\(int(6))", data: "4", user: nil,
                                                                         acceptedAt: .zero) : nil,
                                       position: maybePosition())
            default: return bool() ? .credit(batches: int(3)) : .heartbeat(sentAt: Int64(int(1000)))
            }
        }
    }

    @Test("random peer traffic never traps the core or breaks an invariant", arguments: 1...40 as ClosedRange<UInt64>)
    func randomPeers(seed: UInt64) {
        var draw = Draw(rng: SplitMix64(seed: seed))
        var mesh = MeshConfig(graph: Self.graph, pinnedHomes: [:])
        mesh.failoverAfter = .milliseconds(300)
        mesh.interestLinger = .milliseconds(200)
        var config = RelayCoreConfig(region: "b", namespaces: MeshHarness.namespaces, mesh: mesh)
        config.checkInvariants = true
        var core = RelayCore(config: config, encoder: RecordingEncoder(), seed: seed, now: .zero)
        var now = TernInstant.zero
        func handle(_ event: RelayEvent) {
            now = now + .milliseconds(Int64(draw.int(40)))
            _ = core.handle(event, now: now)
            let failures = core.checkInvariants()
            if !failures.isEmpty { Issue.record("seed \(seed), after \(event): \(failures.prefix(3))") }
        }
        handle(.linkUp("a"))
        handle(.linkUp("c"))
        for i in 0..<6 {
            let c = ClientID(UInt64(100 + i))
            handle(.opened(c, .websocket))
            handle(.command(c, ref: 0, .connect(token: "t")))
            handle(.authenticated(c, ref: 0, ClientIdentity(user: "u\(i)", expiresAt: nil, subscribe: [TopicPattern("*")],
                                                            publish: [TopicPattern("*")], presence: [TopicPattern("*")])))
            handle(.command(c, ref: 1, .subscribe(topic: Self.topics[i % 4], since: nil)))
        }
        for step in 0..<1500 {
            switch draw.int(20) {
            case 0: handle(.tick)
            case 1: handle(draw.bool() ? .linkDown(draw.pick(["a", "c"])) : .linkUp(draw.pick(["a", "c"])))
            case 2: handle(.command(ClientID(UInt64(100 + draw.int(6))), ref: UInt64(step), .publish(topic: draw.pick(Self.topics),
                                    id: draw.bool() ? "" : "p\(draw.int(6))", data: "3", volatile: false)))
            case 3: handle(.command(ClientID(UInt64(100 + draw.int(6))), ref: UInt64(step),
                                    draw.bool() ? .subscribe(topic: draw.pick(Self.topics), since: draw.maybePosition())
                                                : .unsubscribe(topic: draw.pick(Self.topics))))
            default:
                let batch = (0..<(1 + draw.int(4))).map { _ in draw.message() }
                handle(.linkBatch(draw.pick(["a", "c"]), batch))
            }
        }
        // The core's own per-event checks (on in debug builds) found nothing either.
        #expect(core.invariantFailures.isEmpty, "seed \(seed): \(core.invariantFailures.prefix(3))")
    }
}
