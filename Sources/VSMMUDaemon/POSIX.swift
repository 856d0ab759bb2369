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

/// The socket operations the daemon makes, on VSMMUSystem's typed system calls (each retries `EINTR`),
/// with the daemon's context in the error.
enum POSIX {
    /// Fills a `sockaddr_un` for `path`.
    /// - Throws: `ENAMETOOLONG` when the path does not fit `sun_path`.
    static func unixAddress(_ path: String) throws(SystemCallError) -> sockaddr_un {
        do throws(Errno) { return try SystemCall.unixAddress(path) } catch { throw SystemCallError("sockaddr_un", errno: error) }
    }

    /// A listening `AF_UNIX` `SOCK_STREAM` socket bound to `path` (close-on-exec).
    static func listen(path: String, backlog: Int32 = 64) throws(SystemCallError) -> Int32 {
        let address = try unixAddress(path)
        let fd: Int32
        do throws(Errno) { fd = try SystemCall.unixStreamSocket() } catch { throw SystemCallError("socket", errno: error) }
        do throws(Errno) { try SystemCall.bind(fd, to: address) } catch {
            close(fd)
            throw SystemCallError("bind \(path)", errno: error)
        }
        do throws(Errno) { try SystemCall.listen(fd, backlog: backlog) } catch {
            close(fd)
            throw SystemCallError("listen", errno: error)
        }
        return fd
    }

    /// Whether something accepts connections on the socket at `path` (a live daemon, not a stale file).
    static func isListening(_ path: String) -> Bool {
        guard let address = try? SystemCall.unixAddress(path), let fd = try? SystemCall.unixStreamSocket() else { return false }
        defer { close(fd) }
        return (try? SystemCall.connect(fd, to: address)) != nil
    }

    /// Writes all of `bytes`. - Throws: the failing `send`'s errno (`EPIPE` when the peer is gone).
    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws(SystemCallError) {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { raw in
                Result { () throws(Errno) -> Int in try SystemCall.send(fd, UnsafeRawBufferPointer(rebasing: raw[offset...])) }
            }
            switch sent {
            case .success(let count): offset += count
            case .failure(let error): throw SystemCallError("send", errno: error)
            }
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
