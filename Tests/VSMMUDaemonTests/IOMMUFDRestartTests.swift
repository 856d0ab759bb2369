import CVSMMUClient
import Foundation
import IOMMUFD
import IOMMUFDSimulation
import Logging
import PSMMU
import SMMUv3
import SystemPackage
import Testing
import VSMMUClient
@testable import VSMMUDaemon
import VSMMUProtocol
import VirtualSMMU

#if canImport(Glibc)
import Glibc
#endif

/// iommufd vSMMUs across a daemon restart, in process: the daemon's `IOMMUFDBackend` drives a model of the
/// kernel (`SimulatedIOMMUFD`) that outlives both "processes", as the VMM's iommufd file outlives the daemon
/// (`iommufd_fops_release` destroys its objects only when the last reference to the file goes), and a
/// recording fd store plays systemd's part (`FDSTORE=1`, then `LISTEN_FDNAMES` for the next process).
@Suite struct IOMMUFDRestartTests {
    typealias Translation = IOMMUFDThroughTheSocketTests.Translation
    typealias Adapter = IOMMUFDThroughTheSocketTests.Adapter

    /// systemd's fd store as a test sees it: it keeps a duplicate of every fd under its name and hands
    /// duplicates of them to the next process.
    final class RecordingStore: FileDescriptorStore, @unchecked Sendable {
        let lock = NSLock()
        var held: [String: [Int32]] = [:]
        var removed: [String] = []
        /// How a held descriptor is closed (the rig's: a vEVENTQ stand-in releases the model's file at its
        /// last reference).
        var closer: @Sendable (Int32) -> Void = { _ = Glibc.close($0) }

        func store(_ fd: Int32, name: String) throws {
            let copy = dup(fd)
            guard copy >= 0 else { throw Errno(rawValue: errno) }
            lock.withLock { held[name, default: []].append(copy) }
        }

        func remove(name: String) {
            let fds = lock.withLock { () -> [Int32] in
                removed.append(name)
                return held.removeValue(forKey: name) ?? []
            }
            for fd in fds { closer(fd) }
        }

        /// The store goes with its service (stopped, not restarted): every descriptor it held is closed.
        func discard() {
            let fds = lock.withLock { () -> [Int32] in
                defer { held = [:] }
                return held.values.flatMap { $0 }
            }
            for fd in fds { closer(fd) }
        }

        var names: Set<String> { lock.withLock { Set(held.keys) } }

        /// What the next process gets in `LISTEN_FDS`: a duplicate of each stored fd, by name.
        func inherited() -> InheritedFileDescriptors {
            lock.withLock { InheritedFileDescriptors(held.mapValues { $0.map { dup($0) } }) }
        }
    }

    /// A host whose kernel model holds a VMM's objects, a second model that holds none (another VMM's
    /// iommufd), and iommufd pSMMUs `smmu0`/`smmu1` whose adoption finds the model by the passed fd's inode.
    final class Rig: @unchecked Sendable {
        let kernel: SimulatedIOMMUFD
        let otherKernel = SimulatedIOMMUFD(pSMMUCount: 2)
        let translation = Translation()
        let lock = NSLock()
        var kernelsByInode: [UInt64: SimulatedIOMMUFD] = [:]
        let devices: [SimulatedIOMMUFD.BoundDevice]
        let nestParents: [UInt32]
        let directory: String

        init(_ label: String = #function) throws {
            directory = temporaryStateDirectory(label)
            let kernel = SimulatedIOMMUFD(pSMMUCount: 2)
            self.kernel = kernel
            devices = (0..<2).map { kernel.bindDevice(pSMMU: $0, streamID: StreamID(0x100 * ($0 + 1))) }
            let ioas = kernel.allocateIOAS()
            var parents: [UInt32] = []
            for (p, device) in devices.enumerated() {
                parents.append(try kernel.allocateNestParent(device: device.devID, ioas: ioas))
                try kernel.attach(vfio: device.vfio, to: parents[p])
            }
            nestParents = parents
        }

        deinit { removeStateDirectory(directory) }

        /// A descriptor standing for an iommufd of `kernel` (a pipe; the adoption finds the model by its inode).
        func iommufd(of kernel: SimulatedIOMMUFD? = nil) throws -> Int32 {
            var ends: [Int32] = [-1, -1]
            try #require(pipe(&ends) == 0)
            close(ends[0])
            lock.withLock { kernelsByInode[Translation.inode(ends[1])] = kernel ?? self.kernel }
            return ends[1]
        }

        /// A stand-in of device `p`'s VFIO cdev.
        func cdev(_ p: Int) throws -> Int32 { try translation.standIn(for: try kernel.duplicate(vfio: devices[p].vfio)) }

        /// A journaled server ("a process") on this host.
        func server(store: RecordingStore, inherited: InheritedFileDescriptors = InheritedFileDescriptors(),
                    log: MessageLog? = nil, socketPath: String? = nil, label: String = #function) throws -> VSMMUServer {
            let adoption = IOMMUFDAdoption { [self] fd in
                let model = lock.withLock { kernelsByInode[Translation.inode(fd.rawValue)] } ?? kernel
                _ = Glibc.close(fd.rawValue)
                return Adapter(model, translation, realEventQueues: true)
            }
            let name = String(label.prefix { $0.isLetter }.prefix(20))
            var configuration = VSMMUServer.Configuration(socketPath: socketPath ?? uniqueSocketPath(name),
                                                          pSMMUs: [.iommufd(name: "smmu0", adoption: adoption),
                                                                   .iommufd(name: "smmu1", adoption: adoption)])
            configuration.stateDirectory = directory
            let host = self.kernel, stand = self.translation
            store.closer = { fd in
                if stand.eventQueueModel(fd) != nil { stand.closeEventQueue(fd, kernel: host) } else { _ = Glibc.close(fd) }
            }
            configuration.fileDescriptorStore = store
            configuration.inheritedFileDescriptors = inherited
            var quiet = Logger(label: "vsmmud-test")
            quiet.logLevel = .critical
            let server = VSMMUServer(configuration: configuration, logger: log?.logger ?? quiet)
            try server.start()
            return server
        }

        func client(_ server: VSMMUServer) throws -> VSMMUClient {
            let client = try VSMMUClient(socketPath: server.configuration.socketPath)
            try client.hello(name: "readopt-test")
            return client
        }

        /// A vSMMU with a viommu on smmu0, device 0 as vSID 0x8 linked with ASID 3.
        func register(on client: VSMMUClient) throws -> VSMMUID {
            let vsmmu = try client.createVSMMU(name: "vm")
            let fd = try iommufd()
            defer { close(fd) }
            _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: devices[0].devID,
                                        nestParentHWPT: nestParents[0], iommufd: fd)
            let cdev = try cdev(0)
            defer { close(cdev) }
            try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: devices[0].devID, streamID: 0x8, vfioDevice: cdev)
            _ = try client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: .stage1(contextTable: 0x8000_0000),
                                   contextDescriptors: [.valid(asid: 3)])
            return vsmmu
        }

        /// The first process dies after its stop: the kernel closes its descriptors. The VMM's iommufd and
        /// cdevs stay open (the VMM and the fd store hold them); the vEVENTQ fds were the daemon's alone, and
        /// their release (`iommufd_eventq_fops_release`) drops the reference that kept the vEVENTQ from being
        /// destroyed, so the next process can destroy it by id and allocate another.
        func die(_ server: VSMMUServer) {
            server.stop()
            let served = server.state.withLock { Array($0.vsmmus.values) }
            for vsmmu in served {
                for fd in vsmmu.engine.heldDescriptors.eventQueues.values { translation.closeEventQueue(fd, kernel: kernel) }
            }
        }

        /// Whether a TLBI for ASID 3 through `client` reaches the kernel model's pSMMU 0.
        func invalidationReachesTheKernel(_ client: VSMMUClient, _ vsmmu: VSMMUID) throws -> Bool {
            kernel.clearIssuedCommands()
            let reply = try client.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 3), .sync()])
            return reply.failure == nil && kernel.executedCommands(pSMMU: 0).map(\.opcode) == [.tlbiNHASID]
        }
    }

    /// The backend ids LIST shows for each viommu.
    func backendViommuIDs(_ client: VSMMUClient) throws -> [UInt32] {
        guard case .viommus(let entries) = try client.list(.viommus).entries else { throw VSMMUClientError.badReply("LIST") }
        return entries.map(\.backendViommuID)
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

    @Test func withTheFdsInheritedTheVSMMUIsReadoptedWithTheSameKernelIdsAndInvalidationsReachTheKernel() throws {
        let rig = try Rig()
        let store = RecordingStore()
        let first = try rig.server(store: store)
        let owner = try rig.client(first)
        let vsmmu = try rig.register(on: owner)
        let token = try #require(owner.resumeTokens[vsmmu])
        let ids = try backendViommuIDs(owner)
        #expect(store.names == [ServedVSMMU.iommufdName(vsmmu, ViommuIndex(0)), ServedVSMMU.cdevName(vsmmu, 0x8),
                                ServedVSMMU.eventQueueName(vsmmu, ViommuIndex(0))])
        let viommus = rig.kernel.liveObjects(.viommu)
        let attached = rig.kernel.attachment(ofDevice: rig.devices[0].devID)
        // A fault the daemon has not read when it dies (arm_smmu_handle_event -> the vEVENTQ).
        let queues = rig.kernel.liveObjects(.veventq)
        try #require(queues.count == 1)
        let fault = EventRecord(id: .translation, streamID: rig.devices[0].streamID, inputAddress: 0x4000)
        #expect(rig.kernel.raiseEvent(pSMMU: 0, fault) == .queued(veventq: queues[0], virtualStreamID: 0x8))
        rig.die(first)
        withExtendedLifetime(owner) {}

        // systemctl restart: the next process gets the stored fds (LISTEN_FDNAMES).
        rig.kernel.clearIssuedCommands()
        let second = try rig.server(store: store, inherited: store.inherited())
        defer { second.stop() }
        // Re-adopting it, the daemon invalidated what the objects may cache: commands the first process
        // answered once queued may never have run (Recovery.flushAfterRestore).
        #expect(rig.kernel.executedCommands(pSMMU: 0).map(\.opcode) == [.tlbiNHAll, .cfgiCDAll],
                "\(rig.kernel.executedCommands(pSMMU: 0))")
        let vmm = try rig.client(second)
        let resumed = try vmm.resumeVSMMU(vsmmu, token: token)
        #expect(resumed.viommuCount == 1 && resumed.deviceCount == 1)
        #expect(try backendViommuIDs(vmm) == ids, "the same viommu object, re-adopted by id")
        #expect(rig.kernel.liveObjects(.viommu) == viommus, "nothing allocated again, nothing destroyed")
        #expect(rig.kernel.attachment(ofDevice: rig.devices[0].devID) == attached, "the device stays on its nested HWPT")
        // The vEVENTQ outlived the process in the store (iommufd_veventq_fops_release had not run): the same
        // queue, re-adopted with its descriptor, still holding the event.
        #expect(rig.kernel.liveObjects(.veventq) == queues, "the same vEVENTQ, not allocated again")
        #expect(rig.kernel.pendingEvents(veventq: queues[0]) == 1, "the event the first process had not read is still queued")
        #expect(try rig.invalidationReachesTheKernel(vmm, vsmmu))
        // The VMM repeats SET_DEV_ID with its cdev after RESUME whatever survived: answered, nothing changes.
        let cdev = try rig.cdev(0)
        defer { close(cdev) }
        try vmm.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: rig.devices[0].devID, streamID: 0x8, vfioDevice: cdev)
        #expect(try rig.invalidationReachesTheKernel(vmm, vsmmu))
        // The names stay in the store for the next restart.
        #expect(store.names.count == 3 && store.removed.isEmpty)
    }

    /// systemd keeps one fd per open file (`service_add_fd_store`, `same_fd`): a VMM that attached two
    /// viommus with the same iommufd gets only the first viommu's name back. Recovery gives the other viommu
    /// a duplicate of that file, and both are re-adopted by id at once.
    @Test func twoViommusOnOneIommufdAreReadoptedWhenTheStoreKeptOnlyOneNameForTheirSharedFile() throws {
        let rig = try Rig()
        let store = RecordingStore()
        let first = try rig.server(store: store)
        let owner = try rig.client(first)
        let vsmmu = try owner.createVSMMU(name: "two")
        let fd = try rig.iommufd()
        defer { close(fd) }
        for p in 0..<2 {
            _ = try owner.attachViommu(vsmmu: vsmmu, pSMMU: "smmu\(p)", hostDeviceID: rig.devices[p].devID,
                                       nestParentHWPT: rig.nestParents[p], iommufd: fd)
            let cdev = try rig.cdev(p)
            defer { close(cdev) }
            try owner.setDeviceID(vsmmu: vsmmu, viommu: UInt32(p), hostDeviceID: rig.devices[p].devID,
                                  streamID: StreamID(0x8 + p), vfioDevice: cdev)
        }
        let token = try #require(owner.resumeTokens[vsmmu])
        let ids = try backendViommuIDs(owner)
        let viommus = rig.kernel.liveObjects(.viommu)
        rig.die(first)
        withExtendedLifetime(owner) {}

        var inherited = store.inherited()
        let second = ServedVSMMU.iommufdName(vsmmu, ViommuIndex(1))
        try #require(inherited.byName[second] != nil)
        inherited.byName[second]?.forEach { close($0) }
        inherited.byName[second] = nil
        let next = try rig.server(store: store, inherited: inherited)
        defer { next.stop() }
        let vmm = try rig.client(next)
        let resumed = try vmm.resumeVSMMU(vsmmu, token: token)
        #expect(resumed.viommuCount == 2 && resumed.deviceCount == 2)
        #expect(try backendViommuIDs(vmm) == ids, "both viommus re-adopted by id")
        #expect(rig.kernel.liveObjects(.viommu) == viommus, "nothing allocated again, nothing destroyed")
        rig.kernel.clearIssuedCommands()
        let reply = try vmm.invalidate(vsmmu: vsmmu, commands: [.tlbiNHAll(), .sync()])
        #expect(reply.failure == nil)
        #expect(rig.kernel.executedCommands(pSMMU: 0).map(\.opcode) == [.tlbiNHAll])
        #expect(rig.kernel.executedCommands(pSMMU: 1).map(\.opcode) == [.tlbiNHAll])
    }

    @Test func withoutTheFdsTheVSMMUAwaitsItsIommufdThenServesWithTheCdevPendingUntilSetDevIDHandsItBack() throws {
        let rig = try Rig()
        let store = RecordingStore()
        let first = try rig.server(store: store)
        let owner = try rig.client(first)
        let vsmmu = try rig.register(on: owner)
        let token = try #require(owner.resumeTokens[vsmmu])
        let ids = try backendViommuIDs(owner)
        let queues = rig.kernel.liveObjects(.veventq)
        try #require(queues.count == 1)
        let fault = EventRecord(id: .translation, streamID: rig.devices[0].streamID, inputAddress: 0x4000)
        #expect(rig.kernel.raiseEvent(pSMMU: 0, fault) == .queued(veventq: queues[0], virtualStreamID: 0x8))
        rig.die(first)
        store.discard()
        withExtendedLifetime(owner) {}

        // Started by hand: no fd came back, and this process has no store.
        let bare = RecordingStore()
        let second = try rig.server(store: bare)
        defer { second.stop() }
        let vmm = try rig.client(second)
        guard case .vsmmus(let listed) = try vmm.list(.vsmmus).entries else { Issue.record("LIST"); return }
        #expect(listed.map(\.awaitingOwner) == [true])
        #expect(listed.first?.deviceCount == 1, "the registrations are there, from the journal")

        _ = try vmm.resumeVSMMU(vsmmu, token: token)
        let early = refusal("INVALIDATE before the descriptors are back") {
            _ = try vmm.invalidate(vsmmu: vsmmu, commands: [.tlbiNHASID(asid: 3), .sync()])
        }
        #expect(early?.code == .backendFailure)
        #expect(early?.message.contains("iommufd (RESUME_VSMMU)") == true)

        // RESUME again, now with the VMM's iommufd: re-adopted by id at once, the device's cdev pending
        // (IOMMUFDBackend.restoreViommu): invalidations need only the iommufd.
        let fd = try rig.iommufd()
        defer { close(fd) }
        _ = try vmm.resumeVSMMU(vsmmu, token: token, iommufd: fd)
        #expect(try backendViommuIDs(vmm) == ids, "re-adopted by id")
        #expect(try rig.invalidationReachesTheKernel(vmm, vsmmu), "invalidations flow before the cdev is back")
        // Moving the device needs its cdev (VFIO_DEVICE_ATTACH_IOMMUFD_PT): refused, saying what is missing.
        let relink = refusal("a new vSTE for the device whose cdev is pending") {
            _ = try vmm.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: .stage1(contextTable: 0x9000_0000),
                                contextDescriptors: [.valid(asid: 4)])
        }
        #expect(relink?.message.contains("has not been handed back since the restart") == true)
        // Another device's cdev handed back as this one's fails the check attach: refused, still pending.
        let wrong = refusal("device 1's cdev handed back as device 0's") {
            let other = try rig.cdev(1)
            defer { close(other) }
            try vmm.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: rig.devices[0].devID, streamID: 0x8, vfioDevice: other)
        }
        #expect(wrong?.code == .badFileDescriptor)
        #expect(bare.names == [ServedVSMMU.iommufdName(vsmmu, ViommuIndex(0)), ServedVSMMU.eventQueueName(vsmmu, ViommuIndex(0))],
                "a refused cdev is not stored")

        let cdev = try rig.cdev(0)
        defer { close(cdev) }
        try vmm.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: rig.devices[0].devID, streamID: 0x8, vfioDevice: cdev)
        // With the cdev back the device moves again, and the guest's ASID 3 still reaches the kernel.
        _ = try vmm.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: .stage1(contextTable: 0x9000_0000),
                            contextDescriptors: [.valid(asid: 3)])
        #expect(try rig.invalidationReachesTheKernel(vmm, vsmmu))
        // The vEVENTQ was released with the first process's last descriptor: destroyed by id and allocated
        // again (its events are lost), and the new one's descriptor goes to the store too.
        let again = rig.kernel.liveObjects(.veventq)
        #expect(again.count == 1 && rig.kernel.pendingEvents(veventq: again[0]) == 0, "a new, empty queue")
        // What the VMM handed back went to the store under the same names.
        #expect(bare.names == [ServedVSMMU.iommufdName(vsmmu, ViommuIndex(0)), ServedVSMMU.cdevName(vsmmu, 0x8),
                               ServedVSMMU.eventQueueName(vsmmu, ViommuIndex(0))])
    }

    @Test func aReconnectingClientHandsBackItsIommufdAndCdevOnItsOwnSoTheDeviceMovesAgain() throws {
        let rig = try Rig()
        let store = RecordingStore()
        let first = try rig.server(store: store)
        let path = first.configuration.socketPath
        let vmm = try VSMMUClient(socketPath: path, reconnect: .init(deadline: .seconds(30)))
        try vmm.hello(name: "readopt-test")
        let vsmmu = try rig.register(on: vmm)
        let fd = try rig.iommufd()
        defer { close(fd) }
        let cdev = try rig.cdev(0)
        defer { close(cdev) }
        vmm.setResumeIOMMUFD(fd, for: vsmmu)
        vmm.setResumeVFIODevice(cdev, vsmmu: vsmmu, viommu: 0, hostDeviceID: rig.devices[0].devID, streamID: 0x8)
        rig.die(first)
        store.discard()

        // Started by hand, with no fd store: everything comes from the VMM.
        let second = try rig.server(store: RecordingStore(), socketPath: path)
        defer { second.stop() }
        // The next request finds the connection gone: reconnect, HELLO, RESUME_VSMMU with the iommufd, then
        // SET_DEV_ID with the cdev; the new vSTE needs the cdev to move the device.
        _ = try vmm.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: .stage1(contextTable: 0x9000_0000),
                            contextDescriptors: [.valid(asid: 3)])
        #expect(vmm.reconnectCount == 1)
        #expect(try rig.invalidationReachesTheKernel(vmm, vsmmu))
    }

    @Test func theCClientHandsBackItsIommufdAndCdevOnItsOwnAfterAReconnectSoTheDeviceMovesAgain() throws {
        let rig = try Rig()
        let store = RecordingStore()
        let first = try rig.server(store: store)
        let path = first.configuration.socketPath
        let owner = try rig.client(first)
        let vsmmu = try rig.register(on: owner)
        let token = try #require(owner.resumeTokens[vsmmu])
        // The C client takes the vSMMU over after the restart: its token, iommufd and cdev set beforehand.
        var c = vsmmu_client()
        try #require(vsmmu_client_connect(&c, path) == 0)
        defer { vsmmu_client_close(&c) }
        try #require(vsmmu_client_set_reconnect(&c, 10, 500, 30_000) == 0)
        try #require(vsmmu_client_hello(&c, "c-readopt", nil) == 0)
        try #require(token.bytes.withUnsafeBufferPointer { vsmmu_client_adopt_resume_token(&c, vsmmu.rawValue, $0.baseAddress) } == 0)
        let fd = try rig.iommufd()
        defer { close(fd) }
        let cdev = try rig.cdev(0)
        defer { close(cdev) }
        try #require(vsmmu_client_set_resume_iommufd(&c, vsmmu.rawValue, fd) == 0)
        try #require(vsmmu_client_set_resume_vfio_device(&c, vsmmu.rawValue, 0, rig.devices[0].devID, 0x8, cdev) == 0)
        rig.die(first)
        store.discard()
        withExtendedLifetime(owner) {}

        let second = try rig.server(store: RecordingStore(), socketPath: path)
        defer { second.stop() }
        // UNLINK_STE moves the device to the abort HWPT: it needs the cdev, which only the automatic
        // SET_DEV_ID after the automatic RESUME_VSMMU brings.
        let rc = vsmmu_client_unlink_ste(&c, vsmmu.rawValue, 0x8)
        let message = withUnsafeBytes(of: c.last_message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        #expect(rc == 0, "UNLINK_STE: \(rc) \(message)")
        #expect(c.reconnects == 1)
    }

    @Test func aWrongIommufdAtResumeIsRefusedAndTheVSMMUStaysAsItWas() throws {
        let rig = try Rig()
        let store = RecordingStore()
        let first = try rig.server(store: store)
        let owner = try rig.client(first)
        let vsmmu = try rig.register(on: owner)
        let token = try #require(owner.resumeTokens[vsmmu])
        rig.die(first)
        store.discard()
        withExtendedLifetime(owner) {}

        let second = try rig.server(store: RecordingStore())
        defer { second.stop() }
        let vmm = try rig.client(second)
        let wrong = try rig.iommufd(of: rig.otherKernel)
        defer { close(wrong) }
        let refused = refusal("RESUME_VSMMU with another VMM's iommufd") { _ = try vmm.resumeVSMMU(vsmmu, token: token, iommufd: wrong) }
        #expect(refused?.code == .backendFailure && refused?.detail == UInt32(ENOENT))
        #expect(refused?.message.contains("iommufd_get_object") == true)
        // State kept: still awaiting its owner, and the right iommufd then works.
        guard case .vsmmus(let listed) = try vmm.list(.vsmmus).entries else { Issue.record("LIST"); return }
        #expect(listed.map(\.awaitingOwner) == [true])
        let right = try rig.iommufd()
        defer { close(right) }
        _ = try vmm.resumeVSMMU(vsmmu, token: token, iommufd: right)
        let cdev = try rig.cdev(0)
        defer { close(cdev) }
        try vmm.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: rig.devices[0].devID, streamID: 0x8, vfioDevice: cdev)
        #expect(try rig.invalidationReachesTheKernel(vmm, vsmmu))
    }

    @Test func everyStoredNameIsRemovedWhenItsObjectGoes() throws {
        let rig = try Rig()
        let store = RecordingStore()
        let server = try rig.server(store: store)
        defer { server.stop() }
        let client = try rig.client(server)
        let vsmmu = try rig.register(on: client)
        let iommufdName = ServedVSMMU.iommufdName(vsmmu, ViommuIndex(0)), cdevName = ServedVSMMU.cdevName(vsmmu, 0x8)
        let eventQueueName = ServedVSMMU.eventQueueName(vsmmu, ViommuIndex(0))
        #expect(store.names == [iommufdName, cdevName, eventQueueName])
        // UNSET_DEV_ID: the cdev's name goes.
        try client.unsetDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: rig.devices[0].devID, streamID: 0x8)
        #expect(store.names == [iommufdName, eventQueueName] && store.removed == [cdevName])
        // DETACH_VIOMMU: the vEVENTQ's first (the kernel destroys no vEVENTQ whose file is still open:
        // EBUSY), then the iommufd's.
        try client.detachViommu(vsmmu: vsmmu, viommu: 0)
        #expect(store.names.isEmpty && store.removed == [cdevName, eventQueueName, iommufdName])
        // DESTROY_VSMMU: everything of the vSMMU.
        let again = try rig.register(on: client)
        try client.destroyVSMMU(again)
        #expect(store.names.isEmpty)
        // A connection that ends (EOF): everything of its vSMMUs.
        do {
            let vmm = try rig.client(server)
            _ = try rig.register(on: vmm)
            #expect(store.names.count == 3)
            vmm.shutdownWrite()
            _ = try? vmm.receive()
        }
        eventually { store.names.isEmpty }
        #expect(store.names.isEmpty)
    }

    @Test func inheritedFdsNoRecordClaimsAreClosedAndRemovedFromTheStore() throws {
        let rig = try Rig()
        let store = RecordingStore()
        let first = try rig.server(store: store)
        let owner = try rig.client(first)
        _ = try rig.register(on: owner)
        rig.die(first)
        withExtendedLifetime(owner) {}
        // A stray name nobody journaled, next to the vSMMU's.
        let stray = try rig.iommufd()
        try store.store(stray, name: "iommufd-dead-0")
        close(stray)
        var inherited = store.inherited()
        // The cdev did not come back: the vSMMU waits, holding the iommufd it inherited.
        for name in inherited.byName.keys where name.hasPrefix("cdev-") { inherited.byName[name]?.forEach { close($0) }; inherited.byName[name] = nil }
        let second = try rig.server(store: store, inherited: inherited)
        defer { second.stop() }
        #expect(store.removed == ["iommufd-dead-0"])
        #expect(second.vsmmuCount == 1)
    }
}
