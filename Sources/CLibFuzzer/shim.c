#include "CLibFuzzer.h"

#ifdef VSMMUD_LIBFUZZER
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

int vsmmud_fuzz_run_driver(int *argc, char ***argv, vsmmud_fuzz_callback callback) {
    return LLVMFuzzerRunDriver(argc, argv, callback);
}
#else
int vsmmud_fuzz_run_driver(int *argc, char ***argv, vsmmud_fuzz_callback callback) {
    (void)argc; (void)argv; (void)callback;
    return -1;
}
#endif
