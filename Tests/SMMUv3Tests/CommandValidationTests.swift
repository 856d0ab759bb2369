import SMMUv3
import Testing
import VSMMUTestSupport

/// The opcode bytes the reference lists, written out independently of ``Opcode/allDefined``.
private let referenceOpcodes: Set<UInt8> = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x13, 0x18, 0x1A,
    0x20, 0x21, 0x22, 0x23, 0x28, 0x2A, 0x30, 0x40, 0x41, 0x44, 0x45, 0x46,
]

/// Opcodes whose SSEC bit makes the command illegal on the non-secure queue.
private let ssecChecked: [Opcode] = [
    .cfgiSTE, .cfgiSTERange, .cfgiCD, .cfgiCDAll, .prefetchConfig, .prefetchAddress,
    .atcInv, .priResp, .resume, .stallTerm,
]

/// What an SMMU's parser does with `command`, modelled from the reference alone.
private func referenceVerdict(_ command: Command) -> IllegalCommandReason? {
    let opcodeByte = UInt8(command.w0 & 0xFF)
    let op = Opcode(rawValue: opcodeByte)
    guard referenceOpcodes.contains(opcodeByte) else {
        return opcodeByte == 0x07 ? .phantomCFGIAll : .undefinedOpcode(op)
    }
    if ssecChecked.contains(op), command.w0 & (1 << 10) != 0 { return .secureStreamOnNonSecureQueue(op) }
    if opcodeByte == 0x46, (command.w0 >> 12) & 0b11 == 0b11 { return .reservedSyncCompletion }
    return nil
}

@Suite("Command validation (CERROR_ILL)")
struct CommandValidationTests {
    @Test func everyOpcodeByteNotInTheReferenceIsUndefinedExcept0x07() {
        for byte in UInt8.min...UInt8.max where !referenceOpcodes.contains(byte) {
            let op = Opcode(rawValue: byte)
            #expect(!op.isDefined)
            #expect(op.family == .undefined)
            let error = Command(opcode: op).validate()
            let expected: IllegalCommandReason = byte == 0x07 ? .phantomCFGIAll : .undefinedOpcode(op)
            #expect(error?.reason == expected, "opcode 0x\(String(byte, radix: 16))")
            #expect(error?.queueError == .illegal)
        }
    }

    @Test func definedOpcodesAreExactlyTheReferenceList() {
        let defined = Set((UInt8.min...UInt8.max).filter { Opcode(rawValue: $0).isDefined })
        #expect(defined == referenceOpcodes)
        #expect(Set(Opcode.allDefined.map(\.rawValue)) == referenceOpcodes)
    }

    @Test func opcode0x07IsThePhantomCFGIAllAndStillIllegal() {
        let error = Command(w0: 0x0000_0000_0000_0007, w1: 0x1F).validate()
        #expect(error == IllegalCommandError(reason: .phantomCFGIAll))
        #expect(error?.queueError == .illegal)
    }

    @Test(arguments: ssecChecked)
    func ssecOnAConfigurationOrStallCommandIsSecureStreamOnNonSecureQueue(_ op: Opcode) {
        var command = Command(opcode: op)
        command.streamID = 0x10
        command.ssec = true
        #expect(command.w0 & 0x400 == 0x400)
        let error = command.validate()
        #expect(error?.reason == .secureStreamOnNonSecureQueue(op))
        #expect(error?.queueError == .illegal)
        command.ssec = false
        #expect(command.validate() == nil)
    }

    @Test(arguments: Opcode.allDefined.filter { $0.family == .tlbi || $0 == .sync })
    func bit10IsNotSSECForTLBIAndSync(_ op: Opcode) {
        // TLBI and CMD_SYNC have no SSEC: bit 10 is reserved/unused there and no SSEC error is raised.
        let command = Command(w0: UInt64(op.rawValue) | 0x400, w1: 0)
        #expect(command.validate() == nil)
    }

    @Test(arguments: [(UInt8(0), true), (1, true), (2, true), (3, false)])
    func syncCompletionSignalThreeIsReserved(cs: UInt8, valid: Bool) {
        let command = Command(w0: 0x46 | UInt64(cs) << 12, w1: 0)
        #expect(command.syncCompletion.rawValue == cs)
        let error = command.validate()
        if valid {
            #expect(error == nil)
        } else {
            #expect(error?.reason == .reservedSyncCompletion)
            #expect(error?.queueError == .illegal)
        }
        #expect(Command.sync(completion: SyncCompletion(rawValue: cs)).validate() == error)
    }

    @Test func everyOpcodeByteWithRandomOtherBitsValidatesLikeTheReferenceWithoutTrapping() {
        var rng = SplitMix64(seed: 0xC0DE_0001)
        for byte in UInt8.min...UInt8.max {
            for round in 0..<64 {
                // Mix fully random words with all-zero and all-one words for the edges.
                let high0: UInt64 = round == 0 ? 0 : round == 1 ? ~0 : rng.next()
                let w1: UInt64 = round == 0 ? 0 : round == 1 ? ~0 : rng.next()
                let command = Command(w0: (high0 & ~0xFF) | UInt64(byte), w1: w1)
                #expect(command.opcode.rawValue == byte)
                let verdict = command.validate()
                #expect(verdict?.reason == referenceVerdict(command), "\(command)")
                if let verdict { #expect(verdict.queueError == .illegal) }
                // Every accessor and derived value must be total over any 16 bytes.
                _ = (command.streamID, command.substreamID, command.ssv, command.ssec, command.leaf)
                _ = (command.asid, command.vmid, command.virtualAddress, command.ipa, command.address)
                _ = (command.tlbiRange.pages, command.tlbiRange.byteCount, command.cfgiRange, command.cfgiStreamIDs)
                _ = (command.atcGlobal, command.atcSize, command.syncCompletion, command.description)
                _ = (command.opcode.name, command.opcode.family, verdict?.description)
            }
        }
    }

    @Test func commandQueueErrorRawValuesAreTheCERRORCodes() {
        #expect(CommandQueueError.none.rawValue == 0)
        #expect(CommandQueueError.illegal.rawValue == 1)
        #expect(CommandQueueError.abort.rawValue == 2)
        #expect(CommandQueueError.atcInvalidationSync.rawValue == 3)
        #expect(CommandQueueError(rawValue: 1) == .illegal)
        #expect([CommandQueueError.none, .illegal, .abort, .atcInvalidationSync].map(\.description)
                == ["CERROR_NONE", "CERROR_ILL", "CERROR_ABT", "CERROR_ATC_INV_SYNC"])
    }

    @Test func everyIllegalReasonReportsCERRORIll() {
        let reasons: [IllegalCommandReason] = [
            .undefinedOpcode(Opcode(rawValue: 0)), .phantomCFGIAll, .secureStreamOnNonSecureQueue(.cfgiSTE),
            .reservedSyncCompletion,
        ]
        for reason in reasons {
            #expect(IllegalCommandError(reason: reason).queueError == .illegal)
            #expect(IllegalCommandError(reason: reason).description.hasPrefix("CERROR_ILL: "))
        }
    }
}
