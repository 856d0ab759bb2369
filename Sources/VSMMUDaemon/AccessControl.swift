import Logging
import VSMMUConfiguration
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

/// The allow-list at accept (`[access]` in vsmmud.toml, PROTOCOL.md §3.3).
extension VSMMUServer {
    /// How long a refused peer has to send its first request before it is closed without a reply.
    static let refusalReadTimeoutSeconds = 2
    /// Refused peers answered at once; beyond, further refused peers are closed without a reply.
    static let maximumConcurrentRefusals = 16

    /// Whether the peer on `fd` may use the daemon. When it may not, the connection is handed to a
    /// short-lived thread that answers its first request with `PERMISSION_DENIED` and closes it.
    func admits(_ fd: Int32, credentials: PeerCredentials?) -> Bool {
        let access = self.access
        guard !access.isOpen else { return true }
        let groups = Self.peerGroups(fd) ?? []
        if let credentials,
           access.permits(userID: credentials.userID, groupIDs: [credentials.groupID] + groups) { return true }
        let uid = credentials?.userID ?? UInt32.max
        let gid = credentials?.groupID ?? UInt32.max
        logger.warning("connection refused: peer not on the allow-list", metadata: [
            "pid": "\(credentials.map { "\($0.processID)" } ?? "?")", "uid": "\(uid)", "gid": "\(gid)",
            "groups": "\(groups)",
        ])
        refusalsTotal.add(1, ordering: .relaxed)
        let admitted = refusalsInProgress.add(1, ordering: .relaxed).newValue <= Self.maximumConcurrentRefusals
        guard admitted else {
            refusalsInProgress.subtract(1, ordering: .relaxed)
            close(fd)
            return false
        }
        do {
            let thread = try OSThread { [self] in
                Self.refuse(fd, userID: uid, groupID: gid)
                refusalsInProgress.subtract(1, ordering: .relaxed)
            }
            state.withLock { $0.finishedThreads.append(thread) }
        } catch {
            refusalsInProgress.subtract(1, ordering: .relaxed)
            close(fd)
        }
        return false
    }

    /// Waits (bounded) for the peer's first frame header, answers it with `PERMISSION_DENIED`, closes.
    private static func refuse(_ fd: Int32, userID: UInt32, groupID: UInt32) {
        defer { close(fd) }
        // Without the bound a silent peer would hold this thread: then close at once, unanswered.
        guard (try? SystemCall.setReceiveTimeout(fd, microseconds: Int(refusalReadTimeoutSeconds) * 1_000_000)) != nil else { return }
        var header = [UInt8](repeating: 0, count: FrameHeader.byteCount)
        var received = 0
        while received < header.count {
            let n = header.withUnsafeMutableBytes { recv(fd, $0.baseAddress.map { $0 + received }, $0.count - received, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return } // gone, or silent past the timeout
            received += n
        }
        let parsed = FrameHeader(bytes: header)
        let error = ProtocolError.permissionDenied(userID: userID, groupID: groupID, type: parsed?.type ?? MessageType(rawValue: 0))
        try? POSIX.sendAll(fd, error.replyFrame(requestID: parsed?.requestID ?? 0))
        shutdown(fd, Int32(SHUT_WR))
        // Read what the peer already sent (bounded, within the timeout) before closing: closing a Unix
        // socket with unread data resets the connection, and the peer would lose the reply.
        var discarded = 0
        var sink = [UInt8](repeating: 0, count: 4096)
        while discarded < WireProtocol.maximumFrameSize {
            let n = sink.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            discarded += n
        }
    }

    /// The peer's supplementary groups (`SO_PEERGROUPS`, Linux 4.13+), or `nil` when unavailable.
    static func peerGroups(_ fd: Int32) -> [UInt32]? {
        let soPeerGroups: Int32 = 59
        var groups = [gid_t](repeating: 0, count: 64)
        var length = socklen_t(groups.count * MemoryLayout<gid_t>.size)
        var status = groups.withUnsafeMutableBytes { getsockopt(fd, SOL_SOCKET, soPeerGroups, $0.baseAddress, &length) }
        if status != 0 && errno == ERANGE {
            groups = [gid_t](repeating: 0, count: Int(length) / MemoryLayout<gid_t>.size)
            status = groups.withUnsafeMutableBytes { getsockopt(fd, SOL_SOCKET, soPeerGroups, $0.baseAddress, &length) }
        }
        guard status == 0 else { return nil }
        return groups.prefix(Int(length) / MemoryLayout<gid_t>.size).map { UInt32($0) }
    }
}

extension Duration {
    /// The duration in nanoseconds, clamped to `Int64`.
    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return whole.addingReportingOverflow(attoseconds / 1_000_000_000).overflow ? .max : whole + attoseconds / 1_000_000_000
    }
}

extension AccessList {
    /// For logs: `open`, or the sorted uids and gids.
    var logDescription: String {
        isOpen ? "open" : "uids \(userIDs.sorted()) gids \(groupIDs.sorted())"
    }
}
