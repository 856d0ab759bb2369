import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

extension VSMMUClient {
    /// How a client reconnects after its connection failed (the daemon restarted, crashed or is stopping):
    /// bounded exponential backoff with jitter, within a deadline per outage.
    ///
    /// The first attempt is immediate; attempt *n* then waits a random time between half of and the whole
    /// of `min(initialDelay · 2ⁿ⁻¹, maximumDelay)`, so clients that lost the same daemon do not come back in
    /// step. When no connection was handshaken and resumed within `deadline` of the failure, the call
    /// throws ``VSMMUClientError/transport(call:errno:)`` with `ETIMEDOUT`, its `call` naming the attempts
    /// and the last failure (``VSMMUClientError/isReconnectFailure``).
    public struct Reconnect: Hashable, Sendable {
        /// The wait before the second attempt.
        public var initialDelay: Duration
        /// The longest wait between two attempts.
        public var maximumDelay: Duration
        /// How long after the failure the client keeps trying.
        public var deadline: Duration

        public init(initialDelay: Duration = .milliseconds(10), maximumDelay: Duration = .milliseconds(500),
                    deadline: Duration = .seconds(30)) {
            self.initialDelay = max(initialDelay, .zero)
            self.maximumDelay = max(maximumDelay, self.initialDelay)
            self.deadline = max(deadline, .zero)
        }

        /// The backoff state of one outage: its start, how many attempts were made.
        struct Backoff {
            let policy: Reconnect
            var started: ContinuousClock.Instant?
            var attempts = 0

            init(_ policy: Reconnect) { self.policy = policy }

            /// Called before each attempt, after `failure`: returns at once for the first one, sleeps the
            /// jittered delay for the next; throws `ETIMEDOUT` once the deadline passed.
            mutating func wait(after failure: VSMMUClientError) throws(VSMMUClientError) {
                let now = ContinuousClock.now
                let start = started ?? now
                started = start
                defer { attempts += 1 }
                guard attempts > 0 else { return }
                let elapsed = now - start
                guard elapsed < policy.deadline else {
                    throw .transport(call: "\(Self.gaveUp): \(attempts) reconnection attempts failed within the deadline; last: \(failure)",
                                     errno: ETIMEDOUT)
                }
                var delay = policy.initialDelay
                for _ in 1..<min(attempts, 40) where delay < policy.maximumDelay { delay *= 2 }
                delay = min(delay, policy.maximumDelay, policy.deadline - elapsed)
                let nanoseconds = Self.nanoseconds(delay)
                let jittered = nanoseconds / 2 + (nanoseconds > 1 ? UInt64.random(in: 0...(nanoseconds - nanoseconds / 2)) : 0)
                var request = timespec(tv_sec: Int(jittered / 1_000_000_000), tv_nsec: Int(jittered % 1_000_000_000))
                var remaining = timespec()
                while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
            }

            /// How the `call` of a reconnect failure begins.
            static let gaveUp = "reconnect: the connection to the daemon was lost"

            static func nanoseconds(_ d: Duration) -> UInt64 {
                let (seconds, attoseconds) = d.components
                guard seconds >= 0 else { return 0 }
                return UInt64(seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
            }
        }
    }

    /// After `failure`: connects again (backing off), sends the HELLO the client had sent and RESUME_VSMMU
    /// for every vSMMU it holds a token for (PROTOCOL.md §5.13), then SET_DEV_ID with each VFIO cdev set
    /// by ``setResumeVFIODevice(_:vsmmu:viommu:hostDeviceID:streamID:)`` (§5.14), then MAP_QUEUE for each
    /// shared queue of a resumed vSMMU (same memfd, fresh eventfds: PROTOCOL.md §8.6) and MAP_EVENT_QUEUE for
    /// each event queue (same memfd, a fresh call eventfd: §9.7), on the new connection.
    /// - Returns: the vSMMUs the new daemon does not know (RESUME_VSMMU answered `UNKNOWN_VSMMU`); their
    ///   tokens are dropped and they join ``lostVSMMUs``.
    /// - Throws: `ETIMEDOUT` (``VSMMUClientError/isReconnectFailure``) after the deadline; an ERROR answer to HELLO or RESUME_VSMMU other than
    ///   `UNKNOWN_VSMMU` and `SHUTTING_DOWN` (e.g. `INTERNAL_ERROR`: the owner change is not durable).
    func recover(after failure: VSMMUClientError, backoff: inout Reconnect.Backoff) throws(VSMMUClientError) -> Set<VSMMUID> {
        var cause = failure
        while true {
            try backoff.wait(after: cause)
            do throws(VSMMUClientError) {
                replaceConnection(with: try Self.connectSocket(socketPath))
                var lost: Set<VSMMUID> = []
                if let handshake {
                    let hello = Request.hello(Hello(versions: handshake.versions, processID: UInt32(bitPattern: getpid()),
                                                    clientName: handshake.name))
                    guard case .hello(let reply) = try awaitReply(to: hello, id: try send(hello)) else { throw .badReply("HELLO") }
                    serverHello = reply
                    for (vsmmu, token) in resumeTokens.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                        let iommufd = resumeIOMMUFDs[vsmmu]
                        let resume = Request.resumeVSMMU(ResumeVSMMU(vsmmu: vsmmu, resumeToken: token,
                                                                     fileDescriptorAttached: iommufd != nil))
                        do throws(VSMMUClientError) {
                            _ = try awaitReply(to: resume, id: try send(resume, fileDescriptor: iommufd))
                        } catch where error.code == .unknownVSMMU {
                            lost.insert(vsmmu)
                            resumeTokens[vsmmu] = nil
                            resumeIOMMUFDs[vsmmu] = nil
                            resumeVFIODevices[vsmmu] = nil
                            continue
                        }
                        // Each cdev back with its SET_DEV_ID (§5.14). A refusal leaves that device's cdev
                        // pending on the daemon, which then says so when the device must move: not a
                        // reason to fail the resume.
                        for (sid, d) in (resumeVFIODevices[vsmmu] ?? [:]).sorted(by: { $0.key < $1.key }) {
                            let again = Request.setDeviceID(DeviceRegistration(vsmmu: vsmmu, viommu: d.viommu, hostDeviceID: d.hostDeviceID,
                                                                               streamID: sid, fileDescriptorAttached: true))
                            do throws(VSMMUClientError) {
                                _ = try awaitReply(to: again, id: try send(again, fileDescriptor: d.cdev))
                            } catch where !error.isConnectionFailure && error.code != .shuttingDown {
                                continue
                            }
                        }
                    }
                }
                // Each shared queue of a resumed vSMMU mapped again, same memfd, fresh eventfds (§8.6).
                try remapSharedQueues(resumed: Set(resumeTokens.keys))
                // And each event queue: same memfd, a fresh call eventfd (§9.7).
                try remapEventQueues(resumed: Set(resumeTokens.keys))
                reconnectCount += 1
                lostVSMMUs.formUnion(lost)
                return lost
            } catch where error.isConnectionFailure || error.code == .shuttingDown {
                cause = error
            }
        }
    }
}

extension VSMMUClientError {
    /// Whether the error says the connection is gone (or could not be made while the daemon restarts),
    /// rather than answering the request: end of stream, `ECONNRESET`, `EPIPE`, `ENOTCONN`, `ECONNABORTED`,
    /// and on connect `ECONNREFUSED` / `ENOENT` (no daemon listening on the path yet).
    public var isConnectionFailure: Bool {
        switch self {
        case .connectionClosed: return true
        case .transport(_, let errno):
            return [ECONNRESET, EPIPE, ENOTCONN, ECONNABORTED, ECONNREFUSED, ENOENT].contains(errno)
        case .server, .badReply: return false
        }
    }

    /// Whether the error is a ``VSMMUClient/Reconnect`` policy giving up: `ETIMEDOUT`, after the deadline.
    public var isReconnectFailure: Bool {
        if case .transport(let call, let errno) = self { return errno == ETIMEDOUT && call.hasPrefix(VSMMUClient.Reconnect.Backoff.gaveUp) }
        return false
    }
}
