import Foundation
import PSMMU
import SMMUv3
import Testing

/// Physical StreamIDs of the four devices behind `smmu0` in these tests: host device `n` has pSID `0x100 + n`.
func makeSMMU(costModel: CostModel = .free, eventQueueDepth: Int = 1024) -> SimulatedSMMU {
    SimulatedSMMU(name: "smmu0", deviceCount: 4, firstHostDeviceID: 1, firstStreamID: 0x101,
                  costModel: costModel, eventQueueDepth: eventQueueDepth)
}

/// A valid stage-1 vSTE linking 2^`cdMax` CDs.
func s1STE(cdMax: UInt8 = 0, dss: S1DefaultSubstream = .substream0, eats: UInt8 = 0,
           format: S1Format = .linear) -> StreamTableEntry {
    var ste = StreamTableEntry.stage1(contextTable: 0x8000_0000, cdMax: cdMax, defaultSubstream: dss)
    ste.eats = eats
    ste.s1Fmt = format
    return ste
}

/// A guest on `smmu`: one viommu, and for each (host device, vSID, ASIDs) a vdevice and a nested
/// HWPT whose CD `i` carries ASID `asids[i]`, the device attached to it.
struct Guest {
    let smmu: SimulatedSMMU
    let viommu: ViommuHandle
    let vmid: VMID
    var hwpts: [UInt32: HWPTHandle] = [:]
    var vdevices: [UInt32: VDeviceHandle] = [:]

    init(_ smmu: SimulatedSMMU, devices: [(host: UInt32, vSID: StreamID, asids: [ASID])], eats: UInt8 = 0) throws {
        self.smmu = smmu
        viommu = try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: devices.first?.host ?? 1))
        vmid = try #require(smmu.vmid(of: viommu))
        for device in devices {
            vdevices[device.host] = try smmu.allocateVDevice(viommu: viommu, hostDeviceID: device.host,
                                                             virtualStreamID: device.vSID)
            let cdMax = UInt8(device.asids.count <= 1 ? 0 : (device.asids.count - 1).bitWidth - (device.asids.count - 1).leadingZeroBitCount)
            let hwpt = try smmu.allocateNestedHWPT(
                viommu: viommu, hostDeviceID: device.host, ste: s1STE(cdMax: cdMax, eats: eats),
                contextDescriptors: device.asids.map { ContextDescriptor.valid(asid: $0) })
            hwpts[device.host] = hwpt
            try smmu.attachDevice(try #require(vdevices[device.host]), to: .nested(hwpt))
        }
    }

    @discardableResult
    func run(_ commands: [Command]) -> InvalidationResult {
        commands.withUnsafeBufferPointer { smmu.invalidate(viommu: viommu, commands: $0) }
    }

    /// Fills the TLB through `host` (SubstreamID `ssid`) for each address, with entries of `size`.
    func fill(_ host: UInt32, ssid: SubstreamID? = nil, _ addresses: [UInt64], size: UInt64 = 4096) throws {
        for address in addresses {
            let outcome = try smmu.touch(hostDeviceID: host, substreamID: ssid, address: address, size: size)
            #expect(outcome.tlbEntry != nil, "fill of 0x\(String(address, radix: 16)) gave \(outcome)")
        }
    }

    /// The cached addresses of `asid` in this guest's VMID.
    func cached(asid: ASID) -> [UInt64] {
        smmu.tlbEntries(viommu: viommu).filter { $0.asid == asid }.map(\.address)
    }
}

/// The `BackendError` `body` throws, `nil` when it succeeds (or throws something else).
func backendError(_ body: () throws -> Void) -> BackendError? {
    do { try body() } catch let error as BackendError { return error } catch {}
    return nil
}

/// Runs `body` on a new thread; `wait()` joins it and returns its result.
///
/// Synchronised with `NSCondition` (a pthread mutex and condition variable) so that ThreadSanitizer
/// sees the hand-over.
final class Spawned<T: Sendable>: @unchecked Sendable {
    // `result` is only accessed with `condition` locked.
    private let condition = NSCondition()
    private var result: T?

    init(_ body: @escaping @Sendable () -> T) {
        Thread { [self] in
            let value = body()
            condition.lock()
            result = value
            condition.broadcast()
            condition.unlock()
        }.start()
    }

    /// Waits for the thread's result.
    func wait() -> T {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let result { return result }
            condition.wait()
        }
    }
}
