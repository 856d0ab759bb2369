import Glibc
import SystemPackage
import VSMMUJournal

/// A disk behind ``JournalFileSystem`` that keeps what was written apart from what is durable, and crashes
/// at a chosen call.
///
/// - A file's data is durable after `fdatasync` of it; a directory's entries (created, renamed, removed
///   files) after `syncDirectory`. A crash keeps only what is durable, as a power cut does (ext4 with
///   `data=ordered` may keep more, which `.afterWithWriteback` models).
/// - Every call that changes something is one step. ``arm(crashAt:mode:)`` picks the step and how it
///   ends: not run, run, run with everything written back, or a write torn after a prefix or zero-filled.
///   After the crash every call fails with `EIO`, like a machine that is off; ``reboot()`` gives the disk
///   as the next boot finds it.
final class SimulatedDisk: JournalFileSystem, @unchecked Sendable {
    /// How the step chosen by ``arm(crashAt:mode:)`` ends.
    enum CrashMode: Hashable, CustomStringConvertible {
        /// The call does not happen.
        case before
        /// The call happens; nothing more becomes durable than was synced.
        case after
        /// The call happens, and the kernel happened to write everything back (data and directory entries).
        case afterWithWriteback
        /// A rename happens and its directory entry alone becomes durable, ahead of earlier unsynced ones
        /// (the file system reordered metadata writes, which POSIX allows without a directory `fsync`).
        case afterOnlyThisEntryWrittenBack
        /// A write: only its first `n` bytes reach the file, and they are durable.
        case tornAfter(Int)
        /// A write: the file grows by the write's length, but the new bytes are zeros (durable).
        case zeroFilled

        var description: String {
            switch self {
            case .before: "before"
            case .after: "after"
            case .afterWithWriteback: "after, written back"
            case .afterOnlyThisEntryWrittenBack: "after, only this entry written back"
            case let .tornAfter(n): "torn after \(n) bytes"
            case .zeroFilled: "zero-filled"
            }
        }
    }

    final class Inode {
        var data: [UInt8]
        var durable: [UInt8]
        init(data: [UInt8] = [], durable: [UInt8] = []) {
            self.data = data
            self.durable = durable
        }
    }

    private(set) var names: [String: Inode] = [:]
    private var durableNames: [String: Inode] = [:]
    private var directories: Set<String> = []
    private var descriptors: [Int32: Inode] = [:]
    private var nextDescriptor: Int32 = 100
    /// Steps taken so far (calls that change something).
    private(set) var steps = 0
    /// Every step's name, in order.
    private(set) var stepNames: [String] = []
    private var crashStep: Int?
    private var lastRename: (String, String)?
    private var crashMode: CrashMode = .before
    /// Whether the disk crashed (every call then fails).
    private(set) var crashed = false
    /// An errno that every step fails with, until cleared (a disk that is full or failing, no crash).
    var failingWith: Errno?

    init() {}

    /// Crashes at step `step` (counted from now), ending it as `mode` says.
    func arm(crashAt step: Int, mode: CrashMode) {
        crashStep = steps + step
        crashMode = mode
    }

    /// The disk as the next boot finds it: durable names and durable data only.
    func reboot() -> SimulatedDisk {
        let disk = SimulatedDisk()
        var copies: [ObjectIdentifier: Inode] = [:]
        for (name, inode) in durableNames {
            let copy = copies[ObjectIdentifier(inode)] ?? Inode(data: inode.durable, durable: inode.durable)
            copies[ObjectIdentifier(inode)] = copy
            disk.names[name] = copy
            disk.durableNames[name] = copy
        }
        disk.directories = directories
        return disk
    }

    /// The file at `path` as a process sees it now.
    func contents(of path: FilePath) -> [UInt8]? { names[path.string]?.data }

    /// Replaces the bytes of the file at `path` (durably): damage made by a test.
    func overwrite(_ path: FilePath, with bytes: [UInt8]) {
        let inode = names[path.string] ?? Inode()
        inode.data = bytes
        inode.durable = bytes
        names[path.string] = inode
        durableNames[path.string] = inode
    }

    /// Removes the file at `path` (durably).
    func delete(_ path: FilePath) {
        names[path.string] = nil
        durableNames[path.string] = nil
    }

    /// One step: crashes if it is the chosen one. `effect` applies the call; `partial` applies a torn write.
    private func step(_ name: String, effect: () throws(Errno) -> Void, torn: ((CrashMode) -> Void)? = nil) throws(Errno) {
        guard !crashed else { throw .ioError }
        if let failingWith { throw failingWith }
        defer { steps += 1 }
        stepNames.append(name)
        guard steps == crashStep else { return try effect() }
        crashed = true
        switch crashMode {
        case .before:
            break
        case .after:
            try effect()
        case .afterWithWriteback:
            try effect()
            for inode in descriptors.values { inode.durable = inode.data }
            for inode in names.values { inode.durable = inode.data }
            durableNames = names
        case .afterOnlyThisEntryWrittenBack:
            try effect()
            if let (source, destination) = lastRename {
                durableNames[destination] = names[destination]
                durableNames[source] = nil
            }
        case .tornAfter, .zeroFilled:
            if let torn { torn(crashMode) } else { try effect() }
        }
        throw .ioError
    }

    private func inode(_ file: FileDescriptor) throws(Errno) -> Inode {
        guard let inode = descriptors[file.rawValue] else { throw .badFileDescriptor }
        return inode
    }

    func makeDirectory(_ path: FilePath) throws(Errno) {
        guard !crashed else { throw .ioError }
        directories.insert(path.string)
    }

    func read(_ path: FilePath) throws(Errno) -> [UInt8]? {
        guard !crashed else { throw .ioError }
        return names[path.string]?.data
    }

    func create(_ path: FilePath) throws(Errno) -> FileDescriptor {
        var descriptor = FileDescriptor(rawValue: -1)
        try step("create \(path.lastComponent?.string ?? "")") { () throws(Errno) in
            let inode = names[path.string] ?? Inode()
            inode.data = []
            names[path.string] = inode
            descriptor = open(inode)
        }
        return descriptor
    }

    private func open(_ inode: Inode) -> FileDescriptor {
        nextDescriptor += 1
        descriptors[nextDescriptor] = inode
        return FileDescriptor(rawValue: nextDescriptor)
    }

    func openForWriting(_ path: FilePath) throws(Errno) -> FileDescriptor {
        guard !crashed else { throw .ioError }
        guard let inode = names[path.string] else { throw .noSuchFileOrDirectory }
        return open(inode)
    }

    func write(_ file: FileDescriptor, _ bytes: [UInt8], at offset: Int) throws(Errno) {
        let inode = try inode(file)
        func place(_ bytes: ArraySlice<UInt8>) {
            if inode.data.count < offset { inode.data += [UInt8](repeating: 0, count: offset - inode.data.count) }
            let end = offset + bytes.count
            if inode.data.count < end { inode.data += [UInt8](repeating: 0, count: end - inode.data.count) }
            inode.data.replaceSubrange(offset..<end, with: bytes)
        }
        try step("write \(bytes.count)", effect: { place(bytes[...]) }, torn: { mode in
            switch mode {
            case let .tornAfter(n): place(bytes.prefix(n))
            default: place([UInt8](repeating: 0, count: bytes.count)[...])
            }
            inode.durable = inode.data
        })
    }

    func fdatasync(_ file: FileDescriptor) throws(Errno) {
        let inode = try inode(file)
        try step("fdatasync") { inode.durable = inode.data }
    }

    func truncate(_ file: FileDescriptor, to length: Int) throws(Errno) {
        let inode = try inode(file)
        try step("ftruncate") {
            if inode.data.count > length { inode.data.removeSubrange(length...) } else {
                inode.data += [UInt8](repeating: 0, count: length - inode.data.count)
            }
        }
    }

    func close(_ file: FileDescriptor) {
        descriptors[file.rawValue] = nil
    }

    func rename(_ source: FilePath, to destination: FilePath) throws(Errno) {
        try step("rename \(source.lastComponent?.string ?? "")") { () throws(Errno) in
            guard let inode = names[source.string] else { throw .noSuchFileOrDirectory }
            names[destination.string] = inode
            names[source.string] = nil
            lastRename = (source.string, destination.string)
        }
    }

    func remove(_ path: FilePath) throws(Errno) {
        guard !crashed else { throw .ioError }
        guard names[path.string] != nil else { throw .noSuchFileOrDirectory }
        try step("unlink \(path.lastComponent?.string ?? "")") { names[path.string] = nil }
    }

    func syncDirectory(_ path: FilePath) throws(Errno) {
        try step("fsync directory") { durableNames = names }
    }
}
