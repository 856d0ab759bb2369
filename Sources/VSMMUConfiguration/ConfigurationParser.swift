import Logging
import PSMMU
import SMMUv3
import TOMLKit
import VSMMUProtocol

/// The schema of vsmmud.toml, checked by walking the parsed `TOMLTable` with typed accessors.
enum ConfigurationParser {
    /// The keys each table may hold (documented in `systemd/vsmmud.toml`).
    enum Keys {
        static let root = ["daemon", "socket", "access", "limits", "queue", "psmmu"]
        static let daemon = ["log_level", "request_poll_us", "state_directory", "resume_grace_seconds"]
        static let socket = ["path", "mode", "group"]
        static let access = ["allowed_uids", "allowed_gids"]
        static let limits = ["max_frame_size", "max_commands_per_invalidate", "max_vsmmus_per_connection",
                             "max_context_descriptors", "max_connections", "max_connections_per_uid",
                             "hello_timeout_ms", "event_queue_entries"]
        static let queue = ["ring_capacity", "stall_timeout_ms", "drain_threads_per_psmmu"]
        static let psmmu = ["name", "backend"] + simulatedOnly
        /// Keys only a simulated pSMMU may have.
        static let simulatedOnly = ["first_host_device", "devices", "first_stream_id", "event_queue_depth", "idr",
                                    "iidr", "aidr", "cost"]
        /// The simulated-only keys that set the pSMMU's ID registers.
        static let idRegisters = ["idr", "iidr", "aidr"]
        static let cost = ["call_ns", "command_ns", "shared_queue", "spin_ns"]
    }

    static func parse(_ text: String, file: String) throws(ConfigurationError) -> DaemonConfiguration {
        // toml++ reads a C string: a NUL would silently end the document there.
        if let nul = text.unicodeScalars.firstIndex(of: "\0") {
            let (line, column) = lineAndColumn(of: nul, in: text)
            throw ConfigurationError(file: file, line: line, column: column,
                                     message: "a NUL byte is not allowed in a TOML document")
        }
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigurationError(file: file, line: error.source.begin.line, column: error.source.begin.column,
                                     message: "TOML syntax error: \(escapingControlCharacters(error.description))")
        } catch {
            throw ConfigurationError(file: file, message: "TOML syntax error: \(error)")
        }
        let context = ParseContext(file: file, locations: TOMLKeyLocations(scanning: text))
        return try read(TableReader(table: table, path: .root, context: context))
    }

    /// `text` on one line, control characters escaped: toml++ quotes the character it saw raw
    /// (`saw '\n'`), and values quoted in messages may hold newlines; either would split the error's log line.
    static func escapingControlCharacters(_ text: String) -> String {
        var escaped = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": escaped += "\\n"
            case "\r": escaped += "\\r"
            case "\t": escaped += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                escaped += "\\u{\(String(scalar.value, radix: 16))}"
            default: escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped
    }

    static func lineAndColumn(of index: String.UnicodeScalarView.Index, in text: String) -> (Int, Int) {
        var line = 1, column = 1
        for scalar in text.unicodeScalars[..<index] {
            if scalar == "\n" { line += 1; column = 1 } else { column += 1 }
        }
        return (line, column)
    }

    static func read(_ root: TableReader) throws(ConfigurationError) -> DaemonConfiguration {
        try root.refuseUnknownKeys(allowed: Keys.root) { key in
            Keys.psmmu.contains(key) || Keys.cost.contains(key) ? "\(key) belongs in a [[psmmu]] section" : nil
        }
        var configuration = DaemonConfiguration()
        if let daemon = try root.table("daemon") {
            try daemon.refuseUnknownKeys(allowed: Keys.daemon)
            if let level = try logLevel(daemon) { configuration.logLevel = level }
            if let poll = try daemon.integer("request_poll_us", in: DaemonConfiguration.requestPollRange) {
                configuration.requestPollMicroseconds = poll
            }
            if let directory = try daemon.string("state_directory") {
                guard directory.hasPrefix("/") else {
                    throw daemon.error("state_directory", "must be an absolute path, not '\(directory)'")
                }
                configuration.stateDirectory = directory
            }
            if let grace = try daemon.integer("resume_grace_seconds", in: DaemonConfiguration.resumeGraceRange) {
                configuration.resumeGraceSeconds = grace
            }
        }
        if let socket = try root.table("socket") {
            configuration.socket = try socketSettings(socket)
        }
        if let access = try root.table("access") {
            configuration.access = try accessList(access)
        }
        if let limits = try root.table("limits") {
            configuration.limits = try serverLimits(limits)
            configuration.connectionLimits = try connectionLimits(limits)
            if let entries = try limits.integer("event_queue_entries", in: DaemonConfiguration.eventQueueEntriesRange) {
                guard entries & (entries - 1) == 0 else {
                    throw limits.error("event_queue_entries", "\(entries) is not a power of two (e.g. 256, 1024, 4096)")
                }
                configuration.eventQueueEntries = entries
            }
        }
        if let queue = try root.table("queue") {
            try queue.refuseUnknownKeys(allowed: Keys.queue)
            if let capacity = try queue.integer("ring_capacity", in: DaemonConfiguration.ringCapacityRange) {
                guard capacity & (capacity - 1) == 0 else {
                    throw queue.error("ring_capacity", "\(capacity) is not a power of two (e.g. 1024, 4096, 16384)")
                }
                configuration.ringCapacity = capacity
            }
            if let stall = try queue.integer("stall_timeout_ms", in: DaemonConfiguration.stallTimeoutRange) {
                configuration.stallTimeoutMilliseconds = stall
            }
            if let threads = try queue.integer("drain_threads_per_psmmu", in: DaemonConfiguration.drainThreadsPerPSMMURange) {
                configuration.drainThreadsPerPSMMU = threads
            }
        }
        if let sections = try root.arrayOfTables("psmmu") {
            configuration.pSMMUs = try pSMMUs(sections, root: root)
        }
        return configuration
    }

    // MARK: - [daemon]

    static func logLevel(_ daemon: TableReader) throws(ConfigurationError) -> Logger.Level? {
        let names = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")
        guard let value = daemon.value("log_level") else { return nil }
        guard value.type == .string else {
            throw daemon.error("log_level", "expected a log level string (\(names)), found \(TableReader.describe(value))")
        }
        guard let name = try daemon.string("log_level"), let level = Logger.Level(rawValue: name) else {
            throw daemon.error("log_level", "unknown log level \"\(value.string ?? "")\" (expected \(names))")
        }
        return level
    }

    // MARK: - [socket]

    static func socketSettings(_ socket: TableReader) throws(ConfigurationError) -> SocketSettings {
        try socket.refuseUnknownKeys(allowed: Keys.socket)
        var settings = SocketSettings()
        if let path = try socket.string("path") {
            guard path.hasPrefix("/") else {
                throw socket.error("path", "\"\(path)\" is not an absolute path")
            }
            guard path.utf8.count <= SocketSettings.maximumPathLength else {
                throw socket.error("path", "the path is \(path.utf8.count) bytes long; a Unix socket path holds at most \(SocketSettings.maximumPathLength)")
            }
            settings.path = path
        }
        if let value = socket.value("mode") {
            guard value.type == .string, let text = try socket.string("mode") else {
                throw socket.error("mode", "expected an octal string such as \"0660\", found \(TableReader.describe(value))")
            }
            guard let mode = SocketSettings.mode(octal: text) else {
                throw socket.error("mode", "\"\(text)\" is not an octal mode between \"0000\" and \"0777\"")
            }
            settings.mode = mode
        }
        if let group = try socket.string("group") {
            guard !group.isEmpty, group.unicodeScalars.allSatisfy({ !$0.properties.isWhitespace && $0.value >= 0x20 && $0 != ":" && $0 != "\u{7F}" }) else {
                throw socket.error("group", "\"\(group)\" is not a group name (empty, or holds a space, a control character or ':')")
            }
            settings.group = group
        }
        return settings
    }

    // MARK: - [access]

    static func accessList(_ access: TableReader) throws(ConfigurationError) -> AccessList {
        try access.refuseUnknownKeys(allowed: Keys.access)
        let ids = 0...Int(UInt32.max)
        let uids = try access.integerArray("allowed_uids", in: ids) ?? []
        let gids = try access.integerArray("allowed_gids", in: ids) ?? []
        return AccessList(userIDs: Set(uids.map { UInt32($0) }), groupIDs: Set(gids.map { UInt32($0) }))
    }

    // MARK: - [limits]

    /// A LINK_STE's fixed part (PROTOCOL.md §5.8): what a frame holds besides its CDs.
    static let linkSTEFixedLength = 80

    static func serverLimits(_ limits: TableReader) throws(ConfigurationError) -> ServerLimits {
        try limits.refuseUnknownKeys(allowed: Keys.limits)
        let frame = try limits.integer("max_frame_size",
                                       in: WireProtocol.minimumFrameSizeLimit...WireProtocol.maximumFrameSize)
            ?? WireProtocol.maximumFrameSize
        let frameNote = limits.contains("max_frame_size") ? "max_frame_size = \(frame)" : "the default max_frame_size \(frame)"

        let commandBound = WireProtocol.maximumCommands(frameSize: frame)
        let commands = try limits.integer("max_commands_per_invalidate", in: 1...Int(UInt32.max))
        if let commands, commands > commandBound {
            throw limits.error("max_commands_per_invalidate",
                               "\(commands) commands do not fit in a frame of \(frame) bytes (\(frameNote)): at most \(commandBound), (max_frame_size - 32) / 16")
        }

        let vsmmus = try limits.integer("max_vsmmus_per_connection", in: DaemonConfiguration.maximumVSMMUsRange)

        let descriptorBound = (frame - WireProtocol.headerSize - linkSTEFixedLength) / 64
        let descriptors = try limits.integer("max_context_descriptors", in: 1...Int(UInt32.max))
        if let descriptors, descriptors > descriptorBound {
            throw limits.error("max_context_descriptors",
                               "\(descriptors) CDs do not fit in a LINK_STE frame of \(frame) bytes (\(frameNote)): at most \(descriptorBound), (max_frame_size - 96) / 64")
        }

        return ServerLimits(maximumFrameSize: UInt32(frame),
                            maximumCommandsPerInvalidate: commands.map { UInt32($0) },
                            maximumVSMMUs: vsmmus.map { UInt32($0) } ?? ServerLimits().maximumVSMMUs,
                            maximumContextDescriptors: descriptors.map { UInt32($0) })
    }

    static func connectionLimits(_ limits: TableReader) throws(ConfigurationError) -> ConnectionLimits {
        var result = ConnectionLimits()
        if let n = try limits.integer("max_connections", in: ConnectionLimits.connectionsRange) { result.maximumConnections = n }
        if let n = try limits.integer("max_connections_per_uid", in: ConnectionLimits.connectionsRange) {
            result.maximumConnectionsPerUser = n
        }
        if result.maximumConnectionsPerUser > result.maximumConnections {
            throw limits.error("max_connections_per_uid",
                               "\(result.maximumConnectionsPerUser) connections per uid exceed max_connections = \(result.maximumConnections)")
        }
        if let ms = try limits.integer("hello_timeout_ms", in: ConnectionLimits.helloTimeoutRange) {
            result.helloTimeoutMilliseconds = ms
        }
        return result
    }

    // MARK: - [[psmmu]]

    static func pSMMUs(_ sections: [TableReader], root: TableReader) throws(ConfigurationError) -> [PSMMUDefinition] {
        guard !sections.isEmpty else {
            throw root.error("psmmu", "an empty list defines no pSMMU: leave psmmu out to use the embedded default (smmu0, smmu1), or add [[psmmu]] sections")
        }
        var definitions: [PSMMUDefinition] = []
        var firstDefinition: [String: Int] = [:]
        for (index, section) in sections.enumerated() {
            let definition = try pSMMU(section)
            if let earlier = firstDefinition[definition.name] {
                let line = root.context.locations.position(of: ConfigurationKeyPath.root.appending("psmmu").appending(index: earlier).appending("name"))?.line
                throw section.error("name", "duplicate pSMMU name \"\(definition.name)\": psmmu[\(earlier)]\(line.map { " (line \($0))" } ?? "") has it too")
            }
            firstDefinition[definition.name] = index
            if case .simulated(let settings) = definition.backend {
                for (earlier, other) in definitions.enumerated() {
                    guard case .simulated(let otherSettings) = other.backend,
                          settings.hostDeviceIDs.overlaps(otherSettings.hostDeviceIDs) else { continue }
                    throw section.error("first_host_device",
                                        "host devices \(describe(settings.hostDeviceIDs)) overlap those of psmmu[\(earlier)] \"\(other.name)\" (\(describe(otherSettings.hostDeviceIDs))): a host device id names one device")
                }
            }
            definitions.append(definition)
        }
        return definitions
    }

    static func describe(_ range: ClosedRange<UInt64>) -> String { "\(range.lowerBound)...\(range.upperBound)" }

    static func pSMMU(_ section: TableReader) throws(ConfigurationError) -> PSMMUDefinition {
        try section.refuseUnknownKeys(allowed: Keys.psmmu) { key in
            Keys.cost.contains(key) ? "\(key) belongs in [\(section.path).cost]" : nil
        }
        guard let name = try section.string("name") else {
            throw section.error("name", "missing: every [[psmmu]] needs a name (the name VMMs pass in ATTACH_VIOMMU)")
        }
        guard !name.isEmpty else { throw section.error("name", "a pSMMU name cannot be empty") }
        guard name.utf8.count <= WireProtocol.nameCapacity else {
            throw section.error("name", "\"\(name)\" is \(name.utf8.count) UTF-8 bytes long; the protocol's name field holds \(WireProtocol.nameCapacity)")
        }
        guard let backendName = try section.string("backend") else {
            throw section.error("backend", "missing: set backend = \"simulated\" or \"iommufd\"")
        }
        switch backendName {
        case "iommufd":
            // Report the simulated-only key written first.
            let present = Keys.simulatedOnly.filter(section.contains).sorted { a, b in
                let pa = section.context.locations.exactPosition(of: section.path.appending(a))
                let pb = section.context.locations.exactPosition(of: section.path.appending(b))
                return (pa?.line ?? .max, pa?.column ?? .max) < (pb?.line ?? .max, pb?.column ?? .max)
            }
            if let key = present.first {
                let reason = Keys.idRegisters.contains(key)
                    ? "its ID registers are the hardware's, read with IOMMU_GET_HW_INFO"
                    : "its devices are the VMM's"
                throw section.error(key, "only a simulated pSMMU has \(key == "cost" ? "[psmmu.cost]" : key); this one has backend = \"iommufd\" (\(reason))")
            }
            return PSMMUDefinition(name: name, backend: .iommufd)
        case "simulated":
            return PSMMUDefinition(name: name, backend: .simulated(try simulatedSettings(section)))
        default:
            throw section.error("backend", "unknown backend \"\(backendName)\" (expected \"simulated\" or \"iommufd\")")
        }
    }

    static func simulatedSettings(_ section: TableReader) throws(ConfigurationError) -> SimulatedPSMMUSettings {
        var settings = SimulatedPSMMUSettings()
        let ids = 0...Int(UInt32.max)
        if let devices = try section.integer("devices", in: SimulatedPSMMUSettings.deviceCountRange) {
            settings.deviceCount = devices
        }
        if let first = try section.integer("first_host_device", in: ids) {
            settings.firstHostDeviceID = UInt32(first)
        }
        settings.firstStreamID = settings.firstHostDeviceID
        if let first = try section.integer("first_stream_id", in: ids) {
            settings.firstStreamID = StreamID(first)
        }
        guard settings.hostDeviceIDs.upperBound <= UInt64(UInt32.max) else {
            throw section.error("first_host_device",
                                "host devices \(describe(settings.hostDeviceIDs)) (devices = \(settings.deviceCount)) run past \(UInt32.max)")
        }
        guard settings.streamIDs.upperBound <= UInt64(UInt32.max) else {
            throw section.error(section.contains("first_stream_id") ? "first_stream_id" : "first_host_device",
                                "StreamIDs \(describe(settings.streamIDs)) (devices = \(settings.deviceCount)) run past \(UInt32.max)")
        }
        if let depth = try section.integer("event_queue_depth", in: SimulatedPSMMUSettings.eventQueueDepthRange) {
            settings.eventQueueDepth = depth
        }
        if let cost = try section.table("cost") {
            settings.costModel = try costModel(cost)
        }
        settings.idRegisters = try idRegisters(section)
        return settings
    }

    /// `idr = [IDR0, …, IDR5]`, `iidr`, `aidr`: 32-bit register values, each key defaulting to
    /// ``IDRegisters/simulatedDefault``'s. Any value is taken as written (reserved bits included):
    /// a simulation may model any SMMUv3, or a broken one.
    static func idRegisters(_ section: TableReader) throws(ConfigurationError) -> IDRegisters {
        var registers = IDRegisters.simulatedDefault
        let register = 0...Int(UInt32.max)
        if let idr = try section.integerArray("idr", in: register) {
            guard idr.count == 6 else {
                throw section.error("idr", "expected exactly six integers (IDR0, IDR1, IDR2, IDR3, IDR4, IDR5), found \(idr.count)")
            }
            registers.idr = idr.map { UInt32($0) }
        }
        if let iidr = try section.integer("iidr", in: register) { registers.iidr = UInt32(iidr) }
        if let aidr = try section.integer("aidr", in: register) { registers.aidr = UInt32(aidr) }
        return registers
    }

    static func costModel(_ cost: TableReader) throws(ConfigurationError) -> CostModel {
        try cost.refuseUnknownKeys(allowed: Keys.cost)
        let nanoseconds = 0...SimulatedPSMMUSettings.maximumCostNanoseconds
        var model = CostModel.free
        if let call = try cost.integer("call_ns", in: nanoseconds) { model.nanosecondsPerCall = UInt64(call) }
        if let command = try cost.integer("command_ns", in: nanoseconds) { model.nanosecondsPerCommand = UInt64(command) }
        if let shared = try cost.bool("shared_queue") { model.sharesCommandQueue = shared }
        if let spin = try cost.integer("spin_ns", in: nanoseconds) { model.spinNanoseconds = UInt64(spin) }
        return model
    }
}
