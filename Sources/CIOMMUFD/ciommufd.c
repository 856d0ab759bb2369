#include "ciommufd.h"

#include <errno.h>
#include <stddef.h>
#include <sys/ioctl.h>

int ciommufd_ioctl(int fd, unsigned long request, void *argument) {
	int result;
	do {
		result = ioctl(fd, request, argument);
	} while (result < 0 && errno == EINTR);
	return result < 0 ? -errno : result;
}

/* The kernel's layouts (include/uapi/linux/iommufd.h, Linux 6.13+), checked at compile time.
 * IOMMUFDTests pins the same numbers from Swift. */
#define CIOMMUFD_AT(type, field, offset) \
	_Static_assert(offsetof(struct type, field) == (offset), #type "." #field " at " #offset)
#define CIOMMUFD_SIZE(type, bytes) \
	_Static_assert(sizeof(struct type) == (bytes), "sizeof(struct " #type ") == " #bytes)

CIOMMUFD_SIZE(iommu_destroy, 8);
CIOMMUFD_AT(iommu_destroy, size, 0);
CIOMMUFD_AT(iommu_destroy, id, 4);

CIOMMUFD_SIZE(iommu_viommu_alloc, 24);
CIOMMUFD_AT(iommu_viommu_alloc, size, 0);
CIOMMUFD_AT(iommu_viommu_alloc, flags, 4);
CIOMMUFD_AT(iommu_viommu_alloc, type, 8);
CIOMMUFD_AT(iommu_viommu_alloc, dev_id, 12);
CIOMMUFD_AT(iommu_viommu_alloc, hwpt_id, 16);
CIOMMUFD_AT(iommu_viommu_alloc, out_viommu_id, 20);

CIOMMUFD_SIZE(iommu_vdevice_alloc, 24);
CIOMMUFD_AT(iommu_vdevice_alloc, size, 0);
CIOMMUFD_AT(iommu_vdevice_alloc, viommu_id, 4);
CIOMMUFD_AT(iommu_vdevice_alloc, dev_id, 8);
CIOMMUFD_AT(iommu_vdevice_alloc, out_vdevice_id, 12);
CIOMMUFD_AT(iommu_vdevice_alloc, virt_id, 16);

CIOMMUFD_SIZE(iommu_hwpt_alloc, 48);
CIOMMUFD_AT(iommu_hwpt_alloc, size, 0);
CIOMMUFD_AT(iommu_hwpt_alloc, flags, 4);
CIOMMUFD_AT(iommu_hwpt_alloc, dev_id, 8);
CIOMMUFD_AT(iommu_hwpt_alloc, pt_id, 12);
CIOMMUFD_AT(iommu_hwpt_alloc, out_hwpt_id, 16);
CIOMMUFD_AT(iommu_hwpt_alloc, __reserved, 20);
CIOMMUFD_AT(iommu_hwpt_alloc, data_type, 24);
CIOMMUFD_AT(iommu_hwpt_alloc, data_len, 28);
CIOMMUFD_AT(iommu_hwpt_alloc, data_uptr, 32);
CIOMMUFD_AT(iommu_hwpt_alloc, fault_id, 40);
CIOMMUFD_AT(iommu_hwpt_alloc, __reserved2, 44);

CIOMMUFD_SIZE(iommu_hwpt_arm_smmuv3, 16);
CIOMMUFD_AT(iommu_hwpt_arm_smmuv3, ste, 0);

CIOMMUFD_SIZE(iommu_hwpt_invalidate, 32);
CIOMMUFD_AT(iommu_hwpt_invalidate, size, 0);
CIOMMUFD_AT(iommu_hwpt_invalidate, hwpt_id, 4);
CIOMMUFD_AT(iommu_hwpt_invalidate, data_uptr, 8);
CIOMMUFD_AT(iommu_hwpt_invalidate, data_type, 16);
CIOMMUFD_AT(iommu_hwpt_invalidate, entry_len, 20);
CIOMMUFD_AT(iommu_hwpt_invalidate, entry_num, 24);
CIOMMUFD_AT(iommu_hwpt_invalidate, __reserved, 28);

CIOMMUFD_SIZE(iommu_viommu_arm_smmuv3_invalidate, 16);
CIOMMUFD_AT(iommu_viommu_arm_smmuv3_invalidate, cmd, 0);

CIOMMUFD_SIZE(iommu_veventq_alloc, 32);
CIOMMUFD_AT(iommu_veventq_alloc, size, 0);
CIOMMUFD_AT(iommu_veventq_alloc, flags, 4);
CIOMMUFD_AT(iommu_veventq_alloc, viommu_id, 8);
CIOMMUFD_AT(iommu_veventq_alloc, type, 12);
CIOMMUFD_AT(iommu_veventq_alloc, veventq_depth, 16);
CIOMMUFD_AT(iommu_veventq_alloc, out_veventq_id, 20);
CIOMMUFD_AT(iommu_veventq_alloc, out_veventq_fd, 24);
CIOMMUFD_AT(iommu_veventq_alloc, __reserved, 28);

CIOMMUFD_SIZE(iommufd_vevent_header, 8);
CIOMMUFD_AT(iommufd_vevent_header, flags, 0);
CIOMMUFD_AT(iommufd_vevent_header, sequence, 4);

CIOMMUFD_SIZE(iommu_vevent_arm_smmuv3, 32);
CIOMMUFD_AT(iommu_vevent_arm_smmuv3, evt, 0);

CIOMMUFD_SIZE(iommu_hw_info, 40);
CIOMMUFD_AT(iommu_hw_info, size, 0);
CIOMMUFD_AT(iommu_hw_info, flags, 4);
CIOMMUFD_AT(iommu_hw_info, dev_id, 8);
CIOMMUFD_AT(iommu_hw_info, data_len, 12);
CIOMMUFD_AT(iommu_hw_info, data_uptr, 16);
CIOMMUFD_AT(iommu_hw_info, out_data_type, 24);
CIOMMUFD_AT(iommu_hw_info, out_max_pasid_log2, 28);
CIOMMUFD_AT(iommu_hw_info, __reserved, 29);
CIOMMUFD_AT(iommu_hw_info, out_capabilities, 32);

CIOMMUFD_SIZE(iommu_hw_info_arm_smmuv3, 40);
CIOMMUFD_AT(iommu_hw_info_arm_smmuv3, flags, 0);
CIOMMUFD_AT(iommu_hw_info_arm_smmuv3, idr, 8);
CIOMMUFD_AT(iommu_hw_info_arm_smmuv3, iidr, 32);
CIOMMUFD_AT(iommu_hw_info_arm_smmuv3, aidr, 36);

CIOMMUFD_SIZE(vfio_device_bind_iommufd, 16);
CIOMMUFD_AT(vfio_device_bind_iommufd, argsz, 0);
CIOMMUFD_AT(vfio_device_bind_iommufd, flags, 4);
CIOMMUFD_AT(vfio_device_bind_iommufd, iommufd, 8);
CIOMMUFD_AT(vfio_device_bind_iommufd, out_devid, 12);

CIOMMUFD_SIZE(vfio_device_attach_iommufd_pt, 12);
CIOMMUFD_AT(vfio_device_attach_iommufd_pt, argsz, 0);
CIOMMUFD_AT(vfio_device_attach_iommufd_pt, flags, 4);
CIOMMUFD_AT(vfio_device_attach_iommufd_pt, pt_id, 8);

CIOMMUFD_SIZE(vfio_device_detach_iommufd_pt, 8);
CIOMMUFD_AT(vfio_device_detach_iommufd_pt, argsz, 0);
CIOMMUFD_AT(vfio_device_detach_iommufd_pt, flags, 4);
