#ifndef VSMMU_EPOLL_SHIMS_H
#define VSMMU_EPOLL_SHIMS_H

// epoll(7), which Swift's Glibc module does not import (<sys/epoll.h> is not in its module map), behind
// plain C types: `struct epoll_event` is packed on x86-64 (__EPOLL_PACKED), so Swift never sees it.
// Do not define _GNU_SOURCE here: it breaks the Glibc import (toolchain.md).

#include <stdint.h>

/// Readiness bits (include/uapi/linux/eventpoll.h).
#define VSMMU_EPOLLIN 0x001u
#define VSMMU_EPOLLERR 0x008u
#define VSMMU_EPOLLHUP 0x010u

/// One ready descriptor from ``vsmmu_epoll_wait``: the token it was added with and its ready bits.
typedef struct vsmmu_epoll_ready {
    uint64_t token;
    uint32_t events;
} vsmmu_epoll_ready;

/// epoll_create1(EPOLL_CLOEXEC). Returns the epoll fd, or -1 with errno set.
int vsmmu_epoll_create(void);

/// epoll_ctl(EPOLL_CTL_ADD) of `fd` for `events` (level-triggered), reported with `token`. Returns 0,
/// or -1 with errno set.
int vsmmu_epoll_add(int epoll_fd, int fd, uint32_t events, uint64_t token);

/// epoll_ctl(EPOLL_CTL_DEL) of `fd`. Returns 0, or -1 with errno set.
int vsmmu_epoll_delete(int epoll_fd, int fd);

/// epoll_wait: up to `capacity` ready descriptors into `ready`, waiting up to `timeout_ms` (-1: no limit).
/// Returns their number (0: the timeout passed), or -1 with errno set (EINTR included: the caller retries).
int vsmmu_epoll_wait(int epoll_fd, vsmmu_epoll_ready *ready, int capacity, int timeout_ms);

#endif
