import CVSMMUClient
import Foundation
import SMMUv3
import Testing
import VSMMUProtocol

/// The C client's overflow handling of the event queue (`vsmmu_client_event_overflow`,
/// `vsmmu_client_event_acknowledge_overflow`, PROTOCOL.md §9) against the in-process daemon: a VMM that does
/// not read while its devices fault sees the overflow once, reads what the ring held, acknowledges as the
/// kernel's `queue_sync_cons_ovf` does, and the next event says that events were lost before it.
@Suite struct CClientEventOverflowTests {
    /// SIMULATE_DMA of device vSID 0x8 at `iova`, which the guest's tables do not map: F_TRANSLATION.
    static func fault(_ rig: CClientSharedQueueTests.Rig, at iova: UInt64) throws {
        var request = vsmmu_simulate_dma()
        request.vsmmu_id = rig.vsmmu
        request.vsid = 0x8
        request.iova = iova
        request.size = UInt64(VSMMU_DMA_MIN_SIZE)
        request.walk = VSMMU_DMA_WALK_UNMAPPED
        var reply = vsmmu_simulate_dma_reply()
        try #require(vsmmu_client_simulate_dma(rig.client, &request, &reply) == 0, "\(rig.message)")
        try #require(reply.outcome == VSMMU_DMA_FAULT)
    }

    @Test func aCClientThatDidNotReadSeesTheOverflowOnceAcknowledgesItAndTheNextEventIsMarkedLostBefore() throws {
        let server = try TestServer("cclientevoverflow")
        defer { server.stop() }
        let rig = try CClientSharedQueueTests.Rig(path: server.path)
        var mapped: UnsafeMutablePointer<vsmmu_client_event_queue>?
        try #require(vsmmu_client_map_event_queue(rig.client, rig.vsmmu, 4, &mapped) == 0, "\(rig.message)")
        let queue = try #require(mapped)
        defer { _ = vsmmu_client_unmap_event_queue(rig.client, queue) }

        #expect(vsmmu_client_event_overflow(queue) == 0)
        for i in 0..<40 { try Self.fault(rig, at: 0x7F00_0000 + UInt64(i) << 12) }
        // 16 slots: 16 written, 24 dropped, OVFLG toggled once.
        #expect(vsmmu_client_event_overflow(queue) == 1)
        var slot = vsmmu_event_slot()
        var sequences: [UInt64] = []
        while vsmmu_client_event_read(queue, &slot) == 1 {
            sequences.append(slot.sequence)
            #expect(EventRecord(w0: slot.record.w.0).id == .translation)
            #expect(EventRecord(w0: slot.record.w.0).streamID == 0x8)
        }
        #expect(sequences == (1...16).map { UInt64($0) })
        // Still flagged until acknowledged; the acknowledgement is taken once.
        #expect(vsmmu_client_event_overflow(queue) == 1)
        #expect(vsmmu_client_event_acknowledge_overflow(queue) == 1)
        #expect(vsmmu_client_event_overflow(queue) == 0)
        #expect(vsmmu_client_event_acknowledge_overflow(queue) == 0)

        // The acknowledgement is in the memory the daemon reads, with no read after it: refilling the ring
        // overflows again and OVFLG toggles again (the SMMUv3 rule toggles only while OVFLG = OVACKFLG).
        for i in 0..<17 { try Self.fault(rig, at: 0x7F20_0000 + UInt64(i) << 12) }
        #expect(vsmmu_client_event_overflow(queue) == 1, "a second overflow after the acknowledgement is flagged again")
        #expect(vsmmu_client_event_read(queue, &slot) == 1)
        #expect(slot.sequence == 41, "the gap: 24 events dropped while the ring was full")
        #expect(slot.flags & VSMMU_EVENT_LOST_BEFORE != 0)
        let stats = try server.client().stats(vsmmu: VSMMUID(rig.vsmmu))
        #expect(stats.entries.contains { $0.key == .viommuEventsDroppedOverflow && $0.value == 25 })
    }
}
