import VSMMUClient
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The exit statuses of `vsmmud-cli` (`sysexits.h` where one fits).
public enum ExitStatus {
    /// Success; for `health`, the daemon is healthy.
    public static let success: Int32 = 0
    /// Any other failure; for `health`, the daemon answered and is not healthy.
    public static let failure: Int32 = 1
    /// Bad arguments (`EX_USAGE`).
    public static let usage: Int32 = 64
    /// The daemon cannot be reached: not running, or no socket at the path (`EX_UNAVAILABLE`).
    public static let unavailable: Int32 = 69
    /// The socket or the daemon refused this user (`EX_NOPERM`).
    public static let permission: Int32 = 77
}

/// Why a `vsmmud-cli` command failed, with the paragraph shown to the operator (``message``) and the
/// exit status (``exitStatus``).
public enum CLIError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Nothing listens at the socket path: no file (`ENOENT`, `ENOTDIR`), a refused connection
    /// (`ECONNREFUSED`: a stale socket file) or a file that is not a socket (`ENOTSOCK`). Exit 69.
    case daemonNotRunning(socketPath: String, errno: Int32)
    /// The socket exists but this user may not open it (`EACCES`, `EPERM`). Exit 77.
    case socketNotAccessible(socketPath: String, errno: Int32)
    /// The daemon refused this peer: not on its `[access]` allow-list (`PERMISSION_DENIED`). Exit 77.
    case permissionDenied(ProtocolError)
    /// The daemon serves admin requests only to root and its own user (`NOT_OWNER` on STATS, LIST,
    /// HEALTH). Exit 77.
    case notAdministrator(ProtocolError)
    /// `--vsmmu` names no vSMMU of the daemon (`UNKNOWN_VSMMU`). Exit 1.
    case unknownVSMMU(VSMMUID)
    /// The daemon answered with another ERROR. Exit 1.
    case refused(ProtocolError)
    /// The daemon closed the connection without a reply. Exit 1.
    case connectionClosed(socketPath: String)
    /// Another system call failed. Exit 1 (69 when the socket path cannot even be used).
    case transport(socketPath: String, call: String, errno: Int32)
    /// The daemon's reply could not be understood. Exit 1.
    case badReply(String)
    /// The arguments do not make sense together. Exit 64.
    case usage(String)

    /// Classifies a client failure on the connection to `socketPath`.
    public init(_ error: VSMMUClientError, socketPath: String) {
        switch error {
        case .server(let e):
            switch e.code {
            case .permissionDenied: self = .permissionDenied(e)
            case .notOwner where [.stats, .list, .health].contains(e.requestType) || e.value == 0:
                self = .notAdministrator(e)
            case .unknownVSMMU where e.value <= UInt64(UInt32.max) && e.value != 0:
                self = .unknownVSMMU(VSMMUID(UInt32(e.value)))
            default: self = .refused(e)
            }
        case .transport(let call, let errno):
            guard call.hasPrefix("connect") else {
                self = errno == ECONNRESET || errno == EPIPE
                    ? .connectionClosed(socketPath: socketPath) : .transport(socketPath: socketPath, call: call, errno: errno)
                return
            }
            switch errno {
            case ENOENT, ENOTDIR, ECONNREFUSED: self = .daemonNotRunning(socketPath: socketPath, errno: errno)
            case EACCES, EPERM: self = .socketNotAccessible(socketPath: socketPath, errno: errno)
            default: self = .transport(socketPath: socketPath, call: call, errno: errno)
            }
        case .connectionClosed: self = .connectionClosed(socketPath: socketPath)
        case .badReply(let why): self = .badReply(why)
        }
    }

    /// The process exit status for this failure.
    public var exitStatus: Int32 {
        switch self {
        case .daemonNotRunning: return ExitStatus.unavailable
        case .socketNotAccessible, .permissionDenied, .notAdministrator: return ExitStatus.permission
        case .transport(_, let call, let errno) where call.hasPrefix("connect") && errno == ENAMETOOLONG:
            return ExitStatus.usage
        case .usage: return ExitStatus.usage
        case .unknownVSMMU, .refused, .connectionClosed, .transport, .badReply: return ExitStatus.failure
        }
    }

    /// One paragraph for the operator: what happened and what to check. No trailing newline.
    public var message: String {
        switch self {
        case .daemonNotRunning(let path, let errno):
            let what: String
            switch errno {
            case ECONNREFUSED:
                what = "nothing is listening on \(path) (connection refused): the daemon is not running, or it stopped and left a stale socket file behind"
            case ENOTSOCK:
                what = "\(path) exists but is not a socket (\(Self.errnoName(errno))): the daemon is not listening there"
            default:
                what = "there is no socket at \(path) (\(Self.errnoName(errno))): the daemon is not running, or it listens elsewhere"
            }
            return "vsmmud-cli: cannot reach vsmmud: \(what). Check that the service is running with "
                + "`systemctl status vsmmud` (and `systemctl status vsmmud.socket` when it is socket-activated) "
                + "and its log with `journalctl -u vsmmud`. If the daemon uses another socket, pass --socket PATH "
                + "or set VSMMUD_SOCKET (the default is \(SocketPath.defaultPath))."
        case .socketNotAccessible(let path, let errno):
            return "vsmmud-cli: permission denied on the daemon's socket \(path) (\(Self.errnoName(errno))): this user may not "
                + "open it. The socket's mode and group come from [socket] mode/group in the daemon's configuration "
                + "(SocketMode=/SocketGroup= in vsmmud.socket when socket-activated): check them with `ls -l \(path)` "
                + "and that this user is in that group (`id`; log in again after being added), or run as root."
        case .permissionDenied(let e):
            return "vsmmud-cli: the daemon refused this connection (PERMISSION_DENIED): uid \(e.detail) (gid \(e.value)) "
                + "is not on its allow-list. Add the uid to [access] allowed_uids, or one of its groups to "
                + "[access] allowed_gids, in the daemon's configuration and reload it (`systemctl reload vsmmud`), "
                + "or run as a user already on the list."
        case .notAdministrator(let e):
            return "vsmmud-cli: the daemon refused \(e.requestType.rawValue == 0 ? "the request" : e.requestType.name) "
                + "(NOT_OWNER): it serves STATS, LIST and HEALTH only to root and to the user it runs as. "
                + "Run vsmmud-cli as root (sudo) or as the daemon's user."
        case .unknownVSMMU(let id):
            return "vsmmud-cli: the daemon has no vSMMU \(id.rawValue) (UNKNOWN_VSMMU): see `vsmmud-cli list vsmmus`."
        case .refused(let e):
            return "vsmmud-cli: the daemon refused the request: \(e.code.name)"
                + (e.requestType.rawValue == 0 ? "" : " (\(e.requestType.name))")
                + (e.message.isEmpty ? "." : ": \(e.message)")
        case .connectionClosed(let path):
            return "vsmmud-cli: the daemon on \(path) closed the connection without replying: it may be shutting down, "
                + "or refusing this user because too many refused peers are pending (see [access] in its "
                + "configuration and `journalctl -u vsmmud`)."
        case .transport(let path, let call, let errno):
            if call.hasPrefix("connect") && errno == ENAMETOOLONG {
                return "vsmmud-cli: the socket path \(path) is too long for an AF_UNIX address (at most 107 bytes)."
            }
            return "vsmmud-cli: talking to the daemon on \(path) failed: \(call): \(Self.errnoName(errno))."
        case .badReply(let why):
            return "vsmmud-cli: the daemon's reply could not be understood (\(why)): are vsmmud and vsmmud-cli the same version?"
        case .usage(let why):
            return "vsmmud-cli: \(why)"
        }
    }

    public var description: String { message }

    /// `strerror(errno)` with the symbolic name where known, e.g. "No such file or directory, ENOENT".
    static func errnoName(_ errno: Int32) -> String {
        let names: [Int32: String] = [
            ENOENT: "ENOENT", ENOTDIR: "ENOTDIR", ECONNREFUSED: "ECONNREFUSED", EACCES: "EACCES", EPERM: "EPERM",
            ECONNRESET: "ECONNRESET", EPIPE: "EPIPE", ENAMETOOLONG: "ENAMETOOLONG", ENOTSOCK: "ENOTSOCK",
        ]
        let text = String(cString: strerror(errno))
        return names[errno].map { "\(text), \($0)" } ?? "\(text), errno \(errno)"
    }
}
