import CSocketShims
import PSMMU
import SharedQueue
import SMMUv3
import Synchronization
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol
import VSMMUSystem
import VSMMUTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's side of the shared command queue (PROTOCOL.md §5.15, §5.16, §8), the test playing the VMM.
@Suite struct SharedQueueTests {
    @Test func aMappedQueueConsumesTLBINHVAAndCMDSYNCAndCONSPassesTheSync() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        let vmm = try TestQueueVMM()
        #expect(try client.mapQueueOrFail(vsmmu: vsmmu, vmm) == 0)
        #expect(vmm.state == SharedQueueLayout.State.running.rawValue)
        vmm.publish([.tlbiNHVA(asid: 1, address: 0x1000), .sync()])
        #expect(vmm.waitForConsumer(2))
        // ASID 1 is the device behind viommu 1 (smmu1): only that pSMMU got the TLBI.
        #expect(t.pSMMUs.map { $0.counters.commandsReceived } == [0, 1, 0])
        let stats = try client.stats(vsmmu: vsmmu)
        #expect(stats.value(.syncs) == 1)
        #expect(stats.value(.invalidateRequests) == 0)
    }
}

/// MAP_QUEUE's refusals (PROTOCOL.md §5.15), each with its exact error; a refusal closes the three fds.
@Suite struct SharedQueueRefusalTests {
    /// A server, a client and one vSMMU with a device behind viommu 0.
    static func setUp(_ label: String = #function) throws -> (TestServer, VSMMUClient, VSMMUID) {
        let t = try TestServer(label)
        let client = try t.client()
        let vsmmu = try client.createVSMMU()
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 0)
        return (t, client, vsmmu)
    }

    static func isMemory(_ e: ProtocolError?) -> Bool {
        e?.code == .badFileDescriptor && e?.detail == FileDescriptorProblem.queueMemory.rawValue
    }

    @Test func aMemoryFdThatIsNotAMemfdIsRefusedWithDetail4AndEINVALAndEveryFdIsClosed() throws {
        let (t, client, vsmmu) = try Self.setUp()
        defer { t.stop() }
        let vmm = try TestQueueVMM()
        let (readEnd, writeEnd) = try FileDescriptorPassingTests.pipePair()
        defer { close(readEnd) }
        let e = try client.mapQueueRefusal(vsmmu: vsmmu, vmm, fds: [writeEnd, vmm.kick, vmm.call])
        close(writeEnd)
        #expect(Self.isMemory(e) && e?.value == UInt64(EINVAL))
        var byte: UInt8 = 0
        #expect(read(readEnd, &byte, 1) == 0) // the daemon closed its copy of the pipe
        #expect(vmm.state == SharedQueueLayout.State.unmapped.rawValue)
    }

    @Test func aMemfdWithoutFSealShrinkIsRefusedWithDetail4() throws {
        let (t, client, vsmmu) = try Self.setUp()
        defer { t.stop() }
        let vmm = try TestQueueVMM(seals: VSMMU_F_SEAL_GROW)
        let e = try client.mapQueueRefusal(vsmmu: vsmmu, vmm)
        #expect(Self.isMemory(e) && e?.value == 0 && e?.message.contains("F_SEAL_SHRINK") == true)
        #expect(mappingCount(of: vmm.name) == 1) // only the test's own mapping
    }

    @Test func aMemfdTooSmallForItsSlotsIsRefusedWithDetail4() throws {
        let (t, client, vsmmu) = try Self.setUp()
        defer { t.stop() }
        let vmm = try TestQueueVMM(log2Entries: 8, size: SharedQueueLayout.requiredSize(log2Entries: 8) - 16)
        let e = try client.mapQueueRefusal(vsmmu: vsmmu, vmm)
        #expect(Self.isMemory(e) && e?.message.contains("needs") == true)
    }

    @Test func aBadMagicAVersionOrALog2ThatDisagreesWithTheRequestIsRefusedWithDetail4() throws {
        let (t, client, vsmmu) = try Self.setUp()
        defer { t.stop() }
        let vmm = try TestQueueVMM(log2Entries: 8, size: SharedQueueLayout.requiredSize(log2Entries: 9))
        vmm.base.storeBytes(of: UInt32(0x1234_5678), toByteOffset: SharedQueueLayout.magicOffset, as: UInt32.self)
        let magic = try client.mapQueueRefusal(vsmmu: vsmmu, vmm)
        #expect(Self.isMemory(magic) && magic?.message.contains("magic") == true)
        vmm.region.initialise()
        // The configuration line says 2^8; the request 2^9 (the memfd is large enough for either).
        let log2 = try client.mapQueueRefusal(vsmmu: vsmmu, vmm, log2Entries: 9)
        #expect(Self.isMemory(log2) && log2?.message.contains("log2_entries") == true)
        // Outside 8...16: BAD_FIELD at offset 4, before any fd is looked at.
        let range = try client.mapQueueRefusal(vsmmu: vsmmu, vmm, log2Entries: 7)
        #expect(range?.code == .badField && range?.detail == 4)
        #expect(try client.mapQueueOrFail(vsmmu: vsmmu, vmm) == 0) // nothing changed: the same queue maps
    }

    @Test func aPRODOrCONSNotInSMMUv3FormOrTooFarApartIsRefusedWithDetail4() throws {
        let (t, client, vsmmu) = try Self.setUp()
        defer { t.stop() }
        let vmm = try TestQueueVMM()
        vmm.region.storeProducer(0x200) // bit 9: above the wrap bit of 2^8 slots
        #expect(Self.isMemory(try client.mapQueueRefusal(vsmmu: vsmmu, vmm)))
        vmm.region.storeProducer(0x001)
        vmm.region.storeConsumer(0x100) // 257 ahead
        #expect(Self.isMemory(try client.mapQueueRefusal(vsmmu: vsmmu, vmm)))
        vmm.region.storeProducer(0x105)
        #expect(try client.mapQueueOrFail(vsmmu: vsmmu, vmm) == 0x100) // the daemon starts from CONS
    }

    @Test func aKickOrCallThatIsNotAnEventfdIsRefusedWithDetail5AndEveryFdIsClosed() throws {
        let (t, client, vsmmu) = try Self.setUp()
        defer { t.stop() }
        let vmm = try TestQueueVMM()
        let (readEnd, writeEnd) = try FileDescriptorPassingTests.pipePair()
        defer { close(readEnd) }
        let kick = try client.mapQueueRefusal(vsmmu: vsmmu, vmm, fds: [vmm.memory, writeEnd, vmm.call])
        #expect(kick?.code == .badFileDescriptor && kick?.detail == FileDescriptorProblem.queueEventFD.rawValue)
        let call = try client.mapQueueRefusal(vsmmu: vsmmu, vmm, fds: [vmm.memory, vmm.kick, writeEnd])
        #expect(call?.code == .badFileDescriptor && call?.detail == FileDescriptorProblem.queueEventFD.rawValue)
        close(writeEnd)
        var byte: UInt8 = 0
        #expect(read(readEnd, &byte, 1) == 0)
        #expect(mappingCount(of: vmm.name) == 1)
    }

    @Test func fewerThanThreeFdsClaimNoneAndAreRefusedWithDetail1() throws {
        let (t, client, vsmmu) = try Self.setUp()
        defer { t.stop() }
        let vmm = try TestQueueVMM()
        let e = try client.mapQueueRefusal(vsmmu: vsmmu, vmm, fds: [vmm.memory, vmm.kick])
        #expect(e?.code == .badFileDescriptor && e?.detail == FileDescriptorProblem.missing.rawValue)
        // The two unclaimed fds are still pending: the next MAP_QUEUE's three would be those two and one more,
        // so a fresh connection maps the queue.
        let other = try t.client()
        let vsmmu2 = try other.createVSMMU()
        #expect(try other.mapQueueOrFail(vsmmu: vsmmu2, vmm) == 0)
    }

    @Test func aSecondQueueOverOtherMemoryIsAlreadyExistsDetail6AndTheSameMemfdReplacesTheEventfds() throws {
        let (t, client, vsmmu) = try Self.setUp()
        defer { t.stop() }
        let vmm = try TestQueueVMM()
        #expect(try client.mapQueueOrFail(vsmmu: vsmmu, vmm) == 0)
        let other = try TestQueueVMM()
        let e = try client.mapQueueRefusal(vsmmu: vsmmu, other)
        #expect(e?.code == .alreadyExists && e?.detail == ConflictKind.queue.rawValue)
        #expect(mappingCount(of: other.name) == 1)
        // The same memfd with new eventfds: accepted, and the daemon goes on from its CONS with them.
        vmm.publish([.sync()])
        #expect(vmm.waitForConsumer(1))
        let kick = try SystemCall.eventFD(), call = try SystemCall.eventFD()
        defer { close(kick); close(call) }
        guard case .mapQueue(let mapped) = try client.mapQueue(vsmmu: vsmmu, vmm, fds: [vmm.memory, kick, call]) else {
            Issue.record("the same memfd was refused")
            return
        }
        #expect(mapped.consumer == 1)
        #expect(mappingCount(of: vmm.name) == 2) // still one daemon mapping
        #expect(vmm.state == SharedQueueLayout.State.running.rawValue)
        vmm.publish([.sync()])
        #expect(vmm.waitForConsumer(2))
    }

    @Test func aVersion3ConnectionCannotMapAQueue() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client(hello: false)
        try client.hello(versions: 1...3)
        let vsmmu = try client.createVSMMU()
        let vmm = try TestQueueVMM()
        let e = try client.mapQueueRefusal(vsmmu: vsmmu, vmm)
        #expect(e?.code == .unknownMessageType)
        #expect(mappingCount(of: vmm.name) == 1)
    }
}

/// The queue at work: errors, full queues, sleeping and waking, hostile memory, teardown, many queues.
@Suite struct SharedQueueServiceTests {
    static func tlbi(_ asid: ASID, _ n: Int) -> Command { .tlbiNHVA(asid: asid, address: UInt64(n & 0xFFFFF) << 12) }

    @Test func aRefusedCommandStopsTheQueueWithCONSOnItUntilTheVMMAcknowledgesAndTheRewrittenSlotIsConsumed() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        let vmm = try TestQueueVMM()
        try client.mapQueueOrFail(vsmmu: vsmmu, vmm)
        vmm.publish([Self.tlbi(1, 0), Command(w0: 0x07, w1: 0), Self.tlbi(1, 1), .sync()])
        #expect(vmm.waitForError(after: 0))
        #expect(vmm.consumer == 1 && vmm.region.loadErrorSequence() == 1)
        #expect(vmm.region.loadErrorRecord() == (CommandQueueError.illegal.rawValue, SharedQueueLayout.ErrorKind.command.rawValue, 1))
        // Stopped: the daemon consumes nothing until the acknowledgement, even when kicked.
        vmm.kickIfSleeping()
        eventually { (try? client.stats(vsmmu: vsmmu).value(.queueErrors)) == 1 }
        #expect(try client.stats(vsmmu: vsmmu).value(.queueErrors) == 1)
        #expect(vmm.consumer == 1)
        // The guest rewrites the slot with a CMD_SYNC (Linux: __arm_smmu_cmdq_skip_err), then writes GERRORN.
        vmm.region.storeCommand(.sync(), at: 1)
        vmm.acknowledgeError()
        #expect(vmm.waitForConsumer(4))
        #expect(vmm.region.loadErrorSequence() == 1)
        #expect(t.pSMMUs[1].counters.commandsReceived == 2)
        // The queue serves on.
        vmm.publish([Self.tlbi(1, 2), .sync()])
        #expect(vmm.waitForConsumer(6))
    }

    @Test func aFullQueueIsConsumedAndAVMMThatWaitsForRoomGoesOnAcrossWraps() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        let vmm = try TestQueueVMM(log2Entries: 8)
        try client.mapQueueOrFail(vsmmu: vsmmu, vmm)
        var total = 0
        for round in 0..<6 {
            // 2^8 commands outstanding: PROD and CONS have equal indices and different wrap bits.
            let commands = (0..<255).map { Self.tlbi(1, round * 255 + $0) } + [.sync()]
            vmm.publish(commands)
            total += commands.count
            #expect(vmm.geometry.distance(from: vmm.consumer, to: vmm.producer) <= 256)
            #expect(vmm.waitForConsumer(vmm.producer)) // room again
        }
        #expect(t.pSMMUs[1].counters.commandsReceived == UInt64(6 * 255))
        let stats = try client.stats(vsmmu: vsmmu)
        #expect(stats.value(.queueCommands) == UInt64(total) && stats.value(.queueSyncs) == 6)
    }

    @Test func bothPathsMixedKeepEachViommusCommandsAndEveryCMDSYNCAcrossWraps() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        let vmm = try TestQueueVMM(log2Entries: 8)
        try client.mapQueueOrFail(vsmmu: vsmmu, vmm)
        var random = SplitMix64(seed: 0x0DE4)
        var expected: [UInt64] = [0, 0, 0]
        var syncs: UInt64 = 0
        let asids: [ASID] = [3, 1, 2] // viommu 0, 1, 2
        for round in 0..<60 {
            let viommu = random.next(3)
            let batch = (0..<(1 + random.next(40))).map { Self.tlbi(asids[viommu], round * 64 + $0) } + [.sync()]
            expected[viommu] += UInt64(batch.count - 1)
            syncs += 1
            if random.next(2) == 0 {
                vmm.publish(batch)
                #expect(vmm.waitForConsumer(vmm.producer))
            } else {
                // The other path waits for the queue's last CMD_SYNC first (§8.3), as here.
                #expect(try client.invalidate(vsmmu: vsmmu, commands: batch) == InvalidateReply(consumed: UInt32(batch.count), syncsCompleted: 1))
            }
        }
        #expect(vmm.producer >= 0x100 || vmm.geometry.distance(from: 0, to: vmm.producer) > 0)
        #expect(t.pSMMUs.map { $0.counters.commandsReceived } == expected)
        #expect(try client.stats(vsmmu: vsmmu).value(.syncs) == syncs)
    }

    /// Many syncs with random pauses on the VMM's side, the daemon polling or not: every wait ends with
    /// the sync completed, within a deadline that a lost wake-up (a sleep nobody ends) would exceed.
    @Test(arguments: [0, 30])
    func eachSideSleepsAndIsWokenWithNoLostWakeUp(pollMicroseconds: Int) throws {
        let (server, path) = try openSocketServer("sqwake\(pollMicroseconds)") { $0.requestPolling = .microseconds(pollMicroseconds) }
        defer { server.stop() }
        let client = try VSMMUClient(socketPath: path)
        try client.hello()
        let vsmmu = try ServerScenarioTests.seedVSMMU(client, sids: [0x8, 0x10], asids: [3, 1])
        let vmm = try TestQueueVMM(log2Entries: 8)
        try client.mapQueueOrFail(vsmmu: vsmmu, vmm)
        var random = SplitMix64(seed: UInt64(0x5EE9 + pollMicroseconds))
        var lost = 0
        for i in 0..<1500 {
            vmm.publish((0..<random.next(4)).map { Self.tlbi(1, i * 4 + $0) } + [.sync()])
            if random.next(4) == 0 { usleep(UInt32(random.next(200))) } // the VMM is slow: the daemon sleeps
            if !vmm.waitForConsumer(vmm.producer, seconds: 10) { lost += 1; break }
            if random.next(8) == 0 { usleep(UInt32(random.next(300))) }
        }
        #expect(lost == 0)
        let stats = try client.stats(vsmmu: vsmmu)
        #expect(stats.value(.queueSyncs) == 1500)
        if pollMicroseconds == 0 { #expect((stats.value(.queueKicks) ?? 0) > 0) }
    }

    @Test func hostileMemoryWrittenAtRandomWhileTheDaemonConsumesHoldsUpOnlyThatQueue() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(client)
        let vmm = try TestQueueVMM(log2Entries: 8)
        try client.mapQueueOrFail(vsmmu: vsmmu, vmm)
        let region = vmm.region
        let done = Locked<Bool>(false)
        // Another thread writes every field and slot at random (each write one atomic store, as the region
        // does), kicking now and then, while this one keeps publishing.
        let fuzzer = try OSThread {
            var random = SplitMix64(seed: 0xF022)
            var n = 0
            while !done.withLock({ $0 }) || n < 100_000 {
                let value = UInt32(truncatingIfNeeded: random.next())
                switch random.next(12) {
                case 0: region.storeProducer(value)
                case 1: region.storeProducer(value & 0x1FF)
                case 2: region.storeConsumer(value)
                case 3: region.storeError(sequence: value, cerror: UInt8(truncatingIfNeeded: value), kind: .command, consumer: value)
                case 4: region.storeErrorAcknowledgement(random.next(2) == 0 ? value : region.loadErrorSequence())
                case 5: region.storeDaemonSleeping(value)
                case 6: region.storeVMMSleeping(value)
                case 7: region.storeState(.unmapped)
                case 8: _ = try? SystemCall.writeEvent(vmm.kick)
                default: region.storeCommand(Command(w0: random.next(), w1: random.next()), at: value)
                }
                n += 1
            }
        }
        var random = SplitMix64(seed: 0xF023)
        for i in 0..<2000 {
            vmm.publish([Self.tlbi(1, i), .sync()])
            if random.next(16) == 0 { usleep(50) }
        }
        done.withLock { $0 = true }
        fuzzer.join()
        // The daemon answers, its registrations are intact, and the socket path still executes commands.
        #expect(try client.health().status == .ok)
        #expect(try client.list(.devices, vsmmu: vsmmu).total == 3)
        #expect(try client.invalidate(vsmmu: vsmmu, commands: [Self.tlbi(1, 0), .sync()]) == InvalidateReply(consumed: 2, syncsCompleted: 1))
        // The queue is unmapped without hanging, and a fresh queue on the same vSMMU works.
        guard case .unmapQueue = try client.unmapQueue(vsmmu: vsmmu) else { Issue.record("UNMAP_QUEUE refused"); return }
        #expect(mappingCount(of: vmm.name) == 1)
        let fresh = try TestQueueVMM()
        try client.mapQueueOrFail(vsmmu: vsmmu, fresh)
        fresh.publish([Self.tlbi(1, 1), .sync()])
        #expect(fresh.waitForConsumer(2))
    }

    /// A VMM thread asleep on call while its queue goes away (UNMAP_QUEUE, DESTROY_VSMMU, the connection's
    /// end) wakes with `state` = STOPPED; the daemon's mapping is gone.
    @Test(arguments: ["unmap", "destroy", "close"])
    func aWaiterBlockedOnCallWakesWithStateStoppedWhenTheQueueGoesAway(how: String) throws {
        let t = try TestServer("sqteardown\(how)")
        defer { t.stop() }
        var client: VSMMUClient? = try t.client()
        let vsmmu = try ServerScenarioTests.seedVSMMU(try #require(client))
        let vmm = try TestQueueVMM()
        try #require(client).mapQueueOrFail(vsmmu: vsmmu, vmm)
        #expect(mappingCount(of: vmm.name) == 2)
        let woke = Locked<Bool>(false)
        let asleep = Locked<Bool>(false)
        let waiter = try OSThread {
            asleep.withLock { $0 = true }
            let stopped = vmm.wait(seconds: 30, spins: 0) { vmm.state == SharedQueueLayout.State.stopped.rawValue }
            woke.withLock { $0 = stopped }
        }
        eventually { asleep.withLock { $0 } && vmm.region.loadVMMSleeping() == 1 }
        switch how {
        case "unmap": _ = try #require(client).unmapQueue(vsmmu: vsmmu)
        case "destroy": try #require(client).destroyVSMMU(vsmmu)
        default: client = nil // the connection closes: its vSMMUs and queues go
        }
        waiter.join()
        #expect(woke.withLock { $0 })
        eventually { mappingCount(of: vmm.name) == 1 }
        #expect(mappingCount(of: vmm.name) == 1)
    }

    @Test func sixteenQueuesAtOnceEachConsumeTheirOwnCommands() throws {
        let t = try TestServer(pSMMUCount: 3)
        defer { t.stop() }
        let client = try t.client()
        var queues: [(VSMMUID, TestQueueVMM)] = []
        for i in 0..<16 {
            let vsmmu = try client.createVSMMU(name: "vm\(i)")
            let host = UInt32(16 * (i % 3) + i / 3)
            _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu\(i % 3)", hostDeviceID: host)
            try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: host, streamID: 0x8)
            _ = try client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: s1STE(), contextDescriptors: [.valid(asid: 5)])
            let vmm = try TestQueueVMM()
            try client.mapQueueOrFail(vsmmu: vsmmu, vmm)
            queues.append((vsmmu, vmm))
        }
        let failures = Locked<Int>(0)
        let threads = try queues.enumerated().map { i, queue in
            try OSThread {
                for n in 0..<200 {
                    queue.1.publish([Self.tlbi(5, n), Self.tlbi(5, n + 1), .sync()])
                    if !queue.1.waitForConsumer(queue.1.producer) { failures.withLock { $0 += 1 } }
                }
                _ = i
            }
        }
        for thread in threads { thread.join() }
        #expect(failures.withLock { $0 } == 0)
        for (vsmmu, _) in queues {
            let stats = try client.stats(vsmmu: vsmmu)
            #expect(stats.value(.queueSyncs) == 200 && stats.value(.queueCommands) == 600)
        }
        #expect(t.pSMMUs.map { $0.counters.commandsReceived }.reduce(0, +) == 16 * 400)
    }
}
