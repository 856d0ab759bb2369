import Glibc
import SystemPackage
import Testing
@testable import VSMMUSystem

/// The epoll wrappers: registration by token, level-triggered readiness, deletion, errors.
@Suite struct EpollTests {
    @Test func aWatchedDescriptorIsReportedWithItsTokenWhileReadableAndNotOnceDeleted() throws {
        let epoll = try SystemCall.epollCreate()
        defer { _ = close(epoll) }
        let event = try SystemCall.eventFD()
        defer { _ = close(event) }
        try SystemCall.epollAdd(epoll, event, token: 0xFEED_0000_0001)

        #expect(try SystemCall.epollWait(epoll, timeoutMilliseconds: 0).isEmpty, "nothing to read yet")
        try SystemCall.writeEvent(event)
        let ready = try SystemCall.epollWait(epoll, timeoutMilliseconds: 0)
        #expect(ready.map(\.token) == [0xFEED_0000_0001])
        #expect(ready.first?.isReadable == true && ready.first?.isBroken == false)
        #expect(try SystemCall.epollWait(epoll, timeoutMilliseconds: 0).count == 1, "level-triggered: still readable")

        try SystemCall.epollDelete(epoll, event)
        #expect(try SystemCall.epollWait(epoll, timeoutMilliseconds: 0).isEmpty)
    }

    @Test func aHangUpIsReportedBroken() throws {
        let epoll = try SystemCall.epollCreate()
        defer { _ = close(epoll) }
        let (read, write) = try SystemCall.pipe()
        defer { _ = close(read) }
        try SystemCall.epollAdd(epoll, read, token: 7)
        _ = close(write)

        let ready = try SystemCall.epollWait(epoll, timeoutMilliseconds: 0)
        #expect(ready.map(\.token) == [7])
        #expect(ready.first?.isBroken == true)
    }

    @Test func theWrappersThrowTheErrnoOfAFailedCall() throws {
        let epoll = try SystemCall.epollCreate()
        defer { _ = close(epoll) }
        #expect(throws: Errno.badFileDescriptor) { try SystemCall.epollAdd(epoll, -1, token: 1) }
        let event = try SystemCall.eventFD()
        defer { _ = close(event) }
        #expect(throws: Errno.noSuchFileOrDirectory) { try SystemCall.epollDelete(epoll, event) }
        #expect(throws: Errno.badFileDescriptor) { _ = try SystemCall.epollWait(-1, timeoutMilliseconds: 0) }
    }
}
