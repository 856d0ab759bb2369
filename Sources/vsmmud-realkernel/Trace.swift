#if canImport(Glibc)
import Glibc
#endif
import SMMUv3
import VSMMUTestSupport

/// A recorded guest stream (VSMMUTestSupport's reader), its read errors as check failures.
typealias Trace = RecordedGuestTrace

extension RecordedGuestTrace {
    init(checking directory: String, name: String) throws(CheckFailure) {
        do { self = try RecordedGuestTrace(directory: directory, name: name) } catch {
            throw CheckFailure(description: error.description)
        }
    }
}

/// The whole of a file.
func readFile(_ path: String) throws -> [UInt8] {
    guard let file = fopen(path, "rb") else {
        throw CheckFailure(description: "cannot open \(path): \(String(cString: strerror(errno)))")
    }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n > 0 { bytes.append(contentsOf: chunk[..<n]) }
        if n < chunk.count { break }
    }
    return bytes
}
