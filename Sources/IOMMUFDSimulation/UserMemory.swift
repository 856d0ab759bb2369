import SystemPackage

/// The model's view of the caller's memory: the argument buffer of an ioctl, and the buffers its
/// `*_uptr` fields point at (the backend and the model share one address space, so a `u64` user
/// pointer is a pointer here).
///
/// The kernel reads user memory with `copy_from_user`, which fails with `EFAULT` on an address it
/// cannot read; the model can only read what it was handed, so a NULL pointer with a length, or an
/// argument struct whose `size` runs past the buffer the caller passed, is `EFAULT`.
enum UserMemory {
    /// `copy_from_user(dst, src, count)`.
    static func read(_ address: UInt64, count: Int) -> Result<[UInt8], Errno> {
        guard count > 0 else { return .success([]) }
        guard let pointer = UnsafeRawPointer(bitPattern: UInt(address)) else { return .failure(.badAddress) }
        return .success(Array(UnsafeRawBufferPointer(start: pointer, count: count)))
    }

    /// `copy_to_user(dst, src, bytes.count)`.
    static func write(_ bytes: [UInt8], to address: UInt64) -> Errno? {
        guard !bytes.isEmpty else { return nil }
        guard let pointer = UnsafeMutableRawPointer(bitPattern: UInt(address)) else { return .badAddress }
        UnsafeMutableRawBufferPointer(start: pointer, count: bytes.count).copyBytes(from: bytes)
        return nil
    }

    /// `copy_struct_from_user(dst, ksize, src, usize)` (`include/linux/uaccess.h`): the first
    /// `min(ksize, usize)` bytes are copied, a shorter user struct is zero-extended, and a longer one
    /// must have only zero bytes past `ksize`, else `E2BIG`.
    static func copyStruct(kernelSize: Int, from user: [UInt8]) -> Result<[UInt8], Errno> {
        if user.count > kernelSize, user[kernelSize...].contains(where: { $0 != 0 }) {
            return .failure(.argListTooLong)
        }
        var kernel = [UInt8](repeating: 0, count: kernelSize)
        let copied = min(kernelSize, user.count)
        kernel.replaceSubrange(0 ..< copied, with: user[0 ..< copied])
        return .success(kernel)
    }

    /// Loads a C struct from the start of a kernel copy, which is at least as long.
    static func load<T>(_ type: T.Type, from bytes: [UInt8]) -> T {
        precondition(bytes.count >= MemoryLayout<T>.size, "kernel copy shorter than \(T.self)")
        return bytes.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }

    /// Stores a C struct at the start of a kernel copy.
    static func store<T>(_ value: T, into bytes: inout [UInt8]) {
        precondition(bytes.count >= MemoryLayout<T>.size, "kernel copy shorter than \(T.self)")
        withUnsafeBytes(of: value) { raw in bytes.replaceSubrange(0 ..< raw.count, with: raw) }
    }

    static func littleEndianUInt64(_ bytes: ArraySlice<UInt8>) -> UInt64 {
        bytes.reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    static func littleEndianBytes(_ value: UInt64) -> [UInt8] {
        (0 ..< 8).map { UInt8(truncatingIfNeeded: value >> UInt64(8 * $0)) }
    }
}
