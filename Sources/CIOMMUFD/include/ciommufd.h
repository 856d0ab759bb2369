// iommufd UAPI declarations
