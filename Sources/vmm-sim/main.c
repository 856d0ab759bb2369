// SPDX-License-Identifier: MIT
// vmm-sim: a QEMU-like VMM built on the C client (protocol/vsmmu.h + vsmmu_client.h only).
//
// It plays a guest's SMMUv3 command queue against vsmmud: attaches one vSMMU's viommus to the daemon's
// pSMMUs, asks GET_HW_INFO for the ID registers it would present to the guest (and prints them, raw
// and decoded), registers devices spread over the pSMMUs, links their STEs and CDs, and submits the
// commands in batches cut after each CMD_SYNC, as the guest's driver publishes them, checking every
// reply.
//
//   vmm-sim [--socket PATH] [--psmmu NAME:FIRST_HOST_DEVICE]... [--shared-queue [--queue-log2 N] [--queue-spin-us US]]
//           replay TRACE.bin STE_CD.csv
//   vmm-sim [--socket PATH] [--psmmu NAME:FIRST_HOST_DEVICE]... [--shared-queue [--queue-log2 N] [--queue-spin-us US]]
//           generate [--commands N] [--devices D] [--seed S] [--strict | --lazy]
//   vmm-sim [--socket PATH] [--psmmu NAME:FIRST_HOST_DEVICE]... hw-info   (attach, print the registers, exit)
//   vmm-sim [--socket PATH] [--psmmu NAME:FIRST_HOST_DEVICE]... [--shared-queue] fault
//
// Defaults: socket $VSMMUD_SOCKET or /run/vsmmud/vsmmud.sock; pSMMUs smmu0:0 and smmu1:64 (the daemon's
// embedded default). Exit status 0 when every reply was what a healthy SMMU would answer.
//
// vmm-sim survives a restart of the daemon (one with a journal): its client reconnects with backoff
// (10 ms doubling to 500 ms, for up to 30 s), resumes the vSMMU with its token and re-sends the request
// that was in flight, as a VMM should (PROTOCOL.md §5.13). --no-reconnect turns that off (a lost
// connection then ends the run with an error).
//
// --shared-queue (protocol version 4) submits the commands through the vSMMU's shared command queue
// (MAP_QUEUE, PROTOCOL.md §8) instead of INVALIDATE: each batch is published at PROD and a sync completes
// when the daemon's CONS passes it. --queue-log2 N sizes it (2^N slots, default 12); --queue-spin-us US is
// how long a wait polls CONS before it sleeps on the call eventfd (the client's default: 20). A command the daemon
// refuses stops the queue: vmm-sim counts the error, prints the record, replaces the command with a CMD_SYNC
// (as Linux's __arm_smmu_cmdq_skip_err does) and acknowledges. The report names the path it used.
//
// --events (protocol version 5) maps the vSMMU's event queue (MAP_EVENT_QUEUE, PROTOCOL.md §9) and prints every
// event it receives, one line each: vSMMU, viommu, sequence, type, vSID, SSID, address, LOST_BEFORE
// (--event-log2 N sizes it, default 6). The `fault` scenario always does: it registers a device, links an STE
// and a CD with an ASID, has the simulated device DMA to an IOVA whose stage-1 walk succeeds (SIMULATE_DMA,
// walk READ_WRITE: a TLB fill), then plays the guest unmapping it (TLBI_NH_VA of that IOVA and CMD_SYNC,
// through INVALIDATE or the shared queue) and DMAs again (walk UNMAPPED): the reply must be FAULT
// F_TRANSLATION with the device's vSID, and that event must arrive through the event queue. Exit status 0 only
// if it did. It needs a simulated pSMMU (any other answers UNSUPPORTED).

#include "hw_info.h"
#include "vsmmu_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_PSMMUS 16
#define MAX_DEVICES 256

struct psmmu {
	char name[VSMMU_NAME_SIZE];
	uint32_t first_host_device;
	uint32_t viommu;
	uint32_t next_host_device;
};

struct device {
	uint32_t vsid;
	int psmmu;
	uint32_t host_device;
	struct vsmmu_ste ste;
	struct vsmmu_cd cd;
};

struct run {
	struct vsmmu_client client;
	uint32_t vsmmu;
	struct vsmmu_hw_info_reply hw_info; /* GET_HW_INFO's answer, when has_hw_info */
	int has_hw_info;
	struct psmmu psmmus[MAX_PSMMUS];
	int psmmu_count;
	struct device devices[MAX_DEVICES];
	int device_count;
	struct vsmmu_client_queue *queue; /* --shared-queue: the vSMMU's shared queue, NULL for INVALIDATE */
	int use_queue;
	uint32_t queue_log2;
	long queue_spin_us; /* --queue-spin-us: how long a wait polls CONS before it sleeps (-1: the client's default) */
	uint64_t commands, batches, syncs, errors;
	double *latencies; /* µs per batch that ended in CMD_SYNC */
	size_t latency_count, latency_capacity;
	struct vsmmu_client_event_queue *events; /* --events / fault: the vSMMU's event queue, NULL without */
	int use_events;
	uint32_t event_log2;
	uint64_t events_received, events_lost_before, overflows;
};

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int fail(struct run *run, const char *what, int rc)
{
	if (rc == -ETIMEDOUT && run->client.reconnect_enabled)
		fprintf(stderr, "vmm-sim: %s: %s\n", what, run->client.last_message);
	else if (rc < 0)
		fprintf(stderr, "vmm-sim: %s: %s\n", what, strerror(-rc));
	else
		fprintf(stderr, "vmm-sim: %s: %s: %s\n", what, vsmmu_error_name((uint32_t)rc), run->client.last_message);
	return 1;
}

static int setup(struct run *run, const char *socket_path, int reconnect)
{
	int rc = vsmmu_client_connect(&run->client, socket_path);
	if (rc)
		return fail(run, socket_path, rc);
	if (reconnect && (rc = vsmmu_client_set_reconnect(&run->client, 10, 500, 30000)))
		return fail(run, "reconnect policy", rc);
	if ((rc = vsmmu_client_hello(&run->client, "vmm-sim", NULL)))
		return fail(run, "HELLO", rc);
	if ((rc = vsmmu_client_create_vsmmu(&run->client, "vmm-sim", &run->vsmmu)))
		return fail(run, "CREATE_VSMMU", rc);
	for (int i = 0; i < run->psmmu_count; i++) {
		struct vsmmu_attach_viommu_reply reply;
		struct psmmu *p = &run->psmmus[i];
		if ((rc = vsmmu_client_attach_viommu(&run->client, run->vsmmu, p->name, p->first_host_device, 0, -1, &reply)))
			return fail(run, "ATTACH_VIOMMU", rc);
		p->viommu = reply.viommu;
		p->next_host_device = p->first_host_device;
	}
	if (run->use_queue) {
		if (run->client.version < 4) {
			fprintf(stderr, "vmm-sim: the daemon speaks protocol version %u: no shared queue (version 4)\n",
				run->client.version);
			return 1;
		}
		if ((rc = vsmmu_client_map_queue(&run->client, run->vsmmu, run->queue_log2, &run->queue)))
			return fail(run, "MAP_QUEUE", rc);
		if (run->queue_spin_us >= 0)
			run->queue->spin_ns = (uint32_t)run->queue_spin_us * 1000u;
	}
	if (run->use_events) {
		if (run->client.version < 5) {
			fprintf(stderr, "vmm-sim: the daemon speaks protocol version %u: no event queue (version 5)\n",
				run->client.version);
			return 1;
		}
		if ((rc = vsmmu_client_map_event_queue(&run->client, run->vsmmu, run->event_log2, &run->events)))
			return fail(run, "MAP_EVENT_QUEUE", rc);
	}
	/* What the guest's SMMU_IDRn will say: what every pSMMU behind the vSMMU supports (version 2). */
	if (run->client.version < 2) {
		printf("vmm-sim: the daemon speaks protocol version %u: no GET_HW_INFO, the guest gets the VMM's own ID registers\n",
		       run->client.version);
		return 0;
	}
	if ((rc = vsmmu_client_get_hw_info(&run->client, run->vsmmu, &run->hw_info)))
		return fail(run, "GET_HW_INFO", rc);
	run->has_hw_info = 1;
	vmm_hw_print(stdout, &run->hw_info);
	return 0;
}

/* Registers a device on pSMMU `p` (round robin by the caller) and links its STE and CD. */
static int add_device(struct run *run, uint32_t vsid, int p, const struct vsmmu_ste *ste, const struct vsmmu_cd *cd)
{
	if (run->device_count == MAX_DEVICES)
		return fail(run, "too many devices", -ENOSPC);
	struct device *d = &run->devices[run->device_count++];
	d->vsid = vsid;
	d->psmmu = p;
	d->host_device = run->psmmus[p].next_host_device++;
	d->ste = *ste;
	d->cd = *cd;
	int rc = vsmmu_client_set_dev_id(&run->client, run->vsmmu, run->psmmus[p].viommu, d->host_device, vsid, -1);
	if (rc)
		return fail(run, "SET_DEV_ID", rc);
	if ((rc = vsmmu_client_link_ste(&run->client, run->vsmmu, vsid, ste, cd, 1, NULL)))
		return fail(run, "LINK_STE", rc);
	return 0;
}

static void record_latency(struct run *run, double us)
{
	if (run->latency_count == run->latency_capacity) {
		run->latency_capacity = run->latency_capacity ? run->latency_capacity * 2 : 4096;
		run->latencies = realloc(run->latencies, run->latency_capacity * sizeof(double));
		if (!run->latencies) {
			fprintf(stderr, "vmm-sim: out of memory\n");
			exit(1);
		}
	}
	run->latencies[run->latency_count++] = us;
}

/* The SMMUv3 name of an event type (EVTQ_0_ID), or "EVENT(0x..)". */
static const char *event_name(uint8_t id)
{
	switch (id) {
	case 0x01: return "F_UUT";
	case 0x02: return "C_BAD_STREAMID";
	case 0x03: return "F_STE_FETCH";
	case 0x04: return "C_BAD_STE";
	case 0x05: return "F_BAD_ATS_TREQ";
	case 0x06: return "F_STREAM_DISABLED";
	case 0x07: return "F_TRANS_FORBIDDEN";
	case 0x08: return "C_BAD_SUBSTREAMID";
	case 0x09: return "F_CD_FETCH";
	case 0x0A: return "C_BAD_CD";
	case 0x0B: return "F_WALK_EABT";
	case 0x10: return "F_TRANSLATION";
	case 0x11: return "F_ADDR_SIZE";
	case 0x12: return "F_ACCESS";
	case 0x13: return "F_PERMISSION";
	case 0x20: return "F_TLB_CONFLICT";
	case 0x21: return "F_CFG_CONFLICT";
	case 0x24: return "E_PAGE_REQ";
	default: {
		static char buf[16];
		snprintf(buf, sizeof(buf), "EVENT(0x%02x)", id);
		return buf;
	}
	}
}

/* The event record's fields (SMMUv3 EVTQ_0/EVTQ_2): type [7:0], SSV [11], SSID [31:12], StreamID [63:32]. */
static uint8_t event_id(const struct vsmmu_event_record *r) { return (uint8_t)(r->w[0] & 0xFF); }
static uint32_t event_sid(const struct vsmmu_event_record *r) { return (uint32_t)(r->w[0] >> 32); }

/* One line per event: vSMMU, viommu, sequence, type, vSID, SSID, address, LOST_BEFORE. */
static void print_event(const struct vsmmu_event_slot *e)
{
	char ssid[16] = "-";
	if (e->record.w[0] & (1u << 11))
		snprintf(ssid, sizeof(ssid), "0x%x", (unsigned)((e->record.w[0] >> 12) & 0xFFFFF));
	printf("vmm-sim: event vsmmu 0x%08x viommu %u seq %llu %s vsid 0x%x ssid %s address 0x%llx lost_before %u\n",
	       e->vsmmu_id, e->viommu_id, (unsigned long long)e->sequence, event_name(event_id(&e->record)),
	       event_sid(&e->record), ssid, (unsigned long long)e->record.w[2], (e->flags & VSMMU_EVENT_LOST_BEFORE) ? 1 : 0);
}

/* Reads and prints every event published now (no system call); acknowledges an overflow (a VMM would toggle
 * its guest's EVTQ_PROD.OVFLG). `last` gets the last event read, if any. Returns how many, or -EPROTO. */
static int drain_events(struct run *run, struct vsmmu_event_slot *last)
{
	if (!run->events)
		return 0;
	struct vsmmu_event_slot e;
	int n = 0, rc;
	while ((rc = vsmmu_client_event_read(run->events, &e)) == 1) {
		print_event(&e);
		run->events_received++;
		run->events_lost_before += (e.flags & VSMMU_EVENT_LOST_BEFORE) != 0;
		if (last)
			*last = e;
		n++;
	}
	if (vsmmu_client_event_acknowledge_overflow(run->events)) {
		run->overflows++;
		printf("vmm-sim: event queue overflow (events were dropped): acknowledged\n");
	}
	return rc < 0 ? rc : n;
}

/* Publishes one batch on the shared queue and waits for CONS to pass it: every CMD_SYNC in it completed. A
 * queue error is counted, printed, skipped (the command replaced by a CMD_SYNC, as Linux's
 * __arm_smmu_cmdq_skip_err does) and acknowledged; then the rest of the batch goes on. */
static int submit_queue(struct run *run, const struct vsmmu_command *commands, uint32_t count, uint32_t syncs)
{
	struct vsmmu_client_queue *q = run->queue;
	uint32_t published = 0;
	int rc = 0;
	double start = now_us();
	for (;;) {
		if (published < count) {
			uint32_t n = 0;
			rc = vsmmu_client_queue_submit(q, commands + published, count - published, &n);
			published += n;
		}
		if (rc == 0)
			rc = vsmmu_client_queue_wait(q, q->prod);
		if (rc != VSMMU_CLIENT_QUEUE_ERROR)
			break;
		struct vsmmu_client_queue_error e;
		if (vsmmu_client_queue_error(q, &e)) {
			run->errors++;
			if (run->errors <= 10)
				fprintf(stderr, "vmm-sim: batch %llu: the queue stopped at slot %u (CONS 0x%x): CERROR %u, kind %u\n",
					(unsigned long long)run->batches + 1, e.index, e.cons, e.cerror, e.kind);
			const struct vsmmu_command sync = { { 0x46, 0 } };
			vsmmu_client_queue_acknowledge(q, &sync);
		}
		rc = 0;
	}
	double elapsed = now_us() - start;
	if (rc)
		return fail(run, "shared queue", rc);
	run->commands += count;
	run->batches++;
	run->syncs += syncs;
	if (syncs)
		record_latency(run, elapsed);
	return 0;
}

/* Submits one batch and checks the reply: everything consumed, no CERROR. */
static int submit(struct run *run, const struct vsmmu_command *commands, uint32_t count)
{
	struct vsmmu_invalidate_reply reply;
	uint32_t has_sync = 0;
	for (uint32_t i = 0; i < count; i++)
		has_sync += (commands[i].w[0] & 0xFF) == 0x46;
	if (run->events)
		(void)drain_events(run, NULL);
	if (run->queue)
		return submit_queue(run, commands, count, has_sync);
	double start = now_us();
	int rc = vsmmu_client_invalidate(&run->client, run->vsmmu, commands, count, &reply);
	double elapsed = now_us() - start;
	if (rc)
		return fail(run, "INVALIDATE", rc);
	run->commands += count;
	run->batches++;
	run->syncs += reply.syncs_completed;
	if (has_sync)
		record_latency(run, elapsed);
	if (reply.cerror != VSMMU_CERROR_NONE || reply.consumed != count) {
		run->errors++;
		if (run->errors <= 10)
			fprintf(stderr, "vmm-sim: batch %llu: consumed %u of %u, CERROR %u at %u: %s\n",
				(unsigned long long)run->batches, reply.consumed, count, reply.cerror, reply.error_index,
				run->client.last_message);
	}
	return 0;
}

static int compare_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static void report(struct run *run, const char *mode)
{
	double p50 = 0, p99 = 0;
	if (run->latency_count) {
		qsort(run->latencies, run->latency_count, sizeof(double), compare_double);
		p50 = run->latencies[run->latency_count / 2];
		p99 = run->latencies[(size_t)((double)run->latency_count * 0.99)];
	}
	printf("vmm-sim %s: %llu commands in %llu batches, %llu syncs completed, %llu errors; "
	       "sync round trip p50 %.1f us, p99 %.1f us; %llu reconnects, %llu vSMMUs lost\n",
	       mode, (unsigned long long)run->commands, (unsigned long long)run->batches,
	       (unsigned long long)run->syncs, (unsigned long long)run->errors, p50, p99,
	       (unsigned long long)run->client.reconnects, (unsigned long long)run->client.lost_vsmmus);
	if (run->events) {
		(void)drain_events(run, NULL);
		printf("vmm-sim events: %llu received, %llu after lost events, %llu overflows, %llu re-maps\n",
		       (unsigned long long)run->events_received, (unsigned long long)run->events_lost_before,
		       (unsigned long long)run->overflows, (unsigned long long)run->events->remaps);
	}
	if (run->queue)
		printf("vmm-sim path: shared queue (%u slots): %llu kicks, %llu sleeps on call, %llu re-maps\n",
		       1u << run->queue->log2_entries, (unsigned long long)run->queue->kicks,
		       (unsigned long long)run->queue->sleeps, (unsigned long long)run->queue->remaps);
	else
		printf("vmm-sim path: socket (INVALIDATE)\n");
}

/* UNMAP_QUEUE and UNMAP_EVENT_QUEUE at the end of a run (nothing without them). */
static int unmap(struct run *run)
{
	if (run->events) {
		int rc = vsmmu_client_unmap_event_queue(&run->client, run->events);
		run->events = NULL;
		if (rc)
			return fail(run, "UNMAP_EVENT_QUEUE", rc);
	}
	if (!run->queue)
		return 0;
	int rc = vsmmu_client_unmap_queue(&run->client, run->queue);
	run->queue = NULL;
	return rc ? fail(run, "UNMAP_QUEUE", rc) : 0;
}

/* ---- replay ---------------------------------------------------------------------------------- */

/* Reads the final STE/CD of each StreamID from a trace's ste-cd CSV (rows "ram_dump_final"). */
static int load_ste_cd(struct run *run, const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return fail(run, path, -errno);
	char line[2048];
	int p = 0, found = 0;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "ram_dump_final,", 15) != 0)
			continue;
		char *fields[32] = { 0 };
		int n = 0;
		for (char *s = line, *tok; n < 32 && (tok = strsep(&s, ",")) != NULL;)
			fields[n++] = tok;
		if (n < 24)
			continue;
		struct vsmmu_ste ste = { 0 };
		struct vsmmu_cd cd = { 0 };
		uint32_t vsid = (uint32_t)strtoul(fields[1], NULL, 0);
		ste.w[0] = strtoull(fields[12], NULL, 0);
		ste.w[1] = strtoull(fields[13], NULL, 0);
		cd.w[0] = strtoull(fields[23], NULL, 0);
		cd.w[1] = strtoull(fields[17], NULL, 0);
		cd.w[3] = strtoull(fields[22], NULL, 0);
		if (add_device(run, vsid, p, &ste, &cd)) {
			fclose(f);
			return 1;
		}
		p = (p + 1) % run->psmmu_count;
		found++;
	}
	fclose(f);
	if (!found) {
		fprintf(stderr, "vmm-sim: %s: no ram_dump_final rows\n", path);
		return 1;
	}
	return 0;
}

static int replay(struct run *run, const char *trace, const char *ste_cd)
{
	if (load_ste_cd(run, ste_cd))
		return 1;
	FILE *f = fopen(trace, "rb");
	if (!f)
		return fail(run, trace, -errno);
	struct vsmmu_command batch[4096];
	uint32_t count = 0;
	while (fread(&batch[count], sizeof(batch[0]), 1, f) == 1) {
		count++;
		int is_sync = (batch[count - 1].w[0] & 0xFF) == 0x46;
		if (is_sync || count == 4096 || count == run->client.max_commands) {
			if (submit(run, batch, count)) {
				fclose(f);
				return 1;
			}
			count = 0;
		}
	}
	fclose(f);
	if (count && submit(run, batch, count))
		return 1;
	report(run, "replay");
	return unmap(run) || run->errors ? 1 : 0;
}

/* ---- generate -------------------------------------------------------------------------------- */

static uint64_t rng_state;
static uint64_t rng(void)
{
	uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static struct vsmmu_command cmd(uint64_t w0, uint64_t w1)
{
	struct vsmmu_command c = { { w0, w1 } };
	return c;
}

#define CMD_SYNC cmd(0x46, 0)
static struct vsmmu_command tlbi_nh_va(uint16_t asid, uint64_t va, unsigned num, unsigned scale)
{
	/* TLBI_NH_VA: ASID w0[63:48], NUM w0[16:12], SCALE w0[24:20]; LEAF w1[0], TTL 3, TG 1 (4K), VA w1[63:12]. */
	return cmd(0x12 | (uint64_t)asid << 48 | (uint64_t)num << 12 | (uint64_t)scale << 20,
		   (va & ~0xFFFull) | 1 | 3u << 8 | 1u << 10);
}
static struct vsmmu_command tlbi_nh_asid(uint16_t asid) { return cmd(0x11 | (uint64_t)asid << 48, 0); }
static struct vsmmu_command atc_inv(uint32_t sid) { return cmd(0x40 | (uint64_t)sid << 32, 52); }
static struct vsmmu_command cfgi_cd(uint32_t sid) { return cmd(0x05 | (uint64_t)sid << 32, 1); }

static int generate(struct run *run, uint64_t budget, int devices, int strict)
{
	uint16_t next_asid = 1;
	for (int i = 0; i < devices; i++) {
		struct vsmmu_ste ste = { { (0x4000000000ull + ((uint64_t)i << 12)) | 0xB, 0xD6 } }; /* V, S1_TRANS, SSID0 */
		struct vsmmu_cd cd = { { (uint64_t)next_asid++ << 48 | 1ull << 41 | 1ull << 31 | 0x3510, 0x43805000 } };
		if (add_device(run, (uint32_t)(i + 1) << 3, i % run->psmmu_count, &ste, &cd))
			return 1;
	}
	struct vsmmu_command batch[256];
	while (run->commands < budget) {
		struct device *d = &run->devices[rng() % (uint64_t)run->device_count];
		uint16_t asid = (uint16_t)(d->cd.w[0] >> 48);
		uint32_t n = 0;
		uint64_t r = rng() % 100;
		if (r < 85) {
			/* An unmap: strict mode pays one TLBI_NH_VA range + CMD_SYNC each; lazy mode batches a
			 * burst and flushes the ASID once. */
			if (strict) {
				batch[n++] = tlbi_nh_va(asid, (rng() % (1ull << 24)) << 12, (unsigned)(rng() % 4), (unsigned)(rng() % 3));
			} else {
				unsigned burst = 1 + (unsigned)(rng() % 32);
				for (unsigned i = 0; i < burst; i++)
					batch[n++] = tlbi_nh_va(asid, (rng() % (1ull << 24)) << 12, 0, 0);
				batch[n++] = tlbi_nh_asid(asid);
			}
		} else if (r < 92) {
			batch[n++] = atc_inv(d->vsid); /* a device reset */
		} else {
			/* The guest gives the device a new address space: rewrite its CD, invalidate the cached CD,
			 * then the old ASID. */
			uint16_t old = asid;
			d->cd.w[0] = (d->cd.w[0] & 0x0000FFFFFFFFFFFFull) | (uint64_t)next_asid++ << 48;
			if (next_asid == 0)
				next_asid = 1;
			int rc = vsmmu_client_update_cd(&run->client, run->vsmmu, d->vsid, 0, &d->cd, NULL);
			if (rc)
				return fail(run, "UPDATE_CD", rc);
			batch[n++] = cfgi_cd(d->vsid);
			batch[n++] = tlbi_nh_asid(old);
		}
		batch[n++] = CMD_SYNC;
		if (submit(run, batch, n))
			return 1;
	}
	report(run, strict ? "generate (strict)" : "generate (lazy)");
	return unmap(run) || run->errors ? 1 : 0;
}

/* ---- fault ----------------------------------------------------------------------------------- */

static const char *dma_outcome_name(uint32_t outcome)
{
	switch (outcome) {
	case VSMMU_DMA_ATC_HIT: return "ATC_HIT";
	case VSMMU_DMA_TLB_HIT: return "TLB_HIT";
	case VSMMU_DMA_TLB_FILL: return "TLB_FILL";
	case VSMMU_DMA_BYPASSED: return "BYPASSED";
	case VSMMU_DMA_ABORTED: return "ABORTED";
	case VSMMU_DMA_FAULT: return "FAULT";
	default: return "?";
	}
}

/*
 * A device DMAs to an address whose translation the guest just invalidated and unmapped: the guest sees
 * F_TRANSLATION with the device's vSID, through the event queue. Every step is checked; the summary line says
 * what happened, and the exit status is 0 only if the event arrived as it should.
 */
static int fault_scenario(struct run *run)
{
	const uint32_t vsid = 0x10;
	const uint16_t asid = 0x42;
	const uint64_t iova = 0x7F001000;
	struct vsmmu_ste ste = { { 0x4000000000ull | 0xB, 0xD6 } }; /* V, S1_TRANS, S1DSS = SSID0 */
	struct vsmmu_cd cd = { { (uint64_t)asid << 48 | 1ull << 41 | 1ull << 31 | 0x3510, 0x43805000 } };
	if (add_device(run, vsid, 0, &ste, &cd))
		return 1;
	struct vsmmu_simulate_dma dma = {
		.vsmmu_id = run->vsmmu, .vsid = vsid, .flags = VSMMU_DMA_WRITE, .iova = iova, .size = 4096,
		.walk = VSMMU_DMA_WALK_READ_WRITE,
	};
	struct vsmmu_simulate_dma_reply reply;
	int rc = vsmmu_client_simulate_dma(&run->client, &dma, &reply);
	if (rc)
		return fail(run, "SIMULATE_DMA (mapped)", rc);
	printf("vmm-sim: DMA of vSID 0x%x to 0x%llx while mapped: %s\n", vsid, (unsigned long long)iova,
	       dma_outcome_name(reply.outcome));
	int ok = reply.outcome == VSMMU_DMA_TLB_FILL;
	/* The guest unmaps the page: TLBI_NH_VA of that IOVA (leaf), then CMD_SYNC. */
	struct vsmmu_command unmap_cmds[2] = { cmd(0x12 | (uint64_t)asid << 48, (iova & ~0xFFFull) | 1), CMD_SYNC };
	if (submit(run, unmap_cmds, 2))
		return 1;
	dma.walk = VSMMU_DMA_WALK_UNMAPPED;
	if ((rc = vsmmu_client_simulate_dma(&run->client, &dma, &reply)))
		return fail(run, "SIMULATE_DMA (unmapped)", rc);
	printf("vmm-sim: DMA of vSID 0x%x to 0x%llx after the unmap: %s%s%s\n", vsid, (unsigned long long)iova,
	       dma_outcome_name(reply.outcome), reply.outcome == VSMMU_DMA_FAULT ? " " : "",
	       reply.outcome == VSMMU_DMA_FAULT ? event_name(event_id(&reply.event)) : "");
	ok = ok && reply.outcome == VSMMU_DMA_FAULT && event_id(&reply.event) == 0x10 && event_sid(&reply.event) == vsid;
	/* The event, through the queue: wait for it (up to 10 s), then read it. */
	struct vsmmu_event_slot event = { 0 };
	int received = 0;
	for (int tries = 0; tries < 100 && !received; tries++) {
		rc = vsmmu_client_event_wait(run->events, 100);
		if (rc < 0)
			return fail(run, "event queue", rc);
		int n = drain_events(run, &event);
		if (n < 0)
			return fail(run, "event queue", n);
		received = n > 0;
	}
	int arrived = received && event_id(&event.record) == 0x10 && event_sid(&event.record) == vsid &&
		      event.record.w[2] == iova && event.vsmmu_id == run->vsmmu && event.viommu_id == run->psmmus[0].viommu;
	ok = ok && arrived;
	printf("vmm-sim fault: %s: DMA after unmap %s, event %s (vsid 0x%x, seq %llu), %llu events received, "
	       "%llu errors\n", ok ? "ok" : "FAILED", dma_outcome_name(reply.outcome),
	       arrived ? "F_TRANSLATION arrived through the event queue" : "did not arrive as expected", event_sid(&event.record),
	       (unsigned long long)event.sequence, (unsigned long long)run->events_received, (unsigned long long)run->errors);
	if (unmap(run))
		return 1;
	return ok && !run->errors ? 0 : 1;
}

/* ---- main ------------------------------------------------------------------------------------ */

static void usage(void)
{
	fprintf(stderr,
		"usage: vmm-sim [--socket PATH] [--psmmu NAME:FIRST_HOST_DEVICE]... [--no-reconnect]\n"
		"               [--shared-queue [--queue-log2 N] [--queue-spin-us US]] replay TRACE.bin STE_CD.csv\n"
		"       vmm-sim [--socket PATH] [--psmmu NAME:FIRST_HOST_DEVICE]... [--no-reconnect]\n"
		"               [--shared-queue [--queue-log2 N] [--queue-spin-us US]] generate [--commands N] [--devices D] [--seed S] [--strict|--lazy]\n"
		"       vmm-sim [--socket PATH] [--psmmu NAME:FIRST_HOST_DEVICE]... [--no-reconnect] hw-info\n"
		"       vmm-sim [--socket PATH] [--psmmu NAME:FIRST_HOST_DEVICE]... [--no-reconnect] [--shared-queue] fault\n"
		"       (--events [--event-log2 N] before any mode: map the event queue and print every event)\n");
}

int main(int argc, char **argv)
{
	static struct run run;
	const char *socket_path = getenv("VSMMUD_SOCKET") ? getenv("VSMMUD_SOCKET") : "/run/vsmmud/vsmmud.sock";
	int i = 1, reconnect = 1;
	run.queue_log2 = 12;
	run.queue_spin_us = -1;
	run.event_log2 = 6;
	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		if (!strcmp(argv[i], "--no-reconnect")) {
			reconnect = 0;
		} else if (!strcmp(argv[i], "--shared-queue")) {
			run.use_queue = 1;
		} else if (!strcmp(argv[i], "--events")) {
			run.use_events = 1;
		} else if (!strcmp(argv[i], "--event-log2") && i + 1 < argc) {
			run.event_log2 = (uint32_t)strtoul(argv[++i], NULL, 0);
			if (run.event_log2 < VSMMU_EVENT_QUEUE_MIN_LOG2_ENTRIES || run.event_log2 > VSMMU_EVENT_QUEUE_MAX_LOG2_ENTRIES) {
				fprintf(stderr, "vmm-sim: --event-log2 must be %u-%u\n", VSMMU_EVENT_QUEUE_MIN_LOG2_ENTRIES,
					VSMMU_EVENT_QUEUE_MAX_LOG2_ENTRIES);
				return 2;
			}
		} else if (!strcmp(argv[i], "--queue-spin-us") && i + 1 < argc) {
			run.queue_spin_us = strtol(argv[++i], NULL, 0);
			if (run.queue_spin_us < 0 || run.queue_spin_us > 1000000) {
				fprintf(stderr, "vmm-sim: --queue-spin-us must be 0-1000000\n");
				return 2;
			}
		} else if (!strcmp(argv[i], "--queue-log2") && i + 1 < argc) {
			run.queue_log2 = (uint32_t)strtoul(argv[++i], NULL, 0);
			if (run.queue_log2 < VSMMU_QUEUE_MIN_LOG2_ENTRIES || run.queue_log2 > VSMMU_QUEUE_MAX_LOG2_ENTRIES) {
				fprintf(stderr, "vmm-sim: --queue-log2 must be %u-%u\n", VSMMU_QUEUE_MIN_LOG2_ENTRIES,
					VSMMU_QUEUE_MAX_LOG2_ENTRIES);
				return 2;
			}
		} else if (!strcmp(argv[i], "--socket") && i + 1 < argc) {
			socket_path = argv[++i];
		} else if (!strcmp(argv[i], "--psmmu") && i + 1 < argc && run.psmmu_count < MAX_PSMMUS) {
			char *spec = argv[++i], *colon = strchr(spec, ':');
			struct psmmu *p = &run.psmmus[run.psmmu_count++];
			size_t len = colon ? (size_t)(colon - spec) : strlen(spec);
			if (len >= VSMMU_NAME_SIZE)
				len = VSMMU_NAME_SIZE - 1;
			memcpy(p->name, spec, len);
			p->first_host_device = colon ? (uint32_t)strtoul(colon + 1, NULL, 0) : 0;
		} else {
			usage();
			return 2;
		}
	}
	if (run.psmmu_count == 0) {
		strcpy(run.psmmus[0].name, "smmu0");
		strcpy(run.psmmus[1].name, "smmu1");
		run.psmmus[1].first_host_device = 64;
		run.psmmu_count = 2;
	}
	if (i >= argc) {
		usage();
		return 2;
	}
	const char *mode = argv[i++];
	if (!strcmp(mode, "replay")) {
		if (i + 2 != argc) {
			usage();
			return 2;
		}
		if (setup(&run, socket_path, reconnect))
			return 1;
		int rc = replay(&run, argv[i], argv[i + 1]);
		vsmmu_client_close(&run.client);
		return rc;
	}
	if (!strcmp(mode, "fault")) {
		if (i != argc) {
			usage();
			return 2;
		}
		run.use_events = 1;
		if (setup(&run, socket_path, reconnect))
			return 1;
		int rc = fault_scenario(&run);
		vsmmu_client_close(&run.client);
		return rc;
	}
	if (!strcmp(mode, "hw-info")) {
		if (i != argc) {
			usage();
			return 2;
		}
		if (setup(&run, socket_path, reconnect))
			return 1;
		vsmmu_client_close(&run.client);
		if (!run.has_hw_info) {
			fprintf(stderr, "vmm-sim: the daemon does not answer GET_HW_INFO (protocol version 1)\n");
			return 1;
		}
		return 0;
	}
	if (!strcmp(mode, "generate")) {
		uint64_t commands = 100000;
		int devices = 8, strict = 1;
		rng_state = 1;
		for (; i < argc; i++) {
			if (!strcmp(argv[i], "--commands") && i + 1 < argc)
				commands = strtoull(argv[++i], NULL, 0);
			else if (!strcmp(argv[i], "--devices") && i + 1 < argc)
				devices = atoi(argv[++i]);
			else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
				rng_state = strtoull(argv[++i], NULL, 0);
			else if (!strcmp(argv[i], "--strict"))
				strict = 1;
			else if (!strcmp(argv[i], "--lazy"))
				strict = 0;
			else {
				usage();
				return 2;
			}
		}
		if (devices < 1 || devices > MAX_DEVICES) {
			fprintf(stderr, "vmm-sim: --devices must be 1-%d\n", MAX_DEVICES);
			return 2;
		}
		if (setup(&run, socket_path, reconnect))
			return 1;
		int rc = generate(&run, commands, devices, strict);
		vsmmu_client_close(&run.client);
		return rc;
	}
	usage();
	return 2;
}
