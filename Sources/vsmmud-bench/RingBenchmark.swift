func runRingBenchmark() {}
