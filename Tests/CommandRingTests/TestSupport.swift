import Atomics
import Dispatch
import SMMUv3
import Testing
@testable import CommandRing

#if canImport(Glibc)
import Glibc
import VSMMUTestSupport
#endif
import VSMMUSystem

/// Commands per producer in the stress tests: `VSMMUD_RING_STRESS_COUNT`, 1,000,000 by default.
let stressCount: Int = {
    if let value = getenv("VSMMUD_RING_STRESS_COUNT"), let count = Int(String(cString: value)), count > 0 {
        return count
    }
    return 1_000_000
}()

/// A test command that says who pushed it and its place in that producer's stream:
/// w0 = producer << 48 | sequence, w1 = a check word derived from w0.
func taggedCommand(producer: Int, sequence: Int) -> Command {
    let w0 = UInt64(producer) << 48 | UInt64(sequence)
    return Command(w0: w0, w1: ~w0 &* 0x9E37_79B9_7F4A_7C15)
}

/// Decodes ``taggedCommand(producer:sequence:)``; `nil` when the check word does not match.
func decodeTag(_ command: Command) -> (producer: Int, sequence: Int)? {
    guard command.w1 == ~command.w0 &* 0x9E37_79B9_7F4A_7C15 else { return nil }
    return (Int(command.w0 >> 48), Int(command.w0 & 0xFFFF_FFFF_FFFF))
}


/// Starts `body` on a new POSIX thread (not a Swift concurrency task: these threads spin and block).
func startThread(_ body: @escaping @Sendable () -> Void) throws -> OSThread {
    try OSThread(body)
}

/// Polls `condition` until it holds, yielding between polls. Records an issue and returns `false`
/// after 60 s, as a guard against hanging the test run (not a timing assertion).
@discardableResult
func eventually(_ what: Comment, sourceLocation: SourceLocation = #_sourceLocation, _ condition: () -> Bool) -> Bool {
    let deadline = DispatchTime.now().uptimeNanoseconds + 60_000_000_000
    while !condition() {
        if DispatchTime.now().uptimeNanoseconds > deadline {
            Issue.record("gave up waiting: \(what)", sourceLocation: sourceLocation)
            return false
        }
        sched_yield()
    }
    return true
}

/// A gate a sink can block on until the test opens it, and that tells the test when it was reached.
final class Gate: Sendable {
    private let reached = DispatchSemaphore(value: 0)
    private let opened = DispatchSemaphore(value: 0)

    /// Called by the blocked thread: signals arrival, then waits for ``open()``.
    func pass() {
        reached.signal()
        opened.wait()
        opened.signal()
    }

    /// Waits until some thread reached the gate.
    func waitUntilReached() {
        reached.wait()
        reached.signal()
    }

    func open() { opened.signal() }
}

/// Thread-safe recorder of everything a sink received, for the single-threaded checks.
///
/// `@unchecked Sendable`: every access goes through `lock`.
final class SinkLog: @unchecked Sendable {
    private let lock = Parker()
    private var _commands: [Command] = []
    private var _batches: [Int] = []

    func record(_ batch: UnsafeBufferPointer<Command>) {
        lock.withLock {
            _commands.append(contentsOf: batch)
            _batches.append(batch.count)
        }
    }

    var commands: [Command] { lock.withLock { _commands } }
    var batchSizes: [Int] { lock.withLock { _batches } }
}

/// Counts calls from any thread.
final class CallCounter: Sendable {
    private let count = ManagedAtomic<Int>(0)
    func increment() { count.wrappingIncrement(ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

/// Holds one value handed from one thread to another.
///
/// `@unchecked Sendable`: every access goes through `lock`.
final class Handoff<Value>: @unchecked Sendable {
    private let lock = Parker()
    private var value: Value?
    func put(_ newValue: Value) { lock.withLock { value = newValue } }
    func take() -> Value? { lock.withLock { value } }
}

func commands(_ range: Range<Int>, producer: Int = 0) -> [Command] {
    range.map { taggedCommand(producer: producer, sequence: $0) }
}

extension ViommuQueue.DrainPolicy: CustomTestStringConvertible {
    public var testDescription: String {
        switch self {
        case .inline: return "inline"
        case .inlineWithDrainThread: return "inline + drain thread"
        case .drainThread: return "drain thread"
        }
    }
}

struct ConsumerRoleUnavailable: Error {}

/// Takes the ring's consumer role, failing the test when another thread holds it.
func acquireRole(_ ring: CommandRing, sourceLocation: SourceLocation = #_sourceLocation) throws -> ConsumerRole {
    guard let role = ring.tryAcquireConsumerRole() else {
        Issue.record("the consumer role is held", sourceLocation: sourceLocation)
        throw ConsumerRoleUnavailable()
    }
    return role
}

/// Whether the consumer role can be taken right now (it is given back at once).
func roleIsFree(_ ring: CommandRing) -> Bool {
    guard let role = ring.tryAcquireConsumerRole() else { return false }
    _ = role.release()
    return true
}
