#ifndef CSYSTEMD_SHIM_H
#define CSYSTEMD_SHIM_H
// libsystemd's daemon API (sd_notify, sd_listen_fds, sd_watchdog_enabled, sd_is_socket_unix).
// A module map cannot name <systemd/sd-daemon.h> directly; this shim includes it.
#include <systemd/sd-daemon.h>
#endif
