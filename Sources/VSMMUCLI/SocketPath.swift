/// Where `vsmmud-cli` finds the daemon: `--socket PATH`, else `$VSMMUD_SOCKET`, else
/// `/run/vsmmud/vsmmud.sock`.
public enum SocketPath {
    /// The daemon's default socket (systemd's `RuntimeDirectory=vsmmud`).
    public static let defaultPath = "/run/vsmmud/vsmmud.sock"
    /// The environment variable naming the socket (also read by `vmm-sim`).
    public static let environmentVariable = "VSMMUD_SOCKET"

    /// The socket to use: `option` when given, else a non-empty `$VSMMUD_SOCKET`, else ``defaultPath``.
    public static func resolve(option: String?, environment: [String: String]) -> String {
        if let option, !option.isEmpty { return option }
        if let fromEnvironment = environment[environmentVariable], !fromEnvironment.isEmpty { return fromEnvironment }
        return defaultPath
    }
}
