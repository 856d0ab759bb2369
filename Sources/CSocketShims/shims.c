#include "csocketshims.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#ifndef SO_PEERCRED
#define SO_PEERCRED 17
#endif
#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0x40000000
#endif
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0x4000
#endif

int vsmmu_get_peer_credentials(int socket_fd, vsmmu_peer_credentials *out) {
    socklen_t length = sizeof(*out);
    if (getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, out, &length) != 0) return -1;
    if (length != sizeof(*out)) { errno = EINVAL; return -1; }
    return 0;
}

ssize_t vsmmu_send_with_fd(int socket_fd, const void *bytes, size_t length, int fd) {
    return vsmmu_send_with_fds(socket_fd, bytes, length, &fd, fd >= 0 ? 1 : 0);
}

ssize_t vsmmu_send_with_fds(int socket_fd, const void *bytes, size_t length, const int *fds, int fd_count) {
    if (fd_count < 0 || fd_count > VSMMU_SEND_MAX_FDS) { errno = EINVAL; return -1; }
    struct iovec iov = { .iov_base = (void *)bytes, .iov_len = length };
    union { char buffer[CMSG_SPACE(sizeof(int) * VSMMU_SEND_MAX_FDS)]; struct cmsghdr align; } control;
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    memset(&control, 0, sizeof(control));
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    if (fd_count > 0) {
        message.msg_control = control.buffer;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)fd_count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)fd_count);
        memcpy(CMSG_DATA(header), fds, sizeof(int) * (size_t)fd_count);
    }
    for (;;) {
        ssize_t sent = sendmsg(socket_fd, &message, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) continue;
        return sent;
    }
}

ssize_t vsmmu_receive_with_fds(int socket_fd, void *bytes, size_t capacity, int *fds, int max_fds,
                               int *fd_count, int *truncated_control, int dont_wait) {
    struct iovec iov = { .iov_base = bytes, .iov_len = capacity };
    union { char buffer[CMSG_SPACE(sizeof(int) * 8)]; struct cmsghdr align; } control;
    struct msghdr message;
    *fd_count = 0;
    *truncated_control = 0;
    for (;;) {
        memset(&message, 0, sizeof(message));
        message.msg_iov = &iov;
        message.msg_iovlen = 1;
        message.msg_control = control.buffer;
        message.msg_controllen = sizeof(control.buffer);
        ssize_t received = recvmsg(socket_fd, &message, MSG_CMSG_CLOEXEC | (dont_wait ? MSG_DONTWAIT : 0));
        if (received < 0 && errno == EINTR) continue;
        if (received < 0) return received;
        if (message.msg_flags & MSG_CTRUNC) *truncated_control = 1;
        for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header != NULL;
             header = CMSG_NXTHDR(&message, header)) {
            if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
            size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < count; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(header) + i * sizeof(int), sizeof(int));
                if (*fd_count < max_fds) fds[(*fd_count)++] = fd;
                else close(fd);
            }
        }
        return received;
    }
}
