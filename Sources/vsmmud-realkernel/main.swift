// vsmmud-realkernel: the IOMMUFDBackend and the engine with its router against a real Linux kernel, the
// real-kernel rig's arm64 guest (../shared/realkernel, `./boot --smmus 2`: two emulated nesting SMMUv3s,
// an edu device bound to vfio-pci behind each), through the ioctl relay (Sources/IOMMUFDRelay).
//
// Usage: vsmmud-realkernel SOCKET [--agent PATH] [--traces DIR]
//   SOCKET   the rig's channel, $RIG_RUN/rig.sock of a running `./boot --smmus 2`
//   --agent  the relay agent binary (aarch64, static; scripts/realkernel-test builds it), default
//            $VSMMUD_RELAY_AGENT
//   --traces the recorded guest streams, default $VSMMUD_SHARED/traces, else ../shared/traces
// Each check prints PASS or FAIL with its details; the last line is "N passed, M failed"; the exit status
// is 0 only when none failed. scripts/realkernel-test boots the rig, runs this and shuts the guest down.

#if canImport(Glibc)
import Glibc
#endif
import IOMMUFD
import IOMMUFDRelay

func usage(_ message: String) -> Never {
    print("vsmmud-realkernel: \(message)")
    print("usage: vsmmud-realkernel SOCKET [--agent PATH] [--traces DIR] [--replay-batches N]")
    print("0 passed, 1 failed")
    exit(2)
}

var arguments = Array(CommandLine.arguments.dropFirst())
var socketPath: String?
var agentPath = getenv("VSMMUD_RELAY_AGENT").map { String(cString: $0) }
var replayBatches: Int?
var traceDirectory = getenv("VSMMUD_SHARED").map { String(cString: $0) + "/traces" } ?? "../shared/traces"
while let argument = arguments.first {
    arguments.removeFirst()
    switch argument {
    case "--agent":
        guard let value = arguments.first else { usage("--agent needs a path") }
        agentPath = value
        arguments.removeFirst()
    case "--traces":
        guard let value = arguments.first else { usage("--traces needs a directory") }
        traceDirectory = value
        arguments.removeFirst()
    case "--replay-batches":
        guard let value = arguments.first.flatMap({ Int($0) }) else { usage("--replay-batches needs a number") }
        replayBatches = value
        arguments.removeFirst()
    case "-h", "--help":
        usage("help")
    default:
        guard socketPath == nil, !argument.hasPrefix("-") else { usage("unexpected argument \(argument)") }
        socketPath = argument
    }
}
guard let socketPath else { usage("the rig's socket path is missing") }
guard let agentPath else { usage("no relay agent: pass --agent PATH or set VSMMUD_RELAY_AGENT") }

let checks = Checks()
let clock = ContinuousClock()
let began = clock.now

var channel: RelayChannel?
checks.run("relay: upload and start the agent in the guest, HELLO") {
    let agent = try readFile(agentPath)
    let started = clock.now
    let relayChannel = try RelayChannel.connect(socketPath: socketPath, agent: agent)
    channel = relayChannel
    let uname = try relayChannel.uname()
    try expect(uname.machine == "aarch64" && uname.sysname == "Linux", "uname: \(uname)")
    let startup = started.duration(to: clock.now)
    // The channel's round trip, for reading the replay's time: HELLOs, one at a time.
    var trips: [Duration] = []
    for _ in 0..<200 {
        let sent = clock.now
        _ = try relayChannel.hello()
        trips.append(sent.duration(to: clock.now))
    }
    trips.sort()
    func micros(_ d: Duration) -> Int { Int(d.components.seconds) * 1_000_000 + Int(d.components.attoseconds / 1_000_000_000_000) }
    return ["\(agent.count)-byte agent running as pid \(relayChannel.agentPID) after \(micros(startup) / 1000) ms",
            "kernel: \(uname)",
            "HELLO round trip over 200: median \(micros(trips[100])) µs, p90 \(micros(trips[180])) µs"]
}

if let channel {
    checks.run("relay: bad requests are answered and do not end the agent") {
        var details: [String] = []
        let unknown = try channel.call(rawOp: 77, [])
        try expect(unknown.status == .noFunction, "op 77: \(String(describing: unknown.status))")
        details.append("unknown op 77 → ENOSYS")
        // An IOCTL whose pointer field lies outside its 8-byte argument.
        var bad = [UInt8]()
        for word: UInt32 in [3, 1, 0, 0, 8, 4, 8, 0] { withUnsafeBytes(of: word.littleEndian) { bad += $0 } }
        bad += [UInt8](repeating: 0, count: 16)
        let outside = try channel.call(.ioctl, bad)
        try expect(outside.status?.rawValue == EPROTO && outside.payload.isEmpty, "IOCTL with a pointer outside the argument: \(String(describing: outside.status))")
        details.append("IOCTL with a pointer field outside its argument → EPROTO")
        let short = try channel.callRaw([2, 0, 0, 0, 9, 9])
        try expect(short.status?.rawValue == EPROTO, "a 2-byte frame: \(String(describing: short.status))")
        details.append("a frame of length 2 → EPROTO")
        do {
            _ = try channel.open("/dev/no-such-node")
            throw CheckFailure(description: "opening a missing node succeeded")
        } catch RelayError.guest(_, let errno) {
            try expect(errno == .noSuchFileOrDirectory, "open of a missing node: \(errno)")
        }
        do {
            try channel.close(.standardOutput)
            throw CheckFailure(description: "closing the agent's stdout succeeded")
        } catch RelayError.guest(_, let errno) {
            try expect(errno == .badFileDescriptor, "close(1): \(errno)")
        }
        let read = try channel.read(.init(rawValue: 999), maximum: 64)
        try expect(read == .failure(.badFileDescriptor), "READ of fd 999: \(read)")
        details.append("OPEN of a missing node → ENOENT; CLOSE(1) → EBADF; READ(999) → EBADF")
        let hello = try channel.hello()
        try expect(hello.pid == channel.agentPID, "HELLO from pid \(hello.pid), the agent was \(channel.agentPID)")
        details.append("HELLO still answered by pid \(hello.pid)")
        return details
    }

    var vmm: VMM?
    var relay: RelayIOMMUFD?
    checks.run("VMM side: one iommufd, BIND of both VFIO cdevs, IOAS with the VM's RAM, a NEST_PARENT S2 per device, attach") {
        let opened = try RelayIOMMUFD.open(on: channel)
        relay = opened
        let made = try VMM(relay: opened)
        vmm = made
        return ["/dev/iommu = guest fd \(opened.descriptor.rawValue); IOAS \(made.ioas) with "
                + VMM.ram.map { "\(hex($0.length >> 20)) MiB at \(hex($0.iova))" }.joined(separator: ", ")]
            + made.devices.map { "\($0.path): guest fd \($0.vfio.rawValue), dev_id \($0.deviceID), S2 HWPT \($0.nestParent), attached" }
    }

    if let vmm, let relay {
        let spy = RecordingDevice(relay)
        var backendChecks = BackendChecks(vmm: vmm, spy: spy, checks: checks)
        backendChecks.run()
        var engineChecks = EngineChecks(vmm: vmm, spy: spy, checks: checks, traceDirectory: traceDirectory,
                                        replayBatches: replayBatches)
        engineChecks.run()
        checks.run("VMM teardown: the S2s and the IOAS the VMM owns can be destroyed (nothing else holds them)") {
            try expect(relay.seamFailure == nil, "the relay failed under the backends: \(relay.seamFailure.map { "\($0)" } ?? "")")
            return try vmm.tearDown()
        }
    } else {
        checks.skip("the backend and engine checks", because: "the VMM side could not be set up")
    }
    try? channel.quit()
} else {
    checks.skip("every other check", because: "the relay did not start")
}

print("elapsed \(began.duration(to: clock.now))")
print(checks.summary)
exit(checks.failed == 0 ? 0 : 1)
