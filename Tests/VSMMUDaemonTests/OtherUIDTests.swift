import Foundation
import Logging
import PSMMU
import Testing
import VSMMUTestSupport
import VSMMUConfiguration
import VSMMUDaemon

#if canImport(Glibc)
import Glibc
#endif

/// What a peer of another uid may do (issue 11 §2: "keep what already holds"), pinned with the real
/// clients run as uid 65534 (`setpriv`): admin requests are refused to it with `NOT_OWNER` while root is
/// served, and the allow-list admits a uid on it and refuses one that is not with `PERMISSION_DENIED`.
@Suite struct OtherUIDTests {
    static let nobody: UInt32 = 65534

    static var cliPath: String? {
        guard let daemon = DaemonBinaryTests.daemonPath else { return nil }
        let candidate = URL(fileURLWithPath: daemon).deletingLastPathComponent().appendingPathComponent("vsmmud-cli").path
        return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
    }
    static var enabled: Bool { (cliPath != nil && CClientTests.vmmSimPath != nil) || CClientTests.requireBuiltExecutables }

    /// Runs `arguments` as uid/gid 65534 with no supplementary groups (as root when `asNobody` is false).
    static func run(_ arguments: [String], asNobody: Bool = true) throws -> (status: Int32, output: String) {
        let process = ChildProcess()
        if asNobody {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = ["--reuid=\(nobody)", "--regid=\(nobody)", "--clear-groups"] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: arguments[0])
            process.arguments = Array(arguments.dropFirst())
        }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }

    static func server(_ label: String, access: AccessList = .open) throws -> (VSMMUServer, String) {
        try openSocketServer(label) { $0.access = access }
    }

    @Test(.enabled(if: enabled, "vsmmud-cli and vmm-sim were not built beside the tests"))
    func adminRequestsFromAnotherUIDAreRefusedWithNotOwnerWhileRootIsServed() throws {
        let (server, path) = try Self.server("adminuid")
        defer { server.stop() }
        let cli = try #require(Self.cliPath)
        for command in [["stats"], ["list", "vsmmus"], ["health"]] {
            let refused = try Self.run([cli, "--socket", path] + command)
            #expect(refused.status != 0, "\(command) as uid 65534: \(refused.output)")
            #expect(refused.output.contains("NOT_OWNER"), "\(command) as uid 65534: \(refused.output)")
            let served = try Self.run([cli, "--socket", path] + command, asNobody: false)
            #expect(served.status == 0, "\(command) as root: \(served.output)")
            #expect(!served.output.contains("NOT_OWNER"))
        }
        // The same uid's VMM requests are served: admin is the only thing refused.
        let vmm = try Self.run([try #require(CClientTests.vmmSimPath), "--socket", path, "--psmmu", "smmu0:0", "--psmmu", "smmu1:16",
                                "generate", "--commands", "500", "--devices", "2"])
        #expect(vmm.status == 0 && vmm.output.contains(" 0 errors"), "\(vmm.output)")
    }

    @Test(.enabled(if: enabled, "vsmmud-cli and vmm-sim were not built beside the tests"))
    func theAllowListRefusesAUIDNotOnItWithPermissionDeniedAndAdmitsOneOnIt() throws {
        let vmmSim = try #require(CClientTests.vmmSimPath)
        let arguments = ["--psmmu", "smmu0:0", "--psmmu", "smmu1:16", "generate", "--commands", "200", "--devices", "2"]
        // Only root is on the list: uid 65534 is refused.
        let (closed, closedPath) = try Self.server("allowno", access: AccessList(userIDs: [0]))
        let refused = try Self.run([vmmSim, "--socket", closedPath] + arguments)
        closed.stop()
        #expect(refused.status != 0, "\(refused.output)")
        #expect(refused.output.contains("PERMISSION_DENIED"), "\(refused.output)")
        // uid 65534 on the list: served.
        let (open, openPath) = try Self.server("allowyes", access: AccessList(userIDs: [0, Self.nobody]))
        defer { open.stop() }
        let admitted = try Self.run([vmmSim, "--socket", openPath] + arguments)
        #expect(admitted.status == 0 && admitted.output.contains(" 0 errors"), "\(admitted.output)")
        // By group: gid 65534 on the list admits the process whose primary gid it is.
        let (byGroup, groupPath) = try Self.server("allowgid", access: AccessList(userIDs: [0], groupIDs: [Self.nobody]))
        defer { byGroup.stop() }
        let viaGroup = try Self.run([vmmSim, "--socket", groupPath] + arguments)
        #expect(viaGroup.status == 0 && viaGroup.output.contains(" 0 errors"), "\(viaGroup.output)")
    }
}
