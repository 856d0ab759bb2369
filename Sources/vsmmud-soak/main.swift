// vsmmud-soak: many clients against a running vsmmud for a given time, then the per-viommu counters are
// checked against what the clients submitted, and the daemon's RSS, threads and fds against growth.
// Started by scripts/soak, which starts the daemon. Exit status 0 only when every check holds.
//
// Each client keeps a small reference of the routing rules (Router.route's doc comment, and the
// ASIDIndex retirement rule): per viommu, the number of commands the router must hand it. Before each
// vSMMU is destroyed (explicitly or by closing the connection) the client reads its STATS and compares
// VIOMMU_COMMANDS_DELIVERED of every viommu with the reference, and the vSMMU's COMMANDS_DELIVERED with
// the reference's sum, after a final CMD_SYNC (which completes only once every delivered command has
// executed on its pSMMU).
import Foundation
import SMMUv3
import VSMMUClient
import VSMMUProtocol
import VSMMUTestSupport
#if canImport(Glibc)
import Glibc
#endif

struct Options {
    var socket = ""
    var seconds = 60.0
    var clients = 32
    var daemonPID: Int32 = 0
    var seed: UInt64 = 1
    /// Fail when a re-registration right after a reconnect met a ghost of the previous connection.
    var failOnGhosts = false
}

func parseOptions() -> Options {
    var o = Options()
    var args = CommandLine.arguments.dropFirst().makeIterator()
    while let a = args.next() {
        guard let v = args.next() else { usage("\(a) needs a value") }
        switch a {
        case "--socket": o.socket = v
        case "--seconds": guard let s = Double(v), s > 0 else { usage("bad --seconds") }; o.seconds = s
        case "--clients": guard let c = Int(v), (1...32).contains(c) else { usage("--clients is 1…32") }; o.clients = c
        case "--daemon-pid": guard let p = Int32(v) else { usage("bad --daemon-pid") }; o.daemonPID = p
        case "--fail-on-ghosts": o.failOnGhosts = v == "1"
        case "--seed": guard let s = UInt64(v) else { usage("bad --seed") }; o.seed = s
        default: usage("unknown option \(a)")
        }
    }
    if o.socket.isEmpty || o.daemonPID == 0 { usage("--socket and --daemon-pid are required") }
    return o
}

func usage(_ why: String) -> Never {
    FileHandle.standardError.write(Data("vsmmud-soak: \(why)\nusage: vsmmud-soak --socket PATH --daemon-pid PID [--seconds S] [--clients 1…32] [--seed N] [--fail-on-ghosts 0|1]\n".utf8))
    exit(2)
}

/// Totals over all clients, and the mismatches found.
final class Totals: @unchecked Sendable {
    let lock = NSLock()
    var requests = 0, invalidates = 0, commands = 0, consumed = 0, reconnects = 0, badFrames = 0
    var controlChanges = 0, vsmmusChecked = 0, viommusChecked = 0, viommuCommandsMatched: UInt64 = 0
    var ghostRetries = 0
    var failures: [String] = []
    func add(_ body: (Totals) -> Void) { lock.lock(); body(self); lock.unlock() }
    func fail(_ s: String) { add { $0.failures.append(s) } }
}
let totals = Totals()

/// One vSMMU's registrations and the routing reference the client keeps for it.
struct VSMMUState {
    var id: VSMMUID
    var viommus: [UInt32] = []                 // index 0: on smmu0, 1: on smmu1
    var devices: [(host: UInt32, sid: StreamID, viommu: UInt32)] = []
    var registered: Set<StreamID> = []
    var linkedASID: [StreamID: ASID] = [:]     // sid -> ASID of its one CD (linked STEs)
    var retiring: [ASID: Set<UInt32>] = [:]    // the ASIDIndex retirement rule
    var expected: [UInt32: UInt64] = [:]       // viommu -> commands the router must hand it
    var sidViommu: [StreamID: UInt32] = [:]

    func live(_ asid: ASID) -> Set<UInt32> {
        Set(linkedASID.filter { $0.value == asid }.compactMap { sidViommu[$0.key] })
    }
    /// A linked STE goes away (unlink, relink with another ASID, unset): its ASID retires from the viommu
    /// if no other STE there carries it (ASIDIndex: "the ASID starts retiring from it").
    mutating func dropLink(_ sid: StreamID) {
        guard let asid = linkedASID.removeValue(forKey: sid), let v = sidViommu[sid] else { return }
        if !live(asid).contains(v) { retiring[asid, default: []].insert(v) }
    }
    mutating func addLink(_ sid: StreamID, _ asid: ASID) {
        linkedASID[sid] = asid
        if let v = sidViommu[sid] { retiring[asid]?.remove(v); if retiring[asid]?.isEmpty == true { retiring[asid] = nil } }
    }
    /// Router.route's rules for the commands this soak sends; `false` for a command the router refuses.
    /// A device command (CFGI_CD, ATC_INV) for a vSID without a registered device is refused, as the
    /// kernel's `arm_vsmmu_convert_user_cmd` answers `-EIO` when `arm_vsmmu_vsid_to_sid` finds no vdevice.
    mutating func route(_ c: Command) -> Bool {
        let all = Set(viommus)
        switch c.opcode {
        case .tlbiNHAll:
            for v in all { expected[v, default: 0] += 1 }
            retiring = [:]
        case .tlbiNHVAA:
            for v in all { expected[v, default: 0] += 1 }
        case .tlbiNHASID, .tlbiNHVA:
            let asid = c.asid
            let targets = live(asid).union(retiring[asid] ?? [])
            for v in targets { expected[v, default: 0] += 1 }
            if c.opcode == .tlbiNHASID { retiring[asid] = nil }
        case .cfgiCD, .atcInv:
            let sid = c.streamID
            guard registered.contains(sid), let v = sidViommu[sid] else { return false }
            expected[v, default: 0] += 1
        case .sync: break
        default: break
        }
        return true
    }
}

struct Client {
    let index: Int
    let options: Options
    var rng: SplitMix64
    var client: VSMMUClient?
    var vsmmu: VSMMUState?

    init(index: Int, options: Options) {
        self.index = index
        self.options = options
        rng = SplitMix64(seed: options.seed &* 1_000_003 &+ UInt64(index))
    }

    mutating func int(_ r: ClosedRange<Int>) -> Int { Int.random(in: r, using: &rng) }
    mutating func asid() -> ASID { ASID(int(1...12)) }

    func connect() throws -> VSMMUClient {
        var last: Error?
        for _ in 0..<200 {
            do { let c = try VSMMUClient(socketPath: options.socket); try c.hello(name: "soak-\(index)"); return c } catch {
                last = error; usleep(10_000)
            }
        }
        throw last ?? VSMMUClientError.connectionClosed
    }

    /// Retries a request the daemon refuses with BACKEND_FAILURE right after a reconnect (a ghost of the
    /// previous connection's registration, issue 11 §3 "teardown is synchronous"): counted, reported.
    func ghostTolerant(_ body: () throws -> Void) throws {
        var attempt = 0
        while true {
            do { try body(); return } catch {
                attempt += 1
                guard let e = error as? VSMMUClientError, e.code == .backendFailure, attempt < 500 else { throw error }
                totals.add { $0.ghostRetries += 1 }
                usleep(1000)
            }
        }
    }

    /// Connect (or reconnect), HELLO, CREATE_VSMMU, a viommu on each pSMMU, two devices on each, an STE
    /// with one CD (random ASID) for every device.
    mutating func build() throws {
        let c = try connect()
        client = c
        var s = VSMMUState(id: try c.createVSMMU(name: "soak-\(index)"))
        for p in 0..<2 {
            let hostBase = UInt32(p * 64 + index * 2)
            var viommu: UInt32 = 0
            try ghostTolerant { viommu = try c.attachViommu(vsmmu: s.id, pSMMU: "smmu\(p)", hostDeviceID: hostBase).viommu }
            s.viommus.append(viommu)
            for d in 0..<2 {
                let sid = StreamID(0x100 + p * 2 + d)
                s.devices.append((hostBase + UInt32(d), sid, viommu))
                s.sidViommu[sid] = viommu
                try ghostTolerant { try c.setDeviceID(vsmmu: s.id, viommu: viommu, hostDeviceID: hostBase + UInt32(d), streamID: sid) }
                s.registered.insert(sid)
            }
        }
        for d in s.devices {
            let a = asid()
            try c.linkSTE(vsmmu: s.id, streamID: d.sid, ste: .stage1(contextTable: 0x4000_0000 + UInt64(d.sid) << 12),
                          contextDescriptors: [.valid(asid: a)])
            s.addLink(d.sid, a)
        }
        totals.add { $0.requests += 3 + 4 + 4 + 1 }
        vsmmu = s
    }

    /// A random valid command from the builders (and, rarely, a device command for an unregistered vSID,
    /// which stops the queue there: the reply's consumed count says where).
    mutating func randomCommand(_ s: VSMMUState) -> Command {
        let sid = s.devices[int(0...3)].sid
        switch int(0...99) {
        case 0..<25: return .tlbiNHASID(asid: asid())
        case 25..<45: return .tlbiNHVA(asid: asid(), address: UInt64(int(0...0xFFFF)) << 12)
        case 45..<52: return .tlbiNHAll()
        case 52..<58: return .tlbiNHVAA(address: UInt64(int(0...0xFFFF)) << 12)
        case 58..<75: return .cfgiCD(streamID: sid)
        case 75..<88: return .atcInv(streamID: sid)
        case 88..<99: return .sync()
        default: return .cfgiCD(streamID: 0x7777) // unregistered: CERROR_ILL here
        }
    }

    mutating func invalidate() throws {
        guard let c = client, var s = vsmmu else { return }
        var batch = (0..<int(1...24)).map { _ in randomCommand(s) }
        if int(0...3) != 0 { batch.append(.sync()) }
        let reply = try c.invalidate(vsmmu: s.id, commands: batch)
        // The reference: route commands in order until the first one the router refuses.
        var stop = batch.count
        for (i, cmd) in batch.enumerated() where !s.route(cmd) { stop = i; break }
        if Int(reply.consumed) != stop {
            totals.fail("client \(index): INVALIDATE consumed \(reply.consumed), reference says \(stop) (\(reply))")
        }
        vsmmu = s
        totals.add { $0.requests += 1; $0.invalidates += 1; $0.commands += batch.count; $0.consumed += Int(reply.consumed) }
    }

    /// Relink (new ASID), unlink + relink, or unset + set (+ relink) one device.
    mutating func controlChange() throws {
        guard let c = client, var s = vsmmu else { return }
        let d = s.devices[int(0...3)]
        switch int(0...2) {
        case 0:
            let a = asid()
            try c.linkSTE(vsmmu: s.id, streamID: d.sid, ste: .stage1(contextTable: 0x4000_0000 + UInt64(d.sid) << 12),
                          contextDescriptors: [.valid(asid: a)])
            s.dropLink(d.sid); s.addLink(d.sid, a)
            totals.add { $0.requests += 1 }
        case 1:
            try c.unlinkSTE(vsmmu: s.id, streamID: d.sid)
            s.dropLink(d.sid)
            let a = asid()
            try c.linkSTE(vsmmu: s.id, streamID: d.sid, ste: .stage1(contextTable: 0x5000_0000), contextDescriptors: [.valid(asid: a)])
            s.addLink(d.sid, a)
            totals.add { $0.requests += 2 }
        default:
            // UNSET_DEV_ID unlinks the vSTE first (PROTOCOL.md §5.7).
            try c.unsetDeviceID(vsmmu: s.id, viommu: d.viommu, hostDeviceID: d.host, streamID: d.sid)
            s.dropLink(d.sid); s.registered.remove(d.sid)
            vsmmu = s
            // A few commands while the device is away: its CFGI_CD must stop the queue.
            try invalidate()
            guard let updated = vsmmu else { return }
            s = updated
            try c.setDeviceID(vsmmu: s.id, viommu: d.viommu, hostDeviceID: d.host, streamID: d.sid)
            s.registered.insert(d.sid)
            let a = asid()
            try c.linkSTE(vsmmu: s.id, streamID: d.sid, ste: .stage1(contextTable: 0x6000_0000), contextDescriptors: [.valid(asid: a)])
            s.addLink(d.sid, a)
            totals.add { $0.requests += 3 }
        }
        vsmmu = s
        totals.add { $0.controlChanges += 1 }
    }

    /// A bad frame. In-stream where the protocol keeps the connection open (PROTOCOL.md §2.2: every error
    /// but FRAME_TOO_LARGE): an unknown type, a wrong payload length, reserved flags, an unknown vSMMU;
    /// FRAME_TOO_LARGE and random garbage on a throwaway connection.
    mutating func badFrame() throws {
        guard let c = client else { return }
        func raw(_ type: UInt16, flags: UInt16 = 0, length: UInt32? = nil, payload: [UInt8] = []) -> [UInt8] {
            var b: [UInt8] = []
            func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) } }
            le(length ?? UInt32(payload.count)); le(type); le(flags); le(UInt64(0xBAD0_0000 + index))
            return b + payload
        }
        let kind = int(0...5)
        switch kind {
        case 0, 1, 2:
            let frame = kind == 0 ? raw(0x7E7E) : kind == 1 ? raw(0x0020, payload: [1, 2, 3]) : raw(0x0042, flags: 0x8000)
            try c.sendBytes(frame)
            let (_, response) = try c.receive()
            guard case .error = response else { totals.fail("client \(index): bad frame \(kind) answered \(response)"); return }
        case 3:
            do {
                _ = try c.invalidate(vsmmu: VSMMUID(rawValue: 0xFFFF_FF00 + UInt32(index)), commands: [.sync()])
                totals.fail("client \(index): INVALIDATE of an unknown vSMMU succeeded")
            } catch {
                // A refusal (ERROR reply) is the answer; a transport failure is the soak's failure.
                guard case .server = error else { throw error }
            }
        default:
            let t = try VSMMUClient(socketPath: options.socket)
            if kind == 4 {
                try t.sendBytes(raw(0x0001, length: 0x7FFF_FFF0))
            } else {
                try t.sendBytes((0..<int(1...200)).map { _ in UInt8.random(in: 0...255, using: &rng) })
                t.shutdownWrite()
            }
            // Read until the daemon closes it (an ERROR or two, then end of stream).
            var frames = 0
            while frames < 64 { do { _ = try t.receive(); frames += 1 } catch { break } }
        }
        totals.add { $0.badFrames += 1; $0.requests += 1 }
    }

    /// Compares the daemon's per-viommu counters with the reference, then ends the vSMMU.
    mutating func checkAndTearDown(destroy: Bool) throws {
        guard let c = client, let s = vsmmu else { return }
        _ = try c.invalidate(vsmmu: s.id, commands: [.sync()]) // everything queued has executed
        let stats = try c.stats(vsmmu: s.id)
        var sum: UInt64 = 0
        for v in s.viommus {
            let want = s.expected[v] ?? 0
            sum += want
            let got = stats.value(.viommuCommandsDelivered, viommu: UInt16(truncatingIfNeeded: v)) ?? 0
            if got != want { totals.fail("client \(index) vSMMU \(s.id) viommu \(v): delivered \(got), reference \(want)") }
        }
        let delivered = stats.value(.commandsDelivered) ?? 0
        if delivered != sum { totals.fail("client \(index) vSMMU \(s.id): COMMANDS_DELIVERED \(delivered), reference \(sum)") }
        totals.add { $0.vsmmusChecked += 1; $0.viommusChecked += s.viommus.count; $0.viommuCommandsMatched += sum; $0.requests += 2 }
        if destroy { try c.destroyVSMMU(s.id); totals.add { $0.requests += 1 } }
        vsmmu = nil
    }

    mutating func run(until deadline: Date) {
        do {
            try build()
            while Date() < deadline {
                switch int(0...999) {
                case 0..<880: try invalidate()
                case 880..<950: try controlChange()
                case 950..<990: try badFrame()
                case 990..<995:
                    try checkAndTearDown(destroy: true) // destroy and rebuild on the same connection
                    client = nil; try build()
                default:
                    try checkAndTearDown(destroy: false) // close the connection, reconnect, rebuild
                    client = nil
                    totals.add { $0.reconnects += 1 }
                    try build()
                }
            }
            try checkAndTearDown(destroy: false)
            client = nil
        } catch {
            totals.fail("client \(index): \(error)")
        }
    }
}

// MARK: The daemon's resources, from /proc

struct Sample { var t: Double; var rssKiB: Int; var threads: Int; var fds: Int }

func sample(_ pid: Int32, t: Double) -> Sample? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    var rss = 0, threads = 0
    for line in status.split(separator: "\n") {
        let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        if f.first == "State:", f.count > 1, f[1] == "Z" { return nil }
        if f.first == "VmRSS:", f.count > 1 { rss = Int(f[1]) ?? 0 }
        if f.first == "Threads:", f.count > 1 { threads = Int(f[1]) ?? 0 }
    }
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    return Sample(t: t, rssKiB: rss, threads: threads, fds: fds)
}

// MARK: Main

/// Writes a line to stdout at once (the script shows progress while it runs).
func say(_ s: String) { FileHandle.standardOutput.write(Data((s + "\n").utf8)) }
signal(SIGPIPE, SIG_IGN)
let options = parseOptions()
let start = Date()
guard let baseline = sample(options.daemonPID, t: 0) else { say("FAIL: daemon \(options.daemonPID) is not running"); exit(1) }
say("baseline: rss \(baseline.rssKiB) KiB, threads \(baseline.threads), fds \(baseline.fds)")
let deadline = start.addingTimeInterval(options.seconds)
let group = DispatchGroup()
for i in 0..<options.clients {
    group.enter()
    let thread = Thread {
        var client = Client(index: i, options: options)
        client.run(until: deadline)
        group.leave()
    }
    thread.stackSize = 1 << 20
    thread.start()
}
var samples: [Sample] = []
var died = false
let interval = max(0.5, min(5.0, options.seconds / 30))
while group.wait(timeout: .now() + interval) == .timedOut {
    guard let s = sample(options.daemonPID, t: Date().timeIntervalSince(start)) else { died = true; break }
    samples.append(s)
    totals.add { t in
        say(String(format: "t=%5.0fs rss %6d KiB threads %4d fds %4d requests %9d commands %10d reconnects %5d bad %6d failures %d",
                     s.t, s.rssKiB, s.threads, s.fds, t.requests, t.commands, t.reconnects, t.badFrames, t.failures.count))
    }
}
if died { say("FAIL: the daemon died during the soak"); exit(1) }
group.wait()
// After every client closed: threads and fds back to the baseline (teardown may take a moment).
var after = sample(options.daemonPID, t: Date().timeIntervalSince(start))
for _ in 0..<100 {
    guard let a = after, a.threads > baseline.threads || a.fds > baseline.fds else { break }
    usleep(50_000)
    after = sample(options.daemonPID, t: Date().timeIntervalSince(start))
}
var failures = totals.failures
guard let after else { say("FAIL: the daemon died after the soak"); exit(1) }
say("after: rss \(after.rssKiB) KiB, threads \(after.threads), fds \(after.fds)")
if after.threads > baseline.threads { failures.append("threads \(after.threads) after all clients closed, baseline \(baseline.threads)") }
if after.fds > baseline.fds { failures.append("fds \(after.fds) after all clients closed, baseline \(baseline.fds)") }
// RSS flat after warm-up: the first third of the samples is the warm-up; the last third's max RSS must
// be ≤ the middle third's max + 10 %.
if samples.count >= 3 {
    let third = samples.count / 3
    let middle = samples[third..<(samples.count - third)].map(\.rssKiB).max() ?? 0
    let last = samples.suffix(third).map(\.rssKiB).max() ?? 0
    let first = samples.prefix(third).map(\.rssKiB).max() ?? 0
    say("rss: warm-up third max \(first) KiB, middle third max \(middle) KiB, last third max \(last) KiB (limit \(middle + middle / 10))")
    if last > middle + middle / 10 { failures.append("RSS grew: last third max \(last) KiB > middle third max \(middle) KiB + 10 %") }
} else {
    failures.append("too few samples (\(samples.count)) for the RSS check")
}
totals.add { t in
    say("totals: clients \(options.clients), seconds \(options.seconds), requests \(t.requests), INVALIDATEs \(t.invalidates), commands \(t.commands) (consumed \(t.consumed)), control changes \(t.controlChanges), reconnects \(t.reconnects), bad frames \(t.badFrames)")
    say("checked: \(t.vsmmusChecked) vSMMUs, \(t.viommusChecked) viommus, \(t.viommuCommandsMatched) delivered commands matched the reference; ghost retries \(t.ghostRetries)")
}
if options.failOnGhosts, totals.ghostRetries > 0 {
    failures.append("\(totals.ghostRetries) re-registrations met a ghost of a closed connection (BACKEND_FAILURE)")
}
for f in failures.prefix(50) { say("FAIL: \(f)") }
if failures.isEmpty { say("soak: OK") } else { say("soak: \(failures.count) failures"); exit(1) }
