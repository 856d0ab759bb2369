import CommandRing
import SMMUv3
import Testing

@Suite struct QueueStatisticsTests {
    @Test func occupancyHighWaterRecordsTheDeepestBacklogAndBatchSizesTheirLog2Bucket() throws {
        let log = SinkLog()
        let queue = try queue(.inline, sink: recordingSink(log))
        defer { queue.stop() }
        // Hold the consumer role so that 10 + 5 commands pile up, then let one drain take them all.
        let role = try acquireRole(queue.ring)
        try queue.push(commands(0..<10))
        try queue.push(commands(10..<15))
        #expect(queue.statistics.occupancyHighWater == 15)
        queue.release(role)
        #expect(log.commands == commands(0..<15))
        // A lone command drains inline as a batch of one; the backlog mark stays at its maximum.
        try queue.push(commands(15..<16))
        let statistics = queue.statistics
        #expect(statistics.occupancyHighWater == 15)
        #expect(statistics.sinkBatchSizeLog2[3] == 1)  // 8 ≤ 15 < 16
        #expect(statistics.sinkBatchSizeLog2[0] == 1)  // 1
        #expect(statistics.sinkBatchSizeLog2.reduce(0, +) == statistics.inlineSinkCalls)
    }
}
