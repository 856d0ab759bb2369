#ifndef VSMMU_SPAWN_H
#define VSMMU_SPAWN_H

#include <sys/types.h>

/// Starts `path` with `argv` and `envp` (NULL: this process's environment) by posix_spawn, in a process
/// group of its own, with `stdin_fd`, `stdout_fd` and `stderr_fd` (each -1: inherited) as its 0, 1 and 2,
/// an empty signal mask and default dispositions, and **every other descriptor closed** (posix_spawn_file_actions_addclosefrom_np, glibc 2.34), so the
/// child never holds a copy of another thread's socket or eventfd. Returns 0 and the pid in `pid_out`, or
/// an errno value (posix_spawn's convention).
///
/// The tests start processes through this rather than Foundation's Process, whose run-loop manager
/// thread watches a socketpair per child with a CFSocket data callback: a race there read bytes from a
/// descriptor number that a test's socket had reused, so a request vanished and its client hung.
int vsmmu_spawn(const char *path, char *const argv[], char *const envp[], int stdin_fd, int stdout_fd,
                int stderr_fd, pid_t *pid_out);

#endif
