/// The translations one address space caches, as naturally aligned power-of-two ranges
/// (a 4 KiB page, a 2 MiB block, …), indexed by size and page number.
///
/// Each size class (log2 of the entry size) keeps its entries as 64-bit bitmaps of 64 consecutive
/// page numbers (`start >> shift`), keyed by `page >> 6`. An address is looked up with one hash probe
/// per size class present; a range `[first, last]` is removed with
/// `O(min(bitmaps the range spans, bitmaps of the class))` probes per class, so a single-page
/// invalidation costs a few probes whatever the number of entries, and a 64-page range about as much.
///
/// Ranges are inclusive (`last` is the last byte), so the whole 64-bit space can be named without
/// overflow.
struct PageIndexedRanges: Sendable {
    /// One size class: entries of `1 << shift` bytes.
    struct SizeClass: Sendable {
        var shift: UInt8
        /// Bit `page & 63` of `groups[page >> 6]` is set when the entry for `page` is cached.
        var groups: [UInt64: UInt64]
    }

    /// Non-empty size classes, ascending by shift.
    private(set) var classes: [SizeClass] = []
    /// Number of entries over every size class.
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    /// The entry covering `address`, as (start, shift), if any.
    func entry(covering address: UInt64) -> (start: UInt64, shift: UInt8)? {
        for sizeClass in classes {
            let page = address >> UInt64(sizeClass.shift)
            if let bits = sizeClass.groups[page >> 6], bits & (1 << (page & 63)) != 0 {
                return (page << UInt64(sizeClass.shift), sizeClass.shift)
            }
        }
        return nil
    }

    /// Inserts the `1 << shift`-byte entry covering `address`.
    /// - Returns: whether it was new.
    @discardableResult
    mutating func insert(covering address: UInt64, shift: UInt8) -> Bool {
        let page = address >> UInt64(shift)
        let i: Int
        if let existing = classes.firstIndex(where: { $0.shift >= shift }), classes[existing].shift == shift {
            i = existing
        } else {
            i = classes.firstIndex(where: { $0.shift > shift }) ?? classes.endIndex
            classes.insert(SizeClass(shift: shift, groups: [:]), at: i)
        }
        guard Self.set(1 << (page & 63), group: page >> 6, in: &classes[i].groups) else { return false }
        count += 1
        return true
    }

    /// Sets `bit` of `group`. - Returns: whether it was clear.
    private static func set(_ bit: UInt64, group: UInt64, in groups: inout [UInt64: UInt64]) -> Bool {
        let old = groups[group, default: 0]
        guard old & bit == 0 else { return false }
        groups[group] = old | bit
        return true
    }

    /// Removes every entry that translates at least one byte of `[first, last]`.
    /// - Returns: the number of entries removed.
    mutating func remove(intersecting first: UInt64, through last: UInt64) -> Int {
        precondition(first <= last, "empty range")
        var removed = 0
        var i = 0
        while i < classes.count {
            removed += Self.remove(pages: first >> UInt64(classes[i].shift), through: last >> UInt64(classes[i].shift),
                                   from: &classes[i].groups)
            if classes[i].groups.isEmpty { classes.remove(at: i) } else { i += 1 }
        }
        count -= removed
        return removed
    }

    /// Clears the bits of pages `[firstPage, lastPage]`. - Returns: bits cleared.
    private static func remove(pages firstPage: UInt64, through lastPage: UInt64,
                               from groups: inout [UInt64: UInt64]) -> Int {
        let firstGroup = firstPage >> 6, lastGroup = lastPage >> 6
        /// The bits of `group` inside the range.
        func mask(_ group: UInt64) -> UInt64 {
            let low = group == firstGroup ? firstPage & 63 : 0
            let high = group == lastGroup ? lastPage & 63 : 63
            return (~UInt64(0) >> (63 - high)) & (~UInt64(0) << low)
        }
        var removed = 0
        /// Clears the range's bits of the group at `index`, removing it once empty.
        func clear(at index: Dictionary<UInt64, UInt64>.Index, in groups: inout [UInt64: UInt64]) {
            let (group, bits) = groups[index]
            let hit = bits & mask(group)
            guard hit != 0 else { return }
            removed += hit.nonzeroBitCount
            if bits == hit { groups.remove(at: index) } else { groups.values[index] = bits & ~hit }
        }
        if lastGroup - firstGroup < UInt64(groups.count) {
            var group = firstGroup
            while true {
                if let index = groups.index(forKey: group) { clear(at: index, in: &groups) }
                if group == lastGroup { break }
                group += 1
            }
        } else {
            let touched = groups.keys.filter { $0 >= firstGroup && $0 <= lastGroup }
            for group in touched {
                if let index = groups.index(forKey: group) { clear(at: index, in: &groups) }
            }
        }
        return removed
    }

    /// Removes everything.
    /// - Returns: the number of entries removed.
    @discardableResult
    mutating func removeAll() -> Int {
        let removed = count
        classes.removeAll()
        count = 0
        return removed
    }

    /// Every entry as (start, shift), ascending by start then size.
    var entries: [(start: UInt64, shift: UInt8)] {
        var out: [(start: UInt64, shift: UInt8)] = []
        out.reserveCapacity(count)
        for sizeClass in classes {
            for (group, bits) in sizeClass.groups {
                var rest = bits
                while rest != 0 {
                    let page = group << 6 | UInt64(rest.trailingZeroBitCount)
                    out.append((page << UInt64(sizeClass.shift), sizeClass.shift))
                    rest &= rest - 1
                }
            }
        }
        return out.sorted { ($0.start, $0.shift) < ($1.start, $1.shift) }
    }
}
