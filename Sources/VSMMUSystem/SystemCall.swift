#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SystemPackage

/// Runs `body`, a system call that returns -1 and sets `errno` on failure, until it does not fail with
/// `EINTR`; throws any other failure as swift-system's `Errno`. The one home of the retry.
@inlinable @discardableResult
package func syscall<Result: FixedWidthInteger>(_ body: () -> Result) throws(Errno) -> Result {
    while true {
        let result = body()
        guard result == -1 else { return result }
        let error = Errno(rawValue: errno)
        if error != .interrupted { throw error }
    }
}

/// The system calls the daemon makes, typed: each retries `EINTR`, checks its result and throws `Errno`.
package enum SystemCall {
    /// The status of the file at `path`, not following a final symbolic link.
    ///
    /// The corresponding C function is `lstat`.
    package static func lstat(_ path: String) throws(Errno) -> stat {
        var status = stat()
        _ = try syscall { Glibc.lstat(path, &status) }
        return status
    }

    /// A pipe with both ends close-on-exec: `(read, write)`. Closes both ends when either cannot be
    /// made close-on-exec.
    ///
    /// The corresponding C functions are `pipe` and `fcntl` with `F_SETFD`.
    package static func pipe() throws(Errno) -> (read: Int32, write: Int32) {
        var ends: [Int32] = [-1, -1]
        _ = try syscall { Glibc.pipe(&ends) }
        do {
            for end in ends { try setCloseOnExec(end) }
        } catch {
            for end in ends { close(end) }
            throw error
        }
        return (ends[0], ends[1])
    }

    /// Adds `O_NONBLOCK` to the file status flags of `fd`.
    ///
    /// The corresponding C function is `fcntl` with `F_GETFL` and `F_SETFL`.
    package static func setNonBlocking(_ fd: Int32) throws(Errno) {
        let flags = try syscall { fcntl(fd, F_GETFL) }
        _ = try syscall { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
    }

    /// Sets `FD_CLOEXEC` on `fd`.
    ///
    /// The corresponding C function is `fcntl` with `F_SETFD`.
    package static func setCloseOnExec(_ fd: Int32) throws(Errno) {
        _ = try syscall { fcntl(fd, F_SETFD, FD_CLOEXEC) }
    }

    /// Creates the directory `path` with `mode` (less the umask).
    ///
    /// The corresponding C function is `mkdir`.
    package static func mkdir(_ path: String, mode: mode_t) throws(Errno) {
        _ = try syscall { Glibc.mkdir(path, mode) }
    }

    /// Gives the file at `path` the group `group`, leaving its owner.
    ///
    /// The corresponding C function is `chown` with owner `(uid_t)-1`.
    package static func chown(_ path: String, group: gid_t) throws(Errno) {
        _ = try syscall { Glibc.chown(path, uid_t.max, group) }
    }

    /// Sets the permission bits of the file at `path`.
    ///
    /// The corresponding C function is `chmod`.
    package static func chmod(_ path: String, mode: mode_t) throws(Errno) {
        _ = try syscall { Glibc.chmod(path, mode) }
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever) for an event on `fds`; the number of descriptors
    /// with an event (0: the timeout passed). An `EINTR` restarts the wait with the same timeout.
    ///
    /// The corresponding C function is `poll`.
    package static func poll(_ fds: inout [pollfd], timeoutMilliseconds: Int32) throws(Errno) -> Int {
        let count = nfds_t(fds.count)
        return Int(try fds.withUnsafeMutableBufferPointer { buffer throws(Errno) -> Int32 in
            try syscall { Glibc.poll(buffer.baseAddress, count, timeoutMilliseconds) }
        })
    }

    /// Accepts a connection on the listening socket `fd`, without the peer's address.
    ///
    /// The corresponding C function is `accept`.
    package static func accept(_ fd: Int32) throws(Errno) -> Int32 {
        try syscall { Glibc.accept(fd, nil, nil) }
    }
}
