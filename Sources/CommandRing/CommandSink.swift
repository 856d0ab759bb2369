import SMMUv3

/// Where a ``ViommuQueue`` sends its commands: one pSMMU viommu (a backend's `invalidate`).
///
/// Called by the queue's current consumer with a batch of commands contiguous in the ring's memory,
/// valid only during the call. It must execute them in order and return once the commands it reports
/// as completed are complete (the kernel's `IOMMU_HWPT_INVALIDATE` returns after the hardware
/// finished), so it may block. Calls for one queue never overlap; calls for different queues may.
/// It must not push to, sync on or stop its own queue.
public typealias CommandSink = @Sendable (UnsafeBufferPointer<Command>) -> SinkResult

/// What a ``CommandSink`` did with one batch.
public struct SinkResult: Hashable, Sendable, CustomStringConvertible {
    /// How many commands, from the start of the batch, completed.
    public var completed: Int
    /// Why the command at index ``completed`` failed; ignored when every command completed.
    ///
    /// When `completed` is short of the batch and this is `nil`, the queue records the command at
    /// index `completed` as failed with `CERROR_ABT` (a sink must say why it stopped).
    public var failure: SinkFailure?

    public init(completed: Int, failure: SinkFailure? = nil) {
        self.completed = completed
        self.failure = failure
    }

    /// Every one of `count` commands completed.
    public static func completed(_ count: Int) -> SinkResult { SinkResult(completed: count) }

    /// The first `completed` commands completed and the next one failed with `queueError`.
    public static func failed(completed: Int, queueError: CommandQueueError, message: String) -> SinkResult {
        SinkResult(completed: completed, failure: SinkFailure(queueError: queueError, message: message))
    }

    public var description: String {
        failure.map { "completed \(completed), then \($0)" } ?? "completed \(completed)"
    }
}

/// Why a sink stopped at a command: the SMMU error the guest must observe in `CMDQ_CONS.ERR`.
public struct SinkFailure: Hashable, Sendable, CustomStringConvertible {
    /// The command-queue error for the failing command (`CERROR_ILL`, `CERROR_ABT`, `CERROR_ATC_INV_SYNC`).
    public var queueError: CommandQueueError
    /// What the backend said (e.g. the ioctl's errno and what it means).
    public var message: String

    public init(queueError: CommandQueueError, message: String) {
        self.queueError = queueError
        self.message = message
    }

    public var description: String { "\(queueError): \(message)" }
}

/// A command that failed in a ``ViommuQueue``: where it was in the ring, what it was and why.
public struct CommandFailure: Hashable, Sendable, CustomStringConvertible {
    /// The command's ring position (as returned by ``ViommuQueue/push(_:)-(UnsafeBufferPointer<Command>)``).
    public var position: UInt64
    /// The command itself.
    public var command: Command
    /// The error the sink reported.
    public var queueError: CommandQueueError
    /// The sink's message.
    public var message: String

    public init(position: UInt64, command: Command, queueError: CommandQueueError, message: String) {
        self.position = position
        self.command = command
        self.queueError = queueError
        self.message = message
    }

    public var description: String { "\(command) at position \(position): \(queueError): \(message)" }
}

/// Why a ``SyncFence`` failed: for each covered queue that failed, why.
public struct SyncFailure: Error, Hashable, Sendable, CustomStringConvertible {
    /// Why the fence failed on one queue.
    public enum Reason: Hashable, Sendable, CustomStringConvertible {
        /// A command the fence covers failed: the first one after the previous fence on that queue.
        /// Later commands were still executed (invalidations are idempotent; skipping them is unsafe).
        case commandFailed(CommandFailure)
        /// The queue was stopped before the fence could be placed in it.
        case queueStopped

        public var description: String {
            switch self {
            case .commandFailed(let failure): return "command failed: \(failure)"
            case .queueStopped: return "queue stopped"
            }
        }
    }

    /// The failure on one covered queue.
    public struct QueueFailure: Hashable, Sendable, CustomStringConvertible {
        /// The queue's index in the list the fence was submitted with.
        public var queueIndex: Int
        public var reason: Reason

        public init(queueIndex: Int, reason: Reason) {
            self.queueIndex = queueIndex
            self.reason = reason
        }

        public var description: String { "queue \(queueIndex): \(reason)" }
    }

    /// One entry per failed queue, ordered by queue index; never empty.
    public var failures: [QueueFailure]

    public init(failures: [QueueFailure]) {
        self.failures = failures
    }

    /// The failed command on the lowest-indexed queue that had one.
    public var firstCommandFailure: CommandFailure? {
        for failure in failures {
            if case .commandFailed(let command) = failure.reason { return command }
        }
        return nil
    }

    public var description: String { "sync failed: " + failures.map(\.description).joined(separator: "; ") }
}
