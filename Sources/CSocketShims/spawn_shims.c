#define _GNU_SOURCE
#include <signal.h>
#include <spawn.h>
#include <unistd.h>

#include "vsmmu_spawn.h"

extern char **environ;

int vsmmu_spawn(const char *path, char *const argv[], char *const envp[], int stdin_fd, int stdout_fd,
                int stderr_fd, pid_t *pid_out) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    int rc = posix_spawn_file_actions_init(&actions);
    if (rc != 0) return rc;
    rc = posix_spawnattr_init(&attributes);
    if (rc != 0) {
        posix_spawn_file_actions_destroy(&actions);
        return rc;
    }
    const int sources[3] = { stdin_fd, stdout_fd, stderr_fd };
    for (int target = 0; target < 3 && rc == 0; target++) {
        if (sources[target] >= 0) rc = posix_spawn_file_actions_adddup2(&actions, sources[target], target);
    }
    if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    /* A child starts with the spawning thread's signal mask (test-runner threads block signals) and its
     * ignored dispositions: give it an empty mask and default dispositions, as a service manager does. */
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    if (rc == 0) rc = posix_spawnattr_setsigmask(&attributes, &none);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&attributes, &all);
    if (rc == 0) rc = posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    if (rc == 0) rc = posix_spawn(pid_out, path, &actions, &attributes, argv, envp ? envp : environ);
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
    return rc;
}
