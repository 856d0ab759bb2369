import Logging
import SystemPackage
@testable import VSMMUJournal

#if canImport(Glibc)
import Glibc
#endif

/// A log handler that keeps every message, for tests that check what the journal reported.
final class RecordingLogHandler: LogHandler, @unchecked Sendable {
    final class Store: @unchecked Sendable {
        private var lock = pthread_mutex_t()
        private var messages: [(Logger.Level, String, Logger.Metadata?)] = []
        init() { pthread_mutex_init(&lock, nil) }
        func append(_ entry: (Logger.Level, String, Logger.Metadata?)) {
            pthread_mutex_lock(&lock)
            messages.append(entry)
            pthread_mutex_unlock(&lock)
        }
        var all: [(Logger.Level, String, Logger.Metadata?)] {
            pthread_mutex_lock(&lock)
            defer { pthread_mutex_unlock(&lock) }
            return messages
        }
    }

    let store: Store
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    init(store: Store) { self.store = store }
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        store.append((event.level, event.message.description, event.metadata))
    }
}

/// A logger and what it recorded.
func recordingLogger() -> (Logger, RecordingLogHandler.Store) {
    let store = RecordingLogHandler.Store()
    return (Logger(label: "journal-test") { _ in RecordingLogHandler(store: store) }, store)
}

let quietLogger = Logger(label: "journal-test") { _ in SwiftLogNoOpLogHandler() }

/// The directory every simulated-disk journal lives in.
let simulatedDirectory: FilePath = "/state"

/// A fresh temporary directory on the real file system.
func temporaryDirectory() -> FilePath {
    var template = Array("/tmp/vsmmu-journal-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { buffer -> String? in
        guard let base = buffer.baseAddress, let made = mkdtemp(base) else { return nil }
        return String(cString: made)
    }
    precondition(path != nil, "mkdtemp failed")
    return FilePath(path ?? "/tmp")
}

/// Removes a temporary directory and its files.
func removeDirectory(_ path: FilePath) {
    for name in ["log", "checkpoint", "log.tmp", "checkpoint.tmp"] {
        _ = path.appending(name).withPlatformString { unlink($0) }
    }
    _ = path.withPlatformString { rmdir($0) }
}

/// A log file's bytes built record by record, for tests that damage one.
func logFile(base: UInt64 = 0, records: [(JournalFormat.Kind, UInt64, [UInt8])]) -> [UInt8] {
    var bytes = JournalFormat.fileHeader(magic: JournalFormat.logMagic, baseSequence: base)
    for (kind, sequence, payload) in records {
        bytes += JournalFormat.record(kind, sequence: sequence, payload: payload)
    }
    return bytes
}

func put(_ key: UInt64, _ value: [UInt8]) -> [UInt8] { JournalFormat.putPayload(key: key, value: value) }
