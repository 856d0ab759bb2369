import InvalidationEngine
import PSMMU
import SMMUv3
import VirtualSMMU
import VSMMUJournal
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

extension ResumeToken {
    /// A new token from the kernel's CSPRNG: the standard library's `SystemRandomNumberGenerator`, which on
    /// Linux is `getrandom(2)` (blocking until the pool is seeded; it traps rather than return weak bytes).
    static func random() throws(SystemCallError) -> ResumeToken {
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        for _ in 0..<(byteCount / 8) {
            withUnsafeBytes(of: generator.next() as UInt64) { bytes.append(contentsOf: $0) }
        }
        guard let token = ResumeToken(bytes: bytes) else { throw SystemCallError("getrandom", errno: EIO) }
        return token
    }
}

/// The last control request the daemon applied on a vSMMU and the reply it sent: what RESUME's reply
/// replay answers a re-sent request with (PROTOCOL.md "Durability and restarts").
struct JournaledReply: Hashable, Sendable {
    var type: UInt16
    var requestID: UInt64
    /// CRC-32C of the request's payload.
    var payloadCRC: UInt32
    /// The whole reply frame, header included, as it was written.
    var reply: [UInt8]

    /// Whether a request is the journaled one re-sent: same type, request id and payload.
    func isResent(type: UInt16, requestID: UInt64, payload: [UInt8]) -> Bool {
        self.type == type && self.requestID == requestID && payloadCRC == CRC32C.checksum(payload)
    }
}

/// A viommu as the journal keeps it: what re-creates it (simulated pSMMU) or re-adopts it (iommufd).
struct JournaledViommu: Hashable, Sendable {
    var index: UInt32
    var pSMMU: String
    var hostDeviceID: UInt32
    var nestParentHWPT: UInt32
    /// The backend's viommu object id when it was journaled (the iommufd `viommu_id`).
    var backendViommuID: UInt32
}

/// A SET_DEV_ID registration and its linked vSTE and CDs, as the journal keeps it.
struct JournaledDevice: Hashable, Sendable {
    var streamID: StreamID
    var viommu: UInt32
    var hostDeviceID: UInt32
    var ste: StreamTableEntry?
    var contextDescriptors: [ContextDescriptor]
}

/// One vSMMU's journal record (key: its id): rewritten whole after each control change.
struct VSMMURecord: Hashable, Sendable {
    var id: UInt32
    var name: String
    var ownerUserID: UInt32
    /// The tenant whose namespace its simulated host devices live in.
    var tenant: UInt64
    /// `nil`: created on a protocol version without resume (1-2); such a vSMMU cannot be resumed.
    var token: ResumeToken?
    var lastReply: JournaledReply?
    var viommus: [JournaledViommu]
    var devices: [JournaledDevice]

    /// The record's format version (the journal file's is the store's own).
    static let version: UInt16 = 1
    static let magic: [UInt8] = Array("VSR".utf8)

    /// Why a record's bytes were refused.
    struct DecodingError: Error, CustomStringConvertible {
        var offset: Int
        var reason: String
        var description: String { "vSMMU record malformed at byte \(offset): \(reason)" }
    }

    func encoded() -> [UInt8] {
        var w = RecordWriter()
        w.bytes(Self.magic)
        w.u16(Self.version)
        w.u32(id)
        w.string(name)
        w.u32(ownerUserID)
        w.u64(tenant)
        if let token { w.u8(1); w.bytes(token.bytes) } else { w.u8(0) }
        if let lastReply {
            w.u8(1)
            w.u16(lastReply.type)
            w.u64(lastReply.requestID)
            w.u32(lastReply.payloadCRC)
            w.blob(lastReply.reply)
        } else {
            w.u8(0)
        }
        w.u32(UInt32(viommus.count))
        for v in viommus {
            w.u32(v.index); w.string(v.pSMMU); w.u32(v.hostDeviceID); w.u32(v.nestParentHWPT); w.u32(v.backendViommuID)
        }
        w.u32(UInt32(devices.count))
        for d in devices {
            w.u32(d.streamID); w.u32(d.viommu); w.u32(d.hostDeviceID)
            if let ste = d.ste { w.u8(1); w.words(ste.words) } else { w.u8(0) }
            w.u32(UInt32(d.contextDescriptors.count))
            for cd in d.contextDescriptors { w.words(cd.words) }
        }
        return w.output
    }

    init(id: UInt32, name: String, ownerUserID: UInt32, tenant: UInt64, token: ResumeToken?, lastReply: JournaledReply?,
         viommus: [JournaledViommu], devices: [JournaledDevice]) {
        self.id = id
        self.name = name
        self.ownerUserID = ownerUserID
        self.tenant = tenant
        self.token = token
        self.lastReply = lastReply
        self.viommus = viommus
        self.devices = devices
    }

    init(decoding bytes: [UInt8]) throws(DecodingError) {
        var r = RecordReader(bytes: bytes)
        guard try r.bytes(3) == Self.magic else { throw DecodingError(offset: 0, reason: "not a vSMMU record") }
        let version = try r.u16()
        guard version == Self.version else { throw DecodingError(offset: 3, reason: "record version \(version), this vsmmud knows \(Self.version)") }
        id = try r.u32()
        name = try r.string()
        ownerUserID = try r.u32()
        tenant = try r.u64()
        switch try r.u8() {
        case 0: token = nil
        case 1: token = ResumeToken(bytes: try r.bytes(ResumeToken.byteCount))
        case let flag: throw DecodingError(offset: r.offset - 1, reason: "token flag \(flag)")
        }
        switch try r.u8() {
        case 0: lastReply = nil
        case 1: lastReply = JournaledReply(type: try r.u16(), requestID: try r.u64(), payloadCRC: try r.u32(), reply: try r.blob())
        case let flag: throw DecodingError(offset: r.offset - 1, reason: "reply flag \(flag)")
        }
        let viommuCount = try r.count(maximum: VSMMU.maximumViommus)
        viommus = []
        for _ in 0..<viommuCount {
            viommus.append(JournaledViommu(index: try r.u32(), pSMMU: try r.string(), hostDeviceID: try r.u32(),
                                           nestParentHWPT: try r.u32(), backendViommuID: try r.u32()))
        }
        let deviceCount = try r.count(maximum: bytes.count)
        devices = []
        for _ in 0..<deviceCount {
            let streamID = try r.u32(), viommu = try r.u32(), hostDeviceID = try r.u32()
            var ste: StreamTableEntry?
            switch try r.u8() {
            case 0: ste = nil
            case 1: var e = StreamTableEntry(); e.words = try r.words(); ste = e
            case let flag: throw DecodingError(offset: r.offset - 1, reason: "STE flag \(flag)")
            }
            let cdCount = try r.count(maximum: bytes.count / 64)
            var cds: [ContextDescriptor] = []
            for _ in 0..<cdCount {
                var cd = ContextDescriptor()
                cd.words = try r.words()
                cds.append(cd)
            }
            devices.append(JournaledDevice(streamID: streamID, viommu: viommu, hostDeviceID: hostDeviceID, ste: ste, contextDescriptors: cds))
        }
        guard r.offset == bytes.count else { throw DecodingError(offset: r.offset, reason: "\(bytes.count - r.offset) bytes after the record") }
    }
}

/// Little-endian writer of a ``VSMMURecord``.
private struct RecordWriter {
    var output: [UInt8] = []
    mutating func u8(_ v: UInt8) { output.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { output.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { output.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { output.append(contentsOf: $0) } }
    mutating func bytes(_ v: [UInt8]) { output.append(contentsOf: v) }
    mutating func blob(_ v: [UInt8]) { u32(UInt32(v.count)); bytes(v) }
    mutating func string(_ v: String) { blob(Array(v.utf8)) }
    mutating func words(_ v: EightWords) { for i in 0..<8 { u64(v[i]) } }
}

/// Little-endian reader of a ``VSMMURecord``: every read checks the length.
private struct RecordReader {
    let bytes: [UInt8]
    var offset = 0
    mutating func bytes(_ n: Int) throws(VSMMURecord.DecodingError) -> [UInt8] {
        guard n >= 0, bytes.count - offset >= n else {
            throw VSMMURecord.DecodingError(offset: offset, reason: "\(n) bytes wanted, \(bytes.count - offset) left")
        }
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }
    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(VSMMURecord.DecodingError) -> T {
        let raw = try bytes(MemoryLayout<T>.size)
        var value = T.zero
        for (i, byte) in raw.enumerated() { value |= T(byte) << (8 * i) }
        return value
    }
    mutating func u8() throws(VSMMURecord.DecodingError) -> UInt8 { try integer(UInt8.self) }
    mutating func u16() throws(VSMMURecord.DecodingError) -> UInt16 { try integer(UInt16.self) }
    mutating func u32() throws(VSMMURecord.DecodingError) -> UInt32 { try integer(UInt32.self) }
    mutating func u64() throws(VSMMURecord.DecodingError) -> UInt64 { try integer(UInt64.self) }
    mutating func blob() throws(VSMMURecord.DecodingError) -> [UInt8] { try bytes(Int(try u32())) }
    mutating func string() throws(VSMMURecord.DecodingError) -> String {
        let start = offset
        guard let s = String(validating: try blob(), as: UTF8.self) else {
            throw VSMMURecord.DecodingError(offset: start, reason: "a name that is not UTF-8")
        }
        return s
    }
    mutating func count(maximum: Int) throws(VSMMURecord.DecodingError) -> Int {
        let start = offset
        let n = Int(try u32())
        guard n <= maximum else { throw VSMMURecord.DecodingError(offset: start, reason: "a count of \(n), over \(maximum)") }
        return n
    }
    mutating func words() throws(VSMMURecord.DecodingError) -> EightWords {
        var w = EightWords()
        for i in 0..<8 { w[i] = try u64() }
        return w
    }
}

extension VSMMUServer {
    /// The journal record of `served` as it stands: its identity and owner, and the engine's registrations.
    func record(of served: ServedVSMMU) -> VSMMURecord {
        let vsmmu = served.engine.vsmmu
        let statistics = served.engine.viommuStatistics
        let requests = served.attachRequests.withLock { $0 }
        let viommus = vsmmu.viommus.compactMap { $0 }.map { v -> JournaledViommu in
            let request = requests[UInt32(v.index.rawValue)] ?? ViommuAttachRequest()
            let handle = statistics.first { $0.index == v.index }?.handle.rawValue ?? 0
            return JournaledViommu(index: UInt32(v.index.rawValue), pSMMU: v.pSMMU, hostDeviceID: request.hostDeviceID,
                                   nestParentHWPT: request.nestParentHWPT, backendViommuID: handle)
        }
        let devices = vsmmu.devices.values.sorted { $0.streamID < $1.streamID }.map { d in
            JournaledDevice(streamID: d.streamID, viommu: UInt32(d.viommu.rawValue), hostDeviceID: d.hostDeviceID,
                            ste: d.ste, contextDescriptors: d.contextDescriptors)
        }
        return VSMMURecord(id: served.id.rawValue, name: served.name, ownerUserID: served.ownerUserID, tenant: served.tenant,
                           token: served.token, lastReply: served.lastReply.withLock { $0 }, viommus: viommus, devices: devices)
    }

    /// Makes `served`'s current state durable (one record, fdatasync'ed) before its reply is written.
    /// A failure marks the vSMMU: it refuses control requests until a later write of its record works.
    /// - Throws: `INTERNAL_ERROR` naming the journal's failure.
    func journal(_ served: ServedVSMMU, type: MessageType) throws(ProtocolError) {
        guard let journal = self.journal else { return }
        let bytes = record(of: served).encoded()
        do throws(JournalError) {
            try journal.put(key: UInt64(served.id.rawValue), value: bytes)
            served.journalFailure.withLock { $0 = nil }
        } catch {
            served.journalFailure.withLock { $0 = error }
            logger.error("journal write failed: vSMMU refuses control requests until the journal works", metadata: [
                "vsmmu": "\(served.id.rawValue)", "error": "\(error)",
            ])
            throw .internalError(type: type, "the change was applied but could not be made durable (\(error)); vSMMU \(served.id.rawValue) refuses control requests until the journal works")
        }
    }

    /// Before a control request on `served`: when an earlier journal write failed, rewrites the record
    /// first. - Throws: `INTERNAL_ERROR` while the journal still fails.
    func requireDurable(_ served: ServedVSMMU, type: MessageType) throws(ProtocolError) {
        guard journal != nil, let failure = served.journalFailure.withLock({ $0 }) else { return }
        do throws(ProtocolError) { try self.journal(served, type: type) } catch {
            throw .internalError(type: type, "vSMMU \(served.id.rawValue) refuses control requests until the journal works: \(failure)")
        }
    }

    /// Removes `id`'s record (DESTROY_VSMMU, a connection that ended, a reclaim). A failure is logged:
    /// the record then comes back at the next start, unowned, and is reclaimed after the grace period.
    func journalRemoval(of id: VSMMUID) throws(JournalError) {
        try journal?.remove(key: UInt64(id.rawValue))
    }
}
