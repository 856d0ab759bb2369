import Testing
import VSMMUConfiguration

/// `[queue] drain_threads_per_psmmu` (issue 11 §3: the drain pool's lane size).
@Suite struct DrainThreadsKeyTests {
    @Test func drainThreadsPerPSMMUDefaultsToOneAndIsRead() throws {
        #expect(DaemonConfiguration.embeddedDefault.drainThreadsPerPSMMU == 1)
        #expect(try accepted("[queue]\ndrain_threads_per_psmmu = 4\n").drainThreadsPerPSMMU == 4)
        #expect(try accepted("[queue]\ndrain_threads_per_psmmu = 1\n") == .embeddedDefault)
    }

    @Test func drainThreadsPerPSMMUOutOfRangeOrOfTheWrongTypeIsRefused() throws {
        try expectRefusal("[queue]\ndrain_threads_per_psmmu = 0\n", line: 2, key: "queue.drain_threads_per_psmmu", message: "out of range")
        try expectRefusal("[queue]\ndrain_threads_per_psmmu = 65\n", line: 2, key: "queue.drain_threads_per_psmmu", message: "out of range")
        try expectRefusal("[queue]\ndrain_threads_per_psmmu = \"2\"\n", line: 2, key: "queue.drain_threads_per_psmmu", message: "expected an integer")
    }

    @Test func changingTheDrainThreadsNeedsARestart() throws {
        let before = DaemonConfiguration.embeddedDefault
        let after = try accepted("[queue]\ndrain_threads_per_psmmu = 2\n")
        #expect(before.reloadPlan(to: after).needsRestart == ["queue.drain_threads_per_psmmu"])
        #expect(before.applyingLiveSettings(of: after).drainThreadsPerPSMMU == 1)
    }
}
