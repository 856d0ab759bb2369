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
 *
 * Reconnecting (vsmmu_client_set_reconnect): a client with a reconnect policy survives a restart of the
 * daemon. When a call's connection fails (end of stream, ECONNRESET, EPIPE) or the daemon answers
 * SHUTTING_DOWN, the client connects again with exponential backoff and jitter (ECONNREFUSED / ENOENT while
 * the daemon restarts), sends its HELLO again, RESUME_VSMMU for every vSMMU it holds a resume token for
 * (it keeps the tokens CREATE_VSMMU gave it on a version-3 connection), then re-sends the request with its
 * original request_id and payload: a control request the dead daemon had already applied is answered from
 * its journal, not applied twice; an INVALIDATE is executed again (idempotent). ERROR answers are returned,
 * never retried. When no connection was resumed within the deadline, the call returns -ETIMEDOUT with the
 * reason in client->last_message (PROTOCOL.md §5.13).
 *
 * The shared command queue (vsmmu_client_map_queue, protocol version 4, PROTOCOL.md §8) takes the socket off
 * the data path: commands go into memory shared with the daemon, and a CMD_SYNC completes when the daemon's
 * CONS passes it. A reconnect re-sends MAP_QUEUE with the same memory (and fresh eventfds) after it resumed
 * the queue's vSMMU, so a queue survives a restart of the daemon as its vSMMU does.
 *
 * The event queue (vsmmu_client_map_event_queue, protocol version 5, PROTOCOL.md §9) brings the events of the
 * vSMMU's devices (F_TRANSLATION, C_BAD_STE, ..., with the guest's vSID) into memory shared with the daemon:
 * read them with vsmmu_client_event_read, poll vsmmu_client_event_fd (the call eventfd) in an event loop or
 * block in vsmmu_client_event_wait. A reconnect re-sends MAP_EVENT_QUEUE with the same memory (and a fresh
 * call eventfd) after it resumed the vSMMU, as for the shared queue.
 */
#ifndef VSMMU_CLIENT_H
#define VSMMU_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "../../../protocol/vsmmu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A vSMMU the client can resume after a reconnect: its id, resume token and the iommufd to hand back. */
struct vsmmu_client_resumable {
	uint32_t vsmmu_id;
	int iommufd; /* -1: none (vsmmu_client_set_resume_iommufd) */
	uint8_t resume_token[VSMMU_RESUME_TOKEN_SIZE];
};

/* A VFIO cdev to hand back after a reconnect: the SET_DEV_ID to repeat with it once its vSMMU resumed. */
struct vsmmu_client_resume_cdev {
	uint32_t vsmmu_id, viommu, host_device_id, vsid;
	int cdev;
};

struct vsmmu_client_queue;
struct vsmmu_client_event_queue;

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
	/* Reconnecting (vsmmu_client_set_reconnect); all zero without a policy. */
	char socket_path[108];
	int reconnect_enabled;
	uint32_t reconnect_initial_ms, reconnect_max_ms, reconnect_deadline_ms;
	uint64_t reconnects;         /* how many times the client reconnected and resumed */
	uint64_t lost_vsmmus;        /* vSMMUs a reconnect could not resume (UNKNOWN_VSMMU: reclaimed, no journal) */
	uint64_t jitter_state;
	int handshaken;              /* a HELLO succeeded: send it again on a new connection */
	char hello_name[VSMMU_NAME_SIZE];
	uint16_t hello_min_version, hello_max_version;
	struct vsmmu_client_resumable *resumables; /* the vSMMUs it holds tokens for */
	size_t resumable_count, resumable_capacity;
	struct vsmmu_client_resume_cdev *resume_cdevs; /* vsmmu_client_set_resume_vfio_device */
	size_t resume_cdev_count, resume_cdev_capacity;
	struct vsmmu_client_queue **queues; /* vsmmu_client_map_queue, re-mapped after a reconnect */
	size_t queue_count, queue_capacity;
	struct vsmmu_client_event_queue **event_queues; /* vsmmu_client_map_event_queue, re-mapped too */
	size_t event_queue_count, event_queue_capacity;
};

/* Connects to the daemon's Unix socket at `path` (no handshake yet). */
int vsmmu_client_connect(struct vsmmu_client *client, const char *path);
/* Closes the connection (the daemon then destroys the vSMMUs it owned), forgets the resume tokens and turns
 * reconnecting off. */
void vsmmu_client_close(struct vsmmu_client *client);

/*
 * Turns reconnecting on (after vsmmu_client_connect): the first attempt is immediate, attempt n then waits a
 * random time between half of and all of min(initial_ms * 2^(n-1), max_ms); after deadline_ms since the
 * failure the call gives up with -ETIMEDOUT. initial_ms 0 turns it off. Returns 0, or -EINVAL.
 */
int vsmmu_client_set_reconnect(struct vsmmu_client *client, uint32_t initial_ms, uint32_t max_ms, uint32_t deadline_ms);
/* Remembers `resume_token` for `vsmmu_id` (a token another client handed over); replaces an earlier one.
 * Returns 0 or -ENOMEM. */
int vsmmu_client_adopt_resume_token(struct vsmmu_client *client, uint32_t vsmmu_id,
				    const uint8_t resume_token[VSMMU_RESUME_TOKEN_SIZE]);
/* The iommufd to hand back with the automatic RESUME_VSMMU of `vsmmu_id` (a daemon without systemd's fd
 * store needs it), -1 for none. The client does not own it: keep it open. Returns 0, or -ENOENT when the
 * client holds no token for the vSMMU. */
int vsmmu_client_set_resume_iommufd(struct vsmmu_client *client, uint32_t vsmmu_id, int iommufd);
/* The VFIO cdev of the device registered as `vsid` (SET_DEV_ID on `viommu` with `host_device_id`) to hand
 * back after the automatic RESUME_VSMMU of `vsmmu_id`: the client repeats that SET_DEV_ID with it
 * (PROTOCOL.md §5.14), which a daemon that re-adopted the device without its cdev keeps and any other
 * answers without a change; a refusal does not fail the reconnect. -1 forgets it (so does
 * vsmmu_client_unset_dev_id). The client does not own it: keep it open. Returns 0 or -ENOMEM. */
int vsmmu_client_set_resume_vfio_device(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t viommu,
					uint32_t host_device_id, uint32_t vsid, int cdev);

/* HELLO: the first exchange, offering versions VSMMU_MIN_PROTOCOL_VERSION … VSMMU_PROTOCOL_VERSION; the
 * server picks the highest it speaks (client->version). `reply` may be NULL. */
int vsmmu_client_hello(struct vsmmu_client *client, const char *client_name, struct vsmmu_hello_reply *reply);
/* HELLO offering only versions `min_version` … `max_version` (e.g. 1 … 1 to talk as a version-1 VMM). */
int vsmmu_client_hello_versions(struct vsmmu_client *client, const char *client_name, uint16_t min_version,
				uint16_t max_version, struct vsmmu_hello_reply *reply);

int vsmmu_client_create_vsmmu(struct vsmmu_client *client, const char *name, uint32_t *vsmmu_id);
/* CREATE_VSMMU that also returns the vSMMU's resume token (version 3; all zero when the connection
 * negotiated version 1-2, whose vSMMUs cannot be resumed). Keep the token secret. Both create calls keep
 * the token in the client too, for reconnecting, and on version 3 send a fresh create key (getrandom), so a
 * CREATE_VSMMU re-sent after a reconnect is answered with the vSMMU it created, not a second one. */
int vsmmu_client_create_vsmmu_resumable(struct vsmmu_client *client, const char *name, uint32_t *vsmmu_id,
					uint8_t resume_token[VSMMU_RESUME_TOKEN_SIZE]);
/* RESUME_VSMMU (version 3): takes the vSMMU over after a daemon restart; `iommufd` >= 0 hands the VMM's
 * iommufd back with it (for a daemon without systemd's fd store), -1 for none. */
int vsmmu_client_resume_vsmmu(struct vsmmu_client *client, uint32_t vsmmu_id,
			      const uint8_t resume_token[VSMMU_RESUME_TOKEN_SIZE], int iommufd,
			      struct vsmmu_resume_vsmmu_reply *reply);
/* DESTROY_VSMMU; the vSMMU's token is forgotten. */
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

/* ---- The shared command queue (protocol version 4, PROTOCOL.md §5.15, §5.16, §8) ------------------------ */

/* What vsmmu_client_queue_wait and vsmmu_client_queue_submit return when the queue stopped on an error (above
 * every enum vsmmu_error_code): read it with vsmmu_client_queue_error, acknowledge it with
 * vsmmu_client_queue_acknowledge. */
#define VSMMU_CLIENT_QUEUE_ERROR 0x10000

/* A queue error (PROTOCOL.md §8.5): the queue stopped with CONS on `cons`. */
struct vsmmu_client_queue_error {
	uint32_t sequence; /* error_sequence: what vsmmu_client_queue_acknowledge stores in error_ack */
	uint8_t cerror;    /* CMDQ_CONS.ERR: VSMMU_CERROR_ILL, _ABT or _ATC_INV_SYNC */
	uint8_t kind;      /* VSMMU_QUEUE_ERROR_COMMAND (the command at `cons` failed) or _PROD */
	uint32_t cons;     /* error_cons: the position the queue stopped at (SMMUv3 form) */
	uint32_t index;    /* its slot: the failing command's index in the queue */
};

/* One vSMMU's shared queue, as vsmmu_client_map_queue made it. The fields are the client's; read them, do not
 * write them. */
struct vsmmu_client_queue {
	struct vsmmu_client *client;
	uint32_t vsmmu_id;
	uint32_t log2_entries;
	int memfd, kick, call;  /* the memory and the two eventfds (the daemon holds its own copies) */
	void *memory;           /* the mapping: struct vsmmu_queue_header, then 2^log2_entries slots */
	size_t size;
	uint32_t prod;          /* PROD as this client last published it (the VMM is its only writer) */
	uint32_t spin_ns;       /* how long a wait polls CONS before it sleeps on call (default 20000) */
	int lost;               /* 0, or why the queue is gone (negative errno or enum vsmmu_error_code) */
	uint64_t kicks;         /* writes to kick: the daemon was asleep */
	uint64_t sleeps;        /* waits that slept on call */
	uint64_t remaps;        /* MAP_QUEUEs re-sent after a reconnect */
};

/*
 * MAP_QUEUE: gives `vsmmu_id` a shared command queue of 2^`log2_entries` slots (VSMMU_QUEUE_MIN_LOG2_ENTRIES …
 * VSMMU_QUEUE_MAX_LOG2_ENTRIES). The client creates the memory (a memfd sealed against shrinking, mapped
 * shared), the kick and call eventfds, writes the header (PROD = CONS = 0) and sends the three fds with the
 * request. On success `*queue` is the queue, owned by the client until vsmmu_client_unmap_queue or
 * vsmmu_client_close. Returns 0, -EINVAL (log2_entries), -errno (a system call), or the daemon's error code
 * (UNKNOWN_MESSAGE_TYPE before version 4; ALREADY_EXISTS when the vSMMU has a queue).
 */
int vsmmu_client_map_queue(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t log2_entries,
			   struct vsmmu_client_queue **queue);
/* UNMAP_QUEUE, then unmaps the memory, closes the fds and frees `queue` (also when the request failed, e.g.
 * because the vSMMU is gone). Commands published and not consumed are dropped with it. Returns the request's
 * result. */
int vsmmu_client_unmap_queue(struct vsmmu_client *client, struct vsmmu_client_queue *queue);

/*
 * Publishes `count` commands at PROD (a release store after the slots) and kicks the daemon if it sleeps.
 * When the queue is full it waits for room as vsmmu_client_queue_wait waits, so it may return what that
 * returns, with only the first `*published` commands published (`published` may be NULL). queue->prod is
 * then the position after the last one published: the position to wait for. Returns 0,
 * VSMMU_CLIENT_QUEUE_ERROR, or a negative errno.
 */
int vsmmu_client_queue_submit(struct vsmmu_client_queue *queue, const struct vsmmu_command *commands, uint32_t count,
			      uint32_t *published);
/*
 * Waits until CONS reaches `position` (queue->prod after a vsmmu_client_queue_submit): every CMD_SYNC before
 * it has completed on every viommu it covers (commands after the last CMD_SYNC are only queued). It polls CONS
 * for queue->spin_ns, then sleeps on the call eventfd and the socket, and goes on after a reconnect (the
 * queue re-mapped). Returns 0; VSMMU_CLIENT_QUEUE_ERROR when the queue stopped on an error first; -ESHUTDOWN
 * when the daemon stopped the queue (UNMAP_QUEUE, the vSMMU destroyed; a daemon that stops, without a
 * reconnect policy) or it was lost in a reconnect; -ECONNRESET when the connection was lost (without a
 * reconnect policy); -EPROTO when the memory holds a CONS that cannot be; -EINVAL for a position that was not
 * published.
 */
int vsmmu_client_queue_wait(struct vsmmu_client_queue *queue, uint32_t position);
/* Submits `count` commands and waits for the PROD after them (the usual call for a batch ending in CMD_SYNC). */
int vsmmu_client_queue_submit_and_wait(struct vsmmu_client_queue *queue, const struct vsmmu_command *commands,
				       uint32_t count);
/* Reads the error record: 1 with `*error` filled when the queue is stopped on an error not yet acknowledged, 0
 * when it is not. */
int vsmmu_client_queue_error(const struct vsmmu_client_queue *queue, struct vsmmu_client_queue_error *error);
/*
 * Acknowledges the queue's error (the guest wrote GERRORN): `replacement` (may be NULL) is first written into
 * the slot at CONS, as the guest may rewrite it (Linux replaces an illegal command with a CMD_SYNC); then
 * error_ack = error_sequence with a release store, and a kick if the daemon sleeps. The daemon resumes at
 * CONS, reading that slot again. Returns 0, or -EALREADY when no error is pending.
 */
int vsmmu_client_queue_acknowledge(struct vsmmu_client_queue *queue, const struct vsmmu_command *replacement);
/* CONS as the daemon last published it (SMMUv3 form). */
uint32_t vsmmu_client_queue_cons(const struct vsmmu_client_queue *queue);
/* The u32 header field at `offset` (offsetof(struct vsmmu_queue_header, …): prod, cons, state, the sleep
 * flags, …), read with one atomic acquire load. Safe from any thread while the queue is mapped: for a
 * monitor or a test watching a wait from outside. 0 for an offset that is not a u32 field's. */
uint32_t vsmmu_client_queue_load(const struct vsmmu_client_queue *queue, size_t offset);

/* ---- The event queue (protocol version 5, PROTOCOL.md §5.17, §5.18, §9) ----------------------------------- */

/* One vSMMU's event queue, as vsmmu_client_map_event_queue made it. The fields are the client's; read them, do
 * not write them. */
struct vsmmu_client_event_queue {
	struct vsmmu_client *client;
	uint32_t vsmmu_id;
	uint32_t log2_entries;
	int memfd, call;        /* the memory and the call eventfd (the daemon holds its own copies) */
	void *memory;           /* the mapping: struct vsmmu_event_queue_header, then 2^log2_entries slots */
	size_t size;
	uint32_t cons;          /* CONS as this client last stored it, with OVACKFLG (the VMM is its only writer) */
	uint32_t prod;          /* PROD as last read and found valid, with OVFLG */
	uint32_t mapped_prod;   /* the PROD MAP_EVENT_QUEUE's (last) reply named */
	uint32_t spin_ns;       /* how long vsmmu_client_event_wait polls PROD before it sleeps (default 2000) */
	int lost;               /* 0, or why the queue is gone (negative errno or enum vsmmu_error_code) */
	uint64_t sleeps;        /* waits that slept on call */
	uint64_t remaps;        /* MAP_EVENT_QUEUEs re-sent after a reconnect */
};

/*
 * MAP_EVENT_QUEUE: gives `vsmmu_id` an event queue of 2^`log2_entries` slots (VSMMU_EVENT_QUEUE_MIN_LOG2_ENTRIES
 * … VSMMU_EVENT_QUEUE_MAX_LOG2_ENTRIES). The client creates the memory (a memfd sealed against shrinking,
 * mapped shared) and the call eventfd, writes the header (PROD = CONS = 0) and sends the two fds with the
 * request. On success `*queue` is owned by the client until vsmmu_client_unmap_event_queue or
 * vsmmu_client_close. Returns 0, -EINVAL, -errno, or the daemon's error code (UNKNOWN_MESSAGE_TYPE before
 * version 5; ALREADY_EXISTS when the vSMMU has an event queue; LIMIT_EXCEEDED above event_queue_entries).
 */
int vsmmu_client_map_event_queue(struct vsmmu_client *client, uint32_t vsmmu_id, uint32_t log2_entries,
				 struct vsmmu_client_event_queue **queue);
/* UNMAP_EVENT_QUEUE, then unmaps the memory, closes the fds and frees `queue` (also when the request failed).
 * Events not read are dropped with it. Returns the request's result. */
int vsmmu_client_unmap_event_queue(struct vsmmu_client *client, struct vsmmu_client_event_queue *queue);
/*
 * The next event: 1 with `*event` (the slot as the daemon wrote it: record with the guest's vSID, sequence,
 * vsmmu_id, viommu_id, flags) copied out and CONS stored past it; 0 when there is none now; -EPROTO when PROD
 * holds a value that cannot be (nothing is read). No system call.
 */
int vsmmu_client_event_read(struct vsmmu_client_event_queue *queue, struct vsmmu_event_slot *event);
/* The call eventfd: readable when the daemon signalled a sleeping reader (after
 * vsmmu_client_event_prepare_to_sleep returned 1). Changes after a reconnect's re-map. */
int vsmmu_client_event_fd(const struct vsmmu_client_event_queue *queue);
/* 1 when events were dropped since the last acknowledgement (PROD.OVFLG != CONS.OVACKFLG, as of one look at
 * PROD now), else 0. */
int vsmmu_client_event_overflow(struct vsmmu_client_event_queue *queue);
/* Acknowledges the overflow: copies OVFLG into CONS bit 31 (the kernel's queue_sync_cons_ovf). 1 when there was
 * one (toggle the guest's EVTQ_PROD.OVFLG), 0 when not. */
int vsmmu_client_event_acknowledge_overflow(struct vsmmu_client_event_queue *queue);
/* The sleep half of PROTOCOL.md §9.5 for an event loop of the caller's: vmm_sleeping = 1, a full fence, a look.
 * 1: poll vsmmu_client_event_fd, then call vsmmu_client_event_woke; 0: something is new (vmm_sleeping is 0
 * again). */
int vsmmu_client_event_prepare_to_sleep(struct vsmmu_client_event_queue *queue);
/* After the call eventfd was readable (or the sleep ended): clears its count and stores vmm_sleeping = 0. */
void vsmmu_client_event_woke(struct vsmmu_client_event_queue *queue);
/* `state` now (VSMMU_QUEUE_STATE_*). */
uint32_t vsmmu_client_event_state(const struct vsmmu_client_event_queue *queue);
/*
 * Blocks until an event, an overflow or a corrupt PROD is there, polling PROD for queue->spin_ns and then
 * sleeping on the call eventfd and the socket, at most `timeout_ms` (-1: no limit). Returns 1 (read it), 0
 * (the timeout passed), -ESHUTDOWN (the daemon stopped the queue: UNMAP_EVENT_QUEUE, the vSMMU destroyed, a
 * daemon that stops without a reconnect policy; or it was lost in a reconnect), -ECONNRESET (the connection
 * was lost, without a reconnect policy; with one the client reconnects, the queue is re-mapped and the wait
 * goes on), -EPROTO (a corrupt PROD), or another negative errno.
 */
int vsmmu_client_event_wait(struct vsmmu_client_event_queue *queue, int timeout_ms);

/*
 * SIMULATE_DMA (version 5, PROTOCOL.md §6.4): one access of a simulated device on a vSMMU this client owns.
 * `reply->outcome` is VSMMU_DMA_*; for VSMMU_DMA_FAULT `reply->event` is the record as the guest sees it, and
 * the event also reaches the vSMMU's event queue. Returns 0 or an error (UNSUPPORTED: not a simulated pSMMU).
 */
int vsmmu_client_simulate_dma(struct vsmmu_client *client, const struct vsmmu_simulate_dma *request,
			      struct vsmmu_simulate_dma_reply *reply);

/* The name of an error code ("UNKNOWN_STREAM_ID"), or "ERROR(n)". */
const char *vsmmu_error_name(uint32_t code);

#ifdef __cplusplus
}
#endif

#endif
