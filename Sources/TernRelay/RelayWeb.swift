import Foundation
import Hummingbird
import NIOCore
import TernCore
import TernWire

/// The browser-facing settings of a relay: where its files are, which
/// origins may call it from a page, and development tokens.
public struct RelayWebOptions: Sendable {
    /// The directory holding `clients/js/` and `web/`; nil searches for it (see `WebRoot.locate`).
    public var root: String?
    /// `Access-Control-Allow-Origin` for `/sse`, `/poll`, `/api/publish`, `/status` and `/client/*`:
    /// `*`, one origin, or several separated by commas (a listed request origin is echoed back);
    /// nil sends no CORS headers.
    public var allowOrigin: String?
    /// Whether `GET /dev/token` mints short-lived HS256 tokens for anonymous visitors.
    /// Development only: `tern up` turns it on, `tern relay` never does.
    public var devTokens: Bool
    /// How long a development token is valid.
    public var devTokenLifetime: Duration
    /// `max-age` of `/client/tern.js` and `/client/tern.d.ts`, in seconds.
    public var clientMaxAge: Int

    /// Options with every field given; the defaults suit development (any origin, no dev tokens).
    public init(root: String? = nil, allowOrigin: String? = "*", devTokens: Bool = false,
                devTokenLifetime: Duration = .seconds(900), clientMaxAge: Int = 300) {
        self.root = root
        self.allowOrigin = allowOrigin
        self.devTokens = devTokens
        self.devTokenLifetime = devTokenLifetime
        self.clientMaxAge = clientMaxAge
    }
}

/// Which origins may read the relay's answers from a page on another origin.
struct CrossOriginPolicy: Sendable {
    /// `*`, or the allowed origins.
    let allowed: [String]?
    let any: Bool

    init(_ setting: String?) {
        let list = (setting ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        any = list.contains("*")
        allowed = list.isEmpty ? nil : list
    }

    /// Paths whose answers carry CORS headers.
    static func applies(to path: String) -> Bool {
        path == "/sse" || path == "/poll" || path == "/api/publish" || path == "/status" || path.hasPrefix("/client/")
    }

    /// The `Access-Control-Allow-Origin` value for a request, or nil when none is sent.
    func allowOrigin(for request: Request) -> String? {
        guard let allowed else { return nil }
        if any { return "*" }
        guard let origin = request.headers[.origin], allowed.contains(origin) else { return nil }
        return origin
    }

    /// Adds the CORS headers of `request` to `response`.
    func decorate(_ response: inout Response, for request: Request) {
        guard allowed != nil else { return }
        if !any { response.headers[.vary] = "Origin" }
        if let origin = allowOrigin(for: request) { response.headers[.accessControlAllowOrigin] = origin }
    }
}

/// Adds CORS headers to the answers of the paths that pages on other origins may call.
struct CrossOriginMiddleware: RouterMiddleware {
    typealias Context = RelayRequestContext
    let policy: CrossOriginPolicy

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard CrossOriginPolicy.applies(to: request.uri.path) else { return try await next(request, context) }
        var response = try await next(request, context)
        policy.decorate(&response, for: request)
        return response
    }
}

extension Relay {
    /// Routes for browsers: the JavaScript client, the demo and status pages, the publish preflight and dev tokens.
    func addWebRoutes(to router: Router<RelayRequestContext>) {
        router.on("/api/publish", method: .options) { _, _ in
            Response(status: .noContent, headers: [
                .accessControlAllowMethods: "POST, OPTIONS",
                .accessControlAllowHeaders: "Authorization, Content-Type, X-API-Key",
                .accessControlMaxAge: "600",
            ])
        }
        router.get("/status") { [self] request, _ in await statusResponse(request) }
        router.get("/dev/token") { [self] request, context in await devToken(request, channel: context.channel) }
        var paths = Set(assets.byPath.keys)
        // These answer with the reason when the files are missing, rather than a bare 404.
        paths.formUnion(["/client/tern.js", "/client/tern.d.ts", "/", "/index.html", "/status.html"])
        for path in paths.sorted() where Self.isPlainPath(path) {
            router.get(RouterPath(path)) { [self] request, _ in
                guard let asset = assets.byPath[path] else {
                    return notFound("\(path) is not available: \(assets.problem ?? "the file is missing")")
                }
                return asset.response(for: request)
            }
        }
    }

    /// Whether a file path can be a literal route (no characters the router reads as parameters or wildcards).
    static func isPlainPath(_ path: String) -> Bool {
        path.hasPrefix("/") && !path.contains("//") && !path.contains("..") && path.utf8.allSatisfy { b in
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "/"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
                true
            default:
                false
            }
        }
    }

    // MARK: - Development tokens

    /// The most bytes of a development token's user name.
    static let maxDevUserBytes = 64

    /// `GET /dev/token?user=NAME`: an HS256 token for `NAME` (or a generated guest name) that may
    /// subscribe, publish and read presence on `room:*`. Only under `tern up`, only to loopback callers.
    func devToken(_ request: Request, channel: any Channel) async -> Response {
        guard web.devTokens else {
            return notFound("this relay does not hand out development tokens (only 'tern up' does); get a token from your application's backend")
        }
        guard let secret = devTokenSecret else {
            return errorResponse(.notImplemented, TernError(.internalError,
                "development tokens are signed with auth.jwt.hs256_secret, which this topology does not set"))
        }
        guard Self.isLoopback(channel.remoteAddress) else {
            return errorResponse(.forbidden, TernError(.permissionDenied, "development tokens are handed out to loopback callers only"))
        }
        var user = request.uri.queryParameters.get("user")?.trimmingCharacters(in: .whitespaces) ?? ""
        if user.isEmpty {
            user = "guest-" + String(UInt32.random(in: 0x1000...0xFFFF), radix: 16)
        }
        guard user.utf8.count <= Self.maxDevUserBytes,
              user.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) || "_-.@ ".unicodeScalars.contains($0) }) else {
            return errorResponse(.badRequest, TernError(.badRequest,
                "'user' must be at most \(Self.maxDevUserBytes) bytes of letters, digits, spaces and _ - . @"))
        }
        let seconds = max(1, web.devTokenLifetime.ternMilliseconds / 1000)
        let claims = TernClaims(user: user, expires: Date().addingTimeInterval(TimeInterval(seconds)),
                                permissions: TernPermissionsClaim(subscribe: ["room:*"], publish: ["room:*"], presence: ["room:*"]))
        do {
            let token = try await Authenticator.signHS256(secret: secret, claims: claims)
            let body = "{\"token\":\(JSONText.quoted(token)),\"user\":\(JSONText.quoted(user)),\"region\":\(JSONText.quoted(region)),\"expires_in\":\(seconds)}"
            var response = jsonResponse(.ok, body)
            response.headers[.cacheControl] = "no-store"
            return response
        } catch {
            return errorResponse(.internalServerError, TernError(.internalError, "the token could not be signed: \(error)"))
        }
    }

    /// Whether a peer address is on the loopback network.
    static func isLoopback(_ address: SocketAddress?) -> Bool {
        guard let ip = address?.ipAddress else { return false }
        return ip.hasPrefix("127.") || ip == "::1" || ip.hasPrefix("::ffff:127.")
    }
}

/// A 404 whose text says why.
func notFound(_ why: String) -> Response {
    Response(status: .notFound, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: why + "\n")))
}

/// An error answer with a chosen status (for errors whose status differs from the code's usual one).
func errorResponse(_ status: HTTPResponse.Status, _ error: TernError) -> Response {
    jsonResponse(status, "{\"error\":\(JSONServerEncoder.errorJSON(error))}")
}
