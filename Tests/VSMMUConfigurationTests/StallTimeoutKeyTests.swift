import Testing
import VSMMUConfiguration

/// `[queue] stall_timeout_ms` (issue 11 §3, a stalled backend).
@Suite struct StallTimeoutKeyTests {
    @Test func stallTimeoutDefaultsToNoLimitAndIsReadInMilliseconds() throws {
        #expect(DaemonConfiguration.embeddedDefault.stallTimeoutMilliseconds == 0)
        #expect(try accepted("[queue]\nstall_timeout_ms = 250\n").stallTimeoutMilliseconds == 250)
        #expect(try accepted("[queue]\nstall_timeout_ms = 0\n") == .embeddedDefault)
    }

    @Test func stallTimeoutOutOfRangeOrOfTheWrongTypeIsRefused() throws {
        try expectRefusal("[queue]\nstall_timeout_ms = -1\n", line: 2, key: "queue.stall_timeout_ms", message: "out of range")
        try expectRefusal("[queue]\nstall_timeout_ms = 3600001\n", line: 2, key: "queue.stall_timeout_ms", message: "out of range")
        try expectRefusal("[queue]\nstall_timeout_ms = \"1s\"\n", line: 2, key: "queue.stall_timeout_ms", message: "expected an integer")
    }

    @Test func changingTheStallTimeoutNeedsARestart() throws {
        let before = DaemonConfiguration.embeddedDefault
        let after = try accepted("[queue]\nstall_timeout_ms = 500\n")
        #expect(before.reloadPlan(to: after).needsRestart == ["queue.stall_timeout_ms"])
        #expect(before.applyingLiveSettings(of: after).stallTimeoutMilliseconds == 0)
    }
}
