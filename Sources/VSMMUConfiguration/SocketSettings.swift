/// Where and how the daemon's listening socket is created (`[socket]`). Each setting left out (`nil`)
/// means the daemon's own default; under socket activation systemd's `vsmmud.socket` decides them instead.
public struct SocketSettings: Sendable, Equatable {
    /// `[socket] path`: an absolute path of at most ``maximumPathLength`` bytes; `nil`: the daemon's
    /// default (`$RUNTIME_DIRECTORY/vsmmud.sock`, else `/run/vsmmud/vsmmud.sock`).
    public var path: String?
    /// `[socket] mode`, given as an octal string (`"0660"`): the socket file's permission bits,
    /// at most `0o777`; `nil`: as the daemon's umask leaves them.
    public var mode: UInt32?
    /// `[socket] group`: the group name the socket file is given; resolving it is the daemon's job.
    public var group: String?

    public init(path: String? = nil, mode: UInt32? = nil, group: String? = nil) {
        self.path = path
        self.mode = mode
        self.group = group
    }

    /// The longest socket path: `sockaddr_un.sun_path` holds 108 bytes, the last one a NUL.
    public static let maximumPathLength = 107

    /// The mode an octal string gives: one to four digits `0`–`7`, at most `0o777`
    /// (`"660"`, `"0660"`); `nil` for anything else (set-id and sticky bits included).
    public static func mode(octal text: String) -> UInt32? {
        guard (1...4).contains(text.utf8.count), text.utf8.allSatisfy({ (0x30...0x37).contains($0) }),
              let mode = UInt32(text, radix: 8), mode <= 0o777 else { return nil }
        return mode
    }
}
