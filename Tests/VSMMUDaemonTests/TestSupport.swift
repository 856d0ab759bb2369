import Dispatch
import Foundation
import Logging
import Testing
import PSMMU
import SMMUv3
import Synchronization
import VSMMUClient
import VSMMUDaemon
import VSMMUProtocol

#if canImport(Glibc)
import Glibc
#endif

private let socketCounter = Atomic<Int>(0)

/// A socket path unique to this process and call, under /tmp.
func uniqueSocketPath(_ label: String) -> String {
    "/tmp/vsmmud-test-\(getpid())-\(socketCounter.add(1, ordering: .relaxed).newValue)-\(label).sock"
}

/// `count` simulated pSMMUs `smmu0`…: pSMMU i has host devices 16·i … 16·i + 15.
func simulatedPSMMUs(_ count: Int) -> [SimulatedSMMU] {
    (0..<count).map { i in
        SimulatedSMMU(name: "smmu\(i)", deviceCount: 16, firstHostDeviceID: UInt32(16 * i), firstStreamID: StreamID(16 * i))
    }
}

/// An in-process server with two simulated pSMMUs on a fresh socket of mode 0666, so that every uid can
/// connect and only the daemon's own checks (allow-list, limits, admin) decide; `configure` adjusts the rest.
/// - Returns: the started server and its socket path.
func openSocketServer(_ label: String,
                      _ configure: (inout VSMMUServer.Configuration) -> Void = { _ in }) throws -> (VSMMUServer, String) {
    let path = uniqueSocketPath(label)
    var logger = Logger(label: "vsmmud-test")
    logger.logLevel = .critical
    var configuration = VSMMUServer.Configuration(socketPath: path, pSMMUs: simulatedPSMMUs(2).map { .simulated($0) },
                                                  socketMode: 0o666)
    configure(&configuration)
    let server = VSMMUServer(configuration: configuration, logger: logger)
    try server.start()
    return (server, path)
}

/// An in-process server on a fresh socket; stopped by `stop()` (call it with `defer`).
struct TestServer {
    let server: VSMMUServer
    let path: String
    let pSMMUs: [SimulatedSMMU]

    init(_ label: String = #function, pSMMUCount: Int = 3, limits: ServerLimits = ServerLimits()) throws {
        let name = String(label.prefix { $0.isLetter || $0.isNumber }.prefix(24))
        path = uniqueSocketPath(name)
        pSMMUs = simulatedPSMMUs(pSMMUCount)
        var logger = Logger(label: "vsmmud-test")
        logger.logLevel = .critical
        server = VSMMUServer(configuration: .init(socketPath: path, pSMMUs: pSMMUs.map { .simulated($0) }, limits: limits),
                             logger: logger)
        try server.start()
    }

    /// A connected client, handshaken unless `hello` is false.
    func client(hello: Bool = true) throws -> VSMMUClient {
        let client = try VSMMUClient(socketPath: path)
        if hello { try client.hello(name: "test") }
        return client
    }

    func stop() { server.stop() }
}

/// A translating guest STE (V=1, CONFIG=S1_TRANS, one CD), like those of the Linux guest in ../shared/traces.
func s1STE(cdTable: UInt64 = 0x4380_4000) -> StreamTableEntry {
    .stage1(contextTable: cdTable)
}

/// A raw frame: header fields as given and `payload`.
func rawFrame(type: UInt16, flags: UInt16 = 0, requestID: UInt64, payloadLength: UInt32? = nil, payload: [UInt8] = []) -> [UInt8] {
    var bytes: [UInt8] = []
    func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    le(payloadLength ?? UInt32(payload.count))
    le(type)
    le(flags)
    le(requestID)
    return bytes + payload
}

extension VSMMUClient {
    /// The error the next reply carries, with its request id (nil when the reply is not an ERROR).
    func receiveError() throws -> (requestID: UInt64, error: ProtocolError?) {
        let (id, response) = try receive()
        if case .error(let e) = response { return (id, e) }
        return (id, nil)
    }
}

/// Blocks until `condition` holds, polling; gives up after `attempts` × 1 ms (the caller then checks the
/// condition once more with #expect). Not a timed assertion: only a bound on waiting for an effect.
func eventually(attempts: Int = 5000, _ condition: () -> Bool) {
    for _ in 0..<attempts where !condition() { usleep(1000) }
}

/// The ERROR a call was refused with; records an issue (and returns nil) when it succeeded or failed
/// otherwise.
func refusal(_ what: String = "", sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) -> ProtocolError? {
    do {
        try body()
        Issue.record("\(what) was accepted", sourceLocation: sourceLocation)
    } catch let error as VSMMUClientError {
        if case .server(let e) = error { return e }
        Issue.record("\(what) failed with \(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("\(what) failed with \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// Runs `body` on its own thread; `join` waits for its result (bounded: a hung body fails the test rather
/// than hanging it; not a speed assertion). The one background-thread helper of these tests: the C
/// client's waiters, the Swift client's queue waiters and event waiters all run on it.
final class Background<T>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: T?
    init(_ body: @escaping @Sendable () -> T) {
        Thread.detachNewThread { [self] in
            result = body()
            done.signal()
        }
    }
    func join(seconds: Double = 60) -> T? { done.wait(timeout: .now() + seconds) == .success ? result : nil }
}

/// A client call waited for on a ``Background`` thread: the value it returned or the error it threw, once
/// joined.
final class BackgroundCall<Value>: @unchecked Sendable {
    private let background: Background<Result<Value, VSMMUClientError>>
    private var result: Result<Value, VSMMUClientError>?
    init(_ body: @escaping @Sendable () throws(VSMMUClientError) -> Value) {
        background = Background { Result(catching: body) }
    }
    /// Waits up to `seconds` for the call to return; whether it did.
    func join(seconds: Double = 60) -> Bool {
        result = background.join(seconds: seconds)
        return result != nil
    }
    /// What it returned, once joined.
    var value: Value? { if case .success(let value)? = result { return value }; return nil }
    /// What it threw, once joined.
    var error: VSMMUClientError? { if case .failure(let error)? = result { return error }; return nil }
}
