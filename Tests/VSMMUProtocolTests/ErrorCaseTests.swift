import SMMUv3
import Testing
@testable import VSMMUProtocol

/// One valid request of every type, for the checks that apply to all of them.
let oneOfEachRequest: [Request] = [
    .hello(Hello(processID: 1, clientName: "c")),
    .createVSMMU(CreateVSMMU(name: "vm")),
    .destroyVSMMU(DestroyVSMMU(vsmmu: vsmmu7)),
    .attachViommu(AttachViommu(vsmmu: vsmmu7, pSMMU: "smmu0", hostDeviceID: 1, nestParentHWPT: 2)),
    .detachViommu(DetachViommu(vsmmu: vsmmu7, viommu: 0)),
    .setDeviceID(DeviceRegistration(vsmmu: vsmmu7, viommu: 0, hostDeviceID: 1, streamID: 2)),
    .unsetDeviceID(DeviceRegistration(vsmmu: vsmmu7, viommu: 0, hostDeviceID: 1, streamID: 2)),
    .linkSTE(LinkSTE(vsmmu: vsmmu7, streamID: 2, ste: steS1, contextDescriptors: [cd42, cd43])),
    .unlinkSTE(UnlinkSTE(vsmmu: vsmmu7, streamID: 2)),
    .updateCD(UpdateCD(vsmmu: vsmmu7, streamID: 2, substreamID: 1, contextDescriptor: cd44)),
    .getHWInfo(GetHardwareInfo(vsmmu: vsmmu7)),
    .invalidate(Invalidate(vsmmu: vsmmu7, commands: vectorCommands)),
    .stats(StatsRequest(vsmmu: nil)),
    .list(ListRequest(kind: .asids, vsmmu: vsmmu7, start: 3, maximumEntries: 10)),
    .health,
    .mapEventQueue(MapEventQueue(vsmmu: vsmmu7, log2Entries: 6)),
    .unmapEventQueue(UnmapEventQueue(vsmmu: vsmmu7)),
    .simulateDMA(SimulateDMA(vsmmu: vsmmu7, streamID: 0x100, address: 0x7F00_1000, walk: .readWrite)),
]

/// Decodes `bytes` as one request frame and returns the error it is refused with.
func refusal(_ bytes: [UInt8], handshakeCompleted: Bool = true) throws -> ProtocolError {
    try #require(throws: ProtocolError.self) { _ = try Request.decode(try Frame(bytes: bytes), handshakeCompleted: handshakeCompleted) }
}

/// Decodes `bytes` as one reply frame and returns the error it is refused with.
func replyRefusal(_ bytes: [UInt8]) throws -> ProtocolError {
    try #require(throws: ProtocolError.self) { _ = try Response.decode(try Frame(bytes: bytes)) }
}

/// `bytes` with the header's payload length and payload replaced.
func withPayload(_ bytes: [UInt8], _ payload: [UInt8]) -> [UInt8] {
    le(UInt32(payload.count)) + bytes[4..<16] + payload
}

@Suite("Error cases")
struct ErrorCaseTests {
    // MARK: Unknown types

    @Test func unknownRequestTypeIsRefusedWithItsTypeAsValue() throws {
        let e = try refusal(rawFrame(type: 0x0077, requestID: 5, payload: [1, 2, 3, 4]))
        #expect(e.code == .unknownMessageType)
        #expect(e.requestType.rawValue == 0x77)
        #expect(e.value == 0x77)
        #expect(!e.closesConnection)
    }

    @Test func replyTypesAndErrorAreNotRequests() throws {
        for type in MessageType.allReplies {
            let e = try refusal(rawFrame(type: type.rawValue, payload: []))
            #expect(e.code == .unknownMessageType, "\(type)")
        }
    }

    @Test func requestTypesAreNotReplies() throws {
        for request in oneOfEachRequest {
            let e = try replyRefusal(try request.encode(requestID: 1))
            #expect(e.code == .unknownMessageType, "\(request.type)")
        }
        #expect(try replyRefusal(rawFrame(type: 0x8077, payload: [])).code == .unknownMessageType)
    }

    // MARK: Payload lengths

    @Test func everyRequestWithOneByteMoreOrLessIsBadPayloadLength() throws {
        for request in oneOfEachRequest {
            let bytes = try request.encode(requestID: 3)
            let payload = Array(bytes[16...])
            let longer = try refusal(withPayload(bytes, payload + [0]))
            #expect(longer.code == .badPayloadLength, "\(request.type)")
            #expect(longer.detail == UInt32(payload.count), "\(request.type)")
            #expect(longer.value == UInt64(payload.count + 1))
            #expect(!longer.closesConnection)
            if !payload.isEmpty {
                let shorter = try refusal(withPayload(bytes, Array(payload.dropLast())))
                #expect(shorter.code == .badPayloadLength, "\(request.type)")
            }
        }
    }

    @Test func countsThatDisagreeWithThePayloadAreBadPayloadLength() throws {
        // LINK_STE announcing 3 CDs, carrying 2: needs 80 + 3 × 64.
        var link = try Request.linkSTE(LinkSTE(vsmmu: vsmmu7, streamID: 2, ste: steS1, contextDescriptors: [cd42, cd43]))
            .encode(requestID: 1)
        link[16 + 8] = 3
        let e = try refusal(link)
        #expect(e.code == .badPayloadLength)
        #expect(e.detail == 80 + 3 * 64)
        // INVALIDATE announcing 2^32-1 commands: the needed length is capped, nothing is allocated for it.
        var inv = try Request.invalidate(Invalidate(vsmmu: vsmmu7, commands: [.sync()])).encode(requestID: 1)
        for i in 0..<4 { inv[16 + 4 + i] = 0xFF }
        let huge = try refusal(inv)
        #expect(huge.code == .badPayloadLength)
        #expect(huge.detail == UInt32.max)
        // A payload shorter than the fixed part.
        #expect(try refusal(rawFrame(type: 0x20, payload: [7, 0, 0, 0])).detail == 16)
    }

    @Test func everyReplyWithOneByteMoreIsBadPayloadLength() throws {
        for vector in goldenVectors {
            guard case .response(let id, let response) = vector.content else { continue }
            let bytes = try response.encode(requestID: id)
            let e = try replyRefusal(withPayload(bytes, Array(bytes[16...]) + [0]))
            #expect(e.code == .badPayloadLength, "\(vector.file)")
        }
    }

    // MARK: Handshake and check order

    @Test func onlyHelloIsAllowedBeforeTheHandshake() throws {
        for request in oneOfEachRequest {
            let bytes = try request.encode(requestID: 8)
            if request.type == .hello {
                #expect(try Request.decode(try Frame(bytes: bytes), handshakeCompleted: false) == request)
                #expect(request.type.isAllowedBeforeHandshake)
            } else {
                let e = try refusal(bytes, handshakeCompleted: false)
                #expect(e.code == .handshakeRequired, "\(request.type)")
                #expect(e.value == UInt64(request.type.rawValue))
                #expect(!request.type.isAllowedBeforeHandshake)
            }
        }
    }

    @Test func checksRunInTheSpecifiedOrder() throws {
        // Unknown type beats the handshake.
        #expect(try refusal(rawFrame(type: 0x77, payload: []), handshakeCompleted: false).code == .unknownMessageType)
        // The handshake beats the payload length.
        #expect(try refusal(rawFrame(type: 0x10, payload: [0]), handshakeCompleted: false).code == .handshakeRequired)
        // The payload length beats the flags.
        #expect(try refusal(rawFrame(type: 0x11, flags: 0x8000, payload: [0])).code == .badPayloadLength)
        // The flags beat the fields.
        let bad = rawFrame(type: 0x11, flags: 0x8000, payload: le(UInt32(7)) + le(UInt32(1)))
        #expect(try refusal(bad).detail == 0x10006)
    }

    // MARK: Flags and file descriptors

    @Test func reservedFlagBitsAreBadFieldAtHeaderOffsetSix() throws {
        for bit in 1..<16 {
            let bytes = rawFrame(type: 0x42, flags: UInt16(1) << UInt16(bit), payload: [])
            let e = try refusal(bytes)
            #expect(e.code == .badField)
            #expect(e.detail == 0x10000 + 6)
            #expect(e.value == UInt64(1) << UInt64(bit))
        }
    }

    @Test func fileDescriptorFlagIsAcceptedOnlyOnAttachViommuAndSetDevID() throws {
        #expect(oneOfEachRequest.map(\.type).filter(\.takesFileDescriptor) == [.attachViommu, .setDeviceID, .mapEventQueue])
        for request in oneOfEachRequest {
            var bytes = try request.encode(requestID: 1)
            bytes[6] |= 1
            if request.type.takesFileDescriptor {
                let decoded = try Request.decode(try Frame(bytes: bytes))
                #expect(decoded.type == request.type)
                #expect(decoded.flags == .fileDescriptorAttached, "\(request.type)")
                switch decoded {
                case .attachViommu(let attach): #expect(attach.fileDescriptorAttached)
                case .setDeviceID(let registration): #expect(registration.fileDescriptorAttached)
                case .mapEventQueue: break // always sent with its two fds
                default: Issue.record("\(decoded.type) takes a file descriptor")
                }
                #expect(try decoded.encode(requestID: 1) == bytes)
            } else {
                let e = try refusal(bytes)
                #expect(e.code == .badFileDescriptor, "\(request.type)")
                #expect(e.detail == FileDescriptorProblem.unexpected.rawValue)
            }
        }
    }

    @Test func attachViommuSetsTheFlagFromItsField() throws {
        let attach = AttachViommu(vsmmu: vsmmu7, pSMMU: "smmu0", hostDeviceID: 1, nestParentHWPT: 2, fileDescriptorAttached: true)
        #expect(Request.attachViommu(attach).flags == .fileDescriptorAttached)
        var without = attach
        without.fileDescriptorAttached = false
        #expect(Request.attachViommu(without).flags == [])
        #expect(try Request.attachViommu(without).encode(requestID: 1)[6] == 0)
    }

    @Test func setDevIDSetsTheFlagFromItsFieldAndUnsetDevIDNeverCarriesIt() throws {
        let registration = DeviceRegistration(vsmmu: vsmmu7, viommu: 0, hostDeviceID: 0x12, streamID: 0x200,
                                              fileDescriptorAttached: true)
        #expect(Request.setDeviceID(registration).flags == .fileDescriptorAttached)
        #expect(try Request.setDeviceID(registration).encode(requestID: 1)[6] == 1)
        var without = registration
        without.fileDescriptorAttached = false
        #expect(Request.setDeviceID(without).flags == [])
        #expect(try Request.setDeviceID(without).encode(requestID: 1)[6] == 0)
        // UNSET_DEV_ID shares the payload but takes no fd: the field is not sent.
        #expect(Request.unsetDeviceID(registration).flags == [])
        var unset = try Request.unsetDeviceID(without).encode(requestID: 1)
        unset[6] = 1
        let e = try refusal(unset)
        #expect(e.code == .badFileDescriptor && e.detail == FileDescriptorProblem.unexpected.rawValue)
    }

    @Test func onlyGetHWInfoIsNewInVersion2OnlyResumeInVersion3OnlyTheQueueRequestsInVersion4AndTheEventRequestsInVersion5() {
        for type in MessageType.allRequests {
            let expected: UInt16 = type == .getHWInfo ? 2 : type == .resumeVSMMU ? 3
                : type == .mapQueue || type == .unmapQueue ? 4
                : type == .mapEventQueue || type == .unmapEventQueue || type == .simulateDMA ? 5 : 1
            #expect(type.introducedInVersion == expected, "\(type.name)")
        }
        #expect(WireProtocol.version == 5)
        #expect(WireProtocol.supportedVersions == 1...5)
    }

    @Test func repliesCarryNoFlags() throws {
        var bytes = try Response.destroyVSMMU.encode(requestID: 1)
        bytes[6] = 1
        let e = try replyRefusal(bytes)
        #expect(e.code == .badField)
        #expect(e.detail == 0x10006)
    }

    // MARK: Field values

    @Test func malformedHelloFieldsAreBadFieldWithTheirOffsets() throws {
        func hello(magic: UInt32 = WireProtocol.magic, low: UInt16 = 1, high: UInt16 = 1, reserved: UInt32 = 0,
                   name: [UInt8] = nameField("x")) -> [UInt8] {
            rawFrame(type: 0x01, payload: le(magic) + le(low) + le(high) + le(UInt32(1)) + le(reserved) + name)
        }
        #expect(try Request.decode(try Frame(bytes: hello())) == .hello(Hello(versions: 1...1, processID: 1, clientName: "x")))
        let cases: [([UInt8], UInt32)] = [
            (hello(magic: 0x1234_5678), 0),
            (hello(low: 0, high: 1), 4),
            (hello(low: 3, high: 2), 6),
            (hello(reserved: 1), 12),
            (hello(name: Array("ab".utf8) + [0, 0x41] + [UInt8](repeating: 0, count: 60)), 16), // byte after the NUL
            (hello(name: [0xC3, 0x28] + [UInt8](repeating: 0, count: 62)), 16),                // not UTF-8
        ]
        for (bytes, offset) in cases {
            let e = try refusal(bytes, handshakeCompleted: false)
            #expect(e.code == .badField)
            #expect(e.detail == offset)
            #expect(e.requestType == .hello)
        }
    }

    @Test func nameFillingAllSixtyFourBytesNeedsNoTerminator() throws {
        let name = String(repeating: "é", count: 32) // 64 UTF-8 bytes
        let request = Request.createVSMMU(CreateVSMMU(name: name))
        #expect(try request.roundTripped() == request)
    }

    @Test func otherRequestFieldsAreChecked() throws {
        // CREATE_VSMMU flags (bit 0 is the create key's, bit 1 undefined), INVALIDATE flags and reserved,
        // LIST kind and reserved, empty pSMMU name.
        let create = rawFrame(type: 0x10, payload: le(UInt32(2)) + le(UInt32(0)) + nameField("vm"))
        #expect(try refusal(create).detail == 0)
        let invalidateFlags = rawFrame(type: 0x20, payload: le(UInt32(7)) + le(UInt32(0)) + le(UInt32(2)) + le(UInt32(0)))
        #expect(try refusal(invalidateFlags).detail == 8)
        let invalidateReserved = rawFrame(type: 0x20, payload: le(UInt32(7)) + le(UInt32(0)) + le(UInt32(0)) + le(UInt32(9)))
        #expect(try refusal(invalidateReserved).detail == 12)
        let list = rawFrame(type: 0x41, payload: le(UInt32(0)) + le(UInt16(9)) + le(UInt16(0)) + le(UInt32(0)) + le(UInt32(0)))
        let listError = try refusal(list)
        #expect(listError.code == .badField)
        #expect(listError.detail == 4)
        #expect(listError.value == 9)
        let attach = rawFrame(type: 0x12, payload: le(UInt32(7)) + le(UInt32(1)) + le(UInt32(2)) + le(UInt32(0)) + nameField(""))
        #expect(try refusal(attach).detail == 16)
        let linkReserved = rawFrame(type: 0x16, payload: le(UInt32(7)) + le(UInt32(1)) + le(UInt32(0)) + le(UInt32(1))
                                    + [UInt8](repeating: 0, count: 64))
        #expect(try refusal(linkReserved).detail == 12)
        let hwInfoReserved = rawFrame(type: 0x19, payload: le(UInt32(7)) + le(UInt32(1)))
        let hwInfoError = try refusal(hwInfoReserved)
        #expect(hwInfoError.code == .badField && hwInfoError.detail == 4 && hwInfoError.value == 1)
        #expect(hwInfoError.requestType == .getHWInfo)
    }

    @Test func replyFieldsAreChecked() throws {
        func inv(consumed: UInt32 = 1, index: UInt32, cerror: UInt8, message: [UInt8] = []) -> [UInt8] {
            rawFrame(type: 0x8020, payload: le(consumed) + le(index) + le(UInt32(0)) + [cerror, 0]
                     + le(UInt16(message.count)) + message)
        }
        #expect(try replyRefusal(inv(index: 1, cerror: 4)).detail == 12)                 // CERROR 4 undefined
        #expect(try replyRefusal(inv(index: 1, cerror: 0)).detail == 4)                  // NONE needs 0xFFFFFFFF
        #expect(try replyRefusal(inv(index: 0xFFFF_FFFF, cerror: 2)).detail == 4)        // an error needs an index
        #expect(try replyRefusal(inv(index: 0xFFFF_FFFF, cerror: 0, message: [0x41])).detail == 14)
        #expect(try replyRefusal(inv(index: 0, cerror: 1, message: [0xFF])).detail == 16) // not UTF-8
        let tooLong = rawFrame(type: 0x8000, payload: le(UInt32(8)) + le(UInt16(0)) + le(UInt16(1025)) + le(UInt32(0))
                               + le(UInt32(0)) + le(UInt64(0)) + [UInt8](repeating: 0x41, count: 1025))
        #expect(try replyRefusal(tooLong).detail == 6)
        let codeZero = rawFrame(type: 0x8000, payload: [UInt8](repeating: 0, count: 24))
        #expect(try replyRefusal(codeZero).detail == 0)

        var limits = try Response.hello(HelloReply(serverProcessID: 1, serverName: "s")).encode(requestID: 1)
        limits.replaceSubrange(24..<28, with: le(UInt32(4096)))                           // max_frame_size too small
        #expect(try replyRefusal(limits).detail == 8)
        var commands = try Response.hello(HelloReply(serverProcessID: 1, serverName: "s")).encode(requestID: 1)
        commands.replaceSubrange(28..<32, with: le(UInt32(65535)))                        // does not fit in 1 MiB
        #expect(try replyRefusal(commands).detail == 12)

        var list = try Response.list(ListReply(entries: .devices([]), total: 0)).encode(requestID: 1)
        list[18] = 25                                                                     // entry_size ≠ 24
        #expect(try replyRefusal(list).detail == 2)
        let health = rawFrame(type: 0x8042, payload: le(UInt32(3)) + [UInt8](repeating: 0, count: 28))
        #expect(try replyRefusal(health).detail == 0)
        #expect(try replyRefusal(rawFrame(type: 0x8010, payload: le(UInt64(0)))).detail == 0)        // vsmmu_id 0
        #expect(try replyRefusal(rawFrame(type: 0x8012, payload: le(UInt32(64)) + le(UInt32(0)))).detail == 0)
        #expect(try replyRefusal(rawFrame(type: 0x8016, payload: le(UInt32(0)) + le(UInt32(1)))).detail == 4)
        #expect(try replyRefusal(rawFrame(type: 0x8016, payload: le(UInt32(1)) + le(UInt32(2)))).detail == 4)

        // GET_HW_INFO's viommu_count is 1-64; its reserved word is 0.
        func hwInfo(count: UInt32, reserved: UInt32 = 0) -> [UInt8] {
            rawFrame(type: 0x8019, payload: le(count) + le(reserved) + [UInt8](repeating: 0xA5, count: 32))
        }
        #expect(try Response.decode(try Frame(bytes: hwInfo(count: 64))) == .getHWInfo(HardwareInfo(
            viommuCount: 64, registers: IDRegisters(idr: Array(repeating: 0xA5A5_A5A5, count: 6), iidr: 0xA5A5_A5A5,
                                                    aidr: 0xA5A5_A5A5))))
        for count: UInt32 in [0, 65, .max] {
            let e = try replyRefusal(hwInfo(count: count))
            #expect(e.code == .badField && e.detail == 0 && e.value == UInt64(count), "viommu_count \(count)")
        }
        #expect(try replyRefusal(hwInfo(count: 1, reserved: 0x100)).detail == 4)
    }

    // MARK: Encoding refusals

    @Test func encodingRefusesWhatTheWireCannotCarryAndLeavesTheBufferAlone() throws {
        var buffer: [UInt8] = [9, 9, 9]
        let long = Request.createVSMMU(CreateVSMMU(name: String(repeating: "x", count: 65)))
        let e1 = try #require(throws: ProtocolError.self) { try long.encode(requestID: 1, into: &buffer) }
        #expect(e1.code == .badField)
        #expect(e1.detail == 8)
        #expect(buffer == [9, 9, 9])
        #expect(throws: ProtocolError.self) { try Request.createVSMMU(CreateVSMMU(name: "a\0b")).encode(requestID: 1) }
        #expect(throws: ProtocolError.self) {
            try Request.attachViommu(AttachViommu(vsmmu: vsmmu7, pSMMU: "", hostDeviceID: 0, nestParentHWPT: 0)).encode(requestID: 1)
        }
        let none = InvalidateReply(consumed: 0, syncsCompleted: 0, failure: .init(index: 0, queueError: .none))
        #expect(throws: ProtocolError.self) { try Response.invalidate(none).encode(requestID: 1) }
        #expect(throws: ProtocolError.self) { try Response.linkSTE(HWPTLinked(s1HWPT: nil, isNew: true)).encode(requestID: 1) }
        #expect(throws: ProtocolError.self) {
            try Response.getHWInfo(HardwareInfo(viommuCount: 0, registers: .simulatedDefault)).encode(requestID: 1)
        }
        #expect(throws: ProtocolError.self) {
            try Response.stats(StatsReply(entries: [StatEntry(vsmmu: nil, viommu: 0xFFFF, key: .syncs, value: 1)])).encode(requestID: 1)
        }
    }

    @Test func framesOverTheLimitAreNotEncoded() throws {
        let limit = WireProtocol.maximumCommands(frameSize: WireProtocol.maximumFrameSize)
        #expect(limit == 65534)
        let fits = Request.invalidate(Invalidate(vsmmu: vsmmu7, commands: Array(repeating: .sync(), count: limit)))
        #expect(try fits.encode(requestID: 1).count == WireProtocol.maximumFrameSize)
        var buffer: [UInt8] = [1]
        let over = Request.invalidate(Invalidate(vsmmu: vsmmu7, commands: Array(repeating: .sync(), count: limit + 1)))
        let e = try #require(throws: ProtocolError.self) { try over.encode(requestID: 1, into: &buffer) }
        #expect(e.code == .frameTooLarge)
        #expect(e.value == UInt64(WireProtocol.maximumFrameSize + 16))
        #expect(buffer == [1])
        // A smaller negotiated limit.
        #expect(throws: ProtocolError.self) { try fits.encode(requestID: 1, maximumFrameSize: 65536) }
    }

    @Test func longMessagesAreCutAtACharacterBoundary() throws {
        let error = ProtocolError(code: .internalError, message: String(repeating: "€", count: 400)) // 1200 bytes
        let decoded = try Response.decode(try Frame(bytes: error.replyFrame(requestID: 1)))
        guard case .error(let e) = decoded else {
            Issue.record("not an error")
            return
        }
        #expect(e.message == String(repeating: "€", count: 341)) // 1023 bytes: 1024 would split a scalar
    }

    // MARK: Codes

    @Test func onlyUnresynchronisableErrorsAndShutdownCloseTheConnection() {
        let closing = ProtocolErrorCode.allDefined.filter(\.closesConnection)
        #expect(closing == [.frameTooLarge, .truncatedFrame, .permissionDenied, .shuttingDown])
        #expect(Set(ProtocolErrorCode.allDefined.map(\.name)).count == ProtocolErrorCode.allDefined.count)
        #expect(!ProtocolErrorCode(rawValue: 0).isDefined)
    }

    @Test func versionNegotiationPicksTheHighestCommonVersion() throws {
        #expect(try WireProtocol.negotiateVersion(client: 1...3) == 3)
        #expect(try WireProtocol.negotiateVersion(client: 1...9) == 5)
        #expect(try WireProtocol.negotiateVersion(client: 2...2) == 2)
        #expect(try WireProtocol.negotiateVersion(client: 1...1) == 1) // a version-1 client still gets version 1
        #expect(try WireProtocol.negotiateVersion(client: 1...3, server: 2...5) == 3)
        let above = try #require(throws: ProtocolError.self) { try WireProtocol.negotiateVersion(client: 6...7) }
        #expect(above.code == .unsupportedVersion && above.detail == 1 && above.value == 5)
        let e = try #require(throws: ProtocolError.self) { try WireProtocol.negotiateVersion(client: 2...3, server: 1...1) }
        #expect(e == ProtocolError(code: .unsupportedVersion, requestType: .hello, detail: 1, value: 1,
                                   message: "client speaks versions 2-3, server 1-1"))
        #expect(!e.closesConnection)
    }

    @Test func nestingRefusalsMapToInvalidSTEReasons() throws {
        var ste = StreamTableEntry(w0: 0xB)
        ste.config = .s2Translate
        let refusal = try #require(throws: NestedSTEError.self) { _ = try ste.nestingValidated() }
        let e = ProtocolError.invalidSTE(refusal, type: .linkSTE)
        #expect(e.code == .invalidSTE)
        #expect(e.detail == InvalidSTEReason.disallowedConfig.rawValue)
        #expect(e.value == 6)
        #expect(ProtocolError.invalidSTE(.disallowedEATS(2), type: .linkSTE).detail == 4)
        #expect(ProtocolError.invalidSTE(.disallowedBitsW1(0x100), type: .linkSTE).value == 0x100)
    }
}
