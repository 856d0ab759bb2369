import Glibc
import IOMMUFD
import SMMUv3
import Synchronization
import SystemPackage

/// An iommufd that records every syscall the backend makes, byte for byte, and answers like a scripted
/// kernel.
///
/// By default every ioctl succeeds: allocations write the next object id (from 100 up) into their
/// `out_*` field, `IOMMU_VEVENTQ_ALLOC` also a descriptor number (from 1000 up), and
/// `IOMMU_HWPT_INVALIDATE` leaves `entry_num` as it was (all handled). ``script(_:_:)`` queues answers
/// for a request, consumed in order.
///
/// With `realEventQueues`, each `IOMMU_VEVENTQ_ALLOC` hands out one end of a `SOCK_SEQPACKET` socket pair
/// as the vEVENTQ descriptor (non-blocking, so a read of an empty queue fails with EAGAIN where the
/// kernel returns 0), so that epoll sees it become readable: ``writeEvents(descriptor:_:)`` sends one
/// message into the other end, which one `read(2)` returns whole, as the kernel returns whole vEVENTs.
final class FakeIOMMUFD: IOMMUFDDevice {
    /// One ioctl as the kernel saw it.
    struct Call: Hashable, Sendable {
        var request: IOMMUFDRequest
        /// For a VFIO device ioctl: the request and the VFIO descriptor it was made on (`request` is then
        /// `IOMMUFDRequest(rawValue: 0)`).
        var vfio: VFIOCall? = nil
        /// The argument struct's bytes on entry.
        var bytes: [UInt8]
        /// The bytes `data_uptr` pointed at (`IOMMU_HWPT_ALLOC`: `data_len` bytes; `IOMMU_HWPT_INVALIDATE`:
        /// `entry_len × entry_num` bytes), empty for other requests.
        var payload: [UInt8]

        func u32(at offset: Int) -> UInt32 {
            (0..<4).reduce(0) { $0 | UInt32(bytes[offset + $1]) << UInt32(8 * $1) }
        }
        func u64(at offset: Int) -> UInt64 {
            (0..<8).reduce(0) { $0 | UInt64(bytes[offset + $1]) << UInt64(8 * $1) }
        }
    }

    /// A VFIO device ioctl's request and descriptor.
    struct VFIOCall: Hashable, Sendable {
        var request: VFIODeviceRequest
        var descriptor: Int32
    }

    /// A scripted answer to one ioctl.
    struct Answer: Sendable {
        var errno: Errno?
        /// Written to `entry_num` (`IOMMU_HWPT_INVALIDATE`).
        var entryNum: UInt32?
        /// Written to the `out_*` id field of an allocation.
        var objectID: UInt32?

        static func fail(_ errno: Errno, entryNum: UInt32? = nil) -> Answer {
            Answer(errno: errno, entryNum: entryNum)
        }
        static func succeed(objectID: UInt32? = nil) -> Answer { Answer(objectID: objectID) }
    }

    private struct State {
        var calls: [Call] = []
        var journal: [String] = []
        var scripts: [IOMMUFDRequest: [Answer]] = [:]
        var vfioScripts: [VFIODeviceRequest: [Answer]] = [:]
        var idRegisters = IDRegisters.simulatedDefault
        var nextObjectID: UInt32 = 100
        var nextDescriptor: Int32 = 1000
        var eventBytes: [Int32: [[UInt8]]] = [:]
        var closed: [Int32] = []
        /// vEVENTQ descriptor → the socket end the test writes into.
        var eventWriters: [Int32: Int32] = [:]
    }

    private let state = Mutex(State())
    /// Whether vEVENTQ descriptors are real sockets (see the type's documentation).
    let realEventQueues: Bool

    init(realEventQueues: Bool = false) {
        self.realEventQueues = realEventQueues
    }

    deinit {
        for (reader, writer) in state.withLock({ $0.eventWriters }) {
            _ = Glibc.close(writer)
            _ = Glibc.close(reader)
        }
    }

    /// The vEVENTQ descriptors handed out and not closed yet.
    var openEventQueueDescriptors: [Int32] { state.withLock { $0.eventWriters.keys.sorted() } }

    /// Sends `bytes` as one message into the real vEVENTQ `descriptor` (one `read(2)`'s worth).
    /// - Returns: whether it was sent (not once the backend closed the descriptor).
    @discardableResult
    func writeEvents(descriptor: Int32, _ bytes: [UInt8]) -> Bool {
        guard let writer = state.withLock({ $0.eventWriters[descriptor] }) else { return false }
        return bytes.withUnsafeBytes { send(writer, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count
    }

    /// How many times the backend closed `descriptor`.
    func closeCount(_ descriptor: Int32) -> Int { closedDescriptors.count { $0 == descriptor } }

    var calls: [Call] { state.withLock { $0.calls } }
    /// Every syscall in order: `IOMMU_VIOMMU_ALLOC`, `close(1000)`, `IOMMU_DESTROY 101`, …
    var journal: [String] { state.withLock { $0.journal } }
    var closedDescriptors: [Int32] { state.withLock { $0.closed } }

    func calls(_ request: IOMMUFDRequest) -> [Call] { calls.filter { $0.request == request && $0.vfio == nil } }

    /// Forgets the calls and journal so far (a test's set-up), keeping objects, scripts and ids.
    func forgetCalls() {
        state.withLock {
            $0.calls.removeAll()
            $0.journal.removeAll()
        }
    }

    /// Queues answers for the next `request`s.
    func script(_ request: IOMMUFDRequest, _ answers: Answer...) {
        state.withLock { $0.scripts[request, default: []].append(contentsOf: answers) }
    }

    /// Queues answers for the next VFIO device `request`s.
    func script(_ request: VFIODeviceRequest, _ answers: Answer...) {
        state.withLock { $0.vfioScripts[request, default: []].append(contentsOf: answers) }
    }

    /// What `IOMMU_GET_HW_INFO` writes (type ARM_SMMUV3).
    var idRegisters: IDRegisters {
        get { state.withLock { $0.idRegisters } }
        set { state.withLock { $0.idRegisters = newValue } }
    }

    /// The VFIO ioctls made, in order.
    var vfioCalls: [Call] { calls.filter { $0.vfio != nil } }

    /// Queues one `read(2)`'s bytes on a vEVENTQ descriptor.
    func queueEventRead(descriptor: Int32, _ bytes: [UInt8]) {
        state.withLock { $0.eventBytes[descriptor, default: []].append(bytes) }
    }

    func ioctl(request: IOMMUFDRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        state.withLock { state in
            var call = Call(request: request, bytes: Array(argument), payload: [])
            switch request {
            case .hwptAlloc:
                call.payload = Self.pointee(address: call.u64(at: 32), count: Int(call.u32(at: 28)))
            case .hwptInvalidate:
                call.payload = Self.pointee(address: call.u64(at: 8), count: Int(call.u32(at: 20)) * Int(call.u32(at: 24)))
            case .getHWInfo:
                let registers = state.idRegisters
                let words = [0, 0] + registers.idr + [registers.iidr, registers.aidr]
                let bytes = words.flatMap(le32)
                if let pointer = UnsafeMutableRawPointer(bitPattern: UInt(call.u64(at: 16))) {
                    UnsafeMutableRawBufferPointer(start: pointer, count: min(bytes.count, Int(call.u32(at: 12)))).copyBytes(from: bytes)
                }
            default:
                break
            }
            state.calls.append(call)
            state.journal.append(request == .destroy ? "\(request) \(call.u32(at: 4))" : "\(request)")

            let answer = state.scripts[request]?.isEmpty == false ? state.scripts[request]!.removeFirst() : Answer()
            if let entryNum = answer.entryNum, request == .hwptInvalidate {
                argument.storeBytes(of: entryNum.littleEndian, toByteOffset: 24, as: UInt32.self)
            }
            if let errno = answer.errno { return errno }

            func allocateID() -> UInt32 {
                if let id = answer.objectID { return id }
                defer { state.nextObjectID += 1 }
                return state.nextObjectID
            }
            switch request {
            case .viommuAlloc: argument.storeBytes(of: allocateID().littleEndian, toByteOffset: 20, as: UInt32.self)
            case .vdeviceAlloc: argument.storeBytes(of: allocateID().littleEndian, toByteOffset: 12, as: UInt32.self)
            case .hwptAlloc: argument.storeBytes(of: allocateID().littleEndian, toByteOffset: 16, as: UInt32.self)
            case .getHWInfo:
                argument.storeBytes(of: UInt32(2).littleEndian, toByteOffset: 24, as: UInt32.self) // ARM_SMMUV3
                argument.storeBytes(of: UInt32(40).littleEndian, toByteOffset: 12, as: UInt32.self)
            case .veventqAlloc:
                argument.storeBytes(of: allocateID().littleEndian, toByteOffset: 20, as: UInt32.self)
                var descriptor = state.nextDescriptor
                if realEventQueues {
                    var pair: [Int32] = [-1, -1]
                    guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
                        return Errno(rawValue: errno)
                    }
                    _ = fcntl(pair[0], F_SETFL, fcntl(pair[0], F_GETFL) | O_NONBLOCK)
                    descriptor = pair[0]
                    state.eventWriters[pair[0]] = pair[1]
                } else {
                    state.nextDescriptor += 1
                }
                argument.storeBytes(of: UInt32(bitPattern: descriptor).littleEndian, toByteOffset: 24, as: UInt32.self)
            default: break
            }
            return nil
        }
    }

    func read(eventQueue: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, Errno> {
        if realEventQueues {
            guard state.withLock({ $0.eventWriters[eventQueue.rawValue] != nil }) else { return .failure(.badFileDescriptor) }
            let count = Glibc.read(eventQueue.rawValue, buffer.baseAddress, buffer.count)
            return count < 0 ? .failure(Errno(rawValue: errno)) : .success(count)
        }
        return state.withLock { state in
            guard !state.closed.contains(eventQueue.rawValue) else { return .failure(.badFileDescriptor) }
            guard var pending = state.eventBytes[eventQueue.rawValue], !pending.isEmpty else { return .success(0) }
            let chunk = pending.removeFirst()
            state.eventBytes[eventQueue.rawValue] = pending
            precondition(chunk.count <= buffer.count, "scripted read larger than the backend's buffer")
            buffer.copyBytes(from: chunk)
            return .success(chunk.count)
        }
    }

    /// The socket itself with `realEventQueues`; otherwise the numbers are not descriptors: not watched.
    func readinessDescriptor(eventQueue: FileDescriptor) -> FileDescriptor? { realEventQueues ? eventQueue : nil }

    func close(eventQueue: FileDescriptor) {
        let writer = state.withLock {
            $0.closed.append(eventQueue.rawValue)
            $0.journal.append("close(\(eventQueue.rawValue))")
            return $0.eventWriters.removeValue(forKey: eventQueue.rawValue)
        }
        if let writer {
            _ = Glibc.close(eventQueue.rawValue)
            _ = Glibc.close(writer)
        }
    }

    func ioctl(vfioDevice: FileDescriptor, request: VFIODeviceRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        state.withLock { state in
            let call = Call(request: IOMMUFDRequest(rawValue: 0), vfio: VFIOCall(request: request, descriptor: vfioDevice.rawValue),
                            bytes: Array(argument), payload: [])
            state.calls.append(call)
            state.journal.append(request == .attachIOMMUFDPT
                ? "\(request)(\(vfioDevice.rawValue)) \(call.u32(at: 8))" : "\(request)(\(vfioDevice.rawValue))")
            let answer = state.vfioScripts[request]?.isEmpty == false ? state.vfioScripts[request]!.removeFirst() : Answer()
            return answer.errno
        }
    }

    func close(vfioDevice: FileDescriptor) {
        state.withLock {
            $0.closed.append(vfioDevice.rawValue)
            $0.journal.append("close(\(vfioDevice.rawValue))")
        }
    }

    private static func pointee(address: UInt64, count: Int) -> [UInt8] {
        guard count > 0, let pointer = UnsafeRawPointer(bitPattern: UInt(address)) else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }
}

// MARK: - Byte helpers

func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> UInt32(8 * $0)) } }
func le64(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> UInt64(8 * $0)) } }
