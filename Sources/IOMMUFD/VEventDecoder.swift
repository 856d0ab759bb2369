import CIOMMUFD
import PSMMU
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
/// is itself the lost-events header (the drop that queued it). (Checked against the kernel:
/// `struct iommufd_vevent_header { __u32 flags; __u32 sequence; }`; `iommufd_viommu_report_event` queues
/// the `lost_events_header` when `num_events == depth`; `iommufd_vevent_handler` numbers every item
/// `sequence = (sequence + 1) & INT_MAX` and takes the header off the tail when the next item is queued,
/// so a loss reads back as that header, or as a gap before the next event.)
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
    /// Whether ``expectedSequence`` is known: `false` for a queue read first by another process (a
    /// vEVENTQ re-adopted after a restart), whose first item then only sets the expected sequence.
    public private(set) var isSynchronized: Bool

    /// A decoder for a new vEVENTQ (first sequence 0), or with `synchronized` `false` for one already
    /// read by someone else, whose next sequence number is unknown.
    public init(synchronized: Bool = true) {
        isSynchronized = synchronized
    }

    /// Decodes the bytes of one `read(2)`, appending the event records to `events`.
    ///
    /// Bytes after the last whole vEVENT (which the kernel never returns) are ignored.
    /// - Returns: the number of events lost before and among these.
    @discardableResult
    public mutating func decode(_ bytes: UnsafeRawBufferPointer, into events: inout [EventRecord]) -> UInt64 {
        var lost: UInt64 = 0
        forEachItem(in: bytes) { record, lostBefore in
            lost += lostBefore
            if let record { events.append(record) }
        }
        return lost
    }

    /// Decodes the bytes of one `read(2)` of `viommu`'s vEVENTQ into the batches a
    /// ``ViommuEventSink`` gets: records join `batches.last` (an empty array starts one) until a loss,
    /// which starts a new batch with ``ViommuEvents/lostBefore`` set (a lone LOST_EVENTS header makes a
    /// batch of no record).
    /// - Returns: the records decoded and the events lost before and among them.
    @discardableResult
    public mutating func decode(_ bytes: UnsafeRawBufferPointer, viommu: ViommuHandle,
                                into batches: inout [ViommuEvents]) -> (records: Int, lost: UInt64) {
        var records = 0
        var lost: UInt64 = 0
        forEachItem(in: bytes) { record, lostBefore in
            lost += lostBefore
            if lostBefore > 0 || batches.isEmpty {
                if let last = batches.last, last.records.isEmpty, last.viommu == viommu {
                    // A loss right after a loss (or a first item): one batch.
                    batches[batches.count - 1].lostBefore = last.lostBefore || lostBefore > 0
                } else {
                    batches.append(ViommuEvents(viommu: viommu, records: [], lostBefore: lostBefore > 0))
                }
            }
            if let record {
                batches[batches.count - 1].records.append(record)
                records += 1
            }
        }
        return (records, lost)
    }

    /// Calls `body` for each whole item of `bytes`: its record (`nil` for the LOST_EVENTS header) and
    /// the events lost just before it (its distance from the expected sequence number, plus one for a
    /// LOST_EVENTS header: the drop that queued it).
    private mutating func forEachItem(in bytes: UnsafeRawBufferPointer, _ body: (EventRecord?, UInt64) -> Void) {
        var offset = 0
        let sequenceMask = UInt32(Int32.max)
        while bytes.count - offset >= Self.headerSize {
            let flags = Self.littleEndianUInt32(bytes, at: offset)
            let sequence = Self.littleEndianUInt32(bytes, at: offset + 4)
            let isLostEventsHeader = flags & UInt32(IOMMU_VEVENTQ_FLAG_LOST_EVENTS) != 0
            if !isLostEventsHeader && bytes.count - offset < Self.maximumEventSize { break }
            if !isSynchronized {
                expectedSequence = sequence & sequenceMask
                isSynchronized = true
            }
            var lost = UInt64((sequence &- expectedSequence) & sequenceMask)
            expectedSequence = (sequence &+ 1) & sequenceMask
            offset += Self.headerSize
            if isLostEventsHeader {
                lost += 1
                lostEvents += lost
                body(nil, lost)
                continue
            }
            var record = EventRecord()
            for word in 0..<EventRecord.wordCount {
                record.setWord(word, Self.littleEndianUInt64(bytes, at: offset + word * 8))
            }
            offset += Self.recordSize
            lostEvents += lost
            body(record, lost)
        }
    }

    private static func littleEndianUInt32(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> UInt32 {
        UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    private static func littleEndianUInt64(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> UInt64 {
        UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }
}
