import PSMMU
import SMMUv3
import Testing

/// Stage-1 TLB invalidations as the hardware applies them after the kernel's rewrite.
@Suite struct TLBInvalidationTests {
    let smmu = makeSMMU()

    @Test func tlbisOnAnEmptyTLBAreCountedAndARefusedCommandAfterThemStillStopsTheBatch() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        #expect(smmu.tlbEntryCount == 0)

        let result = guest.run([
            .tlbiNHVA(asid: 1, address: 0x1000), .tlbiNHVA(asid: 1, address: 0x2000), .tlbiNHASID(asid: 1),
            .tlbiNSNHAll(), .sync(), .tlbiNHAll(),
        ])

        #expect(result.completed == 4)
        #expect(result.failure?.queueError == .illegal)
        #expect(smmu.counters.commandsByOpcode == [0x12: 2, 0x11: 1, 0x30: 1])
        #expect(smmu.counters.commandsCompleted == 4)
        #expect(smmu.commandsProcessed(viommu: guest.viommu) == 5)
        #expect(smmu.simulationCounters.tlbEntriesInvalidated.isEmpty)
    }

    @Test func tlbiNHVAWithoutRangeRemovesOnlyTheEntryOfThatASIDCoveringTheAddress() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1]), (2, 0x11, [2])])
        try guest.fill(1, [0x10000, 0x11000, 0x12000])
        try guest.fill(2, [0x11000])

        let result = guest.run([.tlbiNHVA(asid: 1, address: 0x11000)])

        #expect(result.isComplete(of: 1))
        #expect(guest.cached(asid: 1) == [0x10000, 0x12000])
        #expect(guest.cached(asid: 2) == [0x11000])
        #expect(smmu.simulationCounters.tlbEntriesInvalidated == [0x12: 1])
    }

    @Test func tlbiNHVAWithoutRangeRemovesABlockEntryThatTranslatesTheAddress() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try guest.fill(1, [0x234000], size: 0x20_0000)
        #expect(smmu.tlbEntries(viommu: guest.viommu) == [TLBEntry(vmid: guest.vmid, asid: 1, address: 0x20_0000, size: 0x20_0000)])

        guest.run([.tlbiNHVA(asid: 1, address: 0x3F_F000)])

        #expect(smmu.tlbEntries(viommu: guest.viommu).isEmpty)
    }

    @Test func rangeWith4KGranuleCoversNumPlusOneTimesTwoToTheScalePages() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try guest.fill(1, [0x3F000, 0x40000, 0x44000, 0x47000, 0x48000])

        // TG = 1 (4 KiB), NUM = 3, SCALE = 1: (3 + 1) × 2 = 8 pages, [0x40000, 0x48000).
        guest.run([.tlbiNHVA(asid: 1, address: 0x40000, range: TLBIRange(num: 3, scale: 1, granule: 1))])

        #expect(guest.cached(asid: 1) == [0x3F000, 0x48000])
    }

    @Test func rangeWith16KGranuleAlignsTheAddressDownToTheGranule() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try guest.fill(1, [0x3F000, 0x40000, 0x43000, 0x44000])

        // TG = 2 (16 KiB), one granule from 0x41000 aligned down: [0x40000, 0x44000).
        guest.run([.tlbiNHVA(asid: 1, address: 0x41000, range: TLBIRange(num: 0, scale: 0, granule: 2))])

        #expect(guest.cached(asid: 1) == [0x3F000, 0x44000])
    }

    @Test func rangeWith64KGranuleCoversWholeGranules() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try guest.fill(1, [0xFF000, 0x10_0000, 0x17_F000, 0x18_0000])

        // TG = 3 (64 KiB), NUM = 1, SCALE = 2: 2 × 4 = 8 granules = 512 KiB, [0x100000, 0x180000).
        guest.run([.tlbiNHVA(asid: 1, address: 0x10_0000, range: TLBIRange(num: 1, scale: 2, granule: 3))])

        #expect(guest.cached(asid: 1) == [0xFF000, 0x18_0000])
    }

    @Test func smallestRangeIsExactlyOneGranule() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try guest.fill(1, [0x1000, 0x2000, 0x3000])

        guest.run([.tlbiNHVA(asid: 1, address: 0x2000, range: TLBIRange(num: 0, scale: 0, granule: 1))])

        #expect(guest.cached(asid: 1) == [0x1000, 0x3000])
    }

    @Test func largestNumAndScaleCover2To52BytesWithoutOverflow() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        let below: UInt64 = 0x000F_FFFF_FFFF_F000, at: UInt64 = 0x0010_0000_0000_0000
        try guest.fill(1, [0, below, at])

        // TG = 3, NUM = 31, SCALE = 31: 32 × 2^31 × 64 KiB = 2^52 bytes from 0.
        guest.run([.tlbiNHVA(asid: 1, address: 0, range: TLBIRange(num: 31, scale: 31, granule: 3))])
        #expect(guest.cached(asid: 1) == [at])

        // From near the top, the same range saturates at the end of the address space.
        let top: UInt64 = 0xFFFF_FFFF_FFFF_F000
        try guest.fill(1, [top])
        guest.run([.tlbiNHVA(asid: 1, address: 0xFFFF_0000_0000_0000, range: TLBIRange(num: 31, scale: 31, granule: 3))])
        #expect(guest.cached(asid: 1) == [at])
    }

    @Test func largestNumWithZeroScaleCovers32Pages() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try guest.fill(1, [0x1F000, 0x20000, 0x3F000, 0x40000])

        guest.run([.tlbiNHVA(asid: 1, address: 0x20000, range: TLBIRange(num: 31, scale: 0, granule: 1))])

        #expect(guest.cached(asid: 1) == [0x1F000, 0x40000])
    }

    @Test func rangeRemovesABlockItOnlyPartlyOverlaps() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try guest.fill(1, [0x20_0000], size: 0x20_0000)
        try guest.fill(1, [0x40_0000])

        guest.run([.tlbiNHVA(asid: 1, address: 0x3F_F000, range: TLBIRange(num: 1, scale: 0, granule: 1))])

        #expect(guest.cached(asid: 1) == [])
    }

    @Test func leafAndNonLeafInvalidateTheSameEntries() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try guest.fill(1, [0x1000, 0x2000])

        guest.run([.tlbiNHVA(asid: 1, address: 0x1000, leaf: true), .tlbiNHVA(asid: 1, address: 0x2000, leaf: false)])

        #expect(guest.cached(asid: 1) == [])
    }

    @Test func tlbiNHVALeavesTheSameASIDOfAnotherViommuAlone() throws {
        let a = try Guest(smmu, devices: [(1, 0x10, [1])])
        let b = try Guest(smmu, devices: [(2, 0x10, [1])])
        #expect(a.vmid != b.vmid)
        try a.fill(1, [0x5000])
        try b.fill(2, [0x5000])

        a.run([.tlbiNHVA(asid: 1, address: 0x5000)])

        #expect(a.cached(asid: 1) == [])
        #expect(b.cached(asid: 1) == [0x5000])
    }

    @Test func tlbiNHASIDRemovesEveryEntryOfTheASIDAndNothingElse() throws {
        let a = try Guest(smmu, devices: [(1, 0x10, [1]), (2, 0x11, [2])])
        let b = try Guest(smmu, devices: [(3, 0x10, [1])])
        try a.fill(1, [0x1000, 0x2000])
        try a.fill(1, [0x40_0000], size: 0x20_0000)
        try a.fill(2, [0x1000])
        try b.fill(3, [0x1000])

        a.run([.tlbiNHASID(asid: 1)])

        #expect(a.cached(asid: 1) == [])
        #expect(a.cached(asid: 2) == [0x1000])
        #expect(b.cached(asid: 1) == [0x1000])
        #expect(smmu.simulationCounters.tlbEntriesInvalidated == [0x11: 3])
    }

    @Test func tlbiNHVAAInvalidatesTheRangeForEveryASIDOfTheVMIDOnly() throws {
        let a = try Guest(smmu, devices: [(1, 0x10, [1]), (2, 0x11, [2]), (3, 0x12, [3])])
        let b = try Guest(smmu, devices: [(4, 0x10, [1])])
        for host: UInt32 in 1...3 { try a.fill(host, [0x7000, 0x8000, 0x9000]) }
        try b.fill(4, [0x8000])

        a.run([.tlbiNHVAA(address: 0x8000)])
        #expect(a.cached(asid: 1) == [0x7000, 0x9000])
        #expect(a.cached(asid: 2) == [0x7000, 0x9000])
        #expect(a.cached(asid: 3) == [0x7000, 0x9000])
        #expect(b.cached(asid: 1) == [0x8000])

        a.run([.tlbiNHVAA(address: 0x7000, range: TLBIRange(num: 2, scale: 0, granule: 1))])
        #expect(smmu.tlbEntries(viommu: a.viommu).isEmpty)
        #expect(b.cached(asid: 1) == [0x8000])
    }

    @Test func tlbiNHAllEmptiesTheViommusVMIDOnly() throws {
        let a = try Guest(smmu, devices: [(1, 0x10, [1]), (2, 0x11, [2])])
        let b = try Guest(smmu, devices: [(3, 0x10, [1])])
        try a.fill(1, [0x1000])
        try a.fill(2, [0x2000])
        try b.fill(3, [0x1000])

        a.run([.tlbiNHAll()])

        #expect(smmu.tlbEntries(viommu: a.viommu).isEmpty)
        #expect(b.cached(asid: 1) == [0x1000])
    }

    @Test func tlbiNSNHAllIsRewrittenToNHAllOfTheViommusVMID() throws {
        let a = try Guest(smmu, devices: [(1, 0x10, [1]), (2, 0x11, [2])])
        let b = try Guest(smmu, devices: [(3, 0x10, [1])])
        try a.fill(1, [0x1000])
        try a.fill(2, [0x2000])
        try b.fill(3, [0x1000])

        let result = a.run([.tlbiNSNHAll()])

        #expect(result.isComplete(of: 1))
        #expect(smmu.tlbEntries(viommu: a.viommu).isEmpty)
        #expect(smmu.tlbEntries(viommu: b.viommu) == [TLBEntry(vmid: b.vmid, asid: 1, address: 0x1000, size: 4096)])
        #expect(smmu.simulationCounters.tlbEntriesInvalidated == [0x30: 2])
        #expect(smmu.counters.commandsByOpcode == [0x30: 1])
    }

    @Test(arguments: [
        Command.tlbiNHAll(vmid: 0),
        Command.tlbiNHASID(asid: 1, vmid: 0),
        Command.tlbiNHVA(asid: 1, vmid: 0, address: 0x1000),
        Command.tlbiNHVAA(vmid: 0, address: 0x1000),
    ])
    func theGuestsVMIDFieldIsOverwrittenWithTheViommus(_ template: Command) throws {
        let a = try Guest(smmu, devices: [(1, 0x10, [1])])
        let b = try Guest(smmu, devices: [(2, 0x10, [1])])
        try a.fill(1, [0x1000])
        try b.fill(2, [0x1000])
        var command = template
        command.vmid = b.vmid   // the guest of `a` names `b`'s VMID: it must not matter

        a.run([command])

        #expect(a.cached(asid: 1) == [])
        #expect(b.cached(asid: 1) == [0x1000])
    }

    @Test func invalidatedEntriesAreFilledAgainByTheNextAccess() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try guest.fill(1, [0x1000])
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .tlbHit(TLBEntry(vmid: guest.vmid, asid: 1, address: 0x1000, size: 4096)))

        guest.run([.tlbiNHVA(asid: 1, address: 0x1000)])

        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000) == .tlbFill(TLBEntry(vmid: guest.vmid, asid: 1, address: 0x1000, size: 4096)))
    }
}
