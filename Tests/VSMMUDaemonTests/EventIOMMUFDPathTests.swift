import IOMMUFD
import IOMMUFDSimulation
import Logging
import SharedQueue
import SMMUv3
import SystemPackage
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The socket tests' adapter of the kernel model, whose vEVENTQs the backend's watcher can also poll (the
/// model's readiness eventfd stands for the poll of the kernel's vEVENTQ file).
private final class PolledAdapter: IOMMUFDDevice {
    let adapter: IOMMUFDThroughTheSocketTests.Adapter
    init(_ adapter: IOMMUFDThroughTheSocketTests.Adapter) { self.adapter = adapter }
    func ioctl(request: IOMMUFDRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? { adapter.ioctl(request: request, argument: argument) }
    func read(eventQueue: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, Errno> {
        adapter.read(eventQueue: eventQueue, into: buffer)
    }
    func close(eventQueue: FileDescriptor) { adapter.close(eventQueue: eventQueue) }
    func readinessDescriptor(eventQueue: FileDescriptor) -> FileDescriptor? { adapter.kernel.readinessDescriptor(eventQueue: eventQueue) }
    func ioctl(vfioDevice: FileDescriptor, request: VFIODeviceRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        adapter.ioctl(vfioDevice: vfioDevice, request: request, argument: argument)
    }
    func close(vfioDevice: FileDescriptor) { adapter.close(vfioDevice: vfioDevice) }
}

/// The iommufd backend's event path through the daemon (issue 14): the kernel model raises a pSMMU event,
/// `arm_vmaster_report_event` queues it on the viommu's vEVENTQ with the vSID, the backend's watcher reads
/// it, and the daemon writes it into the owner's event queue; a vEVENTQ overflow (LOST_EVENTS) reaches the
/// queue as LOST_BEFORE and is counted upstream.
@Suite struct EventIOMMUFDPathTests {
    @Test func aPSMMUEventReachesTheOwnersQueueWithItsVSIDAndALostEventsHeaderMarksTheNextOne() throws {
        let kernel = SimulatedIOMMUFD(pSMMUCount: 1)
        let device = kernel.bindDevice(pSMMU: 0, streamID: 0x100)
        let ioas = kernel.allocateIOAS()
        let parent = try kernel.allocateNestParent(device: device.devID, ioas: ioas)
        try kernel.attach(vfio: device.vfio, to: parent)
        let translation = IOMMUFDThroughTheSocketTests.Translation()
        let adoption = IOMMUFDAdoption { fd in
            _ = Glibc.close(fd.rawValue) // the VMM's iommufd: the model stands for it
            return PolledAdapter(IOMMUFDThroughTheSocketTests.Adapter(kernel, translation))
        }
        var quiet = Logger(label: "vsmmud-test")
        quiet.logLevel = .critical
        let server = VSMMUServer(configuration: .init(socketPath: uniqueSocketPath("evfd"), pSMMUs: [.iommufd(name: "smmu0", adoption: adoption)]),
                                 logger: quiet)
        try server.start()
        defer { server.stop() }
        let client = try VSMMUClient(socketPath: server.configuration.socketPath)
        try client.hello()
        let vsmmu = try client.createVSMMU(name: "vm")
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: device.devID, nestParentHWPT: parent,
                                             iommufd: open("/dev/null", O_RDONLY)).viommu
        let cdev = try translation.standIn(for: try kernel.duplicate(vfio: device.vfio))
        defer { close(cdev) }
        try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: device.devID, streamID: 0x8, vfioDevice: cdev)
        // Attached to its nested HWPT: the kernel has a vmaster for it (`arm_smmu_attach_prepare_vmaster`).
        _ = try client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: .stage1(contextTable: 0x8000_0000), contextDescriptors: [.valid(asid: 3)])
        let small = try TestEventVMM(log2Entries: 10)
        #expect(try client.mapEventQueueOrFail(vsmmu: vsmmu, small) == 0)

        // One event: queued with the vSID, read by the watcher, written with the vSID and viommu.
        let disposition = kernel.raiseEvent(pSMMU: 0, EventRecord(id: .translation, streamID: 0x100, inputAddress: 0x4000))
        guard case .queued = disposition else { Issue.record("the model did not queue the event: \(disposition)"); return }
        let first = small.take(1)
        #expect(first.map(\.record.streamID) == [0x8])
        #expect(first.map(\.record.inputAddress) == [0x4000])
        #expect(first.map(\.viommu) == [viommu] && first.map(\.sequence) == [1] && first.first?.lostBefore == false)

        // Faster than the watcher drains: the vEVENTQ (depth 64) overflows and queues LOST_EVENTS.
        // The VMM keeps reading meanwhile, so that its own queue never fills (that would be another overflow).
        var taken: [EventQueueEntry] = []
        var raised = 0, sawLost = false
        while !sawLost && raised < 1_000_000 {
            if raised % 16 == 0 { taken += small.drain() }
            if case .lost = kernel.raiseEvent(pSMMU: 0, EventRecord(id: .translation, streamID: 0x100, inputAddress: UInt64(raised) << 12)) {
                sawLost = true
            }
            raised += 1
        }
        #expect(sawLost)
        // Whatever the watcher read comes out; one of the events after the loss carries LOST_BEFORE.
        // (raised again while the vEVENTQ is still full: the watcher has not read it yet)
        var marker = kernel.raiseEvent(pSMMU: 0, EventRecord(id: .translation, streamID: 0x100, inputAddress: 0xdead_0000))
        eventually {
            if case .queued = marker { return true }
            marker = kernel.raiseEvent(pSMMU: 0, EventRecord(id: .translation, streamID: 0x100, inputAddress: 0xdead_0000))
            return false
        }
        eventually { taken += small.drain(); return taken.contains { $0.record.inputAddress == 0xdead_0000 } }
        #expect(taken.contains { $0.lostBefore })
        #expect(small.producer & EventQueueLayout.overflowFlag != 0) // the daemon toggled OVFLG for the kernel's loss
        #expect(taken.allSatisfy { $0.record.streamID == 0x8 })
        let stats = try client.stats(vsmmu: vsmmu)
        #expect((stats.value(.viommuEventsLostUpstream, viommu: UInt16(viommu)) ?? 0) >= 1)
        #expect(stats.value(.viommuEvents, viommu: UInt16(viommu)) == UInt64(1 + taken.count))
    }
}
