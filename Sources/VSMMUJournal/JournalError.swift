import SystemPackage

/// Why the journal refused to open, or why a write did not become durable.
public enum JournalError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A file of the journal is damaged somewhere other than a torn tail: a record with a bad checksum that
    /// valid records follow, a bad header or checkpoint, a sequence gap, an unknown record kind. Nothing is
    /// loaded: the journal refuses to open rather than hand out part of its contents.
    case corrupt(file: FilePath, offset: Int, reason: String)
    /// A file written by a format version this build does not know.
    case unsupportedVersion(file: FilePath, version: UInt32)
    /// A file operation failed (`open`, `pwrite`, `fdatasync`, `rename`, `ftruncate`, the directory's `fsync`).
    /// After a failed `put`/`remove` nothing changed: the caller must not report the change as done.
    case io(operation: String, file: FilePath, errno: Errno)
    /// A value larger than ``Journal/maximumValueSize``.
    case valueTooLarge(size: Int)

    public var description: String {
        switch self {
        case let .corrupt(file, offset, reason):
            return "journal file \(file) is corrupt at offset \(offset): \(reason)"
        case let .unsupportedVersion(file, version):
            return "journal file \(file) has format version \(version), which this vsmmud does not know (it writes \(JournalFormat.version))"
        case let .io(operation, file, errno):
            return "journal \(operation) of \(file) failed: \(errno)"
        case let .valueTooLarge(size):
            return "journal value of \(size) bytes exceeds the limit of \(Journal.maximumValueSize)"
        }
    }
}
