/// The daemon's state in a HEALTH reply (`enum vsmmu_health_status`).
public struct HealthStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Serving. The corresponding C constant is `VSMMU_HEALTH_OK` (0).
    public static let ok = HealthStatus(rawValue: 0)
    /// Serving, with a failed pSMMU. The corresponding C constant is `VSMMU_HEALTH_DEGRADED` (1).
    public static let degraded = HealthStatus(rawValue: 1)
    /// Stopping. The corresponding C constant is `VSMMU_HEALTH_SHUTTING_DOWN` (2).
    public static let shuttingDown = HealthStatus(rawValue: 2)
    var isDefined: Bool { rawValue <= 2 }
    public var description: String {
        ["OK", "DEGRADED", "SHUTTING_DOWN"].indices.contains(Int(rawValue))
            ? ["OK", "DEGRADED", "SHUTTING_DOWN"][Int(rawValue)] : "HEALTH(\(rawValue))"
    }
}

/// A pSMMU's state (`enum vsmmu_psmmu_status`).
public struct PSMMUStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// The corresponding C constant is `VSMMU_PSMMU_OK` (0).
    public static let ok = PSMMUStatus(rawValue: 0)
    /// The backend is unavailable or failing. The corresponding C constant is `VSMMU_PSMMU_FAILED` (1).
    public static let failed = PSMMUStatus(rawValue: 1)
    var isDefined: Bool { rawValue <= 1 }
    public var description: String { rawValue == 0 ? "OK" : rawValue == 1 ? "FAILED" : "PSMMU_STATUS(\(rawValue))" }
}

/// Which backend drives a pSMMU (`enum vsmmu_backend_kind`).
public struct BackendKind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// The simulated pSMMU. The corresponding C constant is `VSMMU_BACKEND_SIMULATED` (1).
    public static let simulated = BackendKind(rawValue: 1)
    /// Linux iommufd. The corresponding C constant is `VSMMU_BACKEND_IOMMUFD` (2).
    public static let iommufd = BackendKind(rawValue: 2)
    var isDefined: Bool { rawValue == 1 || rawValue == 2 }
    public var description: String { rawValue == 1 ? "SIMULATED" : rawValue == 2 ? "IOMMUFD" : "BACKEND(\(rawValue))" }
}

/// One pSMMU in a HEALTH reply (`struct vsmmu_psmmu_health`, 80 bytes).
public struct PSMMUHealth: Hashable, Sendable {
    public var name: String
    public var status: PSMMUStatus
    public var backend: BackendKind
    /// viommus on it, all vSMMUs together.
    public var viommuCount: UInt32

    public init(name: String, status: PSMMUStatus, backend: BackendKind, viommuCount: UInt32) {
        self.name = name
        self.status = status
        self.backend = backend
        self.viommuCount = viommuCount
    }
}

/// HEALTH reply (`struct vsmmu_health_reply`, 32 + 80 × `psmmu_count` bytes).
public struct HealthReply: Hashable, Sendable {
    public var status: HealthStatus
    public var connectionCount: UInt32
    public var vsmmuCount: UInt32
    public var uptimeNanoseconds: UInt64
    public var serverProcessID: UInt32
    public var pSMMUs: [PSMMUHealth]

    public init(status: HealthStatus, connectionCount: UInt32, vsmmuCount: UInt32, uptimeNanoseconds: UInt64,
                serverProcessID: UInt32, pSMMUs: [PSMMUHealth]) {
        self.status = status
        self.connectionCount = connectionCount
        self.vsmmuCount = vsmmuCount
        self.uptimeNanoseconds = uptimeNanoseconds
        self.serverProcessID = serverProcessID
        self.pSMMUs = pSMMUs
    }
}

extension HealthReply: PayloadCoding {
    static let fixedLength = 32
    static let entrySize = 80
    static func requiredLength(_ payload: [UInt8]) -> UInt64 {
        requiredLength(payload, countAt: 12, elementSize: entrySize)
    }

    init(from r: inout WireReader) throws(ProtocolError) {
        let status = HealthStatus(rawValue: r.u32())
        guard status.isDefined else { throw .badField(r.type, offset: 0, value: UInt64(status.rawValue), "unknown health status") }
        let connections = r.u32(), vsmmus = r.u32(), count = Int(r.u32())
        let uptime = r.u64(), pid = r.u32()
        try r.reserved32()
        var psmmus: [PSMMUHealth] = []
        psmmus.reserveCapacity(min(count, r.remaining / Self.entrySize))
        for _ in 0..<count where r.remaining >= Self.entrySize {
            let at = r.offset
            let status = PSMMUStatus(rawValue: r.u32())
            guard status.isDefined else { throw .badField(r.type, offset: at, value: UInt64(status.rawValue), "unknown pSMMU status") }
            let backend = BackendKind(rawValue: r.u32())
            guard backend.isDefined else {
                throw .badField(r.type, offset: at + 4, value: UInt64(backend.rawValue), "unknown backend kind")
            }
            let viommus = r.u32()
            try r.reserved32()
            psmmus.append(PSMMUHealth(name: try r.name(), status: status, backend: backend, viommuCount: viommus))
        }
        self.init(status: status, connectionCount: connections, vsmmuCount: vsmmus, uptimeNanoseconds: uptime,
                  serverProcessID: pid, pSMMUs: psmmus)
    }

    func encode(to w: inout WireWriter) throws(ProtocolError) {
        guard status.isDefined else { throw .badField(w.type, offset: 0, value: UInt64(status.rawValue), "unknown health status") }
        w.u32(status.rawValue)
        w.u32(connectionCount)
        w.u32(vsmmuCount)
        w.u32(UInt32(clamping: pSMMUs.count))
        w.u64(uptimeNanoseconds)
        w.u32(serverProcessID)
        w.u32(0)
        for p in pSMMUs {
            guard p.status.isDefined, p.backend.isDefined else {
                throw .badField(w.type, offset: w.payloadOffset, value: UInt64(p.status.rawValue),
                                "pSMMU \(p.name): unknown status \(p.status) or backend \(p.backend)")
            }
            w.u32(p.status.rawValue)
            w.u32(p.backend.rawValue)
            w.u32(p.viommuCount)
            w.u32(0)
            try w.name(p.name)
        }
    }
}
