// TEMPORARY until the h-idr branch lands (it replaces this with the field-by-field intersection).
extension IDRegisters {
    public static func common(_ registers: some Collection<IDRegisters>) -> IDRegisters? { registers.first }
}
