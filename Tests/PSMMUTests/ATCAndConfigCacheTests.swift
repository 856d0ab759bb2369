import PSMMU
import SMMUv3
import Testing

/// ATC_INV, CFGI_CD and CFGI_CD_ALL: vSID looked up among the viommu's vdevices and replaced by the pSID.
@Suite struct ATCAndConfigCacheTests {
    let smmu = makeSMMU()

    /// Device 1 (vSID 0x10, pSID 0x101) and device 2 (vSID 0x20, pSID 0x102), EATS = 1, four CDs each.
    func atsGuest() throws -> Guest {
        try Guest(smmu, devices: [(1, 0x10, [1, 2, 3, 4]), (2, 0x20, [5, 6, 7, 8])], eats: 1)
    }

    func atsTouch(_ host: UInt32, ssid: SubstreamID? = nil, _ addresses: [UInt64]) throws {
        for address in addresses {
            let outcome = try smmu.touch(hostDeviceID: host, substreamID: ssid, address: address, throughATS: true)
            #expect(outcome.tlbEntry != nil, "ATS translation of 0x\(String(address, radix: 16)) gave \(outcome)")
        }
    }

    @Test func atsTranslationFillsTheDevicesATCAndItsNextAccessHitsThere() throws {
        _ = try atsGuest()
        try atsTouch(1, [0x1000])

        #expect(smmu.atcEntries(hostDeviceID: 1) == [ATCEntry(streamID: 0x101, substreamID: nil, address: 0x1000, size: 4096)])
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x1000, throughATS: true)
                == .atcHit(ATCEntry(streamID: 0x101, substreamID: nil, address: 0x1000, size: 4096)))
        #expect(smmu.simulationCounters.atcFills == 1)
        #expect(smmu.simulationCounters.atcHits == 1)
    }

    @Test func atcInvOfOnePageByVSIDRemovesThatPageOfThatDeviceOnly() throws {
        let guest = try atsGuest()
        try atsTouch(1, [0x1000, 0x2000])
        try atsTouch(2, [0x1000])

        let result = guest.run([.atcInv(streamID: 0x10, address: 0x1000, size: 0)])

        #expect(result.isComplete(of: 1))
        #expect(smmu.atcEntries(hostDeviceID: 1).map(\.address) == [0x2000])
        #expect(smmu.atcEntries(hostDeviceID: 2).map(\.address) == [0x1000])
        #expect(smmu.simulationCounters.atcEntriesInvalidated == 1)
    }

    @Test func atcInvSizeCoversTwoToTheSizePagesAlignedToTheSpan() throws {
        let guest = try atsGuest()
        try atsTouch(1, [0xF000, 0x10000, 0x1F000, 0x20000])

        // SIZE = 4: 16 pages = 64 KiB, 0x13000 aligned down: [0x10000, 0x20000).
        guest.run([.atcInv(streamID: 0x10, address: 0x13000, size: 4)])

        #expect(smmu.atcEntries(hostDeviceID: 1).map(\.address) == [0xF000, 0x20000])
    }

    @Test func atcInvSize52RemovesEverythingOfTheDevice() throws {
        let guest = try atsGuest()
        try atsTouch(1, [0x1000, 0xFFFF_0000_0000])
        try atsTouch(1, ssid: 2, [0x1000])
        try atsTouch(2, [0x1000])

        guest.run([.atcInv(streamID: 0x10, address: 0, size: 52)])

        #expect(smmu.atcEntries(hostDeviceID: 1).isEmpty)
        #expect(smmu.atcEntries(hostDeviceID: 2).count == 1)
    }

    @Test func atcInvWithSSVHitsOnlyThatSubstreamButWithoutSSVHitsEverySubstream() throws {
        let guest = try atsGuest()
        try atsTouch(1, [0x1000])
        try atsTouch(1, ssid: 1, [0x1000])
        try atsTouch(1, ssid: 2, [0x1000])

        guest.run([.atcInv(streamID: 0x10, substreamID: 1, address: 0x1000, size: 0)])
        #expect(smmu.atcEntries(hostDeviceID: 1).map(\.substreamID) == [nil, 2])

        guest.run([.atcInv(streamID: 0x10, address: 0x1000, size: 0)])
        #expect(smmu.atcEntries(hostDeviceID: 1).isEmpty)
    }

    @Test func cfgiCDByVSIDDropsOnlyThatCDOfThatDevice() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1, 2, 3, 4]), (2, 0x20, [5, 6, 7, 8])])
        try guest.fill(1, ssid: 1, [0x1000])
        try guest.fill(1, ssid: 2, [0x1000])
        try guest.fill(2, ssid: 1, [0x1000])
        #expect(Set(smmu.cachedCDs(hostDeviceID: 1).keys) == [1, 2])

        let result = guest.run([.cfgiCD(streamID: 0x10, substreamID: 1)])

        #expect(result.isComplete(of: 1))
        #expect(Set(smmu.cachedCDs(hostDeviceID: 1).keys) == [2])
        #expect(Set(smmu.cachedCDs(hostDeviceID: 2).keys) == [1])
        #expect(smmu.cachedSTE(hostDeviceID: 1) != nil)
        #expect(smmu.simulationCounters.configEntriesInvalidated == [0x05: 1])
    }

    @Test func cfgiCDAllDropsEveryCDOfTheDeviceAndKeepsItsSTE() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1, 2, 3, 4]), (2, 0x20, [5, 6, 7, 8])])
        try guest.fill(1, ssid: 1, [0x1000])
        try guest.fill(1, ssid: 3, [0x1000])
        try guest.fill(2, ssid: 1, [0x1000])

        guest.run([.cfgiCDAll(streamID: 0x10)])

        #expect(smmu.cachedCDs(hostDeviceID: 1).isEmpty)
        #expect(smmu.cachedSTE(hostDeviceID: 1) != nil)
        #expect(smmu.cachedCDs(hostDeviceID: 2).count == 1)
        #expect(smmu.simulationCounters.configEntriesInvalidated == [0x06: 2])
    }

    @Test func aRewrittenCDIsUsedOnlyAfterCFGICDDropsTheCachedOne() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        try guest.fill(1, [0x1000])
        try smmu.writeContextDescriptor(.valid(asid: 9), hostDeviceID: 1, substreamID: 0)

        // The cached CD still says ASID 1.
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x2000).tlbEntry?.asid == 1)

        guest.run([.cfgiCD(streamID: 0x10, substreamID: 0)])

        #expect(try smmu.touch(hostDeviceID: 1, address: 0x3000).tlbEntry?.asid == 9)
        #expect(guest.cached(asid: 1) == [0x1000, 0x2000])
        #expect(guest.cached(asid: 9) == [0x3000])
    }

    @Test func updatedCDsReachTheSMMUThroughTheBackendProtocolAfterCFGICDAll() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1, 2])])
        let backend: any PSMMUBackend = smmu
        try guest.fill(1, ssid: 1, [0x1000])

        try backend.updateContextDescriptors(try #require(guest.hwpts[1]), [.valid(asid: 5), .valid(asid: 6)])
        #expect(try smmu.touch(hostDeviceID: 1, substreamID: 1, address: 0x2000).tlbEntry?.asid == 2,
                "the cached CD is used until invalidated")

        guest.run([.cfgiCDAll(streamID: 0x10)])

        #expect(try smmu.touch(hostDeviceID: 1, substreamID: 1, address: 0x2000).tlbEntry?.asid == 6)
        #expect(try smmu.touch(hostDeviceID: 1, address: 0x2000).tlbEntry?.asid == 5)
    }

    @Test func updatingTheCDsOfAnUnknownHWPTOrWithTooManyCDsFails() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])
        #expect(throws: BackendError.self) { try smmu.updateContextDescriptors(HWPTHandle(rawValue: 999), []) }
        #expect(throws: BackendError.self) {
            try smmu.updateContextDescriptors(try #require(guest.hwpts[1]), [.valid(asid: 1), .valid(asid: 2)])
        }
    }
}
