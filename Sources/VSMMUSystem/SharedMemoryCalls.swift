#if canImport(Glibc)
import Glibc
#endif
import CSocketShims
import SystemPackage

// TEMPORARY, until main has branch sqdaemon's SystemCall.swift: the shared queue's wrappers, copied
// verbatim from there (the client uses these names), so that this branch builds before the daemon lands.
// Delete this file when merging main.

extension SystemCall {

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
}
