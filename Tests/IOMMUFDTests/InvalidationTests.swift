import IOMMUFD
import PSMMU
import SMMUv3
import SystemPackage
import Testing

/// `IOMMU_HWPT_INVALIDATE`: whole batches per call, splitting, and failures read the way
/// `arm_vsmmu_cache_invalidate` reports them.
@Suite struct InvalidationTests {
    /// `count` distinct, accepted commands, so a payload tells which ones travelled.
    static func batch(_ count: Int) -> [Command] {
        (0..<count).map { .tlbiNHVA(asid: ASID(truncatingIfNeeded: $0 + 1), address: UInt64($0) << 12) }
    }

    func attached(maximumEntriesPerCall: Int = 1008) throws -> (IOMMUFDBackend, FakeIOMMUFD, ViommuHandle) {
        let fake = FakeIOMMUFD()
        let backend = IOMMUFDBackend(name: "smmu1", device: fake, configuration: .init(
            maximumEntriesPerCall: maximumEntriesPerCall, eventQueueDepth: nil))
        let viommu = try backend.attachViommu(ViommuAttachRequest(hostDeviceID: 1, nestParentHWPT: 2))
        return (backend, fake, viommu)
    }

    func run(_ backend: IOMMUFDBackend, _ viommu: ViommuHandle, _ commands: [Command]) -> InvalidationResult {
        commands.withUnsafeBufferPointer { backend.invalidate(viommu: viommu, commands: $0) }
    }

    /// Entry counts of the invalidate calls, in order.
    func entryCounts(_ fake: FakeIOMMUFD) -> [UInt32] { fake.calls(.hwptInvalidate).map { $0.u32(at: 24) } }

    // MARK: Batching

    @Test func aBatchOf500CommandsIsOneCallWithTheirBytesVerbatim() throws {
        let (backend, fake, viommu) = try attached()
        let commands = Self.batch(500)
        let result = run(backend, viommu, commands)

        #expect(result.isComplete(of: 500))
        #expect(entryCounts(fake) == [500])
        #expect(fake.calls(.hwptInvalidate)[0].payload == commands.flatMap(\.bytes))
        #expect(backend.invalidateIoctlCount == 1)
        let counters = backend.counters
        #expect(counters.invalidateCalls == 1)
        #expect(counters.commandsReceived == 500)
        #expect(counters.commandsCompleted == 500)
        #expect(counters.commandsFailed == 0)
        #expect(counters.commandsByOpcode == [Opcode.tlbiNHVA.rawValue: 500])
    }

    @Test func aBatchLargerThanTheMaximumIsSplitInOrder() throws {
        let (backend, fake, viommu) = try attached(maximumEntriesPerCall: 4)
        let commands = Self.batch(10)
        let result = run(backend, viommu, commands)

        #expect(result.isComplete(of: 10))
        #expect(entryCounts(fake) == [4, 4, 2])
        #expect(fake.calls(.hwptInvalidate).flatMap(\.payload) == commands.flatMap(\.bytes))
        #expect(backend.counters.invalidateCalls == 1)
        #expect(backend.invalidateIoctlCount == 3)
    }

    @Test func aBatchOfExactlyTheMaximumIsOneCall() throws {
        let (backend, fake, viommu) = try attached(maximumEntriesPerCall: 8)
        #expect(run(backend, viommu, Self.batch(8)).isComplete(of: 8))
        #expect(entryCounts(fake) == [8])
    }

    @Test func anEmptyBatchMakesNoCall() throws {
        let (backend, fake, viommu) = try attached()
        #expect(run(backend, viommu, []) == InvalidationResult(completed: 0))
        #expect(fake.calls(.hwptInvalidate).isEmpty)
    }

    @Test func aViommuThatIsNotAttachedFailsWithAbortWithoutACall() throws {
        let (backend, fake, _) = try attached()
        let result = run(backend, ViommuHandle(rawValue: 999), Self.batch(2))
        #expect(result.completed == 0)
        #expect(result.failure?.queueError == .abort)
        #expect(fake.calls(.hwptInvalidate).isEmpty)
    }

    // MARK: Partial failure through the backend

    @Test func refusedCommandInTheFirstChunkResendsTheAcceptedCommandsBeforeIt() throws {
        let (backend, fake, viommu) = try attached()
        var commands = Self.batch(10)
        commands[5] = .sync()
        // EIO at entry 5: entries 0..<5 were converted but, being in the unfinished chunk, never issued.
        fake.script(.hwptInvalidate, .fail(.ioError, entryNum: 5))
        let result = run(backend, viommu, commands)

        #expect(result.completed == 5)
        #expect(result.failure?.queueError == .illegal)
        #expect(result.failure?.errno == Errno.ioError.rawValue)
        #expect(result.failure?.message.contains("CMD_SYNC") == true)
        #expect(entryCounts(fake) == [10, 5])
        #expect(fake.calls(.hwptInvalidate)[1].payload == commands[0..<5].flatMap(\.bytes))
        let counters = backend.counters
        #expect(counters.commandsCompleted == 5)
        #expect(counters.commandsFailed == 1)
    }

    @Test func refusedCommandOnAChunkBoundaryNeedsNoResend() throws {
        let (backend, fake, viommu) = try attached()
        fake.script(.hwptInvalidate, .fail(.ioError, entryNum: 63))
        let result = run(backend, viommu, Self.batch(100))

        #expect(result.completed == 63)
        #expect(result.failure?.queueError == .illegal)
        #expect(entryCounts(fake) == [100])
    }

    @Test func refusedCommandInTheSecondChunkResendsOnlyFromTheChunkBoundary() throws {
        let (backend, fake, viommu) = try attached()
        let commands = Self.batch(100)
        fake.script(.hwptInvalidate, .fail(.ioError, entryNum: 70))
        let result = run(backend, viommu, commands)

        #expect(result.completed == 70)
        #expect(result.failure?.queueError == .illegal)
        #expect(entryCounts(fake) == [100, 7])
        #expect(fake.calls(.hwptInvalidate)[1].payload == commands[63..<70].flatMap(\.bytes))
    }

    @Test func unknownVSIDIsReportedAsIllegalWithTheVSID() throws {
        let (backend, fake, viommu) = try attached()
        let commands: [Command] = [.atcInv(streamID: 0x99)]
        fake.script(.hwptInvalidate, .fail(.ioError, entryNum: 0))
        let result = run(backend, viommu, commands)

        #expect(result.completed == 0)
        #expect(result.failure?.queueError == .illegal)
        #expect(result.failure?.message.contains("vSID 0x99") == true)
        #expect(entryCounts(fake) == [1])
    }

    @Test func aResendThatFailsStopsAtItsOwnFailure() throws {
        let (backend, fake, viommu) = try attached()
        // First call refuses entry 6; the resend of 0..<6 then refuses its entry 2 (a vdevice destroyed
        // in between): 0..<2 must be sent once more, then the batch stops at 2.
        fake.script(.hwptInvalidate, .fail(.ioError, entryNum: 6), .fail(.ioError, entryNum: 2))
        let commands = Self.batch(10)
        let result = run(backend, viommu, commands)

        #expect(result.completed == 2)
        #expect(result.failure?.queueError == .illegal)
        #expect(entryCounts(fake) == [10, 6, 2])
        #expect(fake.calls(.hwptInvalidate)[2].payload == commands[0..<2].flatMap(\.bytes))
    }

    @Test func timeoutInTheFirstChunkCompletesNothing() throws {
        let (backend, fake, viommu) = try attached()
        // ETIMEDOUT: entry_num is the failed chunk's last entry.
        fake.script(.hwptInvalidate, .fail(.timedOut, entryNum: 62))
        let result = run(backend, viommu, Self.batch(100))

        #expect(result.completed == 0)
        #expect(result.failure?.queueError == .atcInvalidationSync)
        #expect(result.failure?.errno == Errno.timedOut.rawValue)
        #expect(entryCounts(fake) == [100])
    }

    @Test func timeoutInTheSecondChunkCompletesTheFirstChunk() throws {
        let (backend, fake, viommu) = try attached()
        fake.script(.hwptInvalidate, .fail(.timedOut, entryNum: 125))
        let result = run(backend, viommu, Self.batch(200))

        #expect(result.completed == 63)
        #expect(result.failure?.queueError == .atcInvalidationSync)
    }

    @Test func outOfMemoryTrustsNothingAlthoughEntryNumIsTheInputCount() throws {
        let (backend, fake, viommu) = try attached()
        // The driver's kcalloc failure leaves entry_num as the input count: nothing ran.
        fake.script(.hwptInvalidate, .fail(.noMemory, entryNum: 100))
        let result = run(backend, viommu, Self.batch(100))

        #expect(result.completed == 0)
        #expect(result.failure?.queueError == .abort)
        #expect(result.failure?.errno == Errno.noMemory.rawValue)
        #expect(entryCounts(fake) == [100])
    }

    @Test func faultReadingTheCommandsIsAnAbort() throws {
        let (backend, fake, viommu) = try attached()
        fake.script(.hwptInvalidate, .fail(.badAddress, entryNum: 0))
        let result = run(backend, viommu, Self.batch(3))
        #expect(result.completed == 0)
        #expect(result.failure?.queueError == .abort)
    }

    @Test func failureInALaterSplitCallKeepsTheEarlierCallsAndSendsNothingAfter() throws {
        let (backend, fake, viommu) = try attached(maximumEntriesPerCall: 4)
        let commands = Self.batch(12)
        fake.script(.hwptInvalidate, .succeed(), .fail(.ioError, entryNum: 2))
        let result = run(backend, viommu, commands)

        #expect(result.completed == 6)
        #expect(result.failure?.queueError == .illegal)
        #expect(entryCounts(fake) == [4, 4, 2])
        #expect(fake.calls(.hwptInvalidate)[2].payload == commands[4..<6].flatMap(\.bytes))
        #expect(backend.counters.commandsByOpcode == [Opcode.tlbiNHVA.rawValue: 6])
    }

    // MARK: Reading entry_num

    @Test func outcomeOfEachErrnoAndEntryNum() {
        typealias O = HWPTInvalidateOutcome
        #expect(O(entryCount: 10, errno: nil, reportedEntries: 10) == .completed)
        #expect(O(entryCount: 10, errno: .ioError, reportedEntries: 0) == .refused(index: 0, completedBefore: 0))
        #expect(O(entryCount: 10, errno: .ioError, reportedEntries: 9) == .refused(index: 9, completedBefore: 0))
        #expect(O(entryCount: 200, errno: .ioError, reportedEntries: 62) == .refused(index: 62, completedBefore: 0))
        #expect(O(entryCount: 200, errno: .ioError, reportedEntries: 63) == .refused(index: 63, completedBefore: 63))
        #expect(O(entryCount: 200, errno: .ioError, reportedEntries: 127) == .refused(index: 127, completedBefore: 126))
        #expect(O(entryCount: 200, errno: .timedOut, reportedEntries: 62) == .failed(completedBefore: 0, errno: .timedOut))
        #expect(O(entryCount: 200, errno: .timedOut, reportedEntries: 125) == .failed(completedBefore: 63, errno: .timedOut))
        // The last, short chunk: 126..<130, reported as its last entry.
        #expect(O(entryCount: 130, errno: .timedOut, reportedEntries: 129) == .failed(completedBefore: 126, errno: .timedOut))
        #expect(O(entryCount: 100, errno: .noMemory, reportedEntries: 100) == .failed(completedBefore: 0, errno: .noMemory))
        #expect(O(entryCount: 100, errno: .invalidArgument, reportedEntries: 0) == .failed(completedBefore: 0, errno: .invalidArgument))
        #expect(O(entryCount: 100, errno: .badAddress, reportedEntries: 0) == .failed(completedBefore: 0, errno: .badAddress))
        // An EIO entry_num past the array cannot come from the driver: nothing is trusted.
        #expect(O(entryCount: 5, errno: .ioError, reportedEntries: 5) == .failed(completedBefore: 0, errno: .ioError))
    }

    @Test func chunkSizeIsConfigurable() {
        #expect(HWPTInvalidateOutcome(entryCount: 100, errno: .ioError, reportedEntries: 40, chunkEntries: 31)
            == .refused(index: 40, completedBefore: 31))
    }

    // MARK: errno → CERROR

    @Test func invalidationErrnoMapsToTheErrorTheGuestSees() {
        #expect(CommandQueueError(iommufdInvalidationErrno: .ioError) == .illegal)
        #expect(CommandQueueError(iommufdInvalidationErrno: .timedOut) == .atcInvalidationSync)
        #expect(CommandQueueError(iommufdInvalidationErrno: .badAddress) == .abort)
        #expect(CommandQueueError(iommufdInvalidationErrno: .noMemory) == .abort)
        #expect(CommandQueueError(iommufdInvalidationErrno: .invalidArgument) == .abort)
        #expect(CommandQueueError(iommufdInvalidationErrno: .noSuchFileOrDirectory) == .abort)
        #expect(CommandQueueError(iommufdInvalidationErrno: .notSupported) == .abort)
    }
}
