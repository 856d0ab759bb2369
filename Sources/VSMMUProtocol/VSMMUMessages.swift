import SMMUv3

// The requests that build and tear down a vSMMU (PROTOCOL.md §5.2-5.10) and their replies.

/// CREATE_VSMMU (`struct vsmmu_create_vsmmu`, 72 bytes; `struct vsmmu_create_vsmmu_keyed`, 88 bytes, with a
/// create key). Reply: ``VSMMUCreated``.
public struct CreateVSMMU: Hashable, Sendable {
    /// `flags` bit 0, `VSMMU_CREATE_FLAG_KEY`: the payload ends with a 16-byte create key.
    public static let keyFlag: UInt32 = 1 << 0
    /// The byte offset of `flags` in the payload, for a `BAD_FIELD` that names it.
    public static let flagsOffset = 0
    /// A label for admin listings (e.g. the VM's name), at most 64 UTF-8 bytes; may be empty.
    public var name: String
    /// The client's key for this creation (version 3): the same frame re-sent after a daemon restart
    /// with the same `request_id` is answered with the vSMMU it created, not a second one (PROTOCOL.md
    /// §5.2). `nil`: none (`flags` 0, 72 bytes).
    public var createKey: CreateKey?
    public init(name: String = "", createKey: CreateKey? = nil) {
        self.name = name
        self.createKey = createKey
    }
}

extension CreateVSMMU: PayloadCoding {
    static let fixedLength = 72
    /// The length with a create key.
    static let lengthWithKey = fixedLength + CreateKey.byteCount
    /// 72, or 88 when `flags` (offset 0) has ``keyFlag``.
    static func requiredLength(_ payload: [UInt8]) -> UInt64 {
        guard payload.count >= 4, WireReader(payload).peekU32(at: 0) & keyFlag != 0 else { return UInt64(fixedLength) }
        return UInt64(lengthWithKey)
    }
    init(from r: inout WireReader) throws(ProtocolError) {
        let flags = try r.flags32(known: Self.keyFlag)
        try r.reserved32()
        let name = try r.name()
        self.init(name: name, createKey: flags & Self.keyFlag != 0 ? CreateKey(bytes: r.secret()) : nil)
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(createKey == nil ? 0 : Self.keyFlag)
        w.u32(0)
        try w.name(name)
        if let createKey { w.bytes.append(contentsOf: createKey.bytes) }
    }
}

/// 16 bytes (a resume token's or a create key's size) from the system's CSPRNG: the standard library's
/// `SystemRandomNumberGenerator`, which on Linux is getrandom(2), blocking until the pool is seeded (it
/// traps rather than return weak bytes).
public func randomSecretBytes() -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    var bytes: [UInt8] = []
    bytes.reserveCapacity(ResumeToken.byteCount)
    for _ in 0..<(ResumeToken.byteCount / 8) { withUnsafeBytes(of: generator.next() as UInt64) { bytes.append(contentsOf: $0) } }
    return bytes
}

/// Compares two byte strings of public length in time independent of where they differ (every byte is
/// compared; only a length mismatch, which is public, returns early).
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var difference: UInt8 = 0
    for i in 0..<a.count { difference |= a[i] ^ b[i] }
    return difference == 0
}

/// A CREATE_VSMMU's create key (16 bytes, version 3): 128 random bits the client draws for one creation,
/// so that the creation can be answered again, not repeated, when its reply was lost with a daemon that
/// restarted. Like the resume token it is a capability (it yields the vSMMU and its token): never logged
/// or printed (``description`` hides it).
public struct CreateKey: Hashable, Sendable, CustomStringConvertible {
    /// The key's size on the wire. The corresponding C constant is `VSMMU_CREATE_KEY_SIZE`.
    public static let byteCount = 16
    /// The 16 bytes, in wire order.
    public let bytes: [UInt8]

    /// A key of exactly ``byteCount`` bytes; `nil` otherwise.
    public init?(bytes: [UInt8]) {
        guard bytes.count == Self.byteCount else { return nil }
        self.bytes = bytes
    }

    /// A new key from the system's CSPRNG (``randomSecretBytes()``).
    public static func random() -> CreateKey { CreateKey(unchecked: randomSecretBytes()) }

    private init(unchecked bytes: [UInt8]) { self.bytes = bytes }

    /// Whether `other` is this key, in time independent of where they differ.
    public func matches(_ other: CreateKey) -> Bool { constantTimeEqual(bytes, other.bytes) }

    /// Never the secret.
    public var description: String { "CreateKey(16 bytes)" }
}

/// A vSMMU's resume token (16 bytes): the capability that lets its owner take it over again after the
/// daemon restarted (RESUME_VSMMU). The daemon draws it from getrandom(2) and hands it out once, in
/// CREATE_VSMMU's reply; it is never logged, listed or printed (``description`` hides it).
public struct ResumeToken: Hashable, Sendable, CustomStringConvertible {
    /// The token's size on the wire. The corresponding C constant is `VSMMU_RESUME_TOKEN_SIZE`.
    public static let byteCount = 16
    /// The 16 bytes, in wire order.
    public let bytes: [UInt8]

    /// A token of exactly ``byteCount`` bytes; `nil` otherwise.
    public init?(bytes: [UInt8]) {
        guard bytes.count == Self.byteCount else { return nil }
        self.bytes = bytes
    }

    /// Whether `other` is this token, in time independent of where they differ.
    public func matches(_ other: ResumeToken) -> Bool { matches(other.bytes) }

    /// Whether `candidate` holds this token's bytes, in time independent of where they differ (every byte
    /// is compared; only the length, which is public, returns early).
    public func matches(_ candidate: [UInt8]) -> Bool { constantTimeEqual(bytes, candidate) }

    /// Never the secret.
    public var description: String { "ResumeToken(16 bytes)" }
}

extension WireWriter {
    mutating func token(_ t: ResumeToken) { bytes.append(contentsOf: t.bytes) }
}

extension WireReader {
    /// The next 16 bytes: a resume token or a create key.
    mutating func secret() -> [UInt8] {
        var b: [UInt8] = []
        b.reserveCapacity(ResumeToken.byteCount)
        for _ in 0..<ResumeToken.byteCount { b.append(u8()) }
        return b
    }

    mutating func token() -> ResumeToken? { ResumeToken(bytes: secret()) }
}

/// CREATE_VSMMU's reply: `struct vsmmu_create_vsmmu_reply` (8 bytes) on a version 1-2 connection,
/// `struct vsmmu_create_vsmmu_reply_v3` (24 bytes: the same, then the resume token) on version 3.
public struct VSMMUCreated: Hashable, Sendable {
    public var vsmmu: VSMMUID
    /// The vSMMU's resume token (version 3; `nil` on versions 1-2, whose vSMMUs cannot be resumed).
    public var resumeToken: ResumeToken?
    public init(vsmmu: VSMMUID, resumeToken: ResumeToken? = nil) {
        self.vsmmu = vsmmu
        self.resumeToken = resumeToken
    }
}

extension VSMMUCreated: PayloadCoding {
    static let fixedLength = 8
    /// The version-3 reply's length.
    static let lengthWithToken = 8 + ResumeToken.byteCount
    /// 8 or 24 bytes: a payload of 24 carries the token; anything else must be 8.
    static func requiredLength(_ payload: [UInt8]) -> UInt64 {
        UInt64(payload.count == lengthWithToken ? lengthWithToken : fixedLength)
    }
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32()
        guard id != 0 else { throw .badField(r.type, offset: 0, value: 0, "vsmmu_id 0 is never assigned") }
        try r.reserved32()
        let token = r.remaining >= ResumeToken.byteCount ? r.token() : nil
        self.init(vsmmu: VSMMUID(id), resumeToken: token)
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        guard vsmmu.rawValue != 0 else { throw .badField(w.type, offset: 0, value: 0, "vsmmu_id 0 is never assigned") }
        w.u32(vsmmu.rawValue)
        w.u32(0)
        if let resumeToken { w.token(resumeToken) }
    }
}

/// RESUME_VSMMU (`struct vsmmu_resume_vsmmu`, 24 bytes, version 3): the connection takes over the vSMMU
/// whose resume token it presents. May carry the VMM's iommufd (`FD_ATTACHED`). Reply: ``VSMMUResumed``.
public struct ResumeVSMMU: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public var resumeToken: ResumeToken
    /// Whether the frame carries the VMM's iommufd (`VSMMU_FRAME_FD_ATTACHED`).
    public var fileDescriptorAttached: Bool
    public init(vsmmu: VSMMUID, resumeToken: ResumeToken, fileDescriptorAttached: Bool = false) {
        self.vsmmu = vsmmu
        self.resumeToken = resumeToken
        self.fileDescriptorAttached = fileDescriptorAttached
    }
}

extension ResumeVSMMU: PayloadCoding {
    static let fixedLength = 8 + ResumeToken.byteCount
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32()
        try r.reserved32()
        guard let token = r.token() else { throw .badPayloadLength(r.type, expected: UInt64(Self.fixedLength), actual: 8) }
        self.init(vsmmu: VSMMUID(id), resumeToken: token)
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(0)
        w.token(resumeToken)
    }
}

/// RESUME_VSMMU's reply (`struct vsmmu_resume_vsmmu_reply`, 24 bytes): what the daemon holds for the
/// vSMMU, and the request id of the last control request it applied on it (0: none), so the client
/// knows whether its unanswered control request took effect (re-sending it is answered from the
/// journal, not applied twice: PROTOCOL.md "Durability and restarts").
public struct VSMMUResumed: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public var viommuCount: UInt32
    public var deviceCount: UInt32
    public var lastRequestID: UInt64
    public init(vsmmu: VSMMUID, viommuCount: UInt32, deviceCount: UInt32, lastRequestID: UInt64) {
        self.vsmmu = vsmmu
        self.viommuCount = viommuCount
        self.deviceCount = deviceCount
        self.lastRequestID = lastRequestID
    }
}

extension VSMMUResumed: PayloadCoding {
    static let fixedLength = 24
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32(), viommus = r.u32(), devices = r.u32()
        try r.reserved32()
        self.init(vsmmu: VSMMUID(id), viommuCount: viommus, deviceCount: devices, lastRequestID: r.u64())
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(viommuCount)
        w.u32(deviceCount)
        w.u32(0)
        w.u64(lastRequestID)
    }
}

/// DESTROY_VSMMU (`struct vsmmu_destroy_vsmmu`, 8 bytes): the vSMMU and everything under it. Reply: empty.
public struct DestroyVSMMU: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public init(vsmmu: VSMMUID) { self.vsmmu = vsmmu }
}

extension DestroyVSMMU: PayloadCoding {
    static let fixedLength = 8
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32()
        try r.reserved32()
        self.init(vsmmu: VSMMUID(id))
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(0)
    }
}

/// ATTACH_VIOMMU (`struct vsmmu_attach_viommu`, 80 bytes): a viommu on a named pSMMU. Reply: ``ViommuAttached``.
public struct AttachViommu: Hashable, Sendable {
    public var vsmmu: VSMMUID
    /// The pSMMU's name as the daemon knows it; not empty, at most 64 UTF-8 bytes.
    public var pSMMU: String
    /// A device behind the pSMMU, bound to the VMM's iommufd (`dev_id`): the viommu is allocated through it.
    public var hostDeviceID: UInt32
    /// The VM's nest-parent (stage-2) HWPT on that pSMMU, in the VMM's iommufd.
    public var nestParentHWPT: UInt32
    /// Whether the frame carries the VMM's iommufd (`VSMMU_FRAME_FD_ATTACHED`); the fd itself travels
    /// in the `sendmsg`'s `SCM_RIGHTS`, outside the codec.
    public var fileDescriptorAttached: Bool

    public init(vsmmu: VSMMUID, pSMMU: String, hostDeviceID: UInt32, nestParentHWPT: UInt32,
                fileDescriptorAttached: Bool = false) {
        self.vsmmu = vsmmu
        self.pSMMU = pSMMU
        self.hostDeviceID = hostDeviceID
        self.nestParentHWPT = nestParentHWPT
        self.fileDescriptorAttached = fileDescriptorAttached
    }
}

extension AttachViommu: PayloadCoding {
    static let fixedLength = 80
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32(), device = r.u32(), hwpt = r.u32()
        try r.reserved32()
        let name = try r.name()
        guard !name.isEmpty else { throw .badField(r.type, offset: 16, value: 0, "psmmu name is empty") }
        // The flag is the frame's; ``Request`` sets it.
        self.init(vsmmu: VSMMUID(id), pSMMU: name, hostDeviceID: device, nestParentHWPT: hwpt)
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(hostDeviceID)
        w.u32(nestParentHWPT)
        w.u32(0)
        guard !pSMMU.isEmpty else { throw .badField(w.type, offset: 16, value: 0, "psmmu name is empty") }
        try w.name(pSMMU)
    }
}

/// ATTACH_VIOMMU's reply (`struct vsmmu_attach_viommu_reply`, 8 bytes).
public struct ViommuAttached: Hashable, Sendable {
    /// The viommu's index in the vSMMU, 0-63.
    public var viommu: UInt32
    /// The backend's id of the viommu (iommufd viommu object id); informational.
    public var backendViommuID: UInt32
    public init(viommu: UInt32, backendViommuID: UInt32) {
        self.viommu = viommu
        self.backendViommuID = backendViommuID
    }
}

extension ViommuAttached: PayloadCoding {
    static let fixedLength = 8
    init(from r: inout WireReader) throws(ProtocolError) {
        let index = r.u32()
        guard index < WireProtocol.maximumViommus else {
            throw .badField(r.type, offset: 0, value: UInt64(index), "viommu index \(index) is not below \(WireProtocol.maximumViommus)")
        }
        self.init(viommu: index, backendViommuID: r.u32())
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        guard viommu < WireProtocol.maximumViommus else {
            throw .badField(w.type, offset: 0, value: UInt64(viommu), "viommu index \(viommu) is not below \(WireProtocol.maximumViommus)")
        }
        w.u32(viommu)
        w.u32(backendViommuID)
    }
}

/// DETACH_VIOMMU (`struct vsmmu_detach_viommu`, 8 bytes). Reply: empty.
public struct DetachViommu: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public var viommu: UInt32
    public init(vsmmu: VSMMUID, viommu: UInt32) {
        self.vsmmu = vsmmu
        self.viommu = viommu
    }
}

extension DetachViommu: PayloadCoding {
    static let fixedLength = 8
    init(from r: inout WireReader) throws(ProtocolError) {
        self.init(vsmmu: VSMMUID(r.u32()), viommu: r.u32())
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(viommu)
    }
}

/// SET_DEV_ID and UNSET_DEV_ID (`struct vsmmu_dev_id`, 16 bytes): a device's vSID behind a viommu.
/// Reply: empty.
public struct DeviceRegistration: Hashable, Sendable {
    /// The byte offset of each field in the payload, for a `BAD_FIELD` that names one.
    public enum Field: Int, Sendable {
        case vsmmu = 0, viommu = 4, hostDeviceID = 8, streamID = 12
    }

    public var vsmmu: VSMMUID
    /// The viommu the device sits behind.
    public var viommu: UInt32
    /// The device's iommufd `dev_id`.
    public var hostDeviceID: UInt32
    /// The guest's StreamID for the device.
    public var streamID: StreamID
    /// SET_DEV_ID only (version 2): whether the frame carries the device's VFIO cdev
    /// (`VSMMU_FRAME_FD_ATTACHED`), already bound to the VMM's iommufd; the fd itself travels in the
    /// `sendmsg`'s `SCM_RIGHTS`, outside the codec.
    public var fileDescriptorAttached: Bool

    public init(vsmmu: VSMMUID, viommu: UInt32, hostDeviceID: UInt32, streamID: StreamID,
                fileDescriptorAttached: Bool = false) {
        self.vsmmu = vsmmu
        self.viommu = viommu
        self.hostDeviceID = hostDeviceID
        self.streamID = streamID
        self.fileDescriptorAttached = fileDescriptorAttached
    }
}

extension DeviceRegistration: PayloadCoding {
    static let fixedLength = 16
    init(from r: inout WireReader) throws(ProtocolError) {
        self.init(vsmmu: VSMMUID(r.u32()), viommu: r.u32(), hostDeviceID: r.u32(), streamID: r.u32())
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(viommu)
        w.u32(hostDeviceID)
        w.u32(streamID)
    }
}

/// LINK_STE (`struct vsmmu_link_ste`, 80 + 64 × `cd_count` bytes): a guest STE and the CDs of its
/// table, CD *i* being SSID *i*. Reply: ``HWPTLinked``.
public struct LinkSTE: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public var streamID: StreamID
    public var ste: StreamTableEntry
    public var contextDescriptors: [ContextDescriptor]

    public init(vsmmu: VSMMUID, streamID: StreamID, ste: StreamTableEntry, contextDescriptors: [ContextDescriptor] = []) {
        self.vsmmu = vsmmu
        self.streamID = streamID
        self.ste = ste
        self.contextDescriptors = contextDescriptors
    }
}

extension LinkSTE: PayloadCoding {
    static let fixedLength = 80
    static func requiredLength(_ payload: [UInt8]) -> UInt64 {
        requiredLength(payload, countAt: 8, elementSize: ContextDescriptor.byteCount)
    }
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32(), sid = r.u32(), count = Int(r.u32())
        try r.reserved32()
        var ste = StreamTableEntry()
        r.words(into: &ste)
        var cds: [ContextDescriptor] = []
        cds.reserveCapacity(min(count, r.remaining / ContextDescriptor.byteCount))
        for _ in 0..<count where r.remaining >= ContextDescriptor.byteCount {
            var cd = ContextDescriptor()
            r.words(into: &cd)
            cds.append(cd)
        }
        self.init(vsmmu: VSMMUID(id), streamID: sid, ste: ste, contextDescriptors: cds)
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(streamID)
        w.u32(UInt32(clamping: contextDescriptors.count))
        w.u32(0)
        w.words(ste)
        for cd in contextDescriptors { w.words(cd) }
    }
}

/// The reply of LINK_STE and UPDATE_CD (`struct vsmmu_hwpt_reply`, 8 bytes): the stage-1 HWPT now
/// serving the vSID.
public struct HWPTLinked: Hashable, Sendable {
    /// The vSMMU's id of the S1 HWPT, `nil` when the STE does not translate (0 on the wire).
    public var s1HWPT: UInt32?
    /// Whether this request created the HWPT (`VSMMU_HWPT_NEW`).
    public var isNew: Bool

    public init(s1HWPT: UInt32?, isNew: Bool) {
        self.s1HWPT = s1HWPT
        self.isNew = isNew
    }

    /// `VSMMU_HWPT_NEW`.
    static let newFlag: UInt32 = 0x1
}

extension HWPTLinked: PayloadCoding {
    static let fixedLength = 8
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32()
        let flags = try r.flags32(known: Self.newFlag)
        guard id != 0 || flags == 0 else {
            throw .badField(r.type, offset: 4, value: UInt64(flags), "VSMMU_HWPT_NEW without an HWPT")
        }
        self.init(s1HWPT: id == 0 ? nil : id, isNew: flags & Self.newFlag != 0)
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        guard s1HWPT != 0, s1HWPT != nil || !isNew else {
            throw .badField(w.type, offset: 0, value: UInt64(s1HWPT ?? 0), "an HWPT id is never 0; a new HWPT needs an id")
        }
        w.u32(s1HWPT ?? 0)
        w.u32(isNew ? Self.newFlag : 0)
    }
}

/// UNLINK_STE (`struct vsmmu_unlink_ste`, 8 bytes). Reply: empty.
public struct UnlinkSTE: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public var streamID: StreamID
    public init(vsmmu: VSMMUID, streamID: StreamID) {
        self.vsmmu = vsmmu
        self.streamID = streamID
    }
}

extension UnlinkSTE: PayloadCoding {
    static let fixedLength = 8
    init(from r: inout WireReader) throws(ProtocolError) {
        self.init(vsmmu: VSMMUID(r.u32()), streamID: r.u32())
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(streamID)
    }
}

/// UPDATE_CD (`struct vsmmu_update_cd`, 80 bytes): one rewritten CD. Reply: ``HWPTLinked``.
public struct UpdateCD: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public var streamID: StreamID
    public var substreamID: SubstreamID
    public var contextDescriptor: ContextDescriptor

    public init(vsmmu: VSMMUID, streamID: StreamID, substreamID: SubstreamID, contextDescriptor: ContextDescriptor) {
        self.vsmmu = vsmmu
        self.streamID = streamID
        self.substreamID = substreamID
        self.contextDescriptor = contextDescriptor
    }
}

extension UpdateCD: PayloadCoding {
    static let fixedLength = 80
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32(), sid = r.u32(), ssid = r.u32()
        try r.reserved32()
        var cd = ContextDescriptor()
        r.words(into: &cd)
        self.init(vsmmu: VSMMUID(id), streamID: sid, substreamID: ssid, contextDescriptor: cd)
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(streamID)
        w.u32(substreamID)
        w.u32(0)
        w.words(contextDescriptor)
    }
}

/// GET_HW_INFO (`struct vsmmu_get_hw_info`, 8 bytes, version 2): the ID registers the VMM advertises to
/// its guest for this vSMMU. Reply: ``HardwareInfo``.
public struct GetHardwareInfo: Hashable, Sendable {
    public var vsmmu: VSMMUID
    public init(vsmmu: VSMMUID) { self.vsmmu = vsmmu }
}

extension GetHardwareInfo: PayloadCoding {
    static let fixedLength = 8
    init(from r: inout WireReader) throws(ProtocolError) {
        let id = r.u32()
        try r.reserved32()
        self.init(vsmmu: VSMMUID(id))
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        w.u32(vsmmu.rawValue)
        w.u32(0)
    }
}

/// GET_HW_INFO's reply (`struct vsmmu_hw_info_reply`, 40 bytes): IDR0-5, IIDR and AIDR as the vSMMU
/// presents them, the intersection of what `IOMMU_GET_HW_INFO` gave for every pSMMU behind it.
public struct HardwareInfo: Hashable, Sendable {
    /// How many viommus (pSMMUs) the registers were computed over, at least 1.
    public var viommuCount: UInt32
    public var registers: IDRegisters

    public init(viommuCount: UInt32, registers: IDRegisters) {
        self.viommuCount = viommuCount
        self.registers = registers
    }
}

extension HardwareInfo: PayloadCoding {
    static let fixedLength = 40
    init(from r: inout WireReader) throws(ProtocolError) {
        let count = r.u32()
        guard count >= 1, count <= UInt32(WireProtocol.maximumViommus) else {
            throw .badField(r.type, offset: 0, value: UInt64(count), "viommu_count \(count) is not 1-\(WireProtocol.maximumViommus)")
        }
        try r.reserved32()
        let idr = (0..<6).map { _ in r.u32() }
        let iidr = r.u32(), aidr = r.u32()
        self.init(viommuCount: count, registers: IDRegisters(idr: idr, iidr: iidr, aidr: aidr))
    }
    func encode(to w: inout WireWriter) throws(ProtocolError) {
        guard viommuCount >= 1, viommuCount <= UInt32(WireProtocol.maximumViommus) else {
            throw .badField(w.type, offset: 0, value: UInt64(viommuCount), "viommu_count \(viommuCount) is not 1-\(WireProtocol.maximumViommus)")
        }
        w.u32(viommuCount)
        w.u32(0)
        for value in registers.idr { w.u32(value) }
        w.u32(registers.iidr)
        w.u32(registers.aidr)
    }
}
