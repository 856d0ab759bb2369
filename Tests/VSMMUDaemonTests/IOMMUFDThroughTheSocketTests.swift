import Foundation
import CIOMMUFD
import IOMMUFD
import IOMMUFDSimulation
import PSMMU
import SMMUv3
import Synchronization
import SystemPackage
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The iommufd pSMMU end to end, through the socket: the VMM's iommufd (ATTACH_VIOMMU) and each device's
/// VFIO cdev (SET_DEV_ID) travel with SCM_RIGHTS, and the daemon's `IOMMUFDBackend` drives a model of the
/// kernel (`SimulatedIOMMUFD`) instead of `/dev/iommu`, so the outcomes the kernel would give — which HWPT
/// a device is attached to, which objects are left — are checked, not only the replies.
///
/// The descriptors that travel are pipes: each stands for one VFIO cdev of the model, and the adapter
/// below finds the model's descriptor by the pipe's inode, the way the kernel finds the file.
@Suite struct IOMMUFDThroughTheSocketTests {
    /// The model's VFIO descriptors by the inode of the pipe that stands for each in the socket.
    final class Translation: @unchecked Sendable {
        let lock = NSLock()
        var byInode: [UInt64: Int32] = [:]

        /// A pipe's write end standing for `vfio`; the read end is closed.
        func standIn(for vfio: Int32) throws -> Int32 {
            var ends: [Int32] = [-1, -1]
            try #require(pipe(&ends) == 0)
            close(ends[0])
            lock.withLock { byInode[Self.inode(ends[1])] = vfio }
            return ends[1]
        }

        func model(_ fd: Int32) -> Int32? { lock.withLock { byInode[Self.inode(fd)] } }

        /// vEVENTQ descriptors of the model, by the inode of the pipe standing for each (``standInEventQueue``).
        var eventQueuesByInode: [UInt64: Int32] = [:]

        /// A pipe's write end standing for the model's vEVENTQ descriptor `queue`: a real file, so that
        /// `dup` (systemd's fd store) and `close` hold and drop references on it as on the kernel's file.
        func standInEventQueue(_ queue: Int32) -> Int32? {
            var ends: [Int32] = [-1, -1]
            guard pipe(&ends) == 0 else { return nil }
            close(ends[0])
            lock.withLock { eventQueuesByInode[Self.inode(ends[1])] = queue }
            return ends[1]
        }

        func eventQueueModel(_ fd: Int32) -> Int32? { lock.withLock { eventQueuesByInode[Self.inode(fd)] } }

        /// `close(2)` of a stand-in: the model's vEVENTQ file is released (`iommufd_veventq_fops_release`)
        /// only when no descriptor of this process refers to the pipe any more, as the kernel releases a
        /// file at its last reference.
        func closeEventQueue(_ fd: Int32, kernel: SimulatedIOMMUFD) {
            let inode = Self.inode(fd)
            guard let queue = lock.withLock({ eventQueuesByInode[inode] }) else { return }
            _ = Glibc.close(fd)
            guard !Self.openDescriptors().contains(where: { Self.inode($0) == inode }) else { return }
            lock.withLock { _ = eventQueuesByInode.removeValue(forKey: inode) }
            kernel.close(eventQueue: FileDescriptor(rawValue: queue))
        }

        static func openDescriptors() -> [Int32] {
            ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
        }

        static func inode(_ fd: Int32) -> UInt64 {
            var st = stat()
            return fstat(fd, &st) == 0 ? UInt64(st.st_ino) : 0
        }
    }

    /// The daemon's view of the model: iommufd ioctls go straight to it, VFIO ioctls to the model's
    /// descriptor the received pipe stands for (anything else is ENOTTY, as on a descriptor that is not a
    /// VFIO cdev), and a received descriptor is really closed.
    /// With `realEventQueues`, each vEVENTQ descriptor the model hands out (`IOMMU_VEVENTQ_ALLOC`'s
    /// `out_veventq_fd`) reaches the daemon as a real file standing for it (``Translation/standInEventQueue``).
    final class Adapter: IOMMUFDDevice {
        let kernel: SimulatedIOMMUFD
        let translation: Translation
        let realEventQueues: Bool
        init(_ kernel: SimulatedIOMMUFD, _ translation: Translation, realEventQueues: Bool = false) {
            self.kernel = kernel
            self.translation = translation
            self.realEventQueues = realEventQueues
        }
        func ioctl(request: IOMMUFDRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
            let answer = kernel.ioctl(request: request, argument: argument)
            if realEventQueues, answer == nil, request == .veventqAlloc,
               argument.count >= MemoryLayout<iommu_veventq_alloc>.size {
                var alloc = argument.loadUnaligned(as: iommu_veventq_alloc.self)
                guard let standIn = translation.standInEventQueue(Int32(bitPattern: alloc.out_veventq_fd)) else { return .tooManyOpenFiles }
                alloc.out_veventq_fd = UInt32(bitPattern: standIn)
                withUnsafeBytes(of: &alloc) { argument.copyMemory(from: $0) }
            }
            return answer
        }
        func read(eventQueue: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, Errno> {
            guard realEventQueues else { return kernel.read(eventQueue: eventQueue, into: buffer) }
            guard let queue = translation.eventQueueModel(eventQueue.rawValue) else { return .failure(.badFileDescriptor) }
            return kernel.read(eventQueue: FileDescriptor(rawValue: queue), into: buffer)
        }
        func close(eventQueue: FileDescriptor) {
            guard realEventQueues else { return kernel.close(eventQueue: eventQueue) }
            translation.closeEventQueue(eventQueue.rawValue, kernel: kernel)
        }
        func ioctl(vfioDevice: FileDescriptor, request: VFIODeviceRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
            guard let vfio = translation.model(vfioDevice.rawValue) else { return .inappropriateIOCTLForDevice }
            return kernel.ioctl(vfioDevice: FileDescriptor(rawValue: vfio), request: request, argument: argument)
        }
        func close(vfioDevice: FileDescriptor) { _ = Glibc.close(vfioDevice.rawValue) }
    }

    /// A host with two pSMMUs, a device behind each bound to the VMM's iommufd and attached to its
    /// pSMMU's S2, and a daemon whose pSMMUs `smmu0` and `smmu1` are iommufd ones on that model.
    struct Host {
        let kernel: SimulatedIOMMUFD
        let translation = Translation()
        let devices: [SimulatedIOMMUFD.BoundDevice]
        let nestParents: [UInt32]
        let server: VSMMUServer
        let client: VSMMUClient

        init(_ label: String = #function) throws {
            let kernel = SimulatedIOMMUFD(pSMMUCount: 2)
            self.kernel = kernel
            let devices = (0..<2).map { kernel.bindDevice(pSMMU: $0, streamID: StreamID(0x100 * ($0 + 1))) }
            self.devices = devices
            let ioas = kernel.allocateIOAS()
            var parents: [UInt32] = []
            for (p, device) in devices.enumerated() {
                parents.append(try kernel.allocateNestParent(device: device.devID, ioas: ioas))
                try kernel.attach(vfio: device.vfio, to: parents[p])
            }
            nestParents = parents
            let translation = self.translation
            let adoption = IOMMUFDAdoption { fd in
                _ = Glibc.close(fd.rawValue) // the VMM's iommufd: the model stands for it
                return Adapter(kernel, translation)
            }
            let name = String(label.prefix { $0.isLetter }.prefix(20))
            server = VSMMUServer(configuration: .init(socketPath: uniqueSocketPath(name),
                                                      pSMMUs: [.iommufd(name: "smmu0", adoption: adoption),
                                                               .iommufd(name: "smmu1", adoption: adoption)]))
            try server.start()
            client = try VSMMUClient(socketPath: server.configuration.socketPath)
            try client.hello()
        }

        func stop() { server.stop() }

        /// A descriptor to pass as the VMM's iommufd.
        func iommufd() -> Int32 { open("/dev/null", O_RDONLY) }

        /// A vSMMU with a viommu on each pSMMU.
        func vsmmuWithTwoViommus() throws -> VSMMUID {
            let vsmmu = try client.createVSMMU(name: "vm")
            for p in 0..<2 {
                _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu\(p)", hostDeviceID: devices[p].devID,
                                            nestParentHWPT: nestParents[p], iommufd: iommufd())
            }
            return vsmmu
        }

        /// SET_DEV_ID of device `p` as vSID `vsid`, passing a stand-in of its VFIO cdev.
        func register(_ vsmmu: VSMMUID, _ p: Int, vsid: StreamID) throws {
            let fd = try translation.standIn(for: try kernel.duplicate(vfio: devices[p].vfio))
            defer { close(fd) }
            try client.setDeviceID(vsmmu: vsmmu, viommu: UInt32(p), hostDeviceID: devices[p].devID, streamID: vsid,
                                   vfioDevice: fd)
        }
    }

    @Test func linkThroughTheSocketAttachesTheDeviceToItsNestedHWPTInTheKernel() throws {
        let host = try Host()
        defer { host.stop() }
        let vsmmu = try host.vsmmuWithTwoViommus()
        try host.register(vsmmu, 0, vsid: 0x8)
        #expect(host.kernel.attachment(ofDevice: host.devices[0].devID) == host.nestParents[0])

        _ = try host.client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: .stage1(contextTable: 0x8000_0000),
                                    contextDescriptors: [.valid(asid: 3)])
        let attached = try #require(host.kernel.attachment(ofDevice: host.devices[0].devID))
        #expect(attached != host.nestParents[0])
        #expect(host.kernel.nestedSTE(of: attached)?.0 == StreamTableEntry.stage1(contextTable: 0x8000_0000).word(0))

        // An ASID-routed TLBI reaches only the viommu whose HWPT carries ASID 3.
        host.kernel.clearIssuedCommands()
        let reply = try host.client.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 3), .sync()])
        #expect(reply.failure == nil)
        #expect(host.kernel.executedCommands(pSMMU: 0).map(\.opcode) == [.tlbiNHASID])
        #expect(host.kernel.executedCommands(pSMMU: 1).isEmpty)
    }

    @Test func unlinkAbortsAndUnsetPutsTheDeviceHomeAndLeavesOnlyTheVMMsObjects() throws {
        let host = try Host()
        defer { host.stop() }
        let before = Set(host.kernel.liveObjects().map(\.id))
        let vsmmu = try host.vsmmuWithTwoViommus()
        try host.register(vsmmu, 1, vsid: 0x10)
        _ = try host.client.linkSTE(vsmmu: vsmmu, streamID: 0x10, ste: .stage1(contextTable: 0x9000_0000),
                                    contextDescriptors: [.valid(asid: 1)])
        try host.client.unlinkSTE(vsmmu: vsmmu, streamID: 0x10)
        let aborted = try #require(host.kernel.attachment(ofDevice: host.devices[1].devID))
        #expect(host.kernel.nestedSTE(of: aborted)?.0 == StreamTableEntry.abort.word(0))

        try host.client.unsetDeviceID(vsmmu: vsmmu, viommu: 1, hostDeviceID: host.devices[1].devID, streamID: 0x10)
        #expect(host.kernel.attachment(ofDevice: host.devices[1].devID) == host.nestParents[1])
        try host.client.destroyVSMMU(vsmmu)
        #expect(Set(host.kernel.liveObjects().map(\.id)) == before)
    }

    @Test func aVMMThatVanishesLeavesItsDevicesOnTheirNestParents() throws {
        let host = try Host()
        defer { host.stop() }
        let before = Set(host.kernel.liveObjects().map(\.id))
        do {
            // A second VMM, gone at the end of this scope (its client's socket closes).
            let vmm = try VSMMUClient(socketPath: host.server.configuration.socketPath)
            try vmm.hello()
            let vsmmu = try vmm.createVSMMU(name: "vanishing")
            _ = try vmm.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: host.devices[0].devID,
                                     nestParentHWPT: host.nestParents[0], iommufd: host.iommufd())
            let fd = try host.translation.standIn(for: try host.kernel.duplicate(vfio: host.devices[0].vfio))
            try vmm.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: host.devices[0].devID, streamID: 0x8, vfioDevice: fd)
            close(fd)
            _ = try vmm.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: .bypass)
            #expect(host.kernel.attachment(ofDevice: host.devices[0].devID) != host.nestParents[0])
        }
        var cleaned = false
        for _ in 0..<300 where !cleaned {
            cleaned = Set(host.kernel.liveObjects().map(\.id)) == before
            if !cleaned { usleep(10_000) }
        }
        #expect(cleaned)
        #expect(host.kernel.attachment(ofDevice: host.devices[0].devID) == host.nestParents[0])
    }

    @Test func setDeviceIDWithoutTheVFIOCdevOnAnIommufdPSMMUIsBadFileDescriptorMissing() throws {
        let host = try Host()
        defer { host.stop() }
        let vsmmu = try host.vsmmuWithTwoViommus()
        let e = refusal("SET_DEV_ID without a VFIO cdev") {
            try host.client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: host.devices[0].devID, streamID: 0x8)
        }
        #expect(e?.code == .badFileDescriptor && e?.detail == 1)
        #expect(host.kernel.vdevices(ofViommu: try #require(host.kernel.liveObjects(.viommu).first)).isEmpty)
    }

    @Test func setDeviceIDWithADescriptorThatIsNoVFIOCdevIsBadFileDescriptorUnusableAndRegistersNothing() throws {
        let host = try Host()
        defer { host.stop() }
        let vsmmu = try host.vsmmuWithTwoViommus()
        let devNull = open("/dev/null", O_RDONLY)
        defer { close(devNull) }
        let e = refusal("SET_DEV_ID with /dev/null") {
            try host.client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: host.devices[0].devID, streamID: 0x8,
                                        vfioDevice: devNull)
        }
        #expect(e?.code == .badFileDescriptor && e?.detail == 3 && e?.value == UInt64(ENOTTY))
        // Nothing was registered: the vSID is free for the real device.
        try host.register(vsmmu, 0, vsid: 0x8)
    }

    @Test func getHWInfoIsWhatEveryPSMMUsKernelAnswerAllowsTheGuest() throws {
        let host = try Host()
        defer { host.stop() }
        let vsmmu = try host.vsmmuWithTwoViommus()
        let info = try host.client.hardwareInfo(vsmmu: vsmmu)
        #expect(info.viommuCount == 2)
        #expect(info.registers == IDRegisters.advertised(host.kernel.smmus.map(\.idRegisters)))
        #expect(!info.registers[flag: .s2p] && info.registers[flag: .s1p])
    }

    /// The ERROR a request was refused with.
    func refusal(_ what: String, _ body: () throws -> Void) -> ProtocolError? {
        do {
            try body()
            Issue.record("\(what) was accepted")
            return nil
        } catch let error as VSMMUClientError {
            if case .server(let e) = error { return e }
            Issue.record("\(what): \(error)")
            return nil
        } catch {
            Issue.record("\(what): \(error)")
            return nil
        }
    }
}
