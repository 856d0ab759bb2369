// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "vsmmud",
    platforms: [.macOS(.v15)],
    // The product: the daemon and its tools, the wire protocol, and the two client libraries a VMM links.
    // Every other target is internal to the package (`package` or internal access; tests use
    // `@testable import` or `package` API).
    products: [
        .executable(name: "vsmmud", targets: ["vsmmud"]),
        .executable(name: "vsmmud-cli", targets: ["vsmmud-cli"]),
        .executable(name: "vmm-sim", targets: ["vmm-sim"]),
        .executable(name: "vsmmud-bench", targets: ["vsmmud-bench"]),
        .executable(name: "vsmmud-soak", targets: ["vsmmud-soak"]),
        .executable(name: "vsmmud-fuzz", targets: ["vsmmud-fuzz"]),
        .executable(name: "vsmmud-realkernel", targets: ["vsmmud-realkernel"]),
        .library(name: "VSMMUProtocol", targets: ["VSMMUProtocol"]),
        .library(name: "VSMMUClient", targets: ["VSMMUClient"]),
        .library(name: "CVSMMUClient", targets: ["CVSMMUClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/x-sheep/swift-property-based", exact: "2.0.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // The hardware's formats: commands, STE, CD, event records, CERROR. Pure values, no I/O.
        .target(name: "SMMUv3"),
        // One guest SMMU: device table, vSTE table, S1 HWPT/ASID index and the invalidation router. Pure.
        .target(name: "VirtualSMMU", dependencies: ["SMMUv3"]),
        // The system layer: typed system calls that retry EINTR and throw swift-system's Errno, the one thread
        // type (OSThread) and the one lock type (Locked, visible to ThreadSanitizer).
        // CSocketShims: the memfd, eventfd and preadv2 calls Glibc does not import (the shared queue).
        .target(name: "VSMMUSystem", dependencies: ["CSocketShims", .product(name: "SystemPackage", package: "swift-system")]),
        // The lock-free per-viommu command ring, its consumer role and CMD_SYNC fences.
        .target(
            name: "CommandRing",
            dependencies: [
                "SMMUv3", "VSMMUSystem", .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            // Members only from each file's own imports: SystemPackage (needed for Errno) imports
            // Synchronization, whose `AtomicRepresentation` would otherwise clash with swift-atomics'.
            swiftSettings: [.enableUpcomingFeature("MemberImportVisibility")]
        ),
        // The pSMMU backend protocol and the simulated pSMMU (TLB and config-cache model).
        .target(
            name: "PSMMU",
            dependencies: ["SMMUv3", "VSMMUSystem", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The iommufd UAPI structs and ioctl numbers (Linux 6.13+), declared here: Debian 12's headers predate them.
        .target(name: "CIOMMUFD"),
        // The pSMMU backend on Linux iommufd (/dev/iommu).
        .target(
            name: "IOMMUFD",
            dependencies: ["SMMUv3", "PSMMU", "CIOMMUFD", "VSMMUSystem", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // A model of the Linux kernel behind the iommufd seam (iommufd core, arm-smmu-v3-iommufd, VFIO cdev
        // attach): object ids, references, errnos, entry_num and the 63-command chunks, for backend tests.
        .target(
            name: "IOMMUFDSimulation",
            dependencies: ["SMMUv3", "PSMMU", "IOMMUFD", "CIOMMUFD", "VSMMUSystem", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The iommufd seam over the real-kernel rig's host↔guest channel: an IOMMUFDDevice whose ioctls run in
        // an arm64 guest (scripts/realkernel/relay-agent.c executes them on /dev/iommu and the VFIO cdevs).
        .target(
            name: "IOMMUFDRelay",
            dependencies: ["IOMMUFD", "CIOMMUFD", "VSMMUSystem", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The real-kernel suite: the IOMMUFDBackend and the engine, through the relay, on the rig's kernel.
        .executableTarget(
            name: "vsmmud-realkernel",
            dependencies: ["IOMMUFDRelay", "IOMMUFD", "CIOMMUFD", "PSMMU", "SMMUv3", "VirtualSMMU", "InvalidationEngine", "VSMMUSystem",
                           "VSMMUTestSupport",
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        // Router → per-viommu rings → drain → backends → sync completion: the vSMMU's data path.
        .target(name: "InvalidationEngine", dependencies: ["SMMUv3", "VirtualSMMU", "CommandRing", "PSMMU", "VSMMUSystem"]),
        // The wire format between VMMs and the daemon: frames and messages. Pure, shared by daemon and clients.
        .target(name: "VSMMUProtocol", dependencies: ["SMMUv3"]),
        // The shared command queue's memory (PROTOCOL.md §8): positions in SMMUv3 form, a typed view of a
        // mapped region with one atomic accessor per field, and the producer's and consumer's algorithms.
        // No system calls: the mapping and the eventfds belong to the daemon and the clients.
        .target(
            name: "SharedQueue",
            dependencies: ["SMMUv3", "VSMMUProtocol", .product(name: "Atomics", package: "swift-atomics")]
        ),
        // SCM_RIGHTS, SO_PEERCRED and the CMSG_* macros, which Glibc does not import.
        .target(name: "CSocketShims"),
        // A crash-safe keyed record store (checkpoint + append-only log, CRC-32C per record) under a directory,
        // through one file-operation seam. The daemon's registrations live in it.
        .target(
            name: "VSMMUJournal",
            dependencies: ["VSMMUSystem", .product(name: "Logging", package: "swift-log"), .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The daemon as a library: listener, connections, ownership, one engine per vSMMU, admin. Testable in-process.
        .target(
            name: "VSMMUDaemon",
            dependencies: [
                "SMMUv3", "VirtualSMMU", "PSMMU", "IOMMUFD", "InvalidationEngine", "CommandRing", "VSMMUProtocol", "CSocketShims",
                "VSMMUConfiguration", "VSMMUJournal", "VSMMUSystem", "SharedQueue",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The daemon's configuration file (TOML): parsed and checked into plain values. No I/O beyond reading it.
        .target(
            name: "VSMMUConfiguration",
            dependencies: [
                "SMMUv3", "PSMMU", "VSMMUProtocol",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]
        ),
        // libsystemd (sd_notify, sd_listen_fds, sd_watchdog_enabled), from Debian's libsystemd-dev.
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        // The daemon's face to systemd: readiness, status and watchdog notifications, socket activation,
        // journald-friendly logging.
        .target(
            name: "VSMMUSystemd",
            dependencies: ["CSystemd", .product(name: "Logging", package: "swift-log")]
        ),
        // The daemon's entry point: arguments, configuration, signals and the service lifecycle. Thin.
        .executableTarget(
            name: "vsmmud",
            dependencies: [
                "VSMMUDaemon", "VSMMUConfiguration", "VSMMUSystemd", "VSMMUSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        // What vsmmud-cli shows: STATS/LIST/HEALTH rendered as tables, JSON and Prometheus text exposition.
        .target(
            name: "VSMMUCLI",
            dependencies: [
                "SMMUv3", "VSMMUProtocol", "VSMMUClient",
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The operator's command line: stats, list, health.
        .executableTarget(
            name: "vsmmud-cli",
            dependencies: ["VSMMUCLI", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // The Swift client library for VMMs.
        .target(
            name: "VSMMUClient",
            dependencies: ["SMMUv3", "VSMMUProtocol", "CSocketShims", "SharedQueue", "VSMMUSystem",
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The C client for VMMs written in C: uses only protocol/vsmmu.h and POSIX sockets.
        .target(name: "CVSMMUClient"),
        // A QEMU-like VMM on the C client: generates or replays guest command streams against the daemon.
        .executableTarget(name: "vmm-sim", dependencies: ["CVSMMUClient"]),
        // What tests, workload generators and benchmarks share: a deterministic random generator.
        .target(name: "VSMMUTestSupport", dependencies: ["SMMUv3", "CSocketShims"]),
        // Release-mode benchmarks, each beside its baseline measured in the same run.
        .executableTarget(
            name: "vsmmud-bench",
            dependencies: [
                "SMMUv3", "VirtualSMMU", "CommandRing", "PSMMU", "InvalidationEngine", "VSMMUTestSupport",
                "VSMMUDaemon", "VSMMUClient", "VSMMUProtocol", "VSMMUSystem", "SharedQueue",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The soak driver: 32 clients of random valid traffic, bad frames and reconnects against a running
        // vsmmud; checks the per-viommu counters against a reference of the routing rules (scripts/soak).
        .executableTarget(
            name: "vsmmud-soak",
            dependencies: ["SMMUv3", "VSMMUProtocol", "VSMMUClient", "VSMMUTestSupport"]
        ),
        // Hostile connections served in memory and checked (RELIABILITY.md §4): the CI test and the fuzz target.
        .target(name: "HostileInput", dependencies: ["VSMMUDaemon", "VSMMUProtocol", "SMMUv3", "VSMMUTestSupport"]),
        // libFuzzer's driver when built with -sanitize=fuzzer (scripts/fuzz); absent otherwise.
        .target(name: "CLibFuzzer"),
        // The fuzz target: libFuzzer over the frame decoder and request handlers (scripts/fuzz), or, in a
        // plain build, a replayer of inputs and generated corpora.
        .executableTarget(
            name: "vsmmud-fuzz",
            dependencies: ["HostileInput", "CLibFuzzer", "VSMMUDaemon", "VSMMUProtocol", "PSMMU", "SMMUv3",
                           .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(name: "SMMUv3Tests", dependencies: ["SMMUv3", "VSMMUTestSupport"]),
        .testTarget(
            name: "VirtualSMMUTests",
            dependencies: [
                "VirtualSMMU", "SMMUv3", "VSMMUTestSupport",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(name: "CommandRingTests", dependencies: ["CommandRing", "SMMUv3", "VSMMUSystem", "VSMMUTestSupport"]),
        .testTarget(name: "PSMMUTests", dependencies: ["PSMMU", "SMMUv3", "VSMMUSystem", "VSMMUTestSupport"]),
        .testTarget(name: "IOMMUFDTests", dependencies: ["IOMMUFD", "CIOMMUFD", "PSMMU", "SMMUv3", "InvalidationEngine", "VirtualSMMU"]),
        .testTarget(
            name: "IOMMUFDSimulationTests",
            dependencies: ["IOMMUFDSimulation", "IOMMUFD", "CIOMMUFD", "PSMMU", "SMMUv3", "InvalidationEngine", "VirtualSMMU"]
        ),
        .testTarget(
            name: "VSMMUDaemonTests",
            dependencies: ["VSMMUDaemon", "HostileInput", "VSMMUConfiguration", "VSMMUClient", "VSMMUProtocol", "SMMUv3", "PSMMU", "VSMMUTestSupport",
                           "IOMMUFD", "IOMMUFDSimulation", "CVSMMUClient", "SharedQueue", "VSMMUSystem", "CSocketShims",
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        .testTarget(name: "VSMMUConfigurationTests", dependencies: ["VSMMUConfiguration", "PSMMU", "VSMMUProtocol", "SMMUv3"]),
        .testTarget(
            name: "VSMMUCLITests",
            dependencies: ["VSMMUCLI", "VSMMUDaemon", "VSMMUClient", "VSMMUProtocol", "SMMUv3", "PSMMU", "VSMMUTestSupport"]
        ),
        .testTarget(
            name: "VSMMUSystemdTests",
            dependencies: ["VSMMUSystemd", "VSMMUDaemon", "VSMMUClient", "VSMMUProtocol", "VSMMUConfiguration", "SMMUv3", "PSMMU",
                           "VSMMUTestSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "VSMMUJournalTests",
            dependencies: ["VSMMUJournal", .product(name: "Logging", package: "swift-log"),
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        .testTarget(name: "VSMMUProtocolTests", dependencies: ["VSMMUProtocol", "SMMUv3", "VSMMUTestSupport"]),
        .testTarget(name: "VSMMUSystemTests", dependencies: ["VSMMUSystem", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "SharedQueueTests", dependencies: ["SharedQueue", "SMMUv3", "VSMMUProtocol", "VSMMUTestSupport"]),
        .testTarget(
            name: "InvalidationEngineTests",
            dependencies: ["InvalidationEngine", "VirtualSMMU", "CommandRing", "PSMMU", "SMMUv3", "VSMMUSystem", "VSMMUTestSupport"]
        ),
    ],
    swiftLanguageModes: [.v6],
    cLanguageStandard: .gnu11
)
