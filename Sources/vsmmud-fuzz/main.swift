// vsmmud-fuzz: hostile connections against the real frame decoder and request handlers
// (RELIABILITY.md §4), each served in memory by one daemon that lives for the whole run.
//
//   vsmmud-fuzz generate COUNT [SEED]              COUNT generated inputs (HostileInputGenerator); summary
//   vsmmud-fuzz write-corpus DIR COUNT SEED HEXDIR  a seed corpus: protocol/vectors/*.hex and COUNT generated inputs
//   vsmmud-fuzz [libFuzzer flags] [CORPUS...]      built by scripts/fuzz (-sanitize=fuzzer): libFuzzer's driver
//   vsmmud-fuzz FILE...                           any other build: replays each file once
//
// An input that breaks an invariant of HostileInput.execute, or leaves a vSMMU or a connection behind
// once its connection closed, aborts the process with the reason, which is how libFuzzer records a crash.
import CLibFuzzer
import Foundation
import HostileInput
import Logging
import PSMMU
import SMMUv3
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The daemon every execution connects to: two simulated pSMMUs of 16 host devices each (smmu0: 0-15,
/// smmu1: 16-31), the test suite's configuration.
let server: VSMMUServer = {
    var logger = Logger(label: "vsmmud-fuzz")
    logger.logLevel = .critical
    let pSMMUs = (0..<2).map { i in
        SimulatedSMMU(name: "smmu\(i)", deviceCount: 16, firstHostDeviceID: UInt32(16 * i), firstStreamID: StreamID(16 * i))
    }
    let path = "/tmp/vsmmud-fuzz-\(getpid()).sock"
    let server = VSMMUServer(configuration: .init(socketPath: path, pSMMUs: pSMMUs.map { .simulated($0) }), logger: logger)
    do { try server.start() } catch {
        report("vsmmud-fuzz: cannot start the daemon: \(error)\n")
        exit(2)
    }
    unlink(path)  // no client connects through the socket
    return server
}()

/// The peer of every connection: this process, so that admin requests are served too.
let credentials = PeerCredentials(processID: getpid(), userID: getuid(), groupID: getgid())

nonisolated(unsafe) var totals = HostileInput.Outcome()

/// Writes `message` to standard error.
func report(_ message: String) {
    FileHandle.standardError.write(Data(message.utf8))
}

/// One execution; aborts on a broken invariant.
func execute(_ input: UnsafeRawBufferPointer) {
    let outcome = HostileInput.execute(input, on: server, credentials: credentials)
    let left = server.registryCounts
    var violations = outcome.violations
    if left.vsmmus != 0 || left.connections != 0 {
        violations.append("after the connection closed the daemon still holds \(left.vsmmus) vSMMUs and \(left.connections) connections")
    }
    if !violations.isEmpty {
        report("vsmmud-fuzz: invariant broken by an input of \(input.count) bytes:\n  " + violations.joined(separator: "\n  ") + "\n")
        abort()
    }
    totals.frames += outcome.frames
    totals.replies += outcome.replies
    for (code, n) in outcome.errors { totals.errors[code, default: 0] += n }
}

func printTotals(executions: Int, seconds: Double) {
    print("executions \(executions), frames \(totals.frames), replies \(totals.replies), "
          + "\(String(format: "%.0f", Double(executions) / max(seconds, 1e-9))) executions/s, "
          + "\(String(format: "%.0f", Double(totals.frames) / max(seconds, 1e-9))) frames/s")
    let errors = totals.errors.sorted { $0.value > $1.value }.map { "\($0.key) \($0.value)" }
    print("errors by code: " + errors.joined(separator: ", "))
}

/// The bytes of a golden vector: the hex pairs of every line, comments (`#` …) left out.
func vectorBytes(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    for line in text.split(separator: "\n") {
        let code = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        for pair in code.split(separator: " ") { if let byte = UInt8(pair, radix: 16) { bytes.append(byte) } }
    }
    return bytes
}

let arguments = CommandLine.arguments
switch arguments.dropFirst().first {
case "generate":
    guard arguments.count >= 3, let count = Int(arguments[2]) else {
        report("usage: vsmmud-fuzz generate COUNT [SEED]\n")
        exit(64)
    }
    var generator = HostileInputGenerator(seed: arguments.count > 3 ? UInt64(arguments[3]) ?? 1 : 1)
    let start = Date()
    for _ in 0..<count { generator.next().withUnsafeBytes { execute($0) } }
    printTotals(executions: count, seconds: Date().timeIntervalSince(start))

case "write-corpus":
    guard arguments.count >= 6, let count = Int(arguments[3]), let seed = UInt64(arguments[4]) else {
        report("usage: vsmmud-fuzz write-corpus DIR COUNT SEED HEXDIR\n")
        exit(64)
    }
    let directory = arguments[2]
    try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    var written = 0
    for name in (try? FileManager.default.contentsOfDirectory(atPath: arguments[5])) ?? [] where name.hasSuffix(".hex") {
        guard let text = try? String(contentsOfFile: arguments[5] + "/" + name, encoding: .utf8) else { continue }
        _ = FileManager.default.createFile(atPath: "\(directory)/vector-\(name.dropLast(4))", contents: Data(vectorBytes(text)))
        written += 1
    }
    var generator = HostileInputGenerator(seed: seed)
    for i in 0..<count {
        _ = FileManager.default.createFile(atPath: "\(directory)/generated-\(i)", contents: Data(generator.next()))
        written += 1
    }
    print("wrote \(written) inputs to \(directory)")

default:
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    let status = vsmmud_fuzz_run_driver(&argc, &argv) { data, size in
        execute(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
    if status != -1 { exit(status) }
    // A plain build: replay each file.
    let start = Date()
    var executions = 0
    for path in arguments.dropFirst() {
        guard let data = FileManager.default.contents(atPath: path) else {
            report("vsmmud-fuzz: cannot read \(path)\n")
            exit(66)
        }
        data.withUnsafeBytes { execute($0) }
        executions += 1
    }
    printTotals(executions: executions, seconds: Date().timeIntervalSince(start))
}
