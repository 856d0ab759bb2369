import Glibc
import IOMMUFD
import PSMMU
import SMMUv3
import Synchronization
import SystemPackage
import Testing

/// Allocation and teardown: errno mapping, hosts without iommufd, vSTE checks, handle ownership.
@Suite struct ControlPathTests {
    func makeBackend(eventQueueDepth: UInt32? = nil) -> (IOMMUFDBackend, FakeIOMMUFD) {
        let fake = FakeIOMMUFD()
        return (IOMMUFDBackend(name: "smmu2", device: fake, configuration: .init(eventQueueDepth: eventQueueDepth)), fake)
    }

    /// Runs `body` and returns the ``BackendError`` it throws (`nil`, and a recorded issue, for any other).
    func backendError(_ body: () throws -> Void) -> BackendError? {
        do {
            try body()
            return nil
        } catch let error as BackendError {
            return error
        } catch {
            Issue.record("not a BackendError: \(error)")
            return nil
        }
    }

    // MARK: errno → BackendError.Kind

    @Test func controlErrnoMapsToBackendErrorKinds() {
        #expect(BackendError.Kind(iommufdErrno: .fileExists) == .alreadyExists)
        #expect(BackendError.Kind(iommufdErrno: .invalidArgument) == .invalidArgument)
        #expect(BackendError.Kind(iommufdErrno: .resourceBusy) == .busy)
        #expect(BackendError.Kind(iommufdErrno: .noSuchFileOrDirectory) == .unknownHandle)
        #expect(BackendError.Kind(iommufdErrno: .operationNotSupportedByDevice) == .unavailable)
        #expect(BackendError.Kind(iommufdErrno: .inappropriateIOCTLForDevice) == .unavailable)
        #expect(BackendError.Kind(iommufdErrno: Errno(rawValue: EOPNOTSUPP)) == .unavailable)
        #expect(BackendError.Kind(iommufdErrno: .argListTooLong) == .unavailable)
        #expect(BackendError.Kind(iommufdErrno: .noMemory) == .failed)
        #expect(BackendError.Kind(iommufdErrno: .badAddress) == .failed)
        #expect(BackendError.Kind(iommufdErrno: .ioError) == .failed)
    }

    @Test func aSecondVDeviceForADeviceIsAlreadyExistsWithTheErrnoKept() throws {
        let (backend, fake) = makeBackend()
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))
        fake.script(.vdeviceAlloc, .fail(.fileExists))
        let error = backendError {
            _ = try backend.allocateVDevice(viommu: viommu, device: HostDevice(id: 1, vfioDevice: 50), virtualStreamID: 8)
        }

        #expect(error?.kind == .alreadyExists)
        #expect(error?.errno == EEXIST)
        #expect(error?.message.contains("IOMMU_VDEVICE_ALLOC") == true)
        #expect(backend.counters.vdevicesAllocated == 0)
        #expect(fake.closedDescriptors == [50])
    }

    @Test func aKernelWithoutNestingSupportIsUnavailable() {
        let (backend, fake) = makeBackend()
        fake.script(.viommuAlloc, .fail(Errno(rawValue: EOPNOTSUPP)))
        let error = backendError { _ = try backend.attachViommu(ViommuAttachRequest()) }
        #expect(error?.kind == .unavailable)
        #expect(error?.errno == EOPNOTSUPP)
    }

    // MARK: Hosts without iommufd

    @Test func attachOnAHostWithoutDevIommuIsAClearUnavailableError() {
        // Building the backend does not touch the device node.
        let backend = IOMMUFDBackend(name: "smmu0", devicePath: "/nonexistent/dev/iommu")
        let error = backendError { _ = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2)) }

        #expect(error?.kind == .unavailable)
        #expect(error?.errno == ENOENT)
        #expect(error?.message.hasPrefix("no /nonexistent/dev/iommu: the host kernel lacks iommufd (CONFIG_IOMMUFD)") == true)
        #expect(error?.message.contains("use the simulated backend") == true)
        #expect(backend.counters.viommusAttached == 0)
    }

    @Test func aDescriptorThatIsNoIommufdAnswersENOTTYAndIsUnavailable() throws {
        // The real syscall path (ciommufd_ioctl) on /dev/null, which has no ioctls.
        let null = try FileDescriptor.open("/dev/null", .readWrite)
        let backend = IOMMUFDBackend(name: "smmu0", adopting: null)
        let error = backendError { _ = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2)) }

        #expect(error?.kind == .unavailable)
        #expect(error?.errno == ENOTTY)
    }

    @Test func aFailedOpenIsRetriedAtTheNextAttach() throws {
        let attempts = Mutex(0)
        let fake = FakeIOMMUFD()
        let backend = IOMMUFDBackend(name: "smmu0", configuration: .init(eventQueueDepth: nil)) { () throws(BackendError) -> any IOMMUFDDevice in
            let attempt = attempts.withLock { $0 += 1; return $0 }
            if attempt == 1 { throw BackendError(.unavailable, errno: ENOENT, "not yet") }
            return fake
        }
        #expect(backendError { _ = try backend.attachViommu(ViommuAttachRequest()) }?.kind == .unavailable)
        _ = try backend.attachViommu(ViommuAttachRequest())
        _ = try backend.attachViommu(ViommuAttachRequest())
        #expect(attempts.withLock { $0 } == 2)
        #expect(fake.calls(.viommuAlloc).count == 2)
    }

    // MARK: vSTE checks

    @Test func aNestedConfigSTEIsRejectedBeforeAnyIoctl() throws {
        let (backend, fake) = makeBackend()
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))
        let callsBefore = fake.calls.count
        var ste = StreamTableEntry()
        ste.isValid = true
        ste.config = .nested
        let error = backendError { _ = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: ste, contextDescriptors: []) }

        #expect(error?.kind == .invalidArgument)
        #expect(error?.errno == nil)
        #expect(fake.calls.count == callsBefore)
    }

    @Test func anSTEWithDisallowedBitsIsRejectedBeforeAnyIoctl() throws {
        let (backend, fake) = makeBackend()
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))
        var ste = StreamTableEntry()
        ste.isValid = true
        ste.config = .s1Translate
        ste[StreamTableEntry.Field.strw] = 1
        fake.forgetCalls()
        let error = backendError { _ = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: ste, contextDescriptors: []) }

        #expect(error?.kind == .invalidArgument)
        #expect(fake.calls(.hwptAlloc).isEmpty)
    }

    @Test func anInvalidSTEIsSentAsAllZeroAbort() throws {
        let (backend, fake) = makeBackend()
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))
        let ste = StreamTableEntry(w0: 0xFFFF_0000_0000_00F0, w1: 0xFFFF)  // V = 0
        fake.forgetCalls()
        _ = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: ste, contextDescriptors: [])
        #expect(fake.calls(.hwptAlloc).first?.payload == [UInt8](repeating: 0, count: 16))
    }

    @Test func aKernelEIOForAnSTEIsAnInvalidArgument() throws {
        let (backend, fake) = makeBackend()
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))
        fake.script(.hwptAlloc, .fail(.ioError))
        var ste = StreamTableEntry()
        ste.isValid = true
        ste.config = .bypass
        let error = backendError { _ = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: ste, contextDescriptors: []) }
        #expect(error?.kind == .invalidArgument)
        #expect(error?.errno == EIO)
    }

    // MARK: Handles

    @Test func handlesThisBackendDidNotAllocateAreRefusedWithoutAnIoctl() throws {
        let (backend, fake) = makeBackend()
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))
        let callsBefore = fake.calls.count

        #expect(backendError { try backend.destroyVDevice(VDeviceHandle(rawValue: viommu.rawValue)) }?.kind == .unknownHandle)
        #expect(backendError { try backend.destroyHWPT(HWPTHandle(rawValue: 12345)) }?.kind == .unknownHandle)
        #expect(backendError { try backend.detachViommu(ViommuHandle(rawValue: 4242)) }?.kind == .unknownHandle)
        #expect(backendError { _ = try backend.allocateVDevice(viommu: ViommuHandle(rawValue: 4242), device: HostDevice(id: 1, vfioDevice: 50), virtualStreamID: 1) }?.kind == .unknownHandle)
        #expect(backendError { try backend.attachDevice(VDeviceHandle(rawValue: 4242), to: .abort) }?.kind == .unknownHandle)
        #expect(fake.calls.count == callsBefore)
    }

    @Test func aViommuWithVDevicesOrHWPTsIsBusyUntilTheyAreDestroyed() throws {
        let (backend, fake) = makeBackend()
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))
        let vdevice = try backend.allocateVDevice(viommu: viommu, device: HostDevice(id: 1, vfioDevice: 50), virtualStreamID: 5)
        let hwpt = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: StreamTableEntry(), contextDescriptors: [])

        #expect(backendError { try backend.detachViommu(viommu) }?.kind == .busy)
        #expect(fake.calls(.destroy).isEmpty)

        try backend.destroyHWPT(hwpt)
        try backend.destroyVDevice(vdevice)
        try backend.detachViommu(viommu)
        // The viommu's own bypass (allocated second after it) and abort (first) HWPTs go just before it.
        #expect(fake.journal.suffix(6) == ["IOMMU_DESTROY \(hwpt.rawValue)", "IOMMU_DESTROY \(vdevice.rawValue)", "close(50)",
                                           "IOMMU_DESTROY \(viommu.rawValue + 2)", "IOMMU_DESTROY \(viommu.rawValue + 1)",
                                           "IOMMU_DESTROY \(viommu.rawValue)"])
        #expect(backendError { try backend.detachViommu(viommu) }?.kind == .unknownHandle)
    }

    @Test func aDestroyTheKernelRefusesKeepsTheHandle() throws {
        let (backend, fake) = makeBackend()
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))
        let hwpt = try backend.allocateNestedHWPT(viommu: viommu, hostDeviceID: 1, ste: StreamTableEntry(), contextDescriptors: [])
        fake.script(.destroy, .fail(.resourceBusy))  // a device is still attached to the HWPT

        let error = backendError { try backend.destroyHWPT(hwpt) }
        #expect(error?.kind == .busy)
        #expect(error?.errno == EBUSY)
        try backend.destroyHWPT(hwpt)
        #expect(fake.calls(.destroy).count == 2)
    }

    // MARK: vEVENTQ lifetime

    @Test func detachClosesAndDestroysTheEventQueueBeforeTheViommu() throws {
        let (backend, fake) = makeBackend(eventQueueDepth: 32)
        fake.script(.viommuAlloc, .succeed(objectID: 10))
        fake.script(.veventqAlloc, .succeed(objectID: 11))
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))
        try backend.detachViommu(viommu)

        #expect(fake.journal == ["IOMMU_GET_HW_INFO", "IOMMU_VIOMMU_ALLOC", "IOMMU_HWPT_ALLOC", "IOMMU_HWPT_ALLOC",
                                 "IOMMU_VEVENTQ_ALLOC", "close(1000)", "IOMMU_DESTROY 11",
                                 "IOMMU_DESTROY 101", "IOMMU_DESTROY 100", "IOMMU_DESTROY 10"])
    }

    @Test func aKernelWithoutVEventQueuesStillAttachesWithoutEvents() throws {
        let (backend, fake) = makeBackend(eventQueueDepth: 32)
        fake.script(.veventqAlloc, .fail(.inappropriateIOCTLForDevice))
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))

        #expect(!backend.hasEventQueue(viommu))
        #expect(backend.takeEvents(viommu: viommu).isEmpty)
        try backend.detachViommu(viommu)
        #expect(fake.journal.last == "IOMMU_DESTROY \(viommu.rawValue)")
        #expect(fake.closedDescriptors.isEmpty)
    }

    @Test func aFailedEventQueueAllocationUndoesTheViommu() {
        let (backend, fake) = makeBackend(eventQueueDepth: 32)
        fake.script(.viommuAlloc, .succeed(objectID: 20))
        fake.script(.veventqAlloc, .fail(.invalidArgument))
        let error = backendError { _ = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2)) }

        #expect(error?.kind == .invalidArgument)
        #expect(error?.message.contains("IOMMU_VEVENTQ_ALLOC") == true)
        // The abort (100) and bypass (101) HWPTs are undone in reverse, then the viommu.
        #expect(fake.journal == ["IOMMU_GET_HW_INFO", "IOMMU_VIOMMU_ALLOC", "IOMMU_HWPT_ALLOC", "IOMMU_HWPT_ALLOC",
                                 "IOMMU_VEVENTQ_ALLOC", "IOMMU_DESTROY 101", "IOMMU_DESTROY 100", "IOMMU_DESTROY 20"])
        #expect(backend.counters.viommusAttached == 0)
    }
}
