import SMMUv3

/// Where a ``ViommuQueue`` sends its commands: one pSMMU viommu (a backend's `invalidate`).
///
/// Called by the queue's current consumer with a batch of commands contiguous in the ring's memory,
/// valid only during the call. It must execute them in order and return once the commands it reports
/// as completed are complete (the kernel's `IOMMU_HWPT_INVALIDATE` returns after the hardware
/// finished), so it may block. Calls for one queue never overlap; calls for different queues may.
/// It must not push to, sync on or stop its own queue.
public typealias CommandSink = @Sendable (UnsafeBufferPointer<Command>) -> InvalidationResult

/// A command that failed in a ``ViommuQueue``: where it was in the ring, what it was and why.
public struct CommandFailure: Hashable, Sendable, CustomStringConvertible {
    /// The command's ring position (as returned by ``ViommuQueue/push(_:)-(UnsafeBufferPointer<Command>)``).
    public var position: UInt64
    /// The command itself.
    public var command: Command
    /// What the sink reported: the CERROR, the errno and the message.
    public var failure: InvalidationFailure
    /// The tag the producer pushed with the command (``CommandRing/push(_:tag:whileFull:)``): for the
    /// engine, its submission and the command's guest index, so that the failure comes back in guest
    /// terms. 0 for a command executed outside the ring (``ViommuQueue/executeAndSync(_:)``); for one pushed
    /// without a tag, whatever its slot held (only a producer that tags asks).
    public var tag: UInt64

    public init(position: UInt64, command: Command, failure: InvalidationFailure, tag: UInt64 = 0) {
        self.position = position
        self.command = command
        self.failure = failure
        self.tag = tag
    }

    public init(position: UInt64, command: Command, queueError: CommandQueueError, errno: Int32? = nil,
                message: String, tag: UInt64 = 0) {
        self.init(position: position, command: command,
                  failure: InvalidationFailure(queueError: queueError, errno: errno, message: message), tag: tag)
    }

    /// The error the sink reported.
    public var queueError: CommandQueueError { failure.queueError }
    /// The errno the sink reported, if any.
    public var errno: Int32? { failure.errno }
    /// The sink's message.
    public var message: String { failure.message }

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
