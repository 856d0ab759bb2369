/// The service manager's file-descriptor store (systemd's `FDSTORE=1`, `FileDescriptorStoreMax=`).
///
/// The kernel objects of an iommufd vSMMU (viommus, vdevices, HWPTs) live in the VMM's iommufd file, and a
/// device's attachment in its VFIO cdev file. The daemon holds its own duplicates of those fds. It hands
/// one more duplicate of each to the store as soon as it acquires it, so that a restart, even after a
/// `kill -9`, gets them back at start (``InheritedFileDescriptors``, from `LISTEN_FDS`/`LISTEN_FDNAMES`)
/// and re-adopts the objects by id instead of losing them.
///
/// The daemon's executable provides the systemd implementation; tests record the calls.
public protocol FileDescriptorStore: Sendable {
    /// Hands a duplicate of `fd` to the store under `name` (1-255 characters of `[A-Za-z0-9._-]`; systemd
    /// refuses `:` and control characters in `FDNAME=`). The corresponding call is
    /// `sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=name", &fd, 1)`.
    func store(_ fd: Int32, name: String) throws
    /// Closes, in the store, every fd stored under `name`. The corresponding call is
    /// `sd_notify(0, "FDSTOREREMOVE=1\nFDNAME=name")`.
    func remove(name: String)
}

/// The fds that a previous process of the service stored, handed to this one at start, by name (systemd
/// passes them from fd 3 on, named by `LISTEN_FDNAMES`; the corresponding C function is
/// `sd_listen_fds_with_names`). Recovery takes the ones it re-adopts; the server closes the rest after
/// recovery and removes them from the store.
public struct InheritedFileDescriptors: Sendable {
    /// The fds under each name, in the order they were passed.
    public var byName: [String: [Int32]]

    public init(_ byName: [String: [Int32]] = [:]) {
        self.byName = byName
    }
}
