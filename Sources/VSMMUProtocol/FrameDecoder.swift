/// Why a byte stream could not be cut into frames.
public enum FrameError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A header's `16 + payload_length` exceeds the limit. The next frame cannot be found: the
    /// connection must be closed (after answering with ``protocolError``).
    case frameTooLarge(FrameHeader, limit: Int)
    /// The stream ended inside a frame: `received` bytes of it arrived; `header` is `nil` when fewer
    /// than 16 did.
    case truncated(header: FrameHeader?, received: Int)
    /// Bytes after the one frame expected (``Frame/init(bytes:maximumFrameSize:)`` only).
    case trailingBytes(count: Int)

    /// The ERROR the peer is answered with: `FRAME_TOO_LARGE` or `TRUNCATED_FRAME` (for trailing bytes,
    /// `BAD_PAYLOAD_LENGTH`).
    public var protocolError: ProtocolError {
        switch self {
        case .frameTooLarge(let header, let limit): return .frameTooLarge(header, limit: limit)
        case .truncated(let header, let received): return .truncatedFrame(header: header, received: received)
        case .trailingBytes(let count):
            return ProtocolError(code: .badPayloadLength, value: UInt64(count), message: "\(count) bytes after the frame")
        }
    }

    /// The request id to answer with: the offending header's, or 0 when no whole header arrived.
    public var requestID: UInt64 {
        switch self {
        case .frameTooLarge(let header, _): return header.requestID
        case .truncated(let header, _): return header?.requestID ?? 0
        case .trailingBytes: return 0
        }
    }

    /// The ERROR frame answering this error (send it, then close the connection).
    public func replyFrame() -> [UInt8] { protocolError.replyFrame(requestID: requestID) }

    /// The error code of ``protocolError``.
    public var code: ProtocolErrorCode { protocolError.code }

    /// Whether the stream is unusable after this error (frame too large, truncated): always true for a
    /// stream decoder.
    public var closesConnection: Bool { code.closesConnection }

    public var description: String { protocolError.description }
}

/// Cuts a byte stream into frames, whatever the chunks it arrives in.
///
/// Feed it bytes as they are read (a stream socket may split a frame over several reads and merge several
/// frames into one) and take complete frames with ``nextFrame()`` until it returns `nil`; at the end of
/// the stream call ``finish()`` to learn whether it ended inside a frame.
///
/// ```swift
/// var decoder = FrameDecoder()
/// decoder.feed(chunk)
/// while let frame = try decoder.nextFrame() { handle(frame) }
/// ```
///
/// A header announcing a frame over ``maximumFrameSize`` is reported as soon as its 16 bytes arrive,
/// before any payload is buffered; the error is sticky (every later ``nextFrame()`` throws it again and
/// further input is discarded), since the stream cannot be resynchronised. Nothing here traps or
/// allocates more than one frame's worth of bytes plus what was fed and not yet taken.
public struct FrameDecoder: Sendable {
    /// The largest frame accepted, header included (at least 16).
    public let maximumFrameSize: Int

    private var buffer: [UInt8] = []
    /// Start of the first byte not yet taken.
    private var readIndex = 0
    private var failure: FrameError?

    /// A decoder accepting frames of at most `maximumFrameSize` bytes (clamped to
    /// 16 … 16 + 2³²−1): a server passes its announced `max_frame_size`, a client
    /// ``WireProtocol/maximumFrameSize``.
    public init(maximumFrameSize: Int = WireProtocol.maximumFrameSize) {
        self.maximumFrameSize = min(max(maximumFrameSize, FrameHeader.byteCount),
                                    FrameHeader.byteCount + Int(UInt32.max))
    }

    /// Bytes fed and not yet taken as frames.
    public var bufferedByteCount: Int { buffer.count - readIndex }

    /// The header of the frame being assembled, once its 16 bytes arrived.
    public var pendingHeader: FrameHeader? {
        bufferedByteCount >= FrameHeader.byteCount ? FrameHeader(unchecked: buffer, at: readIndex) : nil
    }

    /// Appends bytes read from the stream.
    public mutating func feed(_ bytes: [UInt8]) {
        guard failure == nil else { return }
        compact()
        buffer.append(contentsOf: bytes)
    }

    /// Appends bytes read from the stream.
    public mutating func feed(_ bytes: ArraySlice<UInt8>) {
        guard failure == nil else { return }
        compact()
        buffer.append(contentsOf: bytes)
    }

    /// Appends bytes read from the stream (any sequence; the `[UInt8]`, `ArraySlice` and raw-buffer
    /// overloads are the fast ones).
    public mutating func feed<S: Sequence>(_ bytes: S) where S.Element == UInt8 {
        guard failure == nil else { return }
        compact()
        buffer.append(contentsOf: bytes)
    }

    /// Appends bytes read from the stream, from a raw buffer (e.g. a `read(2)` target).
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        guard failure == nil else { return }
        compact()
        buffer.append(contentsOf: bytes)
    }

    /// The next complete frame, or `nil` when more bytes are needed.
    /// - Throws: ``FrameError/frameTooLarge(_:limit:)`` (sticky) when a header announces a frame over the limit.
    public mutating func nextFrame() throws(FrameError) -> Frame? {
        if let failure { throw failure }
        guard let header = pendingHeader else { return nil }
        guard header.frameLength <= maximumFrameSize else {
            let error = FrameError.frameTooLarge(header, limit: maximumFrameSize)
            failure = error
            buffer = []
            readIndex = 0
            throw error
        }
        guard bufferedByteCount >= header.frameLength else { return nil }
        let payloadStart = readIndex + FrameHeader.byteCount
        let payload = Array(buffer[payloadStart..<(payloadStart + Int(header.payloadLength))])
        readIndex += header.frameLength
        if readIndex == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            readIndex = 0
        }
        // Lengths agree by construction.
        guard let frame = Frame(header: header, payload: payload) else { return nil }
        return frame
    }

    /// Gives the next frame, if it is complete, within the limit and of `type` with no frame flags, to
    /// `body` without copying its payload (the bytes are valid only during the call), and consumes the
    /// frame when `body` returns `true`. Returns the consumed frame's header; `nil` (nothing consumed)
    /// otherwise, so the caller falls back to ``nextFrame()``, which reports any error.
    public mutating func takeFrame(ofType type: MessageType,
                                   _ body: (FrameHeader, UnsafeRawBufferPointer) -> Bool) -> FrameHeader? {
        guard failure == nil, let header = pendingHeader, header.type == type, header.flags.isEmpty,
              header.frameLength <= maximumFrameSize, bufferedByteCount >= header.frameLength else { return nil }
        let payloadStart = readIndex + FrameHeader.byteCount
        let accepted = buffer.withUnsafeBytes { bytes in
            body(header, UnsafeRawBufferPointer(rebasing: bytes[payloadStart..<(payloadStart + Int(header.payloadLength))]))
        }
        guard accepted else { return nil }
        readIndex += header.frameLength
        if readIndex == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            readIndex = 0
        }
        return header
    }

    /// Declares the end of the stream.
    /// - Throws: ``FrameError/truncated(header:received:)`` when bytes of an incomplete frame are
    ///   buffered, or the sticky ``FrameError/frameTooLarge(_:limit:)``. Call it after ``nextFrame()``
    ///   returned `nil`.
    public func finish() throws(FrameError) {
        if let failure { throw failure }
        guard bufferedByteCount == 0 else { throw .truncated(header: pendingHeader, received: bufferedByteCount) }
    }

    /// Drops consumed bytes when they are at least half the buffer, so the buffer stays within about
    /// twice what is pending, and copying stays amortised O(1) per byte.
    private mutating func compact() {
        guard readIndex > 0 else { return }
        if readIndex == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            readIndex = 0
        } else if readIndex >= buffer.count / 2 {
            buffer.removeSubrange(0..<readIndex)
            readIndex = 0
        }
    }
}
