import CSocketShims
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A child process for tests: the part of Foundation's `Process` the tests use (executable, arguments,
/// environment, standard streams as a `Pipe` or a `FileHandle`, run, wait, terminate, status), started by
/// `posix_spawn` with every descriptor above 2 closed in the child (``vsmmu_spawn``) and reaped by a
/// thread of its own as soon as it ends.
///
/// Why not `Process`: a child started here holds no descriptor of the test process but its standard
/// streams (a copy of a test's socket in a child would keep its peer from ever seeing end of file), and no
/// run-loop thread of Foundation watches descriptors in the test process. (It was written while hunting
/// an intermittent hang in which a request vanished whole from a test's socket; that hang also happened
/// without any `Process`, so Foundation was not its cause.)
///
/// Concurrency: `run` is called once, before anything else. A reaper thread per child blocks in `waitpid`
/// and stores the wait status under `finished`, which `isRunning`, `waitUntilExit` and the status read
/// from any thread.
public final class ChildProcess: @unchecked Sendable {
    /// How the child ended, as `Process.TerminationReason`.
    public enum TerminationReason: Sendable {
        case exit
        case uncaughtSignal
    }

    public var executableURL: URL?
    public var arguments: [String]?
    /// The child's environment; `nil`: this process's.
    public var environment: [String: String]?
    /// A `Pipe` (the child gets its read end) or a `FileHandle`; `nil`: inherited.
    public var standardInput: Any?
    /// A `Pipe` (the child gets its write end) or a `FileHandle`; `nil`: inherited.
    public var standardOutput: Any?
    /// As ``standardOutput``.
    public var standardError: Any?
    /// The child's pid, once running.
    public private(set) var processIdentifier: Int32 = 0

    /// Guards `waitStatus`, which the reaper thread stores once.
    private let finished = NSCondition()
    private var waitStatus: Int32?

    public init() {}

    /// Starts the child. The parent's copies of the pipe ends the child uses are closed, so that a reader
    /// of an output pipe sees end of file when the child exits.
    public func run() throws {
        guard let path = executableURL?.path else { throw POSIXError(.ENOENT) }
        func descriptor(_ stream: Any?, input: Bool) -> Int32 {
            switch stream {
            case let pipe as Pipe: return input ? pipe.fileHandleForReading.fileDescriptor : pipe.fileHandleForWriting.fileDescriptor
            case let handle as FileHandle: return handle.fileDescriptor
            default: return -1
            }
        }
        let argv = ([path] + (arguments ?? [])).map { strdup($0) }
        let envp = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } }
        defer {
            for p in argv { free(p) }
            for p in envp ?? [] { free(p) }
        }
        var pid: pid_t = 0
        let rc = (argv + [nil]).withUnsafeBufferPointer { a in
            let spawn = { (e: UnsafePointer<UnsafeMutablePointer<CChar>?>?) in
                vsmmu_spawn(path, a.baseAddress, e, descriptor(self.standardInput, input: true),
                            descriptor(self.standardOutput, input: false), descriptor(self.standardError, input: false), &pid)
            }
            guard let envp else { return spawn(nil) }
            return (envp + [nil]).withUnsafeBufferPointer { spawn($0.baseAddress) }
        }
        guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EIO) }
        processIdentifier = pid
        startReaper()
        if let pipe = standardInput as? Pipe { try? pipe.fileHandleForReading.close() }
        if let pipe = standardOutput as? Pipe { try? pipe.fileHandleForWriting.close() }
        if let pipe = standardError as? Pipe, standardError as AnyObject !== standardOutput as AnyObject {
            try? pipe.fileHandleForWriting.close()
        }
    }

    /// Reaps the child as soon as it ends, as `Process` does: a thread blocked in `waitpid` for it.
    /// (A zombie left for later would be seen by Swift Testing's exit-test monitor, which waits for any
    /// child with `WNOWAIT` and spins on one that is not its own.)
    private func startReaper() {
        let pid = processIdentifier
        let thread = Thread { [self] in
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            finished.lock()
            waitStatus = status
            finished.broadcast()
            finished.unlock()
        }
        thread.name = "child \(pid) reaper"
        thread.start()
    }

    /// The wait status, once the child has ended.
    private var status: Int32? {
        finished.lock()
        defer { finished.unlock() }
        return waitStatus
    }

    /// Whether the child has not ended yet.
    public var isRunning: Bool { processIdentifier > 0 && status == nil }

    /// Blocks until the child has ended.
    public func waitUntilExit() {
        finished.lock()
        while waitStatus == nil { finished.wait() }
        finished.unlock()
    }

    /// Sends SIGTERM.
    public func terminate() { kill(processIdentifier, SIGTERM) }

    /// The exit code, or the signal number for a child a signal ended (as `Process`). The child must
    /// have ended (``waitUntilExit()``).
    public var terminationStatus: Int32 {
        guard let status else { preconditionFailure("the child is still running") }
        return Self.signalled(status) ? status & 0x7F : (status >> 8) & 0xFF
    }

    /// Whether the child exited or a signal ended it.
    public var terminationReason: TerminationReason {
        guard let status else { preconditionFailure("the child is still running") }
        return Self.signalled(status) ? .uncaughtSignal : .exit
    }

    /// `WIFSIGNALED`.
    private static func signalled(_ status: Int32) -> Bool { (status & 0x7F) + 1 >= 2 && status & 0x7F != 0x7F }
}
