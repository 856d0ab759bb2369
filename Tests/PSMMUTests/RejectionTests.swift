import PSMMU
import SMMUv3
import Testing

/// What the kernel refuses on a viommu (-EIO) reaches the guest as CERROR_ILL at that command.
@Suite struct RejectionTests {
    let smmu = makeSMMU()

    static let refused: [Command] = [
        .sync(), .cfgiSTE(streamID: 0x10), .cfgiSTERange(streamID: 0x10, range: 3), .cfgiAll(),
        .tlbiS12VMAll(), .tlbiS2IPA(ipa: 0x1000), .tlbiEL2All(), .tlbiEL2ASID(asid: 1),
        .tlbiEL2VA(asid: 1, address: 0x1000), .tlbiEL2VAA(address: 0x1000), .tlbiEL3All(), .tlbiEL3VA(address: 0x1000),
        .prefetchConfig(streamID: 0x10), .prefetchAddress(streamID: 0x10, address: 0x1000),
        .priResp(streamID: 0x10, groupID: 1, response: 0), .resume(streamID: 0x10, stag: 1, response: 0),
        .stallTerm(streamID: 0x10), Command(w0: 0x00, w1: 0), Command(w0: 0x07, w1: 0), Command(w0: 0xFF, w1: 0),
    ]

    @Test(arguments: refused)
    func commandNotAcceptedOnAViommuStopsTheBatchWithCERRORILLAtItsIndex(_ bad: Command) throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1, 2])])
        try guest.fill(1, [0x1000, 0x2000])
        try guest.fill(1, ssid: 1, [0x9000])

        let result = guest.run([.tlbiNHVA(asid: 1, address: 0x1000), .tlbiNHVA(asid: 1, address: 0x2000), bad,
                                .tlbiNHASID(asid: 2)])

        #expect(result.completed == 2)
        let failure = try #require(result.failure)
        #expect(failure.queueError == .illegal)
        #expect(failure.message.contains(bad.opcode.name))
        #expect(guest.cached(asid: 1) == [])
        #expect(guest.cached(asid: 2) == [0x9000], "the command after the refused one must not run")
        let counters = smmu.counters
        #expect(counters.commandsReceived == 4)
        #expect(counters.commandsCompleted == 2)
        #expect(counters.commandsFailed == 1)
        #expect(counters.commandsByOpcode[bad.opcode.rawValue] == nil)
        #expect(smmu.simulationCounters.commandsRejected == 1)
    }

    @Test(arguments: [
        Command.atcInv(streamID: 0x99), Command.cfgiCD(streamID: 0x99), Command.cfgiCDAll(streamID: 0x99),
    ])
    func unknownVSIDStopsTheBatchWithCERRORILL(_ bad: Command) throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])

        let result = guest.run([.tlbiNHASID(asid: 1), bad])

        #expect(result.completed == 1)
        #expect(result.failure?.queueError == .illegal)
        #expect(result.failure?.message.contains("vSID 153") == true)
        #expect(result.failure?.message.contains(bad.opcode.name) == true)
    }

    @Test func aPhysicalStreamIDIsNotAcceptedAsAVSID() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])

        let result = guest.run([.cfgiCDAll(streamID: 0x101)])

        #expect(result.completed == 0)
        #expect(result.failure?.queueError == .illegal)
    }

    @Test func aVSIDOfAnotherViommuIsUnknownHere() throws {
        let a = try Guest(smmu, devices: [(1, 0x10, [1])])
        _ = try Guest(smmu, devices: [(2, 0x20, [1])])

        #expect(a.run([.cfgiCD(streamID: 0x20)]).failure?.queueError == .illegal)
        #expect(a.run([.cfgiCD(streamID: 0x10)]).failure == nil)
    }

    @Test func anUnknownViommuFailsTheWholeBatchWithCERRORABTAndENOENTLikeIommufdGetObject() throws {
        // `iommufd_hwpt_invalidate` fails in `iommufd_get_object` before reading any command: ENOENT,
        // which `CommandQueueError(iommufdInvalidationErrno:)` maps to CERROR_ABT (retry, not skip).
        let commands = [Command.tlbiNHAll()]
        let result = commands.withUnsafeBufferPointer { smmu.invalidate(viommu: ViommuHandle(rawValue: 77), commands: $0) }

        #expect(result.completed == 0)
        #expect(result.failure?.queueError == .abort)
        #expect(result.failure?.errno == 2)
    }

    @Test func anEmptyBatchCompletesNothingAndFailsNothing() throws {
        let guest = try Guest(smmu, devices: [(1, 0x10, [1])])

        let result = guest.run([])

        #expect(result == InvalidationResult(completed: 0))
        #expect(smmu.counters.invalidateCalls == 1)
    }
}
