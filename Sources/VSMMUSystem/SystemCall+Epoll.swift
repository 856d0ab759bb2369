#if canImport(Glibc)
import Glibc
#endif
import CSocketShims
import SystemPackage

/// One descriptor `SystemCall.epollWait` found ready: the token it was registered with and what it is
/// ready for.
package struct EpollReady: Sendable {
    /// The token given to `SystemCall.epollAdd`.
    package var token: UInt64
    /// `EPOLLIN`, `EPOLLERR`, `EPOLLHUP` bits.
    package var events: UInt32

    /// Whether the descriptor is readable.
    package var isReadable: Bool { events & VSMMU_EPOLLIN != 0 }
    /// Whether the descriptor reported an error or a hang-up (which `epoll_wait` reports unasked).
    package var isBroken: Bool { events & (VSMMU_EPOLLERR | VSMMU_EPOLLHUP) != 0 }
}

extension SystemCall {
    /// A new epoll instance, close-on-exec.
    ///
    /// The corresponding C function is `epoll_create1` with `EPOLL_CLOEXEC`.
    package static func epollCreate() throws(Errno) -> Int32 {
        try syscall { vsmmu_epoll_create() }
    }

    /// Watches `fd` (level-triggered) for reading on the epoll instance `epollFD`, reported with `token`.
    ///
    /// The corresponding C function is `epoll_ctl` with `EPOLL_CTL_ADD` and `EPOLLIN`.
    package static func epollAdd(_ epollFD: Int32, _ fd: Int32, token: UInt64) throws(Errno) {
        _ = try syscall { vsmmu_epoll_add(epollFD, fd, VSMMU_EPOLLIN, token) }
    }

    /// Stops watching `fd` on `epollFD` (`ENOENT` when it was not watched). After it returns no later
    /// `epoll_wait` reports `fd`; one already returning may still have it in its array.
    ///
    /// The corresponding C function is `epoll_ctl` with `EPOLL_CTL_DEL`.
    package static func epollDelete(_ epollFD: Int32, _ fd: Int32) throws(Errno) {
        _ = try syscall { vsmmu_epoll_delete(epollFD, fd) }
    }

    /// Waits for descriptors of `epollFD` to be ready, up to `timeoutMilliseconds` (-1: no limit), and
    /// returns up to `capacity` (at most 64) of them; none when the timeout passed. An `EINTR` restarts
    /// the wait with the same timeout.
    ///
    /// The corresponding C function is `epoll_wait`.
    package static func epollWait(_ epollFD: Int32, capacity: Int = 64, timeoutMilliseconds: Int32) throws(Errno) -> [EpollReady] {
        let capacity = max(1, min(capacity, 64))
        var ready = [vsmmu_epoll_ready](repeating: vsmmu_epoll_ready(), count: capacity)
        let count = try ready.withUnsafeMutableBufferPointer { buffer throws(Errno) -> Int32 in
            try syscall { vsmmu_epoll_wait(epollFD, buffer.baseAddress, Int32(capacity), timeoutMilliseconds) }
        }
        return ready[..<Int(count)].map { EpollReady(token: $0.token, events: $0.events) }
    }
}
