/*
 * The Linux iommufd user API that vsmmud's iommufd backend calls: the vIOMMU, vDEVICE, nested HWPT,
 * HWPT invalidation and vEVENTQ ioctls of Linux 6.13 and later.
 *
 * Debian 12's linux-libc-dev (6.1) has no <linux/iommufd.h> at all, and any header older than 6.13
 * lacks these structs, so they are declared here, field for field, from the kernel's
 * include/uapi/linux/iommufd.h. Names are the kernel's, so a reader can hold this file next to the
 * kernel's. Do not include <linux/iommufd.h> in the same translation unit: the struct tags would
 * clash. Every size and field offset is pinned by _Static_assert in ciommufd.c and by the
 * IOMMUFDTests target.
 *
 * General ioctl format (kernel): the argument is a struct whose first u32 `size` carries its length;
 * the kernel accepts any size from the struct's first version on, and bytes past what it knows must
 * be zero (else E2BIG).
 */
#ifndef CIOMMUFD_H
#define CIOMMUFD_H

#include <stdint.h>
#include <linux/ioctl.h>

/* __aligned_u64 / __aligned_le64: a 64-bit field aligned to 8 bytes on every ABI (also i386). */
typedef uint64_t ciommufd_aligned_u64 __attribute__((aligned(8)));

/* ---------------------------------------------------------------------------------------------- */
/* ioctl numbers                                                                                  */
/* ---------------------------------------------------------------------------------------------- */

/* The iommufd ioctl type byte. */
#define IOMMUFD_TYPE (';')

/* The kernel's command enumeration: IOMMUFD_CMD_BASE + n, one number per command, in the order the
 * kernel added them (the kernel spells each value out since 6.13; the values never change). */
enum {
	IOMMUFD_CMD_BASE = 0x80,
	IOMMUFD_CMD_DESTROY = IOMMUFD_CMD_BASE,    /* 0x80 */
	IOMMUFD_CMD_IOAS_ALLOC,                    /* 0x81 */
	IOMMUFD_CMD_IOAS_ALLOW_IOVAS,              /* 0x82 */
	IOMMUFD_CMD_IOAS_COPY,                     /* 0x83 */
	IOMMUFD_CMD_IOAS_IOVA_RANGES,              /* 0x84 */
	IOMMUFD_CMD_IOAS_MAP,                      /* 0x85 */
	IOMMUFD_CMD_IOAS_UNMAP,                    /* 0x86 */
	IOMMUFD_CMD_OPTION,                        /* 0x87 */
	IOMMUFD_CMD_VFIO_IOAS,                     /* 0x88 */
	IOMMUFD_CMD_HWPT_ALLOC,                    /* 0x89 */
	IOMMUFD_CMD_GET_HW_INFO,                   /* 0x8a */
	IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING,       /* 0x8b */
	IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP,         /* 0x8c */
	IOMMUFD_CMD_HWPT_INVALIDATE,               /* 0x8d */
	IOMMUFD_CMD_FAULT_QUEUE_ALLOC,             /* 0x8e */
	IOMMUFD_CMD_IOAS_MAP_FILE,                 /* 0x8f */
	IOMMUFD_CMD_VIOMMU_ALLOC,                  /* 0x90 */
	IOMMUFD_CMD_VDEVICE_ALLOC,                 /* 0x91 */
	IOMMUFD_CMD_IOAS_CHANGE_PROCESS,           /* 0x92 */
	IOMMUFD_CMD_VEVENTQ_ALLOC,                 /* 0x93 */
	IOMMUFD_CMD_HW_QUEUE_ALLOC,                /* 0x94 */
};

#define IOMMU_DESTROY         _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)
#define IOMMU_HWPT_ALLOC      _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)
#define IOMMU_HWPT_INVALIDATE _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE)
#define IOMMU_VIOMMU_ALLOC    _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC)
#define IOMMU_VDEVICE_ALLOC   _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_ALLOC)
#define IOMMU_VEVENTQ_ALLOC   _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VEVENTQ_ALLOC)
#define IOMMU_GET_HW_INFO     _IO(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)

/* VFIO device cdev ioctls (include/uapi/linux/vfio.h): type ';' too, numbered from VFIO_BASE = 100.
 * They are made on a VFIO device cdev fd (/dev/vfio/devices/vfioN), not on the iommufd. */
enum {
	VFIO_BASE = 100,
	VFIO_CMD_DEVICE_BIND_IOMMUFD = VFIO_BASE + 18,      /* 118 = 0x76 */
	VFIO_CMD_DEVICE_ATTACH_IOMMUFD_PT = VFIO_BASE + 19, /* 119 = 0x77 */
	VFIO_CMD_DEVICE_DETACH_IOMMUFD_PT = VFIO_BASE + 20, /* 120 = 0x78 */
};

#define VFIO_DEVICE_BIND_IOMMUFD      _IO(IOMMUFD_TYPE, VFIO_CMD_DEVICE_BIND_IOMMUFD)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(IOMMUFD_TYPE, VFIO_CMD_DEVICE_ATTACH_IOMMUFD_PT)
#define VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(IOMMUFD_TYPE, VFIO_CMD_DEVICE_DETACH_IOMMUFD_PT)

/* Swift does not import function-like macros: the request numbers as values, computed by this
 * architecture's <linux/ioctl.h> _IO(). */
static inline unsigned long ciommufd_request(unsigned int command) {
	return _IO(IOMMUFD_TYPE, command);
}

/* ---------------------------------------------------------------------------------------------- */
/* Constants                                                                                      */
/* ---------------------------------------------------------------------------------------------- */

/* enum iommufd_hwpt_alloc_flags */
enum {
	IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0,
	IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1,
	IOMMU_HWPT_FAULT_ID_VALID = 1 << 2,
	IOMMU_HWPT_ALLOC_PASID = 1 << 3,
};

/* enum iommu_hwpt_data_type: the type of iommu_hwpt_alloc.data_uptr's payload. */
enum {
	IOMMU_HWPT_DATA_NONE = 0,
	IOMMU_HWPT_DATA_VTD_S1 = 1,
	IOMMU_HWPT_DATA_ARM_SMMUV3 = 2,
};

/* enum iommu_hwpt_invalidate_data_type: the type of iommu_hwpt_invalidate's entries. */
enum {
	IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0,
	IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 = 1,
};

/* enum iommu_viommu_type */
enum {
	IOMMU_VIOMMU_TYPE_DEFAULT = 0,
	IOMMU_VIOMMU_TYPE_ARM_SMMUV3 = 1,
	IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV = 2,
};

/* enum iommu_veventq_type */
enum {
	IOMMU_VEVENTQ_TYPE_DEFAULT = 0,
	IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 = 1,
	IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV = 2,
};

/* enum iommu_veventq_flag */
enum {
	IOMMU_VEVENTQ_FLAG_LOST_EVENTS = 1u << 0,
};

/* ---------------------------------------------------------------------------------------------- */
/* Structs                                                                                        */
/* ---------------------------------------------------------------------------------------------- */

/* ioctl(IOMMU_DESTROY): destroy any destroyable iommufd object by id. 8 bytes. */
struct iommu_destroy {
	uint32_t size;
	uint32_t id;
};

/*
 * ioctl(IOMMU_VIOMMU_ALLOC): a vIOMMU, a VM's slice of one physical IOMMU. 24 bytes (Linux 6.13).
 * @type: IOMMU_VIOMMU_TYPE_ARM_SMMUV3. @dev_id: a device behind the pSMMU. @hwpt_id: the VM's
 * nest-parent (stage-2) HWPT, which gives the viommu its VMID.
 *
 * Later kernels (with IOMMU_HW_QUEUE_ALLOC, for Tegra241 CMDQV) extend it to 40 bytes:
 *     uint32_t data_len; uint32_t __reserved; ciommufd_aligned_u64 data_uptr;
 * The kernel's minimum size stays offsetofend(out_viommu_id) = 24, so this 24-byte form works on
 * every kernel that has the ioctl; the extension only carries driver data an ARM_SMMUV3 viommu
 * does not take.
 */
struct iommu_viommu_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t type;
	uint32_t dev_id;
	uint32_t hwpt_id;
	uint32_t out_viommu_id;
};

/*
 * ioctl(IOMMU_VDEVICE_ALLOC): a device's virtual instance on a viommu. 24 bytes.
 * @virt_id: the device's ID in the VM: the vSID for ARM SMMUv3. EEXIST for a second vdevice of
 * a device or a virt_id already used on the viommu; EINVAL for a device behind another pSMMU.
 */
struct iommu_vdevice_alloc {
	uint32_t size;
	uint32_t viommu_id;
	uint32_t dev_id;
	uint32_t out_vdevice_id;
	ciommufd_aligned_u64 virt_id;
};

/*
 * ioctl(IOMMU_HWPT_ALLOC): a hardware page table. 48 bytes (fault_id since 6.11; the kernel's
 * minimum is 24). A nested stage-1 HWPT on ARM: @pt_id = the viommu id, @data_type =
 * IOMMU_HWPT_DATA_ARM_SMMUV3, @data_uptr -> struct iommu_hwpt_arm_smmuv3, @data_len = 16.
 */
struct iommu_hwpt_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t dev_id;
	uint32_t pt_id;
	uint32_t out_hwpt_id;
	uint32_t __reserved;
	uint32_t data_type;
	uint32_t data_len;
	ciommufd_aligned_u64 data_uptr;
	uint32_t fault_id;
	uint32_t __reserved2;
};

/* IOMMU_HWPT_DATA_ARM_SMMUV3: words 0 and 1 of the guest's STE, little-endian. 16 bytes.
 * -EIO from IOMMU_HWPT_ALLOC when a disallowed field is set (arm_smmu_validate_vste). */
struct iommu_hwpt_arm_smmuv3 {
	ciommufd_aligned_u64 ste[2];
};

/*
 * ioctl(IOMMU_HWPT_INVALIDATE): a batch of cache invalidations. 32 bytes.
 * On ARM @hwpt_id is a viommu id, @data_type IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, @entry_len 16,
 * @data_uptr -> entry_num struct iommu_viommu_arm_smmuv3_invalidate. @entry_num: in, the number of
 * entries; out (written back on success and failure), the number the kernel reports handled.
 */
struct iommu_hwpt_invalidate {
	uint32_t size;
	uint32_t hwpt_id;
	ciommufd_aligned_u64 data_uptr;
	uint32_t data_type;
	uint32_t entry_len;
	uint32_t entry_num;
	uint32_t __reserved;
};

/* IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3: one 128-bit SMMUv3 command, little-endian. 16 bytes.
 * Accepted: TLBI_NSNH_ALL, TLBI_NH_VA, TLBI_NH_VAA, TLBI_NH_ALL, TLBI_NH_ASID, ATC_INV, CFGI_CD,
 * CFGI_CD_ALL; anything else (and an ATC_INV/CFGI_CD* whose vSID has no vdevice) is -EIO. */
struct iommu_viommu_arm_smmuv3_invalidate {
	ciommufd_aligned_u64 cmd[2];
};

/*
 * ioctl(IOMMU_VEVENTQ_ALLOC): a viommu's event queue (Linux 6.15). 32 bytes. One per (viommu, type)
 * (EEXIST). read() on @out_veventq_fd returns whole events: struct iommufd_vevent_header followed by
 * a struct iommu_vevent_arm_smmuv3, or a lone header flagged IOMMU_VEVENTQ_FLAG_LOST_EVENTS.
 */
struct iommu_veventq_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t viommu_id;
	uint32_t type;
	uint32_t veventq_depth;
	uint32_t out_veventq_id;
	uint32_t out_veventq_fd;
	uint32_t __reserved;
};

/* The header of each vEVENT read from a vEVENTQ fd. 8 bytes. @sequence counts events in
 * [0, INT_MAX], wrapping to 0; a gap of d means d - 1 events were lost. */
struct iommufd_vevent_header {
	uint32_t flags;
	uint32_t sequence;
};

/* IOMMU_VEVENTQ_TYPE_ARM_SMMUV3: one 256-bit SMMUv3 event record, the SID replaced by the vSID,
 * little-endian. 32 bytes. */
struct iommu_vevent_arm_smmuv3 {
	ciommufd_aligned_u64 evt[4];
};

/*
 * ioctl(IOMMU_GET_HW_INFO): the IOMMU's hardware information for a device bound to the iommufd.
 * 40 bytes; the kernel's minimum is offsetofend(__reserved) = 32 (IOCTL_OP in iommufd/main.c), so
 * out_capabilities is written only to callers that pass the whole 40. @data_len in: the size of
 * the buffer at @data_uptr; out: what the driver filled (the kernel zero-fills the rest of the user
 * buffer). @out_data_type: IOMMU_HW_INFO_TYPE_ARM_SMMUV3 (2) for struct iommu_hw_info_arm_smmuv3.
 * @out_capabilities: IOMMU_HW_CAP_* (bit 3 IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED on arm-smmu-v3).
 */
struct iommu_hw_info {
	uint32_t size;
	uint32_t flags;
	uint32_t dev_id;
	uint32_t data_len;
	ciommufd_aligned_u64 data_uptr;
	uint32_t out_data_type;
	uint8_t out_max_pasid_log2;
	uint8_t __reserved[3];
	ciommufd_aligned_u64 out_capabilities;
};

/* enum iommu_hw_info_type */
enum {
	IOMMU_HW_INFO_TYPE_NONE = 0,
	IOMMU_HW_INFO_TYPE_INTEL_VTD = 1,
	IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2,
};

/* enum iommufd_hw_capabilities */
enum {
	IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0,
	IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1,
	IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2,
	IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = 1 << 3,
};

/* IOMMU_HW_INFO_TYPE_ARM_SMMUV3: the SMMU's raw ID registers (arm_smmu_hw_info reads them with
 * readl_relaxed). 40 bytes. */
struct iommu_hw_info_arm_smmuv3 {
	uint32_t flags;
	uint32_t __reserved;
	uint32_t idr[6];
	uint32_t iidr;
	uint32_t aidr;
};

/* ioctl(VFIO_DEVICE_BIND_IOMMUFD) on a VFIO device cdev: binds the device to an iommufd. 16 bytes
 * (later kernels append a token pointer; the minimum stays offsetofend(out_devid) = 16). */
struct vfio_device_bind_iommufd {
	uint32_t argsz;
	uint32_t flags;
	int32_t iommufd;
	uint32_t out_devid;
};

/* ioctl(VFIO_DEVICE_ATTACH_IOMMUFD_PT) on a bound VFIO device cdev: attach (or atomically replace the
 * attachment) to an IOAS or HWPT. 12 bytes (kernels with PASID attach append u32 pasid, used only
 * with VFIO_DEVICE_ATTACH_PASID; the minimum stays offsetofend(pt_id) = 12). @pt_id in: the IOAS or
 * HWPT id; out: the HWPT the device is now attached to. */
struct vfio_device_attach_iommufd_pt {
	uint32_t argsz;
	uint32_t flags;
	uint32_t pt_id;
};

/* ioctl(VFIO_DEVICE_DETACH_IOMMUFD_PT): detach from the current IOAS or HWPT. 8 bytes. */
struct vfio_device_detach_iommufd_pt {
	uint32_t argsz;
	uint32_t flags;
};

/* ---------------------------------------------------------------------------------------------- */
/* Syscall shim                                                                                   */
/* ---------------------------------------------------------------------------------------------- */

/* ioctl(2) is variadic, which Swift cannot call: ioctl(fd, request, argument), retried on EINTR.
 * Returns the ioctl's (non-negative) result, or -errno. */
int ciommufd_ioctl(int fd, unsigned long request, void *argument);

#endif /* CIOMMUFD_H */
