import CommandRing
import InvalidationEngine
import PSMMU
import SMMUv3
import Synchronization
import Testing
import VirtualSMMU

#if canImport(Glibc)
import Glibc
import VSMMUTestSupport
#endif

/// The end-to-end correctness oracle: a generated guest workload runs through the router, the rings and
/// three simulated pSMMUs, and after every CMD_SYNC the oracle checks that
/// 1. no TLB, ATC or CD-cache entry that an invalidation before the sync covered survives on any pSMMU
///    (stale entries), and
/// 2. every ASID-routed command reached only pSMMUs that hold the ASID or may still cache it
///    (needless deliveries), while counting the broadcasts routing avoided.
@Suite struct CorrectnessOracleTests {
    /// Guest commands to generate: `VSMMUD_ORACLE_COMMANDS`, at least a million by default.
    static var commandBudget: Int {
        if let value = getenv("VSMMUD_ORACLE_COMMANDS").flatMap({ Int(String(cString: $0)) }), value > 0 { return value }
        return 1_000_000
    }

    @Test func generatedGuestWorkloadLeavesNoStaleEntryAndNoNeedlessDelivery() throws {
        var oracle = try GuestWorkload(seed: 0x5EED_0DD5)
        try oracle.run(commands: Self.commandBudget)
        let r = oracle.report
        print("oracle: \(r.commands) guest commands, \(r.syncs) syncs, \(r.dmaAccesses) DMA accesses, " +
              "stale entries: \(r.staleEntries), needless deliveries: \(r.needlessDeliveries), " +
              "ASID-routed deliveries: \(r.asidRoutedDeliveries), broadcasts avoided: \(r.broadcastsAvoided), " +
              "retiring deliveries: \(r.retiringDeliveries)")
        #expect(r.commands >= Self.commandBudget)
        #expect(r.staleEntries == 0)
        #expect(r.needlessDeliveries == 0)
        // The workload must exercise what it claims to.
        #expect(r.broadcastsAvoided > 0)
        #expect(r.retiringDeliveries > 0)
        #expect(r.staleChecks > r.syncs / 2)
        #expect(r.asidMoves > 0 && r.asidReuses > 0 && r.atcInvalidations > 0)
    }

    @Test func theOracleCatchesARouterThatForgetsRetiringASIDs() throws {
        // Skipping the retirement rule (the guest's late TLBI_NH_ASID of a moved device's old ASID
        // reaching no pSMMU) must show up as stale entries: the oracle is not blind.
        var oracle = try GuestWorkload(seed: 7, dropRetiringDeliveries: true)
        try oracle.run(commands: 20_000)
        #expect(oracle.report.staleEntries > 0)
    }
}

/// What the pSMMUs may hold, as the guest's own actions imply (independent of the router's index):
/// ASID x may be cached on pSMMU p when a device on p uses a CD with x, or did since the last
/// invalidation covering x that reached p.
final class MayCacheModel: @unchecked Sendable {
    // Only touched from the test's thread (the engine drains inline on the submitting thread).
    var live: [Int: [ASID: Int]] = [:]  // pSMMU → ASID → CDs using it
    var dirty: [Int: Set<ASID>] = [:]   // pSMMU → ASIDs that may be cached
    var needless = 0
    var asidRoutedDeliveries = 0

    func use(_ asid: ASID, on p: Int) {
        live[p, default: [:]][asid, default: 0] += 1
        dirty[p, default: []].insert(asid)
    }

    func release(_ asid: ASID, on p: Int) {
        let n = (live[p]?[asid] ?? 1) - 1
        live[p]?[asid] = n > 0 ? n : nil
    }

    func delivered(_ command: Command, to p: Int) {
        switch command.opcode {
        case .tlbiNHASID, .tlbiNHVA:
            asidRoutedDeliveries += 1
            if !(dirty[p]?.contains(command.asid) ?? false) { needless += 1 }
            if command.opcode == .tlbiNHASID, live[p]?[command.asid] == nil { dirty[p]?.remove(command.asid) }
        case .tlbiNHAll, .tlbiNSNHAll:
            dirty[p] = Set(live[p]?.keys.map { $0 } ?? [])
        default: break
        }
    }
}

/// A backend that forwards to a simulated pSMMU and shows each delivered command to the model first.
final class ObservedBackend: PSMMUBackend {
    let sim: SimulatedSMMU
    let index: Int
    let model: MayCacheModel
    /// Test of the oracle itself: pretend the router never routes to a retiring viommu.
    let dropRetiring: Bool
    init(_ sim: SimulatedSMMU, index: Int, model: MayCacheModel, dropRetiring: Bool) {
        self.sim = sim
        self.index = index
        self.model = model
        self.dropRetiring = dropRetiring
    }
    var name: String { sim.name }
    func attachViommu(_ r: ViommuAttachRequest) throws(BackendError) -> ViommuHandle { try sim.attachViommu(r) }
    func detachViommu(_ v: ViommuHandle) throws(BackendError) { try sim.detachViommu(v) }
    func allocateVDevice(viommu: ViommuHandle, device: HostDevice, virtualStreamID: StreamID) throws(BackendError) -> VDeviceHandle {
        try sim.allocateVDevice(viommu: viommu, device: device, virtualStreamID: virtualStreamID)
    }
    func attachDevice(_ vdevice: VDeviceHandle, to domain: DeviceDomain) throws(BackendError) {
        try sim.attachDevice(vdevice, to: domain)
    }
    func hardwareInfo(viommu: ViommuHandle) throws(BackendError) -> IDRegisters { try sim.hardwareInfo(viommu: viommu) }
    func destroyVDevice(_ d: VDeviceHandle) throws(BackendError) { try sim.destroyVDevice(d) }
    func allocateNestedHWPT(viommu: ViommuHandle, hostDeviceID: UInt32, ste: StreamTableEntry,
                            contextDescriptors: [ContextDescriptor]) throws(BackendError) -> HWPTHandle {
        try sim.allocateNestedHWPT(viommu: viommu, hostDeviceID: hostDeviceID, ste: ste, contextDescriptors: contextDescriptors)
    }
    func destroyHWPT(_ h: HWPTHandle) throws(BackendError) { try sim.destroyHWPT(h) }
    func updateContextDescriptors(_ h: HWPTHandle, _ cds: [ContextDescriptor]) throws(BackendError) {
        try sim.updateContextDescriptors(h, cds)
    }
    func invalidate(viommu: ViommuHandle, commands: UnsafeBufferPointer<Command>) -> InvalidationResult {
        var kept: [Command] = []
        kept.reserveCapacity(commands.count)
        for command in commands {
            let asidRouted = command.opcode == .tlbiNHASID || command.opcode == .tlbiNHVA
            if dropRetiring, asidRouted, model.live[index]?[command.asid] == nil { continue }
            model.delivered(command, to: index)
            kept.append(command)
        }
        let result = kept.withUnsafeBufferPointer { sim.invalidate(viommu: viommu, commands: $0) }
        return result.failure == nil ? InvalidationResult(completed: commands.count) : result
    }
    func takeEvents(viommu: ViommuHandle) -> [EventRecord] { sim.takeEvents(viommu: viommu) }
    var counters: BackendCounters { sim.counters }
}

/// A Linux-like guest driving one vSMMU over three pSMMUs: DMA map/unmap with TLB fills and strict
/// TLBI_NH_VA + CMD_SYNC unmaps, lazy TLBI_NH_ASID flushes, devices moved from one ASID to another with
/// the old ASID invalidated afterwards, ASID reuse, ATS with ATC_INV, and broadcasts.
struct GuestWorkload {
    struct Report {
        var commands = 0, syncs = 0, dmaAccesses = 0, staleEntries = 0, staleChecks = 0
        var needlessDeliveries = 0, asidRoutedDeliveries = 0, broadcastsAvoided: UInt64 = 0
        var retiringDeliveries: UInt64 = 0, asidMoves = 0, asidReuses = 0, atcInvalidations = 0
    }

    struct Device {
        var streamID: StreamID
        var hostDeviceID: UInt32
        var pSMMU: Int
        var asids: [ASID]  // per SubstreamID (2 CDs)
        var cdTable: UInt64
    }

    let engine: VSMMUEngine
    let sims: [SimulatedSMMU]
    let handles: [ViommuHandle]
    let model = MayCacheModel()
    var devices: [Device] = []
    var mapped: [ASID: Set<UInt64>] = [:]  // address space of each ASID: mapped page numbers
    var freeASIDs: [ASID] = []
    var pendingOld: [ASID] = []  // left by a device, not yet invalidated by the guest
    var rng: SplitMix64
    var report = Report()

    init(seed: UInt64, dropRetiringDeliveries: Bool = false) throws {
        rng = SplitMix64(seed: seed)
        engine = VSMMUEngine(configuration: .init(queue: .init(capacity: 1024, drainPolicy: .inline)))
        var sims: [SimulatedSMMU] = []
        var handles: [ViommuHandle] = []
        for p in 0..<3 {
            let sim = SimulatedSMMU(name: "pSMMU\(p)", deviceCount: 4, firstHostDeviceID: UInt32(p * 16),
                                    firstStreamID: StreamID(0x100 * (p + 1)))
            let backend = ObservedBackend(sim, index: p, model: model, dropRetiring: dropRetiringDeliveries)
            try engine.attachViommu(pSMMU: sim.name, backend: backend,
                                    request: ViommuAttachRequest(hostDeviceID: UInt32(p * 16)))
            sims.append(sim)
            handles.append(sim.viommus[0])
        }
        self.sims = sims
        self.handles = handles
        for i in 0..<12 {
            let p = i % 3
            let device = Device(streamID: StreamID(0x10 * (i + 1)), hostDeviceID: UInt32(p * 16 + i / 3), pSMMU: p,
                                asids: [ASID(2 * i + 1), ASID(2 * i + 2)], cdTable: 0x4000_0000 + UInt64(i) << 16)
            try engine.setDeviceID(viommu: ViommuIndex(p), hostDeviceID: device.hostDeviceID, streamID: device.streamID)
            try engine.link(streamID: device.streamID, ste: Self.ste(device), contextDescriptors: device.asids.map { .valid(asid: $0) })
            for asid in device.asids { model.use(asid, on: p) }
            devices.append(device)
        }
        freeASIDs = (25...48).map { ASID($0) }
    }

    static func ste(_ d: Device) -> StreamTableEntry {
        var ste = StreamTableEntry.stage1(contextTable: d.cdTable, cdMax: 1)
        ste.eats = 1
        return ste
    }

    // MARK: Running

    mutating func run(commands budget: Int) throws {
        while report.commands < budget {
            switch rng.next(100) {
            case 0..<34: try dma()
            case 34..<70: try unmapStrict()
            case 70..<76: try flushASID()
            case 76..<84: try moveDevice()
            case 84..<89: try retireOldASID()
            case 89..<93: try atsAndATCInv()
            case 93..<95: try broadcastAll()
            case 95..<98: try vaaRange()
            default: try relinkWithNewTable()
            }
        }
        let counters = engine.vsmmu.counters
        report.broadcastsAvoided = counters.broadcastsAvoided
        report.retiringDeliveries = counters.retiringDeliveries
        report.needlessDeliveries = model.needless
        report.asidRoutedDeliveries = model.asidRoutedDeliveries
    }

    /// Submits a batch ending in CMD_SYNC and requires it to succeed.
    mutating func submitSynced(_ commands: [Command]) {
        let result = engine.submit(commands + [.sync()]).wait()
        report.commands += commands.count + 1
        report.syncs += 1
        if result.failure != nil || result.consumed != commands.count + 1 {
            Issue.record("batch \(commands) failed: \(result)")
        }
    }

    /// Counts TLB entries of `asid` (nil: any) on any pSMMU that cover one of `pages` (nil: any page).
    mutating func stale(asid: ASID?, pages: Range<UInt64>?) -> Int {
        report.staleChecks += 1
        var count = 0
        for (p, sim) in sims.enumerated() {
            if let asid, let pages, pages.count <= 16 {
                for page in pages where sim.isCached(viommu: handles[p], asid: asid, address: page << 12) { count += 1 }
                continue
            }
            for entry in sim.tlbEntries(viommu: handles[p]) {
                if let asid, entry.asid != asid { continue }
                if let pages, !(entry.address >> 12 < pages.upperBound && entry.lastAddress >> 12 >= pages.lowerBound) { continue }
                count += 1
            }
        }
        return count
    }

    mutating func dma() throws {
        let d = devices[rng.next(devices.count)]
        let ssid = rng.next(2)
        let asid = d.asids[ssid]
        let page = UInt64(rng.next(256))
        mapped[asid, default: []].insert(page)
        // CD 0 serves traffic without a SubstreamID (S1DSS = SSID0); CD 1 serves PASID 1.
        let outcome = try sims[d.pSMMU].touch(hostDeviceID: d.hostDeviceID, substreamID: ssid == 0 ? nil : SubstreamID(ssid),
                                              address: page << 12)
        report.dmaAccesses += 1
        guard let entry = outcome.tlbEntry, entry.asid == asid else {
            Issue.record("DMA of \(d.streamID) ssid \(ssid) through ASID \(asid) gave \(outcome)")
            return
        }
    }

    mutating func unmapStrict() throws {
        // Sorted, so the workload is the same in every process (Set and Dictionary order is seeded per process).
        let candidates = mapped.keys.sorted().filter { mapped[$0]?.isEmpty == false }
        guard !candidates.isEmpty else { return try dma() }
        let asid = candidates[rng.next(candidates.count)]
        let pages = (mapped[asid] ?? []).sorted()
        let page = pages[rng.next(pages.count)]
        let range = TLBIRange(num: UInt8(rng.next(4)), scale: UInt8(rng.next(3)), granule: 1, ttl: 3)
        let covered = page..<(page + range.pages)
        mapped[asid]?.subtract(covered)
        submitSynced([.tlbiNHVA(asid: asid, address: page << 12, range: range)])
        report.staleEntries += stale(asid: asid, pages: covered)
    }

    mutating func flushASID() throws {
        let asids = mapped.keys.sorted()
        guard !asids.isEmpty else { return }
        let asid = asids[rng.next(asids.count)]
        mapped[asid] = []
        submitSynced([.tlbiNHASID(asid: asid)])
        report.staleEntries += stale(asid: asid, pages: nil)
    }

    /// A device's CD gets another ASID (a fresh one, a reused one, or one another device uses); the
    /// guest then invalidates the CD, and — now or later — the old ASID.
    mutating func moveDevice() throws {
        let i = rng.next(devices.count)
        let ssid = rng.next(2)
        let old = devices[i].asids[ssid]
        let new: ASID
        if rng.next(3) == 0, let shared = devices.randomElement(using: &rng)?.asids.randomElement(using: &rng), shared != old {
            new = shared
        } else if !freeASIDs.isEmpty {
            new = freeASIDs.removeFirst()
            report.asidReuses += 1
        } else {
            return
        }
        report.asidMoves += 1
        devices[i].asids[ssid] = new
        let p = devices[i].pSMMU
        try engine.updateContextDescriptor(streamID: devices[i].streamID, substreamID: SubstreamID(ssid), .valid(asid: new))
        model.use(new, on: p)
        model.release(old, on: p)
        submitSynced([.cfgiCD(streamID: devices[i].streamID, substreamID: SubstreamID(ssid))])
        if !devices.contains(where: { $0.asids.contains(old) }), !pendingOld.contains(old) {
            pendingOld.append(old)
            if rng.next(2) == 0 { try retireOldASID() }
        }
    }

    mutating func retireOldASID() throws {
        guard !pendingOld.isEmpty else { return }
        let asid = pendingOld.remove(at: rng.next(pendingOld.count))
        mapped[asid] = nil
        submitSynced([.tlbiNHASID(asid: asid)])
        report.staleEntries += stale(asid: asid, pages: nil)
        freeASIDs.append(asid)
    }

    mutating func atsAndATCInv() throws {
        let d = devices[rng.next(devices.count)]
        for page in 0..<UInt64(4) {
            try sims[d.pSMMU].touch(hostDeviceID: d.hostDeviceID, address: page << 12, throughATS: true)
        }
        submitSynced([.atcInv(streamID: d.streamID, address: 0, size: 52)])
        report.atcInvalidations += 1
        report.staleChecks += 1
        report.staleEntries += sims[d.pSMMU].atcEntries(hostDeviceID: d.hostDeviceID).count
    }

    mutating func broadcastAll() throws {
        submitSynced([rng.next(2) == 0 ? .tlbiNHAll() : .tlbiNSNHAll()])
        report.staleEntries += stale(asid: nil, pages: nil)
        // Everything is invalidated on every pSMMU: old ASIDs need no more invalidation.
        freeASIDs.append(contentsOf: pendingOld)
        pendingOld.removeAll()
    }

    mutating func vaaRange() throws {
        let page = UInt64(rng.next(256))
        let range = TLBIRange(num: UInt8(rng.next(8)), scale: 0, granule: 1, ttl: 0)
        submitSynced([.tlbiNHVAA(address: page << 12, range: range)])
        report.staleEntries += stale(asid: nil, pages: page..<(page + range.pages))
    }

    /// The guest points a device's STE at a new CD table with fresh ASIDs: a new nested HWPT; the old
    /// ASIDs are left for a later invalidation.
    mutating func relinkWithNewTable() throws {
        guard freeASIDs.count >= 2 else { return }
        let i = rng.next(devices.count)
        let old = devices[i].asids
        devices[i].cdTable &+= 0x1000
        devices[i].asids = [freeASIDs.removeFirst(), freeASIDs.removeFirst()]
        let p = devices[i].pSMMU
        try engine.link(streamID: devices[i].streamID, ste: Self.ste(devices[i]),
                        contextDescriptors: devices[i].asids.map { .valid(asid: $0) })
        for asid in devices[i].asids { model.use(asid, on: p) }
        for asid in old { model.release(asid, on: p) }
        submitSynced([.cfgiSTE(streamID: devices[i].streamID)])
        for asid in old where !devices.contains(where: { $0.asids.contains(asid) }) && !pendingOld.contains(asid) {
            pendingOld.append(asid)
        }
    }
}

