#if canImport(Glibc)
import Glibc
#endif
import CommandRing
import PSMMU
import SMMUv3
import VirtualSMMU

/// Everything a later daemon process needs to rebuild one ``VSMMUEngine``: its viommus (with the
/// backend's object ids), its registered devices (with their vdevices and attachments), their linked
/// vSTEs and CDs (with their nested HWPTs), and the ASIDs still retiring from a viommu.
///
/// A plain value: ``VSMMUEngine/snapshot()`` takes it, ``encode()`` turns it into bytes for a journal,
/// ``init(decoding:)`` reads them back (after a crash: every count and length is checked against the
/// bytes that are there), and ``VSMMUEngine/restore(_:configuration:backends:descriptors:)`` rebuilds
/// the engine from it.
///
/// What it does not hold: the queues' contents (a restarted daemon has executed nothing the old one
/// accepted but had not completed: the guest's un-acknowledged CMD_SYNCs are re-sent by the VMM), the
/// routing counters and the queue statistics (they start from zero), and the vSMMU's own S1 HWPT
/// numbers (``S1HWPTID``; a restored vSMMU numbers its S1 HWPTs afresh; they never leave the daemon
/// except as LIST's `s1_hwpt`, which names a HWPT, not a lifetime).
public struct EngineSnapshot: Hashable, Sendable {
    /// An attached viommu.
    public struct Viommu: Hashable, Sendable {
        /// Its index in the vSMMU (kept: StreamIDs, LIST and STATS name viommus by index).
        public var index: ViommuIndex
        /// The pSMMU it sits on (the ATTACH_VIOMMU name).
        public var pSMMU: String
        /// What the VMM passed at ATTACH_VIOMMU.
        public var request: ViommuAttachRequest
        /// The backend's handle of it in the process that took the snapshot.
        public var handle: ViommuHandle
        /// What the backend needs to take it back (``PSMMUBackend/objects(of:)``).
        public var objects: ViommuObjects

        public init(index: ViommuIndex, pSMMU: String, request: ViommuAttachRequest,
                    handle: ViommuHandle, objects: ViommuObjects = ViommuObjects()) {
            self.index = index
            self.pSMMU = pSMMU
            self.request = request
            self.handle = handle
            self.objects = objects
        }
    }

    /// A registered device (SET_DEV_ID) and its vSTE.
    public struct Device: Hashable, Sendable {
        /// The virtual StreamID.
        public var streamID: StreamID
        public var viommu: ViommuIndex
        /// The iommufd `dev_id` (or the simulated pSMMU's device number).
        public var hostDeviceID: HostDeviceID
        /// The backend's vdevice.
        public var vdevice: VDeviceHandle
        /// Where the backend has the device attached (``DeviceDomain/nested(_:)`` names ``Link/hwpt``).
        public var domain: DeviceDomain
        /// The linked vSTE, if any.
        public var link: Link?

        public init(streamID: StreamID, viommu: ViommuIndex, hostDeviceID: HostDeviceID, vdevice: VDeviceHandle,
                    domain: DeviceDomain = .nestParent, link: Link? = nil) {
            self.streamID = streamID
            self.viommu = viommu
            self.hostDeviceID = hostDeviceID
            self.vdevice = vdevice
            self.domain = domain
            self.link = link
        }
    }

    /// A linked vSTE: the STE as the vSMMU holds it (after the kernel's nesting rules), its CDs by
    /// SubstreamID, and the nested HWPT the backend installed for it when it translates.
    public struct Link: Hashable, Sendable {
        public var ste: StreamTableEntry
        public var contextDescriptors: [ContextDescriptor]
        /// The backend's nested HWPT (translating vSTEs only).
        public var hwpt: HWPTHandle?

        public init(ste: StreamTableEntry, contextDescriptors: [ContextDescriptor] = [], hwpt: HWPTHandle? = nil) {
            self.ste = ste
            self.contextDescriptors = contextDescriptors
            self.hwpt = hwpt
        }
    }

    /// An ASID no HWPT on some viommus carries any more but that no invalidation covering it has reached
    /// there yet (``ASIDIndex``'s retirement rule). Kept across a restart: the pSMMU behind an iommufd
    /// viommu is the same hardware, its TLB may still hold the ASID, and the guest's next
    /// `TLBI_NH_ASID` must still reach it.
    public struct RetiringASID: Hashable, Sendable {
        public var asid: ASID
        public var viommus: ViommuSet

        public init(asid: ASID, viommus: ViommuSet) {
            self.asid = asid
            self.viommus = viommus
        }
    }

    /// The viommus, by ascending index.
    public var viommus: [Viommu]
    /// The devices, by ascending StreamID.
    public var devices: [Device]
    /// The retiring ASIDs, by ascending ASID.
    public var retiring: [RetiringASID]

    public init(viommus: [Viommu] = [], devices: [Device] = [], retiring: [RetiringASID] = []) {
        self.viommus = viommus
        self.devices = devices
        self.retiring = retiring
    }

    /// Whether the snapshot is one a ``VSMMUEngine`` could have taken: unique viommu indices below
    /// ``VSMMU/maximumViommus`` and unique pSMMUs, each device on one of them with a unique StreamID
    /// and host device, a nested domain only for a link with that HWPT, a HWPT only on a linked device,
    /// retiring sets within the attached viommus.
    /// - Throws: ``EngineSnapshotError/inconsistent(_:)`` naming the first violation.
    public func validate() throws(EngineSnapshotError) {
        var indices = Set<ViommuIndex>()
        var names = Set<String>()
        for viommu in viommus {
            guard viommu.index.index < VSMMU.maximumViommus else {
                throw .inconsistent("viommu index \(viommu.index.rawValue) beyond \(VSMMU.maximumViommus - 1)")
            }
            guard indices.insert(viommu.index).inserted else { throw .inconsistent("viommu index \(viommu.index.rawValue) twice") }
            guard !viommu.pSMMU.isEmpty, viommu.pSMMU.utf8.count <= Self.maximumNameLength else {
                throw .inconsistent("viommu \(viommu.index.rawValue): pSMMU name of \(viommu.pSMMU.utf8.count) bytes")
            }
            guard names.insert(viommu.pSMMU).inserted else { throw .inconsistent("pSMMU \(viommu.pSMMU) has two viommus") }
            guard viommu.objects.bytes.count <= ViommuObjects.maximumByteCount else {
                throw .inconsistent("viommu \(viommu.index.rawValue): \(viommu.objects.bytes.count) bytes of backend objects")
            }
        }
        let attached = ViommuSet(indices)
        var streamIDs = Set<StreamID>()
        var hosts = Set<HostDeviceID>()
        for device in devices {
            let sid = "StreamID 0x" + String(device.streamID, radix: 16)
            guard attached.contains(device.viommu), device.viommu.index < VSMMU.maximumViommus else {
                throw .inconsistent("\(sid) is behind viommu \(device.viommu.rawValue), which is not attached")
            }
            guard streamIDs.insert(device.streamID).inserted else { throw .inconsistent("\(sid) twice") }
            guard hosts.insert(device.hostDeviceID).inserted else {
                throw .inconsistent("host device \(device.hostDeviceID) registered twice")
            }
            switch device.domain {
            case .nested(let hwpt):
                guard let linked = device.link?.hwpt, linked == hwpt else {
                    throw .inconsistent("\(sid) is attached to \(hwpt), which is not its vSTE's HWPT")
                }
            case .abort, .bypass, .nestParent:
                break
            }
            if let link = device.link {
                if link.hwpt != nil, !link.ste.translatesStage1 {
                    throw .inconsistent("\(sid) has a nested HWPT for a vSTE that does not translate")
                }
                if link.contextDescriptors.count > link.ste.contextDescriptorCount {
                    throw .inconsistent("\(sid): \(link.contextDescriptors.count) CDs for an STE with \(link.ste.contextDescriptorCount)")
                }
            }
        }
        var asids = Set<ASID>()
        for entry in retiring {
            guard asids.insert(entry.asid).inserted else { throw .inconsistent("ASID \(entry.asid) retiring twice") }
            guard !entry.viommus.isEmpty, entry.viommus.subtracting(attached).isEmpty else {
                throw .inconsistent("ASID \(entry.asid) retiring from \(entry.viommus), attached: \(attached)")
            }
        }
    }

    /// The longest pSMMU name the codec takes (bytes of UTF-8).
    public static let maximumNameLength = 255
}

/// Why bytes are not an ``EngineSnapshot``.
public enum EngineSnapshotError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The bytes end inside a field: `needed` bytes at `offset`, fewer there.
    case truncated(offset: Int, needed: Int)
    /// The bytes do not start with the snapshot magic.
    case notASnapshot
    /// A format version this build does not read.
    case unsupportedVersion(UInt16)
    /// A field that holds what no snapshot holds (a reserved bit, a count beyond its bound, …).
    case badField(offset: Int, String)
    /// Bytes after the last record.
    case trailingBytes(offset: Int, count: Int)
    /// Well-formed bytes of a snapshot no engine could have taken (``EngineSnapshot/validate()``).
    case inconsistent(String)

    public var description: String {
        switch self {
        case .truncated(let offset, let needed): return "engine snapshot truncated: \(needed) byte(s) needed at offset \(offset)"
        case .notASnapshot: return "not an engine snapshot (bad magic)"
        case .unsupportedVersion(let v): return "engine snapshot format version \(v) is not supported (this build reads \(EngineSnapshot.formatVersion))"
        case .badField(let offset, let what): return "engine snapshot: \(what) at offset \(offset)"
        case .trailingBytes(let offset, let count): return "engine snapshot: \(count) byte(s) after the end at offset \(offset)"
        case .inconsistent(let what): return "engine snapshot is inconsistent: \(what)"
        }
    }
}

// MARK: - Byte codec

extension EngineSnapshot {
    /// `VSES`: the first four bytes of every encoding.
    public static let magic: [UInt8] = Array("VSES".utf8)
    /// The format ``encode()`` writes and ``init(decoding:)`` reads.
    public static let formatVersion: UInt16 = 1

    /// The snapshot as bytes, little-endian, format ``formatVersion``:
    ///
    /// ```
    /// header   magic "VSES" · u16 version · u16 reserved (0) · u16 viommus · u16 reserved (0)
    ///          · u32 devices · u32 retiring ASIDs
    /// viommu   u8 index · u8 reserved · u16 name length · name (UTF-8) · u32 host dev_id
    ///          · u32 nest-parent hwpt_id · u32 handle · u16 objects length · objects
    /// device   u32 StreamID · u8 viommu · u8 domain (0 nest parent, 1 abort, 2 bypass, 3 nested)
    ///          · u8 flags (bit 0 linked, bit 1 has a nested HWPT) · u8 reserved · u32 host device
    ///          · u32 vdevice · [linked: 8 × u64 STE · u32 CD count · CD count × 8 × u64
    ///          · [HWPT: u32 hwpt]]
    /// retiring u16 ASID · u16 reserved · u32 reserved · u64 viommu mask
    /// ```
    public func encode() -> [UInt8] {
        var w = LittleEndianWriter()
        w.bytes(Self.magic)
        w.u16(Self.formatVersion)
        w.u16(0)
        w.u16(UInt16(truncatingIfNeeded: viommus.count))
        w.u16(0)
        w.u32(UInt32(truncatingIfNeeded: devices.count))
        w.u32(UInt32(truncatingIfNeeded: retiring.count))
        for viommu in viommus {
            let name = Array(viommu.pSMMU.utf8.prefix(Self.maximumNameLength))
            w.u8(viommu.index.rawValue)
            w.u8(0)
            w.u16(UInt16(name.count))
            w.bytes(name)
            w.u32(viommu.request.hostDeviceID)
            w.u32(viommu.request.nestParentHWPT)
            w.u32(viommu.handle.rawValue)
            let objects = viommu.objects.bytes.prefix(ViommuObjects.maximumByteCount)
            w.u16(UInt16(objects.count))
            w.bytes(Array(objects))
        }
        for device in devices {
            w.u32(device.streamID)
            w.u8(device.viommu.rawValue)
            w.u8(Self.domainCode(device.domain))
            var flags: UInt8 = 0
            if device.link != nil { flags |= 1 }
            if device.link?.hwpt != nil { flags |= 2 }
            w.u8(flags)
            w.u8(0)
            w.u32(device.hostDeviceID)
            w.u32(device.vdevice.rawValue)
            if let link = device.link {
                for i in 0 ..< StreamTableEntry.wordCount { w.u64(link.ste.word(i)) }
                w.u32(UInt32(truncatingIfNeeded: link.contextDescriptors.count))
                for cd in link.contextDescriptors {
                    for i in 0 ..< ContextDescriptor.wordCount { w.u64(cd.word(i)) }
                }
                if let hwpt = link.hwpt { w.u32(hwpt.rawValue) }
            }
        }
        for entry in retiring {
            w.u16(entry.asid)
            w.u16(0)
            w.u32(0)
            w.u64(entry.viommus.mask)
        }
        return w.output
    }

    /// Reads bytes ``encode()`` wrote, and checks the result with ``validate()``.
    ///
    /// Every count is checked against the bytes left before anything is allocated for it, reserved
    /// fields must be zero, and nothing may follow the last record: bytes from a torn or corrupt file
    /// give an error, never a partial snapshot.
    public init(decoding bytes: some Collection<UInt8>) throws(EngineSnapshotError) {
        var r = LittleEndianReader(Array(bytes))
        guard r.remaining >= Self.magic.count else { throw .truncated(offset: 0, needed: Self.magic.count) }
        guard try r.bytes(Self.magic.count) == Self.magic else { throw .notASnapshot }
        let version = try r.u16()
        guard version == Self.formatVersion else { throw .unsupportedVersion(version) }
        try r.zero16("header reserved field")
        let viommuCount = Int(try r.u16())
        try r.zero16("header reserved field")
        let deviceCount = Int(try r.u32())
        let retiringCount = Int(try r.u32())
        guard viommuCount <= VSMMU.maximumViommus else {
            throw .badField(offset: 8, "\(viommuCount) viommus (a vSMMU has at most \(VSMMU.maximumViommus))")
        }
        // Each record has a fixed minimum size: a count the bytes cannot hold is refused before any
        // allocation.
        try r.require(count: viommuCount, of: 20, at: 8, "viommus")
        var viommus: [Viommu] = []
        viommus.reserveCapacity(viommuCount)
        for _ in 0 ..< viommuCount {
            let index = ViommuIndex(rawValue: try r.u8())
            try r.zero8("viommu reserved field")
            let nameOffset = r.offset
            let nameLength = Int(try r.u16())
            guard nameLength >= 1, nameLength <= Self.maximumNameLength else {
                throw .badField(offset: nameOffset, "pSMMU name of \(nameLength) bytes (1…\(Self.maximumNameLength))")
            }
            let nameBytes = try r.bytes(nameLength)
            guard let name = String(validating: nameBytes, as: UTF8.self) else {
                throw .badField(offset: nameOffset + 2, "pSMMU name is not UTF-8")
            }
            let request = ViommuAttachRequest(hostDeviceID: try r.u32(), nestParentHWPT: try r.u32())
            let handle = ViommuHandle(rawValue: try r.u32())
            let objectsOffset = r.offset
            let objectsLength = Int(try r.u16())
            guard objectsLength <= ViommuObjects.maximumByteCount else {
                throw .badField(offset: objectsOffset, "\(objectsLength) bytes of backend objects (at most \(ViommuObjects.maximumByteCount))")
            }
            let objects = ViommuObjects(bytes: try r.bytes(objectsLength))
            viommus.append(Viommu(index: index, pSMMU: name, request: request, handle: handle, objects: objects))
        }
        try r.require(count: deviceCount, of: 16, at: 12, "devices")
        var devices: [Device] = []
        devices.reserveCapacity(deviceCount)
        for _ in 0 ..< deviceCount {
            let streamID = try r.u32()
            let viommu = ViommuIndex(rawValue: try r.u8())
            let domainOffset = r.offset
            let domainCode = try r.u8()
            let flagsOffset = r.offset
            let flags = try r.u8()
            guard flags & ~3 == 0 else { throw .badField(offset: flagsOffset, "device flags 0x\(String(flags, radix: 16))") }
            let linked = flags & 1 != 0, hasHWPT = flags & 2 != 0
            guard linked || !hasHWPT else { throw .badField(offset: flagsOffset, "a nested HWPT without a linked vSTE") }
            try r.zero8("device reserved field")
            let hostDeviceID = try r.u32()
            let vdevice = VDeviceHandle(rawValue: try r.u32())
            var link: Link?
            if linked {
                var ste = StreamTableEntry()
                for i in 0 ..< StreamTableEntry.wordCount { ste.setWord(i, try r.u64()) }
                let countOffset = r.offset
                let cdCount = Int(try r.u32())
                try r.require(count: cdCount, of: ContextDescriptor.byteCount, at: countOffset, "CDs")
                var cds: [ContextDescriptor] = []
                cds.reserveCapacity(cdCount)
                for _ in 0 ..< cdCount {
                    var cd = ContextDescriptor()
                    for i in 0 ..< ContextDescriptor.wordCount { cd.setWord(i, try r.u64()) }
                    cds.append(cd)
                }
                link = Link(ste: ste, contextDescriptors: cds, hwpt: hasHWPT ? HWPTHandle(rawValue: try r.u32()) : nil)
            }
            let domain: DeviceDomain
            switch domainCode {
            case 0: domain = .nestParent
            case 1: domain = .abort
            case 2: domain = .bypass
            case 3:
                guard let hwpt = link?.hwpt else {
                    throw .badField(offset: domainOffset, "a nested domain without a nested HWPT")
                }
                domain = .nested(hwpt)
            default:
                throw .badField(offset: domainOffset, "device domain \(domainCode)")
            }
            devices.append(Device(streamID: streamID, viommu: viommu, hostDeviceID: hostDeviceID,
                                  vdevice: vdevice, domain: domain, link: link))
        }
        try r.require(count: retiringCount, of: 16, at: 16, "retiring ASIDs")
        var retiring: [RetiringASID] = []
        retiring.reserveCapacity(retiringCount)
        for _ in 0 ..< retiringCount {
            let asid = try r.u16()
            try r.zero16("retiring ASID reserved field")
            let reservedOffset = r.offset
            guard try r.u32() == 0 else { throw .badField(offset: reservedOffset, "retiring ASID reserved field is not 0") }
            retiring.append(RetiringASID(asid: asid, viommus: ViommuSet(mask: try r.u64())))
        }
        guard r.remaining == 0 else { throw .trailingBytes(offset: r.offset, count: r.remaining) }
        self.init(viommus: viommus, devices: devices, retiring: retiring)
        try validate()
    }

    static func domainCode(_ domain: DeviceDomain) -> UInt8 {
        switch domain {
        case .nestParent: return 0
        case .abort: return 1
        case .bypass: return 2
        case .nested: return 3
        }
    }
}
