import CSystemd

#if canImport(Glibc)
import Glibc
#endif

/// Socket activation (`sd_listen_fds(3)`): the listening sockets a `.socket` unit (or
/// `systemd-socket-activate`) passed to the daemon as fds 3, 4, … with `LISTEN_FDS`/`LISTEN_PID`.
public enum SocketActivation {
    /// Why an activated socket cannot be used.
    public struct Error: Swift.Error, Sendable, Hashable, CustomStringConvertible {
        public var message: String
        public init(_ message: String) { self.message = message }
        public var description: String { message }
    }

    /// The one listening `AF_UNIX` `SOCK_STREAM` socket passed to this process, or `nil` when none was
    /// passed. Unsets `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES` so child processes do not inherit them,
    /// and marks the fd close-on-exec.
    /// - Throws: ``Error`` when sockets were passed but not exactly one listening `AF_UNIX` stream socket
    ///   (the unit's `ListenStream=` must name one path).
    public static func listeningUnixSocket() throws(Error) -> Int32? {
        let count = sd_listen_fds(1)
        if count < 0 { throw Error("sd_listen_fds failed: \(String(cString: strerror(-count)))") }
        if count == 0 { return nil }
        guard count == 1 else { throw Error("\(count) sockets were passed; vsmmud serves exactly one (ListenStream=)") }
        let fd = SD_LISTEN_FDS_START
        guard sd_is_socket_unix(fd, Int32(SOCK_STREAM.rawValue), 1, nil, 0) > 0 else {
            throw Error("the passed fd \(fd) is not a listening AF_UNIX SOCK_STREAM socket (use ListenStream=PATH)")
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }

    /// The filesystem path an `AF_UNIX` socket is bound to, or `nil` (abstract or unnamed sockets).
    public static func boundPath(of fd: Int32) -> String? {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let status = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard status == 0, address.sun_family == sa_family_t(AF_UNIX) else { return nil }
        let pathCapacity = Int(length) - MemoryLayout<sa_family_t>.size
        guard pathCapacity > 0 else { return nil }
        return withUnsafeBytes(of: &address.sun_path) { raw -> String? in
            let bytes = raw.prefix(min(pathCapacity, raw.count))
            guard let first = bytes.first, first != 0 else { return nil }
            return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}
