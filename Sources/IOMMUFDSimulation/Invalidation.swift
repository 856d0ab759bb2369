import CIOMMUFD
import SMMUv3
import SystemPackage

extension KernelState {
    /// `CMDQ_BATCH_ENTRIES - 1`: `arm_vsmmu_cache_invalidate` issues (and syncs) the converted commands
    /// in chunks of this many. `CMDQ_BATCH_ENTRIES` is `BITS_PER_LONG`, 64 on every arm64 kernel.
    ///
    /// Deliberately the model's own constant, not `HWPTInvalidateOutcome.kernelChunkEntries`: the
    /// model stands for the kernel the backend's reading of `entry_num` is tested against.
    static let commandChunk = 64 - 1

    /// `iommufd_hwpt_invalidate`: `entry_num` is written back on success and on failure (`done_num`,
    /// 0 unless the driver reported a count).
    mutating func hwptInvalidate(_ bytes: inout [UInt8]) -> Errno? {
        var cmd = UserMemory.load(iommu_hwpt_invalidate.self, from: bytes)
        var done: UInt32 = 0
        defer {
            cmd.entry_num = done
            UserMemory.store(cmd, into: &bytes)
        }
        if cmd.__reserved != 0 { return .operationNotSupported }
        if cmd.entry_num != 0 && (cmd.data_uptr == 0 || cmd.entry_len == 0) { return .invalidArgument }
        guard let pt = objects[cmd.hwpt_id] else { return .noSuchFileOrDirectory }
        switch pt {
        case .viommu:
            let (errno, handled) = armVSMMUCacheInvalidate(viommu: cmd.hwpt_id, cmd)
            done = handled
            return errno
        case .nested:
            // arm_smmu_nested_ops has no cache_invalidate_user: invalidations go through the viommu.
            return .operationNotSupported
        default:
            return .invalidArgument
        }
    }

    /// `arm_vsmmu_cache_invalidate`: copies the whole array
    /// (`iommu_copy_struct_from_full_user_array`), then converts each command in place
    /// (`arm_vsmmu_convert_user_cmd`) and issues the converted ones in chunks of ``commandChunk``
    /// (`arm_smmu_cmdq_issue_cmdlist(…, sync = true)`), each chunk once its last command is converted.
    ///
    /// A command it refuses stops the walk with `EIO` and `entry_num` = its index; the commands of its
    /// chunk before it were converted but never issued. The chunks before it completed.
    /// - Returns: the errno and `array->entry_num` (`cur - cmds`).
    mutating func armVSMMUCacheInvalidate(viommu id: UInt32, _ cmd: iommu_hwpt_invalidate) -> (Errno?, UInt32) {
        guard let viommu = viommu(id) else { return (.noSuchFileOrDirectory, 0) }
        let count = Int(cmd.entry_num)
        // iommu_copy_struct_from_full_user_array: the type, then entry_num 0, are EINVAL.
        guard cmd.data_type == UInt32(IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3) else { return (.invalidArgument, 0) }
        guard count > 0 else { return (.invalidArgument, 0) }
        let entrySize = MemoryLayout<iommu_viommu_arm_smmuv3_invalidate>.size
        var commands: [Command] = []
        commands.reserveCapacity(count)
        // Entry by entry with copy_struct_from_user: a shorter entry is zero-extended, a longer one
        // must be zero past 16 bytes (else E2BIG).
        let entryLength = Int(cmd.entry_len)
        for index in 0 ..< count {
            let user: [UInt8]
            switch UserMemory.read(cmd.data_uptr &+ UInt64(index * entryLength), count: entryLength) {
            case .success(let bytes): user = bytes
            case .failure(let errno): return (errno, 0)
            }
            switch UserMemory.copyStruct(kernelSize: entrySize, from: user) {
            case .success(let entry):
                commands.append(Command(w0: UserMemory.littleEndianUInt64(entry[0 ..< 8]),
                                        w1: UserMemory.littleEndianUInt64(entry[8 ..< 16])))
            case .failure(let errno):
                return (errno, 0)
            }
        }

        var current = 0, last = 0
        while current != count {
            guard let physical = convert(commands[current], on: viommu) else {
                return (.ioError, UInt32(current))
            }
            commands[current] = physical
            current += 1
            if current != count && current - last != Self.commandChunk { continue }
            issue(commands[last ..< current], viommu: id, on: viommu.pSMMU)
            last = current
        }
        return (nil, UInt32(current))
    }

    /// `arm_vsmmu_convert_user_cmd`:
    /// - TLBI_NSNH_ALL becomes TLBI_NH_ALL of the viommu's VMID, word 1 cleared;
    /// - TLBI_NH_VA, NH_VAA, NH_ALL, NH_ASID get the viommu's VMID in place of theirs;
    /// - ATC_INV, CFGI_CD, CFGI_CD_ALL get the pSID of the vdevice whose virt_id is their SID
    ///   (`arm_vsmmu_vsid_to_sid`: `master->streams[0].id`), or are refused when there is none;
    /// - anything else is refused (`-EIO`).
    ///
    /// Nothing else is checked: SSEC, reserved fields and the rest travel as they are.
    func convert(_ command: Command, on viommu: ViommuObject) -> Command? {
        var physical = command
        switch command.opcode {
        case .tlbiNSNHAll:
            physical = Command(opcode: .tlbiNHAll)
            physical.vmid = viommu.vmid
        case .tlbiNHVA, .tlbiNHVAA, .tlbiNHAll, .tlbiNHASID:
            physical.vmid = viommu.vmid
        case .atcInv, .cfgiCD, .cfgiCDAll:
            guard let vdeviceID = viommu.vdevs[UInt64(command.streamID)], let vdevice = vdevice(vdeviceID),
                  let device = device(vdevice.device) else { return nil }
            // The real-kernel rig (TESTING.md): Linux 7.3 answers EIO at an ATC_INV for a registered vSID
            // on a pSMMU without ATS (IDR0.ATS = 0), `entry_num` its index.
            if command.opcode == .atcInv, !smmus[viommu.pSMMU].configuration.idRegisters.ats { return nil }
            physical.streamID = hostDevices[device.hostDevice].streamID
        default:
            return nil
        }
        return physical
    }

    /// `arm_smmu_cmdq_issue_cmdlist` with a CMD_SYNC: the pSMMU executes the commands in order. One it
    /// refuses (`CERROR_ILL`, e.g. SSEC set on the non-secure queue) is turned into a CMD_SYNC by
    /// `arm_smmu_cmdq_skip_err` and the queue goes on, so the call still succeeds.
    mutating func issue(_ commands: ArraySlice<Command>, viommu: UInt32, on pSMMU: Int) {
        let batch = smmus[pSMMU].batches
        smmus[pSMMU].batches += 1
        for command in commands {
            smmus[pSMMU].issued.append(IssuedCommand(command: command, viommu: viommu, batch: batch,
                                                     skipped: command.validate()))
        }
    }
}
