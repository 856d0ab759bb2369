import CIOMMUFD
import SMMUv3

/// Decodes what `read(2)` on an ARM SMMUv3 vEVENTQ descriptor returns, and counts the events the
/// queue lost.
///
/// The kernel (`iommufd_veventq_fops_read`) returns whole vEVENTs only, each a
/// `struct iommufd_vevent_header { u32 flags; u32 sequence; }` followed by a
/// `struct iommu_vevent_arm_smmuv3 { le64 evt[4]; }` (the SID already replaced by the vSID), or a
/// lone header flagged `IOMMU_VEVENTQ_FLAG_LOST_EVENTS` when the queue overflowed.
///
/// Every queued item, the lost-events header included, takes the next sequence number in
/// `[0, INT_MAX]`, wrapping to 0; each dropped event re-queues the lost-events header with a new number.
/// So the events lost before an item are its distance from the expected number, plus one when the item
/// is itself the lost-events header (the drop that queued it).
public struct VEventDecoder: Hashable, Sendable {
    /// Size of the header of every vEVENT.
    public static let headerSize = MemoryLayout<iommufd_vevent_header>.size
    /// Size of an ARM SMMUv3 vEVENT's payload, one event record.
    public static let recordSize = MemoryLayout<iommu_vevent_arm_smmuv3>.size
    /// The largest vEVENT a read returns.
    public static let maximumEventSize = headerSize + recordSize

    /// The sequence number the next item should carry (a new vEVENTQ starts at 0).
    public private(set) var expectedSequence: UInt32 = 0
    /// Events lost since the queue was allocated.
    public private(set) var lostEvents: UInt64 = 0

    public init() {}

    /// Decodes the bytes of one `read(2)`, appending the event records to `events`.
    ///
    /// Bytes after the last whole vEVENT (which the kernel never returns) are ignored.
    /// - Returns: the number of events lost before and among these.
    @discardableResult
    public mutating func decode(_ bytes: UnsafeRawBufferPointer, into events: inout [EventRecord]) -> UInt64 {
        var offset = 0
        var lost: UInt64 = 0
        let sequenceMask = UInt32(Int32.max)
        while bytes.count - offset >= Self.headerSize {
            let flags = Self.littleEndianUInt32(bytes, at: offset)
            let sequence = Self.littleEndianUInt32(bytes, at: offset + 4)
            let isLostEventsHeader = flags & UInt32(IOMMU_VEVENTQ_FLAG_LOST_EVENTS) != 0
            if !isLostEventsHeader && bytes.count - offset < Self.maximumEventSize { break }
            lost += UInt64((sequence &- expectedSequence) & sequenceMask)
            expectedSequence = (sequence &+ 1) & sequenceMask
            offset += Self.headerSize
            if isLostEventsHeader {
                lost += 1
                continue
            }
            var record = EventRecord()
            for word in 0..<EventRecord.wordCount {
                record.setWord(word, Self.littleEndianUInt64(bytes, at: offset + word * 8))
            }
            events.append(record)
            offset += Self.recordSize
        }
        lostEvents += lost
        return lost
    }

    private static func littleEndianUInt32(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> UInt32 {
        UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    private static func littleEndianUInt64(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> UInt64 {
        UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }
}
