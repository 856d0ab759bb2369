// The kernel model is written in SimulatedIOMMUFD.swift.
