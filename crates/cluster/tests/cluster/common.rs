//! What the tests of this binary share: one raw HTTP/1.1 exchange, so a test can send exactly
//! the bytes it means (malformed requests included), the lock that runs them one at a time,
//! the emulated cluster most of them start, and what the ledger billed.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `raw` on a new connection and reads the answer to its end: (status, head, body).
pub async fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // A server may answer before reading the whole request (413 for a body over the limit)
    // and close, which fails the rest of the write: the answer is still there to read, as a
    // client like curl would.
    let _ = stream.write_all(raw).await;
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer).await {
        // A reset after the answer arrived (the request's unread rest) ends it.
        assert!(!answer.is_empty(), "no answer before {e}");
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // A response the gateway streamed (its head came before its end) is chunked, as a client
    // would read it.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |at| at + 4);
        String::from_utf8_lossy(&dechunk(&answer[at..]).0).into_owned()
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

/// The data of a chunked body so far, and whether its last chunk came.
pub fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size = std::str::from_utf8(&raw[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .expect("a chunk size line");
        if size == 0 {
            return (body, true);
        }
        let data = &raw[line_end + 2..];
        if data.len() < size + 2 {
            body.extend_from_slice(&data[..data.len().min(size)]);
            return (body, false);
        }
        body.extend_from_slice(&data[..size]);
        raw = &data[size + 2..];
    }
}

/// Held by every test of this binary while it runs: they start clusters and measure orderings
/// and timings on a 2-core machine, so no two run at once.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A `turnpike up` config on an OS-chosen loopback port with one shard and `workers`
/// emulated workers (no wasm runs: each invocation's runtime comes from its `?ms=N`).
pub fn emulated_config(dir: &tempfile::TempDir, workers: usize) -> turnpike_cluster::up::UpConfig {
    let mut config = turnpike_cluster::up::UpConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().to_path_buf(),
    );
    config.workers = workers;
    config.shards = 1;
    config.emulated = Some(turnpike_node::emulated::EmulatedConfig::new(
        turnpike_policy::ClassSet::default_four(),
    ));
    config
}

/// Everything the operator's tenant (the demo app's owner) was billed this month, summed.
pub async fn billed_this_month(store: &turnpike_store::Store) -> turnpike_store::UsageTotals {
    let month = turnpike_store::Day::of_unix(turnpike_store::unix_now()).month_start();
    let rows = store
        .usage(
            turnpike_gateway::routing::OPERATOR,
            &[],
            month,
            month.next_month_start(),
        )
        .await
        .expect("usage");
    rows.into_iter()
        .map(|r| r.totals)
        .fold(Default::default(), |a, b| turnpike_store::UsageTotals {
            invocations: a.invocations + b.invocations,
            cpu_seconds: a.cpu_seconds + b.cpu_seconds,
            gb_seconds: a.gb_seconds + b.gb_seconds,
            cost: a.cost + b.cost,
        })
}
