@testable import PSMMU
import Testing
import VSMMUTestSupport

/// The page-indexed range store behind the TLB and the ATC, against a brute-force list.
@Suite struct PageIndexedRangesTests {

    struct Reference {
        var entries: Set<[UInt64]> = []   // [start, shift]
        mutating func insert(_ address: UInt64, _ shift: UInt8) {
            entries.insert([address & ~((1 << UInt64(shift)) - 1), UInt64(shift)])
        }
        mutating func remove(_ first: UInt64, _ last: UInt64) -> Int {
            let hit = entries.filter { e in e[0] <= last && e[0] + ((1 << e[1]) - 1) >= first }
            entries.subtract(hit)
            return hit.count
        }
        func covering(_ address: UInt64) -> Bool {
            entries.contains { e in e[0] <= address && address <= e[0] + ((1 << e[1]) - 1) }
        }
    }

    @Test func randomInsertionsLookupsAndRangeRemovalsMatchABruteForceList() {
        var rng = SplitMix64(seed: 0x5EED)
        let shifts: [UInt8] = [12, 12, 12, 14, 16, 21, 30]
        for _ in 0..<40 {
            var store = PageIndexedRanges()
            var reference = Reference()
            for _ in 0..<300 {
                // Addresses within 16 MiB so that ranges overlap often.
                let address = rng.next() & 0xFF_FFFF
                switch rng.next() % 4 {
                case 0, 1:
                    let shift = shifts[Int(rng.next() % UInt64(shifts.count))]
                    store.insert(covering: address, shift: shift)
                    reference.insert(address, shift)
                case 2:
                    let length = rng.next() % 2 == 0 ? 1 : rng.next() % 0x40_0000 + 1
                    let removed = store.remove(intersecting: address, through: address + length - 1)
                    #expect(removed == reference.remove(address, address + length - 1))
                default:
                    #expect((store.entry(covering: address) != nil) == reference.covering(address))
                }
                #expect(store.count == reference.entries.count)
            }
            #expect(Set(store.entries.map { [$0.start, UInt64($0.shift)] }) == reference.entries)
        }
    }

    @Test func removingTheWholeAddressSpaceDoesNotOverflow() {
        var store = PageIndexedRanges()
        store.insert(covering: 0, shift: 12)
        store.insert(covering: .max, shift: 12)
        store.insert(covering: .max, shift: 30)

        let removed = store.remove(intersecting: 0, through: .max)
        #expect(removed == 3)
        #expect(store.isEmpty)
    }

    @Test func insertingTheSameEntryTwiceKeepsOne() {
        var store = PageIndexedRanges()
        let first = store.insert(covering: 0x1234, shift: 12)
        let second = store.insert(covering: 0x1FFF, shift: 12)
        #expect(first)
        #expect(!second)
        #expect(store.count == 1)
    }
}
