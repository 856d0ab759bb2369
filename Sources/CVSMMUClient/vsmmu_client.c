// SPDX-License-Identifier: MIT
// A blocking C client of the vsmmud wire protocol (see include/vsmmu_client.h and protocol/PROTOCOL.md).

#include "vsmmu_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

static void copy_name(char *dst, const char *src)
{
	memset(dst, 0, VSMMU_NAME_SIZE);
	if (src)
		strncpy(dst, src, VSMMU_NAME_SIZE - 1);
}

int vsmmu_client_connect(struct vsmmu_client *client, const char *path)
{
	memset(client, 0, sizeof(*client));
	client->fd = -1;
	client->next_request_id = 1;
	client->max_frame_size = VSMMU_MIN_FRAME_SIZE_LIMIT;
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
	client->fd = fd;
	return 0;
}

void vsmmu_client_close(struct vsmmu_client *client)
{
	if (client->fd >= 0)
		close(client->fd);
	client->fd = -1;
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
 * Sends a request and reads its reply. The reply's fixed part (`reply_size` bytes, exactly) goes to
 * `reply`; a trailing message (INVALIDATE) goes to client->last_message. Returns 0, -errno, or the
 * daemon's error code.
 */
static int call(struct vsmmu_client *client, uint16_t type, const void *part1, size_t len1, const void *part2,
		size_t len2, int pass_fd, void *reply, size_t reply_size)
{
	if (client->fd < 0)
		return -ENOTCONN;
	uint64_t id = client->next_request_id++;
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

int vsmmu_client_hello(struct vsmmu_client *client, const char *client_name, struct vsmmu_hello_reply *reply)
{
	return vsmmu_client_hello_versions(client, client_name, VSMMU_MIN_PROTOCOL_VERSION, VSMMU_PROTOCOL_VERSION,
					   reply);
}

int vsmmu_client_hello_versions(struct vsmmu_client *client, const char *client_name, uint16_t min_version,
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
	int rc = call(client, VSMMU_MSG_HELLO, &hello, sizeof(hello), NULL, 0, -1, &r, sizeof(r));
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

int vsmmu_client_create_vsmmu(struct vsmmu_client *client, const char *name, uint32_t *vsmmu_id)
{
	return vsmmu_client_create_vsmmu_resumable(client, name, vsmmu_id, NULL);
}

int vsmmu_client_create_vsmmu_resumable(struct vsmmu_client *client, const char *name, uint32_t *vsmmu_id,
					uint8_t resume_token[VSMMU_RESUME_TOKEN_SIZE])
{
	struct vsmmu_create_vsmmu req = { 0 };
	copy_name(req.name, name);
	struct vsmmu_create_vsmmu_reply_v3 r;
	int rc = call(client, VSMMU_MSG_CREATE_VSMMU, &req, sizeof(req), NULL, 0, -1, &r, sizeof(r));
	if (rc)
		return rc;
	if (vsmmu_id)
		*vsmmu_id = r.vsmmu_id;
	if (resume_token)
		memcpy(resume_token, r.resume_token, VSMMU_RESUME_TOKEN_SIZE);
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
	if (!rc && reply)
		*reply = r;
	return rc;
}

int vsmmu_client_destroy_vsmmu(struct vsmmu_client *client, uint32_t vsmmu_id)
{
	struct vsmmu_destroy_vsmmu req = { .vsmmu_id = vsmmu_id };
	return call(client, VSMMU_MSG_DESTROY_VSMMU, &req, sizeof(req), NULL, 0, -1, NULL, 0);
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
	return dev_id(client, VSMMU_MSG_UNSET_DEV_ID, vsmmu_id, viommu, host_device_id, vsid, -1);
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
