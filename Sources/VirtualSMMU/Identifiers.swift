import SMMUv3

/// The index of a viommu within one vSMMU: one viommu per physical SMMU, `0 ..< VSMMU.maximumViommus`.
///
/// The router's sets of viommus are 64-bit masks (``ViommuSet``), so a vSMMU fronts at most 64 pSMMUs.
public struct ViommuIndex: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    @inlinable public init(_ value: Int) { self.rawValue = UInt8(truncatingIfNeeded: value) }
    @inlinable public var index: Int { Int(rawValue) }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "viommu\(rawValue)" }
}

/// A set of viommus of one vSMMU, as a 64-bit mask: bit *n* is ``ViommuIndex`` *n*.
public struct ViommuSet: Hashable, Sendable, Sequence, CustomStringConvertible {
    public var mask: UInt64
    @inlinable public init(mask: UInt64 = 0) { self.mask = mask }
    @inlinable public init<S: Sequence>(_ members: S) where S.Element == ViommuIndex {
        self.mask = 0
        for m in members { insert(m) }
    }
    @inlinable public static var empty: ViommuSet { ViommuSet() }
    @inlinable public var isEmpty: Bool { mask == 0 }
    @inlinable public var count: Int { mask.nonzeroBitCount }
    @inlinable public func contains(_ v: ViommuIndex) -> Bool { mask & (1 << UInt64(v.rawValue)) != 0 }
    @inlinable public mutating func insert(_ v: ViommuIndex) { mask |= 1 << UInt64(v.rawValue) }
    @inlinable public mutating func remove(_ v: ViommuIndex) { mask &= ~(1 << UInt64(v.rawValue)) }
    @inlinable public func union(_ o: ViommuSet) -> ViommuSet { ViommuSet(mask: mask | o.mask) }
    @inlinable public func subtracting(_ o: ViommuSet) -> ViommuSet { ViommuSet(mask: mask & ~o.mask) }
    @inlinable public func intersection(_ o: ViommuSet) -> ViommuSet { ViommuSet(mask: mask & o.mask) }

    public struct Iterator: IteratorProtocol {
        @usableFromInline var remaining: UInt64
        @inlinable init(_ mask: UInt64) { remaining = mask }
        @inlinable public mutating func next() -> ViommuIndex? {
            guard remaining != 0 else { return nil }
            let bit = remaining.trailingZeroBitCount
            remaining &= remaining &- 1
            return ViommuIndex(bit)
        }
    }
    @inlinable public func makeIterator() -> Iterator { Iterator(mask) }
    public var description: String { "{" + map { "\($0.rawValue)" }.joined(separator: ",") + "}" }
}

/// A host device as iommufd names it (`dev_id` of a device bound to the iommufd).
public typealias HostDeviceID = UInt32

/// The identity of a stage-1 HWPT (a nested domain) that the vSMMU derived from a linked guest STE.
///
/// One S1 HWPT exists per StreamID whose vSTE translates through stage 1; relinking an STE with other
/// S1 words gives a new HWPT, rewriting only its CDs keeps it.
public struct S1HWPTID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "s1hwpt\(rawValue)" }
}
