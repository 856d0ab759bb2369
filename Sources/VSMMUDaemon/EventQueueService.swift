import VSMMUProtocol

/// One vSMMU's event queue the daemon writes into (PROTOCOL.md §9): the VMM's memfd mapped and its call
/// eventfd.
enum EventQueueService {
    /// The fd-store names of its two descriptors (PROTOCOL.md §9).
    static func storeNames(_ vsmmu: VSMMUID) -> (memory: String, call: String) {
        let prefix = "events-" + String(vsmmu.rawValue, radix: 16)
        return (prefix + "-memory", prefix + "-call")
    }
}
