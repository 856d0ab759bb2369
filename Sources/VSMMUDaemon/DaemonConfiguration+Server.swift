import InvalidationEngine
import PSMMU
import VSMMUConfiguration

#if canImport(Glibc)
import Glibc
#endif

extension PSMMUProvider {
    /// The pSMMU a configuration file's `[[psmmu]]` table defines.
    public init(_ definition: PSMMUDefinition) {
        switch definition.backend {
        case .simulated(let settings):
            self = .simulated(settings.makeSMMU(name: definition.name))
        case .iommufd:
            self = .iommufd(name: definition.name)
        }
    }
}

extension VSMMUServer.Configuration {
    /// The server a checked configuration file describes.
    /// - Parameters:
    ///   - socketPath: where to listen (the file's `socket.path`, a `--socket` flag or the default,
    ///     resolved by the caller), or the activated socket's path.
    ///   - inheritedListener: a socket-activated listener to serve instead of binding `socketPath`.
    /// - Throws: ``ConfigurationError`` naming `socket.group` when that group does not exist.
    ///   - stateDirectory: the journal's directory (`nil`: no journal), resolved by the caller from
    ///     `--state-dir`, the file's `daemon.state_directory` and `$STATE_DIRECTORY`.
    public init(_ daemon: DaemonConfiguration, socketPath: String, inheritedListener: Int32? = nil,
                file: String = DaemonConfiguration.defaultPath, stateDirectory: String? = nil) throws(ConfigurationError) {
        var groupID: UInt32?
        if let group = daemon.socket.group {
            guard let entry = getgrnam(group) else {
                throw ConfigurationError(file: file, line: nil, column: nil, key: "socket.group",
                                         message: "no group named '\(group)' on this host")
            }
            groupID = UInt32(entry.pointee.gr_gid)
        }
        var engine = VSMMUEngine.Configuration()
        let requestPolling = Duration.microseconds(daemon.requestPollMicroseconds)
        engine.queue.capacity = daemon.ringCapacity
        if daemon.stallTimeoutMilliseconds > 0 { engine.stallTimeout = .milliseconds(daemon.stallTimeoutMilliseconds) }
        self.init(socketPath: socketPath, pSMMUs: daemon.pSMMUs.map(PSMMUProvider.init), limits: daemon.limits,
                  engine: engine, inheritedListener: inheritedListener, socketMode: daemon.socket.mode,
                  socketGroupID: groupID, access: daemon.access, requestPolling: requestPolling)
        connectionLimits = daemon.connectionLimits
        drainThreadsPerPSMMU = daemon.drainThreadsPerPSMMU
        eventQueueEntries = daemon.eventQueueEntries
        self.stateDirectory = stateDirectory
        resumeGrace = .seconds(daemon.resumeGraceSeconds)
    }
}
