/// The constants of the vsmmud wire protocol (`protocol/PROTOCOL.md`), each the value of the `vsmmu.h`
/// macro it names.
public enum WireProtocol {
    /// HELLO's magic, the bytes `"VSMU"`. The corresponding C constant is `VSMMU_MAGIC`.
    public static let magic: UInt32 = 0x554D_5356
    /// The protocol version this codec implements. The corresponding C constant is `VSMMU_PROTOCOL_VERSION`.
    public static let version: UInt16 = 5
    /// The versions this codec can speak. Version 2 adds GET_HW_INFO and the VFIO cdev on SET_DEV_ID;
    /// version 3 adds the resume token in CREATE_VSMMU's reply, RESUME_VSMMU and LIST's vSMMU flags;
    /// version 4 adds the shared command queue (MAP_QUEUE, UNMAP_QUEUE); version 5 adds the event queue
    /// (MAP_EVENT_QUEUE, UNMAP_EVENT_QUEUE) and SIMULATE_DMA.
    public static let supportedVersions: ClosedRange<UInt16> = 1...5
    /// The size of every frame header. `sizeof(struct vsmmu_frame_header)`.
    public static let headerSize = 16
    /// No frame, in either direction, is larger (header included): 1 MiB.
    /// The corresponding C constant is `VSMMU_MAX_FRAME_SIZE`.
    public static let maximumFrameSize = 1 << 20
    /// The smallest `max_frame_size` a server may announce. The corresponding C constant is
    /// `VSMMU_MIN_FRAME_SIZE_LIMIT`.
    public static let minimumFrameSizeLimit = 1 << 16
    /// The longest UTF-8 message of an ERROR or INVALIDATE reply, in bytes; longer messages are cut at a
    /// character boundary when encoded. The corresponding C constant is `VSMMU_MAX_MESSAGE_LENGTH`.
    public static let maximumMessageLength = 1024
    /// The size of every name field (UTF-8, NUL-padded). The corresponding C constant is `VSMMU_NAME_SIZE`.
    public static let nameCapacity = 64
    /// viommus per vSMMU. The corresponding C constant is `VSMMU_MAX_VIOMMUS`.
    public static let maximumViommus = 64
    /// INVALIDATE reply's `error_index` when there is no error. The corresponding C constant is
    /// `VSMMU_NO_ERROR_INDEX`.
    public static let noErrorIndex: UInt32 = 0xFFFF_FFFF
    /// The largest `command_count` that fits in a frame of `frameSize` bytes.
    public static func maximumCommands(frameSize: Int) -> Int {
        max(0, (frameSize - headerSize - 16) / 16)
    }

    /// Chooses the version a connection speaks: the highest both sides speak (PROTOCOL.md §3.1).
    ///
    /// - Throws: `UNSUPPORTED_VERSION` (detail: the server's lowest version, value: its highest) when the
    ///   ranges do not meet.
    public static func negotiateVersion(client: ClosedRange<UInt16>,
                                        server: ClosedRange<UInt16> = supportedVersions) throws(ProtocolError) -> UInt16 {
        let low = Swift.max(client.lowerBound, server.lowerBound)
        let high = Swift.min(client.upperBound, server.upperBound)
        guard low <= high else { throw .unsupportedVersion(client: client, server: server) }
        return high
    }
}
