/// A check's failure: what was expected and what the kernel did.
struct CheckFailure: Error, CustomStringConvertible {
    var description: String
}

/// Fails the running check with `message` unless `condition` holds.
func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws(CheckFailure) {
    if !condition { throw CheckFailure(description: message()) }
}

/// The suite's runner: each check prints `PASS name` or `FAIL name`, then its details indented; the
/// summary line is `N passed, M failed`.
final class Checks {
    private(set) var passed = 0
    private(set) var failed = 0

    /// Runs one named check. `body` returns the details to print (what the kernel answered); any error
    /// it throws fails the check with that error's text.
    func run(_ name: String, _ body: () throws -> [String]) {
        do {
            let details = try body()
            passed += 1
            print("PASS \(name)")
            for line in details { print("    \(line)") }
        } catch {
            failed += 1
            print("FAIL \(name)")
            print("    \(error)")
        }
    }

    /// Fails a check without running it (its prerequisite failed).
    func skip(_ name: String, because reason: String) {
        failed += 1
        print("FAIL \(name)")
        print("    not run: \(reason)")
    }

    var summary: String { "\(passed) passed, \(failed) failed" }
}

func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }

/// `seconds` with one decimal.
func tenths(_ seconds: Double) -> String {
    let t = Int((seconds * 10).rounded())
    return "\(t / 10).\(t % 10)"
}
