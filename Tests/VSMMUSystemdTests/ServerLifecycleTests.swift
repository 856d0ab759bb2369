import Logging
import PSMMU
import SMMUv3
import Synchronization
import Testing
import VSMMUClient
import VSMMUConfiguration
import VSMMUDaemon
import VSMMUProtocol
import VSMMUSystemd

#if canImport(Glibc)
import Glibc
#endif

/// The server's heartbeat, liveness, allow-list and limits reload, in-process.
@Suite struct ServerLifecycleTests {
    static func quietLogger() -> Logger {
        var logger = Logger(label: "vsmmud-test")
        logger.logLevel = .critical
        return logger
    }

    static func server(_ label: String, pSMMU: SimulatedSMMU, access: AccessList = .open,
                       heartbeat: Duration = .seconds(1), wedgeTimeout: Duration = .seconds(10)) throws -> (VSMMUServer, String) {
        let path = uniquePath(label, suffix: ".sock")
        let server = VSMMUServer(configuration: .init(socketPath: path, pSMMUs: [.simulated(pSMMU)], access: access,
                                                      heartbeatInterval: heartbeat, wedgeTimeout: wedgeTimeout),
                                 logger: quietLogger())
        try server.start()
        return (server, path)
    }

    @Test func heartbeatRunsFromTheAcceptLoopWhileServing() throws {
        let (server, _) = try Self.server("heartbeat", pSMMU: SimulatedSMMU(name: "smmu0", deviceCount: 4),
                                          heartbeat: .milliseconds(20))
        defer { server.stop() }
        let beats = Atomic<Int>(0)
        server.setHeartbeat { _ in beats.add(1, ordering: .relaxed) }
        let seen = eventually { beats.load(ordering: .relaxed) >= 3 ? true : nil }
        #expect(seen == true)
        server.stop()
        let afterStop = beats.load(ordering: .relaxed)
        usleep(100_000)
        #expect(beats.load(ordering: .relaxed) == afterStop) // a stopped accept loop beats no more
    }

    @Test func aViommuStuckWithQueuedCommandsMakesTheServerWedgedUntilItDrains() throws {
        let smmu = SimulatedSMMU(name: "smmu0", deviceCount: 4)
        let (server, path) = try Self.server("wedge", pSMMU: smmu, wedgeTimeout: .milliseconds(50))
        defer { server.stop() }
        #expect(server.liveness() == .alive)
        let client = try VSMMUClient(socketPath: path)
        try client.hello()
        let vsmmu = try client.createVSMMU()
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 1).viommu
        try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: 1, streamID: 0x8)
        #expect(try client.invalidate(vsmmu: vsmmu, commands: [.tlbiNHAll(), .sync()]).consumed == 2)

        // The backend stops answering; a batch with a sync waits on it.
        let gate = smmu.stallInvalidations()
        let pending = try client.send(.invalidate(Invalidate(vsmmu: vsmmu, commands: [.tlbiNHAll(), .sync()])))
        let wedged = eventually { () -> String? in
            if case .wedged(let why) = server.liveness() { return why }
            usleep(20_000)
            return nil
        }
        let why = try #require(wedged)
        #expect(why.contains("viommu \(viommu)") && why.contains("smmu0"))

        gate.release()
        let (id, response) = try client.receive()
        #expect(id == pending)
        #expect(response == .invalidate(InvalidateReply(consumed: 2, syncsCompleted: 1)))
        #expect(eventually { server.liveness() == .alive ? true : nil } == true)
    }

    @Test func allowListRefusesWithPermissionDeniedAndAReloadLetsThePeerIn() throws {
        let me = getuid()
        let (server, path) = try Self.server("allow", pSMMU: SimulatedSMMU(name: "smmu0", deviceCount: 4),
                                             access: AccessList(userIDs: [me &+ 1], groupIDs: []))
        defer { server.stop() }
        let refused = try VSMMUClient(socketPath: path)
        let error = try #require(throws: VSMMUClientError.self) { try refused.hello() }
        #expect(error.code == .permissionDenied)
        #expect(throws: VSMMUClientError.connectionClosed) { _ = try refused.receive() }
        #expect(server.connectionCount == 0)

        // A gid on the list is enough.
        server.reload(access: AccessList(userIDs: [me &+ 1], groupIDs: [getgid()]))
        let admitted = try VSMMUClient(socketPath: path)
        #expect(try admitted.hello().version == WireProtocol.version)
        server.reload(access: .open)
        #expect(server.access.isOpen)
    }

    @Test func reloadedLimitsApplyToConnectionsMadeAfterwards() throws {
        let (server, path) = try Self.server("limits", pSMMU: SimulatedSMMU(name: "smmu0", deviceCount: 4))
        defer { server.stop() }
        let before = try VSMMUClient(socketPath: path)
        let announcedBefore = try before.hello().limits
        server.reload(limits: ServerLimits(maximumVSMMUs: 1))
        let after = try VSMMUClient(socketPath: path)
        #expect(try after.hello().limits.maximumVSMMUs == 1)
        _ = try after.createVSMMU()
        let error = try #require(throws: VSMMUClientError.self) { _ = try after.createVSMMU() }
        #expect(error.code == .limitExceeded)
        // The earlier connection keeps what its HELLO_REPLY announced.
        #expect(announcedBefore.maximumVSMMUs == 16)
        _ = try before.createVSMMU()
        _ = try before.createVSMMU()
    }

    @Test func statusLineCountsConnectionsVSMMUsAndCommands() throws {
        let (server, path) = try Self.server("status", pSMMU: SimulatedSMMU(name: "smmu0", deviceCount: 4))
        defer { server.stop() }
        #expect(server.statusLine().hasPrefix("serving 0 connections, 0 vSMMUs"))
        let client = try VSMMUClient(socketPath: path)
        try client.hello()
        let vsmmu = try client.createVSMMU()
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 0)
        _ = try client.invalidate(vsmmu: vsmmu, commands: [.tlbiNHAll(), .tlbiNHASID(asid: 3), .sync()])
        #expect(server.statusLine() == "serving 1 connection, 1 vSMMU, 1 viommu; 3 commands, 1 syncs, 0 protocol errors, 0 refused")
    }
}

/// The log lines vsmmud writes for journald and for a terminal.
@Suite struct DaemonLogHandlerTests {
    static func event(_ level: Logger.Level, _ message: Logger.Message) -> LogEvent {
        LogEvent(level: level, message: message, metadata: nil, source: "vsmmud", file: #fileID, function: #function, line: #line)
    }

    @Test func journaldLinesCarryTheSyslogPriorityAndNoTimestamp() {
        let line = DaemonLogHandler.line(Self.event(.warning, "ring full"), label: "vsmmud", format: .journald,
                                         metadata: ["viommu": "2", "psmmu": "smmu 1"])
        #expect(line == "<4>ring full psmmu=\"smmu 1\" viommu=2\n")
        #expect([Logger.Level.trace, .debug, .info, .notice, .warning, .error, .critical].map(DaemonLogHandler.syslogPriority)
                == [7, 7, 6, 5, 4, 3, 2])
    }

    @Test func consoleLinesCarryAUTCTimestampAndTheLevel() {
        let line = DaemonLogHandler.line(Self.event(.info, "listening\nnow"), label: "vsmmud", format: .console, metadata: [:])
        #expect(line.hasSuffix(" info vsmmud: listening now\n"))
        #expect(line.split(separator: " ").first?.hasSuffix("Z") == true)
    }

    @Test func aSharedLevelControlFiltersEveryHandlerAndChangesAtRunTime() {
        let lines = Mutex<[String]>([])
        let control = LogLevelControl(.warning)
        let handler = DaemonLogHandler(label: "vsmmud", format: .journald, control: control) { line in
            lines.withLock { $0.append(line) }
        }
        var logger = Logger(label: "vsmmud") { _ in handler }
        logger.info("hidden")
        logger.error("shown")
        control.level = .debug
        logger.debug("now shown")
        #expect(lines.withLock { $0 } == ["<3>shown\n", "<7>now shown\n"])
        logger.logLevel = .critical // a logger's level is the shared control's
        #expect(control.level == .critical)
    }

    @Test func automaticFormatIsJournaldOnlyWhenStandardErrorIsTheJournalStream() {
        #expect(LogFormat.automatic(environment: [:]) == .console)
        #expect(LogFormat.automatic(environment: ["JOURNAL_STREAM": "1:2"]) == .console) // not our stderr
        var st = stat()
        fstat(STDERR_FILENO, &st)
        #expect(LogFormat.automatic(environment: ["JOURNAL_STREAM": "\(st.st_dev):\(st.st_ino)"]) == .journald)
    }
}

/// Socket activation and notification helpers without a service manager.
@Suite struct SystemdShimTests {
    @Test func noNotifySocketMeansNotificationsAreNotSent() {
        // Tests never run with NOTIFY_SOCKET set by a service manager.
        if getenv("NOTIFY_SOCKET") == nil {
            #expect(SystemdNotifier().notify(.ready) == false)
            #expect(!SystemdNotifier().isEnabled)
        }
    }

    @Test func serviceStatesRenderAsSdNotifyAssignments() {
        #expect(ServiceState.ready.description == "READY=1")
        #expect(ServiceState.stopping.description == "STOPPING=1")
        #expect(ServiceState.watchdog.description == "WATCHDOG=1")
        #expect(ServiceState.status("a\nb").description == "STATUS=a b")
        #expect(ServiceState.reloading(monotonicMicroseconds: 5).description == "RELOADING=1\nMONOTONIC_USEC=5")
    }

    @Test func boundPathOfAListeningSocketIsItsFilesystemPath() throws {
        let path = uniquePath("bound", suffix: ".sock")
        let fd = try listeningSocket(at: path)
        defer { close(fd); unlink(path) }
        #expect(SocketActivation.boundPath(of: fd) == path)
    }
}
