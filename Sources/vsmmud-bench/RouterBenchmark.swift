func runRouterBenchmark() {}
