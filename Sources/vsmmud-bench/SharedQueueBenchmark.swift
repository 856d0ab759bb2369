import Foundation
import InvalidationEngine
import Logging
import PSMMU
import SMMUv3
import SharedQueue
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol
import VSMMUSystem
import VSMMUTestSupport

#if canImport(Glibc)
import Glibc
#endif

// The shared command queue end to end (issue 13 §5), in release mode. The daemon runs in **another
// process**: this binary re-executed as `vsmmud-bench e2e-daemon SOCKET POLL-US` (a `VSMMUServer` with the
// three simulated pSMMUs of the e2e benchmark, cost model off), so the VMM side (this process) reaches it
// only through the Unix socket and the shared memory. Beside it, in one run and interleaved (5 rounds, each
// side in turn in each round):
//
// - `queue`: the shared queue — `SharedCommandQueue.submit` + `waitForSync` (spin, then sleep on call);
// - `socket`: the same batch by INVALIDATE on the same daemon (one blocking round trip);
// - `engine`: the in-process engine on the same batches (`VSMMUEngine.submit(_:).wait()` over the same
//   kind of simulated pSMMUs, STEs and CDs): the floor of any out-of-process design;
// - `ping-pong`: a bare shared-memory ping-pong between this process and a peer process (this binary as
//   `vsmmud-bench e2e-pingpong-peer PATH`, which maps the same memfd through /proc/PID/fd): one cache
//   line each way, both sides spinning: the transport's floor.
//
// Cells: generated batches of 1, 16 and 64 TLBI_NH_VA + CMD_SYNC (p50/p99 per sync, commands/s), and the
// replay of `linux-strict-cmdq.bin` cut after each CMD_SYNC. The daemon's CPU per sync is its process's
// utime+stime (`/proc/PID/stat`, all threads, 10 ms ticks) over the side's slices, divided by the syncs,
// and the same from the threads' `/proc/PID/task/*/schedstat` run time (ns). Then the idle cost: 4
// connected VMs with mapped queues and idle guests, the daemon's CPU over 10 s.

// MARK: - The daemon child and the ping-pong peer

/// `vsmmud-bench e2e-daemon SOCKET POLL-US`: serves until its standard input closes.
func runEndToEndDaemonChild(_ arguments: [String]) {
    guard let path = arguments.first else { print("usage: vsmmud-bench e2e-daemon SOCKET [POLL-US]"); exit(2) }
    let poll = arguments.dropFirst().first.flatMap { Int($0) } ?? VSMMUServer.Configuration.defaultRequestPollMicroseconds
    var logger = Logger(label: "vsmmud-e2e-daemon")
    logger.logLevel = .critical
    var configuration = VSMMUServer.Configuration(socketPath: path, pSMMUs: queueBenchPSMMUs().map { .simulated($0) },
                                                  limits: ServerLimits(maximumVSMMUs: 64), requestPolling: .microseconds(max(0, poll)))
    // Optional third argument: the engine's drain policy (default: the daemon's, inline+thread).
    switch arguments.dropFirst(2).first {
    case "inline": configuration.engine.queue.drainPolicy = .inline
    case "thread": configuration.engine.queue.drainPolicy = .drainThread
    default: break
    }
    let server = VSMMUServer(configuration: configuration, logger: logger)
    do { try server.start() } catch {
        print("e2e-daemon: cannot start on \(path): \(error)")
        exit(1)
    }
    _ = write(1, "ready\n", 6)
    var byte: UInt8 = 0
    while read(0, &byte, 1) > 0 {}
    server.stop()
    exit(0)
}

/// The three simulated pSMMUs of the e2e benchmark (32 host devices each).
func queueBenchPSMMUs() -> [SimulatedSMMU] {
    (0..<3).map { p in
        SimulatedSMMU(name: "smmu\(p)", deviceCount: Int(e2eDevicesPerPSMMU), firstHostDeviceID: e2eDevicesPerPSMMU * UInt32(p),
                      firstStreamID: StreamID(e2eDevicesPerPSMMU * UInt32(p)))
    }
}

/// The ping-pong memory: a shared queue's header, used as two cache lines — the parent stores a number in
/// PROD (release), the peer answers it in CONS — so that the floor moves exactly the lines the queue moves.
/// `error_ack` = 1 tells the peer to end.
private let pingPongGeometry = SharedQueueGeometry(log2Entries: 8)!

/// `vsmmud-bench e2e-pingpong-peer PATH`: maps PATH (a memfd, through /proc) and answers each PROD in
/// CONS until `error_ack` is 1.
func runPingPongPeer(_ arguments: [String]) {
    guard let path = arguments.first else { exit(2) }
    let fd = open(path, O_RDWR)
    guard fd >= 0, let base = try? SystemCall.mapShared(fd, length: pingPongGeometry.requiredSize),
          let line = SharedQueueRegion(base: base, length: pingPongGeometry.requiredSize, geometry: pingPongGeometry) else {
        print("e2e-pingpong-peer: cannot map \(path): errno \(errno)")
        exit(1)
    }
    _ = write(1, "ready\n", 6)
    var last = line.loadProducer()
    var looks = 0
    var idleLooks = 0
    while true {
        let ping = line.loadProducer()
        if ping != last {
            line.storeConsumer(ping)
            last = ping
            idleLooks = 0
            continue
        }
        looks &+= 1
        idleLooks &+= 1
        if looks & 0xFFFF == 0, line.loadErrorAcknowledgement() == 1 { exit(0) }
        // Spin only while the ping-pong side runs (pings come back to back then): idle for ~1 ms of
        // looks, sleep between looks. Spinning through the other sides' slices took one of the machine's
        // two CPUs from the daemon and the VMM for the whole run: ~10 % of the queue's syncs missed the
        // consumer's poll window and paid a kick and a wake-up. A slice's 10-ms warm-up wakes it.
        if idleLooks > 1_000_000 { usleep(200) }
    }
}

// MARK: - Child processes

/// A child process of this binary: started with `arguments`, ready once it printed a line; ended by
/// closing its standard input (the daemon) or by the caller (the peer).
final class BenchChild {
    let process = Process()
    private let input = Pipe()
    private let output = Pipe()

    init(_ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = arguments
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        let line = output.fileHandleForReading.availableData
        guard String(decoding: line, as: UTF8.self).hasPrefix("ready") else {
            throw BenchChildError(message: "child \(arguments) said: \(String(decoding: line, as: UTF8.self))")
        }
    }

    var pid: Int32 { process.processIdentifier }

    /// Closes the child's standard input and waits for it.
    func finish() {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }
}

struct BenchChildError: Error, CustomStringConvertible { var message: String; var description: String { message } }

/// A process's CPU time so far: utime+stime from `/proc/PID/stat` (ns, 10 ms resolution) and the sum of
/// its live threads' run time from `/proc/PID/task/*/schedstat` (ns).
func processCPU(_ pid: Int32) -> (stat: UInt64, schedstat: UInt64) {
    var stat: UInt64 = 0
    if let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") {
        let fields = text[text.index(after: close)...].split(separator: " ")
        if fields.count > 12, let user = UInt64(fields[11]), let system = UInt64(fields[12]) {
            stat = (user + system) * 1_000_000_000 / UInt64(sysconf(Int32(_SC_CLK_TCK)))
        }
    }
    var schedstat: UInt64 = 0
    if let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") {
        for task in tasks {
            if let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/schedstat", encoding: .utf8),
               let first = text.split(separator: " ").first, let ns = UInt64(first) {
                schedstat += ns
            }
        }
    }
    return (stat, schedstat)
}

// MARK: - Sides

/// One side of a queue-benchmark cell: a round trip (one sync), and whether the daemon child does its work.
private struct QueueSide {
    var name: String
    var commandsPerRoundTrip: Int
    var usesDaemon: Bool
    var roundTrip: () -> Void
}

/// One side's figures over the cell.
private struct QueueSideResult {
    var samples: [UInt64] = []
    var seconds: Double = 0
    var daemonStat: UInt64 = 0
    var daemonSchedstat: UInt64 = 0
    var p50: Double { quantileMicroseconds(samples, 0.5) }
    var p99: Double { quantileMicroseconds(samples, 0.99) }
}

/// Runs each side for `seconds / rounds` per round, `rounds` rounds, in turn; samples sorted.
private func queueRunInterleaved(_ sides: [QueueSide], seconds: Double, rounds: Int = 5, daemon: Int32) -> [QueueSideResult] {
    let printsSlices = ProcessInfo.processInfo.environment["VSMMUD_BENCH_SLICES"] == "1"
    var results = Array(repeating: QueueSideResult(), count: sides.count)
    let slice = UInt64(seconds / Double(rounds) * 1e9)
    for _ in 0..<rounds {
        for (i, side) in sides.enumerated() {
            let warmEnd = benchNow() + 10_000_000
            while benchNow() < warmEnd { side.roundTrip() }
            let before = processCPU(daemon)
            let start = benchNow()
            let end = start + slice
            var local: [UInt64] = []
            local.reserveCapacity(1 << 16)
            while true {
                let t0 = benchNow()
                if t0 >= end { break }
                side.roundTrip()
                local.append(benchNow() - t0)
            }
            let elapsed = benchNow() - start
            let after = processCPU(daemon)
            // `VSMMUD_BENCH_SLICES=1`: each slice's p50, to tell a state of the whole run from one of a slice.
            if printsSlices, !local.isEmpty {
                let sorted = local.sorted()
                print("      slice \(side.name): p50 \(us(Double(sorted[sorted.count / 2]) / 1000)) µs")
            }
            results[i].samples += local
            results[i].seconds += Double(elapsed) / 1e9
            results[i].daemonStat += after.stat &- before.stat
            results[i].daemonSchedstat += after.schedstat &- before.schedstat
        }
    }
    for i in results.indices { results[i].samples.sort() }
    return results
}

private func us(_ value: Double) -> String { String(format: value < 10 ? "%.2f" : "%.1f", value) }

// MARK: - Set-up

/// The in-process engine with vSIDs 0x8/0x10/0x18 on three fresh simulated pSMMUs, linked with `stes`/`cds`.
private func queueBenchEngine(stes: [StreamTableEntry], cds: [ContextDescriptor]) throws -> VSMMUEngine {
    let engine = VSMMUEngine()
    for (p, smmu) in queueBenchPSMMUs().enumerated() {
        let host = e2eDevicesPerPSMMU * UInt32(p)
        let viommu = try engine.attachViommu(pSMMU: smmu.name, backend: smmu, request: ViommuAttachRequest(hostDeviceID: host))
        try engine.setDeviceID(viommu: viommu, hostDeviceID: host, streamID: e2eStreamIDs[p])
        try engine.link(streamID: e2eStreamIDs[p], ste: stes[p], contextDescriptors: [cds[p]])
    }
    return engine
}

/// The queue STATS `e2e-queue` prints per cell (the daemon's own account of its consumer's sleeps).
let queueStatisticsKeys: [String] = ["syncs", "kicks", "calls", "polls caught", "polls missed"]

/// The vSMMU's queue counters, in the order of ``queueStatisticsKeys``; `nil` if STATS failed.
func queueStatistics(_ client: VSMMUClient, _ vsmmu: VSMMUID) -> [UInt64]? {
    guard let stats = try? client.stats(vsmmu: vsmmu) else { return nil }
    return [StatKey.queueSyncs, .queueKicks, .queueCalls, .queuePollsCaught, .queuePollsMissed].map { stats.value($0) ?? 0 }
}

/// One shared-queue sync: submits `batch` and waits for CONS to pass its CMD_SYNC; checks the outcome.
func e2eQueueRoundTrip(_ queue: SharedCommandQueue, _ batch: [Command]) {
    do {
        let submitted = try queue.submit(batch)
        let outcome = try queue.waitForSync(past: submitted.producer)
        precondition(outcome == .completed && submitted.stop == nil, "shared queue: \(outcome)")
    } catch {
        preconditionFailure("shared queue: \(error)")
    }
}

/// One in-process engine sync.
private func engineRoundTrip(_ engine: VSMMUEngine, _ batch: [Command]) {
    let result = engine.submit(batch).wait()
    precondition(result.failure == nil, "engine: \(result)")
}

// MARK: - The benchmark

/// `vsmmud-bench e2e-queue [POLL-US]` (also the last part of `e2e`).
func runSharedQueueBenchmark(requestPollMicroseconds: Int, drainPolicy: String = "default", cellSeconds: Double = 2.0) {
    let began = benchNow()
    let socketPath = "/tmp/vsmmud-e2e-queue-\(getpid()).sock"
    let daemon: BenchChild
    do { daemon = try BenchChild(["e2e-daemon", socketPath, "\(requestPollMicroseconds)", drainPolicy]) } catch {
        print("e2e-queue: cannot start the daemon child: \(error)")
        return
    }
    defer { daemon.finish() }
    // The ping-pong memory: a memfd mapped here and by the peer.
    let lineFD: Int32
    let lineBase: UnsafeMutableRawPointer
    do {
        lineFD = try SystemCall.memfdCreate("e2e-pingpong")
        try SystemCall.truncate(lineFD, to: pingPongGeometry.requiredSize)
        lineBase = try SystemCall.mapShared(lineFD, length: pingPongGeometry.requiredSize)
    } catch {
        print("e2e-queue: ping-pong memory: \(error)")
        return
    }
    guard let line = SharedQueueRegion(base: lineBase, length: pingPongGeometry.requiredSize, geometry: pingPongGeometry) else { return }
    let peer: BenchChild
    do { peer = try BenchChild(["e2e-pingpong-peer", "/proc/\(getpid())/fd/\(lineFD)"]) } catch {
        print("e2e-queue: cannot start the ping-pong peer: \(error)")
        return
    }
    var sequence: UInt32 = 0
    defer {
        line.storeErrorAcknowledgement(1)
        peer.process.waitUntilExit()
        close(lineFD)
    }

    let cds = (0..<3).map { ContextDescriptor.valid(asid: ASID($0 + 1)) }
    let stes = Array(repeating: e2eSTE(), count: 3)
    let socketClient: VSMMUClient, socketVSMMU: VSMMUID
    let queueClient: VSMMUClient, queue: SharedCommandQueue
    let engine: VSMMUEngine
    do {
        (socketClient, socketVSMMU) = try e2eDaemonClient(path: socketPath, deviceSlot: 0, stes: stes, cds: cds)
        let (client, vsmmu) = try e2eDaemonClient(path: socketPath, deviceSlot: 1, stes: stes, cds: cds)
        queueClient = client
        queue = try client.mapQueue(vsmmu: vsmmu, log2Entries: 10)
        engine = try queueBenchEngine(stes: stes, cds: cds)
    } catch {
        print("e2e-queue: set-up failed: \(error)")
        return
    }
    _ = queueClient

    print("== Shared command queue (issue 13): daemon in a child process (this binary as `e2e-daemon`, request polling "
          + "\(requestPollMicroseconds) µs, drain policy \(drainPolicy)), 3 simulated pSMMUs, cost model off, 1 VMM thread; \(cellSeconds) s per side and cell "
          + "in 5 interleaved rounds ==")
    print("   queue = shared queue (submit + wait for CONS); socket = INVALIDATE round trip; engine = in-process VSMMUEngine;")
    print("   ping-pong = one cache line each way between two processes, both spinning; daemon CPU = child's utime+stime "
          + "(/proc/PID/stat) [threads' schedstat] per sync")
    print(column("batch", 6) + column("side", 10) + column("p50 µs", 8) + column("p99 µs", 8) + column("cmd/s", 11)
          + column("syncs", 9) + "daemon CPU µs/sync")
    var byBatch: [Int: [String: QueueSideResult]] = [:]
    for size in [1, 16, 64] {
        let batch = e2eBatch(size: size)
        let frame = (try? Request.invalidate(Invalidate(vsmmu: socketVSMMU, commands: batch)).encode(requestID: 1)) ?? []
        var sides = [
            QueueSide(name: "queue", commandsPerRoundTrip: size, usesDaemon: true) { e2eQueueRoundTrip(queue, batch) },
            QueueSide(name: "socket", commandsPerRoundTrip: size, usesDaemon: true) {
                e2eDaemonRoundTrip(socketClient, frame, expectedConsumed: UInt32(size + 1))
            },
            QueueSide(name: "engine", commandsPerRoundTrip: size, usesDaemon: false) { engineRoundTrip(engine, batch) },
        ]
        // `VSMMUD_BENCH_SKIP=engine` or `=socket` leaves that side (and the ping-pong) out of the cells: to
        // see what one side does to the others' tails.
        let skip = ProcessInfo.processInfo.environment["VSMMUD_BENCH_SKIP"]
        sides.removeAll { $0.name == skip }
        if size == 1 && skip == nil {
            sides.append(QueueSide(name: "ping-pong", commandsPerRoundTrip: 0, usesDaemon: false) {
                sequence &+= 1
                line.storeProducer(sequence)
                while line.loadConsumer() != sequence {}
            })
        }
        let statsBefore = queueStatistics(queueClient, queue.vsmmu)
        let results = queueRunInterleaved(sides, seconds: cellSeconds, daemon: daemon.pid)
        let statsAfter = queueStatistics(queueClient, queue.vsmmu)
        for (side, result) in zip(sides, results) {
            byBatch[size, default: [:]][side.name] = result
            let rate = side.commandsPerRoundTrip == 0 ? "-" : e2eRate(Double(result.samples.count * side.commandsPerRoundTrip) / result.seconds)
            let cpu = side.usesDaemon
                ? String(format: "%.2f [%.2f]", Double(result.daemonStat) / 1000 / Double(max(1, result.samples.count)),
                         Double(result.daemonSchedstat) / 1000 / Double(max(1, result.samples.count)))
                : "-"
            print(column("\(size)", 6) + column(side.name, 10) + column(us(result.p50), 8) + column(us(result.p99), 8) + column(rate, 11)
                  + column("\(result.samples.count)", 9) + cpu)
        }
        if let statsBefore, let statsAfter {
            print("      queue STATS over the cell: " + zip(queueStatisticsKeys, zip(statsBefore, statsAfter))
                .map { "\($0.0) \($0.1.1 &- $0.1.0)" }.joined(separator: ", "))
        }
    }

    // The strict trace, replayed through each path in turn, 3 rounds.
    print("")
    var replay: [String: QueueSideResult] = [:]
    if let shared = e2eSharedDirectory(), let trace = try? RecordedGuestTrace(directory: shared + "/traces", name: "linux-strict") {
        let traceSTEs = e2eStreamIDs.map { trace.stes[$0] ?? e2eSTE() }
        let traceCDs = e2eStreamIDs.enumerated().map { p, sid in trace.cds[sid] ?? .valid(asid: ASID(p + 1)) }
        let batches = trace.batches.filter { $0.last?.opcode == .sync }
        do {
            let (traceSocket, traceSocketVSMMU) = try e2eDaemonClient(path: socketPath, deviceSlot: 2, stes: traceSTEs, cds: traceCDs)
            let (traceQueueClient, traceQueueVSMMU) = try e2eDaemonClient(path: socketPath, deviceSlot: 3, stes: traceSTEs, cds: traceCDs)
            let traceQueue = try traceQueueClient.mapQueue(vsmmu: traceQueueVSMMU, log2Entries: 10)
            let traceEngine = try queueBenchEngine(stes: traceSTEs, cds: traceCDs)
            var errors = 0
            let paths: [(String, Bool, ([Command]) throws -> Bool)] = [
                ("queue", true, { batch in try traceQueue.submitAndWait(batch).failure == nil }),
                ("socket", true, { batch in try traceSocket.invalidate(vsmmu: traceSocketVSMMU, commands: batch).failure == nil }),
                ("engine", false, { batch in traceEngine.submit(batch).wait().failure == nil }),
            ]
            for _ in 0..<3 {
                for (name, _, run) in paths {
                    var result = replay[name] ?? QueueSideResult()
                    let before = processCPU(daemon.pid)
                    let start = benchNow()
                    for batch in batches {
                        let t0 = benchNow()
                        if try !run(batch) { errors += 1 }
                        result.samples.append(benchNow() - t0)
                    }
                    result.seconds += Double(benchNow() - start) / 1e9
                    let after = processCPU(daemon.pid)
                    result.daemonStat += after.stat &- before.stat
                    result.daemonSchedstat += after.schedstat &- before.schedstat
                    replay[name] = result
                }
            }
            print("== Replay of linux-strict-cmdq.bin (\(trace.commands.count) commands, \(batches.count) syncs), 3 rounds per path, "
                  + "\(errors) batches with an error ==")
            for (name, usesDaemon, _) in paths {
                guard var result = replay[name] else { continue }
                result.samples.sort()
                replay[name] = result
                let cpu = usesDaemon ? String(format: "%.2f [%.2f]", Double(result.daemonStat) / 1000 / Double(max(1, result.samples.count)),
                                              Double(result.daemonSchedstat) / 1000 / Double(max(1, result.samples.count))) : "-"
                print(column("replay", 6) + column(name, 10) + column(us(result.p50), 8) + column(us(result.p99), 8) + column("-", 11)
                      + column("\(result.samples.count)", 9) + cpu)
            }
        } catch {
            print("e2e-queue: replay failed: \(error)")
        }
    } else {
        print("== Trace replay: skipped (../shared/traces/linux-strict-cmdq.bin not found; set VSMMUD_SHARED) ==")
    }

    // Aims.
    print("")
    print("aims (ratios within this run):")
    if let q = replay["queue"], let s = replay["socket"], let e = replay["engine"] {
        print("  strict replay p50 \(us(q.p50)) µs (aim ≤ 2 µs): \(e2eAim(q.p50 <= 2)); vs engine \(e2eRatio(q.p50 / e.p50)) "
              + "(aim ≤ 3×): \(e2eAim(q.p50 <= 3 * e.p50)); socket/queue \(e2eRatio(s.p50 / q.p50)) (aim ≥ 20×): \(e2eAim(s.p50 >= 20 * q.p50)); "
              + "p99 \(us(q.p99)) µs (aim ≤ 10 µs): \(e2eAim(q.p99 <= 10))")
    }
    if let cell = byBatch[64], let q = cell["queue"], let e = cell["engine"] {
        let ratio = (Double(q.samples.count) / q.seconds) / (Double(e.samples.count) / e.seconds)
        print("  batch-64 throughput queue/engine \(e2eRatio(ratio)) (aim ≥ 0.70×): \(e2eAim(ratio >= 0.7))")
    }
    if let cell = byBatch[1], let q = cell["queue"], let p = cell["ping-pong"] {
        print("  batch-1 queue p50 vs the two-process ping-pong: \(e2eRatio(q.p50 / p.p50)) (\(us(q.p50)) vs \(us(p.p50)) µs)")
    }

    // Idle cost: 4 VMs with mapped queues and idle guests.
    print("")
    do {
        var idle: [(VSMMUClient, SharedCommandQueue)] = []
        for slot in 0..<4 {
            let (client, vsmmu) = try e2eDaemonClient(path: socketPath, deviceSlot: UInt32(8 + slot), stes: stes, cds: cds)
            let q = try client.mapQueue(vsmmu: vsmmu, log2Entries: 8)
            _ = try q.submitAndWait(e2eBatch(size: 1))  // each queue used once, then idle
            idle.append((client, q))
        }
        // Let the consumers' polling windows run out before measuring.
        usleep(200_000)
        let before = processCPU(daemon.pid)
        let start = benchNow()
        usleep(10_000_000)
        let after = processCPU(daemon.pid)
        let seconds = Double(benchNow() - start) / 1e9
        let percent = Double(after.stat &- before.stat) / 1e9 / seconds * 100
        let percentSched = Double(after.schedstat &- before.schedstat) / 1e9 / seconds * 100
        print("idle: 4 connected VMs with mapped queues (plus the cells' \(3) idle connections), \(String(format: "%.1f", seconds)) s: "
              + "daemon CPU \(String(format: "%.3f", percent)) % of one CPU (utime+stime) [\(String(format: "%.3f", percentSched)) % schedstat] "
              + "(aim < 1 %): \(e2eAim(percent < 1))")
        for (_, q) in idle { try? q.unmap() }
    } catch {
        print("e2e-queue: idle set-up failed: \(error)")
    }
    try? queue.unmap()
    print("e2e-queue total \(String(format: "%.1f", Double(benchNow() - began) / 1e9)) s")
}
