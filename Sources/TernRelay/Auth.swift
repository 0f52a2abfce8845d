import Foundation
import JWTKit
import TernCore
import TernTopology

/// Reads secrets named by a topology (environment variables or files).
public struct SecretResolver: Sendable {
    /// The environment to read variables from.
    public var environment: [String: String]

    /// A resolver over `environment` (the process environment by default).
    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.environment = environment
    }

    /// The secret's value, or an error saying what to set.
    public func resolve(_ source: SecretSource, for what: String) throws -> String {
        switch source {
        case .environment(let name):
            guard let value = environment[name], !value.isEmpty else {
                throw RelayConfigError("\(what) is read from the environment variable \(name), which is not set; export \(name)=... before starting the relay")
            }
            return value
        case .file(let path):
            do {
                return try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            } catch {
                throw RelayConfigError("\(what) is read from \(path), which cannot be read (\(error.localizedDescription)); create it or fix the path")
            }
        }
    }
}

/// A relay cannot start with this configuration; the message says what to change.
public struct RelayConfigError: Error, CustomStringConvertible {
    /// What is wrong and what to change.
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Per-topic permissions carried in a token's `tern` claim.
public struct TernPermissionsClaim: Codable, Sendable {
    /// Topic patterns the client may subscribe to.
    public var subscribe: [String]?
    /// Topic patterns the client may publish to.
    public var publish: [String]?
    /// Topic patterns whose presence the client may read.
    public var presence: [String]?

    public init(subscribe: [String]? = nil, publish: [String]? = nil, presence: [String]? = nil) {
        self.subscribe = subscribe
        self.publish = publish
        self.presence = presence
    }
}

/// The claims of a Tern client token.
public struct TernClaims: JWTPayload {
    /// The user id.
    public var sub: SubjectClaim
    /// The expiry.
    public var exp: ExpirationClaim
    /// Topic permissions.
    public var tern: TernPermissionsClaim?

    public init(user: String, expires: Date, permissions: TernPermissionsClaim) {
        self.sub = SubjectClaim(value: user)
        self.exp = ExpirationClaim(value: expires)
        self.tern = permissions
    }

    public func verify(using algorithm: some JWTAlgorithm) async throws {
        try exp.verifyNotExpired()
        guard !sub.value.isEmpty else { throw JWTError.claimVerificationFailure(failedClaim: sub, reason: "empty subject") }
    }
}

/// Verifies client tokens (HS256, RS256, ES256) and the backend API key.
public struct Authenticator: Sendable {
    private let keys: JWTKeyCollection?
    private let apiKey: String?

    /// Loads the keys the topology names.
    public init(auth: AuthConfig, secrets: SecretResolver) async throws {
        var any = false
        let keys = JWTKeyCollection()
        if let source = auth.hs256Secret {
            let secret = try secrets.resolve(source, for: "auth.jwt.hs256_secret")
            guard secret.utf8.count >= 32 else {
                throw RelayConfigError("auth.jwt.hs256_secret (\(source)) is \(secret.utf8.count) bytes; HS256 needs at least 32, e.g. from 'openssl rand -hex 32'")
            }
            await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
            any = true
        }
        if let source = auth.rs256PublicKey {
            let pem = try secrets.resolve(source, for: "auth.jwt.rs256_public_key")
            do {
                await keys.add(rsa: try Insecure.RSA.PublicKey(pem: pem), digestAlgorithm: .sha256)
            } catch {
                throw RelayConfigError("auth.jwt.rs256_public_key (\(source)) is not a PEM RSA public key: \(error)")
            }
            any = true
        }
        if let source = auth.es256PublicKey {
            let pem = try secrets.resolve(source, for: "auth.jwt.es256_public_key")
            do {
                await keys.add(ecdsa: try ES256PublicKey(pem: pem))
            } catch {
                throw RelayConfigError("auth.jwt.es256_public_key (\(source)) is not a PEM P-256 public key: \(error)")
            }
            any = true
        }
        self.keys = any ? keys : nil
        self.apiKey = try auth.apiKey.map { try secrets.resolve($0, for: "auth.api_key") }
    }

    /// Verifies `token` and maps it to an identity on the monotonic timeline at `now`.
    public func verify(_ token: String, now: TernInstant, wallNow: Date = Date()) async -> Result<ClientIdentity, AuthFailure> {
        guard let keys else { return .failure(.invalid("this relay has no JWT keys configured (auth.jwt)")) }
        do {
            let claims = try await keys.verify(token, as: TernClaims.self)
            let remaining = claims.exp.value.timeIntervalSince(wallNow)
            let permissions = claims.tern ?? TernPermissionsClaim()
            return .success(ClientIdentity(
                user: claims.sub.value,
                expiresAt: now + .milliseconds(Int64(min(max(0, remaining), 10 * 365 * 86_400) * 1000)),
                subscribe: (permissions.subscribe ?? []).map(TopicPattern.init),
                publish: (permissions.publish ?? []).map(TopicPattern.init),
                presence: (permissions.presence ?? []).map(TopicPattern.init)
            ))
        } catch let error as JWTError where error.failedClaim is ExpirationClaim {
            return .failure(.expired)
        } catch let error as JWTError {
            return .failure(.invalid(error.reason ?? "\(error.errorType)"))
        } catch {
            return .failure(.invalid("malformed token"))
        }
    }

    /// Whether `presented` is the configured API key (compared in constant time).
    public func checkAPIKey(_ presented: String?) -> Bool {
        guard let apiKey, let presented else { return false }
        let a = Array(apiKey.utf8), b = Array(presented.utf8)
        var diff = UInt8(a.count == b.count ? 0 : 1)
        for i in 0..<max(a.count, b.count) {
            diff |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
        }
        return diff == 0
    }

    /// Signs an HS256 token, for development tooling and tests.
    public static func signHS256(secret: String, claims: TernClaims) async throws -> String {
        guard secret.utf8.count >= 32 else { throw RelayConfigError("an HS256 secret needs at least 32 bytes") }
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        return try await keys.sign(claims)
    }
}
