import CSystemd

#if canImport(Glibc)
import Glibc
#endif

/// Socket activation and the fd store on the way in (`sd_listen_fds(3)`): the listening socket a `.socket`
/// unit (or `systemd-socket-activate`) passed to the daemon, and the fds a previous process stored, as
/// fds 3, 4, … with `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`.
public enum SocketActivation {
    /// Why an activated socket cannot be used.
    public struct Error: Swift.Error, Sendable, Hashable, CustomStringConvertible {
        public var message: String
        public init(_ message: String) { self.message = message }
        public var description: String { message }
    }

    /// What the service manager passed from fd 3 on: the socket unit's listener and the fds a previous
    /// process of the service stored (`FDSTORE=1`), by name.
    public struct PassedFileDescriptors: Sendable, Equatable {
        /// The listening `AF_UNIX` `SOCK_STREAM` socket, when one was passed.
        public var listener: Int32?
        /// The listener's name (the socket unit's `FileDescriptorName=`, by default its unit name
        /// `vsmmud.socket`; `unknown` when `LISTEN_FDNAMES` is unset).
        public var listenerName: String?
        /// Every other passed fd, under its `LISTEN_FDNAMES` name, in the order passed.
        public var stored: [String: [Int32]]

        public init(listener: Int32? = nil, listenerName: String? = nil, stored: [String: [Int32]] = [:]) {
            self.listener = listener
            self.listenerName = listenerName
            self.stored = stored
        }
    }

    /// The fds passed to this process with `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`
    /// (`sd_listen_fds_with_names(3)`), every one marked close-on-exec, the variables unset so that
    /// child processes do not inherit them.
    ///
    /// systemd passes the triggering socket units' fds first, each named by `socket_fdname()` (the unit's
    /// `FileDescriptorName=`, else the unit's name), then the fd store's entries under their `FDNAME=`
    /// (`service_collect_fds()` in src/core/service.c). The listener is the one passed fd that is a
    /// listening `AF_UNIX` stream socket: vsmmud never stores a listening socket, so a stored fd cannot be
    /// mistaken for it, whatever the socket unit's `FileDescriptorName=`. Every other fd is ``stored``.
    /// - Throws: ``Error`` when `LISTEN_FDS` and `LISTEN_FDNAMES` disagree, or more than one listening
    ///   socket was passed (the unit's `ListenStream=` must name one path).
    public static func passedFileDescriptors() throws(Error) -> PassedFileDescriptors {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        defer {
            if let names {
                var cursor = names
                while let name = cursor.pointee { free(name); cursor += 1 }
                free(names)
            }
        }
        if count < 0 {
            throw Error("sd_listen_fds_with_names failed: \(String(cString: strerror(-count))) (LISTEN_FDS, LISTEN_FDNAMES)")
        }
        var passed: [(name: String, fd: Int32)] = []
        for index in 0..<Int(count) {
            let fd = SD_LISTEN_FDS_START + Int32(index)
            let name = names.flatMap { $0[index] }.map { String(cString: $0) } ?? "unknown"
            // sd_listen_fds already did; done again so that no path leaves one inheritable.
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            passed.append((name, fd))
        }
        return try classify(passed, isListener: { sd_is_socket_unix($0, Int32(SOCK_STREAM.rawValue), 1, nil, 0) > 0 })
    }

    /// Splits passed fds into the listener (the one for which `isListener` holds) and the stored rest.
    /// - Throws: ``Error`` when `isListener` holds for more than one.
    static func classify(_ passed: [(name: String, fd: Int32)], isListener: (Int32) -> Bool) throws(Error) -> PassedFileDescriptors {
        var result = PassedFileDescriptors()
        for (name, fd) in passed {
            if isListener(fd) {
                if let first = result.listener {
                    throw Error("listening sockets \(first) (\(result.listenerName ?? "?")) and \(fd) (\(name)) were passed; vsmmud serves exactly one (ListenStream=)")
                }
                result.listener = fd
                result.listenerName = name
            } else {
                result.stored[name, default: []].append(fd)
            }
        }
        return result
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
