import SMMUv3

/// Which event records the kernel forwards from the physical event queue to a viommu's vEVENTQ.
///
/// `arm_smmu_evtq_thread` hands every record to `arm_smmu_handle_event`, which takes only the types
/// below (anything else is `-EOPNOTSUPP` and only logged by `arm_smmu_dump_event`); of those, a record
/// with STALL set goes to the IOPF path (`iommu_report_device_fault`), and a record reaches
/// `arm_vmaster_report_event` (vSID substituted, then `iommufd_viommu_report_event`) only when the
/// device has a vmaster (it is attached to a nested domain of a viommu where it has a vdevice) and S2
/// is clear (a stage-2 fault is the host's business).
public enum ViommuEventForwarding {
    /// The types `arm_smmu_handle_event` accepts: `EVT_ID_BAD_STE_CONFIG` (C_BAD_STE, 0x04),
    /// `EVT_ID_STREAM_DISABLED_FAULT` (F_STREAM_DISABLED, 0x06), `EVT_ID_BAD_SUBSTREAMID_CONFIG`
    /// (C_BAD_SUBSTREAMID, 0x08), `EVT_ID_BAD_CD_CONFIG` (C_BAD_CD, 0x0A), and `EVT_ID_TRANSLATION_FAULT`,
    /// `_ADDR_SIZE_FAULT`, `_ACCESS_FAULT`, `_PERMISSION_FAULT` (F_TRANSLATION, F_ADDR_SIZE, F_ACCESS,
    /// F_PERMISSION, 0x10–0x13). F_BAD_ATS_TREQ (0x05), F_WALK_EABT (0x0B) and the rest are not.
    public static let forwardedIDs: [EventID] = [
        .badSTE, .streamDisabled, .badSubstreamID, .badCD, .translation, .addressSize, .access, .permission,
    ]

    /// `EVTQ_1_STALL`: the transaction is stalled, waiting for a RESUME (``EventRecord/Field/stall``).
    public static let stall = EventRecord.Field.stall
    /// `EVTQ_1_S2`: the fault came from stage 2 (``EventRecord/Field/stage2``).
    public static let stage2 = EventRecord.Field.stage2

    /// Indexed by event type: whether the type is in ``forwardedIDs``.
    private static let forwardedByID: [Bool] = (0...255).map { raw in
        forwardedIDs.contains(EventID(rawValue: UInt8(raw)))
    }

    /// Whether the kernel forwards `record` to the vEVENTQ of a device that has a vmaster: a type of
    /// ``forwardedIDs``, STALL clear and S2 clear.
    public static func isForwarded(_ record: EventRecord) -> Bool {
        forwardedByID[Int(record.id.rawValue)] && !record[flag: stall] && !record[flag: stage2]
    }
}
