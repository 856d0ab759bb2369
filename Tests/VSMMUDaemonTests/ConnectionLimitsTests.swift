import Foundation
import Logging
import PSMMU
import Testing
import VSMMUTestSupport
import VSMMUClient
import VSMMUConfiguration
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Connections are bounded (issue 11 §3): globally, per uid, and by a HELLO deadline; and a stopping
/// daemon leaves a socket path that another daemon has re-bound in place.
@Suite struct ConnectionLimitsTests {
    static func server(_ label: String, limits: ConnectionLimits) throws -> (VSMMUServer, String) {
        try openSocketServer(label) { $0.connectionLimits = limits }
    }

    /// A connected socket that says nothing (a slowloris client), or -1.
    static func rawConnection(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return -1 }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { close(fd); return -1 }
        return fd
    }

    /// The ERROR frame the daemon wrote on `fd` before closing it, if any (blocks until it closes or 10 s).
    static func errorBeforeClose(_ fd: Int32) -> ProtocolError? {
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        guard let decoded = try? Response.decode(bytes: bytes), case .error(let error) = decoded.response else { return nil }
        return error
    }

    @Test func twoThousandSlowlorisConnectionsFromOneUIDHoldOnlyItsQuotaAndAnotherUIDStillGetsIn() throws {
        let (server, path) = try Self.server("slowloris", limits: ConnectionLimits(maximumConnections: 512,
                                                                                 maximumConnectionsPerUser: 64,
                                                                                 helloTimeoutMilliseconds: 600_000))
        defer { server.stop() }
        var held: [Int32] = []
        defer { for fd in held { close(fd) } }
        for _ in 0..<2000 {
            let fd = Self.rawConnection(path)
            #expect(fd >= 0, "connect failed: errno \(errno)")
            if fd >= 0 { held.append(fd) }
        }
        #expect(held.count == 2000)
        eventually { server.connectionCount == 64 }
        #expect(server.connectionCount == 64)
        // The 65th and later were answered LIMIT_EXCEEDED (naming the per-uid quota) and closed.
        let refused = try #require(Self.errorBeforeClose(held[1999]))
        #expect(refused.code == .limitExceeded && refused.detail == 64)
        #expect(refused.message.contains("uid 0"))
        // Another uid's VMM is served while uid 0 holds its quota (the C client, as uid 65534).
        let vmmSim = try #require(CClientTests.vmmSimPath)
        let process = ChildProcess()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", vmmSim, "--socket", path,
                             "--psmmu", "smmu0:0", "--psmmu", "smmu1:16", "generate", "--commands", "2000", "--devices", "4"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(output)")
        #expect(output.contains(" 0 errors"), "\(output)")
        eventually { server.connectionCount == 64 } // vmm-sim's connection ends
        #expect(server.connectionCount == 64)
    }

    @Test func theGlobalLimitRefusesEveryUIDOnceReached() throws {
        let (server, path) = try Self.server("global", limits: ConnectionLimits(maximumConnections: 8,
                                                                              maximumConnectionsPerUser: 8,
                                                                              helloTimeoutMilliseconds: 600_000))
        defer { server.stop() }
        var held: [Int32] = []
        defer { for fd in held { close(fd) } }
        for _ in 0..<9 { held.append(Self.rawConnection(path)) }
        let refused = try #require(Self.errorBeforeClose(held[8]))
        #expect(refused.code == .limitExceeded && refused.detail == 8)
        #expect(refused.message.contains("maximum of 8 connections"))
        // A slot freed is a slot another connection gets.
        close(held.removeFirst())
        eventually { server.connectionCount == 7 }
        let client = try VSMMUClient(socketPath: path)
        #expect(try client.hello(name: "after").version == WireProtocol.supportedVersions.upperBound)
    }

    @Test func aConnectionThatNeverCompletesHelloIsAnsweredLimitExceededAndClosedAtTheDeadline() throws {
        let (server, path) = try Self.server("hellodeadline", limits: ConnectionLimits(helloTimeoutMilliseconds: 300))
        defer { server.stop() }
        // Silent.
        let silent = Self.rawConnection(path)
        defer { close(silent) }
        let late = try #require(Self.errorBeforeClose(silent))
        #expect(late.code == .limitExceeded && late.requestType == .hello && late.detail == 300)
        // Dribbling a HELLO one byte every 50 ms: the deadline is absolute, not per byte.
        let dribbler = Self.rawConnection(path)
        defer { close(dribbler) }
        let hello = try Request.hello(Hello(processID: 1, clientName: "slow")).encode(requestID: 1)
        for byte in hello.prefix(20) {
            var b = byte
            _ = send(dribbler, &b, 1, Int32(MSG_NOSIGNAL))
            usleep(50_000)
        }
        let cut = try #require(Self.errorBeforeClose(dribbler))
        #expect(cut.code == .limitExceeded && cut.requestType == .hello)
        eventually { server.connectionCount == 0 }
        #expect(server.connectionCount == 0)
    }

    @Test func aConnectionThatSaidHelloIsNeverCutByTheHelloDeadline() throws {
        let (server, path) = try Self.server("helloinline", limits: ConnectionLimits(helloTimeoutMilliseconds: 200))
        defer { server.stop() }
        let client = try VSMMUClient(socketPath: path)
        try client.hello(name: "prompt")
        usleep(600_000)
        let vsmmu = try client.createVSMMU(name: "after-the-deadline")
        #expect(vsmmu.rawValue != 0)
    }

    @Test func stopLeavesInPlaceASocketPathAnotherDaemonReboundSinceByItsInode() throws {
        let (first, path) = try Self.server("rebound", limits: ConnectionLimits())
        // An operator (or a second daemon's start after a crash) removes the path; a second daemon binds it.
        unlink(path)
        var logger = Logger(label: "vsmmud-test")
        logger.logLevel = .critical
        let second = VSMMUServer(configuration: .init(socketPath: path, pSMMUs: simulatedPSMMUs(1).map { .simulated($0) }),
                                 logger: logger)
        try second.start()
        defer { second.stop() }
        first.stop()
        var st = stat()
        #expect(lstat(path, &st) == 0, "the first daemon's stop removed the second daemon's socket")
        let client = try VSMMUClient(socketPath: path)
        #expect(try client.hello(name: "second").version == WireProtocol.supportedVersions.upperBound)
        second.stop()
        #expect(lstat(path, &st) != 0, "the second daemon removes its own socket")
    }
}
