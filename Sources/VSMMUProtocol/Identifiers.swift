/// A vSMMU's id: daemon-wide, never 0, never reused while the daemon runs (`vsmmu_id`).
public struct VSMMUID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "vsmmu\(rawValue)" }

    /// `nil` for 0 (the wire's "none"/"all"/"daemon"), the id otherwise.
    @inlinable static func optional(_ raw: UInt32) -> VSMMUID? { raw == 0 ? nil : VSMMUID(raw) }
}

extension Optional where Wrapped == VSMMUID {
    /// The wire form: 0 for `nil`.
    @inlinable var wireValue: UInt32 { self?.rawValue ?? 0 }
}

/// How a message's payload is read and written. Internal: the public surface is ``Request`` and
/// ``Response``.
protocol PayloadCoding {
    /// Size of the fixed part (the C struct's `sizeof`).
    static var fixedLength: Int { get }
    /// The payload length the message needs, from its fixed part's counts when `payload` holds it
    /// (otherwise the fixed length). Computed in 64 bits: counts cannot overflow it.
    static func requiredLength(_ payload: [UInt8]) -> UInt64
    /// Reads the payload; its length was checked against ``requiredLength(_:)``.
    init(from r: inout WireReader) throws(ProtocolError)
    /// Writes the payload.
    func encode(to w: inout WireWriter) throws(ProtocolError)
}

extension PayloadCoding {
    static func requiredLength(_ payload: [UInt8]) -> UInt64 { UInt64(fixedLength) }

    /// `fixedLength + count × elementSize` with the count read at `countOffset`.
    static func requiredLength(_ payload: [UInt8], countAt countOffset: Int, elementSize: Int) -> UInt64 {
        guard payload.count >= fixedLength else { return UInt64(fixedLength) }
        return UInt64(fixedLength) + UInt64(WireReader(payload).peekU32(at: countOffset)) * UInt64(elementSize)
    }
}

/// An empty payload (HEALTH, and the replies that carry nothing).
struct EmptyPayload: PayloadCoding {
    static let fixedLength = 0
    init() {}
    init(from r: inout WireReader) throws(ProtocolError) {}
    func encode(to w: inout WireWriter) throws(ProtocolError) {}
}
