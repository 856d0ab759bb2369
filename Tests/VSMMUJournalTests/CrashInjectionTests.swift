import SystemPackage
import Testing
@testable import VSMMUJournal

/// A crash at every step of every write and every compaction, each way a step can end, reopens to the
/// contents before the change or after it, never anything else; and to the contents after it whenever
/// the call had returned.
struct CrashInjectionTests {
    enum Operation: CustomStringConvertible {
        case put(UInt64, [UInt8])
        case remove(UInt64)
        case compact

        var description: String {
            switch self {
            case let .put(key, value): "put \(key) (\(value.count) bytes)"
            case let .remove(key): "remove \(key)"
            case .compact: "compact"
            }
        }

        func run(on journal: Journal) throws(JournalError) {
            switch self {
            case let .put(key, value): try journal.put(key: key, value: value)
            case let .remove(key): try journal.remove(key: key)
            case .compact: try journal.compact()
            }
        }

        func apply(to model: inout [UInt64: [UInt8]]) {
            switch self {
            case let .put(key, value): model[key] = value
            case let .remove(key): model[key] = nil
            case .compact: break
            }
        }
    }

    /// Puts, overwrites and removes over a few keys, with values from empty to a few hundred bytes, and
    /// a compaction threshold that a handful of records exceed: automatic compactions happen inside puts.
    static let operations: [Operation] = {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        var operations: [Operation] = []
        for index in 0..<28 {
            let key = next() % 5 + 1
            switch next() % 6 {
            case 0: operations.append(.remove(key))
            case 1 where index % 9 == 0: operations.append(.compact)
            default:
                let size = Int(next() % 300)
                operations.append(.put(key, (0..<size).map { _ in UInt8(truncatingIfNeeded: next()) }))
            }
        }
        operations.append(.put(6, []))
        operations.append(.compact)
        return operations
    }()

    static let threshold = 600

    func openJournal(_ disk: SimulatedDisk) throws -> Journal {
        try Journal.open(directory: simulatedDirectory, fileSystem: disk, compactionThreshold: Self.threshold, logger: quietLogger)
    }

    /// The ways step `name` can end in a crash.
    func modes(for name: String) -> [SimulatedDisk.CrashMode] {
        var modes: [SimulatedDisk.CrashMode] = [.before, .after, .afterWithWriteback]
        if name.hasPrefix("write "), let length = Int(name.dropFirst(6)) {
            modes += [.tornAfter(1), .tornAfter(length / 2), .tornAfter(max(length - 1, 0)), .zeroFilled]
        }
        if name.hasPrefix("rename ") { modes.append(.afterOnlyThisEntryWrittenBack) }
        return modes
    }

    @Test func aCrashAtEveryStepOfEveryWriteAndCompactionReopensToTheOldOrTheNewContents() throws {
        let operations = Self.operations
        var model: [UInt64: [UInt8]] = [:]
        var crashes = 0
        var compactionSteps = 0
        for (index, operation) in operations.enumerated() {
            let old = model
            operation.apply(to: &model)
            let new = model

            // The steps this operation takes, from a run without a crash.
            let probe = SimulatedDisk()
            let probeJournal = try openJournal(probe)
            for earlier in operations[..<index] { try earlier.run(on: probeJournal) }
            let first = probe.steps
            try operation.run(on: probeJournal)
            let names = Array(probe.stepNames[first...])
            compactionSteps += names.filter { $0.contains("tmp") }.count

            for (step, name) in names.enumerated() {
                for mode in modes(for: name) {
                    let disk = SimulatedDisk()
                    let journal = try openJournal(disk)
                    for earlier in operations[..<index] { try earlier.run(on: journal) }
                    disk.arm(crashAt: step, mode: mode)
                    let returned = (try? operation.run(on: journal)) != nil
                    #expect(disk.crashed, "operation \(index) (\(operation)), step \(step) (\(name)) did not crash")

                    let after = disk.reboot()
                    let reopened = try openJournal(after)
                    let contents = reopened.contents
                    let context = "operation \(index) (\(operation)), crash at step \(step) (\(name)) \(mode)"
                    #expect(contents == old || contents == new, "\(context): neither the old nor the new contents")
                    if returned { #expect(contents == new, "\(context): the call returned but its change is lost") }

                    // The recovered journal works: a further change survives the next boot.
                    try reopened.put(key: 999, value: [1, 2, 3])
                    let again = try openJournal(after.reboot())
                    var expected = contents
                    expected[999] = [1, 2, 3]
                    #expect(again.contents == expected, "\(context): the recovered journal lost a later change")
                    crashes += 1
                }
            }
        }
        // Every kind of step was reached: appends, and both halves of compactions (explicit and automatic).
        #expect(compactionSteps > 20)
        #expect(crashes > 300)
    }

    @Test func aCrashWhileOpeningCutsATornTailOrLeavesItForTheNextOpen() throws {
        let disk = SimulatedDisk()
        let journal = try openJournal(disk)
        try journal.put(key: 1, value: [1])
        // A torn second put: its first 10 bytes only.
        disk.arm(crashAt: 0, mode: .tornAfter(10))
        #expect(throws: JournalError.self) { try journal.put(key: 2, value: [2, 2]) }
        let torn = disk.reboot()
        let tornLog = try #require(torn.contents(of: simulatedDirectory.appending("log")))

        // The open that cuts it: ftruncate, fdatasync.
        let probe = SimulatedDisk()
        probe.overwrite(simulatedDirectory.appending("log"), with: tornLog)
        _ = try openJournal(probe)
        let steps = probe.steps
        #expect(steps == 2)
        for step in 0..<steps {
            for mode in [SimulatedDisk.CrashMode.before, .after, .afterWithWriteback] {
                let disk = SimulatedDisk()
                disk.overwrite(simulatedDirectory.appending("log"), with: tornLog)
                disk.arm(crashAt: step, mode: mode)
                #expect(throws: JournalError.self) { _ = try openJournal(disk) }
                let reopened = try openJournal(disk.reboot())
                #expect(reopened.contents == [1: [1]])
            }
        }
    }

    @Test func aCrashAtEveryStepOfCreatingTheFirstLogLeavesAnEmptyJournal() throws {
        let probe = SimulatedDisk()
        _ = try openJournal(probe)
        #expect(probe.stepNames == ["create log.tmp", "write 32", "fdatasync", "rename log.tmp", "fsync directory"])
        for step in 0..<probe.steps {
            for mode in modes(for: probe.stepNames[step]) {
                let disk = SimulatedDisk()
                disk.arm(crashAt: step, mode: mode)
                #expect(throws: JournalError.self) { _ = try openJournal(disk) }
                let after = disk.reboot()
                let reopened = try openJournal(after)
                #expect(reopened.contents.isEmpty, "crash at step \(step) \(mode)")
                try reopened.put(key: 7, value: [7])
                #expect(try openJournal(after.reboot()).contents == [7: [7]])
            }
        }
    }
}
