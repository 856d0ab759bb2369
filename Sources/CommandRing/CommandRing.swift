/// The lock-free per-viommu command ring (being built).
