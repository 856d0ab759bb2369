import Foundation
import SMMUv3
import Testing
@testable import VSMMUProtocol

/// Protocol version 5: MAP_EVENT_QUEUE, UNMAP_EVENT_QUEUE, SIMULATE_DMA and the event queue's memory
/// (PROTOCOL.md §5.17, §5.18, §6.4, §9): each refusal with its exact error, the C header's constants and
/// offsets, and the memory vectors read through ``EventQueueLayout``.
@Suite struct EventQueueProtocolTests {
    // MARK: Message types and versions

    @Test func theEventRequestsAreVersionFiveAndOnlyMapEventQueueCarriesTwoDescriptors() {
        for type in [MessageType.mapEventQueue, .unmapEventQueue, .simulateDMA] {
            #expect(type.introducedInVersion == 5, "\(type)")
            #expect(type.isKnownRequest && type.reply.isKnownReply)
        }
        #expect(MessageType.mapEventQueue.rawValue == 0x001D && MessageType.unmapEventQueue.rawValue == 0x001E)
        #expect(MessageType.simulateDMA.rawValue == 0x0043)
        #expect(MessageType.mapEventQueue.takesFileDescriptor && MessageType.mapEventQueue.fileDescriptorCount == 2)
        #expect(!MessageType.unmapEventQueue.takesFileDescriptor && MessageType.unmapEventQueue.fileDescriptorCount == 0)
        #expect(!MessageType.simulateDMA.takesFileDescriptor)
        #expect(MessageType.mapQueue.fileDescriptorCount == 3)
        #expect(Request.mapEventQueue(MapEventQueue(vsmmu: vsmmu7, log2Entries: 6)).flags == .fileDescriptorAttached)
        #expect(MessageType.mapEventQueue.reply.name == "MAP_EVENT_QUEUE_REPLY")
        #expect(MessageType.simulateDMA.name == "SIMULATE_DMA")
    }

    /// A version-4 client negotiates version 4 with a version-5 server, and on such a connection the three
    /// version-5 requests are not requests (the daemon refuses a type whose `introducedInVersion` is above
    /// the connection's version with UNKNOWN_MESSAGE_TYPE, as a version-4 server would).
    @Test func aVersionFourClientNegotiatesFourWhichIsBelowEveryEventRequest() throws {
        #expect(try WireProtocol.negotiateVersion(client: 1...4) == 4)
        #expect(try WireProtocol.negotiateVersion(client: 1...5) == 5)
        for type in MessageType.allRequests where type.introducedInVersion > 4 {
            #expect([MessageType.mapEventQueue, .unmapEventQueue, .simulateDMA].contains(type))
        }
    }

    // MARK: MAP_EVENT_QUEUE

    func mapEventQueueFrame(log2: UInt32 = 6, flags: UInt32 = 0, reserved: UInt32 = 0) -> [UInt8] {
        rawFrame(type: 0x001D, flags: 1, requestID: 3, payload: le(UInt32(7)) + le(log2) + le(flags) + le(reserved))
    }

    @Test func mapEventQueueRefusesALog2OutsideFourToTwelveAtOffsetFour() throws {
        for log2 in [UInt32(0), 3, 13, 16, 0xFFFF_FFFF] {
            let e = try refusal(mapEventQueueFrame(log2: log2))
            #expect(e.code == .badField && e.detail == 4 && e.value == UInt64(log2), "\(log2): \(e)")
        }
        for log2 in UInt32(4)...12 {
            #expect(try Request.decode(bytes: mapEventQueueFrame(log2: log2)).request
                    == .mapEventQueue(MapEventQueue(vsmmu: vsmmu7, log2Entries: log2)))
        }
    }

    @Test func mapEventQueueRefusesFlagsAtEightAndReservedAtTwelve() throws {
        let flags = try refusal(mapEventQueueFrame(flags: 1))
        #expect(flags.code == .badField && flags.detail == 8 && flags.value == 1)
        let reserved = try refusal(mapEventQueueFrame(reserved: 0x10))
        #expect(reserved.code == .badField && reserved.detail == 12 && reserved.value == 0x10)
    }

    @Test func mapEventQueueNeedsSixteenBytes() throws {
        let short = withPayload(mapEventQueueFrame(), [UInt8](repeating: 0, count: 12))
        let e = try refusal(short)
        #expect(e.code == .badPayloadLength && e.detail == 16 && e.value == 12)
        let replyBytes = try Response.mapEventQueue(EventQueueMapped(producer: 1)).encode(requestID: 3)
        let reply = try replyRefusal(withPayload(replyBytes, [UInt8](repeating: 0, count: 4)))
        #expect(reply.code == .badPayloadLength && reply.detail == 8)
    }

    @Test func theMapEventQueueReplyKeepsEveryBitOfProdButRefusesReserved() throws {
        for prod in [UInt32(0), 0x45, 0x8000_0045, 0xFFFF_FFFF] {
            let reply = Response.mapEventQueue(EventQueueMapped(producer: prod))
            #expect(try reply.roundTripped(requestID: 9) == reply)
        }
        var bytes = try Response.mapEventQueue(EventQueueMapped(producer: 5)).encode(requestID: 9)
        bytes[FrameHeader.byteCount + 4] = 1
        let e = try replyRefusal(bytes)
        #expect(e.code == .badField && e.detail == 4)
    }

    // MARK: UNMAP_EVENT_QUEUE

    @Test func unmapEventQueueRefusesReservedAtFourAndAnyDescriptor() throws {
        let reserved = try refusal(rawFrame(type: 0x001E, requestID: 4, payload: le(UInt32(7)) + le(UInt32(2))))
        #expect(reserved.code == .badField && reserved.detail == 4 && reserved.value == 2)
        let withFD = try refusal(rawFrame(type: 0x001E, flags: 1, requestID: 4, payload: le(UInt32(7)) + le(UInt32(0))))
        #expect(withFD.code == .badFileDescriptor && withFD.detail == FileDescriptorProblem.unexpected.rawValue)
        var reply = try Response.unmapEventQueue.encode(requestID: 4)
        reply = withPayload(reply, [0])
        #expect(try replyRefusal(reply).code == .badPayloadLength)
    }

    // MARK: SIMULATE_DMA

    func simulateDMAFrame(vsid: UInt32 = 0x100, ssid: UInt32 = 0, flags: UInt32 = 0, iova: UInt64 = 0x7F00_1000,
                          size: UInt64 = 4096, walk: UInt32 = 0, reserved: UInt32 = 0) -> [UInt8] {
        rawFrame(type: 0x0043, requestID: 5, payload: le(UInt32(7)) + le(vsid) + le(ssid) + le(flags) + le(iova) + le(size)
                 + le(walk) + le(reserved))
    }

    @Test func simulateDMAReadsEveryFlagAndTheSubstreamOnlyWhenItIsValid() throws {
        let plain = try Request.decode(bytes: simulateDMAFrame(walk: 1)).request
        #expect(plain == .simulateDMA(SimulateDMA(vsmmu: vsmmu7, streamID: 0x100, address: 0x7F00_1000, walk: .readWrite)))
        let all = try Request.decode(bytes: simulateDMAFrame(ssid: 0xF_FFFF, flags: 7, size: 1 << 21, walk: 4)).request
        #expect(all == .simulateDMA(SimulateDMA(vsmmu: vsmmu7, streamID: 0x100, substreamID: 0xF_FFFF, write: true,
                                                throughATS: true, address: 0x7F00_1000, size: 1 << 21, walk: .outputTooLarge)))
        // SSID 0 is a SubstreamID like any other when VSMMU_DMA_SSID_VALID is set.
        guard case .simulateDMA(let zero) = try Request.decode(bytes: simulateDMAFrame(flags: 2)).request else {
            Issue.record("not a SIMULATE_DMA"); return
        }
        #expect(zero.substreamID == 0 && !zero.write && !zero.throughATS)
        for walk in DMAWalk.allCases {
            let request = Request.simulateDMA(SimulateDMA(vsmmu: vsmmu7, streamID: 1, address: 0, walk: walk))
            #expect(try Request.decode(bytes: try request.encode(requestID: 2)).request == request)
        }
    }

    @Test func simulateDMARefusesUndefinedFlagsAtTwelve() throws {
        for flags in [UInt32(8), 0x8000_0000, 0xF] {
            let e = try refusal(simulateDMAFrame(flags: flags))
            #expect(e.code == .badField && e.detail == 12 && e.value == UInt64(flags), "\(flags)")
        }
    }

    @Test func simulateDMARefusesAnSSIDWithoutItsFlagOrWiderThanTwentyBitsAtEight() throws {
        let without = try refusal(simulateDMAFrame(ssid: 1))
        #expect(without.code == .badField && without.detail == 8 && without.value == 1)
        let wide = try refusal(simulateDMAFrame(ssid: 1 << 20, flags: 2))
        #expect(wide.code == .badField && wide.detail == 8 && wide.value == 1 << 20)
    }

    @Test func simulateDMARefusesASizeThatIsNotAPowerOfTwoOfAtLeastAPageAtTwentyFour() throws {
        for size in [UInt64(0), 1, 2048, 4095, 4097, 12288, 0xFFFF_FFFF_FFFF_FFFF] {
            let e = try refusal(simulateDMAFrame(size: size))
            #expect(e.code == .badField && e.detail == 24 && e.value == size, "\(size)")
        }
        for shift in UInt64(12)...63 {
            #expect(throws: Never.self) { _ = try Request.decode(bytes: simulateDMAFrame(size: 1 << shift)) }
        }
    }

    @Test func simulateDMARefusesAnUnknownWalkAtThirtyTwoAndReservedAtThirtySix() throws {
        for walk in [UInt32(5), 0xFFFF_FFFF] {
            let e = try refusal(simulateDMAFrame(walk: walk))
            #expect(e.code == .badField && e.detail == 32 && e.value == UInt64(walk))
        }
        let reserved = try refusal(simulateDMAFrame(reserved: 1))
        #expect(reserved.code == .badField && reserved.detail == 36 && reserved.value == 1)
        let short = try refusal(withPayload(simulateDMAFrame(), [UInt8](repeating: 0, count: 36)))
        #expect(short.code == .badPayloadLength && short.detail == 40 && short.value == 36)
    }

    func simulateDMAReplyFrame(outcome: UInt32, reserved: UInt32 = 0, record: [UInt64] = [0, 0, 0, 0]) -> [UInt8] {
        rawFrame(type: 0x8043, requestID: 5, payload: le(outcome) + le(reserved) + record.flatMap { le($0) })
    }

    @Test func theSimulateDMAReplyCarriesARecordOnlyForAFault() throws {
        let fault = try Response.decode(bytes: simulateDMAReplyFrame(outcome: 6, record: [0x100_0000_0010, 0, 0x7F00_1000, 0])).response
        #expect(fault == .simulateDMA(DMASimulated(outcome: .fault(vectorFaultEvent))))
        let outcomes: [SimulatedDMAOutcome] = [.atcHit, .tlbHit, .tlbFill, .bypassed, .aborted]
        for (i, outcome) in outcomes.enumerated() {
            #expect(outcome.code == UInt32(i + 1))
            #expect(try Response.decode(bytes: simulateDMAReplyFrame(outcome: UInt32(i + 1))).response
                    == .simulateDMA(DMASimulated(outcome: outcome)))
            let withRecord = try replyRefusal(simulateDMAReplyFrame(outcome: UInt32(i + 1), record: [0, 0, 1, 0]))
            #expect(withRecord.code == .badField && withRecord.detail == 8, "\(outcome)")
        }
        for code in [UInt32(0), 7, 0xFFFF_FFFF] {
            let e = try replyRefusal(simulateDMAReplyFrame(outcome: code))
            #expect(e.code == .badField && e.detail == 0 && e.value == UInt64(code))
        }
        let reserved = try replyRefusal(simulateDMAReplyFrame(outcome: 3, reserved: 9))
        #expect(reserved.code == .badField && reserved.detail == 4)
        #expect(SimulatedDMAOutcome.fault(vectorFaultEvent).description == "FAULT F_TRANSLATION")
    }

    // MARK: Errors and statistics

    @Test func unsupportedIsCodeTwentyFiveKeepsTheConnectionAndNamesTheViommu() throws {
        #expect(ProtocolErrorCode.unsupported.rawValue == 25 && ProtocolErrorCode.unsupported.name == "UNSUPPORTED")
        #expect(ProtocolErrorCode.unsupported.isDefined && !ProtocolErrorCode.unsupported.closesConnection)
        let e = ProtocolError.unsupported(viommu: 3, type: .simulateDMA, "no simulated devices")
        #expect(e.code == .unsupported && e.detail == 0 && e.value == 3 && e.requestType == .simulateDMA)
        #expect(ProtocolError.unsupported(viommu: nil, type: .simulateDMA, "").value == 0xFFFF_FFFF)
        #expect(ConflictKind.eventQueue.rawValue == 7 && ConflictKind.eventQueue.description == "EVENT_QUEUE")
    }

    @Test func theEventCountersArePerViommuAndOrphansAreTheDaemons() {
        let viommu: [(StatKey, UInt16, String)] = [
            (.viommuEvents, 0x4A, "VIOMMU_EVENTS"),
            (.viommuEventsDroppedOverflow, 0x4B, "VIOMMU_EVENTS_DROPPED_OVERFLOW"),
            (.viommuEventsDroppedDeviceGone, 0x4C, "VIOMMU_EVENTS_DROPPED_DEVICE_GONE"),
            (.viommuEventsDroppedNoQueue, 0x4D, "VIOMMU_EVENTS_DROPPED_NO_QUEUE"),
            (.viommuEventsLostUpstream, 0x4E, "VIOMMU_EVENTS_LOST_UPSTREAM"),
        ]
        for (key, raw, name) in viommu {
            #expect(key.rawValue == raw && key.name == name && key.scope == .viommu, "\(name)")
        }
        #expect(StatKey.daemonEventsOrphaned.rawValue == 0x86 && StatKey.daemonEventsOrphaned.scope == .daemon)
        #expect(StatKey.daemonEventsOrphaned.name == "DAEMON_EVENTS_ORPHANED")
        #expect(StatKey(rawValue: 0x4F).scope == .unknown && StatKey(rawValue: 0x87).scope == .unknown)
    }

    // MARK: The layout

    @Test func prodAndConsMayHoldIndexWrapAndBitThirtyOneOnly() {
        #expect(EventQueueLayout.validBits(log2Entries: 4) == 0x8000_001F)
        #expect(EventQueueLayout.validBits(log2Entries: 12) == 0x8000_1FFF)
        #expect(EventQueueLayout.overflowFlag == 0x8000_0000)
        #expect(EventQueueLayout.requiredSize(log2Entries: 4) == 0x1000 + 16 * 64)
        #expect(EventQueueLayout.requiredSize(log2Entries: 12) == 0x1000 + 4096 * 64)
        // One writer per line: the VMM's configuration, CONS and vmm_sleeping; the daemon's PROD and state.
        let lines = [EventQueueLayout.magicOffset, EventQueueLayout.prodOffset, EventQueueLayout.consOffset,
                     EventQueueLayout.stateOffset, EventQueueLayout.vmmSleepingOffset].map { $0 / EventQueueLayout.lineSize }
        #expect(Set(lines).count == lines.count)
        #expect(EventQueueLayout.State.stopped.rawValue == 2)
    }

    // MARK: The C header

    @Test func eventQueueAndDMAConstantsMatchTheHeader() throws {
        let c = try CHeaderTests.constants(prefix: "VSMMU_")
        #expect(c["VSMMU_EVENT_QUEUE_MAGIC"] == UInt64(EventQueueLayout.magic))
        #expect(c["VSMMU_EVENT_QUEUE_VERSION"] == UInt64(EventQueueLayout.version))
        #expect(c["VSMMU_EVENT_QUEUE_MIN_LOG2_ENTRIES"] == UInt64(EventQueueLayout.log2EntriesRange.lowerBound))
        #expect(c["VSMMU_EVENT_QUEUE_MAX_LOG2_ENTRIES"] == UInt64(EventQueueLayout.log2EntriesRange.upperBound))
        #expect(c["VSMMU_EVENT_QUEUE_SLOTS_OFFSET"] == UInt64(EventQueueLayout.slotsOffset))
        #expect(c["VSMMU_EVENT_SLOT_SIZE"] == UInt64(EventQueueLayout.slotSize))
        #expect(c["VSMMU_EVENT_QUEUE_OVERFLOW"] == UInt64(EventQueueLayout.overflowFlag))
        #expect(c["VSMMU_EVENT_LOST_BEFORE"] == UInt64(EventQueueLayout.lostBeforeFlag))
        #expect(c["VSMMU_CONFLICT_EVENT_QUEUE"] == UInt64(ConflictKind.eventQueue.rawValue))
        #expect(c["VSMMU_DMA_MIN_SIZE"] == SimulateDMA.minimumSize)
        for walk in DMAWalk.allCases { #expect(c["VSMMU_DMA_WALK_" + walk.description] == UInt64(walk.rawValue), "\(walk)") }
        let outcomes: [SimulatedDMAOutcome] = [.atcHit, .tlbHit, .tlbFill, .bypassed, .aborted]
        for outcome in outcomes { #expect(c["VSMMU_DMA_" + outcome.description] == UInt64(outcome.code), "\(outcome)") }
        #expect(c["VSMMU_DMA_FAULT"] == 6)
        let flags = try CHeaderTests.flagConstants(["VSMMU_DMA_WRITE", "VSMMU_DMA_SSID_VALID", "VSMMU_DMA_ATS"])
        #expect(flags == [UInt64(SimulateDMA.writeFlag), UInt64(SimulateDMA.substreamValidFlag), UInt64(SimulateDMA.atsFlag)])
    }

    /// The layouts of vsmmu.h's event structures as the C compiler lays them out, against the Swift codec's
    /// sizes and ``EventQueueLayout``'s offsets.
    @Test(.enabled(if: CHeaderTests.compiler != nil, "no C compiler (cc) on the PATH"))
    func theEventStructuresOffsetsAreTheCCompilers() throws {
        let header: [(String, Int)] = [
            ("magic", EventQueueLayout.magicOffset), ("version", EventQueueLayout.versionOffset),
            ("log2_entries", EventQueueLayout.log2EntriesOffset), ("prod", EventQueueLayout.prodOffset),
            ("cons", EventQueueLayout.consOffset), ("state", EventQueueLayout.stateOffset),
            ("vmm_sleeping", EventQueueLayout.vmmSleepingOffset),
        ]
        let slot: [(String, Int)] = [
            ("record", EventQueueLayout.slotRecordOffset), ("sequence", EventQueueLayout.slotSequenceOffset),
            ("vsmmu_id", EventQueueLayout.slotVSMMUOffset), ("viommu_id", EventQueueLayout.slotViommuOffset),
            ("flags", EventQueueLayout.slotFlagsOffset),
        ]
        let dma: [(String, Int)] = [("vsmmu_id", 0), ("vsid", 4), ("ssid", 8), ("flags", 12), ("iova", 16), ("size", 24),
                                    ("walk", 32), ("reserved", 36)]
        var printed = try CHeaderTests.compileAndPrint([
            ("vsmmu_event_queue_header", header.map(\.0)), ("vsmmu_event_slot", slot.map(\.0)),
            ("vsmmu_simulate_dma", dma.map(\.0)), ("vsmmu_simulate_dma_reply", ["outcome", "event"]),
            ("vsmmu_map_event_queue", ["log2_entries", "flags", "reserved"]), ("vsmmu_map_event_queue_reply", ["prod"]),
            ("vsmmu_unmap_event_queue", ["reserved"]),
        ])
        #expect(printed.removeValue(forKey: "vsmmu_event_queue_header") == EventQueueLayout.slotsOffset)
        #expect(printed.removeValue(forKey: "vsmmu_event_slot") == EventQueueLayout.slotSize)
        #expect(printed.removeValue(forKey: "vsmmu_simulate_dma") == SimulateDMA.fixedLength)
        #expect(printed.removeValue(forKey: "vsmmu_simulate_dma_reply") == DMASimulated.fixedLength)
        #expect(printed.removeValue(forKey: "vsmmu_map_event_queue") == MapEventQueue.fixedLength)
        #expect(printed.removeValue(forKey: "vsmmu_map_event_queue_reply") == EventQueueMapped.fixedLength)
        #expect(printed.removeValue(forKey: "vsmmu_unmap_event_queue") == UnmapEventQueue.fixedLength)
        for (name, offset) in header { #expect(printed["vsmmu_event_queue_header.\(name)"] == offset, "\(name)") }
        for (name, offset) in slot { #expect(printed["vsmmu_event_slot.\(name)"] == offset, "\(name)") }
        for (name, offset) in dma { #expect(printed["vsmmu_simulate_dma.\(name)"] == offset, "\(name)") }
        #expect(printed["vsmmu_simulate_dma_reply.event"] == DMASimulated.eventOffset)
        #expect(printed["vsmmu_map_event_queue.log2_entries"] == 4 && printed["vsmmu_map_event_queue.flags"] == 8)
        #expect(printed["vsmmu_map_event_queue.reserved"] == 12 && printed["vsmmu_unmap_event_queue.reserved"] == 4)
    }

    // MARK: The memory vectors

    @Test func everyFieldOfTheEventQueueHeaderVectorSitsAtTheLayoutsOffset() throws {
        let vectors = QueueMemoryVectorTests()
        let (bytes, assertions, kind) = try vectors.memory("event-queue-header.hex")
        #expect(kind == "event_queue_header")
        #expect(bytes.count == EventQueueLayout.vmmSleepingOffset + EventQueueLayout.lineSize)
        let fields: [String: (offset: Int, size: Int)] = [
            "magic": (EventQueueLayout.magicOffset, 4), "version": (EventQueueLayout.versionOffset, 2),
            "log2_entries": (EventQueueLayout.log2EntriesOffset, 1), "prod": (EventQueueLayout.prodOffset, 4),
            "cons": (EventQueueLayout.consOffset, 4), "state": (EventQueueLayout.stateOffset, 4),
            "vmm_sleeping": (EventQueueLayout.vmmSleepingOffset, 4),
        ]
        #expect(Set(assertions.keys) == Set(fields.keys.map { "event_queue_header.\($0)" }))
        var named = Set<Int>()
        for (field, place) in fields {
            let expected = try #require(assertions["event_queue_header.\(field)"])
            #expect(vectors.read(bytes, at: place.offset, size: place.size) == expected, "\(field)")
            named.formUnion(place.offset..<(place.offset + place.size))
        }
        for i in bytes.indices where !named.contains(i) { #expect(bytes[i] == 0, "reserved byte 0x\(String(i, radix: 16))") }
        // Written by hand from the vector's comments.
        #expect(vectors.read(bytes, at: EventQueueLayout.magicOffset, size: 4) == UInt64(EventQueueLayout.magic))
        let prod = UInt32(vectors.read(bytes, at: EventQueueLayout.prodOffset, size: 4))
        #expect(prod & EventQueueLayout.overflowFlag != 0 && prod & ~EventQueueLayout.overflowFlag == 1 << 6 | 5)
        #expect(prod & ~EventQueueLayout.validBits(log2Entries: 6) == 0)
        #expect(EventQueueLayout.State(rawValue: UInt32(vectors.read(bytes, at: EventQueueLayout.stateOffset, size: 4))) == .stopped)
    }

    @Test func theEventSlotVectorIsTheFaultRecordWithItsSequenceAndAttribution() throws {
        let vectors = QueueMemoryVectorTests()
        let (bytes, assertions, kind) = try vectors.memory("event-slot.hex")
        #expect(kind == "event_slot")
        let slot = EventQueueLayout.slotsOffset + 2 * EventQueueLayout.slotSize
        #expect(bytes.count == slot + EventQueueLayout.slotSize)
        #expect(assertions.count == 8)
        let record = try EventRecord(bytes: bytes[(slot + EventQueueLayout.slotRecordOffset)..<(slot + EventQueueLayout.slotRecordOffset + 32)])
        #expect(record == vectorFaultEvent && record.id == .translation && record.streamID == 0x100)
        #expect(vectors.read(bytes, at: slot + EventQueueLayout.slotSequenceOffset, size: 8) == 9)
        #expect(vectors.read(bytes, at: slot + EventQueueLayout.slotVSMMUOffset, size: 4) == 7)
        #expect(vectors.read(bytes, at: slot + EventQueueLayout.slotViommuOffset, size: 4) == 1)
        #expect(vectors.read(bytes, at: slot + EventQueueLayout.slotFlagsOffset, size: 4) == UInt64(EventQueueLayout.lostBeforeFlag))
        for i in (slot + 0x34)..<(slot + EventQueueLayout.slotSize) { #expect(bytes[i] == 0) }
    }
}

extension CHeaderTests {
    /// The values of `#define NAME (1u << k)` flag macros, in the order given.
    static func flagConstants(_ names: [String]) throws -> [UInt64?] {
        let header = try String(contentsOf: ProtocolFolder.url().appendingPathComponent("vsmmu.h"), encoding: .utf8)
        return names.map { name in
            guard let line = header.split(separator: "\n").first(where: { $0.hasPrefix("#define \(name) ") }),
                  let open = line.range(of: "(1u << "), let close = line[open.upperBound...].firstIndex(of: ")"),
                  let shift = UInt64(line[open.upperBound..<close]) else { return nil }
            return 1 << shift
        }
    }

    /// Compiles a program with `vsmmu.h` that prints `sizeof` of each structure and `offsetof` of the named
    /// members; returns `"struct"` → size and `"struct.member"` → offset.
    static func compileAndPrint(_ structures: [(name: String, members: [String])]) throws -> [String: Int] {
        let cc = try #require(compiler)
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("vsmmu-layout-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        var source = "#include <stdio.h>\n#include <stddef.h>\n#include \"vsmmu.h\"\nint main(void) {\n"
        for (name, members) in structures {
            source += "\tprintf(\"\(name) %zu\\n\", sizeof(struct \(name)));\n"
            for m in members { source += "\tprintf(\"\(name).\(m) %zu\\n\", offsetof(struct \(name), \(m)));\n" }
        }
        source += "\treturn 0;\n}\n"
        let file = scratch.appendingPathComponent("layout.c")
        try source.write(to: file, atomically: true, encoding: .utf8)
        let binary = scratch.appendingPathComponent("layout").path
        let build = try run(cc, ["-std=c11", "-Wall", "-Werror", "-I", ProtocolFolder.url().path, "-o", binary, file.path])
        try #require(build.status == 0, "cc failed:\n\(build.output)")
        var printed: [String: Int] = [:]
        for line in try run(binary, []).output.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let value = Int(parts[1]) { printed[String(parts[0])] = value }
        }
        return printed
    }
}
