import SMMUv3
import VirtualSMMU
import VSMMUTestSupport

// The router's cost per command, for 1, 8 and 64 viommus with 4096 devices and 65,536 ASIDs, beside a
// baseline in the same run that routes ASID-tagged TLBIs with a linear scan of every S1 HWPT (what the
// seed discussion describes: "go through the S1 list with the ASID in the command").

/// The workload: a strict-mode guest's mix, as in `../shared/traces/linux-strict-cmdq.bin` — mostly
/// TLBI_NH_VA + CMD_SYNC — plus some TLBI_NH_ASID, device-cache invalidations and broadcasts.
private func makeWorkload(devices: Int, asidsPerDevice: Int, count: Int, seed: UInt64) -> [Command] {
    var rng = SplitMix64(seed: seed)
    var batch: [Command] = []
    batch.reserveCapacity(count)
    let asids = devices * asidsPerDevice
    while batch.count < count {
        let r = rng.next() % 100
        let asid = ASID(truncatingIfNeeded: rng.next() % UInt64(asids))
        let sid = StreamID(rng.next() % UInt64(devices)) << 3
        switch r {
        case 0..<44: batch.append(.tlbiNHVA(asid: asid, address: (rng.next() % (1 << 36)) << 12))
        case 44..<48: batch.append(.tlbiNHASID(asid: asid))
        case 48..<50: batch.append(.atcInv(streamID: sid))
        case 50..<51: batch.append(.cfgiCD(streamID: sid, substreamID: UInt32(rng.next() % 16)))
        case 51..<52: batch.append(.tlbiNHVAA(address: (rng.next() % (1 << 36)) << 12))
        default: batch.append(.sync())
        }
    }
    return batch
}

/// A vSMMU with `viommus` viommus and `devices` devices spread over them, each device linked to an STE
/// with `asidsPerDevice` CDs carrying distinct ASIDs (4096 × 16 = 65,536 ASIDs).
private func makeVSMMU(viommus: Int, devices: Int, asidsPerDevice: Int) -> VSMMU {
    var v = VSMMU()
    do {
        for i in 0..<viommus { try v.attachViommu(pSMMU: "pSMMU\(i)") }
        var ste = StreamTableEntry()
        ste.isValid = true
        ste.config = .s1Translate
        ste.s1CDMax = UInt8(asidsPerDevice.trailingZeroBitCount)
        for d in 0..<devices {
            let sid = StreamID(d) << 3
            try v.setDeviceID(viommu: ViommuIndex(d % viommus), hostDeviceID: UInt32(d), streamID: sid)
            ste.s1ContextPointer = UInt64(0x4000_0000 + d * 0x1000)
            let cds = (0..<asidsPerDevice).map { ContextDescriptor.valid(asid: ASID(truncatingIfNeeded: d * asidsPerDevice + $0)) }
            try v.link(streamID: sid, ste: ste, contextDescriptors: cds)
        }
    } catch {
        fatalError("benchmark setup failed: \(error)")
    }
    return v
}

/// The baseline: the same rules, but the viommus of an ASID are found by scanning every HWPT.
private struct LinearScanRouter {
    struct HWPT { var viommu: Int; var asids: [ASID] }
    var hwpts: [HWPT]
    var sidToViommu: [StreamID: Int]
    var viommuCount: Int
    var perViommu: [[Command]]

    init(_ v: VSMMU) {
        hwpts = v.hwpts.values.sorted { $0.id < $1.id }.map { HWPT(viommu: $0.viommu.index, asids: $0.asids) }
        sidToViommu = Dictionary(uniqueKeysWithValues: v.devices.map { ($0.key, $0.value.viommu.index) })
        viommuCount = v.attachedViommus.count
        perViommu = Array(repeating: [], count: viommuCount)
    }

    mutating func route(_ batch: UnsafeBufferPointer<Command>) -> Int {
        for i in perViommu.indices { perViommu[i].removeAll(keepingCapacity: true) }
        var syncs = 0
        for c in batch {
            switch c.opcode {
            case .tlbiNHASID, .tlbiNHVA:
                let asid = c.asid
                var targets: UInt64 = 0
                for h in hwpts where h.asids.contains(asid) { targets |= 1 << UInt64(h.viommu) }
                while targets != 0 {
                    let v = targets.trailingZeroBitCount
                    targets &= targets &- 1
                    perViommu[v].append(c)
                }
            case .atcInv, .cfgiCD, .cfgiCDAll:
                if let v = sidToViommu[c.streamID] { perViommu[v].append(c) }
            case .tlbiNHAll, .tlbiNHVAA, .tlbiNSNHAll:
                for v in 0..<viommuCount { perViommu[v].append(c) }
            case .sync: syncs += 1
            default: break
            }
        }
        return syncs
    }
}

func runRouterBenchmark() {
    let devices = 4096, asidsPerDevice = 16
    let batchSize = 64
    print("== router: ns per guest command (\(devices) devices, \(devices * asidsPerDevice) ASIDs, batches of \(batchSize)) ==")
    print(column("viommus", 8) + column("index ns/cmd", 14) + column("linear-scan ns/cmd", 20) + column("speed-up", 10)
          + column("index, 256 dev", 16) + column("flatness", 10))
    for viommus in [1, 8, 64] {
        var v = makeVSMMU(viommus: viommus, devices: devices, asidsPerDevice: asidsPerDevice)
        var small = makeVSMMU(viommus: viommus, devices: 256, asidsPerDevice: asidsPerDevice)
        let workload = makeWorkload(devices: devices, asidsPerDevice: asidsPerDevice, count: 1 << 16, seed: 42)
        let smallWorkload = makeWorkload(devices: 256, asidsPerDevice: asidsPerDevice, count: 1 << 16, seed: 42)
        let out = RoutedBatch()
        let indexed = measure(workload, batchSize: batchSize, minimumCommands: 20_000_000) { v.route($0, into: out) ; return out.consumed }
        let smallIndexed = measure(smallWorkload, batchSize: batchSize, minimumCommands: 20_000_000) { small.route($0, into: out); return out.consumed }
        var baseline = LinearScanRouter(v)
        let scan = measure(workload, batchSize: batchSize, minimumCommands: 20_000) { baseline.route($0) }
        print(column("\(viommus)", 8) + column(fmt(indexed), 14) + column(fmt(scan), 20) + column(String(format1(scan / indexed)) + "x", 10)
              + column(fmt(smallIndexed), 16) + column(format1(indexed / smallIndexed), 10))
    }
    print("(flatness = ns/cmd with 4096 devices / ns/cmd with 256 devices and 4096 ASIDs: 1.0 is flat)")
}

/// Routes `workload` in batches of `batchSize` until at least `minimumCommands` were routed, three
/// times, and returns the best ns per command.
private func measure(_ workload: [Command], batchSize: Int, minimumCommands: Int,
                     _ body: (UnsafeBufferPointer<Command>) -> Int) -> Double {
    var best = Double.infinity
    var sink = 0
    workload.withUnsafeBufferPointer { all in
        for _ in 0..<3 {
            var routed = 0
            var offset = 0
            let start = ContinuousClock.now
            while routed < minimumCommands {
                let end = min(offset + batchSize, all.count)
                sink &+= body(UnsafeBufferPointer(rebasing: all[offset..<end]))
                routed += end - offset
                offset = end == all.count ? 0 : end
            }
            let elapsed = ContinuousClock.now - start
            let ns = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
            best = min(best, ns / Double(routed))
        }
    }
    if sink == -1 { print(sink) }
    return best
}


private func fmt(_ ns: Double) -> String { format1(ns) }

private func format1(_ x: Double) -> String {
    let tenths = Int(x * 10 + 0.5)
    return tenths >= 10_000 ? String(tenths / 10) : "\(tenths / 10).\(tenths % 10)"
}
