import CVSMMUClient
import Dispatch
import Foundation
import PSMMU
import SMMUv3
import Testing
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The C client's shared command queue (`vsmmu_client_map_queue` …, PROTOCOL.md §8) against the in-process
/// daemon: syncs complete through the memory, a refused command stops the queue at its index until it is
/// acknowledged, a full queue makes the submitter wait, and tearing the queue down wakes a waiter.
@Suite struct CClientSharedQueueTests {
    /// TLBI_NH_VA of `asid` at `address` (leaf), and CMD_SYNC: the guest's strict-mode unmap.
    static func tlbiNHVA(asid: UInt16, address: UInt64 = 0x7F00_1000) -> vsmmu_command {
        let c = Command.tlbiNHVA(asid: asid, vmid: 0, address: address, leaf: true)
        return vsmmu_command(w: (c.w0, c.w1))
    }
    static let sync = vsmmu_command(w: (0x46, 0))
    /// Opcode 0x07: QEMU's CFGI_ALL, undefined in the architecture: CERROR_ILL.
    static let illegal = vsmmu_command(w: (0x07, 0))

    /// A C client on the heap (a queue keeps its client's address) owning one vSMMU with a viommu on smmu0 and
    /// the device vSID 0x8 (host device 0) linked with one CD of ASID 3, and the vSMMU's shared queue.
    final class Rig: @unchecked Sendable {
        let client = UnsafeMutablePointer<vsmmu_client>.allocate(capacity: 1)
        var vsmmu: UInt32 = 0
        var queue: UnsafeMutablePointer<vsmmu_client_queue>!

        init(path: String, log2Entries: UInt32 = 8) throws {
            client.initialize(to: vsmmu_client())
            try #require(vsmmu_client_connect(client, path) == 0)
            try #require(vsmmu_client_hello(client, "c-queue-test", nil) == 0)
            try #require(vsmmu_client_create_vsmmu(client, "vm", &vsmmu) == 0)
            var attached = vsmmu_attach_viommu_reply()
            try #require(vsmmu_client_attach_viommu(client, vsmmu, "smmu0", 0, 0, -1, &attached) == 0)
            try #require(vsmmu_client_set_dev_id(client, vsmmu, attached.viommu, 0, 0x8, -1) == 0)
            var ste = vsmmu_ste()
            ste.w.0 = 0x40_0000_0000 | 0xB // V, S1_TRANS, CD table at 0x40_0000_0000
            ste.w.1 = 0xD6
            var cd = vsmmu_cd()
            cd.w.0 = 3 << 48 | 1 << 41 | 1 << 31 | 0x3510 // ASID 3, AA64, V
            cd.w.1 = 0x4380_5000
            try #require(vsmmu_client_link_ste(client, vsmmu, 0x8, &ste, &cd, 1, nil) == 0, "\(message)")
            var mapped: UnsafeMutablePointer<vsmmu_client_queue>?
            let rc = vsmmu_client_map_queue(client, vsmmu, log2Entries, &mapped)
            try #require(rc == 0, "MAP_QUEUE: \(rc) \(message)")
            queue = try #require(mapped)
        }

        deinit {
            vsmmu_client_close(client)
            client.deallocate()
        }

        var message: String {
            withUnsafeBytes(of: client.pointee.last_message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }

        /// One header field, read atomically (safe from another thread than the one using the queue).
        func load(_ offset: Int) -> UInt32 { vsmmu_client_queue_load(queue, offset) }

        func submit(_ commands: [vsmmu_command]) -> (rc: Int32, published: UInt32) {
            var published: UInt32 = 0
            let rc = commands.withUnsafeBufferPointer {
                vsmmu_client_queue_submit(queue, $0.baseAddress, UInt32($0.count), &published)
            }
            return (rc, published)
        }

        func submitAndWait(_ commands: [vsmmu_command]) -> Int32 {
            commands.withUnsafeBufferPointer { vsmmu_client_queue_submit_and_wait(queue, $0.baseAddress, UInt32($0.count)) }
        }

        func error() -> vsmmu_client_queue_error? {
            var e = vsmmu_client_queue_error()
            return vsmmu_client_queue_error(queue, &e) == 1 ? e : nil
        }
    }
    @Test func syncsCompleteThroughTheSharedQueueAcrossManyWraps() throws {
        let server = try TestServer("cqueue-sync")
        defer { server.stop() }
        let rig = try Rig(path: server.path)
        // 300 batches of 2 commands in 256 slots: the indices wrap twice and more.
        for i in 0..<300 {
            let rc = rig.submitAndWait([Self.tlbiNHVA(asid: 3, address: 0x1000 * UInt64(i + 1)), Self.sync])
            try #require(rc == 0, "batch \(i): \(rc)")
        }
        #expect(vsmmu_client_queue_cons(rig.queue) == rig.queue.pointee.prod)
        #expect(rig.queue.pointee.prod == UInt32(600) & 0x1FF) // SMMUv3 form: index and wrap bit of 256 slots
        #expect(rig.load(SharedQueueLayout.stateOffset) == VSMMU_QUEUE_STATE_RUNNING)
        #expect(rig.error() == nil)
        #expect(server.pSMMUs[0].counters.commandsCompleted == 300)
    }

    @Test func anUnmappedQueueCanBeReplacedByANewOneOverNewMemory() throws {
        let server = try TestServer("cqueue-unmap")
        defer { server.stop() }
        let rig = try Rig(path: server.path)
        #expect(rig.submitAndWait([Self.tlbiNHVA(asid: 3), Self.sync]) == 0)
        #expect(vsmmu_client_unmap_queue(rig.client, rig.queue) == 0)
        #expect(rig.client.pointee.queue_count == 0)
        // A vSMMU has at most one queue: after UNMAP_QUEUE a new memfd maps, from CONS 0 again.
        var mapped: UnsafeMutablePointer<vsmmu_client_queue>?
        #expect(vsmmu_client_map_queue(rig.client, rig.vsmmu, 9, &mapped) == 0, "\(rig.message)")
        rig.queue = try #require(mapped)
        #expect(rig.submitAndWait([Self.tlbiNHVA(asid: 3), Self.sync]) == 0)
        #expect(vsmmu_client_queue_cons(rig.queue) == 2)
        // While it is mapped, other memory is refused.
        var second: UnsafeMutablePointer<vsmmu_client_queue>?
        #expect(vsmmu_client_map_queue(rig.client, rig.vsmmu, 8, &second) == Int32(VSMMU_ERR_ALREADY_EXISTS.rawValue))
        #expect(rig.client.pointee.last_error_detail == VSMMU_CONFLICT_QUEUE)
        #expect(server.pSMMUs[0].counters.commandsCompleted == 2)
    }

    @Test func anIllegalCommandStopsTheQueueWithConsOnItsIndex() throws {
        let server = try TestServer("cqueue-ill")
        defer { server.stop() }
        let rig = try Rig(path: server.path)
        #expect(rig.submitAndWait([Self.tlbiNHVA(asid: 3), Self.sync]) == 0)
        // Slots 2, 3, 4: the illegal command is at index 3.
        let rc = rig.submitAndWait([Self.tlbiNHVA(asid: 3), Self.illegal, Self.sync])
        #expect(rc == VSMMU_CLIENT_QUEUE_ERROR)
        let error = try #require(rig.error())
        #expect(error.cerror == UInt8(VSMMU_CERROR_ILL))
        #expect(error.kind == UInt8(VSMMU_QUEUE_ERROR_COMMAND))
        #expect(error.index == 3 && error.cons == 3)
        #expect(vsmmu_client_queue_cons(rig.queue) == 3)
        // Stopped until acknowledged: waiting again returns the same error, and CONS stays on the command.
        #expect(vsmmu_client_queue_wait(rig.queue, rig.queue.pointee.prod) == VSMMU_CLIENT_QUEUE_ERROR)
        #expect(vsmmu_client_queue_cons(rig.queue) == 3)
        #expect(rig.error()?.sequence == error.sequence)
    }

    @Test func anAcknowledgementWithARewrittenSlotResumesAtThatSlot() throws {
        let server = try TestServer("cqueue-ack")
        defer { server.stop() }
        let rig = try Rig(path: server.path)
        #expect(rig.submitAndWait([Self.tlbiNHVA(asid: 3), Self.illegal, Self.sync]) == VSMMU_CLIENT_QUEUE_ERROR)
        let error = try #require(rig.error())
        // The guest skips the command as Linux does (__arm_smmu_cmdq_skip_err): a CMD_SYNC in its slot. Had
        // the daemon not read the slot again, it would stop on the illegal command a second time.
        var replacement = Self.sync
        #expect(vsmmu_client_queue_acknowledge(rig.queue, &replacement) == 0)
        #expect(vsmmu_client_queue_wait(rig.queue, rig.queue.pointee.prod) == 0)
        #expect(vsmmu_client_queue_cons(rig.queue) == 3)
        #expect(rig.error() == nil)
        #expect(rig.load(SharedQueueLayout.errorAckOffset) == error.sequence)
        #expect(vsmmu_client_queue_acknowledge(rig.queue, nil) == -EALREADY)
        // And the queue goes on.
        #expect(rig.submitAndWait([Self.tlbiNHVA(asid: 3), Self.sync]) == 0)
        #expect(server.pSMMUs[0].counters.commandsCompleted == 2)
    }

    @Test func aFullQueueMakesTheSubmitterWaitUntilTheDaemonMakesRoom() throws {
        let server = try TestServer("cqueue-full")
        defer { server.stop() }
        let rig = try Rig(path: server.path)
        // The pSMMU stalls: the first batch's CMD_SYNC cannot complete, so CONS stays at 0.
        let gate = server.pSMMUs[0].stallInvalidations()
        let commands = [Self.tlbiNHVA(asid: 3), Self.sync] // 300 commands in 256 slots
            + (0..<297).map { Self.tlbiNHVA(asid: 3, address: 0x1000 * UInt64($0 + 2)) } + [Self.sync]
        let submitter = Background { () -> (Int32, UInt32, Int32) in
            let (rc, published) = rig.submit(commands)
            return (rc, published, rc == 0 ? vsmmu_client_queue_wait(rig.queue, rig.queue.pointee.prod) : rc)
        }
        // The queue fills (PROD 256 ahead of CONS: the wrap bits differ, the indices are equal) and the
        // submitter goes to sleep on call.
        eventually {
            rig.load(SharedQueueLayout.prodOffset) == 0x100 && rig.load(SharedQueueLayout.consOffset) == 0
                && rig.load(SharedQueueLayout.vmmSleepingOffset) == 1
        }
        #expect(rig.load(SharedQueueLayout.prodOffset) == 0x100)
        #expect(rig.load(SharedQueueLayout.vmmSleepingOffset) == 1)
        #expect(gate.waitForStalledCalls(1), "the first batch's TLBI reaches the pSMMU and stalls there")
        gate.release()
        let result = try #require(submitter.join(), "the submitter never returned")
        #expect(result.0 == 0 && result.1 == 300 && result.2 == 0)
        #expect(vsmmu_client_queue_cons(rig.queue) == 300 & 0x1FF)
        #expect(rig.queue.pointee.sleeps >= 1)
    }

    @Test func aWaiterOnAStalledSyncWakesWhenItsConnectionGoesAndTheQueueEndsStopped() throws {
        let server = try TestServer("cqueue-teardown")
        defer { server.stop() }
        let rig = try Rig(path: server.path)
        let gate = server.pSMMUs[0].stallInvalidations()
        defer { gate.release() }
        let waiter = Background { rig.submitAndWait([Self.tlbiNHVA(asid: 3), Self.sync]) }
        // The sync cannot complete: the waiter goes to sleep on call and the socket.
        eventually { rig.load(SharedQueueLayout.vmmSleepingOffset) == 1 && gate.stalledCalls >= 1 }
        #expect(rig.load(SharedQueueLayout.vmmSleepingOffset) == 1)
        // The connection goes (without a reconnect policy): the waiter wakes at once, the stall still holding.
        #expect(shutdown(rig.client.pointee.fd, Int32(SHUT_RDWR)) == 0)
        #expect(waiter.join() == -ECONNRESET)
        #expect(gate.waitingCalls == 1, "the sync is still stalled: the waiter woke for the connection, not the sync")
        // The daemon tears the vSMMU down: the batch in flight completes, then the queue ends STOPPED.
        gate.release()
        eventually { rig.load(SharedQueueLayout.stateOffset) == VSMMU_QUEUE_STATE_STOPPED }
        #expect(rig.load(SharedQueueLayout.stateOffset) == VSMMU_QUEUE_STATE_STOPPED)
    }
}
