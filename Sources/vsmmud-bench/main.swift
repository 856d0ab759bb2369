// vsmmud-bench: release-mode benchmarks, each beside a baseline measured in the same run.
//
//   swift run -c release vsmmud-bench [router|ring|e2e|all]   (all = router + ring; e2e runs alone)

let which = CommandLine.arguments.dropFirst().first ?? "all"
switch which {
case "router": runRouterBenchmark()
case "ring": runRingBenchmark()
case "e2e": runEndToEndBenchmark()
case "all":
    runRouterBenchmark()
    runRingBenchmark()
default:
    print("usage: vsmmud-bench [router|ring|e2e|all]  (all = router + ring; e2e runs alone)")
}
