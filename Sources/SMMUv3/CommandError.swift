/// A command-queue error, as the SMMU reports it in `CMDQ_CONS.ERR` (`[30:24]`).
///
/// When a command fails the queue stops with CONS pointing at it; the guest's driver fixes the entry up
/// (Linux replaces an illegal one with a CMD_SYNC) and resumes.
public struct CommandQueueError: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// No error. The corresponding SMMUv3 value is `CMDQ_ERR_CERROR_NONE_IDX` (0).
    public static let none = CommandQueueError(rawValue: 0)
    /// Illegal command. The corresponding SMMUv3 value is `CMDQ_ERR_CERROR_ILL_IDX` (1).
    public static let illegal = CommandQueueError(rawValue: 1)
    /// Abort on command fetch. The corresponding SMMUv3 value is `CMDQ_ERR_CERROR_ABT_IDX` (2).
    public static let abort = CommandQueueError(rawValue: 2)
    /// ATC invalidation timed out before a CMD_SYNC. The corresponding SMMUv3 value is
    /// `CMDQ_ERR_CERROR_ATC_INV_IDX` (3).
    public static let atcInvalidationSync = CommandQueueError(rawValue: 3)

    public var description: String {
        switch rawValue {
        case 0: return "CERROR_NONE"
        case 1: return "CERROR_ILL"
        case 2: return "CERROR_ABT"
        case 3: return "CERROR_ATC_INV_SYNC"
        default: return "CERROR(\(rawValue))"
        }
    }
}

/// Why an SMMU refuses a command with `CERROR_ILL`.
public enum IllegalCommandReason: Hashable, Sendable, CustomStringConvertible {
    /// The opcode is not an SMMUv3 command.
    case undefinedOpcode(Opcode)
    /// Opcode 0x07, which QEMU's enum lists as `CMD_CFGI_ALL` but which the architecture does not define
    /// (CFGI_ALL is CFGI_STE_RANGE with RANGE = 31).
    case phantomCFGIAll
    /// SSEC (`w0[10]`) set on the non-secure command queue.
    case secureStreamOnNonSecureQueue(Opcode)
    /// A CMD_SYNC with the reserved completion signal CS = 0b11.
    case reservedSyncCompletion

    public var description: String {
        switch self {
        case .undefinedOpcode(let op): return "undefined opcode 0x\(String(op.rawValue, radix: 16))"
        case .phantomCFGIAll: return "opcode 0x07 is not CMD_CFGI_ALL on real hardware (use CFGI_STE_RANGE with RANGE=31)"
        case .secureStreamOnNonSecureQueue(let op): return "\(op.name) with SSEC set on the non-secure queue"
        case .reservedSyncCompletion: return "CMD_SYNC with reserved CS=0b11"
        }
    }
}

/// A command the SMMU would stop on with `CERROR_ILL`, and why.
public struct IllegalCommandError: Error, Hashable, Sendable, CustomStringConvertible {
    public var reason: IllegalCommandReason
    public init(reason: IllegalCommandReason) { self.reason = reason }
    /// Always `CERROR_ILL`.
    public var queueError: CommandQueueError { .illegal }
    public var description: String { "CERROR_ILL: \(reason)" }
}

extension Command {
    /// Checks the command as an SMMU's command-queue parser would.
    ///
    /// - Returns: `nil` when an SMMU executes the command, or the reason it stops with `CERROR_ILL`.
    ///   Never traps, whatever the 16 bytes hold.
    @inlinable
    public func validate() -> IllegalCommandError? {
        let op = opcode
        switch op.family {
        case .undefined:
            return IllegalCommandError(reason: op.rawValue == 0x07 ? .phantomCFGIAll : .undefinedOpcode(op))
        case .cfgi, .prefetch, .atcInv, .priResp, .resume, .stallTerm:
            if self[flag: Field.ssec] { return IllegalCommandError(reason: .secureStreamOnNonSecureQueue(op)) }
            return nil
        case .sync:
            if self[Field.syncCS] == 3 { return IllegalCommandError(reason: .reservedSyncCompletion) }
            return nil
        case .tlbi:
            return nil
        }
    }
}
