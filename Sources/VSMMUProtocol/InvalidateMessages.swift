import SMMUv3

/// INVALIDATE (`struct vsmmu_invalidate`, 16 + 16 × `command_count` bytes): a batch of guest
/// command-queue entries, in queue order. Reply: ``InvalidateReply``, sent when the batch's last
/// CMD_SYNC completed (at once for a batch without CMD_SYNC).
public struct Invalidate: Hashable, Sendable {
    public var vsmmu: VSMMUID
    /// The guest's commands, any 16 bytes each (the daemon validates them as an SMMU would).
    public var commands: [Command]

    public init(vsmmu: VSMMUID, commands: [Command]) {
        self.vsmmu = vsmmu
        self.commands = commands
    }

    /// Whether the batch holds a CMD_SYNC, i.e. whether its reply waits for completion.
    public var containsSync: Bool { commands.contains { $0.opcode == .sync } }
}

extension Invalidate: PayloadCoding {
    static let fixedLength = 16
    static func requiredLength(_ payload: [UInt8]) -> UInt64 {
        requiredLength(payload, countAt: 4, elementSize: Command.byteCount)
    }
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32(), count = Int(r.u32())
        _ = try r.flags32()
        try r.reserved32()
        self.init(vsmmu: VSMMUID(id), commands: r.commands(count: count))
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(UInt32(clamping: commands.count))
        w.u32(0)
        w.u32(0)
        w.commands(commands)
    }
}

/// INVALIDATE's reply (`struct vsmmu_invalidate_reply`, 16 + `message_length` bytes): what the guest's
/// command queue reports, so the VMM sets `CMDQ_CONS` (and `CMDQ_CONS.ERR`) exactly as hardware would.
public struct InvalidateReply: Hashable, Sendable {
    /// The command the queue stopped on.
    public struct Failure: Hashable, Sendable {
        /// Index in the batch of the command `CMDQ_CONS.ERR` refers to (not `0xFFFFFFFF`).
        public var index: UInt32
        /// The CERROR: ILL, ABT or ATC_INV_SYNC (never NONE).
        public var queueError: CommandQueueError
        /// Why, for logs (at most 1024 UTF-8 bytes travel).
        public var message: String

        public init(index: UInt32, queueError: CommandQueueError, message: String = "") {
            self.index = index
            self.queueError = queueError
            self.message = message
        }
    }

    /// Commands consumed: the batch's count, or the index of the failing command.
    public var consumed: UInt32
    /// CMD_SYNCs of the batch that completed.
    public var syncsCompleted: UInt32
    /// The failing command, `nil` for CERROR_NONE.
    public var failure: Failure?

    public init(consumed: UInt32, syncsCompleted: UInt32, failure: Failure? = nil) {
        self.consumed = consumed
        self.syncsCompleted = syncsCompleted
        self.failure = failure
    }

    /// The CERROR the guest observes (`.none` without a failure).
    public var queueError: CommandQueueError { failure?.queueError ?? .none }
}

extension InvalidateReply: PayloadCoding {
    static let fixedLength = 16
    static func requiredLength(_ payload: [UInt8]) -> UInt64 {
        guard payload.count >= fixedLength else { return UInt64(fixedLength) }
        return UInt64(fixedLength) + UInt64(WireReader(payload).peekU16(at: 14))
    }

    init(from r: inout WireReader) throws(ProtocolError) {
        let consumed = r.u32(), index = r.u32(), syncs = r.u32()
        let cerror = r.u8()
        try r.reserved8()
        let length = try r.messageLength()
        let message = try r.utf8(count: length, fieldOffset: 16)
        guard cerror <= CommandQueueError.atcInvalidationSync.rawValue else {
            throw .badField(r.type, offset: 12, value: UInt64(cerror), "CERROR \(cerror) is not 0-3")
        }
        if cerror == CommandQueueError.none.rawValue {
            guard index == WireProtocol.noErrorIndex else {
                throw .badField(r.type, offset: 4, value: UInt64(index), "error_index must be 0xFFFFFFFF with CERROR_NONE")
            }
            guard length == 0 else {
                throw .badField(r.type, offset: 14, value: UInt64(length), "no message with CERROR_NONE")
            }
            self.init(consumed: consumed, syncsCompleted: syncs)
        } else {
            guard index != WireProtocol.noErrorIndex else {
                throw .badField(r.type, offset: 4, value: UInt64(index), "error_index 0xFFFFFFFF with a CERROR")
            }
            self.init(consumed: consumed, syncsCompleted: syncs,
                      failure: Failure(index: index, queueError: CommandQueueError(rawValue: cerror), message: message))
        }
    }

    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(consumed)
        if let failure {
            guard (1...3).contains(failure.queueError.rawValue) else {
                throw .badField(w.type, offset: 12, value: UInt64(failure.queueError.rawValue),
                                "a failure's CERROR must be ILL, ABT or ATC_INV_SYNC")
            }
            guard failure.index != WireProtocol.noErrorIndex else {
                throw .badField(w.type, offset: 4, value: UInt64(failure.index), "error_index 0xFFFFFFFF is reserved")
            }
            let text = WireWriter.truncatedUTF8(failure.message)
            w.u32(failure.index)
            w.u32(syncsCompleted)
            w.u8(failure.queueError.rawValue)
            w.u8(0)
            w.u16(UInt16(text.count))
            w.append(text)
        } else {
            w.u32(WireProtocol.noErrorIndex)
            w.u32(syncsCompleted)
            w.u8(0)
            w.u8(0)
            w.u16(0)
        }
    }
}

extension InvalidateReply {
    /// Size of the frame of a reply without failure: header + the 16-byte `vsmmu_invalidate_reply`.
    static let successFrameSize = FrameHeader.byteCount + fixedLength

    /// Appends the whole frame of this reply, which has no failure, in one append: the bytes
    /// ``Response/encode(requestID:into:maximumFrameSize:)`` would write field by field (the golden
    /// vector `invalidate-reply.hex` pins them). This is the reply a guest's CMD_SYNC waits for.
    func appendSuccessFrame(requestID: UInt64, to buffer: inout [UInt8]) {
        // Header: payload_length (u32), type (u16), flags (u16 = 0), request_id (u64). Payload:
        // consumed (u32), error_index (u32 = NONE), syncs_completed (u32), cerror (u8 = NONE),
        // reserved (u8), message_length (u16 = 0).
        let words: (UInt64, UInt64, UInt64, UInt64) = (
            (UInt64(Self.fixedLength) | UInt64(MessageType.invalidate.reply.rawValue) << 32).littleEndian,
            requestID.littleEndian,
            (UInt64(consumed) | UInt64(WireProtocol.noErrorIndex) << 32).littleEndian,
            UInt64(syncsCompleted).littleEndian)
        Swift.withUnsafeBytes(of: words) { buffer.append(contentsOf: $0) }
    }
}

extension Invalidate {
    /// A server's fast path for the common request: decodes the payload of an INVALIDATE frame that
    /// ``Request/decode(_:handshakeCompleted:)`` would accept (given a header without flags), writing its
    /// commands into `commands` (replacing its contents, keeping its capacity) without allocating, and
    /// returns the vSMMU it names.
    ///
    /// Returns `nil`, leaving `commands` unspecified, for a payload that is not exactly well formed (wrong
    /// length, flags or reserved bits set): decode that frame with ``Request/decode(_:handshakeCompleted:)``
    /// for the error it is answered with. `nil` is never a verdict by itself.
    public static func decodeCommands(payload: UnsafeRawBufferPointer, into commands: inout [Command]) -> VSMMUID? {
        guard payload.count >= fixedLength else { return nil }
        let id = UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        let count = Int(UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        let flags = UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        let reserved = UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 12, as: UInt32.self))
        guard flags == 0, reserved == 0, payload.count - fixedLength == count * Command.byteCount else { return nil }
        #if _endian(little)
        if MemoryLayout<Command>.stride == Command.byteCount {
            // The wire's 16 little-endian bytes are the in-memory `Command`: one copy into the reused buffer.
            if commands.count > count {
                commands.removeLast(commands.count - count)
            } else if commands.count < count {
                commands.append(contentsOf: repeatElement(Command(w0: 0, w1: 0), count: count - commands.count))
            }
            commands.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: payload[fixedLength...])) }
            return VSMMUID(id)
        }
        #endif
        commands.removeAll(keepingCapacity: true)
        commands.reserveCapacity(count)
        var offset = fixedLength
        for _ in 0..<count {
            commands.append(Command(w0: UInt64(littleEndian: payload.loadUnaligned(fromByteOffset: offset, as: UInt64.self)),
                                    w1: UInt64(littleEndian: payload.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self))))
            offset += Command.byteCount
        }
        return VSMMUID(id)
    }
}
