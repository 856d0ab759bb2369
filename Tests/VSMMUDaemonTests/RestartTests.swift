import Foundation
import InvalidationEngine
import Logging
import PSMMU
import SMMUv3
import SystemPackage
import Testing
import VSMMUClient
@testable import VSMMUDaemon
import VSMMUJournal
import VSMMUProtocol
import VirtualSMMU

#if canImport(Glibc)
import Glibc
#endif

/// A fresh state directory under /tmp (each test its own: tests run in parallel).
func temporaryStateDirectory(_ label: String = #function) -> String {
    let name = String(label.prefix { $0.isLetter || $0.isNumber }.prefix(24))
    var template = Array("/tmp/vsmmud-state-\(name)-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { buffer -> String? in
        guard let base = buffer.baseAddress, let made = mkdtemp(base) else { return nil }
        return String(cString: made)
    }
    return path ?? "/tmp"
}

func removeStateDirectory(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

/// Keeps every log message, for tests that check what the daemon reported.
final class MessageLog: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [(Logger.Level, String)] = []
    func append(_ level: Logger.Level, _ message: String) { lock.lock(); entries.append((level, message)); lock.unlock() }
    var all: [(Logger.Level, String)] { lock.lock(); defer { lock.unlock() }; return entries }

    struct Handler: LogHandler {
        let log: MessageLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) { log.append(event.level, event.message.description) }
    }

    var logger: Logger { Logger(label: "vsmmud-test") { [self] _ in Handler(log: self) } }
}

/// A journal file system that fails every write with `failure` while it is set.
final class FailingJournalFileSystem: JournalFileSystem, @unchecked Sendable {
    let real = POSIXJournalFileSystem()
    private let lock = NSLock()
    private var _failure: Errno?
    var failure: Errno? {
        get { lock.lock(); defer { lock.unlock() }; return _failure }
        set { lock.lock(); _failure = newValue; lock.unlock() }
    }
    private func check() throws(Errno) { if let failure { throw failure } }
    func makeDirectory(_ path: FilePath) throws(Errno) { try real.makeDirectory(path) }
    func read(_ path: FilePath) throws(Errno) -> [UInt8]? { try real.read(path) }
    func create(_ path: FilePath) throws(Errno) -> FileDescriptor { try check(); return try real.create(path) }
    func openForWriting(_ path: FilePath) throws(Errno) -> FileDescriptor { try real.openForWriting(path) }
    func write(_ file: FileDescriptor, _ bytes: [UInt8], at offset: Int) throws(Errno) { try check(); try real.write(file, bytes, at: offset) }
    func fdatasync(_ file: FileDescriptor) throws(Errno) { try check(); try real.fdatasync(file) }
    func truncate(_ file: FileDescriptor, to length: Int) throws(Errno) { try check(); try real.truncate(file, to: length) }
    func close(_ file: FileDescriptor) { real.close(file) }
    func rename(_ source: FilePath, to destination: FilePath) throws(Errno) { try check(); try real.rename(source, to: destination) }
    func remove(_ path: FilePath) throws(Errno) { try real.remove(path) }
    func syncDirectory(_ path: FilePath) throws(Errno) { try check(); try real.syncDirectory(path) }
}

/// An in-process server with a journal in `stateDirectory`: each instance is "a process" with its own
/// simulated pSMMUs (a restart starts from empty pSMMUs, as a new process does).
struct JournaledServer {
    let server: VSMMUServer
    let path: String

    init(stateDirectory: String, label: String = #function, grace: Duration = .seconds(600),
         fileSystem: (any JournalFileSystem)? = nil, logger: Logger? = nil) throws {
        let name = String(label.prefix { $0.isLetter || $0.isNumber }.prefix(20))
        path = uniqueSocketPath(name)
        var configuration = VSMMUServer.Configuration(socketPath: path, pSMMUs: simulatedPSMMUs(3).map { .simulated($0) })
        configuration.stateDirectory = stateDirectory
        configuration.resumeGrace = grace
        configuration.journalFileSystem = fileSystem
        var quiet = Logger(label: "vsmmud-test")
        quiet.logLevel = .critical
        server = VSMMUServer(configuration: configuration, logger: logger ?? quiet)
        try server.start()
    }

    func client() throws -> VSMMUClient {
        let client = try VSMMUClient(socketPath: path)
        try client.hello(name: "restart-test")
        return client
    }
}

/// What LIST says about the registrations, without what a restart renews (owner pid, backend object ids,
/// HWPT numbers) and the ASIDs still retiring from an earlier CD (the new process's pSMMUs never cached them).
struct Registrations: Equatable, CustomStringConvertible {
    var vsmmus: [String]
    var viommus: [String]
    var devices: [String]

    init(_ client: VSMMUClient) throws {
        guard case .vsmmus(let v) = try client.list(.vsmmus).entries,
              case .viommus(let i) = try client.list(.viommus).entries,
              case .devices(let d) = try client.list(.devices).entries else {
            throw VSMMUClientError.badReply("LIST")
        }
        vsmmus = v.map { "vsmmu \($0.vsmmu.rawValue) '\($0.name)' viommus \($0.viommuCount) devices \($0.deviceCount) hwpts \($0.hwptCount)" }
        viommus = i.map { "vsmmu \($0.vsmmu.rawValue) viommu \($0.viommu) on \($0.pSMMU) devices \($0.deviceCount)" }
        devices = d.map { "vsmmu \($0.vsmmu.rawValue) sid 0x\(String($0.streamID, radix: 16)) viommu \($0.viommu) host \($0.hostDeviceID) linked \($0.steLinked) hwpt \($0.s1HWPT != nil)" }
    }

    var description: String { (vsmmus + viommus + devices).joined(separator: "\n") }
}

@Suite struct RestartTests {
    /// vSMMU 1 with viommus 1 and 2 (index 0 detached: a gap), four devices, three linked, one CD updated.
    func register(on client: VSMMUClient) throws -> VSMMUID {
        let vsmmu = try client.createVSMMU(name: "vm-a")
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 0)
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu1", hostDeviceID: 16)
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu2", hostDeviceID: 32)
        try client.detachViommu(vsmmu: vsmmu, viommu: 0)
        for (i, (host, sid)) in [(UInt32(17), StreamID(0x10)), (18, 0x11), (33, 0x20), (34, 0x21)].enumerated() {
            try client.setDeviceID(vsmmu: vsmmu, viommu: host < 32 ? 1 : 2, hostDeviceID: host, streamID: sid)
            if i < 3 { _ = try client.linkSTE(vsmmu: vsmmu, streamID: sid, ste: s1STE(), contextDescriptors: [.valid(asid: ASID(i + 1))]) }
        }
        _ = try client.updateCD(vsmmu: vsmmu, streamID: 0x20, substreamID: 0, .valid(asid: 9))
        let other = try client.createVSMMU(name: "vm-b")
        _ = try client.attachViommu(vsmmu: other, pSMMU: "smmu0", hostDeviceID: 1)
        try client.setDeviceID(vsmmu: other, viommu: 0, hostDeviceID: 2, streamID: 0x8)
        return vsmmu
    }

    @Test func registrationsSurviveAStopWithAJournalAndComeBackAwaitingTheirOwner() throws {
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let first = try JournaledServer(stateDirectory: directory)
        let client = try first.client()
        let vsmmu = try register(on: client)
        let before = try Registrations(client)
        // SIGTERM of a journaled daemon: what was received is answered, nothing is torn down.
        first.server.stop()

        let second = try JournaledServer(stateDirectory: directory)
        defer { second.server.stop() }
        let admin = try second.client()
        let after = try Registrations(admin)
        #expect(after == before, "before:\n\(before)\nafter:\n\(after)")
        guard case .vsmmus(let entries) = try admin.list(.vsmmus).entries else { return }
        #expect(entries.allSatisfy { $0.ownerProcessID == 0 }, "a rebuilt vSMMU has no owner until it is resumed")
        // Until resumed it does not exist, for every connection: the answer of an id that never existed.
        let refused = refusal("DESTROY_VSMMU of a vSMMU awaiting its owner") { try admin.destroyVSMMU(vsmmu) }
        let never = refusal("DESTROY_VSMMU of an id that never existed") { try admin.destroyVSMMU(VSMMUID(999)) }
        #expect(refused?.code == .unknownVSMMU && never?.code == .unknownVSMMU)
        // New vSMMUs get new ids: the journaled ones are not reused.
        let fresh = try admin.createVSMMU(name: "new")
        #expect(fresh != vsmmu)
        // The simulated pSMMUs of the new process hold the rebuilt registrations in the vSMMU's tenant: for
        // a connection that resumed it (and so joined its tenant), host device 17 is taken.
        let token = try #require(client.resumeTokens[vsmmu])
        let owner = try second.client()
        _ = try owner.resumeVSMMU(vsmmu, token: token)
        let taken = try owner.createVSMMU(name: "probe")
        _ = try owner.attachViommu(vsmmu: taken, pSMMU: "smmu1", hostDeviceID: 16)
        let conflict = refusal("SET_DEV_ID of a host device a rebuilt vSMMU of the same tenant holds") {
            try owner.setDeviceID(vsmmu: taken, viommu: 0, hostDeviceID: 17, streamID: 0x50)
        }
        #expect(conflict?.code == .backendFailure && conflict?.detail == UInt32(EEXIST), "\(String(describing: conflict))")
        // Another tenant (admin's connection, which created its own vSMMU) has a namespace of its own.
        _ = try admin.attachViommu(vsmmu: fresh, pSMMU: "smmu1", hostDeviceID: 16)
        try admin.setDeviceID(vsmmu: fresh, viommu: 0, hostDeviceID: 17, streamID: 0x50)
    }

    @Test func aVSMMUThatCannotBeRebuiltIsDroppedAndLoggedAndTheOthersComeBack() throws {
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let first = try JournaledServer(stateDirectory: directory)
        // The client stays open until the stop: its EOF would tear its vSMMUs down first.
        let owner = try first.client()
        _ = try register(on: owner) // vm-a on smmu1 and smmu2, vm-b on smmu0
        first.server.stop()
        withExtendedLifetime(owner) {}
        // The next process no longer has smmu2: vm-a cannot be rebuilt, vm-b can, and the daemon serves.
        let path = uniqueSocketPath("dropped")
        var configuration = VSMMUServer.Configuration(socketPath: path, pSMMUs: simulatedPSMMUs(2).map { .simulated($0) })
        configuration.stateDirectory = directory
        let log = MessageLog()
        let second = VSMMUServer(configuration: configuration, logger: log.logger)
        try second.start()
        let admin = try VSMMUClient(socketPath: path)
        try admin.hello(name: "after")
        guard case .vsmmus(let entries) = try admin.list(.vsmmus).entries else { Issue.record("LIST"); return }
        #expect(entries.map(\.name) == ["vm-b"])
        #expect(log.all.contains { $0.0 == .error && $0.1.contains("vSMMU dropped at recovery") })
        second.stop()
        // The dropped record is gone from the journal: a third start rebuilds vm-b alone, silently.
        let third = try JournaledServer(stateDirectory: directory)
        defer { third.server.stop() }
        guard case .vsmmus(let again) = try third.client().list(.vsmmus).entries else { Issue.record("LIST"); return }
        #expect(again.map(\.name) == ["vm-b"])
    }

    @Test func aConnectionThatEndsStillTearsItsVSMMUsDownAndTheJournalSaysSo() throws {
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let first = try JournaledServer(stateDirectory: directory)
        do {
            let client = try first.client()
            _ = try register(on: client)
            client.shutdownWrite()
            _ = try? client.receive()
        }
        eventually { first.server.vsmmuCount == 0 }
        #expect(first.server.vsmmuCount == 0)
        first.server.stop()
        let second = try JournaledServer(stateDirectory: directory)
        defer { second.server.stop() }
        #expect(second.server.vsmmuCount == 0)
        #expect(try second.server.recover() == 0)
    }

    @Test func destroyVSMMUIsJournaled() throws {
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let first = try JournaledServer(stateDirectory: directory)
        let client = try first.client()
        let vsmmu = try register(on: client)
        try client.destroyVSMMU(vsmmu)
        first.server.stop()
        let second = try JournaledServer(stateDirectory: directory)
        defer { second.server.stop() }
        guard case .vsmmus(let entries) = try second.client().list(.vsmmus).entries else { return }
        #expect(entries.map(\.name) == ["vm-b"])
    }

    @Test func unclaimedVSMMUsAreReclaimedAfterTheGracePeriodAndThatIsLogged() throws {
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let first = try JournaledServer(stateDirectory: directory)
        // The client stays open until the stop: its EOF would tear its vSMMUs down first.
        let owner = try first.client()
        _ = try register(on: owner)
        first.server.stop()
        withExtendedLifetime(owner) {}

        let log = MessageLog()
        let second = try JournaledServer(stateDirectory: directory, grace: .seconds(1), logger: log.logger)
        #expect(second.server.vsmmuCount == 2)
        eventually { second.server.vsmmuCount == 0 }
        #expect(second.server.vsmmuCount == 0)
        let notices = log.all.filter { $0.0 == .notice && $0.1.contains("reclaimed") }
        #expect(notices.count == 2)
        // Their host devices are free again, and the journal no longer holds them.
        let client = try second.client()
        let vsmmu = try client.createVSMMU(name: "after")
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu1", hostDeviceID: 16)
        try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: 17, streamID: 0x10)
        second.server.stop()
        let third = try JournaledServer(stateDirectory: directory)
        defer { third.server.stop() }
        guard case .vsmmus(let entries) = try third.client().list(.vsmmus).entries else { return }
        #expect(entries.map(\.name) == ["after"])
    }

    @Test func aFailedJournalWriteAnswersInternalErrorAndTheVSMMURefusesControlUntilTheJournalWorks() throws {
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let fileSystem = FailingJournalFileSystem()
        let first = try JournaledServer(stateDirectory: directory, fileSystem: fileSystem)
        let client = try first.client()
        let vsmmu = try client.createVSMMU(name: "vm")
        fileSystem.failure = .noSpace
        let failed = refusal("ATTACH_VIOMMU whose journal write fails") {
            _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 0)
        }
        #expect(failed?.code == .internalError)
        #expect(failed?.message.contains("could not be made durable") == true)
        // Refused, not applied: the viommu count stays at the one the failed write left (nothing undone).
        let refused = refusal("ATTACH_VIOMMU while the journal fails") {
            _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu1", hostDeviceID: 16)
        }
        #expect(refused?.code == .internalError)
        guard case .vsmmus(let during) = try client.list(.vsmmus).entries else { return }
        #expect(during.first?.viommuCount == 1)
        // INVALIDATE is not journaled: it goes on.
        #expect(try client.invalidate(vsmmu: vsmmu, commands: [.sync()]).syncsCompleted == 1)

        fileSystem.failure = nil
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu1", hostDeviceID: 16)
        first.server.stop()
        let second = try JournaledServer(stateDirectory: directory)
        defer { second.server.stop() }
        guard case .viommus(let viommus) = try second.client().list(.viommus).entries else { return }
        #expect(viommus.map(\.pSMMU) == ["smmu0", "smmu1"])
    }

    @Test func aDamagedJournalRefusesRecoveryNamingTheFileAndOffset() throws {
        let directory = temporaryStateDirectory()
        defer { removeStateDirectory(directory) }
        let first = try JournaledServer(stateDirectory: directory)
        // The client stays open until the stop: its EOF would tear its vSMMUs down first.
        let owner = try first.client()
        _ = try register(on: owner)
        first.server.stop()
        withExtendedLifetime(owner) {}
        // One flipped byte in the first record: valid records follow it.
        let log = directory + "/log"
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: log)))
        bytes[32 + 20 + 8] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: log))

        var configuration = VSMMUServer.Configuration(socketPath: uniqueSocketPath("damaged"), pSMMUs: simulatedPSMMUs(3).map { .simulated($0) })
        configuration.stateDirectory = directory
        let server = VSMMUServer(configuration: configuration, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        do {
            try server.recover()
            Issue.record("recovered from a damaged journal")
        } catch {
            #expect(error.description.contains("\(log) is corrupt at offset 32"))
        }
        #expect(server.vsmmuCount == 0, "nothing half-loaded")
        #expect(throws: SystemCallError.self) { try server.start() }
    }

    @Test func aRecordRoundTripsAndDamagedRecordsAreRefused() throws {
        let snapshot = EngineSnapshot(
            viommus: [.init(index: ViommuIndex(3), pSMMU: "smmu1", request: ViommuAttachRequest(hostDeviceID: 16, nestParentHWPT: 5),
                            handle: ViommuHandle(rawValue: 81), objects: ViommuObjects(bytes: [1, 2, 3]))],
            devices: [.init(streamID: 0x10, viommu: ViommuIndex(3), hostDeviceID: 17, vdevice: VDeviceHandle(rawValue: 90),
                            link: .init(ste: .stage1(contextTable: 0x8000), contextDescriptors: [.valid(asid: 4)])),
                      .init(streamID: 0x11, viommu: ViommuIndex(3), hostDeviceID: 18, vdevice: VDeviceHandle(rawValue: 91))])
        let record = VSMMURecord(
            id: 7, name: "vm-é", ownerUserID: 1000, tenant: 42, token: try ResumeToken.random(),
            lastReply: JournaledReply(type: 0x10, requestID: 99, payloadCRC: 0xDEAD_BEEF, reply: [1, 2, 3]),
            snapshot: snapshot)
        let bytes = record.encoded()
        #expect(try VSMMURecord(decoding: bytes) == record)
        // Every truncation is refused, never half-decoded.
        for length in 0..<bytes.count {
            #expect(throws: VSMMURecord.DecodingError.self) { _ = try VSMMURecord(decoding: Array(bytes.prefix(length))) }
        }
        #expect(throws: VSMMURecord.DecodingError.self) { _ = try VSMMURecord(decoding: bytes + [0]) }
        // Version 3 carries a keyed creation; every truncation of that is refused too.
        var keyed = record
        keyed.creation = JournaledCreation(key: CreateKey.random(),
                                           reply: JournaledReply(type: 0x10, requestID: 5, payloadCRC: 0x1234, reply: [9, 8]))
        let keyedBytes = keyed.encoded()
        #expect(try VSMMURecord(decoding: keyedBytes) == keyed)
        for length in 0..<keyedBytes.count {
            #expect(throws: VSMMURecord.DecodingError.self) { _ = try VSMMURecord(decoding: Array(keyedBytes.prefix(length))) }
        }
        // A version-2 record (no creation field) still reads, as a record without a creation.
        var v2 = bytes
        v2[3] = 2
        let creationFlagAt = v2.count - 4 - snapshot.encode().count - 1
        #expect(v2[creationFlagAt] == 0)
        v2.remove(at: creationFlagAt)
        #expect(try VSMMURecord(decoding: v2) == record)
    }

    @Test func aVersion1RecordIsRefusedWithAMessageThatSaysWhy() {
        // "VSR", version 1, then anything: the format before the journal held the engine snapshot.
        let old: [UInt8] = Array("VSR".utf8) + [1, 0] + [7, 0, 0, 0]
        do {
            _ = try VSMMURecord(decoding: old)
            Issue.record("a version-1 record was decoded")
        } catch {
            #expect(error.description.contains("record version 1"))
            #expect(error.description.contains("move the state directory aside"))
        }
    }

    @Test func resumeTokensAreRandomAndCompareOnlyEqualBytesAndAreNeverShown() throws {
        let a = try ResumeToken.random(), b = try ResumeToken.random()
        #expect(a != b)
        #expect(a.matches(a.bytes))
        #expect(!a.matches(b.bytes))
        for index in 0..<16 {
            var flipped = a.bytes
            flipped[index] ^= 0x80
            #expect(!a.matches(flipped))
        }
        #expect(!a.matches(Array(a.bytes.prefix(15))))
        #expect(!"\(a)".contains(a.bytes.map { String($0, radix: 16) }.joined()))
        #expect("\(a)" == "ResumeToken(16 bytes)")
    }

    @Test func aReplayedReplyAnswersOnlyTheSameTypeRequestIDAndPayload() {
        let payload: [UInt8] = [1, 2, 3, 4]
        let reply = JournaledReply(type: 0x12, requestID: 7, payloadCRC: CRC32C.checksum(payload), reply: [9])
        #expect(reply.isResent(type: 0x12, requestID: 7, payload: payload))
        #expect(!reply.isResent(type: 0x13, requestID: 7, payload: payload))
        #expect(!reply.isResent(type: 0x12, requestID: 8, payload: payload))
        #expect(!reply.isResent(type: 0x12, requestID: 7, payload: [1, 2, 3, 5]))
    }
}
