/// An SMMUv3 event-queue record: 32 bytes, four little-endian words.
public struct EventRecord: Hashable, Sendable, SMMUWords {
    public static let wordCount = 4
    public var w0: UInt64
    public var w1: UInt64
    public var w2: UInt64
    public var w3: UInt64

    public init(w0: UInt64 = 0, w1: UInt64 = 0, w2: UInt64 = 0, w3: UInt64 = 0) {
        self.w0 = w0
        self.w1 = w1
        self.w2 = w2
        self.w3 = w3
    }

    /// An event of kind `id` for (`streamID`, `substreamID`) at `inputAddress`.
    public init(id: EventID, streamID: StreamID, substreamID: SubstreamID? = nil,
                inputAddress: UInt64 = 0, fetchAddress: UInt64 = 0) {
        self.init()
        self.id = id
        self.streamID = streamID
        if let substreamID {
            self[flag: Field.ssv] = true
            self[Field.substreamID] = UInt64(substreamID)
        }
        w2 = inputAddress
        w3 = fetchAddress
    }

    /// Decodes 32 little-endian bytes.
    public init<C: Collection>(bytes: C) throws(WrongLengthError) where C.Element == UInt8 {
        guard bytes.count == Self.byteCount else {
            throw WrongLengthError(structure: "event record", expected: Self.byteCount, actual: bytes.count)
        }
        self.init()
        load(littleEndian: bytes)
    }

    public func word(_ index: Int) -> UInt64 {
        switch index {
        case 0: return w0
        case 1: return w1
        case 2: return w2
        default: return w3
        }
    }

    public mutating func setWord(_ index: Int, _ value: UInt64) {
        switch index {
        case 0: w0 = value
        case 1: w1 = value
        case 2: w2 = value
        default: w3 = value
        }
    }

    /// Every event field, by word and bit range (`EVTQ_*`).
    public enum Field {
        @inlinable public static var id: BitField { BitField(word: 0, high: 7, low: 0) }
        @inlinable public static var ssv: BitField { BitField(word: 0, bit: 11) }
        @inlinable public static var substreamID: BitField { BitField(word: 0, high: 31, low: 12) }
        @inlinable public static var streamID: BitField { BitField(word: 0, high: 63, low: 32) }
        /// `EVTQ_1_STAG`: the stall tag of a stalled transaction (F_TRANSLATION … F_PERMISSION).
        @inlinable public static var stallTag: BitField { BitField(word: 1, high: 15, low: 0) }
        /// `EVTQ_1_STALL`: the transaction is stalled, awaiting a `CMD_RESUME`.
        @inlinable public static var stall: BitField { BitField(word: 1, bit: 31) }
        /// `EVTQ_1_PnU`: 1 privileged, 0 unprivileged (post-STE override).
        @inlinable public static var privileged: BitField { BitField(word: 1, bit: 33) }
        /// `EVTQ_1_InD`: 1 instruction, 0 data (post-STE override); always 0 for a write.
        @inlinable public static var instruction: BitField { BitField(word: 1, bit: 34) }
        /// `EVTQ_1_RnW`: 1 read, 0 write.
        @inlinable public static var read: BitField { BitField(word: 1, bit: 35) }
        /// `EVTQ_1_S2`: the fault came from stage 2.
        @inlinable public static var stage2: BitField { BitField(word: 1, bit: 39) }
        /// `EVTQ_1_CLASS`: what the faulting access was for (``EventClass``).
        @inlinable public static var eventClass: BitField { BitField(word: 1, high: 41, low: 40) }
        /// `EVTQ_1_TT_READ` (TTRnW): for F_PERMISSION with CLASS = TT, whether the descriptor access that
        /// faulted at stage 2 was a read.
        @inlinable public static var translationTableRead: BitField { BitField(word: 1, bit: 44) }
        /// Input address, `w2`.
        @inlinable public static var inputAddress: BitField { BitField(word: 2, high: 63, low: 0) }
        /// IPA or fetch address, `w3`.
        @inlinable public static var fetchAddress: BitField { BitField(word: 3, high: 63, low: 0) }
    }

    public var id: EventID {
        get { EventID(rawValue: UInt8(self[Field.id])) }
        set { self[Field.id] = UInt64(newValue.rawValue) }
    }
    public var streamID: StreamID {
        get { StreamID(truncatingIfNeeded: self[Field.streamID]) }
        set { self[Field.streamID] = UInt64(newValue) }
    }
    /// The SubstreamID when SSV is set.
    public var substreamID: SubstreamID? {
        self[flag: Field.ssv] ? SubstreamID(truncatingIfNeeded: self[Field.substreamID]) : nil
    }
    public var inputAddress: UInt64 { w2 }
    public var fetchAddress: UInt64 { w3 }

    /// `CLASS` as the kernel decodes it (`arm_smmu_decode_event`: `FIELD_GET(EVTQ_1_CLASS, raw[1])`).
    public var eventClass: EventClass {
        get { EventClass(rawValue: UInt8(self[Field.eventClass])) ?? .reserved }
        set { self[Field.eventClass] = UInt64(newValue.rawValue) }
    }
}

/// An event record's `CLASS` (`EVTQ_1_CLASS`, `w1[41:40]`): the class of the operation that faulted
/// (SMMUv3 §7.3; the kernel names them in `event_class_str`).
public enum EventClass: UInt8, Hashable, Sendable, CaseIterable {
    /// `0b00` CD: a CD fetch.
    case contextDescriptor = 0
    /// `0b01` TTD: a stage-1 translation table fetch (`EVTQ_1_CLASS_TT`).
    case translationTable = 1
    /// `0b10` IN: the input address caused the fault (what every stage-1 fault of a transaction records).
    case input = 2
    /// `0b11`.
    case reserved = 3
}

/// An event record's type, `w0[7:0]`.
public struct EventID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let unsupportedUpstreamTransaction = EventID(rawValue: 0x01) // F_UUT
    public static let badStreamID = EventID(rawValue: 0x02) // C_BAD_STREAMID
    public static let steFetch = EventID(rawValue: 0x03) // F_STE_FETCH
    public static let badSTE = EventID(rawValue: 0x04) // C_BAD_STE
    public static let badATSTranslationRequest = EventID(rawValue: 0x05) // F_BAD_ATS_TREQ
    public static let streamDisabled = EventID(rawValue: 0x06) // F_STREAM_DISABLED
    public static let translationForbidden = EventID(rawValue: 0x07) // F_TRANS_FORBIDDEN
    public static let badSubstreamID = EventID(rawValue: 0x08) // C_BAD_SUBSTREAMID
    public static let cdFetch = EventID(rawValue: 0x09) // F_CD_FETCH
    public static let badCD = EventID(rawValue: 0x0A) // C_BAD_CD
    public static let walkExternalAbort = EventID(rawValue: 0x0B) // F_WALK_EABT
    public static let translation = EventID(rawValue: 0x10) // F_TRANSLATION
    public static let addressSize = EventID(rawValue: 0x11) // F_ADDR_SIZE
    public static let access = EventID(rawValue: 0x12) // F_ACCESS
    public static let permission = EventID(rawValue: 0x13) // F_PERMISSION
    public static let tlbConflict = EventID(rawValue: 0x20) // F_TLB_CONFLICT
    public static let configConflict = EventID(rawValue: 0x21) // F_CFG_CONFLICT
    public static let pageRequest = EventID(rawValue: 0x24) // E_PAGE_REQ

    /// Every event ID the reference lists.
    public static let allDefined: [EventID] = [
        .unsupportedUpstreamTransaction, .badStreamID, .steFetch, .badSTE, .badATSTranslationRequest,
        .streamDisabled, .translationForbidden, .badSubstreamID, .cdFetch, .badCD, .walkExternalAbort,
        .translation, .addressSize, .access, .permission, .tlbConflict, .configConflict, .pageRequest,
    ]

    public var description: String {
        switch rawValue {
        case 0x01: return "F_UUT"
        case 0x02: return "C_BAD_STREAMID"
        case 0x03: return "F_STE_FETCH"
        case 0x04: return "C_BAD_STE"
        case 0x05: return "F_BAD_ATS_TREQ"
        case 0x06: return "F_STREAM_DISABLED"
        case 0x07: return "F_TRANS_FORBIDDEN"
        case 0x08: return "C_BAD_SUBSTREAMID"
        case 0x09: return "F_CD_FETCH"
        case 0x0A: return "C_BAD_CD"
        case 0x0B: return "F_WALK_EABT"
        case 0x10: return "F_TRANSLATION"
        case 0x11: return "F_ADDR_SIZE"
        case 0x12: return "F_ACCESS"
        case 0x13: return "F_PERMISSION"
        case 0x20: return "F_TLB_CONFLICT"
        case 0x21: return "F_CFG_CONFLICT"
        case 0x24: return "E_PAGE_REQ"
        default: return "EVENT(0x\(String(rawValue, radix: 16)))"
        }
    }
}
