import SMMUv3
import VSMMUDaemon
import VSMMUProtocol

/// One hostile connection against a running daemon, and what it checks (RELIABILITY.md §4).
///
/// The input is the byte stream a peer sends. It is cut where its own length fields say (a frame per
/// read; whatever is left after a length that runs past the end goes as one last read) and served by an
/// ``InMemoryConnection``, so the real frame decoder and request handlers see exactly these bytes. One
/// rewrite makes deep paths reachable: a vSMMU id field (payload bytes 0-3) holding
/// ``placeholderBase`` + k names the k-th vSMMU this connection created, whose id is random.
///
/// What must hold whatever the bytes, each a ``Outcome/violations`` entry when it does not:
/// - every byte the daemon writes back parses as a sequence of well-formed frames, each a reply type;
/// - each reply decodes with the protocol's own `Response.decode` (the daemon never writes what a client
///   cannot read);
/// - each reply answers a request id the peer sent (or 0, for an error before any header was read);
/// - at most one reply per frame sent, plus one for the end of the stream.
/// A trap in the daemon's code ends the process: libFuzzer and the test report it as such.
package enum HostileInput {
    /// vSMMU id fields from here to `placeholderBase + 7` stand for the connection's own vSMMUs.
    package static let placeholderBase: UInt32 = 0xFFFF_FF00

    /// What one execution saw.
    package struct Outcome: Sendable {
        /// Frames (or trailing pieces) delivered.
        package var frames = 0
        /// Reply frames received.
        package var replies = 0
        /// ERROR replies by code.
        package var errors: [ProtocolErrorCode: Int] = [:]
        /// Whether the daemon ended the connection itself (a fatal framing error).
        package var closedByDaemon = false
        /// Broken invariants, in words; empty when the execution passed.
        package var violations: [String] = []

        package init() {}
    }

    /// Serves `input` as one connection of `server` and checks its replies.
    package static func execute(_ input: UnsafeRawBufferPointer, on server: VSMMUServer,
                                credentials: PeerCredentials?) -> Outcome {
        var outcome = Outcome()
        let connection = InMemoryConnection(server: server, credentials: credentials)
        var replies = ReplyChecker()
        var offset = 0
        let count = input.count
        while offset < count && connection.isOpen {
            var end = count
            if count - offset >= FrameHeader.byteCount {
                let length = Int(readLE32(input, offset))
                if length <= count - offset - FrameHeader.byteCount { end = offset + FrameHeader.byteCount + length }
                replies.sent.insert(readLE64(input, offset + 8))
            }
            var chunk = Array(input[offset..<end])
            if chunk.count >= FrameHeader.byteCount + 4 {
                let field = readLE32(input, offset + FrameHeader.byteCount)
                if field >= placeholderBase, Int(field - placeholderBase) < replies.created.count {
                    let id = replies.created[Int(field - placeholderBase)]
                    withUnsafeBytes(of: id.littleEndian) { for i in 0..<4 { chunk[FrameHeader.byteCount + i] = $0[i] } }
                }
            }
            outcome.frames += 1
            replies.check(connection.send(chunk[...]), into: &outcome)
            offset = end
        }
        outcome.closedByDaemon = !connection.isOpen
        replies.check(connection.close(), into: &outcome)
        do throws(FrameError) { try replies.decoder.finish() } catch {
            outcome.violations.append("the reply stream ends inside a frame: \(error)")
        }
        if outcome.replies > outcome.frames + 1 {
            outcome.violations.append("\(outcome.replies) replies to \(outcome.frames) frames")
        }
        return outcome
    }

    private static func readLE32(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
        var value: UInt32 = 0
        for i in 0..<4 { value |= UInt32(bytes[offset + i]) << (8 * i) }
        return value
    }

    private static func readLE64(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<8 { value |= UInt64(bytes[offset + i]) << (8 * i) }
        return value
    }
}

/// Parses what the daemon wrote back and checks each reply.
private struct ReplyChecker {
    var decoder = FrameDecoder(maximumFrameSize: 1 << 30)
    /// Request ids the peer sent; 0 answers a frame whose header was never read.
    var sent: Set<UInt64> = [0]
    /// The vSMMUs created on this connection, in order.
    var created: [UInt32] = []

    mutating func check(_ bytes: [UInt8], into outcome: inout HostileInput.Outcome) {
        guard !bytes.isEmpty else { return }
        decoder.feed(bytes)
        while true {
            let frame: Frame?
            do throws(FrameError) { frame = try decoder.nextFrame() } catch {
                outcome.violations.append("the daemon wrote a malformed frame: \(error)")
                return
            }
            guard let frame else { return }
            outcome.replies += 1
            if !frame.header.type.isReply {
                outcome.violations.append("the daemon wrote a frame of request type \(frame.header.type)")
            }
            if !sent.contains(frame.header.requestID) {
                outcome.violations.append("a reply to request id \(frame.header.requestID), which was never sent")
            }
            do throws(ProtocolError) {
                switch try Response.decode(frame) {
                case .error(let error): outcome.errors[error.code, default: 0] += 1
                case .createVSMMU(let created): self.created.append(created.vsmmu.rawValue)
                default: break
                }
            } catch {
                outcome.violations.append("a reply the protocol cannot decode (\(frame.header)): \(error)")
            }
        }
    }
}
