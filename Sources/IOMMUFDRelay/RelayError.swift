import SystemPackage

/// A failure of the relay: of the host↔guest channel, of starting the agent, or of a guest syscall a
/// helper made.
public enum RelayError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The rig's socket could not be connected (no guest running, wrong path).
    case connectFailed(path: String, errno: Errno)
    /// The guest's shell or the uploaded agent did not answer in time; `seen` is what came back.
    case guestDidNotAnswer(what: String, seen: String)
    /// The guest closed the channel (QEMU exited, the agent died).
    case channelClosed(String)
    /// A request got no (complete) answer in time.
    case timedOut(String)
    /// The agent's answer does not follow the protocol.
    case malformedResponse(String)
    /// An earlier failure left the byte stream at an unknown position: no more requests are sent.
    case channelBroken(underlying: String)
    /// A guest syscall a helper made failed with `errno`.
    case guest(String, Errno)

    public var description: String {
        switch self {
        case .connectFailed(let path, let errno):
            return "cannot connect to the rig's socket \(path): \(errno) (is the guest running? ./boot --smmus 2 with RIG_RUN)"
        case .guestDidNotAnswer(let what, let seen):
            return "the guest did not answer \(what); it sent \(seen.isEmpty ? "nothing" : "\"\(seen)\"")"
        case .channelClosed(let what): return "the guest closed the relay channel (\(what))"
        case .timedOut(let what): return "the relay timed out: \(what)"
        case .malformedResponse(let what): return "malformed answer from the relay agent: \(what)"
        case .channelBroken(let underlying): return "the relay channel is unusable after an earlier failure: \(underlying)"
        case .guest(let what, let errno): return "\(what) failed in the guest: \(errno)"
        }
    }

    /// The errno an ``IOMMUFDDevice`` method reports when the channel fails under it (it cannot throw):
    /// `ETIMEDOUT` for a timeout, `ENOTCONN` otherwise — errnos no iommufd ioctl returns, so the failure
    /// is not mistaken for the kernel's answer.
    public var seamErrno: Errno {
        switch self {
        case .timedOut: return .timedOut
        case .guest(_, let errno): return errno
        default: return .socketNotConnected
        }
    }
}
