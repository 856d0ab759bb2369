import CSystemd

#if canImport(Glibc)
import Glibc
#endif

/// systemd's file-descriptor store (`FDSTORE=1`, `FileDescriptorStoreMax=` in the unit) seen from the
/// service: ``store(_:name:)`` hands the service manager a duplicate of an fd under a name, and the next
/// process of the service gets it back at start in `LISTEN_FDS`/`LISTEN_FDNAMES`
/// (``SocketActivation/passedFileDescriptors()``), also after a `kill -9`.
///
/// What systemd does with them (src/core/service.c): `service_add_fd_store()` keeps at most
/// `FileDescriptorStoreMax=` fds (more are closed and logged), drops an fd that refers to the same file
/// as one already stored (`same_fd()`: the first name stays), and removes an fd that reports `EPOLLHUP`
/// or `EPOLLERR`; `service_remove_fd_store()` closes every fd stored under a name. The store lives while
/// the unit is active or a job is queued for it (`unit_may_gc()` releases resources only without a job),
/// so `systemctl restart` and `Restart=` keep it and `systemctl stop` empties it. systemd reads
/// notifications before it handles the `SIGCHLD` of the process that sent them (`manager_setup_notify()`
/// gives the notify socket a higher priority), so a store sent before a crash is not lost.
///
/// The daemon's executable wraps this type in its `FileDescriptorStore` (VSMMUDaemon). Only meaningful
/// under a service manager: ``init(environment:)`` is `nil` without `NOTIFY_SOCKET`.
public struct SystemdFileDescriptorStore: Sendable {
    /// Why a store or a removal was not sent.
    public struct Failure: Swift.Error, Sendable, Hashable, CustomStringConvertible {
        /// The errno: `EINVAL` for a name systemd would ignore, else what `sendmsg(2)` reported.
        public var errno: Int32
        public var message: String
        public var description: String { message }
    }

    /// The longest name systemd keeps (`FDNAME_MAX`).
    public static let maximumNameLength = 255

    /// A store when the service manager listens (`NOTIFY_SOCKET` is set in `environment`), else `nil`.
    public init?(environment: [String: String]) {
        guard let socket = environment["NOTIFY_SOCKET"], !socket.isEmpty else { return nil }
    }

    /// Whether systemd accepts `name` in `FDNAME=` (its `fdname_is_valid()` in src/basic/fd-util.c: ASCII
    /// without control characters, `DEL` or `:`, at most 255 characters), and it is not empty: systemd
    /// would store an empty name, but `LISTEN_FDNAMES` could not tell it from a missing one.
    public static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= maximumNameLength else { return false }
        return bytes.allSatisfy { $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }
    }

    /// The notification that stores one fd under `name`.
    public static func storeMessage(name: String) -> String { "FDSTORE=1\nFDNAME=\(name)" }

    /// The notification that closes every fd stored under `name`.
    public static func removeMessage(name: String) -> String { "FDSTOREREMOVE=1\nFDNAME=\(name)" }

    /// Sends a duplicate of `fd` to the store under `name`:
    /// `sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=name", &fd, 1)`. The caller keeps `fd`.
    /// - Throws: ``Failure`` with `EINVAL` for an invalid name (nothing sent) or `EBADF` for a negative
    ///   fd, or the errno of the send (the socket is gone: `ENOENT`/`ECONNREFUSED`).
    public func store(_ fd: Int32, name: String) throws(Failure) {
        guard Self.isValidName(name) else {
            throw Failure(errno: EINVAL, message: "fd store name '\(name)' is not valid for systemd (1-255 printable ASCII characters, no ':')")
        }
        guard fd >= 0 else { throw Failure(errno: EBADF, message: "fd store: no fd to store under '\(name)'") }
        var descriptor = fd
        let sent = sd_pid_notify_with_fds(0, 0, Self.storeMessage(name: name), &descriptor, 1)
        try check(sent, "store fd \(fd) as '\(name)'")
    }

    /// Closes, in the store, every fd stored under `name`: `sd_notify(0, "FDSTOREREMOVE=1\nFDNAME=name")`.
    /// - Throws: ``Failure`` with `EINVAL` for an invalid name, or the errno of the send.
    public func remove(name: String) throws(Failure) {
        guard Self.isValidName(name) else {
            throw Failure(errno: EINVAL, message: "fd store name '\(name)' is not valid for systemd (1-255 printable ASCII characters, no ':')")
        }
        try check(sd_notify(0, Self.removeMessage(name: name)), "remove '\(name)'")
    }

    private func check(_ result: Int32, _ what: String) throws(Failure) {
        if result > 0 { return }
        // 0: NOTIFY_SOCKET went away since init (nothing listens).
        let code = result < 0 ? -result : ENOTCONN
        throw Failure(errno: code, message: "fd store: cannot \(what): \(String(cString: strerror(code)))")
    }
}
