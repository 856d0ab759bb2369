import CSocketShims
import SystemPackage
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: which one (with the daemon's context) and its `Errno`.
public struct SystemCallError: Error, Hashable, Sendable, CustomStringConvertible {
    public var call: String
    public var errno: Errno
    public init(_ call: String, errno: Errno) {
        self.call = call
        self.errno = errno
    }
    /// `call` failed with the C errno value `errno`.
    init(_ call: String, errno: Int32) {
        self.init(call, errno: Errno(rawValue: errno))
    }
    public var description: String { "\(call): \(String(cString: strerror(errno.rawValue))) (errno \(errno.rawValue))" }
}

/// Thin wrappers over the socket calls the daemon makes, retrying `EINTR`.
enum POSIX {
    /// Fills a `sockaddr_un` for `path`.
    /// - Throws: `ENAMETOOLONG` when the path does not fit `sun_path`.
    static func unixAddress(_ path: String) throws(SystemCallError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { throw SystemCallError("sockaddr_un", errno: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    /// A listening `AF_UNIX` `SOCK_STREAM` socket bound to `path` (close-on-exec).
    static func listen(path: String, backlog: Int32 = 64) throws(SystemCallError) -> Int32 {
        var address = try unixAddress(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError("socket", errno: errno) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let e = errno
            close(fd)
            throw SystemCallError("bind \(path)", errno: e)
        }
        guard Glibc.listen(fd, backlog) == 0 else {
            let e = errno
            close(fd)
            throw SystemCallError("listen", errno: e)
        }
        return fd
    }

    /// Whether something accepts connections on the socket at `path` (a live daemon, not a stale file).
    static func isListening(_ path: String) -> Bool {
        guard var address = try? unixAddress(path) else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0
    }

    /// Writes all of `bytes`. - Throws: the failing `send`'s errno (`EPIPE` when the peer is gone).
    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws(SystemCallError) {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { raw in
                send(fd, raw.baseAddress.map { $0 + offset }, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if sent < 0 {
                if errno == EINTR { continue }
                throw SystemCallError("send", errno: errno)
            }
            offset += sent
        }
    }

    /// Nanoseconds on the monotonic clock.
    static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// The peer credentials of a connected `AF_UNIX` socket (`SO_PEERCRED`).
    static func peerCredentials(_ fd: Int32) -> PeerCredentials? {
        var credentials = vsmmu_peer_credentials()
        guard vsmmu_get_peer_credentials(fd, &credentials) == 0 else { return nil }
        return PeerCredentials(processID: credentials.pid, userID: credentials.uid, groupID: credentials.gid)
    }
}

/// Who is at the other end of a connection, from `SO_PEERCRED`.
public struct PeerCredentials: Hashable, Sendable, CustomStringConvertible {
    public var processID: Int32
    public var userID: UInt32
    public var groupID: UInt32
    public init(processID: Int32, userID: UInt32, groupID: UInt32) {
        self.processID = processID
        self.userID = userID
        self.groupID = groupID
    }
    public var description: String { "pid \(processID) uid \(userID) gid \(groupID)" }
}
