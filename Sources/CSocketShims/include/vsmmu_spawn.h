#ifndef VSMMU_SPAWN_H
#define VSMMU_SPAWN_H

#include <sys/types.h>

/// Starts `path` with `argv` and `envp` (NULL: this process's environment) by posix_spawn, in a process
/// group of its own, with `stdin_fd`, `stdout_fd` and `stderr_fd` (each -1: inherited) as its 0, 1 and 2,
/// an empty signal mask and default dispositions, and **every other descriptor closed** (posix_spawn_file_actions_addclosefrom_np, glibc 2.34), so the
/// child never holds a copy of another thread's socket or eventfd. Returns 0 and the pid in `pid_out`, or
/// an errno value (posix_spawn's convention).
///
/// The tests start every process through this (VSMMUTestSupport's ChildProcess), so no child inherits a
/// test's socket or eventfd.
int vsmmu_spawn(const char *path, char *const argv[], char *const envp[], int stdin_fd, int stdout_fd,
                int stderr_fd, pid_t *pid_out);

#endif
