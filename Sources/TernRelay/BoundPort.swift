import Synchronization

/// The port a listener bound, for callers that wait until it is known
/// (a listener asked for port 0 learns its port only once bound).
final class BoundPort: Sendable {
    private let state = Mutex<(port: Int?, waiters: [CheckedContinuation<Int, Never>])>((nil, []))

    /// Records the port and wakes everyone waiting for it.
    func set(_ port: Int) {
        let waiters = state.withLock { s in
            s.port = port
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume(returning: port) }
    }

    /// The port, once it is bound.
    func wait() async -> Int {
        await withCheckedContinuation { continuation in
            let port: Int? = state.withLock { s in
                if let p = s.port { return p }
                s.waiters.append(continuation)
                return nil
            }
            if let port { continuation.resume(returning: port) }
        }
    }
}
