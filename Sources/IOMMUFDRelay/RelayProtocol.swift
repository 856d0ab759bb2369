/// The relay protocol between ``RelayChannel`` and `scripts/realkernel/relay-agent.c`, the static arm64
/// program it starts in the rig's guest. The agent's comment is the normative text; this is the same
/// specification, version 1, as the host sees it.
///
/// Transport: the virtio-serial port, a raw byte stream; every integer is little-endian. On start the
/// agent writes the banner ``RelayProtocol/banner`` (`VSMMURL1`), then one response per request, in order:
///
/// ```
/// request  := u32 length | u32 op | payload[length - 4]
/// response := u32 length | i32 status | payload[length - 4]
/// ```
///
/// `status` is 0 or a positive errno: the guest syscall's, or the agent's own `EPROTO` (malformed request),
/// `EMSGSIZE` (longer than ``RelayProtocol/maximumFrame``), `ENOSYS` (unknown op), `ENOMEM`. A bad request
/// is answered and never ends the agent.
///
/// | op | request payload | response payload |
/// |---|---|---|
/// | 1 HELLO | – | u32 version, u32 pid |
/// | 2 OPEN | u32 flags, path bytes | i32 fd |
/// | 3 CLOSE | i32 fd (0-2 refused with EBADF) | – |
/// | 4 DUP | i32 fd | i32 new fd |
/// | 5 IOCTL | i32 fd, u32 n, u64 request, u32 arglen, n × (u32 offset, u32 in, u32 out), arg, in bytes | i64 result, u32 arglen, arg after, out bytes |
/// | 6 READ | i32 fd, u32 max | the bytes read; `EAGAIN` when the fd is not readable now (never blocks) |
/// | 7 MMAP | u64 length | u64 address of zeroed anonymous read-write memory |
/// | 8 MUNMAP | u64 address, u64 length | – |
/// | 9 UNAME | – | sysname, nodename, release, version, machine, each NUL-terminated |
/// | 10 QUIT | – | –, then the agent exits |
/// | 11 PWRITE | i32 fd, u64 offset, ≤ 4096 bytes | u32 count written by one `pwrite(2)` |
/// | 12 PREAD | i32 fd, u64 offset, u32 count ≤ 4096 | the bytes one `pread(2)` returned |
///
/// IOCTL's pointer fields are u64 user pointers at `offset` in the argument: the agent substitutes a
/// buffer of max(in, out) zeroed bytes holding the `in` bytes, calls `ioctl(2)`, restores the original
/// values, and returns the argument as the kernel left it plus the first `out` bytes of each buffer —
/// also when the ioctl failed (status = its errno). The agent knows no ioctl; ``RelayPointerFields``
/// says which fields are pointers.
public enum RelayProtocol {
    /// The protocol version HELLO reports.
    public static let version: UInt32 = 1
    /// What the agent writes first, before any response.
    public static let banner: [UInt8] = Array("VSMMURL1".utf8)
    /// The longest request or response body the agent takes (16 MiB).
    public static let maximumFrame = 16 << 20
    /// Where the uploaded agent is written in the guest.
    public static let guestAgentPath = "/tmp/vsmmud-relay-agent"

    /// A request's operation.
    public enum Op: UInt32, Sendable, CustomStringConvertible {
        case hello = 1, open, close, dup, ioctl, read, mmap, munmap, uname, quit, pwrite, pread

        public var description: String {
            switch self {
            case .hello: return "HELLO"
            case .open: return "OPEN"
            case .close: return "CLOSE"
            case .dup: return "DUP"
            case .ioctl: return "IOCTL"
            case .read: return "READ"
            case .mmap: return "MMAP"
            case .munmap: return "MUNMAP"
            case .uname: return "UNAME"
            case .quit: return "QUIT"
            case .pwrite: return "PWRITE"
            case .pread: return "PREAD"
            }
        }
    }

    /// A request frame: length, op, payload.
    public static func frame(op rawOp: UInt32, payload: [UInt8]) -> [UInt8] {
        var out = ByteWriter(capacity: 8 + payload.count)
        out.u32(UInt32(truncatingIfNeeded: payload.count + 4))
        out.u32(rawOp)
        out.bytes(payload)
        return out.buffer
    }
}

/// One pointer field of an ioctl argument, as the relay sends it to the agent.
public struct RelayPointer: Hashable, Sendable, CustomStringConvertible {
    /// The byte offset of the u64 user pointer in the argument.
    public var offset: UInt32
    /// How many bytes the kernel reads from the buffer (copied from the caller's memory to the guest).
    public var inBytes: UInt32
    /// How many bytes the kernel may write to the buffer (copied back to the caller's memory).
    public var outBytes: UInt32

    public init(offset: UInt32, inBytes: UInt32, outBytes: UInt32) {
        self.offset = offset
        self.inBytes = inBytes
        self.outBytes = outBytes
    }

    public var description: String { "ptr@\(offset)(in \(inBytes), out \(outBytes))" }
}

/// Little-endian encoding of a request payload.
struct ByteWriter {
    var buffer: [UInt8] = []

    init(capacity: Int = 0) { buffer.reserveCapacity(capacity) }

    mutating func u32(_ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { buffer.append(contentsOf: $0) }
    }

    mutating func i32(_ value: Int32) { u32(UInt32(bitPattern: value)) }

    mutating func u64(_ value: UInt64) {
        withUnsafeBytes(of: value.littleEndian) { buffer.append(contentsOf: $0) }
    }

    mutating func bytes<S: Sequence>(_ bytes: S) where S.Element == UInt8 { buffer.append(contentsOf: bytes) }

    mutating func bytes(_ raw: UnsafeRawBufferPointer) { buffer.append(contentsOf: raw) }
}

/// Little-endian decoding of a response payload; every read is bounds-checked.
struct ByteReader {
    let bytes: [UInt8]
    private(set) var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - position }

    mutating func u32() -> UInt32? {
        guard remaining >= 4 else { return nil }
        defer { position += 4 }
        return (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[position + $1]) << (8 * UInt32($1)) }
    }

    mutating func i32() -> Int32? { u32().map { Int32(bitPattern: $0) } }

    mutating func u64() -> UInt64? {
        guard let low = u32(), let high = u32() else { return nil }
        return UInt64(low) | UInt64(high) << 32
    }

    mutating func take(_ count: Int) -> ArraySlice<UInt8>? {
        guard count >= 0, remaining >= count else { return nil }
        defer { position += count }
        return bytes[position ..< position + count]
    }
}
