// SPDX-License-Identifier: Apache-2.0
/*
 * relay-agent: executes system calls in the real-kernel rig's arm64 guest for vsmmud's host-side relay
 * (Sources/IOMMUFDRelay). The host cannot run Swift in the guest, so it sends each open/ioctl/read/close
 * here and gets back exactly what the guest kernel answered.
 *
 * Build (scripts/realkernel-test does it, into a cache directory; never committed as a binary):
 *     aarch64-linux-gnu-gcc -static -O2 -Wall -Wextra -I<rig>/src/include -o relay-agent relay-agent.c
 * Start (RelayChannel does it): on a fresh connection to the rig's socket, after the shell answered a probe,
 *     echo GO-<tag>; head -c <N> > /tmp/vsmmud-relay-agent && chmod +x ... && exec ... 2>/dev/null
 * then wait for "GO-<tag>", then send the N bytes of this binary.
 *
 * ---------------------------------------------------------------------------------------------------------
 * PROTOCOL, version 1. Transport: the agent's stdin (requests) and stdout (responses): the virtio-serial
 * port, a raw byte stream. Every integer is little-endian (the host is x86-64, the guest arm64).
 *
 * On start the agent writes the 8-byte banner "VSMMURL1" and then only ever writes responses, one per
 * request, in request order.
 *
 *   request  := u32 length | u32 op | payload[length - 4]
 *   response := u32 length | i32 status | payload[length - 4]
 *
 * status is 0 or a positive errno: the syscall's errno, or one of the agent's own:
 *   EPROTO   (71)  the request is malformed (payload too short, a pointer field out of the argument, ...)
 *   EMSGSIZE (90)  the request is longer than RELAY_MAX_FRAME (its bytes are read and dropped)
 *   ENOSYS   (38)  unknown op
 *   ENOMEM   (12)  the agent could not allocate the buffers
 * A bad request never ends the agent: it is answered and the next one is read. Only EOF on stdin (the
 * host closed the connection) or QUIT ends it.
 *
 *   op 1 HELLO    ()                                  -> u32 version (1), u32 pid
 *   op 2 OPEN     u32 flags | path bytes (no NUL)     -> i32 fd                      (open(2), mode 0)
 *   op 3 CLOSE    i32 fd                              -> ()                          (fds 0-2 refused: EBADF)
 *   op 4 DUP      i32 fd                              -> i32 new fd                  (dup(2))
 *   op 5 IOCTL    i32 fd | u32 npointers | u64 request | u32 arglen |
 *                 npointers x (u32 offset, u32 in, u32 out) | arg[arglen] | in bytes of each pointer, in order
 *                 -> i64 ioctl result | u32 arglen | arg[arglen] after the call | out bytes of each pointer
 *       The agent copies the argument, and for each pointer field (a u64 user pointer at `offset` in the
 *       argument) allocates max(in, out) zeroed bytes, copies the `in` bytes into them, and writes their
 *       address into the field. After ioctl(fd, request, arg) it puts the original u64 values back into
 *       the pointer fields and answers with the argument as the kernel left it (its outputs: object ids,
 *       entry_num, also on failure) and the first `out` bytes of each buffer. On an ioctl failure the
 *       status is its errno and the payload is still sent. The agent knows no ioctl: which fields are
 *       pointers, and how long their buffers are, is the host's business.
 *   op 6 READ     i32 fd | u32 max                    -> the bytes read (read(2), at most max)
 *       Never blocks: when poll(2) says the fd is not readable now, the status is EAGAIN, no payload.
 *   op 7 MMAP     u64 length                          -> u64 address
 *       Anonymous private read-write memory, zero-filled and touched (e.g. the user_va of IOMMU_IOAS_MAP).
 *   op 8 MUNMAP   u64 address | u64 length            -> ()
 *   op 9 UNAME    ()                                  -> sysname NUL nodename NUL release NUL version NUL
 *                                                        machine NUL
 *   op 10 QUIT    ()                                  -> (), then the agent exits 0
 * ---------------------------------------------------------------------------------------------------------
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include <linux/vfio.h>

#define RELAY_VERSION 1
#define RELAY_MAX_FRAME (16u << 20)
#define RELAY_MAX_POINTERS 16

enum {
	OP_HELLO = 1,
	OP_OPEN = 2,
	OP_CLOSE = 3,
	OP_DUP = 4,
	OP_IOCTL = 5,
	OP_READ = 6,
	OP_MMAP = 7,
	OP_MUNMAP = 8,
	OP_UNAME = 9,
	OP_QUIT = 10,
	OP_PWRITE = 11,
	OP_PREAD = 12,
};

/*
 * The host side's pointer table (Sources/IOMMUFDRelay/RelayPointerFields.swift) names these fields by
 * offset. The agent is built against the rig kernel's own UAPI headers, so a layout that moved breaks
 * this build instead of a run.
 */
#define AT(type, field, offset) _Static_assert(__builtin_offsetof(struct type, field) == (offset), #type "." #field)
AT(iommu_hwpt_alloc, data_len, 28);
AT(iommu_hwpt_alloc, data_uptr, 32);
AT(iommu_hwpt_invalidate, data_uptr, 8);
AT(iommu_hwpt_invalidate, entry_len, 20);
AT(iommu_hwpt_invalidate, entry_num, 24);
AT(iommu_hw_info, data_len, 12);
AT(iommu_hw_info, data_uptr, 16);
AT(iommu_viommu_alloc, data_len, 24);
AT(iommu_viommu_alloc, data_uptr, 32);
AT(iommu_ioas_map, user_va, 16);
AT(vfio_device_bind_iommufd, token_uuid_ptr, 16);
_Static_assert(IOMMU_HWPT_INVALIDATE == 0x3b8d, "IOMMU_HWPT_INVALIDATE");
_Static_assert(VFIO_DEVICE_ATTACH_IOMMUFD_PT == 0x3b77, "VFIO_DEVICE_ATTACH_IOMMUFD_PT");

/* ---- I/O on the port ---------------------------------------------------------------------------- */

/* Reads exactly n bytes, or exits on EOF/error: the host is gone. */
static void read_exact(void *buf, size_t n)
{
	uint8_t *p = buf;
	while (n > 0) {
		ssize_t r = read(0, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			_exit(0);
		p += r;
		n -= (size_t)r;
	}
}

static void write_exact(const void *buf, size_t n)
{
	const uint8_t *p = buf;
	while (n > 0) {
		ssize_t w = write(1, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			_exit(0);
		p += w;
		n -= (size_t)w;
	}
}

/* Drops n bytes of input (an oversized request). */
static void discard(uint32_t n)
{
	uint8_t sink[4096];
	while (n > 0) {
		uint32_t k = n < sizeof(sink) ? n : (uint32_t)sizeof(sink);
		read_exact(sink, k);
		n -= k;
	}
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

/* Sends one response: status and payload (which may be NULL when len is 0). */
static void respond(int status, const void *payload, uint32_t len)
{
	static uint8_t out[RELAY_MAX_FRAME + 8];
	put32(out, len + 4);
	put32(out + 4, (uint32_t)status);
	if (len)
		memcpy(out + 8, payload, len);
	write_exact(out, 8 + (size_t)len);
}

static void respond_i32(int status, int32_t value)
{
	uint8_t b[4];
	put32(b, (uint32_t)value);
	respond(status, b, status ? 0 : 4);
}

/* ---- ops ------------------------------------------------------------------------------------------ */

static void op_open(const uint8_t *p, uint32_t n)
{
	if (n < 4 || n - 4 > 4095) {
		respond(EPROTO, NULL, 0);
		return;
	}
	char path[4096];
	memcpy(path, p + 4, n - 4);
	path[n - 4] = 0;
	int fd = open(path, (int)get32(p), 0);
	respond_i32(fd < 0 ? errno : 0, fd);
}

static void op_close(const uint8_t *p, uint32_t n)
{
	if (n != 4) {
		respond(EPROTO, NULL, 0);
		return;
	}
	int fd = (int32_t)get32(p);
	if (fd <= 2) { /* the port and stderr: closing them would end the relay */
		respond(EBADF, NULL, 0);
		return;
	}
	respond(close(fd) < 0 ? errno : 0, NULL, 0);
}

static void op_dup(const uint8_t *p, uint32_t n)
{
	if (n != 4) {
		respond(EPROTO, NULL, 0);
		return;
	}
	int fd = dup((int32_t)get32(p));
	respond_i32(fd < 0 ? errno : 0, fd);
}

struct pointer_field {
	uint32_t offset, in, out;
	uint64_t original;
	uint8_t *buffer;
};

static void op_ioctl(const uint8_t *p, uint32_t n)
{
	struct pointer_field ptr[RELAY_MAX_POINTERS];
	if (n < 20) {
		respond(EPROTO, NULL, 0);
		return;
	}
	int fd = (int32_t)get32(p);
	uint32_t count = get32(p + 4);
	unsigned long request = (unsigned long)get64(p + 8);
	uint32_t arglen = get32(p + 16);
	uint64_t need = 20 + (uint64_t)count * 12 + arglen, out_total = 0;
	if (count > RELAY_MAX_POINTERS || need > n) {
		respond(EPROTO, NULL, 0);
		return;
	}
	for (uint32_t i = 0; i < count; i++) {
		const uint8_t *d = p + 20 + 12 * i;
		ptr[i].offset = get32(d);
		ptr[i].in = get32(d + 4);
		ptr[i].out = get32(d + 8);
		ptr[i].buffer = NULL;
		need += ptr[i].in;
		out_total += ptr[i].out;
		if ((uint64_t)ptr[i].offset + 8 > arglen) {
			respond(EPROTO, NULL, 0);
			return;
		}
	}
	if (need != n || 12 + arglen + out_total > RELAY_MAX_FRAME) {
		respond(EPROTO, NULL, 0);
		return;
	}
	/* the argument: 8-byte aligned, at least 8 bytes so that a short one is still a valid pointer */
	uint8_t *arg = calloc(1, arglen + 8);
	uint8_t *reply = NULL;
	int status = 0;
	if (!arg) {
		respond(ENOMEM, NULL, 0);
		return;
	}
	memcpy(arg, p + 20 + 12 * count, arglen);
	const uint8_t *in = p + 20 + 12 * count + arglen;
	for (uint32_t i = 0; i < count; i++) {
		size_t size = ptr[i].in > ptr[i].out ? ptr[i].in : ptr[i].out;
		ptr[i].buffer = calloc(1, size ? size : 1);
		if (!ptr[i].buffer) {
			status = ENOMEM;
			goto out;
		}
		memcpy(ptr[i].buffer, in, ptr[i].in);
		in += ptr[i].in;
		ptr[i].original = get64(arg + ptr[i].offset);
		put64(arg + ptr[i].offset, (uint64_t)(uintptr_t)ptr[i].buffer);
	}
	int64_t result;
	do {
		result = ioctl(fd, request, arg);
	} while (result < 0 && errno == EINTR);
	status = result < 0 ? errno : 0;
	for (uint32_t i = 0; i < count; i++)
		put64(arg + ptr[i].offset, ptr[i].original);

	uint32_t len = 12 + arglen + (uint32_t)out_total;
	reply = malloc(len);
	if (!reply) {
		status = ENOMEM;
		goto out;
	}
	put64(reply, (uint64_t)result);
	put32(reply + 8, arglen);
	memcpy(reply + 12, arg, arglen);
	uint8_t *o = reply + 12 + arglen;
	for (uint32_t i = 0; i < count; i++) {
		memcpy(o, ptr[i].buffer, ptr[i].out);
		o += ptr[i].out;
	}
	respond(status, reply, len);
	status = -1;
out:
	if (status >= 0)
		respond(status, NULL, 0);
	for (uint32_t i = 0; i < count; i++)
		free(ptr[i].buffer);
	free(reply);
	free(arg);
}

static void op_read(const uint8_t *p, uint32_t n)
{
	if (n != 8) {
		respond(EPROTO, NULL, 0);
		return;
	}
	int fd = (int32_t)get32(p);
	uint32_t max = get32(p + 4);
	if (max > RELAY_MAX_FRAME - 4) {
		respond(EMSGSIZE, NULL, 0);
		return;
	}
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	int ready;
	do {
		ready = poll(&pfd, 1, 0);
	} while (ready < 0 && errno == EINTR);
	if (ready < 0) {
		respond(errno, NULL, 0);
		return;
	}
	if (pfd.revents & POLLNVAL) {
		respond(EBADF, NULL, 0);
		return;
	}
	if (ready == 0) {
		respond(EAGAIN, NULL, 0);
		return;
	}
	uint8_t *buf = malloc(max ? max : 1);
	if (!buf) {
		respond(ENOMEM, NULL, 0);
		return;
	}
	ssize_t r;
	do {
		r = read(fd, buf, max);
	} while (r < 0 && errno == EINTR);
	if (r < 0)
		respond(errno, NULL, 0);
	else
		respond(0, buf, (uint32_t)r);
	free(buf);
}

/*
 * PWRITE: i32 fd, u64 offset, then at most 4096 bytes, written by one pwrite(2). On a VFIO device cdev
 * the offset names a region (vfio-pci: VFIO_PCI_INDEX_TO_OFFSET, index << 40) and an access of 1, 2 or 4
 * bytes is one device access (vfio_pci_core_do_io_rw). Answers the u32 count written.
 */
static void op_pwrite(const uint8_t *p, uint32_t n)
{
	if (n < 12 || n - 12 > 4096) {
		respond(EPROTO, NULL, 0);
		return;
	}
	int fd = (int32_t)get32(p);
	uint64_t offset = get64(p + 4);
	ssize_t w;
	do {
		w = pwrite(fd, p + 12, n - 12, (off_t)offset);
	} while (w < 0 && errno == EINTR);
	if (w < 0) {
		respond(errno, NULL, 0);
		return;
	}
	uint8_t b[4];
	put32(b, (uint32_t)w);
	respond(0, b, 4);
}

/* PREAD: i32 fd, u64 offset, u32 count (at most 4096): the bytes one pread(2) returned. */
static void op_pread(const uint8_t *p, uint32_t n)
{
	if (n != 16 || get32(p + 12) > 4096) {
		respond(EPROTO, NULL, 0);
		return;
	}
	int fd = (int32_t)get32(p);
	uint64_t offset = get64(p + 4);
	uint8_t buf[4096];
	ssize_t r;
	do {
		r = pread(fd, buf, get32(p + 12), (off_t)offset);
	} while (r < 0 && errno == EINTR);
	if (r < 0)
		respond(errno, NULL, 0);
	else
		respond(0, buf, (uint32_t)r);
}

static void op_mmap(const uint8_t *p, uint32_t n)
{
	if (n != 8) {
		respond(EPROTO, NULL, 0);
		return;
	}
	size_t length = (size_t)get64(p);
	void *m = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		respond(errno, NULL, 0);
		return;
	}
	memset(m, 0, length); /* touch every page */
	uint8_t b[8];
	put64(b, (uint64_t)(uintptr_t)m);
	respond(0, b, 8);
}

static void op_munmap(const uint8_t *p, uint32_t n)
{
	if (n != 16) {
		respond(EPROTO, NULL, 0);
		return;
	}
	void *address = (void *)(uintptr_t)get64(p);
	respond(munmap(address, (size_t)get64(p + 8)) < 0 ? errno : 0, NULL, 0);
}

static void op_uname(void)
{
	struct utsname u;
	if (uname(&u) < 0) {
		respond(errno, NULL, 0);
		return;
	}
	char out[sizeof(u)];
	size_t len = 0;
	const char *fields[] = { u.sysname, u.nodename, u.release, u.version, u.machine };
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
		size_t k = strnlen(fields[i], sizeof(u.sysname) - 1);
		memcpy(out + len, fields[i], k);
		len += k;
		out[len++] = 0;
	}
	respond(0, out, (uint32_t)len);
}

int main(void)
{
	static uint8_t frame[RELAY_MAX_FRAME];
	write_exact("VSMMURL1", 8);
	for (;;) {
		uint8_t head[4];
		read_exact(head, 4);
		uint32_t length = get32(head);
		if (length < 4) {
			discard(length);
			respond(EPROTO, NULL, 0);
			continue;
		}
		if (length > RELAY_MAX_FRAME) {
			discard(length);
			respond(EMSGSIZE, NULL, 0);
			continue;
		}
		read_exact(frame, length);
		uint32_t op = get32(frame);
		const uint8_t *payload = frame + 4;
		uint32_t n = length - 4;
		switch (op) {
		case OP_HELLO: {
			uint8_t b[8];
			put32(b, RELAY_VERSION);
			put32(b + 4, (uint32_t)getpid());
			respond(n == 0 ? 0 : EPROTO, b, n == 0 ? 8 : 0);
			break;
		}
		case OP_OPEN: op_open(payload, n); break;
		case OP_CLOSE: op_close(payload, n); break;
		case OP_DUP: op_dup(payload, n); break;
		case OP_IOCTL: op_ioctl(payload, n); break;
		case OP_READ: op_read(payload, n); break;
		case OP_MMAP: op_mmap(payload, n); break;
		case OP_MUNMAP: op_munmap(payload, n); break;
		case OP_UNAME: op_uname(); break;
		case OP_PWRITE: op_pwrite(payload, n); break;
		case OP_PREAD: op_pread(payload, n); break;
		case OP_QUIT:
			respond(0, NULL, 0);
			return 0;
		default:
			respond(ENOSYS, NULL, 0);
			break;
		}
	}
}
