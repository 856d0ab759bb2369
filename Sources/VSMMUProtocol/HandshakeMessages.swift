/// HELLO (`struct vsmmu_hello`, 80 bytes): the client's versions and identity; the first request on
/// every connection.
public struct Hello: Hashable, Sendable {
    /// The versions the client speaks (`min_version ... max_version`, both ≥ 1).
    public var versions: ClosedRange<UInt16>
    /// The client's pid (informational; the daemon trusts `SO_PEERCRED`).
    public var processID: UInt32
    /// A label for logs, at most 64 UTF-8 bytes, no NUL.
    public var clientName: String

    public init(versions: ClosedRange<UInt16> = WireProtocol.supportedVersions, processID: UInt32, clientName: String) {
        self.versions = versions
        self.processID = processID
        self.clientName = clientName
    }
}

extension Hello: PayloadCoding {
    static let fixedLength = 80

    init(from r: inout WireReader) throws(ProtocolError) {
        let magic = r.u32()
        guard magic == WireProtocol.magic else {
            throw .badField(.hello, offset: 0, value: UInt64(magic), "bad magic 0x\(hex(magic, digits: 8)), expected \"VSMU\"")
        }
        let low = r.u16(), high = r.u16()
        guard low >= 1 else { throw .badField(.hello, offset: 4, value: UInt64(low), "min_version must be at least 1") }
        guard low <= high else {
            throw .badField(.hello, offset: 6, value: UInt64(high), "max_version \(high) is below min_version \(low)")
        }
        let pid = r.u32()
        try r.reserved32()
        let name = try r.name()
        self.init(versions: low...high, processID: pid, clientName: name)
    }

    func encode(to w: inout WireWriter) throws(ProtocolError) {
        guard versions.lowerBound >= 1 else {
            throw .badField(.hello, offset: 4, value: 0, "min_version must be at least 1")
        }
        w.u32(WireProtocol.magic)
        w.u16(versions.lowerBound)
        w.u16(versions.upperBound)
        w.u32(processID)
        w.u32(0)
        try w.name(clientName)
    }
}

/// The limits a server announces in its HELLO reply.
public struct ServerLimits: Hashable, Sendable {
    /// Largest request frame accepted, header included (65 536 … 1 048 576).
    public var maximumFrameSize: UInt32
    /// Largest `command_count` of an INVALIDATE (≤ (`maximumFrameSize` − 32) / 16).
    public var maximumCommandsPerInvalidate: UInt32
    /// vSMMUs one connection may own.
    public var maximumVSMMUs: UInt32
    /// viommus per vSMMU (64).
    public var maximumViommus: UInt32
    /// Largest `cd_count` of a LINK_STE.
    public var maximumContextDescriptors: UInt32

    public init(maximumFrameSize: UInt32 = UInt32(WireProtocol.maximumFrameSize),
                maximumCommandsPerInvalidate: UInt32? = nil, maximumVSMMUs: UInt32 = 16,
                maximumViommus: UInt32 = UInt32(WireProtocol.maximumViommus),
                maximumContextDescriptors: UInt32? = nil) {
        self.maximumFrameSize = maximumFrameSize
        let frame = Int(maximumFrameSize)
        self.maximumCommandsPerInvalidate = maximumCommandsPerInvalidate
            ?? UInt32(clamping: WireProtocol.maximumCommands(frameSize: frame))
        self.maximumVSMMUs = maximumVSMMUs
        self.maximumViommus = maximumViommus
        self.maximumContextDescriptors = maximumContextDescriptors
            ?? UInt32(clamping: max(0, (frame - FrameHeader.byteCount - LinkSTE.fixedLength) / 64))
    }
}

/// HELLO_REPLY (`struct vsmmu_hello_reply`, 96 bytes): the version chosen and the server's limits.
public struct HelloReply: Hashable, Sendable {
    /// The version the connection now speaks.
    public var version: UInt16
    public var limits: ServerLimits
    public var serverProcessID: UInt32
    /// E.g. `"vsmmud 0.4.0"`, at most 64 UTF-8 bytes.
    public var serverName: String

    public init(version: UInt16 = WireProtocol.version, limits: ServerLimits = ServerLimits(),
                serverProcessID: UInt32, serverName: String) {
        self.version = version
        self.limits = limits
        self.serverProcessID = serverProcessID
        self.serverName = serverName
    }
}

extension HelloReply: PayloadCoding {
    static let fixedLength = 96
    private static let type = MessageType.hello.reply

    init(from r: inout WireReader) throws(ProtocolError) {
        let magic = r.u32()
        guard magic == WireProtocol.magic else {
            throw .badField(Self.type, offset: 0, value: UInt64(magic), "bad magic 0x\(hex(magic, digits: 8)), expected \"VSMU\"")
        }
        let version = r.u16()
        guard version >= 1 else { throw .badField(Self.type, offset: 4, value: 0, "version 0") }
        try r.reserved16()
        let limits = ServerLimits(maximumFrameSize: r.u32(), maximumCommandsPerInvalidate: r.u32(),
                                  maximumVSMMUs: r.u32(), maximumViommus: r.u32(), maximumContextDescriptors: r.u32())
        try Self.check(limits)
        let pid = r.u32()
        let name = try r.name()
        self.init(version: version, limits: limits, serverProcessID: pid, serverName: name)
    }

    func encode(to w: inout WireWriter) throws(ProtocolError) {
        try Self.check(limits)
        w.u32(WireProtocol.magic)
        w.u16(version)
        w.u16(0)
        w.u32(limits.maximumFrameSize)
        w.u32(limits.maximumCommandsPerInvalidate)
        w.u32(limits.maximumVSMMUs)
        w.u32(limits.maximumViommus)
        w.u32(limits.maximumContextDescriptors)
        w.u32(serverProcessID)
        try w.name(serverName)
    }

    private static func check(_ limits: ServerLimits) throws(ProtocolError) {
        let frame = Int(limits.maximumFrameSize)
        guard (WireProtocol.minimumFrameSizeLimit...WireProtocol.maximumFrameSize).contains(frame) else {
            throw .badField(type, offset: 8, value: UInt64(frame),
                            "max_frame_size \(frame) outside \(WireProtocol.minimumFrameSizeLimit)...\(WireProtocol.maximumFrameSize)")
        }
        guard Int(limits.maximumCommandsPerInvalidate) <= WireProtocol.maximumCommands(frameSize: frame) else {
            throw .badField(type, offset: 12, value: UInt64(limits.maximumCommandsPerInvalidate),
                            "max_commands \(limits.maximumCommandsPerInvalidate) does not fit in a frame of \(frame) bytes")
        }
    }
}
