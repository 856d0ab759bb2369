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
    /// A new token from the kernel's CSPRNG (`randomSecretBytes`).
    static func random() throws(SystemCallError) -> ResumeToken {
        guard let token = ResumeToken(bytes: randomSecretBytes()) else { throw SystemCallError("getrandom", errno: EIO) }
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

/// A CREATE_VSMMU that carried a create key, and its reply: what a re-sent CREATE_VSMMU (same key, type,
/// request id and payload) is answered with after a daemon restart, instead of creating a second vSMMU.
struct JournaledCreation: Hashable, Sendable {
    var key: CreateKey
    var reply: JournaledReply
}

/// One vSMMU's journal record (key: its id): rewritten whole after each control change. It holds the
/// engine's snapshot (``EngineSnapshot``: viommus with their backend object ids, devices with their
/// vdevices, attachments and nested HWPTs, vSTEs, CDs, retiring ASIDs) and only what the engine does
/// not know: the name, the owner's uid and resume token, the tenant, the last control reply.
struct VSMMURecord: Hashable, Sendable {
    var id: UInt32
    var name: String
    var ownerUserID: UInt32
    /// The tenant whose namespace its simulated host devices live in.
    var tenant: UInt64
    /// `nil`: created on a protocol version without resume (1-2); such a vSMMU cannot be resumed.
    var token: ResumeToken?
    var lastReply: JournaledReply?
    /// The CREATE_VSMMU that created it, when that carried a create key.
    var creation: JournaledCreation?
    /// The engine's registrations (`VSMMUEngine.snapshot()`).
    var snapshot: EngineSnapshot

    /// The record's format version (the journal file's is the store's own). Version 3 adds the creation;
    /// version 2 (no creation) is read as a record without one. Version 1 (vsmmud before the engine
    /// snapshot, which listed viommus and devices itself) is refused: no journal of it was deployed.
    static let version: UInt16 = 3
    static let readableVersions: ClosedRange<UInt16> = 2...3
    static let magic: [UInt8] = Array("VSR".utf8)

    /// Why a record's bytes were refused.
    struct DecodingError: Error, CustomStringConvertible {
        var offset: Int
        var reason: String
        var description: String { "vSMMU record malformed at byte \(offset): \(reason)" }
    }

    /// ```
    /// "VSR" · u16 version (2) · u32 id · u32 length + name (UTF-8) · u32 owner uid · u64 tenant
    /// · u8 token flag [· 16 bytes token] · u8 reply flag [· u16 type · u64 request id · u32 payload CRC-32C
    /// · u32 length + reply frame] · u8 creation flag [· 16 bytes create key · u16 type · u64 request id
    /// · u32 payload CRC-32C · u32 length + reply frame] (version 3) · u32 length + engine snapshot
    /// (EngineSnapshot's codec)
    /// ```
    func encoded() -> [UInt8] {
        var w = LittleEndianWriter()
        w.bytes(Self.magic)
        w.u16(Self.version)
        w.u32(id)
        w.blob(Array(name.utf8))
        w.u32(ownerUserID)
        w.u64(tenant)
        if let token { w.u8(1); w.bytes(token.bytes) } else { w.u8(0) }
        func reply(_ r: JournaledReply) {
            w.u16(r.type)
            w.u64(r.requestID)
            w.u32(r.payloadCRC)
            w.blob(r.reply)
        }
        if let lastReply { w.u8(1); reply(lastReply) } else { w.u8(0) }
        if let creation { w.u8(1); w.bytes(creation.key.bytes); reply(creation.reply) } else { w.u8(0) }
        w.blob(snapshot.encode())
        return w.output
    }

    init(id: UInt32, name: String, ownerUserID: UInt32, tenant: UInt64, token: ResumeToken?, lastReply: JournaledReply?,
         creation: JournaledCreation? = nil, snapshot: EngineSnapshot) {
        self.id = id
        self.name = name
        self.ownerUserID = ownerUserID
        self.tenant = tenant
        self.token = token
        self.lastReply = lastReply
        self.creation = creation
        self.snapshot = snapshot
    }

    init(decoding bytes: [UInt8]) throws(DecodingError) {
        var r = LittleEndianReader(bytes)
        func read<T>(_ body: (inout LittleEndianReader) throws(EngineSnapshotError) -> T) throws(DecodingError) -> T {
            let start = r.offset
            do throws(EngineSnapshotError) { return try body(&r) } catch {
                if case .truncated(let offset, let needed) = error {
                    throw DecodingError(offset: offset, reason: "\(needed) bytes wanted, \(bytes.count - offset) left")
                }
                throw DecodingError(offset: start, reason: "\(error)")
            }
        }
        guard try read({ r throws(EngineSnapshotError) in try r.bytes(3) }) == Self.magic else {
            throw DecodingError(offset: 0, reason: "not a vSMMU record")
        }
        let version = try read { r throws(EngineSnapshotError) in try r.u16() }
        guard Self.readableVersions.contains(version) else {
            throw DecodingError(offset: 3, reason: version == 1
                ? "record version 1 (written by a vsmmud before the journal held the engine snapshot), this vsmmud reads only versions \(Self.readableVersions.lowerBound)-\(Self.readableVersions.upperBound): move the state directory aside"
                : "record version \(version), this vsmmud knows \(Self.readableVersions.lowerBound)-\(Self.readableVersions.upperBound)")
        }
        id = try read { r throws(EngineSnapshotError) in try r.u32() }
        let nameAt = r.offset
        guard let name = String(validating: try read({ r throws(EngineSnapshotError) in try r.blob() }), as: UTF8.self) else {
            throw DecodingError(offset: nameAt, reason: "a name that is not UTF-8")
        }
        self.name = name
        ownerUserID = try read { r throws(EngineSnapshotError) in try r.u32() }
        tenant = try read { r throws(EngineSnapshotError) in try r.u64() }
        switch try read({ r throws(EngineSnapshotError) in try r.u8() }) {
        case 0: token = nil
        case 1: token = ResumeToken(bytes: try read { r throws(EngineSnapshotError) in try r.bytes(ResumeToken.byteCount) })
        case let flag: throw DecodingError(offset: r.offset - 1, reason: "token flag \(flag)")
        }
        func reply() throws(DecodingError) -> JournaledReply {
            try read { r throws(EngineSnapshotError) in
                JournaledReply(type: try r.u16(), requestID: try r.u64(), payloadCRC: try r.u32(), reply: try r.blob())
            }
        }
        switch try read({ r throws(EngineSnapshotError) in try r.u8() }) {
        case 0: lastReply = nil
        case 1: lastReply = try reply()
        case let flag: throw DecodingError(offset: r.offset - 1, reason: "reply flag \(flag)")
        }
        creation = nil
        if version >= 3 {
            switch try read({ r throws(EngineSnapshotError) in try r.u8() }) {
            case 0: break
            case 1:
                let keyAt = r.offset
                guard let key = CreateKey(bytes: try read { r throws(EngineSnapshotError) in try r.bytes(CreateKey.byteCount) }) else {
                    throw DecodingError(offset: keyAt, reason: "a create key that is not 16 bytes")
                }
                creation = JournaledCreation(key: key, reply: try reply())
            case let flag: throw DecodingError(offset: r.offset - 1, reason: "creation flag \(flag)")
            }
        }
        let snapshotAt = r.offset + 4
        let snapshotBytes = try read { r throws(EngineSnapshotError) in try r.blob() }
        do throws(EngineSnapshotError) { snapshot = try EngineSnapshot(decoding: snapshotBytes) } catch {
            throw DecodingError(offset: snapshotAt, reason: "\(error)")
        }
        guard r.remaining == 0 else { throw DecodingError(offset: r.offset, reason: "\(r.remaining) bytes after the record") }
    }
}

extension VSMMUServer {
    /// The journal record of `served` as it stands: its identity and owner, and the engine's snapshot (the
    /// journaled one while it awaits its descriptors: its engine then has no backend to describe).
    /// - Throws: the engine's refusal when a backend cannot describe its objects.
    func record(of served: ServedVSMMU) throws(EngineError) -> VSMMURecord {
        let snapshot = try served.awaited.withLock { (a) throws(EngineError) -> EngineSnapshot in
            if let a { return a.snapshot }
            return try served.engine.snapshot()
        }
        return VSMMURecord(id: served.id.rawValue, name: served.name, ownerUserID: served.ownerUserID, tenant: served.tenant,
                           token: served.token, lastReply: served.lastReply.withLock { $0 },
                           creation: served.creation.withLock { $0 }, snapshot: snapshot)
    }

    /// Makes `served`'s current state durable (one record, fdatasync'ed) before its reply is written.
    /// A failure marks the vSMMU: it refuses control requests until a later write of its record works.
    /// - Throws: `INTERNAL_ERROR` naming the journal's failure.
    func journal(_ served: ServedVSMMU, type: MessageType) throws(ProtocolError) {
        guard let journal = self.journal else { return }
        let bytes: [UInt8]
        do throws(EngineError) { bytes = try record(of: served).encoded() } catch {
            throw .internalError(type: type, "the change was applied but vSMMU \(served.id.rawValue)'s state cannot be recorded: \(error)")
        }
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
