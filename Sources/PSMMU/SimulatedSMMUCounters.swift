import SMMUv3

/// What a ``SimulatedSMMU`` did beyond ``BackendCounters``: its caches, DMA, faults and costs.
public struct SimulatedSMMUCounters: Hashable, Sendable {
    // MARK: DMA (``SimulatedSMMU/simulateDMA(_:)``)

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
    /// Accesses aborted without an event (an abort STE: ``DeviceDomain/abort``, or a nested HWPT whose
    /// vSTE has V = 0 or CONFIG = abort).
    public var aborts: UInt64 = 0
    /// Accesses that bypassed stage 1.
    public var bypasses: UInt64 = 0
    /// Event records the SMMU recorded that the kernel does not forward to a vEVENTQ
    /// (``ViommuEventForwarding``: a type it does not forward such as F_BAD_ATS_TREQ, STALL or S2 set, or
    /// a device without a vmaster). They are not returned by ``SimulatedSMMU/takeEvents(viommu:)``.
    public var eventsNotForwarded: UInt64 = 0
    /// Forwarded event records lost because the viommu's queue was full.
    public var eventsLost: UInt64 = 0

    // MARK: Attachment

    /// STE writes: attaches that changed a device's domain (``SimulatedSMMU/attachDevice(_:to:)``, and
    /// the move back to the nest parent when a vdevice is destroyed).
    public var steWrites: UInt64 = 0
    /// ATC entries invalidated by an attach (`arm_smmu_attach_commit` flushes the device's ATC when ATS
    /// was on).
    public var atcEntriesDroppedOnAttach: UInt64 = 0

    // MARK: Invalidation

    /// TLB entries removed, by the opcode byte of the command as the viommu received it
    /// (`CMD_TLBI_NSNH_ALL`'s count is under 0x30 although the hardware executed `CMD_TLBI_NH_ALL`).
    public var tlbEntriesInvalidated: [UInt8: UInt64] = [:]
    /// TLB entries of a VMID flushed because a viommu's detach destroyed its nest parent (its private
    /// S2, or a named S2 whose last viommu it was): `arm_smmu_domain_free_paging` invalidates the VMID
    /// before freeing it.
    public var tlbEntriesFlushedOnDetach: UInt64 = 0
    /// TLB entries of a VMID flushed by ``SimulatedSMMU/destroyNestParent(_:)``.
    public var tlbEntriesFlushedOnNestParentDestroy: UInt64 = 0
    /// Cached CDs dropped, by the opcode byte (`CMD_CFGI_CD`, `CMD_CFGI_CD_ALL`).
    public var configEntriesInvalidated: [UInt8: UInt64] = [:]
    /// Cached STEs and CDs dropped because the kernel rewrote a device's STE (an attach).
    public var configEntriesDroppedOnSTEChange: UInt64 = 0
    /// ATC entries removed by `CMD_ATC_INV`.
    public var atcEntriesInvalidated: UInt64 = 0
    /// Commands refused with `CERROR_ILL` by the kernel's rules (`arm_vsmmu_convert_user_cmd`: opcode
    /// not accepted on a viommu, unknown vSID).
    public var commandsRejected: UInt64 = 0
    /// Commands the kernel passed on but the SMMU found illegal (SSEC set on ATC_INV, CFGI_CD,
    /// CFGI_CD_ALL): the SMMU stops with `CERROR_ILL`, `arm_smmu_cmdq_skip_err` overwrites the command
    /// with a CMD_SYNC and the queue goes on, so the command has no effect yet the ioctl succeeds. They
    /// count as completed, not under their opcode in ``BackendCounters/commandsByOpcode``.
    public var illegalCommandsSkipped: UInt64 = 0

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
