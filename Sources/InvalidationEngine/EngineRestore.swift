#if canImport(Glibc)
import Glibc
#endif
import CommandRing
import PSMMU
import SMMUv3
import VirtualSMMU

/// Descriptors of one engine's objects, keyed the way the engine names them: what it holds
/// (``VSMMUEngine/heldDescriptors``, for systemd's fd store), or what survived a restart
/// (``VSMMUEngine/restore(_:configuration:backends:descriptors:)``).
public struct EngineDescriptors: Hashable, Sendable {
    /// Each viommu's iommufd.
    public var iommufds: [ViommuIndex: Int32]
    /// Each viommu's vEVENTQ.
    public var eventQueues: [ViommuIndex: Int32]
    /// Each device's VFIO cdev, by virtual StreamID.
    public var vfioDevices: [StreamID: Int32]

    public init(iommufds: [ViommuIndex: Int32] = [:], eventQueues: [ViommuIndex: Int32] = [:],
                vfioDevices: [StreamID: Int32] = [:]) {
        self.iommufds = iommufds
        self.eventQueues = eventQueues
        self.vfioDevices = vfioDevices
    }

    public var isEmpty: Bool { iommufds.isEmpty && eventQueues.isEmpty && vfioDevices.isEmpty }
}

/// Why an engine could not be restored from a snapshot.
public struct EngineRestoreError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The viommu that could not be restored, if it was one.
    public var viommu: ViommuIndex?
    public var reason: Reason

    public enum Reason: Hashable, Sendable {
        /// The snapshot is not one an engine could have taken.
        case snapshot(EngineSnapshotError)
        /// No backend for the viommu's pSMMU (it is no longer configured).
        case noBackend(pSMMU: String)
        /// The vSMMU refused a step of the rebuild (a vSTE the nesting rules refuse, …).
        case vsmmu(VSMMUError)
        /// The backend could not take the viommu back (its objects are gone, a descriptor is unusable, …).
        case backend(BackendError)
        /// The viommu's queue could not be created.
        case queue(ViommuQueueError)
    }

    public init(viommu: ViommuIndex? = nil, _ reason: Reason) {
        self.viommu = viommu
        self.reason = reason
    }

    public var description: String {
        let prefix = viommu.map { "cannot restore \($0): " } ?? "cannot restore the vSMMU: "
        switch reason {
        case .snapshot(let e): return prefix + e.description
        case .noBackend(let name): return prefix + "pSMMU \(name) is not configured any more"
        case .vsmmu(let e): return prefix + e.description
        case .backend(let e): return prefix + "backend: \(e)"
        case .queue(let e): return prefix + "queue: \(e)"
        }
    }
}

extension VSMMUEngine {
    // MARK: Snapshot

    /// The engine's registrations as a value a later process can restore from (``EngineSnapshot``).
    ///
    /// Consistent with the control operations: it is taken under the state lock, which every control
    /// operation holds for its whole change. Take it after each control operation that succeeded (and
    /// after ``restore(_:configuration:backends:descriptors:)``, whose backends may have allocated a
    /// vEVENTQ again) and journal it before answering.
    /// - Throws: ``EngineError/backend(_:)`` when a backend cannot describe its objects.
    public func snapshot() throws(EngineError) -> EngineSnapshot {
        try state.withLock { (state: inout State) throws(EngineError) -> EngineSnapshot in
            var snapshot = EngineSnapshot()
            for index in state.viommus.keys.sorted() {
                guard let attached = state.viommus[index], let viommu = try? state.vsmmu.viommu(index) else { continue }
                let objects: ViommuObjects
                do throws(BackendError) { objects = try attached.backend.objects(of: attached.handle) } catch { throw .backend(error) }
                snapshot.viommus.append(EngineSnapshot.Viommu(
                    index: index, pSMMU: viommu.pSMMU, request: attached.request, handle: attached.handle, objects: objects))
            }
            for streamID in state.vsmmu.devices.keys.sorted() {
                guard let device = state.vsmmu.devices[streamID], let attached = state.viommus[device.viommu],
                      let vdevice = attached.vdevices[streamID] else { continue }
                let link = device.ste.map { ste in
                    EngineSnapshot.Link(ste: ste, contextDescriptors: device.contextDescriptors,
                                        hwpt: device.hwpt.flatMap { attached.hwpts[$0] })
                }
                snapshot.devices.append(EngineSnapshot.Device(
                    streamID: streamID, viommu: device.viommu, hostDeviceID: device.hostDeviceID, vdevice: vdevice,
                    domain: attached.domains[streamID] ?? .nestParent, link: link))
            }
            let index = state.vsmmu.asidIndex
            snapshot.retiring = index.retiringASIDs.map { EngineSnapshot.RetiringASID(asid: $0, viommus: index.retiringViommus(of: $0)) }
            return snapshot
        }
    }

    /// The descriptors the engine's backends hold, for systemd's fd store (``PSMMUBackend/heldDescriptors(of:)``).
    /// They stay the backends': a holder duplicates them.
    public var heldDescriptors: EngineDescriptors {
        state.withLock { state in
            var held = EngineDescriptors()
            for (index, attached) in state.viommus {
                let descriptors = attached.backend.heldDescriptors(of: attached.handle)
                held.iommufds[index] = descriptors.iommufd
                held.eventQueues[index] = descriptors.eventQueue
                for (streamID, vdevice) in attached.vdevices {
                    if let fd = descriptors.vfioDevices[vdevice] { held.vfioDevices[streamID] = fd }
                }
            }
            return held
        }
    }

    // MARK: Restore

    /// Rebuilds an engine from `snapshot` in a new daemon process: the pure vSMMU (the same viommu
    /// indices, StreamIDs, vSTEs, CDs, ASID index with its retiring ASIDs) and, through each viommu's
    /// backend, its objects (``PSMMUBackend/restoreViommu(_:)``): re-adopted by id on an iommufd
    /// backend, re-created on a simulated one (a reset SMMU: empty caches).
    ///
    /// - Parameters:
    ///   - backends: the backend of each viommu, by what the snapshot says of it (its pSMMU name; an
    ///     iommufd backend per viommu, on the iommufd from systemd's fd store, or one that awaits it);
    ///     `nil` when the pSMMU is not configured any more.
    ///   - descriptors: the vEVENTQ and VFIO cdev descriptors that survived. The engine takes
    ///     ownership of those: each goes to its viommu's backend, and those that match nothing in the
    ///     snapshot are closed. `iommufds` is not read: the iommufd goes into the backend `backends` makes.
    /// - Throws: ``EngineRestoreError``. Nothing is left behind: viommus restored before the failing
    ///   one are torn down again (their objects destroyed: a vSMMU that cannot come back is reclaimed),
    ///   and the failing one's backend recorded nothing. Every descriptor was consumed.
    public static func restore(_ snapshot: EngineSnapshot, configuration: Configuration = Configuration(),
                               backends: (EngineSnapshot.Viommu) -> (any PSMMUBackend)?,
                               descriptors: EngineDescriptors = EngineDescriptors()) throws(EngineRestoreError) -> VSMMUEngine {
        var eventQueues = descriptors.eventQueues
        var vfioDevices = descriptors.vfioDevices
        defer {
            // Whatever no backend took.
            for fd in eventQueues.values { _ = Glibc.close(fd) }
            for fd in vfioDevices.values { _ = Glibc.close(fd) }
        }
        do throws(EngineSnapshotError) { try snapshot.validate() } catch { throw EngineRestoreError(.snapshot(error)) }
        let vsmmu = try rebuiltVSMMU(snapshot)

        let engine = VSMMUEngine(configuration: configuration)
        engine.state.withLock { $0.vsmmu = vsmmu }
        for viommu in snapshot.viommus {
            let devices = snapshot.devices.filter { $0.viommu == viommu.index }
            var restoration = ViommuRestoration(
                request: viommu.request, handle: viommu.handle, objects: viommu.objects,
                eventQueue: eventQueues.removeValue(forKey: viommu.index))
            for device in devices {
                restoration.devices.append(ViommuRestoration.Device(
                    virtualStreamID: device.streamID,
                    host: HostDevice(id: device.hostDeviceID, vfioDevice: vfioDevices.removeValue(forKey: device.streamID)),
                    vdevice: device.vdevice,
                    nestedHWPT: device.link.flatMap { link in
                        link.hwpt.map { ViommuRestoration.NestedHWPT(handle: $0, ste: link.ste, contextDescriptors: link.contextDescriptors) }
                    },
                    domain: device.domain))
            }
            guard let backend = backends(viommu) else {
                restoration.closeDescriptors()
                engine.tearDown()
                throw EngineRestoreError(viommu: viommu.index, .noBackend(pSMMU: viommu.pSMMU))
            }
            do throws(EngineRestoreError) {
                try engine.install(viommu, restoration, on: backend)
            } catch {
                engine.tearDown()
                throw error
            }
        }
        return engine
    }

    /// An engine that holds `snapshot`'s pure vSMMU (viommu indices, StreamIDs, vSTEs, CDs, retiring
    /// ASIDs) and no backend: what a daemon shows for a vSMMU whose backend objects cannot be taken back
    /// yet (an iommufd vSMMU whose iommufd and VFIO cdevs did not survive the restart; the VMM brings
    /// them). LIST and STATS read it; it serves no control operation and no command (the daemon refuses
    /// those first), and ``stop()`` is all it needs. ``restore(_:configuration:backends:descriptors:)``
    /// builds the serving engine once the descriptors are back.
    /// - Throws: ``EngineRestoreError`` for a snapshot no engine could have taken.
    public static func awaitingBackends(_ snapshot: EngineSnapshot,
                                        configuration: Configuration = Configuration()) throws(EngineRestoreError) -> VSMMUEngine {
        do throws(EngineSnapshotError) { try snapshot.validate() } catch { throw EngineRestoreError(.snapshot(error)) }
        let vsmmu = try rebuiltVSMMU(snapshot)
        let engine = VSMMUEngine(configuration: configuration)
        engine.state.withLock { $0.vsmmu = vsmmu }
        return engine
    }

    /// Hands a restored device its VFIO cdev again (a SET_DEV_ID with `FD_ATTACHED` that repeats the
    /// registration exactly after RESUME_VSMMU, when the cdev did not survive the restart): the
    /// backend takes it (``PSMMUBackend/resupply(_:device:)``) and nothing else changes.
    ///
    /// Takes ownership of `device.vfioDevice` (closed when refused).
    /// - Returns: whether the backend kept the descriptor (the device was re-adopted without its cdev);
    ///   `false`: it had one, and the new descriptor was closed.
    /// - Throws: ``EngineError/vsmmu(_:)`` when `streamID` is not registered for `device.id` behind
    ///   `viommu` (`.unknownStreamID`, or `.streamIDInUse` naming the registration that exists), or
    ///   the backend's refusal.
    @discardableResult
    public func resupplyDevice(viommu: ViommuIndex, device: HostDevice, streamID: StreamID) throws(EngineError) -> Bool {
        try serialised { (state: inout State) throws(EngineError) -> Bool in
            let attached = state.viommus[viommu]
            func refuse(_ error: VSMMUError) -> EngineError {
                if let attached { attached.backend.discard(device) } else if let fd = device.vfioDevice { _ = Glibc.close(fd) }
                return .vsmmu(error)
            }
            guard let registered = state.vsmmu.devices[streamID] else { throw refuse(.unknownStreamID(streamID)) }
            guard registered.viommu == viommu, registered.hostDeviceID == device.id,
                  let attached, let vdevice = attached.vdevices[streamID] else {
                throw refuse(.streamIDInUse(streamID: streamID, viommu: registered.viommu, hostDeviceID: registered.hostDeviceID))
            }
            do throws(BackendError) { return try attached.backend.resupply(vdevice, device: device) } catch { throw .backend(error) }
        }
    }

    /// The pure vSMMU of `snapshot`, rebuilt through its public API: the viommus at their indices,
    /// the retiring ASIDs, the devices and their links.
    static func rebuiltVSMMU(_ snapshot: EngineSnapshot) throws(EngineRestoreError) -> VSMMU {
        var vsmmu = VSMMU()
        let byIndex = Dictionary(uniqueKeysWithValues: snapshot.viommus.map { ($0.index, $0) })
        let highest = snapshot.viommus.map(\.index.index).max() ?? -1
        // attachViommu takes the lowest free index: fill the gaps with placeholders, then detach them.
        var placeholders: [ViommuIndex] = []
        if highest >= 0 {
            for slot in 0 ... highest {
                let name = byIndex[ViommuIndex(slot)]?.pSMMU ?? "\u{0}restore-gap-\(slot)"
                let index: ViommuIndex
                do throws(VSMMUError) { index = try vsmmu.attachViommu(pSMMU: name) } catch {
                    throw EngineRestoreError(viommu: ViommuIndex(slot), .vsmmu(error))
                }
                if byIndex[index] == nil { placeholders.append(index) }
            }
        }
        // A retiring ASID x on viommu v is what a HWPT carrying x on v leaves when it goes: replay
        // exactly that on a scratch device (a StreamID and host device no snapshot device uses).
        if !snapshot.retiring.isEmpty {
            let usedSIDs = Set(snapshot.devices.map(\.streamID)), usedHosts = Set(snapshot.devices.map(\.hostDeviceID))
            let scratchSID = (0 ... StreamID.max).reversed().lazy.first { !usedSIDs.contains($0) } ?? 0
            let scratchHost = (0 ... HostDeviceID.max).reversed().lazy.first { !usedHosts.contains($0) } ?? 0
            for entry in snapshot.retiring {
                for viommu in entry.viommus {
                    do throws(VSMMUError) {
                        try vsmmu.setDeviceID(viommu: viommu, hostDeviceID: scratchHost, streamID: scratchSID)
                        try vsmmu.link(streamID: scratchSID, ste: .stage1(contextTable: 0),
                                       contextDescriptors: [.valid(asid: entry.asid)])
                        try vsmmu.unsetDeviceID(streamID: scratchSID)
                    } catch {
                        throw EngineRestoreError(viommu: viommu, .vsmmu(error))
                    }
                }
            }
        }
        for device in snapshot.devices {
            do throws(VSMMUError) {
                try vsmmu.setDeviceID(viommu: device.viommu, hostDeviceID: device.hostDeviceID, streamID: device.streamID)
                if let link = device.link {
                    try vsmmu.link(streamID: device.streamID, ste: link.ste, contextDescriptors: link.contextDescriptors)
                }
            } catch {
                throw EngineRestoreError(viommu: device.viommu, .vsmmu(error))
            }
            // A translating vSTE has a HWPT in the backend, and only it.
            let translating = vsmmu.devices[device.streamID]?.hwpt != nil
            if translating != (device.link?.hwpt != nil) {
                throw EngineRestoreError(viommu: device.viommu, .snapshot(.inconsistent(
                    "StreamID 0x\(String(device.streamID, radix: 16)): the vSTE \(translating ? "translates but has no" : "does not translate but has a") nested HWPT")))
            }
        }
        for index in placeholders {
            do throws(VSMMUError) { try vsmmu.detachViommu(index) } catch { throw EngineRestoreError(viommu: index, .vsmmu(error)) }
        }
        return vsmmu
    }

    /// Hands one viommu back to its backend and attaches it to the engine with a new queue.
    private func install(_ viommu: EngineSnapshot.Viommu, _ restoration: ViommuRestoration,
                         on backend: any PSMMUBackend) throws(EngineRestoreError) {
        let restored: RestoredViommu
        do throws(BackendError) { restored = try backend.restoreViommu(restoration) } catch {
            throw EngineRestoreError(viommu: viommu.index, .backend(error))
        }
        let handle = restored.handle
        let queue: ViommuQueue
        do throws(ViommuQueueError) {
            // The same queue an attach makes (with a stall limit, one that drains only on its drain thread).
            queue = try configuration.makeQueue(pSMMU: viommu.pSMMU) { commands in
                backend.invalidate(viommu: handle, commands: commands)
            }
        } catch {
            Self.release(restored, on: backend)
            throw EngineRestoreError(viommu: viommu.index, .queue(error))
        }
        state.withLock { state in
            var attached = AttachedViommu(backend: backend, handle: handle, queue: queue)
            attached.request = viommu.request
            for device in restoration.devices {
                let sid = device.virtualStreamID
                guard let vdevice = restored.vdevices[sid] else { continue }
                attached.vdevices[sid] = vdevice
                if let s1 = state.vsmmu.devices[sid]?.hwpt, let hwpt = restored.nestedHWPTs[sid] { attached.hwpts[s1] = hwpt }
                let domain = restored.translated(device.domain, of: sid)
                if domain != .nestParent { attached.domains[sid] = domain }
            }
            state.viommus[viommu.index] = attached
        }
    }

    /// Undoes a restored viommu that could not be attached to the engine.
    private static func release(_ restored: RestoredViommu, on backend: any PSMMUBackend) {
        for (sid, vdevice) in restored.vdevices {
            try? backend.attachDevice(vdevice, to: .nestParent)
            if let hwpt = restored.nestedHWPTs[sid] { try? backend.destroyHWPT(hwpt) }
            try? backend.destroyVDevice(vdevice)
        }
        try? backend.detachViommu(restored.handle)
    }

    /// Unregisters every device and detaches every viommu, ignoring refusals: what a restore that
    /// failed part-way leaves.
    func tearDown() {
        for streamID in vsmmu.devices.keys.sorted() { try? unsetDeviceID(streamID: streamID) }
        for index in vsmmu.attachedViommus { try? detachViommu(index) }
        stop()
    }
}
