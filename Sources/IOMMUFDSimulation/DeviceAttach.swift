import CIOMMUFD
import IOMMUFD
import SMMUv3
import SystemPackage

extension KernelState {
    /// `vfio_device_fops_unl_ioctl` on a VFIO device cdev, for the three iommufd ioctls.
    mutating func vfioIoctl(descriptor: Int32, request: VFIODeviceRequest,
                            argument: UnsafeMutableRawBufferPointer) -> Errno? {
        guard case .vfio(let file)? = descriptors[descriptor] else { return .badFileDescriptor }
        switch request {
        case .bindIOMMUFD:
            return bind(file: file, argument: argument)
        case .attachIOMMUFDPT, .detachIOMMUFDPT:
            // The device ioctls need the device opened through a bind (df->access_granted).
            guard let devID = vfioFiles[file].devID else { return .invalidArgument }
            return request == .attachIOMMUFDPT ? attachPT(devID: devID, argument: argument)
                                               : detachPT(devID: devID, argument: argument)
        default:
            return .inappropriateIOCTLForDevice
        }
    }

    /// `vfio_df_ioctl_bind_iommufd`: creates the `IOMMUFD_OBJ_DEVICE` (`iommufd_device_bind`) and
    /// returns its id in `out_devid`. The `iommufd` field is not checked: the model is one iommufd.
    mutating func bind(file: Int, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        let minimum = MemoryLayout<vfio_device_bind_iommufd>.size
        guard argument.count >= minimum, let base = argument.baseAddress else { return .badAddress }
        var bind = base.loadUnaligned(as: vfio_device_bind_iommufd.self)
        if Int(bind.argsz) < minimum || bind.flags != 0 { return .invalidArgument }
        if vfioFiles[file].devID != nil { return .invalidArgument }
        let hostDevice = vfioFiles[file].hostDevice
        if vfioFiles.contains(where: { $0.hostDevice == hostDevice && $0.devID != nil }) { return .resourceBusy }
        let id = allocateID(.device(DeviceObject(hostDevice: hostDevice)))
        vfioFiles[file].devID = id
        bind.out_devid = id
        base.storeBytes(of: bind, as: vfio_device_bind_iommufd.self)
        return nil
    }

    /// `vfio_df_ioctl_attach_pt` → `vfio_iommufd_physical_attach_ioas` → `iommufd_device_attach`, or
    /// `iommufd_device_replace` once the device is attached: the new attachment replaces the old one
    /// atomically, and a failure leaves the old one in place.
    mutating func attachPT(devID: UInt32, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        let minimum = MemoryLayout<vfio_device_attach_iommufd_pt>.size // offsetofend(pt_id)
        guard argument.count >= minimum, let base = argument.baseAddress else { return .badAddress }
        let attach = base.loadUnaligned(as: vfio_device_attach_iommufd_pt.self)
        if Int(attach.argsz) < minimum { return .invalidArgument }
        let pasidFlag: UInt32 = 1 << 0 // VFIO_DEVICE_ATTACH_PASID
        if attach.flags & ~pasidFlag != 0 { return .invalidArgument }
        // PASID attach (vfio-pci's pasid_attach_ioas) is not modelled.
        if attach.flags & pasidFlag != 0 { return .operationNotSupported }
        if let errno = changePT(devID: devID, ptID: attach.pt_id) { return errno }
        // copy_to_user(&arg->pt_id, …): the HWPT the device is now attached to.
        base.storeBytes(of: attach.pt_id, toByteOffset: 8, as: UInt32.self)
        return nil
    }

    /// `iommufd_device_change_pt`: the pt_id must name a HWPT (an IOAS would get an automatic domain,
    /// which the model does not build: `EOPNOTSUPP`); anything else is `EINVAL`, a missing id `ENOENT`.
    /// Then the driver's attach: `arm_smmu_attach_dev` for a paging HWPT (`EINVAL` for a domain of
    /// another SMMU), `arm_smmu_attach_dev_nested` for a nested one (`EINVAL` for another SMMU's
    /// viommu; from 6.15 `arm_smmu_attach_prepare_vmaster`: an S1_TRANS vSTE needs the device's vdevice
    /// on that viommu, else `ENOENT`, while abort and bypass attach without one).
    mutating func changePT(devID: UInt32, ptID: UInt32) -> Errno? {
        guard let device = device(devID) else { return .noSuchFileOrDirectory }
        guard let pt = objects[ptID] else { return .noSuchFileOrDirectory }
        let devicePSMMU = pSMMU(ofDevice: device)
        // iommufd_device_do_replace: the HWPT the device is on already changes nothing.
        if device.attached == ptID, pSMMU(ofHWPT: ptID) != nil { return nil }
        var vmaster: VirtualMaster?
        switch pt {
        case .paging(let hwpt):
            guard hwpt.pSMMU == devicePSMMU else { return .invalidArgument }
        case .nested(let hwpt):
            guard let viommu = viommu(hwpt.viommu), viommu.pSMMU == devicePSMMU else { return .invalidArgument }
            if kernel.hasEventQueues {
                // iommufd_viommu_get_vdev_id: the first vdevice of this device in xarray order.
                let vsid = viommu.vdevs.sorted(by: { $0.key < $1.key })
                    .first(where: { vdevice($0.value)?.device == devID })?.key
                if let vsid {
                    vmaster = VirtualMaster(viommu: hwpt.viommu, virtualStreamID: StreamID(truncatingIfNeeded: vsid))
                } else {
                    let config = StreamConfig(rawValue: UInt8(StreamTableEntry.Field.config.get(hwpt.steWords.0)))
                    if config != .abort && config != .bypass { return .noSuchFileOrDirectory }
                }
            }
        case .ioas:
            return .operationNotSupported
        default:
            return .invalidArgument
        }
        update(device: devID) {
            $0.attached = ptID
            // arm_smmu_attach_commit_vmaster: the new vmaster, or none for a non-nested domain.
            $0.vmaster = vmaster
        }
        return nil
    }

    /// `vfio_df_ioctl_detach_pt` → `iommufd_device_detach`: the device is left blocked. Detaching a
    /// device that is not attached does nothing and succeeds.
    mutating func detachPT(devID: UInt32, argument: UnsafeMutableRawBufferPointer) -> Errno? {
        let minimum = MemoryLayout<vfio_device_detach_iommufd_pt>.size
        guard argument.count >= minimum, let base = argument.baseAddress else { return .badAddress }
        let detach = base.loadUnaligned(as: vfio_device_detach_iommufd_pt.self)
        if Int(detach.argsz) < minimum { return .invalidArgument }
        let pasidFlag: UInt32 = 1 << 0 // VFIO_DEVICE_DETACH_PASID
        if detach.flags & ~pasidFlag != 0 { return .invalidArgument }
        if detach.flags & pasidFlag != 0 { return .operationNotSupported }
        update(device: devID) {
            $0.attached = nil
            $0.vmaster = nil
        }
        return nil
    }

    /// `close(2)` of a descriptor the model handed out. The last descriptor of a VFIO device file
    /// unbinds the device (`vfio_df_unbind_iommufd` → `iommufd_device_unbind`): it is detached, its
    /// `dev_id` goes away and its vdevice is destroyed with its id tombstoned (6.17's
    /// `iommufd_device_pre_destroy`; the model does this on every version). The descriptor of a vEVENTQ
    /// drops the queue's reference (`iommufd_eventq_fops_release`).
    mutating func close(_ descriptor: Int32) -> Errno? {
        guard let what = descriptors.removeValue(forKey: descriptor) else { return .badFileDescriptor }
        closedDescriptors.append(descriptor)
        switch what {
        case .veventq(let id):
            update(veventq: id) {
                $0.descriptor = nil
                if let readiness = $0.readiness { _ = try? FileDescriptor(rawValue: readiness).close() }
                $0.readiness = nil
            }
        case .vfio(let file):
            let stillOpen = descriptors.values.contains {
                if case .vfio(let other) = $0 { return other == file }
                return false
            }
            guard !stillOpen, let devID = vfioFiles[file].devID else { return nil }
            vfioFiles[file].devID = nil
            for (id, object) in objects {
                guard case .vdevice(let vdevice) = object, vdevice.device == devID else { continue }
                update(viommu: vdevice.viommu) { $0.vdevs[vdevice.virtID] = nil }
                objects[id] = nil
                tombstones.insert(id)
            }
            objects[devID] = nil
        }
        return nil
    }
}
