#ifndef CSOCKETSHIMS_H
#define CSOCKETSHIMS_H

// SCM_RIGHTS, SO_PEERCRED and the CMSG_* macros, which Swift's Glibc module does not import.
// Do not define _GNU_SOURCE here: it breaks the Glibc import (see toolchain.md).

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
