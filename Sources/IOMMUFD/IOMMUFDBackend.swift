/// The iommufd pSMMU backend (being built).
