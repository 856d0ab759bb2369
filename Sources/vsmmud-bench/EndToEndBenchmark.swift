import Foundation
import InvalidationEngine
import Logging
import PSMMU
import SMMUv3
import VSMMUSystem
import Synchronization
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol
import VSMMUTestSupport

#if canImport(Glibc)
import Glibc
#endif

// The daemon end to end, in release mode: an in-process `VSMMUServer` on a temporary Unix socket with
// three simulated pSMMUs (`smmu0`…`smmu2`, 32 host devices each), beside baselines measured in the same run:
//
// 1. N clients (1, 4, 16 threads; each its own connection and vSMMU with vSIDs 0x8, 0x10, 0x18 on the three
//    pSMMUs, ASIDs 1, 2, 3) × batches of 1, 16, 64, 256 TLBI_NH_VA (ASIDs in turn) + one CMD_SYNC: one
//    blocking INVALIDATE round trip per batch. Commands/s counts the TLBI_NH_VA commands (not the CMD_SYNC);
//    round trip p50/p99 in µs. Each cell is time-bounded.
// 2. The transport's limit: a bare Unix-socket echo server (a thread per connection reads a frame — 16-byte
//    header + payload — and writes back a 32-byte frame, the size of the daemon's INVALIDATE reply: 16-byte
//    header + 16-byte `vsmmu_invalidate_reply` without message), same frames, same client counts.
// 3. The QEMU-style path: one backend call per command — `SimulatedSMMU.invalidate(viommu:commands:)` with one
//    TLBI_NH_VA per call, in-process, on the pSMMU owning the command's ASID (the CMD_SYNC costs no call: the
//    kernel's ioctl is synchronous) — versus the daemon at batch 64, one client, both with the same cost model
//    on the three pSMMUs.
// 4. A replay of `linux-strict-cmdq.bin` (StreamIDs 0x8, 0x10, 0x18 on three pSMMUs, STEs/CDs from the
//    `ram_dump_final` rows of `linux-strict-ste-cd.csv`), cut after each CMD_SYNC: µs per sync round trip
//    beside the bare ping-pong (echo of 1-command frames).
//
// Sides that are compared (daemon and echo of a cell; the ping-pong with the 1-client batch-16 cell; the
// one-call-per-command path and the daemon) run interleaved, in 5 slices each, so that a neighbour's load
// on this shared 2-core machine falls on both sides of a ratio rather than on one.

// MARK: - Harness

/// Hands a non-Sendable object to exactly one thread at a time (the main thread sets up, one client thread
/// uses it during a cell, joined before the next).
private final class E2EHandoff<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// One cell's result: commands/s and round-trip percentiles.
private struct E2ECell {
    var commandsPerSecond: Double
    var p50: Double  // µs
    var p99: Double  // µs
    var roundTrips: Int
}

/// One side of a comparison: `threads` threads each repeating `roundTrip(thread)`; each round trip
/// carries `commandsPerRoundTrip` commands towards the rate.
private struct E2ESide {
    var threads: Int
    var commandsPerRoundTrip: Int
    var roundTrip: @Sendable (Int) -> Void
}

/// Runs each side for `seconds` in all, interleaved: `rounds` rounds, in each of which every side runs
/// for `seconds / rounds` in turn (after a 10 ms warm-up). Sides compared in one cell see the same
/// machine, which on a shared 2-core host matters more than any single long run: a neighbour's build
/// slows both, not one.
private func e2eRunInterleaved(_ sides: [E2ESide], seconds: Double, rounds: Int = 5) -> [E2ECell] {
    var samples = Array(repeating: [UInt64](), count: sides.count)
    let slice = seconds / Double(rounds)
    for _ in 0..<rounds {
        for (i, side) in sides.enumerated() {
            samples[i] += e2eRunSlice(threads: side.threads, seconds: slice, side.roundTrip)
        }
    }
    return zip(sides, samples).map { side, raw in
        let sorted = raw.sorted()
        return E2ECell(commandsPerSecond: Double(sorted.count * side.commandsPerRoundTrip) / seconds,
                       p50: quantileMicroseconds(sorted, 0.5), p99: quantileMicroseconds(sorted, 0.99), roundTrips: sorted.count)
    }
}

/// Runs `threads` threads that each repeat `roundTrip(thread)` for `seconds` (after a short warm-up),
/// timing each; `commandsPerRoundTrip` commands count towards the rate.
private func e2eRunCell(threads: Int, seconds: Double, commandsPerRoundTrip: Int,
                        _ roundTrip: @escaping @Sendable (Int) -> Void) -> E2ECell {
    let sorted = e2eRunSlice(threads: threads, seconds: seconds, warmUp: 0.05, roundTrip).sorted()
    return E2ECell(commandsPerSecond: Double(sorted.count * commandsPerRoundTrip) / seconds,
                   p50: quantileMicroseconds(sorted, 0.5), p99: quantileMicroseconds(sorted, 0.99), roundTrips: sorted.count)
}

/// The round-trip times (ns) of `threads` threads repeating `roundTrip(thread)` for `seconds` after
/// `warmUp` seconds.
private func e2eRunSlice(threads: Int, seconds: Double, warmUp: Double = 0.01,
                         _ roundTrip: @escaping @Sendable (Int) -> Void) -> [UInt64] {
    let samples = Locked<[UInt64]>([])
    let start = benchNow() + UInt64(warmUp * 1e9)
    let end = start + UInt64(seconds * 1e9)
    let workers = (0..<threads).map { thread in
        startBenchThread {
            var local: [UInt64] = []
            local.reserveCapacity(1 << 16)
            while true {
                let t0 = benchNow()
                if t0 >= end { break }
                roundTrip(thread)
                if t0 >= start { local.append(benchNow() - t0) }
            }
            samples.withLock { $0.append(contentsOf: local) }
        }
    }
    for worker in workers { worker.join() }
    return samples.withLock { $0 }
}

// MARK: - Raw Unix sockets

/// A `sockaddr_un` for `path`.
private func e2eAddress(_ path: String) -> sockaddr_un {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    precondition(bytes.count < MemoryLayout.size(ofValue: address.sun_path), "socket path too long: \(path)")
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (i, byte) in bytes.enumerated() { raw[i] = byte }
    }
    return address
}

/// Writes all of `count` bytes; false on error.
private func e2eWriteAll(_ fd: Int32, _ base: UnsafeRawPointer, _ count: Int) -> Bool {
    var done = 0
    while done < count {
        let n = write(fd, base + done, count - done)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}

/// Reads exactly `count` bytes; false on end of stream or error.
private func e2eReadExactly(_ fd: Int32, _ base: UnsafeMutableRawPointer, _ count: Int) -> Bool {
    var done = 0
    while done < count {
        let n = read(fd, base + done, count - done)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}

/// Connects to the Unix socket at `path`.
private func e2eConnect(_ path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    precondition(fd >= 0, "socket: errno \(errno)")
    var address = e2eAddress(path)
    let status = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    precondition(status == 0, "connect \(path): errno \(errno)")
    return fd
}

/// The transport's limit: a Unix-socket server that answers every frame (16-byte header with the payload
/// length in its first 4 bytes, little-endian, + payload) with a 32-byte frame (the header's type and
/// request id, payload length 16, 16 zero bytes): the size of the daemon's INVALIDATE reply.
private final class EchoServer: Sendable {
    static let replySize = 32
    let path: String
    private let listener: Int32
    private let stopping = Atomic<Bool>(false)
    private let acceptThread = Locked<OSThread?>(nil)

    init(path: String) {
        self.path = path
        unlink(path)
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        precondition(listener >= 0, "socket: errno \(errno)")
        var address = e2eAddress(path)
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        precondition(status == 0 && listen(listener, 64) == 0, "bind/listen \(path): errno \(errno)")
    }

    func start() {
        let thread = startBenchThread { [self] in
            while true {
                let fd = accept(listener, nil, nil)
                if stopping.load(ordering: .acquiring) { if fd >= 0 { close(fd) }; return }
                if fd < 0 { continue }
                _ = startBenchThread { EchoServer.serve(fd) }  // detached: ends when the client closes
            }
        }
        acceptThread.withLock { $0 = thread }
    }

    /// Echoes frames on `fd` until the peer closes.
    private static func serve(_ fd: Int32) {
        defer { close(fd) }
        var header = [UInt8](repeating: 0, count: 16)
        var payload = [UInt8](repeating: 0, count: WireProtocol.maximumFrameSize)
        var reply = [UInt8](repeating: 0, count: replySize)
        while true {
            guard header.withUnsafeMutableBytes({ e2eReadExactly(fd, $0.baseAddress!, 16) }) else { return }
            let length = Int(UInt32(header[0]) | UInt32(header[1]) << 8 | UInt32(header[2]) << 16 | UInt32(header[3]) << 24)
            guard length <= payload.count,
                  payload.withUnsafeMutableBytes({ e2eReadExactly(fd, $0.baseAddress!, length) }) else { return }
            reply[0] = 16; reply[1] = 0; reply[2] = 0; reply[3] = 0
            for i in 4..<16 { reply[i] = header[i] }
            guard reply.withUnsafeBytes({ e2eWriteAll(fd, $0.baseAddress!, replySize) }) else { return }
        }
    }

    func stop() {
        stopping.store(true, ordering: .releasing)
        close(e2eConnect(path))  // wakes `accept`
        acceptThread.withLock { $0?.join() }
        close(listener)
        unlink(path)
    }
}

/// One echo round trip on `fd`: writes `frame`, reads the 32-byte reply.
private func e2eEchoRoundTrip(_ fd: Int32, _ frame: [UInt8]) {
    var reply = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
    let ok = frame.withUnsafeBytes { e2eWriteAll(fd, $0.baseAddress!, frame.count) }
        && withUnsafeMutableBytes(of: &reply) { e2eReadExactly(fd, $0.baseAddress!, EchoServer.replySize) }
    precondition(ok, "echo round trip failed: errno \(errno)")
}

// MARK: - Daemon set-up

/// A translating guest STE (V=1, CONFIG=S1_TRANS, one CD).
func e2eSTE() -> StreamTableEntry {
    .stage1(contextTable: 0x4380_4000)
}

/// The vSIDs of every benchmark vSMMU, one per pSMMU.
let e2eStreamIDs: [StreamID] = [0x8, 0x10, 0x18]
let e2eDevicesPerPSMMU: UInt32 = 32

/// A handshaken connection owning one vSMMU with `streamIDs[p]` on pSMMU `p` (host device
/// `32·p + deviceSlot`), linked with `stes[p]` and `cds[p]`.
func e2eDaemonClient(path: String, deviceSlot: UInt32, stes: [StreamTableEntry],
                             cds: [ContextDescriptor]) throws -> (client: VSMMUClient, vsmmu: VSMMUID) {
    let client = try VSMMUClient(socketPath: path)
    try client.hello(name: "e2e-bench-\(deviceSlot)")
    let vsmmu = try client.createVSMMU(name: "bench\(deviceSlot)")
    for (p, sid) in e2eStreamIDs.enumerated() {
        let hostDevice = e2eDevicesPerPSMMU * UInt32(p) + deviceSlot
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu\(p)", hostDeviceID: hostDevice).viommu
        try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: hostDevice, streamID: sid)
        try client.linkSTE(vsmmu: vsmmu, streamID: sid, ste: stes[p], contextDescriptors: [cds[p]])
    }
    return (client, vsmmu)
}

/// `size` TLBI_NH_VA (ASIDs 1, 2, 3 in turn, one per pSMMU) + CMD_SYNC.
func e2eBatch(size: Int) -> [Command] {
    (0..<size).map { i in Command.tlbiNHVA(asid: ASID(i % 3 + 1), address: UInt64(0x10_0000 + i) << 12) } + [.sync()]
}

/// One daemon INVALIDATE round trip with a pre-encoded frame; checks the reply.
func e2eDaemonRoundTrip(_ client: VSMMUClient, _ frame: [UInt8], expectedConsumed: UInt32) {
    do {
        try client.sendBytes(frame)
        let (_, response) = try client.receive()
        guard case .invalidate(let reply) = response, reply.failure == nil, reply.consumed == expectedConsumed else {
            preconditionFailure("unexpected INVALIDATE reply: \(response)")
        }
    } catch {
        preconditionFailure("INVALIDATE failed: \(error)")
    }
}

// MARK: - Trace

/// `../shared`: `$VSMMUD_SHARED`, else `../shared` from the current directory or from this source file.
func e2eSharedDirectory() -> String? {
    let environment = ProcessInfo.processInfo.environment
    var candidates: [String] = []
    if let shared = environment["VSMMUD_SHARED"] { candidates.append(shared) }
    let cwd = FileManager.default.currentDirectoryPath
    candidates += [cwd + "/../shared", cwd + "/shared"]
    let source = URL(fileURLWithPath: #filePath)
    candidates.append(source.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("shared").path)
    return candidates.first { FileManager.default.fileExists(atPath: $0 + "/traces/linux-strict-cmdq.bin") }
}

// MARK: - Formatting

func e2eRate(_ rate: Double) -> String { String(format: "%.2f M/s", rate / 1e6) }
func e2eMicros(_ value: Double) -> String { String(format: "%.1f", value) }
func e2eRatio(_ value: Double) -> String { String(format: "%.2f×", value) }
func e2eAim(_ met: Bool) -> String { met ? "met" : "NOT met" }

// MARK: - Profiling one side

/// `vsmmud-bench e2e-one daemon|echo|queue CLIENTS BATCH SECONDS [RING-CAPACITY [DRAIN-POLICY [POLL-US]]]`: one cell alone, for `strace -f -c`,
/// `perf` or `valgrind --tool=callgrind`, with the process's context switches per round trip
/// (`getrusage`: client and server threads together).
func runEndToEndProfile(_ arguments: [String]) {
    guard arguments.count >= 4, ["daemon", "echo", "queue"].contains(arguments[0]),
          let clients = Int(arguments[1]), let size = Int(arguments[2]), let seconds = Double(arguments[3]),
          clients > 0, size >= 0, seconds > 0 else {
        print("usage: vsmmud-bench e2e-one daemon|echo|queue CLIENTS BATCH SECONDS [RING-CAPACITY [inline|inline+thread|thread [POLL-US]]]")
        return
    }
    let socketPath = "/tmp/vsmmud-e2e-\(getpid()).sock"
    let echoPath = "/tmp/vsmmud-e2e-echo-\(getpid()).sock"
    let pSMMUs = (0..<3).map { p in
        SimulatedSMMU(name: "smmu\(p)", deviceCount: Int(e2eDevicesPerPSMMU), firstHostDeviceID: e2eDevicesPerPSMMU * UInt32(p),
                      firstStreamID: StreamID(e2eDevicesPerPSMMU * UInt32(p)))
    }
    var logger = Logger(label: "vsmmud-e2e")
    logger.logLevel = .critical
    // Optional 5th argument: the ring capacity of every viommu queue (default: the daemon's).
    var engine = VSMMUEngine.Configuration()
    if arguments.count > 4, let capacity = Int(arguments[4]) { engine.queue.capacity = capacity }
    // Optional 6th argument: the drain policy (inline, inline+thread, thread).
    if arguments.count > 5 {
        switch arguments[5] {
        case "inline": engine.queue.drainPolicy = .inline
        case "thread": engine.queue.drainPolicy = .drainThread
        default: engine.queue.drainPolicy = .inlineWithDrainThread
        }
    }
    // Optional 7th argument: the daemon's request (and queue) polling window in µs (default: the daemon's).
    let poll = arguments.count > 6 ? Int(arguments[6]).map { Duration.microseconds(max(0, $0)) } : nil
    let server = VSMMUServer(configuration: .init(socketPath: socketPath, pSMMUs: pSMMUs.map { .simulated($0) },
                                                  limits: ServerLimits(maximumVSMMUs: 64), engine: engine,
                                                  requestPolling: poll ?? .microseconds(VSMMUServer.Configuration.defaultRequestPollMicroseconds)),
                             logger: logger)
    let echo = EchoServer(path: echoPath)
    do { try server.start() } catch {
        print("e2e: cannot start the daemon on \(socketPath): \(error)")
        return
    }
    echo.start()
    defer {
        server.stop()
        echo.stop()
    }
    let cds = (0..<3).map { ContextDescriptor.valid(asid: ASID($0 + 1)) }
    let batch = e2eBatch(size: size)
    let cell: E2ECell
    let before = e2eContextSwitches()
    if arguments[0] == "queue" {
        // The shared queue (issue 13): each client thread maps a queue and submits + waits through it; the
        // daemon's consumer threads run in this process, for callgrind's --separate-threads.
        let queues: [E2EHandoff<(client: VSMMUClient, queue: SharedCommandQueue)>]
        do {
            queues = try (0..<clients).map { slot in
                let (client, vsmmu) = try e2eDaemonClient(path: socketPath, deviceSlot: UInt32(slot), stes: Array(repeating: e2eSTE(), count: 3),
                                                          cds: cds)
                let queue = try client.mapQueue(vsmmu: vsmmu, log2Entries: 10)
                // VSMMUD_BENCH_SPIN: the VMM's spin before it sleeps on call (default: the producer's).
                if let spin = ProcessInfo.processInfo.environment["VSMMUD_BENCH_SPIN"].flatMap({ Int($0) }) { queue.spinIterations = spin }
                return E2EHandoff((client, queue))
            }
        } catch {
            print("e2e: queue set-up failed: \(error)")
            return
        }
        cell = e2eRunCell(threads: clients, seconds: seconds, commandsPerRoundTrip: size) { thread in
            e2eQueueRoundTrip(queues[thread].value.queue, batch)
        }
        for handoff in queues {
            let (client, queue) = handoff.value
            if let stats = try? client.stats(vsmmu: queue.vsmmu) {
                let keys: [(String, StatKey)] = [("syncs", .queueSyncs), ("kicks", .queueKicks), ("calls", .queueCalls),
                                                 ("polls caught", .queuePollsCaught), ("polls missed", .queuePollsMissed)]
                print("queue of vSMMU \(queue.vsmmu.rawValue): " + keys.map { "\($0.0) \(stats.value($0.1) ?? 0)" }.joined(separator: ", "))
            }
        }
    } else if arguments[0] == "daemon" {
        let daemonClients: [E2EHandoff<(client: VSMMUClient, vsmmu: VSMMUID)>]
        do {
            daemonClients = try (0..<clients).map { slot in
                E2EHandoff(try e2eDaemonClient(path: socketPath, deviceSlot: UInt32(slot), stes: Array(repeating: e2eSTE(), count: 3), cds: cds))
            }
        } catch {
            print("e2e: daemon set-up failed: \(error)")
            return
        }
        let frames = daemonClients.map { (try? Request.invalidate(Invalidate(vsmmu: $0.value.vsmmu, commands: batch)).encode(requestID: 1)) ?? [] }
        cell = e2eRunCell(threads: clients, seconds: seconds, commandsPerRoundTrip: size) { thread in
            e2eDaemonRoundTrip(daemonClients[thread].value.client, frames[thread], expectedConsumed: UInt32(size + 1))
        }
    } else {
        let fds = (0..<clients).map { _ in e2eConnect(echoPath) }
        defer { for fd in fds { close(fd) } }
        let frame = (try? Request.invalidate(Invalidate(vsmmu: VSMMUID(1), commands: batch)).encode(requestID: 1)) ?? []
        cell = e2eRunCell(threads: clients, seconds: seconds, commandsPerRoundTrip: size) { thread in
            e2eEchoRoundTrip(fds[thread], frame)
        }
    }
    let after = e2eContextSwitches()
    let perRoundTrip = { (a: Int, b: Int) in String(format: "%.2f", Double(b - a) / Double(max(cell.roundTrips, 1))) }
    print("\(arguments[0]) clients \(clients) batch \(size): \(e2eRate(cell.commandsPerSecond)), \(cell.roundTrips) round trips, "
          + "p50 \(e2eMicros(cell.p50)) µs, p99 \(e2eMicros(cell.p99)) µs; per round trip (whole process): "
          + "voluntary context switches \(perRoundTrip(before.voluntary, after.voluntary)), "
          + "involuntary \(perRoundTrip(before.involuntary, after.involuntary))")
}

/// The process's voluntary and involuntary context switches so far (`getrusage(RUSAGE_SELF)`).
func e2eContextSwitches() -> (voluntary: Int, involuntary: Int) {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return (usage.ru_nvcsw, usage.ru_nivcsw)
}

// MARK: - Benchmark

func runEndToEndBenchmark(requestPollMicroseconds: Int) {
    let began = benchNow()
    let cellSeconds = 0.5
    let clientCounts = [1, 4, 16]
    let batchSizes = [1, 16, 64, 256]
    let maxClients = clientCounts.max() ?? 1

    let socketPath = "/tmp/vsmmud-e2e-\(getpid()).sock"
    let echoPath = "/tmp/vsmmud-e2e-echo-\(getpid()).sock"
    let pSMMUs = (0..<3).map { p in
        SimulatedSMMU(name: "smmu\(p)", deviceCount: Int(e2eDevicesPerPSMMU), firstHostDeviceID: e2eDevicesPerPSMMU * UInt32(p),
                      firstStreamID: StreamID(e2eDevicesPerPSMMU * UInt32(p)))
    }
    var logger = Logger(label: "vsmmud-e2e")
    logger.logLevel = .critical
    let server = VSMMUServer(configuration: .init(socketPath: socketPath, pSMMUs: pSMMUs.map { .simulated($0) },
                                                  limits: ServerLimits(maximumVSMMUs: 64),
                                                  requestPolling: .microseconds(requestPollMicroseconds)),
                             logger: logger)
    let echo = EchoServer(path: echoPath)
    do {
        try server.start()
    } catch {
        print("e2e: cannot start the daemon on \(socketPath): \(error)")
        return
    }
    echo.start()
    defer {
        server.stop()
        echo.stop()
    }

    // Connections: one daemon connection + vSMMU and one echo connection per client thread.
    let cds = (0..<3).map { ContextDescriptor.valid(asid: ASID($0 + 1)) }
    let daemonClients: [E2EHandoff<(client: VSMMUClient, vsmmu: VSMMUID)>]
    do {
        daemonClients = try (0..<maxClients).map { slot in
            E2EHandoff(try e2eDaemonClient(path: socketPath, deviceSlot: UInt32(slot), stes: Array(repeating: e2eSTE(), count: 3), cds: cds))
        }
    } catch {
        print("e2e: daemon set-up failed: \(error)")
        return
    }
    let echoFDs = (0..<maxClients).map { _ in e2eConnect(echoPath) }
    defer { for fd in echoFDs { close(fd) } }

    /// Frames per client (the vSMMU id differs), for batch `size`.
    func frames(size: Int) -> [[UInt8]] {
        let batch = e2eBatch(size: size)
        return daemonClients.map { handoff in
            // The batch is within the default limits: encoding cannot fail.
            (try? Request.invalidate(Invalidate(vsmmu: handoff.value.vsmmu, commands: batch)).encode(requestID: 1)) ?? []
        }
    }

    // 1 + 2: the matrix.
    print("== End to end: in-process vsmmud, 3 simulated pSMMUs (cost model off), Unix socket; \(cellSeconds) s per side "
          + "and cell, daemon and echo interleaved in 5 slices; daemon request polling \(requestPollMicroseconds) µs ==")
    print("   batch = N × TLBI_NH_VA + CMD_SYNC, one blocking INVALIDATE round trip per batch per client;")
    print("   echo = bare Unix-socket echo of the same frames (32-byte reply); commands/s counts the TLBI_NH_VA")
    print(column("clients", 8) + column("batch", 6) + column("daemon cmd/s", 14) + column("echo cmd/s", 14) + column("d/e", 7)
          + column("daemon p50/p99 µs", 19) + column("echo p50/p99 µs", 17) + "p50 d/e, p99 d/e")
    var results: [String: (daemon: E2ECell, echo: E2ECell)] = [:]
    // The bare ping-pong: echo of 1-command (CMD_SYNC) frames, one client, measured interleaved with the
    // 1-client batch-16 cell it is compared with.
    let pingFrame = (try? Request.invalidate(Invalidate(vsmmu: daemonClients[0].value.vsmmu, commands: [.sync()])).encode(requestID: 1)) ?? []
    var pingCell: E2ECell?
    for clients in clientCounts {
        for size in batchSizes {
            let daemonFrames = frames(size: size)
            let expected = UInt32(size + 1)
            var sides = [
                E2ESide(threads: clients, commandsPerRoundTrip: size) { thread in
                    e2eDaemonRoundTrip(daemonClients[thread].value.client, daemonFrames[thread], expectedConsumed: expected)
                },
                E2ESide(threads: clients, commandsPerRoundTrip: size) { thread in
                    e2eEchoRoundTrip(echoFDs[thread], daemonFrames[thread])
                },
            ]
            let withPing = clients == 1 && size == 16
            if withPing { sides.append(E2ESide(threads: 1, commandsPerRoundTrip: 1) { _ in e2eEchoRoundTrip(echoFDs[0], pingFrame) }) }
            let cells = e2eRunInterleaved(sides, seconds: cellSeconds)
            let (daemon, echoCell) = (cells[0], cells[1])
            if withPing { pingCell = cells[2] }
            results["\(clients)/\(size)"] = (daemon, echoCell)
            print(column("\(clients)", 8) + column("\(size)", 6) + column(e2eRate(daemon.commandsPerSecond), 14)
                  + column(e2eRate(echoCell.commandsPerSecond), 14)
                  + column(e2eRatio(daemon.commandsPerSecond / echoCell.commandsPerSecond), 7)
                  + column(e2eMicros(daemon.p50) + " / " + e2eMicros(daemon.p99), 19)
                  + column(e2eMicros(echoCell.p50) + " / " + e2eMicros(echoCell.p99), 17)
                  + e2eRatio(daemon.p50 / echoCell.p50) + ", " + e2eRatio(daemon.p99 / echoCell.p99))
        }
    }

    let ping = pingCell ?? e2eRunCell(threads: 1, seconds: cellSeconds, commandsPerRoundTrip: 1) { _ in
        e2eEchoRoundTrip(echoFDs[0], pingFrame)
    }
    print("bare ping-pong (echo of 1-command frames, 1 client): p50 \(e2eMicros(ping.p50)) µs, p99 \(e2eMicros(ping.p99)) µs")

    print("aims:")
    for clients in clientCounts {
        if let cell = results["\(clients)/64"] {
            let ratio = cell.daemon.commandsPerSecond / cell.echo.commandsPerSecond
            print("  throughput at batch 64, \(clients) client(s): daemon/echo \(e2eRatio(ratio)) (aim ≥ 0.70×): \(e2eAim(ratio >= 0.7))")
        }
    }
    if let cell = results["1/16"] {
        let p50 = cell.daemon.p50 / ping.p50, p99 = cell.daemon.p99 / ping.p99
        print("  sync round trip at batch 16, 1 client, vs bare ping-pong: p50 \(e2eRatio(p50)) (aim ≤ 1.30×): \(e2eAim(p50 <= 1.3)); "
              + "p99 \(e2eRatio(p99)) (aim ≤ 2.00×): \(e2eAim(p99 <= 2.0))")
        let sameP50 = cell.daemon.p50 / cell.echo.p50, sameP99 = cell.daemon.p99 / cell.echo.p99
        print("  (vs the echo of the same 16+1-command frame: p50 \(e2eRatio(sameP50)) \(e2eAim(sameP50 <= 1.3)), "
              + "p99 \(e2eRatio(sameP99)) \(e2eAim(sameP99 <= 2.0)))")
    }

    // 3: QEMU-style, one backend call per command, versus the daemon at batch 64, cost model on.
    print("")
    print("== One backend call per command (QEMU-style, in-process) vs the daemon at batch 64; 1 client, cost model on ==")
    let direct: [ViommuHandle]
    do {
        direct = try pSMMUs.enumerated().map { p, smmu throws(BackendError) in
            try smmu.attachViommu(ViommuAttachRequest(hostDeviceID: e2eDevicesPerPSMMU * UInt32(p) + e2eDevicesPerPSMMU - 1))
        }
    } catch {
        print("e2e: direct viommu set-up failed: \(error)")
        return
    }
    let directPairs = E2EHandoff(zip(pSMMUs, direct).map { ($0, $1) })
    let batch64 = e2eBatch(size: 64)
    let tlbis = E2EHandoff(Array(batch64.dropLast()))
    let frame64 = frames(size: 64)
    for model in [CostModel(nanosecondsPerCall: 2_000, nanosecondsPerCommand: 50),
                  CostModel(nanosecondsPerCall: 10_000, nanosecondsPerCommand: 50)] {
        for smmu in pSMMUs { smmu.costModel = model }
        let cells = e2eRunInterleaved([
            E2ESide(threads: 1, commandsPerRoundTrip: 64) { _ in
                for (i, command) in tlbis.value.enumerated() {
                    let (smmu, viommu) = directPairs.value[i % 3]  // ASID i % 3 + 1 lives on pSMMU i % 3
                    var one = command
                    let result = withUnsafePointer(to: &one) { smmu.invalidate(viommu: viommu, commands: UnsafeBufferPointer(start: $0, count: 1)) }
                    precondition(result.isComplete(of: 1), "direct invalidate failed: \(result)")
                }
            },
            E2ESide(threads: 1, commandsPerRoundTrip: 64) { _ in
                e2eDaemonRoundTrip(daemonClients[0].value.client, frame64[0], expectedConsumed: 65)
            },
        ], seconds: cellSeconds)
        let (perCommand, daemon) = (cells[0], cells[1])
        let speedUp = daemon.commandsPerSecond / perCommand.commandsPerSecond
        print("cost model \(model.nanosecondsPerCall) ns/call + \(model.nanosecondsPerCommand) ns/command (shared queue): "
              + "one call per command \(e2eRate(perCommand.commandsPerSecond)) (p50 \(e2eMicros(perCommand.p50)) µs per 64), "
              + "daemon batch 64 \(e2eRate(daemon.commandsPerSecond)) (p50 \(e2eMicros(daemon.p50)) µs); "
              + "speed-up \(e2eRatio(speedUp)) (aim ≥ 10×): \(e2eAim(speedUp >= 10))")
    }
    for smmu in pSMMUs { smmu.costModel = .free }
    for (smmu, viommu) in directPairs.value { try? smmu.detachViommu(viommu) }

    // 4: the strict Linux trace.
    print("")
    guard let shared = e2eSharedDirectory(), let trace = try? RecordedGuestTrace(directory: shared + "/traces", name: "linux-strict") else {
        print("== Trace replay: skipped (../shared/traces/linux-strict-cmdq.bin not found; set VSMMUD_SHARED) ==")
        print("e2e total \(String(format: "%.1f", Double(benchNow() - began) / 1e9)) s")
        return
    }
    let stes = e2eStreamIDs.map { trace.stes[$0] ?? e2eSTE() }
    let traceCDs = e2eStreamIDs.enumerated().map { p, sid in trace.cds[sid] ?? .valid(asid: ASID(p + 1)) }
    let batches = trace.batches
    print("== Replay of linux-strict-cmdq.bin (\(trace.commands.count) commands, \(batches.count) batches cut after CMD_SYNC), "
          + "StreamIDs 0x8/0x10/0x18 on smmu0/1/2, cost model off ==")
    do {
        let (client, vsmmu) = try e2eDaemonClient(path: socketPath, deviceSlot: UInt32(maxClients), stes: stes, cds: traceCDs)
        var samples: [UInt64] = []
        samples.reserveCapacity(batches.count)
        var failures = 0, syncs = 0
        let replayStart = benchNow()
        for batch in batches {
            let t0 = benchNow()
            let reply = try client.invalidate(vsmmu: vsmmu, commands: batch)
            let elapsed = benchNow() - t0
            if reply.failure != nil { failures += 1 }
            if batch.last?.opcode == .sync { samples.append(elapsed); syncs += Int(reply.syncsCompleted) }
        }
        let replaySeconds = Double(benchNow() - replayStart) / 1e9
        samples.sort()
        let p50 = quantileMicroseconds(samples, 0.5), p99 = quantileMicroseconds(samples, 0.99)
        print("replay: \(samples.count) sync round trips in \(String(format: "%.2f", replaySeconds)) s, \(syncs) syncs completed, "
              + "\(failures) batches with an error; µs per sync p50 \(e2eMicros(p50)), p99 \(e2eMicros(p99))")
        print("bare ping-pong p50 \(e2eMicros(ping.p50)), p99 \(e2eMicros(ping.p99)): replay/ping-pong p50 \(e2eRatio(p50 / ping.p50)), "
              + "p99 \(e2eRatio(p99 / ping.p99))")
    } catch {
        print("e2e: replay failed: \(error)")
    }
    print("e2e total \(String(format: "%.1f", Double(benchNow() - began) / 1e9)) s")
}
