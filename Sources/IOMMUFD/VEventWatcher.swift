import PSMMU
import SMMUv3
import SystemPackage
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

// Concurrency notes (the vEVENTQ watcher and the readers it shares with the backends).
//
// Threads: one watcher thread per running ``VEventWatcher`` session, blocked in `epoll_wait` on every
// vEVENTQ descriptor registered (the backends of every viommu share ``VEventWatcher/shared``); the
// backends' callers (attach, detach, restore, setEventSink, takeEvents) on any thread.
//
// Locks, in the only order they nest: a backend's event-queue lifecycle lock → its state lock → the
// watcher's lock; a backend's lifecycle lock → a reader's gate. The watcher thread takes the watcher's
// lock (briefly, never while it reads or delivers) and a reader's gate, never a backend lock.
//
// A reader's gate (``VEventQueueReader``) is held by whoever reads that vEVENTQ: the watcher thread
// for a read *and the sink call that delivers it*, or `takeEvents` for a pull. Holding it through the
// sink call is what makes detach safe: the sink is never called under the watcher's or a backend's
// lock, but under this per-queue gate, which nothing else takes except ``VEventQueueReader/retire()``.
//
// The detach race, and why no descriptor is closed while the watcher may use it:
// 1. detach takes the viommu out of the backend's table, so no new pull starts on it;
// 2. ``VEventWatcher/remove(_:)`` takes the registration out of the watcher's table and deletes the
//    descriptor from the epoll set, under the watcher's lock: an `epoll_wait` that already returned
//    the descriptor finds no registration for its token and skips it; one that has not returned will
//    not report it (`EPOLL_CTL_DEL`);
// 3. ``VEventQueueReader/retire()`` takes the gate and marks the reader retired: it waits for a read
//    and delivery in flight (the watcher took the registration before step 2 and holds the gate), and
//    anyone who takes the gate after it finds the reader retired and does not touch the descriptor;
// 4. only then does the backend close the descriptor (once: it alone closes it), so its number cannot
//    be reused under a reader, and no event of the viommu reaches the sink after detach returns.
// Tokens (not descriptor numbers) name registrations in the epoll set, so a number reused by a later
// vEVENTQ is never mistaken for the old one.
//
// The cost of 3: detach waits for a sink call in flight for that viommu. The sink must not call back
// into the backend (``ViommuEventSink``), and detach must not be called holding a lock the sink takes,
// or the two wait for each other.
//
// Stopping: a session's thread runs while at least one descriptor is registered. The last `remove`
// marks the session stopping, wakes the thread through the session's eventfd and joins it; the thread
// closes the session's epoll and eventfd descriptors itself as it returns. A later `add` starts a new
// session (new descriptors, new thread).

/// One vEVENTQ descriptor as a backend and the watcher share it: the descriptor, the decoder of what
/// it reads, and the gate every read takes (see the concurrency notes at the top of this file).
///
/// `@unchecked Sendable`: its mutable state is in ``gate``.
public final class VEventQueueReader: @unchecked Sendable {
    /// The viommu whose vEVENTQ this is.
    public let viommu: ViommuHandle
    /// The vEVENTQ descriptor (owned by the backend, which closes it after ``retire()``).
    public let descriptor: FileDescriptor
    /// What the watcher polls for it (``IOMMUFDDevice/readinessDescriptor(eventQueue:)``); `nil`: it is
    /// not watched.
    let pollDescriptor: FileDescriptor?
    let device: any IOMMUFDDevice
    /// Called with each read's record and loss counts (the backend's counters).
    let account: @Sendable (_ records: Int, _ lost: UInt64) -> Void

    struct GateState: Sendable {
        var decoder: VEventDecoder
        /// Retired: the descriptor is about to be (or was) closed; nobody reads it any more.
        var retired = false
    }

    /// Held while the descriptor is read, and by the watcher until the sink returned.
    let gate: Locked<GateState>

    /// A reader of `viommu`'s vEVENTQ `descriptor`, read through `device`; `synchronized` as
    /// ``VEventDecoder/init(synchronized:)``.
    init(viommu: ViommuHandle, descriptor: FileDescriptor, device: any IOMMUFDDevice, synchronized: Bool,
         account: @escaping @Sendable (Int, UInt64) -> Void) {
        self.viommu = viommu
        self.descriptor = descriptor
        self.device = device
        pollDescriptor = device.readinessDescriptor(eventQueue: descriptor)
        self.account = account
        gate = Locked(GateState(decoder: VEventDecoder(synchronized: synchronized)))
    }

    /// The most bytes one `read(2)` asks for: 64 whole ARM vEVENTs.
    static let readSize = 64 * VEventDecoder.maximumEventSize
    /// The most reads of one drain; what is left waits for the next (the watcher's epoll is
    /// level-triggered, so a queue still non-empty is reported again).
    static let maximumReads = 64

    /// Reads what the vEVENTQ holds, without blocking (`iommufd_veventq_fops_read` returns 0 on an empty
    /// queue and whole vEVENTs only), into batches split at losses. Call with the gate held.
    /// - Returns: the batches, and the errno of a failed read (`nil`: the queue was drained or the read
    ///   limit reached).
    static func drain(_ state: inout GateState, of reader: VEventQueueReader) -> (batches: [ViommuEvents], failure: Errno?) {
        guard !state.retired else { return ([], nil) }
        var batches: [ViommuEvents] = []
        var records = 0
        var lost: UInt64 = 0
        var failure: Errno?
        var buffer = [UInt8](repeating: 0, count: readSize)
        for _ in 0 ..< maximumReads {
            let read = buffer.withUnsafeMutableBytes { reader.device.read(eventQueue: reader.descriptor, into: $0) }
            let count: Int
            switch read {
            case .success(let n): count = n
            case .failure(let errno):
                if errno != .resourceTemporarilyUnavailable { failure = errno }
                count = 0
            }
            guard count > 0 else { break }
            let decoded = buffer.withUnsafeBytes {
                state.decoder.decode(UnsafeRawBufferPointer(rebasing: $0[..<min(count, $0.count)]),
                                     viommu: reader.viommu, into: &batches)
            }
            records += decoded.records
            lost += decoded.lost
            // The kernel stops filling only when the queue is empty or the next event does not fit.
            if readSize - count >= VEventDecoder.maximumEventSize { break }
        }
        if records > 0 || lost > 0 { reader.account(records, lost) }
        return (batches, failure)
    }

    /// Stops every read of the descriptor: waits for a read (and a watcher's delivery) in flight, then
    /// marks the reader retired, after which the descriptor may be closed.
    func retire() {
        gate.withLock { $0.retired = true }
    }
}

/// One thread watching every registered vEVENTQ descriptor with epoll, reading each as it becomes
/// readable and delivering what it read to the registration's sink: the iommufd backends' event source
/// (issue 14). Each viommu's events reach its sink in the order the kernel queued them; viommus are
/// served one after another by the one thread.
///
/// See the concurrency notes at the top of this file for the locks, the detach race and stopping.
public final class VEventWatcher: Sendable {
    /// The watcher every ``IOMMUFDBackend`` uses unless given another: one thread for the whole daemon.
    public static let shared = VEventWatcher()

    /// One epoll instance, its wake-up eventfd and the thread waiting on them.
    final class Session: @unchecked Sendable {
        let epollFD: Int32
        let wakeFD: Int32
        // Guarded by the watcher's lock.
        var stopping = false
        var thread: OSThread?
        /// The watcher thread's id, to recognise a `remove` called from a sink (which must not join).
        var threadID: pthread_t?

        init(epollFD: Int32, wakeFD: Int32) {
            self.epollFD = epollFD
            self.wakeFD = wakeFD
        }
    }

    struct Registration: Sendable {
        let reader: VEventQueueReader
        let sink: any ViommuEventSink
        let session: Session
    }

    struct State: Sendable {
        var session: Session?
        var registrations: [UInt64: Registration] = [:]
        /// 0 is the wake-up eventfd's token.
        var nextToken: UInt64 = 1
        var sessionsStarted: UInt64 = 0
    }

    let state = Locked(State())

    /// A watcher with no thread yet (one starts at the first ``add(_:sink:)``).
    public init() {}

    /// Whether a thread is watching (at least one descriptor is registered).
    public var isRunning: Bool { state.withLock { $0.session != nil } }

    /// Descriptors registered now.
    public var registeredCount: Int { state.withLock { $0.registrations.count } }

    /// Watcher threads started so far (one per session: a session lasts from the first registration to
    /// the removal of the last).
    public var threadsStarted: UInt64 { state.withLock { $0.sessionsStarted } }

    /// Watches `reader`'s descriptor: from now on what it reads goes to `sink`. Starts the thread if
    /// none runs.
    /// - Returns: the registration's token, for ``remove(_:)``; `nil` for a reader that cannot be watched
    ///   (no ``VEventQueueReader/pollDescriptor``).
    /// - Throws: the `Errno` of `epoll_create1`, `eventfd`, `pthread_create` or `epoll_ctl`.
    func add(_ reader: VEventQueueReader, sink: any ViommuEventSink) throws(Errno) -> UInt64? {
        guard let polled = reader.pollDescriptor else { return nil }
        return try state.withLock { (s) throws(Errno) -> UInt64 in
            let session: Session
            if let running = s.session {
                session = running
            } else {
                session = try startSession()
                s.session = session
                s.sessionsStarted += 1
            }
            let token = s.nextToken
            s.nextToken += 1
            do throws(Errno) {
                try SystemCall.epollAdd(session.epollFD, polled.rawValue, token: token)
            } catch {
                if s.registrations.isEmpty { stopLocked(&s) }
                throw error
            }
            s.registrations[token] = Registration(reader: reader, sink: sink, session: session)
            return token
        }
    }

    /// Stops watching the registration `token`. A read or delivery of it in flight on the watcher
    /// thread may still be running when this returns: the backend retires the reader
    /// (``VEventQueueReader/retire()``) before it closes the descriptor. The last removal stops the
    /// thread and joins it (unless called from the watcher thread itself, i.e. from a sink, which must
    /// not happen: the thread then finishes on its own).
    func remove(_ token: UInt64) {
        let stopped: Session? = state.withLock { s in
            guard let registration = s.registrations.removeValue(forKey: token) else { return nil }
            if let polled = registration.reader.pollDescriptor {
                try? SystemCall.epollDelete(registration.session.epollFD, polled.rawValue)
            }
            guard s.registrations.isEmpty else { return nil }
            return stopLocked(&s)
        }
        guard let stopped else { return }
        let (thread, threadID) = state.withLock { _ in (stopped.thread, stopped.threadID) }
        if let threadID, pthread_equal(threadID, pthread_self()) != 0 { return }
        thread?.join()
    }

    /// Marks the running session stopping and wakes its thread. Call with the lock held.
    @discardableResult
    private func stopLocked(_ s: inout State) -> Session? {
        guard let session = s.session else { return nil }
        s.session = nil
        session.stopping = true
        _ = try? SystemCall.writeEvent(session.wakeFD)
        return session
    }

    /// A new epoll instance with its wake-up eventfd (token 0), and its thread. Call with the lock held.
    private func startSession() throws(Errno) -> Session {
        let epollFD = try SystemCall.epollCreate()
        let wakeFD: Int32
        do throws(Errno) {
            wakeFD = try SystemCall.eventFD()
            try SystemCall.epollAdd(epollFD, wakeFD, token: 0)
        } catch {
            _ = Glibc.close(epollFD)
            throw error
        }
        let session = Session(epollFD: epollFD, wakeFD: wakeFD)
        do throws(Errno) {
            session.thread = try OSThread { [self] in run(session) }
        } catch {
            _ = Glibc.close(wakeFD)
            _ = Glibc.close(epollFD)
            throw error
        }
        return session
    }

    /// The watcher thread: waits, then reads and delivers each ready registration, until its session is
    /// stopped; closes the session's descriptors on the way out.
    private func run(_ session: Session) {
        state.withLock { _ in session.threadID = pthread_self() }
        defer {
            _ = Glibc.close(session.wakeFD)
            _ = Glibc.close(session.epollFD)
        }
        while true {
            let ready: [EpollReady]
            do {
                ready = try SystemCall.epollWait(session.epollFD, timeoutMilliseconds: -1)
            } catch {
                // Only EBADF/EINVAL (the instance is gone) or EFAULT: nothing to wait on any more.
                return
            }
            for item in ready {
                if item.token == 0 {
                    _ = try? SystemCall.readEventNoWait(session.wakeFD)
                    if state.withLock({ _ in session.stopping }) { return }
                    continue
                }
                serve(item)
            }
        }
    }

    /// Reads registration `item.token`'s vEVENTQ and delivers what it read, under the reader's gate. A
    /// descriptor that fails to read, or hangs up with nothing to read (which a vEVENTQ never does:
    /// `iommufd_eventq_fops_poll` reports only `EPOLLIN`), is taken out of the epoll set so that the
    /// level-triggered wait does not spin on it; it stays registered until its ``remove(_:)``.
    private func serve(_ item: EpollReady) {
        guard let registration = state.withLock({ $0.registrations[item.token] }) else { return }
        let reader = registration.reader
        let failed: Bool = reader.gate.withLock { gate in
            guard !gate.retired else { return false }
            let (batches, failure) = VEventQueueReader.drain(&gate, of: reader)
            for batch in batches { registration.sink.viommuEventsArrived(batch) }
            return failure != nil || (batches.isEmpty && item.isBroken && !item.isReadable)
        }
        if failed {
            state.withLock { s in
                guard s.registrations[item.token] != nil, let polled = reader.pollDescriptor else { return }
                try? SystemCall.epollDelete(registration.session.epollFD, polled.rawValue)
            }
        }
    }
}
