import Logging
import PSMMU
import SMMUv3
import Testing
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// What protocol version 2 adds (PROTOCOL.md §3.1): GET_HW_INFO (§5.12) and the device's VFIO cdev on
/// SET_DEV_ID (§5.6), and how a connection that negotiated version 1 keeps answering as version 1 did.
/// Against the in-process server, through the socket.
@Suite struct ProtocolVersion2Tests {
    /// The ID registers of `smmuA`: QEMU's emulated SMMUv3 with stage=nested, which has no ATS.
    static let registersA = IDRegisters.qemuEmulatedSMMUv3
    /// The ID registers of `smmuB`, another implementation: wider StreamIDs (20 bits), substreams (5 bits),
    /// 48-bit OAS, BTM and ATS, but no VMID16, no 16K granule, no RIL; stall and terminate; SMMUv3.2; an
    /// Arm IIDR.
    static let registersB = IDRegisters(
        idr: [0x0C40_143B,  // smmuA's IDR0 + BTM (bit 5) + ATS (bit 10) − VMID16 (bit 18), STALL_MODEL 0 (bits 25:24)
              0x0273_0154,  // SIDSIZE 20 (bits 5:0), SSIDSIZE 5 (bits 10:6), queues as smmuA's
              0,
              0x0000_1014,  // smmuA's IDR3 − RIL (bit 10)
              0,
              0x0000_0055], // OAS 5 = 48 bits (bits 2:0), GRAN4K and GRAN64K, no GRAN16K (bit 5)
        iidr: 0x0000_043B, aidr: 0x2)

    /// A server whose pSMMUs `smmuA` (host devices 0-15) and `smmuB` (16-31) have the ID registers above.
    static func server(_ label: String = #function) throws -> VSMMUServer {
        var logger = Logger(label: "vsmmud-test")
        logger.logLevel = .critical
        let pSMMUs: [PSMMUProvider] = [
            .simulated(SimulatedSMMU(name: "smmuA", deviceCount: 16, firstHostDeviceID: 0, firstStreamID: 0,
                                     idRegisters: registersA)),
            .simulated(SimulatedSMMU(name: "smmuB", deviceCount: 16, firstHostDeviceID: 16, firstStreamID: 16,
                                     idRegisters: registersB)),
        ]
        let name = String(label.prefix { $0.isLetter || $0.isNumber }.prefix(20))
        let server = VSMMUServer(configuration: .init(socketPath: uniqueSocketPath(name), pSMMUs: pSMMUs), logger: logger)
        try server.start()
        return server
    }

    /// A client of `server`, handshaken with `versions`.
    static func client(of server: VSMMUServer, versions: ClosedRange<UInt16> = WireProtocol.supportedVersions) throws -> VSMMUClient {
        let client = try VSMMUClient(socketPath: server.configuration.socketPath)
        try client.hello(name: "v2-test", versions: versions)
        return client
    }

    /// Whether every copy of a pipe's write end is closed: a read on its (non-blocking) read end sees EOF
    /// (0) rather than EAGAIN.
    static func writersAreClosed(_ readEnd: Int32) -> Bool {
        var byte: UInt8 = 0
        return read(readEnd, &byte, 1) == 0
    }

    // MARK: Negotiation

    @Test func aVersion2ClientGetsVersion2AndAVersion1ClientStillGetsVersion1() throws {
        let server = try Self.server()
        defer { server.stop() }
        #expect(try Self.client(of: server).serverHello?.version == 5)
        #expect(try Self.client(of: server, versions: 1...1).serverHello?.version == 1)
        #expect(try Self.client(of: server, versions: 1...2).serverHello?.version == 2)
        #expect(try Self.client(of: server, versions: 1...3).serverHello?.version == 3)
        #expect(try Self.client(of: server, versions: 2...7).serverHello?.version == 5)
        #expect(try Self.client(of: server, versions: 1...4).serverHello?.version == 4)
    }

    // MARK: GET_HW_INFO

    @Test func getHWInfoAnswersASingleViommusPSMMURegistersAsAdvertisedWithItsCount() throws {
        let server = try Self.server()
        defer { server.stop() }
        let client = try Self.client(of: server)
        let vsmmu = try client.createVSMMU(name: "hw")
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmuB", hostDeviceID: 16)
        #expect(try client.hardwareInfo(vsmmu: vsmmu) == HardwareInfo(viommuCount: 1, registers: try #require(IDRegisters.advertised([Self.registersB]))))

        // Another vSMMU on the other pSMMU gets that pSMMU's registers: each answer is its own vSMMU's.
        let other = try client.createVSMMU(name: "hw-a")
        _ = try client.attachViommu(vsmmu: other, pSMMU: "smmuA", hostDeviceID: 0)
        #expect(try client.hardwareInfo(vsmmu: other) == HardwareInfo(viommuCount: 1, registers: try #require(IDRegisters.advertised([Self.registersA]))))
        #expect(try client.hardwareInfo(vsmmu: vsmmu).registers == IDRegisters.advertised([Self.registersB]))
    }

    @Test func getHWInfoCountsEveryAttachedViommuAndFollowsDetach() throws {
        let server = try Self.server()
        defer { server.stop() }
        let client = try Self.client(of: server)
        let vsmmu = try client.createVSMMU(name: "hw2")
        let a = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmuA", hostDeviceID: 0)
        let b = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmuB", hostDeviceID: 16)
        #expect(try client.hardwareInfo(vsmmu: vsmmu).viommuCount == 2)
        // Detaching a viommu changes the answer (§5.12): back to the one left, exactly.
        try client.detachViommu(vsmmu: vsmmu, viommu: a.viommu)
        #expect(try client.hardwareInfo(vsmmu: vsmmu) == HardwareInfo(viommuCount: 1, registers: try #require(IDRegisters.advertised([Self.registersB]))))
        try client.detachViommu(vsmmu: vsmmu, viommu: b.viommu)
        let e = refusal("GET_HW_INFO after the last detach") { _ = try client.hardwareInfo(vsmmu: vsmmu) }
        #expect(e?.code == .unknownViommu && e?.value == 0xFFFF_FFFF)
    }

    /// The intersection of §5.12 over smmuA and smmuB, in either attach order: features only where both
    /// have them (VMID16, GRAN16K and RIL are smmuA's only, BTM and ATS smmuB's only: all off), the
    /// smallest sizes (smmuA's SIDSIZE 16, SSIDSIZE 0, OAS 44 bits), "terminate only" as the stall models
    /// differ, IIDR 0 as the implementations differ, the lowest AIDR (SMMUv3.1).
    @Test
    func getHWInfoOverTwoPSMMUsWithDifferentRegistersIsTheirIntersection() throws {
        let server = try Self.server()
        defer { server.stop() }
        let client = try Self.client(of: server)
        // As advertised to the guest: only the forwarded fields, S1P and COHACC set (S2P cleared).
        let expected = IDRegisters(idr: [0x0D40_101A,  // smmuA's IDR0 − S2P − VMID16; STALL_MODEL 1 (terminate only)
                                         0x0000_0010,  // SIDSIZE 16, SSIDSIZE 0; queue sizes not forwarded
                                         0,
                                         0x0000_1000,  // BBML 2; RIL off (smmuB lacks it), HAD and XNX not forwarded
                                         0,
                                         0x0000_0054], // OAS 44 bits, − GRAN16K
                                   iidr: 0, aidr: 0x1)
        for order in [["smmuA", "smmuB"], ["smmuB", "smmuA"]] {
            let vsmmu = try client.createVSMMU(name: order.joined(separator: "+"))
            for pSMMU in order { _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: pSMMU, hostDeviceID: pSMMU == "smmuA" ? 0 : 16) }
            #expect(try client.hardwareInfo(vsmmu: vsmmu) == HardwareInfo(viommuCount: 2, registers: expected), "\(order)")
        }
    }

    @Test func getHWInfoWithoutAViommuIsUnknownViommuWithValueAllOnes() throws {
        let server = try Self.server()
        defer { server.stop() }
        let client = try Self.client(of: server)
        let vsmmu = try client.createVSMMU(name: "empty")
        let e = refusal("GET_HW_INFO before ATTACH_VIOMMU") { _ = try client.hardwareInfo(vsmmu: vsmmu) }
        #expect(e?.code == .unknownViommu && e?.value == UInt64(WireProtocol.noErrorIndex) && e?.requestType == .getHWInfo)
        // Nothing changed: the vSMMU is there and takes its first viommu.
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmuA", hostDeviceID: 0)
        #expect(try client.hardwareInfo(vsmmu: vsmmu).viommuCount == 1)
    }

    @Test func getHWInfoNamesAVSMMUOfThisConnectionOnly() throws {
        let server = try Self.server()
        defer { server.stop() }
        let owner = try Self.client(of: server)
        let vsmmu = try owner.createVSMMU(name: "mine")
        _ = try owner.attachViommu(vsmmu: vsmmu, pSMMU: "smmuA", hostDeviceID: 0)
        let intruder = try Self.client(of: server)
        let notOwner = refusal("another connection's vSMMU") { _ = try intruder.hardwareInfo(vsmmu: vsmmu) }
        #expect(notOwner?.code == .unknownVSMMU && notOwner?.value == UInt64(vsmmu.rawValue))
        let unknown = refusal("no such vSMMU") { _ = try intruder.hardwareInfo(vsmmu: VSMMUID(999)) }
        #expect(unknown?.code == .unknownVSMMU && unknown?.value == 999)
    }

    @Test func getHWInfoOnAConnectionThatNegotiatedVersion1IsUnknownMessageType() throws {
        let server = try Self.server()
        defer { server.stop() }
        let client = try Self.client(of: server, versions: 1...1)
        let vsmmu = try client.createVSMMU(name: "v1")
        _ = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmuA", hostDeviceID: 0)
        // As a version-1 server answers a type it does not know (§2.2 step 2): the frame is skipped.
        let e = refusal("GET_HW_INFO on version 1") { _ = try client.hardwareInfo(vsmmu: vsmmu) }
        #expect(e?.code == .unknownMessageType && e?.value == 0x0019 && e?.requestType == .getHWInfo)
        #expect(e?.closesConnection == false)
        #expect(try client.list(.viommus, vsmmu: vsmmu).total == 1)
        // The same request on a version-2 connection is answered, so it was the version that refused it.
        let v2 = try Self.client(of: server)
        let own = try v2.createVSMMU(name: "v2")
        _ = try v2.attachViommu(vsmmu: own, pSMMU: "smmuA", hostDeviceID: 1)
        #expect(try v2.hardwareInfo(vsmmu: own).viommuCount == 1)
    }

    // MARK: SET_DEV_ID and the VFIO cdev

    @Test func setDevIDWithAnFdOnAVersion1ConnectionIsBadFileDescriptorDetail2AndTheFdIsClosed() throws {
        let server = try Self.server()
        defer { server.stop() }
        let client = try Self.client(of: server, versions: 1...1)
        let vsmmu = try client.createVSMMU(name: "v1fd")
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmuA", hostDeviceID: 0).viommu
        let (readEnd, writeEnd) = try FileDescriptorPassingTests.pipePair()
        defer { close(readEnd) }
        let e = refusal("SET_DEV_ID with an fd on version 1") {
            try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: 0, streamID: 0x8, vfioDevice: writeEnd)
        }
        close(writeEnd)
        #expect(e?.code == .badFileDescriptor && e?.detail == FileDescriptorProblem.unexpected.rawValue && e?.value == 0)
        // The daemon closed the copy it received: no writer is left.
        #expect(Self.writersAreClosed(readEnd))
        // A refused request has no effect: nothing is registered, and the version-1 way works.
        #expect(try client.list(.devices, vsmmu: vsmmu).total == 0)
        try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: 0, streamID: 0x8)
        #expect(try client.list(.devices, vsmmu: vsmmu).total == 1)
    }

    @Test func setDevIDWithAnFdOnASimulatedPSMMUIsAcceptedAndTheDaemonClosesTheFd() throws {
        let server = try Self.server()
        defer { server.stop() }
        let client = try Self.client(of: server)
        let vsmmu = try client.createVSMMU(name: "simfd")
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmuB", hostDeviceID: 16).viommu
        let (readEnd, writeEnd) = try FileDescriptorPassingTests.pipePair()
        defer { close(readEnd) }
        try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: 17, streamID: 0x20, vfioDevice: writeEnd)
        // While we hold our copy the pipe has a writer; once we close it, none is left: the simulated
        // pSMMU does not need the cdev and closed the daemon's copy (§5.6).
        #expect(!Self.writersAreClosed(readEnd))
        close(writeEnd)
        #expect(Self.writersAreClosed(readEnd))
        guard case .devices(let devices) = try client.list(.devices, vsmmu: vsmmu).entries else {
            Issue.record("LIST DEVICES answered another kind")
            return
        }
        #expect(devices.map(\.streamID) == [0x20] && devices.map(\.hostDeviceID) == [17])
    }

    @Test func setDevIDWithFDAttachedButNoFdIsBadFileDescriptorDetail1() throws {
        let server = try Self.server()
        defer { server.stop() }
        let client = try Self.client(of: server)
        let vsmmu = try client.createVSMMU(name: "nofd")
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmuA", hostDeviceID: 0).viommu
        let frame = try Request.setDeviceID(DeviceRegistration(vsmmu: vsmmu, viommu: viommu, hostDeviceID: 0, streamID: 0x8,
                                                               fileDescriptorAttached: true)).encode(requestID: 31)
        try client.sendBytes(frame) // the flag, but no SCM_RIGHTS
        let (id, error) = try client.receiveError()
        #expect(id == 31 && error?.code == .badFileDescriptor && error?.detail == FileDescriptorProblem.missing.rawValue)
        #expect(try client.list(.devices, vsmmu: vsmmu).total == 0)
    }

    @Test func unsetDevIDWithAnFdIsRefusedWithDetail2AndTheFdClosed() throws {
        let server = try Self.server()
        defer { server.stop() }
        let client = try Self.client(of: server)
        let vsmmu = try client.createVSMMU(name: "unsetfd")
        let viommu = try client.attachViommu(vsmmu: vsmmu, pSMMU: "smmuA", hostDeviceID: 0).viommu
        try client.setDeviceID(vsmmu: vsmmu, viommu: viommu, hostDeviceID: 0, streamID: 0x8)
        let (readEnd, writeEnd) = try FileDescriptorPassingTests.pipePair()
        defer { close(readEnd) }
        var frame = try Request.unsetDeviceID(DeviceRegistration(vsmmu: vsmmu, viommu: viommu, hostDeviceID: 0, streamID: 0x8))
            .encode(requestID: 32)
        frame[6] |= 1 // FD_ATTACHED: only ATTACH_VIOMMU and SET_DEV_ID take one
        try client.sendBytes(frame, fileDescriptor: writeEnd)
        close(writeEnd)
        let (id, error) = try client.receiveError()
        #expect(id == 32 && error?.code == .badFileDescriptor && error?.detail == FileDescriptorProblem.unexpected.rawValue)
        #expect(Self.writersAreClosed(readEnd))
        #expect(try client.list(.devices, vsmmu: vsmmu).total == 1)
    }
}
