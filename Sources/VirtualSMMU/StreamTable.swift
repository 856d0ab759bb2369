import SMMUv3

/// The router's StreamID → viommu lookup: an open-addressed hash table with linear probing and
/// backward-shift deletion, so a lookup costs one multiply and, almost always, one probe, however many
/// devices are registered. Control-path data about a device lives in ``VSMMU``'s device table; this is
/// only its hot-path index.
struct StreamTable: Sendable {
    /// Packed slots: 0 = empty; otherwise bit 40 set, StreamID in bits 0-31, viommu in bits 32-39.
    private var slots: [UInt64]
    private var shift: UInt64
    private(set) var count = 0

    private static let occupied: UInt64 = 1 << 40

    init(minimumCapacity: Int = 64) {
        var capacity = 16
        while capacity < minimumCapacity * 2 { capacity <<= 1 }
        slots = Array(repeating: 0, count: capacity)
        shift = UInt64(64 - capacity.trailingZeroBitCount)
    }

    @inline(__always)
    private func home(_ sid: StreamID) -> Int {
        Int(truncatingIfNeeded: (UInt64(sid) &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// The viommu of `sid`, or `nil` when it is not registered.
    @inline(__always)
    func viommu(of sid: StreamID) -> ViommuIndex? {
        let m = slots.count - 1
        var i = home(sid)
        while true {
            let s = slots[i]
            if s == 0 { return nil }
            if UInt32(truncatingIfNeeded: s) == sid { return ViommuIndex(rawValue: UInt8(truncatingIfNeeded: s >> 32)) }
            i = (i + 1) & m
        }
    }

    /// Inserts or replaces the entry of `sid`.
    mutating func set(_ sid: StreamID, viommu: ViommuIndex) {
        if (count + 1) * 2 > slots.count { grow() }
        let packed = Self.occupied | UInt64(viommu.rawValue) << 32 | UInt64(sid)
        let m = slots.count - 1
        var i = home(sid)
        while slots[i] != 0 {
            if UInt32(truncatingIfNeeded: slots[i]) == sid {
                slots[i] = packed
                return
            }
            i = (i + 1) & m
        }
        slots[i] = packed
        count += 1
    }

    /// Removes the entry of `sid`, if any.
    mutating func remove(_ sid: StreamID) {
        let m = slots.count - 1
        var i = home(sid)
        while true {
            let s = slots[i]
            if s == 0 { return }
            if UInt32(truncatingIfNeeded: s) == sid { break }
            i = (i + 1) & m
        }
        // Backward-shift deletion: pull later members of the probe run into the hole.
        var hole = i
        var j = (i + 1) & m
        while slots[j] != 0 {
            let h = home(UInt32(truncatingIfNeeded: slots[j]))
            // Move slots[j] into the hole when its home is not cyclically within (hole, j].
            let distanceToHome = (j &- h) & m
            let distanceToHole = (j &- hole) & m
            if distanceToHome >= distanceToHole {
                slots[hole] = slots[j]
                hole = j
            }
            j = (j + 1) & m
        }
        slots[hole] = 0
        count -= 1
    }

    private mutating func grow() {
        let old = slots
        slots = Array(repeating: 0, count: old.count * 2)
        shift -= 1
        count = 0
        for s in old where s != 0 {
            set(UInt32(truncatingIfNeeded: s), viommu: ViommuIndex(rawValue: UInt8(truncatingIfNeeded: s >> 32)))
        }
    }
}
