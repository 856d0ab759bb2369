import SMMUv3

/// The S1 HWPT/ASID index of one vSMMU: ASID → the S1 HWPTs whose CDs carry it → the viommus those
/// HWPTs live on, plus the viommus an ASID is *retiring* from.
///
/// ## Lookups
/// ``targets(of:)`` is one array load: a 64-bit ``ViommuSet`` per ASID, kept up to date incrementally,
/// so routing a `TLBI_NH_ASID`/`TLBI_NH_VA` costs the same with 1 or 65,536 ASIDs and 1 or 4,096 HWPTs.
///
/// ## The retirement rule
/// When the last HWPT carrying ASID *x* on viommu *v* goes away (relink, CD rewrite, unlink,
/// unregister), the pSMMU behind *v* may still cache translations tagged *x*. The index therefore keeps
/// *v* in *x*'s target set — *x* is **retiring** from *v* — until an invalidation covering *x* has been
/// routed to *v*: `TLBI_NH_ASID x`, or a broadcast `TLBI_NH_ALL`, `TLBI_NSNH_ALL` or `TLBI_S12_VMALL`.
/// A `TLBI_NH_VA x` reaches *v* while *x* retires (it may hit stale entries there) but does not end the
/// retirement, since it covers only a range. So a guest's later `TLBI_NH_ASID x` can never skip a pSMMU
/// that may still hold *x*, and no extra command is ever sent on the guest's behalf.
///
/// Invariants, checked by the property test against a reference model:
/// - `live(x)` = { *v* : some HWPT on *v* has a valid CD with ASID *x* };
/// - `targets(x)` = `live(x)` ∪ `retiring(x)`, and `retiring(x)` ∩ `live(x)` = ∅;
/// - *x* is in the retiring list exactly when `retiring(x)` ≠ ∅.
public struct ASIDIndex: Sendable {
    /// Per ASID, interleaved so that both sit in one cache line: `masks[2x]` = the viommus a TLBI for
    /// ASID x must reach (live ∪ retiring), the router's read; `masks[2x+1]` = the viommus with at least
    /// one HWPT carrying x.
    @usableFromInline var masks: [UInt64]
    /// Per (ASID, viommu): how many HWPTs on that viommu carry the ASID.
    private var hwptCounts: [UInt32: UInt32] = [:]
    /// Per ASID: the HWPTs carrying it.
    private var hwptsByASID: [ASID: Set<S1HWPTID>] = [:]
    /// ASIDs with a non-empty retiring set, and each one's position in it (-1: absent).
    @usableFromInline var retiringList: [ASID] = []
    @usableFromInline var retiringPosition: [Int32]

    public init() {
        masks = Array(repeating: 0, count: 2 << 16)
        retiringPosition = Array(repeating: -1, count: 1 << 16)
        retiringList.reserveCapacity(1024)
    }

    // MARK: Queries

    /// The viommus a TLBI carrying `asid` must reach: those with a live HWPT carrying it and those it
    /// is retiring from.
    @inlinable
    public func targets(of asid: ASID) -> ViommuSet { ViommuSet(mask: masks[2 * Int(asid)]) }

    /// The viommus with at least one HWPT whose valid CDs carry `asid`.
    public func liveViommus(of asid: ASID) -> ViommuSet { ViommuSet(mask: masks[2 * Int(asid) + 1]) }

    /// The viommus `asid` is retiring from: no HWPT there carries it any more, but no invalidation
    /// covering it has been routed there since.
    public func retiringViommus(of asid: ASID) -> ViommuSet {
        ViommuSet(mask: masks[2 * Int(asid)] & ~masks[2 * Int(asid) + 1])
    }

    /// The S1 HWPTs whose valid CDs carry `asid`.
    public func hwpts(carrying asid: ASID) -> Set<S1HWPTID> { hwptsByASID[asid] ?? [] }

    /// Every ASID that some HWPT carries or that is retiring somewhere, in ascending order.
    public var knownASIDs: [ASID] {
        Set(hwptsByASID.keys).union(retiringList).sorted()
    }

    /// ASIDs currently retiring from at least one viommu.
    public var retiringASIDs: [ASID] { retiringList.sorted() }

    // MARK: Updates (control path)

    /// Records that `hwpt`, on `viommu`, carries `asid`.
    mutating func add(asid: ASID, hwpt: S1HWPTID, viommu: ViommuIndex) {
        hwptsByASID[asid, default: []].insert(hwpt)
        let key = Self.key(asid, viommu)
        let n = hwptCounts[key, default: 0] + 1
        hwptCounts[key] = n
        if n == 1 {
            let bit = UInt64(1) << UInt64(viommu.rawValue)
            masks[2 * Int(asid) + 1] |= bit
            masks[2 * Int(asid)] |= bit
            refreshRetiring(asid)
        }
    }

    /// Records that `hwpt`, on `viommu`, no longer carries `asid`. When it was the last such HWPT on
    /// `viommu`, the ASID starts retiring from it.
    mutating func remove(asid: ASID, hwpt: S1HWPTID, viommu: ViommuIndex) {
        if var set = hwptsByASID[asid] {
            set.remove(hwpt)
            hwptsByASID[asid] = set.isEmpty ? nil : set
        }
        let key = Self.key(asid, viommu)
        guard let n = hwptCounts[key] else { return }
        if n > 1 {
            hwptCounts[key] = n - 1
            return
        }
        hwptCounts[key] = nil
        masks[2 * Int(asid) + 1] &= ~(UInt64(1) << UInt64(viommu.rawValue))
        // targetMasks keeps the bit: the ASID is now retiring from `viommu`.
        refreshRetiring(asid)
    }

    /// An invalidation covering `asid` (`TLBI_NH_ASID`) was routed to `viommus`: the ASID stops
    /// retiring from them.
    mutating func invalidated(asid: ASID, on viommus: ViommuSet) {
        let i = Int(asid)
        let retiring = masks[2 * i] & ~masks[2 * i + 1]
        guard retiring & viommus.mask != 0 else { return }
        masks[2 * i] &= ~(retiring & viommus.mask)
        refreshRetiring(asid)
    }

    /// An invalidation covering every ASID (`TLBI_NH_ALL`, `TLBI_NSNH_ALL`, `TLBI_S12_VMALL`) was
    /// routed to `viommus`. Costs O(number of retiring ASIDs), each of which was added by one control
    /// operation, so it is amortised O(1).
    /// - Returns: how many (ASID, viommu) retirements ended.
    @discardableResult
    mutating func invalidatedAll(on viommus: ViommuSet) -> UInt64 {
        guard !retiringList.isEmpty else { return 0 }
        var ended: UInt64 = 0
        var i = 0
        while i < retiringList.count {
            let asid = retiringList[i]
            let a = Int(asid)
            let clearing = masks[2 * a] & ~masks[2 * a + 1] & viommus.mask
            ended &+= UInt64(clearing.nonzeroBitCount)
            masks[2 * a] &= ~clearing
            if masks[2 * a] & ~masks[2 * a + 1] == 0 {
                removeFromRetiringList(asid)  // swaps the last entry into position i
            } else {
                i += 1
            }
        }
        return ended
    }

    /// A viommu was detached (it had no devices left): nothing can be retiring from it any more, since
    /// its pSMMU state for this VM is gone with it.
    mutating func viommuDetached(_ viommu: ViommuIndex) {
        invalidatedAll(on: ViommuSet([viommu]))
    }

    // MARK: Private

    private static func key(_ asid: ASID, _ viommu: ViommuIndex) -> UInt32 {
        UInt32(asid) << 8 | UInt32(viommu.rawValue)
    }

    @usableFromInline
    mutating func refreshRetiring(_ asid: ASID) {
        let a = Int(asid)
        let retiring = masks[2 * a] & ~masks[2 * a + 1] != 0
        let listed = retiringPosition[a] >= 0
        if retiring && !listed {
            retiringPosition[a] = Int32(retiringList.count)
            retiringList.append(asid)
        } else if !retiring && listed {
            removeFromRetiringList(asid)
        }
    }

    @usableFromInline
    mutating func removeFromRetiringList(_ asid: ASID) {
        let position = Int(retiringPosition[Int(asid)])
        guard position >= 0 else { return }
        let last = retiringList.removeLast()
        if position < retiringList.count {
            retiringList[position] = last
            retiringPosition[Int(last)] = Int32(position)
        }
        retiringPosition[Int(asid)] = -1
    }
}
