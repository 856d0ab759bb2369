import Foundation
import Testing
import VSMMUTestSupport
@testable import VSMMUProtocol

/// The C side: `vsmmu.h`'s constants against the Swift codec's, and `check_vectors.c` (built with only
/// `vsmmu.h`) against the golden vectors, so the header, the codec and the vectors agree.
@Suite("C header")
struct CHeaderTests {
    /// `NAME = value` pairs of the header's enums and `#define NAME value` macros with a prefix.
    static func constants(prefix: String) throws -> [String: UInt64] {
        let header = try String(contentsOf: ProtocolFolder.url().appendingPathComponent("vsmmu.h"), encoding: .utf8)
        var out: [String: UInt64] = [:]
        for raw in header.split(separator: "\n") {
            var line = raw.trimmingCharacters(in: .whitespaces)
            if let comment = line.range(of: "/*") { line = String(line[..<comment.lowerBound]).trimmingCharacters(in: .whitespaces) }
            let parts: [Substring]
            if line.hasPrefix("#define ") {
                parts = line.dropFirst(8).split(separator: " ", maxSplits: 1)
            } else if line.hasPrefix(prefix), line.contains("=") {
                parts = line.split(separator: "=", maxSplits: 1).map { Substring($0.trimmingCharacters(in: .whitespaces)) }
            } else {
                continue
            }
            guard parts.count == 2, parts[0].hasPrefix(prefix), !parts[0].contains("(") else { continue }
            var value = parts[1].trimmingCharacters(in: CharacterSet(charactersIn: " ,"))
            if value.hasSuffix("u") { value.removeLast() }
            let number = value.hasPrefix("0x") ? UInt64(value.dropFirst(2), radix: 16) : UInt64(value)
            if let number { out[String(parts[0])] = number }
        }
        return out
    }

    @Test func messageTypesMatchTheHeader() throws {
        let c = try Self.constants(prefix: "VSMMU_MSG_")
        for type in MessageType.allRequests + MessageType.allReplies {
            #expect(c["VSMMU_MSG_" + type.name] == UInt64(type.rawValue), "\(type.name)")
        }
        #expect(c.count == MessageType.allRequests.count + MessageType.allReplies.count + 1) // + VSMMU_MSG_REPLY
        #expect(c["VSMMU_MSG_REPLY"] == UInt64(MessageType.replyBit))
    }

    @Test func errorCodesMatchTheHeader() throws {
        let c = try Self.constants(prefix: "VSMMU_ERR_")
        for code in ProtocolErrorCode.allDefined {
            #expect(c["VSMMU_ERR_" + code.name] == UInt64(code.rawValue), "\(code.name)")
        }
        #expect(c.count == ProtocolErrorCode.allDefined.count)
    }

    @Test func statKeysMatchTheHeader() throws {
        let c = try Self.constants(prefix: "VSMMU_STAT_")
        var named = 0
        for raw in UInt16(0)...UInt16(0x00FF) {
            let key = StatKey(rawValue: raw)
            guard key.scope != .unknown else { continue }
            named += 1
            #expect(c["VSMMU_STAT_" + key.name] == UInt64(raw), "\(key.name)")
        }
        #expect(c.count == named + 1) // + VSMMU_STAT_NO_VIOMMU
        #expect(c["VSMMU_STAT_NO_VIOMMU"] == UInt64(StatEntry.noViommu))
        #expect(StatKey.syncLatencyLog2Nanoseconds(bucket: 5).rawValue == 0x0205)
        #expect(StatKey.viommuBatchSizeLog2(bucket: 63).rawValue == 0x033F)
    }

    @Test func protocolConstantsMatchTheHeader() throws {
        let c = try Self.constants(prefix: "VSMMU_")
        #expect(c["VSMMU_MAGIC"] == UInt64(WireProtocol.magic))
        #expect(c["VSMMU_PROTOCOL_VERSION"] == UInt64(WireProtocol.version))
        #expect(c["VSMMU_PROTOCOL_VERSION"] == UInt64(WireProtocol.supportedVersions.upperBound))
        #expect(c["VSMMU_MIN_PROTOCOL_VERSION"] == UInt64(WireProtocol.supportedVersions.lowerBound))
        #expect(c["VSMMU_MAX_FRAME_SIZE"] == UInt64(WireProtocol.maximumFrameSize))
        #expect(c["VSMMU_MIN_FRAME_SIZE_LIMIT"] == UInt64(WireProtocol.minimumFrameSizeLimit))
        #expect(c["VSMMU_MAX_MESSAGE_LENGTH"] == UInt64(WireProtocol.maximumMessageLength))
        #expect(c["VSMMU_NAME_SIZE"] == UInt64(WireProtocol.nameCapacity))
        #expect(c["VSMMU_MAX_VIOMMUS"] == UInt64(WireProtocol.maximumViommus))
        #expect(c["VSMMU_NO_ERROR_INDEX"] == UInt64(WireProtocol.noErrorIndex))
        #expect(c["VSMMU_FRAME_FD_ATTACHED"] == UInt64(FrameFlags.fileDescriptorAttached.rawValue))
        #expect(c["VSMMU_FRAME_RESERVED_FLAGS"] == UInt64(FrameFlags.reserved.rawValue))
        #expect(c["VSMMU_BAD_FIELD_HEADER"] == UInt64(ProtocolError.headerFieldOffset))
        #expect(c["VSMMU_FD_MISSING"] == UInt64(FileDescriptorProblem.missing.rawValue))
        #expect(c["VSMMU_FD_UNEXPECTED"] == UInt64(FileDescriptorProblem.unexpected.rawValue))
        #expect(c["VSMMU_FD_UNUSABLE"] == UInt64(FileDescriptorProblem.unusable.rawValue))
        #expect(c["VSMMU_FD_QUEUE_MEMORY"] == UInt64(FileDescriptorProblem.queueMemory.rawValue))
        #expect(c["VSMMU_FD_QUEUE_EVENTFD"] == UInt64(FileDescriptorProblem.queueEventFD.rawValue))
        let reasons: [(String, InvalidSTEReason)] = [
            ("DISALLOWED_BITS_W0", .disallowedBitsW0), ("DISALLOWED_BITS_W1", .disallowedBitsW1),
            ("DISALLOWED_CONFIG", .disallowedConfig), ("DISALLOWED_EATS", .disallowedEATS),
            ("TOO_MANY_CDS", .tooManyContextDescriptors), ("SSID_OUT_OF_RANGE", .substreamOutOfRange),
            ("NOT_TRANSLATING", .notTranslating),
        ]
        for (name, reason) in reasons {
            #expect(c["VSMMU_STE_" + name] == UInt64(reason.rawValue), "\(name)")
            #expect(reason.description == name)
        }
        let conflicts: [(String, ConflictKind)] = [
            ("PSMMU", .pSMMU), ("STREAM_ID", .streamID), ("HOST_DEVICE", .hostDevice), ("HANDSHAKE", .handshake),
            ("CREATE_KEY", .createKey), ("QUEUE", .queue), ("EVENT_QUEUE", .eventQueue),
        ]
        for (name, kind) in conflicts {
            #expect(c["VSMMU_CONFLICT_" + name] == UInt64(kind.rawValue), "\(name)")
            #expect(kind.description == name)
        }
        let list = try Self.constants(prefix: "VSMMU_LIST_")
        for kind in ListKind.all { #expect(list["VSMMU_LIST_" + kind.description] == UInt64(kind.rawValue)) }
    }

    @Test func sharedQueueConstantsMatchTheHeader() throws {
        let c = try Self.constants(prefix: "VSMMU_QUEUE_")
        #expect(c["VSMMU_QUEUE_MAGIC"] == UInt64(SharedQueueLayout.magic))
        #expect(c["VSMMU_QUEUE_VERSION"] == UInt64(SharedQueueLayout.version))
        #expect(c["VSMMU_QUEUE_MIN_LOG2_ENTRIES"] == UInt64(SharedQueueLayout.log2EntriesRange.lowerBound))
        #expect(c["VSMMU_QUEUE_MAX_LOG2_ENTRIES"] == UInt64(SharedQueueLayout.log2EntriesRange.upperBound))
        #expect(c["VSMMU_QUEUE_SLOTS_OFFSET"] == UInt64(SharedQueueLayout.slotsOffset))
        #expect(c["VSMMU_QUEUE_LINE_SIZE"] == UInt64(SharedQueueLayout.lineSize))
        #expect(c["VSMMU_QUEUE_ERROR_COMMAND"] == UInt64(SharedQueueLayout.ErrorKind.command.rawValue))
        #expect(c["VSMMU_QUEUE_ERROR_PROD"] == UInt64(SharedQueueLayout.ErrorKind.producer.rawValue))
        #expect(c["VSMMU_QUEUE_STATE_UNMAPPED"] == UInt64(SharedQueueLayout.State.unmapped.rawValue))
        #expect(c["VSMMU_QUEUE_STATE_RUNNING"] == UInt64(SharedQueueLayout.State.running.rawValue))
        #expect(c["VSMMU_QUEUE_STATE_STOPPED"] == UInt64(SharedQueueLayout.State.stopped.rawValue))
        #expect(c.count == 11)
    }

    /// The offsets of `struct vsmmu_queue_header` as the C compiler lays it out, against ``SharedQueueLayout``'s,
    /// and each writer's fields on cache lines of their own.
    @Test(.enabled(if: compiler != nil, "no C compiler (cc) on the PATH"))
    func sharedQueueHeaderOffsetsAreTheCCompilersAndEachWriterHasItsOwnLines() throws {
        let cc = try #require(Self.compiler)
        let fields: [(String, Int)] = [
            ("magic", SharedQueueLayout.magicOffset), ("version", SharedQueueLayout.versionOffset),
            ("log2_entries", SharedQueueLayout.log2EntriesOffset), ("prod", SharedQueueLayout.prodOffset),
            ("cons", SharedQueueLayout.consOffset), ("error_sequence", SharedQueueLayout.errorSequenceOffset),
            ("cerror", SharedQueueLayout.cerrorOffset), ("error_kind", SharedQueueLayout.errorKindOffset),
            ("error_cons", SharedQueueLayout.errorConsOffset), ("state", SharedQueueLayout.stateOffset),
            ("error_ack", SharedQueueLayout.errorAckOffset), ("daemon_sleeping", SharedQueueLayout.daemonSleepingOffset),
            ("vmm_sleeping", SharedQueueLayout.vmmSleepingOffset),
        ]
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("vsmmu-queue-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        var source = "#include <stdio.h>\n#include <stddef.h>\n#include \"vsmmu.h\"\nint main(void) {\n"
        source += "\tprintf(\"size %zu\\n\", sizeof(struct vsmmu_queue_header));\n"
        for (name, _) in fields { source += "\tprintf(\"\(name) %zu\\n\", offsetof(struct vsmmu_queue_header, \(name)));\n" }
        source += "\treturn 0;\n}\n"
        let file = scratch.appendingPathComponent("offsets.c")
        try source.write(to: file, atomically: true, encoding: .utf8)
        let binary = scratch.appendingPathComponent("offsets").path
        let build = try Self.run(cc, ["-std=c11", "-Wall", "-Werror", "-I", ProtocolFolder.url().path, "-o", binary, file.path])
        #expect(build.status == 0, "cc failed:\n\(build.output)")
        guard build.status == 0 else { return }
        var printed: [String: Int] = [:]
        for line in try Self.run(binary, []).output.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let value = Int(parts[1]) { printed[String(parts[0])] = value }
        }
        #expect(printed["size"] == SharedQueueLayout.slotsOffset)
        for (name, offset) in fields { #expect(printed[name] == offset, "\(name)") }
        // One writer per line: the VMM's configuration, PROD, error_ack and vmm_sleeping; the daemon's CONS, error
        // record and state, daemon_sleeping.
        let lines = [SharedQueueLayout.magicOffset, SharedQueueLayout.prodOffset, SharedQueueLayout.consOffset,
                     SharedQueueLayout.errorSequenceOffset, SharedQueueLayout.errorAckOffset,
                     SharedQueueLayout.daemonSleepingOffset, SharedQueueLayout.vmmSleepingOffset]
            .map { $0 / SharedQueueLayout.lineSize }
        #expect(Set(lines).count == lines.count)
        #expect(SharedQueueLayout.stateOffset / SharedQueueLayout.lineSize == SharedQueueLayout.errorSequenceOffset / SharedQueueLayout.lineSize)
    }

    /// `cc` on the PATH, if any.
    static let compiler: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/cc" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    /// Runs `executable` with `arguments`; returns its exit status and its output.
    static func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = ChildProcess()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test(.enabled(if: compiler != nil, "no C compiler (cc) on the PATH: the C side of the vectors is not checked"))
    func cCheckerBuiltFromTheHeaderAcceptsEveryVector() throws {
        let cc = try #require(Self.compiler)
        let folder = ProtocolFolder.url()
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("vsmmu-check-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let binary = scratch.appendingPathComponent("check_vectors").path
        let build = try Self.run(cc, ["-std=c11", "-Wall", "-Wextra", "-Werror", "-I", folder.path, "-o", binary,
                                      folder.appendingPathComponent("vectors/check_vectors.c").path])
        #expect(build.status == 0, "cc failed:\n\(build.output)")
        guard build.status == 0 else { return }
        let names = try ProtocolFolder.allVectorNames()
        let result = try Self.run(binary, names.map { ProtocolFolder.vectors.appendingPathComponent($0).path })
        #expect(result.status == 0, "check_vectors failed:\n\(result.output)")
        #expect(result.output.contains("check_vectors: \(names.count) vectors"), "\(result.output)")
        #expect(result.output.contains(", 0 failures"))
        for name in names { #expect(result.output.contains("ok \(name) "), "\(name) not checked") }
    }

    @Test(.enabled(if: compiler != nil, "no C compiler (cc) on the PATH"))
    func cCheckerRejectsAVectorWhoseAssertionIsWrong() throws {
        let cc = try #require(Self.compiler)
        let folder = ProtocolFolder.url()
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("vsmmu-neg-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let binary = scratch.appendingPathComponent("check_vectors").path
        let build = try Self.run(cc, ["-std=c11", "-I", folder.path, "-o", binary, folder.appendingPathComponent("vectors/check_vectors.c").path])
        try #require(build.status == 0, "\(build.output)")
        let original = try String(contentsOf: ProtocolFolder.vectors.appendingPathComponent("set-dev-id.hex"), encoding: .utf8)
        let wrong = original.replacingOccurrences(of: "#! dev_id.vsid = 0x100", with: "#! dev_id.vsid = 0x101")
        #expect(wrong != original)
        let file = scratch.appendingPathComponent("wrong.hex")
        try wrong.write(to: file, atomically: true, encoding: .utf8)
        let result = try Self.run(binary, [file.path])
        #expect(result.status == 1)
        #expect(result.output.contains("dev_id.vsid"))

        // A wrong ID register word of the GET_HW_INFO reply.
        let hwInfo = try String(contentsOf: ProtocolFolder.vectors.appendingPathComponent("get-hw-info-reply.hex"), encoding: .utf8)
        let wrongIDR = hwInfo.replacingOccurrences(of: "#! hw_info_reply.idr[5] = 0x74", with: "#! hw_info_reply.idr[5] = 0x75")
        #expect(wrongIDR != hwInfo)
        try wrongIDR.write(to: file, atomically: true, encoding: .utf8)
        let idrResult = try Self.run(binary, [file.path])
        #expect(idrResult.status == 1)
        #expect(idrResult.output.contains("hw_info_reply.idr[5]"))

        // The VFIO cdev's FD_ATTACHED on UNSET_DEV_ID (type 0x0015), which takes no fd.
        let withFD = try String(contentsOf: ProtocolFolder.vectors.appendingPathComponent("set-dev-id-with-fd.hex"), encoding: .utf8)
        let unset = withFD.replacingOccurrences(of: "14 00                                            # type",
                                                with: "15 00                                            # type")
                          .replacingOccurrences(of: "#! header.type = 0x0014", with: "#! header.type = 0x0015")
        #expect(unset != withFD)
        try unset.write(to: file, atomically: true, encoding: .utf8)
        let unsetResult = try Self.run(binary, [file.path])
        #expect(unsetResult.status == 1)
        #expect(unsetResult.output.contains("flags 0x0001 not allowed"), "\(unsetResult.output)")
    }
}
