//! Fuzzing the gateway's request handling and routing, end to end: `turnpike up` (the
//! embedded default: SQLite, real workers running the demo's components) gets random
//! requests over TCP - methods, paths under every API prefix and the demo's routes, hosts,
//! credentials (none, the admin's, a tenant's, garbage), class and deadline headers, bodies -
//! and random bytes that are not HTTP at all. Every one must get an answer (or, for bytes
//! that are not a request, at most a close) within its time, and no answer may be a 500 (the
//! gateway's own failure); a refusal by the platform says why in `{"error": ...}`. Afterwards
//! the demo still answers and its usage is readable.
//!
//! Requests: `TURNPIKE_FUZZ_CASES` a test (default 300; `scripts/fuzz.sh` sends more).
//! Generated with proptest: a failing request is printed, shrunk (sent again, smaller).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{create_tenant, status_of, up};

/// How long any answer may take (the demo's functions run for at most a few ms here; the
/// deadline header, when sent, is at most this).
const ANSWER_WITHIN: Duration = Duration::from_secs(15);
/// How long bytes that are not a whole request wait for an answer.
const GARBAGE_WAIT: Duration = Duration::from_millis(200);

fn cases() -> u32 {
    std::env::var("TURNPIKE_FUZZ_CASES")
        .ok()
        .map(|c| c.parse().expect("TURNPIKE_FUZZ_CASES is a number"))
        .unwrap_or(300)
}

/// A runner of [`cases`] cases that keeps no failures on disk (each replays a process).
fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

/// A request as generated: sent as HTTP/1.1 with `Connection: close`.
#[derive(Clone, Debug)]
struct Fuzzed {
    method: String,
    path: String,
    host: String,
    /// 0: none, 1: the admin's key, 2: a tenant's, 3: garbage.
    credential: u8,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn request() -> impl Strategy<Value = Fuzzed> {
    let method = prop_oneof![
        4 => proptest::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
            .prop_map(str::to_string),
        1 => "[A-Z]{1,10}",
    ];
    let prefix = proptest::sample::select(vec![
        "/",
        "/hello",
        "/work/critical?ms=",
        "/work/batch?ms=",
        "/v1/",
        "/v1/tenants",
        "/v1/tenants/",
        "/v1/keys",
        "/v1/components",
        "/v1/components/",
        "/v1/apps",
        "/v1/apps/",
        "/v1/apps/demo/functions/hello/invoke",
        "/v1/apps/demo/functions/",
        "/v1/invoke/",
        "/v1/functions",
        "/v1/routes",
        "/v1/classes",
        "/v1/usage?by=",
        "/v1/usage?from=",
        "/v1/budget",
        "/v1/openapi.json",
    ]);
    // Characters a URI may carry, and some that percent-encoding and routing must survive.
    let suffix = "[a-zA-Z0-9/._~%?&=+,;:@!$'()*-]{0,40}";
    let host = prop_oneof![
        Just("localhost".to_string()),
        Just("demo.localhost".to_string()),
        "[a-z0-9.-]{1,30}",
        "[a-z0-9-]{1,10}\\.localhost",
    ];
    let header = prop_oneof![
        (
            Just("x-turnpike-class".to_string()),
            prop_oneof![
                Just("critical".to_string()),
                Just("batch".to_string()),
                "[ -~]{0,20}"
            ]
        ),
        (
            Just("x-turnpike-deadline-ms".to_string()),
            prop_oneof![(0u64..15_000).prop_map(|n| n.to_string()), "[ -~]{0,20}"]
        ),
        (
            Just("content-type".to_string()),
            prop_oneof![Just("application/json".to_string()), "[ -~]{0,20}"]
        ),
        (Just("x-turnpike-depth".to_string()), "[ -~]{0,10}"),
        (Just("x-turnpike-chain-token".to_string()), "[ -~]{0,40}"),
        ("x-[a-z]{1,10}", "[ -~]{0,30}"),
    ];
    let body = prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => "\\{[ -~]{0,100}\\}".prop_map(String::into_bytes),
        1 => Just(br#"{"name": "x", "functions": [], "routes": []}"#.to_vec()),
    ];
    (
        method,
        (prefix, suffix).prop_map(|(p, s)| format!("{p}{s}")),
        host,
        0u8..4,
        proptest::collection::vec(header, 0..4),
        body,
    )
        .prop_map(|(method, path, host, credential, headers, body)| Fuzzed {
            method,
            path,
            host,
            credential,
            headers,
            body,
        })
}

/// A new connection to `gw` with `raw` written to it. The gateway may answer (400, 413)
/// before reading it all and close: a failed write leaves that answer to be read. (No
/// half-close: a server takes that for the client gone.)
async fn sent(gw: SocketAddr, raw: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(gw)
        .await
        .expect("the gateway takes connections");
    let _ = stream.write_all(raw).await;
    stream
}

/// Sends `raw` on its own connection: the whole answer, or `None` if the gateway closed
/// without one. Fails the test if nothing happens within `within`.
async fn exchange_within(gw: SocketAddr, raw: &[u8], within: Duration) -> Option<Vec<u8>> {
    let talk = async {
        let mut stream = sent(gw, raw).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        (!answer.is_empty()).then_some(answer)
    };
    tokio::time::timeout(within, talk)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no answer within {within:?} to {:?}",
                String::from_utf8_lossy(raw)
            )
        })
}

/// The status of an answer, and whether it is a refusal without a reason. `None` for bytes
/// that are not an HTTP answer.
fn judge(answer: &[u8]) -> Option<(u16, bool)> {
    let text = String::from_utf8_lossy(answer);
    if !text.starts_with("HTTP/1.1 ") {
        return None;
    }
    let status = status_of(&text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let json = head
        .to_ascii_lowercase()
        .contains("content-type: application/json");
    let unreasoned = status >= 400
        && json
        && serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").map(|e| e.as_str().is_none_or(str::is_empty)))
            .unwrap_or(false);
    Some((status, unreasoned))
}

/// [`exchange_within`] [`ANSWER_WITHIN`].
async fn exchange(gw: SocketAddr, raw: &[u8]) -> Option<Vec<u8>> {
    exchange_within(gw, raw, ANSWER_WITHIN).await
}

/// Sends bytes that may not be a whole request: whatever comes back within [`GARBAGE_WAIT`]
/// (a gateway waiting for the rest of a request answers nothing until its header timeout).
async fn send_garbage(gw: SocketAddr, raw: &[u8]) -> Option<Vec<u8>> {
    let talk = async {
        let mut stream = sent(gw, raw).await;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout(GARBAGE_WAIT, stream.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        answer
    };
    let answer = talk.await;
    (!answer.is_empty()).then_some(answer)
}

/// `turnpike up`, a tenant, and the runtime to send from.
struct Target {
    _up: common::Child,
    _dir: tempfile::TempDir,
    gw: SocketAddr,
    admin: String,
    tenant: String,
    runtime: tokio::runtime::Runtime,
}

fn target() -> Target {
    let dir = tempfile::tempdir().expect("temp dir");
    let (up, gw, admin) = up(dir.path());
    let tenant = create_tenant(gw, &admin, "acme");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    Target {
        _up: up,
        _dir: dir,
        gw,
        admin,
        tenant,
        runtime,
    }
}

impl Target {
    fn raw(&self, r: &Fuzzed) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            r.method,
            r.path,
            r.host,
            r.body.len()
        );
        match r.credential {
            1 => head.push_str(&format!("Authorization: Bearer {}\r\n", self.admin)),
            2 => head.push_str(&format!("Authorization: Bearer {}\r\n", self.tenant)),
            3 => head.push_str("Authorization: Bearer tp_notakey\r\n"),
            _ => {}
        }
        for (name, value) in &r.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(&r.body);
        raw
    }

    /// The demo answers and the tenant's usage reads: the gateway is whole.
    fn still_serves(&self) {
        self.runtime.block_on(async {
            let hello = b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
            let answer = exchange(self.gw, hello).await.expect("an answer");
            assert_eq!(judge(&answer).map(|j| j.0), Some(200), "{}", String::from_utf8_lossy(&answer));
            let usage = format!(
                "GET /v1/usage HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                self.tenant
            );
            let answer = exchange(self.gw, usage.as_bytes()).await.expect("an answer");
            assert_eq!(judge(&answer).map(|j| j.0), Some(200), "{}", String::from_utf8_lossy(&answer));
        });
    }
}

#[test]
fn random_requests_get_clear_answers_and_leave_the_gateway_whole() {
    let target = target();
    let mut runner = runner();
    let result = runner.run(&request(), |r| {
        let raw = target.raw(&r);
        let answer = target.runtime.block_on(exchange(target.gw, &raw));
        let Some(answer) = answer else {
            // Closed without an answer: only for a request hyper could not read, which it
            // answers with 400 - so never.
            return Err(TestCaseError::fail("closed without an answer"));
        };
        let (status, unreasoned) = judge(&answer)
            .ok_or_else(|| TestCaseError::fail(format!("not an HTTP answer: {answer:?}")))?;
        prop_assert_ne!(status, 500, "{}", String::from_utf8_lossy(&answer));
        prop_assert!(
            !unreasoned,
            "a refusal without a reason: {}",
            String::from_utf8_lossy(&answer)
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    target.still_serves();
}

#[test]
fn bytes_that_are_not_http_are_refused_or_closed_and_leave_the_gateway_whole() {
    let target = target();
    let mut runner = runner();
    let garbage = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        // A request line, then anything.
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|tail| {
            let mut raw = b"GET /hello HTTP/1.1\r\n".to_vec();
            raw.extend(tail);
            raw
        }),
    ];
    let result = runner.run(&garbage, |raw| {
        if let Some(answer) = target.runtime.block_on(send_garbage(target.gw, &raw)) {
            if let Some((status, _)) = judge(&answer) {
                prop_assert_ne!(status, 500, "{}", String::from_utf8_lossy(&answer));
            } else {
                return Err(TestCaseError::fail(format!(
                    "not an HTTP answer: {answer:?}"
                )));
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    target.still_serves();
}
