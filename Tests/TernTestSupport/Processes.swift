import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The exit code of a child that Foundation reaped itself (our `waitpid` saw `ECHILD`): waits
/// until Foundation has recorded the end, then gives its status, or 128 + the signal that ended it.
private func exitCodeRecordedByFoundation(_ process: Process) -> Int32 {
    while process.isRunning { usleep(1_000) }
    return process.terminationReason == .exit ? process.terminationStatus : 128 + process.terminationStatus
}

/// Runs a process to completion, polling `waitpid` (Foundation's termination notification can be
/// missed when several tests start processes at once). When Foundation reaps the child first,
/// its status is taken from Foundation once it has recorded it.
public func runToCompletion(_ path: String, _ args: [String]) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let out = FileManager.default.temporaryDirectory.appendingPathComponent("tern-out-\(UUID())")
    _ = FileManager.default.createFile(atPath: out.path, contents: nil)
    let handle = try FileHandle(forWritingTo: out)
    p.standardOutput = handle
    p.standardError = handle
    try p.run()
    var status: Int32 = 0
    var exit: Int32?
    while true {
        let r = waitpid(p.processIdentifier, &status, WNOHANG)
        if r == p.processIdentifier { break }
        if r == -1 && errno == ECHILD {
            exit = exitCodeRecordedByFoundation(p)
            break
        }
        usleep(10_000)
    }
    try handle.close()
    let text = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
    try? FileManager.default.removeItem(at: out)
    return (exit ?? ((status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)), text)
}

/// The `tern` binary of the last debug build under `repoRoot`, if there is one.
public func builtTern(in repoRoot: URL) -> URL? {
    let binary = repoRoot.appendingPathComponent(".build/debug/tern")
    return FileManager.default.isExecutableFile(atPath: binary.path) ? binary : nil
}
