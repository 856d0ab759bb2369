import SMMUv3

// The little-endian reader and writer every message uses. Internal: the public surface is the typed
// messages. Reads never trap: past the end they return 0 and mark the reader as overrun, which the
// message decoders turn into BAD_PAYLOAD_LENGTH (payload lengths are checked before any read, so this
// is a second line of defence).

extension Array where Element == UInt8 {
    /// Appends `value` as little-endian bytes.
    @inlinable
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}

/// Builds frames and payloads.
struct WireWriter {
    var bytes: [UInt8] = []
    /// Index in `bytes` of the current frame's header and payload.
    private var headerStart = 0
    private var payloadStart = 0
    /// The type of the frame being written, for the errors thrown.
    private(set) var type = MessageType(rawValue: 0)

    init() {}

    /// Offset of the next byte within the current payload (for `BAD_FIELD` offsets).
    var payloadOffset: Int { bytes.count - payloadStart }
    /// Bytes of the current payload so far.
    var payloadLength: Int { bytes.count - payloadStart }

    /// Writes a header whose length ``endFrame()`` fills in.
    mutating func beginFrame(type: MessageType, flags: FrameFlags, requestID: UInt64) {
        self.type = type
        headerStart = bytes.count
        FrameHeader(payloadLength: 0, type: type, flags: flags, requestID: requestID).encode(into: &bytes)
        payloadStart = bytes.count
    }

    /// Patches the header's `payload_length` with the payload written since ``beginFrame``.
    mutating func endFrame() {
        let length = UInt32(truncatingIfNeeded: bytes.count - payloadStart)
        for i in 0..<4 { bytes[headerStart + i] = UInt8(truncatingIfNeeded: length >> UInt32(8 * i)) }
    }

    /// Marks the start of a payload written without a header.
    mutating func beginPayload(type: MessageType) {
        self.type = type
        payloadStart = bytes.count
    }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { bytes.appendLittleEndian(v) }
    mutating func u32(_ v: UInt32) { bytes.appendLittleEndian(v) }
    mutating func u64(_ v: UInt64) { bytes.appendLittleEndian(v) }
    mutating func append(_ b: [UInt8]) { bytes.append(contentsOf: b) }

    /// A SMMUv3 structure's little-endian words.
    mutating func words<S: SMMUWords>(_ s: S) {
        for i in 0..<S.wordCount { u64(s.word(i)) }
    }

    /// A command's two words.
    mutating func command(_ c: Command) {
        u64(c.w0)
        u64(c.w1)
    }

    /// Commands in queue order. On a little-endian host a `Command` (two `UInt64`, `@frozen`) is laid
    /// out exactly as its wire bytes, so the batch is one copy.
    mutating func commands(_ commands: [Command]) {
        #if _endian(little)
        if MemoryLayout<Command>.stride == Command.byteCount {
            commands.withUnsafeBytes { bytes.append(contentsOf: $0) }
            return
        }
        #endif
        bytes.reserveCapacity(bytes.count + commands.count * Command.byteCount)
        for c in commands { command(c) }
    }

    /// A 64-byte NUL-padded UTF-8 name.
    /// - Throws: `BAD_FIELD` (offset of the field) for a name longer than 64 bytes or holding a NUL.
    mutating func name(_ s: String) throws(ProtocolError) {
        let utf8 = Array(s.utf8)
        guard utf8.count <= WireProtocol.nameCapacity, !utf8.contains(0) else {
            throw .badField(type, offset: payloadOffset, value: UInt64(utf8.count),
                            "name \"\(s)\" is longer than \(WireProtocol.nameCapacity) UTF-8 bytes or holds a NUL")
        }
        bytes.append(contentsOf: utf8)
        bytes.append(contentsOf: repeatElement(0, count: WireProtocol.nameCapacity - utf8.count))
    }

    /// The UTF-8 bytes of `s`, cut at a character boundary to at most ``WireProtocol/maximumMessageLength``.
    static func truncatedUTF8(_ s: String) -> [UInt8] {
        var utf8 = Array(s.utf8)
        guard utf8.count > WireProtocol.maximumMessageLength else { return utf8 }
        var end = WireProtocol.maximumMessageLength
        while end > 0 && utf8[end] & 0xC0 == 0x80 { end -= 1 } // don't split a scalar
        utf8.removeSubrange(end...)
        return utf8
    }
}

/// Reads a payload.
struct WireReader {
    let bytes: [UInt8]
    /// The frame type, for the errors thrown.
    let type: MessageType
    private(set) var offset = 0
    /// Set when a read went past the end.
    private(set) var overran = false

    init(_ bytes: [UInt8], type: MessageType = MessageType(rawValue: 0)) {
        self.bytes = bytes
        self.type = type
    }

    var remaining: Int { bytes.count - offset }

    private func load<T: FixedWidthInteger>(_: T.Type, at position: Int) -> T? {
        guard position >= 0, position <= bytes.count - MemoryLayout<T>.size else { return nil }
        return bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: position, as: T.self)) }
    }

    func peekU16(at position: Int) -> UInt16 { load(UInt16.self, at: position) ?? 0 }
    func peekU32(at position: Int) -> UInt32 { load(UInt32.self, at: position) ?? 0 }
    func peekU64(at position: Int) -> UInt64 { load(UInt64.self, at: position) ?? 0 }

    private mutating func next<T: FixedWidthInteger>(_: T.Type) -> T {
        guard let v = load(T.self, at: offset) else {
            overran = true
            offset = bytes.count
            return 0
        }
        offset += MemoryLayout<T>.size
        return v
    }

    mutating func u8() -> UInt8 { next(UInt8.self) }
    mutating func u16() -> UInt16 { next(UInt16.self) }
    mutating func u32() -> UInt32 { next(UInt32.self) }
    mutating func u64() -> UInt64 { next(UInt64.self) }

    /// A reserved u32: must be zero.
    mutating func reserved32() throws(ProtocolError) {
        let at = offset
        let v = u32()
        guard v == 0 else { throw .badField(type, offset: at, value: UInt64(v), "reserved field at offset \(at) is not zero") }
    }

    /// A reserved u16: must be zero.
    mutating func reserved16() throws(ProtocolError) {
        let at = offset
        let v = u16()
        guard v == 0 else { throw .badField(type, offset: at, value: UInt64(v), "reserved field at offset \(at) is not zero") }
    }

    /// A reserved u8: must be zero.
    mutating func reserved8() throws(ProtocolError) {
        let at = offset
        let v = u8()
        guard v == 0 else { throw .badField(type, offset: at, value: UInt64(v), "reserved field at offset \(at) is not zero") }
    }

    /// A flags field of which this version defines the bits in `known`.
    mutating func flags32(known: UInt32 = 0) throws(ProtocolError) -> UInt32 {
        let at = offset
        let v = u32()
        guard v & ~known == 0 else {
            throw .badField(type, offset: at, value: UInt64(v), "flags 0x\(hex(v)) at offset \(at) set undefined bits")
        }
        return v
    }

    /// A `message_length` field: at most ``WireProtocol/maximumMessageLength``.
    mutating func messageLength() throws(ProtocolError) -> Int {
        let at = offset
        let v = u16()
        guard Int(v) <= WireProtocol.maximumMessageLength else {
            throw .badField(type, offset: at, value: UInt64(v),
                            "message_length \(v) exceeds \(WireProtocol.maximumMessageLength)")
        }
        return Int(v)
    }

    /// `count` bytes of valid UTF-8.
    mutating func utf8(count: Int, fieldOffset: Int) throws(ProtocolError) -> String {
        if count == 0 { return "" }
        guard count <= remaining else {
            overran = true
            offset = bytes.count
            return ""
        }
        let slice = bytes[offset..<(offset + count)]
        offset += count
        guard let s = String(validating: slice, as: UTF8.self) else {
            throw .badField(type, offset: fieldOffset, value: 0, "message is not valid UTF-8")
        }
        return s
    }

    /// A 64-byte NUL-padded UTF-8 name: the bytes before the first NUL, every later byte NUL.
    mutating func name() throws(ProtocolError) -> String {
        let at = offset
        guard remaining >= WireProtocol.nameCapacity else {
            overran = true
            offset = bytes.count
            return ""
        }
        let field = bytes[offset..<(offset + WireProtocol.nameCapacity)]
        offset += WireProtocol.nameCapacity
        let end = field.firstIndex(of: 0) ?? field.endIndex
        guard field[end...].allSatisfy({ $0 == 0 }) else {
            throw .badField(type, offset: at, value: 0, "name at offset \(at) has bytes after its NUL terminator")
        }
        guard let s = String(validating: field[..<end], as: UTF8.self) else {
            throw .badField(type, offset: at, value: 0, "name at offset \(at) is not valid UTF-8")
        }
        return s
    }

    /// An STE or CD: eight little-endian words.
    mutating func words<S: SMMUWords>(into s: inout S) {
        for i in 0..<S.wordCount { s.setWord(i, u64()) }
    }

    /// A 16-byte command.
    mutating func command() -> Command { Command(w0: u64(), w1: u64()) }

    /// `count` commands, or as many as the payload holds (one copy on a little-endian host).
    mutating func commands(count: Int) -> [Command] {
        let n = min(count, remaining / Command.byteCount)
        #if _endian(little)
        if MemoryLayout<Command>.stride == Command.byteCount {
            let start = offset
            offset += n * Command.byteCount
            return [Command](unsafeUninitializedCapacity: n) { out, initialized in
                bytes.withUnsafeBytes { source in
                    UnsafeMutableRawBufferPointer(out).copyMemory(
                        from: UnsafeRawBufferPointer(rebasing: source[start..<(start + n * Command.byteCount)]))
                }
                initialized = n
            }
        }
        #endif
        var out: [Command] = []
        out.reserveCapacity(n)
        for _ in 0..<n { out.append(command()) }
        return out
    }

    /// Throws `BAD_PAYLOAD_LENGTH` if the reads did not cover the payload exactly.
    func finish(expected: UInt64) throws(ProtocolError) {
        guard !overran, offset == bytes.count else {
            throw .badPayloadLength(type, expected: expected, actual: bytes.count)
        }
    }
}
