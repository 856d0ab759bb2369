import Foundation
import PSMMU
import SMMUv3
import SharedQueue
import Testing
import VSMMUClient
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

// Concurrency notes: a test's client is used by one thread at a time. Where a waiter runs on its own thread
// (`Thread`), the test thread only reads the shared memory (`vmm_sleeping`), signals the daemon process, or
// joins the waiter through a condition with a deadline; it never uses the client meanwhile.

/// The Swift client's shared command queue (`VSMMUClient.mapQueue`, `SharedCommandQueue`, PROTOCOL.md §8)
/// against the daemon: submit and wait, errors and the rewritten slot, a full queue, a waiter woken by a
/// lost connection, and the re-map after a reconnect.
@Suite struct SwiftClientSharedQueueTests {
    /// A vSMMU with vSID 0x8 on `smmu0` (host device `host`) linked with ASID 1.
    static func vsmmu(_ client: VSMMUClient, pSMMU: String = "smmu0", host: UInt32 = 0) throws -> VSMMUID {
        let vsmmu = try client.createVSMMU(name: "sq-swift")
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: pSMMU, hostDeviceID: host).viommu
        try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: host, streamID: 0x8)
        try client.linkSTE(vsmmu: vsmmu, streamID: 0x8, ste: s1STE(), contextDescriptors: [.valid(asid: 1)])
        return vsmmu
    }

    static func tlbi(_ page: Int) -> Command { .tlbiNHVA(asid: 1, address: UInt64(0x10_0000 + page) << 12) }

    @Test func syncsSubmittedThroughTheSharedQueueCompleteAcrossWrapsAndTheDaemonCountsEveryCommand() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try Self.vsmmu(client)
        let queue = try client.mapQueue(vsmmu: vsmmu, log2Entries: 8)
        #expect(queue.region.loadState() == SharedQueueLayout.State.running.rawValue)
        var commands = 0
        for round in 0..<300 {  // 300 × 3 commands through 256 slots: several wraps
            let reply = try queue.submitAndWait([Self.tlbi(round), Self.tlbi(round + 1), .sync()])
            #expect(reply == InvalidateReply(consumed: 3, syncsCompleted: 1))
            commands += 3
        }
        #expect(queue.region.loadConsumer() == queue.producer.producer)
        #expect(try client.stats(vsmmu: vsmmu).value(.commandsReceived) == UInt64(commands))
        try queue.unmap()
        #expect(!queue.isMapped)
        #expect(throws: VSMMUClientError.self) { _ = try queue.submit([.sync()]) }
    }

    @Test func aRefusedCommandIsReportedAtItsIndexAndResumesAtTheRewrittenSlotOnceAcknowledged() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try Self.vsmmu(client)
        let queue = try client.mapQueue(vsmmu: vsmmu, log2Entries: 8)
        let illegal = Command(w0: 0x07, w1: 0)  // QEMU's CFGI_ALL: not an SMMUv3 opcode (CERROR_ILL)
        let reply = try queue.submitAndWait([Self.tlbi(0), .sync(), illegal, Self.tlbi(1), .sync()])
        #expect(reply.consumed == 2 && reply.syncsCompleted == 1)
        #expect(reply.failure?.index == 2 && reply.queueError == .illegal)
        let error = try #require(queue.error)
        #expect(error.errorKind == .command && error.consumer == 2 && queue.region.loadConsumer() == 2)
        // Nothing moves until the acknowledgement.
        #expect(try queue.waitForSync() == .error(error))
        #expect(try queue.acknowledgeError(rewriting: .sync()) == .acknowledged(error))
        #expect(try queue.waitForSync() == .completed)
        #expect(queue.error == nil)
        #expect(try queue.submitAndWait([Self.tlbi(2), .sync()]) == InvalidateReply(consumed: 2, syncsCompleted: 1))
    }

    @Test func aSubmissionLargerThanTheQueueWaitsForRoomAndEveryCommandIsConsumed() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try Self.vsmmu(client)
        let queue = try client.mapQueue(vsmmu: vsmmu, log2Entries: 8)
        // 1000 commands cannot be outstanding in 256 slots at once: the producer must wait for CONS.
        let commands = (0..<999).map { $0 % 100 == 99 ? Command.sync() : Self.tlbi($0) } + [.sync()]
        let reply = try queue.submitAndWait(commands)
        #expect(reply.consumed == 1000 && reply.failure == nil)
        #expect(reply.syncsCompleted == UInt32(commands.filter { $0.opcode == .sync }.count))
        #expect(queue.producer.publishedCount == 1000)
        #expect(try client.stats(vsmmu: vsmmu).value(.commandsReceived) == 1000)
    }

    @Test func aSecondMapOfTheSameVSMMUIsRefusedAndMapQueueChecksItsSize() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try Self.vsmmu(client)
        let queue = try client.mapQueue(vsmmu: vsmmu, log2Entries: 8)
        let second = refusal { _ = try client.mapQueue(vsmmu: vsmmu, log2Entries: 9) }
        #expect(second?.code == .alreadyExists)
        #expect(throws: VSMMUClientError.self) { _ = try client.mapQueue(vsmmu: vsmmu, log2Entries: 7) }
        // The first queue still works.
        #expect(try queue.submitAndWait([Self.tlbi(0), .sync()]).failure == nil)
    }

    // MARK: A real daemon process: a waiter and a lost connection, and the re-map after a restart

    static var enabled: Bool { KillNineRestartTests.enabled }

    /// A waiter thread for `queue`'s last submission (``BackgroundCall``): its outcome or error once joined.
    final class Waiter: @unchecked Sendable {
        private let call: BackgroundCall<SharedQueueWaitOutcome>
        init(_ queue: SharedCommandQueue, past position: UInt32) throws {
            let box = QueueBox(queue)
            call = BackgroundCall { () throws(VSMMUClientError) in try box.queue.waitForSync(past: position) }
        }
        /// Waits up to `seconds` for the waiter to return; whether it did.
        func join(seconds: Double = 60) -> Bool { call.join(seconds: seconds) }
        var outcome: SharedQueueWaitOutcome? { call.value }
        var error: VSMMUClientError? { call.error }
    }

    /// Hands a queue (and its client) to the waiter thread while the test thread does not use them.
    final class QueueBox: @unchecked Sendable {
        let queue: SharedCommandQueue
        init(_ queue: SharedCommandQueue) { self.queue = queue }
    }

    /// Stops `pid` (SIGSTOP) and waits until every one of its threads is stopped (`/proc/PID/task/*/stat`
    /// state `T`): a signal is delivered asynchronously, and a consumer thread still running would consume.
    static func freeze(_ pid: Int32) -> Bool {
        kill(pid, SIGSTOP)
        var frozen = false
        eventually {
            guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"), !tasks.isEmpty else { return false }
            frozen = tasks.allSatisfy { task in
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/stat", encoding: .utf8),
                      let close = stat.lastIndex(of: ")") else { return false }
                return stat[stat.index(after: close)...].split(separator: " ").first == "T"
            }
            return frozen
        }
        return frozen
    }

    /// Waits until `queue`'s producer sleeps on call (`vmm_sleeping` = 1), polling the memory.
    static func waitUntilAsleep(_ queue: SharedCommandQueue) -> Bool {
        var asleep = false
        eventually { asleep = queue.region.loadVMMSleeping() == 1; return asleep }
        return asleep
    }

    /// A waiter asleep on call wakes with STOPPED when the queue's `state` says STOPPED and call is
    /// signalled (§8.6) — with a reconnect policy too, once the connection stays up. The daemon's consumer
    /// is held in a stalled pSMMU meanwhile, so that CONS cannot pass the sync, and the test stores what
    /// the daemon stores when a queue goes away (the daemon's own teardown is SharedQueueTests').
    @Test(arguments: [false, true])
    func aWaiterAsleepOnCallWakesWithStoppedWhenTheQueueIsStoppedAndCallSignalled(reconnectPolicy: Bool) throws {
        let t = try TestServer("sqswiftstop\(reconnectPolicy)")
        defer { t.stop() }
        let client = try VSMMUClient(socketPath: t.path, reconnect: reconnectPolicy ? KillNineRestartTests.reconnect : nil)
        try client.hello(name: "sq-swift-stop")
        let vsmmu = try Self.vsmmu(client)
        let queue = try client.mapQueue(vsmmu: vsmmu, log2Entries: 8)
        let gate = t.pSMMUs[0].stallInvalidations()
        defer { gate.release() }
        let submitted = try queue.submit([Self.tlbi(0), .sync()])
        #expect(gate.waitForStalledCalls(1))
        let waiter = try Waiter(queue, past: submitted.producer)
        #expect(Self.waitUntilAsleep(queue))
        queue.region.storeState(.stopped)
        SharedQueueRegion.fullFence()
        #expect(try SystemCall.writeEvent(queue.call))
        try #require(waiter.join(), "the waiter did not return")
        #expect(waiter.error == nil)
        #expect(waiter.outcome == .stopped)
        #expect(queue.region.loadConsumer() != submitted.producer)
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func aWaiterAsleepOnCallFailsWithConnectionClosedWhenTheDaemonDiesWithoutAReconnectPolicy() throws {
        let socket = uniqueSocketPath("sqswiftlost")
        let directory = temporaryStateDirectory("sqswiftlost")
        defer { removeStateDirectory(directory) }
        let daemon = try KillNineRestartTests().startDaemon(socket: socket, stateDirectory: directory)
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        let client = try VSMMUClient(socketPath: socket)
        try client.hello(name: "sq-swift-lost")
        let vsmmu = try Self.vsmmu(client)
        let queue = try client.mapQueue(vsmmu: vsmmu, log2Entries: 8)
        #expect(try queue.submitAndWait([Self.tlbi(0), .sync()]).failure == nil)
        // Freeze the daemon, publish a sync it cannot consume, let the waiter fall asleep, then kill it:
        // nothing writes STOPPED, only the socket tells.
        #expect(Self.freeze(daemon.processIdentifier))
        let submitted = try queue.submit([Self.tlbi(1), .sync()])
        let waiter = try Waiter(queue, past: submitted.producer)
        #expect(Self.waitUntilAsleep(queue))
        kill(daemon.processIdentifier, SIGKILL)
        daemon.waitUntilExit()
        try #require(waiter.join(), "the waiter did not return")
        #expect(waiter.error == .connectionClosed)
        #expect(waiter.outcome == nil)
        #expect(queue.region.loadVMMSleeping() == 0)
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func aWaiterWhoseDaemonIsKilledAndRestartedCompletesAfterTheClientMapsTheSameMemoryAgain() throws {
        let socket = uniqueSocketPath("sqswiftremap")
        let directory = temporaryStateDirectory("sqswiftremap")
        defer { removeStateDirectory(directory) }
        let restart = KillNineRestartTests()
        let first = try restart.startDaemon(socket: socket, stateDirectory: directory)
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
        let client = try VSMMUClient(socketPath: socket, reconnect: KillNineRestartTests.reconnect)
        try client.hello(name: "sq-swift-remap")
        let vsmmu = try Self.vsmmu(client)
        let queue = try client.mapQueue(vsmmu: vsmmu, log2Entries: 8)
        #expect(try queue.submitAndWait([Self.tlbi(0), .sync()]).failure == nil)
        let consBefore = queue.region.loadConsumer()
        #expect(Self.freeze(first.processIdentifier))
        let submitted = try queue.submit([Self.tlbi(1), Self.tlbi(2), .sync()])
        let waiter = try Waiter(queue, past: submitted.producer)
        #expect(Self.waitUntilAsleep(queue))
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        unlink(socket)
        #expect(queue.region.loadConsumer() == consBefore)  // the killed daemon consumed nothing of it
        let second = try restart.startDaemon(socket: socket, stateDirectory: directory)
        defer { if second.isRunning { kill(second.processIdentifier, SIGKILL) } }
        // The waiter sees the socket end, reconnects, resumes the vSMMU, re-sends MAP_QUEUE with the same
        // memfd and fresh eventfds, and the new daemon consumes from CONS.
        try #require(waiter.join(), "the waiter did not return")
        #expect(waiter.error == nil)
        #expect(waiter.outcome == .completed)
        #expect(queue.region.loadConsumer() == submitted.producer)
        #expect(client.reconnectCount == 1 && queue.remapCount == 1)
        #expect(queue.region.loadState() == SharedQueueLayout.State.running.rawValue)
        // The queue keeps working on the new connection.
        #expect(try queue.submitAndWait([Self.tlbi(3), .sync()]) == InvalidateReply(consumed: 2, syncsCompleted: 1))
        kill(second.processIdentifier, SIGTERM)
        second.waitUntilExit()
    }
}
