import NIOCore
import Testing
import TernCore
import TernWire

@Suite("Client protocol")
struct WireTests {
    func decode(_ text: String) -> Result<(ref: UInt64?, command: ClientCommand), ClientMessageDecoder.Failure> {
        ClientMessageDecoder.decode(Array(text.utf8))
    }

    @Test("commands decode, and publish data is kept as written")
    func commands() throws {
        let sub = try decode(#"{"ref":3,"op":"subscribe","topic":"room:x","since":{"epoch":"e.1","offset":7}}"#).get()
        #expect(sub.ref == 3)
        #expect(sub.command == .subscribe(topic: "room:x", since: StreamPosition(epoch: "e.1", offset: 7)))
        let pub = try decode(#"{"op":"publish","topic":"room:x","id":"a","data": {"z": 1, "a": [1.50, "é\n"]}}"#).get()
        #expect(pub.command == .publish(topic: "room:x", id: "a", data: #"{"z":1,"a":[1.50,"é\n"]}"#, volatile: false))
        let traced = try decode(#"{"op":"subscribe","topic":"room:x","trace":true}"#).get()
        #expect(traced.command == .subscribe(topic: "room:x", since: nil, trace: true))
        guard case .failure(let badTrace) = decode(#"{"op":"subscribe","topic":"room:x","trace":"yes"}"#) else { Issue.record("accepted"); return }
        #expect(badTrace.error.message.contains("'trace'"))
        #expect(try decode(#"{"op":"ping"}"#).get().command == .ping)
        #expect(try decode(#"{"op":"connect"}"#).get().command == .connect(token: nil))
    }

    @Test("malformed JSON, unknown commands and missing fields get coded errors")
    func badInput() {
        guard case .failure(let malformed) = decode(#"{"op":"#) else { Issue.record("accepted"); return }
        #expect(malformed.error.code == .badRequest)
        guard case .failure(let unknown) = decode(#"{"ref":4,"op":"explode"}"#) else { Issue.record("accepted"); return }
        #expect(unknown.error.code == .unknownCommand)
        #expect(unknown.ref == 4)
        guard case .failure(let missing) = decode(#"{"ref":5,"op":"subscribe"}"#) else { Issue.record("accepted"); return }
        #expect(missing.error.code == .badRequest)
        #expect(missing.ref == 5)
        guard case .failure(let deep) = decode(String(repeating: "[", count: 100) + String(repeating: "]", count: 100)) else {
            Issue.record("accepted"); return
        }
        #expect(deep.error.message.contains("nested deeper"))
    }

    @Test("the JSON reader rejects what JSON forbids")
    func readerStrictness() throws {
        for bad in ["{\"a\":01}", "[1,]", "{\"a\" 1}", "\"\\ud800\"", "tru", "{\"a\":1} x", "\"\u{01}\""] {
            #expect(throws: JSONReader.SyntaxError.self, "\(bad)") { try JSONReader.parse(Array(bad.utf8)) }
        }
        #expect(try JSONReader.parse(Array("\"\\ud83d\\ude00\"".utf8)) == .string("😀"))
    }

    @Test("publications encode with topic, epoch, offset, id and raw data")
    func encode() {
        let p = Publication(topic: "room:x", position: StreamPosition(epoch: "e.1", offset: 2), id: "m\"1", data: "{\"k\":true}", user: "al", acceptedAt: .zero)
        let text = String(buffer: JSONServerEncoder().encode(.publication(p)))
        #expect(text == #"{"push":"pub","topic":"room:x","epoch":"e.1","offset":2,"id":"m\"1","user":"al","data":{"k":true}}"#)
        var traced = p
        traced.trace = [TraceHop(region: "eu", step: .sequenced, at: 1_763_900_000_123_004_999),
                        TraceHop(region: "us", step: .delivered, at: 1_763_900_000_200_000_000)]
        let tracedText = String(buffer: JSONServerEncoder().encode(.publication(traced)))
        #expect(tracedText.hasSuffix(#""data":{"k":true},"trace":[{"region":"eu","step":"sequenced","at":1763900000123.004},{"region":"us","step":"delivered","at":1763900000200.000}]}"#))
        let err = String(buffer: JSONServerEncoder().encode(.error(ref: 1, TernError(.permissionDenied, "no"))))
        #expect(err == #"{"ref":1,"error":{"code":103,"name":"permission_denied","message":"no"}}"#)
    }

    @Test("SSE event ids carry every topic's position and decode back")
    func sseCursor() {
        var cursor: [String: StreamPosition] = ["b:y": StreamPosition(epoch: "e.2", offset: 4)]
        let p = Publication(topic: "a:x", position: StreamPosition(epoch: "e.1", offset: 9), id: "", data: "1", user: nil, acceptedAt: .zero)
        let text = String(buffer: JSONServerEncoder().encodeSSE(.publication(p), cursor: &cursor))
        #expect(text.hasPrefix("id: a:x|e.1|9,b:y|e.2|4\nevent: pub\ndata: {"))
        #expect(text.hasSuffix("\n\n"))
        #expect(Cursor.decode("a:x|e.1|9,b:y|e.2|4") == cursor)
        #expect(Cursor.decode("garbage") == nil)
    }
}
