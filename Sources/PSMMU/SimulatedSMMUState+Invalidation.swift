import SMMUv3
import SystemPackage

extension SimulatedSMMUState {
    /// What one `invalidate` call did, and until when its cost runs.
    struct InvalidationOutcome {
        var result: InvalidationResult
        /// When the call may return (since `CostWait.origin`); `nil` when the cost model is free.
        var deadline: Duration?
        var spinNanoseconds: UInt64 = 0
    }

    /// Processes `commands` on `viommu` in order, as the kernel and the SMMU would: each command is
    /// converted (``ViommuCommandConversion``), checked against the armed faults and executed; the first
    /// refused or failed command stops the batch. A command the SMMU finds illegal after the kernel let
    /// it through is skipped (`arm_smmu_cmdq_skip_err`) and the batch goes on.
    ///
    /// An unknown viommu fails the whole batch before any command is read (`iommufd_hwpt_invalidate`:
    /// `iommufd_get_object` → ENOENT), which the guest must see as `CERROR_ABT`, as
    /// `CommandQueueError(iommufdInvalidationErrno:)` maps ENOENT.
    /// A viommu of another tenant is an unknown one.
    mutating func invalidate(viommu: ViommuHandle, tenant: TenantID, commands: UnsafeBufferPointer<Command>) -> InvalidationOutcome {
        tally.calls += 1
        tally.received += UInt64(commands.count)
        let cached = lastInvalidated.flatMap { $0.handle == viommu ? $0 : nil }
        guard let record = cached ?? viommus[viommu], record.tenant == tenant else {
            tally.failed += commands.isEmpty ? 0 : 1
            let failure = InvalidationFailure(queueError: .abort, errno: Errno.noSuchFileOrDirectory.rawValue,
                                              message: "\(viommu) is not a viommu of this pSMMU")
            return InvalidationOutcome(result: InvalidationResult(completed: 0, failure: commands.isEmpty ? nil : failure))
        }
        lastInvalidated = record
        let vmid = record.vmid
        let checkFaults = !faults.isEmpty
        let base = record.processed
        var result = InvalidationResult(completed: commands.count)

        // Per-opcode counts are gathered per run of equal opcodes (guest batches are runs of one kind)
        // rather than per command: the tally's arrays cost a uniqueness check on every write.
        var runOpcode: UInt8 = 0
        var runLength: UInt64 = 0
        var start = 0
        if !checkFaults && tlb.count == 0 {
            // Fast path, same outcome: a stage-1 TLBI always converts (the kernel only writes the VMID)
            // and removes nothing from an empty TLB, so the leading TLBIs only need counting.
            let convertsToStage1TLBI = ViommuCommandConversion.convertsToStage1TLBI
            while start < commands.count {
                let opcode = commands[start].opcode.rawValue
                guard convertsToStage1TLBI[Int(opcode)] else { break }
                if opcode != runOpcode {
                    if runLength > 0 { tally.byOpcode[Int(runOpcode)] &+= runLength }
                    runOpcode = opcode
                    runLength = 0
                }
                runLength &+= 1
                start += 1
            }
        }
        // Only device-scoped commands need the vSID map (a batch of TLBIs never gets here).
        let physicalStreamIDs = start < commands.count ? record.physicalStreamIDs : [:]
        // A converted stage-1 TLBI is always legal; only device-scoped commands are checked.
        let isStage1TLBI = ViommuCommandConversion.convertsToStage1TLBI
        commandLoop: for index in start..<commands.count {
            let command = commands[index]
            let opcode = command.opcode
            let position = base &+ UInt64(index)
            let physical: Command
            switch ViommuCommandConversion.convert(command, opcode: opcode, vmid: vmid, physicalStreamIDs: physicalStreamIDs,
                                                   atsSupported: atsSupported) {
            case .success(let converted):
                physical = converted
            case .failure(let rejection):
                model.commandsRejected += 1
                result = InvalidationResult(completed: index, failure: InvalidationFailure(
                    queueError: .illegal, errno: Errno.ioError.rawValue, message: rejection.message(viommu: viommu)))
                break commandLoop
            }
            if checkFaults, let error = fireFault(viommu: viommu, position: position, command: command) {
                model.faultsInjected += 1
                result = InvalidationResult(completed: index, failure: InvalidationFailure(
                    queueError: error,
                    message: "injected \(error) on \(opcode.name), command #\(position) of \(viommu)"))
                break commandLoop
            }
            if !isStage1TLBI[Int(opcode.rawValue)], physical.validate() != nil {
                // CERROR_ILL at this command: `arm_smmu_cmdq_skip_err` replaces it with a CMD_SYNC and
                // the queue resumes, so the ioctl returns 0 having done nothing for it.
                model.illegalCommandsSkipped += 1
                continue
            }
            execute(physical, vmid: vmid, space: record.space, received: opcode.rawValue)
            if opcode.rawValue != runOpcode {
                if runLength > 0 { tally.byOpcode[Int(runOpcode)] &+= runLength }
                runOpcode = opcode.rawValue
                runLength = 0
            }
            runLength &+= 1
        }
        if runLength > 0 { tally.byOpcode[Int(runOpcode)] &+= runLength }

        let processed = result.failure == nil ? commands.count : result.completed + 1
        record.processed = base &+ UInt64(processed)
        tally.completed += UInt64(result.completed)
        if result.failure != nil { tally.failed += 1 }
        return InvalidationOutcome(result: result, deadline: chargeCost(commands: processed),
                                   spinNanoseconds: costModel.spinNanoseconds)
    }

    /// Applies one physical command to the caches. Only the opcodes ``ViommuCommandConversion`` lets
    /// through reach here; TLBIs carry `vmid` (the conversion wrote it). An empty TLB holds nothing a
    /// TLBI could remove, so the address span is only decoded when there are entries.
    @inline(__always)
    /// ATC_INV and CFGI_CD* reach the caches of `space`, the viommu's tenant's (the pSID names a device of
    /// that tenant).
    private mutating func execute(_ command: Command, vmid: VMID, space: TenantSpace, received opcode: UInt8) {
        switch command.opcode {
        case .tlbiNHAll:
            guard tlb.count > 0 else { return }
            tally.tlbInvalidatedByOpcode[Int(opcode)] &+= UInt64(tlb.invalidate(vmid: vmid))
        case .tlbiNHASID:
            guard tlb.count > 0 else { return }
            tally.tlbInvalidatedByOpcode[Int(opcode)] &+= UInt64(tlb.invalidate(vmid: vmid, asid: command.asid))
        case .tlbiNHVA:
            guard tlb.count > 0 else { return }
            let span = ViommuCommandConversion.tlbiSpan(command)
            let n = tlb.invalidate(vmid: vmid, asid: command.asid, first: span.first, last: span.last)
            tally.tlbInvalidatedByOpcode[Int(opcode)] &+= UInt64(n)
        case .tlbiNHVAA:
            guard tlb.count > 0 else { return }
            let span = ViommuCommandConversion.tlbiSpan(command)
            let n = tlb.invalidateAllASIDs(vmid: vmid, first: span.first, last: span.last)
            tally.tlbInvalidatedByOpcode[Int(opcode)] &+= UInt64(n)
        case .atcInv:
            let span = ViommuCommandConversion.atcSpan(command)
            let n = space.atc.invalidate(streamID: command.streamID, substreamID: command.ssv ? command.substreamID : nil,
                                   first: span.first, last: span.last)
            model.atcEntriesInvalidated += UInt64(n)
        case .cfgiCD:
            tally.configInvalidatedByOpcode[Int(opcode)] &+= UInt64(space.config.dropCD(command.streamID, command.substreamID))
        case .cfgiCDAll:
            tally.configInvalidatedByOpcode[Int(opcode)] &+= UInt64(space.config.dropCDs(command.streamID))
        default:
            break
        }
    }

    /// The error of the first armed fault that fires for `command`, consuming one of its shots.
    private mutating func fireFault(viommu: ViommuHandle, position: UInt64, command: Command) -> CommandQueueError? {
        guard let i = faults.firstIndex(where: { $0.fires(viommu: viommu, position: position, command: command) }) else {
            return nil
        }
        let error = faults[i].error
        if let remaining = faults[i].remaining {
            if remaining <= 1 { faults.remove(at: i) } else { faults[i].remaining = remaining - 1 }
        }
        return error
    }

    /// Charges a call of `commands` commands to the cost model. - Returns: when the call may return.
    private mutating func chargeCost(commands: Int) -> Duration? {
        guard !costModel.isFree else { return nil }
        let now = CostWait.now
        let callDone = now + .nanoseconds(Int64(clamping: costModel.nanosecondsPerCall))
        let commandTime = Duration.nanoseconds(Int64(clamping: costModel.nanosecondsPerCommand &* UInt64(commands)))
        model.costNanoseconds &+= costModel.nanosecondsPerCall &+ costModel.nanosecondsPerCommand &* UInt64(commands)
        guard costModel.sharesCommandQueue else { return callDone + commandTime }
        let start = max(callDone, queueBusyUntil ?? callDone)
        queueBusyUntil = start + commandTime
        return start + commandTime
    }
}
