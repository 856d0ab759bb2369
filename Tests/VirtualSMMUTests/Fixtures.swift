import SMMUv3
@testable import VirtualSMMU

/// A translating guest STE (V=1, CONFIG=S1_TRANS, linear CD table at `cdTable`, 2^cdMax CDs) shaped
/// like the ones the Linux guest in `../shared/traces` wrote.
func s1STE(cdTable: UInt64 = 0x4380_4000, cdMax: UInt8 = 0) -> StreamTableEntry {
    var ste = StreamTableEntry()
    ste.isValid = true
    ste.config = .s1Translate
    ste.s1ContextPointer = cdTable
    ste.s1CDMax = cdMax
    ste.s1DSS = .substream0
    return ste
}

/// A vSMMU with one viommu per named pSMMU and one device per viommu: vSID `sids[i]` behind viommu i,
/// host device 100 + i.
func vsmmu(pSMMUs: [String], sids: [StreamID]) throws -> VSMMU {
    var v = VSMMU()
    for (i, name) in pSMMUs.enumerated() {
        let idx = try v.attachViommu(pSMMU: name)
        try v.setDeviceID(viommu: idx, hostDeviceID: HostDeviceID(100 + i), streamID: sids[i])
    }
    return v
}

extension VSMMU {
    /// Routes `commands` and returns the output.
    mutating func routed(_ commands: [Command], policy: RoutingPolicy = .stopAtFirstError) -> RoutedBatch {
        let out = RoutedBatch()
        route(commands, into: out, policy: policy)
        return out
    }
}

extension RoutedBatch {
    /// The viommus that received the guest command at `index`.
    func receivers(of index: Int) -> ViommuSet {
        var set = ViommuSet()
        for v in touched where guestIndices(for: v).contains(UInt32(index)) { set.insert(v) }
        return set
    }
}

let v0 = ViommuIndex(0), v1 = ViommuIndex(1), v2 = ViommuIndex(2)

/// A small deterministic generator (SplitMix64) so that randomised tests replay the same way every run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
