// vsmmud-bench: release-mode benchmarks, each beside a baseline measured in the same run.
//
//   swift run -c release vsmmud-bench [router|ring|e2e|all]   (all = router + ring; e2e runs alone)
//   vsmmud-bench e2e [REQUEST-POLL-US]  (the daemon's request polling window, default the daemon's 30; 0: off)
//   vsmmud-bench e2e-one daemon|echo CLIENTS BATCH SECONDS  (one cell alone, for strace/perf/callgrind)
//   vsmmud-bench e2e-queue [REQUEST-POLL-US [inline|thread]]  (the shared command queue beside the socket, the in-process engine and a
//                                             two-process ping-pong; the daemon in a child process; also the end of `e2e`)
//   vsmmud-bench scale [VSMMUD]  (the real daemon with 256 vSMMUs x 4 viommus x 64 devices: RSS, threads, fds)

import VSMMUDaemon

let which = CommandLine.arguments.dropFirst().first ?? "all"
switch which {
case "router": runRouterBenchmark()
case "ring": runRingBenchmark()
case "e2e":
    let poll = CommandLine.arguments.dropFirst(2).first.flatMap { Int($0) } ?? VSMMUServer.Configuration.defaultRequestPollMicroseconds
    runEndToEndBenchmark(requestPollMicroseconds: max(0, poll))
    runSharedQueueBenchmark(requestPollMicroseconds: max(0, poll))
case "e2e-queue":
    let poll = CommandLine.arguments.dropFirst(2).first.flatMap { Int($0) } ?? VSMMUServer.Configuration.defaultRequestPollMicroseconds
    runSharedQueueBenchmark(requestPollMicroseconds: max(0, poll), drainPolicy: CommandLine.arguments.dropFirst(3).first ?? "default")
case "e2e-daemon": runEndToEndDaemonChild(Array(CommandLine.arguments.dropFirst(2)))       // hidden: the daemon child of e2e-queue
case "e2e-pingpong-peer": runPingPongPeer(Array(CommandLine.arguments.dropFirst(2)))      // hidden: the ping-pong peer of e2e-queue
case "e2e-one": runEndToEndProfile(Array(CommandLine.arguments.dropFirst(2)))
case "scale": runScaleBenchmark(Array(CommandLine.arguments.dropFirst(2)))
case "all":
    runRouterBenchmark()
    runRingBenchmark()
default:
    print("usage: vsmmud-bench [router|ring|e2e|e2e-queue|e2e-one|scale|all]  (all = router + ring; e2e and scale run alone)")
}
