import SMMUv3

/// The S1 HWPT/ASID index of one vSMMU: ASID → the S1 HWPTs whose CDs carry it → the viommus those
/// HWPTs live on, plus the viommus an ASID is *retiring* from.
///
/// ## Lookups
/// ``targets(of:)`` is two dependent loads: a 64-bit ``ViommuSet`` per ASID, kept up to date
/// incrementally, so routing a `TLBI_NH_ASID`/`TLBI_NH_VA` costs the same with 1 or 65,536 ASIDs and 1 or
/// 4,096 HWPTs.
///
/// ## Memory that grows with the ASIDs in use
/// The masks live in a two-level table: a directory of 256 page pointers (2 KiB, indexed by the ASID's
/// high byte) and pages of 256 ASIDs each (indexed by its low byte), allocated when the first ASID of
/// their range gets a target and freed when the last one loses it. A directory entry without a page
/// points at one shared, read-only page of zeros, so a lookup never branches on "is there a page":
/// `directory[asid >> 8]`, then the mask pair in that page. A vSMMU whose guest uses a few dozen ASIDs
/// costs 2 KiB + one 5 KiB page, where the flat arrays of every ASID cost 1.25 MiB (issue 11 §3).
/// The router reads the table through ``TargetTable``, a typed view of the mask pairs.
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
    /// The two-level table of mask pairs and retiring positions; copied on write.
    @usableFromInline var table: Table
    /// Per (ASID, viommu): how many HWPTs on that viommu carry the ASID.
    private var hwptCounts: [UInt32: UInt32] = [:]
    /// Per ASID: the HWPTs carrying it.
    private var hwptsByASID: [ASID: Set<S1HWPTID>] = [:]
    /// ASIDs with a non-empty retiring set (each one's position in it is kept in its page).
    @usableFromInline var retiringList: [ASID] = []

    public init() {
        table = Table()
    }

    // MARK: Queries

    /// The viommus a TLBI carrying `asid` must reach: those with a live HWPT carrying it and those it
    /// is retiring from.
    @inlinable
    public func targets(of asid: ASID) -> ViommuSet { ViommuSet(mask: table.view.targets(of: asid)) }

    /// The viommus with at least one HWPT whose valid CDs carry `asid`.
    public func liveViommus(of asid: ASID) -> ViommuSet { ViommuSet(mask: table.view.live(of: asid)) }

    /// The viommus `asid` is retiring from: no HWPT there carries it any more, but no invalidation
    /// covering it has been routed there since.
    public func retiringViommus(of asid: ASID) -> ViommuSet {
        let view = table.view
        return ViommuSet(mask: view.targets(of: asid) & ~view.live(of: asid))
    }

    /// The S1 HWPTs whose valid CDs carry `asid`.
    public func hwpts(carrying asid: ASID) -> Set<S1HWPTID> { hwptsByASID[asid] ?? [] }

    /// Every ASID that some HWPT carries or that is retiring somewhere, in ascending order.
    public var knownASIDs: [ASID] {
        Set(hwptsByASID.keys).union(retiringList).sorted()
    }

    /// ASIDs currently retiring from at least one viommu.
    public var retiringASIDs: [ASID] { retiringList.sorted() }

    /// Whether some ASID is retiring from some viommu (the router's test before a broadcast ends them).
    @inlinable
    public var hasRetiringASIDs: Bool { !retiringList.isEmpty }

    /// Pages of 256 ASIDs currently allocated (each ``Table/pageBytes`` bytes): what the index costs
    /// beyond its directory.
    public var allocatedPages: Int { table.storage.allocatedPages }

    /// Runs `body` with a view of the mask pairs, valid only inside `body` (the router's hot loop).
    @inlinable
    public func withTargetTable<R>(_ body: (TargetTable) throws -> R) rethrows -> R {
        try withExtendedLifetime(table.storage) { try body(table.view) }
    }

    // MARK: Updates (control path)

    /// Records that `hwpt`, on `viommu`, carries `asid`.
    mutating func add(asid: ASID, hwpt: S1HWPTID, viommu: ViommuIndex) {
        hwptsByASID[asid, default: []].insert(hwpt)
        let key = Self.key(asid, viommu)
        let n = hwptCounts[key, default: 0] + 1
        hwptCounts[key] = n
        if n == 1 {
            let bit = UInt64(1) << UInt64(viommu.rawValue)
            let view = table.view
            store(asid, targets: view.targets(of: asid) | bit, live: view.live(of: asid) | bit)
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
        // The target bit stays: the ASID is now retiring from `viommu`.
        let view = table.view
        store(asid, targets: view.targets(of: asid), live: view.live(of: asid) & ~(UInt64(1) << UInt64(viommu.rawValue)))
    }

    /// An invalidation covering `asid` (`TLBI_NH_ASID`) was routed to `viommus`: the ASID stops
    /// retiring from them.
    mutating func invalidated(asid: ASID, on viommus: ViommuSet) {
        let view = table.view
        let live = view.live(of: asid)
        let retiring = view.targets(of: asid) & ~live
        guard retiring & viommus.mask != 0 else { return }
        store(asid, targets: view.targets(of: asid) & ~(retiring & viommus.mask), live: live)
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
            let view = table.view
            let live = view.live(of: asid)
            let targets = view.targets(of: asid)
            let clearing = targets & ~live & viommus.mask
            ended &+= UInt64(clearing.nonzeroBitCount)
            if clearing != 0 { store(asid, targets: targets & ~clearing, live: live) }
            // `store` swapped the last entry into position i when the ASID stopped retiring.
            if i < retiringList.count, retiringList[i] == asid { i += 1 }
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

    /// Sets `asid`'s masks and keeps the retiring list in line with them: an ASID leaves the list
    /// before its page may be freed and joins it once its page exists.
    private mutating func store(_ asid: ASID, targets: UInt64, live: UInt64) {
        let retiring = targets & ~live != 0
        let listed = table.retiringPosition(asid) >= 0
        if listed && !retiring { removeFromRetiringList(asid) }
        table.store(asid, MaskPair(targets: targets, live: live))
        if retiring && !listed {
            table.setRetiringPosition(asid, Int32(retiringList.count))
            retiringList.append(asid)
        }
    }

    private mutating func removeFromRetiringList(_ asid: ASID) {
        let position = Int(table.retiringPosition(asid))
        guard position >= 0 else { return }
        let last = retiringList.removeLast()
        if position < retiringList.count {
            retiringList[position] = last
            table.setRetiringPosition(last, Int32(position))
        }
        table.setRetiringPosition(asid, -1)
    }
}

extension ASIDIndex {
    /// One ASID's masks, interleaved so that both sit in one 16-byte slot of a cache line.
    @frozen @usableFromInline
    struct MaskPair {
        /// The viommus a TLBI for this ASID must reach (live ∪ retiring): the router's read.
        @usableFromInline var targets: UInt64
        /// The viommus with at least one HWPT carrying this ASID.
        @usableFromInline var live: UInt64
    }

    /// A read-only view of an index's mask pairs, for the router's hot loop: O(1) per ASID, two
    /// dependent loads (the page pointer from the 2 KiB directory, then the pair), no bounds check
    /// needed, since every 16-bit ASID has a directory entry and a slot in the page it points at.
    /// Valid only inside ``ASIDIndex/withTargetTable(_:)``.
    @frozen
    public struct TargetTable {
        @usableFromInline let directory: UnsafePointer<UnsafeMutablePointer<MaskPair>>

        @inlinable
        init(directory: UnsafePointer<UnsafeMutablePointer<MaskPair>>) { self.directory = directory }

        /// The mask of viommus a TLBI carrying `asid` must reach.
        @inlinable @inline(__always)
        public func targets(of asid: ASID) -> UInt64 {
            directory[Int(asid &>> 8)][Int(asid & 0xFF)].targets
        }

        /// The mask of viommus with a live HWPT carrying `asid`.
        @inlinable @inline(__always)
        public func live(of asid: ASID) -> UInt64 {
            directory[Int(asid &>> 8)][Int(asid & 0xFF)].live
        }

        /// The viommus among `all` a TLBI carrying `asid` must reach, and whether `asid` is retiring from
        /// any of them: one load of the pair.
        @inlinable @inline(__always)
        public func route(_ asid: ASID, within all: UInt64) -> (targets: UInt64, retiring: Bool) {
            let pair = directory[Int(asid &>> 8)][Int(asid & 0xFF)]
            let targets = pair.targets & all
            return (targets, targets & ~pair.live != 0)
        }
    }

    /// The index's table with value semantics: a ``Storage`` copied before a write when shared.
    @usableFromInline
    struct Table: @unchecked Sendable {
        // `@unchecked Sendable`: the storage is only mutated through a uniquely referenced `Table`
        // (copy on write), so a shared storage is never written.
        @usableFromInline var storage: Storage

        /// Bytes of one page: 256 mask pairs and 256 retiring positions.
        static let pageBytes = Storage.pageSize * (MemoryLayout<MaskPair>.stride + MemoryLayout<Int32>.stride)

        init() { storage = Storage() }

        @usableFromInline var view: TargetTable { TargetTable(directory: UnsafePointer(storage.directory)) }

        /// Sets `asid`'s mask pair (live ⊆ targets), in a storage this table owns alone.
        mutating func store(_ asid: ASID, _ pair: MaskPair) {
            if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
            storage.store(asid, pair)
        }

        func retiringPosition(_ asid: ASID) -> Int32 { storage.retiringPosition(asid) }

        /// Only called for an ASID whose page exists (a retiring or just-unlisted one).
        mutating func setRetiringPosition(_ asid: ASID, _ position: Int32) {
            if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
            storage.setRetiringPosition(asid, position)
        }
    }

    /// The directory and its pages. A page is `pageSize` mask pairs followed by `pageSize` retiring
    /// positions (-1: not in the retiring list); an absent page is the shared zero page, whose
    /// positions are never read as a page's (an ASID without targets is never listed).
    @usableFromInline
    final class Storage {
        static let pageSize = 256
        static let pages = 1 << 16 / pageSize

        /// One pointer per page range: a page of this storage, or `zeroPage`.
        let directory: UnsafeMutablePointer<UnsafeMutablePointer<MaskPair>>
        /// Per page: how many of its ASIDs have a non-zero target mask (0 for the zero page).
        private var populated: [UInt16]
        private(set) var allocatedPages = 0

        /// The page every empty range points at: zeros, never written.
        nonisolated(unsafe) static let zeroPage: UnsafeMutablePointer<MaskPair> = {
            let page = UnsafeMutableRawPointer.allocate(byteCount: Table.pageBytes, alignment: 64)
            page.initializeMemory(as: UInt8.self, repeating: 0, count: Table.pageBytes)
            return page.bindMemory(to: MaskPair.self, capacity: pageSize)
        }()

        init() {
            directory = .allocate(capacity: Self.pages)
            directory.initialize(repeating: Self.zeroPage, count: Self.pages)
            populated = Array(repeating: 0, count: Self.pages)
        }

        deinit {
            for p in 0..<Self.pages where directory[p] != Self.zeroPage { Self.freePage(directory[p]) }
            directory.deinitialize(count: Self.pages)
            directory.deallocate()
        }

        /// A storage with the same contents and its own pages.
        func copy() -> Storage {
            let copy = Storage()
            for p in 0..<Self.pages where directory[p] != Self.zeroPage {
                let page = Self.allocatePage()
                UnsafeMutableRawPointer(page).copyMemory(from: directory[p], byteCount: Table.pageBytes)
                copy.directory[p] = page
            }
            copy.populated = populated
            copy.allocatedPages = allocatedPages
            return copy
        }

        /// Sets `asid`'s mask pair: allocates its page (zeroed, no ASID listed) when it was the zero
        /// page and the pair is not zero, keeps the page's count of ASIDs with targets, and frees the
        /// page when that count reaches zero (no ASID of it is listed then: a listed one has targets).
        func store(_ asid: ASID, _ pair: MaskPair) {
            precondition(pair.live & ~pair.targets == 0, "live viommus are targets")
            let p = Int(asid &>> 8)
            if directory[p] == Self.zeroPage {
                guard pair.targets != 0 else { return }
                directory[p] = Self.allocatePage()
                allocatedPages += 1
            }
            let entry = directory[p] + Int(asid & 0xFF)
            let was = entry.pointee.targets != 0
            entry.pointee = pair
            let now = pair.targets != 0
            if now && !was { populated[p] += 1 }
            if was && !now { populated[p] -= 1 }
            if populated[p] == 0 {
                Self.freePage(directory[p])
                directory[p] = Self.zeroPage
                allocatedPages -= 1
            }
        }

        func retiringPosition(_ asid: ASID) -> Int32 {
            let page = directory[Int(asid &>> 8)]
            guard page != Self.zeroPage else { return -1 }
            return Self.positions(page)[Int(asid & 0xFF)]
        }

        func setRetiringPosition(_ asid: ASID, _ position: Int32) {
            let page = directory[Int(asid &>> 8)]
            guard page != Self.zeroPage else {
                precondition(position < 0, "a retiring ASID has targets, hence a page")
                return
            }
            Self.positions(page)[Int(asid & 0xFF)] = position
        }

        private static func positions(_ page: UnsafeMutablePointer<MaskPair>) -> UnsafeMutablePointer<Int32> {
            (UnsafeMutableRawPointer(page) + pageSize * MemoryLayout<MaskPair>.stride)
                .assumingMemoryBound(to: Int32.self)
        }

        private static func allocatePage() -> UnsafeMutablePointer<MaskPair> {
            let raw = UnsafeMutableRawPointer.allocate(byteCount: Table.pageBytes, alignment: 64)
            let pairs = raw.bindMemory(to: MaskPair.self, capacity: pageSize)
            pairs.initialize(repeating: MaskPair(targets: 0, live: 0), count: pageSize)
            let positions = (raw + pageSize * MemoryLayout<MaskPair>.stride).bindMemory(to: Int32.self, capacity: pageSize)
            positions.initialize(repeating: -1, count: pageSize)
            return pairs
        }

        private static func freePage(_ page: UnsafeMutablePointer<MaskPair>) {
            UnsafeMutableRawPointer(page).deallocate()
        }
    }
}
