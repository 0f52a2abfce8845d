import Foundation
import Hummingbird
import NIOCore

/// Where the relay finds the files it serves to browsers: the JavaScript
/// client (`clients/js/tern.js`, `tern.d.ts`) and the pages under `web/`.
///
/// The web root is the directory that holds `clients/`; in a checkout of
/// Tern it is the repository root.
public enum WebRoot {
    /// The file whose presence marks a web root.
    public static let marker = "clients/js/tern.js"

    /// The web root to use: `configured` when given, else the first directory
    /// holding `clients/js/tern.js` found by walking up from each of `searchFrom`
    /// in turn (by default the working directory, then the executable's directory).
    public static func locate(configured: String? = nil, searchFrom: [String]? = nil) -> String? {
        if let configured { return (configured as NSString).standardizingPath }
        let starts = searchFrom ?? defaultSearchStarts()
        for start in starts {
            var dir = URL(fileURLWithPath: start).standardizedFileURL
            for _ in 0..<32 {
                if FileManager.default.fileExists(atPath: dir.appendingPathComponent(marker).path) { return dir.path }
                let parent = dir.deletingLastPathComponent()
                if parent.path == dir.path { break }
                dir = parent
            }
        }
        return nil
    }

    static func defaultSearchStarts() -> [String] {
        var starts = [FileManager.default.currentDirectoryPath]
        let executable = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath()
        if !executable.path.isEmpty { starts.append(executable.deletingLastPathComponent().path) }
        return starts
    }
}

/// One file served as it was read at startup, with a validator derived from its bytes.
struct WebAsset: Sendable {
    let bytes: ByteBuffer
    let contentType: String
    /// A strong entity tag: a hash of the content and its length.
    let etag: String
    let cacheControl: String

    init(bytes: [UInt8], contentType: String, cacheControl: String) {
        self.bytes = ByteBuffer(bytes: bytes)
        self.contentType = contentType
        self.cacheControl = cacheControl
        self.etag = "\"\(WebAsset.contentHash(bytes))-\(String(bytes.count, radix: 16))\""
    }

    /// 64-bit FNV-1a over the bytes, as 16 hex digits.
    static func contentHash(_ bytes: [UInt8]) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        let hex = String(h, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// Whether an `If-None-Match` header names this asset's tag (weak comparison, as RFC 9110 asks for GET).
    func matches(ifNoneMatch header: String) -> Bool {
        let mine = etag
        for candidate in header.split(separator: ",") {
            var tag = candidate.trimmingCharacters(in: .whitespaces)
            if tag == "*" { return true }
            if tag.hasPrefix("W/") { tag.removeFirst(2) }
            if tag == mine { return true }
        }
        return false
    }

    /// The response to a GET: 304 when the client's copy is current.
    func response(for request: Request) -> Response {
        let headers: HTTPFields = [
            .contentType: contentType,
            .eTag: etag,
            .cacheControl: cacheControl,
            .init("X-Content-Type-Options")!: "nosniff",
        ]
        if let inm = request.headers[.ifNoneMatch], matches(ifNoneMatch: inm) {
            return Response(status: .notModified, headers: headers)
        }
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: bytes))
    }
}

/// The files a relay serves to browsers, read once at startup from the web root.
struct WebAssets: Sendable {
    /// Assets by URL path (`/client/tern.js`, `/`, `/status.html`, ...).
    let byPath: [String: WebAsset]
    /// The web root the files came from, if one was found.
    let root: String?
    /// Why some files are missing, for the 404 message and the startup warning.
    let problem: String?

    /// The largest file read from `web/`; bigger ones are skipped with a warning.
    static let maxFileBytes = 4 * 1024 * 1024
    /// The most files read from `web/`.
    static let maxFiles = 256

    /// Reads the client and the pages under `root`; `clientMaxAge` is the `max-age` of `/client/*`, in seconds.
    init(root: String?, clientMaxAge: Int, warn: (String) -> Void) {
        self.root = root
        var assets: [String: WebAsset] = [:]
        guard let root else {
            self.byPath = [:]
            self.problem = "no web root was found (a directory holding \(WebRoot.marker)); start the relay from the Tern checkout or pass --web-root DIR"
            warn(problem!)
            return
        }
        var problems: [String] = []
        let clientCache = "public, max-age=\(max(0, clientMaxAge))"
        for (name, type) in [("tern.js", "text/javascript; charset=utf-8"), ("tern.d.ts", "application/typescript; charset=utf-8")] {
            let path = (root as NSString).appendingPathComponent("clients/js/\(name)")
            if let bytes = FileManager.default.contents(atPath: path) {
                assets["/client/\(name)"] = WebAsset(bytes: Array(bytes), contentType: type, cacheControl: clientCache)
            } else {
                problems.append("\(path) cannot be read")
            }
        }
        // Pages revalidate on every load (the tag makes that a 304), so a restarted relay serves its new files at once.
        let webDir = (root as NSString).appendingPathComponent("web")
        var count = 0
        if let walker = FileManager.default.enumerator(atPath: webDir) {
            while let relative = walker.nextObject() as? String {
                // Hidden files and directories (editor swap files, .DS_Store) are never served.
                if relative.split(separator: "/").contains(where: { $0.hasPrefix(".") }) { continue }
                let full = (webDir as NSString).appendingPathComponent(relative)
                var isDir: ObjCBool = false
                guard FileManager.default.fileExists(atPath: full, isDirectory: &isDir), !isDir.boolValue else { continue }
                guard let type = Self.contentType(of: relative) else { continue }
                count += 1
                guard count <= Self.maxFiles else {
                    problems.append("\(webDir) has more than \(Self.maxFiles) files; the rest are not served")
                    break
                }
                guard let bytes = FileManager.default.contents(atPath: full) else {
                    problems.append("\(full) cannot be read")
                    continue
                }
                guard bytes.count <= Self.maxFileBytes else {
                    problems.append("\(full) is over \(Self.maxFileBytes) bytes and is not served")
                    continue
                }
                assets["/" + relative] = WebAsset(bytes: Array(bytes), contentType: type, cacheControl: "no-cache")
            }
        } else {
            problems.append("\(webDir) is missing, so the demo (/) and the status page (/status.html) are not served")
        }
        if let index = assets["/index.html"] { assets["/"] = index }
        self.byPath = assets
        self.problem = problems.isEmpty ? nil : problems.joined(separator: "; ")
        if let problem { warn(problem) }
    }

    /// The content type for a file name, or nil for files that are not served.
    static func contentType(of name: String) -> String? {
        switch (name as NSString).pathExtension.lowercased() {
        case "html": "text/html; charset=utf-8"
        case "js", "mjs": "text/javascript; charset=utf-8"
        case "css": "text/css; charset=utf-8"
        case "svg": "image/svg+xml"
        case "png": "image/png"
        case "ico": "image/x-icon"
        case "json": "application/json"
        case "txt": "text/plain; charset=utf-8"
        default: nil
        }
    }
}
