import PSMMU
import SMMUv3
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// SCM_RIGHTS (PROTOCOL.md §1): an fd travels with ATTACH_VIOMMU; a simulated pSMMU does not need it and
/// closes it.
@Suite struct FileDescriptorPassingTests {
    /// A pipe whose read end is non-blocking: `(read, write)`.
    static func pipePair() throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        try #require(pipe(&fds) == 0)
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        return (fds[0], fds[1])
    }

    /// A server whose only pSMMU, `smmu3`, has the iommufd backend, and a handshaken client.
    static func iommufdServerAndClient(_ label: String = #function) throws -> (VSMMUServer, VSMMUClient) {
        let server = VSMMUServer(configuration: .init(socketPath: uniqueSocketPath(String(label.prefix { $0.isLetter || $0.isNumber }.prefix(20))),
                                                      pSMMUs: [.iommufd(name: "smmu3")]))
        try server.start()
        do {
            let client = try VSMMUClient(socketPath: server.configuration.socketPath)
            try client.hello()
            return (server, client)
        } catch {
            server.stop()
            throw error
        }
    }

    @Test func attachWithAnFdOnASimulatedPSMMUSucceedsAndTheServerClosesTheFd() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try client.createVSMMU()
        let (readEnd, writeEnd) = try Self.pipePair()
        defer { close(readEnd) }
        let attached = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu1", hostDeviceID: 16, iommufd: writeEnd)
        #expect(attached.viommu == 0)
        close(writeEnd)
        // Every copy of the write end is closed (ours and the one the server received): end of file.
        var byte: UInt8 = 0
        #expect(read(readEnd, &byte, 1) == 0)
        try client.setDeviceID(vsmmu: vsmmu, viommu: 0, hostDeviceID: 16, streamID: 0x10)
    }

    @Test func fdAttachedFlagWithoutAnFdIsBadFileDescriptorMissing() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let vsmmu = try client.createVSMMU()
        let frame = try Request.attachViommu(AttachViommu(vsmmu: vsmmu, pSMMU: "smmu0", hostDeviceID: 0, nestParentHWPT: 0,
                                                          fileDescriptorAttached: true)).encode(requestID: 21)
        try client.sendBytes(frame) // the flag, but no SCM_RIGHTS
        let (id, error) = try client.receiveError()
        #expect(id == 21 && error?.code == .badFileDescriptor && error?.detail == FileDescriptorProblem.missing.rawValue)
        #expect(try client.list(.viommus, vsmmu: vsmmu).total == 0)
    }

    @Test func anFdOnATypeThatTakesNoneIsClosedAndRefusedWithDetail2() throws {
        let t = try TestServer()
        defer { t.stop() }
        let client = try t.client()
        let (readEnd, writeEnd) = try Self.pipePair()
        defer { close(readEnd) }
        try client.sendBytes(rawFrame(type: 0x0042, flags: 0x0001, requestID: 8), fileDescriptor: writeEnd)
        close(writeEnd)
        let (id, error) = try client.receiveError()
        #expect(id == 8 && error?.code == .badFileDescriptor && error?.detail == FileDescriptorProblem.unexpected.rawValue)
        var byte: UInt8 = 0
        #expect(read(readEnd, &byte, 1) == 0) // the server closed the fd it was sent
        #expect(try client.health().status == .ok)
    }

    @Test func anIommufdPSMMUWithoutAnFdIsRefusedWithDetail1() throws {
        let (server, client) = try Self.iommufdServerAndClient()
        defer { server.stop() }
        let vsmmu = try client.createVSMMU()
        let e = refusal("iommufd attach without fd") { _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu3", hostDeviceID: 1) }
        #expect(e?.code == .badFileDescriptor && e?.detail == FileDescriptorProblem.missing.rawValue)
        #expect(try client.health().pSMMUs.map(\.backend) == [.iommufd])
    }

    @Test func anFdThatIsNotAnIommufdIsRefusedWithDetail3AndTheIoctlsErrno() throws {
        let (server, client) = try Self.iommufdServerAndClient()
        defer { server.stop() }
        let vsmmu = try client.createVSMMU()
        let devNull = open("/dev/null", O_RDWR)
        try #require(devNull >= 0)
        defer { close(devNull) }
        // The server received the fd and tried IOMMU_VIOMMU_ALLOC on it: /dev/null answers ENOTTY.
        let e = refusal("/dev/null as an iommufd") {
            _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmu3", hostDeviceID: 1, nestParentHWPT: 2, iommufd: devNull)
        }
        #expect(e?.code == .badFileDescriptor && e?.detail == FileDescriptorProblem.unusable.rawValue && e?.value == UInt64(ENOTTY))
        #expect(try client.list(.viommus, vsmmu: vsmmu).total == 0)
    }

    @Test func unclaimedFdsAreHeldUpToFourAndClosedWithTheConnection() throws {
        let t = try TestServer()
        defer { t.stop() }
        var readEnds: [Int32] = []
        defer { for fd in readEnds { close(fd) } }
        func atEndOfFile(_ fd: Int32) -> Bool {
            var byte: UInt8 = 0
            return read(fd, &byte, 1) == 0
        }
        do {
            let client = try t.client()
            // Six HEALTH frames without FD_ATTACHED, each sent with an fd: nothing claims them.
            for i in 0..<6 {
                let (readEnd, writeEnd) = try Self.pipePair()
                readEnds.append(readEnd)
                try client.sendBytes(rawFrame(type: 0x0042, requestID: UInt64(100 + i)), fileDescriptor: writeEnd)
                close(writeEnd)
                let (id, response) = try client.receive()
                #expect(id == UInt64(100 + i))
                if case .error(let e) = response { Issue.record("HEALTH refused: \(e)") }
            }
            // The server holds the first four; the fifth and sixth were closed on arrival.
            #expect(readEnds.map(atEndOfFile) == [false, false, false, false, true, true])
        } // the client closes the connection
        eventually { readEnds.allSatisfy(atEndOfFile) }
        #expect(readEnds.allSatisfy(atEndOfFile))
    }
}
