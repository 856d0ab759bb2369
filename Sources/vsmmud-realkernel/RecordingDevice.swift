import CIOMMUFD
import IOMMUFD
import VSMMUSystem
import SystemPackage

/// An ``IOMMUFDDevice`` in front of the relay that records every call the backends make, with the
/// argument bytes before and after the (real) kernel saw them: what the checks read the kernel's own
/// answers from (object ids, `entry_num`, the `pt_id` of each attach) and what they destroy afterwards
/// to prove nothing was left behind.
final class RecordingDevice: IOMMUFDDevice {
    enum Kind: Hashable, Sendable {
        case iommufd(IOMMUFDRequest)
        case vfio(Int32, VFIODeviceRequest)
        case read(Int32)
        case closeEventQueue(Int32)
        case closeVFIO(Int32)
    }

    struct Call: Sendable {
        var kind: Kind
        var before: [UInt8]
        var after: [UInt8]
        var errno: Errno?

        func u32(_ offset: Int, after useAfter: Bool = true) -> UInt32 {
            let bytes = useAfter ? after : before
            guard bytes.count >= offset + 4 else { return 0 }
            return (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * UInt32($1)) }
        }

        var request: IOMMUFDRequest? {
            if case .iommufd(let request) = kind { return request }
            return nil
        }
    }

    let base: any IOMMUFDDevice
    private let log = Locked<[Call]>([])

    init(_ base: any IOMMUFDDevice) { self.base = base }

    /// How many calls were recorded so far: a mark for ``calls(since:)``.
    var count: Int { log.withLock { $0.count } }

    func calls(since mark: Int = 0) -> [Call] { log.withLock { Array($0[min(mark, $0.count)...]) } }

    private func record(_ call: Call) { log.withLock { $0.append(call) } }

    /// The time spent in the relay's `IOMMU_HWPT_INVALIDATE` calls (channel round trip and kernel).
    var invalidateTime: Duration { time.withLock { $0 } }
    private let time = Locked<Duration>(.zero)

    func ioctl(request: IOMMUFDRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        let before = Array(argument)
        let clock = ContinuousClock()
        let start = clock.now
        let errno = base.ioctl(request: request, argument: argument)
        if request == .hwptInvalidate {
            let spent = start.duration(to: clock.now)
            time.withLock { $0 += spent }
        }
        record(Call(kind: .iommufd(request), before: before, after: Array(argument), errno: errno))
        return errno
    }

    func read(eventQueue: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, Errno> {
        let result = base.read(eventQueue: eventQueue, into: buffer)
        let errno: Errno? = if case .failure(let e) = result { e } else { nil }
        record(Call(kind: .read(eventQueue.rawValue), before: [], after: [], errno: errno))
        return result
    }

    func close(eventQueue: FileDescriptor) {
        base.close(eventQueue: eventQueue)
        record(Call(kind: .closeEventQueue(eventQueue.rawValue), before: [], after: [], errno: nil))
    }

    func ioctl(vfioDevice: FileDescriptor, request: VFIODeviceRequest, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        let before = Array(argument)
        let errno = base.ioctl(vfioDevice: vfioDevice, request: request, argument: argument)
        record(Call(kind: .vfio(vfioDevice.rawValue, request), before: before, after: Array(argument), errno: errno))
        return errno
    }

    func close(vfioDevice: FileDescriptor) {
        base.close(vfioDevice: vfioDevice)
        record(Call(kind: .closeVFIO(vfioDevice.rawValue), before: [], after: [], errno: nil))
    }
}

/// An object a backend allocated, read from a recorded call.
struct AllocatedObject: Hashable, CustomStringConvertible {
    var what: String
    var id: UInt32
    var description: String { "\(what) \(id)" }
}

extension Array where Element == RecordingDevice.Call {
    /// The objects these calls allocated (successful `*_ALLOC`s, by the `out_*_id` the kernel wrote).
    /// Each once, in allocation order: the kernel reuses a destroyed object's id.
    var allocatedObjects: [AllocatedObject] {
        var seen = Set<UInt32>()
        return compactMap { call -> AllocatedObject? in
            guard call.errno == nil, let request = call.request else { return nil }
            switch request {
            case .viommuAlloc: return AllocatedObject(what: "viommu", id: call.u32(20))
            case .hwptAlloc: return AllocatedObject(what: "hwpt", id: call.u32(16))
            case .vdeviceAlloc: return AllocatedObject(what: "vdevice", id: call.u32(12))
            case .veventqAlloc: return AllocatedObject(what: "veventq", id: call.u32(20))
            default: return nil
            }
        }.filter { seen.insert($0.id).inserted }
    }

    /// The vEVENTQ descriptors these calls received (`out_veventq_fd`).
    var eventQueueDescriptors: [Int32] {
        filter { $0.errno == nil && $0.request == .veventqAlloc }.map { Int32(bitPattern: $0.u32(24)) }
    }

    /// The `IOMMU_HWPT_INVALIDATE` calls: (`entry_num` sent, `entry_num` the kernel wrote back, errno).
    var invalidations: [(sent: UInt32, reported: UInt32, errno: Errno?)] {
        filter { $0.request == .hwptInvalidate }.map { ($0.u32(24, after: false), $0.u32(24), $0.errno) }
    }

    /// The `VFIO_DEVICE_ATTACH_IOMMUFD_PT` calls: (fd, `pt_id` asked for, `pt_id` written back, errno).
    var attaches: [(fd: Int32, ptID: UInt32, reported: UInt32, errno: Errno?)] {
        compactMap { call in
            guard case .vfio(let fd, .attachIOMMUFDPT) = call.kind else { return nil }
            return (fd, call.u32(8, after: false), call.u32(8), call.errno)
        }
    }

    /// The ids of the successful `IOMMU_DESTROY`s.
    var destroyed: [UInt32] {
        filter { $0.errno == nil && $0.request == .destroy }.map { $0.u32(4, after: false) }
    }

    func count(of request: IOMMUFDRequest) -> Int { filter { $0.request == request }.count }
}
