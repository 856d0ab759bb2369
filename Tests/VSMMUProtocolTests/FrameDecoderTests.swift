import SMMUv3
import Testing
@testable import VSMMUProtocol

/// A stream of several different frames, as a VMM would send them back to back.
private func sampleStream() throws -> (bytes: [UInt8], frames: [Frame]) {
    let requests: [Request] = [
        .hello(Hello(processID: 1, clientName: "vmm")),
        .createVSMMU(CreateVSMMU(name: "vm")),
        .health,
        .invalidate(Invalidate(vsmmu: VSMMUID(1), commands: (0..<300).map { Command.tlbiNHASID(asid: UInt16($0)) } + [.sync()])),
        .linkSTE(LinkSTE(vsmmu: VSMMUID(1), streamID: 9, ste: StreamTableEntry(w0: 0xB), contextDescriptors: [cd42])),
        .unlinkSTE(UnlinkSTE(vsmmu: VSMMUID(1), streamID: 9)),
    ]
    var bytes: [UInt8] = []
    var frames: [Frame] = []
    for (i, request) in requests.enumerated() {
        let encoded = try request.encode(requestID: UInt64(100 + i))
        frames.append(try Frame(bytes: encoded))
        bytes += encoded
    }
    return (bytes, frames)
}

@Suite("FrameDecoder")
struct FrameDecoderTests {
    @Test func framesSplitAtRandomPointsComeOutWhole() throws {
        let (stream, expected) = try sampleStream()
        var rng = SplitMix64(seed: 0x5EED_0001)
        for _ in 0..<500 {
            var decoder = FrameDecoder()
            var got: [Frame] = []
            var position = 0
            while position < stream.count {
                // Chunks from 1 byte to several frames, as a stream socket may deliver them.
                let size = Int.random(in: 1...(Bool.random(using: &rng) ? 24 : 6000), using: &rng)
                let end = min(stream.count, position + size)
                decoder.feed(stream[position..<end])
                position = end
                while let frame = try decoder.nextFrame() { got.append(frame) }
            }
            #expect(got == expected)
            #expect(decoder.bufferedByteCount == 0)
            try decoder.finish()
        }
    }

    @Test func oneByteAtATimeYieldsEachFrameExactlyWhenItsLastByteArrives() throws {
        let (stream, expected) = try sampleStream()
        var decoder = FrameDecoder()
        var got: [Frame] = []
        var boundaries: [Int] = []
        for (i, byte) in stream.enumerated() {
            decoder.feed(CollectionOfOne(byte))
            if let frame = try decoder.nextFrame() {
                got.append(frame)
                boundaries.append(i + 1)
                #expect(try decoder.nextFrame() == nil)
            }
        }
        #expect(got == expected)
        var end = 0
        #expect(boundaries == expected.map { end += $0.header.frameLength; return end })
    }

    @Test func severalFramesInOneChunkAllComeOut() throws {
        let (stream, expected) = try sampleStream()
        var decoder = FrameDecoder()
        stream.withUnsafeBytes { decoder.feed($0) }
        var got: [Frame] = []
        while let frame = try decoder.nextFrame() { got.append(frame) }
        #expect(got == expected)
    }

    @Test func headerOverTheLimitIsReportedBeforeItsPayloadArrivesAndStaysReported() throws {
        var decoder = FrameDecoder(maximumFrameSize: 4096)
        // A header announcing 4081 bytes of payload: 16 + 4081 = 4097 > 4096.
        decoder.feed(rawFrame(type: 0x20, requestID: 77, payload: [], payloadLength: 4081))
        let error = try #require(throws: FrameError.self) { try decoder.nextFrame() }
        guard case .frameTooLarge(let header, let limit) = error else {
            Issue.record("expected frameTooLarge, got \(error)")
            return
        }
        #expect(header.requestID == 77)
        #expect(header.frameLength == 4097)
        #expect(limit == 4096)
        #expect(error.protocolError.code == .frameTooLarge)
        #expect(error.protocolError.detail == 4096)
        #expect(error.protocolError.value == 4097)
        #expect(error.closesConnection)
        // Sticky: more input changes nothing; the stream cannot be resynchronised.
        decoder.feed(try Request.health.encode(requestID: 1))
        #expect(throws: FrameError.frameTooLarge(header, limit: 4096)) { try decoder.nextFrame() }
        #expect(throws: FrameError.frameTooLarge(header, limit: 4096)) { try decoder.finish() }
    }

    @Test func frameExactlyAtTheLimitIsAccepted() throws {
        var decoder = FrameDecoder(maximumFrameSize: 4096)
        decoder.feed(rawFrame(type: 0x42, payload: [UInt8](repeating: 0xAB, count: 4080)))
        let frame = try #require(try decoder.nextFrame())
        #expect(frame.header.frameLength == 4096)
    }

    @Test func defaultLimitIsOneMebibyte() throws {
        var decoder = FrameDecoder()
        #expect(decoder.maximumFrameSize == 1 << 20)
        decoder.feed(rawFrame(type: 0x20, payload: [], payloadLength: UInt32((1 << 20) - 16 + 1)))
        #expect(throws: FrameError.self) { try decoder.nextFrame() }
    }

    @Test func streamEndingInsideAFrameIsTruncated() throws {
        let bytes = try Request.stats(StatsRequest(vsmmu: VSMMUID(3))).encode(requestID: 9)
        for cut in 1..<bytes.count {
            var decoder = FrameDecoder()
            decoder.feed(bytes[..<cut])
            #expect(try decoder.nextFrame() == nil)
            let error = try #require(throws: FrameError.self) { try decoder.finish() }
            let expectedHeader = cut >= 16 ? FrameHeader(bytes: bytes) : nil
            #expect(error == .truncated(header: expectedHeader, received: cut))
            let reply = error.protocolError
            #expect(reply.code == .truncatedFrame)
            #expect(reply.detail == (cut >= 16 ? 24 : 16))
            #expect(reply.value == UInt64(cut))
            #expect(reply.closesConnection)
        }
    }

    @Test func streamEndingBetweenFramesIsClean() throws {
        var decoder = FrameDecoder()
        try decoder.finish() // nothing arrived at all
        decoder.feed(try Request.health.encode(requestID: 1))
        #expect(try decoder.nextFrame() != nil)
        #expect(try decoder.nextFrame() == nil)
        try decoder.finish()
    }

    @Test func pendingHeaderIsVisibleOnceSixteenBytesArrived() throws {
        let bytes = try Request.destroyVSMMU(DestroyVSMMU(vsmmu: VSMMUID(5))).encode(requestID: 0xABCD)
        var decoder = FrameDecoder()
        decoder.feed(bytes[..<15])
        #expect(decoder.pendingHeader == nil)
        decoder.feed(bytes[15..<16])
        #expect(decoder.pendingHeader == FrameHeader(payloadLength: 8, type: .destroyVSMMU, requestID: 0xABCD))
        #expect(try decoder.nextFrame() == nil)
        decoder.feed(bytes[16...])
        #expect(try decoder.nextFrame()?.header.requestID == 0xABCD)
    }

    @Test func bufferDoesNotGrowWithTheNumberOfFramesDecoded() throws {
        let one = try Request.invalidate(Invalidate(vsmmu: VSMMUID(1), commands: [.sync()])).encode(requestID: 1)
        var decoder = FrameDecoder()
        for _ in 0..<10_000 {
            decoder.feed(one + one[..<7]) // a frame and the start of the next
            while try decoder.nextFrame() != nil {}
            decoder.feed(one[7...])
            while try decoder.nextFrame() != nil {}
            #expect(decoder.bufferedByteCount == 0)
        }
    }

    @Test func wholeFrameBytesDecodeToTheirIDAndMessageOrOneTypedError() throws {
        let request = Request.unlinkSTE(UnlinkSTE(vsmmu: vsmmu7, streamID: 0x100))
        let decoded = try Request.decode(bytes: try request.encode(requestID: 27))
        #expect(decoded.requestID == 27)
        #expect(decoded.request == request)
        let reply = try Response.decode(bytes: try ProtocolFolder.vectorBytes("invalidate-reply.hex"))
        #expect(reply.requestID == 8)
        #expect(reply.response == .invalidate(InvalidateReply(consumed: 3, syncsCompleted: 1)))
        let tooLarge = try #require(throws: ProtocolError.self) {
            _ = try Request.decode(bytes: try ProtocolFolder.vectorBytes("bad-frame-too-large.hex"))
        }
        #expect(tooLarge.code == .frameTooLarge)
        let truncated = try #require(throws: ProtocolError.self) { _ = try Response.decode(bytes: [0x10, 0, 0]) }
        #expect(truncated.code == .truncatedFrame)
    }

    @Test func errorReplyFrameOfAFrameErrorCarriesTheOffendingRequestID() throws {
        var decoder = FrameDecoder(maximumFrameSize: 1 << 16)
        decoder.feed(rawFrame(type: 0x20, requestID: 4711, payload: [], payloadLength: 1 << 16))
        let error = try #require(throws: FrameError.self) { try decoder.nextFrame() }
        #expect(error.requestID == 4711)
        let reply = try Response.decode(bytes: error.replyFrame())
        #expect(reply.requestID == 4711)
        guard case .error(let e) = reply.response else {
            Issue.record("not an ERROR")
            return
        }
        #expect(e.code == .frameTooLarge)
        #expect(e.requestType == .invalidate)
    }

    @Test func frameFromBytesRefusesTrailingBytes() throws {
        let bytes = try Request.health.encode(requestID: 1)
        #expect(throws: FrameError.trailingBytes(count: 3)) { try Frame(bytes: bytes + [1, 2, 3]) }
        #expect(throws: FrameError.truncated(header: nil, received: 3)) { try Frame(bytes: [1, 2, 3]) }
    }
}

@Suite struct InvalidateFastPathTests {
    /// Takes the next frame through the fast path, as the daemon's connection does.
    private func fastPath(_ decoder: inout FrameDecoder, into commands: inout [Command]) -> (FrameHeader, VSMMUID)? {
        var vsmmu: VSMMUID?
        let header = decoder.takeFrame(ofType: .invalidate) { _, payload in
            vsmmu = Invalidate.decodeCommands(payload: payload, into: &commands)
            return vsmmu != nil
        }
        guard let header, let vsmmu else { return nil }
        return (header, vsmmu)
    }

    @Test func wellFormedInvalidatesDecodeFromTheBufferExactlyAsRequestDecodeDoes() throws {
        let batches: [[Command]] = [
            [], [.sync()],
            (0..<64).map { Command.tlbiNHVA(asid: UInt16($0 % 3 + 1), address: UInt64($0) << 12) } + [.sync()],
        ]
        var decoder = FrameDecoder()
        for (i, batch) in batches.enumerated() {
            decoder.feed(try Request.invalidate(Invalidate(vsmmu: VSMMUID(UInt32(7 + i)), commands: batch)).encode(requestID: UInt64(i)))
        }
        var commands: [Command] = [.tlbiNHAll()] // replaced, not appended to
        for (i, batch) in batches.enumerated() {
            let taken = try #require(fastPath(&decoder, into: &commands))
            #expect(taken.0.requestID == UInt64(i))
            #expect(taken.1 == VSMMUID(UInt32(7 + i)))
            #expect(commands == batch)
        }
        #expect(decoder.bufferedByteCount == 0)
    }

    @Test func malformedOrOtherFramesAreLeftForTheGeneralPathThatAnswersTheirError() throws {
        let good = try Request.invalidate(Invalidate(vsmmu: VSMMUID(1), commands: [.sync()])).encode(requestID: 5)
        var variants: [[UInt8]] = []
        var flagged = good; flagged[FrameHeader.byteCount + 8] = 1 // INVALIDATE flags
        var reserved = good; reserved[FrameHeader.byteCount + 12] = 1
        var wrongCount = good; wrongCount[FrameHeader.byteCount + 4] = 2 // says 2 commands, carries 1
        var frameFlags = good; frameFlags[6] = 1 // FD_ATTACHED on the frame header
        variants += [flagged, reserved, wrongCount, frameFlags, Array(good.dropLast()),
                     try Request.health.encode(requestID: 6)]
        for bytes in variants {
            var decoder = FrameDecoder()
            decoder.feed(bytes)
            var commands: [Command] = []
            #expect(fastPath(&decoder, into: &commands) == nil)
            // Nothing was consumed: the general path sees the whole frame (or waits for the rest of it).
            #expect(decoder.bufferedByteCount == bytes.count)
        }
    }
}
