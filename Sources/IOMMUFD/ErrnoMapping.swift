import PSMMU
import SMMUv3
import SystemPackage

extension BackendError.Kind {
    /// The kind of a failed control-path ioctl (`IOMMU_VIOMMU_ALLOC`, `IOMMU_VDEVICE_ALLOC`,
    /// `IOMMU_HWPT_ALLOC`, `IOMMU_VEVENTQ_ALLOC`, `IOMMU_DESTROY`), by the errno conventions of
    /// `include/uapi/linux/iommufd.h`:
    ///
    /// | errno | kind | what the kernel means |
    /// |---|---|---|
    /// | `EEXIST` | ``BackendError/Kind/alreadyExists`` | a second vdevice for a device, a vSID reused on a viommu, a second vEVENTQ |
    /// | `EINVAL` | ``BackendError/Kind/invalidArgument`` | a field is wrong: a device behind another pSMMU, a parent that is not a nest parent |
    /// | `EBUSY` | ``BackendError/Kind/busy`` | the object is still in use (a viommu with vdevices, HWPTs or a vEVENTQ) |
    /// | `ENOENT` | ``BackendError/Kind/unknownHandle`` | no object with that id |
    /// | `ENODEV`, `ENOTTY`, `EOPNOTSUPP`, `E2BIG` | ``BackendError/Kind/unavailable`` | the kernel or the pSMMU lacks the feature: no such ioctl (`ENOTTY`), no nesting support (`EOPNOTSUPP`), a struct newer than the kernel (`E2BIG`) |
    /// | anything else (`ENOMEM`, `EFAULT`, `EIO`, …) | ``BackendError/Kind/failed`` | |
    ///
    /// `IOMMU_HWPT_ALLOC`'s `EIO` ("invalid STE data") is mapped by the backend itself, to
    /// ``BackendError/Kind/invalidArgument``.
    public init(iommufdErrno errno: Errno) {
        switch errno {
        case .fileExists: self = .alreadyExists
        case .invalidArgument: self = .invalidArgument
        case .resourceBusy: self = .busy
        case .noSuchFileOrDirectory: self = .unknownHandle
        // On Linux ENOTSUP and EOPNOTSUPP are the same number (95).
        case .operationNotSupportedByDevice, .inappropriateIOCTLForDevice, .notSupported, .notSupportedOnSocket,
             .argListTooLong:
            self = .unavailable
        default: self = .failed
        }
    }
}

extension CommandQueueError {
    /// The command-queue error a guest must observe when `IOMMU_HWPT_INVALIDATE` on a viommu fails with
    /// `errno`, at the command ``HWPTInvalidateOutcome`` points at.
    ///
    /// | errno | CERROR | why |
    /// |---|---|---|
    /// | `EIO` | `CERROR_ILL` | `arm_vsmmu_convert_user_cmd` refused that exact command: an opcode a viommu does not take, or a vSID with no vdevice. A Linux guest replaces it with a CMD_SYNC and resumes. |
    /// | `ETIMEDOUT` | `CERROR_ATC_INV_SYNC` | a chunk's CMD_SYNC timed out: the hardware did not complete it, in practice an ATC_INV the device did not answer. The guest retries. |
    /// | `EFAULT` | `CERROR_ABT` | the kernel could not read the commands: the SMMU's "abort on command fetch". The guest retries. |
    /// | anything else | `CERROR_ABT` | refused before any command was read (`ENOMEM`, `EINVAL`, `ENOENT`, `EOPNOTSUPP`, …): nothing is wrong with the command, so the guest must retry it rather than skip it, which ABT makes it do. |
    ///
    /// Only `CERROR_ILL` makes a guest skip a command, so it is reserved for `EIO`, the one errno that
    /// names an illegal command; every other failure maps to an error the guest retries from.
    public init(iommufdInvalidationErrno errno: Errno) {
        switch errno {
        case .ioError: self = .illegal
        case .timedOut: self = .atcInvalidationSync
        default: self = .abort
        }
    }
}
