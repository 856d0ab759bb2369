/// The flags of a frame header (`header.flags`).
public struct FrameFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// One file descriptor travels with the frame in an `SCM_RIGHTS` control message (ATTACH_VIOMMU for
    /// the iommufd backend). The corresponding C constant is `VSMMU_FRAME_FD_ATTACHED`.
    public static let fileDescriptorAttached = FrameFlags(rawValue: 0x0001)
    /// The bits version 1 reserves: a frame setting any is refused with `BAD_FIELD`.
    /// The corresponding C constant is `VSMMU_FRAME_RESERVED_FLAGS`.
    public static let reserved = FrameFlags(rawValue: 0xFFFE)
}

/// The 16-byte header every frame starts with (`struct vsmmu_frame_header`).
///
/// | offset | field |
/// |---|---|
/// | 0 | u32 `payload_length` |
/// | 4 | u16 `type` |
/// | 6 | u16 `flags` |
/// | 8 | u64 `request_id` |
public struct FrameHeader: Hashable, Sendable, CustomStringConvertible {
    /// `sizeof(struct vsmmu_frame_header)`.
    public static let byteCount = 16

    /// Bytes after the header.
    public var payloadLength: UInt32
    public var type: MessageType
    public var flags: FrameFlags
    /// Chosen by the client, echoed in the reply.
    public var requestID: UInt64

    public init(payloadLength: UInt32, type: MessageType, flags: FrameFlags = [], requestID: UInt64) {
        self.payloadLength = payloadLength
        self.type = type
        self.flags = flags
        self.requestID = requestID
    }

    /// The whole frame's size: `16 + payload_length`.
    @inlinable public var frameLength: Int { Self.byteCount + Int(payloadLength) }

    /// Reads a header from the first 16 bytes of `bytes`; `nil` when there are fewer. Any 16 bytes are a
    /// header: limits and types are checked by ``FrameDecoder`` and the message decoders.
    @inlinable
    public init?<C: Collection>(bytes: C) where C.Element == UInt8 {
        var fields: (UInt64, UInt64) = (0, 0) // bytes 0-7 and 8-15, little-endian
        var index = bytes.startIndex
        for i in 0..<Self.byteCount {
            guard index != bytes.endIndex else { return nil }
            if i < 8 { fields.0 |= UInt64(bytes[index]) << UInt64(8 * i) } else { fields.1 |= UInt64(bytes[index]) << UInt64(8 * (i - 8)) }
            index = bytes.index(after: index)
        }
        self.init(payloadLength: UInt32(truncatingIfNeeded: fields.0),
                  type: MessageType(rawValue: UInt16(truncatingIfNeeded: fields.0 >> 32)),
                  flags: FrameFlags(rawValue: UInt16(truncatingIfNeeded: fields.0 >> 48)),
                  requestID: fields.1)
    }

    /// Reads the header at `offset` of `buffer`, which holds at least 16 bytes from there.
    init(unchecked buffer: [UInt8], at offset: Int) {
        let r = WireReader(buffer)
        let low = r.peekU64(at: offset)
        self.init(payloadLength: UInt32(truncatingIfNeeded: low), type: MessageType(rawValue: UInt16(truncatingIfNeeded: low >> 32)),
                  flags: FrameFlags(rawValue: UInt16(truncatingIfNeeded: low >> 48)), requestID: r.peekU64(at: offset + 8))
    }

    /// Appends the header's 16 bytes to `buffer`.
    public func encode(into buffer: inout [UInt8]) {
        buffer.appendLittleEndian(payloadLength)
        buffer.appendLittleEndian(type.rawValue)
        buffer.appendLittleEndian(flags.rawValue)
        buffer.appendLittleEndian(requestID)
    }

    /// The header's 16 bytes.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.byteCount)
        encode(into: &out)
        return out
    }

    public var description: String {
        "\(type.name) id=\(requestID) payload=\(payloadLength)" + (flags.isEmpty ? "" : " flags=0x\(hex(flags.rawValue))")
    }
}

/// One whole frame: its header and exactly `header.payloadLength` bytes of payload.
public struct Frame: Hashable, Sendable, CustomStringConvertible {
    public private(set) var header: FrameHeader
    public private(set) var payload: [UInt8]

    /// A frame of `type` carrying `payload`; the header's length is the payload's.
    /// - Throws: `FRAME_TOO_LARGE` when `16 + payload.count` exceeds `maximumFrameSize`.
    public init(type: MessageType, flags: FrameFlags = [], requestID: UInt64, payload: [UInt8],
                maximumFrameSize: Int = WireProtocol.maximumFrameSize) throws(ProtocolError) {
        let header = FrameHeader(payloadLength: UInt32(truncatingIfNeeded: payload.count), type: type, flags: flags,
                                 requestID: requestID)
        guard payload.count <= maximumFrameSize - FrameHeader.byteCount, payload.count <= Int(UInt32.max) else {
            throw .frameTooLarge(FrameHeader(payloadLength: UInt32(clamping: payload.count), type: type,
                                             flags: flags, requestID: requestID), limit: maximumFrameSize)
        }
        self.header = header
        self.payload = payload
    }

    /// A frame from a header and its payload; `nil` when `payload.count != header.payloadLength`.
    public init?(header: FrameHeader, payload: [UInt8]) {
        guard payload.count == Int(header.payloadLength) else { return nil }
        self.header = header
        self.payload = payload
    }

    /// Reads exactly one frame from `bytes`.
    /// - Throws: ``FrameError`` when `bytes` is not exactly one frame within `maximumFrameSize`
    ///   (`.truncated` for too few bytes, `.trailingBytes` for too many).
    public init(bytes: [UInt8], maximumFrameSize: Int = WireProtocol.maximumFrameSize) throws(FrameError) {
        var decoder = FrameDecoder(maximumFrameSize: maximumFrameSize)
        decoder.feed(bytes)
        guard let frame = try decoder.nextFrame() else {
            try decoder.finish()
            throw .truncated(header: nil, received: bytes.count) // unreachable: finish() threw
        }
        guard decoder.bufferedByteCount == 0 else { throw .trailingBytes(count: decoder.bufferedByteCount) }
        self = frame
    }

    /// The frame's bytes: header then payload.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(header.frameLength)
        encode(into: &out)
        return out
    }

    /// Appends the frame's bytes to `buffer`.
    public func encode(into buffer: inout [UInt8]) {
        header.encode(into: &buffer)
        buffer.append(contentsOf: payload)
    }

    public var description: String { header.description }
}
