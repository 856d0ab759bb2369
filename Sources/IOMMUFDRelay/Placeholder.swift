// The relay is written in RelayIOMMUFD.swift.
