/*
 * check_vectors.c — checks the golden frames of protocol/vectors against the C structures of vsmmu.h.
 *
 *   cc -std=c11 -Wall -Wextra -Werror -I protocol -o check_vectors protocol/vectors/check_vectors.c
 *   ./check_vectors protocol/vectors/ *.hex
 *
 * For every file (one frame, hex digits, '#' comments; PROTOCOL.md §7):
 *   - the frame is 16 + header.payload_length bytes (or just a header announcing a frame over
 *     VSMMU_MAX_FRAME_SIZE, for an expected FRAME_TOO_LARGE);
 *   - the payload length is what the C structures say for the type (fixed part + count × element size,
 *     counts read through the structures), and the flags are allowed for the type;
 *   - every "#! name = value" assertion holds when the bytes are read through the struct member the
 *     name designates (offsetof/sizeof of vsmmu.h);
 *   - "#! expect_error = N" frames are refused by the §2.2 framing checks with exactly code N.
 * A file marked "#! kind = queue_header" or "#! kind = queue_slots" is not a frame but bytes of the shared
 * queue's memory (§8.1), the first of them at "#! offset": its "queue_header.<field>" assertions are read
 * at offsetof(struct vsmmu_queue_header, field) (every field asserted, every other byte zero), its
 * "slot[i].w[k]" at VSMMU_QUEUE_SLOTS_OFFSET + i * sizeof(struct vsmmu_command). "#! kind =
 * event_queue_header" and "#! kind = event_slot" are the event queue's memory (§9.1): the header's first
 * lines (struct vsmmu_event_queue_header), and one slot (struct vsmmu_event_slot) at
 * VSMMU_EVENT_QUEUE_SLOTS_OFFSET + i * VSMMU_EVENT_SLOT_SIZE, every field asserted, every other byte zero.
 * Prints one line per vector and a summary; exits 1 on any failure.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vsmmu.h"

#define HDR ((uint32_t)sizeof(struct vsmmu_frame_header))
#define MAX_BYTES (64 * 1024)

/* ---- Field table: every assertion name maps to a struct member ---------------------------------- */

enum base { AT_FRAME, AT_PAYLOAD, AT_ELEMENT, AT_MESSAGE };

struct field {
	const char *name;
	enum base base;
	size_t offset; /* from the frame, the payload, or the element */
	size_t size;
	size_t item;   /* element size of an array member (e.g. 8 for w[]), 0 for scalars and names */
	int is_name;   /* char[VSMMU_NAME_SIZE] */
	size_t stride; /* AT_ELEMENT: sizeof the element struct */
};

#define MEMBER_SIZE(st, m) sizeof(((struct st *)0)->m)
#define HEADER(n, m) { "header." n, AT_FRAME, offsetof(struct vsmmu_frame_header, m), MEMBER_SIZE(vsmmu_frame_header, m), 0, 0, 0 }
#define P(prefix, st, m) { prefix "." #m, AT_PAYLOAD, offsetof(struct st, m), MEMBER_SIZE(st, m), 0, 0, 0 }
#define PNAME(prefix, st, m) { prefix "." #m, AT_PAYLOAD, offsetof(struct st, m), MEMBER_SIZE(st, m), 0, 1, 0 }
#define PWORDS(name, st, m) { name, AT_PAYLOAD, offsetof(struct st, m), MEMBER_SIZE(st, m), 8, 0, 0 }
#define PU32S(prefix, st, m) { prefix "." #m, AT_PAYLOAD, offsetof(struct st, m), MEMBER_SIZE(st, m), 4, 0, 0 }
#define EL(prefix, st, m) { prefix "[]." #m, AT_ELEMENT, offsetof(struct st, m), MEMBER_SIZE(st, m), 0, 0, sizeof(struct st) }
#define ELNAME(prefix, st, m) { prefix "[]." #m, AT_ELEMENT, offsetof(struct st, m), MEMBER_SIZE(st, m), 0, 1, sizeof(struct st) }
#define ELWORDS(prefix, st) { prefix "[].w", AT_ELEMENT, offsetof(struct st, w), MEMBER_SIZE(st, w), 8, 0, sizeof(struct st) }
#define MSG(prefix, st) { prefix ".message", AT_MESSAGE, sizeof(struct st), 0, 0, 0, 0 }

static const struct field fields[] = {
	HEADER("payload_length", payload_length), HEADER("type", type), HEADER("flags", flags),
	HEADER("request_id", request_id),

	P("error", vsmmu_error, code), P("error", vsmmu_error, request_type), P("error", vsmmu_error, message_length),
	P("error", vsmmu_error, detail), P("error", vsmmu_error, reserved), P("error", vsmmu_error, value),
	MSG("error", vsmmu_error),

	P("hello", vsmmu_hello, magic), P("hello", vsmmu_hello, min_version), P("hello", vsmmu_hello, max_version),
	P("hello", vsmmu_hello, pid), P("hello", vsmmu_hello, reserved), PNAME("hello", vsmmu_hello, client_name),

	P("hello_reply", vsmmu_hello_reply, magic), P("hello_reply", vsmmu_hello_reply, version),
	P("hello_reply", vsmmu_hello_reply, reserved), P("hello_reply", vsmmu_hello_reply, max_frame_size),
	P("hello_reply", vsmmu_hello_reply, max_commands), P("hello_reply", vsmmu_hello_reply, max_vsmmus),
	P("hello_reply", vsmmu_hello_reply, max_viommus), P("hello_reply", vsmmu_hello_reply, max_context_descriptors),
	P("hello_reply", vsmmu_hello_reply, server_pid), PNAME("hello_reply", vsmmu_hello_reply, server_name),

	P("create_vsmmu", vsmmu_create_vsmmu, flags), P("create_vsmmu", vsmmu_create_vsmmu, reserved),
	PNAME("create_vsmmu", vsmmu_create_vsmmu, name),
	P("create_vsmmu_keyed", vsmmu_create_vsmmu_keyed, flags), P("create_vsmmu_keyed", vsmmu_create_vsmmu_keyed, reserved),
	PNAME("create_vsmmu_keyed", vsmmu_create_vsmmu_keyed, name),
	PWORDS("create_vsmmu_keyed.create_key", vsmmu_create_vsmmu_keyed, create_key),
	P("create_vsmmu_reply", vsmmu_create_vsmmu_reply, vsmmu_id), P("create_vsmmu_reply", vsmmu_create_vsmmu_reply, reserved),
	P("create_vsmmu_reply_v3", vsmmu_create_vsmmu_reply_v3, vsmmu_id),
	P("create_vsmmu_reply_v3", vsmmu_create_vsmmu_reply_v3, reserved),
	PWORDS("create_vsmmu_reply_v3.resume_token", vsmmu_create_vsmmu_reply_v3, resume_token),
	P("resume_vsmmu", vsmmu_resume_vsmmu, vsmmu_id), P("resume_vsmmu", vsmmu_resume_vsmmu, reserved),
	PWORDS("resume_vsmmu.resume_token", vsmmu_resume_vsmmu, resume_token),
	P("resume_vsmmu_reply", vsmmu_resume_vsmmu_reply, vsmmu_id),
	P("resume_vsmmu_reply", vsmmu_resume_vsmmu_reply, viommu_count),
	P("resume_vsmmu_reply", vsmmu_resume_vsmmu_reply, device_count),
	P("resume_vsmmu_reply", vsmmu_resume_vsmmu_reply, reserved),
	P("resume_vsmmu_reply", vsmmu_resume_vsmmu_reply, last_request_id),
	P("map_queue", vsmmu_map_queue, vsmmu_id), P("map_queue", vsmmu_map_queue, log2_entries),
	P("map_queue", vsmmu_map_queue, flags), P("map_queue", vsmmu_map_queue, reserved),
	P("map_queue_reply", vsmmu_map_queue_reply, cons), P("map_queue_reply", vsmmu_map_queue_reply, reserved),
	P("unmap_queue", vsmmu_unmap_queue, vsmmu_id), P("unmap_queue", vsmmu_unmap_queue, reserved),
	P("map_event_queue", vsmmu_map_event_queue, vsmmu_id), P("map_event_queue", vsmmu_map_event_queue, log2_entries),
	P("map_event_queue", vsmmu_map_event_queue, flags), P("map_event_queue", vsmmu_map_event_queue, reserved),
	P("map_event_queue_reply", vsmmu_map_event_queue_reply, prod),
	P("map_event_queue_reply", vsmmu_map_event_queue_reply, reserved),
	P("unmap_event_queue", vsmmu_unmap_event_queue, vsmmu_id), P("unmap_event_queue", vsmmu_unmap_event_queue, reserved),
	P("simulate_dma", vsmmu_simulate_dma, vsmmu_id), P("simulate_dma", vsmmu_simulate_dma, vsid),
	P("simulate_dma", vsmmu_simulate_dma, ssid), P("simulate_dma", vsmmu_simulate_dma, flags),
	P("simulate_dma", vsmmu_simulate_dma, iova), P("simulate_dma", vsmmu_simulate_dma, size),
	P("simulate_dma", vsmmu_simulate_dma, walk), P("simulate_dma", vsmmu_simulate_dma, reserved),
	P("simulate_dma_reply", vsmmu_simulate_dma_reply, outcome), P("simulate_dma_reply", vsmmu_simulate_dma_reply, reserved),
	PWORDS("simulate_dma_reply.event.w", vsmmu_simulate_dma_reply, event.w),
	P("destroy_vsmmu", vsmmu_destroy_vsmmu, vsmmu_id), P("destroy_vsmmu", vsmmu_destroy_vsmmu, reserved),

	P("attach_viommu", vsmmu_attach_viommu, vsmmu_id), P("attach_viommu", vsmmu_attach_viommu, host_device_id),
	P("attach_viommu", vsmmu_attach_viommu, nest_parent_hwpt_id), P("attach_viommu", vsmmu_attach_viommu, reserved),
	PNAME("attach_viommu", vsmmu_attach_viommu, psmmu),
	P("attach_viommu_reply", vsmmu_attach_viommu_reply, viommu),
	P("attach_viommu_reply", vsmmu_attach_viommu_reply, backend_viommu_id),
	P("detach_viommu", vsmmu_detach_viommu, vsmmu_id), P("detach_viommu", vsmmu_detach_viommu, viommu),

	P("dev_id", vsmmu_dev_id, vsmmu_id), P("dev_id", vsmmu_dev_id, viommu), P("dev_id", vsmmu_dev_id, host_device_id),
	P("dev_id", vsmmu_dev_id, vsid),

	P("link_ste", vsmmu_link_ste, vsmmu_id), P("link_ste", vsmmu_link_ste, vsid), P("link_ste", vsmmu_link_ste, cd_count),
	P("link_ste", vsmmu_link_ste, reserved), PWORDS("link_ste.ste.w", vsmmu_link_ste, ste.w),
	ELWORDS("cd", vsmmu_cd),
	P("hwpt_reply", vsmmu_hwpt_reply, s1_hwpt_id), P("hwpt_reply", vsmmu_hwpt_reply, flags),
	P("unlink_ste", vsmmu_unlink_ste, vsmmu_id), P("unlink_ste", vsmmu_unlink_ste, vsid),
	P("update_cd", vsmmu_update_cd, vsmmu_id), P("update_cd", vsmmu_update_cd, vsid), P("update_cd", vsmmu_update_cd, ssid),
	P("update_cd", vsmmu_update_cd, reserved), PWORDS("update_cd.cd.w", vsmmu_update_cd, cd.w),

	P("get_hw_info", vsmmu_get_hw_info, vsmmu_id), P("get_hw_info", vsmmu_get_hw_info, reserved),
	P("hw_info_reply", vsmmu_hw_info_reply, viommu_count), P("hw_info_reply", vsmmu_hw_info_reply, reserved),
	PU32S("hw_info_reply", vsmmu_hw_info_reply, idr), P("hw_info_reply", vsmmu_hw_info_reply, iidr),
	P("hw_info_reply", vsmmu_hw_info_reply, aidr),

	P("invalidate", vsmmu_invalidate, vsmmu_id), P("invalidate", vsmmu_invalidate, command_count),
	P("invalidate", vsmmu_invalidate, flags), P("invalidate", vsmmu_invalidate, reserved),
	ELWORDS("command", vsmmu_command),
	P("invalidate_reply", vsmmu_invalidate_reply, consumed), P("invalidate_reply", vsmmu_invalidate_reply, error_index),
	P("invalidate_reply", vsmmu_invalidate_reply, syncs_completed), P("invalidate_reply", vsmmu_invalidate_reply, cerror),
	P("invalidate_reply", vsmmu_invalidate_reply, reserved), P("invalidate_reply", vsmmu_invalidate_reply, message_length),
	MSG("invalidate_reply", vsmmu_invalidate_reply),

	P("stats", vsmmu_stats, vsmmu_id), P("stats", vsmmu_stats, reserved),
	P("stats_reply", vsmmu_stats_reply, entry_count), P("stats_reply", vsmmu_stats_reply, reserved),
	EL("stat_entry", vsmmu_stat_entry, vsmmu_id), EL("stat_entry", vsmmu_stat_entry, viommu),
	EL("stat_entry", vsmmu_stat_entry, key), EL("stat_entry", vsmmu_stat_entry, value),

	P("list", vsmmu_list, vsmmu_id), P("list", vsmmu_list, kind), P("list", vsmmu_list, reserved),
	P("list", vsmmu_list, start), P("list", vsmmu_list, max_entries),
	P("list_reply", vsmmu_list_reply, kind), P("list_reply", vsmmu_list_reply, entry_size),
	P("list_reply", vsmmu_list_reply, count), P("list_reply", vsmmu_list_reply, total), P("list_reply", vsmmu_list_reply, start),
	EL("list_vsmmu", vsmmu_list_vsmmu, vsmmu_id), EL("list_vsmmu", vsmmu_list_vsmmu, owner_pid),
	EL("list_vsmmu", vsmmu_list_vsmmu, owner_uid), EL("list_vsmmu", vsmmu_list_vsmmu, viommu_count),
	EL("list_vsmmu", vsmmu_list_vsmmu, device_count), EL("list_vsmmu", vsmmu_list_vsmmu, hwpt_count),
	EL("list_vsmmu", vsmmu_list_vsmmu, asid_count), EL("list_vsmmu", vsmmu_list_vsmmu, flags),
	ELNAME("list_vsmmu", vsmmu_list_vsmmu, name),
	EL("list_viommu", vsmmu_list_viommu, vsmmu_id), EL("list_viommu", vsmmu_list_viommu, viommu),
	EL("list_viommu", vsmmu_list_viommu, backend_viommu_id), EL("list_viommu", vsmmu_list_viommu, device_count),
	ELNAME("list_viommu", vsmmu_list_viommu, psmmu),
	EL("list_device", vsmmu_list_device, vsmmu_id), EL("list_device", vsmmu_list_device, vsid),
	EL("list_device", vsmmu_list_device, viommu), EL("list_device", vsmmu_list_device, host_device_id),
	EL("list_device", vsmmu_list_device, s1_hwpt_id), EL("list_device", vsmmu_list_device, flags),
	EL("list_hwpt", vsmmu_list_hwpt, vsmmu_id), EL("list_hwpt", vsmmu_list_hwpt, s1_hwpt_id),
	EL("list_hwpt", vsmmu_list_hwpt, vsid), EL("list_hwpt", vsmmu_list_hwpt, viommu),
	EL("list_hwpt", vsmmu_list_hwpt, backend_hwpt_id), EL("list_hwpt", vsmmu_list_hwpt, asid_count),
	EL("list_asid", vsmmu_list_asid, vsmmu_id), EL("list_asid", vsmmu_list_asid, asid),
	EL("list_asid", vsmmu_list_asid, hwpt_count), EL("list_asid", vsmmu_list_asid, target_mask),
	EL("list_asid", vsmmu_list_asid, retiring_mask),

	P("health_reply", vsmmu_health_reply, status), P("health_reply", vsmmu_health_reply, connection_count),
	P("health_reply", vsmmu_health_reply, vsmmu_count), P("health_reply", vsmmu_health_reply, psmmu_count),
	P("health_reply", vsmmu_health_reply, uptime_ns), P("health_reply", vsmmu_health_reply, server_pid),
	P("health_reply", vsmmu_health_reply, reserved),
	EL("psmmu_health", vsmmu_psmmu_health, status), EL("psmmu_health", vsmmu_psmmu_health, backend),
	EL("psmmu_health", vsmmu_psmmu_health, viommu_count), EL("psmmu_health", vsmmu_psmmu_health, reserved),
	ELNAME("psmmu_health", vsmmu_psmmu_health, name),
};

/* ---- Lengths by type, from the structures -------------------------------------------------------- */

static uint64_t rd(const unsigned char *p, size_t n)
{
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* Size of the fixed part of a frame's payload (where trailing arrays and messages start); -1 if unknown. */
static int64_t fixed_part(uint16_t type)
{
	switch (type) {
	case VSMMU_MSG_ERROR: return sizeof(struct vsmmu_error);
	case VSMMU_MSG_HELLO_REPLY: return sizeof(struct vsmmu_hello_reply);
	case VSMMU_MSG_CREATE_VSMMU_REPLY: return sizeof(struct vsmmu_create_vsmmu_reply);
	case VSMMU_MSG_ATTACH_VIOMMU_REPLY: return sizeof(struct vsmmu_attach_viommu_reply);
	case VSMMU_MSG_LINK_STE_REPLY:
	case VSMMU_MSG_UPDATE_CD_REPLY: return sizeof(struct vsmmu_hwpt_reply);
	case VSMMU_MSG_GET_HW_INFO_REPLY: return sizeof(struct vsmmu_hw_info_reply);
	case VSMMU_MSG_RESUME_VSMMU_REPLY: return sizeof(struct vsmmu_resume_vsmmu_reply);
	case VSMMU_MSG_MAP_QUEUE_REPLY: return sizeof(struct vsmmu_map_queue_reply);
	case VSMMU_MSG_MAP_EVENT_QUEUE_REPLY: return sizeof(struct vsmmu_map_event_queue_reply);
	case VSMMU_MSG_SIMULATE_DMA_REPLY: return sizeof(struct vsmmu_simulate_dma_reply);
	case VSMMU_MSG_UNMAP_EVENT_QUEUE_REPLY:
	case VSMMU_MSG_UNMAP_QUEUE_REPLY:
	case VSMMU_MSG_DESTROY_VSMMU_REPLY:
	case VSMMU_MSG_DETACH_VIOMMU_REPLY:
	case VSMMU_MSG_SET_DEV_ID_REPLY:
	case VSMMU_MSG_UNSET_DEV_ID_REPLY:
	case VSMMU_MSG_UNLINK_STE_REPLY: return 0;
	case VSMMU_MSG_INVALIDATE_REPLY: return sizeof(struct vsmmu_invalidate_reply);
	case VSMMU_MSG_STATS_REPLY: return sizeof(struct vsmmu_stats_reply);
	case VSMMU_MSG_LIST_REPLY: return sizeof(struct vsmmu_list_reply);
	case VSMMU_MSG_HEALTH_REPLY: return sizeof(struct vsmmu_health_reply);
	case VSMMU_MSG_LINK_STE: return sizeof(struct vsmmu_link_ste);
	case VSMMU_MSG_INVALIDATE: return sizeof(struct vsmmu_invalidate);
	default: {
		unsigned char none[1] = { 0 };
		return vsmmu_request_payload_length(type, none, 0);
	}
	}
}

static size_t list_entry_size(uint16_t kind)
{
	switch (kind) {
	case VSMMU_LIST_VSMMUS: return sizeof(struct vsmmu_list_vsmmu);
	case VSMMU_LIST_VIOMMUS: return sizeof(struct vsmmu_list_viommu);
	case VSMMU_LIST_DEVICES: return sizeof(struct vsmmu_list_device);
	case VSMMU_LIST_HWPTS: return sizeof(struct vsmmu_list_hwpt);
	case VSMMU_LIST_ASIDS: return sizeof(struct vsmmu_list_asid);
	default: return 0;
	}
}

/* The payload length a reply needs, read through its structure; -1 for an unknown type. */
static int64_t reply_payload_length(uint16_t type, const unsigned char *p, uint32_t len)
{
	int64_t fixed = fixed_part(type);
	if (fixed < 0 || len < (uint64_t)fixed)
		return fixed;
	switch (type) {
	case VSMMU_MSG_CREATE_VSMMU_REPLY:
		/* 8 bytes on versions 1-2, 24 (with the resume token) on version 3. */
		return len == sizeof(struct vsmmu_create_vsmmu_reply_v3) ? (int64_t)len : fixed;
	case VSMMU_MSG_ERROR: {
		struct vsmmu_error e;
		memcpy(&e, p, sizeof e);
		return fixed + e.message_length;
	}
	case VSMMU_MSG_INVALIDATE_REPLY: {
		struct vsmmu_invalidate_reply r;
		memcpy(&r, p, sizeof r);
		return fixed + r.message_length;
	}
	case VSMMU_MSG_STATS_REPLY: {
		struct vsmmu_stats_reply r;
		memcpy(&r, p, sizeof r);
		return fixed + (int64_t)r.entry_count * (int64_t)sizeof(struct vsmmu_stat_entry);
	}
	case VSMMU_MSG_LIST_REPLY: {
		struct vsmmu_list_reply r;
		memcpy(&r, p, sizeof r);
		size_t size = list_entry_size(r.kind);
		if (size == 0 || size != r.entry_size)
			return -1;
		return fixed + (int64_t)r.count * (int64_t)size;
	}
	case VSMMU_MSG_HEALTH_REPLY: {
		struct vsmmu_health_reply r;
		memcpy(&r, p, sizeof r);
		return fixed + (int64_t)r.psmmu_count * (int64_t)sizeof(struct vsmmu_psmmu_health);
	}
	default: return fixed;
	}
}

/* Whether a request of this type may carry an fd (FD_ATTACHED): ATTACH_VIOMMU (the VMM's iommufd), from
 * version 2 SET_DEV_ID (the device's VFIO cdev), from version 3 RESUME_VSMMU, from version 4 MAP_QUEUE
 * (three fds) and from version 5 MAP_EVENT_QUEUE (two); PROTOCOL.md §1. */
static int takes_fd(uint16_t type)
{
	return type == VSMMU_MSG_ATTACH_VIOMMU || type == VSMMU_MSG_SET_DEV_ID || type == VSMMU_MSG_RESUME_VSMMU ||
	       type == VSMMU_MSG_MAP_QUEUE || type == VSMMU_MSG_MAP_EVENT_QUEUE;
}

/* The first §2.2 framing check the frame fails (1, 3, 4, 8, 7), a HELLO field check (8), or 0. */
static unsigned framing_error(const unsigned char *frame, size_t n)
{
	struct vsmmu_frame_header h;
	memcpy(&h, frame, sizeof h);
	if ((uint64_t)HDR + h.payload_length > VSMMU_MAX_FRAME_SIZE)
		return VSMMU_ERR_FRAME_TOO_LARGE;
	if (n != (size_t)HDR + h.payload_length)
		return VSMMU_ERR_TRUNCATED_FRAME;
	const unsigned char *payload = frame + HDR;
	int64_t need = vsmmu_request_payload_length(h.type, payload, h.payload_length);
	if (need < 0)
		return VSMMU_ERR_UNKNOWN_MESSAGE_TYPE;
	if (need != (int64_t)h.payload_length)
		return VSMMU_ERR_BAD_PAYLOAD_LENGTH;
	if (h.flags & VSMMU_FRAME_RESERVED_FLAGS)
		return VSMMU_ERR_BAD_FIELD;
	if ((h.flags & VSMMU_FRAME_FD_ATTACHED) && !takes_fd(h.type))
		return VSMMU_ERR_BAD_FILE_DESCRIPTOR;
	if (h.type == VSMMU_MSG_HELLO) {
		struct vsmmu_hello hello;
		memcpy(&hello, payload, sizeof hello);
		if (hello.magic != VSMMU_MAGIC || hello.min_version == 0 || hello.min_version > hello.max_version)
			return VSMMU_ERR_BAD_FIELD;
	}
	return 0;
}

/* ---- Vector files -------------------------------------------------------------------------------- */

struct assertion {
	char name[96];
	char value[1100];
};

struct vector {
	unsigned char bytes[MAX_BYTES];
	size_t count;
	struct assertion asserts[256];
	int nasserts;
	long expect_error; /* -1: none */
	char kind[32];     /* "#! kind": empty for a frame */
	long offset;       /* "#! offset": where a memory vector's first byte sits (-1: not given) */
};

static int hexval(int c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t') s++;
	char *e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n')) *--e = 0;
	return s;
}

static int load(const char *path, struct vector *v)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		printf("FAIL %s: cannot open\n", path);
		return -1;
	}
	char line[4096];
	int pending = -1, lineno = 0;
	v->count = 0;
	v->nasserts = 0;
	v->expect_error = -1;
	v->kind[0] = 0;
	v->offset = -1;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		if (line[0] == '#' && line[1] == '!') {
			char *eq = strchr(line + 2, '=');
			if (!eq || v->nasserts == 256) {
				printf("FAIL %s:%d: bad assertion\n", path, lineno);
				fclose(f);
				return -1;
			}
			*eq = 0;
			char *name = trim(line + 2), *value = trim(eq + 1);
			if (strcmp(name, "expect_error") == 0) {
				v->expect_error = strtol(value, NULL, 0);
				continue;
			}
			if (strcmp(name, "kind") == 0) {
				snprintf(v->kind, sizeof v->kind, "%s", value);
				continue;
			}
			if (strcmp(name, "offset") == 0) {
				v->offset = strtol(value, NULL, 0);
				continue;
			}
			struct assertion *a = &v->asserts[v->nasserts++];
			snprintf(a->name, sizeof a->name, "%s", name);
			snprintf(a->value, sizeof a->value, "%s", value);
			continue;
		}
		char *hash = strchr(line, '#');
		if (hash) *hash = 0;
		for (char *c = line; *c; c++) {
			if (*c == ' ' || *c == '\t' || *c == '\r' || *c == '\n') continue;
			int d = hexval((unsigned char)*c);
			if (d < 0) {
				printf("FAIL %s:%d: '%c' is not a hex digit\n", path, lineno, *c);
				fclose(f);
				return -1;
			}
			if (pending < 0) {
				pending = d;
			} else {
				if (v->count == MAX_BYTES) {
					printf("FAIL %s: more than %d bytes\n", path, MAX_BYTES);
					fclose(f);
					return -1;
				}
				v->bytes[v->count++] = (unsigned char)(pending << 4 | d);
				pending = -1;
			}
		}
	}
	fclose(f);
	if (pending >= 0) {
		printf("FAIL %s: odd number of hex digits\n", path);
		return -1;
	}
	return 0;
}

/* Resolves an assertion name to a byte range of the frame. "x[i].m" is element i of a trailing array;
 * a trailing "[k]" indexes an array member (the words of an STE, CD or command). */
static int resolve(const struct vector *v, const char *name, size_t *offset, size_t *size, int *is_name, int *is_message)
{
	char key[128];
	long element = -1, item = -1;
	const char *bracket = strchr(name, '['), *dot = strchr(name, '.');
	snprintf(key, sizeof key, "%s", name);
	if (bracket && dot && bracket < dot) { /* element access: prefix[i].rest */
		char *end;
		element = strtol(bracket + 1, &end, 10);
		if (*end != ']') return -1;
		snprintf(key, sizeof key, "%.*s[]%s", (int)(bracket - name), name, end + 1);
	}
	size_t klen = strlen(key);
	if (klen > 3 && key[klen - 1] == ']') { /* trailing [k] */
		char *open = strrchr(key, '[');
		if (open && open[1] != ']') {
			item = strtol(open + 1, NULL, 10);
			*open = 0;
		}
	}
	struct vsmmu_frame_header h;
	memcpy(&h, v->bytes, sizeof h);
	for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
		const struct field *f = &fields[i];
		if (strcmp(f->name, key) != 0) continue;
		if ((element >= 0) != (f->base == AT_ELEMENT) || (item >= 0) != (f->item != 0)) return -1;
		*is_name = f->is_name;
		*is_message = f->base == AT_MESSAGE;
		*size = f->size;
		int64_t fixed = fixed_part(h.type);
		switch (f->base) {
		case AT_FRAME: *offset = f->offset; break;
		case AT_PAYLOAD: *offset = HDR + f->offset; break;
		case AT_ELEMENT:
			if (fixed < 0) return -1;
			*offset = HDR + (size_t)fixed + (size_t)element * f->stride + f->offset;
			break;
		case AT_MESSAGE: *offset = HDR + f->offset; break;
		}
		if (item >= 0) {
			if ((size_t)item >= f->size / f->item) return -1;
			*offset += (size_t)item * f->item;
			*size = f->item;
		}
		return 0;
	}
	return -1;
}

static int check_assertion(const char *path, const struct vector *v, const struct assertion *a)
{
	size_t offset, size;
	int is_name, is_message;
	if (resolve(v, a->name, &offset, &size, &is_name, &is_message) != 0) {
		printf("FAIL %s: no field \"%s\" in vsmmu.h for this frame\n", path, a->name);
		return -1;
	}
	if (is_message) { /* the rest of the payload, after the fixed part */
		size = v->count > offset ? v->count - offset : 0;
	}
	if (offset + size > v->count) {
		printf("FAIL %s: %s (offset %zu, %zu bytes) lies past the frame's %zu bytes\n", path, a->name, offset, size, v->count);
		return -1;
	}
	const unsigned char *p = v->bytes + offset;
	if (a->value[0] == '"') {
		const char *s = a->value + 1;
		size_t len = strlen(s);
		if (len == 0 || s[len - 1] != '"') {
			printf("FAIL %s: %s: unterminated string\n", path, a->name);
			return -1;
		}
		len--;
		int ok = is_message ? (size == len && memcmp(p, s, len) == 0)
		       : is_name ? (len <= size && memcmp(p, s, len) == 0)
		       : 0;
		for (size_t i = len; ok && is_name && i < size; i++)
			ok = p[i] == 0;
		if (!ok) {
			printf("FAIL %s: %s is not %s\n", path, a->name, a->value);
			return -1;
		}
		return 0;
	}
	if (is_name || is_message || size > 8) {
		printf("FAIL %s: %s needs a string value\n", path, a->name);
		return -1;
	}
	char *end;
	unsigned long long want = strtoull(a->value, &end, 0);
	if (*end) {
		printf("FAIL %s: %s: bad number %s\n", path, a->name, a->value);
		return -1;
	}
	uint64_t got = rd(p, size);
	if (got != want) {
		printf("FAIL %s: %s = 0x%llx, expected %s\n", path, a->name, (unsigned long long)got, a->value);
		return -1;
	}
	return 0;
}

/* ---- Memory vectors: the shared queue (§8.1) ---------------------------------------------------------- */

#define QH(m) { "queue_header." #m, offsetof(struct vsmmu_queue_header, m), MEMBER_SIZE(vsmmu_queue_header, m) }

static const struct queue_field {
	const char *name;
	size_t offset, size;
} queue_fields[] = {
	QH(magic), QH(version), QH(log2_entries), QH(prod), QH(cons), QH(error_sequence), QH(cerror),
	QH(error_kind), QH(error_cons), QH(state), QH(error_ack), QH(daemon_sleeping), QH(vmm_sleeping),
};

/* The event queue (§9.1): the header's fields, and a slot's. */
#define EQH(m) { "event_queue_header." #m, offsetof(struct vsmmu_event_queue_header, m), \
		 MEMBER_SIZE(vsmmu_event_queue_header, m) }
#define ES(m) { "event_slot." #m, offsetof(struct vsmmu_event_slot, m), MEMBER_SIZE(vsmmu_event_slot, m) }
#define ESW(k) { "event_slot.record.w[" #k "]", offsetof(struct vsmmu_event_slot, record) + (k) * sizeof(uint64_t), \
		 sizeof(uint64_t) }

static const struct queue_field event_queue_fields[] = {
	EQH(magic), EQH(version), EQH(log2_entries), EQH(prod), EQH(cons), EQH(state), EQH(vmm_sleeping),
};

static const struct queue_field event_slot_fields[] = {
	ESW(0), ESW(1), ESW(2), ESW(3), ES(sequence), ES(vsmmu_id), ES(viommu_id), ES(flags),
};

/* The event queue header's bytes an event_queue_header vector holds: up to the end of the last field's line. */
#define EVENT_QUEUE_HEADER_FIELDS_END \
	((offsetof(struct vsmmu_event_queue_header, vmm_sleeping) / VSMMU_QUEUE_LINE_SIZE + 1) * VSMMU_QUEUE_LINE_SIZE)

/* The header's bytes a queue_header vector holds: up to the end of the last field's cache line. */
#define QUEUE_HEADER_FIELDS_END \
	((offsetof(struct vsmmu_queue_header, vmm_sleeping) / VSMMU_QUEUE_LINE_SIZE + 1) * VSMMU_QUEUE_LINE_SIZE)

/* A number assertion on `size` bytes at `offset` of the vector. */
static int check_number(const char *path, const struct vector *v, const struct assertion *a, size_t offset, size_t size)
{
	if (offset + size > v->count) {
		printf("FAIL %s: %s (offset %zu, %zu bytes) lies past the vector's %zu bytes\n", path, a->name, offset, size,
		       v->count);
		return -1;
	}
	char *end;
	unsigned long long want = strtoull(a->value, &end, 0);
	if (*end || a->value[0] == 0) {
		printf("FAIL %s: %s: bad number %s\n", path, a->name, a->value);
		return -1;
	}
	uint64_t got = rd(v->bytes + offset, size);
	if (got != want) {
		printf("FAIL %s: %s = 0x%llx, expected %s\n", path, a->name, (unsigned long long)got, a->value);
		return -1;
	}
	return 0;
}

/* A vector of `length` bytes holding one structure whose fields are `fields` (offsets from the vector's
 * first byte): every field asserted, every other byte zero. */
static int check_fields(const char *path, const struct vector *v, const char *structure,
			const struct queue_field *fields, size_t nfields, size_t length)
{
	int asserted[16] = { 0 };
	unsigned char covered[VSMMU_QUEUE_SLOTS_OFFSET] = { 0 };
	if (nfields > 16 || length > sizeof covered || v->count != length) {
		printf("FAIL %s: a %s vector holds %zu bytes, not %zu\n", path, structure, v->count, length);
		return -1;
	}
	for (int i = 0; i < v->nasserts; i++) {
		const struct assertion *a = &v->asserts[i];
		size_t k = 0;
		while (k < nfields && strcmp(fields[k].name, a->name) != 0)
			k++;
		if (k == nfields) {
			printf("FAIL %s: no field \"%s\" in struct %s\n", path, a->name, structure);
			return -1;
		}
		if (check_number(path, v, a, fields[k].offset, fields[k].size) != 0)
			return -1;
		asserted[k] = 1;
		memset(covered + fields[k].offset, 1, fields[k].size);
	}
	for (size_t k = 0; k < nfields; k++)
		if (!asserted[k]) {
			printf("FAIL %s: %s is not asserted\n", path, fields[k].name);
			return -1;
		}
	for (size_t i = 0; i < v->count; i++)
		if (!covered[i] && v->bytes[i] != 0) {
			printf("FAIL %s: reserved byte 0x%zx is 0x%02x, not 0\n", path, (size_t)v->offset + i, v->bytes[i]);
			return -1;
		}
	return 0;
}

static int check_queue_header(const char *path, const struct vector *v)
{
	if (v->offset != 0) {
		printf("FAIL %s: a queue_header vector holds bytes 0 to 0x%zx of the memory (offset %ld)\n", path,
		       (size_t)QUEUE_HEADER_FIELDS_END, v->offset);
		return -1;
	}
	return check_fields(path, v, "vsmmu_queue_header", queue_fields, sizeof queue_fields / sizeof queue_fields[0],
			    QUEUE_HEADER_FIELDS_END);
}

static int check_event_queue_header(const char *path, const struct vector *v)
{
	if (v->offset != 0) {
		printf("FAIL %s: an event_queue_header vector holds bytes 0 to 0x%zx of the memory (offset %ld)\n", path,
		       (size_t)EVENT_QUEUE_HEADER_FIELDS_END, v->offset);
		return -1;
	}
	return check_fields(path, v, "vsmmu_event_queue_header", event_queue_fields,
			    sizeof event_queue_fields / sizeof event_queue_fields[0], EVENT_QUEUE_HEADER_FIELDS_END);
}

static int check_event_slot(const char *path, const struct vector *v)
{
	if (v->offset < (long)VSMMU_EVENT_QUEUE_SLOTS_OFFSET ||
	    (v->offset - (long)VSMMU_EVENT_QUEUE_SLOTS_OFFSET) % (long)VSMMU_EVENT_SLOT_SIZE != 0) {
		printf("FAIL %s: an event_slot vector starts at VSMMU_EVENT_QUEUE_SLOTS_OFFSET + i * VSMMU_EVENT_SLOT_SIZE "
		       "(offset %ld)\n", path, v->offset);
		return -1;
	}
	return check_fields(path, v, "vsmmu_event_slot", event_slot_fields,
			    sizeof event_slot_fields / sizeof event_slot_fields[0], sizeof(struct vsmmu_event_slot));
}

static int check_queue_slots(const char *path, const struct vector *v)
{
	if (v->offset != (long)VSMMU_QUEUE_SLOTS_OFFSET || v->count == 0 || v->count % sizeof(struct vsmmu_command) != 0) {
		printf("FAIL %s: a queue_slots vector holds whole slots from VSMMU_QUEUE_SLOTS_OFFSET (offset %ld, %zu bytes)\n",
		       path, v->offset, v->count);
		return -1;
	}
	for (int i = 0; i < v->nasserts; i++) {
		const struct assertion *a = &v->asserts[i];
		unsigned slot, word;
		int used = 0;
		if (sscanf(a->name, "slot[%u].w[%u]%n", &slot, &word, &used) != 2 || a->name[used] != 0 ||
		    word >= sizeof(((struct vsmmu_command *)0)->w) / sizeof(uint64_t)) {
			printf("FAIL %s: \"%s\" is not slot[i].w[k]\n", path, a->name);
			return -1;
		}
		size_t offset = (size_t)slot * sizeof(struct vsmmu_command) + offsetof(struct vsmmu_command, w) +
				word * sizeof(uint64_t);
		if (check_number(path, v, a, offset, sizeof(uint64_t)) != 0)
			return -1;
	}
	return 0;
}

static int check_memory(const char *path, struct vector *v, int *asserts_checked)
{
	int rc;
	if (strcmp(v->kind, "queue_header") == 0)
		rc = check_queue_header(path, v);
	else if (strcmp(v->kind, "queue_slots") == 0)
		rc = check_queue_slots(path, v);
	else if (strcmp(v->kind, "event_queue_header") == 0)
		rc = check_event_queue_header(path, v);
	else if (strcmp(v->kind, "event_slot") == 0)
		rc = check_event_slot(path, v);
	else {
		printf("FAIL %s: unknown kind \"%s\"\n", path, v->kind);
		return -1;
	}
	if (rc == 0)
		*asserts_checked += v->nasserts;
	return rc;
}

static int check(const char *path, struct vector *v, int *asserts_checked)
{
	if (v->kind[0])
		return check_memory(path, v, asserts_checked);
	if (v->count < HDR) {
		printf("FAIL %s: %zu bytes, shorter than a header\n", path, v->count);
		return -1;
	}
	struct vsmmu_frame_header h;
	memcpy(&h, v->bytes, sizeof h);
	if (v->expect_error >= 0) {
		unsigned got = framing_error(v->bytes, v->count);
		if ((long)got != v->expect_error) {
			printf("FAIL %s: framing checks give error %u, the vector expects %ld\n", path, got, v->expect_error);
			return -1;
		}
	} else {
		if (v->count != (size_t)HDR + h.payload_length) {
			printf("FAIL %s: %zu bytes, the header says %u\n", path, v->count, HDR + h.payload_length);
			return -1;
		}
		const unsigned char *payload = v->bytes + HDR;
		int64_t need = (h.type & VSMMU_MSG_REPLY) ? reply_payload_length(h.type, payload, h.payload_length)
		                                          : vsmmu_request_payload_length(h.type, payload, h.payload_length);
		if (need < 0) {
			printf("FAIL %s: type 0x%04x is not a message of vsmmu.h\n", path, h.type);
			return -1;
		}
		if (need != (int64_t)h.payload_length) {
			printf("FAIL %s: payload of %u bytes, the structures need %lld\n", path, h.payload_length, (long long)need);
			return -1;
		}
		uint16_t allowed = takes_fd(h.type) ? VSMMU_FRAME_FD_ATTACHED : 0;
		if (h.flags & ~allowed) {
			printf("FAIL %s: flags 0x%04x not allowed on type 0x%04x\n", path, h.flags, h.type);
			return -1;
		}
		if (framing_error(v->bytes, v->count) != 0 && !(h.type & VSMMU_MSG_REPLY)) {
			printf("FAIL %s: a valid request fails the framing checks\n", path);
			return -1;
		}
	}
	for (int i = 0; i < v->nasserts; i++) {
		if (check_assertion(path, v, &v->asserts[i]) != 0)
			return -1;
	}
	*asserts_checked += v->nasserts;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s VECTOR.hex...\n", argv[0]);
		return 2;
	}
	static struct vector v;
	int failures = 0, assertions = 0;
	for (int i = 1; i < argc; i++) {
		int before = assertions;
		if (load(argv[i], &v) != 0 || check(argv[i], &v, &assertions) != 0) {
			failures++;
			continue;
		}
		const char *base = strrchr(argv[i], '/');
		printf("ok %s (%zu bytes, %d assertions%s%s)\n", base ? base + 1 : argv[i], v.count, assertions - before,
		       v.expect_error >= 0 ? ", refused as expected" : "", v.kind[0] ? ", shared memory" : "");
	}
	printf("check_vectors: %d vectors, %d assertions, %d failures\n", argc - 1, assertions, failures);
	return failures ? 1 : 0;
}
