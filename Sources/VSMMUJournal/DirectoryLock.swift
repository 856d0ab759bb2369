import SystemPackage
import VSMMUSystem

#if canImport(Glibc)
import Glibc
#endif

/// An exclusive lock on a state directory, so that two daemons never share one journal.
///
/// ``acquire(directory:)`` opens (creating it) the file `lock` in the directory and takes `flock(2)`'s
/// `LOCK_EX | LOCK_NB` on it, then writes the holder's pid into it (only to name the holder in the
/// message another daemon gets). The lock belongs to the open file description, so it lasts as long as
/// this object (or, when it is kept for the process's life, as the process): the kernel drops it when
/// the last fd of that description closes, which a `kill -9` does too. Nothing is ever left to clean up:
/// a lock file that outlived its daemon is simply locked again.
///
/// `systemctl restart` never overlaps two processes of the service (the new one starts after the old one
/// exited), so a refusal means a second daemon was started by hand on the same directory.
public final class DirectoryLock: Sendable {
    /// The lock file, `<directory>/lock`.
    public let path: FilePath
    private let descriptor: FileDescriptor

    /// The lock file's name inside the state directory.
    public static let fileName = "lock"

    /// Why the lock was not taken.
    public enum Failure: Error, Hashable, Sendable, CustomStringConvertible {
        /// Another open file description holds the lock: another daemon (pid as it wrote it, if readable)
        /// serves this state directory.
        case held(directory: FilePath, holder: Int32?)
        /// A system call failed (`mkdir`, `open`, `flock`, `ftruncate`, `pwrite`).
        case io(operation: String, file: FilePath, errno: Errno)

        public var description: String {
            switch self {
            case let .held(directory, holder):
                let who = holder.map { "another vsmmud (pid \($0))" } ?? "another vsmmud"
                return "the state directory \(directory) is in use by \(who): two daemons must never share one journal"
            case let .io(operation, file, errno):
                return "cannot lock the state directory: \(operation) of \(file) failed: \(errno)"
            }
        }
    }

    private init(path: FilePath, descriptor: FileDescriptor) {
        self.path = path
        self.descriptor = descriptor
    }

    deinit { try? descriptor.close() }

    /// Takes the lock on `directory` (created, mode 0700, when missing; its parent must exist), without
    /// waiting.
    /// - Throws: ``Failure/held(directory:holder:)`` when another process (or another ``DirectoryLock`` in
    ///   this one) holds it; ``Failure/io(operation:file:errno:)`` when a system call fails.
    public static func acquire(directory: FilePath) throws(Failure) -> DirectoryLock {
        let path = directory.appending(fileName)
        do throws(Errno) {
            try syscall { directory.withPlatformString { mkdir($0, 0o700) } }
        } catch {
            guard error == .fileExists else { throw .io(operation: "mkdir", file: directory, errno: error) }
        }
        let fd: Int32
        do throws(Errno) {
            fd = try syscall {
                path.withPlatformString { open($0, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600) }
            }
        } catch {
            throw .io(operation: "open", file: path, errno: error)
        }
        let descriptor = FileDescriptor(rawValue: fd)
        do throws(Errno) {
            try syscall { flock(fd, LOCK_EX | LOCK_NB) }
        } catch {
            let holder = error == .wouldBlock ? readHolder(fd) : nil
            try? descriptor.close()
            if error == .wouldBlock { throw .held(directory: directory, holder: holder) }
            throw .io(operation: "flock", file: path, errno: error)
        }
        // Ours now: name the holder for whoever is refused next.
        let text = Array("\(getpid())\n".utf8)
        do throws(Errno) {
            try syscall { ftruncate(fd, 0) }
            _ = try syscall { text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } }
        } catch {
            try? descriptor.close()
            throw .io(operation: "write", file: path, errno: error)
        }
        return DirectoryLock(path: path, descriptor: descriptor)
    }

    /// The pid the holder wrote, if the file holds one.
    private static func readHolder(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 16)
        let count = (try? syscall { buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) } }) ?? 0
        let digits = buffer.prefix(max(0, count)).prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        return Int32(String(decoding: digits, as: UTF8.self)).flatMap { $0 > 0 ? $0 : nil }
    }
}
