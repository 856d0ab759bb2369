#ifndef CSOCKETSHIMS_H
#define CSOCKETSHIMS_H

// SCM_RIGHTS, SO_PEERCRED and the CMSG_* macros, which Swift's Glibc module does not import; and the
// Linux calls of the shared command queue (memfd_create, eventfd, file seals), which it does not import
// either (glibc declares them only under _GNU_SOURCE, or in headers outside the module).
// Do not define _GNU_SOURCE here: it breaks the Glibc import (see toolchain.md). shims.c defines it.

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>

/// The peer's credentials from SO_PEERCRED: the layout of Linux's `struct ucred`, which glibc only
/// declares under _GNU_SOURCE.
typedef struct vsmmu_peer_credentials {
    int32_t pid;
    uint32_t uid;
    uint32_t gid;
} vsmmu_peer_credentials;

/// Reads SO_PEERCRED of a connected AF_UNIX socket. Returns 0, or -1 with errno set.
int vsmmu_get_peer_credentials(int socket_fd, vsmmu_peer_credentials *out);

/// Sends `length` bytes in one sendmsg; when `fd` >= 0 it travels with them in one SCM_RIGHTS control
/// message. Retries EINTR. Returns bytes sent (possibly fewer than `length`: the caller sends the rest
/// with write, and only the first call carries the fd), or -1 with errno set. Uses MSG_NOSIGNAL.
ssize_t vsmmu_send_with_fd(int socket_fd, const void *bytes, size_t length, int fd);

/// The most fds ``vsmmu_send_with_fds`` sends in one control message.
#define VSMMU_SEND_MAX_FDS 8

/// Sends `length` bytes in one sendmsg with `fd_count` fds (0 … VSMMU_SEND_MAX_FDS) in **one**
/// SCM_RIGHTS control message, in the order of `fds` (MAP_QUEUE's memory, kick and call: PROTOCOL.md §1).
/// Retries EINTR; MSG_NOSIGNAL. Returns bytes sent (possibly fewer: the caller sends the rest without
/// fds), or -1 with errno set (EINVAL for a bad `fd_count`).
ssize_t vsmmu_send_with_fds(int socket_fd, const void *bytes, size_t length, const int *fds, int fd_count);

// Linux constants of the shared queue's system calls, with the kernel's values (shims.c checks each
// against the system headers at compile time).
/// `MFD_CLOEXEC` (memfd_create).
#define VSMMU_MFD_CLOEXEC 0x0001U
/// `MFD_ALLOW_SEALING` (memfd_create).
#define VSMMU_MFD_ALLOW_SEALING 0x0002U
/// `F_ADD_SEALS` (fcntl).
#define VSMMU_F_ADD_SEALS 1033
/// `F_GET_SEALS` (fcntl).
#define VSMMU_F_GET_SEALS 1034
/// `F_SEAL_SEAL`: no more seals may be added.
#define VSMMU_F_SEAL_SEAL 0x0001
/// `F_SEAL_SHRINK`: the file may not shrink.
#define VSMMU_F_SEAL_SHRINK 0x0002
/// `F_SEAL_GROW`: the file may not grow.
#define VSMMU_F_SEAL_GROW 0x0004
/// `EFD_CLOEXEC` (eventfd).
#define VSMMU_EFD_CLOEXEC 02000000
/// `EFD_NONBLOCK` (eventfd).
#define VSMMU_EFD_NONBLOCK 04000

/// memfd_create(2): an anonymous tmpfs file. Returns the fd, or -1 with errno set.
int vsmmu_memfd_create(const char *name, unsigned int flags);

/// eventfd(2): a counter fd. Returns the fd, or -1 with errno set.
int vsmmu_eventfd(unsigned int initial_value, int flags);

/// Receives up to `capacity` bytes with recvmsg. Any SCM_RIGHTS fds (received close-on-exec) are stored in
/// `fds` (up to `max_fds`; extra ones are closed) and their number in `*fd_count`. Retries EINTR.
/// Returns the byte count (0 at end of stream), or -1 with errno set. `*truncated_control` is set to
/// 1 when the kernel truncated the control data (MSG_CTRUNC): fds may have been lost. With `dont_wait`
/// non-zero the call does not block (MSG_DONTWAIT): -1 with errno EAGAIN when nothing is there.
ssize_t vsmmu_receive_with_fds(int socket_fd, void *bytes, size_t capacity, int *fds, int max_fds,
                               int *fd_count, int *truncated_control, int dont_wait);

static inline size_t vsmmu_cmsg_space(size_t length) { return CMSG_SPACE(length); }
static inline size_t vsmmu_cmsg_len(size_t length) { return CMSG_LEN(length); }
static inline struct cmsghdr *vsmmu_cmsg_firsthdr(struct msghdr *message) { return CMSG_FIRSTHDR(message); }
static inline struct cmsghdr *vsmmu_cmsg_nxthdr(struct msghdr *message, struct cmsghdr *header) {
    return CMSG_NXTHDR(message, header);
}
static inline unsigned char *vsmmu_cmsg_data(struct cmsghdr *header) { return CMSG_DATA(header); }

#endif
