import CSocketShims
import Logging
import SystemPackage
import VSMMUProtocol
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

/// Why a queue's memory or eventfds are refused (MAP_QUEUE, MAP_EVENT_QUEUE, and the fd store's copies at
/// recovery): the `BAD_FILE_DESCRIPTOR` detail, the errno and what was wrong.
struct QueueRefusal: Error {
    var problem: FileDescriptorProblem
    var errno: Int32
    var message: String

    func protocolError(_ type: MessageType) -> ProtocolError {
        .badFileDescriptor(problem, type: type, errno: errno, message: message)
    }

    /// A refusal of the memory fd (`VSMMU_FD_QUEUE_MEMORY`).
    static func memory(_ errno: Int32 = 0, _ message: String) -> QueueRefusal {
        QueueRefusal(problem: .queueMemory, errno: errno, message: message)
    }
}

/// The checks the shared command queue (PROTOCOL.md §5.15) and the event queue (§9) make of the VMM's
/// descriptors, in one place: a memfd sealed against shrinking and large enough, eventfds, a shared
/// read-write mapping.
enum QueueDescriptorChecks {
    /// The file identity (`st_dev`, `st_ino`) of `fd`, if it has one: a map of the same file replaces the
    /// eventfds.
    static func identity(of fd: Int32) -> (device: UInt64, inode: UInt64)? {
        guard let status = try? SystemCall.fileStatus(fd) else { return nil }
        return (UInt64(status.st_dev), UInt64(status.st_ino))
    }

    /// Checks that `fd` is an eventfd: its `/proc/self/fd` link names the anonymous inode that
    /// `do_eventfd` creates with `anon_inode_getfile("[eventfd]", &eventfd_fops, …)`
    /// (`anon_inodefs_dname` prints it as `anon_inode:[eventfd]`).
    static func checkEventFD(_ fd: Int32, _ which: String) throws(QueueRefusal) {
        let target: String
        do throws(Errno) { target = try SystemCall.readLink("/proc/self/fd/\(fd)") } catch {
            throw QueueRefusal(problem: .queueEventFD, errno: error.rawValue, message: "the \(which) fd cannot be looked at: \(error)")
        }
        guard target == "anon_inode:[eventfd]" else {
            throw QueueRefusal(problem: .queueEventFD, errno: 0, message: "the \(which) fd is not an eventfd (it is \(target))")
        }
    }

    /// Checks that `memory` is a memfd sealed against shrinking and returns its size and file identity: `memfd_fcntl` answers
    /// F_GET_SEALS only for a memfd (or another shmem file); with F_SEAL_SHRINK, `shmem_setattr` refuses
    /// every truncation below the size, so a mapping never loses its pages (no SIGBUS).
    static func checkSealedMemfd(_ memory: Int32) throws(QueueRefusal) -> (size: Int, device: UInt64, inode: UInt64) {
        let seals: Int32
        do throws(Errno) { seals = try SystemCall.seals(of: memory) } catch {
            throw .memory(error.rawValue, "the memory fd is not a memfd (F_GET_SEALS: \(error))")
        }
        guard seals & VSMMU_F_SEAL_SHRINK != 0 else {
            throw .memory(0, "the memfd is not sealed with F_SEAL_SHRINK (seals 0x\(String(seals, radix: 16)))")
        }
        let status: stat
        do throws(Errno) { status = try SystemCall.fileStatus(memory) } catch {
            throw .memory(error.rawValue, "fstat of the memfd failed: \(error)")
        }
        return (Int(status.st_size), UInt64(status.st_dev), UInt64(status.st_ino))
    }

    /// The memfd's first 8 bytes (its configuration line's magic, version and log2_entries), read once with
    /// `pread` (a queue handed back by the fd store names its size there).
    static func configurationLine(of memory: Int32) throws(QueueRefusal) -> UInt64 {
        var line: UInt64 = 0
        let read: Int
        do throws(Errno) {
            read = try withUnsafeMutableBytes(of: &line) { (bytes) throws(Errno) -> Int in try SystemCall.read(memory, into: bytes, at: 0) }
        } catch {
            throw .memory(error.rawValue, "the memfd's configuration line cannot be read: \(error)")
        }
        guard read == 8 else { throw .memory(0, "the memfd is too small for its configuration line") }
        return UInt64(littleEndian: line)
    }

    /// n of a queue handed back by the fd store: `log2_entries` (byte 6 of the configuration line, in the
    /// command queue's layout and the event queue's alike), read once; `requested` when the request named it.
    static func log2Entries(_ requested: Int?, of memory: Int32) throws(QueueRefusal) -> Int {
        if let requested { return requested }
        return Int(UInt8(truncatingIfNeeded: try configurationLine(of: memory) >> 48))
    }

    /// Maps `length` bytes of `memory` shared read-write. A memfd sealed against writing (F_SEAL_WRITE,
    /// F_SEAL_FUTURE_WRITE) refuses a shared writable mapping with EPERM (`seal_check_write`, from the
    /// shmem mmap path): refused with that errno.
    static func mapShared(_ memory: Int32, length: Int) throws(QueueRefusal) -> UnsafeMutableRawPointer {
        do throws(Errno) { return try SystemCall.mapShared(memory, length: length) } catch {
            throw .memory(error.rawValue, "the memfd cannot be mapped shared read-write: \(error)")
        }
    }
}

extension ServedVSMMU {
    /// Hands a queue's descriptors to the fd store under their names (the store duplicates them), replacing
    /// what it held under those names (MAP_QUEUE, MAP_EVENT_QUEUE). A failure is logged: the VMM maps the
    /// queue again after a restart.
    func replaceStoredQueueDescriptors(_ descriptors: [(fd: Int32, name: String)], queue: String, logger: Logger) {
        guard fileDescriptorStore != nil else { return }
        for (fd, name) in descriptors {
            removeDescriptor(name: name)
            if let error = storeDescriptor(fd, name: name) {
                logger.error("cannot hand \(queue)'s descriptor to the fd store: after a restart the VMM maps it again",
                             metadata: ["vsmmu": "\(id.rawValue)", "name": "\(name)", "error": "\(error)"])
            }
        }
    }
}
