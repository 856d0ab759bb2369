import VSMMUClient
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// A connection to the daemon for admin requests: connects, says HELLO, and turns every failure into a
/// ``CLIError`` that names the socket.
///
/// Lists are fetched whole (``list(_:vsmmu:)`` pages through LIST until `total`); ``snapshot(vsmmu:)``
/// gathers what `stats` shows. Not thread-safe, like ``VSMMUClient``.
public final class DaemonSession {
    /// The socket path connected to.
    public let socketPath: String
    private let client: VSMMUClient

    /// Connects to `socketPath` and performs the handshake.
    /// - Throws: ``CLIError`` (`daemonNotRunning`, `socketNotAccessible`, `permissionDenied`, …).
    public init(socketPath: String, clientName: String = "vsmmud-cli") throws(CLIError) {
        self.socketPath = socketPath
        do throws(VSMMUClientError) {
            client = try VSMMUClient(socketPath: socketPath)
            try client.hello(name: clientName)
        } catch {
            throw Self.refined(CLIError(error, socketPath: socketPath))
        }
    }

    /// A refused connect to a path that exists and is not a socket says so (Linux answers
    /// `ECONNREFUSED` for both that and a socket nobody listens on).
    private static func refined(_ error: CLIError) -> CLIError {
        guard case .daemonNotRunning(let path, ECONNREFUSED) = error else { return error }
        var status = stat()
        guard lstat(path, &status) == 0, status.st_mode & S_IFMT != S_IFSOCK else { return error }
        return .daemonNotRunning(socketPath: path, errno: ENOTSOCK)
    }

    private func perform<T>(_ body: (VSMMUClient) throws(VSMMUClientError) -> T) throws(CLIError) -> T {
        do throws(VSMMUClientError) { return try body(client) } catch { throw CLIError(error, socketPath: socketPath) }
    }

    /// HEALTH.
    public func health() throws(CLIError) -> HealthReply { try perform { c throws(VSMMUClientError) in try c.health() } }

    /// STATS of one vSMMU, or the daemon's own (`nil`).
    public func stats(vsmmu: VSMMUID?) throws(CLIError) -> StatsReply {
        try perform { c throws(VSMMUClientError) in try c.stats(vsmmu: vsmmu) }
    }

    /// The whole list of `kind` (of one vSMMU, or of all): pages through LIST from `start` 0 until the
    /// reply's `total` is reached. Each page is a fresh snapshot, so a list that changes meanwhile may
    /// repeat or miss an entry; it never loops (a page with no entries ends it).
    public func list(_ kind: ListKind, vsmmu: VSMMUID? = nil, pageSize: UInt32 = 0) throws(CLIError) -> ListEntries {
        var pages: [ListEntries] = []
        var start: UInt32 = 0
        while true {
            let reply = try perform { c throws(VSMMUClientError) in
                try c.list(kind, vsmmu: vsmmu, start: start, maximumEntries: pageSize)
            }
            guard reply.kind == kind else { throw .badReply("LIST \(kind) answered with \(reply.kind) entries") }
            pages.append(reply.entries)
            let count = UInt32(clamping: reply.entries.count)
            guard count > 0, reply.hasMore else { break }
            start = reply.start &+ count
        }
        return ListEntries.concatenating(pages, kind: kind)
    }

    /// What `stats` shows: the daemon's figures and, for `vsmmu` or every vSMMU, its counters with the
    /// names of the vSMMU and of its viommus' pSMMUs. STATS without an id answers only the daemon's
    /// figures, so the vSMMUs come from LIST vsmmus, then one STATS each. A vSMMU destroyed between
    /// the listing and its STATS is left out.
    /// - Throws: ``CLIError/unknownVSMMU(_:)`` when `vsmmu` is given and does not exist.
    public func snapshot(vsmmu: VSMMUID? = nil) throws(CLIError) -> StatsSnapshot {
        let daemon = DaemonFigures(try stats(vsmmu: nil))
        guard case .vsmmus(let listed) = try list(.vsmmus, vsmmu: vsmmu),
              case .viommus(let viommus) = try list(.viommus, vsmmu: vsmmu) else {
            throw .badReply("LIST answered with another kind")
        }
        var pSMMUs: [VSMMUID: [UInt16: String]] = [:]
        for v in viommus where v.viommu <= UInt32(UInt16.max) { pSMMUs[v.vsmmu, default: [:]][UInt16(v.viommu)] = v.pSMMU }
        var figures: [VSMMUFigures] = []
        for entry in listed {
            let reply: StatsReply
            do throws(CLIError) { reply = try stats(vsmmu: entry.vsmmu) } catch {
                if case .unknownVSMMU = error, vsmmu == nil { continue } // gone since the listing
                throw error
            }
            figures.append(VSMMUFigures(id: entry.vsmmu, name: entry.name, reply: reply, pSMMUs: pSMMUs[entry.vsmmu] ?? [:]))
        }
        return StatsSnapshot(daemon: daemon, vsmmus: figures)
    }
}

extension ListEntries {
    /// The entries of `pages` (all of `kind`) in order, as one list.
    static func concatenating(_ pages: [ListEntries], kind: ListKind) -> ListEntries {
        var vsmmus: [VSMMUListEntry] = [], viommus: [ViommuListEntry] = [], devices: [DeviceListEntry] = []
        var hwpts: [HWPTListEntry] = [], asids: [ASIDListEntry] = []
        for page in pages {
            switch page {
            case .vsmmus(let e): vsmmus += e
            case .viommus(let e): viommus += e
            case .devices(let e): devices += e
            case .hwpts(let e): hwpts += e
            case .asids(let e): asids += e
            }
        }
        switch kind {
        case .vsmmus: return .vsmmus(vsmmus)
        case .viommus: return .viommus(viommus)
        case .devices: return .devices(devices)
        case .hwpts: return .hwpts(hwpts)
        default: return .asids(asids)
        }
    }
}
