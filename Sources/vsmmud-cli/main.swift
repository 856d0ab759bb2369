// vsmmud-cli: the operator's view of a running vsmmud (STATS, LIST, HEALTH). Argument parsing only:
// fetching and rendering live in VSMMUCLI.
import ArgumentParser
import Foundation
import VSMMUCLI
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

/// `--socket PATH`, shared by every subcommand (before or after its name).
struct SocketOption: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "The daemon's socket (default: $VSMMUD_SOCKET, else \(SocketPath.defaultPath)).", valueName: "path"))
    var socket: String?

    func runner() -> CommandRunner {
        CommandRunner(socketPath: SocketPath.resolve(option: socket, environment: ProcessInfo.processInfo.environment))
    }
}

/// Exits with `status` (ArgumentParser's `ExitCode`), or returns for 0.
func finish(_ status: Int32) throws {
    if status != 0 { throw ExitCode(status) }
}

struct VSMMUDCLI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vsmmud-cli",
        abstract: "Look at a running vsmmud: counters, objects and health.",
        discussion: """
            Exit status: 0 success (health: healthy), 1 failure (health: not healthy), 64 bad arguments, \
            69 the daemon cannot be reached, 77 permission denied (socket or allow-list).
            """,
        subcommands: [Stats.self, List.self, Health.self])

    @OptionGroup var socketOption: SocketOption
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The daemon's and the vSMMUs' counters, as a table, JSON or Prometheus text.",
        discussion: "Sync latency percentiles come from a log2 histogram: they are bucket bounds, not exact values.")

    @OptionGroup var socketOption: SocketOption

    @Option(help: ArgumentHelp("Only this vSMMU (see `list vsmmus`).", valueName: "id"))
    var vsmmu: UInt32?

    @Flag(help: "One JSON document (with --watch: one per line).")
    var json = false

    @Flag(help: "Prometheus text exposition format, for node_exporter's textfile collector.")
    var prometheus = false

    @Flag(help: "Redraw until interrupted, with per-second rates beside the counters.")
    var watch = false

    @Option(help: ArgumentHelp("Seconds between redraws with --watch.", valueName: "seconds"))
    var interval: Double = 2

    func validate() throws {
        if json && prometheus { throw ValidationError("--json and --prometheus exclude each other") }
        if watch && prometheus {
            throw ValidationError("--watch cannot be combined with --prometheus: write one file per run for the textfile collector")
        }
        if vsmmu == 0 { throw ValidationError("--vsmmu takes a vSMMU id, 1 or more") }
        if !(interval > 0 && interval <= 86_400) { throw ValidationError("--interval must be between 0 and 86400 seconds") }
    }

    func run() throws {
        let format: StatsFormat = json ? .json : prometheus ? .prometheus : .table
        let runner = socketOption.runner()
        if watch {
            try finish(runner.watch(vsmmu: vsmmu, format: format, interval: .milliseconds(Int64((interval * 1000).rounded())),
                                    clearScreen: CommandRunner.standardOutputIsTerminal))
        } else {
            try finish(runner.stats(vsmmu: vsmmu, format: format))
        }
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List vsmmus, viommus, devices, hwpts or asids.")

    @OptionGroup var socketOption: SocketOption

    @Argument(help: ArgumentHelp("vsmmus, viommus, devices, hwpts or asids.", valueName: "kind"))
    var kind: String

    @Option(help: ArgumentHelp("Only this vSMMU's objects.", valueName: "id"))
    var vsmmu: UInt32?

    @Flag(help: "One JSON document.")
    var json = false

    func validate() throws {
        if ListOutput.kind(named: kind) == nil {
            throw ValidationError("unknown list '\(kind)': expected vsmmus, viommus, devices, hwpts or asids")
        }
        if vsmmu == 0 { throw ValidationError("--vsmmu takes a vSMMU id, 1 or more") }
    }

    func run() throws {
        guard let listKind = ListOutput.kind(named: kind) else { throw ExitCode(ExitStatus.usage) }
        try finish(socketOption.runner().list(listKind, vsmmu: vsmmu, json: json))
    }
}

struct Health: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The daemon's status, pSMMUs and uptime.",
        discussion: "Exit status 0 when healthy, 1 when not (shutting down, a pSMMU failed), 69 when unreachable.")

    @OptionGroup var socketOption: SocketOption

    @Flag(help: "One JSON document.")
    var json = false

    func run() throws {
        try finish(socketOption.runner().health(json: json))
    }
}

VSMMUDCLI.main()
