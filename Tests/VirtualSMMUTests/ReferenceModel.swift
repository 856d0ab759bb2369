import SMMUv3
import VirtualSMMU

/// A deliberately plain, slow model of one vSMMU, written from the routing and retirement rules rather
/// than from ``VSMMU``'s code, for the property test to compare against.
///
/// Everything is a dictionary or a set of small values, and every ASID question is answered by a
/// linear scan over all current HWPTs. Retirement is derived from snapshots: before and after every
/// control operation the model lists the (ASID, viommu) pairs that some HWPT carries, and a pair that
/// was live before and is not after starts retiring. Only the STE nesting rules are borrowed from
/// `SMMUv3` (``StreamTableEntry/nestingValidated()``), because the rules say "the STE passes them";
/// every other field (STE V/CONFIG/S1CDMax, CD V/ASID, command opcode/SSEC/CS/StreamID/ASID/VMID) is
/// decoded here from the raw words.
struct ReferenceVSMMU {
    /// A control-path refusal, by kind only (the property test compares kinds, not messages).
    enum Failure: Error, Hashable {
        case tooManyViommus, pSMMUAlreadyAttached, unknownViommu, viommuInUse
        case streamIDInUse, deviceAlreadyRegistered, unknownStreamID
        case invalidSTE, tooManyContextDescriptors, substreamOutOfRange, notTranslating
    }

    /// An (ASID, viommu) pair: "viommu v may cache translations tagged x".
    struct Pair: Hashable, Comparable, CustomStringConvertible {
        var asid: ASID
        var viommu: Int
        static func < (a: Pair, b: Pair) -> Bool { (a.asid, a.viommu) < (b.asid, b.viommu) }
        var description: String { "(asid \(asid), viommu \(viommu))" }
    }

    /// A registered device and what is linked to it.
    struct Device {
        var viommu: Int
        var host: HostDeviceID
        /// The linked STE after the nesting rules, `nil` when nothing is linked.
        var ste: StreamTableEntry?
        /// The linked CDs by SubstreamID (only kept for a translating STE).
        var cds: [Int: ContextDescriptor] = [:]

        /// Whether the linked STE has an S1 HWPT: V = 1 and CONFIG = S1_TRANS (5).
        var hasHWPT: Bool {
            guard let ste else { return false }
            return ReferenceVSMMU.steValid(ste) && ReferenceVSMMU.steConfig(ste) == 5
        }

        /// The ASIDs of the HWPT: those of the valid CDs.
        var hwptASIDs: Set<ASID> {
            guard hasHWPT else { return [] }
            var asids = Set<ASID>()
            for cd in cds.values where ReferenceVSMMU.cdValid(cd) { asids.insert(ReferenceVSMMU.cdASID(cd)) }
            return asids
        }
    }

    /// What the model's router produced for one batch.
    struct Routing {
        struct SyncPoint: Equatable {
            var index: Int
            var command: Command
            /// viommu → number of commands it must have completed in this batch.
            var fences: [Int: Int]
        }
        struct Refusal: Equatable {
            var index: Int
            var command: Command
            var reason: RoutingError.Reason
        }
        var commands: [Int: [Command]] = [:]
        var guestIndices: [Int: [Int]] = [:]
        var syncPoints: [SyncPoint] = []
        var errors: [Refusal] = []
        var consumed = 0
        var unsynced: Set<Int> = []
    }

    /// The router's counters, as the rules define them.
    struct Counters: Equatable {
        var received: UInt64 = 0
        var deliveries: UInt64 = 0
        var deliveriesPerViommu: [Int: UInt64] = [:]
        var deviceRouted: UInt64 = 0
        var asidRouted: UInt64 = 0
        var asidRoutedDeliveries: UInt64 = 0
        var retiringDeliveries: UInt64 = 0
        var broadcastsAvoided: UInt64 = 0
        var asidWithoutTarget: UInt64 = 0
        var broadcast: UInt64 = 0
        var configSTEInvalidations: UInt64 = 0
        var droppedByOpcode: [UInt8: UInt64] = [:]
        var syncs: UInt64 = 0
        var illegalCommands: UInt64 = 0
        var unknownStreamID: UInt64 = 0
        var retirementsEnded: UInt64 = 0
    }

    /// How often each retirement event happened, so a test can show the rules were exercised.
    struct RetirementEvents {
        var started = 0
        var endedByNHASID = 0
        var endedByBroadcast: [UInt8: Int] = [:]
        var endedByBecomingLive = 0
        var clearedByDetach = 0
        /// ASID-routed deliveries that reached a viommu only because the ASID retires from it.
        var retiringDeliveries = 0
    }

    static let maximumViommus = 64

    /// Attached viommus: index → pSMMU name.
    private(set) var viommus: [Int: String] = [:]
    private(set) var devices: [StreamID: Device] = [:]
    private(set) var retiring: Set<Pair> = []
    private(set) var counters = Counters()
    private(set) var events = RetirementEvents()

    // MARK: Raw field decoding (independent of the SMMUv3 accessors)

    static func steValid(_ ste: StreamTableEntry) -> Bool { ste.word(0) & 1 == 1 }
    static func steConfig(_ ste: StreamTableEntry) -> UInt64 { (ste.word(0) >> 1) & 0b111 }
    static func steCDLimit(_ ste: StreamTableEntry) -> Int { 1 << Int(ste.word(0) >> 59) }
    static func cdValid(_ cd: ContextDescriptor) -> Bool { (cd.word(0) >> 31) & 1 == 1 }
    static func cdASID(_ cd: ContextDescriptor) -> ASID { ASID(truncatingIfNeeded: cd.word(0) >> 48) }

    // MARK: Queries (linear scans)

    /// viommus with a current HWPT carrying `asid`.
    func live(_ asid: ASID) -> Set<Int> {
        var set = Set<Int>()
        for device in devices.values where device.hwptASIDs.contains(asid) { set.insert(device.viommu) }
        return set
    }

    /// viommus `asid` is retiring from.
    func retiring(_ asid: ASID) -> Set<Int> { Set(retiring.filter { $0.asid == asid }.map(\.viommu)) }

    /// live ∪ retiring.
    func targets(_ asid: ASID) -> Set<Int> { live(asid).union(retiring(asid)) }

    /// How many current HWPTs carry `asid`.
    func hwptCount(carrying asid: ASID) -> Int { devices.values.filter { $0.hwptASIDs.contains(asid) }.count }

    /// How many HWPTs exist.
    var hwptCount: Int { devices.values.filter(\.hasHWPT).count }

    /// The ASIDs some HWPT carries or that retire somewhere.
    var knownASIDs: Set<ASID> {
        var set = Set(retiring.map(\.asid))
        for device in devices.values { set.formUnion(device.hwptASIDs) }
        return set
    }

    func viommu(of sid: StreamID) -> Int? { devices[sid]?.viommu }

    /// Every (ASID, viommu) some current HWPT carries.
    private func livePairs() -> Set<Pair> {
        var pairs = Set<Pair>()
        for device in devices.values {
            for asid in device.hwptASIDs { pairs.insert(Pair(asid: asid, viommu: device.viommu)) }
        }
        return pairs
    }

    // MARK: Control operations

    mutating func attachViommu(pSMMU: String) -> Result<Int, Failure> {
        if viommus.values.contains(pSMMU) { return .failure(.pSMMUAlreadyAttached) }
        guard let index = (0..<Self.maximumViommus).first(where: { viommus[$0] == nil }) else {
            return .failure(.tooManyViommus)
        }
        viommus[index] = pSMMU
        return .success(index)
    }

    mutating func detachViommu(_ index: Int) -> Result<Void, Failure> {
        guard viommus[index] != nil else { return .failure(.unknownViommu) }
        guard !devices.values.contains(where: { $0.viommu == index }) else { return .failure(.viommuInUse) }
        viommus[index] = nil
        let cleared = retiring.filter { $0.viommu == index }
        events.clearedByDetach += cleared.count
        retiring.subtract(cleared)
        return .success(())
    }

    mutating func setDeviceID(viommu: Int, host: HostDeviceID, streamID: StreamID) -> Result<Void, Failure> {
        guard viommus[viommu] != nil else { return .failure(.unknownViommu) }
        guard devices[streamID] == nil else { return .failure(.streamIDInUse) }
        guard !devices.values.contains(where: { $0.host == host }) else { return .failure(.deviceAlreadyRegistered) }
        devices[streamID] = Device(viommu: viommu, host: host)
        return .success(())
    }

    /// - Returns: whether an HWPT went away with the device.
    mutating func unsetDeviceID(streamID: StreamID) -> Result<Bool, Failure> {
        tracking { model in
            guard let device = model.devices[streamID] else { return .failure(.unknownStreamID) }
            model.devices[streamID] = nil
            return .success(device.hasHWPT)
        }
    }

    /// - Returns: whether the StreamID now has an HWPT.
    mutating func link(streamID: StreamID, ste: StreamTableEntry, cds: [ContextDescriptor]) -> Result<Bool, Failure> {
        tracking { model in
            guard var device = model.devices[streamID] else { return .failure(.unknownStreamID) }
            guard let checked = try? ste.nestingValidated() else { return .failure(.invalidSTE) }
            let translating = Self.steValid(checked) && Self.steConfig(checked) == 5
            if translating, cds.count > Self.steCDLimit(checked) { return .failure(.tooManyContextDescriptors) }
            device.ste = checked
            device.cds = [:]
            if translating {
                for (ssid, cd) in cds.enumerated() { device.cds[ssid] = cd }
            }
            model.devices[streamID] = device
            return .success(translating)
        }
    }

    /// - Returns: whether an HWPT went away.
    mutating func unlink(streamID: StreamID) -> Result<Bool, Failure> {
        tracking { model in
            guard var device = model.devices[streamID] else { return .failure(.unknownStreamID) }
            let had = device.hasHWPT
            device.ste = nil
            device.cds = [:]
            model.devices[streamID] = device
            return .success(had)
        }
    }

    mutating func updateCD(streamID: StreamID, substreamID: Int, cd: ContextDescriptor) -> Result<Void, Failure> {
        tracking { model in
            guard var device = model.devices[streamID] else { return .failure(.unknownStreamID) }
            guard device.hasHWPT, let ste = device.ste else { return .failure(.notTranslating) }
            guard substreamID < Self.steCDLimit(ste) else { return .failure(.substreamOutOfRange) }
            device.cds[substreamID] = cd
            model.devices[streamID] = device
            return .success(())
        }
    }

    /// Runs a control operation and applies the retirement rule to what it changed: pairs that stop
    /// being live start retiring; pairs that are live are not retiring.
    private mutating func tracking<T>(_ body: (inout ReferenceVSMMU) -> Result<T, Failure>) -> Result<T, Failure> {
        let before = livePairs()
        let result = body(&self)
        let after = livePairs()
        let leaving = before.subtracting(after).subtracting(retiring)
        events.started += leaving.count
        retiring.formUnion(leaving)
        let reLive = retiring.intersection(after)
        events.endedByBecomingLive += reLive.count
        retiring.subtract(reLive)
        return result
    }

    // MARK: Routing

    /// Opcodes on which SSEC (`w0[10]`) is illegal: CFGI, ATC_INV, PREFETCH, PRI_RESP, RESUME, STALL_TERM.
    static let ssecChecked: Set<UInt8> = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x40, 0x41, 0x44, 0x45]
    /// Defined opcodes that are accepted and not forwarded.
    static let notForwarded: Set<UInt8> = [
        0x01, 0x02,  // PREFETCH_CONFIG, PREFETCH_ADDR
        0x03, 0x04,  // CFGI_STE, CFGI_STE_RANGE (CFGI_ALL)
        0x18, 0x1A,  // TLBI_EL3_ALL, TLBI_EL3_VA
        0x20, 0x21, 0x22, 0x23,  // TLBI_EL2_*
        0x2A,  // TLBI_S2_IPA
        0x41, 0x44, 0x45,  // PRI_RESP, RESUME, STALL_TERM
    ]
    static let byStreamID: Set<UInt8> = [0x40, 0x05, 0x06]  // ATC_INV, CFGI_CD, CFGI_CD_ALL
    static let byASID: Set<UInt8> = [0x11, 0x12]  // TLBI_NH_ASID, TLBI_NH_VA
    static let broadcasts: Set<UInt8> = [0x10, 0x13, 0x30, 0x28]  // NH_ALL, NH_VAA, NSNH_ALL, S12_VMALL
    /// Broadcasts that cover every ASID and so end every retirement on the viommus they reach.
    static let coveringEveryASID: Set<UInt8> = [0x10, 0x30, 0x28]
    static let sync: UInt8 = 0x46

    /// Why `command` is illegal, or `nil`.
    static func illegality(of command: Command) -> IllegalCommandReason? {
        let op = UInt8(truncatingIfNeeded: command.w0)
        let defined = notForwarded.union(byStreamID).union(byASID).union(broadcasts).union([sync])
        if !defined.contains(op) {
            return op == 0x07 ? .phantomCFGIAll : .undefinedOpcode(Opcode(rawValue: op))
        }
        if ssecChecked.contains(op), (command.w0 >> 10) & 1 == 1 {
            return .secureStreamOnNonSecureQueue(Opcode(rawValue: op))
        }
        if op == sync, (command.w0 >> 12) & 0b11 == 3 { return .reservedSyncCompletion }
        return nil
    }

    /// The viommus that got commands since the last CMD_SYNC, which may be in an earlier batch: the
    /// next CMD_SYNC covers them.
    var unsyncedFromEarlierBatches: Set<Int> = []

    /// Routes `batch` in guest order under `policy`.
    mutating func route(_ batch: [Command], policy: RoutingPolicy) -> Routing {
        var out = Routing()
        out.unsynced = unsyncedFromEarlierBatches
        defer { unsyncedFromEarlierBatches = out.unsynced }
        let attached = Set(viommus.keys)

        func deliver(_ command: Command, to v: Int, from index: Int, counters: inout Counters) {
            out.commands[v, default: []].append(command)
            out.guestIndices[v, default: []].append(index)
            out.unsynced.insert(v)
            counters.deliveries += 1
            counters.deliveriesPerViommu[v, default: 0] += 1
        }

        for (index, command) in batch.enumerated() {
            counters.received += 1
            let op = UInt8(truncatingIfNeeded: command.w0)
            var refusal: RoutingError.Reason?
            if let illegal = Self.illegality(of: command) {
                refusal = .illegal(illegal)
            } else if Self.byStreamID.contains(op) {
                let sid = StreamID(truncatingIfNeeded: command.w0 >> 32)
                if let v = devices[sid]?.viommu {
                    deliver(command, to: v, from: index, counters: &counters)
                    counters.deviceRouted += 1
                } else {
                    refusal = .unknownStreamID(sid)
                }
            } else if Self.byASID.contains(op) {
                let asid = ASID(truncatingIfNeeded: command.w0 >> 48)
                let retiringHere = retiring(asid)
                let reached = targets(asid)
                counters.asidRouted += 1
                if reached.isEmpty { counters.asidWithoutTarget += 1 }
                for v in reached { deliver(command, to: v, from: index, counters: &counters) }
                counters.asidRoutedDeliveries += UInt64(reached.count)
                counters.broadcastsAvoided += UInt64(attached.count - reached.count)
                counters.retiringDeliveries += UInt64(retiringHere.count)
                events.retiringDeliveries += retiringHere.count
                if op == 0x11 {
                    for v in retiringHere { retiring.remove(Pair(asid: asid, viommu: v)) }
                    counters.retirementsEnded += UInt64(retiringHere.count)
                    events.endedByNHASID += retiringHere.count
                }
            } else if Self.broadcasts.contains(op) {
                counters.broadcast += 1
                // TLBI_S12_VMALL reaches the viommus as TLBI_NH_ALL with the same VMID field (w0[47:32]).
                let forwarded = op == 0x28 ? Command(w0: 0x10 | (command.w0 & 0x0000_FFFF_0000_0000), w1: 0) : command
                for v in attached { deliver(forwarded, to: v, from: index, counters: &counters) }
                if Self.coveringEveryASID.contains(op) {
                    let ended = retiring.filter { attached.contains($0.viommu) }
                    retiring.subtract(ended)
                    counters.retirementsEnded += UInt64(ended.count)
                    events.endedByBroadcast[op, default: 0] += ended.count
                }
            } else if op == Self.sync {
                counters.syncs += 1
                var fences: [Int: Int] = [:]
                for v in out.unsynced { fences[v] = out.commands[v, default: []].count }
                out.syncPoints.append(.init(index: index, command: command, fences: fences))
                out.unsynced = []
            } else {
                precondition(Self.notForwarded.contains(op))
                if op == 0x03 || op == 0x04 { counters.configSTEInvalidations += 1 }
                counters.droppedByOpcode[op, default: 0] += 1
            }

            if let refusal {
                switch refusal {
                case .illegal: counters.illegalCommands += 1
                case .unknownStreamID: counters.unknownStreamID += 1
                }
                out.errors.append(.init(index: index, command: command, reason: refusal))
                if policy == .stopAtFirstError {
                    out.consumed = index
                    return out
                }
            }
        }
        out.consumed = batch.count
        return out
    }
}
