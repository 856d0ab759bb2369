#if canImport(Glibc)
import Glibc
#endif
import CSocketShims
import SystemPackage

// The system calls of the shared command queue (PROTOCOL.md §8): the memory (a sealed memfd, mapped
// shared) and the two eventfds. Glibc's Swift module imports none of memfd_create, eventfd or the seal
// constants, so the first two go through CSocketShims' C wrappers and the constants come from there
// (checked against the system headers when the shim compiles).

extension SystemCall {
    /// `MFD_CLOEXEC | MFD_ALLOW_SEALING`: the memfd flags of a shared queue's memory.
    package static let memfdCloseOnExecAllowSealing = VSMMU_MFD_CLOEXEC | VSMMU_MFD_ALLOW_SEALING
    /// `F_SEAL_SHRINK`: the seal a shared queue's memory must carry (PROTOCOL.md §5.15).
    package static let sealShrink = Int32(VSMMU_F_SEAL_SHRINK)
    /// `EFD_CLOEXEC`.
    package static let eventfdCloseOnExec = Int32(VSMMU_EFD_CLOEXEC)
    /// `EFD_NONBLOCK`: a read of a zero count fails with `EAGAIN` instead of blocking.
    package static let eventfdNonBlocking = Int32(VSMMU_EFD_NONBLOCK)

    /// A new anonymous memory file (tmpfs) of size 0 named `name` (for `/proc/PID/fd` only).
    ///
    /// The corresponding C function is `memfd_create`.
    package static func memfdCreate(name: String, flags: UInt32) throws(Errno) -> Int32 {
        try syscall { vsmmu_memfd_create(name, flags) }
    }

    /// Sets the size of the file `fd` to `length` bytes (a memfd grows with zeroes).
    ///
    /// The corresponding C function is `ftruncate`.
    package static func ftruncate(_ fd: Int32, length: Int) throws(Errno) {
        _ = try syscall { Glibc.ftruncate(fd, off_t(length)) }
    }

    /// Adds `seals` (`F_SEAL_*`) to the memfd `fd`. Seals are only ever added; with `F_SEAL_SHRINK` the
    /// kernel refuses any `ftruncate` below the current size (`shmem_setattr`: `-EPERM` when the new size
    /// is smaller and the seal is set), so a peer's mapping of the current size stays backed. Fails with
    /// `EPERM` once `F_SEAL_SEAL` is set, `EINVAL` for a file that is no memfd with sealing allowed
    /// (`memfd_add_seals`, mm/memfd.c).
    ///
    /// The corresponding C function is `fcntl` with `F_ADD_SEALS`.
    package static func addSeals(_ fd: Int32, _ seals: Int32) throws(Errno) {
        _ = try syscall { fcntl(fd, VSMMU_F_ADD_SEALS, seals) }
    }

    /// The seals (`F_SEAL_*`) of the file `fd`; `EINVAL` for a file that cannot carry seals
    /// (`memfd_get_seals`, mm/memfd.c).
    ///
    /// The corresponding C function is `fcntl` with `F_GET_SEALS`.
    package static func getSeals(_ fd: Int32) throws(Errno) -> Int32 {
        try syscall { fcntl(fd, VSMMU_F_GET_SEALS) }
    }

    /// A new eventfd with count `initialValue` and `flags` (`EFD_CLOEXEC`, `EFD_NONBLOCK`).
    ///
    /// The corresponding C function is `eventfd`.
    package static func eventfd(initialValue: UInt32 = 0, flags: Int32) throws(Errno) -> Int32 {
        try syscall { vsmmu_eventfd(initialValue, flags) }
    }

    /// Adds `value` to the count of the eventfd `fd`, waking its pollers (`eventfd_write`, fs/eventfd.c:
    /// the count saturates at 2^64 − 2; a write that would pass it blocks or, non-blocking, fails with
    /// `EAGAIN`, which a signal of 1 never meets in practice).
    ///
    /// The corresponding C function is `write` of 8 bytes (glibc's `eventfd_write`).
    package static func eventfdWrite(_ fd: Int32, _ value: UInt64 = 1) throws(Errno) {
        var count = value
        let written = try syscall { withUnsafeBytes(of: &count) { Glibc.write(fd, $0.baseAddress, 8) } }
        guard written == 8 else { throw Errno.ioError }
    }

    /// Reads and clears the count of the non-blocking eventfd `fd` (`eventfd_read`, fs/eventfd.c: without
    /// `EFD_SEMAPHORE` a read returns the whole count and resets it to 0); `nil` when the count was 0
    /// (`EAGAIN`).
    ///
    /// The corresponding C function is `read` of 8 bytes (glibc's `eventfd_read`).
    package static func eventfdRead(_ fd: Int32) throws(Errno) -> UInt64? {
        var count: UInt64 = 0
        do throws(Errno) {
            let read = try syscall { withUnsafeMutableBytes(of: &count) { Glibc.read(fd, $0.baseAddress, 8) } }
            guard read == 8 else { throw Errno.ioError }
        } catch where error == .resourceTemporarilyUnavailable {
            return nil
        }
        return count
    }

    /// Maps `length` bytes of `fd` from `offset`, shared, readable and writable (a memfd's pages are
    /// then the other process's too).
    ///
    /// The corresponding C function is `mmap` with `PROT_READ | PROT_WRITE` and `MAP_SHARED`.
    package static func mmapShared(_ fd: Int32, length: Int, offset: Int = 0) throws(Errno) -> UnsafeMutableRawPointer {
        while true {
            let address = Glibc.mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(offset))
            if let address, address != MAP_FAILED { return address }
            let error = Errno(rawValue: errno)
            if error != .interrupted { throw error }
        }
    }

    /// Unmaps `length` bytes at `address` (a mapping from ``mmapShared(_:length:offset:)``).
    ///
    /// The corresponding C function is `munmap`.
    package static func munmap(_ address: UnsafeMutableRawPointer, length: Int) throws(Errno) {
        _ = try syscall { Glibc.munmap(address, length) }
    }
}
