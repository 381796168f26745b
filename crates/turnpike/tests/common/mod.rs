//! What the process-level tests share: the binary, a child process that cannot outlive its
//! test, and reading the status of a raw HTTP answer.

/// The `turnpike` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_turnpike");

/// Kills the child on drop, so a failing test leaves no process behind.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The status code of a raw HTTP/1.1 answer (`HTTP/1.1 200 OK ...`).
pub fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}
