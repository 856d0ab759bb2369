import Testing
import SMMUv3
@testable import VirtualSMMU
import VSMMUTestSupport

@Suite struct RouterRulesTests {
    func linked() throws -> VSMMU {
        var v = try vsmmu(pSMMUs: ["a", "b"], sids: [1, 2])
        try v.link(streamID: 1, ste: s1STE(), contextDescriptors: [.valid(asid: 5)])
        try v.link(streamID: 2, ste: s1STE(), contextDescriptors: [.valid(asid: 6)])
        return v
    }

    @Test func cfgiSTEIsCountedNotForwardedAndKeepsAFreshlyLinkedVSTE() throws {
        var v = try linked()
        // The VMM relinks the STE (new ASID), then forwards the guest's CFGI_STE + SYNC.
        try v.link(streamID: 1, ste: s1STE(cdTable: 0x8000), contextDescriptors: [.valid(asid: 9)])
        let out = v.routed([.cfgiSTE(streamID: 1), .cfgiSTERange(streamID: 0, range: 3), .cfgiAll(), .sync()])
        #expect(out.deliveryCount == 0)
        #expect(out.errors.isEmpty)
        #expect(v.counters.configSTEInvalidations == 3)
        #expect(v.devices[1]?.ste == s1STE(cdTable: 0x8000))
        #expect(v.routed([.tlbiNHASID(asid: 9)]).receivers(of: 0) == ViommuSet([v0]))
    }

    @Test(arguments: [
        Command.prefetchConfig(streamID: 1), .prefetchAddress(streamID: 1, address: 0x1000),
        .tlbiEL2All(), .tlbiEL2ASID(asid: 5), .tlbiEL2VA(asid: 5, address: 0), .tlbiEL2VAA(address: 0),
        .tlbiEL3All(), .tlbiEL3VA(address: 0), .tlbiS2IPA(ipa: 0x1000),
        .priResp(streamID: 1, groupID: 3, response: 2), .resume(streamID: 1, stag: 4, response: 1),
        .stallTerm(streamID: 1),
    ])
    func acceptedButNotForwardedCommandsAreCountedByOpcode(command: Command) throws {
        var v = try linked()
        let out = v.routed([command, command])
        #expect(out.deliveryCount == 0 && out.errors.isEmpty && out.consumed == 2)
        #expect(v.counters.droppedByOpcode[command.opcode.rawValue] == 2)
        #expect(v.counters.droppedByRule == 2)
    }

    @Test func unknownStreamIDStopsTheQueueAtThatCommandLikeTheKernelsEIO() throws {
        var v = try linked()
        let out = v.routed([.atcInv(streamID: 1), .cfgiCD(streamID: 0x77), .atcInv(streamID: 2)])
        #expect(out.consumed == 1)
        #expect(out.firstError == RoutingError(index: 1, command: .cfgiCD(streamID: 0x77), reason: .unknownStreamID(0x77)))
        #expect(out.firstError?.queueError == .illegal)
        #expect(out.receivers(of: 0) == ViommuSet([v0]))
        #expect(out.receivers(of: 2).isEmpty)
        #expect(v.counters.unknownStreamID == 1)
    }

    @Test func continuePolicyRecordsEveryErrorAndRoutesTheRest() throws {
        var v = try linked()
        let out = v.routed([.cfgiCD(streamID: 0x77), Command(opcode: Opcode(rawValue: 0x07)), .atcInv(streamID: 2)],
                           policy: .continueAfterErrors)
        #expect(out.errors.map(\.index) == [0, 1])
        #expect(out.errors[1].reason == .illegal(.phantomCFGIAll))
        #expect(out.consumed == 3)
        #expect(out.receivers(of: 2) == ViommuSet([v1]))
    }

    @Test func everyIllegalInputGetsItsOwnReason() throws {
        var v = try linked()
        var ssec = Command.atcInv(streamID: 1)
        ssec.ssec = true
        var ssecCFGI = Command.cfgiSTE(streamID: 1)
        ssecCFGI.ssec = true
        var cs3 = Command.sync()
        cs3[Command.Field.syncCS] = 3
        let cases: [(Command, IllegalCommandReason)] = [
            (Command(opcode: Opcode(rawValue: 0x00)), .undefinedOpcode(Opcode(rawValue: 0x00))),
            (Command(opcode: Opcode(rawValue: 0x07)), .phantomCFGIAll),
            (Command(opcode: Opcode(rawValue: 0xFF)), .undefinedOpcode(Opcode(rawValue: 0xFF))),
            (ssec, .secureStreamOnNonSecureQueue(.atcInv)),
            (ssecCFGI, .secureStreamOnNonSecureQueue(.cfgiSTE)),
            (cs3, .reservedSyncCompletion),
        ]
        for (command, reason) in cases {
            let out = v.routed([.tlbiNHAll(), command, .tlbiNHAll()])
            #expect(out.consumed == 1)
            #expect(out.firstError?.reason == .illegal(reason))
            #expect(out.deliveryCount == 2)  // the first NH_ALL, to both viommus
        }
        #expect(v.counters.illegalCommands == UInt64(cases.count))
    }

    @Test func everyOneOfTheAll256OpcodeBytesIsRoutedWithoutTrapping() throws {
        var v = try linked()
        var rng = SplitMix64(seed: 256)
        for byte in 0...255 {
            for _ in 0..<8 {
                var c = Command(w0: rng.next(), w1: rng.next())
                c.opcode = Opcode(rawValue: UInt8(byte))
                let out = v.routed([c], policy: .continueAfterErrors)
                #expect(out.consumed == 1)
            }
        }
    }

    @Test func perViommuOrderEqualsGuestOrder() throws {
        var v = try linked()
        var rng = SplitMix64(seed: 7)
        var batch: [Command] = []
        for i in 0..<500 {
            switch rng.next() % 4 {
            case 0: batch.append(.tlbiNHVA(asid: rng.next() % 2 == 0 ? 5 : 6, address: UInt64(i) << 12))
            case 1: batch.append(.atcInv(streamID: rng.next() % 2 == 0 ? 1 : 2, address: UInt64(i) << 12, size: 0))
            case 2: batch.append(.tlbiNHVAA(address: UInt64(i) << 12))
            default: batch.append(.sync())
            }
        }
        let out = v.routed(batch)
        for viommu in [v0, v1] {
            let indices = out.guestIndices(for: viommu)
            #expect(indices == indices.sorted())
            #expect(out.commands(for: viommu) == indices.map { batch[Int($0)] })
        }
    }

    @Test func reusedOutputIsClearedBetweenBatches() throws {
        var v = try linked()
        let out = RoutedBatch()
        v.route([.tlbiNHAll(), .sync(), .cfgiCD(streamID: 9)], into: out)
        v.route([.tlbiNHASID(asid: 6)], into: out)
        #expect(out.commands(for: v0).isEmpty)
        #expect(out.commands(for: v1) == [.tlbiNHASID(asid: 6)])
        #expect(out.syncPoints.isEmpty && out.errors.isEmpty && out.consumed == 1)
        #expect(out.unsynced == ViommuSet([v1]))
    }

    @Test func countersAddUp() throws {
        var v = try linked()
        _ = v.routed([
            .tlbiNHVA(asid: 5, address: 0), .tlbiNHASID(asid: 42), .tlbiNHAll(), .atcInv(streamID: 2),
            .prefetchConfig(streamID: 1), .cfgiSTE(streamID: 1), .sync(), .cfgiCD(streamID: 99),
        ], policy: .continueAfterErrors)
        let c = v.counters
        #expect(c.received == 8)
        #expect(c.asidRouted + c.broadcast + c.deviceRouted + c.droppedByRule + c.syncs + c.errors == c.received)
        #expect(c.deliveries == 1 + 0 + 2 + 1)
        #expect(c.deliveriesPerViommu == [2, 2])
        #expect(c.asidWithoutTarget == 1)
    }
}
