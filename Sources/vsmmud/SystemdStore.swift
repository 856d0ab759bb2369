import Logging
import SystemPackage
import VSMMUDaemon
import VSMMUSystemd

/// The server's ``FileDescriptorStore`` under systemd: ``SystemdFileDescriptorStore`` with its failures as
/// swift-system's `Errno` (an invalid name is `EINVAL`, nothing sent), and a failed removal logged (the
/// store closes stale fds by itself on `EPOLLHUP`, and the next process closes and removes what it does
/// not re-adopt).
struct SystemdStore: FileDescriptorStore {
    let systemd: SystemdFileDescriptorStore
    let logger: Logger

    func store(_ fd: Int32, name: String) throws {
        do throws(SystemdFileDescriptorStore.Failure) {
            try systemd.store(fd, name: name)
        } catch {
            logger.warning("fd store: not stored", metadata: ["name": "\(name)", "error": "\(error)"])
            throw Errno(rawValue: error.errno)
        }
    }

    func remove(name: String) {
        do throws(SystemdFileDescriptorStore.Failure) {
            try systemd.remove(name: name)
        } catch {
            logger.warning("fd store: not removed", metadata: ["name": "\(name)", "error": "\(error)"])
        }
    }
}
