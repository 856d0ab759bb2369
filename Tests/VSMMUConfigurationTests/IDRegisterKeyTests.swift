import Testing
import PSMMU
import SMMUv3
@testable import VSMMUConfiguration

/// A simulated pSMMU's `idr`, `iidr` and `aidr` keys: what `IOMMU_GET_HW_INFO` reports for it.
@Suite struct IDRegisterKeyTests {
    /// A one-pSMMU file whose `[[psmmu]]` ends with `lines`.
    func simulated(_ lines: String) -> String {
        "[[psmmu]]\nname = \"sim\"\nbackend = \"simulated\"\n\(lines)\n"
    }

    func idRegisters(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> IDRegisters? {
        let configuration = try accepted(text, sourceLocation: sourceLocation)
        guard case .simulated(let settings) = configuration.pSMMUs.first?.backend else { return nil }
        return settings.idRegisters
    }

    // MARK: - Accepted

    @Test func idrIidrAndAidrSetTheSimulatedPSMMUsRegisters() throws {
        let registers = try idRegisters(simulated("""
            idr = [0x0d44101b, 0x02730010, 0x0, 0x1414, 0xdeadbeef, 0x74]
            iidr = 0x0481243b
            aidr = 2
            """))
        #expect(registers == IDRegisters(idr: [0x0d44_101b, 0x0273_0010, 0, 0x1414, 0xDEAD_BEEF, 0x74],
                                         iidr: 0x0481_243B, aidr: 2))
    }

    @Test func withoutTheKeysThePSMMUHasTheRigsRegisters() throws {
        #expect(try idRegisters(simulated("devices = 4")) == .simulatedDefault)
        for definition in DaemonConfiguration.embeddedDefault.pSMMUs {
            #expect(definition.backend == .simulated(SimulatedPSMMUSettings(
                firstHostDeviceID: definition.name == "smmu0" ? 0 : 64, idRegisters: .simulatedDefault)))
        }
    }

    @Test func eachKeyLeftOutKeepsTheDefaultsValue() throws {
        var expected = IDRegisters.simulatedDefault
        expected.aidr = 0x3
        #expect(try idRegisters(simulated("aidr = 0x3")) == expected)
        expected = .simulatedDefault
        expected.iidr = 7
        #expect(try idRegisters(simulated("iidr = 7")) == expected)
        expected = .simulatedDefault
        expected.idr = [1, 2, 3, 4, 5, 6]
        #expect(try idRegisters(simulated("idr = [1, 2, 3, 4, 5, 6]")) == expected)
    }

    @Test func everyThirtyTwoBitValueIsAcceptedReservedBitsIncluded() throws {
        let registers = try idRegisters(simulated("""
            idr = [
              0xFFFFFFFF,  # IDR0, reserved bits and all
              0,
              4294967295,
              0b1,
              0o17,
              1_000,
            ]
            iidr = 0xFFFFFFFF
            aidr = 0
            """))
        #expect(registers == IDRegisters(idr: [0xFFFF_FFFF, 0, 0xFFFF_FFFF, 1, 0o17, 1000], iidr: 0xFFFF_FFFF, aidr: 0))
    }

    @Test func theRegistersReachTheSimulatedSMMUItMakes() throws {
        let configuration = try accepted(simulated("idr = [3, 0, 0, 0x400, 0, 0x70]\naidr = 2"))
        guard case .simulated(let settings) = configuration.pSMMUs.first?.backend else {
            Issue.record("not simulated")
            return
        }
        let smmu = settings.makeSMMU(name: "sim")
        #expect(smmu.idRegisters == IDRegisters(idr: [3, 0, 0, 0x400, 0, 0x70], aidr: 2))
        #expect(smmu.idRegisters.ril && smmu.idRegisters.s1p && smmu.idRegisters.s2p)
    }

    @Test func changedRegistersNeedARestartLikeAnyPSMMUChange() throws {
        let running = try accepted("")
        let new = try accepted("""
            [[psmmu]]
            name = "smmu0"
            backend = "simulated"
            aidr = 2
            [[psmmu]]
            name = "smmu1"
            backend = "simulated"
            first_host_device = 64
            """)
        #expect(running.reloadPlan(to: new) == ReloadPlan(needsRestart: ["psmmu"]))
    }

    // MARK: - Refused

    @Test func idrOfOtherThanSixRegistersIsRefused() throws {
        try expectRefusal(simulated("idr = [1, 2, 3, 4, 5]"), line: 4, column: 1, key: "psmmu[0].idr",
                          message: "expected exactly six integers (IDR0, IDR1, IDR2, IDR3, IDR4, IDR5), found 5")
        try expectRefusal(simulated("idr = [1, 2, 3, 4, 5, 6, 7]"), line: 4, key: "psmmu[0].idr",
                          message: "expected exactly six integers (IDR0, IDR1, IDR2, IDR3, IDR4, IDR5), found 7")
        try expectRefusal(simulated("devices = 2\n  idr = []"), line: 5, column: 3, key: "psmmu[0].idr",
                          message: "found 0")
    }

    @Test func idrRegisterOutOfThirtyTwoBitsIsRefusedAtItsElement() throws {
        try expectRefusal(simulated("idr = [1, 2, 0x100000000, 4, 5, 6]"), line: 4, column: 14, key: "psmmu[0].idr[2]",
                          message: "4294967296 is out of range 0...4294967295")
        try expectRefusal(simulated("idr = [\n  1,\n  -1,\n  3, 4, 5, 6]"), line: 6, column: 3, key: "psmmu[0].idr[1]",
                          message: "-1 is out of range 0...4294967295")
    }

    @Test func idrOfTheWrongTypeIsRefused() throws {
        try expectRefusal(simulated("idr = 0x0d44101b"), line: 4, key: "psmmu[0].idr",
                          message: "expected an array of integers, found the integer 222564379")
        try expectRefusal(simulated("idr = \"0x0d44101b\""), line: 4, key: "psmmu[0].idr",
                          message: "expected an array of integers, found the string \"0x0d44101b\"")
        try expectRefusal(simulated("idr = [1, 2, 3, \"4\", 5, 6]"), line: 4, key: "psmmu[0].idr[3]",
                          message: "expected an integer, found the string \"4\"")
        try expectRefusal(simulated("idr = [1, 2, 3, 4.0, 5, 6]"), line: 4, key: "psmmu[0].idr[3]",
                          message: "expected an integer, found the float 4.0")
    }

    @Test func iidrOrAidrOutOfRangeOrOfTheWrongTypeIsRefused() throws {
        try expectRefusal(simulated("iidr = 0x100000000"), line: 4, column: 1, key: "psmmu[0].iidr",
                          message: "4294967296 is out of range 0...4294967295")
        try expectRefusal(simulated("aidr = -1"), line: 4, key: "psmmu[0].aidr",
                          message: "-1 is out of range 0...4294967295")
        try expectRefusal(simulated("aidr = \"3.1\""), line: 4, key: "psmmu[0].aidr",
                          message: "expected an integer, found the string \"3.1\"")
        try expectRefusal(simulated("iidr = [0]"), line: 4, key: "psmmu[0].iidr",
                          message: "expected an integer, found an array")
    }

    @Test func idRegistersOnAnIommufdPSMMUAreRefusedBecauseTheHardwareReportsItsOwn() throws {
        for key in ["idr = [0, 0, 0, 0, 0, 0]", "iidr = 0", "aidr = 1"] {
            try expectRefusal("[[psmmu]]\nname = \"hw\"\nbackend = \"iommufd\"\n\(key)\n", line: 4, column: 1,
                              key: "psmmu[0].\(key.prefix { $0 != " " })",
                              message: "only a simulated pSMMU has \(key.prefix { $0 != " " }); this one has backend = \"iommufd\" (its ID registers are the hardware's, read with IOMMU_GET_HW_INFO)")
        }
    }

    @Test func theIommufdRefusalNamesTheIDRegisterKeyWrittenFirst() throws {
        try expectRefusal("[[psmmu]]\nname = \"hw\"\nbackend = \"iommufd\"\naidr = 1\ndevices = 2\n", line: 4,
                          key: "psmmu[0].aidr", message: "only a simulated pSMMU has aidr")
    }
}
