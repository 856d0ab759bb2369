import VSMMUProtocol

/// `vsmmud-cli health`: the daemon's status, its pSMMUs and uptime, and the exit status that says
/// whether it is healthy.
public enum HealthOutput {
    /// Healthy: status `OK` and every pSMMU `OK`.
    public static func isHealthy(_ reply: HealthReply) -> Bool {
        reply.status == .ok && reply.pSMMUs.allSatisfy { $0.status == .ok }
    }

    /// 0 when healthy, 1 otherwise (degraded, shutting down, a pSMMU failed).
    public static func exitStatus(_ reply: HealthReply) -> Int32 {
        isHealthy(reply) ? ExitStatus.success : ExitStatus.failure
    }

    /// The report as text, ending in a newline.
    public static func text(_ reply: HealthReply) -> String {
        var out = "vsmmud: \(reply.status) (\(isHealthy(reply) ? "healthy" : "not healthy")), pid \(reply.serverProcessID), "
            + "up \(Format.uptime(nanoseconds: reply.uptimeNanoseconds))\n"
        out += "  connections \(reply.connectionCount), vSMMUs \(reply.vsmmuCount)\n"
        guard !reply.pSMMUs.isEmpty else { return out + "  no pSMMUs\n" }
        var table = TextTable(["pSMMU", "backend", "status", "viommus"], alignments: [.left, .left, .left, .right])
        for p in reply.pSMMUs {
            table.append([p.name, p.backend.description.lowercased(), p.status.description, String(p.viommuCount)])
        }
        return out + "\n" + table.render(indent: "  ")
    }

    /// The report as one JSON document (``HealthDocument``).
    public static func json(_ reply: HealthReply) -> String { JSONOutput.encode(HealthDocument(reply)) }
}

/// `health --json`.
public struct HealthDocument: Codable, Hashable, Sendable {
    public struct PSMMU: Codable, Hashable, Sendable {
        public var name: String
        /// `simulated` or `iommufd`.
        public var backend: String
        /// `OK` or `FAILED`.
        public var status: String
        public var viommus: UInt32
    }

    /// `OK`, `DEGRADED` or `SHUTTING_DOWN`.
    public var status: String
    /// What the exit status says: status OK and every pSMMU OK.
    public var healthy: Bool
    public var uptimeNanoseconds: UInt64
    public var uptimeSeconds: Double
    public var connections: UInt32
    public var vsmmus: UInt32
    public var serverPID: UInt32
    public var pSMMUs: [PSMMU]

    enum CodingKeys: String, CodingKey {
        case status, healthy, uptimeNanoseconds = "uptime_ns", uptimeSeconds = "uptime_seconds", connections, vsmmus,
             serverPID = "server_pid", pSMMUs = "psmmus"
    }

    public init(_ reply: HealthReply) {
        status = reply.status.description
        healthy = HealthOutput.isHealthy(reply)
        uptimeNanoseconds = reply.uptimeNanoseconds
        uptimeSeconds = Double(reply.uptimeNanoseconds) / 1e9
        connections = reply.connectionCount
        vsmmus = reply.vsmmuCount
        serverPID = reply.serverProcessID
        pSMMUs = reply.pSMMUs.map {
            PSMMU(name: $0.name, backend: $0.backend.description.lowercased(), status: $0.status.description, viommus: $0.viommuCount)
        }
    }
}
