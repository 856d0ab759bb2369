#define _GNU_SOURCE
#include "vsmmu_queue_shims.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/uio.h>

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

int vsmmu_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }

int vsmmu_eventfd(unsigned int initial, int flags) { return eventfd(initial, flags); }

ssize_t vsmmu_eventfd_read_nowait(int fd, uint64_t *value) {
    struct iovec vector = {.iov_base = value, .iov_len = sizeof(*value)};
    return preadv2(fd, &vector, 1, -1, RWF_NOWAIT);
}
