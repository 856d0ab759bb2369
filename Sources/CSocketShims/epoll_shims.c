#include "vsmmu_epoll_shims.h"

#include <errno.h>
#include <sys/epoll.h>

int vsmmu_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int vsmmu_epoll_add(int epoll_fd, int fd, uint32_t events, uint64_t token) {
    struct epoll_event event = {.events = events, .data.u64 = token};
    return epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event);
}

int vsmmu_epoll_delete(int epoll_fd, int fd) {
    // A non-NULL event for kernels before 2.6.9, which required one even for EPOLL_CTL_DEL.
    struct epoll_event unused = {0};
    return epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, &unused);
}

int vsmmu_epoll_wait(int epoll_fd, vsmmu_epoll_ready *ready, int capacity, int timeout_ms) {
    enum { batch = 64 };
    struct epoll_event events[batch];
    if (capacity > batch) capacity = batch;
    if (capacity <= 0) {
        errno = EINVAL;
        return -1;
    }
    int count = epoll_wait(epoll_fd, events, capacity, timeout_ms);
    for (int i = 0; i < count; i++) {
        ready[i].token = events[i].data.u64;
        ready[i].events = events[i].events;
    }
    return count;
}
