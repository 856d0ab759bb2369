import Foundation
import PSMMU
import SMMUv3
import SharedQueue
import Testing
import VSMMUClient
import VSMMUProtocol
import VSMMUSystem
import VSMMUTestSupport

#if canImport(Glibc)
import Glibc
#endif

// Concurrency notes: a test's client is used by one thread at a time. Where a waiter runs on its own thread,
// the test thread only reads or writes the shared memory and the call eventfd, or joins the waiter with a
// deadline; it never uses the client meanwhile (the waiter polls the client's socket).

/// The Swift client's event queue (`VSMMUClient.mapEventQueue`, `EventQueue`, PROTOCOL.md §9) and SIMULATE_DMA
/// (§6.4) against the daemon: a fault reaches the owner with its vSID and sequence and no other connection,
/// an overflow is surfaced and acknowledged, the readiness fd and the blocking wait, a version-4 client, and
/// the re-map after a daemon restart.
@Suite struct SwiftClientEventTests {
    /// A vSMMU with vSID `vsid` on `smmu0` (host device `host`), linked with ASID `asid`.
    static func vsmmu(_ client: VSMMUClient, vsid: StreamID = 0x8, host: UInt32 = 0, asid: UInt16 = 1) throws -> VSMMUID {
        let vsmmu = try client.createVSMMU(name: "events-swift")
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: host).viommu
        try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: host, streamID: vsid)
        try client.linkSTE(vsmmu: vsmmu, streamID: vsid, ste: s1STE(), contextDescriptors: [.valid(asid: asid)])
        return vsmmu
    }

    /// Whether an event is available within the deadline (polled: no wait that could hang a test).
    static func arrives(_ events: EventQueue) -> Bool {
        var available = false
        eventually { available = events.poll().available > 0; return available }
        return available
    }

    /// A DMA of `vsid` to a page the guest's tables do not map: the daemon answers FAULT F_TRANSLATION.
    static func fault(_ client: VSMMUClient, _ vsmmu: VSMMUID, vsid: StreamID = 0x8, page: UInt64 = 0x7F001) throws -> EventRecord? {
        try client.simulateDMA(vsmmu: vsmmu, streamID: vsid, address: page << 12, walk: .unmapped).event
    }

    @Test func aFaultAfterTheGuestUnmappedReachesTheOwnersEventQueueWithItsVSIDAndSequence() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try Self.vsmmu(client)
        let events = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 6)
        #expect(events.mappedProducer == 0 && events.region.loadState() == EventQueueLayout.State.running.rawValue)
        #expect(events.next() == nil)
        // Mapped: a TLB fill. Unmapped and invalidated: F_TRANSLATION, as the guest sees it (vSID 0x8).
        #expect(try client.simulateDMA(vsmmu: vsmmu, streamID: 0x8, address: 0x7F00_1000, walk: .readWrite).event == nil)
        _ = try client.invalidate(vsmmu: vsmmu, commands: [.tlbiNHVA(asid: 1, address: 0x7F00_1000), .sync()])
        let record = try #require(try Self.fault(client, vsmmu))
        #expect(record.id == .translation && record.streamID == 0x8 && record.inputAddress == 0x7F00_1000)
        try #require(Self.arrives(events))
        let look = try events.wait()  // returns at once: there is an event
        #expect(look.available == 1 && !look.overflow)
        let entry = try #require(events.next())
        #expect(entry.record == record && entry.sequence == 1 && entry.vsmmu == vsmmu.rawValue && entry.viommu == 0)
        #expect(!entry.lostBefore && events.next() == nil)
        // A second fault: sequence 2, CONS stored past both.
        _ = try Self.fault(client, vsmmu, page: 0x7F002)
        #expect(events.drain().map(\.sequence) == [2])
        #expect(events.region.loadConsumer() == 2)
        try events.unmap()
        #expect(!events.isMapped)
        // A queue can be mapped again once unmapped.
        let again = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 4)
        #expect(again.isMapped)
    }

    @Test func anotherConnectionsEventQueueGetsNothingOfTheOwnersFaults() throws {
        let t = try TestServer()
        defer { t.stop() }
        let owner = try t.client(), other = try t.client()
        let mine = try Self.vsmmu(owner, vsid: 0x8, host: 0)
        let theirs = try Self.vsmmu(other, vsid: 0x8, host: 1)  // the same vSID, another VM
        let myEvents = try owner.mapEventQueue(vsmmu: mine, log2Entries: 4)
        let theirEvents = try other.mapEventQueue(vsmmu: theirs, log2Entries: 4)
        for page in UInt64(0)..<5 { _ = try Self.fault(owner, mine, page: 0x100 + page) }
        #expect(myEvents.drain().count == 5)
        #expect(theirEvents.poll().available == 0 && theirEvents.next() == nil)
        // And SIMULATE_DMA on another connection's vSMMU is refused as for a vSMMU that does not exist.
        let refused = refusal("SIMULATE_DMA on another connection's vSMMU") { _ = try Self.fault(other, mine) }
        #expect(refused?.code == .unknownVSMMU)
        #expect(theirEvents.next() == nil)
    }

    @Test func aVMMThatDoesNotReadLosesEventsWithTheOverflowFlagWhichItAcknowledges() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try Self.vsmmu(client)
        let events = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 4)  // 16 slots
        for page in UInt64(0)..<20 { _ = try Self.fault(client, vsmmu, page: 0x200 + page) }
        let look = events.poll()
        #expect(look.available == 16 && look.overflow && events.overflowPending)
        #expect(events.drain().map(\.sequence) == Array(1...16))
        #expect(events.acknowledgeOverflow())
        #expect(!events.overflowPending && events.region.loadConsumer() & EventQueueLayout.overflowFlag != 0)
        #expect(!events.acknowledgeOverflow())
        // The next event says events were lost before it; its sequence shows how many (17…20).
        _ = try Self.fault(client, vsmmu, page: 0x300)
        let next = try #require(events.next())
        #expect(next.lostBefore && next.sequence == 21)
        let stats = try client.stats(vsmmu: vsmmu)
        #expect(stats.value(.viommuEventsDroppedOverflow, viommu: 0) == 4)
        #expect(stats.value(.viommuEvents, viommu: 0) == 17)
    }

    @Test func theReadinessDescriptorIsReadableOnlyAfterTheReaderSaidItSleeps() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try Self.vsmmu(client)
        let events = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 4)
        func readable(_ timeout: Int32) throws -> Bool {
            var fds = [pollfd(fd: events.readinessFD, events: Int16(POLLIN), revents: 0)]
            return try SystemCall.poll(&fds, timeoutMilliseconds: timeout) > 0
        }
        // Awake: the daemon writes the event without a system call.
        _ = try Self.fault(client, vsmmu)
        let readableAwake = try readable(0)
        #expect(!readableAwake)
        #expect(!events.prepareToSleep())  // something is new: no sleep
        #expect(events.drain().count == 1)
        // Asleep: the next event signals call.
        #expect(events.prepareToSleep() && events.region.loadVMMSleeping() == 1)
        _ = try Self.fault(client, vsmmu, page: 0x7F002)
        #expect(try readable(10_000))
        try events.clearReadiness()
        let stillReadable = try readable(0)
        #expect(events.region.loadVMMSleeping() == 0 && !stillReadable)
        #expect(events.next()?.sequence == 2)
    }

    /// A waiter asleep on call (and the socket) wakes when the queue's `state` says STOPPED and call is
    /// signalled, as the daemon does when the queue goes away (§9.7); the test thread stores it, never using the
    /// client while the waiter polls its socket.
    @Test func aWaiterAsleepOnCallWakesWithTheStopAndCallSignalled() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try Self.vsmmu(client)
        let events = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 4)
        let waiter = EventWaiter(events)
        #expect(EventWaiter.waitUntilAsleep(events))
        events.region.storeState(.stopped)
        EventQueueRegion.fullFence()
        #expect(try SystemCall.writeEvent(events.readinessFD))
        try #require(waiter.join(), "the waiter did not return")
        #expect(waiter.error == nil)
        #expect(waiter.look?.isStopped == true && waiter.look?.available == 0)
        #expect(events.region.loadVMMSleeping() == 0)
    }

    @Test func aVersionFourClientCannotMapAnEventQueueOrSimulateDMA() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client(hello: false)
        _ = try client.hello(name: "v4", versions: 1...4)
        let vsmmu = try Self.vsmmu(client)
        let mapped = refusal("MAP_EVENT_QUEUE on version 4") { _ = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 4) }
        #expect(mapped?.code == .unknownMessageType && mapped?.value == 0x1D)
        let dma = refusal("SIMULATE_DMA on version 4") { _ = try Self.fault(client, vsmmu) }
        #expect(dma?.code == .unknownMessageType && dma?.value == 0x43)
        // Everything of version 4 still works.
        #expect(try client.invalidate(vsmmu: vsmmu, commands: [.sync()]).failure == nil)
    }

    @Test func theClientRefusesASizeOutsideFourToTwelveAndTheDaemonASecondQueue() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try Self.vsmmu(client)
        #expect(throws: VSMMUClientError.self) { _ = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 3) }
        #expect(throws: VSMMUClientError.self) { _ = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 13) }
        let events = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 4)
        let second = refusal("a second event queue") { _ = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 4) }
        #expect(second?.code == .alreadyExists && second?.detail == ConflictKind.eventQueue.rawValue)
        #expect(events.isMapped)
    }

    // MARK: A real daemon process: a waiter when the daemon goes

    /// A daemon killed with SIGKILL writes no STOPPED: the sleeping waiter wakes on its socket's end of
    /// stream and, without a reconnect policy, fails with `connectionClosed` (`EventQueue.wait`'s socket arm).
    @Test(.enabled(if: KillNineRestartTests.enabled, "vsmmud was not built beside the tests"))
    func aWaiterWithoutAReconnectPolicyFailsWithConnectionClosedWhenTheDaemonIsKilled() throws {
        let socket = uniqueSocketPath("evwaitkill")
        let directory = temporaryStateDirectory("evwaitkill")
        defer { removeStateDirectory(directory) }
        let daemon = try KillNineRestartTests().startDaemon(socket: socket, stateDirectory: directory)
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        let client = try VSMMUClient(socketPath: socket)
        try client.hello(name: "events-wait-kill")
        let vsmmu = try Self.vsmmu(client)
        let events = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 4)
        let waiter = EventWaiter(events)
        #expect(EventWaiter.waitUntilAsleep(events))
        kill(daemon.processIdentifier, SIGKILL)
        daemon.waitUntilExit()
        try #require(waiter.join(), "the waiter did not return")
        #expect(waiter.error == .connectionClosed, "\(String(describing: waiter.error))")
        #expect(events.region.loadState() == EventQueueLayout.State.running.rawValue, "nobody wrote STOPPED")
    }

    /// A daemon that stops (SIGTERM) writes STOPPED, signals call and closes the connection. A waiter with a
    /// reconnect policy takes the stop followed by the end of the connection as the daemon going (§9.7), not
    /// as the end of the queue: it reconnects to the next daemon, which resumes the vSMMU and maps the same
    /// memory again (`state` = RUNNING), and it goes back to sleep on the new call eventfd. The test sees
    /// that in the shared memory only (it never uses the client while the waiter polls its socket), then
    /// wakes the waiter the way a daemon would, and an event raised afterwards has the next sequence.
    @Test(.enabled(if: KillNineRestartTests.enabled, "vsmmud was not built beside the tests"))
    func aWaiterWithAReconnectPolicyRidesOutADaemonThatStopsAndSleepsOnTheNextOnesMapping() throws {
        let f = try RestartedEventQueue(label: "evwaitstop")
        let (client, vsmmu, events) = (f.client, f.vsmmu, f.events)
        let waiter = EventWaiter(events)
        #expect(EventWaiter.waitUntilAsleep(events))
        f.endDaemon(SIGTERM)
        #expect(events.region.loadState() == EventQueueLayout.State.stopped.rawValue, "the stopping daemon wrote STOPPED")
        #expect(!waiter.join(seconds: 0.5), "a stop followed by the connection's end is not the end of the wait")
        #expect(events.region.loadVMMSleeping() == 0, "the waiter woke and is reconnecting")
        try f.startDaemon()
        var remapped = false
        eventually { remapped = events.region.loadState() == EventQueueLayout.State.running.rawValue; return remapped }
        try #require(remapped, "the new daemon did not map the queue again")
        #expect(EventWaiter.waitUntilAsleep(events), "the waiter sleeps again, on the new mapping")
        #expect(!waiter.join(seconds: 0.2), "nothing to read yet: the wait goes on")
        // Wake it as a daemon that ends the queue would: STOPPED, then call (the re-map's new eventfd).
        events.region.storeState(.stopped)
        EventQueueRegion.fullFence()
        #expect(try SystemCall.writeEvent(events.readinessFD))
        try #require(waiter.join(), "the waiter did not return")
        #expect(waiter.error == nil, "\(String(describing: waiter.error))")
        #expect(waiter.look?.isStopped == true)
        #expect(client.reconnectCount == 1 && events.remapCount == 1 && events.isMapped)
        let record = try #require(try Self.fault(client, vsmmu, page: 0x7F002))
        #expect(Self.arrives(events))
        let entry = try #require(events.next())
        #expect(entry.record == record && entry.sequence == 2)
        f.endDaemon(SIGTERM)
    }

    // MARK: A real daemon process: the re-map after a restart

    @Test(.enabled(if: KillNineRestartTests.enabled, "vsmmud was not built beside the tests"))
    func afterADaemonKilledAndRestartedTheClientMapsTheSameMemoryAgainAndTheSequenceGoesOn() throws {
        let f = try RestartedEventQueue(label: "evswiftremap")
        let (client, vsmmu, events) = (f.client, f.vsmmu, f.events)
        f.endDaemon(SIGKILL)
        unlink(f.socket)
        try f.startDaemon()
        // The next request finds the connection gone: the client reconnects, resumes the vSMMU and re-sends
        // MAP_EVENT_QUEUE with the same memfd and a fresh call eventfd; the new daemon goes on from PROD.
        let record = try #require(try Self.fault(client, vsmmu, page: 0x7F002))
        try #require(client.reconnectCount == 1 && events.remapCount == 1 && events.isMapped)
        #expect(events.mappedProducer == 1)
        #expect(Self.arrives(events))
        let entry = try #require(events.next())
        #expect(entry.record == record && entry.sequence == 2 && !entry.lostBefore)
        #expect(events.region.loadState() == EventQueueLayout.State.running.rawValue)
        f.endDaemon(SIGTERM)
    }
}

/// The start of the Swift client's event-queue restart tests: a real `vsmmud` with a state directory of its
/// own, a client with the reconnect policy, its vSMMU's event queue, and one fault read (sequence 1). The
/// daemon in ``daemon`` is ended with ``endDaemon(_:)`` and replaced with ``startDaemon()``; whatever still
/// runs is killed, and the directory removed, when the fixture goes.
final class RestartedEventQueue {
    let socket: String
    let directory: String
    private let restart = KillNineRestartTests()
    private(set) var daemon: ChildProcess
    let client: VSMMUClient
    let vsmmu: VSMMUID
    let events: EventQueue

    init(label: String) throws {
        socket = uniqueSocketPath(label)
        directory = temporaryStateDirectory(label)
        daemon = try restart.startDaemon(socket: socket, stateDirectory: directory)
        client = try VSMMUClient(socketPath: socket, reconnect: KillNineRestartTests.reconnect)
        try client.hello(name: label)
        vsmmu = try SwiftClientEventTests.vsmmu(client)
        events = try client.mapEventQueue(vsmmu: vsmmu, log2Entries: 6)
        _ = try SwiftClientEventTests.fault(client, vsmmu)
        #expect(SwiftClientEventTests.arrives(events))
        #expect(events.drain().map(\.sequence) == [1])
    }

    /// Sends `signal` to the daemon and waits for it to exit.
    func endDaemon(_ signal: Int32) {
        kill(daemon.processIdentifier, signal)
        daemon.waitUntilExit()
    }

    /// Starts the next daemon on the same socket and state directory.
    func startDaemon() throws {
        daemon = try restart.startDaemon(socket: socket, stateDirectory: directory)
    }

    deinit {
        if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) }
        removeStateDirectory(directory)
    }
}

/// A thread blocked in ``EventQueue/wait(spinIterations:)``; the test joins it with a deadline.
final class EventWaiter: @unchecked Sendable {
    private let call: BackgroundCall<EventQueuePoll>
    init(_ events: EventQueue) {
        let box = EventQueueBox(events)
        call = BackgroundCall { () throws(VSMMUClientError) in try box.events.wait(spinIterations: 0) }
    }

    /// Waits up to `seconds` for the waiter to return; whether it did.
    func join(seconds: Double = 60) -> Bool { call.join(seconds: seconds) }
    var look: EventQueuePoll? { call.value }
    var error: VSMMUClientError? { call.error }

    /// Waits until the reader sleeps on call (`vmm_sleeping` = 1), polling the memory.
    static func waitUntilAsleep(_ events: EventQueue) -> Bool {
        var asleep = false
        eventually { asleep = events.region.loadVMMSleeping() == 1; return asleep }
        return asleep
    }
}

/// Hands an event queue (and its client) to the waiter thread while the test thread does not use them.
final class EventQueueBox: @unchecked Sendable {
    let events: EventQueue
    init(_ events: EventQueue) { self.events = events }
}
