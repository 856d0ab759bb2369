import CSocketShims
import Foundation
import SharedQueue
import Synchronization
import SMMUv3
import Testing
import VSMMUClient
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

private let queueNames = Atomic<Int>(0)

/// How many mappings of the memfd `name` this process has (`/proc/self/maps`).
func mappingCount(of name: String) -> Int {
    // Read in a loop: a /proc file has no size for a reader that trusts fstat.
    let fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return -1 }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(fd, &chunk, chunk.count)
        guard count > 0 else { break }
        bytes += chunk[0..<count]
    }
    return String(decoding: bytes, as: UTF8.self).split(separator: "\n").filter { $0.contains("/memfd:\(name) ") }.count
}

/// The VMM's side of a shared command queue, as a test plays it (PROTOCOL.md §8): a sealed memfd mapped
/// shared, a kick and a call eventfd, and the few lines of producer the tests need (the real producers
/// are the clients'). Used by one thread at a time.
final class TestQueueVMM: @unchecked Sendable {
    let memory: Int32
    let kick: Int32
    let call: Int32
    let base: UnsafeMutableRawPointer
    let length: Int
    let region: SharedQueueRegion
    var geometry: SharedQueueGeometry { region.geometry }
    /// The VMM's PROD.
    private(set) var producer: UInt32 = 0

    /// A queue of 2^`log2Entries` slots in a memfd of `size` bytes (default: exactly what it needs) with
    /// `seals`, its header initialised unless `initialise` is false.
    /// The memfd's name (`/proc/self/maps` shows it as `/memfd:<name> (deleted)`), unique per queue.
    let name: String

    init(log2Entries: Int = 8, size: Int? = nil, seals: Int32 = VSMMU_F_SEAL_SHRINK, initialise: Bool = true) throws {
        let geometry = try #require(SharedQueueGeometry(log2Entries: log2Entries))
        name = "vsmmu-test-queue-\(getpid())-\(queueNames.add(1, ordering: .relaxed).newValue)"
        memory = try SystemCall.memfdCreate(name)
        length = size ?? geometry.requiredSize
        try SystemCall.truncate(memory, to: length)
        if seals != 0 { try SystemCall.addSeals(seals, to: memory) }
        base = try SystemCall.mapShared(memory, length: max(length, geometry.requiredSize))
        region = try #require(SharedQueueRegion(base: base, length: geometry.requiredSize, geometry: geometry))
        if initialise { region.initialise() }
        kick = try SystemCall.eventFD(nonBlocking: true)
        call = try SystemCall.eventFD(nonBlocking: true)
    }

    deinit {
        try? SystemCall.unmap(base, length: max(length, geometry.requiredSize))
        for fd in [memory, kick, call] { close(fd) }
    }

    /// The daemon's CONS, as it is in memory now.
    var consumer: UInt32 { region.loadConsumer() }
    /// `state`.
    var state: UInt32 { region.loadState() }

    /// Writes `commands` from PROD on and publishes PROD with release, then kicks if the daemon sleeps
    /// (§8.2, §8.4). The caller leaves room (never more than 2^n outstanding).
    func publish(_ commands: [Command]) {
        for command in commands {
            region.storeCommand(command, at: producer)
            producer = geometry.advance(producer, by: 1)
        }
        storeProducer(producer)
    }

    /// Publishes `value` as PROD (any value: a hostile one too) and kicks if the daemon sleeps.
    func storeProducer(_ value: UInt32) {
        producer = value
        region.storeProducer(value)
        kickIfSleeping()
    }

    /// Acknowledges the last error (the guest's GERRORN) and kicks if the daemon sleeps.
    func acknowledgeError() {
        region.storeErrorAcknowledgement(region.loadErrorSequence())
        kickIfSleeping()
    }

    /// §8.4: after a store the daemon may wait on, a full fence, then `daemon_sleeping`.
    func kickIfSleeping() {
        SharedQueueRegion.fullFence()
        if region.loadDaemonSleeping() != 0 { _ = try? SystemCall.writeEvent(kick) }
    }

    /// Waits, as a VMM does (§8.4: spin, then `vmm_sleeping` = 1, fence, look again, sleep on call), until
    /// `condition` holds or `seconds` pass; whether it held.
    func wait(seconds: Double = 20, spins: Int = 1000, until condition: () -> Bool) -> Bool {
        for _ in 0..<spins where condition() { return true }
        let deadline = POSIX_now() + UInt64(seconds * 1e9)
        while true {
            region.storeVMMSleeping(1)
            SharedQueueRegion.fullFence()
            if condition() {
                region.storeVMMSleeping(0)
                return true
            }
            let now = POSIX_now()
            guard now < deadline else {
                region.storeVMMSleeping(0)
                return condition()
            }
            var fds = [pollfd(fd: call, events: Int16(POLLIN), revents: 0)]
            // The whole time left: a lost wake-up shows as a wait that times out, never as a slow success.
            _ = try? SystemCall.poll(&fds, timeoutMilliseconds: Int32(min(60_000, (deadline - now) / 1_000_000 + 1)))
            _ = try? SystemCall.readEventNoWait(call)
            region.storeVMMSleeping(0)
        }
    }

    /// Waits until CONS is `target` (or the queue stopped on an error or ended); whether CONS is `target`.
    func waitForConsumer(_ target: UInt32, seconds: Double = 20) -> Bool {
        let sequence = region.loadErrorSequence()
        _ = wait(seconds: seconds) {
            consumer == target || region.loadErrorSequence() != sequence || state == SharedQueueLayout.State.stopped.rawValue
        }
        return consumer == target
    }

    /// Waits until `error_sequence` moves from `sequence`; whether it did.
    func waitForError(after sequence: UInt32, seconds: Double = 20) -> Bool {
        wait(seconds: seconds) { region.loadErrorSequence() != sequence }
    }
}

/// Nanoseconds on the monotonic clock.
func POSIX_now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Sends `bytes` in one `sendmsg` with `fds` in one `SCM_RIGHTS` control message (the C client's and the
/// Swift client's three-fd send are the other helpers'; the test builds the control message itself:
/// `struct cmsghdr` is a size_t length, two ints, then the fds).
func sendWithDescriptors(_ socket: Int32, _ bytes: [UInt8], _ fds: [Int32]) -> Bool {
    let controlLength = 16 + 4 * fds.count // CMSG_LEN
    var control = [UInt8](repeating: 0, count: (controlLength + 7) & ~7) // CMSG_SPACE
    control.withUnsafeMutableBytes { raw in
        raw.storeBytes(of: controlLength, toByteOffset: 0, as: Int.self)
        raw.storeBytes(of: SOL_SOCKET, toByteOffset: 8, as: Int32.self)
        raw.storeBytes(of: Int32(SCM_RIGHTS), toByteOffset: 12, as: Int32.self)
        for (i, fd) in fds.enumerated() { raw.storeBytes(of: fd, toByteOffset: 16 + 4 * i, as: Int32.self) }
    }
    var payload = bytes
    return payload.withUnsafeMutableBytes { b in
        control.withUnsafeMutableBytes { c in
            var vector = iovec(iov_base: b.baseAddress, iov_len: b.count)
            return withUnsafeMutablePointer(to: &vector) { v in
                var message = msghdr()
                message.msg_iov = v
                message.msg_iovlen = 1
                if !fds.isEmpty {
                    message.msg_control = c.baseAddress
                    message.msg_controllen = c.count
                }
                return sendmsg(socket, &message, Int32(MSG_NOSIGNAL)) == b.count
            }
        }
    }
}

private let queueRequestIDs = Locked<UInt64>(1 << 40)

extension VSMMUClient {
    /// MAP_QUEUE of `vmm`'s memory and eventfds (or `fds` instead), sent with the three fds in one
    /// `sendmsg`; the reply.
    func mapQueue(vsmmu: VSMMUID, _ vmm: TestQueueVMM, log2Entries: UInt32? = nil, fds: [Int32]? = nil) throws -> Response {
        let id = queueRequestIDs.withLock { id -> UInt64 in
            id += 1
            return id
        }
        let request = Request.mapQueue(MapQueue(vsmmu: vsmmu, log2Entries: log2Entries ?? UInt32(vmm.geometry.log2Entries)))
        let bytes = try request.encode(requestID: id)
        try #require(sendWithDescriptors(fileDescriptor, bytes, fds ?? [vmm.memory, vmm.kick, vmm.call]))
        let (replyID, response) = try receive()
        #expect(replyID == id)
        return response
    }

    /// MAP_QUEUE that must succeed; the CONS the daemon starts from.
    @discardableResult
    func mapQueueOrFail(vsmmu: VSMMUID, _ vmm: TestQueueVMM, sourceLocation: SourceLocation = #_sourceLocation) throws -> UInt32 {
        let response = try mapQueue(vsmmu: vsmmu, vmm)
        guard case .mapQueue(let mapped) = response else {
            Issue.record("MAP_QUEUE answered \(response)", sourceLocation: sourceLocation)
            return UInt32.max
        }
        return mapped.consumer
    }

    /// UNMAP_QUEUE.
    func unmapQueue(vsmmu: VSMMUID) throws -> Response {
        try call(.unmapQueue(UnmapQueue(vsmmu: vsmmu)))
    }

    /// The ERROR a MAP_QUEUE was refused with (nil when it was not refused).
    func mapQueueRefusal(vsmmu: VSMMUID, _ vmm: TestQueueVMM, log2Entries: UInt32? = nil, fds: [Int32]? = nil) throws -> ProtocolError? {
        if case .error(let error) = try mapQueue(vsmmu: vsmmu, vmm, log2Entries: log2Entries, fds: fds) { return error }
        return nil
    }
}
