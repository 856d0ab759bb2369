// SPDX-License-Identifier: MIT
// A blocking C client of the vsmmud wire protocol (see include/vsmmu_client.h and protocol/PROTOCOL.md).

#include "vsmmu_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

void vsmmu_client_close(struct vsmmu_client *client)
{
	if (client->fd >= 0)
		close(client->fd);
	client->fd = -1;
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

/* Sends header + two payload parts in one sendmsg (with an fd when `pass_fd` >= 0), all of it. */
static int send_frame(struct vsmmu_client *client, uint16_t type, uint64_t request_id, const void *part1,
		      size_t len1, const void *part2, size_t len2, int pass_fd)
{
	struct vsmmu_frame_header header = {
		.payload_length = (uint32_t)(len1 + len2),
		.type = type,
		.flags = pass_fd >= 0 ? VSMMU_FRAME_FD_ATTACHED : 0,
		.request_id = request_id,
	};
	if (sizeof(header) + len1 + len2 > VSMMU_MAX_FRAME_SIZE)
		return -EMSGSIZE;
	struct iovec iov[3] = {
		{ .iov_base = &header, .iov_len = sizeof(header) },
		{ .iov_base = (void *)part1, .iov_len = len1 },
		{ .iov_base = (void *)part2, .iov_len = len2 },
	};
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} control;
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 3 };
	if (pass_fd >= 0) {
		memset(&control, 0, sizeof(control));
		msg.msg_control = control.buf;
		msg.msg_controllen = sizeof(control.buf);
		struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		cmsg->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cmsg), &pass_fd, sizeof(int));
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
static int call_once(struct vsmmu_client *client, uint64_t id, uint16_t type, const void *part1, size_t len1,
		     const void *part2, size_t len2, int pass_fd, void *reply, size_t reply_size)
{
	if (client->fd < 0)
		return -ENOTCONN;
	int rc = send_frame(client, type, id, part1, len1, part2, len2, pass_fd);
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
			i++;
		}
		if (rc == 0) {
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
static int call(struct vsmmu_client *client, uint16_t type, const void *part1, size_t len1, const void *part2,
		size_t len2, int pass_fd, void *reply, size_t reply_size)
{
	uint64_t id = client->next_request_id++;
	struct backoff b = { 0 };
	for (;;) {
		int rc = call_once(client, id, type, part1, len1, part2, len2, pass_fd, reply, reply_size);
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
