import Logging
import SystemPackage
import Testing
@testable import VSMMUJournal

/// The journal on the real file system and on the simulated disk: what it keeps, what it cuts, what it refuses.
struct JournalTests {
    let log = simulatedDirectory.appending("log")
    let checkpoint = simulatedDirectory.appending("checkpoint")

    func open(_ disk: SimulatedDisk, threshold: Int = Journal.defaultCompactionThreshold, logger: Logger = quietLogger) throws -> Journal {
        try Journal.open(directory: simulatedDirectory, fileSystem: disk, compactionThreshold: threshold, logger: logger)
    }

    /// The error opening `disk` throws.
    func openingError(_ disk: SimulatedDisk) -> JournalError? {
        do {
            _ = try open(disk)
            return nil
        } catch let error as JournalError {
            return error
        } catch {
            Issue.record("not a JournalError: \(error)")
            return nil
        }
    }

    // MARK: Keeping

    @Test func putsAndRemovesSurviveReopeningOnTheRealFileSystem() throws {
        let directory = temporaryDirectory()
        defer { removeDirectory(directory) }
        do {
            let journal = try Journal.open(directory: directory, logger: quietLogger)
            try journal.put(key: 1, value: [1, 2, 3])
            try journal.put(key: 2, value: Array(repeating: 0xAB, count: 10_000))
            try journal.put(key: 1, value: [4])
            try journal.remove(key: 2)
            try journal.put(key: UInt64.max, value: [])
        }
        let reopened = try Journal.open(directory: directory, logger: quietLogger)
        #expect(reopened.contents == [1: [4], UInt64.max: []])
    }

    @Test func compactionOnTheRealFileSystemKeepsTheContentsAndEmptiesTheLog() throws {
        let directory = temporaryDirectory()
        defer { removeDirectory(directory) }
        var expected: [UInt64: [UInt8]] = [:]
        do {
            let journal = try Journal.open(directory: directory, compactionThreshold: 4096, logger: quietLogger)
            for round in 0..<200 {
                let key = UInt64(round % 7)
                let value = [UInt8](repeating: UInt8(round & 0xFF), count: 100 + round)
                try journal.put(key: key, value: value)
                expected[key] = value
            }
            #expect(journal.compactionCount > 5)
        }
        let fileSystem = POSIXJournalFileSystem()
        let logBytes = try #require(try fileSystem.read(directory.appending("log")))
        #expect(logBytes.count <= 4096 + 400)
        #expect(try fileSystem.read(directory.appending("checkpoint")) != nil)
        #expect(try Journal.open(directory: directory, logger: quietLogger).contents == expected)
    }

    @Test func aValueOverTheLimitIsRefusedAndNothingIsWritten() throws {
        let disk = SimulatedDisk()
        let journal = try open(disk)
        let steps = disk.steps
        #expect(throws: JournalError.valueTooLarge(size: Journal.maximumValueSize + 1)) {
            try journal.put(key: 1, value: [UInt8](repeating: 0, count: Journal.maximumValueSize + 1))
        }
        #expect(disk.steps == steps)
    }

    @Test func removingAMissingKeyWritesNothing() throws {
        let disk = SimulatedDisk()
        let journal = try open(disk)
        let steps = disk.steps
        try journal.remove(key: 42)
        #expect(disk.steps == steps)
    }

    // MARK: Failing writes (no crash)

    @Test func aWriteThatFailsChangesNothingAndTheJournalWorksOnceTheDiskDoes() throws {
        let disk = SimulatedDisk()
        let journal = try open(disk)
        try journal.put(key: 1, value: [1])
        disk.failingWith = .noSpace
        #expect(throws: JournalError.io(operation: "write", file: log, errno: .noSpace)) { try journal.put(key: 2, value: [2]) }
        #expect(throws: JournalError.self) { try journal.remove(key: 1) }
        #expect(journal.contents == [1: [1]])
        disk.failingWith = nil
        try journal.put(key: 3, value: [3])
        #expect(journal.contents == [1: [1], 3: [3]])
        #expect(try open(disk.reboot()).contents == [1: [1], 3: [3]])
    }

    @Test func anFdatasyncThatFailsCutsTheUnacknowledgedRecordBeforeTheNextOne() throws {
        let disk = SimulatedDisk()
        let journal = try open(disk)
        try journal.put(key: 1, value: [1])
        let length = try #require(disk.contents(of: log)).count
        // The write lands, its fdatasync fails: the record is in the file but was never acknowledged.
        disk.arm(crashAt: 1, mode: .before)
        #expect(throws: JournalError.self) { try journal.put(key: 2, value: [2]) }
        // (The simulated crash stops the disk; a new boot sees the durable state: without record 2.)
        let after = disk.reboot()
        #expect(try #require(after.contents(of: log)).count == length)
        #expect(try open(after).contents == [1: [1]])
    }

    // MARK: Torn tails

    func journalWithTwoRecords() throws -> (SimulatedDisk, [UInt8]) {
        let disk = SimulatedDisk()
        let journal = try open(disk)
        try journal.put(key: 1, value: [1, 1])
        try journal.put(key: 2, value: [2, 2])
        return (disk, try #require(disk.contents(of: log)))
    }

    @Test(arguments: [1, 10, 19, 20, 25])
    func aShortLastRecordIsCutAwayAndLogged(keeping prefix: Int) throws {
        let (disk, bytes) = try journalWithTwoRecords()
        let torn = bytes + Array(JournalFormat.record(.put, sequence: 3, payload: put(3, [3, 3, 3])).prefix(prefix))
        disk.overwrite(log, with: torn)
        let (logger, store) = recordingLogger()
        let journal = try open(disk, logger: logger)
        #expect(journal.contents == [1: [1, 1], 2: [2, 2]])
        #expect(disk.contents(of: log) == bytes)
        let notice = try #require(store.all.first { $0.0 == .notice })
        #expect(notice.1.contains("torn tail"))
        #expect(notice.2?["offset"] == "\(bytes.count)")
        // The next record takes the cut one's sequence number.
        try journal.put(key: 3, value: [9])
        #expect(try open(disk.reboot()).contents == [1: [1, 1], 2: [2, 2], 3: [9]])
    }

    @Test func aLastRecordWhoseCRCDoesNotMatchIsCutAway() throws {
        let (disk, bytes) = try journalWithTwoRecords()
        var damaged = bytes
        damaged[damaged.count - 1] ^= 0x40
        disk.overwrite(log, with: damaged)
        #expect(try open(disk).contents == [1: [1, 1]])
        #expect(disk.contents(of: log)?.count == bytes.count - JournalFormat.recordHeaderSize - 10)
    }

    @Test(arguments: [1, 20, 37, 4096])
    func aZeroFilledTailIsCutAway(zeros: Int) throws {
        let (disk, bytes) = try journalWithTwoRecords()
        disk.overwrite(log, with: bytes + [UInt8](repeating: 0, count: zeros))
        #expect(try open(disk).contents == [1: [1, 1], 2: [2, 2]])
        #expect(disk.contents(of: log) == bytes)
    }

    // MARK: Refusing damage

    @Test func aBadCRCThatValidRecordsFollowRefusesToOpenNamingTheFileAndOffset() throws {
        let (disk, bytes) = try journalWithTwoRecords()
        var damaged = bytes
        let firstRecord = JournalFormat.fileHeaderSize
        damaged[firstRecord + JournalFormat.recordHeaderSize + 8] ^= 1 // the first record's value
        disk.overwrite(log, with: damaged)
        guard case let .corrupt(file, offset, reason) = openingError(disk) else {
            Issue.record("opened a log damaged in the middle")
            return
        }
        #expect(file == log)
        #expect(offset == firstRecord)
        #expect(reason.contains("valid record"))
        #expect(disk.contents(of: log) == damaged, "the refused log was changed")
    }

    @Test func aDamagedLengthThatValidRecordsFollowRefusesToOpen() throws {
        let (disk, bytes) = try journalWithTwoRecords()
        var damaged = bytes
        damaged[JournalFormat.fileHeaderSize + 2] = 0x7F // the first record's length: past the end of the file
        disk.overwrite(log, with: damaged)
        guard case let .corrupt(_, offset, _) = openingError(disk) else {
            Issue.record("opened a log with a damaged length in the middle")
            return
        }
        #expect(offset == JournalFormat.fileHeaderSize)
    }

    @Test func aSequenceGapRefusesToOpen() {
        let disk = SimulatedDisk()
        let bytes = logFile(records: [(.put, 1, put(1, [1])), (.put, 3, put(2, [2]))])
        disk.overwrite(log, with: bytes)
        let secondRecord = JournalFormat.fileHeaderSize + JournalFormat.recordHeaderSize + 9
        #expect(openingError(disk) == .corrupt(file: log, offset: secondRecord, reason: "record sequence 3 where 2 was due"))
    }

    @Test func anUnknownRecordKindRefusesToOpen() throws {
        let disk = SimulatedDisk()
        var record = JournalFormat.record(.put, sequence: 1, payload: put(1, [1]))
        record[4] = 9
        // A valid CRC over the unknown kind: written whole, by something that is not this format.
        let crc = CRC32C.finalize(CRC32C.update(CRC32C.update(CRC32C.initial, record[0..<16]), record[20...]))
        withUnsafeBytes(of: crc.littleEndian) { record.replaceSubrange(16..<20, with: $0) }
        disk.overwrite(log, with: logFile(records: []) + record)
        #expect(openingError(disk) == .corrupt(file: log, offset: JournalFormat.fileHeaderSize, reason: "unknown record kind 9"))
    }

    @Test func aCheckpointEndRecordInTheLogRefusesToOpen() {
        let disk = SimulatedDisk()
        disk.overwrite(log, with: logFile(records: [(.checkpointEnd, 1, JournalFormat.keyPayload(0))]))
        #expect(openingError(disk) == .corrupt(file: log, offset: JournalFormat.fileHeaderSize, reason: "unknown record kind 3"))
    }

    @Test func aFormatVersionItDoesNotKnowRefusesToOpen() {
        let disk = SimulatedDisk()
        var header = logFile(records: [])
        header[8] = 2
        let crc = CRC32C.checksum(header[0..<28])
        withUnsafeBytes(of: crc.littleEndian) { header.replaceSubrange(28..<32, with: $0) }
        disk.overwrite(log, with: header)
        let error = openingError(disk)
        #expect(error == .unsupportedVersion(file: log, version: 2))
        #expect(error?.description.contains("format version 2") == true)
    }

    @Test func aBadMagicOrHeaderCRCRefusesToOpen() {
        let disk = SimulatedDisk()
        var header = logFile(records: [])
        header[0] = UInt8(ascii: "X")
        disk.overwrite(log, with: header)
        #expect(openingError(disk) == .corrupt(file: log, offset: 0, reason: "bad magic (not a vsmmud journal file of this kind)"))
        header = logFile(records: [])
        header[20] ^= 1
        disk.overwrite(log, with: header)
        #expect(openingError(disk) == .corrupt(file: log, offset: 0, reason: "the header's CRC-32C does not match"))
        disk.overwrite(log, with: Array(header.prefix(10)))
        #expect(openingError(disk) == .corrupt(file: log, offset: 0, reason: "the file is 10 bytes, shorter than its 32-byte header"))
    }

    func compactedJournal() throws -> SimulatedDisk {
        let disk = SimulatedDisk()
        let journal = try open(disk)
        try journal.put(key: 1, value: [1])
        try journal.put(key: 2, value: [2])
        try journal.compact()
        try journal.put(key: 3, value: [3])
        return disk
    }

    @Test func aDamagedCheckpointRefusesToOpenWhereverTheDamageIs() throws {
        let pristine = try #require(try compactedJournal().contents(of: checkpoint))
        // Every byte of the checkpoint, flipped in turn: never opens, never half-loaded.
        for offset in pristine.indices {
            let disk = try compactedJournal()
            var damaged = pristine
            damaged[offset] ^= 0x01
            disk.overwrite(checkpoint, with: damaged)
            guard let error = openingError(disk) else {
                Issue.record("opened a checkpoint damaged at byte \(offset)")
                continue
            }
            switch error {
            case let .corrupt(file, _, _): #expect(file == checkpoint)
            case let .unsupportedVersion(file, _): #expect(file == checkpoint)
            default: Issue.record("byte \(offset): \(error)")
            }
        }
        // Cut short anywhere.
        for length in [0, 31, 32, pristine.count - 1] {
            let disk = try compactedJournal()
            disk.overwrite(checkpoint, with: Array(pristine.prefix(length)))
            guard case .corrupt(checkpoint, _, _)? = openingError(disk) else {
                Issue.record("opened a checkpoint cut to \(length) bytes")
                continue
            }
        }
    }

    @Test func aLogThatStartsAfterTheCheckpointRefusesToOpen() throws {
        let disk = try compactedJournal()
        disk.overwrite(log, with: logFile(base: 5, records: []))
        #expect(openingError(disk) == .corrupt(
            file: log, offset: 16,
            reason: "the log starts after sequence 5 but the checkpoint ends at 2: the changes between are missing"))
    }

    @Test func aMissingLogBesideACheckpointRefusesToOpen() throws {
        let disk = try compactedJournal()
        disk.delete(log)
        #expect(openingError(disk) == .corrupt(file: log, offset: 0, reason: "the log is missing while the checkpoint \(checkpoint) exists"))
    }

    @Test func anOldLogBesideTheNewerCheckpointOpensToTheCheckpointsContents() throws {
        // What a crash between the checkpoint's rename and the log's leaves.
        let disk = SimulatedDisk()
        let journal = try open(disk)
        try journal.put(key: 1, value: [1])
        try journal.put(key: 1, value: [2])
        let oldLog = try #require(disk.contents(of: log))
        try journal.compact()
        disk.overwrite(log, with: oldLog)
        #expect(try open(disk).contents == [1: [2]])
    }

    @Test func leftoverTemporaryFilesAreRemovedAndIgnored() throws {
        let disk = try compactedJournal()
        disk.overwrite(simulatedDirectory.appending("checkpoint.tmp"), with: [1, 2, 3])
        disk.overwrite(simulatedDirectory.appending("log.tmp"), with: [4, 5, 6])
        #expect(try open(disk).contents == [1: [1], 2: [2], 3: [3]])
        #expect(disk.contents(of: simulatedDirectory.appending("checkpoint.tmp")) == nil)
        #expect(disk.contents(of: simulatedDirectory.appending("log.tmp")) == nil)
    }

    @Test func errorsNameTheFileAndOffsetInTheirDescription() {
        let error = JournalError.corrupt(file: "/var/lib/vsmmud/log", offset: 1234, reason: "record sequence 3 where 2 was due")
        #expect(error.description == "journal file /var/lib/vsmmud/log is corrupt at offset 1234: record sequence 3 where 2 was due")
    }
}
