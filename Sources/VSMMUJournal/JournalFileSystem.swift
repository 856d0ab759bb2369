import SystemPackage

import Glibc
import VSMMUSystem

/// Every file operation the journal makes, and nothing else: the one seam between ``Journal`` and the
/// disk.
///
/// ``POSIXJournalFileSystem`` is the real one. Tests put a model of a disk behind it that keeps what was
/// written apart from what was made durable, and crash at any call: before it, after it, in the middle of
/// a write (torn), so that every step of a write and of a compaction is shown to reopen to the old or the
/// new contents.
public protocol JournalFileSystem: AnyObject, Sendable {
    /// Creates the directory `path` (mode 0700) unless it exists.
    func makeDirectory(_ path: FilePath) throws(Errno)
    /// The whole contents of the file at `path`, or `nil` when there is none (`ENOENT`).
    func read(_ path: FilePath) throws(Errno) -> [UInt8]?
    /// Creates the file at `path` empty, replacing one that exists, and opens it for writing
    /// (`O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC`, mode 0600).
    func create(_ path: FilePath) throws(Errno) -> FileDescriptor
    /// Opens the existing file at `path` for writing, keeping its contents (`O_WRONLY | O_CLOEXEC`).
    func openForWriting(_ path: FilePath) throws(Errno) -> FileDescriptor
    /// Writes all of `bytes` at `offset` (`pwrite(2)`, repeated until done).
    func write(_ file: FileDescriptor, _ bytes: [UInt8], at offset: Int) throws(Errno)
    /// Makes the file's data durable (`fdatasync(2)`).
    func fdatasync(_ file: FileDescriptor) throws(Errno)
    /// Cuts the file to `length` bytes (`ftruncate(2)`).
    func truncate(_ file: FileDescriptor, to length: Int) throws(Errno)
    /// Closes the descriptor.
    func close(_ file: FileDescriptor)
    /// Atomically replaces `destination` by `source` (`rename(2)`).
    func rename(_ source: FilePath, to destination: FilePath) throws(Errno)
    /// Removes the file at `path`; `ENOENT` when there is none.
    func remove(_ path: FilePath) throws(Errno)
    /// Makes the directory's entries durable (`fsync(2)` of the directory): created and renamed files.
    func syncDirectory(_ path: FilePath) throws(Errno)
}

/// The journal's file operations on the real file system: the system calls, each through VSMMUSystem's
/// `syscall` (retried on `EINTR`, thrown as `Errno`).
public final class POSIXJournalFileSystem: JournalFileSystem {
    public init() {}

    public func makeDirectory(_ path: FilePath) throws(Errno) {
        do {
            try syscall { path.withPlatformString { mkdir($0, 0o700) } }
        } catch {
            if error == .fileExists { return }
            throw error
        }
    }

    public func read(_ path: FilePath) throws(Errno) -> [UInt8]? {
        let fd: Int32
        do {
            fd = try syscall { path.withPlatformString { open($0, O_RDONLY | O_CLOEXEC) } }
        } catch {
            if error == .noSuchFileOrDirectory { return nil }
            throw error
        }
        defer { Glibc.close(fd) }
        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = try syscall { chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } }
            if count == 0 { return contents }
            contents.append(contentsOf: chunk[0..<count])
        }
    }

    public func create(_ path: FilePath) throws(Errno) -> FileDescriptor {
        let fd = try syscall { path.withPlatformString { open($0, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) } }
        return FileDescriptor(rawValue: fd)
    }

    public func openForWriting(_ path: FilePath) throws(Errno) -> FileDescriptor {
        let fd = try syscall { path.withPlatformString { open($0, O_WRONLY | O_CLOEXEC) } }
        return FileDescriptor(rawValue: fd)
    }

    public func write(_ file: FileDescriptor, _ bytes: [UInt8], at offset: Int) throws(Errno) {
        var done = 0
        while done < bytes.count {
            let written = try syscall {
                bytes.withUnsafeBytes { raw in
                    pwrite(file.rawValue, raw.baseAddress.map { $0 + done }, raw.count - done, off_t(offset + done))
                }
            }
            done += written
        }
    }

    public func fdatasync(_ file: FileDescriptor) throws(Errno) {
        try syscall { Glibc.fdatasync(file.rawValue) }
    }

    public func truncate(_ file: FileDescriptor, to length: Int) throws(Errno) {
        try syscall { ftruncate(file.rawValue, off_t(length)) }
    }

    public func close(_ file: FileDescriptor) {
        // close(2) is not retried on EINTR: on Linux the descriptor is released either way.
        _ = Glibc.close(file.rawValue)
    }

    public func rename(_ source: FilePath, to destination: FilePath) throws(Errno) {
        try syscall {
            source.withPlatformString { from in destination.withPlatformString { to in Glibc.rename(from, to) } }
        }
    }

    public func remove(_ path: FilePath) throws(Errno) {
        try syscall { path.withPlatformString { unlink($0) } }
    }

    public func syncDirectory(_ path: FilePath) throws(Errno) {
        let fd = try syscall { path.withPlatformString { open($0, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } }
        defer { Glibc.close(fd) }
        try syscall { fsync(fd) }
    }
}
