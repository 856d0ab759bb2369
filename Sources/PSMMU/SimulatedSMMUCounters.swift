import SMMUv3

/// What a ``SimulatedSMMU`` did beyond ``BackendCounters``: its caches, DMA, faults and costs.
public struct SimulatedSMMUCounters: Hashable, Sendable {
    // MARK: DMA (``SimulatedSMMU/touch(hostDeviceID:substreamID:address:size:mapped:throughATS:)``)

    /// DMA accesses modelled.
    public var dmaAccesses: UInt64 = 0
    /// Accesses translated from a cached TLB entry.
    public var tlbHits: UInt64 = 0
    /// TLB entries filled by a walk.
    public var tlbFills: UInt64 = 0
    /// ATS accesses served by the device's ATC.
    public var atcHits: UInt64 = 0
    /// ATC entries filled by an ATS translation.
    public var atcFills: UInt64 = 0
    /// STE lookups served by the configuration cache / that fetched the STE.
    public var steCacheHits: UInt64 = 0
    public var steCacheFills: UInt64 = 0
    /// CD lookups served by the configuration cache / that fetched the CD.
    public var cdCacheHits: UInt64 = 0
    public var cdCacheFills: UInt64 = 0
    /// Accesses that faulted (with or without an event record).
    public var translationFaults: UInt64 = 0
    /// Accesses aborted without an event (abort STE).
    public var aborts: UInt64 = 0
    /// Accesses that bypassed stage 1.
    public var bypasses: UInt64 = 0
    /// Event records not delivered: the device has no vdevice, or the viommu's queue was full.
    public var eventsLost: UInt64 = 0

    // MARK: Invalidation

    /// TLB entries removed, by the opcode byte of the command as the viommu received it
    /// (`CMD_TLBI_NSNH_ALL`'s count is under 0x30 although the hardware executed `CMD_TLBI_NH_ALL`).
    public var tlbEntriesInvalidated: [UInt8: UInt64] = [:]
    /// TLB entries of a viommu's VMID flushed when it was detached (the kernel's VMID teardown).
    public var tlbEntriesFlushedOnDetach: UInt64 = 0
    /// Cached CDs dropped, by the opcode byte (`CMD_CFGI_CD`, `CMD_CFGI_CD_ALL`).
    public var configEntriesInvalidated: [UInt8: UInt64] = [:]
    /// Cached STEs and CDs dropped because the kernel rewrote a device's STE (HWPT installed or destroyed).
    public var configEntriesDroppedOnSTEChange: UInt64 = 0
    /// ATC entries removed by `CMD_ATC_INV`.
    public var atcEntriesInvalidated: UInt64 = 0
    /// Commands refused with `CERROR_ILL` by the kernel's rules (opcode not accepted on a viommu,
    /// unknown vSID) or the SMMU's (SSEC set).
    public var commandsRejected: UInt64 = 0

    // MARK: Fault injection and cost

    /// Commands failed by an injected fault.
    public var faultsInjected: UInt64 = 0
    /// `invalidate` calls blocked by a ``StallGate``.
    public var callsStalled: UInt64 = 0
    /// Time charged by the ``CostModel`` (per call and per command, not the wait for a shared queue).
    public var costNanoseconds: UInt64 = 0

    public init() {}
}

/// Counters kept on the hot path: fixed arrays rather than dictionaries.
struct CommandTally: Sendable {
    var calls: UInt64 = 0
    var received: UInt64 = 0
    var completed: UInt64 = 0
    var failed: UInt64 = 0
    var byOpcode = [UInt64](repeating: 0, count: 256)
    var tlbInvalidatedByOpcode = [UInt64](repeating: 0, count: 256)
    var configInvalidatedByOpcode = [UInt64](repeating: 0, count: 256)

    static func dictionary(_ array: [UInt64]) -> [UInt8: UInt64] {
        var out: [UInt8: UInt64] = [:]
        for (i, n) in array.enumerated() where n > 0 { out[UInt8(i)] = n }
        return out
    }
}
