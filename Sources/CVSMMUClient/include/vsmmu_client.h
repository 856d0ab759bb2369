/* SPDX-License-Identifier: MIT */
/*
 * vsmmu_client.h — a small blocking C client of the vsmmud wire protocol, for VMMs written in C.
 *
 * It uses only protocol/vsmmu.h (the wire structures) and POSIX sockets. One client is one connection;
 * calls are synchronous (one request, one reply) and not thread-safe: give each thread its own client,
 * or lock around calls.
 *
 * Return values: 0 on success; a negative errno for a transport failure (the connection is then unusable);
 * a positive enum vsmmu_error_code when the daemon refused the request, with the ERROR frame's fields in
 * client->last_error_* and its message in client->last_message.
 */
#ifndef VSMMU_CLIENT_H
#define VSMMU_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "../../../protocol/vsmmu.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vsmmu_client {
	int fd;
	uint64_t next_request_id;
	uint16_t version;            /* the protocol version the HELLO negotiated (0 before it) */
	uint32_t max_frame_size;     /* from the HELLO reply */
	uint32_t max_commands;       /* from the HELLO reply */
	/* The last ERROR frame's fields (struct vsmmu_error) and its message, NUL-terminated. */
	uint32_t last_error_code;
	uint16_t last_error_request_type;
	uint32_t last_error_detail;
	uint64_t last_error_value;
	char last_message[VSMMU_MAX_MESSAGE_LENGTH + 1];
};

/* Connects to the daemon's Unix socket at `path` (no handshake yet). */
int vsmmu_client_connect(struct vsmmu_client *client, const char *path);
/* Closes the connection (the daemon then destroys the vSMMUs it owned). */
void vsmmu_client_close(struct vsmmu_client *client);

/* HELLO: the first exchange, offering versions VSMMU_MIN_PROTOCOL_VERSION … VSMMU_PROTOCOL_VERSION; the
 * server picks the highest it speaks (client->version). `reply` may be NULL. */
int vsmmu_client_hello(struct vsmmu_client *client, const char *client_name, struct vsmmu_hello_reply *reply);
/* HELLO offering only versions `min_version` … `max_version` (e.g. 1 … 1 to talk as a version-1 VMM). */
int vsmmu_client_hello_versions(struct vsmmu_client *client, const char *client_name, uint16_t min_version,
				uint16_t max_version, struct vsmmu_hello_reply *reply);

int vsmmu_client_create_vsmmu(struct vsmmu_client *client, const char *name, uint32_t *vsmmu_id);
/* CREATE_VSMMU that also returns the vSMMU's resume token (version 3; all zero when the connection
 * negotiated version 1-2, whose vSMMUs cannot be resumed). Keep the token secret. */
int vsmmu_client_create_vsmmu_resumable(struct vsmmu_client *client, const char *name, uint32_t *vsmmu_id,
					uint8_t resume_token[VSMMU_RESUME_TOKEN_SIZE]);
/* RESUME_VSMMU (version 3): takes the vSMMU over after a daemon restart; `iommufd` >= 0 hands the VMM's
 * iommufd back with it (for a daemon without systemd's fd store), -1 for none. */
int vsmmu_client_resume_vsmmu(struct vsmmu_client *client, uint32_t vsmmu_id,
			      const uint8_t resume_token[VSMMU_RESUME_TOKEN_SIZE], int iommufd,
			      struct vsmmu_resume_vsmmu_reply *reply);
int vsmmu_client_destroy_vsmmu(struct vsmmu_client *client, uint32_t vsmmu_id);

/* ATTACH_VIOMMU; `iommufd` >= 0 is passed with SCM_RIGHTS (the iommufd backend), -1 passes none. */
int vsmmu_client_attach_viommu(struct vsmmu_client *client, uint32_t vsmmu_id, const char *psmmu,
			       uint32_t host_device_id, uint32_t nest_parent_hwpt_id, int iommufd,
			       struct vsmmu_attach_viommu_reply *reply);
int vsmmu_client_detach_viommu(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t viommu);

/*
 * SET_DEV_ID; `vfio_device` >= 0 is the device's VFIO cdev (/dev/vfio/devices/vfioN, bound to the iommufd
 * of ATTACH_VIOMMU), passed with SCM_RIGHTS, -1 passes none. A viommu on an iommufd pSMMU needs it (the
 * daemon attaches the device through it; without: BAD_FILE_DESCRIPTOR, detail VSMMU_FD_MISSING); a
 * simulated pSMMU closes it. Protocol version 2: on a version-1 connection an fd is refused
 * (BAD_FILE_DESCRIPTOR, detail VSMMU_FD_UNEXPECTED). The daemon gets its own copy: keep yours open.
 */
int vsmmu_client_set_dev_id(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t viommu,
			    uint32_t host_device_id, uint32_t vsid, int vfio_device);
int vsmmu_client_unset_dev_id(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t viommu,
			      uint32_t host_device_id, uint32_t vsid);

/* LINK_STE: the guest STE and its `cd_count` CDs (CD i is SSID i). `reply` may be NULL. */
int vsmmu_client_link_ste(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t vsid,
			  const struct vsmmu_ste *ste, const struct vsmmu_cd *cds, uint32_t cd_count,
			  struct vsmmu_hwpt_reply *reply);
int vsmmu_client_unlink_ste(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t vsid);
int vsmmu_client_update_cd(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t vsid, uint32_t ssid,
			   const struct vsmmu_cd *cd, struct vsmmu_hwpt_reply *reply);

/*
 * GET_HW_INFO (protocol version 2): the ID registers to present to the guest (IDR0-5, IIDR, AIDR), what
 * every pSMMU behind the vSMMU supports, in `reply`. UNKNOWN_VIOMMU (value 0xFFFFFFFF) before the first
 * ATTACH_VIOMMU; UNKNOWN_MESSAGE_TYPE on a version-1 connection.
 */
int vsmmu_client_get_hw_info(struct vsmmu_client *client, uint32_t vsmmu_id, struct vsmmu_hw_info_reply *reply);

/*
 * INVALIDATE: `count` guest commands, answered once every CMD_SYNC among them completed. `reply` gets
 * consumed / error_index / syncs_completed / cerror (set CMDQ_CONS and CMDQ_CONS.ERR from them); the
 * reply's message, if any, goes to client->last_message.
 */
int vsmmu_client_invalidate(struct vsmmu_client *client, uint32_t vsmmu_id, const struct vsmmu_command *commands,
			    uint32_t count, struct vsmmu_invalidate_reply *reply);

/* The name of an error code ("UNKNOWN_STREAM_ID"), or "ERROR(n)". */
const char *vsmmu_error_name(uint32_t code);

#ifdef __cplusplus
}
#endif

#endif
