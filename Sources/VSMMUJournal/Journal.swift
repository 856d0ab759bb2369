import Glibc
import Logging
import SystemPackage

/// A crash-safe store of byte values by 64-bit key under one directory: a checkpoint file and an
/// append-only log (the format: ``JournalFormat``).
///
/// - Every ``put(key:value:)`` and ``remove(key:)`` is written to the log and made durable (`fdatasync`)
///   before it returns; a call that throws changed nothing, in memory or in the journal's future
///   contents once the store works again.
/// - ``open(directory:fileSystem:compactionThreshold:logger:)`` replays the checkpoint and then the log's
///   newer records. A torn tail (a short last record, a last record whose CRC does not match, a zero-filled
///   tail: what a crash in the middle of an append leaves) is logged and cut away. Any other damage refuses
///   to open with a ``JournalError`` that names the file and offset: the journal is never half-loaded.
/// - When the log outgrows the compaction threshold (and the checkpoint), the contents are written to a new
///   checkpoint (temporary file, `fdatasync`, `rename`, directory `fsync`) and an empty log replaces the old
///   one the same way. A crash at any step opens to the same contents: the log's records up to the
///   checkpoint's sequence number are skipped.
/// - When a write fails (`ENOSPC`, `EIO`), the store cuts the log back to its last durable record before
///   the next change; until that works every change fails.
///
/// Thread-safe: one lock around every operation.
public final class Journal: @unchecked Sendable {
    /// The largest value ``put(key:value:)`` takes.
    public static let maximumValueSize = 16 << 20
    /// The default log size, in bytes, past which the journal writes a checkpoint.
    public static let defaultCompactionThreshold = 4 << 20

    /// The directory holding the journal's files.
    public let directory: FilePath
    /// The checkpoint file, `checkpoint`.
    public var checkpointPath: FilePath { directory.appending("checkpoint") }
    /// The log file, `log`.
    public var logPath: FilePath { directory.appending("log") }
    var checkpointTemporaryPath: FilePath { directory.appending("checkpoint.tmp") }
    var logTemporaryPath: FilePath { directory.appending("log.tmp") }

    private let fileSystem: any JournalFileSystem
    private let compactionThreshold: Int
    private let logger: Logger
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    // Guarded by `mutex`.
    private var entries: [UInt64: [UInt8]]
    private var lastSequence: UInt64
    private var log: FileDescriptor?
    private var logLength: Int
    private var checkpointLength: Int
    private var repair: Repair?
    private var compactions = 0

    /// What must be done to the files before the next change, after a failure left them unknown.
    private enum Repair {
        /// A record was (perhaps partly) written past `length` and not acknowledged: cut it away.
        case truncateLog(to: Int)
        /// The log was replaced by rename, and the directory entry is not yet durable.
        case syncDirectory
    }

    private init(
        directory: FilePath, fileSystem: any JournalFileSystem, compactionThreshold: Int, logger: Logger,
        entries: [UInt64: [UInt8]], lastSequence: UInt64, log: FileDescriptor, logLength: Int, checkpointLength: Int
    ) {
        self.directory = directory
        self.fileSystem = fileSystem
        self.compactionThreshold = compactionThreshold
        self.logger = logger
        self.entries = entries
        self.lastSequence = lastSequence
        self.log = log
        self.logLength = logLength
        self.checkpointLength = checkpointLength
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        if let log { fileSystem.close(log) }
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    private func locked<T>(_ body: () throws(JournalError) -> T) throws(JournalError) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Runs one file operation, naming it and its file when it fails.
    private static func io<T>(_ operation: String, _ file: FilePath, _ body: () throws(Errno) -> T) throws(JournalError) -> T {
        do {
            return try body()
        } catch {
            throw .io(operation: operation, file: file, errno: error)
        }
    }

    // MARK: Opening

    /// Opens the journal in `directory` (created, mode 0700, if missing), replaying its checkpoint and log.
    /// A directory without journal files opens empty and gets an empty log.
    /// - Parameters:
    ///   - compactionThreshold: the log size, in bytes, past which a change is followed by a compaction.
    ///   - logger: where a torn tail that was cut away, and a compaction that failed, are reported.
    /// - Throws: ``JournalError/corrupt(file:offset:reason:)`` or ``JournalError/unsupportedVersion(file:version:)``
    ///   when the files are damaged or from another format; ``JournalError/io(operation:file:errno:)``.
    public static func open(
        directory: FilePath, fileSystem: any JournalFileSystem = POSIXJournalFileSystem(),
        compactionThreshold: Int = defaultCompactionThreshold, logger: Logger
    ) throws(JournalError) -> Journal {
        let checkpointPath = directory.appending("checkpoint")
        let logPath = directory.appending("log")
        try io("mkdir", directory) { () throws(Errno) in try fileSystem.makeDirectory(directory) }
        // A temporary file is what a compaction left when it stopped before its rename: never part of the state.
        for temporary in [directory.appending("checkpoint.tmp"), directory.appending("log.tmp")] {
            do {
                try fileSystem.remove(temporary)
            } catch {
                guard error == .noSuchFileOrDirectory else { throw .io(operation: "unlink", file: temporary, errno: error) }
            }
        }

        var entries: [UInt64: [UInt8]] = [:]
        var checkpointSequence: UInt64 = 0
        let checkpointBytes = try io("read", checkpointPath) { () throws(Errno) in try fileSystem.read(checkpointPath) }
        if let checkpointBytes {
            (entries, checkpointSequence) = try readCheckpoint(checkpointBytes, path: checkpointPath)
        }

        guard let logBytes = try io("read", logPath, { () throws(Errno) in try fileSystem.read(logPath) }) else {
            if checkpointBytes != nil {
                throw .corrupt(file: logPath, offset: 0, reason: "the log is missing while the checkpoint \(checkpointPath) exists")
            }
            let log = try installLog(directory: directory, fileSystem: fileSystem, baseSequence: 0)
            return Journal(
                directory: directory, fileSystem: fileSystem, compactionThreshold: compactionThreshold, logger: logger,
                entries: [:], lastSequence: 0, log: log, logLength: JournalFormat.fileHeaderSize, checkpointLength: 0
            )
        }

        let replay = try replayLog(logBytes, path: logPath, checkpointSequence: checkpointSequence, into: &entries)
        let log = try io("open", logPath) { () throws(Errno) in try fileSystem.openForWriting(logPath) }
        if let tornAt = replay.tornAt {
            logger.notice(
                "journal: cut a torn tail off the log (what a crash in the middle of a write leaves)",
                metadata: ["file": "\(logPath)", "offset": "\(tornAt)", "bytes": "\(logBytes.count - tornAt)"]
            )
            do {
                try fileSystem.truncate(log, to: tornAt)
                try fileSystem.fdatasync(log)
            } catch {
                fileSystem.close(log)
                throw .io(operation: "ftruncate", file: logPath, errno: error)
            }
        }
        return Journal(
            directory: directory, fileSystem: fileSystem, compactionThreshold: compactionThreshold, logger: logger,
            entries: entries, lastSequence: replay.lastSequence, log: log, logLength: replay.tornAt ?? logBytes.count,
            checkpointLength: checkpointBytes?.count ?? 0
        )
    }

    /// Parses a checkpoint: every defect is damage, since it was made durable whole before its rename.
    static func readCheckpoint(_ bytes: [UInt8], path: FilePath) throws(JournalError) -> ([UInt64: [UInt8]], UInt64) {
        let baseSequence: UInt64
        switch JournalFormat.checkFileHeader(bytes, magic: JournalFormat.checkpointMagic) {
        case let .valid(base): baseSequence = base
        case let .invalid(reason): throw .corrupt(file: path, offset: 0, reason: reason)
        case let .unsupportedVersion(version): throw .unsupportedVersion(file: path, version: version)
        }
        var entries: [UInt64: [UInt8]] = [:]
        var offset = JournalFormat.fileHeaderSize
        var expected: UInt64 = 1
        while true {
            switch JournalFormat.scan(bytes, at: offset) {
            case .short:
                throw .corrupt(file: path, offset: offset, reason: offset == bytes.count
                    ? "the checkpoint ends without its end record" : "a record runs past the end of the checkpoint")
            case .badChecksum:
                throw .corrupt(file: path, offset: offset, reason: "a record's CRC-32C does not match")
            case let .record(rawKind, reservedIsZero, sequence, payload, end):
                guard sequence == expected else {
                    throw .corrupt(file: path, offset: offset, reason: "record sequence \(sequence) where \(expected) was due")
                }
                guard reservedIsZero else { throw .corrupt(file: path, offset: offset, reason: "a record's reserved field is not zero") }
                switch JournalFormat.Kind(rawValue: rawKind) {
                case .put:
                    guard payload.count >= 8 else {
                        throw .corrupt(file: path, offset: offset, reason: "a put record of \(payload.count) bytes has no key")
                    }
                    let key = JournalFormat.readLE(UInt64.self, bytes, at: payload.startIndex)
                    guard entries.updateValue(Array(payload.dropFirst(8)), forKey: key) == nil else {
                        throw .corrupt(file: path, offset: offset, reason: "key \(key) appears twice")
                    }
                case .checkpointEnd:
                    guard payload.count == 8, JournalFormat.readLE(UInt64.self, bytes, at: payload.startIndex) == UInt64(entries.count) else {
                        throw .corrupt(file: path, offset: offset, reason: "the end record does not count the \(entries.count) records before it")
                    }
                    guard end == bytes.count else {
                        throw .corrupt(file: path, offset: end, reason: "\(bytes.count - end) bytes follow the end record")
                    }
                    return (entries, baseSequence)
                case .remove, nil:
                    throw .corrupt(file: path, offset: offset, reason: "record kind \(rawKind) does not belong in a checkpoint")
                }
                expected += 1
                offset = end
            }
        }
    }

    /// What replaying a log found.
    struct LogReplay {
        /// The sequence number of the log's last valid record (its base when it has none).
        var lastSequence: UInt64
        /// Where a torn tail starts, if the log has one.
        var tornAt: Int?
    }

    /// Applies the log's records newer than `checkpointSequence` to `entries`.
    static func replayLog(
        _ bytes: [UInt8], path: FilePath, checkpointSequence: UInt64, into entries: inout [UInt64: [UInt8]]
    ) throws(JournalError) -> LogReplay {
        let baseSequence: UInt64
        switch JournalFormat.checkFileHeader(bytes, magic: JournalFormat.logMagic) {
        case let .valid(base): baseSequence = base
        case let .invalid(reason): throw .corrupt(file: path, offset: 0, reason: reason)
        case let .unsupportedVersion(version): throw .unsupportedVersion(file: path, version: version)
        }
        guard baseSequence <= checkpointSequence else {
            throw .corrupt(file: path, offset: 16, reason: "the log starts after sequence \(baseSequence) but the checkpoint ends at \(checkpointSequence): the changes between are missing")
        }
        var offset = JournalFormat.fileHeaderSize
        var expected = baseSequence + 1
        var tornAt: Int?
        scanning: while offset < bytes.count {
            switch JournalFormat.scan(bytes, at: offset) {
            case let .record(rawKind, reservedIsZero, sequence, payload, end):
                guard sequence == expected else {
                    throw .corrupt(file: path, offset: offset, reason: "record sequence \(sequence) where \(expected) was due")
                }
                guard reservedIsZero else { throw .corrupt(file: path, offset: offset, reason: "a record's reserved field is not zero") }
                let kind = JournalFormat.Kind(rawValue: rawKind)
                guard kind == .put || kind == .remove else {
                    throw .corrupt(file: path, offset: offset, reason: "unknown record kind \(rawKind)")
                }
                guard kind == .put ? payload.count >= 8 : payload.count == 8 else {
                    throw .corrupt(file: path, offset: offset, reason: "a record of kind \(rawKind) with a \(payload.count)-byte payload")
                }
                if sequence > checkpointSequence {
                    let key = JournalFormat.readLE(UInt64.self, bytes, at: payload.startIndex)
                    if kind == .put { entries[key] = Array(payload.dropFirst(8)) } else { entries[key] = nil }
                }
                expected += 1
                offset = end
            case .short, .badChecksum:
                // A crash in the middle of an append leaves this as the last thing in the file. A valid record
                // after it means the damage is in the middle: refuse rather than drop acknowledged changes.
                if let next = nextValidRecord(in: bytes, after: offset, minimumSequence: expected) {
                    throw .corrupt(file: path, offset: offset, reason: "a damaged record (bad length or CRC-32C) that a valid record at offset \(next) follows")
                }
                tornAt = offset
                break scanning
            }
        }
        let lastSequence = expected - 1
        guard lastSequence >= checkpointSequence else {
            throw .corrupt(file: path, offset: offset, reason: "the log ends at sequence \(lastSequence), before the checkpoint's \(checkpointSequence)")
        }
        return LogReplay(lastSequence: lastSequence, tornAt: tornAt)
    }

    /// The offset of the first record after `offset` that checks out (kind, reserved field, a sequence number
    /// not yet seen, CRC-32C), if any.
    static func nextValidRecord(in bytes: [UInt8], after offset: Int, minimumSequence: UInt64) -> Int? {
        var candidate = offset + 1
        let maximumSequence = minimumSequence &+ UInt64(bytes.count / JournalFormat.recordHeaderSize)
        while bytes.count - candidate >= JournalFormat.recordHeaderSize {
            let kind = JournalFormat.readLE(UInt16.self, bytes, at: candidate + 4)
            let reserved = JournalFormat.readLE(UInt16.self, bytes, at: candidate + 6)
            let sequence = JournalFormat.readLE(UInt64.self, bytes, at: candidate + 8)
            if (kind == JournalFormat.Kind.put.rawValue || kind == JournalFormat.Kind.remove.rawValue), reserved == 0,
               sequence >= minimumSequence, sequence <= maximumSequence,
               case .record = JournalFormat.scan(bytes, at: candidate) {
                return candidate
            }
            candidate += 1
        }
        return nil
    }

    /// Writes an empty log with `baseSequence` as `log.tmp`, makes it durable, renames it over `log` and makes
    /// the rename durable. - Returns: the new log, open for writing.
    private static func installLog(directory: FilePath, fileSystem: any JournalFileSystem, baseSequence: UInt64) throws(JournalError) -> FileDescriptor {
        let temporary = directory.appending("log.tmp")
        let log = try io("create", temporary) { () throws(Errno) in try fileSystem.create(temporary) }
        do {
            try fileSystem.write(log, JournalFormat.fileHeader(magic: JournalFormat.logMagic, baseSequence: baseSequence), at: 0)
            try fileSystem.fdatasync(log)
            try fileSystem.rename(temporary, to: directory.appending("log"))
        } catch {
            fileSystem.close(log)
            try? fileSystem.remove(temporary)
            throw .io(operation: "write", file: temporary, errno: error)
        }
        do {
            try fileSystem.syncDirectory(directory)
        } catch {
            fileSystem.close(log)
            throw .io(operation: "fsync", file: directory, errno: error)
        }
        return log
    }

    // MARK: Reading

    /// Every key and its value.
    public var contents: [UInt64: [UInt8]] {
        // The closure cannot throw.
        (try? locked { () throws(JournalError) in entries }) ?? [:]
    }

    /// The value stored for `key`.
    public func value(forKey key: UInt64) -> [UInt8]? {
        (try? locked { () throws(JournalError) in entries[key] }) ?? nil
    }

    /// How many compactions this journal object completed (for tests and STATS).
    public var compactionCount: Int {
        (try? locked { () throws(JournalError) in compactions }) ?? 0
    }

    // MARK: Changing

    /// Stores `value` for `key`, durably when it returns.
    /// - Throws: ``JournalError/valueTooLarge(size:)``; ``JournalError/io(operation:file:errno:)`` when the
    ///   record could not be made durable (nothing changed).
    public func put(key: UInt64, value: [UInt8]) throws(JournalError) {
        guard value.count <= Self.maximumValueSize else { throw .valueTooLarge(size: value.count) }
        try locked { () throws(JournalError) in
            try append(.put, payload: JournalFormat.putPayload(key: key, value: value))
            entries[key] = value
            compactIfDue()
        }
    }

    /// Removes `key`, durably when it returns. Removing a key that is not there writes nothing.
    /// - Throws: ``JournalError/io(operation:file:errno:)`` when the record could not be made durable.
    public func remove(key: UInt64) throws(JournalError) {
        try locked { () throws(JournalError) in
            guard entries[key] != nil else { return }
            try append(.remove, payload: JournalFormat.keyPayload(key))
            entries[key] = nil
            compactIfDue()
        }
    }

    /// Writes a checkpoint of the contents and starts an empty log.
    /// - Throws: ``JournalError/io(operation:file:errno:)``; the contents are unchanged and durable either way.
    public func compact() throws(JournalError) {
        try locked { () throws(JournalError) in try compactLocked() }
    }

    /// Retries what a failed write left to do (cutting an unacknowledged record away, a directory sync).
    private func repairIfNeeded() throws(JournalError) {
        guard let pending = repair else { return }
        guard let log else { throw .io(operation: "write", file: logPath, errno: .badFileDescriptor) }
        switch pending {
        case let .truncateLog(length):
            do {
                try fileSystem.truncate(log, to: length)
                try fileSystem.fdatasync(log)
            } catch {
                throw .io(operation: "ftruncate", file: logPath, errno: error)
            }
        case .syncDirectory:
            try Self.io("fsync", directory) { () throws(Errno) in try fileSystem.syncDirectory(directory) }
        }
        repair = nil
    }

    /// Appends one record and makes it durable.
    private func append(_ kind: JournalFormat.Kind, payload: [UInt8]) throws(JournalError) {
        try repairIfNeeded()
        guard let log else { throw .io(operation: "write", file: logPath, errno: .badFileDescriptor) }
        let sequence = lastSequence + 1
        let record = JournalFormat.record(kind, sequence: sequence, payload: payload)
        do {
            try fileSystem.write(log, record, at: logLength)
        } catch {
            repair = .truncateLog(to: logLength)
            try? repairIfNeeded()
            throw .io(operation: "write", file: logPath, errno: error)
        }
        do {
            try fileSystem.fdatasync(log)
        } catch {
            repair = .truncateLog(to: logLength)
            try? repairIfNeeded()
            throw .io(operation: "fdatasync", file: logPath, errno: error)
        }
        logLength += record.count
        lastSequence = sequence
    }

    /// Compacts when the log has outgrown the threshold and the checkpoint. A failure is logged: the change
    /// that led here is already durable in the log.
    private func compactIfDue() {
        guard logLength > max(compactionThreshold, checkpointLength) else { return }
        do {
            try compactLocked()
        } catch {
            logger.error("journal: compaction failed; the log keeps growing until one succeeds", metadata: ["error": "\(error)"])
        }
    }

    private func compactLocked() throws(JournalError) {
        try repairIfNeeded()
        // 1. The checkpoint: every entry, as of `lastSequence`.
        var bytes = JournalFormat.fileHeader(magic: JournalFormat.checkpointMagic, baseSequence: lastSequence)
        var count: UInt64 = 0
        for key in entries.keys.sorted() {
            count += 1
            // `entries` holds every key it lists.
            bytes += JournalFormat.record(.put, sequence: count, payload: JournalFormat.putPayload(key: key, value: entries[key] ?? []))
        }
        bytes += JournalFormat.record(.checkpointEnd, sequence: count + 1, payload: JournalFormat.keyPayload(count))
        let temporary = checkpointTemporaryPath
        let checkpoint = try Self.io("create", temporary) { () throws(Errno) in try fileSystem.create(temporary) }
        do {
            try fileSystem.write(checkpoint, bytes, at: 0)
            try fileSystem.fdatasync(checkpoint)
        } catch {
            fileSystem.close(checkpoint)
            try? fileSystem.remove(temporary)
            throw .io(operation: "write", file: temporary, errno: error)
        }
        fileSystem.close(checkpoint)
        do {
            try fileSystem.rename(temporary, to: checkpointPath)
        } catch {
            try? fileSystem.remove(temporary)
            throw .io(operation: "rename", file: temporary, errno: error)
        }
        // Until this sync the directory may hold the old checkpoint or the new one; the log opens with either.
        try Self.io("fsync", directory) { () throws(Errno) in try fileSystem.syncDirectory(directory) }
        checkpointLength = bytes.count

        // 2. An empty log after `lastSequence`. Until its rename is durable, the old log (whose records the
        // checkpoint holds) may come back, so nothing is appended before the directory sync.
        let logTemporary = logTemporaryPath
        let newLog = try Self.io("create", logTemporary) { () throws(Errno) in try fileSystem.create(logTemporary) }
        do {
            try fileSystem.write(newLog, JournalFormat.fileHeader(magic: JournalFormat.logMagic, baseSequence: lastSequence), at: 0)
            try fileSystem.fdatasync(newLog)
            try fileSystem.rename(logTemporary, to: logPath)
        } catch {
            fileSystem.close(newLog)
            try? fileSystem.remove(logTemporary)
            throw .io(operation: "write", file: logTemporary, errno: error)
        }
        if let log { fileSystem.close(log) }
        log = newLog
        logLength = JournalFormat.fileHeaderSize
        do {
            try fileSystem.syncDirectory(directory)
        } catch {
            repair = .syncDirectory
            throw .io(operation: "fsync", file: directory, errno: error)
        }
        compactions += 1
    }
}
