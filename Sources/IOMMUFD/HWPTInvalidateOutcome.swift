import SystemPackage

/// What one `IOMMU_HWPT_INVALIDATE` call on an ARM viommu did, read from its errno and the `entry_num`
/// the kernel wrote back, the way `arm_vsmmu_cache_invalidate` (`arm-smmu-v3-iommufd.c`) produces them.
///
/// The kernel copies the whole array in, then walks it: it converts each command
/// (`arm_vsmmu_convert_user_cmd`: VMID forced, vSID → pSID) and issues the converted commands in
/// chunks of `CMDQ_BATCH_ENTRIES - 1` (63, since `CMDQ_BATCH_ENTRIES` is `BITS_PER_LONG`, 64 on every
/// arm64 kernel), waiting for each chunk's CMD_SYNC before it converts the next. The core
/// (`iommufd_hwpt_invalidate`) then writes `entry_num` back, also on failure. Chunk boundaries are
/// multiples of 63 counted from the call's first entry, so for a call of `n` entries:
///
/// - success: `entry_num = n`, every entry completed.
/// - `EIO` at entry `i` (a command a viommu does not take, or a vSID with no vdevice): `entry_num = i`.
///   The chunks before `i`'s chunk completed; the entries of `i`'s chunk before `i`
///   (`⌊i/63⌋·63 ..< i`) were converted but **never issued**: `entry_num` overstates what ran.
/// - `ETIMEDOUT` (a chunk's CMD_SYNC timed out): `entry_num` = the chunk's last entry. The chunks before
///   it completed; its entries were issued but are not known to have completed.
/// - any other errno comes before a command is issued (`ENOMEM`, `EFAULT`, `EINVAL`, `EOPNOTSUPP`,
///   `ENOENT`, `E2BIG`), and `entry_num` is then meaningless: 0, or, for `ENOMEM` from the driver's
///   allocation, the input `n` although nothing ran. It is ignored.
///
/// So in every failure, everything from the last chunk boundary at or below the reported entry on is
/// treated as not done, and `EIO` alone names one command.
public enum HWPTInvalidateOutcome: Hashable, Sendable {
    /// Every entry completed.
    case completed
    /// The kernel refused entry `index` (`EIO`). Entries `0 ..< completedBefore` completed; entries
    /// `completedBefore ..< index` were accepted but not issued and must be sent again.
    case refused(index: Int, completedBefore: Int)
    /// The call failed with `errno`; entries `0 ..< completedBefore` completed, nothing from
    /// `completedBefore` on is known to have.
    case failed(completedBefore: Int, errno: Errno)

    /// The kernel's chunk: `CMDQ_BATCH_ENTRIES - 1` commands, issued and synced together.
    public static let kernelChunkEntries = 63

    /// Reads one call's result.
    /// - Parameters:
    ///   - entryCount: the `entry_num` the call was made with, at least 1.
    ///   - errno: the ioctl's errno, `nil` on success.
    ///   - reportedEntries: the `entry_num` the kernel wrote back.
    ///   - chunkEntries: the kernel's chunk size, ``kernelChunkEntries`` unless a test says otherwise.
    public init(entryCount: Int, errno: Errno?, reportedEntries: UInt32, chunkEntries: Int = kernelChunkEntries) {
        guard let errno else {
            self = .completed
            return
        }
        let chunk = max(1, chunkEntries)
        let reported = Int(reportedEntries)
        switch errno {
        case .ioError where reported < entryCount:
            self = .refused(index: reported, completedBefore: reported / chunk * chunk)
        case .timedOut where reported < entryCount:
            self = .failed(completedBefore: reported / chunk * chunk, errno: errno)
        default:
            // Refused before any command was issued, or an entry_num the driver cannot have written
            // (past the array): nothing is known to have run.
            self = .failed(completedBefore: 0, errno: errno)
        }
    }
}
