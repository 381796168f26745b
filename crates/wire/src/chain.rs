//! Call chains: a function calling another through the platform.
//!
//! A guest's outgoing request to `http://turnpike/PATH` or `http://APP.turnpike/PATH` (see
//! `turnpike_worker::calls`) is sent by its worker to the gateway as an ordinary HTTP request
//! for `PATH` (with `Host: APP.turnpike`, which the gateway routes to app `APP`), carrying the
//! calling invocation's [`CallToken`] in [`TOKEN_HEADER`].
//!
//! A call token is minted by the gateway for each invocation it dispatches and travels with
//! it to its worker: the tenant that pays for the invocation, the class it runs at, its depth
//! in the chain, the invocation's id and an expiry ([`CALL_TOKEN_TTL`] after dispatch),
//! signed with HMAC-SHA256 under the cluster's chain key ([`ChainKey`], a secret only
//! gateways hold). The gateway verifies a call's token and runs the callee at
//! `max(the caller's class, the route's class)`, one level deeper, billed to the caller's
//! tenant. A token seen on the wire is worth one invocation's class for a few minutes: it
//! cannot be altered (to claim a higher class, another tenant, a shallower depth), and after
//! its expiry it is refused. Workers never hold the key, so a compromised worker can replay
//! only the tokens of invocations placed on it.
//!
//! The gateway refuses platform headers ([`PLATFORM_HEADERS`]) without a valid token (403,
//! naming why: malformed, bad signature, expired), and strips them before the callee sees
//! the request; the worker drops any of them a guest wrote and sets its own, so guests
//! neither forge nor see them.
//!
//! The gateway answers a request deeper than its `max_chain_depth` with `508 Loop Detected`
//! and the reason, which the caller's guest sees as its call's response. The caller waits for
//! its call blocked on I/O, so it holds no core slot meanwhile (only its memory).
//!
//! Why through the gateway rather than straight to a shard: the callee is found by the same
//! routes as outside traffic (and, with tenants, authorized the same way), and every
//! invocation, chained or not, enters the platform at one place.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use turnpike_policy::ClassId;

/// The caller's class (by name), set by the worker for a call from a function.
pub const CALLER_CLASS_HEADER: &str = "x-turnpike-caller-class";
/// The callee's depth in the call chain.
pub const DEPTH_HEADER: &str = "x-turnpike-depth";
/// The calling invocation's [`CallToken`], signed by a gateway.
pub const TOKEN_HEADER: &str = "x-turnpike-chain-token";

/// How long a call token is valid after its invocation was dispatched: longer than any
/// invocation runs (the worker's default timeout is far below it).
pub const CALL_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// The headers only the platform may set on a request to the gateway.
pub const PLATFORM_HEADERS: [&str; 3] = [CALLER_CLASS_HEADER, DEPTH_HEADER, TOKEN_HEADER];

/// Default limit on a call chain's depth: a request at a deeper level is refused with 508.
pub const DEFAULT_MAX_CHAIN_DEPTH: u32 = 8;

/// The cluster's chain key (named `--chain-token` on the command line): the secret gateways
/// sign and verify [`CallToken`]s with. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct ChainKey(String);

/// Who is calling, as the gateway that dispatched the calling invocation vouched for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallToken {
    /// The tenant the calling invocation is billed to: its calls are billed to it too.
    pub tenant: String,
    /// The class the calling invocation runs at.
    pub class: ClassId,
    /// The calling invocation's depth in its chain (0: an outside request).
    pub depth: u32,
    /// The calling invocation's id.
    pub invocation: u64,
    /// Unix milliseconds after which the token is refused.
    pub expires_ms: u64,
}

/// Why a call's token is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallTokenError {
    #[error("the call token is malformed")]
    Malformed,
    #[error("the call token's signature is wrong: it was not made by this cluster's gateways, or was altered")]
    BadSignature,
    #[error("the call token expired {ago_ms} ms ago")]
    Expired { ago_ms: u64 },
}

/// The token's format version, its first field.
const TOKEN_VERSION: &str = "v1";

/// Shortest chain token accepted: a guessable one would let outside clients claim classes.
pub const MIN_TOKEN_LEN: usize = 16;

impl ChainKey {
    /// A fresh random token (128 bits, hex).
    pub fn random() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }

    /// A token given by an operator; refused when shorter than [`MIN_TOKEN_LEN`].
    pub fn new(token: String) -> Result<Self, ChainKeyError> {
        if token.len() < MIN_TOKEN_LEN {
            return Err(ChainKeyError::TooShort { len: token.len() });
        }
        if http::HeaderValue::from_str(&token).is_err() {
            return Err(ChainKeyError::NotVisibleAscii);
        }
        Ok(Self(token))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(self.0.as_bytes()).expect("HMAC takes a key of any length")
    }

    /// `token` signed: `v1.PAYLOAD.SIGNATURE`, both base64url (visible ASCII, a header value).
    pub fn sign(&self, token: &CallToken) -> String {
        let payload = format!(
            "{}\n{}\n{}\n{}\n{}",
            token.tenant, token.class.0, token.depth, token.invocation, token.expires_ms
        );
        let payload = URL_SAFE_NO_PAD.encode(payload);
        let mut mac = self.mac();
        mac.update(TOKEN_VERSION.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{TOKEN_VERSION}.{payload}.{signature}")
    }

    /// The token in `text` if this key signed it and it has not expired at `now_ms` (Unix
    /// milliseconds). The signature is checked in constant time, before anything else is
    /// believed.
    pub fn verify(&self, text: &[u8], now_ms: u64) -> Result<CallToken, CallTokenError> {
        let text = std::str::from_utf8(text).map_err(|_| CallTokenError::Malformed)?;
        let mut parts = text.split('.');
        let (Some(TOKEN_VERSION), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CallTokenError::Malformed);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| CallTokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(TOKEN_VERSION.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| CallTokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| CallTokenError::Malformed)?;
        let payload = String::from_utf8(payload).map_err(|_| CallTokenError::Malformed)?;
        let fields: Vec<&str> = payload.split('\n').collect();
        let [tenant, class, depth, invocation, expires_ms] = fields[..] else {
            return Err(CallTokenError::Malformed);
        };
        let number = |s: &str| s.parse::<u64>().map_err(|_| CallTokenError::Malformed);
        let token = CallToken {
            tenant: tenant.to_string(),
            class: ClassId(class.parse().map_err(|_| CallTokenError::Malformed)?),
            depth: depth.parse().map_err(|_| CallTokenError::Malformed)?,
            invocation: number(invocation)?,
            expires_ms: number(expires_ms)?,
        };
        if now_ms > token.expires_ms {
            return Err(CallTokenError::Expired {
                ago_ms: now_ms - token.expires_ms,
            });
        }
        Ok(token)
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
pub enum ChainKeyError {
    #[error("the chain token must be at least {MIN_TOKEN_LEN} characters (got {len})")]
    TooShort { len: usize },
    #[error("the chain token must be visible ASCII")]
    NotVisibleAscii,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_printed() {
        assert!(ChainKey::new("short".into()).is_err());
        assert!(ChainKey::new(String::new()).is_err());
        assert!(ChainKey::new("line\nbreak-0123456789".into()).is_err());
        let token = ChainKey::new("0123456789abcdef".into()).unwrap();
        assert!(token.matches(b"0123456789abcdef"));
        assert!(!token.matches(b"0123456789abcdeF"));
        assert!(!token.matches(b""));
        let random = ChainKey::random();
        assert_ne!(random, ChainKey::random());
        assert!(!format!("{random:?}")
            .contains(&String::from_utf8_lossy(random.as_bytes()).to_string()));
    }

    fn token() -> CallToken {
        CallToken {
            tenant: "acme".into(),
            class: ClassId(1),
            depth: 2,
            invocation: 77,
            expires_ms: 1_000_000,
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let key = ChainKey::random();
        let text = key.sign(&token());
        assert!(http::HeaderValue::from_str(&text).is_ok(), "{text}");
        assert_eq!(key.verify(text.as_bytes(), 999_999), Ok(token()));
        assert_eq!(key.verify(text.as_bytes(), 1_000_000), Ok(token()));
        assert_eq!(
            key.verify(text.as_bytes(), 1_000_250),
            Err(CallTokenError::Expired { ago_ms: 250 })
        );
    }

    #[test]
    fn an_altered_or_foreign_token_is_refused() {
        let key = ChainKey::random();
        let text = key.sign(&token());
        // Another cluster's key.
        assert_eq!(
            ChainKey::random().verify(text.as_bytes(), 0),
            Err(CallTokenError::BadSignature)
        );
        // The payload of a higher class, under the original signature.
        let higher = CallToken {
            class: ClassId(3),
            ..token()
        };
        let forged_payload = key.sign(&higher).split('.').nth(1).unwrap().to_string();
        let signature = text.split('.').nth(2).unwrap();
        let forged = format!("v1.{forged_payload}.{signature}");
        assert_eq!(
            key.verify(forged.as_bytes(), 0),
            Err(CallTokenError::BadSignature)
        );
        for junk in ["", "v1", "v1.a.b", "v2.a.b", "v1.a.b.c", "0123456789abcdef"] {
            assert!(key.verify(junk.as_bytes(), 0).is_err(), "{junk:?}");
        }
    }
}
