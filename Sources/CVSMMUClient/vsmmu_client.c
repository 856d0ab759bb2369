// SPDX-License-Identifier: MIT
// A blocking C client of the vsmmud wire protocol (see include/vsmmu_client.h and protocol/PROTOCOL.md).
//
// Concurrency notes (the shared queue, PROTOCOL.md §8). The queue's memory is shared with the daemon, which
// may write it at any moment: every access to it below is one C11 atomic load or store of a naturally aligned
// u8, u32 or u64 (never a plain access, never a pointer kept into it across accesses), and each field is read
// once into a local and checked before it is used (a CONS with a bit above the wrap bit, or more than 2^n
// behind PROD, is -EPROTO; a slot is always its position's index, masked). Orderings: the slots are written
// relaxed and published by the release store of PROD; error_ack is a release store (after a rewritten slot);
// CONS, error_sequence and state are read with acquire (the error record after error_sequence). The sleep
// flags follow the Dekker pattern of §8.4: this side stores vmm_sleeping, issues a sequentially consistent
// fence and reads CONS / error_sequence / state again before it sleeps; after each store of PROD or error_ack
// it issues the same fence before it reads daemon_sleeping. One side always sees the other's store. The
// client is not thread-safe: a queue is used by one thread at a time, with its client.

// memfd_create, F_ADD_SEALS and F_SEAL_SHRINK are GNU/Linux declarations (only this file sees the macro;
// the module's headers do not define it).
#define _GNU_SOURCE

#include "vsmmu_client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void copy_name(char *dst, const char *src)
{
	memset(dst, 0, VSMMU_NAME_SIZE);
	if (src)
		strncpy(dst, src, VSMMU_NAME_SIZE - 1);
}

/* A new stream socket connected to `path`, or -errno. */
static int connect_socket(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int err = errno;
		close(fd);
		return -err;
	}
	return fd;
}

int vsmmu_client_connect(struct vsmmu_client *client, const char *path)
{
	memset(client, 0, sizeof(*client));
	client->fd = -1;
	client->next_request_id = 1;
	client->max_frame_size = VSMMU_MIN_FRAME_SIZE_LIMIT;
	if (strlen(path) >= sizeof(client->socket_path))
		return -ENAMETOOLONG;
	strcpy(client->socket_path, path);
	int fd = connect_socket(path);
	if (fd < 0)
		return fd;
	client->fd = fd;
	return 0;
}

static void release_queue(struct vsmmu_client_queue *q);
static void release_event_queue(struct vsmmu_client_event_queue *q);

void vsmmu_client_close(struct vsmmu_client *client)
{
	if (client->fd >= 0)
		close(client->fd);
	client->fd = -1;
	for (size_t i = 0; i < client->queue_count; i++)
		release_queue(client->queues[i]);
	free(client->queues);
	client->queues = NULL;
	client->queue_count = client->queue_capacity = 0;
	for (size_t i = 0; i < client->event_queue_count; i++)
		release_event_queue(client->event_queues[i]);
	free(client->event_queues);
	client->event_queues = NULL;
	client->event_queue_count = client->event_queue_capacity = 0;
	free(client->resumables);
	free(client->resume_cdevs);
	client->resumables = NULL;
	client->resumable_count = client->resumable_capacity = 0;
	client->resume_cdevs = NULL;
	client->resume_cdev_count = client->resume_cdev_capacity = 0;
	client->reconnect_enabled = 0;
}

int vsmmu_client_set_reconnect(struct vsmmu_client *client, uint32_t initial_ms, uint32_t max_ms, uint32_t deadline_ms)
{
	if (initial_ms == 0) {
		client->reconnect_enabled = 0;
		return 0;
	}
	if (max_ms < initial_ms || client->socket_path[0] == 0)
		return -EINVAL;
	client->reconnect_enabled = 1;
	client->reconnect_initial_ms = initial_ms;
	client->reconnect_max_ms = max_ms;
	client->reconnect_deadline_ms = deadline_ms;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	client->jitter_state = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40) ^
			       (uint64_t)(uintptr_t)client;
	return 0;
}

static struct vsmmu_client_resumable *find_resumable(struct vsmmu_client *client, uint32_t vsmmu_id)
{
	for (size_t i = 0; i < client->resumable_count; i++)
		if (client->resumables[i].vsmmu_id == vsmmu_id)
			return &client->resumables[i];
	return NULL;
}

static void forget_resumable(struct vsmmu_client *client, uint32_t vsmmu_id)
{
	struct vsmmu_client_resumable *r = find_resumable(client, vsmmu_id);
	if (r)
		*r = client->resumables[--client->resumable_count];
}

int vsmmu_client_adopt_resume_token(struct vsmmu_client *client, uint32_t vsmmu_id,
				    const uint8_t resume_token[VSMMU_RESUME_TOKEN_SIZE])
{
	struct vsmmu_client_resumable *r = find_resumable(client, vsmmu_id);
	if (!r) {
		if (client->resumable_count == client->resumable_capacity) {
			size_t capacity = client->resumable_capacity ? client->resumable_capacity * 2 : 4;
			struct vsmmu_client_resumable *grown = realloc(client->resumables, capacity * sizeof(*grown));
			if (!grown)
				return -ENOMEM;
			client->resumables = grown;
			client->resumable_capacity = capacity;
		}
		r = &client->resumables[client->resumable_count++];
		r->vsmmu_id = vsmmu_id;
		r->iommufd = -1;
	}
	memcpy(r->resume_token, resume_token, VSMMU_RESUME_TOKEN_SIZE);
	return 0;
}

int vsmmu_client_set_resume_iommufd(struct vsmmu_client *client, uint32_t vsmmu_id, int iommufd)
{
	struct vsmmu_client_resumable *r = find_resumable(client, vsmmu_id);
	if (!r)
		return -ENOENT;
	r->iommufd = iommufd < 0 ? -1 : iommufd;
	return 0;
}

/* Forgets the resume cdev of `vsid` on `vsmmu_id` (all of the vSMMU's when `all`). */
static void forget_resume_cdevs(struct vsmmu_client *client, uint32_t vsmmu_id, int all, uint32_t vsid)
{
	for (size_t i = 0; i < client->resume_cdev_count;) {
		struct vsmmu_client_resume_cdev *c = &client->resume_cdevs[i];
		if (c->vsmmu_id == vsmmu_id && (all || c->vsid == vsid))
			*c = client->resume_cdevs[--client->resume_cdev_count];
		else
			i++;
	}
}

int vsmmu_client_set_resume_vfio_device(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t viommu,
					uint32_t host_device_id, uint32_t vsid, int cdev)
{
	forget_resume_cdevs(client, vsmmu_id, 0, vsid);
	if (cdev < 0)
		return 0;
	if (client->resume_cdev_count == client->resume_cdev_capacity) {
		size_t capacity = client->resume_cdev_capacity ? client->resume_cdev_capacity * 2 : 4;
		struct vsmmu_client_resume_cdev *grown = realloc(client->resume_cdevs, capacity * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		client->resume_cdevs = grown;
		client->resume_cdev_capacity = capacity;
	}
	client->resume_cdevs[client->resume_cdev_count++] = (struct vsmmu_client_resume_cdev){
		.vsmmu_id = vsmmu_id, .viommu = viommu, .host_device_id = host_device_id, .vsid = vsid, .cdev = cdev,
	};
	return 0;
}

/* Sends header + two payload parts in one sendmsg, with `fd_count` fds (at most 3: MAP_QUEUE's) in one
 * SCM_RIGHTS message, all of it. */
static int send_frame(struct vsmmu_client *client, uint16_t type, uint64_t request_id, const void *part1,
		      size_t len1, const void *part2, size_t len2, const int *fds, unsigned fd_count)
{
	struct vsmmu_frame_header header = {
		.payload_length = (uint32_t)(len1 + len2),
		.type = type,
		.flags = fd_count ? VSMMU_FRAME_FD_ATTACHED : 0,
		.request_id = request_id,
	};
	if (sizeof(header) + len1 + len2 > VSMMU_MAX_FRAME_SIZE || fd_count > 3)
		return -EMSGSIZE;
	struct iovec iov[3] = {
		{ .iov_base = &header, .iov_len = sizeof(header) },
		{ .iov_base = (void *)part1, .iov_len = len1 },
		{ .iov_base = (void *)part2, .iov_len = len2 },
	};
	union {
		char buf[CMSG_SPACE(3 * sizeof(int))];
		struct cmsghdr align;
	} control;
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 3 };
	if (fd_count) {
		memset(&control, 0, sizeof(control));
		msg.msg_control = control.buf;
		msg.msg_controllen = CMSG_SPACE(fd_count * sizeof(int));
		struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		cmsg->cmsg_len = CMSG_LEN(fd_count * sizeof(int));
		memcpy(CMSG_DATA(cmsg), fds, fd_count * sizeof(int));
	}
	size_t total = sizeof(header) + len1 + len2;
	while (total > 0) {
		ssize_t n = sendmsg(client->fd, &msg, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		total -= (size_t)n;
		/* The fd went with the first bytes; advance the iovecs past what was sent. */
		msg.msg_control = NULL;
		msg.msg_controllen = 0;
		size_t left = (size_t)n;
		while (left > 0 && msg.msg_iovlen > 0) {
			if (left >= msg.msg_iov[0].iov_len) {
				left -= msg.msg_iov[0].iov_len;
				msg.msg_iov++;
				msg.msg_iovlen--;
			} else {
				msg.msg_iov[0].iov_base = (char *)msg.msg_iov[0].iov_base + left;
				msg.msg_iov[0].iov_len -= left;
				left = 0;
			}
		}
	}
	return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * Sends a request with request id `id` on the current connection and reads its reply. The reply's fixed
 * part (`reply_size` bytes, exactly) goes to `reply`; a trailing message (INVALIDATE) goes to
 * client->last_message. Returns 0, -errno, or the daemon's error code.
 */
static int call_once_fds(struct vsmmu_client *client, uint64_t id, uint16_t type, const void *part1, size_t len1,
			 const void *part2, size_t len2, const int *fds, unsigned fd_count, void *reply,
			 size_t reply_size)
{
	if (client->fd < 0)
		return -ENOTCONN;
	int rc = send_frame(client, type, id, part1, len1, part2, len2, fds, fd_count);
	if (rc)
		return rc;
	struct vsmmu_frame_header header;
	rc = read_all(client->fd, &header, sizeof(header));
	if (rc)
		return rc;
	if (header.payload_length > VSMMU_MAX_FRAME_SIZE - sizeof(header) || header.request_id != id)
		return -EPROTO;
	char *payload = malloc(header.payload_length ? header.payload_length : 1);
	if (!payload)
		return -ENOMEM;
	rc = read_all(client->fd, payload, header.payload_length);
	if (rc) {
		free(payload);
		return rc;
	}
	client->last_message[0] = 0;
	if (header.type == VSMMU_MSG_ERROR) {
		if (header.payload_length < sizeof(struct vsmmu_error)) {
			free(payload);
			return -EPROTO;
		}
		struct vsmmu_error error;
		memcpy(&error, payload, sizeof(error));
		client->last_error_code = error.code;
		client->last_error_request_type = error.request_type;
		client->last_error_detail = error.detail;
		client->last_error_value = error.value;
		size_t mlen = error.message_length;
		if (mlen > header.payload_length - sizeof(struct vsmmu_error))
			mlen = header.payload_length - sizeof(struct vsmmu_error);
		if (mlen > VSMMU_MAX_MESSAGE_LENGTH)
			mlen = VSMMU_MAX_MESSAGE_LENGTH;
		memcpy(client->last_message, payload + sizeof(struct vsmmu_error), mlen);
		client->last_message[mlen] = 0;
		free(payload);
		return error.code ? (int)error.code : -EPROTO;
	}
	/* CREATE_VSMMU's reply is 8 bytes on versions 1-2 and 24 (with the resume token) on version 3. */
	if (type == VSMMU_MSG_CREATE_VSMMU && header.payload_length == sizeof(struct vsmmu_create_vsmmu_reply) &&
	    reply_size == sizeof(struct vsmmu_create_vsmmu_reply_v3)) {
		memset(reply, 0, reply_size);
		reply_size = header.payload_length;
	}
	if (header.type != (type | VSMMU_MSG_REPLY) || header.payload_length < reply_size) {
		free(payload);
		return -EPROTO;
	}
	if (reply_size)
		memcpy(reply, payload, reply_size);
	if (type == VSMMU_MSG_INVALIDATE) {
		const struct vsmmu_invalidate_reply *r = (const void *)payload;
		size_t mlen = r->message_length;
		if (mlen > header.payload_length - reply_size)
			mlen = header.payload_length - reply_size;
		if (mlen > VSMMU_MAX_MESSAGE_LENGTH)
			mlen = VSMMU_MAX_MESSAGE_LENGTH;
		memcpy(client->last_message, payload + reply_size, mlen);
		client->last_message[mlen] = 0;
	} else if (header.payload_length != reply_size) {
		free(payload);
		return -EPROTO;
	}
	free(payload);
	return 0;
}

/* call_once_fds with one fd (`pass_fd` >= 0) or none. */
static int call_once(struct vsmmu_client *client, uint64_t id, uint16_t type, const void *part1, size_t len1,
		     const void *part2, size_t len2, int pass_fd, void *reply, size_t reply_size)
{
	return call_once_fds(client, id, type, part1, len1, part2, len2, &pass_fd, pass_fd >= 0 ? 1 : 0, reply,
			     reply_size);
}

/* Whether `rc` says the connection is gone (or cannot be made while the daemon restarts). */
static int is_connection_failure(int rc)
{
	return rc == -ECONNRESET || rc == -EPIPE || rc == -ENOTCONN || rc == -ECONNABORTED || rc == -ECONNREFUSED ||
	       rc == -ENOENT;
}

static uint64_t monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* One outage: when it started and how many connections were tried. */
struct backoff {
	uint64_t started_ms;
	unsigned attempts;
};

/* Before each attempt: at once for the first, then the jittered exponential delay; -ETIMEDOUT (with the
 * reason in last_message) once the deadline passed. */
static int backoff_wait(struct vsmmu_client *client, struct backoff *b, int cause)
{
	uint64_t now = monotonic_ms();
	if (b->attempts++ == 0) {
		b->started_ms = now;
		return 0;
	}
	uint64_t elapsed = now - b->started_ms;
	if (elapsed >= client->reconnect_deadline_ms) {
		snprintf(client->last_message, sizeof(client->last_message),
			 "the connection to the daemon was lost and %u reconnection attempts failed within %u ms; last: %s",
			 b->attempts - 1, client->reconnect_deadline_ms,
			 cause < 0 ? strerror(-cause) : vsmmu_error_name((uint32_t)cause));
		return -ETIMEDOUT;
	}
	uint64_t delay = client->reconnect_initial_ms;
	for (unsigned i = 1; i + 1 < b->attempts && delay < client->reconnect_max_ms; i++)
		delay *= 2;
	if (delay > client->reconnect_max_ms)
		delay = client->reconnect_max_ms;
	if (delay > client->reconnect_deadline_ms - elapsed)
		delay = client->reconnect_deadline_ms - elapsed;
	uint64_t x = client->jitter_state ? client->jitter_state : 0x9E3779B97F4A7C15ull;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	client->jitter_state = x;
	uint64_t us = delay * 1000u;
	us = us / 2 + (us ? x % (us - us / 2 + 1) : 0);
	struct timespec request = { .tv_sec = (time_t)(us / 1000000u), .tv_nsec = (long)(us % 1000000u) * 1000 };
	struct timespec remaining;
	while (nanosleep(&request, &remaining) < 0 && errno == EINTR)
		request = remaining;
	return 0;
}

static int hello_on_connection(struct vsmmu_client *client, uint64_t id, const char *client_name, uint16_t min_version,
			       uint16_t max_version, struct vsmmu_hello_reply *reply);
static int remap_queues(struct vsmmu_client *client, uint32_t vsmmu_id);
static void lose_queues(struct vsmmu_client *client, uint32_t vsmmu_id, int why);
static int remap_event_queues(struct vsmmu_client *client, uint32_t vsmmu_id);

/*
 * After `cause` broke the connection: connects again (backing off), re-sends the HELLO and resumes every
 * vSMMU the client holds a token for. A vSMMU the new daemon does not know (UNKNOWN_VSMMU) is forgotten and
 * counted in lost_vsmmus; `*destroyed` is set when that is `destroying`. Returns 0, -ETIMEDOUT, or an
 * error the daemon answered the HELLO / a RESUME_VSMMU with.
 */
static int recover(struct vsmmu_client *client, struct backoff *b, int cause, uint32_t destroying, int *destroyed)
{
	for (;;) {
		int rc = backoff_wait(client, b, cause);
		if (rc)
			return rc;
		if (client->fd >= 0)
			close(client->fd);
		client->fd = connect_socket(client->socket_path);
		if (client->fd < 0) {
			cause = client->fd;
			client->fd = -1;
			if (!is_connection_failure(cause))
				return cause;
			continue;
		}
		if (!client->handshaken) {
			client->reconnects++;
			return 0;
		}
		rc = hello_on_connection(client, client->next_request_id++, client->hello_name, client->hello_min_version,
					 client->hello_max_version, NULL);
		for (size_t i = 0; rc == 0 && i < client->resumable_count;) {
			struct vsmmu_client_resumable *r = &client->resumables[i];
			struct vsmmu_resume_vsmmu req = { .vsmmu_id = r->vsmmu_id };
			memcpy(req.resume_token, r->resume_token, VSMMU_RESUME_TOKEN_SIZE);
			struct vsmmu_resume_vsmmu_reply reply;
			rc = call_once(client, client->next_request_id++, VSMMU_MSG_RESUME_VSMMU, &req, sizeof(req), NULL, 0,
				       r->iommufd, &reply, sizeof(reply));
			if (rc == VSMMU_ERR_UNKNOWN_VSMMU) {
				if (r->vsmmu_id == destroying && destroyed)
					*destroyed = 1;
				client->lost_vsmmus++;
				forget_resume_cdevs(client, r->vsmmu_id, 1, 0);
				forget_resumable(client, r->vsmmu_id);
				rc = 0;
				continue;
			}
			/* Each cdev back with its SET_DEV_ID (§5.14); a refusal leaves it pending on the daemon. */
			for (size_t k = 0; rc == 0 && k < client->resume_cdev_count; k++) {
				struct vsmmu_client_resume_cdev *c = &client->resume_cdevs[k];
				if (c->vsmmu_id != r->vsmmu_id)
					continue;
				struct vsmmu_dev_id again = {
					.vsmmu_id = c->vsmmu_id, .viommu = c->viommu, .host_device_id = c->host_device_id, .vsid = c->vsid,
				};
				rc = call_once(client, client->next_request_id++, VSMMU_MSG_SET_DEV_ID, &again, sizeof(again), NULL, 0,
					       c->cdev, NULL, 0);
				if (rc != 0 && !is_connection_failure(rc) && rc != VSMMU_ERR_SHUTTING_DOWN)
					rc = 0;
			}
			/* Its shared queue again, same memory, fresh eventfds (§8.6): the daemon goes on from CONS. */
			if (rc == 0)
				rc = remap_queues(client, r->vsmmu_id);
			/* And its event queue: same memory, a fresh call eventfd (§9.7); the daemon goes on from PROD. */
			if (rc == 0)
				rc = remap_event_queues(client, r->vsmmu_id);
			i++;
		}
		if (rc == 0) {
			/* A queue whose vSMMU was not resumed (lost, or never resumable) is gone with it. */
			for (size_t k = 0; k < client->queue_count; k++)
				if (!find_resumable(client, client->queues[k]->vsmmu_id))
					lose_queues(client, client->queues[k]->vsmmu_id, VSMMU_ERR_UNKNOWN_VSMMU);
			for (size_t k = 0; k < client->event_queue_count; k++)
				if (!find_resumable(client, client->event_queues[k]->vsmmu_id) && !client->event_queues[k]->lost)
					client->event_queues[k]->lost = VSMMU_ERR_UNKNOWN_VSMMU;
			client->reconnects++;
			return 0;
		}
		if (!is_connection_failure(rc) && rc != VSMMU_ERR_SHUTTING_DOWN)
			return rc;
		cause = rc;
	}
}

/*
 * Sends a request and reads its reply (call_once), under the client's reconnect policy: a failed
 * connection or SHUTTING_DOWN leads to recover() and the same frame (same request id, same payload) sent
 * again on the new connection.
 */
static int call_fds(struct vsmmu_client *client, uint16_t type, const void *part1, size_t len1, const void *part2,
		    size_t len2, const int *fds, unsigned fd_count, void *reply, size_t reply_size)
{
	uint64_t id = client->next_request_id++;
	struct backoff b = { 0 };
	for (;;) {
		int rc = call_once_fds(client, id, type, part1, len1, part2, len2, fds, fd_count, reply, reply_size);
		if (!client->reconnect_enabled || !(is_connection_failure(rc) || rc == VSMMU_ERR_SHUTTING_DOWN))
			return rc;
		uint32_t destroying = 0;
		int destroyed = 0;
		if (type == VSMMU_MSG_DESTROY_VSMMU)
			memcpy(&destroying, part1, sizeof(destroying));
		rc = recover(client, &b, rc, destroying, &destroyed);
		if (rc)
			return rc;
		/* A DESTROY_VSMMU the dead daemon had applied: the vSMMU is gone, as asked. */
		if (destroyed)
			return 0;
	}
}

/* call_fds with one fd (`pass_fd` >= 0) or none. */
static int call(struct vsmmu_client *client, uint16_t type, const void *part1, size_t len1, const void *part2,
		size_t len2, int pass_fd, void *reply, size_t reply_size)
{
	return call_fds(client, type, part1, len1, part2, len2, &pass_fd, pass_fd >= 0 ? 1 : 0, reply, reply_size);
}

int vsmmu_client_hello(struct vsmmu_client *client, const char *client_name, struct vsmmu_hello_reply *reply)
{
	return vsmmu_client_hello_versions(client, client_name, VSMMU_MIN_PROTOCOL_VERSION, VSMMU_PROTOCOL_VERSION,
					   reply);
}

/* HELLO with request id `id` on the current connection (no reconnecting: recover() uses it). */
static int hello_on_connection(struct vsmmu_client *client, uint64_t id, const char *client_name, uint16_t min_version,
			       uint16_t max_version, struct vsmmu_hello_reply *reply)
{
	struct vsmmu_hello hello = {
		.magic = VSMMU_MAGIC,
		.min_version = min_version,
		.max_version = max_version,
		.pid = (uint32_t)getpid(),
	};
	copy_name(hello.client_name, client_name);
	struct vsmmu_hello_reply r;
	int rc = call_once(client, id, VSMMU_MSG_HELLO, &hello, sizeof(hello), NULL, 0, -1, &r, sizeof(r));
	if (rc)
		return rc;
	/* The server answers a version from the offered range, and this client speaks no version above its own. */
	if (r.magic != VSMMU_MAGIC || r.version < min_version || r.version > max_version ||
	    r.version > VSMMU_PROTOCOL_VERSION)
		return -EPROTO;
	client->version = r.version;
	client->max_frame_size = r.max_frame_size;
	client->max_commands = r.max_commands;
	if (reply)
		*reply = r;
	return 0;
}

int vsmmu_client_hello_versions(struct vsmmu_client *client, const char *client_name, uint16_t min_version,
				uint16_t max_version, struct vsmmu_hello_reply *reply)
{
	uint64_t id = client->next_request_id++;
	struct backoff b = { 0 };
	for (;;) {
		int rc = hello_on_connection(client, id, client_name, min_version, max_version, reply);
		if (rc == 0) {
			client->handshaken = 1;
			copy_name(client->hello_name, client_name);
			client->hello_min_version = min_version;
			client->hello_max_version = max_version;
			return 0;
		}
		/* Before the first HELLO, recovering is only connecting again. */
		if (!client->reconnect_enabled || client->handshaken ||
		    !(is_connection_failure(rc) || rc == VSMMU_ERR_SHUTTING_DOWN))
			return rc;
		if ((rc = recover(client, &b, rc, 0, NULL)))
			return rc;
	}
}

int vsmmu_client_create_vsmmu(struct vsmmu_client *client, const char *name, uint32_t *vsmmu_id)
{
	return vsmmu_client_create_vsmmu_resumable(client, name, vsmmu_id, NULL);
}

int vsmmu_client_create_vsmmu_resumable(struct vsmmu_client *client, const char *name, uint32_t *vsmmu_id,
					uint8_t resume_token[VSMMU_RESUME_TOKEN_SIZE])
{
	/* On version 3 the request carries a fresh create key: re-sent after a reconnect (the reply lost with a
	 * daemon that restarted), it is answered with the vSMMU it created, not a second one (PROTOCOL.md §5.2). */
	struct vsmmu_create_vsmmu_keyed req = { 0 };
	size_t size = sizeof(struct vsmmu_create_vsmmu);
	copy_name(req.name, name);
	if (client->version >= 3) {
		ssize_t got;
		do
			got = getrandom(req.create_key, sizeof(req.create_key), 0);
		while (got < 0 && errno == EINTR);
		if (got != (ssize_t)sizeof(req.create_key))
			return got < 0 ? -errno : -EIO;
		req.flags = VSMMU_CREATE_FLAG_KEY;
		size = sizeof(req);
	}
	struct vsmmu_create_vsmmu_reply_v3 r;
	int rc = call(client, VSMMU_MSG_CREATE_VSMMU, &req, size, NULL, 0, -1, &r, sizeof(r));
	if (rc)
		return rc;
	if (vsmmu_id)
		*vsmmu_id = r.vsmmu_id;
	if (resume_token)
		memcpy(resume_token, r.resume_token, VSMMU_RESUME_TOKEN_SIZE);
	/* Kept for reconnecting (a version-1/2 vSMMU has no token and cannot be resumed). */
	if (client->version >= 3 && vsmmu_client_adopt_resume_token(client, r.vsmmu_id, r.resume_token))
		return -ENOMEM;
	return 0;
}

int vsmmu_client_resume_vsmmu(struct vsmmu_client *client, uint32_t vsmmu_id,
			      const uint8_t resume_token[VSMMU_RESUME_TOKEN_SIZE], int iommufd,
			      struct vsmmu_resume_vsmmu_reply *reply)
{
	struct vsmmu_resume_vsmmu req = { .vsmmu_id = vsmmu_id };
	memcpy(req.resume_token, resume_token, VSMMU_RESUME_TOKEN_SIZE);
	struct vsmmu_resume_vsmmu_reply r;
	int rc = call(client, VSMMU_MSG_RESUME_VSMMU, &req, sizeof(req), NULL, 0, iommufd, &r, sizeof(r));
	if (rc)
		return rc;
	if (reply)
		*reply = r;
	/* The connection owns it now: kept for reconnecting. */
	return vsmmu_client_adopt_resume_token(client, vsmmu_id, resume_token);
}

int vsmmu_client_destroy_vsmmu(struct vsmmu_client *client, uint32_t vsmmu_id)
{
	struct vsmmu_destroy_vsmmu req = { .vsmmu_id = vsmmu_id };
	int rc = call(client, VSMMU_MSG_DESTROY_VSMMU, &req, sizeof(req), NULL, 0, -1, NULL, 0);
	if (rc == 0) {
		lose_queues(client, vsmmu_id, -ESHUTDOWN);
		for (size_t i = 0; i < client->event_queue_count; i++)
			if (client->event_queues[i]->vsmmu_id == vsmmu_id && !client->event_queues[i]->lost)
				client->event_queues[i]->lost = -ESHUTDOWN;
		forget_resume_cdevs(client, vsmmu_id, 1, 0);
		forget_resumable(client, vsmmu_id);
	}
	return rc;
}

int vsmmu_client_attach_viommu(struct vsmmu_client *client, uint32_t vsmmu_id, const char *psmmu,
			       uint32_t host_device_id, uint32_t nest_parent_hwpt_id, int iommufd,
			       struct vsmmu_attach_viommu_reply *reply)
{
	struct vsmmu_attach_viommu req = {
		.vsmmu_id = vsmmu_id,
		.host_device_id = host_device_id,
		.nest_parent_hwpt_id = nest_parent_hwpt_id,
	};
	copy_name(req.psmmu, psmmu);
	struct vsmmu_attach_viommu_reply r;
	int rc = call(client, VSMMU_MSG_ATTACH_VIOMMU, &req, sizeof(req), NULL, 0, iommufd, &r, sizeof(r));
	if (!rc && reply)
		*reply = r;
	return rc;
}

int vsmmu_client_detach_viommu(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t viommu)
{
	struct vsmmu_detach_viommu req = { .vsmmu_id = vsmmu_id, .viommu = viommu };
	return call(client, VSMMU_MSG_DETACH_VIOMMU, &req, sizeof(req), NULL, 0, -1, NULL, 0);
}

static int dev_id(struct vsmmu_client *client, uint16_t type, uint32_t vsmmu_id, uint32_t viommu,
		  uint32_t host_device_id, uint32_t vsid, int pass_fd)
{
	struct vsmmu_dev_id req = {
		.vsmmu_id = vsmmu_id, .viommu = viommu, .host_device_id = host_device_id, .vsid = vsid,
	};
	return call(client, type, &req, sizeof(req), NULL, 0, pass_fd, NULL, 0);
}

int vsmmu_client_set_dev_id(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t viommu,
			    uint32_t host_device_id, uint32_t vsid, int vfio_device)
{
	return dev_id(client, VSMMU_MSG_SET_DEV_ID, vsmmu_id, viommu, host_device_id, vsid, vfio_device);
}

int vsmmu_client_unset_dev_id(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t viommu,
			      uint32_t host_device_id, uint32_t vsid)
{
	int rc = dev_id(client, VSMMU_MSG_UNSET_DEV_ID, vsmmu_id, viommu, host_device_id, vsid, -1);
	if (rc == 0)
		forget_resume_cdevs(client, vsmmu_id, 0, vsid);
	return rc;
}

int vsmmu_client_get_hw_info(struct vsmmu_client *client, uint32_t vsmmu_id, struct vsmmu_hw_info_reply *reply)
{
	struct vsmmu_get_hw_info req = { .vsmmu_id = vsmmu_id };
	struct vsmmu_hw_info_reply r;
	int rc = call(client, VSMMU_MSG_GET_HW_INFO, &req, sizeof(req), NULL, 0, -1, &r, sizeof(r));
	if (!rc && reply)
		*reply = r;
	return rc;
}

int vsmmu_client_link_ste(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t vsid,
			  const struct vsmmu_ste *ste, const struct vsmmu_cd *cds, uint32_t cd_count,
			  struct vsmmu_hwpt_reply *reply)
{
	struct vsmmu_link_ste req = { .vsmmu_id = vsmmu_id, .vsid = vsid, .cd_count = cd_count, .ste = *ste };
	struct vsmmu_hwpt_reply r;
	int rc = call(client, VSMMU_MSG_LINK_STE, &req, sizeof(req), cds, (size_t)cd_count * sizeof(*cds), -1, &r,
		      sizeof(r));
	if (!rc && reply)
		*reply = r;
	return rc;
}

int vsmmu_client_unlink_ste(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t vsid)
{
	struct vsmmu_unlink_ste req = { .vsmmu_id = vsmmu_id, .vsid = vsid };
	return call(client, VSMMU_MSG_UNLINK_STE, &req, sizeof(req), NULL, 0, -1, NULL, 0);
}

int vsmmu_client_update_cd(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t vsid, uint32_t ssid,
			   const struct vsmmu_cd *cd, struct vsmmu_hwpt_reply *reply)
{
	struct vsmmu_update_cd req = { .vsmmu_id = vsmmu_id, .vsid = vsid, .ssid = ssid, .cd = *cd };
	struct vsmmu_hwpt_reply r;
	int rc = call(client, VSMMU_MSG_UPDATE_CD, &req, sizeof(req), NULL, 0, -1, &r, sizeof(r));
	if (!rc && reply)
		*reply = r;
	return rc;
}

int vsmmu_client_invalidate(struct vsmmu_client *client, uint32_t vsmmu_id, const struct vsmmu_command *commands,
			    uint32_t count, struct vsmmu_invalidate_reply *reply)
{
	struct vsmmu_invalidate req = { .vsmmu_id = vsmmu_id, .command_count = count };
	struct vsmmu_invalidate_reply r;
	int rc = call(client, VSMMU_MSG_INVALIDATE, &req, sizeof(req), commands, (size_t)count * sizeof(*commands), -1,
		      &r, sizeof(r));
	if (!rc && reply)
		*reply = r;
	return rc;
}

/* ---- The shared command queue (PROTOCOL.md §5.15, §5.16, §8) ------------------------------------------- */

#define QUEUE_FIELD(field) offsetof(struct vsmmu_queue_header, field)

/* The u32 field at `offset` of the queue's memory, as an atomic (every offset is 4-byte aligned, pinned by
 * vsmmu.h, and the mapping is page-aligned). */
static inline _Atomic uint32_t *queue_u32(const struct vsmmu_client_queue *q, size_t offset)
{
	return (_Atomic uint32_t *)(void *)((char *)q->memory + offset);
}

static inline _Atomic uint8_t *queue_u8(const struct vsmmu_client_queue *q, size_t offset)
{
	return (_Atomic uint8_t *)(void *)((char *)q->memory + offset);
}

/* Word `word` (0 or 1) of the slot of `position`: its index only, so never outside the mapping. */
static inline _Atomic uint64_t *queue_slot(const struct vsmmu_client_queue *q, uint32_t position, unsigned word)
{
	size_t index = position & ((1u << q->log2_entries) - 1);
	return (_Atomic uint64_t *)(void *)((char *)q->memory + VSMMU_QUEUE_SLOTS_OFFSET +
					    index * sizeof(struct vsmmu_command) + word * sizeof(uint64_t));
}

static inline uint32_t queue_entries(const struct vsmmu_client_queue *q) { return 1u << q->log2_entries; }
/* The index and the wrap bit: every bit a position may have. */
static inline uint32_t queue_position_mask(const struct vsmmu_client_queue *q) { return (2u << q->log2_entries) - 1; }
/* Commands from `from` up to `to` (mod 2^(n+1)). */
static inline uint32_t queue_distance(const struct vsmmu_client_queue *q, uint32_t from, uint32_t to)
{
	return (to - from) & queue_position_mask(q);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

static uint64_t monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Writes 1 to an eventfd: the kernel adds it to the count and wakes a poller (fs/eventfd.c, eventfd_write;
 * a count of 0xfffffffffffffffe would block, which 1s written by a peer that reads never reach). */
static int eventfd_signal_one(int fd)
{
	uint64_t one = 1;
	for (;;) {
		ssize_t n = write(fd, &one, sizeof(one));
		if (n == (ssize_t)sizeof(one))
			return 0;
		if (n < 0 && errno == EINTR)
			continue;
		return n < 0 ? -errno : -EIO;
	}
}

/* Reads an eventfd that poll found readable: the kernel returns the count and resets it to 0
 * (fs/eventfd.c, eventfd_read, without EFD_SEMAPHORE), so one read clears every signal so far. */
static void eventfd_clear(int fd)
{
	uint64_t count;
	while (read(fd, &count, sizeof(count)) < 0 && errno == EINTR)
		;
}

/* Room for one more pointer in the array *items of `count` used and *capacity allocated: 0 or -ENOMEM. */
static int reserve_one(void **items, size_t count, size_t *capacity, size_t element)
{
	if (count < *capacity)
		return 0;
	size_t grown_capacity = *capacity ? *capacity * 2 : 4;
	void *grown = realloc(*items, grown_capacity * element);
	if (!grown)
		return -ENOMEM;
	*items = grown;
	*capacity = grown_capacity;
	return 0;
}

/*
 * The memory of a shared queue: a memfd of `size` bytes sealed with F_SEAL_SHRINK, mapped shared and
 * writable. The seal (mm/memfd.c, memfd_add_seals) makes shmem refuse any truncation below its size with
 * EPERM (mm/shmem.c, shmem_setattr), so the daemon's mapping of it never loses its pages under a read
 * (MAP_QUEUE and MAP_EVENT_QUEUE check it with F_GET_SEALS). Shared and writable on both sides: F_SEAL_SHRINK
 * does not restrict that, only the write seals would (mm/shmem.c, shmem_mmap), and the client adds none.
 * Sets *memfd and *memory as it goes (the caller releases them on failure). 0 or -errno.
 */
static int make_queue_memory(const char *name, size_t size, int *memfd, void **memory)
{
	int rc;
	*memfd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (*memfd < 0)
		return -errno;
	while ((rc = ftruncate(*memfd, (off_t)size)) < 0 && errno == EINTR)
		;
	if (rc < 0)
		return -errno;
	while ((rc = fcntl(*memfd, F_ADD_SEALS, F_SEAL_SHRINK)) < 0 && errno == EINTR)
		;
	if (rc < 0)
		return -errno;
	*memory = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, *memfd, 0);
	if (*memory == MAP_FAILED)
		return -errno;
	return 0;
}

/* A new eventfd (count 0, close-on-exec), or -errno. */
static int new_eventfd(void)
{
	int fd = eventfd(0, EFD_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* After a store of PROD or error_ack (§8.4): a full fence, then a kick only if the daemon said it sleeps. */
static void kick_if_sleeping(struct vsmmu_client_queue *q)
{
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(queue_u32(q, QUEUE_FIELD(daemon_sleeping)), memory_order_relaxed) != 0) {
		q->kicks++;
		(void)eventfd_signal_one(q->kick);
	}
}

static void release_queue(struct vsmmu_client_queue *q)
{
	if (q->memory && q->memory != MAP_FAILED)
		munmap(q->memory, q->size);
	if (q->memfd >= 0)
		close(q->memfd);
	if (q->kick >= 0)
		close(q->kick);
	if (q->call >= 0)
		close(q->call);
	free(q);
}

/* Marks the queues of `vsmmu_id` gone (`why`): they are not re-mapped and their waits end. */
static void lose_queues(struct vsmmu_client *client, uint32_t vsmmu_id, int why)
{
	for (size_t i = 0; i < client->queue_count; i++)
		if (client->queues[i]->vsmmu_id == vsmmu_id && !client->queues[i]->lost)
			client->queues[i]->lost = why;
}

/* MAP_QUEUE of `q`'s memory with the eventfds `kick` and `call`, on the current connection. */
static int send_map_queue(struct vsmmu_client *client, uint64_t id, struct vsmmu_client_queue *q, int kick, int call)
{
	struct vsmmu_map_queue req = { .vsmmu_id = q->vsmmu_id, .log2_entries = q->log2_entries };
	struct vsmmu_map_queue_reply reply;
	int fds[3] = { q->memfd, kick, call };
	return call_once_fds(client, id, VSMMU_MSG_MAP_QUEUE, &req, sizeof(req), NULL, 0, fds, 3, &reply, sizeof(reply));
}

/* After a reconnect resumed `vsmmu_id`: MAP_QUEUE again for each of its queues, with the same memfd and fresh
 * eventfds (the new daemon's copies of the old ones, if the fd store kept them, are replaced). A refusal
 * loses that queue; a connection failure is returned (the recovery starts over). */
static int remap_queues(struct vsmmu_client *client, uint32_t vsmmu_id)
{
	for (size_t i = 0; i < client->queue_count; i++) {
		struct vsmmu_client_queue *q = client->queues[i];
		if (q->vsmmu_id != vsmmu_id || q->lost)
			continue;
		int kick = new_eventfd();
		int call = kick < 0 ? kick : new_eventfd();
		if (call < 0) {
			if (kick >= 0)
				close(kick);
			q->lost = call;
			continue;
		}
		int rc = send_map_queue(client, client->next_request_id++, q, kick, call);
		if (rc) {
			close(kick);
			close(call);
			if (is_connection_failure(rc) || rc == VSMMU_ERR_SHUTTING_DOWN)
				return rc;
			q->lost = rc;
			continue;
		}
		close(q->kick);
		close(q->call);
		q->kick = kick;
		q->call = call;
		q->remaps++;
	}
	return 0;
}

int vsmmu_client_map_queue(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t log2_entries,
			   struct vsmmu_client_queue **queue)
{
	if (log2_entries < VSMMU_QUEUE_MIN_LOG2_ENTRIES || log2_entries > VSMMU_QUEUE_MAX_LOG2_ENTRIES || !queue)
		return -EINVAL;
	if (reserve_one((void **)&client->queues, client->queue_count, &client->queue_capacity, sizeof(*client->queues)))
		return -ENOMEM;
	struct vsmmu_client_queue *q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->client = client;
	q->vsmmu_id = vsmmu_id;
	q->log2_entries = log2_entries;
	q->memfd = q->kick = q->call = -1;
	q->memory = MAP_FAILED;
	q->size = VSMMU_QUEUE_SLOTS_OFFSET + ((size_t)sizeof(struct vsmmu_command) << log2_entries);
	q->spin_ns = 20000;
	int rc = make_queue_memory("vsmmu-queue", q->size, &q->memfd, &q->memory);
	if (rc)
		goto fail;
	if ((q->kick = new_eventfd()) < 0 || (q->call = new_eventfd()) < 0) {
		rc = q->kick < 0 ? q->kick : q->call;
		goto fail;
	}
	/* The header (§8.1): a new memfd reads as zeros; the configuration line, then PROD = CONS = 0. */
	atomic_store_explicit(queue_u32(q, QUEUE_FIELD(magic)), VSMMU_QUEUE_MAGIC, memory_order_relaxed);
	/* version (u16) and log2_entries (u8), with the reserved byte after them, as one u32. */
	atomic_store_explicit(queue_u32(q, QUEUE_FIELD(version)), VSMMU_QUEUE_VERSION | log2_entries << 16,
			      memory_order_relaxed);
	atomic_store_explicit(queue_u32(q, QUEUE_FIELD(prod)), 0, memory_order_relaxed);
	atomic_store_explicit(queue_u32(q, QUEUE_FIELD(cons)), 0, memory_order_release);
	struct vsmmu_map_queue req = { .vsmmu_id = vsmmu_id, .log2_entries = log2_entries };
	struct vsmmu_map_queue_reply reply;
	int fds[3] = { q->memfd, q->kick, q->call };
	/* Not in client->queues until mapped: a reconnect during this call re-sends this very request. */
	rc = call_fds(client, VSMMU_MSG_MAP_QUEUE, &req, sizeof(req), NULL, 0, fds, 3, &reply, sizeof(reply));
	if (rc)
		goto fail;
	client->queues[client->queue_count++] = q;
	*queue = q;
	return 0;
fail:
	release_queue(q);
	return rc;
}

int vsmmu_client_unmap_queue(struct vsmmu_client *client, struct vsmmu_client_queue *queue)
{
	/* Out of the list first: a reconnect during UNMAP_QUEUE does not map it again. */
	for (size_t i = 0; i < client->queue_count; i++)
		if (client->queues[i] == queue) {
			client->queues[i] = client->queues[--client->queue_count];
			break;
		}
	int rc = 0;
	if (!queue->lost) {
		struct vsmmu_unmap_queue req = { .vsmmu_id = queue->vsmmu_id };
		rc = call(client, VSMMU_MSG_UNMAP_QUEUE, &req, sizeof(req), NULL, 0, -1, NULL, 0);
	}
	release_queue(queue);
	return rc;
}

uint32_t vsmmu_client_queue_cons(const struct vsmmu_client_queue *queue)
{
	return atomic_load_explicit(queue_u32(queue, QUEUE_FIELD(cons)), memory_order_acquire);
}

uint32_t vsmmu_client_queue_load(const struct vsmmu_client_queue *queue, size_t offset)
{
	switch (offset) {
	case QUEUE_FIELD(magic):
	case QUEUE_FIELD(prod):
	case QUEUE_FIELD(cons):
	case QUEUE_FIELD(error_sequence):
	case QUEUE_FIELD(error_cons):
	case QUEUE_FIELD(state):
	case QUEUE_FIELD(error_ack):
	case QUEUE_FIELD(daemon_sleeping):
	case QUEUE_FIELD(vmm_sleeping):
		return atomic_load_explicit(queue_u32(queue, offset), memory_order_acquire);
	default:
		return 0;
	}
}

int vsmmu_client_queue_error(const struct vsmmu_client_queue *queue, struct vsmmu_client_queue_error *error)
{
	uint32_t sequence = atomic_load_explicit(queue_u32(queue, QUEUE_FIELD(error_sequence)), memory_order_acquire);
	uint32_t acknowledged = atomic_load_explicit(queue_u32(queue, QUEUE_FIELD(error_ack)), memory_order_relaxed);
	if (sequence == acknowledged)
		return 0;
	if (error) {
		/* After the acquire of error_sequence: the record the daemon wrote before it (§8.5). */
		error->sequence = sequence;
		error->cerror = atomic_load_explicit(queue_u8(queue, QUEUE_FIELD(cerror)), memory_order_relaxed);
		error->kind = atomic_load_explicit(queue_u8(queue, QUEUE_FIELD(error_kind)), memory_order_relaxed);
		error->cons = atomic_load_explicit(queue_u32(queue, QUEUE_FIELD(error_cons)), memory_order_relaxed);
		error->index = error->cons & (queue_entries(queue) - 1);
	}
	return 1;
}

int vsmmu_client_queue_acknowledge(struct vsmmu_client_queue *queue, const struct vsmmu_command *replacement)
{
	struct vsmmu_client_queue_error error;
	if (!vsmmu_client_queue_error(queue, &error))
		return -EALREADY;
	if (replacement) {
		/* The slot at CONS (= error_cons while stopped), which the daemon reads again once acknowledged. */
		atomic_store_explicit(queue_slot(queue, error.cons, 0), replacement->w[0], memory_order_relaxed);
		atomic_store_explicit(queue_slot(queue, error.cons, 1), replacement->w[1], memory_order_relaxed);
	}
	/* A PROD error: PROD again as this client published it (it is the only writer of PROD). */
	if (error.kind == VSMMU_QUEUE_ERROR_PROD)
		atomic_store_explicit(queue_u32(queue, QUEUE_FIELD(prod)), queue->prod, memory_order_release);
	atomic_store_explicit(queue_u32(queue, QUEUE_FIELD(error_ack)), error.sequence, memory_order_release);
	kick_if_sleeping(queue);
	return 0;
}

/* What one look at the queue found. */
enum queue_look { LOOK_WAITING, LOOK_DONE, LOOK_ERROR, LOOK_STOPPED, LOOK_BAD_CONS };

/* Reads CONS, error_sequence and state once each: done when at most `outstanding` commands are left between
 * CONS and PROD. */
static enum queue_look look(const struct vsmmu_client_queue *q, uint32_t outstanding)
{
	uint32_t cons = atomic_load_explicit(queue_u32(q, QUEUE_FIELD(cons)), memory_order_acquire);
	uint32_t left = queue_distance(q, cons, q->prod);
	if ((cons & ~queue_position_mask(q)) != 0 || left > queue_entries(q))
		return LOOK_BAD_CONS;
	if (left <= outstanding)
		return LOOK_DONE;
	if (vsmmu_client_queue_error(q, NULL))
		return LOOK_ERROR;
	if (atomic_load_explicit(queue_u32(q, QUEUE_FIELD(state)), memory_order_acquire) == VSMMU_QUEUE_STATE_STOPPED)
		return LOOK_STOPPED;
	return LOOK_WAITING;
}

/* The connection failed while the queue waited (its socket became readable with no request outstanding):
 * with a reconnect policy, reconnect (which resumes the vSMMU and re-maps the queue) and go on waiting. */
static int queue_connection_lost(struct vsmmu_client_queue *q)
{
	struct vsmmu_client *client = q->client;
	if (!client->reconnect_enabled)
		return -ECONNRESET;
	struct backoff b = { 0 };
	int rc = recover(client, &b, -ECONNRESET, 0, NULL);
	if (rc)
		return rc;
	return q->lost ? -ESHUTDOWN : 0;
}

/* The daemon wrote state = STOPPED. A daemon that stops (a restart) writes it before it closes the
 * connection, and refuses requests meanwhile with SHUTTING_DOWN: with a reconnect policy one request on the
 * vSMMU tells the two apart, reconnecting (and re-mapping) in the first case. Otherwise the queue is gone. */
static int queue_stopped(struct vsmmu_client_queue *q)
{
	struct vsmmu_client *client = q->client;
	if (!q->lost && client->reconnect_enabled) {
		uint64_t reconnects = client->reconnects;
		struct vsmmu_get_hw_info req = { .vsmmu_id = q->vsmmu_id };
		struct vsmmu_hw_info_reply reply;
		(void)call(client, VSMMU_MSG_GET_HW_INFO, &req, sizeof(req), NULL, 0, -1, &reply, sizeof(reply));
		if (client->reconnects != reconnects && !q->lost)
			return 0;
	}
	if (!q->lost)
		q->lost = -ESHUTDOWN;
	return -ESHUTDOWN;
}

/* Waits until at most `outstanding` commands are left between CONS and PROD (§8.4): polls for spin_ns, then
 * sleeps on call and the socket, with the Dekker re-check in between. */
static int wait_outstanding(struct vsmmu_client_queue *q, uint32_t outstanding)
{
	uint64_t spin_until = 0;
	for (unsigned spins = 0;; spins++) {
		if (q->lost)
			return -ESHUTDOWN;
		enum queue_look seen = look(q, outstanding);
		if (seen == LOOK_DONE)
			return 0;
		if (seen == LOOK_ERROR)
			return VSMMU_CLIENT_QUEUE_ERROR;
		if (seen == LOOK_BAD_CONS)
			return -EPROTO;
		if (seen == LOOK_STOPPED) {
			int rc = queue_stopped(q);
			if (rc)
				return rc;
			spin_until = 0;
			continue;
		}
		if ((spins & 31) == 0) {
			uint64_t now = monotonic_ns();
			if (spin_until == 0)
				spin_until = now + q->spin_ns;
			else if (now >= spin_until)
				goto sleep;
		}
		cpu_relax();
		continue;
	sleep:
		atomic_store_explicit(queue_u32(q, QUEUE_FIELD(vmm_sleeping)), 1, memory_order_relaxed);
		atomic_thread_fence(memory_order_seq_cst);
		if (look(q, outstanding) != LOOK_WAITING) {
			atomic_store_explicit(queue_u32(q, QUEUE_FIELD(vmm_sleeping)), 0, memory_order_relaxed);
			continue;
		}
		q->sleeps++;
		/* call: POLLIN once its count is not 0 (fs/eventfd.c, eventfd_poll). The socket: readable (a byte,
		 * the end of the stream, an error) while no request is outstanding means the connection is lost. */
		struct pollfd fds[2] = {
			{ .fd = q->call, .events = POLLIN },
			{ .fd = q->client->fd, .events = POLLIN },
		};
		int n;
		while ((n = poll(fds, 2, -1)) < 0 && errno == EINTR)
			;
		atomic_store_explicit(queue_u32(q, QUEUE_FIELD(vmm_sleeping)), 0, memory_order_relaxed);
		if (n < 0)
			return -errno;
		if (fds[0].revents & POLLIN)
			eventfd_clear(q->call);
		if (fds[1].revents && look(q, outstanding) == LOOK_WAITING) {
			int rc = queue_connection_lost(q);
			if (rc)
				return rc;
		}
		spin_until = 0;
		spins = 0;
	}
}

int vsmmu_client_queue_wait(struct vsmmu_client_queue *queue, uint32_t position)
{
	/* Done when no more commands are left than were published after `position`. */
	uint32_t after = queue_distance(queue, position, queue->prod);
	if ((position & ~queue_position_mask(queue)) != 0 || after > queue_entries(queue))
		return -EINVAL;
	return wait_outstanding(queue, after);
}

int vsmmu_client_queue_submit(struct vsmmu_client_queue *queue, const struct vsmmu_command *commands, uint32_t count,
			      uint32_t *published)
{
	uint32_t entries = queue_entries(queue);
	int rc = 0;
	uint32_t done = 0;
	while (done < count) {
		if (queue->lost) {
			rc = -ESHUTDOWN;
			break;
		}
		uint32_t cons = atomic_load_explicit(queue_u32(queue, QUEUE_FIELD(cons)), memory_order_acquire);
		uint32_t used = queue_distance(queue, cons, queue->prod);
		if ((cons & ~queue_position_mask(queue)) != 0 || used > entries) {
			rc = -EPROTO;
			break;
		}
		if (used == entries) {
			/* Full: wait for room, as for a sync (§8.2). */
			if ((rc = wait_outstanding(queue, entries - 1)))
				break;
			continue;
		}
		uint32_t n = entries - used;
		if (n > count - done)
			n = count - done;
		for (uint32_t i = 0; i < n; i++) {
			uint32_t position = (queue->prod + i) & queue_position_mask(queue);
			atomic_store_explicit(queue_slot(queue, position, 0), commands[done + i].w[0], memory_order_relaxed);
			atomic_store_explicit(queue_slot(queue, position, 1), commands[done + i].w[1], memory_order_relaxed);
		}
		queue->prod = (queue->prod + n) & queue_position_mask(queue);
		atomic_store_explicit(queue_u32(queue, QUEUE_FIELD(prod)), queue->prod, memory_order_release);
		kick_if_sleeping(queue);
		done += n;
	}
	if (published)
		*published = done;
	return rc;
}

int vsmmu_client_queue_submit_and_wait(struct vsmmu_client_queue *queue, const struct vsmmu_command *commands,
				       uint32_t count)
{
	int rc = vsmmu_client_queue_submit(queue, commands, count, NULL);
	return rc ? rc : vsmmu_client_queue_wait(queue, queue->prod);
}

/* ---- The event queue (PROTOCOL.md §5.17, §5.18, §9) ---------------------------------------------------------
 *
 * Concurrency notes. The daemon writes PROD, the slots and state at any moment (and a buggy one anything):
 * every access below is one C11 atomic load or store of an aligned u32 or u64. PROD is read with acquire, once
 * per look, into a local and checked (a bit outside index, wrap and bit 31, or more than 2^n ahead of CONS, is
 * -EPROTO: nothing is read); each slot field is copied once; CONS (kept in q->cons, never read back) is stored
 * with release after the copy. Before sleeping: vmm_sleeping = 1, a seq_cst fence, PROD and state again (the
 * daemon stores PROD or state, fences, then reads vmm_sleeping: one side sees the other). */

#define EVENT_FIELD(field) offsetof(struct vsmmu_event_queue_header, field)

static inline _Atomic uint32_t *event_u32(const struct vsmmu_client_event_queue *q, size_t offset)
{
	return (_Atomic uint32_t *)(void *)((char *)q->memory + offset);
}

/* The byte `offset` of the slot of `position`: its index only, so never outside the mapping. */
static inline void *event_slot_field(const struct vsmmu_client_event_queue *q, uint32_t position, size_t offset)
{
	size_t index = position & ((1u << q->log2_entries) - 1);
	return (char *)q->memory + VSMMU_EVENT_QUEUE_SLOTS_OFFSET + index * VSMMU_EVENT_SLOT_SIZE + offset;
}

static inline uint32_t event_position_mask(const struct vsmmu_client_event_queue *q) { return (2u << q->log2_entries) - 1; }
static inline uint32_t event_valid_bits(const struct vsmmu_client_event_queue *q)
{
	return event_position_mask(q) | VSMMU_EVENT_QUEUE_OVERFLOW;
}

static void release_event_queue(struct vsmmu_client_event_queue *q)
{
	if (q->memory && q->memory != MAP_FAILED)
		munmap(q->memory, q->size);
	if (q->memfd >= 0)
		close(q->memfd);
	if (q->call >= 0)
		close(q->call);
	free(q);
}

/* One look at PROD: the events available (0 … 2^n), or -EPROTO for a PROD that cannot be. */
static int event_look(struct vsmmu_client_event_queue *q)
{
	uint32_t prod = atomic_load_explicit(event_u32(q, EVENT_FIELD(prod)), memory_order_acquire);
	uint32_t available = (prod - q->cons) & event_position_mask(q);
	if ((prod & ~event_valid_bits(q)) != 0 || available > (1u << q->log2_entries))
		return -EPROTO;
	q->prod = prod;
	return (int)available;
}

static int event_overflow_pending(const struct vsmmu_client_event_queue *q)
{
	return ((q->prod ^ q->cons) & VSMMU_EVENT_QUEUE_OVERFLOW) != 0;
}

/* MAP_EVENT_QUEUE of `q`'s memory with the call eventfd `call`, on the current connection. */
static int send_map_event_queue(struct vsmmu_client *client, uint64_t id, struct vsmmu_client_event_queue *q, int call,
				uint32_t *prod)
{
	struct vsmmu_map_event_queue req = { .vsmmu_id = q->vsmmu_id, .log2_entries = q->log2_entries };
	struct vsmmu_map_event_queue_reply reply;
	int fds[2] = { q->memfd, call };
	int rc = call_once_fds(client, id, VSMMU_MSG_MAP_EVENT_QUEUE, &req, sizeof(req), NULL, 0, fds, 2, &reply, sizeof(reply));
	if (rc == 0 && prod)
		*prod = reply.prod;
	return rc;
}

/* After a reconnect resumed `vsmmu_id`: MAP_EVENT_QUEUE again for its event queue, same memfd, a fresh call
 * eventfd. A refusal loses that queue; a connection failure is returned (the recovery starts over). */
static int remap_event_queues(struct vsmmu_client *client, uint32_t vsmmu_id)
{
	for (size_t i = 0; i < client->event_queue_count; i++) {
		struct vsmmu_client_event_queue *q = client->event_queues[i];
		if (q->vsmmu_id != vsmmu_id || q->lost)
			continue;
		int fresh = new_eventfd();
		if (fresh < 0) {
			q->lost = fresh;
			continue;
		}
		int rc = send_map_event_queue(client, client->next_request_id++, q, fresh, &q->mapped_prod);
		if (rc) {
			close(fresh);
			if (is_connection_failure(rc) || rc == VSMMU_ERR_SHUTTING_DOWN)
				return rc;
			q->lost = rc;
			continue;
		}
		close(q->call);
		q->call = fresh;
		q->remaps++;
	}
	return 0;
}

int vsmmu_client_map_event_queue(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t log2_entries,
				 struct vsmmu_client_event_queue **queue)
{
	if (log2_entries < VSMMU_EVENT_QUEUE_MIN_LOG2_ENTRIES || log2_entries > VSMMU_EVENT_QUEUE_MAX_LOG2_ENTRIES || !queue)
		return -EINVAL;
	if (reserve_one((void **)&client->event_queues, client->event_queue_count, &client->event_queue_capacity,
			sizeof(*client->event_queues)))
		return -ENOMEM;
	struct vsmmu_client_event_queue *q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->client = client;
	q->vsmmu_id = vsmmu_id;
	q->log2_entries = log2_entries;
	q->memfd = q->call = -1;
	q->memory = MAP_FAILED;
	q->size = VSMMU_EVENT_QUEUE_SLOTS_OFFSET + ((size_t)VSMMU_EVENT_SLOT_SIZE << log2_entries);
	q->spin_ns = 2000;
	int rc = make_queue_memory("vsmmu-events", q->size, &q->memfd, &q->memory);
	if (rc)
		goto fail;
	if ((q->call = new_eventfd()) < 0) {
		rc = q->call;
		goto fail;
	}
	/* The header (§9.1): a new memfd reads as zeros; the configuration line, then PROD = CONS = 0. */
	atomic_store_explicit(event_u32(q, EVENT_FIELD(magic)), VSMMU_EVENT_QUEUE_MAGIC, memory_order_relaxed);
	atomic_store_explicit(event_u32(q, EVENT_FIELD(version)), VSMMU_EVENT_QUEUE_VERSION | log2_entries << 16,
			      memory_order_relaxed);
	atomic_store_explicit(event_u32(q, EVENT_FIELD(prod)), 0, memory_order_relaxed);
	atomic_store_explicit(event_u32(q, EVENT_FIELD(cons)), 0, memory_order_release);
	struct vsmmu_map_event_queue req = { .vsmmu_id = vsmmu_id, .log2_entries = log2_entries };
	struct vsmmu_map_event_queue_reply reply;
	int fds[2] = { q->memfd, q->call };
	/* Not in client->event_queues until mapped: a reconnect during this call re-sends this very request. */
	rc = call_fds(client, VSMMU_MSG_MAP_EVENT_QUEUE, &req, sizeof(req), NULL, 0, fds, 2, &reply, sizeof(reply));
	if (rc)
		goto fail;
	q->mapped_prod = reply.prod;
	client->event_queues[client->event_queue_count++] = q;
	*queue = q;
	return 0;
fail:
	release_event_queue(q);
	return rc;
}

int vsmmu_client_unmap_event_queue(struct vsmmu_client *client, struct vsmmu_client_event_queue *queue)
{
	/* Out of the list first: a reconnect during UNMAP_EVENT_QUEUE does not map it again. */
	for (size_t i = 0; i < client->event_queue_count; i++)
		if (client->event_queues[i] == queue) {
			client->event_queues[i] = client->event_queues[--client->event_queue_count];
			break;
		}
	int rc = 0;
	if (!queue->lost) {
		struct vsmmu_unmap_event_queue req = { .vsmmu_id = queue->vsmmu_id };
		rc = call(client, VSMMU_MSG_UNMAP_EVENT_QUEUE, &req, sizeof(req), NULL, 0, -1, NULL, 0);
	}
	release_event_queue(queue);
	return rc;
}

int vsmmu_client_event_read(struct vsmmu_client_event_queue *q, struct vsmmu_event_slot *event)
{
	uint32_t available = (q->prod - q->cons) & event_position_mask(q);
	if (available == 0) {
		int n = event_look(q);
		if (n <= 0)
			return n;
	}
	uint32_t at = q->cons;
	for (unsigned k = 0; k < 4; k++)
		event->record.w[k] = atomic_load_explicit((_Atomic uint64_t *)event_slot_field(q, at, offsetof(struct vsmmu_event_slot, record) + 8 * k),
							  memory_order_relaxed);
	event->sequence = atomic_load_explicit((_Atomic uint64_t *)event_slot_field(q, at, offsetof(struct vsmmu_event_slot, sequence)),
					       memory_order_relaxed);
	event->vsmmu_id = atomic_load_explicit((_Atomic uint32_t *)event_slot_field(q, at, offsetof(struct vsmmu_event_slot, vsmmu_id)),
					       memory_order_relaxed);
	event->viommu_id = atomic_load_explicit((_Atomic uint32_t *)event_slot_field(q, at, offsetof(struct vsmmu_event_slot, viommu_id)),
						memory_order_relaxed);
	event->flags = atomic_load_explicit((_Atomic uint32_t *)event_slot_field(q, at, offsetof(struct vsmmu_event_slot, flags)),
					    memory_order_relaxed);
	memset(event->reserved, 0, sizeof(event->reserved));
	/* The position moves on, the wrap bit flips as the index wraps, OVACKFLG stays. */
	q->cons = (q->cons & VSMMU_EVENT_QUEUE_OVERFLOW) | ((q->cons + 1) & event_position_mask(q));
	atomic_store_explicit(event_u32(q, EVENT_FIELD(cons)), q->cons, memory_order_release);
	return 1;
}

int vsmmu_client_event_fd(const struct vsmmu_client_event_queue *queue) { return queue->call; }

int vsmmu_client_event_overflow(struct vsmmu_client_event_queue *queue)
{
	(void)event_look(queue);
	return event_overflow_pending(queue);
}

int vsmmu_client_event_acknowledge_overflow(struct vsmmu_client_event_queue *queue)
{
	if (!event_overflow_pending(queue))
		return 0;
	queue->cons ^= VSMMU_EVENT_QUEUE_OVERFLOW;
	atomic_store_explicit(event_u32(queue, EVENT_FIELD(cons)), queue->cons, memory_order_release);
	return 1;
}

uint32_t vsmmu_client_event_state(const struct vsmmu_client_event_queue *queue)
{
	return atomic_load_explicit(event_u32(queue, EVENT_FIELD(state)), memory_order_acquire);
}

/* Something to look at: 1 (events, an overflow), -EPROTO (a corrupt PROD), -ESHUTDOWN (stopped), 0 (nothing). */
static int event_news(struct vsmmu_client_event_queue *q)
{
	int n = event_look(q);
	if (n != 0)
		return n < 0 ? n : 1;
	if (event_overflow_pending(q))
		return 1;
	if (vsmmu_client_event_state(q) == VSMMU_QUEUE_STATE_STOPPED)
		return -ESHUTDOWN;
	return 0;
}

int vsmmu_client_event_prepare_to_sleep(struct vsmmu_client_event_queue *queue)
{
	atomic_store_explicit(event_u32(queue, EVENT_FIELD(vmm_sleeping)), 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_seq_cst);
	if (event_news(queue) == 0)
		return 1;
	atomic_store_explicit(event_u32(queue, EVENT_FIELD(vmm_sleeping)), 0, memory_order_relaxed);
	return 0;
}

void vsmmu_client_event_woke(struct vsmmu_client_event_queue *queue)
{
	/* The daemon set O_NONBLOCK on the shared open file: a zero count reads as EAGAIN (fs/eventfd.c,
	 * eventfd_read), which is fine. */
	eventfd_clear(queue->call);
	atomic_store_explicit(event_u32(queue, EVENT_FIELD(vmm_sleeping)), 0, memory_order_relaxed);
}

/* The event queue's connection failed or its daemon stopped it: with a reconnect policy, one request on the
 * vSMMU reconnects (resuming it and re-mapping the queue) when the daemon is going away; 0 when it did. */
static int event_queue_recover(struct vsmmu_client_event_queue *q, int cause)
{
	struct vsmmu_client *client = q->client;
	if (!client->reconnect_enabled || q->lost)
		return q->lost ? -ESHUTDOWN : cause;
	uint64_t reconnects = client->reconnects;
	if (cause == -ECONNRESET) {
		struct backoff b = { 0 };
		int rc = recover(client, &b, -ECONNRESET, 0, NULL);
		if (rc)
			return rc;
	} else {
		struct vsmmu_get_hw_info req = { .vsmmu_id = q->vsmmu_id };
		struct vsmmu_hw_info_reply reply;
		(void)call(client, VSMMU_MSG_GET_HW_INFO, &req, sizeof(req), NULL, 0, -1, &reply, sizeof(reply));
	}
	if (client->reconnects != reconnects && !q->lost)
		return 0;
	return cause;
}

int vsmmu_client_event_wait(struct vsmmu_client_event_queue *q, int timeout_ms)
{
	uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : monotonic_ns() + (uint64_t)timeout_ms * 1000000u;
	for (;;) {
		if (q->lost)
			return -ESHUTDOWN;
		uint64_t spin_until = monotonic_ns() + q->spin_ns;
		int news;
		for (unsigned spins = 0;; spins++) {
			news = event_news(q);
			if (news != 0 || ((spins & 31) == 0 && monotonic_ns() >= spin_until))
				break;
			cpu_relax();
		}
		if (news == -ESHUTDOWN) {
			int rc = event_queue_recover(q, -ESHUTDOWN);
			if (rc == -ESHUTDOWN && !q->lost)
				q->lost = rc; /* stopped for good: later waits say so at once */
			if (rc)
				return rc;
			continue;
		}
		if (news != 0)
			return news;
		uint64_t now = monotonic_ns();
		if (now >= deadline)
			return 0;
		if (!vsmmu_client_event_prepare_to_sleep(q))
			continue;
		q->sleeps++;
		struct pollfd fds[2] = {
			{ .fd = q->call, .events = POLLIN },
			{ .fd = q->client->fd, .events = POLLIN },
		};
		uint64_t left_ms = deadline == UINT64_MAX ? 0 : (deadline - now + 999999u) / 1000000u;
		int timeout = deadline == UINT64_MAX ? -1 : (left_ms > 0x7FFFFFFF ? 0x7FFFFFFF : (int)left_ms);
		int n;
		while ((n = poll(fds, 2, timeout)) < 0 && errno == EINTR)
			;
		vsmmu_client_event_woke(q);
		if (n < 0)
			return -errno;
		/* The socket readable with no request outstanding: the connection is lost (call is looked at first:
		 * a daemon that ends the queue writes STOPPED and signals before it closes the connection). */
		if (!(fds[0].revents & POLLIN) && fds[1].revents && event_news(q) == 0) {
			int rc = event_queue_recover(q, -ECONNRESET);
			if (rc)
				return rc;
		}
	}
}

int vsmmu_client_simulate_dma(struct vsmmu_client *client, const struct vsmmu_simulate_dma *request,
			      struct vsmmu_simulate_dma_reply *reply)
{
	struct vsmmu_simulate_dma_reply ignored;
	return call(client, VSMMU_MSG_SIMULATE_DMA, request, sizeof(*request), NULL, 0, -1, reply ? reply : &ignored,
		    sizeof(*reply));
}

const char *vsmmu_error_name(uint32_t code)
{
	switch (code) {
	case VSMMU_ERR_FRAME_TOO_LARGE: return "FRAME_TOO_LARGE";
	case VSMMU_ERR_TRUNCATED_FRAME: return "TRUNCATED_FRAME";
	case VSMMU_ERR_UNKNOWN_MESSAGE_TYPE: return "UNKNOWN_MESSAGE_TYPE";
	case VSMMU_ERR_BAD_PAYLOAD_LENGTH: return "BAD_PAYLOAD_LENGTH";
	case VSMMU_ERR_HANDSHAKE_REQUIRED: return "HANDSHAKE_REQUIRED";
	case VSMMU_ERR_UNSUPPORTED_VERSION: return "UNSUPPORTED_VERSION";
	case VSMMU_ERR_BAD_FILE_DESCRIPTOR: return "BAD_FILE_DESCRIPTOR";
	case VSMMU_ERR_BAD_FIELD: return "BAD_FIELD";
	case VSMMU_ERR_UNKNOWN_VSMMU: return "UNKNOWN_VSMMU";
	case VSMMU_ERR_UNKNOWN_VIOMMU: return "UNKNOWN_VIOMMU";
	case VSMMU_ERR_UNKNOWN_PSMMU: return "UNKNOWN_PSMMU";
	case VSMMU_ERR_UNKNOWN_STREAM_ID: return "UNKNOWN_STREAM_ID";
	case VSMMU_ERR_ALREADY_EXISTS: return "ALREADY_EXISTS";
	case VSMMU_ERR_IN_USE: return "IN_USE";
	case VSMMU_ERR_INVALID_STE: return "INVALID_STE";
	case VSMMU_ERR_NOT_OWNER: return "NOT_OWNER";
	case VSMMU_ERR_PERMISSION_DENIED: return "PERMISSION_DENIED";
	case VSMMU_ERR_UNSUPPORTED: return "UNSUPPORTED";
	case VSMMU_ERR_BACKEND_FAILURE: return "BACKEND_FAILURE";
	case VSMMU_ERR_LIMIT_EXCEEDED: return "LIMIT_EXCEEDED";
	case VSMMU_ERR_SHUTTING_DOWN: return "SHUTTING_DOWN";
	case VSMMU_ERR_INTERNAL_ERROR: return "INTERNAL_ERROR";
	default: {
		static _Thread_local char buf[24];
		snprintf(buf, sizeof(buf), "ERROR(%u)", code);
		return buf;
	}
	}
}
