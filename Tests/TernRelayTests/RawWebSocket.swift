import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A deliberately minimal blocking WebSocket client over a raw socket, used
/// where a test must control reading byte by byte (a client that stops reading).
/// Every call runs on its own thread so no cooperative thread is blocked.
final class RawWebSocket: @unchecked Sendable {
    let fd: Int32

    /// Connects to 127.0.0.1:`port`, with a small receive buffer, and upgrades to WebSocket at /ws.
    static func connect(port: Int, receiveBuffer: Int32 = 4096) async throws -> RawWebSocket {
        try await onThread {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw POSIXError(.EIO) }
            var size = receiveBuffer
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            var timeout = timeval(tv_sec: 20, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else { close(fd); throw POSIXError(.ECONNREFUSED) }
            let ws = RawWebSocket(fd: fd)
            try ws.writeAll(Array("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".utf8))
            var header: [UInt8] = []
            while !header.ends(with: [13, 10, 13, 10]) {
                guard let b = try ws.readExactly(1) else { throw POSIXError(.ECONNRESET) }
                header += b
            }
            guard String(decoding: header, as: UTF8.self).hasPrefix("HTTP/1.1 101") else { throw POSIXError(.EPROTO) }
            return ws
        }
    }

    private init(fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    /// Sends one masked text frame.
    func sendText(_ text: String) async throws {
        let payload = Array(text.utf8)
        try await Self.onThread { [self] in
            var frame: [UInt8] = [0x81]
            if payload.count < 126 {
                frame.append(0x80 | UInt8(payload.count))
            } else {
                frame.append(0x80 | 126)
                frame += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
            }
            let mask: [UInt8] = [1, 2, 3, 4]
            frame += mask
            frame += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
            try writeAll(frame)
        }
    }

    /// A frame read from the server.
    enum Frame: Equatable {
        case text(String)
        case close(code: UInt16, reason: String)
        case other(UInt8)
    }

    /// Reads frames until a close frame or end of stream.
    func readUntilClose() async throws -> [Frame] {
        try await Self.onThread { [self] in
            var frames: [Frame] = []
            while let head = try readExactly(2) {
                let opcode = head[0] & 0x0F
                var length = Int(head[1] & 0x7F)
                if length == 126, let ext = try readExactly(2) { length = Int(ext[0]) << 8 | Int(ext[1]) }
                else if length == 127, let ext = try readExactly(8) { length = ext.reduce(0) { $0 << 8 | Int($1) } }
                guard let payload = length == 0 ? [] : try readExactly(length) else { break }
                switch opcode {
                case 0x1: frames.append(.text(String(decoding: payload, as: UTF8.self)))
                case 0x8:
                    let code = payload.count >= 2 ? UInt16(payload[0]) << 8 | UInt16(payload[1]) : 1005
                    frames.append(.close(code: code, reason: String(decoding: payload.dropFirst(2), as: UTF8.self)))
                    return frames
                default: frames.append(.other(opcode))
                }
            }
            return frames
        }
    }

    /// Reads one text frame.
    func readText() async throws -> String? {
        try await Self.onThread { [self] in
            guard let head = try readExactly(2) else { return nil }
            var length = Int(head[1] & 0x7F)
            if length == 126, let ext = try readExactly(2) { length = Int(ext[0]) << 8 | Int(ext[1]) }
            guard let payload = try readExactly(length) else { return nil }
            return String(decoding: payload, as: UTF8.self)
        }
    }

    private func writeAll(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw POSIXError(.EPIPE) }
            sent += n
        }
    }

    private func readExactly(_ count: Int) throws -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return nil }
            guard n > 0 else { throw POSIXError(.ETIMEDOUT) }
            got += n
        }
        return out
    }

    static func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread { continuation.resume(with: Result { try body() }) }
            thread.start()
        }
    }
}

extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}
