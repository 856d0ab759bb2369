import SMMUv3
import VSMMUProtocol
import VSMMUTestSupport

/// Inputs for ``HostileInput/execute(_:on:credentials:)``, drawn from a fixed seed: a connection's worth
/// of frames, most of them a valid session (HELLO, CREATE_VSMMU, viommus, devices, STEs, INVALIDATEs
/// naming the connection's own vSMMUs through ``HostileInput/placeholderBase``) into which every kind of
/// bad frame is mixed: mutated valid frames (bit flips, overwritten bytes, a header field replaced),
/// wrong payload lengths, random frames, unknown types, reserved flags, FD_ATTACHED without an fd, huge
/// lengths, and a stream cut inside a frame. Used by the CI test and as the fuzz target's seed corpus.
package struct HostileInputGenerator {
    private var random: SplitMix64
    private var requestID: UInt64 = 1

    /// How many frames the inputs drawn so far hold.
    package private(set) var framesGenerated = 0

    package init(seed: UInt64) { random = SplitMix64(seed: seed) }

    /// The next input: `1 ... maximumFrames` frames after the opening ones.
    package mutating func next(maximumFrames: Int = 24) -> [UInt8] {
        var bytes: [UInt8] = []
        if chance(90) { append(.hello(Hello(versions: 1...3, processID: 1, clientName: "hostile")), to: &bytes) }
        if chance(85) { append(.createVSMMU(CreateVSMMU(name: "vm")), to: &bytes) }
        for _ in 0..<(1 + random.next(maximumFrames)) {
            let roll = random.next(100)
            switch roll {
            case 0..<52: append(validRequest(), to: &bytes)
            case 52..<70: appendMutated(validRequest(), to: &bytes)
            case 70..<78: appendWrongLength(validRequest(), to: &bytes)
            case 78..<88: appendRandomFrame(to: &bytes)
            case 88..<92: appendHeaderOnly(type: UInt16(truncatingIfNeeded: random.next()), flags: 0, to: &bytes)
            case 92..<96: appendFlagged(validRequest(), to: &bytes)
            case 96..<98:  // huge or over-limit length: fatal, the daemon answers and closes
                let length: UInt32 = chance(50) ? 0xFFFF_FFFF : UInt32(WireProtocol.maximumFrameSize) + UInt32(random.next(4096))
                appendHeader(length: length, type: 0x0020, flags: 0, to: &bytes)
            default:  // the stream ends inside the next frame
                var frame: [UInt8] = []
                append(validRequest(), to: &frame)
                bytes += frame.prefix(random.next(max(1, frame.count)))
                framesGenerated += 1
                return bytes
            }
        }
        return bytes
    }

    // MARK: Frames

    private mutating func validRequest() -> Request {
        let vsmmu = VSMMUID(chance(92) ? HostileInput.placeholderBase + UInt32(random.next(chance(80) ? 1 : 3))
                                        : UInt32(truncatingIfNeeded: random.next()))
        let streamID = StreamID(UInt32(random.next(chance(90) ? 8 : 1 << 20)))
        switch random.next(17) {
        case 0, 1:
            let names = ["smmu0", "smmu1", "", "smmu9", String(repeating: "x", count: 40)]
            return .attachViommu(AttachViommu(vsmmu: vsmmu, pSMMU: names[random.next(names.count)],
                                              hostDeviceID: UInt32(random.next(40)), nestParentHWPT: UInt32(random.next(3))))
        case 2, 3:
            return .setDeviceID(DeviceRegistration(vsmmu: vsmmu, viommu: UInt32(random.next(3)),
                                                   hostDeviceID: UInt32(random.next(40)), streamID: streamID))
        case 4: return .unsetDeviceID(DeviceRegistration(vsmmu: vsmmu, viommu: UInt32(random.next(3)),
                                                         hostDeviceID: UInt32(random.next(40)), streamID: streamID))
        case 5, 6:
            let ste = chance(75) ? StreamTableEntry.stage1(contextTable: 0x4380_4000)
                                 : StreamTableEntry(w0: random.next(), w1: random.next(), w2: random.next(), w3: random.next())
            let cds = (0..<random.next(4)).map { _ in contextDescriptor() }
            return .linkSTE(LinkSTE(vsmmu: vsmmu, streamID: streamID, ste: ste, contextDescriptors: cds))
        case 7: return .unlinkSTE(UnlinkSTE(vsmmu: vsmmu, streamID: streamID))
        case 8: return .updateCD(UpdateCD(vsmmu: vsmmu, streamID: streamID, substreamID: SubstreamID(UInt32(random.next(4))),
                                          contextDescriptor: contextDescriptor()))
        case 9, 10, 11:
            return .invalidate(Invalidate(vsmmu: vsmmu, commands: (0..<random.next(24)).map { _ in command(streamID) }))
        case 12: return chance(50) ? .destroyVSMMU(DestroyVSMMU(vsmmu: vsmmu)) : .detachViommu(DetachViommu(vsmmu: vsmmu, viommu: UInt32(random.next(3))))
        case 13: return .getHWInfo(GetHardwareInfo(vsmmu: vsmmu))
        case 14:
            guard let token = ResumeToken(bytes: randomBytes(16)) else { return .health }
            return .resumeVSMMU(ResumeVSMMU(vsmmu: vsmmu, resumeToken: token))
        case 15:
            if chance(50) { return .stats(StatsRequest(vsmmu: chance(50) ? vsmmu : nil)) }
            return .list(ListRequest(kind: ListKind(rawValue: UInt16(random.next(7))), vsmmu: chance(50) ? vsmmu : nil,
                                     start: UInt32(random.next(3)), maximumEntries: UInt32(random.next(5))))
        default:
            if chance(50) { return .health }
            return chance(50) ? .hello(Hello(versions: 1...3, processID: 2, clientName: "again"))
                              : .createVSMMU(CreateVSMMU(name: "vm2", createKey: CreateKey(bytes: randomBytes(16))))
        }
    }

    private mutating func contextDescriptor() -> ContextDescriptor {
        chance(80) ? .valid(asid: ASID(UInt16(1 + random.next(16))))
                   : ContextDescriptor(w0: random.next(), w1: random.next(), w2: random.next(), w3: random.next())
    }

    private mutating func command(_ streamID: StreamID) -> Command {
        let asid = ASID(UInt16(1 + random.next(16)))
        switch random.next(12) {
        case 0: return .tlbiNHASID(asid: asid)
        case 1: return .tlbiNHVA(asid: asid, address: UInt64(random.next(1 << 20)) << 12)
        case 2: return .tlbiNHAll()
        case 3: return .tlbiNHVAA(address: UInt64(random.next(1 << 20)) << 12)
        case 4: return .cfgiCD(streamID: streamID)
        case 5: return .cfgiCDAll(streamID: streamID)
        case 6: return .atcInv(streamID: streamID)
        case 7: return .cfgiSTE(streamID: streamID)
        case 8: return .tlbiS12VMAll()
        case 9, 10: return Command(w0: 0x46 | (UInt64(random.next(4)) << 12), w1: 0)  // CMD_SYNC, CS any
        default: return Command(w0: random.next(), w1: random.next())
        }
    }

    private mutating func append(_ request: Request, to bytes: inout [UInt8]) {
        requestID &+= 1
        // A request the codec refuses to write (a name too long) goes as it would have been cut.
        do throws(ProtocolError) { try request.encode(requestID: requestID, into: &bytes) } catch {
            appendHeaderOnly(type: request.type.rawValue, flags: 0, to: &bytes)
            return
        }
        framesGenerated += 1
    }

    private mutating func appendMutated(_ request: Request, to bytes: inout [UInt8]) {
        var frame: [UInt8] = []
        append(request, to: &frame)
        framesGenerated -= 1
        let payload = FrameHeader.byteCount..<frame.count
        for _ in 0..<(1 + random.next(4)) {
            switch random.next(4) {
            case 0 where !payload.isEmpty:  // flip a payload bit
                let i = payload.lowerBound + random.next(payload.count)
                frame[i] ^= UInt8(1 << random.next(8))
            case 1 where !payload.isEmpty:  // overwrite a payload byte
                frame[payload.lowerBound + random.next(payload.count)] = UInt8(truncatingIfNeeded: random.next())
            case 2:  // replace the type, keeping the payload
                let type = UInt16(truncatingIfNeeded: MessageType.allRequests[random.next(MessageType.allRequests.count)].rawValue)
                frame[4] = UInt8(type & 0xFF); frame[5] = UInt8(type >> 8)
            default:  // flip a header bit other than the length's
                frame[4 + random.next(12)] ^= UInt8(1 << random.next(8))
            }
        }
        bytes += frame
        framesGenerated += 1
    }

    /// The payload cut or padded, with a header that says so.
    private mutating func appendWrongLength(_ request: Request, to bytes: inout [UInt8]) {
        var frame: [UInt8] = []
        append(request, to: &frame)
        framesGenerated -= 1
        var payload = Array(frame[FrameHeader.byteCount...])
        if chance(50) && !payload.isEmpty { payload.removeLast(1 + random.next(payload.count)) } else { payload += randomBytes(1 + random.next(40)) }
        appendHeader(length: UInt32(payload.count), type: UInt16(frame[4]) | UInt16(frame[5]) << 8, flags: 0, to: &bytes)
        bytes += payload
    }

    /// A valid request with reserved header flags, or FD_ATTACHED and no fd.
    private mutating func appendFlagged(_ request: Request, to bytes: inout [UInt8]) {
        var frame: [UInt8] = []
        append(request, to: &frame)
        frame[6] |= chance(50) ? 0x01 : UInt8(1 << (1 + random.next(7)))
        bytes += frame
    }

    private mutating func appendRandomFrame(to bytes: inout [UInt8]) {
        let payload = randomBytes(random.next(chance(80) ? 96 : 600))
        let type = chance(70) ? MessageType.allRequests[random.next(MessageType.allRequests.count)].rawValue
                              : UInt16(truncatingIfNeeded: random.next())
        appendHeader(length: UInt32(payload.count), type: type, flags: UInt16(truncatingIfNeeded: random.next()) & (chance(80) ? 0 : 0xFFFF), to: &bytes)
        bytes += payload
    }

    private mutating func appendHeaderOnly(type: UInt16, flags: UInt16, to bytes: inout [UInt8]) {
        appendHeader(length: 0, type: type, flags: flags, to: &bytes)
    }

    private mutating func appendHeader(length: UInt32, type: UInt16, flags: UInt16, to bytes: inout [UInt8]) {
        requestID &+= 1
        FrameHeader(payloadLength: length, type: MessageType(rawValue: type), flags: FrameFlags(rawValue: flags),
                    requestID: requestID).encode(into: &bytes)
        framesGenerated += 1
    }

    private mutating func randomBytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
    }

    private mutating func chance(_ percent: Int) -> Bool { random.next(100) < percent }
}
