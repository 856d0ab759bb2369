/// Who may connect, checked against `SO_PEERCRED` (and the peer's supplementary groups) at accept.
/// Empty lists: everyone who can open the socket (its mode and group are then the only gate).
public struct AccessList: Sendable, Equatable {
    /// `[access] allowed_uids`: users allowed whatever their groups.
    public var userIDs: Set<UInt32>
    /// `[access] allowed_gids`: groups whose members are allowed (primary or supplementary).
    public var groupIDs: Set<UInt32>

    public init(userIDs: Set<UInt32> = [], groupIDs: Set<UInt32> = []) {
        self.userIDs = userIDs
        self.groupIDs = groupIDs
    }

    /// No restriction: both lists empty.
    public static let open = AccessList()

    /// Whether both lists are empty.
    public var isOpen: Bool { userIDs.isEmpty && groupIDs.isEmpty }

    /// Whether a peer with `userID` and `groupIDs` (primary + supplementary) may connect: the list is
    /// open, or its uid is listed, or one of its gids is listed.
    public func permits(userID: UInt32, groupIDs peerGroups: [UInt32]) -> Bool {
        isOpen || userIDs.contains(userID) || peerGroups.contains { groupIDs.contains($0) }
    }
}
