#!/usr/bin/env python3
"""Writes the golden frames of protocol/vectors/ from PROTOCOL.md's layouts.

An independent serialiser (Python's struct module, field by field from the specification), not the Swift
codec: the Swift tests decode these files and compare them with messages written by hand, and
check_vectors.c checks every `#!` assertion against the C structures of vsmmu.h. Four vectors are not frames
but bytes of shared memory: the command queue's (§8.1), marked `#! kind = queue_header` / `queue_slots`, and
the event queue's (§9.1), marked `#! kind = event_queue_header` / `event_slot`.

Run from anywhere: python3 protocol/vectors/make_vectors.py  (rewrites every *.hex here).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# Message types (PROTOCOL.md §2.1)
HELLO, CREATE_VSMMU, DESTROY_VSMMU, ATTACH_VIOMMU, DETACH_VIOMMU = 0x01, 0x10, 0x11, 0x12, 0x13
SET_DEV_ID, UNSET_DEV_ID, LINK_STE, UNLINK_STE, UPDATE_CD, GET_HW_INFO = 0x14, 0x15, 0x16, 0x17, 0x18, 0x19
RESUME_VSMMU, MAP_QUEUE, UNMAP_QUEUE, MAP_EVENT_QUEUE, UNMAP_EVENT_QUEUE = 0x1A, 0x1B, 0x1C, 0x1D, 0x1E
INVALIDATE, STATS, LIST, HEALTH, SIMULATE_DMA, REPLY, ERROR = 0x20, 0x40, 0x41, 0x42, 0x43, 0x8000, 0x8000
FD_ATTACHED = 0x0001
NAMES = {HELLO: "HELLO", CREATE_VSMMU: "CREATE_VSMMU", DESTROY_VSMMU: "DESTROY_VSMMU",
         ATTACH_VIOMMU: "ATTACH_VIOMMU", DETACH_VIOMMU: "DETACH_VIOMMU", SET_DEV_ID: "SET_DEV_ID",
         UNSET_DEV_ID: "UNSET_DEV_ID", LINK_STE: "LINK_STE", UNLINK_STE: "UNLINK_STE", UPDATE_CD: "UPDATE_CD",
         GET_HW_INFO: "GET_HW_INFO", RESUME_VSMMU: "RESUME_VSMMU", MAP_QUEUE: "MAP_QUEUE", UNMAP_QUEUE: "UNMAP_QUEUE",
         MAP_EVENT_QUEUE: "MAP_EVENT_QUEUE", UNMAP_EVENT_QUEUE: "UNMAP_EVENT_QUEUE", INVALIDATE: "INVALIDATE",
         STATS: "STATS", LIST: "LIST", HEALTH: "HEALTH", SIMULATE_DMA: "SIMULATE_DMA"}


def type_name(t):
    if t == ERROR:
        return "ERROR"
    base = NAMES.get(t & 0x7FFF, "0x%04X" % t)
    return base + "_REPLY" if t & REPLY else base


class Fields:
    """Bytes laid out field by field; every field becomes one hex line and (when named) one `#!` assertion."""

    def __init__(self):
        self.lines = []      # (bytes, comment)
        self.asserts = []    # (name, value text)
        self.notes = []

    def note(self, text):
        self.notes.append(text)
        return self

    def section(self, text):
        self.lines.append((b"", text))
        return self

    def where(self):
        """What a field's comment starts with (Memory: its offset)."""
        return ""

    def _int(self, fmt, name, value, comment=None):
        label = name if name is not None else "(not checked)"
        where = self.where()
        self.lines.append((struct.pack("<" + fmt, value), "%s%s = %s" % (where, label, comment or hex_or_dec(value))))
        if name is not None:
            self.asserts.append((name, str(value) if value < 10 else "0x%X" % value))
        return self

    def u8(self, name, value, comment=None): return self._int("B", name, value, comment)
    def u16(self, name, value, comment=None): return self._int("H", name, value, comment)
    def u32(self, name, value, comment=None): return self._int("I", name, value, comment)
    def u64(self, name, value, comment=None): return self._int("Q", name, value, comment)

    def body(self):
        """The fields' lines of the file: a section as a comment, a field as its hex and its comment."""
        out = []
        for b, c in self.lines:
            out += ["# " + c] if not b else fmt_bytes(b, c)
        return out

    def save(self, out):
        with open(os.path.join(HERE, self.filename), "w") as f:
            f.write("\n".join(out) + "\n")


class Frame(Fields):
    """A frame built field by field."""

    def __init__(self, filename, title, mtype, request_id, flags=0, payload_length=None):
        Fields.__init__(self)
        self.filename, self.title = filename, title
        self.mtype, self.request_id, self.flags = mtype, request_id, flags
        self.forced_length = payload_length
        self.expect_error = None

    def name(self, name, text):
        data = text.encode()
        assert len(data) <= 64
        self.lines.append((data + b"\0" * (64 - len(data)), '%s = "%s"' % (name, text)))
        self.asserts.append((name, '"%s"' % text))
        return self

    def message(self, name, text):
        data = text.encode()
        self.lines.append((data, '%s = "%s"' % (name, text)))
        self.asserts.append((name, '"%s"' % text))
        return self

    def payload(self):
        return b"".join(b for b, _ in self.lines)

    def write(self):
        payload = self.payload()
        length = len(payload) if self.forced_length is None else self.forced_length
        header = [
            (struct.pack("<I", length), "payload_length = %d" % length),
            (struct.pack("<H", self.mtype), "type = %s" % (type_name(self.mtype) if type_name(self.mtype).startswith("0x") else "%s (0x%04X)" % (type_name(self.mtype), self.mtype))),
            (struct.pack("<H", self.flags), "flags = 0x%04X%s" % (self.flags, " (FD_ATTACHED)" if self.flags == FD_ATTACHED else "")),
            (struct.pack("<Q", self.request_id), "request_id = %d" % self.request_id),
        ]
        out = ["# %s" % self.title]
        out += ["# %s" % n for n in self.notes]
        out.append("#! header.payload_length = %d" % length)
        out.append("#! header.type = 0x%04X" % self.mtype)
        out.append("#! header.flags = 0x%04X" % self.flags)
        out.append("#! header.request_id = %d" % self.request_id)
        for name, value in self.asserts:
            out.append("#! %s = %s" % (name, value))
        if self.expect_error is not None:
            out.append("#! expect_error = %d" % self.expect_error)
        out.append("")
        out.append("# header (struct vsmmu_frame_header)")
        out += [fmt_line(b, c) for b, c in header]
        if self.lines:
            out.append("# payload")
            out += self.body()
        self.save(out)


class Memory(Fields):
    """Bytes of the shared command queue's memory (PROTOCOL.md §8.1), not a frame: `#! kind` says which part
    and `#! offset` where in the memory the first byte sits. Each field's comment starts with its offset."""

    def __init__(self, filename, title, kind, offset):
        Fields.__init__(self)
        self.filename, self.title, self.kind, self.offset = filename, title, kind, offset

    def where(self):
        return "0x%03X " % (self.offset + sum(len(b) for b, _ in self.lines))

    def reserved(self, count, upto=None):
        """`count` zero bytes (reserved, not asserted: check_vectors.c checks that they are zero)."""
        at = self.offset + sum(len(b) for b, _ in self.lines)
        if upto is not None:
            assert at + count == upto, (hex(at), count, hex(upto))
        self.lines.append((b"\0" * count, "%sreserved (%d bytes) = 0" % (self.where(), count)))
        return self

    def write(self):
        out = ["# %s" % self.title]
        out += ["# %s" % n for n in self.notes]
        out.append("#! kind = %s" % self.kind)
        out.append("#! offset = 0x%X" % self.offset)
        for name, value in self.asserts:
            out.append("#! %s = %s" % (name, value))
        out.append("")
        self.save(out + self.body())


def hex_or_dec(v):
    return str(v) if v < 10 else "0x%X (%d)" % (v, v)


def fmt_line(b, comment):
    text = " ".join("%02x" % x for x in b)
    return "%-48s # %s" % (text, comment)


def fmt_bytes(b, comment):
    lines = []
    for i in range(0, len(b), 16):
        chunk = b[i:i + 16]
        lines.append(fmt_line(chunk, comment) if i == 0 else " ".join("%02x" % x for x in chunk))
    return lines


def words(frame, prefix, ws, comments=None):
    for i, w in enumerate(ws):
        frame.u64("%s.w[%d]" % (prefix, i), w, (comments or {}).get(i))


# ---- SMMUv3 values used by the vectors (bit positions from shared/reference/smmuv3.md) ------------

# STE: V=1 | CONFIG=S1_TRANS(5)<<1 | S1CTXPTR 0x4000_0000 (w0[51:6] in place) | S1CDMAX=1 <<59
STE_W0 = 0x0800_0000_4000_000B
# S1DSS=SSID0(2) | S1CIR=1<<2 | S1COR=1<<4 | S1CSH=3<<6 | EATS=1<<28
STE_W1 = 0x1000_00D6
# CD: V (w0[31]) | AA64 (w0[41]) | ASID w0[63:48]; TTB0 w1[51:4] in place
def cd_words(asid, ttb0):
    return [asid << 48 | 1 << 41 | 1 << 31, ttb0, 0, 0, 0, 0, 0, 0]


CD0 = cd_words(0x42, 0x8_1234_5000)
CD1 = cd_words(0x43, 0x8_1234_6000)
CD1_NEW = cd_words(0x44, 0x8_1234_7000)
# TLBI_NH_VA ASID 0x42, VA 0x7F00_1000, leaf | ATC_INV SID 0x100 SIZE 52 | CMD_SYNC CS=IRQ
COMMANDS = [
    (0x0042_0000_0000_0012, 0x7F00_1001, "TLBI_NH_VA asid=0x42 va=0x7F001000 leaf"),
    (0x0000_0100_0000_0040, 0x34, "ATC_INV sid=0x100 size=52 (all)"),
    (0x0000_0000_0000_1046, 0, "CMD_SYNC cs=IRQ"),
]

# ID registers (GET_HW_INFO, §5.12): what IOMMU_GET_HW_INFO gives on QEMU's emulated SMMUv3 with
# stage=nested, the simulated pSMMU's default, with an Arm implementer code in IIDR.
# IDR0: S1P, S2P, TTF=AArch64, COHACC, ASID16, VMID16, TTENDIAN=LE, STALL_MODEL=terminate only, TERM_MODEL,
#       ST_LVL=2-level. IDR1: SIDSIZE=16, SSIDSIZE=0, EVTQS=CMDQS=19. IDR3: HAD, XNX, RIL, BBML=2. IDR5: OAS=44 bits,
#       4K/16K/64K granules. AIDR: SMMUv3.1.
HW_IDR = [0x0D44_101B, 0x0273_0010, 0, 0x0000_1414, 0, 0x0000_0074]
HW_IIDR, HW_AIDR = 0x0000_043B, 0x1

MAX_FRAME = 1 << 20

# An F_TRANSLATION (0x10) of vSID 0x100 at IOVA 0x7F001000, as the simulated pSMMU records it and the guest sees it.
FAULT_EVENT = [0x0000_0100_0000_0010, 0, 0x7F00_1000, 0]


def error_frame(filename, title, request_id, code, code_name, request_type, detail, value, message):
    f = Frame(filename, title, ERROR, request_id)
    f.section("struct vsmmu_error")
    f.u32("error.code", code, "%d %s" % (code, code_name))
    f.u16("error.request_type", request_type, "%s (0x%04X)" % (type_name(request_type) if request_type else "none", request_type))
    f.u16("error.message_length", len(message.encode()))
    f.u32("error.detail", detail)
    f.u32("error.reserved", 0)
    f.u64("error.value", value)
    f.message("error.message", message)
    return f


def main():
    frames = []
    add = frames.append

    # ---- Handshake ---------------------------------------------------------------------------------
    f = Frame("hello.hex", "HELLO (§5.1): versions 1-2, pid 4242, client \"vmm-sim\"", HELLO, 1)
    f.section("struct vsmmu_hello").u32("hello.magic", 0x554D5356, '0x554D5356 "VSMU"')
    f.u16("hello.min_version", 1).u16("hello.max_version", 2).u32("hello.pid", 4242).u32("hello.reserved", 0)
    add(f.name("hello.client_name", "vmm-sim"))

    f = Frame("hello-reply.hex", "HELLO_REPLY (§5.1): version 2, the default limits, server pid 777", HELLO | REPLY, 1)
    f.section("struct vsmmu_hello_reply").u32("hello_reply.magic", 0x554D5356, '0x554D5356 "VSMU"')
    f.u16("hello_reply.version", 2).u16("hello_reply.reserved", 0)
    f.u32("hello_reply.max_frame_size", MAX_FRAME).u32("hello_reply.max_commands", (MAX_FRAME - 32) // 16)
    f.u32("hello_reply.max_vsmmus", 16).u32("hello_reply.max_viommus", 64)
    f.u32("hello_reply.max_context_descriptors", (MAX_FRAME - 16 - 80) // 64).u32("hello_reply.server_pid", 777)
    add(f.name("hello_reply.server_name", "vsmmud 0.4.0"))

    # ---- vSMMU objects -----------------------------------------------------------------------------
    f = Frame("create-vsmmu.hex", "CREATE_VSMMU (§5.2): name \"vm42\"", CREATE_VSMMU, 2)
    f.section("struct vsmmu_create_vsmmu").u32("create_vsmmu.flags", 0).u32("create_vsmmu.reserved", 0)
    add(f.name("create_vsmmu.name", "vm42"))

    # Version 3: the create key makes a CREATE_VSMMU re-sent after a reconnect answer the vSMMU it created.
    f = Frame("create-vsmmu-keyed.hex", "CREATE_VSMMU (§5.2, version 3) with a create key (bytes 0x20..0x2F): "
              "name \"vm42\"", CREATE_VSMMU, 2)
    f.section("struct vsmmu_create_vsmmu_keyed")
    f.u32("create_vsmmu_keyed.flags", 1, "VSMMU_CREATE_FLAG_KEY").u32("create_vsmmu_keyed.reserved", 0)
    f.name("create_vsmmu_keyed.name", "vm42")
    for i, word in enumerate([0x2726252423222120, 0x2F2E2D2C2B2A2928]):
        f.u64("create_vsmmu_keyed.create_key[%d]" % i, word, "0x%X" % word)
    add(f)

    f = Frame("create-vsmmu-reply.hex", "CREATE_VSMMU reply (§5.2): vsmmu_id 7", CREATE_VSMMU | REPLY, 2)
    f.section("struct vsmmu_create_vsmmu_reply")
    add(f.u32("create_vsmmu_reply.vsmmu_id", 7).u32("create_vsmmu_reply.reserved", 0))

    # The resume token of the version-3 vectors: bytes 0x10, 0x11, ..., 0x1F (two little-endian u64 words).
    token = (0x1716151413121110, 0x1F1E1D1C1B1A1918)
    f = Frame("create-vsmmu-reply-v3.hex", "CREATE_VSMMU reply (§5.2, version 3): vsmmu_id 7 and its resume token "
              "(bytes 0x10..0x1F)", CREATE_VSMMU | REPLY, 2)
    f.section("struct vsmmu_create_vsmmu_reply_v3")
    f.u32("create_vsmmu_reply_v3.vsmmu_id", 7).u32("create_vsmmu_reply_v3.reserved", 0)
    add(f.u64("create_vsmmu_reply_v3.resume_token[0]", token[0]).u64("create_vsmmu_reply_v3.resume_token[1]", token[1]))

    f = Frame("resume-vsmmu.hex", "RESUME_VSMMU (§5.13, version 3): vsmmu 7 with its resume token (bytes 0x10..0x1F)",
              RESUME_VSMMU, 21)
    f.section("struct vsmmu_resume_vsmmu").u32("resume_vsmmu.vsmmu_id", 7).u32("resume_vsmmu.reserved", 0)
    add(f.u64("resume_vsmmu.resume_token[0]", token[0]).u64("resume_vsmmu.resume_token[1]", token[1]))

    f = Frame("resume-vsmmu-with-fd.hex", "RESUME_VSMMU (§5.13, version 3): vsmmu 7, handing the VMM's iommufd back "
              "(FD_ATTACHED)", RESUME_VSMMU, 22, flags=FD_ATTACHED)
    f.section("struct vsmmu_resume_vsmmu").u32("resume_vsmmu.vsmmu_id", 7).u32("resume_vsmmu.reserved", 0)
    add(f.u64("resume_vsmmu.resume_token[0]", token[0]).u64("resume_vsmmu.resume_token[1]", token[1]))

    f = Frame("resume-vsmmu-reply.hex", "RESUME_VSMMU reply (§5.13): 2 viommus, 3 devices, last control request 20",
              RESUME_VSMMU | REPLY, 21)
    f.section("struct vsmmu_resume_vsmmu_reply").u32("resume_vsmmu_reply.vsmmu_id", 7)
    f.u32("resume_vsmmu_reply.viommu_count", 2).u32("resume_vsmmu_reply.device_count", 3)
    add(f.u32("resume_vsmmu_reply.reserved", 0).u64("resume_vsmmu_reply.last_request_id", 20))

    f = Frame("map-queue.hex", "MAP_QUEUE (§5.15, version 4): vsmmu 7, 2^10 slots, with the memfd, kick and call "
              "eventfds (FD_ATTACHED, three fds)", MAP_QUEUE, 23, flags=FD_ATTACHED)
    f.section("struct vsmmu_map_queue").u32("map_queue.vsmmu_id", 7).u32("map_queue.log2_entries", 10)
    add(f.u32("map_queue.flags", 0).u32("map_queue.reserved", 0))

    f = Frame("map-queue-reply.hex", "MAP_QUEUE reply (§5.15): consuming from CONS 0x405 (index 5, wrap bit set)",
              MAP_QUEUE | REPLY, 23)
    add(f.section("struct vsmmu_map_queue_reply").u32("map_queue_reply.cons", 0x405).u32("map_queue_reply.reserved", 0))

    f = Frame("unmap-queue.hex", "UNMAP_QUEUE (§5.16, version 4): vsmmu 7", UNMAP_QUEUE, 24)
    add(f.section("struct vsmmu_unmap_queue").u32("unmap_queue.vsmmu_id", 7).u32("unmap_queue.reserved", 0))

    add(Frame("unmap-queue-reply.hex", "UNMAP_QUEUE reply (§5.16): empty", UNMAP_QUEUE | REPLY, 24))

    # ---- The event queue (version 5) -----------------------------------------------------------------
    f = Frame("map-event-queue.hex", "MAP_EVENT_QUEUE (§5.17, version 5): vsmmu 7, 2^6 event slots, with the memfd "
              "and the call eventfd (FD_ATTACHED, two fds)", MAP_EVENT_QUEUE, 60, flags=FD_ATTACHED)
    f.section("struct vsmmu_map_event_queue").u32("map_event_queue.vsmmu_id", 7).u32("map_event_queue.log2_entries", 6)
    add(f.u32("map_event_queue.flags", 0).u32("map_event_queue.reserved", 0))

    f = Frame("map-event-queue-reply.hex", "MAP_EVENT_QUEUE reply (§5.17): the daemon writes next at PROD 0x80000045 "
              "(index 5, wrap bit 6 set, OVFLG set)", MAP_EVENT_QUEUE | REPLY, 60)
    f.section("struct vsmmu_map_event_queue_reply")
    add(f.u32("map_event_queue_reply.prod", 0x80000045).u32("map_event_queue_reply.reserved", 0))

    f = Frame("unmap-event-queue.hex", "UNMAP_EVENT_QUEUE (§5.18, version 5): vsmmu 7", UNMAP_EVENT_QUEUE, 61)
    add(f.section("struct vsmmu_unmap_event_queue").u32("unmap_event_queue.vsmmu_id", 7)
        .u32("unmap_event_queue.reserved", 0))
    add(Frame("unmap-event-queue-reply.hex", "UNMAP_EVENT_QUEUE reply (§5.18): empty", UNMAP_EVENT_QUEUE | REPLY, 61))

    f = Frame("simulate-dma.hex", "SIMULATE_DMA (§6.4, version 5): vsmmu 7, vSID 0x100 writes IOVA 0x7F001000 of a "
              "4 KiB mapping the guest unmapped (walk UNMAPPED)", SIMULATE_DMA, 62)
    f.section("struct vsmmu_simulate_dma").u32("simulate_dma.vsmmu_id", 7).u32("simulate_dma.vsid", 0x100)
    f.u32("simulate_dma.ssid", 0).u32("simulate_dma.flags", 1, "1 VSMMU_DMA_WRITE")
    f.u64("simulate_dma.iova", 0x7F001000).u64("simulate_dma.size", 4096)
    add(f.u32("simulate_dma.walk", 0, "0 VSMMU_DMA_WALK_UNMAPPED").u32("simulate_dma.reserved", 0))

    f = Frame("simulate-dma-reply.hex", "SIMULATE_DMA reply (§6.4): FAULT, an F_TRANSLATION of vSID 0x100 at "
              "0x7F001000", SIMULATE_DMA | REPLY, 62)
    f.note("event w0: EVENT_ID [7:0] = 0x10 F_TRANSLATION, StreamID [63:32] = 0x100 (the vSID); w2: input address")
    f.section("struct vsmmu_simulate_dma_reply").u32("simulate_dma_reply.outcome", 6, "6 VSMMU_DMA_FAULT")
    f.u32("simulate_dma_reply.reserved", 0)
    words(f, "simulate_dma_reply.event", FAULT_EVENT)
    add(f)

    add(error_frame("error-unsupported.hex", "ERROR UNSUPPORTED (§4, §6.4, version 5): SIMULATE_DMA on a device "
                    "behind an iommufd pSMMU (value: viommu 0)", 63, 25, "UNSUPPORTED", SIMULATE_DMA, 0, 0,
                    "SIMULATE_DMA: the backend of viommu 0 has no simulated devices"))

    f = Frame("attach-viommu.hex", "ATTACH_VIOMMU (§5.4): vsmmu 7 on pSMMU \"smmu1\" through host device 0x11, "
              "nest parent HWPT 0x21, with the VMM's iommufd (FD_ATTACHED)", ATTACH_VIOMMU, 3, flags=FD_ATTACHED)
    f.section("struct vsmmu_attach_viommu").u32("attach_viommu.vsmmu_id", 7)
    f.u32("attach_viommu.host_device_id", 0x11).u32("attach_viommu.nest_parent_hwpt_id", 0x21)
    add(f.u32("attach_viommu.reserved", 0).name("attach_viommu.psmmu", "smmu1"))

    f = Frame("attach-viommu-reply.hex", "ATTACH_VIOMMU reply (§5.4): viommu 1, backend viommu id 0x31",
              ATTACH_VIOMMU | REPLY, 3)
    f.section("struct vsmmu_attach_viommu_reply")
    add(f.u32("attach_viommu_reply.viommu", 1).u32("attach_viommu_reply.backend_viommu_id", 0x31))

    f = Frame("set-dev-id.hex", "SET_DEV_ID (§5.6): vsmmu 7, viommu 1, host device 0x11, vSID 0x100", SET_DEV_ID, 4)
    f.section("struct vsmmu_dev_id").u32("dev_id.vsmmu_id", 7).u32("dev_id.viommu", 1)
    add(f.u32("dev_id.host_device_id", 0x11).u32("dev_id.vsid", 0x100))
    add(Frame("set-dev-id-reply.hex", "SET_DEV_ID reply (§5.6): empty", SET_DEV_ID | REPLY, 4))

    f = Frame("set-dev-id-with-fd.hex", "SET_DEV_ID (§5.6, version 2): vsmmu 7, viommu 0, host device 0x12, vSID 0x200, "
              "with the device's VFIO cdev (FD_ATTACHED)", SET_DEV_ID, 17, flags=FD_ATTACHED)
    f.section("struct vsmmu_dev_id").u32("dev_id.vsmmu_id", 7).u32("dev_id.viommu", 0)
    add(f.u32("dev_id.host_device_id", 0x12).u32("dev_id.vsid", 0x200))

    f = Frame("get-hw-info.hex", "GET_HW_INFO (§5.12, version 2): vsmmu 7", GET_HW_INFO, 7)
    f.section("struct vsmmu_get_hw_info")
    add(f.u32("get_hw_info.vsmmu_id", 7).u32("get_hw_info.reserved", 0))

    f = Frame("get-hw-info-reply.hex", "GET_HW_INFO reply (§5.12): the registers of vsmmu 7's 2 viommus", GET_HW_INFO | REPLY, 7)
    f.note("IDR0 0x0D44101B: S2P, S1P, TTF=AArch64, COHACC, ASID16, VMID16, TTENDIAN=LE, STALL_MODEL=1 "
           "(terminate only), TERM_MODEL, ST_LVL=2-level")
    f.note("IDR1 0x02730010: SIDSIZE=16, SSIDSIZE=0, EVTQS=CMDQS=19; IDR3 0x1414: HAD, XNX, RIL, BBML=2; "
           "IDR5 0x74: OAS=4 (44 bits), "
           "GRAN4K, GRAN16K, GRAN64K")
    f.note("IIDR 0x43B: implementer Arm; AIDR 0x1: SMMUv3.1")
    f.section("struct vsmmu_hw_info_reply").u32("hw_info_reply.viommu_count", 2).u32("hw_info_reply.reserved", 0)
    for i, value in enumerate(HW_IDR):
        f.u32("hw_info_reply.idr[%d]" % i, value, "0x%08X SMMU_IDR%d" % (value, i))
    add(f.u32("hw_info_reply.iidr", HW_IIDR).u32("hw_info_reply.aidr", HW_AIDR))

    f = Frame("link-ste.hex", "LINK_STE (§5.8): vsmmu 7, vSID 0x100, a S1_TRANS STE with 2 CDs (ASIDs 0x42, 0x43)",
              LINK_STE, 5)
    f.note("STE w0: V=1, CONFIG=S1_TRANS (5), S1ContextPtr=0x40000000, S1CDMax=1 (2 CDs)")
    f.note("STE w1: S1DSS=SSID0 (2), S1CIR=1, S1COR=1, S1CSH=3, EATS=1")
    f.note("CD w0: V (bit 31), AA64 (bit 41), ASID [63:48]; w1: TTB0")
    f.section("struct vsmmu_link_ste").u32("link_ste.vsmmu_id", 7).u32("link_ste.vsid", 0x100)
    f.u32("link_ste.cd_count", 2).u32("link_ste.reserved", 0)
    words(f, "link_ste.ste", [STE_W0, STE_W1, 0, 0, 0, 0, 0, 0])
    f.section("cds[0]: ASID 0x42, TTB0 0x812345000")
    words(f, "cd[0]", CD0)
    f.section("cds[1]: ASID 0x43, TTB0 0x812346000")
    words(f, "cd[1]", CD1)
    add(f)

    f = Frame("link-ste-reply.hex", "LINK_STE reply (§5.8): S1 HWPT 1, created (VSMMU_HWPT_NEW)", LINK_STE | REPLY, 5)
    f.section("struct vsmmu_hwpt_reply")
    add(f.u32("hwpt_reply.s1_hwpt_id", 1).u32("hwpt_reply.flags", 1, "1 VSMMU_HWPT_NEW"))

    f = Frame("update-cd.hex", "UPDATE_CD (§5.10): vsmmu 7, vSID 0x100, SSID 1 gets ASID 0x44", UPDATE_CD, 6)
    f.section("struct vsmmu_update_cd").u32("update_cd.vsmmu_id", 7).u32("update_cd.vsid", 0x100)
    f.u32("update_cd.ssid", 1).u32("update_cd.reserved", 0)
    words(f, "update_cd.cd", CD1_NEW)
    add(f)

    f = Frame("update-cd-reply.hex", "UPDATE_CD reply (§5.10): S1 HWPT 1 kept", UPDATE_CD | REPLY, 6)
    f.section("struct vsmmu_hwpt_reply")
    add(f.u32("hwpt_reply.s1_hwpt_id", 1).u32("hwpt_reply.flags", 0))

    # ---- INVALIDATE --------------------------------------------------------------------------------
    f = Frame("invalidate.hex", "INVALIDATE (§5.11): vsmmu 7, 3 commands ending in CMD_SYNC", INVALIDATE, 8)
    f.section("struct vsmmu_invalidate").u32("invalidate.vsmmu_id", 7).u32("invalidate.command_count", 3)
    f.u32("invalidate.flags", 0).u32("invalidate.reserved", 0)
    for i, (w0, w1, what) in enumerate(COMMANDS):
        f.section("commands[%d]: %s" % (i, what))
        f.u64("command[%d].w[0]" % i, w0).u64("command[%d].w[1]" % i, w1)
    add(f)

    f = Frame("invalidate-reply.hex", "INVALIDATE reply (§5.11): all 3 consumed, the sync completed, CERROR_NONE",
              INVALIDATE | REPLY, 8)
    f.section("struct vsmmu_invalidate_reply").u32("invalidate_reply.consumed", 3)
    f.u32("invalidate_reply.error_index", 0xFFFFFFFF, "VSMMU_NO_ERROR_INDEX").u32("invalidate_reply.syncs_completed", 1)
    f.u8("invalidate_reply.cerror", 0, "0 CERROR_NONE").u8("invalidate_reply.reserved", 0)
    add(f.u16("invalidate_reply.message_length", 0))

    msg = "undefined opcode 0x7"
    f = Frame("invalidate-reply-ill.hex", "INVALIDATE reply (§5.11): stopped at command 1 with CERROR_ILL",
              INVALIDATE | REPLY, 9)
    f.section("struct vsmmu_invalidate_reply").u32("invalidate_reply.consumed", 1)
    f.u32("invalidate_reply.error_index", 1).u32("invalidate_reply.syncs_completed", 0)
    f.u8("invalidate_reply.cerror", 1, "1 CERROR_ILL").u8("invalidate_reply.reserved", 0)
    f.u16("invalidate_reply.message_length", len(msg))
    add(f.message("invalidate_reply.message", msg))

    # ---- Teardown ----------------------------------------------------------------------------------
    f = Frame("unlink-ste.hex", "UNLINK_STE (§5.9): vsmmu 7, vSID 0x100", UNLINK_STE, 27)
    f.section("struct vsmmu_unlink_ste")
    add(f.u32("unlink_ste.vsmmu_id", 7).u32("unlink_ste.vsid", 0x100))
    add(Frame("unlink-ste-reply.hex", "UNLINK_STE reply (§5.9): empty", UNLINK_STE | REPLY, 27))

    f = Frame("unset-dev-id.hex", "UNSET_DEV_ID (§5.7): vsmmu 7, viommu 1, host device 0x11, vSID 0x100", UNSET_DEV_ID, 28)
    f.section("struct vsmmu_dev_id").u32("dev_id.vsmmu_id", 7).u32("dev_id.viommu", 1)
    add(f.u32("dev_id.host_device_id", 0x11).u32("dev_id.vsid", 0x100))
    add(Frame("unset-dev-id-reply.hex", "UNSET_DEV_ID reply (§5.7): empty", UNSET_DEV_ID | REPLY, 28))

    f = Frame("detach-viommu.hex", "DETACH_VIOMMU (§5.5): vsmmu 7, viommu 1", DETACH_VIOMMU, 29)
    f.section("struct vsmmu_detach_viommu")
    add(f.u32("detach_viommu.vsmmu_id", 7).u32("detach_viommu.viommu", 1))
    add(Frame("detach-viommu-reply.hex", "DETACH_VIOMMU reply (§5.5): empty", DETACH_VIOMMU | REPLY, 29))

    f = Frame("destroy-vsmmu.hex", "DESTROY_VSMMU (§5.3): vsmmu 7", DESTROY_VSMMU, 30)
    f.section("struct vsmmu_destroy_vsmmu")
    add(f.u32("destroy_vsmmu.vsmmu_id", 7).u32("destroy_vsmmu.reserved", 0))
    add(Frame("destroy-vsmmu-reply.hex", "DESTROY_VSMMU reply (§5.3): empty", DESTROY_VSMMU | REPLY, 30))

    # ---- Admin -------------------------------------------------------------------------------------
    f = Frame("stats.hex", "STATS (§6.1): vsmmu 7", STATS, 10)
    f.section("struct vsmmu_stats")
    add(f.u32("stats.vsmmu_id", 7).u32("stats.reserved", 0))

    entries = [
        (7, 0xFFFF, 0x0001, 3, "COMMANDS_RECEIVED"),
        (7, 0xFFFF, 0x000B, 1, "SYNCS"),
        (7, 0xFFFF, 0x020E, 1, "SYNC_LATENCY_LOG2_NS(14): one sync in [16384, 32768) ns"),
        (7, 1, 0x0043, 1, "VIOMMU_BACKEND_CALLS"),
        (7, 1, 0x0301, 1, "VIOMMU_BATCH_SIZE_LOG2(1): one call of 2-3 commands"),
    ]
    f = Frame("stats-reply.hex", "STATS reply (§6.1): 5 counters of vsmmu 7 and its viommu 1", STATS | REPLY, 10)
    f.section("struct vsmmu_stats_reply").u32("stats_reply.entry_count", len(entries)).u32("stats_reply.reserved", 0)
    for i, (v, vi, key, value, what) in enumerate(entries):
        f.section("entries[%d]: %s" % (i, what))
        f.u32("stat_entry[%d].vsmmu_id" % i, v)
        f.u16("stat_entry[%d].viommu" % i, vi, "VSMMU_STAT_NO_VIOMMU" if vi == 0xFFFF else None)
        f.u16("stat_entry[%d].key" % i, key).u64("stat_entry[%d].value" % i, value)
    add(f)

    f = Frame("list.hex", "LIST (§6.2): DEVICES of every vSMMU, from 0, as many as fit", LIST, 11)
    f.section("struct vsmmu_list").u32("list.vsmmu_id", 0, "0 (every vSMMU)").u16("list.kind", 3, "3 VSMMU_LIST_DEVICES")
    add(f.u16("list.reserved", 0).u32("list.start", 0).u32("list.max_entries", 0))

    def list_reply(filename, title, request_id, kind, kind_name, size, total, start, rows):
        f = Frame(filename, title, LIST | REPLY, request_id)
        f.section("struct vsmmu_list_reply").u16("list_reply.kind", kind, "%d %s" % (kind, kind_name))
        f.u16("list_reply.entry_size", size).u32("list_reply.count", len(rows))
        f.u32("list_reply.total", total).u32("list_reply.start", start)
        for row in rows:
            row(f)
        return f

    def vsmmu_row(f):
        f.section("entries[0]")
        p = "list_vsmmu[0]."
        f.u32(p + "vsmmu_id", 7).u32(p + "owner_pid", 4242).u32(p + "owner_uid", 1000).u32(p + "viommu_count", 2)
        f.u32(p + "device_count", 2).u32(p + "hwpt_count", 1).u32(p + "asid_count", 2).u32(p + "flags", 0)
        f.name(p + "name", "vm42")
    add(list_reply("list-reply-vsmmus.hex", "LIST reply (§6.2): VSMMUS, vsmmu 7", 12, 1, "VSMMU_LIST_VSMMUS", 96, 1, 0,
                   [vsmmu_row]))

    def viommu_row(i, viommu, backend, name):
        def row(f):
            f.section("entries[%d]" % i)
            p = "list_viommu[%d]." % i
            f.u32(p + "vsmmu_id", 7).u32(p + "viommu", viommu).u32(p + "backend_viommu_id", backend)
            f.u32(p + "device_count", 1).name(p + "psmmu", name)
        return row
    add(list_reply("list-reply-viommus.hex", "LIST reply (§6.2): VIOMMUS, viommus 0 (smmu0) and 1 (smmu1) of vsmmu 7",
                   13, 2, "VSMMU_LIST_VIOMMUS", 80, 2, 0, [viommu_row(0, 0, 0x30, "smmu0"), viommu_row(1, 1, 0x31, "smmu1")]))

    def device_row(i, vsid, viommu, device, hwpt, flags):
        def row(f):
            f.section("entries[%d]" % i)
            p = "list_device[%d]." % i
            f.u32(p + "vsmmu_id", 7).u32(p + "vsid", vsid).u32(p + "viommu", viommu).u32(p + "host_device_id", device)
            f.u32(p + "s1_hwpt_id", hwpt, None if hwpt else "0 (none)")
            f.u32(p + "flags", flags, "1 VSMMU_DEVICE_STE_LINKED" if flags else None)
        return row
    add(list_reply("list-reply-devices.hex", "LIST reply (§6.2): DEVICES, the first 2 of 3 (ask again from 2)",
                   11, 3, "VSMMU_LIST_DEVICES", 24, 3, 0,
                   [device_row(0, 0x100, 1, 0x11, 1, 1), device_row(1, 0x200, 0, 0x12, 0, 0)]))

    def hwpt_row(f):
        f.section("entries[0]")
        p = "list_hwpt[0]."
        f.u32(p + "vsmmu_id", 7).u32(p + "s1_hwpt_id", 1).u32(p + "vsid", 0x100).u32(p + "viommu", 1)
        f.u32(p + "backend_hwpt_id", 0x41).u32(p + "asid_count", 2)
    add(list_reply("list-reply-hwpts.hex", "LIST reply (§6.2): HWPTS, S1 HWPT 1 of vSID 0x100", 14, 4,
                   "VSMMU_LIST_HWPTS", 24, 1, 0, [hwpt_row]))

    def asid_row(i, asid, hwpts, targets, retiring):
        def row(f):
            f.section("entries[%d]" % i)
            p = "list_asid[%d]." % i
            f.u32(p + "vsmmu_id", 7).u16(p + "asid", asid).u16(p + "hwpt_count", hwpts)
            f.u64(p + "target_mask", targets).u64(p + "retiring_mask", retiring)
        return row
    add(list_reply("list-reply-asids.hex", "LIST reply (§6.2): ASIDS, 0x42 live on viommu 1; 0x43 live on 1, retiring "
                   "from 0", 15, 5, "VSMMU_LIST_ASIDS", 24, 2, 0, [asid_row(0, 0x42, 1, 0b10, 0), asid_row(1, 0x43, 1, 0b11, 0b01)]))

    add(Frame("health.hex", "HEALTH (§6.3): empty", HEALTH, 16))
    f = Frame("health-reply.hex", "HEALTH reply (§6.3): OK, 2 connections, 1 vSMMU, two simulated pSMMUs",
              HEALTH | REPLY, 16)
    f.section("struct vsmmu_health_reply").u32("health_reply.status", 0, "0 VSMMU_HEALTH_OK")
    f.u32("health_reply.connection_count", 2).u32("health_reply.vsmmu_count", 1).u32("health_reply.psmmu_count", 2)
    f.u64("health_reply.uptime_ns", 123456789000).u32("health_reply.server_pid", 777).u32("health_reply.reserved", 0)
    for i, name in enumerate(["smmu0", "smmu1"]):
        f.section("psmmus[%d]" % i)
        p = "psmmu_health[%d]." % i
        f.u32(p + "status", 0, "0 VSMMU_PSMMU_OK").u32(p + "backend", 1, "1 VSMMU_BACKEND_SIMULATED")
        f.u32(p + "viommu_count", 1).u32(p + "reserved", 0).name(p + "name", name)
    add(f)

    # ---- ERROR replies (§4) ------------------------------------------------------------------------
    add(error_frame("error-frame-too-large.hex", "ERROR FRAME_TOO_LARGE (§4): an INVALIDATE announcing 1048593 "
                    "bytes; the server then closes the connection", 40, 1, "FRAME_TOO_LARGE", INVALIDATE,
                    MAX_FRAME, MAX_FRAME + 17, "frame of 1048593 bytes exceeds the limit of 1048576"))
    add(error_frame("error-truncated-frame.hex", "ERROR TRUNCATED_FRAME (§4): the stream ended after 5 bytes, "
                    "inside a header", 0, 2, "TRUNCATED_FRAME", 0, 16, 5,
                    "the stream ended after 5 of the frame's 16 bytes"))
    add(error_frame("error-unknown-type.hex", "ERROR UNKNOWN_MESSAGE_TYPE (§4): type 0x0077", 41, 3,
                    "UNKNOWN_MESSAGE_TYPE", 0x77, 0, 0x77, "unknown message type 0x0077"))
    add(error_frame("error-bad-payload-length.hex", "ERROR BAD_PAYLOAD_LENGTH (§4): DESTROY_VSMMU with 12 bytes "
                    "instead of 8", 42, 4, "BAD_PAYLOAD_LENGTH", DESTROY_VSMMU, 8, 12,
                    "DESTROY_VSMMU needs a payload of 8 bytes, got 12"))
    add(error_frame("error-handshake-required.hex", "ERROR HANDSHAKE_REQUIRED (§4): CREATE_VSMMU before HELLO", 43, 5,
                    "HANDSHAKE_REQUIRED", CREATE_VSMMU, 0, CREATE_VSMMU, "CREATE_VSMMU before HELLO"))
    add(error_frame("error-unsupported-version.hex", "ERROR UNSUPPORTED_VERSION (§4): the client speaks 3-4, the "
                    "server 1-2", 44, 6, "UNSUPPORTED_VERSION", HELLO, 1, 2, "client speaks versions 3-4, server 1-2"))
    add(error_frame("error-bad-field.hex", "ERROR BAD_FIELD (§4): reserved header flag bit 2 set on UNLINK_STE "
                    "(detail 0x10006 = header offset 6)", 45, 8, "BAD_FIELD", UNLINK_STE, 0x10006, 4,
                    "reserved frame flags 0x4 set"))
    add(error_frame("error-invalid-ste.hex", "ERROR INVALID_STE (§4): CONFIG S2_TRANS (detail 3 "
                    "VSMMU_STE_DISALLOWED_CONFIG, value 6)", 46, 22, "INVALID_STE", LINK_STE, 3, 6,
                    "vSTE CONFIG s2_trans (6) is not abort, bypass or s1_trans"))
    add(error_frame("error-unknown-stream-id.hex", "ERROR UNKNOWN_STREAM_ID (§4): vSID 0x300", 47, 19,
                    "UNKNOWN_STREAM_ID", UNLINK_STE, 0, 0x300, "vSID 0x300 is not registered"))
    add(error_frame("error-permission-denied.hex", "ERROR PERMISSION_DENIED (§4): uid 1000 (gid 1000) is not on "
                    "the allow-list; the connection is closed after it", 52, 24, "PERMISSION_DENIED", HELLO, 1000, 1000,
                    "uid 1000 (gid 1000) is not on the daemon's allow-list ([access] in its configuration)"))
    add(error_frame("error-backend-failure.hex", "ERROR BACKEND_FAILURE (§4): errno 22 (EINVAL) on viommu 1", 48, 32,
                    "BACKEND_FAILURE", SET_DEV_ID, 22, 1, "IOMMU_VDEVICE_ALLOC: device not behind this pSMMU"))
    add(error_frame("error-unknown-viommu-hw-info.hex", "ERROR UNKNOWN_VIOMMU (§4, §5.12): GET_HW_INFO on a vSMMU "
                    "without a viommu (value 0xFFFFFFFF)", 53, 17, "UNKNOWN_VIOMMU", GET_HW_INFO, 0, 0xFFFFFFFF,
                    "vSMMU 7 has no viommu yet: its ID registers are what every pSMMU behind it supports, "
                    "so attach them first"))
    add(error_frame("error-bad-file-descriptor.hex", "ERROR BAD_FILE_DESCRIPTOR (§3.1, §4): SET_DEV_ID with an fd on "
                    "a connection that negotiated version 1 (detail 2 VSMMU_FD_UNEXPECTED; the fd was closed)", 54, 7,
                    "BAD_FILE_DESCRIPTOR", SET_DEV_ID, 2, 0,
                    "SET_DEV_ID carries the device's VFIO cdev from protocol version 2 on; this connection speaks "
                    "version 1"))

    # ---- Frames a server refuses (§2.2) -----------------------------------------------------------
    f = Frame("bad-frame-too-large.hex", "A header announcing a 1048577-byte payload: FRAME_TOO_LARGE, connection "
              "closed (only the header is here: the check needs nothing more)", INVALIDATE, 40,
              payload_length=MAX_FRAME + 1)
    f.expect_error = 1
    add(f)

    f = Frame("bad-unknown-type.hex", "A request of type 0x0077: UNKNOWN_MESSAGE_TYPE, frame skipped", 0x77, 41)
    f.section("4 bytes of payload the server skips")
    f.u32(None, 0xDEADBEEF)
    f.expect_error = 3
    add(f)

    f = Frame("bad-payload-length.hex", "DESTROY_VSMMU with a 12-byte payload: BAD_PAYLOAD_LENGTH (needs 8), skipped",
              DESTROY_VSMMU, 42)
    f.section("struct vsmmu_destroy_vsmmu and 4 extra bytes")
    f.u32("destroy_vsmmu.vsmmu_id", 7).u32("destroy_vsmmu.reserved", 0).u32(None, 0)
    f.expect_error = 4
    add(f)

    f = Frame("bad-invalidate-count.hex", "INVALIDATE announcing 2 commands and carrying 1: BAD_PAYLOAD_LENGTH "
              "(needs 48)", INVALIDATE, 49)
    f.section("struct vsmmu_invalidate").u32("invalidate.vsmmu_id", 7).u32("invalidate.command_count", 2)
    f.u32("invalidate.flags", 0).u32("invalidate.reserved", 0)
    f.section("commands[0]: CMD_SYNC")
    f.u64("command[0].w[0]", 0x46).u64("command[0].w[1]", 0)
    f.expect_error = 4
    add(f)

    f = Frame("bad-reserved-flags.hex", "UNLINK_STE with reserved header flag 0x0004: BAD_FIELD", UNLINK_STE, 45, flags=0x0004)
    f.section("struct vsmmu_unlink_ste")
    f.u32("unlink_ste.vsmmu_id", 7).u32("unlink_ste.vsid", 0x100)
    f.expect_error = 8
    add(f)

    f = Frame("bad-fd-unexpected.hex", "CREATE_VSMMU with FD_ATTACHED: BAD_FILE_DESCRIPTOR (detail 2, "
              "VSMMU_FD_UNEXPECTED)", CREATE_VSMMU, 50, flags=FD_ATTACHED)
    f.section("struct vsmmu_create_vsmmu").u32("create_vsmmu.flags", 0).u32("create_vsmmu.reserved", 0)
    f.name("create_vsmmu.name", "vm43")
    f.expect_error = 7
    add(f)

    f = Frame("bad-hello-magic.hex", "HELLO with magic \"VSMX\": BAD_FIELD (detail 0, the magic's offset)", HELLO, 51)
    f.section("struct vsmmu_hello").u32("hello.magic", 0x584D5356, '0x584D5356 "VSMX"')
    f.u16("hello.min_version", 1).u16("hello.max_version", 1).u32("hello.pid", 1).u32("hello.reserved", 0)
    f.name("hello.client_name", "")
    f.expect_error = 8
    add(f)

    # ---- The shared command queue's memory (§8.1) -------------------------------------------------
    LINE = 64
    m = Memory("queue-header.hex", "The shared queue's header (§8.1, struct vsmmu_queue_header): its first 0x1C0 "
               "bytes, every field set", "queue_header", 0)
    m.note("Each field holds a value no other field of its size holds (but the two sleep flags, 0 or 1), so that")
    m.note("a field read at another offset reads another value; it is a layout, not a state the daemon would write.")
    m.note("The rest of the header (0x1C0 to 0xFFF) is reserved and zero; the slots start at 0x1000 (queue-slots.hex).")
    m.section("configuration line (VMM, before MAP_QUEUE)")
    m.u32("queue_header.magic", 0x514D5356, '0x514D5356 "VSMQ" (VSMMU_QUEUE_MAGIC)')
    m.u16("queue_header.version", 1, "1 VSMMU_QUEUE_VERSION").u8("queue_header.log2_entries", 10, "10 (1024 slots)")
    m.reserved(57, upto=0x040)
    m.section("VMM's line")
    m.u32("queue_header.prod", 0x405, "0x405 (index 5, wrap bit 10 set)").reserved(LINE - 4, upto=0x080)
    m.section("daemon's lines")
    m.u32("queue_header.cons", 0x402, "0x402 (index 2, wrap bit set)").reserved(LINE - 4, upto=0x0C0)
    m.u32("queue_header.error_sequence", 7)
    m.u8("queue_header.cerror", 2, "2 CERROR_ABT").u8("queue_header.error_kind", 1, "1 VSMMU_QUEUE_ERROR_COMMAND")
    m.reserved(2)
    m.u32("queue_header.error_cons", 0x403, "0x403 (index 3, wrap bit set)")
    m.u32("queue_header.state", 2, "2 VSMMU_QUEUE_STATE_STOPPED").reserved(48, upto=0x100)
    m.section("VMM's line")
    m.u32("queue_header.error_ack", 6).reserved(LINE - 4, upto=0x140)
    m.section("daemon's line")
    m.u32("queue_header.daemon_sleeping", 1).reserved(LINE - 4, upto=0x180)
    m.section("VMM's line")
    m.u32("queue_header.vmm_sleeping", 1).reserved(LINE - 4, upto=0x1C0)
    add(m)

    m = Memory("queue-slots.hex", "The shared queue's first two slots (§8.1, from VSMMU_QUEUE_SLOTS_OFFSET = 0x1000): "
               "TLBI_NH_VA then CMD_SYNC, as PROD = 2 publishes them", "queue_slots", 0x1000)
    m.note("A slot is one 16-byte command as the guest wrote it (struct vsmmu_command, word 0 first, little-endian);")
    m.note("the slot of a position is its index: slot i at 0x1000 + 16 * i.")
    for i, (w0, w1, what) in enumerate([COMMANDS[0], COMMANDS[2]]):
        m.section("slot[%d]: %s" % (i, what))
        m.u64("slot[%d].w[0]" % i, w0, "0x%X" % w0).u64("slot[%d].w[1]" % i, w1, "0x%X" % w1)
    add(m)

    # ---- The event queue's memory (§9.1) ------------------------------------------------------------
    m = Memory("event-queue-header.hex", "The event queue's header (§9.1, struct vsmmu_event_queue_header): its "
               "first 0x140 bytes, every field set", "event_queue_header", 0)
    m.note("Each field holds a value no other field holds, so that a field read at another offset reads another")
    m.note("value; it is a layout, not a state the daemon would write. The rest of the header (0x140 to 0xFFF) is")
    m.note("reserved and zero; the slots start at 0x1000 (event-slot.hex).")
    m.section("configuration line (VMM, before MAP_EVENT_QUEUE)")
    m.u32("event_queue_header.magic", 0x454D5356, '0x454D5356 "VSME" (VSMMU_EVENT_QUEUE_MAGIC)')
    m.u16("event_queue_header.version", 1, "1 VSMMU_EVENT_QUEUE_VERSION")
    m.u8("event_queue_header.log2_entries", 6, "6 (64 slots)")
    m.reserved(57, upto=0x040)
    m.section("daemon's line")
    m.u32("event_queue_header.prod", 0x80000045, "0x80000045 (index 5, wrap bit 6 set, OVFLG set)")
    m.reserved(LINE - 4, upto=0x080)
    m.section("VMM's line")
    m.u32("event_queue_header.cons", 0x42, "0x42 (index 2, wrap bit set, OVACKFLG clear: an overflow not acknowledged)")
    m.reserved(LINE - 4, upto=0x0C0)
    m.section("daemon's line")
    m.u32("event_queue_header.state", 2, "2 VSMMU_QUEUE_STATE_STOPPED").reserved(LINE - 4, upto=0x100)
    m.section("VMM's line")
    m.u32("event_queue_header.vmm_sleeping", 1).reserved(LINE - 4, upto=0x140)
    add(m)

    m = Memory("event-slot.hex", "The event queue's slot of index 2 (§9.1, struct vsmmu_event_slot at "
               "VSMMU_EVENT_QUEUE_SLOTS_OFFSET + 64 * 2 = 0x1080): vsmmu 7's event 9, from viommu 1, after lost events",
               "event_slot", 0x1080)
    m.note("The record is the F_TRANSLATION of simulate-dma-reply.hex: the guest's vSID 0x100 in StreamID.")
    m.section("record (struct vsmmu_event_record)")
    for i, w in enumerate(FAULT_EVENT):
        m.u64("event_slot.record.w[%d]" % i, w, "0x%X" % w)
    m.u64("event_slot.sequence", 9).u32("event_slot.vsmmu_id", 7).u32("event_slot.viommu_id", 1)
    m.u32("event_slot.flags", 1, "1 VSMMU_EVENT_LOST_BEFORE").reserved(12, upto=0x10C0)
    add(m)

    for old in os.listdir(HERE):
        if old.endswith(".hex"):
            os.remove(os.path.join(HERE, old))
    for f in frames:
        f.write()
    print("wrote %d vectors" % len(frames))


if __name__ == "__main__":
    main()
