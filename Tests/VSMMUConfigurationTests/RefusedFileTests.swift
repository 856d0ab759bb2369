import Foundation
import Testing
import VSMMUConfiguration

/// Each way a file is refused, with the file, line, key and message the operator reads.
@Suite struct RefusedFileTests {
    // MARK: - Syntax

    @Test func syntaxErrorIsReportedAtTOMLKitsLineAndColumnWithoutKey() throws {
        let error = try refusal("""
            [daemon]
            log_level = "info"

            [limits
            max_frame_size = 65536
            """)
        #expect(error.line == 4)
        #expect(error.column != nil)
        #expect(error.key == nil)
        #expect(error.column == 8)
        #expect(error.description == #"test.toml:4:8: TOML syntax error: Error while parsing table header: expected ']', saw '\n'"#)
    }

    @Test func unterminatedStringIsASyntaxErrorOnItsLine() throws {
        let error = try refusal("# comment\n[daemon]\nlog_level = \"info\n")
        #expect(error.line == 3)
        #expect(error.key == nil)
        #expect(error.message.hasPrefix("TOML syntax error: "))
    }

    @Test func keyDefinedTwiceIsASyntaxError() throws {
        let error = try refusal("[queue]\nring_capacity = 64\nring_capacity = 128\n")
        #expect(error.line == 3)
        #expect(error.message.hasPrefix("TOML syntax error: "))
    }

    @Test func nulByteIsRefusedRatherThanEndingTheDocumentSilently() throws {
        try expectRefusal("[daemon]\nlog_level = \"info\"\u{0}\n[bogus]\n", line: 2, column: 19, key: nil,
                          message: "NUL byte")
    }

    // MARK: - Unknown keys

    @Test func unknownSectionIsRefusedWithTheClosestKnownOne() throws {
        try expectRefusal("[demon]\nlog_level = \"info\"\n", line: 1, column: 1, key: "demon",
                          message: "unknown key (did you mean \"daemon\"?)")
    }

    @Test func unknownKeyInASectionIsRefusedAtItsLine() throws {
        try expectRefusal("""
            [daemon]
            log_level = "info"

            [limits]
            max_frame_size = 65536
              max_command_per_invalidate = 100
            """, line: 6, column: 3, key: "limits.max_command_per_invalidate",
            message: "did you mean \"max_commands_per_invalidate\"?")
    }

    @Test func unknownKeyFarFromAnyKnownOneListsWhatTheSectionMayHold() throws {
        try expectRefusal("[queue]\ncolour = \"blue\"\n", line: 2, key: "queue.colour",
                          message: "[queue] may hold: ring_capacity")
    }

    @Test func firstUnknownKeyInTheTextIsReportedWhenThereAreSeveral() throws {
        // toml++ orders keys alphabetically; the error follows the text.
        try expectRefusal("[socket]\nzzz = 1\naaa = 2\n", line: 2, key: "socket.zzz", message: "unknown key")
    }

    @Test func unknownKeyInTheSecondPSMMUIsReportedInThatSection() throws {
        try expectRefusal("""
            [[psmmu]]
            name = "a"
            backend = "simulated"
            devices = 8

            [[psmmu]]
            name = "b"
            backend = "simulated"
            first_host_device = 8
            device = 8
            """, line: 10, key: "psmmu[1].device", message: "did you mean \"devices\"?")
    }

    @Test func unknownKeyInTheSecondPSMMUsCostTableIsReportedThere() throws {
        try expectRefusal("""
            [[psmmu]]
            name = "a"
            backend = "simulated"
            devices = 8
            [psmmu.cost]
            call_ns = 10

            [[psmmu]]
            name = "b"
            backend = "simulated"
            first_host_device = 8
            [psmmu.cost]
            call_ns = 10
            comand_ns = 3
            """, line: 14, key: "psmmu[1].cost.comand_ns", message: "did you mean \"command_ns\"?")
    }

    @Test func costKeyWrittenInThePSMMUTableSaysWhereItBelongs() throws {
        try expectRefusal("[[psmmu]]\nname = \"a\"\nbackend = \"simulated\"\ncall_ns = 5\n", line: 4,
                          key: "psmmu[0].call_ns", message: "call_ns belongs in [psmmu[0].cost]")
    }

    @Test func pSMMUKeyWrittenAtTopLevelSaysWhereItBelongs() throws {
        try expectRefusal("devices = 8\n", line: 1, key: "devices", message: "devices belongs in a [[psmmu]] section")
    }

    // MARK: - Wrong types

    @Test func stringWhereAnIntegerIsExpectedNamesBothTypes() throws {
        try expectRefusal("""
            [[psmmu]]
            name = "smmu0"
            backend = "simulated"
            devices = "64"
            """, line: 4, column: 1, key: "psmmu[0].devices", message: "expected an integer, found the string \"64\"")
    }

    @Test func integerLogLevelIsATypeErrorNotAnUnknownLevel() throws {
        try expectRefusal("[daemon]\nlog_level = 3\n", line: 2, key: "daemon.log_level",
                          message: "expected a log level string (trace, debug, info, notice, warning, error, critical), found the integer 3")
    }

    @Test func floatWhereAnIntegerIsExpectedIsRefused() throws {
        try expectRefusal("[queue]\nring_capacity = 4096.0\n", line: 2, key: "queue.ring_capacity",
                          message: "expected an integer, found the float 4096.0")
    }

    @Test func integerWhereABooleanIsExpectedIsRefused() throws {
        try expectRefusal("[[psmmu]]\nname = \"a\"\nbackend = \"simulated\"\n[psmmu.cost]\nshared_queue = 1\n",
                          line: 5, key: "psmmu[0].cost.shared_queue", message: "expected a boolean (true or false), found the integer 1")
    }

    @Test func wrongElementOfAMultiLineArrayIsReportedAtItsOwnLine() throws {
        try expectRefusal("""
            [access]
            allowed_uids = [
                0,
                "qemu",
            ]
            """, line: 4, column: 5, key: "access.allowed_uids[1]", message: "expected an integer, found the string \"qemu\"")
    }

    @Test func scalarWhereAnArrayIsExpectedIsRefused() throws {
        try expectRefusal("[access]\nallowed_gids = 36\n", line: 2, key: "access.allowed_gids",
                          message: "expected an array of integers, found the integer 36")
    }

    @Test func sectionGivenAsAValueIsRefused() throws {
        try expectRefusal("limits = 65536\n", line: 1, key: "limits", message: "expected a table ([limits]), found the integer 65536")
    }

    @Test func psmmuWrittenAsASingleTableInsteadOfAnArrayOfTablesIsRefused() throws {
        try expectRefusal("[psmmu]\nname = \"a\"\nbackend = \"iommufd\"\n", line: 1, key: "psmmu",
                          message: "expected an array of tables ([[psmmu]] sections), found a table")
    }

    @Test func psmmuArrayElementThatIsNotATableIsRefused() throws {
        try expectRefusal("psmmu = [\"smmu0\"]\n", line: 1, column: 10, key: "psmmu[0]", message: "expected a table, found the string \"smmu0\"")
    }

    // MARK: - Out of range

    @Test func requestPollingOutOfRangeOrNotAnIntegerIsRefused() throws {
        try expectRefusal("[daemon]\nrequest_poll_us = 1001\n", line: 2, key: "daemon.request_poll_us",
                          message: "1001 is out of range 0...1000")
        try expectRefusal("[daemon]\nrequest_poll_us = -1\n", line: 2, key: "daemon.request_poll_us",
                          message: "-1 is out of range 0...1000")
        try expectRefusal("[daemon]\nrequest_poll_us = \"30\"\n", line: 2, key: "daemon.request_poll_us",
                          message: "expected an integer, found the string \"30\"")
    }

    @Test func frameSizeBelowTheProtocolsMinimumIsRefused() throws {
        try expectRefusal("[limits]\nmax_frame_size = 4096\n", line: 2, key: "limits.max_frame_size",
                          message: "4096 is out of range 65536...1048576")
    }

    @Test func frameSizeAboveTheProtocolsMaximumIsRefused() throws {
        try expectRefusal("[limits]\nmax_frame_size = 1048577\n", line: 2, key: "limits.max_frame_size",
                          message: "1048577 is out of range 65536...1048576")
    }

    @Test func commandLimitOneAboveWhatTheDefaultFrameHoldsIsRefused() throws {
        try expectRefusal("[limits]\nmax_commands_per_invalidate = 65535\n", line: 2, key: "limits.max_commands_per_invalidate",
                          message: "65535 commands do not fit in a frame of 1048576 bytes (the default max_frame_size 1048576): at most 65534")
    }

    @Test func commandLimitIsCheckedAgainstTheConfiguredFrameSize() throws {
        try expectRefusal("[limits]\nmax_commands_per_invalidate = 4095\nmax_frame_size = 65536\n", line: 2,
                          key: "limits.max_commands_per_invalidate",
                          message: "4095 commands do not fit in a frame of 65536 bytes (max_frame_size = 65536): at most 4094")
    }

    @Test func zeroCommandLimitIsRefused() throws {
        try expectRefusal("[limits]\nmax_commands_per_invalidate = 0\n", line: 2, key: "limits.max_commands_per_invalidate",
                          message: "0 is out of range 1...")
    }

    @Test func descriptorLimitAboveWhatALinkSTEFrameHoldsIsRefused() throws {
        try expectRefusal("[limits]\nmax_frame_size = 65536\nmax_context_descriptors = 1023\n", line: 3,
                          key: "limits.max_context_descriptors", message: "at most 1022")
    }

    @Test func vsmmuLimitOutOfRangeIsRefused() throws {
        try expectRefusal("[limits]\nmax_vsmmus_per_connection = 0\n", line: 2, key: "limits.max_vsmmus_per_connection",
                          message: "0 is out of range 1...1024")
        try expectRefusal("[limits]\nmax_vsmmus_per_connection = 1025\n", line: 2, key: "limits.max_vsmmus_per_connection",
                          message: "1025 is out of range 1...1024")
    }

    @Test func negativeAndTooLargeIDsAreRefusedAtTheirElement() throws {
        try expectRefusal("[access]\nallowed_uids = [0, -1]\n", line: 2, column: 20, key: "access.allowed_uids[1]",
                          message: "-1 is out of range 0...4294967295")
        try expectRefusal("[access]\nallowed_gids = [4294967296]\n", line: 2, key: "access.allowed_gids[0]",
                          message: "4294967296 is out of range 0...4294967295")
    }

    @Test func ringCapacityOutOfRangeIsRefused() throws {
        try expectRefusal("[queue]\nring_capacity = 32\n", line: 2, key: "queue.ring_capacity", message: "32 is out of range 64...1048576")
        try expectRefusal("[queue]\nring_capacity = 2097152\n", line: 2, key: "queue.ring_capacity", message: "out of range")
    }

    @Test func ringCapacityThatIsNotAPowerOfTwoIsRefused() throws {
        try expectRefusal("[queue]\nring_capacity = 3000\n", line: 2, key: "queue.ring_capacity",
                          message: "3000 is not a power of two")
    }

    @Test func simulatedPSMMUValuesOutOfRangeAreRefused() throws {
        let head = "[[psmmu]]\nname = \"a\"\nbackend = \"simulated\"\n"
        try expectRefusal(head + "devices = 0\n", line: 4, key: "psmmu[0].devices", message: "0 is out of range 1...65536")
        try expectRefusal(head + "devices = 65537\n", line: 4, key: "psmmu[0].devices", message: "out of range")
        try expectRefusal(head + "event_queue_depth = 0\n", line: 4, key: "psmmu[0].event_queue_depth", message: "out of range")
        try expectRefusal(head + "first_host_device = -1\n", line: 4, key: "psmmu[0].first_host_device", message: "out of range")
        try expectRefusal(head + "first_stream_id = 4294967296\n", line: 4, key: "psmmu[0].first_stream_id", message: "out of range")
        try expectRefusal(head + "[psmmu.cost]\ncall_ns = 1000000001\n", line: 5, key: "psmmu[0].cost.call_ns",
                          message: "out of range 0...1000000000")
        try expectRefusal(head + "[psmmu.cost]\nspin_ns = -5\n", line: 5, key: "psmmu[0].cost.spin_ns", message: "out of range")
    }

    @Test func deviceRangeRunningPastTheLastHostDeviceIDIsRefused() throws {
        try expectRefusal("[[psmmu]]\nname = \"a\"\nbackend = \"simulated\"\nfirst_host_device = 4294967290\ndevices = 8\n",
                          line: 4, key: "psmmu[0].first_host_device", message: "run past 4294967295")
        try expectRefusal("[[psmmu]]\nname = \"a\"\nbackend = \"simulated\"\nfirst_stream_id = 4294967290\n",
                          line: 4, key: "psmmu[0].first_stream_id", message: "StreamIDs 4294967290...4294967353")
    }

    @Test func overlappingHostDevicesOfTwoSimulatedPSMMUsAreRefused() throws {
        try expectRefusal("""
            [[psmmu]]
            name = "a"
            backend = "simulated"

            [[psmmu]]
            name = "b"
            backend = "simulated"
            first_host_device = 32
            """, line: 8, key: "psmmu[1].first_host_device",
            message: "host devices 32...95 overlap those of psmmu[0] \"a\" (0...63)")
    }

    // MARK: - Log level, socket

    @Test func unknownLogLevelIsRefusedWithTheKnownOnes() throws {
        try expectRefusal("[daemon]\nlog_level = \"verbose\"\n", line: 2, column: 1, key: "daemon.log_level",
                          message: "unknown log level \"verbose\" (expected trace, debug, info, notice, warning, error, critical)")
    }

    @Test func socketModeThatIsNotOctalOrAboveOctal777IsRefused() throws {
        for mode in ["0888", "rw-rw----", "0x1b0", "", "01777", "7777", "-660", "+660", "00660"] {
            try expectRefusal("[socket]\nmode = \"\(mode)\"\n", line: 2, key: "socket.mode",
                              message: "\"\(mode)\" is not an octal mode between \"0000\" and \"0777\"")
        }
    }

    @Test func socketModeGivenAsAnIntegerIsRefusedWithTheStringForm() throws {
        try expectRefusal("[socket]\nmode = 0o660\n", line: 2, key: "socket.mode",
                          message: "expected an octal string such as \"0660\", found the integer 432")
    }

    @Test func relativeOrOverlongSocketPathIsRefused() throws {
        try expectRefusal("[socket]\npath = \"vsmmud.sock\"\n", line: 2, key: "socket.path", message: "not an absolute path")
        let long = "/" + String(repeating: "d", count: 107)
        try expectRefusal("[socket]\npath = \"\(long)\"\n", line: 2, key: "socket.path",
                          message: "the path is 108 bytes long; a Unix socket path holds at most 107")
    }

    @Test func socketGroupThatCannotBeAGroupNameIsRefused() throws {
        try expectRefusal("[socket]\ngroup = \"\"\n", line: 2, key: "socket.group", message: "is not a group name")
        try expectRefusal("[socket]\ngroup = \"kvm users\"\n", line: 2, key: "socket.group", message: "is not a group name")
    }

    // MARK: - pSMMUs

    @Test func unknownBackendIsRefusedAtTheRightPSMMU() throws {
        try expectRefusal("""
            [[psmmu]]
            name = "smmu0"
            backend = "simulated"

            [[psmmu]]
            name = "smmu1"
            backend = "iommu"
            """, line: 7, column: 1, key: "psmmu[1].backend",
            message: "unknown backend \"iommu\" (expected \"simulated\" or \"iommufd\")")
    }

    @Test func duplicatePSMMUNameIsRefusedAtTheSecondDefinitionNamingTheFirst() throws {
        try expectRefusal("""
            [[psmmu]]
            name = "smmu0"
            backend = "iommufd"

            [[psmmu]]
            name = "smmu1"
            backend = "iommufd"

            [[psmmu]]
            backend = "iommufd"
            name = "smmu0"
            """, line: 11, key: "psmmu[2].name",
            message: "duplicate pSMMU name \"smmu0\": psmmu[0] (line 2) has it too")
    }

    @Test func missingNameOrBackendIsReportedAtThePSMMUsHeader() throws {
        try expectRefusal("[[psmmu]]\nname = \"a\"\nbackend = \"iommufd\"\n\n[[psmmu]]\nbackend = \"iommufd\"\n",
                          line: 5, column: 1, key: "psmmu[1].name", message: "missing: every [[psmmu]] needs a name")
        try expectRefusal("[[psmmu]]\nname = \"a\"\n", line: 1, key: "psmmu[0].backend",
                          message: "missing: set backend = \"simulated\" or \"iommufd\"")
    }

    @Test func emptyOrOverlongPSMMUNameIsRefused() throws {
        try expectRefusal("[[psmmu]]\nname = \"\"\nbackend = \"iommufd\"\n", line: 2, key: "psmmu[0].name", message: "cannot be empty")
        let long = String(repeating: "x", count: 65)
        try expectRefusal("[[psmmu]]\nname = \"\(long)\"\nbackend = \"iommufd\"\n", line: 2, key: "psmmu[0].name",
                          message: "is 65 UTF-8 bytes long; the protocol's name field holds 64")
    }

    @Test func escapedNULInANameIsRefusedRatherThanCuttingTheName() throws {
        try expectRefusal("[[psmmu]]\nname = \"smmu\\u0000x\"\nbackend = \"iommufd\"\n", line: 2, key: "psmmu[0].name",
                          message: "a NUL character is not allowed")
    }

    @Test func explicitlyEmptyPSMMUListIsRefusedRatherThanServingNothing() throws {
        try expectRefusal("# no pSMMUs\npsmmu = []\n[daemon]\nlog_level = \"info\"\n", line: 2, key: "psmmu",
                          message: "an empty list defines no pSMMU")
    }

    @Test func simulatedOnlyKeyOnAnIommufdPSMMUIsRefused() throws {
        try expectRefusal("""
            [[psmmu]]
            name = "smmu0"
            backend = "simulated"

            [[psmmu]]
            name = "hw"
            backend = "iommufd"
            event_queue_depth = 64
            devices = 8
            """, line: 8, key: "psmmu[1].event_queue_depth",
            message: "only a simulated pSMMU has event_queue_depth; this one has backend = \"iommufd\"")
    }

    @Test func costTableOnAnIommufdPSMMUIsRefusedAtItsHeader() throws {
        try expectRefusal("""
            [[psmmu]]
            name = "hw"
            backend = "iommufd"
            [psmmu.cost]
            call_ns = 100
            """, line: 4, key: "psmmu[0].cost", message: "only a simulated pSMMU has [psmmu.cost]")
    }

    // MARK: - Files

    @Test func missingFileIsRefusedNamingTheFileWithoutALine() throws {
        let path = "/nonexistent-vsmmud-dir/vsmmud.toml"
        let error = try #require(throws: ConfigurationError.self) { try DaemonConfiguration.load(path: path) }
        #expect(error == ConfigurationError(file: path, message: "cannot open: No such file or directory (errno 2)"))
        #expect(error.description == "\(path): cannot open: No such file or directory (errno 2)")
    }

    @Test func directoryIsRefusedAsNotARegularFile() throws {
        let error = try #require(throws: ConfigurationError.self) { try DaemonConfiguration.load(path: "/") }
        #expect(error == ConfigurationError(file: "/", message: "not a regular file"))
    }

    @Test func invalidUTF8IsRefusedAtTheLineOfTheBadByte() throws {
        let bytes = Array("[daemon]\n# caf".utf8) + [0xC3, 0x28] + Array("\n".utf8)
        let error = try withTemporaryFile(bytes) { path in
            try #require(throws: ConfigurationError.self) { try DaemonConfiguration.load(path: path) }
        }
        #expect(error.line == 2)
        #expect(error.column == 6)
        #expect(error.message.contains("not valid UTF-8"))
    }

    @Test func errorsFromLoadNameThePathTheyWereGiven() throws {
        let error = try withTemporaryFile(Array("[queue]\nring_capacity = 100\n".utf8)) { path in
            (path, try #require(throws: ConfigurationError.self) { try DaemonConfiguration.load(path: path) })
        }
        #expect(error.1.file == error.0)
        #expect(error.1.description == "\(error.0):2:1: queue.ring_capacity: 100 is not a power of two (e.g. 1024, 4096, 16384)")
    }
}

@Suite struct ErrorPrintingTests {
    @Test func quotedValueWithANewlinePrintsOnOneLine() throws {
        let error = try refusal("[[psmmu]]\nname = \"a\"\nbackend = \"\"\"sim\nulated\"\"\"\n")
        #expect(error.description == #"test.toml:3:1: psmmu[0].backend: unknown backend "sim\nulated" (expected "simulated" or "iommufd")"#)
    }
}
