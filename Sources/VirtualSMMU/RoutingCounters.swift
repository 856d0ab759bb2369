import SMMUv3

/// What a vSMMU's router has done since it was created. Every guest command is counted once in
/// ``received`` and then in exactly one of: forwarded by StreamID, by ASID, by broadcast, dropped by
/// rule, a CMD_SYNC, or an error.
public struct RoutingCounters: Hashable, Sendable {
    /// Guest commands the router looked at (the ones not consumed because of an earlier error excluded).
    public var received: UInt64 = 0
    /// Commands handed to viommus, counting a broadcast once per viommu.
    public var deliveries: UInt64 = 0
    /// ATC_INV / CFGI_CD / CFGI_CD_ALL forwarded to the viommu of their StreamID.
    public var deviceRouted: UInt64 = 0
    /// TLBI_NH_ASID / TLBI_NH_VA forwarded to the viommus whose S1 HWPTs carry (or retire) the ASID.
    public var asidRouted: UInt64 = 0
    /// Deliveries of ASID-routed commands.
    public var asidRoutedDeliveries: UInt64 = 0
    /// ASID-routed commands that reached a viommu only because their ASID is retiring from it.
    public var retiringDeliveries: UInt64 = 0
    /// Viommus that an ASID-routed command did not reach but a broadcast would have.
    public var broadcastsAvoided: UInt64 = 0
    /// ASID-routed commands whose ASID no HWPT carries: they reach no viommu.
    public var asidWithoutTarget: UInt64 = 0
    /// TLBI_NH_ALL / TLBI_NH_VAA / TLBI_NSNH_ALL / TLBI_S12_VMALL sent to every viommu.
    public var broadcast: UInt64 = 0
    /// CFGI_STE / CFGI_STE_RANGE / CFGI_ALL: counted, not forwarded (the VMM relinks the STE instead).
    public var configSTEInvalidations: UInt64 = 0
    /// Commands accepted and not forwarded by rule (PREFETCH, EL2/EL3 TLBIs, S2_IPA, PRI_RESP, RESUME,
    /// STALL_TERM, and CFGI_STE*), by opcode byte.
    public var droppedByOpcode: [UInt8: UInt64] = [:]
    /// CMD_SYNCs, each a completion point.
    public var syncs: UInt64 = 0
    /// Commands refused with CERROR_ILL (undefined opcode, SSEC, reserved encodings).
    public var illegalCommands: UInt64 = 0
    /// Device-scoped commands naming a StreamID that is not registered.
    public var unknownStreamID: UInt64 = 0
    /// Retiring (ASID, viommu) pairs ended by an invalidation routed there.
    public var retirementsEnded: UInt64 = 0
    /// Deliveries per viommu index.
    public var deliveriesPerViommu: [UInt64] = []

    public init() {}

    /// Commands dropped by rule, all opcodes together.
    public var droppedByRule: UInt64 { droppedByOpcode.values.reduce(0, +) }
    /// Commands that failed routing.
    public var errors: UInt64 { illegalCommands + unknownStreamID }

    mutating func ensureViommu(_ v: ViommuIndex) {
        if deliveriesPerViommu.count <= v.index {
            deliveriesPerViommu.append(contentsOf: repeatElement(0, count: v.index + 1 - deliveriesPerViommu.count))
        }
    }
}
