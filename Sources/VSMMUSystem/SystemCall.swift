#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CSocketShims
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

    // MARK: The shared command queue (PROTOCOL.md §8): memfds, seals, mappings, eventfds

    /// The status of the open file `fd`.
    ///
    /// The corresponding C function is `fstat`.
    package static func fileStatus(_ fd: Int32) throws(Errno) -> stat {
        var status = stat()
        _ = try syscall { fstat(fd, &status) }
        return status
    }

    /// The seals of the memfd `fd` (`F_SEAL_*`). Fails with `EINVAL` on a file that is not a memfd (or
    /// another shmem/hugetlbfs file): the kernel's `memfd_fcntl` answers `F_GET_SEALS` through
    /// `memfd_get_seals`, which has no seals to return for any other file.
    ///
    /// The corresponding C function is `fcntl` with `F_GET_SEALS`.
    package static func seals(of fd: Int32) throws(Errno) -> Int32 {
        try syscall { fcntl(fd, VSMMU_F_GET_SEALS) }
    }

    /// Adds `seals` (`F_SEAL_*`) to the memfd `fd` (`memfd_add_seals`: `EPERM` once `F_SEAL_SEAL` is set).
    ///
    /// The corresponding C function is `fcntl` with `F_ADD_SEALS`.
    package static func addSeals(_ seals: Int32, to fd: Int32) throws(Errno) {
        _ = try syscall { fcntl(fd, VSMMU_F_ADD_SEALS, seals) }
    }

    /// A new anonymous memory file, close-on-exec (with `allowSealing`, seals can be added to it).
    ///
    /// The corresponding C function is `memfd_create`.
    package static func memfdCreate(_ name: String, allowSealing: Bool = true) throws(Errno) -> Int32 {
        let flags = VSMMU_MFD_CLOEXEC | (allowSealing ? VSMMU_MFD_ALLOW_SEALING : 0)
        return try syscall { vsmmu_memfd_create(name, flags) }
    }

    /// Sets the size of the file `fd` to `length` bytes.
    ///
    /// The corresponding C function is `ftruncate`.
    package static func truncate(_ fd: Int32, to length: Int) throws(Errno) {
        _ = try syscall { ftruncate(fd, off_t(length)) }
    }

    /// Maps the first `length` bytes of `fd` shared, readable and writable.
    ///
    /// The corresponding C function is `mmap` with `MAP_SHARED`.
    package static func mapShared(_ fd: Int32, length: Int) throws(Errno) -> UnsafeMutableRawPointer {
        while true {
            let address = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            if let address, address != MAP_FAILED { return address }
            let error = Errno(rawValue: errno)
            if error != .interrupted { throw error }
        }
    }

    /// Removes the mapping of `length` bytes at `address`.
    ///
    /// The corresponding C function is `munmap`.
    package static func unmap(_ address: UnsafeMutableRawPointer, length: Int) throws(Errno) {
        _ = try syscall { munmap(address, length) }
    }

    /// The target of the symbolic link `path` (e.g. `/proc/self/fd/N`: `anon_inode:[eventfd]` for an
    /// eventfd, the name `anon_inode_getfile` gave its file).
    ///
    /// The corresponding C function is `readlink`.
    package static func readLink(_ path: String) throws(Errno) -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        let capacity = buffer.count
        let count = try syscall { Glibc.readlink(path, &buffer, capacity) }
        return String(decoding: buffer[0..<min(count, capacity)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A new eventfd with count `initial`, close-on-exec, non-blocking when `nonBlocking`.
    ///
    /// The corresponding C function is `eventfd`.
    package static func eventFD(initial: UInt32 = 0, nonBlocking: Bool = true) throws(Errno) -> Int32 {
        try syscall { vsmmu_eventfd(initial, VSMMU_EFD_CLOEXEC | (nonBlocking ? VSMMU_EFD_NONBLOCK : 0)) }
    }

    /// Reads and clears the count of the eventfd `fd` without ever blocking, whatever its `O_NONBLOCK`
    /// (another process holding the file may change that flag): `nil` when the count was 0. The kernel's
    /// `eventfd_read` returns `EAGAIN` on a zero count when the read carries `IOCB_NOWAIT` (`RWF_NOWAIT`).
    ///
    /// The corresponding C function is `preadv2` with `RWF_NOWAIT`.
    package static func readEventNoWait(_ fd: Int32) throws(Errno) -> UInt64? {
        var value: UInt64 = 0
        do throws(Errno) {
            _ = try syscall { vsmmu_eventfd_read_nowait(fd, &value) }
        } catch where error == .resourceTemporarilyUnavailable {
            return nil
        }
        return value
    }

    /// Adds `value` to the count of the eventfd `fd`. Returns `false` when the count is full and `fd` is
    /// non-blocking (`eventfd_write`: `EAGAIN` when the sum would reach `ULLONG_MAX`); the reader has a
    /// wake-up pending then anyway.
    ///
    /// The corresponding C function is `write` of 8 bytes.
    @discardableResult
    package static func writeEvent(_ fd: Int32, _ value: UInt64 = 1) throws(Errno) -> Bool {
        var value = value
        do throws(Errno) {
            _ = try syscall { Glibc.write(fd, &value, 8) }
        } catch where error == .resourceTemporarilyUnavailable {
            return false
        }
        return true
    }

    /// Reads up to `buffer.count` bytes of `fd` at `offset`, leaving the file offset; the byte count.
    ///
    /// The corresponding C function is `pread`.
    package static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(Errno) -> Int {
        try syscall { pread(fd, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    /// A second descriptor of the open file `fd`, close-on-exec.
    ///
    /// The corresponding C function is `fcntl` with `F_DUPFD_CLOEXEC`.
    package static func duplicate(_ fd: Int32) throws(Errno) -> Int32 {
        try syscall { fcntl(fd, F_DUPFD_CLOEXEC, 0) }
    }
}
