import Foundation
import SMMUv3
import VSMMUSystem
import VSMMUClient
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

// `vsmmud-bench scale`: a host's worth of VMs in one real daemon (issue 11 §3).
//
// Starts the `vsmmud` binary (beside this one, or the path given) on a temporary socket with four
// simulated pSMMUs of 4,096 devices each, then builds, over 16 connections of the Swift client, 256
// vSMMUs (16 per connection), each with 4 viommus (one per pSMMU) and 64 devices (16 per viommu), every
// device linked to an STE with one CD carrying its own ASID. It reads the daemon's VmRSS, VmHWM, thread
// count and open fds from /proc/PID (before anything is built, once built, and after one CMD_SYNC-ended
// INVALIDATE per vSMMU), then stops the daemon with SIGTERM.

/// What /proc says about a process.
struct ProcessFigures: CustomStringConvertible {
    var rssKiB = 0
    var hwmKiB = 0
    var threads = 0
    var fds = 0

    init(pid: pid_t) {
        if let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) {
            for line in status.split(separator: "\n") {
                let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                guard fields.count >= 2, let value = Int(fields[1]) else { continue }
                switch fields[0] {
                case "VmRSS:": rssKiB = value
                case "VmHWM:": hwmKiB = value
                case "Threads:": threads = value
                default: break
                }
            }
        }
        fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    var description: String {
        "RSS \(String(format: "%.1f", Double(rssKiB) / 1024)) MiB (peak \(String(format: "%.1f", Double(hwmKiB) / 1024)) MiB), \(threads) threads, \(fds) fds"
    }
}

/// The shape of the configuration the scale benchmark builds.
struct ScaleShape {
    var connections = 16
    var vsmmusPerConnection = 16
    var viommusPerVSMMU = 4
    var devicesPerViommu = 16

    var vsmmus: Int { connections * vsmmusPerConnection }
    /// Host devices each pSMMU needs: one per device of every vSMMU's viommu on it.
    var devicesPerPSMMU: Int { vsmmus * devicesPerViommu }
}

func runScaleBenchmark(_ arguments: [String]) {
    let shape = ScaleShape()
    let daemon: String
    if let given = arguments.first {
        daemon = given
    } else {
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        daemon = URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("vsmmud").path
    }
    guard FileManager.default.isExecutableFile(atPath: daemon) else {
        print("scale: no vsmmud executable at \(daemon) (build it: swift build -c release --product vsmmud)")
        return
    }
    let directory = NSTemporaryDirectory() + "vsmmud-scale-\(getpid())"
    try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let socketPath = directory + "/vsmmud.sock"
    let configPath = directory + "/vsmmud.toml"

    var config = """
        [daemon]
        log_level = "warning"
        request_poll_us = 0
        [limits]
        max_vsmmus_per_connection = \(shape.vsmmusPerConnection)

        """
    for p in 0..<shape.viommusPerVSMMU {
        config += """
            [[psmmu]]
            name = "smmu\(p)"
            backend = "simulated"
            first_host_device = \(p * shape.devicesPerPSMMU)
            devices = \(shape.devicesPerPSMMU)

            """
    }
    do {
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
    } catch {
        print("scale: cannot write \(configPath): \(error)")
        return
    }

    let process = Process()
    process.executableURL = URL(fileURLWithPath: daemon)
    process.arguments = ["--config", configPath, "--socket", socketPath]
    // No journal: outside systemd the daemon keeps one only in $STATE_DIRECTORY.
    var environment = ProcessInfo.processInfo.environment
    environment["STATE_DIRECTORY"] = nil
    process.environment = environment
    do { try process.run() } catch {
        print("scale: cannot start \(daemon): \(error)")
        return
    }
    defer { if process.isRunning { process.terminate(); process.waitUntilExit() } }
    let pid = process.processIdentifier

    var probe: VSMMUClient?
    for _ in 0..<10_000 where probe == nil {
        probe = try? VSMMUClient(socketPath: socketPath)
        if probe == nil { usleep(1000) }
    }
    guard let probe, (try? probe.hello(name: "scale-probe")) != nil else {
        print("scale: the daemon did not answer on \(socketPath)")
        return
    }
    let idle = ProcessFigures(pid: pid)
    print("scale: \(daemon)")
    print("scale: \(shape.vsmmus) vSMMUs x \(shape.viommusPerVSMMU) viommus x \(shape.viommusPerVSMMU * shape.devicesPerViommu) devices over \(shape.connections) connections")
    print("  started:  \(idle)")

    let start = benchNow()
    let failures = Failures()
    var clients: [(VSMMUClient, [VSMMUID])?] = []
    let slots = ClientSlots(count: shape.connections)
    let threads = (0..<shape.connections).map { c in
        startBenchThread {
            do {
                let client = try VSMMUClient(socketPath: socketPath)
                try client.hello(name: "scale-\(c)")
                var vsmmus: [VSMMUID] = []
                for v in 0..<shape.vsmmusPerConnection {
                    let index = c * shape.vsmmusPerConnection + v
                    let vsmmu = try client.createVSMMU(name: "vm\(index)")
                    vsmmus.append(vsmmu)
                    for p in 0..<shape.viommusPerVSMMU {
                        let firstHost = UInt32(p * shape.devicesPerPSMMU + index * shape.devicesPerViommu)
                        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu\(p)", hostDeviceID: firstHost).viommu
                        for d in 0..<shape.devicesPerViommu {
                            let sid = StreamID(p * shape.devicesPerViommu + d)
                            try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: firstHost + UInt32(d), streamID: sid)
                            try client.linkSTE(vsmmu: vsmmu, streamID: sid, ste: .stage1(contextTable: 0x4000_0000 + UInt64(sid) << 12),
                                               contextDescriptors: [.valid(asid: ASID(sid + 1))])
                        }
                    }
                }
                slots.set(c, (client, vsmmus))
            } catch {
                failures.record("connection \(c): \(error)")
            }
        }
    }
    for thread in threads { thread.join() }
    let buildSeconds = Double(benchNow() - start) / 1e9
    clients = slots.all
    if let failure = failures.first {
        print("scale: building failed: \(failure)")
        return
    }
    let built = ProcessFigures(pid: pid)
    print("  built:    \(built)  (in \(String(format: "%.1f", buildSeconds)) s)")

    // One guest batch per vSMMU: a TLBI per viommu's ASIDs and a CMD_SYNC, so every queue has drained.
    var commandFailures = 0
    for case let (client, vsmmus)? in clients {
        for vsmmu in vsmmus {
            let commands: [Command] = (0..<shape.viommusPerVSMMU).map { p in .tlbiNHASID(asid: ASID(p * shape.devicesPerViommu + 1)) } + [.sync()]
            if (try? client.invalidate(vsmmu: vsmmu, commands: commands)) == nil { commandFailures += 1 }
        }
    }
    let synced = ProcessFigures(pid: pid)
    print("  synced:   \(synced)\(commandFailures > 0 ? "  (\(commandFailures) INVALIDATEs refused)" : "")")
    let perVSMMU = Double(synced.rssKiB - idle.rssKiB) / Double(shape.vsmmus)
    print("  per vSMMU: \(String(format: "%.1f", perVSMMU)) KiB of RSS, \(String(format: "%.2f", Double(synced.threads - idle.threads) / Double(shape.vsmmus))) threads")
    withExtendedLifetime(clients) {}
    withExtendedLifetime(probe) {}
    kill(pid, SIGTERM)
    process.waitUntilExit()
}

/// The first failure any builder thread met.
private final class Failures: @unchecked Sendable {
    // `@unchecked Sendable`: `messages` is only touched under `lock`.
    private let lock = NSLock()
    private var messages: [String] = []
    func record(_ message: String) { lock.withLock { messages.append(message) } }
    var first: String? { lock.withLock { messages.first } }
}

/// The builder threads' clients, kept open until the figures are read.
private final class ClientSlots: @unchecked Sendable {
    // `@unchecked Sendable`: `clients` is only touched under `lock`.
    private let lock = NSLock()
    private var clients: [(VSMMUClient, [VSMMUID])?]
    init(count: Int) { clients = Array(repeating: nil, count: count) }
    func set(_ index: Int, _ client: (VSMMUClient, [VSMMUID])) { lock.withLock { clients[index] = client } }
    var all: [(VSMMUClient, [VSMMUID])?] { lock.withLock { clients } }
}
