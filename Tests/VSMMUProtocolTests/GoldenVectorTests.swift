import Foundation
import SMMUv3
import Testing
@testable import VSMMUProtocol

/// What one golden vector holds, written here by hand from the vector's comments (`make_vectors.py`
/// wrote the bytes independently, from PROTOCOL.md).
enum VectorContent: Sendable {
    case request(UInt64, Request)
    case response(UInt64, Response)
    /// A request frame the server refuses with `code` (a `#! expect_error` vector).
    case refused(UInt64, ProtocolErrorCode)
}

struct GoldenVector: Sendable, CustomTestStringConvertible {
    var file: String
    var content: VectorContent
    var testDescription: String { file }
}

// The values the vectors use (see make_vectors.py).
let vsmmu7 = VSMMUID(7)
let steS1 = StreamTableEntry(w0: 0x0800_0000_4000_000B, w1: 0x1000_00D6)
let cd42 = ContextDescriptor.valid(asid: 0x42, ttb0: 0x8_1234_5000)
let cd43 = ContextDescriptor.valid(asid: 0x43, ttb0: 0x8_1234_6000)
let cd44 = ContextDescriptor.valid(asid: 0x44, ttb0: 0x8_1234_7000)
/// The ID registers of get-hw-info-reply.hex: QEMU's emulated SMMUv3 (the simulated pSMMU's default) with an
/// Arm implementer code in IIDR.
let vectorIDRegisters = IDRegisters(idr: [0x0D44_101B, 0x0273_0010, 0, 0x0000_1414, 0, 0x0000_0074],
                                    iidr: 0x0000_043B, aidr: 0x1)
/// The resume token of the version-3 vectors: bytes 0x10 … 0x1F.
let vectorResumeToken = ResumeToken(bytes: (0x10...0x1F).map { UInt8($0) })!
let vectorCreateKey = CreateKey(bytes: (0x20...0x2F).map { UInt8($0) })!
/// The F_TRANSLATION of simulate-dma-reply.hex and event-slot.hex: vSID 0x100 at IOVA 0x7F001000.
let vectorFaultEvent = EventRecord(id: .translation, streamID: 0x100, inputAddress: 0x7F00_1000)
let vectorCommands: [Command] = [
    .tlbiNHVA(asid: 0x42, vmid: 0, address: 0x7F00_1000, leaf: true),
    Command(w0: 0x0000_0100_0000_0040, w1: 0x34), // ATC_INV SID 0x100 SIZE 52
    Command(w0: 0x1046, w1: 0),                   // CMD_SYNC CS=IRQ
]

let goldenVectors: [GoldenVector] = [
    GoldenVector(file: "hello.hex", content: .request(1, .hello(Hello(versions: 1...2, processID: 4242, clientName: "vmm-sim")))),
    GoldenVector(file: "hello-reply.hex", content: .response(1, .hello(HelloReply(
        version: 2,
        limits: ServerLimits(maximumFrameSize: 1_048_576, maximumCommandsPerInvalidate: 65534, maximumVSMMUs: 16,
                             maximumViommus: 64, maximumContextDescriptors: 16382),
        serverProcessID: 777, serverName: "vsmmud 0.4.0")))),
    GoldenVector(file: "create-vsmmu.hex", content: .request(2, .createVSMMU(CreateVSMMU(name: "vm42")))),
    GoldenVector(file: "create-vsmmu-keyed.hex", content: .request(2, .createVSMMU(CreateVSMMU(name: "vm42", createKey: vectorCreateKey)))),
    GoldenVector(file: "create-vsmmu-reply.hex", content: .response(2, .createVSMMU(VSMMUCreated(vsmmu: vsmmu7)))),
    GoldenVector(file: "create-vsmmu-reply-v3.hex", content: .response(2, .createVSMMU(VSMMUCreated(
        vsmmu: vsmmu7, resumeToken: vectorResumeToken)))),
    GoldenVector(file: "resume-vsmmu.hex", content: .request(21, .resumeVSMMU(ResumeVSMMU(
        vsmmu: vsmmu7, resumeToken: vectorResumeToken)))),
    GoldenVector(file: "resume-vsmmu-with-fd.hex", content: .request(22, .resumeVSMMU(ResumeVSMMU(
        vsmmu: vsmmu7, resumeToken: vectorResumeToken, fileDescriptorAttached: true)))),
    GoldenVector(file: "resume-vsmmu-reply.hex", content: .response(21, .resumeVSMMU(VSMMUResumed(
        vsmmu: vsmmu7, viommuCount: 2, deviceCount: 3, lastRequestID: 20)))),
    GoldenVector(file: "map-queue.hex", content: .request(23, .mapQueue(MapQueue(vsmmu: vsmmu7, log2Entries: 10)))),
    GoldenVector(file: "map-queue-reply.hex", content: .response(23, .mapQueue(QueueMapped(consumer: 0x405)))),
    GoldenVector(file: "unmap-queue.hex", content: .request(24, .unmapQueue(UnmapQueue(vsmmu: vsmmu7)))),
    GoldenVector(file: "unmap-queue-reply.hex", content: .response(24, .unmapQueue)),
    GoldenVector(file: "map-event-queue.hex", content: .request(60, .mapEventQueue(MapEventQueue(vsmmu: vsmmu7, log2Entries: 6)))),
    GoldenVector(file: "map-event-queue-reply.hex", content: .response(60, .mapEventQueue(EventQueueMapped(producer: 0x8000_0045)))),
    GoldenVector(file: "unmap-event-queue.hex", content: .request(61, .unmapEventQueue(UnmapEventQueue(vsmmu: vsmmu7)))),
    GoldenVector(file: "unmap-event-queue-reply.hex", content: .response(61, .unmapEventQueue)),
    GoldenVector(file: "simulate-dma.hex", content: .request(62, .simulateDMA(SimulateDMA(
        vsmmu: vsmmu7, streamID: 0x100, write: true, address: 0x7F00_1000, size: 4096, walk: .unmapped)))),
    GoldenVector(file: "simulate-dma-reply.hex", content: .response(62, .simulateDMA(DMASimulated(outcome: .fault(vectorFaultEvent))))),
    GoldenVector(file: "error-unsupported.hex", content: .response(63, .error(.unsupported(
        viommu: 0, type: .simulateDMA, "SIMULATE_DMA: the backend of viommu 0 has no simulated devices")))),
    GoldenVector(file: "attach-viommu.hex", content: .request(3, .attachViommu(AttachViommu(
        vsmmu: vsmmu7, pSMMU: "smmu1", hostDeviceID: 0x11, nestParentHWPT: 0x21, fileDescriptorAttached: true)))),
    GoldenVector(file: "attach-viommu-reply.hex", content: .response(3, .attachViommu(ViommuAttached(viommu: 1, backendViommuID: 0x31)))),
    GoldenVector(file: "set-dev-id.hex", content: .request(4, .setDeviceID(DeviceRegistration(
        vsmmu: vsmmu7, viommu: 1, hostDeviceID: 0x11, streamID: 0x100)))),
    GoldenVector(file: "set-dev-id-reply.hex", content: .response(4, .setDeviceID)),
    GoldenVector(file: "set-dev-id-with-fd.hex", content: .request(17, .setDeviceID(DeviceRegistration(
        vsmmu: vsmmu7, viommu: 0, hostDeviceID: 0x12, streamID: 0x200, fileDescriptorAttached: true)))),
    GoldenVector(file: "get-hw-info.hex", content: .request(7, .getHWInfo(GetHardwareInfo(vsmmu: vsmmu7)))),
    GoldenVector(file: "get-hw-info-reply.hex", content: .response(7, .getHWInfo(HardwareInfo(
        viommuCount: 2, registers: vectorIDRegisters)))),
    GoldenVector(file: "link-ste.hex", content: .request(5, .linkSTE(LinkSTE(
        vsmmu: vsmmu7, streamID: 0x100, ste: steS1, contextDescriptors: [cd42, cd43])))),
    GoldenVector(file: "link-ste-reply.hex", content: .response(5, .linkSTE(HWPTLinked(s1HWPT: 1, isNew: true)))),
    GoldenVector(file: "update-cd.hex", content: .request(6, .updateCD(UpdateCD(
        vsmmu: vsmmu7, streamID: 0x100, substreamID: 1, contextDescriptor: cd44)))),
    GoldenVector(file: "update-cd-reply.hex", content: .response(6, .updateCD(HWPTLinked(s1HWPT: 1, isNew: false)))),
    GoldenVector(file: "invalidate.hex", content: .request(8, .invalidate(Invalidate(vsmmu: vsmmu7, commands: vectorCommands)))),
    GoldenVector(file: "invalidate-reply.hex", content: .response(8, .invalidate(InvalidateReply(consumed: 3, syncsCompleted: 1)))),
    GoldenVector(file: "invalidate-reply-ill.hex", content: .response(9, .invalidate(InvalidateReply(
        consumed: 1, syncsCompleted: 0,
        failure: .init(index: 1, queueError: .illegal, message: "undefined opcode 0x7"))))),
    GoldenVector(file: "unlink-ste.hex", content: .request(27, .unlinkSTE(UnlinkSTE(vsmmu: vsmmu7, streamID: 0x100)))),
    GoldenVector(file: "unlink-ste-reply.hex", content: .response(27, .unlinkSTE)),
    GoldenVector(file: "unset-dev-id.hex", content: .request(28, .unsetDeviceID(DeviceRegistration(
        vsmmu: vsmmu7, viommu: 1, hostDeviceID: 0x11, streamID: 0x100)))),
    GoldenVector(file: "unset-dev-id-reply.hex", content: .response(28, .unsetDeviceID)),
    GoldenVector(file: "detach-viommu.hex", content: .request(29, .detachViommu(DetachViommu(vsmmu: vsmmu7, viommu: 1)))),
    GoldenVector(file: "detach-viommu-reply.hex", content: .response(29, .detachViommu)),
    GoldenVector(file: "destroy-vsmmu.hex", content: .request(30, .destroyVSMMU(DestroyVSMMU(vsmmu: vsmmu7)))),
    GoldenVector(file: "destroy-vsmmu-reply.hex", content: .response(30, .destroyVSMMU)),
    GoldenVector(file: "stats.hex", content: .request(10, .stats(StatsRequest(vsmmu: vsmmu7)))),
    GoldenVector(file: "stats-reply.hex", content: .response(10, .stats(StatsReply(entries: [
        StatEntry(vsmmu: vsmmu7, key: .commandsReceived, value: 3),
        StatEntry(vsmmu: vsmmu7, key: .syncs, value: 1),
        StatEntry(vsmmu: vsmmu7, key: .syncLatencyLog2Nanoseconds(bucket: 14), value: 1),
        StatEntry(vsmmu: vsmmu7, viommu: 1, key: .viommuBackendCalls, value: 1),
        StatEntry(vsmmu: vsmmu7, viommu: 1, key: .viommuBatchSizeLog2(bucket: 1), value: 1),
    ])))),
    GoldenVector(file: "list.hex", content: .request(11, .list(ListRequest(kind: .devices)))),
    GoldenVector(file: "list-reply-vsmmus.hex", content: .response(12, .list(ListReply(entries: .vsmmus([
        VSMMUListEntry(vsmmu: vsmmu7, ownerProcessID: 4242, ownerUserID: 1000, viommuCount: 2, deviceCount: 2,
                       hwptCount: 1, asidCount: 2, name: "vm42"),
    ]), total: 1)))),
    GoldenVector(file: "list-reply-viommus.hex", content: .response(13, .list(ListReply(entries: .viommus([
        ViommuListEntry(vsmmu: vsmmu7, viommu: 0, backendViommuID: 0x30, deviceCount: 1, pSMMU: "smmu0"),
        ViommuListEntry(vsmmu: vsmmu7, viommu: 1, backendViommuID: 0x31, deviceCount: 1, pSMMU: "smmu1"),
    ]), total: 2)))),
    GoldenVector(file: "list-reply-devices.hex", content: .response(11, .list(ListReply(entries: .devices([
        DeviceListEntry(vsmmu: vsmmu7, streamID: 0x100, viommu: 1, hostDeviceID: 0x11, s1HWPT: 1, steLinked: true),
        DeviceListEntry(vsmmu: vsmmu7, streamID: 0x200, viommu: 0, hostDeviceID: 0x12, s1HWPT: nil, steLinked: false),
    ]), total: 3)))),
    GoldenVector(file: "list-reply-hwpts.hex", content: .response(14, .list(ListReply(entries: .hwpts([
        HWPTListEntry(vsmmu: vsmmu7, s1HWPT: 1, streamID: 0x100, viommu: 1, backendHWPTID: 0x41, asidCount: 2),
    ]), total: 1)))),
    GoldenVector(file: "list-reply-asids.hex", content: .response(15, .list(ListReply(entries: .asids([
        ASIDListEntry(vsmmu: vsmmu7, asid: 0x42, hwptCount: 1, targetMask: 0b10, retiringMask: 0),
        ASIDListEntry(vsmmu: vsmmu7, asid: 0x43, hwptCount: 1, targetMask: 0b11, retiringMask: 0b01),
    ]), total: 2)))),
    GoldenVector(file: "health.hex", content: .request(16, .health)),
    GoldenVector(file: "health-reply.hex", content: .response(16, .health(HealthReply(
        status: .ok, connectionCount: 2, vsmmuCount: 1, uptimeNanoseconds: 123_456_789_000, serverProcessID: 777,
        pSMMUs: [PSMMUHealth(name: "smmu0", status: .ok, backend: .simulated, viommuCount: 1),
                 PSMMUHealth(name: "smmu1", status: .ok, backend: .simulated, viommuCount: 1)])))),

    GoldenVector(file: "error-frame-too-large.hex", content: .response(40, .error(ProtocolError(
        code: .frameTooLarge, requestType: .invalidate, detail: 1_048_576, value: 1_048_593,
        message: "frame of 1048593 bytes exceeds the limit of 1048576")))),
    GoldenVector(file: "error-truncated-frame.hex", content: .response(0, .error(ProtocolError(
        code: .truncatedFrame, detail: 16, value: 5, message: "the stream ended after 5 of the frame's 16 bytes")))),
    GoldenVector(file: "error-unknown-type.hex", content: .response(41, .error(ProtocolError(
        code: .unknownMessageType, requestType: MessageType(rawValue: 0x77), value: 0x77, message: "unknown message type 0x0077")))),
    GoldenVector(file: "error-bad-payload-length.hex", content: .response(42, .error(ProtocolError(
        code: .badPayloadLength, requestType: .destroyVSMMU, detail: 8, value: 12,
        message: "DESTROY_VSMMU needs a payload of 8 bytes, got 12")))),
    GoldenVector(file: "error-handshake-required.hex", content: .response(43, .error(ProtocolError(
        code: .handshakeRequired, requestType: .createVSMMU, value: 0x10, message: "CREATE_VSMMU before HELLO")))),
    GoldenVector(file: "error-unsupported-version.hex", content: .response(44, .error(ProtocolError(
        code: .unsupportedVersion, requestType: .hello, detail: 1, value: 2, message: "client speaks versions 3-4, server 1-2")))),
    GoldenVector(file: "error-bad-field.hex", content: .response(45, .error(ProtocolError(
        code: .badField, requestType: .unlinkSTE, detail: 0x10006, value: 4, message: "reserved frame flags 0x4 set")))),
    GoldenVector(file: "error-invalid-ste.hex", content: .response(46, .error(ProtocolError(
        code: .invalidSTE, requestType: .linkSTE, detail: 3, value: 6,
        message: "vSTE CONFIG s2_trans (6) is not abort, bypass or s1_trans")))),
    GoldenVector(file: "error-unknown-stream-id.hex", content: .response(47, .error(ProtocolError(
        code: .unknownStreamID, requestType: .unlinkSTE, value: 0x300, message: "vSID 0x300 is not registered")))),
    GoldenVector(file: "error-permission-denied.hex", content: .response(52, .error(
        .permissionDenied(userID: 1000, groupID: 1000, type: .hello)))),
    GoldenVector(file: "error-backend-failure.hex", content: .response(48, .error(ProtocolError(
        code: .backendFailure, requestType: .setDeviceID, detail: 22, value: 1,
        message: "IOMMU_VDEVICE_ALLOC: device not behind this pSMMU")))),
    GoldenVector(file: "error-unknown-viommu-hw-info.hex", content: .response(53, .error(ProtocolError(
        code: .unknownViommu, requestType: .getHWInfo, value: 0xFFFF_FFFF,
        message: "vSMMU 7 has no viommu yet: its ID registers are what every pSMMU behind it supports, so attach them first")))),
    GoldenVector(file: "error-bad-file-descriptor.hex", content: .response(54, .error(.badFileDescriptor(
        .unexpected, type: .setDeviceID,
        message: "SET_DEV_ID carries the device's VFIO cdev from protocol version 2 on; this connection speaks version 1")))),

    GoldenVector(file: "bad-frame-too-large.hex", content: .refused(40, .frameTooLarge)),
    GoldenVector(file: "bad-unknown-type.hex", content: .refused(41, .unknownMessageType)),
    GoldenVector(file: "bad-payload-length.hex", content: .refused(42, .badPayloadLength)),
    GoldenVector(file: "bad-invalidate-count.hex", content: .refused(49, .badPayloadLength)),
    GoldenVector(file: "bad-reserved-flags.hex", content: .refused(45, .badField)),
    GoldenVector(file: "bad-fd-unexpected.hex", content: .refused(50, .badFileDescriptor)),
    GoldenVector(file: "bad-hello-magic.hex", content: .refused(51, .badField)),
]

@Suite("Golden vectors")
struct GoldenVectorTests {
    @Test(arguments: goldenVectors)
    func vectorDecodesToItsMessageAndReencodesToTheSameBytes(_ vector: GoldenVector) throws {
        let bytes = try ProtocolFolder.vectorBytes(vector.file)
        switch vector.content {
        case .request(let id, let expected):
            let frame = try Frame(bytes: bytes)
            #expect(frame.header.requestID == id)
            #expect(frame.header.type == expected.type)
            #expect(try Request.decode(frame) == expected)
            #expect(try expected.encode(requestID: id) == bytes)
        case .response(let id, let expected):
            let frame = try Frame(bytes: bytes)
            #expect(frame.header.requestID == id)
            #expect(frame.header.type == expected.type)
            #expect(try Response.decode(frame) == expected)
            #expect(try expected.encode(requestID: id) == bytes)
            if case .error(let error) = expected {
                #expect(error.replyFrame(requestID: id) == bytes)
            }
        case .refused(let id, let code):
            let error = try #require(throws: (any Error).self) { _ = try Request.decode(try Frame(bytes: bytes)) }
            let protocolError: ProtocolError
            switch error {
            case let e as ProtocolError: protocolError = e
            case let e as FrameError: protocolError = e.protocolError
            default: Issue.record("unexpected error \(error)"); return
            }
            #expect(protocolError.code == code)
            #expect(FrameHeader(bytes: bytes)?.requestID == id)
        }
    }

    @Test func everyVectorFileHasAnExpectationAndEveryExpectationAFile() throws {
        let files = Set(try ProtocolFolder.vectorNames())
        let expected = Set(goldenVectors.map(\.file))
        #expect(files.subtracting(expected).isEmpty, "vectors without an expectation: \(files.subtracting(expected).sorted())")
        #expect(expected.subtracting(files).isEmpty, "expectations without a vector: \(expected.subtracting(files).sorted())")
    }

    @Test func vectorsCoverEveryRequestEveryReplyAndSeveralErrors() {
        var types: Set<MessageType> = []
        var errorCodes: Set<ProtocolErrorCode> = []
        for vector in goldenVectors {
            switch vector.content {
            case .request(_, let r): types.insert(r.type)
            case .response(_, let r):
                types.insert(r.type)
                if case .error(let e) = r { errorCodes.insert(e.code) }
            case .refused(_, let code): errorCodes.insert(code)
            }
        }
        let all = Set(MessageType.allRequests + MessageType.allReplies)
        #expect(all.subtracting(types).isEmpty, "no vector for \(all.subtracting(types).map(\.name).sorted())")
        #expect(errorCodes.count >= 8)
    }

    @Test func everyTypeThatTakesAFileDescriptorHasAVectorCarryingOne() {
        var carrying: Set<MessageType> = []
        for vector in goldenVectors {
            if case .request(_, let r) = vector.content, r.flags.contains(.fileDescriptorAttached) { carrying.insert(r.type) }
        }
        let takers = Set(MessageType.allRequests.filter(\.takesFileDescriptor))
        #expect(takers == [.attachViommu, .setDeviceID, .resumeVSMMU, .mapQueue, .mapEventQueue])
        #expect(carrying == takers)
    }

    @Test func eachVectorHoldsExactlyOneFrame() throws {
        for name in try ProtocolFolder.vectorNames() where !name.hasPrefix("bad-frame-too-large") {
            let bytes = try ProtocolFolder.vectorBytes(name)
            let header = try #require(FrameHeader(bytes: bytes), "\(name) is shorter than a header")
            #expect(bytes.count == header.frameLength, "\(name)")
        }
    }
}

/// Protocol version 3's resume token and the CREATE_VSMMU reply's two lengths.
@Suite struct ResumeTokenWireTests {
    @Test func aTokenMatchesOnlyItsOwnSixteenBytes() throws {
        let token = vectorResumeToken
        #expect(token.matches(vectorResumeToken.bytes))
        var other = token.bytes
        other[15] ^= 1
        #expect(!token.matches(other))
        other = token.bytes
        other[0] ^= 0x80
        #expect(!token.matches(other))
        #expect(!token.matches(Array(token.bytes.prefix(15))))
        #expect(ResumeToken(bytes: Array(repeating: 0, count: 15)) == nil)
    }

    @Test func aTokenNeverPrintsItsSecret() {
        let text = "\(vectorResumeToken) \(String(reflecting: vectorResumeToken))"
        #expect(!text.lowercased().contains("1011") && !text.contains("[16, 17"))
    }

    @Test func aCreateKeyNeverPrintsItsSecret() {
        let text = "\(vectorCreateKey) \(String(reflecting: vectorCreateKey)) \(CreateVSMMU(name: "vm", createKey: vectorCreateKey))"
        #expect(!text.lowercased().contains("2021") && !text.contains("[32, 33"))
    }

    @Test func createWithTheKeyFlagIsEightyEightBytesAndAKeylessOneSeventyTwo() throws {
        let keyed = try Request.createVSMMU(CreateVSMMU(name: "vm42", createKey: vectorCreateKey)).encode(requestID: 2)
        #expect(keyed.count == FrameHeader.byteCount + 88)
        // The key flag with the keyless length: BAD_PAYLOAD_LENGTH (§2.2 step 3, before the flags).
        var short = try Request.createVSMMU(CreateVSMMU(name: "vm42")).encode(requestID: 2)
        short[FrameHeader.byteCount] = 1
        #expect(throws: ProtocolError.badPayloadLength(.createVSMMU, expected: 88, actual: 72)) { try Request.decode(bytes: short) }
        // A keyless CREATE of 88 bytes: BAD_PAYLOAD_LENGTH expecting 72.
        var long = keyed
        long[FrameHeader.byteCount] = 0
        #expect(throws: ProtocolError.badPayloadLength(.createVSMMU, expected: 72, actual: 88)) { try Request.decode(bytes: long) }
        // An undefined flag bit: BAD_FIELD at offset 0.
        var undefined = keyed
        undefined[FrameHeader.byteCount] = 3
        let refusal = #expect(throws: ProtocolError.self) { try Request.decode(bytes: undefined) }
        #expect(refusal?.code == .badField && refusal?.detail == 0 && refusal?.value == 3, "\(String(describing: refusal))")
    }

    @Test func createReplyIsEightBytesWithoutATokenAndTwentyFourWithOne() throws {
        let old = try Response.createVSMMU(VSMMUCreated(vsmmu: vsmmu7)).encode(requestID: 2)
        #expect(old.count == FrameHeader.byteCount + 8)
        let new = try Response.createVSMMU(VSMMUCreated(vsmmu: vsmmu7, resumeToken: vectorResumeToken)).encode(requestID: 2)
        #expect(new.count == FrameHeader.byteCount + 24)
        #expect(try Response.decode(bytes: old).response == .createVSMMU(VSMMUCreated(vsmmu: vsmmu7)))
        #expect(try Response.decode(bytes: new).response == .createVSMMU(VSMMUCreated(vsmmu: vsmmu7, resumeToken: vectorResumeToken)))
        // Any other length is refused.
        var bad = new
        bad.removeLast(8)
        bad[0] = 16
        #expect(throws: ProtocolError.self) { try Response.decode(bytes: bad) }
    }

    @Test func resumeIsAVersionThreeRequestThatMayCarryTheIOMMUFD() throws {
        #expect(MessageType.resumeVSMMU.introducedInVersion == 3)
        #expect(MessageType.resumeVSMMU.takesFileDescriptor)
        #expect(WireProtocol.supportedVersions.contains(3))
        let withFD = Request.resumeVSMMU(ResumeVSMMU(vsmmu: vsmmu7, resumeToken: vectorResumeToken, fileDescriptorAttached: true))
        let decoded = try Request.decode(bytes: try withFD.encode(requestID: 9))
        #expect(decoded.request == withFD)
    }
}
