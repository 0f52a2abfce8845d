import CLZ4

/// Streaming LZ4 compression across a link's batches: each batch is
/// compressed against the previous 64 KiB, so small similar messages share
/// history. Both ends must see the same batches in the same order; create a
/// new pair on every reconnect.
public struct LZ4StreamCompressor: ~Copyable {
    /// The window LZ4 can refer back to.
    public static let windowBytes = 65_536

    private let stream: UnsafeMutablePointer<LZ4_stream_t>
    private let dictionary: UnsafeMutablePointer<CChar>
    private let acceleration: Int32

    /// A compressor with an empty history; `acceleration` trades ratio for speed (1 is the default).
    public init(acceleration: Int32 = 1) {
        stream = LZ4_createStream()
        dictionary = .allocate(capacity: Self.windowBytes)
        self.acceleration = acceleration
    }

    deinit {
        LZ4_freeStream(stream)
        dictionary.deallocate()
    }

    /// Compresses `input` against the history; nil when the result would not be smaller.
    ///
    /// The input joins the history either way, so the peer must append a raw
    /// batch to its history too (`LZ4StreamDecompressor.acceptRaw`).
    public mutating func compress(_ input: [UInt8]) -> [UInt8]? {
        guard !input.isEmpty, input.count <= Int(LZ4_MAX_INPUT_SIZE) else {
            if !input.isEmpty { remember(input) }
            return nil
        }
        let bound = Int(LZ4_compressBound(Int32(input.count)))
        var output = [UInt8](repeating: 0, count: bound)
        let written = input.withUnsafeBufferPointer { src in
            output.withUnsafeMutableBufferPointer { dst in
                src.withMemoryRebound(to: CChar.self) { s in
                    dst.withMemoryRebound(to: CChar.self) { d in
                        LZ4_compress_fast_continue(stream, s.baseAddress, d.baseAddress, Int32(input.count), Int32(bound), acceleration)
                    }
                }
            }
        }
        // The source buffer goes away: copy the window LZ4 may refer to into our own buffer.
        LZ4_saveDict(stream, dictionary, Int32(Self.windowBytes))
        guard written > 0, Int(written) < input.count else { return nil }
        output.removeSubrange(Int(written)...)
        return output
    }

    private mutating func remember(_ input: [UInt8]) {
        // Oversized input cannot be compressed; keep the history in step by loading it as dictionary.
        let tail = Array(input.suffix(Self.windowBytes))
        tail.withUnsafeBufferPointer { p in
            p.withMemoryRebound(to: CChar.self) { _ = LZ4_loadDict(stream, $0.baseAddress, Int32(tail.count)) }
        }
        LZ4_saveDict(stream, dictionary, Int32(Self.windowBytes))
    }
}

/// The receiving end of `LZ4StreamCompressor`.
public struct LZ4StreamDecompressor: ~Copyable {
    /// Why a batch could not be decompressed.
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    private var history: [UInt8] = []

    /// A decompressor with an empty history.
    public init() {}

    /// Decompresses a batch that decodes to exactly `rawLength` bytes.
    public mutating func decompress(_ input: [UInt8], rawLength: Int) throws(Failure) -> [UInt8] {
        guard rawLength > 0, rawLength <= Int(LZ4_MAX_INPUT_SIZE) else {
            throw Failure(description: "declared raw length \(rawLength) is out of range")
        }
        var output = [UInt8](repeating: 0, count: rawLength)
        let produced = input.withUnsafeBufferPointer { src in
            output.withUnsafeMutableBufferPointer { dst in
                history.withUnsafeBufferPointer { dict in
                    src.withMemoryRebound(to: CChar.self) { s in
                        dst.withMemoryRebound(to: CChar.self) { d in
                            dict.withMemoryRebound(to: CChar.self) { h in
                                LZ4_decompress_safe_usingDict(s.baseAddress, d.baseAddress, Int32(input.count), Int32(rawLength),
                                                              h.baseAddress, Int32(history.count))
                            }
                        }
                    }
                }
            }
        }
        guard produced == rawLength else {
            throw Failure(description: produced < 0 ? "corrupt LZ4 data" : "LZ4 data decoded to \(produced) bytes, expected \(rawLength)")
        }
        acceptRaw(output)
        return output
    }

    /// Appends a batch that was sent uncompressed to the history.
    public mutating func acceptRaw(_ raw: [UInt8]) {
        history.append(contentsOf: raw)
        if history.count > 2 * LZ4StreamCompressor.windowBytes {
            history.removeFirst(history.count - LZ4StreamCompressor.windowBytes)
        }
    }
}
