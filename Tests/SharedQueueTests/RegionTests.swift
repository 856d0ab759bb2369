import Foundation
import SMMUv3
import Testing
import VSMMUProtocol
@testable import SharedQueue

/// Positions in SMMUv3 form and the region's accessors against the layout of PROTOCOL.md §8.1.
@Suite("Shared queue region")
struct RegionTests {
    /// A page-aligned, zeroed allocation of `bytes`, freed by the caller.
    static func memory(_ bytes: Int) -> UnsafeMutableRawPointer {
        let p = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 4096)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        return p
    }

    @Test func geometryAcceptsOnlyTwoToTheEightToTwoToTheSixteenSlots() {
        #expect(SharedQueueGeometry(log2Entries: 7) == nil)
        #expect(SharedQueueGeometry(log2Entries: 17) == nil)
        #expect(SharedQueueGeometry(log2Entries: 8)?.entries == 256)
        #expect(SharedQueueGeometry(log2Entries: 16)?.requiredSize == 0x1000 + 16 << 16)
    }

    @Test func positionsWrapLikeTheSMMUsQueueIndicesAndAFullQueueIsEqualIndicesWithDifferentWrapBits() throws {
        let g = try #require(SharedQueueGeometry(log2Entries: 8))
        #expect(g.positionMask == 0x1FF && g.indexMask == 0xFF)
        let last: UInt32 = 0xFF
        let wrapped = g.advance(last, by: 1)
        #expect(wrapped == 0x100 && g.index(of: wrapped) == 0) // index 0, wrap bit set
        #expect(g.advance(0x1FF, by: 1) == 0)                 // wrap bit flips back
        #expect(g.distance(from: 0, to: 0x100) == g.entries)   // full
        #expect(g.distance(from: 0x1F0, to: 0x010) == 0x20)    // across the wrap
        #expect(g.distance(from: 5, to: 5) == 0)               // empty
        #expect(!g.isValid(0x200) && g.isValid(0x1FF))
        #expect(g.distance(from: 0x100, to: 0x0FF) > g.entries) // impossible: PROD behind CONS
    }

    @Test func everyAccessorReadsAndWritesTheOffsetTheLayoutNames() throws {
        let g = try #require(SharedQueueGeometry(log2Entries: 8))
        let p = Self.memory(g.requiredSize)
        defer { p.deallocate() }
        let region = try #require(SharedQueueRegion(base: p, length: g.requiredSize, geometry: g))
        #expect(SharedQueueRegion(base: p, length: g.requiredSize - 1, geometry: g) == nil)
        region.initialise()
        func u32(_ offset: Int) -> UInt32 { p.load(fromByteOffset: offset, as: UInt32.self) }
        #expect(u32(0) == SharedQueueLayout.magic)
        #expect(p.load(fromByteOffset: 4, as: UInt16.self) == SharedQueueLayout.version)
        #expect(p.load(fromByteOffset: 6, as: UInt8.self) == 8)
        let configuration = region.loadConfiguration()
        #expect(configuration.magic == SharedQueueLayout.magic && configuration.version == 1 && configuration.log2Entries == 8)
        region.storeProducer(0x123); #expect(u32(0x40) == 0x123 && region.loadProducer() == 0x123)
        region.storeConsumer(0x104); #expect(u32(0x80) == 0x104 && region.loadConsumer() == 0x104)
        region.storeError(sequence: 7, cerror: 1, kind: .command, consumer: 0x104)
        #expect(u32(0xC0) == 7 && p.load(fromByteOffset: 0xC4, as: UInt8.self) == 1)
        #expect(p.load(fromByteOffset: 0xC5, as: UInt8.self) == 1 && u32(0xC8) == 0x104)
        #expect(region.loadErrorSequence() == 7 && region.loadErrorRecord() == (1, 1, 0x104))
        region.storeState(.running); #expect(u32(0xCC) == 1 && region.loadState() == 1)
        region.storeErrorAcknowledgement(7); #expect(u32(0x100) == 7 && region.loadErrorAcknowledgement() == 7)
        region.storeDaemonSleeping(1); #expect(u32(0x140) == 1 && region.loadDaemonSleeping() == 1)
        region.storeVMMSleeping(1); #expect(u32(0x180) == 1 && region.loadVMMSleeping() == 1)
        // Slot 3, and the same slot one wrap later.
        let command = Command(w0: 0x0000_0001_0000_0012, w1: 0xABCD_E000)
        region.storeCommand(command, at: 3)
        #expect(p.load(fromByteOffset: 0x1000 + 3 * 16, as: UInt64.self) == command.w0)
        #expect(p.load(fromByteOffset: 0x1000 + 3 * 16 + 8, as: UInt64.self) == command.w1)
        #expect(region.loadCommand(at: 0x100 | 3) == command)
    }
}
