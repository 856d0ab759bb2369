import SMMUv3
@testable import VirtualSMMU
import VSMMUTestSupport

/// A translating guest STE (V=1, CONFIG=S1_TRANS, linear CD table at `cdTable`, 2^cdMax CDs) shaped
/// like the ones the Linux guest in `../shared/traces` wrote.
func s1STE(cdTable: UInt64 = 0x4380_4000, cdMax: UInt8 = 0) -> StreamTableEntry {
    .stage1(contextTable: cdTable, cdMax: cdMax)
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

