import SMMUv3
import Testing
import VSMMUProtocol
import VSMMUTestSupport
@testable import SharedQueue

/// The daemon's consumer algorithm (PROTOCOL.md §8.3-§8.5) over an in-memory region, with a recording
/// execute function in the daemon's place.
@Suite("Shared queue consumer")
struct ConsumerTests {
    /// A zeroed, initialised queue of 2^`log2Entries` slots in memory the test owns, with a guard area
    /// after it; the VMM's side is played with the region's accessors.
    final class Queue {
        let geometry: SharedQueueGeometry
        let base: UnsafeMutableRawPointer
        let region: SharedQueueRegion
        var producer: UInt32 = 0
        /// Guard bytes after the region: a read outside it would be a bug, a write would show here.
        static let guardBytes = 4096

        init(log2Entries: Int = 8) throws {
            geometry = try #require(SharedQueueGeometry(log2Entries: log2Entries))
            base = RegionTests.memory(geometry.requiredSize + Self.guardBytes)
            region = try #require(SharedQueueRegion(base: base, length: geometry.requiredSize, geometry: geometry))
            region.initialise()
        }
        deinit { base.deallocate() }

        func publish(_ commands: [Command]) {
            for command in commands {
                region.storeCommand(command, at: producer)
                producer = geometry.advance(producer, by: 1)
            }
            region.storeProducer(producer)
        }

        var guardIsUntouched: Bool {
            (0..<Self.guardBytes).allSatisfy { base.load(fromByteOffset: geometry.requiredSize + $0, as: UInt8.self) == 0 }
        }
    }

    /// An execute function that records every batch and succeeds, or fails the command at `failAt` (an
    /// index into everything executed so far) with CERROR_ILL.
    final class Recorder {
        var batches: [[Command]] = []
        var failAt: Int?
        var executed: [Command] { batches.flatMap { $0 } }

        func execute(_ batch: UnsafeBufferPointer<Command>) -> SharedQueueBatchOutcome {
            let commands = Array(batch)
            let before = executed.count
            batches.append(commands)
            let syncs = commands.filter { $0.opcode == .sync }.count
            if let failAt, failAt >= before, failAt < before + commands.count {
                let index = failAt - before
                self.failAt = nil
                return SharedQueueBatchOutcome(consumed: index, syncs: commands[..<index].filter { $0.opcode == .sync }.count,
                                               failureIndex: index, cerror: 1)
            }
            return SharedQueueBatchOutcome(consumed: commands.count, syncs: syncs)
        }
    }

    static func tlbi(_ n: Int) -> Command { .tlbiNHVA(asid: 1, address: UInt64(n) << 12) }

    /// Steps until the queue is empty or stopped; the steps taken.
    @discardableResult
    static func drain(_ consumer: SharedQueueConsumer, _ recorder: Recorder) -> [SharedQueueStep] {
        var steps: [SharedQueueStep] = []
        while true {
            let step = consumer.step(recorder.execute)
            steps.append(step)
            if step.kind == .empty || step.kind == .stopped || step.kind == .producerError || step.kind == .commandError { return steps }
        }
    }

    @Test func commandsAreExecutedInQueueOrderAcrossManyWrapsAndEachBatchEndsAtItsCMDSYNC() throws {
        let q = try Queue(log2Entries: 8)
        let consumer = SharedQueueConsumer(region: q.region)
        let recorder = Recorder()
        var expected: [Command] = []
        var n = 0
        // 80 rounds of 3-50 commands and a sync: more than 5 wraps of 256 slots.
        var random = SplitMix64(seed: 13)
        for _ in 0..<80 {
            let count = 3 + random.next(48)
            var batch: [Command] = []
            for _ in 0..<count {
                batch.append(Self.tlbi(n))
                n += 1
            }
            batch.append(.sync())
            expected += batch
            q.publish(batch)
            let steps = Self.drain(consumer, recorder)
            #expect(steps.first?.kind == .consumed && steps.first?.commands == count + 1 && steps.first?.syncs == 1)
            #expect(q.region.loadConsumer() == q.producer && consumer.consumer == q.producer)
        }
        #expect(recorder.executed == expected)
        #expect(recorder.batches.allSatisfy { $0.last?.opcode == .sync && $0.dropLast().allSatisfy { $0.opcode != .sync } })
        #expect(expected.count > 5 * 256)
        #expect(q.producer == UInt32(expected.count) & q.geometry.positionMask) // the wrap bit flipped with each wrap
    }

    @Test func aBatchIsCutAfterTheFirstCMDSYNCAndCONSIsStoredAfterEachBatch() throws {
        let q = try Queue()
        let consumer = SharedQueueConsumer(region: q.region)
        let recorder = Recorder()
        q.publish([Self.tlbi(0), .sync(), Self.tlbi(1), Self.tlbi(2), .sync(), Self.tlbi(3)])
        let first = consumer.step(recorder.execute)
        #expect(first.kind == .consumed && first.commands == 2 && first.syncs == 1 && q.region.loadConsumer() == 2)
        let second = consumer.step(recorder.execute)
        #expect(second.commands == 3 && q.region.loadConsumer() == 5)
        // No sync after the last command: a batch up to PROD, CONS past it once queued (§8.3).
        let third = consumer.step(recorder.execute)
        #expect(third.commands == 1 && third.syncs == 0 && q.region.loadConsumer() == 6)
        #expect(consumer.step(recorder.execute).kind == .empty)
        #expect(recorder.batches.map(\.count) == [2, 3, 1])
    }

    @Test func aPRODWithABitAboveTheWrapBitStopsTheQueueWithAPRODErrorAndReadsNothing() throws {
        let q = try Queue()
        let consumer = SharedQueueConsumer(region: q.region)
        let recorder = Recorder()
        q.publish([Self.tlbi(0), .sync()])
        q.region.storeProducer(0x200 | 2) // bit 9 is above the wrap bit (bit 8)
        let step = consumer.step(recorder.execute)
        #expect(step.kind == .producerError && recorder.batches.isEmpty)
        #expect(q.region.loadErrorSequence() == 1)
        let record = q.region.loadErrorRecord()
        #expect(record.kind == SharedQueueLayout.ErrorKind.producer.rawValue && record.consumer == 0 && record.cerror == 1)
        #expect(q.region.loadConsumer() == 0)
        // Stopped until the VMM acknowledges; then, PROD fixed, it goes on.
        q.region.storeProducer(2)
        #expect(consumer.step(recorder.execute).kind == .stopped && recorder.batches.isEmpty)
        q.region.storeErrorAcknowledgement(1)
        #expect(consumer.step(recorder.execute).kind == .consumed && q.region.loadConsumer() == 2)
    }

    @Test func aPRODMoreThanTwoToTheNAheadOfCONSIsAPRODError() throws {
        let q = try Queue()
        let consumer = SharedQueueConsumer(region: q.region)
        let recorder = Recorder()
        q.region.storeProducer(0x100) // exactly 2^n ahead: a full queue, legal
        let full = consumer.step(recorder.execute)
        #expect(full.kind == .consumed && full.commands == 256)
        q.region.storeProducer(0x001) // a valid position, but 257 ahead of CONS 0x100 ((0x001 - 0x100) mod 0x200 = 0x101)
        #expect(consumer.step(recorder.execute).kind == .producerError)
        #expect(q.region.loadConsumer() == 0x100 && q.region.loadErrorRecord().consumer == 0x100)
    }

    @Test func aRefusedCommandStopsTheQueueWithCONSOnItUntilTheVMMAcknowledgesAndTheRewrittenSlotIsReadAgain() throws {
        let q = try Queue()
        let consumer = SharedQueueConsumer(region: q.region)
        let recorder = Recorder()
        let bad = Command(w0: 0x07, w1: 0) // undefined opcode
        q.publish([Self.tlbi(0), Self.tlbi(1), bad, .sync()])
        recorder.failAt = 2
        let step = consumer.step(recorder.execute)
        #expect(step.kind == .commandError && step.commands == 2)
        #expect(q.region.loadConsumer() == 2 && q.region.loadErrorSequence() == 1)
        #expect(q.region.loadErrorRecord() == (1, SharedQueueLayout.ErrorKind.command.rawValue, 2))
        // Stopped: nothing is read, however often it looks.
        for _ in 0..<3 { #expect(consumer.step(recorder.execute).kind == .stopped) }
        #expect(!consumer.hasWork && recorder.batches.count == 1)
        // The guest replaces the illegal command with a CMD_SYNC (Linux's __arm_smmu_cmdq_skip_err), then GERRORN.
        q.region.storeCommand(.sync(), at: 2)
        q.region.storeErrorAcknowledgement(1)
        #expect(consumer.hasWork)
        let resumed = consumer.step(recorder.execute)
        #expect(resumed.kind == .consumed && resumed.commands == 1 && recorder.batches.last == [.sync()])
        let rest = consumer.step(recorder.execute)
        #expect(rest.commands == 1 && q.region.loadConsumer() == 4)
    }

    @Test func storesAskForACallOnlyWhenTheVMMSleeps() throws {
        let q = try Queue()
        let consumer = SharedQueueConsumer(region: q.region)
        let recorder = Recorder()
        q.publish([.sync()])
        #expect(consumer.step(recorder.execute).signalCall == false)
        q.region.storeVMMSleeping(1)
        q.publish([.sync()])
        #expect(consumer.step(recorder.execute).signalCall == true)
        #expect(consumer.stop() == true && q.region.loadState() == SharedQueueLayout.State.stopped.rawValue)
    }

    @Test func goingToSleepRechecksPRODAfterTheFlagAndClearsItWhenSomethingMoved() throws {
        let q = try Queue()
        let consumer = SharedQueueConsumer(region: q.region)
        #expect(consumer.prepareToSleep() && q.region.loadDaemonSleeping() == 1)
        consumer.wokeUp()
        #expect(q.region.loadDaemonSleeping() == 0)
        q.publish([.sync()])
        #expect(!consumer.prepareToSleep() && q.region.loadDaemonSleeping() == 0)
    }

    @Test func noPRODValueMakesTheConsumerReadOutsideTheRegion() throws {
        // Every PROD a hostile VMM may write (a fixed-seed sample of all 2^32, and every value near the
        // wrap), with random slots and acknowledgements: the consumer never traps, executes only commands
        // it copied from slots inside the region, and never writes outside it.
        let q = try Queue(log2Entries: 8)
        let consumer = SharedQueueConsumer(region: q.region)
        var random = SplitMix64(seed: 0x5EED)
        var executed = 0
        let interesting: [UInt32] = [0, 1, 0xFF, 0x100, 0x101, 0x1FF, 0x200, 0x201, 0x3FF, 0x8000_0000, 0xFFFF_FFFF]
        for round in 0..<20_000 {
            let prod = round < interesting.count ? interesting[round] : UInt32(truncatingIfNeeded: random.next())
            for _ in 0..<4 {
                q.region.storeCommand(Command(w0: random.next(), w1: random.next()), at: UInt32(random.next(256)))
            }
            q.region.storeProducer(random.next(2) == 0 ? prod : prod & 0x1FF)
            let step = consumer.step { batch in
                executed += batch.count
                #expect(batch.count <= 256)
                return SharedQueueBatchOutcome(consumed: batch.count, syncs: 0)
            }
            #expect(q.geometry.isValid(consumer.consumer))
            if step.kind == .producerError || step.kind == .stopped { q.region.storeErrorAcknowledgement(consumer.errorSequence) }
        }
        #expect(executed > 0)
        #expect(q.guardIsUntouched)
    }
}
