import Foundation
import SMMUv3
import SystemPackage
import Testing
import VSMMUClient
import VSMMUJournal
import VSMMUProtocol
@testable import VSMMUDaemon
@testable import VSMMUSystemd

#if canImport(Glibc)
import Glibc
#endif

/// A fresh, empty directory under /tmp for a daemon's state.
func temporaryDirectory(_ label: String) throws -> String {
    let path = uniquePath(label, suffix: ".d")
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    return path
}

/// What LIST says about the registrations, without what a restart renews (owner pid, backend object ids,
/// HWPT numbers).
func registrations(_ client: VSMMUClient) throws -> [String] {
    guard case .vsmmus(let v) = try client.list(.vsmmus).entries,
          case .viommus(let i) = try client.list(.viommus).entries,
          case .devices(let d) = try client.list(.devices).entries else {
        throw VSMMUClientError.badReply("LIST")
    }
    return v.map { "vsmmu \($0.vsmmu.rawValue) '\($0.name)' viommus \($0.viommuCount) devices \($0.deviceCount) hwpts \($0.hwptCount)" }
        + i.map { "vsmmu \($0.vsmmu.rawValue) viommu \($0.viommu) on \($0.pSMMU) devices \($0.deviceCount)" }
        + d.map { "vsmmu \($0.vsmmu.rawValue) sid 0x\(String($0.streamID, radix: 16)) viommu \($0.viommu) host \($0.hostDeviceID) linked \($0.steLinked)" }
}

/// `systemctl restart vsmmud` played out with the real binary: the test is systemd
/// (``ServiceManagerHarness``): socket unit, notify socket, fd store, `LISTEN_FDS`/`LISTEN_FDNAMES`.
@Suite(.serialized) struct SystemctlRestartTests {
    static let enabled = daemonPath != nil || requireBuiltExecutables

    /// One simulated pSMMU `smmu0`, host devices 0…15.
    static let configuration = DaemonUnderSystemdTests.configuration()

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func systemctlRestartKeepsEveryRegistrationAndAConnectDuringTheRestartIsServedByTheNewProcess() throws {
        let daemon = try #require(daemonPath)
        let config = try writeTemporaryFile("restart", Self.configuration)
        let state = try temporaryDirectory("restart-state")
        defer { unlink(config); try? FileManager.default.removeItem(atPath: state) }
        let systemd = try ServiceManagerHarness()
        let arguments = ["--config", config, "--state-dir", state, "--log-format", "console", "--resume-grace", "600"]

        let first = try systemd.start(daemon, arguments)
        #expect(systemd.receive { $0.contains("READY=1") }, "no READY=1; stderr: \(first.standardError)")
        #expect(first.standardError.contains("activated=true"), "stderr: \(first.standardError)")

        // The VMM: a version-3 client (resume tokens), two vSMMUs, viommus, devices, linked STEs.
        let vmm = try VSMMUClient(socketPath: systemd.socketPath)
        try vmm.hello(name: "qemu")
        let vm = try vmm.createVSMMU(name: "vm-a")
        let other = try vmm.createVSMMU(name: "vm-b")
        let viommu = try vmm.attachViommu(vsmmu: vm, pSMMU: "smmu0", hostDeviceID: 1).viommu
        try vmm.setDeviceID(vsmmu: vm, viommu: viommu, hostDeviceID: 2, streamID: 0x10)
        try vmm.setDeviceID(vsmmu: vm, viommu: viommu, hostDeviceID: 3, streamID: 0x11)
        try vmm.linkSTE(vsmmu: vm, streamID: 0x10, ste: .stage1(contextTable: 0x4380_4000), contextDescriptors: [.valid(asid: 5)])
        let otherViommu = try vmm.attachViommu(vsmmu: other, pSMMU: "smmu0", hostDeviceID: 8).viommu
        try vmm.setDeviceID(vsmmu: other, viommu: otherViommu, hostDeviceID: 9, streamID: 0x20)
        // Simulated pSMMUs hold no kernel objects: nothing goes to the fd store (iommufd vSMMUs' fds would
        // flow through the same harness, and come back after the socket).
        #expect(systemd.passedNames == ["vsmmud.socket"])
        let tokens = vmm.resumeTokens
        #expect(tokens.count == 2, "CREATE_VSMMU on version 3 hands out resume tokens")
        let before = try registrations(vmm)
        let nextRequestID = vmm.nextRequestID

        // systemctl restart: SIGTERM, STOPPING=1, the process exits 0 (the VMM keeps its connection until
        // then: a journaled daemon that stops keeps the vSMMUs).
        first.signal(SIGTERM)
        #expect(systemd.receive { $0.contains("STOPPING=1") }, "no STOPPING=1; stderr: \(first.standardError)")
        #expect(first.waitForExit() == 0, "stderr: \(first.standardError)")
        withExtendedLifetime(vmm) {}

        // No process runs, the socket unit's listener still does: a connect now waits in the backlog.
        let early = try VSMMUClient(socketPath: systemd.socketPath)
        let helloID = try early.send(.hello(Hello(processID: UInt32(bitPattern: getpid()), clientName: "early")))

        // The new process gets the listener and every stored fd, in systemd's order.
        let second = try systemd.start(daemon, arguments)
        #expect(systemd.receive { $0.contains("READY=1") }, "no READY=1; stderr: \(second.standardError)")
        let (replyID, reply) = try early.receive()
        #expect(replyID == helloID)
        guard case .hello(let hello) = reply else { Issue.record("HELLO answered with \(reply)"); return }
        #expect(hello.serverProcessID == UInt32(second.pid), "the connect made during the restart is served by the new process")

        // Every registration is back, awaiting its owner; the VMM reconnects and resumes with its tokens.
        #expect(try registrations(early) == before)
        let resumed = try VSMMUClient(socketPath: systemd.socketPath, firstRequestID: nextRequestID)
        try resumed.hello(name: "qemu")
        for (vsmmu, token) in tokens {
            resumed.adoptResumeToken(token, for: vsmmu)
            try resumed.resumeVSMMU(vsmmu)
        }
        #expect(try registrations(resumed) == before)
        guard case .vsmmus(let entries) = try resumed.list(.vsmmus).entries else { Issue.record("LIST"); return }
        #expect(entries.allSatisfy { $0.ownerProcessID == UInt32(bitPattern: getpid()) }, "resumed: owned again")
        // INVALIDATE works on the resumed vSMMU: a TLBI for the linked CD's ASID and a CMD_SYNC.
        #expect(try resumed.invalidate(vsmmu: vm, commands: [.tlbiNHASID(asid: 5), .sync()])
                == InvalidateReply(consumed: 2, syncsCompleted: 1))
        #expect(systemd.ignored.isEmpty, "\(systemd.ignored)")
        #expect(systemd.passedNames == ["vsmmud.socket"], "simulated vSMMUs store nothing, in either process")

        second.signal(SIGTERM)
        #expect(second.waitForExit() == 0, "stderr: \(second.standardError)")
    }

    /// The fd-store names of an iommufd vSMMU's descriptors, as the daemon gives them (`ServedVSMMU`):
    /// vSMMU 0x1a2b3c4d's viommu 0 iommufd and the VFIO cdev of its vSID 0x10.
    static let iommufdName = ServedVSMMU.iommufdName(VSMMUID(0x1a2b_3c4d), .init(0))
    static let cdevName = ServedVSMMU.cdevName(VSMMUID(0x1a2b_3c4d), 0x10)

    @Test func theDaemonsFdStoreNamesAreOnesSystemdKeeps() {
        #expect(Self.iommufdName == "iommufd-1a2b3c4d-0" && Self.cdevName == "cdev-1a2b3c4d-10")
        // The longest the daemon makes: vSMMU 0xffffffff, viommu 63, vSID 0xffffffff.
        for name in [Self.iommufdName, Self.cdevName, ServedVSMMU.iommufdName(VSMMUID(.max), .init(63)),
                     ServedVSMMU.cdevName(VSMMUID(.max), .max)] {
            #expect(SystemdFileDescriptorStore.isValidName(name), "\(name)")
            #expect(ServiceManagerHarness.fdnameIsValid(name), "\(name)")
        }
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func fdsAProcessStoredUnderTheDaemonsNamesReachTheNextVsmmudWhichRemovesTheOnesNoRecordClaims() async throws {
        let daemon = try #require(daemonPath)
        let config = try writeTemporaryFile("passed", Self.configuration)
        let state = try temporaryDirectory("passed-state")
        defer { unlink(config); try? FileManager.default.removeItem(atPath: state) }
        // The previous process: a child of this one (an exit test) that stores, through systemd's store
        // (sd_pid_notify_with_fds), both ends of a pipe under the names an iommufd vSMMU's iommufd and
        // cdev get. It finds the notify socket by our pid; NotifyAccess=all while it runs.
        let systemd = try ServiceManagerHarness(notifyPath: "/tmp/vsmmud-sd-names-\(getpid()).sock")
        systemd.acceptsEveryProcess = true
        await #expect(processExitsWith: .success) {
            let path = "/tmp/vsmmud-sd-names-\(getppid()).sock"
            setenv("NOTIFY_SOCKET", path, 1)
            guard let store = SystemdFileDescriptorStore(environment: ["NOTIFY_SOCKET": path]) else { exit(10) }
            var ends: [Int32] = [-1, -1]
            guard pipe(&ends) == 0 else { exit(11) }
            do {
                try store.store(ends[0], name: SystemctlRestartTests.iommufdName)
                try store.store(ends[1], name: SystemctlRestartTests.cdevName)
            } catch {
                exit(12)
            }
        }
        #expect(systemd.receive(limit: .seconds(30)) { $0.filter { $0 == "FDSTORE=1" }.count >= 2 })
        systemd.acceptsEveryProcess = false
        // The process is gone; its fds are not (the store holds both ends: neither hangs up).
        systemd.dropHungUp()
        #expect(systemd.passedNames == ["vsmmud.socket", Self.cdevName, Self.iommufdName])

        let process = try systemd.start(daemon, ["--config", config, "--state-dir", state, "--log-format", "console"])
        #expect(systemd.receive { $0.contains("READY=1") }, "no READY=1; stderr: \(process.standardError)")
        let stderr = process.standardError
        #expect(stderr.contains("fds from the fd store") && stderr.contains(Self.iommufdName) && stderr.contains(Self.cdevName),
                "the daemon got both under their names; stderr: \(stderr)")
        // The journal is empty: no vSMMU claims them, so the daemon closes them and takes them out of the
        // store (FDSTOREREMOVE=1 from the main process, which the harness honours).
        #expect(systemd.receive(limit: .seconds(30)) { _ in
            [Self.iommufdName, Self.cdevName].allSatisfy { name in
                systemd.messages.contains { $0.contains("FDSTOREREMOVE=1") && $0.contains("FDNAME=\(name)") }
            }
        }, "assignments: \(systemd.assignments); stderr: \(process.standardError)")
        #expect(systemd.passedNames == ["vsmmud.socket"])
        #expect(process.standardError.contains("inherited descriptor claimed by no vSMMU"), "stderr: \(process.standardError)")
        #expect(systemd.ignored.isEmpty, "\(systemd.ignored)")
        // The listener it was handed is close-on-exec (fdinfo's flags, octal, show O_CLOEXEC).
        let info = try String(contentsOfFile: "/proc/\(process.pid)/fdinfo/3", encoding: .utf8)
        let flags = info.split(separator: "\n").first { $0.hasPrefix("flags:") }
            .flatMap { Int($0.dropFirst("flags:".count).trimmingCharacters(in: .whitespaces), radix: 8) }
        #expect(flags.map { $0 & 0o2000000 != 0 } == true, "fdinfo: \(info)")
        process.signal(SIGTERM)
        #expect(process.waitForExit() == 0, "stderr: \(process.standardError)")
    }

    @Test func aStoredPipeIsReadableThroughTheFdTheNextProcessIsHanded() async throws {
        // The old process is a child of this one (an exit test): it finds the notify socket by our pid.
        let systemd = try ServiceManagerHarness(notifyPath: "/tmp/vsmmud-sd-store-\(getpid()).sock")
        systemd.acceptsEveryProcess = true
        await #expect(processExitsWith: .success) {
            let path = "/tmp/vsmmud-sd-store-\(getppid()).sock"
            setenv("NOTIFY_SOCKET", path, 1)
            guard let store = SystemdFileDescriptorStore(environment: ["NOTIFY_SOCKET": path]) else { exit(10) }
            var ends: [Int32] = [-1, -1]
            guard pipe(&ends) == 0 else { exit(11) }
            let text = Array("kept by the fd store\n".utf8)
            guard write(ends[1], text, text.count) == text.count else { exit(12) }
            let scratch = open("/dev/null", O_RDONLY)
            do {
                try store.store(ends[0], name: "pipe-read")
                try store.store(ends[1], name: "pipe-write")
                // The same open file again: systemd keeps the first (same_fd()).
                try store.store(ends[0], name: "pipe-read-again")
                try store.store(scratch, name: "scratch")
                try store.remove(name: "scratch")
            } catch {
                exit(13)
            }
            // An invalid name is refused before anything is sent.
            do {
                try store.store(ends[0], name: "bad:name")
                exit(14)
            } catch {
                if (error as? SystemdFileDescriptorStore.Failure)?.errno != EINVAL { exit(15) }
            }
        }
        #expect(systemd.receive(limit: .seconds(30)) { $0.filter { $0.hasPrefix("FDSTORE") }.count >= 5 })
        // Newest first, as service_collect_fds() passes them; the duplicate and the removed fd are gone.
        #expect(systemd.passedNames == ["vsmmud.socket", "pipe-write", "pipe-read"])

        // The next process reads through the fd it was handed what the old one wrote before it exited.
        let readIndex = try #require(systemd.passedNames.firstIndex(of: "pipe-read"))
        let readFD = 3 + readIndex
        let next = try systemd.start("/bin/sh", ["-c", "echo \"$LISTEN_FDS $LISTEN_FDNAMES\"; read -r line <&\(readFD); echo \"$line\""])
        #expect(next.waitForExit() == 0, "stderr: \(next.standardError)")
        #expect(next.standardOutput == "3 vsmmud.socket:pipe-write:pipe-read\nkept by the fd store\n")
    }

    /// What the daemon's naming meets in systemd: each viommu of a vSMMU stores a duplicate of the same
    /// VMM iommufd (`dup`, or the same file passed again with SCM_RIGHTS) under its own name, and
    /// `service_add_fd_store()` keeps one fd per open file (`same_fd()`: `kcmp(KCMP_FILE)`), so only the
    /// first name comes back; a different open file (another VMM's iommufd, a device's cdev) is kept.
    @Test func systemdKeepsOneNamePerOpenFileSoASecondViommusDupOfTheSameIommufdIsDropped() throws {
        let systemd = try ServiceManagerHarness()
        systemd.acceptsEveryProcess = true
        let sender = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(sender) }
        // Stand-ins for the VMM's iommufd (an open /dev/null) and a second, separately opened file.
        let iommufd = open("/dev/null", O_RDWR | O_CLOEXEC)
        let copy = dup(iommufd)
        let other = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(iommufd); close(copy); close(other) }
        let vsmmu = VSMMUID(0x77)
        let names = [ServedVSMMU.iommufdName(vsmmu, .init(0)), ServedVSMMU.iommufdName(vsmmu, .init(1)),
                     ServedVSMMU.iommufdName(VSMMUID(0x78), .init(0))]
        for (fd, name) in zip([iommufd, copy, other], names) {
            #expect(sendNotification(sender, to: systemd.notifyPath, SystemdFileDescriptorStore.storeMessage(name: name), fd: fd))
        }
        #expect(systemd.receive(limit: .seconds(10)) { $0.filter { $0 == "FDSTORE=1" }.count == 3 })
        #expect(systemd.passedNames == ["vsmmud.socket", names[2], names[0]], "viommu 1's name is gone with its fd")
    }

    @Test func theHarnessDropsAStoredFdThatHungUpAsSystemdDoesOnEPOLLHUP() throws {
        let systemd = try ServiceManagerHarness()
        systemd.acceptsEveryProcess = true
        var ends: [Int32] = [-1, -1]
        #expect(pipe(&ends) == 0)
        // Store the read end from this process (NotifyAccess=all), then close the write end: POLLHUP.
        let sender = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(sender) }
        #expect(sendNotification(sender, to: systemd.notifyPath, "FDSTORE=1\nFDNAME=reader", fd: ends[0]))
        close(ends[0])
        #expect(systemd.receive(limit: .seconds(10)) { $0.contains("FDSTORE=1") })
        #expect(systemd.passedNames == ["vsmmud.socket", "reader"])
        close(ends[1])
        systemd.dropHungUp()
        #expect(systemd.passedNames == ["vsmmud.socket"])
    }

    @Test func fdStoreNamesFollowSystemdsFdnameIsValid() {
        #expect(SystemdFileDescriptorStore.isValidName("iommufd-1a2b3c4d-0"))
        #expect(SystemdFileDescriptorStore.isValidName("vfio dev 3 (vSID 0x10)")) // spaces and brackets: printable ASCII
        #expect(SystemdFileDescriptorStore.isValidName(String(repeating: "x", count: 255)))
        #expect(!SystemdFileDescriptorStore.isValidName(String(repeating: "x", count: 256)))
        #expect(!SystemdFileDescriptorStore.isValidName(""))
        #expect(!SystemdFileDescriptorStore.isValidName("a:b"), "':' separates LISTEN_FDNAMES")
        #expect(!SystemdFileDescriptorStore.isValidName("a\nFDSTOREREMOVE=1"), "a control character would inject an assignment")
        #expect(!SystemdFileDescriptorStore.isValidName("caf\u{E9}"), "ASCII only")
        #expect(!SystemdFileDescriptorStore.isValidName("del\u{7F}"))
        #expect(SystemdFileDescriptorStore.storeMessage(name: "n") == "FDSTORE=1\nFDNAME=n")
        #expect(SystemdFileDescriptorStore.removeMessage(name: "n") == "FDSTOREREMOVE=1\nFDNAME=n")
        #expect(SystemdFileDescriptorStore(environment: [:]) == nil, "no NOTIFY_SOCKET: no store")
    }

    @Test func theListenerIsThePassedListeningSocketWhateverItsNameAndEveryOtherFdIsStoredByName() throws {
        let passed: [(name: String, fd: Int32)] = [("vsmmud.socket", 3), ("iommufd-7", 4), ("vfio-7-1", 5), ("iommufd-7", 6)]
        let split = try SocketActivation.classify(passed) { $0 == 3 }
        #expect(split.listener == 3 && split.listenerName == "vsmmud.socket")
        #expect(split.stored == ["iommufd-7": [4, 6], "vfio-7-1": [5]])
        // No socket unit (started alone): everything is stored.
        #expect(try SocketActivation.classify(passed) { _ in false }.stored.keys.sorted() == ["iommufd-7", "vfio-7-1", "vsmmud.socket"])
        #expect(throws: SocketActivation.Error.self) { try SocketActivation.classify(passed) { $0 <= 4 } }
    }
}

/// Sends one notification with `fd` in SCM_RIGHTS (what `sd_pid_notify_with_fds` sends), by hand.
func sendNotification(_ socket: Int32, to path: String, _ text: String, fd: Int32) -> Bool {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        let bytes = Array(path.utf8)
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    var bytes = Array(text.utf8)
    // One cmsghdr (16 bytes) and one int, padded to 8: CMSG_SPACE(4) = 24.
    var control = [UInt64](repeating: 0, count: 3)
    control.withUnsafeMutableBytes { raw in
        raw.storeBytes(of: UInt64(20), toByteOffset: 0, as: UInt64.self) // CMSG_LEN(4)
        raw.storeBytes(of: SOL_SOCKET, toByteOffset: 8, as: Int32.self)
        raw.storeBytes(of: Int32(SCM_RIGHTS), toByteOffset: 12, as: Int32.self)
        raw.storeBytes(of: fd, toByteOffset: 16, as: Int32.self)
    }
    let sent = bytes.withUnsafeMutableBytes { data in
        control.withUnsafeMutableBytes { controlRaw in
            withUnsafeMutablePointer(to: &address) { addressPointer in
                var vector = iovec(iov_base: data.baseAddress, iov_len: data.count)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var header = msghdr()
                    header.msg_name = UnsafeMutableRawPointer(addressPointer)
                    header.msg_namelen = socklen_t(MemoryLayout<sockaddr_un>.size)
                    header.msg_iov = vectorPointer
                    header.msg_iovlen = 1
                    header.msg_control = controlRaw.baseAddress
                    header.msg_controllen = controlRaw.count
                    return sendmsg(socket, &header, 0)
                }
            }
        }
    }
    return sent == text.utf8.count
}

/// Two daemons never share one journal: the state directory's lock (`DirectoryLock`).
@Suite struct StateDirectoryLockTests {
    static let enabled = daemonPath != nil || requireBuiltExecutables

    /// Starts vsmmud on a fresh socket with `state`, and waits for its READY=1 (or its exit).
    static func startDaemon(state: String, notify: NotifySocket) throws -> (SpawnedProcess, String) {
        let socket = uniquePath("lock", suffix: ".sock")
        let config = try writeTemporaryFile("lock", DaemonUnderSystemdTests.configuration())
        let daemon = try SpawnedProcess(try #require(daemonPath),
                                        ["--config", config, "--socket", socket, "--state-dir", state, "--log-format", "console"],
                                        environment: ["NOTIFY_SOCKET": notify.path])
        return (daemon, socket)
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func aSecondDaemonOnTheSameStateDirectoryExits75NamingTheHolderAndGetsInOnceTheFirstStopped() throws {
        let state = try temporaryDirectory("lock-state")
        defer { try? FileManager.default.removeItem(atPath: state) }
        let notify = try NotifySocket()
        let (first, _) = try Self.startDaemon(state: state, notify: notify)
        #expect(notify.waitFor { $0.contains { $0.contains("READY=1") } }, "stderr: \(first.standardError)")

        let (second, _) = try Self.startDaemon(state: state, notify: notify)
        #expect(second.waitForExit() == 75, "stderr: \(second.standardError)")
        #expect(second.standardError.contains("state directory \(state) is in use by another vsmmud (pid \(first.pid))"),
                "stderr: \(second.standardError)")
        #expect(!second.standardError.contains("Fatal error"))

        first.signal(SIGTERM)
        #expect(first.waitForExit() == 0, "stderr: \(first.standardError)")
        let (third, socket) = try Self.startDaemon(state: state, notify: notify)
        let client = try #require(DaemonUnderSystemdTests.connect(socket), "stderr: \(third.standardError)")
        #expect(try client.health().serverProcessID == UInt32(third.pid))
        third.signal(SIGTERM)
        #expect(third.waitForExit() == 0, "stderr: \(third.standardError)")
    }

    @Test(.enabled(if: enabled, "vsmmud was not built beside the tests"))
    func theLockDiesWithAKillNineSoTheNextDaemonGetsIn() throws {
        let state = try temporaryDirectory("lock-kill9")
        defer { try? FileManager.default.removeItem(atPath: state) }
        let notify = try NotifySocket()
        let (first, firstSocket) = try Self.startDaemon(state: state, notify: notify)
        #expect(DaemonUnderSystemdTests.connect(firstSocket) != nil, "stderr: \(first.standardError)")
        first.signal(SIGKILL)
        #expect(first.waitForExit() == 128 + SIGKILL)
        let (second, socket) = try Self.startDaemon(state: state, notify: notify)
        let client = try #require(DaemonUnderSystemdTests.connect(socket), "stderr: \(second.standardError)")
        #expect(try client.health().serverProcessID == UInt32(second.pid))
        second.signal(SIGTERM)
        #expect(second.waitForExit() == 0, "stderr: \(second.standardError)")
    }

    @Test func aSecondLockInTheSameProcessIsRefusedAndTheFirstReleasesItWhenItGoes() throws {
        let state = try temporaryDirectory("lock-inprocess")
        defer { try? FileManager.default.removeItem(atPath: state) }
        var first: DirectoryLock? = try DirectoryLock.acquire(directory: .init(state))
        #expect(first?.path.string == state + "/lock")
        // flock belongs to the open file description: a second open in this process is refused too.
        #expect(throws: DirectoryLock.Failure.held(directory: .init(state), holder: getpid())) {
            _ = try DirectoryLock.acquire(directory: .init(state))
        }
        first = nil
        // Released with the last fd of its open file description. Other tests of this process spawn
        // processes meanwhile, and a child holds a copy of every fd between its fork and its exec (where
        // O_CLOEXEC closes it): retry a bounded number of times while such a copy holds it. A lock that
        // was not released still fails.
        var again: DirectoryLock?
        for _ in 0..<500 where again == nil {
            do throws(DirectoryLock.Failure) { again = try DirectoryLock.acquire(directory: .init(state)) } catch {
                guard case .held = error else { throw error }
                usleep(2_000)
            }
        }
        #expect(again != nil, "the lock outlived its DirectoryLock")
        withExtendedLifetime(again) {}
        // A directory that cannot be created is an I/O failure, not "held".
        let failure = #expect(throws: DirectoryLock.Failure.self) {
            _ = try DirectoryLock.acquire(directory: .init("/nonexistent-vsmmud/state"))
        }
        guard case .io(let operation, _, _)? = failure else { Issue.record("not an I/O failure: \(String(describing: failure))"); return }
        #expect(operation == "mkdir")
    }
}
