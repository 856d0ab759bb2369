import Logging
import PSMMU
import Testing
import VSMMUConfiguration
import VSMMUProtocol

@Suite struct ReloadPlanTests {
    let running = DaemonConfiguration.embeddedDefault

    @Test func unchangedConfigurationPlansNothing() {
        let plan = running.reloadPlan(to: running)
        #expect(plan == ReloadPlan())
        #expect(plan.isEmpty)
    }

    @Test func logLevelAccessAndLimitsAreAppliedLiveInDocumentedOrder() {
        var new = running
        new.limits = ServerLimits(maximumFrameSize: 65536)
        new.access = AccessList(userIDs: [107])
        new.logLevel = .debug
        #expect(running.reloadPlan(to: new) == ReloadPlan(applied: ["daemon.log_level", "access", "limits"]))
    }

    @Test func onlyChangedLiveSettingsAreListed() {
        var new = running
        new.access = AccessList(groupIDs: [36])
        #expect(running.reloadPlan(to: new) == ReloadPlan(applied: ["access"]))
    }

    @Test func socketQueueAndPSMMUChangesNeedARestart() {
        var new = running
        new.socket = SocketSettings(path: "/run/other.sock", mode: 0o600, group: "kvm")
        new.ringCapacity = 8192
        new.pSMMUs = [PSMMUDefinition(name: "hw", backend: .iommufd)]
        #expect(running.reloadPlan(to: new) == ReloadPlan(
            needsRestart: ["socket.path", "socket.mode", "socket.group", "queue.ring_capacity", "psmmu"]))
    }

    @Test func requestPollingChangeNeedsARestartAndIsNotApplied() {
        var new = running
        new.requestPollMicroseconds = 0
        #expect(running.reloadPlan(to: new) == ReloadPlan(needsRestart: ["daemon.request_poll_us"]))
        #expect(running.applyingLiveSettings(of: new).requestPollMicroseconds == running.requestPollMicroseconds)
    }

    @Test func changeInsideAPSMMUsCostModelNeedsARestart() {
        var new = running
        new.pSMMUs[1].backend = .simulated(SimulatedPSMMUSettings(firstHostDeviceID: 64, costModel: CostModel(nanosecondsPerCall: 1)))
        #expect(running.reloadPlan(to: new) == ReloadPlan(needsRestart: ["psmmu"]))
    }

    @Test func mixedChangeSplitsIntoAppliedAndNeedsRestart() throws {
        let new = try DaemonConfiguration.parse("""
            [daemon]
            log_level = "trace"
            [socket]
            mode = "0600"
            """, file: "reload.toml")
        #expect(running.reloadPlan(to: new) == ReloadPlan(applied: ["daemon.log_level"], needsRestart: ["socket.mode"]))
    }

    @Test func applyingLiveSettingsTakesOnlyWhatReloadsAndKeepsTheRest() {
        var new = running
        new.logLevel = .error
        new.access = AccessList(userIDs: [0])
        new.limits = ServerLimits(maximumFrameSize: 65536)
        new.ringCapacity = 64
        new.socket.path = "/tmp/x.sock"
        var expected = running
        expected.logLevel = .error
        expected.access = AccessList(userIDs: [0])
        expected.limits = ServerLimits(maximumFrameSize: 65536)
        #expect(running.applyingLiveSettings(of: new) == expected)
    }
}

@Suite struct AccessListTests {
    @Test func openListPermitsEveryone() {
        #expect(AccessList.open.isOpen)
        #expect(AccessList.open.permits(userID: 1234, groupIDs: []))
        #expect(AccessList.open.permits(userID: 0, groupIDs: [0]))
    }

    @Test func listedUIDIsPermittedWhateverItsGroups() {
        let access = AccessList(userIDs: [107], groupIDs: [36])
        #expect(!access.isOpen)
        #expect(access.permits(userID: 107, groupIDs: []))
        #expect(access.permits(userID: 107, groupIDs: [999]))
    }

    @Test func listedGIDPermitsAsPrimaryOrSupplementaryGroup() {
        let access = AccessList(groupIDs: [36])
        #expect(access.permits(userID: 1000, groupIDs: [36]))
        #expect(access.permits(userID: 1000, groupIDs: [1000, 27, 36]))
    }

    @Test func peerWithNeitherAListedUIDNorAListedGIDIsRefused() {
        let access = AccessList(userIDs: [107], groupIDs: [36])
        #expect(!access.permits(userID: 1000, groupIDs: [1000, 27]))
        #expect(!access.permits(userID: 1000, groupIDs: []))
    }

    @Test func rootIsNotImplicitlyPermittedByANonEmptyList() {
        #expect(!AccessList(userIDs: [107]).permits(userID: 0, groupIDs: [0]))
    }

    @Test func uidListAloneRefusesOtherUsersEvenInAnyGroup() {
        let access = AccessList(userIDs: [107])
        #expect(!access.permits(userID: 108, groupIDs: [107]))
    }
}

@Suite struct ConfigurationErrorTests {
    @Test func descriptionOmitsWhatIsUnknown() {
        #expect(ConfigurationError(file: "f.toml", line: 3, column: 7, key: "psmmu[1].backend", message: "m").description
                == "f.toml:3:7: psmmu[1].backend: m")
        #expect(ConfigurationError(file: "f.toml", line: 3, key: "k", message: "m").description == "f.toml:3: k: m")
        #expect(ConfigurationError(file: "f.toml", line: 3, column: 1, message: "m").description == "f.toml:3:1: m")
        #expect(ConfigurationError(file: "f.toml", column: 9, key: "k", message: "m").description == "f.toml: k: m")
        #expect(ConfigurationError(file: "f.toml", message: "m").description == "f.toml: m")
    }

    @Test func exitStatusIsEXConfig() {
        #expect(ConfigurationError.exitStatus == 78)
    }
}

@Suite struct SocketModeTests {
    @Test func octalStringsUpTo777AreModes() {
        #expect(SocketSettings.mode(octal: "0660") == 0o660)
        #expect(SocketSettings.mode(octal: "660") == 0o660)
        #expect(SocketSettings.mode(octal: "0") == 0)
        #expect(SocketSettings.mode(octal: "0777") == 0o777)
        #expect(SocketSettings.mode(octal: "0000") == 0)
    }

    @Test func otherStringsAreNotModes() {
        for text in ["", "1000", "0o660", "8", "06 60", "00000", "٦٦٠", "0660\n"] {
            #expect(SocketSettings.mode(octal: text) == nil, "\(text)")
        }
    }
}
