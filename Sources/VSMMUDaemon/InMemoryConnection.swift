import SMMUv3

/// A connection served without a socket: the bytes its peer would send go in through ``send(_:)`` and
/// what the daemon answers comes back, on the caller's thread. The real frame decoder, request handlers,
/// journal and teardown run, exactly as for a socket's ``Connection``; only the transport is memory. No fd
/// comes with any frame, so FD_ATTACHED finds none, as when a peer sends none.
///
/// For the hostile-input test and the fuzz target (RELIABILITY.md §4): an execution costs no syscall of
/// the transport and no thread hand-over.
package final class InMemoryConnection {
    private let server: VSMMUServer
    private let id: UInt64
    private let recorder = ReplyRecorder()
    private var connection: Connection
    private var commands: [Command] = []
    /// Whether the daemon still serves it: `false` after a fatal framing error or ``close()``.
    package private(set) var isOpen = true
    private var finished = false

    package init(server: VSMMUServer, credentials: PeerCredentials?) {
        self.server = server
        id = server.registerInMemoryConnection(userID: credentials?.userID)
        connection = Connection(id: id, fd: -1, credentials: credentials, server: server, output: .memory(recorder))
    }

    /// Delivers `bytes` as one read would and returns the replies they produced (possibly none, or part
    /// of a frame's worth of bytes held back by the decoder until the rest arrives).
    package func send(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        if isOpen { isOpen = connection.process(bytes, commands: &commands) }
        if !isOpen { end() }
        return takeReplies()
    }

    /// The peer closes its side: the daemon answers TRUNCATED_FRAME if a frame was left unfinished, then
    /// tears the connection's vSMMUs down. Returns the last replies.
    @discardableResult
    package func close() -> [UInt8] {
        if isOpen {
            connection.endOfStream()
            isOpen = false
        }
        end()
        return takeReplies()
    }

    deinit { if !finished { server.finish(connection: id, fd: -1) } }

    private func end() {
        guard !finished else { return }
        finished = true
        server.finish(connection: id, fd: -1)
    }

    private func takeReplies() -> [UInt8] {
        defer { recorder.bytes.removeAll(keepingCapacity: true) }
        return recorder.bytes
    }
}
