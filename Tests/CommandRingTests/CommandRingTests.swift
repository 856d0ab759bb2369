import SMMUv3
import Testing
@testable import CommandRing

/// Records what a consumer role hands over: each run (position, base address, commands) and marker.
struct RecordingVisitor: CommandRingVisitor {
    struct Run {
        var position: UInt64
        var base: UnsafePointer<Command>?
        var commands: [Command]
    }
    var runs: [Run] = []
    var markers: [(position: UInt64, payload: RingMarker)] = []
    var entries: [String] = []

    mutating func visit(commands: UnsafeBufferPointer<Command>, at position: UInt64) {
        runs.append(Run(position: position, base: commands.baseAddress, commands: Array(commands)))
        entries.append("commands@\(position)x\(commands.count)")
    }

    mutating func visit(marker: RingMarker, at position: UInt64) {
        markers.append((position, marker))
        entries.append("marker@\(position)")
    }

    var commands: [Command] { runs.flatMap(\.commands) }
}

@Suite("CommandRing")
struct CommandRingTests {
    @Test(arguments: [0, 1, 3, 12, 1000, CommandRing.maximumCapacity * 2, -8])
    func capacityMustBeAPowerOfTwoOfAtLeastTwo(capacity: Int) {
        #expect(throws: CommandRingError.invalidCapacity(capacity)) { try CommandRing(capacity: capacity) }
    }

    @Test func pushedBatchIsHandedToTheConsumerInOneCall() throws {
        let ring = try CommandRing(capacity: 64)
        let batch = commands(0..<40)
        let positions = try ring.push(batch)
        #expect(positions == 0..<40)
        #expect(ring.claimedPosition == 40)

        let role = try acquireRole(ring)
        var visitor = RecordingVisitor()
        #expect(role.drain(into: &visitor) == 40)
        #expect(role.release() == false)
        #expect(visitor.runs.count == 1)
        #expect(visitor.commands == batch)
        #expect(ring.consumedPosition == 40)
    }

    @Test func runThatWrapsAtTheEndOfTheBufferIsHandedOverInTwoContiguousPieces() throws {
        let ring = try CommandRing(capacity: 8)
        try ring.push(commands(0..<5))
        var first = RecordingVisitor()
        do {
            let role = try acquireRole(ring)
            role.drain(into: &first)
            _ = role.release()
        }

        let positions = try ring.push(commands(5..<11))
        #expect(positions == 5..<11)
        let role = try acquireRole(ring)
        var visitor = RecordingVisitor()
        #expect(role.drain(into: &visitor) == 6)
        _ = role.release()

        #expect(visitor.runs.map(\.position) == [5, 8])
        #expect(visitor.runs.map(\.commands.count) == [3, 3])
        #expect(visitor.commands == commands(5..<11))
        // Slots 5, 6, 7 then slots 0, 1, 2 of the same buffer: the second run starts where the
        // first ring pass started.
        let startOfBuffer = try #require(first.runs.first?.base)
        #expect(visitor.runs[0].base == startOfBuffer + 5)
        #expect(visitor.runs[1].base == startOfBuffer)
    }

    @Test func batchLargerThanTheCapacityIsPushedInOrderedPieces() throws {
        let ring = try CommandRing(capacity: 8)
        let batch = commands(0..<100)
        let lastPiece = Handoff<Range<UInt64>>()
        let producer = try startThread {
            do {
                lastPiece.put(try ring.push(batch))
            } catch {
                Issue.record("push failed: \(error)")
            }
        }
        var visitor = RecordingVisitor()
        let role = try acquireRole(ring)
        while visitor.commands.count < batch.count {
            role.drain(into: &visitor)
        }
        _ = role.release()
        producer.join()

        #expect(visitor.commands == batch)
        #expect(visitor.runs.allSatisfy { $0.commands.count <= 8 })
        #expect(lastPiece.take() == 96..<100)
    }

    @Test func emptyPushPublishesNothing() throws {
        let ring = try CommandRing(capacity: 8)
        #expect(try ring.push([]) == 0..<0)
        #expect(!ring.hasPublishedEntries)
        #expect(ring.claimedPosition == 0)
    }

    @Test func markersArriveInOrderAndNeverInsideACommandRun() throws {
        let ring = try CommandRing(capacity: 16)
        try ring.push(commands(0..<3))
        let markerPosition = try ring.pushMarker(RingMarker(0xFE, 7))
        try ring.push(commands(3..<5))
        #expect(markerPosition == 3)

        let role = try acquireRole(ring)
        var visitor = RecordingVisitor()
        #expect(role.drain(into: &visitor) == 6)
        _ = role.release()
        #expect(visitor.entries == ["commands@0x3", "marker@3", "commands@4x2"])
        #expect(visitor.markers.first?.payload == RingMarker(0xFE, 7))
        #expect(visitor.commands == commands(0..<5))
    }

    @Test func drainStopsAtTheLimit() throws {
        let ring = try CommandRing(capacity: 16)
        try ring.push(commands(0..<10))
        let role = try acquireRole(ring)
        var visitor = RecordingVisitor()
        #expect(role.drain(upTo: 4, into: &visitor) == 4)
        #expect(ring.consumedPosition == 4)
        #expect(role.release() == true)
    }

    @Test func consumerRoleIsHeldByOneThreadAtATime() throws {
        let ring = try CommandRing(capacity: 8)
        let role = try acquireRole(ring)
        #expect(ring.isConsumerRoleHeld)
        #expect(!roleIsFree(ring))
        let other = Handoff<Bool>()
        try startThread { other.put(roleIsFree(ring)) }.join()
        #expect(other.take() == false)
        _ = role.release()
        #expect(!ring.isConsumerRoleHeld)
        let again = try acquireRole(ring)
        _ = again.release()
    }

    @Test func droppingTheRoleReleasesIt() throws {
        let ring = try CommandRing(capacity: 8)
        do {
            let role = try acquireRole(ring)
            _ = role.position
        }
        #expect(!ring.isConsumerRoleHeld)
    }

    @Test func releaseReportsCommandsPublishedWhileTheRoleWasHeld() throws {
        let ring = try CommandRing(capacity: 8)
        let idle = try acquireRole(ring)
        #expect(idle.release() == false)

        let role = try acquireRole(ring)
        try startThread {
            do { try ring.push(commands(0..<1)) } catch { Issue.record("push failed: \(error)") }
        }.join()
        #expect(role.release() == true, "the releasing consumer must see what it would otherwise strand")
    }

    @Test func consumedPositionAdvancesOnlyAfterTheVisitorReturned() throws {
        struct Checking: CommandRingVisitor {
            let ring: CommandRing
            var seen: [UInt64] = []
            mutating func visit(commands: UnsafeBufferPointer<Command>, at position: UInt64) {
                seen.append(ring.consumedPosition)
                #expect(ring.consumedPosition == position)
            }
            mutating func visit(marker: RingMarker, at position: UInt64) {
                #expect(ring.consumedPosition == position)
            }
        }
        let ring = try CommandRing(capacity: 8)
        try ring.push(commands(0..<2))
        try ring.pushMarker(RingMarker(0, 0))
        try ring.push(commands(2..<7))
        var visitor = Checking(ring: ring)
        let role = try acquireRole(ring)
        #expect(role.drain(into: &visitor) == 8)
        _ = role.release()
        #expect(visitor.seen.first == 0)
    }

    @Test func fullRingMakesProducerWaitWithoutDroppingCommands() throws {
        let ring = try CommandRing(capacity: 4)
        let producer = try startThread {
            do {
                for sequence in 0..<10 { try ring.push(commands(sequence..<(sequence + 1))) }
            } catch {
                Issue.record("push failed: \(error)")
            }
        }
        let role = try acquireRole(ring)
        // The fifth push cannot fit until we consume: the producer spins, then parks.
        eventually("the producer parks on the full ring") { ring.parkedProducers == 1 }
        #expect(ring.claimedPosition == 4)
        #expect(ring.fullRingWaits >= 1)
        #expect(ring.producerParks >= 1)

        var visitor = RecordingVisitor()
        while visitor.commands.count < 10 { role.drain(into: &visitor) }
        _ = role.release()
        producer.join()
        #expect(visitor.commands == commands(0..<10))
    }

    @Test func closingWakesAParkedProducerWithAnError() throws {
        let ring = try CommandRing(capacity: 2)
        try ring.push(commands(0..<2))
        let outcome = Handoff<Bool>()
        let producer = try startThread {
            do {
                try ring.push(commands(2..<3))
                outcome.put(false)
            } catch {
                outcome.put(true)
            }
        }
        eventually("the producer parks on the full ring") { ring.parkedProducers == 1 }
        ring.close()
        producer.join()
        #expect(outcome.take() == true)
        #expect(ring.isClosed)
        #expect(ring.claimedPosition == 2)
        #expect(throws: CommandRingClosedError()) { try ring.push(commands(0..<1)) }
        #expect(throws: CommandRingClosedError()) { try ring.pushMarker(RingMarker(0, 0)) }

        // What was pushed before closing can still be drained.
        let role = try acquireRole(ring)
        var visitor = RecordingVisitor()
        #expect(role.drain(into: &visitor) == 2)
        _ = role.release()
    }
}
