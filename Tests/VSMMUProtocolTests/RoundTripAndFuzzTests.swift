import SMMUv3
import Testing
@testable import VSMMUProtocol

/// Random messages for round-trip tests, from a seeded generator.
struct MessageGenerator {
    var rng: SplitMix64

    mutating func u16() -> UInt16 { UInt16.random(in: .min ... .max, using: &rng) }
    mutating func u32() -> UInt32 { UInt32.random(in: .min ... .max, using: &rng) }
    mutating func u64() -> UInt64 { rng.next() }
    mutating func id() -> VSMMUID { VSMMUID(UInt32.random(in: 1...UInt32.max, using: &rng)) }
    mutating func optionalID() -> VSMMUID? { Bool.random(using: &rng) ? nil : id() }
    mutating func count(_ limit: Int) -> Int { Int.random(in: 0...limit, using: &rng) }

    /// A name of 0-64 UTF-8 bytes without NUL, mixing 1-, 2-, 3- and 4-byte scalars.
    mutating func name(nonEmpty: Bool = false) -> String {
        let alphabet: [Character] = ["a", "Z", "0", "-", " ", "é", "ß", "€", "漢", "🙂"]
        var s = ""
        let target = count(20) + (nonEmpty ? 1 : 0)
        for _ in 0..<target {
            let c = alphabet[count(alphabet.count - 1)]
            if s.utf8.count + String(c).utf8.count > 64 { break }
            s.append(c)
        }
        return nonEmpty && s.isEmpty ? "p" : s
    }

    mutating func message() -> String { (0..<count(8)).map { _ in name() }.joined(separator: " ") }

    mutating func ste() -> StreamTableEntry {
        var s = StreamTableEntry()
        for i in 0..<8 { s.setWord(i, u64()) }
        return s
    }

    mutating func cd() -> ContextDescriptor {
        var c = ContextDescriptor()
        for i in 0..<8 { c.setWord(i, u64()) }
        return c
    }

    mutating func request() -> Request {
        switch count(17) {
        case 15: return .mapEventQueue(MapEventQueue(vsmmu: id(), log2Entries: UInt32.random(in: 4...12, using: &rng)))
        case 16: return .unmapEventQueue(UnmapEventQueue(vsmmu: id()))
        case 17:
            return .simulateDMA(SimulateDMA(vsmmu: id(), streamID: u32(),
                                            substreamID: Bool.random(using: &rng) ? nil : UInt32.random(in: 0..<(1 << 20), using: &rng),
                                            write: Bool.random(using: &rng), throughATS: Bool.random(using: &rng), address: u64(),
                                            size: 4096 << UInt64(count(40)), walk: DMAWalk.allCases[count(4)]))
        case 0: return .hello(Hello(versions: UInt16.random(in: 1...3, using: &rng)...UInt16.random(in: 3...9, using: &rng),
                                    processID: u32(), clientName: name()))
        case 1: return .createVSMMU(CreateVSMMU(name: name(), createKey: Bool.random(using: &rng) ? CreateKey.random() : nil))
        case 2: return .destroyVSMMU(DestroyVSMMU(vsmmu: id()))
        case 3: return .attachViommu(AttachViommu(vsmmu: id(), pSMMU: name(nonEmpty: true), hostDeviceID: u32(),
                                                  nestParentHWPT: u32(), fileDescriptorAttached: Bool.random(using: &rng)))
        case 4: return .detachViommu(DetachViommu(vsmmu: id(), viommu: u32()))
        case 5: return .setDeviceID(DeviceRegistration(vsmmu: id(), viommu: u32(), hostDeviceID: u32(), streamID: u32(),
                                                       fileDescriptorAttached: Bool.random(using: &rng)))
        case 6: return .unsetDeviceID(DeviceRegistration(vsmmu: id(), viommu: u32(), hostDeviceID: u32(), streamID: u32()))
        case 7: return .linkSTE(LinkSTE(vsmmu: id(), streamID: u32(), ste: ste(), contextDescriptors: (0..<count(40)).map { _ in cd() }))
        case 8: return .unlinkSTE(UnlinkSTE(vsmmu: id(), streamID: u32()))
        case 9: return .updateCD(UpdateCD(vsmmu: id(), streamID: u32(), substreamID: u32(), contextDescriptor: cd()))
        case 10: return .invalidate(Invalidate(vsmmu: id(), commands: (0..<count(300)).map { _ in Command(w0: u64(), w1: u64()) }))
        case 11: return .stats(StatsRequest(vsmmu: optionalID()))
        case 12: return .list(ListRequest(kind: ListKind.all[count(4)], vsmmu: optionalID(), start: u32(), maximumEntries: u32()))
        case 13: return .getHWInfo(GetHardwareInfo(vsmmu: id()))
        default: return .health
        }
    }

    mutating func response() -> Response {
        switch count(18) {
        case 16: return .mapEventQueue(EventQueueMapped(producer: u32()))
        case 17: return .unmapEventQueue
        case 18:
            let outcomes: [SimulatedDMAOutcome] = [.atcHit, .tlbHit, .tlbFill, .bypassed, .aborted,
                                                   .fault(EventRecord(w0: u64(), w1: u64(), w2: u64(), w3: u64()))]
            return .simulateDMA(DMASimulated(outcome: outcomes[count(5)]))
        case 0:
            let frame = UInt32.random(in: UInt32(WireProtocol.minimumFrameSizeLimit)...UInt32(WireProtocol.maximumFrameSize), using: &rng)
            let limits = ServerLimits(maximumFrameSize: frame,
                                      maximumCommandsPerInvalidate: UInt32(count(WireProtocol.maximumCommands(frameSize: Int(frame)))),
                                      maximumVSMMUs: u32(), maximumViommus: u32(), maximumContextDescriptors: u32())
            return .hello(HelloReply(version: UInt16.random(in: 1...9, using: &rng), limits: limits, serverProcessID: u32(), serverName: name()))
        case 1: return .createVSMMU(VSMMUCreated(vsmmu: id()))
        case 2: return .attachViommu(ViommuAttached(viommu: UInt32(count(63)), backendViommuID: u32()))
        case 3:
            let hwpt: UInt32? = Bool.random(using: &rng) ? nil : UInt32.random(in: 1...UInt32.max, using: &rng)
            return .linkSTE(HWPTLinked(s1HWPT: hwpt, isNew: hwpt != nil && Bool.random(using: &rng)))
        case 4: return .updateCD(HWPTLinked(s1HWPT: UInt32.random(in: 1...9, using: &rng), isNew: Bool.random(using: &rng)))
        case 5:
            let failure: InvalidateReply.Failure? = Bool.random(using: &rng) ? nil
                : .init(index: UInt32.random(in: 0...1000, using: &rng),
                        queueError: CommandQueueError(rawValue: UInt8.random(in: 1...3, using: &rng)), message: message())
            return .invalidate(InvalidateReply(consumed: u32(), syncsCompleted: u32(), failure: failure))
        case 6:
            return .stats(StatsReply(entries: (0..<count(50)).map { _ in
                StatEntry(vsmmu: optionalID(), viommu: Bool.random(using: &rng) ? nil : UInt16(count(0xFFFE)),
                          key: StatKey(rawValue: u16()), value: u64())
            }))
        case 7:
            let entries: ListEntries
            switch count(4) {
            case 0: entries = .vsmmus((0..<count(5)).map { _ in
                VSMMUListEntry(vsmmu: id(), ownerProcessID: u32(), ownerUserID: u32(), viommuCount: u32(), deviceCount: u32(),
                               hwptCount: u32(), asidCount: u32(), name: name()) })
            case 1: entries = .viommus((0..<count(5)).map { _ in
                ViommuListEntry(vsmmu: id(), viommu: u32(), backendViommuID: u32(), deviceCount: u32(), pSMMU: name()) })
            case 2: entries = .devices((0..<count(5)).map { _ in
                DeviceListEntry(vsmmu: id(), streamID: u32(), viommu: u32(), hostDeviceID: u32(),
                                s1HWPT: Bool.random(using: &rng) ? nil : UInt32.random(in: 1...9, using: &rng),
                                steLinked: Bool.random(using: &rng)) })
            case 3: entries = .hwpts((0..<count(5)).map { _ in
                HWPTListEntry(vsmmu: id(), s1HWPT: u32(), streamID: u32(), viommu: u32(), backendHWPTID: u32(), asidCount: u32()) })
            default: entries = .asids((0..<count(5)).map { _ in
                ASIDListEntry(vsmmu: id(), asid: u16(), hwptCount: u16(), targetMask: u64(), retiringMask: u64()) })
            }
            return .list(ListReply(entries: entries, total: u32(), start: u32()))
        case 8:
            return .health(HealthReply(status: HealthStatus(rawValue: UInt32(count(2))), connectionCount: u32(), vsmmuCount: u32(),
                                       uptimeNanoseconds: u64(), serverProcessID: u32(),
                                       pSMMUs: (0..<count(4)).map { _ in
                                           PSMMUHealth(name: name(), status: PSMMUStatus(rawValue: UInt32(count(1))),
                                                       backend: BackendKind(rawValue: UInt32(1 + count(1))), viommuCount: u32())
                                       }))
        case 9:
            let codes = ProtocolErrorCode.allDefined
            return .error(ProtocolError(code: codes[count(codes.count - 1)], requestType: MessageType(rawValue: u16()),
                                        detail: u32(), value: u64(), message: message()))
        case 10: return .destroyVSMMU
        case 11: return .detachViommu
        case 12: return .setDeviceID
        case 13: return .unsetDeviceID
        case 14:
            return .getHWInfo(HardwareInfo(viommuCount: UInt32.random(in: 1...UInt32(WireProtocol.maximumViommus), using: &rng),
                                           registers: IDRegisters(idr: (0..<6).map { _ in u32() }, iidr: u32(), aidr: u32())))
        default: return .unlinkSTE
        }
    }
}

@Suite("Round trips and fuzzing")
struct RoundTripAndFuzzTests {
    @Test func randomRequestsSurviveEncodeAndDecode() throws {
        var gen = MessageGenerator(rng: SplitMix64(seed: 0xA11CE))
        for _ in 0..<3000 {
            let request = gen.request()
            let id = gen.u64()
            let bytes = try request.encode(requestID: id)
            let frame = try Frame(bytes: bytes)
            #expect(frame.header.requestID == id)
            #expect(frame.header.flags == request.flags)
            #expect(try Request.decode(frame) == request)
        }
    }

    @Test func randomResponsesSurviveEncodeAndDecode() throws {
        var gen = MessageGenerator(rng: SplitMix64(seed: 0xB0B))
        for _ in 0..<3000 {
            let response = gen.response()
            #expect(try response.roundTripped(requestID: gen.u64()) == response)
        }
    }

    @Test func encodeIntoAppendsAfterExistingBytes() throws {
        var buffer: [UInt8] = [0xEE]
        try Request.health.encode(requestID: 1, into: &buffer)
        try Request.invalidate(Invalidate(vsmmu: vsmmu7, commands: vectorCommands)).encode(requestID: 8, into: &buffer)
        #expect(buffer.first == 0xEE)
        #expect(Array(buffer[17...]) == (try ProtocolFolder.vectorBytes("invalidate.hex")))
    }

    /// Feeds `bytes` to a decoder in chunks and decodes every frame both as a request and as a reply.
    /// Whatever a decode accepts must re-encode to exactly the bytes it came from: the codec is strict
    /// (reserved fields zero, names canonical), so the wire form of a message is unique.
    private func exercise(_ bytes: [UInt8], chunk: Int, maximumFrameSize: Int = 1 << 16) -> Int {
        var decoder = FrameDecoder(maximumFrameSize: maximumFrameSize)
        var accepted = 0
        var position = 0
        while position < bytes.count {
            let end = min(bytes.count, position + chunk)
            decoder.feed(bytes[position..<end])
            position = end
            do throws(FrameError) {
                while let frame = try decoder.nextFrame() {
                    let original = frame.bytes
                    if let request = try? Request.decode(frame, handshakeCompleted: frame.header.requestID & 1 == 0) {
                        accepted += 1
                        #expect((try? request.encode(requestID: frame.header.requestID)) == original)
                    }
                    if let response = try? Response.decode(frame) {
                        accepted += 1
                        #expect((try? response.encode(requestID: frame.header.requestID)) == original)
                    }
                }
            } catch {
                #expect(error.closesConnection)
                return accepted
            }
        }
        if decoder.bufferedByteCount > 0 { #expect(throws: FrameError.self) { try decoder.finish() } }
        return accepted
    }

    @Test func hundredThousandRandomInputsNeverTrap() {
        var rng = SplitMix64(seed: 0xF022)
        for _ in 0..<100_000 {
            let count = Int.random(in: 0...96, using: &rng)
            var bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
            // Half of the inputs get a plausible header so that the message decoders are reached.
            if bytes.count >= 16 && Bool.random(using: &rng) {
                let all = MessageType.allRequests + MessageType.allReplies
                let type = all[Int.random(in: 0..<all.count, using: &rng)].rawValue
                let length = UInt32(bytes.count - 16)
                bytes.replaceSubrange(0..<8, with: le(length) + le(type) + le(UInt16(rng.next() & 1)))
            }
            _ = exercise(bytes, chunk: Int.random(in: 1...100, using: &rng))
        }
    }

    @Test func mutatedGoldenVectorsNeverTrapAndWhatDecodesReencodesExactly() throws {
        var rng = SplitMix64(seed: 0x0DDBA11)
        var vectors: [[UInt8]] = []
        for name in try ProtocolFolder.vectorNames() { vectors.append(try ProtocolFolder.vectorBytes(name)) }
        var accepted = 0
        for _ in 0..<20_000 {
            var bytes = vectors[Int.random(in: 0..<vectors.count, using: &rng)]
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                switch Int.random(in: 0...3, using: &rng) {
                case 0 where !bytes.isEmpty: // flip a bit
                    let i = Int.random(in: 0..<bytes.count, using: &rng)
                    bytes[i] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng)
                case 1 where !bytes.isEmpty: // set a byte
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                case 2: // truncate
                    bytes.removeLast(Int.random(in: 0...min(8, bytes.count), using: &rng))
                default: // extend
                    bytes += (0..<Int.random(in: 0...8, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                }
            }
            accepted += exercise(bytes, chunk: Int.random(in: 1...300, using: &rng), maximumFrameSize: 1 << 20)
        }
        // The mutations must leave a fair share decodable, or this test checks nothing about re-encoding.
        #expect(accepted > 1000)
    }
}
