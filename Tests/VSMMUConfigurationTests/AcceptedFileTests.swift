import Logging
import PSMMU
import SMMUv3
import Testing
import VSMMUConfiguration
import VSMMUProtocol

@Suite struct AcceptedFileTests {
    @Test func emptyFileIsTheEmbeddedDefault() throws {
        #expect(try accepted("") == .embeddedDefault)
        #expect(try accepted("# only a comment\n\n   \n") == .embeddedDefault)
    }

    @Test func embeddedDefaultIsTwoFreeSimulatedPSMMUsOfSixtyFourDevicesEach() {
        let configuration = DaemonConfiguration.embeddedDefault
        #expect(configuration.logLevel == .info)
        #expect(configuration.socket == SocketSettings())
        #expect(configuration.access.isOpen)
        #expect(configuration.limits == ServerLimits())
        #expect(configuration.ringCapacity == 4096)
        #expect(configuration.pSMMUs == [
            PSMMUDefinition(name: "smmu0", backend: .simulated(SimulatedPSMMUSettings(
                firstHostDeviceID: 0, deviceCount: 64, firstStreamID: 0, costModel: .free, eventQueueDepth: 1024))),
            PSMMUDefinition(name: "smmu1", backend: .simulated(SimulatedPSMMUSettings(
                firstHostDeviceID: 64, deviceCount: 64, firstStreamID: 64, costModel: .free, eventQueueDepth: 1024))),
        ])
    }

    @Test func minimalFileWithOneIommufdPSMMUKeepsEveryOtherDefault() throws {
        let configuration = try accepted("""
            [[psmmu]]
            name = "smmu3.0x0000000009050000"
            backend = "iommufd"
            """)
        var expected = DaemonConfiguration.embeddedDefault
        expected.pSMMUs = [PSMMUDefinition(name: "smmu3.0x0000000009050000", backend: .iommufd)]
        #expect(configuration == expected)
    }

    @Test func everySettingIsReadIntoItsField() throws {
        let configuration = try accepted("""
            [daemon]
            log_level = "debug"

            [socket]
            path = "/run/vsmmud/test.sock"
            mode = "660"
            group = "kvm"

            [access]
            allowed_uids = [0, 107, 107]
            allowed_gids = [
                36,   # kvm
                4294967295,
            ]

            [limits]
            max_frame_size = 131072
            max_commands_per_invalidate = 1000
            max_vsmmus_per_connection = 4
            max_context_descriptors = 32

            [queue]
            ring_capacity = 65536

            [[psmmu]]
            name = "fast"
            backend = "simulated"
            first_host_device = 1000
            devices = 8
            first_stream_id = 0x100
            event_queue_depth = 16
            [psmmu.cost]
            call_ns = 1_500
            command_ns = 40
            shared_queue = false
            spin_ns = 0

            [[psmmu]]
            name = "hw"
            backend = "iommufd"
            """)
        #expect(configuration.logLevel == .debug)
        #expect(configuration.socket == SocketSettings(path: "/run/vsmmud/test.sock", mode: 0o660, group: "kvm"))
        #expect(configuration.access == AccessList(userIDs: [0, 107], groupIDs: [36, 4_294_967_295]))
        #expect(configuration.limits == ServerLimits(maximumFrameSize: 131_072, maximumCommandsPerInvalidate: 1000,
                                                     maximumVSMMUs: 4, maximumContextDescriptors: 32))
        #expect(configuration.ringCapacity == 65536)
        #expect(configuration.pSMMUs == [
            PSMMUDefinition(name: "fast", backend: .simulated(SimulatedPSMMUSettings(
                firstHostDeviceID: 1000, deviceCount: 8, firstStreamID: 0x100,
                costModel: CostModel(nanosecondsPerCall: 1500, nanosecondsPerCommand: 40, sharesCommandQueue: false,
                                     spinNanoseconds: 0),
                eventQueueDepth: 16))),
            PSMMUDefinition(name: "hw", backend: .iommufd),
        ])
    }

    @Test func dottedKeysAndInlineTablesMeanTheSameAsSections() throws {
        let configuration = try accepted("""
            daemon.log_level = "warning"
            queue = { ring_capacity = 128 }
            psmmu = [
                { name = "a", backend = "simulated", devices = 2, cost = { call_ns = 7 } },
                { name = "b", backend = "simulated", first_host_device = 2, devices = 2 },
            ]
            """)
        #expect(configuration.logLevel == .warning)
        #expect(configuration.ringCapacity == 128)
        #expect(configuration.pSMMUs == [
            PSMMUDefinition(name: "a", backend: .simulated(SimulatedPSMMUSettings(
                deviceCount: 2, costModel: CostModel(nanosecondsPerCall: 7)))),
            PSMMUDefinition(name: "b", backend: .simulated(SimulatedPSMMUSettings(firstHostDeviceID: 2, deviceCount: 2))),
        ])
    }

    @Test func smallerFrameSizeLowersTheDerivedCommandAndDescriptorLimits() throws {
        let configuration = try accepted("""
            [limits]
            max_frame_size = 65536
            """)
        #expect(configuration.limits.maximumFrameSize == 65536)
        #expect(configuration.limits.maximumCommandsPerInvalidate == (65536 - 32) / 16)
        #expect(configuration.limits.maximumContextDescriptors == (65536 - 96) / 64)
        #expect(configuration.limits.maximumVSMMUs == ServerLimits().maximumVSMMUs)
        #expect(configuration.limits.maximumViommus == 64)
    }

    @Test func limitsAtTheirBoundsAreAccepted() throws {
        let configuration = try accepted("""
            [limits]
            max_frame_size = 65536
            max_commands_per_invalidate = 4094
            max_vsmmus_per_connection = 1024
            max_context_descriptors = 1022
            [queue]
            ring_capacity = 1048576
            """)
        #expect(configuration.limits == ServerLimits(maximumFrameSize: 65536, maximumCommandsPerInvalidate: 4094,
                                                     maximumVSMMUs: 1024, maximumContextDescriptors: 1022))
        #expect(configuration.ringCapacity == 1_048_576)
    }

    @Test func firstStreamIDDefaultsToFirstHostDevice() throws {
        let configuration = try accepted("""
            [[psmmu]]
            name = "s"
            backend = "simulated"
            first_host_device = 500
            """)
        #expect(configuration.pSMMUs.first?.backend == .simulated(SimulatedPSMMUSettings(
            firstHostDeviceID: 500, deviceCount: 64, firstStreamID: 500)))
    }

    @Test func requestPollingDefaultsTo30MicrosecondsAndTakesItsWholeRange() throws {
        #expect(try accepted("").requestPollMicroseconds == 30)
        #expect(try accepted("[daemon]\nrequest_poll_us = 0").requestPollMicroseconds == 0)
        #expect(try accepted("[daemon]\nrequest_poll_us = 1000").requestPollMicroseconds == 1000)
    }

    @Test func everyLogLevelNameIsAccepted() throws {
        for level in Logger.Level.allCases {
            #expect(try accepted("[daemon]\nlog_level = \"\(level.rawValue)\"").logLevel == level)
        }
    }

    @Test func nameOfSixtyFourBytesFitsTheProtocolsNameField() throws {
        let name = String(repeating: "é", count: 32) // 64 UTF-8 bytes
        let configuration = try accepted("[[psmmu]]\nname = \"\(name)\"\nbackend = \"iommufd\"")
        #expect(configuration.pSMMUs.map(\.name) == [name])
    }

    @Test func simulatedSettingsMakeThePSMMUTheyDescribe() {
        let settings = SimulatedPSMMUSettings(firstHostDeviceID: 64, deviceCount: 4, firstStreamID: 0x200,
                                              costModel: CostModel(nanosecondsPerCall: 5), eventQueueDepth: 8)
        let smmu = settings.makeSMMU(name: "smmu9")
        #expect(smmu.name == "smmu9")
        #expect(smmu.devices == [64: 0x200, 65: 0x201, 66: 0x202, 67: 0x203])
        #expect(smmu.costModel == CostModel(nanosecondsPerCall: 5))
        #expect(settings.hostDeviceIDs == 64...67)
        #expect(settings.streamIDs == 0x200...0x203)
    }

    @Test func loadReadsTheFileAtPath() throws {
        let configuration = try withTemporaryFile(Array("[daemon]\nlog_level = \"error\"\n".utf8)) { path in
            try DaemonConfiguration.load(path: path)
        }
        #expect(configuration.logLevel == .error)
    }
}
