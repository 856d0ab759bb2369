import CIOMMUFD
import PSMMU
import SMMUv3
import SystemPackage
import VSMMUSystem

extension KernelState {
    /// `EVTQ_1_STALL`, `w1[31]`: the transaction is stalled, awaiting a RESUME (the IOPF path).
    static let eventStall = EventRecord.Field.stall
    /// `EVTQ_1_S2`, `w1[39]`: the fault is of stage 2.
    static let eventStage2 = EventRecord.Field.stage2

    /// The event types `arm_smmu_handle_event` handles; it returns -EOPNOTSUPP for the rest.
    static let handledEvents = Set(ViommuEventForwarding.forwardedIDs)

    /// `arm_smmu_evtq_thread` → `arm_smmu_handle_event` for a record the pSMMU wrote to its event
    /// queue: a handled type, not stalled, from a device (`arm_smmu_find_master`) with a vmaster and
    /// not of stage 2 goes to `arm_vmaster_report_event`, which replaces the SID by the vSID and queues
    /// it on the viommu's ARM_SMMUV3 vEVENTQ (`iommufd_viommu_report_event`).
    mutating func raiseEvent(pSMMU: Int, _ record: EventRecord) -> EventDisposition {
        guard Self.handledEvents.contains(record.id) else { return .notForwarded(.unhandledEventType(record.id)) }
        let streamID = record.streamID
        guard let hostDevice = hostDevices.indices.first(where: {
            hostDevices[$0].pSMMU == pSMMU && hostDevices[$0].streamID == streamID
        }) else { return .notForwarded(.unknownStreamID(streamID)) }
        if record[flag: Self.eventStall] { return .notForwarded(.stall) }
        guard kernel.hasEventQueues else { return .notForwarded(.kernelWithoutEventQueues) }
        let master = objects.values.lazy.compactMap { object -> VirtualMaster? in
            if case .device(let device) = object, device.hostDevice == hostDevice { return device.vmaster }
            return nil
        }.first
        guard let vmaster = master else { return .notForwarded(.noVirtualMaster) }
        if record[flag: Self.eventStage2] { return .notForwarded(.stage2) }

        var virtual = record
        virtual.streamID = vmaster.virtualStreamID
        let type = UInt32(IOMMU_VEVENTQ_TYPE_ARM_SMMUV3)
        guard let (id, _) = objects.first(where: {
            if case .veventq(let queue) = $0.value { return queue.viommu == vmaster.viommu && queue.type == type }
            return false
        }) else { return .notForwarded(.noEventQueue) }
        var data: [UInt8] = []
        for word in 0 ..< EventRecord.wordCount { data += UserMemory.littleEndianBytes(virtual.word(word)) }
        var lost = false
        update(veventq: id) { queue in
            if queue.numEvents == queue.depth {
                lost = true
                queue.deliverHandler(QueuedVEvent(sequence: 0, data: nil))
            } else {
                queue.numEvents += 1
                queue.deliverHandler(QueuedVEvent(sequence: 0, data: data))
            }
        }
        return lost ? .lost(veventq: id) : .queued(veventq: id, virtualStreamID: vmaster.virtualStreamID)
    }

    /// `iommufd_veventq_fops_read`: whole vEVENTs only, each a `struct iommufd_vevent_header` and, but
    /// for the lost-events header, its record; it stops at the first one that does not fit and returns
    /// what it copied, 0 when nothing fits or the queue is empty (it does not block).
    mutating func readEvents(descriptor: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, Errno> {
        guard case .veventq(let id)? = descriptors[descriptor] else { return .failure(.badFileDescriptor) }
        var done = 0
        let headerSize = MemoryLayout<iommufd_vevent_header>.size
        update(veventq: id) { queue in
            while let next = queue.deliver.first {
                let length = headerSize + (next.data?.count ?? 0)
                guard buffer.count - done >= length else { break }
                queue.deliver.removeFirst()
                var header = iommufd_vevent_header()
                header.flags = next.data == nil ? UInt32(IOMMU_VEVENTQ_FLAG_LOST_EVENTS).littleEndian : 0
                header.sequence = next.sequence.littleEndian
                withUnsafeBytes(of: header) { raw in
                    UnsafeMutableRawBufferPointer(rebasing: buffer[done ..< done + headerSize]).copyMemory(from: raw)
                }
                if let data = next.data {
                    UnsafeMutableRawBufferPointer(rebasing: buffer[done + headerSize ..< done + length]).copyBytes(from: data)
                    queue.numEvents -= 1
                }
                done += length
            }
            if queue.deliver.isEmpty, let readiness = queue.readiness { _ = try? SystemCall.readEventNoWait(readiness) }
        }
        return .success(done)
    }
}

extension VEventQueueObject {
    /// `iommufd_vevent_handler`: the lost-events header, if it is the last item, is taken out; the new
    /// item (which may be the lost-events header again, for a sequence update) goes to the tail with
    /// the next sequence number in `[0, INT_MAX]`.
    mutating func deliverHandler(_ item: QueuedVEvent) {
        // The list goes from empty to not empty: the file polls readable (`wake_up_interruptible`).
        if deliver.isEmpty, let readiness { _ = try? SystemCall.writeEvent(readiness) }
        if deliver.last?.data == nil, !deliver.isEmpty { deliver.removeLast() }
        var item = item
        item.sequence = sequence
        deliver.append(item)
        sequence = (sequence &+ 1) & UInt32(Int32.max)
    }
}
