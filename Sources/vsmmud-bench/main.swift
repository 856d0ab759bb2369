// vsmmud-bench: release-mode benchmarks, each beside a baseline measured in the same run.
//
//   swift run -c release vsmmud-bench [router|ring|all]

let which = CommandLine.arguments.dropFirst().first ?? "all"
switch which {
case "router": runRouterBenchmark()
case "ring": runRingBenchmark()
case "all":
    runRouterBenchmark()
    runRingBenchmark()
default:
    print("usage: vsmmud-bench [router|ring|all]")
}
