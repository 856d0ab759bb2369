import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How long a connection's thread polls for the VMM's next request before it sleeps: the daemon's
/// counterpart of KVM's halt-polling (`halt_poll_ns`).
///
/// A guest in strict mode sends its next CMD_SYNC a few microseconds after the previous answer. A thread
/// asleep in `recvmsg` costs that round trip a wake-up, which on a KVM guest is an IPI to a halted vCPU:
/// several microseconds, as much as the daemon's own work. Polling with non-blocking reads for a short
/// window catches such a request without the wake-up. The window adapts per connection, as KVM's does:
/// a request caught while polling keeps it; one that came later than the window but within
/// ``maximumNanoseconds`` doubles it (a longer poll would have caught it); one that came later than that
/// halves it, down to zero, so a connection whose requests are far apart (a lazy guest, or many VMs
/// sharing few CPUs) sleeps at once and costs no CPU.
///
/// A wait that slept is measured up to the moment the thread ran again, so it includes the wake-up
/// itself: tens of microseconds on a KVM guest, more than the window. Counted as it is, a request that
/// came right after the window would look too late for any poll, the window would shrink to nothing and
/// stay there, each side waking the other on every request (the shared queue showed it: both sides
/// asleep on every CMD_SYNC in one run of three). So a wait counts as "too late" only beyond
/// ``maximumNanoseconds`` plus ``wakeUpAllowanceNanoseconds``; a guest idle for longer than that still
/// closes the window at once. At most ``RequestPollingSlots/capacity`` threads
/// poll at the same time, and only while no other connection thread is serving a request (a poll stops
/// when one starts): polling must never take the CPUs that other connections' work needs.
struct RequestPoller {
    /// The longest window; 0 disables polling.
    let maximumNanoseconds: UInt64
    /// The current window: 0 → the next wait sleeps at once.
    private(set) var windowNanoseconds: UInt64

    /// The smallest window a grow starts from, and below which a shrink stops polling.
    static let minimumNanoseconds: UInt64 = 2_000
    /// What a wait that slept may have spent being woken (see the type's notes): 200 µs, several times a
    /// cross-vCPU wake-up on the test machine, and far below a lazy guest's gaps (milliseconds).
    static let wakeUpAllowanceNanoseconds: UInt64 = 200_000

    init(maximum: Duration) {
        maximumNanoseconds = UInt64(max(0, maximum.nanosecondsClamped))
        windowNanoseconds = maximumNanoseconds
    }

    /// Adapts the window to a request that arrived `waitedNanoseconds` after the connection began
    /// waiting, caught while polling or not.
    mutating func record(waitedNanoseconds: UInt64, caughtWhilePolling: Bool) {
        guard maximumNanoseconds > 0, !caughtWhilePolling else { return }
        if waitedNanoseconds <= maximumNanoseconds &+ Self.wakeUpAllowanceNanoseconds {
            windowNanoseconds = min(maximumNanoseconds, max(windowNanoseconds &* 2, Self.minimumNanoseconds))
        } else {
            windowNanoseconds /= 2
            if windowNanoseconds < Self.minimumNanoseconds { windowNanoseconds = 0 }
        }
    }
}

/// How many connection threads may poll at once (``RequestPoller``): half the CPUs, none on one CPU; and
/// how many are serving a request right now (a thread polls only while none is).
public final class RequestPollingSlots: Sendable {
    let capacity: Int
    private let inUse = Atomic<Int>(0)
    private let servingCount = Atomic<Int>(0)

    /// Connection threads between receiving a request and waiting for the next.
    var serving: Int { servingCount.load(ordering: .relaxed) }

    func beginServing() { servingCount.add(1, ordering: .relaxed) }
    func endServing() { servingCount.subtract(1, ordering: .relaxed) }

    init(capacity: Int = RequestPollingSlots.defaultCapacity) {
        self.capacity = capacity
    }

    /// Half the online CPUs, rounded down: 1 on a 2-CPU machine, 0 on one CPU.
    public static var defaultCapacity: Int {
        let cpus = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return cpus > 1 ? Int(cpus) / 2 : 0
    }

    /// Takes a slot if one is free.
    func tryAcquire() -> Bool {
        var current = inUse.load(ordering: .relaxed)
        while current < capacity {
            let (exchanged, original) = inUse.compareExchange(expected: current, desired: current + 1, ordering: .acquiring)
            if exchanged { return true }
            current = original
        }
        return false
    }

    func release() {
        inUse.subtract(1, ordering: .releasing)
    }
}
