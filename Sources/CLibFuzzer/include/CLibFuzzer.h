#ifndef VSMMUD_CLIBFUZZER_H
#define VSMMUD_CLIBFUZZER_H
#include <stddef.h>
#include <stdint.h>

/* One execution of the fuzz target: libFuzzer's LLVMFuzzerTestOneInput. */
typedef int (*vsmmud_fuzz_callback)(const uint8_t *data, size_t size);

/* Runs libFuzzer's driver (LLVMFuzzerRunDriver) with the process's arguments, when the binary was built
 * with -sanitize=fuzzer and -DVSMMUD_LIBFUZZER (scripts/fuzz). Returns -1 without running anything in
 * any other build, whose vsmmud-fuzz then replays inputs and generated corpora on its own. */
int vsmmud_fuzz_run_driver(int *argc, char ***argv, vsmmud_fuzz_callback callback);

#endif
