import Testing
import VSMMUConfiguration

/// `[limits] max_connections`, `max_connections_per_uid` and `hello_timeout_ms`.
@Suite struct ConnectionLimitKeyTests {
    @Test func theConnectionKeysAreReadAndDefaultToAThousandTwentyFourTwoFiftySixAndTenSeconds() throws {
        #expect(DaemonConfiguration.embeddedDefault.connectionLimits == ConnectionLimits(
            maximumConnections: 1024, maximumConnectionsPerUser: 256, helloTimeoutMilliseconds: 10_000))
        let configuration = try accepted("""
            [limits]
            max_connections = 300
            max_connections_per_uid = 20
            hello_timeout_ms = 1500
            """)
        #expect(configuration.connectionLimits == ConnectionLimits(maximumConnections: 300, maximumConnectionsPerUser: 20,
                                                                    helloTimeoutMilliseconds: 1500))
    }

    @Test func aPerUIDLimitAboveTheGlobalOneAndOutOfRangeValuesAreRefused() throws {
        let above = try refusal("[limits]\nmax_connections = 10\nmax_connections_per_uid = 11\n")
        #expect(above.key == "limits.max_connections_per_uid")
        #expect(try refusal("[limits]\nmax_connections = 0\n").key == "limits.max_connections")
        #expect(try refusal("[limits]\nhello_timeout_ms = 0\n").key == "limits.hello_timeout_ms")
    }
}
