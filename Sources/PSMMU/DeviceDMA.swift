import SMMUv3
import SystemPackage

/// What a simulated pSMMU did with one device access (``SimulatedSMMU/simulateDMA(_:)``).
public enum DMAOutcome: Hashable, Sendable, CustomStringConvertible {
    /// An ATS access served by the device's ATC: the SMMU was not involved.
    case atcHit(ATCEntry)
    /// Translated from a TLB entry already cached. (The SMMU serves a hit whatever the page tables
    /// now say, within the entry's permission: a hit on an unmapped page is a stale entry.)
    case tlbHit(TLBEntry)
    /// Translated after a walk, which filled this TLB entry.
    case tlbFill(TLBEntry)
    /// Stage 1 bypassed, stage 2 only (the device on ``DeviceDomain/bypass`` or
    /// ``DeviceDomain/nestParent``, a bypass vSTE, or S1DSS = bypass): nothing cached in the stage-1 TLB.
    case bypassed
    /// Aborted without an event: the STE's CONFIG is abort (``DeviceDomain/abort``, a CONFIG = abort
    /// vSTE, or a V = 0 vSTE, which `arm_smmu_make_nested_domain_ste` installs as an abort STE). An SMMU
    /// records nothing for CONFIG = abort ("report abort to device, no event recorded", STE.Config in
    /// the SMMUv3 spec), whereas it would record C_BAD_STE for an STE with V = 0, which the kernel
    /// never installs for a device.
    case aborted
    /// Faulted. The record is as the SMMU wrote it, with the physical StreamID; the viommu's event
    /// queue receives it with the vSID (``SimulatedSMMU/takeEvents(viommu:)``).
    case fault(EventRecord)

    /// The TLB entry that translated the access, for a hit or a fill.
    public var tlbEntry: TLBEntry? {
        switch self {
        case .tlbHit(let e), .tlbFill(let e): return e
        default: return nil
        }
    }

    /// The event record of a fault.
    public var event: EventRecord? {
        if case .fault(let record) = self { return record }
        return nil
    }

    public var description: String {
        switch self {
        case .atcHit(let e): return "ATC hit \(e)"
        case .tlbHit(let e): return "TLB hit \(e)"
        case .tlbFill(let e): return "TLB fill \(e)"
        case .bypassed: return "stage-1 bypass"
        case .aborted: return "abort"
        case .fault(let r): return "fault \(r.id)"
        }
    }
}

extension SimulatedSMMUState {
    /// The largest SubstreamID width the simulated SMMU supports (`SMMU_IDR1.SSIDSIZE`).
    static let substreamIDBits: UInt8 = 20

    /// Models one device access, as an SMMUv3 translates it: device ATC (ATS only), then the domain the
    /// device is attached to: for a nested HWPT its STE (config cache, else the HWPT's vSTE), CD (config
    /// cache, else the HWPT's CD table) and the TLB tagged (VMID of the HWPT's viommu, CD ASID), a miss
    /// walking to what `access.walk` says the guest's tables hold; for abort an abort; for bypass and the
    /// nest parent stage 2 only. Faults are reported through ``report(_:hostDeviceID:of:)``, which queues
    /// what the kernel forwards on the device's viommu.
    ///
    /// The device is `tenant`'s: its caches are that tenant's (a tenant without a viommu has none: its
    /// devices are on their nest parents, which cache nothing here).
    mutating func access(_ access: SimulatedDMA, of tenant: TenantID, name: String) throws(BackendError) -> DMAOutcome {
        guard let device = self.device(access.hostDeviceID, of: tenant) else {
            throw BackendError(.invalidArgument, errno: Errno.invalidArgument.rawValue, "device \(access.hostDeviceID) is not behind \(name)")
        }
        let size = access.size
        guard size >= 4096, size.nonzeroBitCount == 1 else {
            throw BackendError(.invalidArgument, errno: Errno.invalidArgument.rawValue, "mapping size 0x\(String(size, radix: 16)) is not a power of two of at least 4 KiB")
        }
        model.dmaAccesses += 1
        let outcome = translate(device: device, space: spaces[tenant] ?? TenantSpace(), access: access,
                                shift: UInt8(size.trailingZeroBitCount))
        switch outcome {
        case .fault(let record):
            model.translationFaults += 1
            // An ATS Translation Request records no event but F_BAD_ATS_TREQ: the device gets a
            // failed completion instead. (The kernel does not forward F_BAD_ATS_TREQ either.)
            if !access.throughATS || record.id == .badATSTranslationRequest {
                report(record, hostDeviceID: access.hostDeviceID, of: tenant)
            }
        case .aborted: model.aborts += 1
        case .bypassed: model.bypasses += 1
        case .atcHit, .tlbHit, .tlbFill: break
        }
        return outcome
    }

    private mutating func translate(device: DeviceRecord, space: TenantSpace, access: SimulatedDMA,
                                    shift: UInt8) -> DMAOutcome {
        let sid = device.streamID
        let substreamID = access.substreamID, address = access.address, throughATS = access.throughATS
        /// An event with the fields SMMUv3 §7.3 gives its type: StreamID always; SSV/SubstreamID for
        /// C_BAD_CD and the faults of a transaction's translation; for F_TRANSLATION, F_ADDR_SIZE,
        /// F_ACCESS and F_PERMISSION (and F_BAD_ATS_TREQ) also the input address and the attributes
        /// `arm_smmu_decode_event` reads: RnW (1 for a read), InD 0 (data: a device's DMA, and InD is 0
        /// for any write), PnU 0 (unprivileged: no STE.PRIVCFG override is modelled), S2 0 and CLASS IN
        /// (a stage-1 fault of the input address), STALL 0 (no stall model). (C_BAD_SUBSTREAMID:
        /// ``badSubstream(_:_:)``.)
        func event(_ id: EventID) -> DMAOutcome {
            switch id {
            case .streamDisabled:
                return .fault(EventRecord(id: id, streamID: sid))
            case .badSTE, .badCD:
                // C_BAD_STE carries SSV and the SubstreamID of the transaction (SMMUv3 §7.3.4; QEMU's
                // `smmuv3_record_event` sets both from `c_bad_ste`), as C_BAD_CD does.
                return .fault(EventRecord(id: id, streamID: sid, substreamID: substreamID))
            default:
                var record = EventRecord(id: id, streamID: sid, substreamID: substreamID, inputAddress: address)
                record[flag: EventRecord.Field.read] = !access.write
                record.eventClass = .input
                return .fault(record)
            }
        }

        if throughATS, let hit = space.atc.entry(streamID: sid, substreamID: substreamID, covering: address) {
            model.atcHits += 1
            return .atcHit(hit)
        }
        let hwptHandle: HWPTHandle
        switch device.domain {
        case .nested(let handle):
            hwptHandle = handle
        case .abort:
            // The viommu's abort HWPT: an abort STE.
            return .aborted
        case .bypass:
            // The viommu's bypass HWPT: an S2-only STE without ATS (the kernel enables ATS only for a
            // translating vSTE with EATS = 1, `arm_smmu_validate_vste`).
            return throughATS ? event(.badATSTranslationRequest) : .bypassed
        case .nestParent:
            // The VM's S2 paging domain (not modelled: stage 2 only, ATS through it included).
            return .bypassed
        }
        guard let hwpt = hwpts[hwptHandle], let vmid = viommus[hwpt.viommu]?.vmid else { return .bypassed }

        // STE
        let ste: StreamTableEntry
        if let cached = space.config.ste(sid) {
            model.steCacheHits += 1
            ste = cached
        } else {
            model.steCacheFills += 1
            ste = hwpt.ste
            space.config.cache(ste: ste, for: sid)
        }
        // The kernel installs a V = 0 vSTE as an abort STE: V = 1, CONFIG = abort, EATS = 0. An abort
        // STE terminates every transaction, ATS requests included, recording nothing.
        let streamConfig = ste.isValid ? ste.config : .abort
        if streamConfig.aborts { return .aborted }
        if throughATS, ste.eats == 0 || streamConfig == .bypass {
            return event(.badATSTranslationRequest)
        }
        guard streamConfig.rawValue & 1 == 1 else {
            // Stage 1 disabled (bypass, or stage 2 only): a SubstreamID is an error.
            if let substreamID { return badSubstream(sid, substreamID) }
            return .bypassed
        }

        // Which CD
        let cdMax = ste.s1CDMax
        if cdMax > 0, ste.s1Fmt.rawValue == 3 || cdMax > Self.substreamIDBits { return event(.badSTE) }
        let index: SubstreamID
        if let substreamID {
            if cdMax == 0 || UInt64(substreamID) >= UInt64(1) << UInt64(cdMax) { return badSubstream(sid, substreamID) }
            if substreamID == 0, ste.s1DSS == .substream0 { return event(.streamDisabled) }
            index = substreamID
        } else if cdMax == 0 {
            index = 0
        } else {
            switch ste.s1DSS {
            case .terminate: return event(.streamDisabled)
            case .bypass: return .bypassed
            case .substream0: index = 0
            default: return event(.badSTE)
            }
        }

        // CD
        let cd: ContextDescriptor
        if let cached = space.config.cd(sid, index) {
            model.cdCacheHits += 1
            cd = cached
        } else {
            let fetched = Int(index) < hwpt.contextDescriptors.count ? hwpt.contextDescriptors[Int(index)] : ContextDescriptor()
            // An invalid CD is reported, not cached.
            guard let _ = fetched.activeASID else { return event(.badCD) }
            model.cdCacheFills += 1
            space.config.cache(cd: fetched, for: sid, index: index)
            cd = fetched
        }

        // TLB. A hit is served whatever the tables now hold (a stale entry is what a missed
        // invalidation looks like), within the permission the walk that filled it found. A miss walks:
        // a fault caches nothing, a read-only descriptor caches a read-only entry for a read.
        let entry: TLBEntry
        let outcome: DMAOutcome
        if let hit = tlb.entry(vmid: vmid, asid: cd.asid, covering: address) {
            model.tlbHits += 1
            if access.write, !hit.writable { return event(.permission) }
            entry = hit
            outcome = .tlbHit(hit)
        } else {
            let writable: Bool
            switch access.walk {
            case .unmapped: return event(.translation)
            case .accessFlagClear: return event(.access)
            case .outputAddressTooLarge: return event(.addressSize)
            case .readOnly:
                if access.write { return event(.permission) }
                writable = false
            case .readWrite:
                writable = true
            }
            model.tlbFills += 1
            entry = tlb.fill(vmid: vmid, asid: cd.asid, covering: address, shift: shift, writable: writable)
            outcome = .tlbFill(entry)
        }
        if throughATS {
            space.atc.fill(streamID: sid, substreamID: substreamID, covering: entry.address,
                     shift: UInt8(entry.size.trailingZeroBitCount))
            model.atcFills += 1
        }
        return outcome
    }

    /// C_BAD_SUBSTREAMID: its SubstreamID field is always valid (no SSV qualifier).
    private func badSubstream(_ sid: StreamID, _ substreamID: SubstreamID) -> DMAOutcome {
        var record = EventRecord(id: .badSubstreamID, streamID: sid)
        record[EventRecord.Field.substreamID] = UInt64(substreamID)
        return .fault(record)
    }
}
