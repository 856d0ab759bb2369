/* SPDX-License-Identifier: MIT */
/*
 * vsmmu.h — the vsmmud wire protocol, version 5: every frame and message structure and constant.
 *
 * PROTOCOL.md (next to this file) is the specification; this header mirrors it. All integers are
 * little-endian; the structures below are packed and their layouts pinned with _Static_assert, so on a
 * little-endian host (x86-64, AArch64 Linux) a client can memcpy them to and from the wire.
 *
 * Every frame: struct vsmmu_frame_header, then header.payload_length bytes of payload. Trailing arrays
 * (commands, CDs, list entries, messages) follow their fixed part directly.
 *
 * C11 or later; no dependency beyond <stdint.h>.
 */
#ifndef VSMMU_PROTOCOL_H
#define VSMMU_PROTOCOL_H

#include <stdint.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vsmmu.h maps wire bytes onto host structures: a little-endian host is required"
#endif

#ifdef __cplusplus
extern "C" {
#define VSMMU_STATIC_ASSERT static_assert
#else
#define VSMMU_STATIC_ASSERT _Static_assert
#endif

#define VSMMU_PACKED __attribute__((packed))

/* ---- Protocol constants ---------------------------------------------------------------------- */

/* HELLO magic: the bytes "VSMU". */
#define VSMMU_MAGIC 0x554D5356u
/* The version this header describes, and the lowest one a version-5 server still speaks (version 2
 * adds GET_HW_INFO and the device's VFIO cdev on SET_DEV_ID; version 3 adds the resume token in
 * CREATE_VSMMU's reply, RESUME_VSMMU and LIST's vSMMU flags; version 4 adds the shared command queue,
 * MAP_QUEUE and UNMAP_QUEUE; version 5 adds the event queue, MAP_EVENT_QUEUE and UNMAP_EVENT_QUEUE, and
 * SIMULATE_DMA; PROTOCOL.md §3.1, §8, §9). */
#define VSMMU_PROTOCOL_VERSION 5u
#define VSMMU_MIN_PROTOCOL_VERSION 1u
/* No frame, in either direction, is larger (header included): 1 MiB. */
#define VSMMU_MAX_FRAME_SIZE 1048576u
/* A server's max_frame_size is at least this. */
#define VSMMU_MIN_FRAME_SIZE_LIMIT 65536u
/* Longest UTF-8 message of an ERROR or INVALIDATE reply. */
#define VSMMU_MAX_MESSAGE_LENGTH 1024u
/* Size of every name field (UTF-8, NUL-padded). */
#define VSMMU_NAME_SIZE 64u
/* Sizes of the SMMUv3 structures carried on the wire. */
#define VSMMU_COMMAND_SIZE 16u
#define VSMMU_STE_SIZE 64u
#define VSMMU_CD_SIZE 64u
/* viommus per vSMMU. */
#define VSMMU_MAX_VIOMMUS 64u

/* ---- Frame header ---------------------------------------------------------------------------- */

/* header.flags */
#define VSMMU_FRAME_FD_ATTACHED 0x0001u /* one fd (MAP_QUEUE: three, MAP_EVENT_QUEUE: two) passed with SCM_RIGHTS in the frame's sendmsg */
#define VSMMU_FRAME_RESERVED_FLAGS 0xFFFEu

struct vsmmu_frame_header {
	uint32_t payload_length; /* bytes after this header */
	uint16_t type;           /* enum vsmmu_message_type */
	uint16_t flags;          /* VSMMU_FRAME_* */
	uint64_t request_id;     /* chosen by the client, echoed in the reply */
} VSMMU_PACKED;

/* ---- Message types --------------------------------------------------------------------------- */

#define VSMMU_MSG_REPLY 0x8000u /* reply type = request type | VSMMU_MSG_REPLY */

enum vsmmu_message_type {
	VSMMU_MSG_HELLO = 0x0001,
	VSMMU_MSG_CREATE_VSMMU = 0x0010,
	VSMMU_MSG_DESTROY_VSMMU = 0x0011,
	VSMMU_MSG_ATTACH_VIOMMU = 0x0012,
	VSMMU_MSG_DETACH_VIOMMU = 0x0013,
	VSMMU_MSG_SET_DEV_ID = 0x0014,
	VSMMU_MSG_UNSET_DEV_ID = 0x0015,
	VSMMU_MSG_LINK_STE = 0x0016,
	VSMMU_MSG_UNLINK_STE = 0x0017,
	VSMMU_MSG_UPDATE_CD = 0x0018,
	VSMMU_MSG_GET_HW_INFO = 0x0019,       /* version 2 */
	VSMMU_MSG_RESUME_VSMMU = 0x001A,      /* version 3 */
	VSMMU_MSG_MAP_QUEUE = 0x001B,         /* version 4 */
	VSMMU_MSG_UNMAP_QUEUE = 0x001C,       /* version 4 */
	VSMMU_MSG_MAP_EVENT_QUEUE = 0x001D,   /* version 5 */
	VSMMU_MSG_UNMAP_EVENT_QUEUE = 0x001E, /* version 5 */
	VSMMU_MSG_INVALIDATE = 0x0020,
	VSMMU_MSG_STATS = 0x0040,
	VSMMU_MSG_LIST = 0x0041,
	VSMMU_MSG_HEALTH = 0x0042,
	VSMMU_MSG_SIMULATE_DMA = 0x0043,      /* version 5 */

	VSMMU_MSG_ERROR = 0x8000,
	VSMMU_MSG_HELLO_REPLY = 0x8001,
	VSMMU_MSG_CREATE_VSMMU_REPLY = 0x8010,
	VSMMU_MSG_DESTROY_VSMMU_REPLY = 0x8011,
	VSMMU_MSG_ATTACH_VIOMMU_REPLY = 0x8012,
	VSMMU_MSG_DETACH_VIOMMU_REPLY = 0x8013,
	VSMMU_MSG_SET_DEV_ID_REPLY = 0x8014,
	VSMMU_MSG_UNSET_DEV_ID_REPLY = 0x8015,
	VSMMU_MSG_LINK_STE_REPLY = 0x8016,
	VSMMU_MSG_UNLINK_STE_REPLY = 0x8017,
	VSMMU_MSG_UPDATE_CD_REPLY = 0x8018,
	VSMMU_MSG_GET_HW_INFO_REPLY = 0x8019, /* version 2 */
	VSMMU_MSG_RESUME_VSMMU_REPLY = 0x801A, /* version 3 */
	VSMMU_MSG_MAP_QUEUE_REPLY = 0x801B,   /* version 4 */
	VSMMU_MSG_UNMAP_QUEUE_REPLY = 0x801C, /* version 4 */
	VSMMU_MSG_MAP_EVENT_QUEUE_REPLY = 0x801D,   /* version 5 */
	VSMMU_MSG_UNMAP_EVENT_QUEUE_REPLY = 0x801E, /* version 5 */
	VSMMU_MSG_INVALIDATE_REPLY = 0x8020,
	VSMMU_MSG_STATS_REPLY = 0x8040,
	VSMMU_MSG_LIST_REPLY = 0x8041,
	VSMMU_MSG_HEALTH_REPLY = 0x8042,
	VSMMU_MSG_SIMULATE_DMA_REPLY = 0x8043,      /* version 5 */
};

/* ---- Errors (ERROR frame) -------------------------------------------------------------------- */

enum vsmmu_error_code {
	VSMMU_ERR_FRAME_TOO_LARGE = 1,      /* closes the connection */
	VSMMU_ERR_TRUNCATED_FRAME = 2,      /* closes the connection */
	VSMMU_ERR_UNKNOWN_MESSAGE_TYPE = 3,
	VSMMU_ERR_BAD_PAYLOAD_LENGTH = 4,
	VSMMU_ERR_HANDSHAKE_REQUIRED = 5,
	VSMMU_ERR_UNSUPPORTED_VERSION = 6,
	VSMMU_ERR_BAD_FILE_DESCRIPTOR = 7,
	VSMMU_ERR_BAD_FIELD = 8,
	VSMMU_ERR_UNKNOWN_VSMMU = 16,
	VSMMU_ERR_UNKNOWN_VIOMMU = 17,
	VSMMU_ERR_UNKNOWN_PSMMU = 18,
	VSMMU_ERR_UNKNOWN_STREAM_ID = 19,
	VSMMU_ERR_ALREADY_EXISTS = 20,
	VSMMU_ERR_IN_USE = 21,
	VSMMU_ERR_INVALID_STE = 22,
	VSMMU_ERR_NOT_OWNER = 23,
	VSMMU_ERR_PERMISSION_DENIED = 24,   /* peer not on the allow-list; closes the connection after the reply */
	VSMMU_ERR_UNSUPPORTED = 25,         /* version 5: SIMULATE_DMA on a backend without simulated devices */
	VSMMU_ERR_BACKEND_FAILURE = 32,
	VSMMU_ERR_LIMIT_EXCEEDED = 33,
	VSMMU_ERR_SHUTTING_DOWN = 34,       /* closes the connection after the reply */
	VSMMU_ERR_INTERNAL_ERROR = 35,
};

/* BAD_FIELD's detail for a header field: this plus the field's offset in the header. */
#define VSMMU_BAD_FIELD_HEADER 0x10000u

/* BAD_FILE_DESCRIPTOR details. */
#define VSMMU_FD_MISSING 1u
#define VSMMU_FD_UNEXPECTED 2u
#define VSMMU_FD_UNUSABLE 3u
#define VSMMU_FD_QUEUE_MEMORY 4u  /* MAP_QUEUE, MAP_EVENT_QUEUE: not a memfd sealed with F_SEAL_SHRINK, too small, or a bad header */
#define VSMMU_FD_QUEUE_EVENTFD 5u /* MAP_QUEUE: kick or call is not an eventfd; MAP_EVENT_QUEUE: call is not */

/* ALREADY_EXISTS details: what conflicts. */
#define VSMMU_CONFLICT_PSMMU 1u       /* value: the index of the pSMMU's existing viommu */
#define VSMMU_CONFLICT_STREAM_ID 2u   /* value: the vSID */
#define VSMMU_CONFLICT_HOST_DEVICE 3u /* value: the host device id */
#define VSMMU_CONFLICT_HANDSHAKE 4u   /* a second HELLO */
#define VSMMU_CONFLICT_CREATE_KEY 5u  /* CREATE_VSMMU: another request already used this create key */
#define VSMMU_CONFLICT_QUEUE 6u       /* MAP_QUEUE: the vSMMU has a shared queue over other memory */
#define VSMMU_CONFLICT_EVENT_QUEUE 7u /* MAP_EVENT_QUEUE: the vSMMU has an event queue over other memory */

/* INVALID_STE details. */
#define VSMMU_STE_DISALLOWED_BITS_W0 1u
#define VSMMU_STE_DISALLOWED_BITS_W1 2u
#define VSMMU_STE_DISALLOWED_CONFIG 3u
#define VSMMU_STE_DISALLOWED_EATS 4u
#define VSMMU_STE_TOO_MANY_CDS 5u
#define VSMMU_STE_SSID_OUT_OF_RANGE 6u
#define VSMMU_STE_NOT_TRANSLATING 7u

/* ERROR payload, followed by message_length bytes of UTF-8. */
struct vsmmu_error {
	uint32_t code;           /* enum vsmmu_error_code */
	uint16_t request_type;   /* the refused request's header type (0 if no header was read) */
	uint16_t message_length; /* <= VSMMU_MAX_MESSAGE_LENGTH */
	uint32_t detail;         /* code-specific, see PROTOCOL.md §4 */
	uint32_t reserved;
	uint64_t value;          /* code-specific */
	char message[];
} VSMMU_PACKED;

/* ---- Handshake ------------------------------------------------------------------------------- */

struct vsmmu_hello {
	uint32_t magic;       /* VSMMU_MAGIC */
	uint16_t min_version;
	uint16_t max_version;
	uint32_t pid;
	uint32_t reserved;
	char client_name[VSMMU_NAME_SIZE];
} VSMMU_PACKED;

struct vsmmu_hello_reply {
	uint32_t magic;       /* VSMMU_MAGIC */
	uint16_t version;
	uint16_t reserved;
	uint32_t max_frame_size;
	uint32_t max_commands;
	uint32_t max_vsmmus;
	uint32_t max_viommus;
	uint32_t max_context_descriptors;
	uint32_t server_pid;
	char server_name[VSMMU_NAME_SIZE];
} VSMMU_PACKED;

/* ---- vSMMU objects --------------------------------------------------------------------------- */

struct vsmmu_create_vsmmu {
	uint32_t flags;       /* 0, or VSMMU_CREATE_FLAG_KEY (then the payload is struct vsmmu_create_vsmmu_keyed) */
	uint32_t reserved;
	char name[VSMMU_NAME_SIZE];
} VSMMU_PACKED;

/* CREATE_VSMMU's flags: the payload ends with a create key (version 3, PROTOCOL.md §5.2). */
#define VSMMU_CREATE_FLAG_KEY (1u << 0)
/* The create key's size: 128 random bits the client draws for one creation. */
#define VSMMU_CREATE_KEY_SIZE 16u

/* CREATE_VSMMU with a create key (flags VSMMU_CREATE_FLAG_KEY, version 3): the same frame re-sent with
 * the same request_id after a daemon restart is answered with the vSMMU it created (and its resume
 * token), not a second one. Keep the key like a password. */
struct vsmmu_create_vsmmu_keyed {
	uint32_t flags;       /* VSMMU_CREATE_FLAG_KEY */
	uint32_t reserved;
	char name[VSMMU_NAME_SIZE];
	uint8_t create_key[VSMMU_CREATE_KEY_SIZE];
} VSMMU_PACKED;

struct vsmmu_create_vsmmu_reply {
	uint32_t vsmmu_id;
	uint32_t reserved;
} VSMMU_PACKED;

/* The resume token's size: 128 random bits (version 3). */
#define VSMMU_RESUME_TOKEN_SIZE 16u

/* CREATE_VSMMU's reply on a version-3 connection: the version-1 reply, then the vSMMU's resume token,
 * the secret RESUME_VSMMU presents after a daemon restart. Keep it like a password. */
struct vsmmu_create_vsmmu_reply_v3 {
	uint32_t vsmmu_id;
	uint32_t reserved;
	uint8_t resume_token[VSMMU_RESUME_TOKEN_SIZE];
} VSMMU_PACKED;

/* RESUME_VSMMU (version 3): take over the vSMMU whose token this is (PROTOCOL.md §5.13). May carry the
 * VMM's iommufd (VSMMU_FRAME_FD_ATTACHED). A wrong token, an id that never existed and another
 * tenant's vSMMU all get the same UNKNOWN_VSMMU. */
struct vsmmu_resume_vsmmu {
	uint32_t vsmmu_id;
	uint32_t reserved;
	uint8_t resume_token[VSMMU_RESUME_TOKEN_SIZE];
} VSMMU_PACKED;

/* RESUME_VSMMU's reply: what the daemon holds for the vSMMU, and the request_id of the last control
 * request it applied on it (0: none). Re-sending that request is answered again, not applied twice. */
struct vsmmu_resume_vsmmu_reply {
	uint32_t vsmmu_id;
	uint32_t viommu_count;
	uint32_t device_count;
	uint32_t reserved;
	uint64_t last_request_id;
} VSMMU_PACKED;

struct vsmmu_destroy_vsmmu {
	uint32_t vsmmu_id;
	uint32_t reserved;
} VSMMU_PACKED;

/* MAP_QUEUE (version 4): the vSMMU's shared command queue (PROTOCOL.md §5.15, §8). Sent with
 * VSMMU_FRAME_FD_ATTACHED and three fds in one SCM_RIGHTS message: the memfd (struct vsmmu_queue_header
 * at offset 0, sealed with F_SEAL_SHRINK), the kick eventfd (VMM -> daemon), the call eventfd (daemon -> VMM). */
struct vsmmu_map_queue {
	uint32_t vsmmu_id;
	uint32_t log2_entries; /* VSMMU_QUEUE_MIN_LOG2_ENTRIES ... VSMMU_QUEUE_MAX_LOG2_ENTRIES */
	uint32_t flags;        /* 0 */
	uint32_t reserved;
} VSMMU_PACKED;

/* MAP_QUEUE's reply: the CONS the daemon starts consuming from (SMMUv3 form). */
struct vsmmu_map_queue_reply {
	uint32_t cons;
	uint32_t reserved;
} VSMMU_PACKED;

/* UNMAP_QUEUE (version 4); the reply is empty. */
struct vsmmu_unmap_queue {
	uint32_t vsmmu_id;
	uint32_t reserved;
} VSMMU_PACKED;

/* MAP_EVENT_QUEUE (version 5): the vSMMU's event queue (PROTOCOL.md §5.17, §9). Sent with
 * VSMMU_FRAME_FD_ATTACHED and two fds in one SCM_RIGHTS message: the memfd (struct
 * vsmmu_event_queue_header at offset 0, sealed with F_SEAL_SHRINK) and the call eventfd (daemon -> VMM). */
struct vsmmu_map_event_queue {
	uint32_t vsmmu_id;
	uint32_t log2_entries; /* VSMMU_EVENT_QUEUE_MIN_LOG2_ENTRIES ... VSMMU_EVENT_QUEUE_MAX_LOG2_ENTRIES */
	uint32_t flags;        /* 0 */
	uint32_t reserved;
} VSMMU_PACKED;

/* MAP_EVENT_QUEUE's reply: the PROD at which the daemon writes its next event (index, wrap, OVFLG). */
struct vsmmu_map_event_queue_reply {
	uint32_t prod;
	uint32_t reserved;
} VSMMU_PACKED;

/* UNMAP_EVENT_QUEUE (version 5); the reply is empty. */
struct vsmmu_unmap_event_queue {
	uint32_t vsmmu_id;
	uint32_t reserved;
} VSMMU_PACKED;

/* Sent with VSMMU_FRAME_FD_ATTACHED and the VMM's iommufd for the iommufd backend. */
struct vsmmu_attach_viommu {
	uint32_t vsmmu_id;
	uint32_t host_device_id;
	uint32_t nest_parent_hwpt_id;
	uint32_t reserved;
	char psmmu[VSMMU_NAME_SIZE];
} VSMMU_PACKED;

struct vsmmu_attach_viommu_reply {
	uint32_t viommu;            /* index, 0-63 */
	uint32_t backend_viommu_id;
} VSMMU_PACKED;

struct vsmmu_detach_viommu {
	uint32_t vsmmu_id;
	uint32_t viommu;
} VSMMU_PACKED;

/* SET_DEV_ID and UNSET_DEV_ID. From version 2, SET_DEV_ID is sent with VSMMU_FRAME_FD_ATTACHED and the
 * device's VFIO cdev (bound to the iommufd of ATTACH_VIOMMU) for a viommu on an iommufd pSMMU: the
 * daemon attaches the device through it (PROTOCOL.md §5.6). Optional with a simulated pSMMU. */
struct vsmmu_dev_id {
	uint32_t vsmmu_id;
	uint32_t viommu;
	uint32_t host_device_id;
	uint32_t vsid;
} VSMMU_PACKED;

/* SMMUv3 structures as the guest wrote them: little-endian 64-bit words, word 0 first. */
struct vsmmu_command {
	uint64_t w[2];
} VSMMU_PACKED;

struct vsmmu_ste {
	uint64_t w[8];
} VSMMU_PACKED;

struct vsmmu_cd {
	uint64_t w[8];
} VSMMU_PACKED;

/* LINK_STE: followed by cd_count CDs (CD i is SSID i). */
struct vsmmu_link_ste {
	uint32_t vsmmu_id;
	uint32_t vsid;
	uint32_t cd_count;
	uint32_t reserved;
	struct vsmmu_ste ste;
	struct vsmmu_cd cds[];
} VSMMU_PACKED;

/* Reply of LINK_STE and UPDATE_CD. */
#define VSMMU_HWPT_NEW 0x1u
struct vsmmu_hwpt_reply {
	uint32_t s1_hwpt_id; /* 0: the STE does not translate */
	uint32_t flags;      /* VSMMU_HWPT_NEW */
} VSMMU_PACKED;

struct vsmmu_unlink_ste {
	uint32_t vsmmu_id;
	uint32_t vsid;
} VSMMU_PACKED;

struct vsmmu_update_cd {
	uint32_t vsmmu_id;
	uint32_t vsid;
	uint32_t ssid;
	uint32_t reserved;
	struct vsmmu_cd cd;
} VSMMU_PACKED;

/* GET_HW_INFO (version 2): the ID registers the VMM presents to its guest for this vSMMU. */
struct vsmmu_get_hw_info {
	uint32_t vsmmu_id;
	uint32_t reserved;
} VSMMU_PACKED;

/* GET_HW_INFO reply: what every pSMMU behind the vSMMU supports (features only if all have them, sizes
 * the smallest; PROTOCOL.md §5.12). Refused with UNKNOWN_VIOMMU, value 0xFFFFFFFF, before the first
 * ATTACH_VIOMMU. Field positions inside the registers are the SMMUv3 architecture's. */
struct vsmmu_hw_info_reply {
	uint32_t viommu_count; /* viommus (pSMMUs) the registers were computed over, 1-64 */
	uint32_t reserved;
	uint32_t idr[6];       /* SMMU_IDR0 … SMMU_IDR5 */
	uint32_t iidr;         /* SMMU_IIDR */
	uint32_t aidr;         /* SMMU_AIDR */
} VSMMU_PACKED;

/* ---- Invalidation ---------------------------------------------------------------------------- */

/* INVALIDATE: followed by command_count commands. */
struct vsmmu_invalidate {
	uint32_t vsmmu_id;
	uint32_t command_count;
	uint32_t flags;      /* 0 */
	uint32_t reserved;
	struct vsmmu_command commands[];
} VSMMU_PACKED;

/* CMDQ_CONS.ERR values (SMMUv3 CERROR). */
#define VSMMU_CERROR_NONE 0u
#define VSMMU_CERROR_ILL 1u
#define VSMMU_CERROR_ABT 2u
#define VSMMU_CERROR_ATC_INV_SYNC 3u
#define VSMMU_NO_ERROR_INDEX 0xFFFFFFFFu

/* INVALIDATE reply: followed by message_length bytes of UTF-8. */
struct vsmmu_invalidate_reply {
	uint32_t consumed;
	uint32_t error_index;     /* VSMMU_NO_ERROR_INDEX when cerror is NONE */
	uint32_t syncs_completed;
	uint8_t cerror;           /* VSMMU_CERROR_* */
	uint8_t reserved;
	uint16_t message_length;  /* <= VSMMU_MAX_MESSAGE_LENGTH, 0 when cerror is NONE */
	char message[];
} VSMMU_PACKED;

/* ---- Admin: STATS ---------------------------------------------------------------------------- */

struct vsmmu_stats {
	uint32_t vsmmu_id;   /* 0: the daemon's counters */
	uint32_t reserved;
} VSMMU_PACKED;

#define VSMMU_STAT_NO_VIOMMU 0xFFFFu

struct vsmmu_stat_entry {
	uint32_t vsmmu_id;
	uint16_t viommu;     /* VSMMU_STAT_NO_VIOMMU for daemon and vSMMU counters */
	uint16_t key;        /* VSMMU_STAT_* */
	uint64_t value;
} VSMMU_PACKED;

struct vsmmu_stats_reply {
	uint32_t entry_count;
	uint32_t reserved;
	struct vsmmu_stat_entry entries[];
} VSMMU_PACKED;

/* vSMMU keys */
#define VSMMU_STAT_COMMANDS_RECEIVED 0x0001u
#define VSMMU_STAT_COMMANDS_DELIVERED 0x0002u
#define VSMMU_STAT_DEVICE_ROUTED 0x0003u
#define VSMMU_STAT_ASID_ROUTED 0x0004u
#define VSMMU_STAT_BROADCAST 0x0005u
#define VSMMU_STAT_BROADCASTS_AVOIDED 0x0006u
#define VSMMU_STAT_DROPPED_BY_RULE 0x0007u
#define VSMMU_STAT_ERRORS 0x0008u
#define VSMMU_STAT_ILLEGAL_COMMANDS 0x0009u
#define VSMMU_STAT_UNKNOWN_STREAM_ID 0x000Au
#define VSMMU_STAT_SYNCS 0x000Bu
#define VSMMU_STAT_ASID_WITHOUT_TARGET 0x000Cu
#define VSMMU_STAT_RETIRING_DELIVERIES 0x000Du
#define VSMMU_STAT_RETIREMENTS_ENDED 0x000Eu
#define VSMMU_STAT_CONFIG_STE_INVALIDATIONS 0x000Fu
#define VSMMU_STAT_INVALIDATE_REQUESTS 0x0010u
#define VSMMU_STAT_VIOMMUS 0x0011u
#define VSMMU_STAT_DEVICES 0x0012u
#define VSMMU_STAT_HWPTS 0x0013u
#define VSMMU_STAT_SYNC_LATENCY_COUNT 0x0014u
#define VSMMU_STAT_SYNC_LATENCY_SUM_NS 0x0015u
#define VSMMU_STAT_QUEUE_COMMANDS 0x0016u     /* the shared queue (version 4): commands consumed */
#define VSMMU_STAT_QUEUE_SYNCS 0x0017u        /* CMD_SYNCs completed through it */
#define VSMMU_STAT_QUEUE_ERRORS 0x0018u       /* queue errors raised */
#define VSMMU_STAT_QUEUE_KICKS 0x0019u        /* sleeps on kick that a kick ended */
#define VSMMU_STAT_QUEUE_CALLS 0x001Au        /* writes to call */
#define VSMMU_STAT_QUEUE_POLLS_CAUGHT 0x001Bu /* idle polls of PROD that caught a command */
#define VSMMU_STAT_QUEUE_POLLS_MISSED 0x001Cu /* idle polls that ended in a sleep */
#define VSMMU_STAT_SYNC_LATENCY_LOG2_NS(b) (0x0200u + (b)) /* b = 0..63 */
/* viommu keys */
#define VSMMU_STAT_VIOMMU_COMMANDS_DELIVERED 0x0040u
#define VSMMU_STAT_VIOMMU_RING_OCCUPANCY 0x0041u
#define VSMMU_STAT_VIOMMU_RING_HIGH_WATER 0x0042u
#define VSMMU_STAT_VIOMMU_BACKEND_CALLS 0x0043u
#define VSMMU_STAT_VIOMMU_BACKEND_COMMANDS 0x0044u
#define VSMMU_STAT_VIOMMU_BACKEND_COMPLETED 0x0045u
#define VSMMU_STAT_VIOMMU_BACKEND_FAILED 0x0046u
#define VSMMU_STAT_VIOMMU_SYNCS 0x0047u
#define VSMMU_STAT_VIOMMU_RING_FULL_WAITS 0x0048u
#define VSMMU_STAT_VIOMMU_DEVICES 0x0049u
#define VSMMU_STAT_VIOMMU_EVENTS 0x004Au                  /* events forwarded into the vSMMU's event queue */
#define VSMMU_STAT_VIOMMU_EVENTS_DROPPED_OVERFLOW 0x004Bu    /* dropped: the event queue was full */
#define VSMMU_STAT_VIOMMU_EVENTS_DROPPED_DEVICE_GONE 0x004Cu /* dropped: the vSID is no longer registered */
#define VSMMU_STAT_VIOMMU_EVENTS_DROPPED_NO_QUEUE 0x004Du    /* dropped: no event queue mapped */
#define VSMMU_STAT_VIOMMU_EVENTS_LOST_UPSTREAM 0x004Eu       /* LOST_EVENTS reports from the kernel / simulation */
#define VSMMU_STAT_VIOMMU_BATCH_SIZE_LOG2(b) (0x0300u + (b)) /* b = 0..63 */
/* pSMMU keys: the pSMMU's totals over every vSMMU; viommu = this vSMMU's viommu on that pSMMU */
#define VSMMU_STAT_PSMMU_BACKEND_CALLS 0x0060u
#define VSMMU_STAT_PSMMU_BACKEND_COMMANDS 0x0061u
#define VSMMU_STAT_PSMMU_BACKEND_COMPLETED 0x0062u
#define VSMMU_STAT_PSMMU_BACKEND_FAILED 0x0063u
#define VSMMU_STAT_PSMMU_EVENTS 0x0064u
/* daemon keys */
#define VSMMU_STAT_DAEMON_CONNECTIONS 0x0080u
#define VSMMU_STAT_DAEMON_VSMMUS 0x0081u
#define VSMMU_STAT_DAEMON_UPTIME_NS 0x0082u
#define VSMMU_STAT_DAEMON_FRAMES_RECEIVED 0x0083u
#define VSMMU_STAT_DAEMON_PROTOCOL_ERRORS 0x0084u
#define VSMMU_STAT_DAEMON_CONNECTIONS_TOTAL 0x0085u
#define VSMMU_STAT_DAEMON_EVENTS_ORPHANED 0x0086u /* events of a backend viommu no vSMMU owns: dropped */

/* ---- Admin: LIST ----------------------------------------------------------------------------- */

enum vsmmu_list_kind {
	VSMMU_LIST_VSMMUS = 1,
	VSMMU_LIST_VIOMMUS = 2,
	VSMMU_LIST_DEVICES = 3,
	VSMMU_LIST_HWPTS = 4,
	VSMMU_LIST_ASIDS = 5,
};

struct vsmmu_list {
	uint32_t vsmmu_id;    /* 0: every vSMMU */
	uint16_t kind;        /* enum vsmmu_list_kind */
	uint16_t reserved;
	uint32_t start;
	uint32_t max_entries; /* 0: as many as fit */
} VSMMU_PACKED;

/* Followed by count entries of entry_size bytes. */
struct vsmmu_list_reply {
	uint16_t kind;
	uint16_t entry_size;
	uint32_t count;
	uint32_t total;
	uint32_t start;
} VSMMU_PACKED;

struct vsmmu_list_vsmmu {
	uint32_t vsmmu_id;
	uint32_t owner_pid;
	uint32_t owner_uid;
	uint32_t viommu_count;
	uint32_t device_count;
	uint32_t hwpt_count;
	uint32_t asid_count;
	uint32_t flags;        /* VSMMU_LIST_VSMMU_AWAITING_OWNER (version 3; zero before) */
	char name[VSMMU_NAME_SIZE];
} VSMMU_PACKED;

/* The daemon restarted and rebuilt the vSMMU from its journal; no connection has resumed it yet. */
#define VSMMU_LIST_VSMMU_AWAITING_OWNER 0x1u

struct vsmmu_list_viommu {
	uint32_t vsmmu_id;
	uint32_t viommu;
	uint32_t backend_viommu_id;
	uint32_t device_count;
	char psmmu[VSMMU_NAME_SIZE];
} VSMMU_PACKED;

#define VSMMU_DEVICE_STE_LINKED 0x1u
struct vsmmu_list_device {
	uint32_t vsmmu_id;
	uint32_t vsid;
	uint32_t viommu;
	uint32_t host_device_id;
	uint32_t s1_hwpt_id;  /* 0: none */
	uint32_t flags;       /* VSMMU_DEVICE_STE_LINKED */
} VSMMU_PACKED;

struct vsmmu_list_hwpt {
	uint32_t vsmmu_id;
	uint32_t s1_hwpt_id;
	uint32_t vsid;
	uint32_t viommu;
	uint32_t backend_hwpt_id;
	uint32_t asid_count;
} VSMMU_PACKED;

struct vsmmu_list_asid {
	uint32_t vsmmu_id;
	uint16_t asid;
	uint16_t hwpt_count;
	uint64_t target_mask;   /* bit n: viommu n receives this ASID's TLBIs */
	uint64_t retiring_mask; /* the targets where the ASID is only retiring */
} VSMMU_PACKED;

/* ---- Admin: HEALTH (request payload is empty) ------------------------------------------------ */

enum vsmmu_health_status {
	VSMMU_HEALTH_OK = 0,
	VSMMU_HEALTH_DEGRADED = 1,
	VSMMU_HEALTH_SHUTTING_DOWN = 2,
};

enum vsmmu_psmmu_status {
	VSMMU_PSMMU_OK = 0,
	VSMMU_PSMMU_FAILED = 1,
};

enum vsmmu_backend_kind {
	VSMMU_BACKEND_SIMULATED = 1,
	VSMMU_BACKEND_IOMMUFD = 2,
};

struct vsmmu_psmmu_health {
	uint32_t status;      /* enum vsmmu_psmmu_status */
	uint32_t backend;     /* enum vsmmu_backend_kind */
	uint32_t viommu_count;
	uint32_t reserved;
	char name[VSMMU_NAME_SIZE];
} VSMMU_PACKED;

/* Followed by psmmu_count struct vsmmu_psmmu_health. */
struct vsmmu_health_reply {
	uint32_t status;      /* enum vsmmu_health_status */
	uint32_t connection_count;
	uint32_t vsmmu_count;
	uint32_t psmmu_count;
	uint64_t uptime_ns;
	uint32_t server_pid;
	uint32_t reserved;
} VSMMU_PACKED;

/* ---- Admin: SIMULATE_DMA (version 5) ------------------------------------------------------- */

/* One access of a simulated device, on a vSMMU the connection owns (PROTOCOL.md §6.4). Refused with
 * VSMMU_ERR_UNSUPPORTED unless the device's viommu is on a simulated pSMMU. */
#define VSMMU_DMA_WRITE (1u << 0)      /* flags: a write (else a read) */
#define VSMMU_DMA_SSID_VALID (1u << 1) /* flags: ssid is valid (else ssid is 0) */
#define VSMMU_DMA_ATS (1u << 2)        /* flags: an ATS translation request */
#define VSMMU_DMA_MIN_SIZE 4096u       /* size: a power of two of at least this */

/* walk: what the guest's stage-1 tables hold for iova (the VMM owns guest memory). */
#define VSMMU_DMA_WALK_UNMAPPED 0u          /* F_TRANSLATION */
#define VSMMU_DMA_WALK_READ_WRITE 1u
#define VSMMU_DMA_WALK_READ_ONLY 2u         /* a write: F_PERMISSION */
#define VSMMU_DMA_WALK_ACCESS_FLAG_CLEAR 3u /* F_ACCESS */
#define VSMMU_DMA_WALK_OUTPUT_TOO_LARGE 4u  /* F_ADDR_SIZE */

/* The reply's outcome. */
#define VSMMU_DMA_ATC_HIT 1u
#define VSMMU_DMA_TLB_HIT 2u
#define VSMMU_DMA_TLB_FILL 3u
#define VSMMU_DMA_BYPASSED 4u
#define VSMMU_DMA_ABORTED 5u
#define VSMMU_DMA_FAULT 6u /* event holds the record as the guest sees it (StreamID = vsid) */

struct vsmmu_simulate_dma {
	uint32_t vsmmu_id;
	uint32_t vsid;
	uint32_t ssid;     /* with VSMMU_DMA_SSID_VALID, < 2^20 */
	uint32_t flags;    /* VSMMU_DMA_WRITE | VSMMU_DMA_SSID_VALID | VSMMU_DMA_ATS */
	uint64_t iova;
	uint64_t size;     /* the mapping's size: a power of two >= VSMMU_DMA_MIN_SIZE */
	uint32_t walk;     /* VSMMU_DMA_WALK_* */
	uint32_t reserved;
} VSMMU_PACKED;

/* An SMMUv3 event record: 32 bytes, little-endian words, word 0 first. */
struct vsmmu_event_record {
	uint64_t w[4];
} VSMMU_PACKED;

struct vsmmu_simulate_dma_reply {
	uint32_t outcome;  /* VSMMU_DMA_ATC_HIT ... VSMMU_DMA_FAULT */
	uint32_t reserved;
	struct vsmmu_event_record event; /* VSMMU_DMA_FAULT: the record; otherwise zero */
} VSMMU_PACKED;

/* ---- Layout pins ----------------------------------------------------------------------------- */

/* ---- The shared command queue's memory (PROTOCOL.md §8) ------------------------------------------- */

#define VSMMU_QUEUE_MAGIC 0x514D5356u /* the bytes "VSMQ" */
#define VSMMU_QUEUE_VERSION 1u
#define VSMMU_QUEUE_MIN_LOG2_ENTRIES 8u
#define VSMMU_QUEUE_MAX_LOG2_ENTRIES 16u
/* The slots (16-byte commands) start here; the memfd holds at least this + 16 << log2_entries bytes. */
#define VSMMU_QUEUE_SLOTS_OFFSET 0x1000u
/* A cache line: each writer's fields sit on lines of their own. */
#define VSMMU_QUEUE_LINE_SIZE 64u

/* error_kind */
#define VSMMU_QUEUE_ERROR_COMMAND 1u /* the command at error_cons failed with cerror */
#define VSMMU_QUEUE_ERROR_PROD 2u    /* PROD was not a valid index for this queue */
/* state */
#define VSMMU_QUEUE_STATE_UNMAPPED 0u /* the VMM's initial value */
#define VSMMU_QUEUE_STATE_RUNNING 1u
#define VSMMU_QUEUE_STATE_STOPPED 2u

/* The header at offset 0 of the memfd. Each field has one writer (the comment says which); the u32s are
 * read and written as single 32-bit atomics. PROD and CONS are in SMMUv3 form: bits [n-1:0] index,
 * bit n wrap (n = log2_entries), no other bit set. */
struct vsmmu_queue_header {
	/* Configuration: written by the VMM before MAP_QUEUE, read once by the daemon when it maps. */
	uint32_t magic;          /* VSMMU_QUEUE_MAGIC */
	uint16_t version;        /* VSMMU_QUEUE_VERSION */
	uint8_t log2_entries;    /* as MAP_QUEUE's */
	uint8_t reserved0[57];
	uint32_t prod;           /* VMM: release store after the slots it publishes */
	uint8_t reserved1[60];
	uint32_t cons;           /* daemon: release store once consumed (past a CMD_SYNC: once it completed) */
	uint8_t reserved2[60];
	uint32_t error_sequence; /* daemon: + 1 per queue error, release store after the fields below */
	uint8_t cerror;          /* daemon: CMDQ_CONS.ERR of the last error (VSMMU_CERROR_*) */
	uint8_t error_kind;      /* daemon: VSMMU_QUEUE_ERROR_* */
	uint16_t reserved3;
	uint32_t error_cons;     /* daemon: the CONS the queue stopped at */
	uint32_t state;          /* daemon: VSMMU_QUEUE_STATE_* */
	uint8_t reserved4[48];
	uint32_t error_ack;      /* VMM: the error_sequence acknowledged (the guest's GERRORN) */
	uint8_t reserved5[60];
	uint32_t daemon_sleeping; /* daemon: 1 = going to sleep on kick, signal me */
	uint8_t reserved6[60];
	uint32_t vmm_sleeping;   /* VMM: 1 = going to sleep on call, signal me */
	uint8_t reserved7[3708];
} VSMMU_PACKED;

/* ---- The event queue's memory (PROTOCOL.md §9, version 5) ------------------------------------ */

#define VSMMU_EVENT_QUEUE_MAGIC 0x454D5356u /* the bytes "VSME" */
#define VSMMU_EVENT_QUEUE_VERSION 1u
#define VSMMU_EVENT_QUEUE_MIN_LOG2_ENTRIES 4u
#define VSMMU_EVENT_QUEUE_MAX_LOG2_ENTRIES 12u
/* The slots (struct vsmmu_event_slot) start here; the memfd holds at least this + 64 << log2_entries bytes. */
#define VSMMU_EVENT_QUEUE_SLOTS_OFFSET 0x1000u
#define VSMMU_EVENT_SLOT_SIZE 64u
/* Bit 31 of PROD (OVFLG) and of CONS (OVACKFLG), as SMMUv3's EVTQ_PROD/EVTQ_CONS. */
#define VSMMU_EVENT_QUEUE_OVERFLOW 0x80000000u
/* A slot's flags: events were lost just before this one (queue full, or the kernel's LOST_EVENTS). */
#define VSMMU_EVENT_LOST_BEFORE 0x1u
/* state: the command queue's VSMMU_QUEUE_STATE_* (UNMAPPED, RUNNING, STOPPED). */

/* The header at offset 0 of the memfd. Each field has one writer (the comment says which); the u32s are
 * read and written as single 32-bit atomics. PROD and CONS: bits [n-1:0] index, bit n wrap
 * (n = log2_entries), bit 31 VSMMU_EVENT_QUEUE_OVERFLOW, no other bit set. */
struct vsmmu_event_queue_header {
	/* Configuration: written by the VMM before MAP_EVENT_QUEUE, read once by the daemon when it maps. */
	uint32_t magic;          /* VSMMU_EVENT_QUEUE_MAGIC */
	uint16_t version;        /* VSMMU_EVENT_QUEUE_VERSION */
	uint8_t log2_entries;    /* as MAP_EVENT_QUEUE's */
	uint8_t reserved0[57];
	uint32_t prod;           /* daemon: release store after the slots it wrote; bit 31 OVFLG */
	uint8_t reserved1[60];
	uint32_t cons;           /* VMM: release store once it copied the slots; bit 31 OVACKFLG */
	uint8_t reserved2[60];
	uint32_t state;          /* daemon: VSMMU_QUEUE_STATE_* */
	uint8_t reserved3[60];
	uint32_t vmm_sleeping;   /* VMM: 1 = going to sleep on call, signal me */
	uint8_t reserved4[3836];
} VSMMU_PACKED;

/* One event, at VSMMU_EVENT_QUEUE_SLOTS_OFFSET + VSMMU_EVENT_SLOT_SIZE * index. Written by the daemon. */
struct vsmmu_event_slot {
	struct vsmmu_event_record record; /* the SMMUv3 event record, StreamID = the guest's vSID */
	uint64_t sequence;                /* per vSMMU, first event 1; a gap: events dropped */
	uint32_t vsmmu_id;
	uint32_t viommu_id;               /* the viommu index whose pSMMU raised it */
	uint32_t flags;                   /* VSMMU_EVENT_LOST_BEFORE */
	uint8_t reserved[12];
} VSMMU_PACKED;

#define VSMMU_PIN_SIZE(type, size) VSMMU_STATIC_ASSERT(sizeof(struct type) == (size), #type " size")
#define VSMMU_PIN(type, field, offset) \
	VSMMU_STATIC_ASSERT(__builtin_offsetof(struct type, field) == (offset), #type "." #field " offset")

VSMMU_PIN_SIZE(vsmmu_frame_header, 16);
VSMMU_PIN(vsmmu_frame_header, payload_length, 0);
VSMMU_PIN(vsmmu_frame_header, type, 4);
VSMMU_PIN(vsmmu_frame_header, flags, 6);
VSMMU_PIN(vsmmu_frame_header, request_id, 8);

VSMMU_PIN_SIZE(vsmmu_error, 24);
VSMMU_PIN(vsmmu_error, code, 0);
VSMMU_PIN(vsmmu_error, request_type, 4);
VSMMU_PIN(vsmmu_error, message_length, 6);
VSMMU_PIN(vsmmu_error, detail, 8);
VSMMU_PIN(vsmmu_error, reserved, 12);
VSMMU_PIN(vsmmu_error, value, 16);
VSMMU_PIN(vsmmu_error, message, 24);

VSMMU_PIN_SIZE(vsmmu_hello, 80);
VSMMU_PIN(vsmmu_hello, magic, 0);
VSMMU_PIN(vsmmu_hello, min_version, 4);
VSMMU_PIN(vsmmu_hello, max_version, 6);
VSMMU_PIN(vsmmu_hello, pid, 8);
VSMMU_PIN(vsmmu_hello, reserved, 12);
VSMMU_PIN(vsmmu_hello, client_name, 16);

VSMMU_PIN_SIZE(vsmmu_hello_reply, 96);
VSMMU_PIN(vsmmu_hello_reply, magic, 0);
VSMMU_PIN(vsmmu_hello_reply, version, 4);
VSMMU_PIN(vsmmu_hello_reply, reserved, 6);
VSMMU_PIN(vsmmu_hello_reply, max_frame_size, 8);
VSMMU_PIN(vsmmu_hello_reply, max_commands, 12);
VSMMU_PIN(vsmmu_hello_reply, max_vsmmus, 16);
VSMMU_PIN(vsmmu_hello_reply, max_viommus, 20);
VSMMU_PIN(vsmmu_hello_reply, max_context_descriptors, 24);
VSMMU_PIN(vsmmu_hello_reply, server_pid, 28);
VSMMU_PIN(vsmmu_hello_reply, server_name, 32);

VSMMU_PIN_SIZE(vsmmu_create_vsmmu, 72);
VSMMU_PIN(vsmmu_create_vsmmu, flags, 0);
VSMMU_PIN(vsmmu_create_vsmmu, reserved, 4);
VSMMU_PIN(vsmmu_create_vsmmu, name, 8);
VSMMU_PIN_SIZE(vsmmu_create_vsmmu_keyed, 88);
VSMMU_PIN(vsmmu_create_vsmmu_keyed, flags, 0);
VSMMU_PIN(vsmmu_create_vsmmu_keyed, name, 8);
VSMMU_PIN(vsmmu_create_vsmmu_keyed, create_key, 72);
VSMMU_PIN_SIZE(vsmmu_create_vsmmu_reply, 8);
VSMMU_PIN(vsmmu_create_vsmmu_reply, vsmmu_id, 0);
VSMMU_PIN_SIZE(vsmmu_create_vsmmu_reply_v3, 24);
VSMMU_PIN(vsmmu_create_vsmmu_reply_v3, resume_token, 8);
VSMMU_PIN_SIZE(vsmmu_resume_vsmmu, 24);
VSMMU_PIN(vsmmu_resume_vsmmu, vsmmu_id, 0);
VSMMU_PIN(vsmmu_resume_vsmmu, reserved, 4);
VSMMU_PIN(vsmmu_resume_vsmmu, resume_token, 8);
VSMMU_PIN_SIZE(vsmmu_resume_vsmmu_reply, 24);
VSMMU_PIN(vsmmu_resume_vsmmu_reply, viommu_count, 4);
VSMMU_PIN(vsmmu_resume_vsmmu_reply, device_count, 8);
VSMMU_PIN(vsmmu_resume_vsmmu_reply, reserved, 12);
VSMMU_PIN(vsmmu_resume_vsmmu_reply, last_request_id, 16);
VSMMU_PIN_SIZE(vsmmu_destroy_vsmmu, 8);
VSMMU_PIN(vsmmu_destroy_vsmmu, vsmmu_id, 0);

VSMMU_PIN_SIZE(vsmmu_attach_viommu, 80);
VSMMU_PIN(vsmmu_attach_viommu, vsmmu_id, 0);
VSMMU_PIN(vsmmu_attach_viommu, host_device_id, 4);
VSMMU_PIN(vsmmu_attach_viommu, nest_parent_hwpt_id, 8);
VSMMU_PIN(vsmmu_attach_viommu, reserved, 12);
VSMMU_PIN(vsmmu_attach_viommu, psmmu, 16);
VSMMU_PIN_SIZE(vsmmu_attach_viommu_reply, 8);
VSMMU_PIN(vsmmu_attach_viommu_reply, viommu, 0);
VSMMU_PIN(vsmmu_attach_viommu_reply, backend_viommu_id, 4);
VSMMU_PIN_SIZE(vsmmu_detach_viommu, 8);
VSMMU_PIN(vsmmu_detach_viommu, vsmmu_id, 0);
VSMMU_PIN(vsmmu_detach_viommu, viommu, 4);

VSMMU_PIN_SIZE(vsmmu_dev_id, 16);
VSMMU_PIN(vsmmu_dev_id, vsmmu_id, 0);
VSMMU_PIN(vsmmu_dev_id, viommu, 4);
VSMMU_PIN(vsmmu_dev_id, host_device_id, 8);
VSMMU_PIN(vsmmu_dev_id, vsid, 12);

VSMMU_PIN_SIZE(vsmmu_command, 16);
VSMMU_PIN_SIZE(vsmmu_ste, 64);
VSMMU_PIN_SIZE(vsmmu_cd, 64);

VSMMU_PIN_SIZE(vsmmu_link_ste, 80);
VSMMU_PIN(vsmmu_link_ste, vsmmu_id, 0);
VSMMU_PIN(vsmmu_link_ste, vsid, 4);
VSMMU_PIN(vsmmu_link_ste, cd_count, 8);
VSMMU_PIN(vsmmu_link_ste, reserved, 12);
VSMMU_PIN(vsmmu_link_ste, ste, 16);
VSMMU_PIN(vsmmu_link_ste, cds, 80);
VSMMU_PIN_SIZE(vsmmu_hwpt_reply, 8);
VSMMU_PIN(vsmmu_hwpt_reply, s1_hwpt_id, 0);
VSMMU_PIN(vsmmu_hwpt_reply, flags, 4);
VSMMU_PIN_SIZE(vsmmu_unlink_ste, 8);
VSMMU_PIN(vsmmu_unlink_ste, vsid, 4);
VSMMU_PIN_SIZE(vsmmu_update_cd, 80);
VSMMU_PIN(vsmmu_update_cd, vsmmu_id, 0);
VSMMU_PIN(vsmmu_update_cd, vsid, 4);
VSMMU_PIN(vsmmu_update_cd, ssid, 8);
VSMMU_PIN(vsmmu_update_cd, reserved, 12);
VSMMU_PIN(vsmmu_update_cd, cd, 16);

VSMMU_PIN_SIZE(vsmmu_get_hw_info, 8);
VSMMU_PIN(vsmmu_get_hw_info, vsmmu_id, 0);
VSMMU_PIN(vsmmu_get_hw_info, reserved, 4);
VSMMU_PIN_SIZE(vsmmu_hw_info_reply, 40);
VSMMU_PIN(vsmmu_hw_info_reply, viommu_count, 0);
VSMMU_PIN(vsmmu_hw_info_reply, reserved, 4);
VSMMU_PIN(vsmmu_hw_info_reply, idr, 8);
VSMMU_PIN(vsmmu_hw_info_reply, iidr, 32);
VSMMU_PIN(vsmmu_hw_info_reply, aidr, 36);

VSMMU_PIN_SIZE(vsmmu_invalidate, 16);
VSMMU_PIN(vsmmu_invalidate, vsmmu_id, 0);
VSMMU_PIN(vsmmu_invalidate, command_count, 4);
VSMMU_PIN(vsmmu_invalidate, flags, 8);
VSMMU_PIN(vsmmu_invalidate, reserved, 12);
VSMMU_PIN(vsmmu_invalidate, commands, 16);
VSMMU_PIN_SIZE(vsmmu_invalidate_reply, 16);
VSMMU_PIN(vsmmu_invalidate_reply, consumed, 0);
VSMMU_PIN(vsmmu_invalidate_reply, error_index, 4);
VSMMU_PIN(vsmmu_invalidate_reply, syncs_completed, 8);
VSMMU_PIN(vsmmu_invalidate_reply, cerror, 12);
VSMMU_PIN(vsmmu_invalidate_reply, reserved, 13);
VSMMU_PIN(vsmmu_invalidate_reply, message_length, 14);
VSMMU_PIN(vsmmu_invalidate_reply, message, 16);

VSMMU_PIN_SIZE(vsmmu_stats, 8);
VSMMU_PIN_SIZE(vsmmu_stat_entry, 16);
VSMMU_PIN(vsmmu_stat_entry, vsmmu_id, 0);
VSMMU_PIN(vsmmu_stat_entry, viommu, 4);
VSMMU_PIN(vsmmu_stat_entry, key, 6);
VSMMU_PIN(vsmmu_stat_entry, value, 8);
VSMMU_PIN_SIZE(vsmmu_stats_reply, 8);
VSMMU_PIN(vsmmu_stats_reply, entry_count, 0);
VSMMU_PIN(vsmmu_stats_reply, entries, 8);

VSMMU_PIN_SIZE(vsmmu_list, 16);
VSMMU_PIN(vsmmu_list, vsmmu_id, 0);
VSMMU_PIN(vsmmu_list, kind, 4);
VSMMU_PIN(vsmmu_list, reserved, 6);
VSMMU_PIN(vsmmu_list, start, 8);
VSMMU_PIN(vsmmu_list, max_entries, 12);
VSMMU_PIN_SIZE(vsmmu_list_reply, 16);
VSMMU_PIN(vsmmu_list_reply, kind, 0);
VSMMU_PIN(vsmmu_list_reply, entry_size, 2);
VSMMU_PIN(vsmmu_list_reply, count, 4);
VSMMU_PIN(vsmmu_list_reply, total, 8);
VSMMU_PIN(vsmmu_list_reply, start, 12);
VSMMU_PIN_SIZE(vsmmu_list_vsmmu, 96);
VSMMU_PIN(vsmmu_list_vsmmu, owner_pid, 4);
VSMMU_PIN(vsmmu_list_vsmmu, owner_uid, 8);
VSMMU_PIN(vsmmu_list_vsmmu, viommu_count, 12);
VSMMU_PIN(vsmmu_list_vsmmu, device_count, 16);
VSMMU_PIN(vsmmu_list_vsmmu, hwpt_count, 20);
VSMMU_PIN(vsmmu_list_vsmmu, asid_count, 24);
VSMMU_PIN(vsmmu_list_vsmmu, flags, 28);
VSMMU_PIN(vsmmu_list_vsmmu, name, 32);
VSMMU_PIN_SIZE(vsmmu_list_viommu, 80);
VSMMU_PIN(vsmmu_list_viommu, viommu, 4);
VSMMU_PIN(vsmmu_list_viommu, backend_viommu_id, 8);
VSMMU_PIN(vsmmu_list_viommu, device_count, 12);
VSMMU_PIN(vsmmu_list_viommu, psmmu, 16);
VSMMU_PIN_SIZE(vsmmu_list_device, 24);
VSMMU_PIN(vsmmu_list_device, vsid, 4);
VSMMU_PIN(vsmmu_list_device, viommu, 8);
VSMMU_PIN(vsmmu_list_device, host_device_id, 12);
VSMMU_PIN(vsmmu_list_device, s1_hwpt_id, 16);
VSMMU_PIN(vsmmu_list_device, flags, 20);
VSMMU_PIN_SIZE(vsmmu_list_hwpt, 24);
VSMMU_PIN(vsmmu_list_hwpt, s1_hwpt_id, 4);
VSMMU_PIN(vsmmu_list_hwpt, vsid, 8);
VSMMU_PIN(vsmmu_list_hwpt, viommu, 12);
VSMMU_PIN(vsmmu_list_hwpt, backend_hwpt_id, 16);
VSMMU_PIN(vsmmu_list_hwpt, asid_count, 20);
VSMMU_PIN_SIZE(vsmmu_list_asid, 24);
VSMMU_PIN(vsmmu_list_asid, asid, 4);
VSMMU_PIN(vsmmu_list_asid, hwpt_count, 6);
VSMMU_PIN(vsmmu_list_asid, target_mask, 8);
VSMMU_PIN(vsmmu_list_asid, retiring_mask, 16);

VSMMU_PIN_SIZE(vsmmu_psmmu_health, 80);
VSMMU_PIN(vsmmu_psmmu_health, status, 0);
VSMMU_PIN(vsmmu_psmmu_health, backend, 4);
VSMMU_PIN(vsmmu_psmmu_health, viommu_count, 8);
VSMMU_PIN(vsmmu_psmmu_health, name, 16);
VSMMU_PIN_SIZE(vsmmu_health_reply, 32);
VSMMU_PIN(vsmmu_health_reply, status, 0);
VSMMU_PIN(vsmmu_health_reply, connection_count, 4);
VSMMU_PIN(vsmmu_health_reply, vsmmu_count, 8);
VSMMU_PIN(vsmmu_health_reply, psmmu_count, 12);
VSMMU_PIN(vsmmu_health_reply, uptime_ns, 16);
VSMMU_PIN(vsmmu_health_reply, server_pid, 24);

VSMMU_PIN_SIZE(vsmmu_map_queue, 16);
VSMMU_PIN(vsmmu_map_queue, vsmmu_id, 0);
VSMMU_PIN(vsmmu_map_queue, log2_entries, 4);
VSMMU_PIN(vsmmu_map_queue, flags, 8);
VSMMU_PIN(vsmmu_map_queue, reserved, 12);
VSMMU_PIN_SIZE(vsmmu_map_queue_reply, 8);
VSMMU_PIN(vsmmu_map_queue_reply, cons, 0);
VSMMU_PIN(vsmmu_map_queue_reply, reserved, 4);
VSMMU_PIN_SIZE(vsmmu_unmap_queue, 8);
VSMMU_PIN(vsmmu_unmap_queue, vsmmu_id, 0);
VSMMU_PIN(vsmmu_unmap_queue, reserved, 4);

VSMMU_PIN_SIZE(vsmmu_queue_header, VSMMU_QUEUE_SLOTS_OFFSET);
VSMMU_PIN(vsmmu_queue_header, magic, 0x000);
VSMMU_PIN(vsmmu_queue_header, version, 0x004);
VSMMU_PIN(vsmmu_queue_header, log2_entries, 0x006);
VSMMU_PIN(vsmmu_queue_header, prod, 0x040);
VSMMU_PIN(vsmmu_queue_header, cons, 0x080);
VSMMU_PIN(vsmmu_queue_header, error_sequence, 0x0C0);
VSMMU_PIN(vsmmu_queue_header, cerror, 0x0C4);
VSMMU_PIN(vsmmu_queue_header, error_kind, 0x0C5);
VSMMU_PIN(vsmmu_queue_header, error_cons, 0x0C8);
VSMMU_PIN(vsmmu_queue_header, state, 0x0CC);
VSMMU_PIN(vsmmu_queue_header, error_ack, 0x100);
VSMMU_PIN(vsmmu_queue_header, daemon_sleeping, 0x140);
VSMMU_PIN(vsmmu_queue_header, vmm_sleeping, 0x180);

VSMMU_PIN_SIZE(vsmmu_map_event_queue, 16);
VSMMU_PIN(vsmmu_map_event_queue, vsmmu_id, 0);
VSMMU_PIN(vsmmu_map_event_queue, log2_entries, 4);
VSMMU_PIN(vsmmu_map_event_queue, flags, 8);
VSMMU_PIN(vsmmu_map_event_queue, reserved, 12);
VSMMU_PIN_SIZE(vsmmu_map_event_queue_reply, 8);
VSMMU_PIN(vsmmu_map_event_queue_reply, prod, 0);
VSMMU_PIN(vsmmu_map_event_queue_reply, reserved, 4);
VSMMU_PIN_SIZE(vsmmu_unmap_event_queue, 8);
VSMMU_PIN(vsmmu_unmap_event_queue, vsmmu_id, 0);
VSMMU_PIN(vsmmu_unmap_event_queue, reserved, 4);
VSMMU_PIN_SIZE(vsmmu_event_record, 32);
VSMMU_PIN_SIZE(vsmmu_simulate_dma, 40);
VSMMU_PIN(vsmmu_simulate_dma, vsmmu_id, 0);
VSMMU_PIN(vsmmu_simulate_dma, vsid, 4);
VSMMU_PIN(vsmmu_simulate_dma, ssid, 8);
VSMMU_PIN(vsmmu_simulate_dma, flags, 12);
VSMMU_PIN(vsmmu_simulate_dma, iova, 16);
VSMMU_PIN(vsmmu_simulate_dma, size, 24);
VSMMU_PIN(vsmmu_simulate_dma, walk, 32);
VSMMU_PIN(vsmmu_simulate_dma, reserved, 36);
VSMMU_PIN_SIZE(vsmmu_simulate_dma_reply, 40);
VSMMU_PIN(vsmmu_simulate_dma_reply, outcome, 0);
VSMMU_PIN(vsmmu_simulate_dma_reply, reserved, 4);
VSMMU_PIN(vsmmu_simulate_dma_reply, event, 8);

VSMMU_PIN_SIZE(vsmmu_event_queue_header, VSMMU_EVENT_QUEUE_SLOTS_OFFSET);
VSMMU_PIN(vsmmu_event_queue_header, magic, 0x000);
VSMMU_PIN(vsmmu_event_queue_header, version, 0x004);
VSMMU_PIN(vsmmu_event_queue_header, log2_entries, 0x006);
VSMMU_PIN(vsmmu_event_queue_header, prod, 0x040);
VSMMU_PIN(vsmmu_event_queue_header, cons, 0x080);
VSMMU_PIN(vsmmu_event_queue_header, state, 0x0C0);
VSMMU_PIN(vsmmu_event_queue_header, vmm_sleeping, 0x100);
VSMMU_PIN_SIZE(vsmmu_event_slot, VSMMU_EVENT_SLOT_SIZE);
VSMMU_PIN(vsmmu_event_slot, record, 0x00);
VSMMU_PIN(vsmmu_event_slot, sequence, 0x20);
VSMMU_PIN(vsmmu_event_slot, vsmmu_id, 0x28);
VSMMU_PIN(vsmmu_event_slot, viommu_id, 0x2C);
VSMMU_PIN(vsmmu_event_slot, flags, 0x30);
VSMMU_PIN(vsmmu_event_slot, reserved, 0x34);

#undef VSMMU_PIN
#undef VSMMU_PIN_SIZE

/* ---- Helpers --------------------------------------------------------------------------------- */

/* The payload length a request of this type needs, given its fixed part (for LINK_STE and INVALIDATE
 * the count is read from the payload); -1 for a type that is not a request. Reply lengths are in
 * PROTOCOL.md §5-6. */
static inline int64_t vsmmu_request_payload_length(uint16_t type, const void *payload, uint32_t payload_length)
{
	const unsigned char *p = (const unsigned char *)payload;
	uint32_t count;
	switch (type) {
	case VSMMU_MSG_HELLO: return sizeof(struct vsmmu_hello);
	case VSMMU_MSG_CREATE_VSMMU:
		if (payload_length >= 4 && (p[0] & VSMMU_CREATE_FLAG_KEY))
			return sizeof(struct vsmmu_create_vsmmu_keyed);
		return sizeof(struct vsmmu_create_vsmmu);
	case VSMMU_MSG_DESTROY_VSMMU: return sizeof(struct vsmmu_destroy_vsmmu);
	case VSMMU_MSG_ATTACH_VIOMMU: return sizeof(struct vsmmu_attach_viommu);
	case VSMMU_MSG_DETACH_VIOMMU: return sizeof(struct vsmmu_detach_viommu);
	case VSMMU_MSG_SET_DEV_ID:
	case VSMMU_MSG_UNSET_DEV_ID: return sizeof(struct vsmmu_dev_id);
	case VSMMU_MSG_LINK_STE:
		if (payload_length < sizeof(struct vsmmu_link_ste))
			return sizeof(struct vsmmu_link_ste);
		count = (uint32_t)p[8] | (uint32_t)p[9] << 8 | (uint32_t)p[10] << 16 | (uint32_t)p[11] << 24;
		return (int64_t)sizeof(struct vsmmu_link_ste) + (int64_t)count * VSMMU_CD_SIZE;
	case VSMMU_MSG_UNLINK_STE: return sizeof(struct vsmmu_unlink_ste);
	case VSMMU_MSG_UPDATE_CD: return sizeof(struct vsmmu_update_cd);
	case VSMMU_MSG_GET_HW_INFO: return sizeof(struct vsmmu_get_hw_info);
	case VSMMU_MSG_RESUME_VSMMU: return sizeof(struct vsmmu_resume_vsmmu);
	case VSMMU_MSG_MAP_QUEUE: return sizeof(struct vsmmu_map_queue);
	case VSMMU_MSG_UNMAP_QUEUE: return sizeof(struct vsmmu_unmap_queue);
	case VSMMU_MSG_MAP_EVENT_QUEUE: return sizeof(struct vsmmu_map_event_queue);
	case VSMMU_MSG_UNMAP_EVENT_QUEUE: return sizeof(struct vsmmu_unmap_event_queue);
	case VSMMU_MSG_SIMULATE_DMA: return sizeof(struct vsmmu_simulate_dma);
	case VSMMU_MSG_INVALIDATE:
		if (payload_length < sizeof(struct vsmmu_invalidate))
			return sizeof(struct vsmmu_invalidate);
		count = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
		return (int64_t)sizeof(struct vsmmu_invalidate) + (int64_t)count * VSMMU_COMMAND_SIZE;
	case VSMMU_MSG_STATS: return sizeof(struct vsmmu_stats);
	case VSMMU_MSG_LIST: return sizeof(struct vsmmu_list);
	case VSMMU_MSG_HEALTH: return 0;
	default: return -1;
	}
}

#ifdef __cplusplus
}
#endif

#endif /* VSMMU_PROTOCOL_H */
