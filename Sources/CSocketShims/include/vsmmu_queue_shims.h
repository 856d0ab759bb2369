#ifndef VSMMU_QUEUE_SHIMS_H
#define VSMMU_QUEUE_SHIMS_H

// The system calls of the shared command queue (PROTOCOL.md §8) that Swift's Glibc module does not import:
// memfd_create and the memfd seals, eventfd, and preadv2 with RWF_NOWAIT. Do not define _GNU_SOURCE here:
// it breaks the Glibc import (toolchain.md); queue_shims.c defines it for itself.

#include <stdint.h>
#include <sys/types.h>

/// fcntl commands and seals of a memfd (Linux include/uapi/linux/fcntl.h, F_LINUX_SPECIFIC_BASE 1024).
#define VSMMU_F_ADD_SEALS 1033
#define VSMMU_F_GET_SEALS 1034
#define VSMMU_F_SEAL_SEAL 0x0001
#define VSMMU_F_SEAL_SHRINK 0x0002
#define VSMMU_F_SEAL_GROW 0x0004
#define VSMMU_F_SEAL_WRITE 0x0008

/// memfd_create flags (include/uapi/linux/memfd.h).
#define VSMMU_MFD_CLOEXEC 0x0001u
#define VSMMU_MFD_ALLOW_SEALING 0x0002u

/// eventfd flags: the O_CLOEXEC and O_NONBLOCK values (include/uapi/asm-generic/fcntl.h).
#define VSMMU_EFD_CLOEXEC 02000000
#define VSMMU_EFD_NONBLOCK 04000

/// memfd_create(2). Returns the fd, or -1 with errno set.
int vsmmu_memfd_create(const char *name, unsigned int flags);

/// eventfd(2). Returns the fd, or -1 with errno set.
int vsmmu_eventfd(unsigned int initial, int flags);

/// Reads an eventfd's count without ever blocking, whatever the file's O_NONBLOCK flag (which every
/// holder of the open file can change): preadv2(2) with RWF_NOWAIT, which eventfd_read refuses with
/// EAGAIN on a zero count (`iocb->ki_flags & IOCB_NOWAIT`). Returns 8, or -1 with errno set (EAGAIN: the
/// count was 0).
ssize_t vsmmu_eventfd_read_nowait(int fd, uint64_t *value);

#endif
