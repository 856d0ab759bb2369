import Glibc
import SystemPackage
import Testing
@testable import VSMMUSystem

/// The system layer: the one EINTR retry, the typed wrappers' results and errors, the one thread type and
/// the one lock type (this suite also runs under ThreadSanitizer: `scripts/test`).
@Suite("System layer")
struct SystemLayerTests {
    /// A counter only `Locked` guards: under ThreadSanitizer, an unguarded access would be reported.
    final class Counter: @unchecked Sendable { var value = 0 }

    @Test func lockedSerialisesEveryAccessSoNoIncrementIsLostAcrossThreads() throws {
        let counter = Locked(0)
        let threads = try (0..<4).map { _ in
            try OSThread { for _ in 0..<10_000 { counter.withLock { $0 += 1 } } }
        }
        for thread in threads { thread.join() }
        #expect(counter.withLock { $0 } == 40_000)
    }

    @Test func lockedHoldsANoncopyableValueAndHandsItOutOnlyInsideTheLock() {
        struct Owned: ~Copyable, Sendable { var fd: Int32 }
        let locked = Locked(Owned(fd: 7))
        #expect(locked.withLock { $0.fd } == 7)
        locked.withLock { $0.fd = 9 }
        #expect(locked.withLock { $0.fd } == 9)
    }

    @Test func osThreadRunsItsBodyAndJoinWaitsForIt() throws {
        let ran = Locked(false)
        let thread = try OSThread { ran.withLock { $0 = true } }
        thread.join()
        #expect(ran.withLock { $0 })
    }

    /// `syscall` retries a call interrupted by a signal (`EINTR`) rather than failing: a blocking `read`
    /// on a pipe is interrupted by a signal handler installed without `SA_RESTART`, and still returns the
    /// byte written after the interruption.
    @Test func syscallRetriesACallThatASignalInterrupted() throws {
        let (readEnd, writeEnd) = try SystemCall.pipe()
        defer { close(readEnd); close(writeEnd) }
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0 // no SA_RESTART: the read fails with EINTR
        var previous = sigaction()
        #expect(sigaction(SIGUSR2, &action, &previous) == 0)
        defer { sigaction(SIGUSR2, &previous, nil) }

        let result = Locked<Result<Int, Errno>?>(nil)
        let readerID = Locked<pthread_t?>(nil)
        let reader = try OSThread {
            // The thread inherits its creator's signal mask, which the test runner may block SIGUSR2 in.
            var unblocked = sigset_t()
            sigemptyset(&unblocked)
            sigaddset(&unblocked, SIGUSR2)
            pthread_sigmask(SIG_UNBLOCK, &unblocked, nil)
            readerID.withLock { $0 = pthread_self() }
            var byte: UInt8 = 0
            let outcome = Result { () throws(Errno) -> Int in try syscall { Glibc.read(readEnd, &byte, 1) } }
            result.withLock { $0 = outcome.map { $0 == 1 ? Int(byte) : -1 } }
        }
        // Interrupt the reader while it blocks, several times, then let it read.
        var spins = 0
        while readerID.withLock({ $0 }) == nil && spins < 1_000_000 { spins += 1 }
        let id = try #require(readerID.withLock { $0 })
        for _ in 0..<5 {
            usleep(2_000)
            pthread_kill(id, SIGUSR2)
        }
        var byte: UInt8 = 42
        #expect(try syscall { Glibc.write(writeEnd, &byte, 1) } == 1)
        reader.join()
        #expect(try result.withLock { $0 }?.get() == 42)
    }

    @Test func syscallThrowsTheErrnoOfAFailedCall() {
        #expect(throws: Errno.badFileDescriptor) { try syscall { Glibc.close(-1) } }
        #expect(throws: Errno.noSuchFileOrDirectory) { try SystemCall.lstat("/nonexistent/vsmmud-test") }
    }

    @Test func pipeEndsAreCloseOnExecAndSetNonBlockingMakesAReadAnswerEAGAIN() throws {
        let (readEnd, writeEnd) = try SystemCall.pipe()
        defer { close(readEnd); close(writeEnd) }
        #expect(fcntl(readEnd, F_GETFD) & FD_CLOEXEC != 0 && fcntl(writeEnd, F_GETFD) & FD_CLOEXEC != 0)
        try SystemCall.setNonBlocking(readEnd)
        var byte: UInt8 = 0
        #expect(throws: Errno.resourceTemporarilyUnavailable) { try syscall { Glibc.read(readEnd, &byte, 1) } }
    }

    @Test func pollReturnsZeroAtItsTimeoutAndOneWhenADescriptorIsReady() throws {
        let (readEnd, writeEnd) = try SystemCall.pipe()
        defer { close(readEnd); close(writeEnd) }
        var fds = [pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)]
        #expect(try SystemCall.poll(&fds, timeoutMilliseconds: 1) == 0)
        var byte: UInt8 = 1
        _ = try syscall { Glibc.write(writeEnd, &byte, 1) }
        #expect(try SystemCall.poll(&fds, timeoutMilliseconds: -1) == 1)
        #expect(fds[0].revents & Int16(POLLIN) != 0)
    }

    @Test func aUnixPathLongerThanSunPathIsENAMETOOLONG() {
        #expect(throws: Errno.fileNameTooLong) { try SystemCall.unixAddress(String(repeating: "x", count: 200)) }
        #expect((try? SystemCall.unixAddress("/tmp/ok.sock")) != nil)
    }

    /// bind, listen, connect, accept and send through the wrappers; a receive timeout then makes a read
    /// with nothing to read fail with `EAGAIN` instead of blocking.
    @Test func socketWrappersConnectSendAndBoundAReceiveByItsTimeout() throws {
        let path = "/tmp/vsmmud-system-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(path) }
        let address = try SystemCall.unixAddress(path)
        let listener = try SystemCall.unixStreamSocket()
        defer { close(listener) }
        try SystemCall.bind(listener, to: address)
        try SystemCall.listen(listener, backlog: 4)
        #expect(throws: Errno.addressInUse) {
            let second = try SystemCall.unixStreamSocket()
            defer { close(second) }
            try SystemCall.bind(second, to: address)
        }
        let client = try SystemCall.unixStreamSocket()
        defer { close(client) }
        try SystemCall.connect(client, to: address)
        let server = try SystemCall.accept(listener)
        defer { close(server) }
        let bytes: [UInt8] = [1, 2, 3]
        #expect(try bytes.withUnsafeBytes { raw in try SystemCall.send(client, raw) } == 3)
        var received = [UInt8](repeating: 0, count: 3)
        #expect(received.withUnsafeMutableBytes { recv(server, $0.baseAddress, 3, Int32(MSG_WAITALL)) } == 3)
        #expect(received == bytes)
        try SystemCall.setReceiveTimeout(server, microseconds: 1_000)
        #expect(throws: Errno.resourceTemporarilyUnavailable) {
            try syscall { received.withUnsafeMutableBytes { recv(server, $0.baseAddress, 1, 0) } }
        }
        // A peer that closed: send fails with EPIPE, and no SIGPIPE kills the test process.
        close(server)
        var failed: Errno?
        for _ in 0..<3 {
            let sent = bytes.withUnsafeBytes { raw in Result { () throws(Errno) -> Int in try SystemCall.send(client, raw) } }
            if case .failure(let error) = sent {
                failed = error
                break
            }
        }
        #expect(failed == .brokenPipe || failed == .connectionReset)
    }
}
