import SMMUv3
import VSMMUProtocol

/// `vsmmud-cli list KIND`: the whole list (``DaemonSession/list(_:vsmmu:pageSize:)``) as a table or JSON.
public enum ListOutput {
    /// The kind named on the command line: `vsmmus`, `viommus`, `devices`, `hwpts`, `asids`.
    public static func kind(named name: String) -> ListKind? {
        ListKind.all.first { $0.description.lowercased() == name.lowercased() }
    }

    /// The entries as a table, or `"no <kind>"`; ends in a newline.
    public static func table(_ entries: ListEntries) -> String {
        guard entries.count > 0 else { return "no \(entries.kind.description.lowercased())\n" }
        var table: TextTable
        switch entries {
        case .vsmmus(let list):
            table = TextTable(["vSMMU", "name", "owner pid", "owner uid", "viommus", "devices", "HWPTs", "ASIDs"],
                              alignments: [.right, .left, .right, .right, .right, .right, .right, .right])
            for e in list {
                table.append([String(e.vsmmu.rawValue), e.name.isEmpty ? "-" : e.name, String(e.ownerProcessID), String(e.ownerUserID),
                              String(e.viommuCount), String(e.deviceCount), String(e.hwptCount), String(e.asidCount)])
            }
        case .viommus(let list):
            table = TextTable(["vSMMU", "viommu", "pSMMU", "backend viommu", "devices"],
                              alignments: [.right, .right, .left, .right, .right])
            for e in list {
                table.append([String(e.vsmmu.rawValue), String(e.viommu), e.pSMMU, String(e.backendViommuID), String(e.deviceCount)])
            }
        case .devices(let list):
            table = TextTable(["vSMMU", "vSID", "viommu", "host device", "S1 HWPT", "STE"])
            for e in list {
                table.append([String(e.vsmmu.rawValue), hex(e.streamID), String(e.viommu), String(e.hostDeviceID),
                              e.s1HWPT.map { String($0) } ?? "-", e.steLinked ? "linked" : "-"])
            }
        case .hwpts(let list):
            table = TextTable(["vSMMU", "S1 HWPT", "vSID", "viommu", "backend HWPT", "ASIDs"])
            for e in list {
                table.append([String(e.vsmmu.rawValue), String(e.s1HWPT), hex(e.streamID), String(e.viommu),
                              String(e.backendHWPTID), String(e.asidCount)])
            }
        case .asids(let list):
            table = TextTable(["vSMMU", "ASID", "HWPTs", "viommus", "retiring on"], alignments: [.right, .right, .right, .left, .left])
            for e in list {
                table.append([String(e.vsmmu.rawValue), String(e.asid), String(e.hwptCount),
                              Format.indexList(mask: e.targetMask), Format.indexList(mask: e.retiringMask)])
            }
        }
        return table.render()
    }

    /// The entries as one JSON document `{"kind": …, "total": …, "entries": […]}` (``ListDocument``).
    public static func json(_ entries: ListEntries) -> String {
        switch entries {
        case .vsmmus(let list):
            return JSONOutput.encode(ListDocument(kind: "vsmmus", entries: list.map {
                VSMMUItem(vsmmu: $0.vsmmu.rawValue, name: $0.name, ownerPID: $0.ownerProcessID, ownerUID: $0.ownerUserID,
                          viommus: $0.viommuCount, devices: $0.deviceCount, hwpts: $0.hwptCount, asids: $0.asidCount)
            }))
        case .viommus(let list):
            return JSONOutput.encode(ListDocument(kind: "viommus", entries: list.map {
                ViommuItem(vsmmu: $0.vsmmu.rawValue, viommu: $0.viommu, pSMMU: $0.pSMMU, backendViommuID: $0.backendViommuID,
                           devices: $0.deviceCount)
            }))
        case .devices(let list):
            return JSONOutput.encode(ListDocument(kind: "devices", entries: list.map {
                DeviceItem(vsmmu: $0.vsmmu.rawValue, vsid: $0.streamID, viommu: $0.viommu, hostDeviceID: $0.hostDeviceID,
                           s1HWPT: $0.s1HWPT, steLinked: $0.steLinked)
            }))
        case .hwpts(let list):
            return JSONOutput.encode(ListDocument(kind: "hwpts", entries: list.map {
                HWPTItem(vsmmu: $0.vsmmu.rawValue, s1HWPT: $0.s1HWPT, vsid: $0.streamID, viommu: $0.viommu,
                         backendHWPTID: $0.backendHWPTID, asids: $0.asidCount)
            }))
        case .asids(let list):
            return JSONOutput.encode(ListDocument(kind: "asids", entries: list.map {
                ASIDItem(vsmmu: $0.vsmmu.rawValue, asid: $0.asid, hwpts: $0.hwptCount,
                         viommus: indices($0.targetMask), retiringOn: indices($0.retiringMask))
            }))
        }
    }

    /// The set bits of `mask`, ascending.
    public static func indices(_ mask: UInt64) -> [Int] { (0..<64).filter { mask & (1 << UInt64($0)) != 0 } }

    private static func hex(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }
}

/// `list --json`: `{"kind": "devices", "total": 2, "entries": [...]}`.
public struct ListDocument<Entry: Codable & Hashable & Sendable>: Codable, Hashable, Sendable {
    public var kind: String
    public var total: Int
    public var entries: [Entry]
    public init(kind: String, entries: [Entry]) {
        self.kind = kind
        self.total = entries.count
        self.entries = entries
    }
}

/// A vSMMU in `list vsmmus --json`.
public struct VSMMUItem: Codable, Hashable, Sendable {
    public var vsmmu: UInt32, name: String, ownerPID: UInt32, ownerUID: UInt32, viommus: UInt32, devices: UInt32,
               hwpts: UInt32, asids: UInt32
    enum CodingKeys: String, CodingKey {
        case vsmmu, name, ownerPID = "owner_pid", ownerUID = "owner_uid", viommus, devices, hwpts, asids
    }
}

/// A viommu in `list viommus --json`.
public struct ViommuItem: Codable, Hashable, Sendable {
    public var vsmmu: UInt32, viommu: UInt32, pSMMU: String, backendViommuID: UInt32, devices: UInt32
    enum CodingKeys: String, CodingKey {
        case vsmmu, viommu, pSMMU = "psmmu", backendViommuID = "backend_viommu_id", devices
    }
}

/// A device in `list devices --json`; `s1_hwpt` absent when none serves it.
public struct DeviceItem: Codable, Hashable, Sendable {
    public var vsmmu: UInt32, vsid: UInt32, viommu: UInt32, hostDeviceID: UInt32, s1HWPT: UInt32?, steLinked: Bool
    enum CodingKeys: String, CodingKey {
        case vsmmu, vsid, viommu, hostDeviceID = "host_device_id", s1HWPT = "s1_hwpt", steLinked = "ste_linked"
    }
}

/// A stage-1 HWPT in `list hwpts --json`.
public struct HWPTItem: Codable, Hashable, Sendable {
    public var vsmmu: UInt32, s1HWPT: UInt32, vsid: UInt32, viommu: UInt32, backendHWPTID: UInt32, asids: UInt32
    enum CodingKeys: String, CodingKey {
        case vsmmu, s1HWPT = "s1_hwpt", vsid, viommu, backendHWPTID = "backend_hwpt_id", asids
    }
}

/// An ASID in `list asids --json`: the viommus its TLBIs reach, and those among them where it is only
/// retiring, as index lists.
public struct ASIDItem: Codable, Hashable, Sendable {
    public var vsmmu: UInt32, asid: UInt16, hwpts: UInt16, viommus: [Int], retiringOn: [Int]
    enum CodingKeys: String, CodingKey {
        case vsmmu, asid, hwpts, viommus, retiringOn = "retiring_on"
    }
}
