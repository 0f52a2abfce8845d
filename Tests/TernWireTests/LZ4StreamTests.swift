import Testing
import TernWire

@Suite("LZ4 streaming through the system liblz4")
struct LZ4StreamTests {
    func message(_ i: Int) -> [UInt8] {
        Array(#"{"push":"pub","topic":"room:lobby","epoch":"eu-west.3fa2c1d0","offset":\#(i),"data":{"user":"alice","text":"hello \#(i % 7)"}}"#.utf8)
    }

    @Test("small similar batches shrink by sharing history, and round-trip exactly")
    func streamingRoundTrip() throws {
        var compressor = LZ4StreamCompressor()
        var decompressor = LZ4StreamDecompressor()
        var raw = 0, sent = 0
        for i in 0..<200 {
            let batch = message(i)
            raw += batch.count
            if let packed = compressor.compress(batch) {
                sent += packed.count
                let unpacked = try decompressor.decompress(packed, rawLength: batch.count)
                #expect(unpacked == batch)
            } else {
                sent += batch.count
                decompressor.acceptRaw(batch)
            }
        }
        // One message alone barely compresses; the shared window makes the stream several times smaller.
        #expect(sent * 3 < raw, "raw \(raw) bytes, sent \(sent)")
    }

    @Test("a batch that does not shrink is sent raw and both ends stay in step")
    func rawFallback() throws {
        var rng = SystemRandomNumberGenerator()
        var compressor = LZ4StreamCompressor()
        var decompressor = LZ4StreamDecompressor()
        let noise = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let first = compressor.compress(noise)
        #expect(first == nil)
        decompressor.acceptRaw(noise)
        let after = message(1) + noise.prefix(512)
        let maybePacked = compressor.compress(after)
        let packed = try #require(maybePacked)
        let unpacked = try decompressor.decompress(packed, rawLength: after.count)
        #expect(unpacked == after)
    }

    @Test("corrupt input is an error, not a crash")
    func corrupt() {
        var decompressor = LZ4StreamDecompressor()
        var threw = 0
        do { _ = try decompressor.decompress([0xFF, 0xFF, 0xFF, 0x00, 0x01], rawLength: 100) } catch { threw += 1 }
        do { _ = try decompressor.decompress([0x00], rawLength: -1) } catch { threw += 1 }
        #expect(threw == 2)
    }
}
