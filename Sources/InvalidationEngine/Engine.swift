/// The vSMMU data path (being built).
