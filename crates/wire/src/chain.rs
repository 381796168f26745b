//! Call chains: a function calling another through the platform.
//!
//! A guest's outgoing request to `http://turnpike/PATH` (see `turnpike_worker::calls`) is sent
//! by its worker to the gateway as an ordinary HTTP request for `PATH`, with three headers
//! that say who is calling:
//!
//! - [`CALLER_CLASS_HEADER`]: the class the caller runs at (its name);
//! - [`DEPTH_HEADER`]: the callee's depth in the chain (the caller's + 1);
//! - [`TOKEN_HEADER`]: the cluster's chain token, a secret shared by the gateway and the
//!   workers (`turnpike up` makes a fresh one at every start), so that an outside client
//!   cannot claim a caller's class for itself. The gateway refuses caller headers without
//!   the right token (403), and strips all three before the callee sees the request; the
//!   worker drops any of them a guest wrote and sets its own, so guests neither forge nor
//!   see them.
//!
//! Trust boundary: the token proves a request came from a worker. Workers' and shards' RPC
//! ports are not authenticated, so they must be reachable only inside the cluster (they are
//! on loopback in `turnpike up`).
//!
//! The gateway runs the callee at `max(caller class, the route's class)` and answers a request
//! deeper than its `max_chain_depth` with `508 Loop Detected` and the reason, which the
//! caller's guest sees as its call's response. The caller waits for its call blocked on I/O,
//! so it holds no core slot meanwhile (only its memory).
//!
//! Why through the gateway rather than straight to a shard: the callee is found by the same
//! routes as outside traffic (and, with tenants, authorized the same way), and every
//! invocation, chained or not, enters the platform at one place.

/// The caller's class (by name), set by the worker for a call from a function.
pub const CALLER_CLASS_HEADER: &str = "x-turnpike-caller-class";
/// The callee's depth in the call chain.
pub const DEPTH_HEADER: &str = "x-turnpike-depth";
/// The cluster's chain token, proving the two headers above come from a worker.
pub const TOKEN_HEADER: &str = "x-turnpike-chain-token";
/// The headers only the platform may set on a request to the gateway.
pub const PLATFORM_HEADERS: [&str; 3] = [CALLER_CLASS_HEADER, DEPTH_HEADER, TOKEN_HEADER];

/// Default limit on a call chain's depth: a request at a deeper level is refused with 508.
pub const DEFAULT_MAX_CHAIN_DEPTH: u32 = 8;

/// The cluster's chain token: a secret, so `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct ChainToken(String);

/// Shortest chain token accepted: a guessable one would let outside clients claim classes.
pub const MIN_TOKEN_LEN: usize = 16;

impl ChainToken {
    /// A fresh random token (128 bits, hex).
    pub fn random() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }

    /// A token given by an operator; refused when shorter than [`MIN_TOKEN_LEN`].
    pub fn new(token: String) -> Result<Self, ChainTokenError> {
        if token.len() < MIN_TOKEN_LEN {
            return Err(ChainTokenError::TooShort { len: token.len() });
        }
        if http::HeaderValue::from_str(&token).is_err() {
            return Err(ChainTokenError::NotVisibleAscii);
        }
        Ok(Self(token))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        expected.len() == given.len()
            && expected
                .iter()
                .zip(given)
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }
}

/// Why an operator's chain token is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainTokenError {
    #[error("the chain token must be at least {MIN_TOKEN_LEN} characters (got {len})")]
    TooShort { len: usize },
    #[error("the chain token must be visible ASCII")]
    NotVisibleAscii,
}

impl std::fmt::Debug for ChainToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainToken(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_printed() {
        assert!(ChainToken::new("short".into()).is_err());
        assert!(ChainToken::new(String::new()).is_err());
        assert!(ChainToken::new("line\nbreak-0123456789".into()).is_err());
        let token = ChainToken::new("0123456789abcdef".into()).unwrap();
        assert!(token.matches(b"0123456789abcdef"));
        assert!(!token.matches(b"0123456789abcdeF"));
        assert!(!token.matches(b""));
        let random = ChainToken::random();
        assert_ne!(random, ChainToken::random());
        assert!(!format!("{random:?}")
            .contains(&String::from_utf8_lossy(random.as_bytes()).to_string()));
    }
}
