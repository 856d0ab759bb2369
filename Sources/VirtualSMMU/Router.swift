import SMMUv3

/// Why the router refused a guest command. The vSMMU reports it as the SMMU would: `CERROR_ILL` at the
/// command's index, so the VMM can set `CMDQ_CONS.ERR` and leave CONS pointing at it.
public struct RoutingError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: Hashable, Sendable {
        /// The command is illegal on any SMMU.
        case illegal(IllegalCommandReason)
        /// A device-scoped command (ATC_INV, CFGI_CD, CFGI_CD_ALL) names a StreamID that is not
        /// registered: the kernel's `-EIO` for a vSID without a vdevice.
        case unknownStreamID(StreamID)
    }

    /// Index of the command in the guest's batch.
    public var index: Int
    /// The command as the guest wrote it.
    public var command: Command
    public var reason: Reason

    /// The error the guest observes: always `CERROR_ILL`.
    public var queueError: CommandQueueError { .illegal }

    public var description: String {
        switch reason {
        case .illegal(let why): return "command \(index) (\(command.opcode.name)): CERROR_ILL: \(why)"
        case .unknownStreamID(let sid):
            return "command \(index) (\(command.opcode.name)): CERROR_ILL: StreamID 0x\(String(sid, radix: 16)) is not registered"
        }
    }
}

/// What the router does with a refused command.
public enum RoutingPolicy: Hashable, Sendable {
    /// Stop at the first refused command, as an SMMU's command queue does: nothing after it is consumed.
    case stopAtFirstError
    /// Record every refused command and route the rest (replays, diagnostics).
    case continueAfterErrors
}

/// The router's output for one guest batch: for each viommu the ordered commands it must execute, the
/// CMD_SYNC completion points with their per-viommu fences, and the refused commands.
///
/// A `RoutedBatch` is a reusable buffer with reference semantics: ``VSMMU/route(_:into:policy:)``
/// clears it and refills it, keeping its memory, so routing allocates nothing once the buffer has grown
/// to the largest batch. Each viommu's commands sit in one contiguous region, ready to be copied into
/// its ring or handed to a backend as they are. Use one buffer per thread: it is not `Sendable`.
public final class RoutedBatch {
    /// A fence: viommu `viommu` must have completed its first `end` commands of this batch.
    public struct Fence: Hashable, Sendable {
        public var viommu: ViommuIndex
        public var end: Int
        public init(viommu: ViommuIndex, end: Int) {
            self.viommu = viommu
            self.end = end
        }
    }

    /// A CMD_SYNC: complete once every fence in ``RoutedBatch/fences(of:)`` has been reached. It covers
    /// exactly the viommus that received commands since the previous CMD_SYNC (none: it completes at once).
    public struct SyncPoint: Hashable, Sendable {
        /// Index of the CMD_SYNC in the guest's batch.
        public var index: Int
        /// The CMD_SYNC itself (its CS/MSI fields say how the guest wants completion signalled).
        public var command: Command
        /// Range of this sync's fences in ``RoutedBatch/fences``.
        public var fenceRange: Range<Int>
    }

    /// The CMD_SYNCs, in guest order.
    public var syncPoints: UnsafeBufferPointer<SyncPoint> { UnsafeBufferPointer(start: hot.pointee.syncs, count: hot.pointee.syncCount) }
    /// The fences of every sync point, concatenated.
    public var fences: UnsafeBufferPointer<Fence> { UnsafeBufferPointer(start: hot.pointee.fences, count: hot.pointee.fenceCount) }
    /// The refused commands (at most one under ``RoutingPolicy/stopAtFirstError``).
    /// (`@exclusivity(unchecked)`: a `RoutedBatch` is used by one thread at a time, like the hot state.)
    @exclusivity(unchecked) public private(set) var errors: [RoutingError] = []
    /// Whether the router refused a command of this batch: ``errors`` is not empty. Read through the hot
    /// state, without the access check a class's stored array costs a caller in another module.
    public var hasErrors: Bool { hot.pointee.hasErrors }
    /// How many guest commands were consumed: the batch's count, or the index of the command that
    /// stopped the queue.
    public var consumed: Int { hot.pointee.consumed }
    /// The viommus that received commands after the last sync point, in this batch or in the batches
    /// routed into this buffer before it: the next CMD_SYNC covers them (its fence for a viommu with no
    /// command of its own batch has `end` 0, so it only waits for what that viommu has queued).
    public var unsynced: ViommuSet { hot.pointee.unsynced }
    /// The viommus that received commands in this batch, and those one of its CMD_SYNCs covered for
    /// commands of an earlier batch (``unsynced``).
    public var touched: ViommuSet { hot.pointee.touched }

    /// Everything the hot path writes, behind one pointer: writes through it need no dynamic
    /// exclusivity check, which a class's stored properties would pay on every access.
    private struct HotState {
        var unsynced = ViommuSet()
        var touched = ViommuSet()
        var consumed = 0
        var hasErrors = false
        /// Per viommu slot, a region of `regionCapacity` commands and their guest indices.
        var commands: UnsafeMutablePointer<Command>
        var guestIndices: UnsafeMutablePointer<UInt32>
        var regionCapacity = 0
        var slots = 0
        var syncs: UnsafeMutablePointer<SyncPoint>
        var syncCount = 0
        var syncCapacity = 0
        var fences: UnsafeMutablePointer<Fence>
        var fenceCount = 0
        var fenceCapacity = 0
    }

    private let hot: UnsafeMutablePointer<HotState>
    private let counts: UnsafeMutablePointer<Int>

    public init() {
        hot = .allocate(capacity: 1)
        hot.initialize(to: HotState(commands: .allocate(capacity: 0), guestIndices: .allocate(capacity: 0),
                                    syncs: .allocate(capacity: 0), fences: .allocate(capacity: 0)))
        counts = .allocate(capacity: VSMMU.maximumViommus)
        counts.initialize(repeating: 0, count: VSMMU.maximumViommus)
    }

    deinit {
        hot.pointee.commands.deallocate()
        hot.pointee.guestIndices.deallocate()
        hot.pointee.syncs.deallocate()
        hot.pointee.fences.deallocate()
        hot.deinitialize(count: 1)
        hot.deallocate()
        counts.deallocate()
    }

    /// The number of commands for one viommu.
    public func count(for viommu: ViommuIndex) -> Int { viommu.index < hot.pointee.slots ? counts[viommu.index] : 0 }

    /// The commands for one viommu, in guest order, in the buffer's own memory: valid until the buffer is
    /// routed into again or freed. Not generic, unlike ``withCommands(for:_:)``: the engine's data path
    /// calls it from another module, where a generic call would pass its result through value witnesses.
    public func commandBuffer(for viommu: ViommuIndex) -> UnsafeBufferPointer<Command> {
        let n = count(for: viommu)
        return UnsafeBufferPointer(start: n == 0 ? nil : hot.pointee.commands + viommu.index * hot.pointee.regionCapacity, count: n)
    }

    /// The guest indices of the commands for one viommu, as ``commandBuffer(for:)`` (same lifetime).
    public func guestIndexBuffer(for viommu: ViommuIndex) -> UnsafeBufferPointer<UInt32> {
        let n = count(for: viommu)
        return UnsafeBufferPointer(start: n == 0 ? nil : hot.pointee.guestIndices + viommu.index * hot.pointee.regionCapacity, count: n)
    }

    /// Calls `body` with the commands for one viommu, in guest order, without copying them.
    public func withCommands<R>(for viommu: ViommuIndex, _ body: (UnsafeBufferPointer<Command>) throws -> R) rethrows -> R {
        try body(commandBuffer(for: viommu))
    }

    /// Calls `body` with the guest indices of the commands for one viommu.
    public func withGuestIndices<R>(for viommu: ViommuIndex, _ body: (UnsafeBufferPointer<UInt32>) throws -> R) rethrows -> R {
        try body(guestIndexBuffer(for: viommu))
    }

    /// The commands for one viommu, copied (empty if it received none).
    public func commands(for viommu: ViommuIndex) -> [Command] { withCommands(for: viommu) { Array($0) } }

    /// The guest indices of the commands for one viommu, copied.
    public func guestIndices(for viommu: ViommuIndex) -> [UInt32] { withGuestIndices(for: viommu) { Array($0) } }

    /// The fences of a sync point.
    public func fences(of sync: SyncPoint) -> UnsafeBufferPointer<Fence>.SubSequence { fences[sync.fenceRange] }

    /// The first refused command, the one at which an SMMU's queue would stop.
    public var firstError: RoutingError? { errors.first }

    /// The total number of commands handed to viommus.
    public var deliveryCount: Int { touched.reduce(0) { $0 + counts[$1.index] } }

    // MARK: Building (the router's hot path)

    /// Clears the buffer for a batch of `batchCount` commands over `viommuSlots` viommu slots, growing
    /// the regions when needed (each viommu may receive every command of the batch, each command may
    /// be a sync with a fence per viommu).
    func reset(viommuSlots: Int, batchCount: Int) {
        for v in hot.pointee.touched { counts[v.index] = 0 }
        hot.pointee.touched = ViommuSet()
        // `unsynced` is kept: a CMD_SYNC covers every viommu that got commands since the previous
        // CMD_SYNC, which may have been in an earlier batch (a VMM cuts the guest's queue where it likes).
        hot.pointee.syncCount = 0
        hot.pointee.fenceCount = 0
        hot.pointee.consumed = 0
        if hot.pointee.hasErrors {
            errors.removeAll(keepingCapacity: true)
            hot.pointee.hasErrors = false
        }
        if batchCount > hot.pointee.regionCapacity || viommuSlots > hot.pointee.slots {
            var capacity = max(hot.pointee.regionCapacity, 64)
            while capacity < batchCount { capacity <<= 1 }
            let slots = max(hot.pointee.slots, viommuSlots)
            hot.pointee.commands.deallocate()
            hot.pointee.guestIndices.deallocate()
            hot.pointee.commands = .allocate(capacity: capacity * slots)
            hot.pointee.guestIndices = .allocate(capacity: capacity * slots)
            hot.pointee.regionCapacity = capacity
            hot.pointee.slots = slots
        }
        if batchCount > hot.pointee.syncCapacity {
            hot.pointee.syncs.deallocate()
            hot.pointee.syncs = .allocate(capacity: hot.pointee.regionCapacity)
            hot.pointee.syncCapacity = hot.pointee.regionCapacity
        }
    }

    /// The router's view of the buffer while it routes one batch: the region pointers in locals, and
    /// the set of viommus that received commands since the last sync kept in a register rather than
    /// written back per command. Made by ``cursor()``, handed back by ``sync(_:at:cursor:)`` and
    /// ``finish(consumed:cursor:)``.
    struct Cursor {
        let commands: UnsafeMutablePointer<Command>
        let guestIndices: UnsafeMutablePointer<UInt32>
        let regionCapacity: Int
        let counts: UnsafeMutablePointer<Int>
        /// The viommus that received commands since the last sync point, as a mask.
        var unsynced: UInt64 = 0

        /// Appends `command` (the batch's `index`-th) to viommu `viommu`'s region.
        @inline(__always)
        mutating func deliver(_ command: Command, to viommu: Int, from index: Int) {
            let n = counts[viommu]
            let slot = viommu &* regionCapacity &+ n
            (commands + slot).initialize(to: command)
            (guestIndices + slot).initialize(to: UInt32(truncatingIfNeeded: index))
            counts[viommu] = n &+ 1
            unsynced |= 1 &<< UInt64(viommu)
        }

        /// Appends `command` to the region of every viommu in the mask `viommus`.
        @inline(__always)
        mutating func deliver(_ command: Command, toEvery viommus: UInt64, from index: Int) {
            var m = viommus
            while m != 0 {
                deliver(command, to: m.trailingZeroBitCount, from: index)
                m &= m &- 1
            }
        }
    }

    /// A cursor over the regions ``reset(viommuSlots:batchCount:)`` prepared.
    func cursor() -> Cursor {
        Cursor(commands: hot.pointee.commands, guestIndices: hot.pointee.guestIndices,
               regionCapacity: hot.pointee.regionCapacity, counts: counts, unsynced: hot.pointee.unsynced.mask)
    }

    /// Closes a sync point at `index`: one fence per viommu the cursor delivered to since the last one.
    func sync(_ command: Command, at index: Int, cursor: inout Cursor) {
        let unsynced = ViommuSet(mask: cursor.unsynced)
        hot.pointee.touched.mask |= unsynced.mask
        let start = hot.pointee.fenceCount
        if !unsynced.isEmpty {
            if start + unsynced.count > hot.pointee.fenceCapacity { growFences(adding: unsynced.count) }
            var i = start
            for v in unsynced {
                (hot.pointee.fences + i).initialize(to: Fence(viommu: v, end: counts[v.index]))
                i &+= 1
            }
            hot.pointee.fenceCount = i
            cursor.unsynced = 0
        }
        (hot.pointee.syncs + hot.pointee.syncCount).initialize(
            to: SyncPoint(index: index, command: command, fenceRange: start..<hot.pointee.fenceCount))
        hot.pointee.syncCount &+= 1
    }

    private func growFences(adding n: Int) {
        let capacity = max(64, (hot.pointee.fenceCount + n) * 2)
        let grown = UnsafeMutablePointer<Fence>.allocate(capacity: capacity)
        grown.moveInitialize(from: hot.pointee.fences, count: hot.pointee.fenceCount)
        hot.pointee.fences.deallocate()
        hot.pointee.fences = grown
        hot.pointee.fenceCapacity = capacity
    }

    func fail(_ error: RoutingError) {
        errors.append(error)
        hot.pointee.hasErrors = true
    }

    func finish(consumed: Int, cursor: Cursor) {
        hot.pointee.consumed = consumed
        hot.pointee.unsynced = ViommuSet(mask: cursor.unsynced)
        // Touched are the viommus with commands of this batch (and, through `sync`, those a CMD_SYNC
        // covered); one carried unsynced from an earlier batch and not reached by this one is not.
        var unsynced = cursor.unsynced
        while unsynced != 0 {
            let v = unsynced.trailingZeroBitCount
            unsynced &= unsynced &- 1
            if counts[v] > 0 { hot.pointee.touched.mask |= 1 &<< UInt64(v) }
        }
    }
}

extension VSMMU {
    /// Routes a batch of guest commands, in order, into `output` (cleared first, capacity kept).
    ///
    /// Rules (the seed discussion and the kernel's `arm_vsmmu_convert_user_cmd`):
    /// - ATC_INV, CFGI_CD, CFGI_CD_ALL go to the one viommu of their StreamID; an unregistered StreamID
    ///   is refused (CERROR_ILL, like the kernel's `-EIO`).
    /// - CFGI_STE, CFGI_STE_RANGE, CFGI_ALL are counted and not forwarded: the VMM re-reads the STE and
    ///   relinks it, which is what updates the vSMMU's copy; the command never touches the vSTE table.
    /// - TLBI_NH_ASID and TLBI_NH_VA go to the viommus in the ASID's target set (``ASIDIndex``), possibly
    ///   none. A routed TLBI_NH_ASID ends the ASID's retirement on the viommus it reached.
    /// - TLBI_NH_ALL, TLBI_NH_VAA, TLBI_NSNH_ALL and TLBI_S12_VMALL go to every viommu; all but NH_VAA end
    ///   every retirement. TLBI_S12_VMALL is forwarded as TLBI_NH_ALL: stage 2 belongs to the host and
    ///   the kernel refuses S2 TLBIs on a viommu, while NH_ALL is exactly the guest-visible half.
    /// - CMD_SYNC is never forwarded: it becomes a ``RoutedBatch/SyncPoint`` covering every viommu that
    ///   received commands since the previous one.
    /// - PREFETCH_*, EL2/EL3 TLBIs, TLBI_S2_IPA, PRI_RESP, RESUME, STALL_TERM: accepted, counted, not forwarded.
    /// - Illegal commands (``Command/validate()``) are refused with CERROR_ILL.
    ///
    /// Each viommu's commands keep the guest's order. Refused commands follow `policy`.
    public mutating func route(_ batch: UnsafeBufferPointer<Command>, into output: RoutedBatch,
                               policy: RoutingPolicy = .stopAtFirstError) {
        output.reset(viommuSlots: viommus.count, batchCount: batch.count)
        var cursor = output.cursor()
        // The ASID-routed commands (nearly every command of a guest's batch) are counted in two locals;
        // the rest of their counters are derived once at the end (`finish`). Counters kept in `self`
        // would be reloaded and stored around every delivery, which writes through raw pointers.
        var asidRouted: UInt64 = 0
        var asidWithoutTarget: UInt64 = 0
        let broadcastBefore = counters.broadcast
        let deviceRoutedBefore = counters.deviceRouted
        let all = attachedViommus.mask
        var index = 0
        let n = batch.count
        var consumed = n
        routing: while index < n {
            let command = batch[index]
            let opcode = command.opcode
            if opcode.isRoutedByASID {
                // The run of them starting here goes through a tight loop; it stops before a command
                // that reaches a viommu its ASID is retiring from, which the code below handles.
                let end = asidIndex.withTargetTable { table in
                    Self.routeASIDRun(batch, from: index, table: table, all: all, cursor: &cursor,
                                      asidRouted: &asidRouted, asidWithoutTarget: &asidWithoutTarget)
                }
                if end > index {
                    index = end
                    continue
                }
                // The run stopped at once: this command's ASID is retiring from some of its targets.
                let asid = command.asid
                let targets = asidIndex.targets(of: asid).mask & all
                asidRouted &+= 1
                if targets == 0 { asidWithoutTarget &+= 1 }
                cursor.deliver(command, toEvery: targets, from: index)
                let retiring = targets & ~asidIndex.liveViommus(of: asid).mask
                if retiring != 0 { endRetirement(opcode, asid: asid, retiring: retiring) }
                index &+= 1
                continue
            }
            switch opcode.rawValue {
            case Opcode.sync.rawValue:
                if let illegal = command.validate() {  // CS = 0b11
                    if refuse(command, at: index, .illegal(illegal.reason), into: output, policy) {
                        consumed = index
                        break routing
                    }
                    break
                }
                counters.syncs &+= 1
                output.sync(command, at: index, cursor: &cursor)
            case Opcode.tlbiNHAll.rawValue, Opcode.tlbiNHVAA.rawValue, Opcode.tlbiNSNHAll.rawValue, Opcode.tlbiS12VMAll.rawValue:
                counters.broadcast &+= 1
                let forwarded = opcode == .tlbiS12VMAll ? Command.tlbiNHAll(vmid: command.vmid) : command
                cursor.deliver(forwarded, toEvery: all, from: index)
                if opcode != .tlbiNHVAA && asidIndex.hasRetiringASIDs {
                    counters.retirementsEnded &+= asidIndex.invalidatedAll(on: ViommuSet(mask: all))
                }
            case Opcode.atcInv.rawValue, Opcode.cfgiCD.rawValue, Opcode.cfgiCDAll.rawValue:
                if let illegal = command.validate() {  // SSEC on the non-secure queue
                    if refuse(command, at: index, .illegal(illegal.reason), into: output, policy) {
                        consumed = index
                        break routing
                    }
                    break
                }
                let sid = command.streamID
                guard let v = streamTable.viommu(of: sid) else {
                    if refuse(command, at: index, .unknownStreamID(sid), into: output, policy) {
                        consumed = index
                        break routing
                    }
                    break
                }
                cursor.deliver(command, to: v.index, from: index)
                counters.deviceRouted &+= 1
            default:
                if let illegal = command.validate() {
                    if refuse(command, at: index, .illegal(illegal.reason), into: output, policy) {
                        consumed = index
                        break routing
                    }
                    break
                }
                // Defined, legal and not forwarded by rule: CFGI_STE*, PREFETCH_*, EL2/EL3 TLBIs,
                // TLBI_S2_IPA, PRI_RESP, RESUME, STALL_TERM.
                if opcode == .cfgiSTE || opcode == .cfgiSTERange { counters.configSTEInvalidations &+= 1 }
                counters.droppedByOpcode[opcode.rawValue, default: 0] &+= 1
            }
            index += 1
        }
        finish(output, consumed: consumed, cursor: cursor, received: UInt64(consumed < n ? consumed + 1 : n),
               asidRouted: asidRouted, asidWithoutTarget: asidWithoutTarget,
               broadcast: counters.broadcast &- broadcastBefore, deviceRouted: counters.deviceRouted &- deviceRoutedBefore,
               viommuCount: UInt64(all.nonzeroBitCount))
    }

    /// Routes the TLBI_NH_ASID / TLBI_NH_VA commands of `batch` from `start` on, up to the first command
    /// of another kind or one that reaches a viommu its ASID is retiring from (left undelivered), and
    /// returns where it stopped. The router's hot loop: kept apart so that its few live values stay in
    /// registers.
    @inline(__always)
    private static func routeASIDRun(_ batch: UnsafeBufferPointer<Command>, from start: Int,
                                     table: ASIDIndex.TargetTable, all: UInt64, cursor: inout RoutedBatch.Cursor,
                                     asidRouted: inout UInt64, asidWithoutTarget: inout UInt64) -> Int {
        var index = start
        let n = batch.count
        // `table` has a mask pair for every 16-bit ASID: no lookup below can be out of bounds.
        while index < n {
            let command = batch[index]
            guard command.opcode.isRoutedByASID else { break }
            let (targets, retiring) = table.route(command.asid, within: all)
            if retiring { break }  // retiring from some of its targets
            if targets == 0 {
                asidWithoutTarget &+= 1
            } else {
                cursor.deliver(command, toEvery: targets, from: index)
            }
            index &+= 1
        }
        asidRouted &+= UInt64(index &- start)
        return index
    }

    /// An ASID-routed command reached viommus the ASID is retiring from: count it, and end the
    /// retirement there if it is a TLBI_NH_ASID.
    private mutating func endRetirement(_ opcode: Opcode, asid: ASID, retiring: UInt64) {
        let n = UInt64(retiring.nonzeroBitCount)
        counters.retiringDeliveries &+= n
        if opcode == .tlbiNHASID {
            counters.retirementsEnded &+= n
            asidIndex.invalidated(asid: asid, on: ViommuSet(mask: retiring))
        }
    }

    /// Closes a routed batch: records how many commands were consumed (`received` of them looked at,
    /// counting one that stopped the queue) and adds the batch's counts to ``counters``, deriving
    /// what the loop did not count: every delivery that was not one of the `broadcast` commands' or the
    /// `deviceRouted` commands' is an ASID-routed one, and each ASID-routed command avoided a broadcast to the
    /// `viommuCount` viommus it did not reach.
    private mutating func finish(_ output: RoutedBatch, consumed: Int, cursor: RoutedBatch.Cursor, received: UInt64,
                                 asidRouted: UInt64, asidWithoutTarget: UInt64, broadcast: UInt64, deviceRouted: UInt64,
                                 viommuCount: UInt64) {
        output.finish(consumed: consumed, cursor: cursor)
        var delivered: UInt64 = 0
        for v in output.touched {
            let n = UInt64(output.count(for: v))
            delivered &+= n
            counters.deliveriesPerViommu[v.index] &+= n
        }
        counters.deliveries &+= delivered
        let asidDeliveries = delivered &- broadcast &* viommuCount &- deviceRouted
        counters.received &+= received
        counters.asidRouted &+= asidRouted
        counters.asidWithoutTarget &+= asidWithoutTarget
        counters.asidRoutedDeliveries &+= asidDeliveries
        counters.broadcastsAvoided &+= asidRouted &* viommuCount &- asidDeliveries
    }

    /// Routes a batch held in an array (see ``route(_:into:policy:)``).
    public mutating func route(_ batch: [Command], into output: RoutedBatch,
                               policy: RoutingPolicy = .stopAtFirstError) {
        batch.withUnsafeBufferPointer { route($0, into: output, policy: policy) }
    }

    /// Records a refused command. Returns `true` when routing must stop there.
    @inline(__always)
    private mutating func refuse(_ command: Command, at index: Int, _ reason: RoutingError.Reason,
                                 into output: RoutedBatch, _ policy: RoutingPolicy) -> Bool {
        switch reason {
        case .illegal: counters.illegalCommands &+= 1
        case .unknownStreamID: counters.unknownStreamID &+= 1
        }
        output.fail(RoutingError(index: index, command: command, reason: reason))
        return policy == .stopAtFirstError
    }
}

extension Opcode {
    /// TLBI_NH_ASID or TLBI_NH_VA: the commands routed by their ASID's target set. One subtraction and
    /// compare, since their opcodes are adjacent (0x11, 0x12).
    @inline(__always)
    var isRoutedByASID: Bool { rawValue &- Opcode.tlbiNHASID.rawValue < 2 }
}
