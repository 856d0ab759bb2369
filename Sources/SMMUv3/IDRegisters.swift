/// An SMMUv3's identification registers as `IOMMU_GET_HW_INFO` reports them
/// (`struct iommu_hw_info_arm_smmuv3`, read by `arm_smmu_hw_info` with `readl_relaxed`): IDR0-IDR5,
/// IIDR and AIDR, each a 32-bit register value.
///
/// Fields are read and written through the ``Field`` table (`registers[IDRegisters.Field.ril]`,
/// `registers[flag: .ril]`) or the typed accessors (``ril``, ``stallModel``, ``sidSize``, …);
/// ``common(_:)`` is what a vSMMU may advertise when it fronts several pSMMUs.
public struct IDRegisters: Hashable, Sendable {
    /// IDR0 … IDR5, in order; always six values.
    public var idr: [UInt32]
    /// The implementation identification register.
    public var iidr: UInt32
    /// The architecture version register (ArchMajorRev, ArchMinorRev).
    public var aidr: UInt32

    /// Registers from their raw values; `idr` is padded with zeros or cut to six values.
    public init(idr: [UInt32], iidr: UInt32 = 0, aidr: UInt32 = 0) {
        self.idr = Array((idr + Array(repeating: 0, count: 6)).prefix(6))
        self.iidr = iidr
        self.aidr = aidr
    }
}

extension IDRegisters {
    /// What `IOMMU_GET_HW_INFO` returns on QEMU 10.0's and 11.1's emulated SMMUv3 with
    /// `stage=nested` (the real-kernel rig, `../shared/realkernel`): IDR0 0x0d44101b, IDR1 0x02730010,
    /// IDR3 0x1414, IDR5 0x74, AIDR 0x1 (SMMUv3.1). It has no ATS (IDR0.ATS = 0).
    public static let qemuEmulatedSMMUv3 = IDRegisters(
        idr: [0x0d44_101b, 0x0273_0010, 0, 0x0000_1414, 0, 0x0000_0074], iidr: 0, aidr: 0x1)

    /// The simulated pSMMU's default: QEMU's emulated SMMUv3 (``qemuEmulatedSMMUv3``) with ATS
    /// (IDR0 bit 10), because the simulated pSMMU models an ATC and its devices' ATS requests; a pSMMU
    /// without ATS refuses ATC_INV, as the kernel does (EIO).
    public static let simulatedDefault: IDRegisters = {
        var registers = qemuEmulatedSMMUv3
        registers.ats = true
        return registers
    }()
}

// MARK: - Registers

extension IDRegisters {
    /// One of the eight registers, in the order of their offsets in SMMUv3_PAGE_0.
    public enum Register: Int, CaseIterable, Hashable, Sendable, CustomStringConvertible {
        case idr0, idr1, idr2, idr3, idr4, idr5, iidr, aidr

        /// The register's offset from SMMUv3_PAGE_0 (`ARM_SMMU_IDR0` 0x0 … `SMMU_AIDR` 0x1c).
        public var offset: Int { rawValue * 4 }

        /// The spec's name: `"IDR0"`, …, `"IIDR"`, `"AIDR"`.
        public var description: String {
            switch self {
            case .iidr: "IIDR"
            case .aidr: "AIDR"
            default: "IDR\(rawValue)"
            }
        }

        /// The fields declared in this register, lowest bit first.
        public var fields: [Field] { Field.all.filter { $0.register == self }.sorted { $0.bits.low < $1.bits.low } }

        /// The bits of this register some field declares; the others are reserved (RES0).
        public var declaredMask: UInt32 { fields.reduce(0) { $0 | $1.mask } }
    }

    /// A register's 32-bit value. An `idr` shorter than six values (it is a `var`) reads as zeros
    /// past its end and is padded with zeros when written there.
    public subscript(register: Register) -> UInt32 {
        get {
            switch register {
            case .iidr: iidr
            case .aidr: aidr
            default: register.rawValue < idr.count ? idr[register.rawValue] : 0
            }
        }
        set {
            switch register {
            case .iidr: iidr = newValue
            case .aidr: aidr = newValue
            default:
                if idr.count <= register.rawValue { idr += Array(repeating: 0, count: register.rawValue + 1 - idr.count) }
                idr[register.rawValue] = newValue
            }
        }
    }

    /// Reads or writes a field; bits of a new value beyond the field's width are discarded.
    public subscript(field: Field) -> UInt32 {
        get { field.get(self[field.register]) }
        set { self[field.register] = field.set(newValue, in: self[field.register]) }
    }

    /// Reads or writes a one-bit field as a Boolean.
    public subscript(flag field: Field) -> Bool {
        get { self[field] != 0 }
        set { self[field] = newValue ? 1 : 0 }
    }
}

// MARK: - Field table

extension IDRegisters {
    /// A field of one of the 32-bit ID registers: the register, its bit range (a ``BitField`` of
    /// word 0, within bits 31…0: the same `GENMASK`/`FIELD_GET` arithmetic as the 64-bit structures),
    /// the spec's name, and how ``IDRegisters/common(_:)`` combines it across pSMMUs.
    ///
    /// Declared once each, from the SMMUv3 spec (IHI 0070, §6.3.1-6.3.8; QEMU's `smmuv3-internal.h`
    /// `FIELD(IDRn, …)` lists the same positions, the kernel's `arm-smmu-v3.h` the `IDR0_*`, `IDR1_*`,
    /// `IDR3_*`, `IDR5_*` and `IIDR_*` masks it uses). Bits no field declares are reserved.
    public struct Field: Hashable, Sendable, CustomStringConvertible {
        /// The register holding the field.
        public let register: Register
        /// The bit range within the register's 32 bits.
        public let bits: BitField
        /// The spec's name, e.g. `"STALL_MODEL"`.
        public let name: String
        /// How the field of a vSMMU fronting several pSMMUs follows from theirs.
        public let combination: Combination

        init(_ register: Register, _ name: String, high: Int, low: Int, _ combination: Combination) {
            precondition(high < 32, "an ID register is 32 bits")
            self.register = register
            self.bits = BitField(word: 0, high: high, low: low)
            self.name = name
            self.combination = combination
        }

        init(_ register: Register, _ name: String, bit: Int, _ combination: Combination) {
            self.init(register, name, high: bit, low: bit, combination)
        }

        /// The field's mask in place within its register.
        public var mask: UInt32 { UInt32(truncatingIfNeeded: bits.mask) }
        /// The largest value the field holds.
        public var maxValue: UInt32 { UInt32(truncatingIfNeeded: bits.maxValue) }
        /// Whether the field is one bit.
        public var isFlag: Bool { bits.width == 1 }

        /// Extracts the field from a register value.
        public func get(_ value: UInt32) -> UInt32 { UInt32(truncatingIfNeeded: bits.get(UInt64(value))) }

        /// `value` with the field replaced by `newValue` (extra high bits of `newValue` discarded).
        public func set(_ newValue: UInt32, in value: UInt32) -> UInt32 {
            UInt32(truncatingIfNeeded: bits.set(UInt64(newValue), in: UInt64(value)))
        }

        /// `IDR0.STALL_MODEL[25:24]`.
        public var description: String {
            bits.width == 1 ? "\(register).\(name)[\(bits.low)]" : "\(register).\(name)[\(bits.high):\(bits.low)]"
        }

        public static func == (a: Field, b: Field) -> Bool { a.register == b.register && a.bits == b.bits }
        public func hash(into hasher: inout Hasher) {
            hasher.combine(register)
            hasher.combine(bits)
        }
    }

    /// How ``IDRegisters/common(_:)`` combines a field across the pSMMUs behind one vSMMU. The guest
    /// programs one set of structures (CDs, its page tables) that every pSMMU may walk, and sends
    /// commands any of them may execute, so what it is told must hold on each of them.
    public enum Combination: Hashable, Sendable {
        /// A capability, or a bit set of supported options (TTF, the granules): bitwise AND, kept
        /// where every pSMMU has it.
        case everyPSMMU
        /// A restriction (1 means something is *not* supported or is forced: NS1ATS, TERM_MODEL):
        /// bitwise OR, set if any pSMMU has it.
        case anyPSMMU
        /// A size or level whose encoding grows with the capability (checked monotonic for each field
        /// at its declaration): the smallest. A value above `largestDefined` is a reserved encoding
        /// whose meaning is unknown and is read as 0, the least.
        case smallest(largestDefined: UInt32)
        /// TTENDIAN: the endiannesses every pSMMU supports (see ``TTEndian``).
        case translationTableEndianness
        /// STALL_MODEL: the conservative model (see ``StallModel``).
        case stallModel
        /// Not the pSMMUs' to say: always 0 (the vSMMU's queues and tables are the guest's).
        case cleared
        /// Identifies an implementation or is implementation defined: kept only if the whole register
        /// (its declared fields) is the same on every pSMMU, else 0.
        case sameRegisterOrZero
        /// AIDR: taken from the pSMMU of the lowest architecture revision (ArchMajorRev, then
        /// ArchMinorRev), so major and minor always come from the same pSMMU.
        case lowestRevision
    }
}

extension IDRegisters.Field {
    // MARK: IDR0 (§6.3.1)

    /// Stage 2 translation supported, `IDR0[0]` (`IDR0_S2P`).
    public static let s2p = Self(.idr0, "S2P", bit: 0, .everyPSMMU)
    /// Stage 1 translation supported, `IDR0[1]` (`IDR0_S1P`).
    public static let s1p = Self(.idr0, "S1P", bit: 1, .everyPSMMU)
    /// Translation table formats, `IDR0[3:2]` (`IDR0_TTF`): bit 0 VMSAv8-32 LPAE, bit 1 VMSAv8-64, so
    /// a bit set; 0b00 is reserved. Combined as the intersection.
    public static let ttf = Self(.idr0, "TTF", high: 3, low: 2, .everyPSMMU)
    /// Coherent access to translations, structures and queues, `IDR0[4]` (`IDR0_COHACC`).
    public static let cohacc = Self(.idr0, "COHACC", bit: 4, .everyPSMMU)
    /// Broadcast TLB maintenance, `IDR0[5]` (`IDR0_BTM`).
    public static let btm = Self(.idr0, "BTM", bit: 5, .everyPSMMU)
    /// Hardware Access flag / Dirty state updates, `IDR0[7:6]` (`IDR0_HTTU`): 0 none, 1 AF, 2 AF and
    /// dirty, 3 also AF of table descriptors; each level includes the one below: monotonic.
    public static let httu = Self(.idr0, "HTTU", high: 7, low: 6, .smallest(largestDefined: 3))
    /// Dormant hint, `IDR0[8]`.
    public static let dormhint = Self(.idr0, "DORMHINT", bit: 8, .everyPSMMU)
    /// Hypervisor stage 1 contexts (EL2 TLB tags), `IDR0[9]` (`IDR0_HYP`).
    public static let hyp = Self(.idr0, "HYP", bit: 9, .everyPSMMU)
    /// PCIe ATS, `IDR0[10]` (`IDR0_ATS`).
    public static let ats = Self(.idr0, "ATS", bit: 10, .everyPSMMU)
    /// Split-stage (stage 1 only) ATS *not* supported, `IDR0[11]`: a restriction, so set if any pSMMU
    /// sets it (RES0 unless ATS, S1P and S2P).
    public static let ns1ats = Self(.idr0, "NS1ATS", bit: 11, .anyPSMMU)
    /// 16-bit ASIDs, `IDR0[12]` (`IDR0_ASID16`).
    public static let asid16 = Self(.idr0, "ASID16", bit: 12, .everyPSMMU)
    /// Message-signalled interrupts, `IDR0[13]` (`IDR0_MSI`).
    public static let msi = Self(.idr0, "MSI", bit: 13, .everyPSMMU)
    /// WFE wake-up events (CMD_SYNC CS=SEV), `IDR0[14]` (`IDR0_SEV`).
    public static let sev = Self(.idr0, "SEV", bit: 14, .everyPSMMU)
    /// Address translation operations, `IDR0[15]`.
    public static let atos = Self(.idr0, "ATOS", bit: 15, .everyPSMMU)
    /// Page Request Interface, `IDR0[16]` (`IDR0_PRI`).
    public static let pri = Self(.idr0, "PRI", bit: 16, .everyPSMMU)
    /// VMID wildcard matching for TLB invalidation, `IDR0[17]`.
    public static let vmw = Self(.idr0, "VMW", bit: 17, .everyPSMMU)
    /// 16-bit VMIDs, `IDR0[18]` (`IDR0_VMID16`).
    public static let vmid16 = Self(.idr0, "VMID16", bit: 18, .everyPSMMU)
    /// 2-level CD tables, `IDR0[19]` (`IDR0_CD2L`).
    public static let cd2l = Self(.idr0, "CD2L", bit: 19, .everyPSMMU)
    /// Virtual ATOS page interface, `IDR0[20]`.
    public static let vatos = Self(.idr0, "VATOS", bit: 20, .everyPSMMU)
    /// Translation table endianness, `IDR0[22:21]` (`IDR0_TTENDIAN`): see ``IDRegisters/TTEndian``.
    public static let ttEndian = Self(.idr0, "TTENDIAN", high: 22, low: 21, .translationTableEndianness)
    /// Additional ATS/PRI configuration error events, `IDR0[23]`.
    public static let atsRecErr = Self(.idr0, "ATSRECERR", bit: 23, .everyPSMMU)
    /// Stall model, `IDR0[25:24]` (`IDR0_STALL_MODEL`): see ``IDRegisters/StallModel``.
    public static let stallModel = Self(.idr0, "STALL_MODEL", high: 25, low: 24, .stallModel)
    /// Terminate model, `IDR0[26]`: 1 means RAZ/WI termination is *not* supported (CD.A must be 1), a
    /// restriction, so set if any pSMMU sets it.
    public static let termModel = Self(.idr0, "TERM_MODEL", bit: 26, .anyPSMMU)
    /// Multi-level Stream table, `IDR0[28:27]` (`IDR0_ST_LVL`): 0 linear, 1 also 2-level (a superset),
    /// 0b1x reserved: monotonic over the defined values.
    public static let stLevel = Self(.idr0, "ST_LEVEL", high: 28, low: 27, .smallest(largestDefined: 1))
    /// Realm Management Extension features, `IDR0[30]`.
    public static let rmeImpl = Self(.idr0, "RME_IMPL", bit: 30, .everyPSMMU)

    // MARK: IDR1 (§6.3.2)

    /// Max StreamID bits, `IDR1[5:0]` (`IDR1_SIDSIZE`), 0-32: a count of bits, monotonic.
    public static let sidSize = Self(.idr1, "SIDSIZE", high: 5, low: 0, .smallest(largestDefined: 32))
    /// Max SubstreamID bits, `IDR1[10:6]` (`IDR1_SSIDSIZE`), 0-20: monotonic.
    public static let ssidSize = Self(.idr1, "SSIDSIZE", high: 10, low: 6, .smallest(largestDefined: 20))
    /// log2 of the PRI queue's maximum entries, `IDR1[15:11]` (`IDR1_PRIQS`), at most 19: monotonic.
    public static let priqs = Self(.idr1, "PRIQS", high: 15, low: 11, .smallest(largestDefined: 19))
    /// log2 of the Event queue's maximum entries, `IDR1[20:16]` (`IDR1_EVTQS`), at most 19: monotonic.
    public static let evtqs = Self(.idr1, "EVENTQS", high: 20, low: 16, .smallest(largestDefined: 19))
    /// log2 of the Command queue's maximum entries, `IDR1[25:21]` (`IDR1_CMDQS`), at most 19: monotonic.
    public static let cmdqs = Self(.idr1, "CMDQS", high: 25, low: 21, .smallest(largestDefined: 19))
    /// Incoming Data/Instruction, User/Privileged, NS attribute override, `IDR1[26]`.
    public static let attrPermsOvr = Self(.idr1, "ATTR_PERMS_OVR", bit: 26, .everyPSMMU)
    /// Incoming MemType, Shareability and allocation hints override, `IDR1[27]` (`IDR1_ATTR_TYPES_OVR`).
    public static let attrTypesOvr = Self(.idr1, "ATTR_TYPES_OVR", bit: 27, .everyPSMMU)
    /// Preset base registers hold offsets from page 0, `IDR1[28]` (`IDR1_REL`). Cleared: a vSMMU's
    /// queues and tables are the guest's (and Linux's `arm_smmu_device_hw_probe` refuses an SMMU with
    /// REL or a PRESET bit: "embedded implementation not supported").
    public static let rel = Self(.idr1, "REL", bit: 28, .cleared)
    /// Queue base addresses fixed, `IDR1[29]` (`IDR1_QUEUES_PRESET`). Cleared, like ``rel``.
    public static let queuesPreset = Self(.idr1, "QUEUES_PRESET", bit: 29, .cleared)
    /// Stream table base address fixed, `IDR1[30]` (`IDR1_TABLES_PRESET`). Cleared, like ``rel``.
    public static let tablesPreset = Self(.idr1, "TABLES_PRESET", bit: 30, .cleared)
    /// Enhanced Command queue interfaces (SMMU_IDR6), `IDR1[31]`.
    public static let ecmdq = Self(.idr1, "ECMDQ", bit: 31, .everyPSMMU)

    // MARK: IDR2 (§6.3.3)

    /// VATOS page base, in 64 KB units from 0x20000, `IDR2[9:0]`: an address of one pSMMU's page, so
    /// kept only if every pSMMU has the same (RES0 unless VATOS).
    public static let baVATOS = Self(.idr2, "BA_VATOS", high: 9, low: 0, .sameRegisterOrZero)

    // MARK: IDR3 (§6.3.4)

    /// Hierarchical attribute disables (CD.HAD0/1), `IDR3[2]`.
    public static let had = Self(.idr3, "HAD", bit: 2, .everyPSMMU)
    /// Page-based hardware attributes, `IDR3[3]`.
    public static let pbha = Self(.idr3, "PBHA", bit: 3, .everyPSMMU)
    /// EL0/EL1 execute-never distinction at stage 2, `IDR3[4]`.
    public static let xnx = Self(.idr3, "XNX", bit: 4, .everyPSMMU)
    /// PRI auto-generated responses always carry the request's PASID (STE.PPAR ignored), `IDR3[5]`;
    /// 0 (STE.PPAR decides) is the baseline any pSMMU honours.
    public static let pps = Self(.idr3, "PPS", bit: 5, .everyPSMMU)
    /// Memory partitioning and monitoring, `IDR3[7]`.
    public static let mpam = Self(.idr3, "MPAM", bit: 7, .everyPSMMU)
    /// Stage 2 control of memory types (STE.S2FWB), `IDR3[8]` (`IDR3_FWB`).
    public static let fwb = Self(.idr3, "FWB", bit: 8, .everyPSMMU)
    /// Small translation tables, `IDR3[9]`.
    public static let stt = Self(.idr3, "STT", bit: 9, .everyPSMMU)
    /// Range-based invalidation and TLBI level hints, `IDR3[10]` (`IDR3_RIL`).
    public static let ril = Self(.idr3, "RIL", bit: 10, .everyPSMMU)
    /// Break-before-make behaviour level, `IDR3[12:11]` (`IDR3_BBML`): 0, 1, 2, each level relaxing
    /// the one below: monotonic; 3 reserved.
    public static let bbml = Self(.idr3, "BBML", high: 12, low: 11, .smallest(largestDefined: 2))
    /// The E0PD mechanism (CD.E0PD0/1), `IDR3[13]`.
    public static let e0pd = Self(.idr3, "E0PD", bit: 13, .everyPSMMU)
    /// STE.S2PTW == 0 treats Device-mapped stage 1 walks as Normal Non-cacheable, `IDR3[14]`; 0 (such
    /// walks are permitted) is the baseline.
    public static let ptwnnc = Self(.idr3, "PTWNNC", bit: 14, .everyPSMMU)
    /// Device Permission Table (and EATS 0b11), `IDR3[15]`.
    public static let dpt = Self(.idr3, "DPT", bit: 15, .everyPSMMU)
    /// PASID on ATS Translated transactions, `IDR3[16]`.
    public static let pasidtt = Self(.idr3, "PASIDTT", bit: 16, .everyPSMMU)
    /// Enhanced PAN, `IDR3[17]`.
    public static let epan = Self(.idr3, "EPAN", bit: 17, .everyPSMMU)
    /// Stage 1 permission indirections, `IDR3[18]`.
    public static let s1pi = Self(.idr3, "S1PI", bit: 18, .everyPSMMU)
    /// Stage 2 permission indirections, `IDR3[19]`.
    public static let s2pi = Self(.idr3, "S2PI", bit: 19, .everyPSMMU)
    /// Stage 2 permission overlays, `IDR3[20]`.
    public static let s2po = Self(.idr3, "S2PO", bit: 20, .everyPSMMU)
    /// Translation hardening extension, `IDR3[21]`.
    public static let the = Self(.idr3, "THE", bit: 21, .everyPSMMU)
    /// Stage 2 NoTagAccess encodings, `IDR3[22]`.
    public static let mtePerm = Self(.idr3, "MTEPERM", bit: 22, .everyPSMMU)
    /// Stage 1 attribute index extension, `IDR3[23]`.
    public static let aie = Self(.idr3, "AIE", bit: 23, .everyPSMMU)

    // MARK: IDR4 (§6.3.5)

    /// `IDR4[31:0]`, IMPLEMENTATION DEFINED: kept only if every pSMMU has the same.
    public static let idr4ImplementationDefined = Self(.idr4, "IMPLEMENTATION_DEFINED", high: 31, low: 0,
                                                       .sameRegisterOrZero)

    // MARK: IDR5 (§6.3.6)

    /// Output address size, `IDR5[2:0]` (`IDR5_OAS`): 32, 36, 40, 42, 44, 48, 52, 56 bits for 0…7,
    /// increasing: monotonic.
    public static let oas = Self(.idr5, "OAS", high: 2, low: 0, .smallest(largestDefined: 7))
    /// 4 KB granule, `IDR5[4]` (`IDR5_GRAN4K`).
    public static let gran4K = Self(.idr5, "GRAN4K", bit: 4, .everyPSMMU)
    /// 16 KB granule, `IDR5[5]` (`IDR5_GRAN16K`).
    public static let gran16K = Self(.idr5, "GRAN16K", bit: 5, .everyPSMMU)
    /// 64 KB granule, `IDR5[6]` (`IDR5_GRAN64K`).
    public static let gran64K = Self(.idr5, "GRAN64K", bit: 6, .everyPSMMU)
    /// 52-bit addresses with the 4 KB and 16 KB granules (FEAT_LPA2), `IDR5[7]`.
    public static let ds = Self(.idr5, "DS", bit: 7, .everyPSMMU)
    /// 128-bit translation table descriptors, `IDR5[8]`.
    public static let d128 = Self(.idr5, "D128", bit: 8, .everyPSMMU)
    /// Virtual address extend, `IDR5[11:10]` (`IDR5_VAX`): 48, 52, 56 bits for 0…2, increasing:
    /// monotonic; 3 reserved.
    public static let vax = Self(.idr5, "VAX", high: 11, low: 10, .smallest(largestDefined: 2))
    /// Maximum outstanding stalled transactions, `IDR5[31:16]` (`IDR5_STALL_MAX`): a count, monotonic.
    public static let stallMax = Self(.idr5, "STALL_MAX", high: 31, low: 16, .smallest(largestDefined: 0xFFFF))

    // MARK: IIDR (§6.3.7)

    /// JEP106 implementer code, `IIDR[11:0]` (`IIDR_IMPLEMENTER`).
    public static let implementer = Self(.iidr, "Implementer", high: 11, low: 0, .sameRegisterOrZero)
    /// Minor revision, `IIDR[15:12]` (`IIDR_REVISION`).
    public static let revision = Self(.iidr, "Revision", high: 15, low: 12, .sameRegisterOrZero)
    /// Major revision, `IIDR[19:16]` (`IIDR_VARIANT`).
    public static let variant = Self(.iidr, "Variant", high: 19, low: 16, .sameRegisterOrZero)
    /// Product, `IIDR[31:20]` (`IIDR_PRODUCTID`).
    public static let productID = Self(.iidr, "ProductID", high: 31, low: 20, .sameRegisterOrZero)

    // MARK: AIDR (§6.3.8)

    /// Minor architecture revision, `AIDR[3:0]`: 0 SMMUv3.0 … 4 SMMUv3.4.
    public static let archMinorRev = Self(.aidr, "ArchMinorRev", high: 3, low: 0, .lowestRevision)
    /// Major architecture revision, `AIDR[7:4]`: 0 SMMUv3.x.
    public static let archMajorRev = Self(.aidr, "ArchMajorRev", high: 7, low: 4, .lowestRevision)

    /// Every declared field, by register and then bit.
    public static let all: [IDRegisters.Field] = [
        s2p, s1p, ttf, cohacc, btm, httu, dormhint, hyp, ats, ns1ats, asid16, msi, sev, atos, pri, vmw, vmid16,
        cd2l, vatos, ttEndian, atsRecErr, stallModel, termModel, stLevel, rmeImpl,
        sidSize, ssidSize, priqs, evtqs, cmdqs, attrPermsOvr, attrTypesOvr, rel, queuesPreset, tablesPreset, ecmdq,
        baVATOS,
        had, pbha, xnx, pps, mpam, fwb, stt, ril, bbml, e0pd, ptwnnc, dpt, pasidtt, epan, s1pi, s2pi, s2po, the,
        mtePerm, aie,
        idr4ImplementationDefined,
        oas, gran4K, gran16K, gran64K, ds, d128, vax, stallMax,
        implementer, revision, variant, productID,
        archMinorRev, archMajorRev,
    ]
}

// MARK: - Field values

extension IDRegisters {
    /// `IDR0.TTF`: the translation table formats supported at both stages.
    public struct TranslationTableFormats: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// VMSAv8-32 LPAE (TTF bit 0).
        public static let aarch32 = Self(rawValue: 0b01)
        /// VMSAv8-64 (TTF bit 1, `IDR0_TTF_AARCH64`).
        public static let aarch64 = Self(rawValue: 0b10)
    }

    /// `IDR0.TTENDIAN`: the endianness translation table walks may use (`IDR0_TTENDIAN_*`).
    public enum TTEndian: UInt32, Hashable, Sendable, CaseIterable {
        /// 0b00: CD.ENDI and STE.S2ENDI may select either (`IDR0_TTENDIAN_MIXED`).
        case mixed = 0
        /// 0b01: reserved. Linux's `arm_smmu_device_hw_probe` refuses it ("unknown/unsupported TT
        /// endianness!", `-ENXIO`); ``IDRegisters/common(_:)`` gives it when no endianness is common.
        case reserved = 1
        /// 0b10: little-endian only (`IDR0_TTENDIAN_LE`).
        case littleEndian = 2
        /// 0b11: big-endian only (`IDR0_TTENDIAN_BE`).
        case bigEndian = 3

        /// Which endiannesses an encoding allows: (little, big).
        var supports: (little: Bool, big: Bool) {
            switch self {
            case .mixed: (true, true)
            case .littleEndian: (true, false)
            case .bigEndian: (false, true)
            case .reserved: (false, false) // unknown meaning: promises nothing
            }
        }

        init(little: Bool, big: Bool) {
            switch (little, big) {
            case (true, true): self = .mixed
            case (true, false): self = .littleEndian
            case (false, true): self = .bigEndian
            case (false, false): self = .reserved
            }
        }
    }

    /// `IDR0.STALL_MODEL`.
    public enum StallModel: UInt32, Hashable, Sendable, CaseIterable {
        /// 0b00: stall and terminate models both supported (`IDR0_STALL_MODEL_STALL`).
        case stallAndTerminate = 0
        /// 0b01: no stall; STE.S2S and CD.S must be 0, no CMD_RESUME/CMD_STALL_TERM.
        case terminateOnly = 1
        /// 0b10: stall forced; STE.S2S and CD.S must be 1 (`IDR0_STALL_MODEL_FORCE`). Never on an SMMU
        /// of a PCI system.
        case stallForced = 2
        /// 0b11: reserved; ``IDRegisters/common(_:)`` reads it as ``terminateOnly``.
        case reserved = 3
    }

    /// `IDR0.HTTU`.
    public enum HTTU: UInt32, Hashable, Sendable, CaseIterable {
        /// No hardware flag updates.
        case none = 0
        /// Access flag updates (`IDR0_HTTU_ACCESS`).
        case accessFlag = 1
        /// Access flag and dirty state (`IDR0_HTTU_ACCESS_DIRTY`).
        case accessFlagAndDirty = 2
        /// Also the access flag of table descriptors.
        case accessFlagDirtyAndTableAccessFlag = 3
    }

    /// `IDR0.ST_LEVEL`.
    public enum StreamTableLevel: UInt32, Hashable, Sendable, CaseIterable {
        /// Linear stream tables only.
        case linear = 0
        /// 2-level stream tables too (`IDR0_ST_LVL_2LVL`).
        case twoLevel = 1
        /// 0b10, reserved.
        case reserved2 = 2
        /// 0b11, reserved.
        case reserved3 = 3
    }

    /// `IDR5.GRAN4K`, `GRAN16K`, `GRAN64K`: the translation granules.
    public struct Granules: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let size4K = Self(rawValue: 1 << 0)
        public static let size16K = Self(rawValue: 1 << 1)
        public static let size64K = Self(rawValue: 1 << 2)
    }
}

// MARK: - Typed accessors

extension IDRegisters {
    /// Stage 1 translation, `IDR0.S1P`.
    public var s1p: Bool { get { self[flag: .s1p] } set { self[flag: .s1p] = newValue } }
    /// Stage 2 translation, `IDR0.S2P`.
    public var s2p: Bool { get { self[flag: .s2p] } set { self[flag: .s2p] = newValue } }
    /// `IDR0.TTF`.
    public var ttf: TranslationTableFormats {
        get { TranslationTableFormats(rawValue: self[.ttf]) }
        set { self[.ttf] = newValue.rawValue }
    }
    /// `IDR0.COHACC`.
    public var cohacc: Bool { get { self[flag: .cohacc] } set { self[flag: .cohacc] = newValue } }
    /// Broadcast TLB maintenance, `IDR0.BTM`.
    public var btm: Bool { get { self[flag: .btm] } set { self[flag: .btm] = newValue } }
    /// `IDR0.HTTU`.
    public var httu: HTTU {
        get { HTTU(rawValue: self[.httu]) ?? .none }
        set { self[.httu] = newValue.rawValue }
    }
    /// `IDR0.HYP`.
    public var hyp: Bool { get { self[flag: .hyp] } set { self[flag: .hyp] = newValue } }
    /// PCIe ATS, `IDR0.ATS`.
    public var ats: Bool { get { self[flag: .ats] } set { self[flag: .ats] = newValue } }
    /// `IDR0.NS1ATS`: split-stage ATS is *not* supported.
    public var ns1ats: Bool { get { self[flag: .ns1ats] } set { self[flag: .ns1ats] = newValue } }
    /// 16-bit ASIDs, `IDR0.ASID16`.
    public var asid16: Bool { get { self[flag: .asid16] } set { self[flag: .asid16] = newValue } }
    /// `IDR0.MSI`.
    public var msi: Bool { get { self[flag: .msi] } set { self[flag: .msi] = newValue } }
    /// `IDR0.SEV`.
    public var sev: Bool { get { self[flag: .sev] } set { self[flag: .sev] = newValue } }
    /// `IDR0.ATOS`.
    public var atos: Bool { get { self[flag: .atos] } set { self[flag: .atos] = newValue } }
    /// Page Request Interface, `IDR0.PRI`.
    public var pri: Bool { get { self[flag: .pri] } set { self[flag: .pri] = newValue } }
    /// 16-bit VMIDs, `IDR0.VMID16`.
    public var vmid16: Bool { get { self[flag: .vmid16] } set { self[flag: .vmid16] = newValue } }
    /// 2-level CD tables, `IDR0.CD2L`.
    public var cd2l: Bool { get { self[flag: .cd2l] } set { self[flag: .cd2l] = newValue } }
    /// `IDR0.VATOS`.
    public var vatos: Bool { get { self[flag: .vatos] } set { self[flag: .vatos] = newValue } }
    /// `IDR0.TTENDIAN`.
    public var ttEndian: TTEndian {
        get { TTEndian(rawValue: self[.ttEndian]) ?? .reserved }
        set { self[.ttEndian] = newValue.rawValue }
    }
    /// `IDR0.STALL_MODEL`.
    public var stallModel: StallModel {
        get { StallModel(rawValue: self[.stallModel]) ?? .reserved }
        set { self[.stallModel] = newValue.rawValue }
    }
    /// `IDR0.TERM_MODEL`: a terminated transaction always aborts (CD.A must be 1).
    public var termModel: Bool { get { self[flag: .termModel] } set { self[flag: .termModel] = newValue } }
    /// `IDR0.ST_LEVEL`.
    public var stLevel: StreamTableLevel {
        get { StreamTableLevel(rawValue: self[.stLevel]) ?? .linear }
        set { self[.stLevel] = newValue.rawValue }
    }

    /// Max StreamID bits, `IDR1.SIDSIZE`.
    public var sidSize: UInt32 { get { self[.sidSize] } set { self[.sidSize] = newValue } }
    /// Max SubstreamID bits, `IDR1.SSIDSIZE`.
    public var ssidSize: UInt32 { get { self[.ssidSize] } set { self[.ssidSize] = newValue } }
    /// log2 of the PRI queue's maximum entries, `IDR1.PRIQS`.
    public var priqs: UInt32 { get { self[.priqs] } set { self[.priqs] = newValue } }
    /// log2 of the Event queue's maximum entries, `IDR1.EVENTQS`.
    public var evtqs: UInt32 { get { self[.evtqs] } set { self[.evtqs] = newValue } }
    /// log2 of the Command queue's maximum entries, `IDR1.CMDQS`.
    public var cmdqs: UInt32 { get { self[.cmdqs] } set { self[.cmdqs] = newValue } }

    /// Range invalidation and level hints, `IDR3.RIL`.
    public var ril: Bool { get { self[flag: .ril] } set { self[flag: .ril] = newValue } }
    /// Break-before-make level, `IDR3.BBML` (0, 1, 2).
    public var bbml: UInt32 { get { self[.bbml] } set { self[.bbml] = newValue } }
    /// Stage 2 forced write-back, `IDR3.FWB`.
    public var fwb: Bool { get { self[flag: .fwb] } set { self[flag: .fwb] = newValue } }

    /// `IDR5.OAS`, the encoding (0…7).
    public var oas: UInt32 { get { self[.oas] } set { self[.oas] = newValue } }
    /// The output address size in bits `IDR5.OAS` encodes: 32, 36, 40, 42, 44, 48, 52 or 56.
    public var outputAddressBits: Int { [32, 36, 40, 42, 44, 48, 52, 56][Int(oas)] }
    /// `IDR5.VAX`, the encoding (0…2, 3 reserved).
    public var vax: UInt32 { get { self[.vax] } set { self[.vax] = newValue } }
    /// The input (virtual) address size in bits `IDR5.VAX` encodes: 48, 52, 56, or `nil` if reserved.
    public var virtualAddressBits: Int? { vax < 3 ? [48, 52, 56][Int(vax)] : nil }
    /// `IDR5.GRAN4K`, `GRAN16K`, `GRAN64K`.
    public var granules: Granules {
        get {
            var granules: Granules = []
            if self[flag: .gran4K] { granules.insert(.size4K) }
            if self[flag: .gran16K] { granules.insert(.size16K) }
            if self[flag: .gran64K] { granules.insert(.size64K) }
            return granules
        }
        set {
            self[flag: .gran4K] = newValue.contains(.size4K)
            self[flag: .gran16K] = newValue.contains(.size16K)
            self[flag: .gran64K] = newValue.contains(.size64K)
        }
    }
    /// Maximum outstanding stalled transactions, `IDR5.STALL_MAX`.
    public var stallMax: UInt32 { get { self[.stallMax] } set { self[.stallMax] = newValue } }

    /// The architecture revision, `(ArchMajorRev, ArchMinorRev)`: (0, 1) is SMMUv3.1.
    public var architectureRevision: (major: UInt32, minor: UInt32) { (self[.archMajorRev], self[.archMinorRev]) }
}

// MARK: - A vSMMU fronting several pSMMUs

extension IDRegisters {
    /// What a vSMMU may advertise to its guest when it fronts all of `registers` (one per pSMMU),
    /// or `nil` for an empty collection.
    ///
    /// The guest writes one set of structures (CDs, stage 1 tables) for devices that may sit behind
    /// any of the pSMMUs, and its commands reach whichever pSMMU holds the device, so each field must
    /// be true of every pSMMU. (QEMU's accelerated SMMUv3 copies one pSMMU's `IOMMU_GET_HW_INFO`; no
    /// reference combines several, so the rules are ours.) Each field follows its
    /// ``Field/combination``:
    /// - capabilities and option sets (S1P … RME_IMPL, ATTR_*_OVR, ECMDQ, IDR3's flags, TTF, the
    ///   granules, DS, D128): bitwise AND. An empty TTF gives 0b00, reserved, which Linux's
    ///   `arm_smmu_device_hw_probe` refuses ("AArch64 table format not supported!");
    /// - restrictions (NS1ATS, TERM_MODEL): bitwise OR;
    /// - sizes and levels (HTTU, ST_LEVEL, SIDSIZE, SSIDSIZE, PRIQS, EVENTQS, CMDQS, BBML, OAS, VAX,
    ///   STALL_MAX): the smallest; each encoding is monotonic in what it offers (see the fields), and
    ///   a reserved value is read as 0;
    /// - TTENDIAN: the endiannesses all support (mixed = {LE, BE}, LE, BE; reserved = {}); an empty
    ///   intersection gives 0b01, reserved, which `arm_smmu_device_hw_probe` refuses ("unknown/
    ///   unsupported TT endianness!"): no table layout would be valid on every pSMMU;
    /// - STALL_MODEL: terminate only if any pSMMU is terminate only (or reserved); else stall forced
    ///   if any is stall forced (CD.S = 1 is valid on a stall-and-terminate pSMMU, CD.S = 0 is not on
    ///   a stall-forced one); else stall and terminate. A mix of terminate-only and stall-forced pSMMUs
    ///   has no faithful answer (CD.S must be 0 on one, 1 on the other): terminate only is given, and
    ///   CDs of devices behind the stall-forced pSMMU will be refused by it (C_BAD_CD). Stall forced is
    ///   not allowed in PCI systems, so VFIO PCI devices never meet that mix;
    /// - REL, QUEUES_PRESET, TABLES_PRESET: cleared (the guest owns the vSMMU's queues and tables);
    /// - IDR2 (BA_VATOS), IDR4 (implementation defined), IIDR: kept if that whole register is equal on
    ///   every pSMMU, else 0;
    /// - AIDR: the lowest architecture revision;
    /// - reserved bits (no field declares them): cleared.
    ///
    /// Then the dependencies the OR and minimum rules could break are restored:
    /// NS1ATS is RES0 unless ATS, S1P and S2P; BA_VATOS RES0 unless VATOS; STALL_MAX RES0 when terminate
    /// only; DS RES0 without GRAN4K or GRAN16K; VAX ≥ 52 bits needs GRAN64K, or DS (lowered to 48 bits
    /// otherwise); OAS 56 bits needs D128 (else 52), OAS 52 bits GRAN64K, DS or D128 (else 48). The
    /// spec's other dependencies (e.g. PRI ⇒ ATS, ECMDQ ⇒ COHACC and MSI, SIDSIZE ≥ 7 ⇒ ST_LEVEL ≠ 0)
    /// hold by construction when every input obeys them.
    ///
    /// The result is the hardware's common ground, not a policy: `struct iommu_hw_info_arm_smmuv3`
    /// says a VMM should read only ST_LEVEL, TERM_MODEL, STALL_MODEL, TTENDIAN, CD2L, ASID16, TTF,
    /// SIDSIZE, SSIDSIZE, BBML, RIL, VAX and the granules, and that nesting lacks kernel support for
    /// features such as HTTU, BTM and MPAM; masking those is the caller's choice.
    public static func common(_ registers: some Collection<IDRegisters>) -> IDRegisters? {
        guard let first = registers.first else { return nil }
        // AIDR's two fields come from the same pSMMU: the one of the lowest (major, minor) revision.
        var lowest = first
        for candidate in registers {
            let (a, b) = (candidate.architectureRevision, lowest.architectureRevision)
            if (a.major, a.minor) < (b.major, b.minor) { lowest = candidate }
        }
        var result = IDRegisters(idr: [])
        for field in Field.all {
            let values = registers.map { $0[field] }
            switch field.combination {
            case .everyPSMMU:
                result[field] = values.reduce(field.maxValue) { $0 & $1 }
            case .anyPSMMU:
                result[field] = values.reduce(0) { $0 | $1 }
            case .smallest(let largestDefined):
                result[field] = values.map { $0 <= largestDefined ? $0 : 0 }.min() ?? 0
            case .translationTableEndianness:
                let supported = values.map { (TTEndian(rawValue: $0) ?? .reserved).supports }
                result[field] = TTEndian(little: supported.allSatisfy(\.little), big: supported.allSatisfy(\.big)).rawValue
            case .stallModel:
                let models = values.map { StallModel(rawValue: $0) ?? .reserved }
                let model: StallModel = if models.contains(where: { $0 == .terminateOnly || $0 == .reserved }) {
                    .terminateOnly
                } else if models.contains(.stallForced) {
                    .stallForced
                } else {
                    .stallAndTerminate
                }
                result[field] = model.rawValue
            case .cleared:
                result[field] = 0
            case .sameRegisterOrZero:
                let mask = field.register.declaredMask
                let reference = first[field.register] & mask
                let same = registers.allSatisfy { $0[field.register] & mask == reference }
                result[field] = same ? first[field] : 0
            case .lowestRevision:
                result[field] = lowest[field]
            }
        }
        result.restoreDependencies()
        return result
    }

    /// Clears or lowers the fields whose condition the OR and minimum rules of ``common(_:)`` may
    /// have broken (each condition is the spec's, §6.3.1-6.3.6).
    private mutating func restoreDependencies() {
        // NS1ATS: "RES0 when SMMU_IDR0.ATS == 0 or SMMU_IDR0.S1P == 0 or SMMU_IDR0.S2P == 0".
        if !(ats && s1p && s2p) { ns1ats = false }
        // BA_VATOS: reserved (RES0) unless SMMU_IDR0.VATOS == 1.
        if !vatos { self[.baVATOS] = 0 }
        // STALL_MAX: RES0 when STALL_MODEL == 0b01.
        if stallModel == .terminateOnly { stallMax = 0 }
        // DS: RES0 if both GRAN4K and GRAN16K are 0.
        if !granules.contains(.size4K) && !granules.contains(.size16K) { self[flag: .ds] = false }
        let ds = self[flag: .ds], d128 = self[flag: .d128]
        // VAX >= 0b01 needs GRAN64K, or DS with GRAN4K or GRAN16K (DS, now, implies the latter).
        if vax >= 1 && !(granules.contains(.size64K) || ds) { vax = 0 }
        // OAS 56 bits needs D128; OAS 52 bits needs GRAN64K, DS or D128.
        if oas == 7 && !d128 { oas = 6 }
        if oas == 6 && !(granules.contains(.size64K) || ds || d128) { oas = 5 }
    }
}

// MARK: - Description

extension IDRegisters: CustomStringConvertible {
    /// Each register's value and the fields set in it, e.g.
    /// `IDR0=0x0d44101b [S2P S1P TTF=AArch64 COHACC … ST_LEVEL=2-level] IDR1=0x02730010 [SIDSIZE=16 …] …`;
    /// reserved bits that are set are shown as `RES0=0x…`.
    public var description: String {
        Register.allCases.map { register in
            let value = self[register]
            var parts = register.fields.filter { self[$0] != 0 }.map { field in
                field.isFlag ? field.name : "\(field.name)=\(describe(field))"
            }
            let reserved = value & ~register.declaredMask
            if reserved != 0 { parts.append("RES0=0x\(String(reserved, radix: 16))") }
            let hex = String(value, radix: 16)
            let shown = "\(register)=0x\(String(repeating: "0", count: 8 - hex.count))\(hex)"
            return parts.isEmpty ? shown : "\(shown) [\(parts.joined(separator: " "))]"
        }.joined(separator: " ")
    }

    /// A multi-bit field's value as the spec names it where that is clearer than the number.
    private func describe(_ field: Field) -> String {
        let value = self[field]
        switch field {
        case .ttf:
            return switch value { case 1: "AArch32"; case 2: "AArch64"; case 3: "AArch32+AArch64"; default: "reserved" }
        case .ttEndian:
            return switch ttEndian { case .mixed: "mixed"; case .littleEndian: "LE"; case .bigEndian: "BE"; case .reserved: "reserved" }
        case .stallModel:
            return switch stallModel {
            case .stallAndTerminate: "stall+terminate"
            case .terminateOnly: "terminate"
            case .stallForced: "stall-forced"
            case .reserved: "reserved"
            }
        case .httu:
            return switch httu { case .none: "none"; case .accessFlag: "AF"; case .accessFlagAndDirty: "AF+dirty"; case .accessFlagDirtyAndTableAccessFlag: "AF+dirty+table-AF" }
        case .stLevel:
            return stLevel == .twoLevel ? "2-level" : "reserved(\(value))"
        case .oas:
            return "\(outputAddressBits)-bit"
        case .vax:
            return virtualAddressBits.map { "\($0)-bit" } ?? "reserved"
        case .idr4ImplementationDefined, .implementer, .productID, .baVATOS:
            return "0x\(String(value, radix: 16))"
        default:
            return "\(value)"
        }
    }
}

// MARK: - What a vSMMU advertises to its guest

extension IDRegisters {
    /// The fields a VMM may take from `IOMMU_GET_HW_INFO`, as the kernel's UAPI documents
    /// `struct iommu_hw_info_arm_smmuv3` ("Only the following fields should be used"): IDR0 ST_LEVEL,
    /// TERM_MODEL, STALL_MODEL, TTENDIAN, CD2L, ASID16, TTF; IDR1 SIDSIZE, SSIDSIZE; IDR3 BBML, RIL;
    /// IDR5 VAX and the granules. To these vsmmud adds IDR5.OAS (the issue's "OAS is the smallest",
    /// which the kernel's authors proposed adding to that list) and IDR0.ATS, which the kernel calls a
    /// per-device property: a pSMMU without it refuses ATC_INV (the rig's kernel: EIO), so it is
    /// advertised only where every pSMMU has it. Every other bit is the raw hardware's and is not
    /// forwarded, notably BTM, HTTU and MPAM, which "are not currently supported by the kernel for
    /// nesting": a guest told of BTM would skip the TLB invalidations vsmmud must forward.
    public static let forwardedToGuests: [Field] = [
        .stLevel, .termModel, .stallModel, .ttEndian, .cd2l, .asid16, .ttf, .ats,
        .sidSize, .ssidSize,
        .bbml, .ril,
        .vax, .gran64K, .gran16K, .gran4K, .oas,
    ]

    /// The registers a vSMMU advertises to its guest when it fronts pSMMUs with these registers: the
    /// fields of ``forwardedToGuests``, each combined over every pSMMU by ``common(_:)``; S1P and COHACC
    /// set, because the kernel says a VMM should assume them ("S1P should be assumed to be true if a
    /// NESTED HWPT can be created"; "VFIO/iommufd only support platforms with COHACC"); the other IDR
    /// bits 0. IIDR and AIDR are ``common(_:)``'s (kept when every pSMMU agrees; the lowest revision).
    /// `nil` for an empty collection.
    public static func advertised(_ registers: some Collection<IDRegisters>) -> IDRegisters? {
        guard let common = common(registers) else { return nil }
        var guest = IDRegisters(idr: [], iidr: common.iidr, aidr: common.aidr)
        for field in forwardedToGuests { guest[field] = common[field] }
        guest[flag: .s1p] = true
        guest[flag: .cohacc] = true
        // DS and D128 are not forwarded, so what only they allow goes: a 52-bit VA or OA needs GRAN64K.
        if !guest[flag: .gran64K] {
            guest[.vax] = 0
            guest[.oas] = min(guest[.oas], 5) // 48 bits
        }
        return guest
    }
}
