import Testing
import VSMMUConfiguration

/// `[limits] event_queue_entries` (issue 14: the largest event queue a VMM may map).
@Suite struct EventQueueEntriesKeyTests {
    @Test func eventQueueEntriesDefaultsTo1024AndIsRead() throws {
        #expect(DaemonConfiguration.embeddedDefault.eventQueueEntries == 1024)
        #expect(try accepted("[limits]\nevent_queue_entries = 16\n").eventQueueEntries == 16)
        #expect(try accepted("[limits]\nevent_queue_entries = 4096\n").eventQueueEntries == 4096)
        #expect(try accepted("[limits]\nevent_queue_entries = 1024\n") == .embeddedDefault)
    }

    @Test func eventQueueEntriesOutOfRangeNotAPowerOfTwoOrOfTheWrongTypeIsRefused() throws {
        try expectRefusal("[limits]\nevent_queue_entries = 8\n", line: 2, key: "limits.event_queue_entries", message: "out of range")
        try expectRefusal("[limits]\nevent_queue_entries = 8192\n", line: 2, key: "limits.event_queue_entries", message: "out of range")
        try expectRefusal("[limits]\nevent_queue_entries = 1000\n", line: 2, key: "limits.event_queue_entries", message: "not a power of two")
        try expectRefusal("[limits]\nevent_queue_entries = \"64\"\n", line: 2, key: "limits.event_queue_entries", message: "expected an integer")
    }

    @Test func aReloadAppliesTheEventQueueEntriesLive() throws {
        let before = DaemonConfiguration.embeddedDefault
        let after = try accepted("[limits]\nevent_queue_entries = 256\n")
        let plan = before.reloadPlan(to: after)
        #expect(plan.applied == ["limits"])
        #expect(plan.needsRestart.isEmpty)
        #expect(before.applyingLiveSettings(of: after).eventQueueEntries == 256)
    }
}
