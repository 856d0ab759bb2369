import Logging
import PSMMU
import SMMUv3
import Testing
import VSMMUClient
import VSMMUConfiguration
@testable import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The adaptive window a connection polls for its next request in (like KVM's halt-polling).
@Suite struct RequestPollerTests {
    @Test func aRequestCaughtWhilePollingKeepsTheWindow() {
        var poller = RequestPoller(maximum: .microseconds(30))
        #expect(poller.windowNanoseconds == 30_000)
        poller.record(waitedNanoseconds: 5_000, caughtWhilePolling: true)
        #expect(poller.windowNanoseconds == 30_000)
    }

    @Test func requestsLaterThanTheMaximumAndAWakeUpShrinkTheWindowToNothing() {
        var poller = RequestPoller(maximum: .microseconds(30))
        var windows: [UInt64] = []
        for _ in 0..<5 {
            poller.record(waitedNanoseconds: 30_000 + RequestPoller.wakeUpAllowanceNanoseconds + 1, caughtWhilePolling: false)
            windows.append(poller.windowNanoseconds)
        }
        #expect(windows == [15_000, 7_500, 3_750, 0, 0])
    }

    @Test func aRequestALongerPollWouldHaveCaughtGrowsTheWindowBackToTheMaximum() {
        var poller = RequestPoller(maximum: .microseconds(30))
        for _ in 0..<4 { poller.record(waitedNanoseconds: 1_000_000, caughtWhilePolling: false) }
        #expect(poller.windowNanoseconds == 0)
        var windows: [UInt64] = []
        for _ in 0..<5 {
            poller.record(waitedNanoseconds: 20_000, caughtWhilePolling: false)
            windows.append(poller.windowNanoseconds)
        }
        #expect(windows == [2_000, 4_000, 8_000, 16_000, 30_000])
    }

    /// A request that came right after the window, measured by a thread that slept and was woken (the
    /// wait includes the wake-up: ~50 µs here, over the 30-µs maximum), grows a closed window again rather
    /// than keeping it closed: otherwise both sides of a shared queue end up waking each other on every sync.
    @Test func aWaitThatIncludesTheWakeUpOfASleeperStillGrowsTheWindow() {
        var poller = RequestPoller(maximum: .microseconds(30))
        for _ in 0..<4 { poller.record(waitedNanoseconds: 1_000_000, caughtWhilePolling: false) }
        #expect(poller.windowNanoseconds == 0)
        var windows: [UInt64] = []
        for _ in 0..<5 {
            poller.record(waitedNanoseconds: 50_000, caughtWhilePolling: false)
            windows.append(poller.windowNanoseconds)
        }
        #expect(windows == [2_000, 4_000, 8_000, 16_000, 30_000])
    }

    @Test func aZeroMaximumNeverPolls() {
        var poller = RequestPoller(maximum: .zero)
        poller.record(waitedNanoseconds: 1_000, caughtWhilePolling: false)
        #expect(poller.windowNanoseconds == 0 && poller.maximumNanoseconds == 0)
    }

    @Test func pollingSlotsAreHandedOutUpToTheirCapacity() {
        let slots = RequestPollingSlots(capacity: 2)
        #expect(slots.tryAcquire() && slots.tryAcquire())
        #expect(!slots.tryAcquire())
        slots.release()
        #expect(slots.tryAcquire())
        #expect(!RequestPollingSlots(capacity: 0).tryAcquire())
    }
}

/// The server's request polling, through real connections.
@Suite struct RequestPollingServerTests {
    func server(polling: Duration, threads: Int) throws -> VSMMUServer {
        var logger = Logger(label: "vsmmud-test")
        logger.logLevel = .critical
        let server = VSMMUServer(configuration: .init(socketPath: uniqueSocketPath("poll"),
                                                      pSMMUs: simulatedPSMMUs(1).map { .simulated($0) },
                                                      requestPolling: polling, requestPollingThreads: threads),
                                 logger: logger)
        try server.start()
        return server
    }

    @Test func theConfigurationFilesWindowReachesTheServerAndBothDefaultsAgree() throws {
        #expect(DaemonConfiguration.defaultRequestPollMicroseconds == VSMMUServer.Configuration.defaultRequestPollMicroseconds)
        var daemon = DaemonConfiguration()
        daemon.requestPollMicroseconds = 120
        #expect(try VSMMUServer.Configuration(daemon, socketPath: "/tmp/unused.sock").requestPolling == .microseconds(120))
    }

    @Test func backToBackRequestsAreCaughtWhilePolling() throws {
        // A 10-ms window: the client's next request comes within it even on a loaded machine (a 1-ms
        // window caught 18 of 50 while a TSan build and a release build shared the 2 vCPUs).
        let server = try server(polling: .milliseconds(10), threads: 1)
        defer { server.stop() }
        let client = try VSMMUClient(socketPath: server.configuration.socketPath)
        try client.hello()
        for _ in 0..<50 { _ = try client.health() }
        let totals = server.totals()
        #expect(totals.requestPollHits >= 25, "most of 50 back-to-back requests found the thread polling: \(totals)")
    }

    @Test func aRequestAfterAPauseIsServedAfterThePollGaveUp() throws {
        let server = try server(polling: .microseconds(50), threads: 1)
        defer { server.stop() }
        let client = try VSMMUClient(socketPath: server.configuration.socketPath)
        try client.hello()
        usleep(20_000)  // far longer than the window: the thread polls, gives up, sleeps
        #expect(try client.health().status == .ok)
        #expect(server.totals().requestPollMisses >= 1)
    }

    @Test func noPollingWhileAnotherConnectionThreadServesARequest() throws {
        let server = try server(polling: .milliseconds(1), threads: 1)
        defer { server.stop() }
        let client = try VSMMUClient(socketPath: server.configuration.socketPath)
        try client.hello()
        server.pollingSlots.beginServing()  // as if another connection's thread were busy with a request
        let before = server.totals()
        for _ in 0..<10 { _ = try client.health() }
        let after = server.totals()
        server.pollingSlots.endServing()
        // Nothing caught while polling; at most the poll already running when `beginServing` came ends as a miss.
        #expect(after.requestPollHits == before.requestPollHits)
        #expect(after.requestPollMisses <= before.requestPollMisses + 1)
        for _ in 0..<10 { _ = try client.health() }
        #expect(server.totals().requestPollHits > after.requestPollHits, "polling resumes once nobody else serves")
    }

    @Test func noPollingWhenDisabledOrWithoutASlot() throws {
        for (polling, threads) in [(Duration.zero, 1), (.milliseconds(1), 0)] {
            let server = try server(polling: polling, threads: threads)
            defer { server.stop() }
            let client = try VSMMUClient(socketPath: server.configuration.socketPath)
            try client.hello()
            for _ in 0..<10 { _ = try client.health() }
            let totals = server.totals()
            #expect(totals.requestPollHits == 0 && totals.requestPollMisses == 0, "\(polling), \(threads) threads")
        }
    }
}
