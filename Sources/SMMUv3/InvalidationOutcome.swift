/// How far a pSMMU got through one batch of commands: the one outcome type every layer passes up,
/// from a ``PSMMUBackend``'s `invalidate` through the command ring's sink to the engine.
public struct InvalidationResult: Hashable, Sendable, CustomStringConvertible {
    /// How many commands, from the start of the batch, the pSMMU executed and completed.
    public var completed: Int
    /// The failure that stopped the batch at index `completed`, if any.
    ///
    /// When `completed` is short of the batch and this is `nil`, the command ring records the command at
    /// index `completed` as failed with `CERROR_ABT` (a backend must say why it stopped).
    public var failure: InvalidationFailure?

    public init(completed: Int, failure: InvalidationFailure? = nil) {
        self.completed = completed
        self.failure = failure
    }

    /// Every one of `count` commands completed.
    public static func completed(_ count: Int) -> InvalidationResult { InvalidationResult(completed: count) }

    /// The first `completed` commands completed and the next one failed with `queueError`.
    public static func failed(completed: Int, queueError: CommandQueueError, errno: Int32? = nil,
                              message: String) -> InvalidationResult {
        InvalidationResult(completed: completed,
                           failure: InvalidationFailure(queueError: queueError, errno: errno, message: message))
    }

    /// Whether every command of a batch of `count` completed.
    public func isComplete(of count: Int) -> Bool { failure == nil && completed == count }

    public var description: String {
        failure.map { "completed \(completed), then \($0)" } ?? "completed \(completed)"
    }
}

/// Why a pSMMU stopped at a command: the SMMU error the guest must observe in `CMDQ_CONS.ERR`, and the
/// errno of the ioctl that reported it. The one home of these facts from the backend up to the reply.
public struct InvalidationFailure: Error, Hashable, Sendable, CustomStringConvertible {
    /// The error the guest sees for the failing command (`CERROR_ILL`, `CERROR_ABT`, `CERROR_ATC_INV_SYNC`).
    public var queueError: CommandQueueError
    /// The errno of the ioctl, for the iommufd backend (and the simulated kernel).
    public var errno: Int32?
    /// What the backend said.
    public var message: String

    public init(queueError: CommandQueueError, errno: Int32? = nil, message: String) {
        self.queueError = queueError
        self.errno = errno
        self.message = message
    }

    public var description: String { "\(queueError): \(message)" }
}
