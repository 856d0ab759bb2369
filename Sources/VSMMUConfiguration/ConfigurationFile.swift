#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a configuration file's text: the only I/O of this module.
enum ConfigurationFile {
    /// Larger files are refused: a configuration is a few kilobytes.
    static let maximumSize = 1 << 20

    /// The UTF-8 text of the file at `path`.
    /// - Throws: ``ConfigurationError`` without a line when the file cannot be opened or read (the
    ///   message holds the errno text), is not a regular file or is too large; with the line and column
    ///   of the first bad byte when it is not UTF-8.
    static func contents(ofPath path: String) throws(ConfigurationError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw failure(path, "cannot open", errno: errno) }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw failure(path, "cannot stat", errno: errno) }
        guard (status.st_mode & S_IFMT) == S_IFREG else {
            throw ConfigurationError(file: path, message: "not a regular file")
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw failure(path, "cannot read", errno: errno)
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[..<count])
            guard bytes.count <= maximumSize else {
                throw ConfigurationError(file: path, message: "larger than \(maximumSize) bytes: not a configuration file")
            }
        }
        return try decodeUTF8(bytes, file: path)
    }

    static func failure(_ path: String, _ what: String, errno code: Int32) -> ConfigurationError {
        ConfigurationError(file: path, message: "\(what): \(String(cString: strerror(code))) (errno \(code))")
    }

    /// `bytes` as a String, refusing invalid UTF-8 (TOML documents are UTF-8) at its line and column.
    static func decodeUTF8(_ bytes: [UInt8], file: String) throws(ConfigurationError) -> String {
        if let text = String(validating: bytes, as: UTF8.self) { return text }
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        var line = 1, column = 1
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let scalar):
                if scalar == "\n" { line += 1; column = 1 } else { column += 1 }
            case .emptyInput:
                return String(decoding: bytes, as: UTF8.self) // not reached: validation failed above
            case .error:
                throw ConfigurationError(file: file, line: line, column: column,
                                         message: "not valid UTF-8 (a TOML document must be UTF-8)")
            }
        }
    }
}
