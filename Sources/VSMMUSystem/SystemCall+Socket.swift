#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

extension SystemCall {
    /// A `sockaddr_un` for `path`.
    /// - Throws: `ENAMETOOLONG` when the path (and its NUL) does not fit `sun_path`.
    package static func unixAddress(_ path: String) throws(Errno) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw .fileNameTooLong }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    /// A close-on-exec `AF_UNIX` `SOCK_STREAM` socket.
    ///
    /// The corresponding C function is `socket` with `SOCK_CLOEXEC`.
    package static func unixStreamSocket() throws(Errno) -> Int32 {
        try syscall { Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
    }

    /// Binds the socket `fd` to the Unix path of `address`.
    ///
    /// The corresponding C function is `bind`.
    package static func bind(_ fd: Int32, to address: sockaddr_un) throws(Errno) {
        var address = address
        try withUnsafePointer(to: &address) { (pointer) throws(Errno) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (raw) throws(Errno) in
                _ = try syscall { Glibc.bind(fd, raw, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
    }

    /// Connects the socket `fd` to the Unix path of `address`. An `EINTR` restarts the call (Linux then
    /// reports a connect still in progress as `EALREADY`/`EISCONN`, which a blocking Unix connect does not).
    ///
    /// The corresponding C function is `connect`.
    package static func connect(_ fd: Int32, to address: sockaddr_un) throws(Errno) {
        var address = address
        try withUnsafePointer(to: &address) { (pointer) throws(Errno) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (raw) throws(Errno) in
                _ = try syscall { Glibc.connect(fd, raw, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
    }

    /// Marks the bound socket `fd` as accepting connections, with `backlog` waiting at most.
    ///
    /// The corresponding C function is `listen`.
    package static func listen(_ fd: Int32, backlog: Int32) throws(Errno) {
        _ = try syscall { Glibc.listen(fd, backlog) }
    }

    /// Sends bytes from `buffer` on the connected socket `fd`, never raising `SIGPIPE` (a vanished peer
    /// is `EPIPE`); the number sent, possibly fewer than `buffer.count`.
    ///
    /// The corresponding C function is `send` with `MSG_NOSIGNAL`.
    package static func send(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) throws(Errno) -> Int {
        try syscall { Glibc.send(fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Bounds each blocking receive on `fd` to `microseconds` (`SO_RCVTIMEO`; 0 lifts the bound): a
    /// receive that waits longer fails with `EAGAIN`.
    ///
    /// The corresponding C function is `setsockopt` with `SOL_SOCKET`, `SO_RCVTIMEO`.
    package static func setReceiveTimeout(_ fd: Int32, microseconds: Int) throws(Errno) {
        var timeout = timeval(tv_sec: microseconds / 1_000_000, tv_usec: microseconds % 1_000_000)
        _ = try syscall { Glibc.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size)) }
    }
}
