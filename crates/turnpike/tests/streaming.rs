//! Responses streamed through roles in separate processes (`turnpike shard`, `turnpike
//! worker`, `turnpike gateway`): the first byte a function writes reaches the client while
//! the function still runs; a body over the limit is refused before its head when its length
//! is declared and cut otherwise; and many large bodies to slow clients leave every role's
//! memory within its stated bound (docs/invocation-path.md, "Memory bounds").
//!
//! The memory test streams 32 bodies of `TURNPIKE_STREAM_TEST_MB` MiB (default 32, for CI;
//! the figure is `TURNPIKE_STREAM_TEST_MB=256`) plus 32 over the limit.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use common::{get, start_role, Child};

/// Growth of a role's resident memory allowed per streamed invocation in flight: the body
/// buffered at each hop (`BODY_CHUNKS_BUFFERED_MAX` x `CHUNK_BYTES_MAX` per channel, a link's
/// `LINK_BODY_WINDOW_BYTES`, HTTP/2 and hyper write buffers) and, at the worker, the guest's
/// instance. Streaming bounds it whatever the body's size; a role that held whole bodies
/// would grow by the body's size per invocation.
const GROWTH_PER_INVOCATION_BYTES: u64 = 4 << 20;
/// Growth allowed whatever the load: allocator arenas, runtime threads, connection pools.
const GROWTH_FIXED_BYTES: u64 = 96 << 20;

/// Shard, worker and gateway processes serving the `stream` example at `/stream` and the
/// `echo` example at `/echo` (top class), the gateway's body limit `max_body_bytes`; the gateway's address and the
/// processes (named).
async fn cluster(
    dir: &std::path::Path,
    max_body_bytes: u64,
) -> (SocketAddr, Vec<(&'static str, Child)>) {
    let functions = turnpike_cluster::up::default_functions_dir();
    let wasm = functions.join("stream.wasm");
    let hash =
        turnpike_worker::cache::sha256_hex(&std::fs::read(&wasm).expect("the stream example"));
    let echo = functions.join("echo.wasm");
    let echo_hash =
        turnpike_worker::cache::sha256_hex(&std::fs::read(&echo).expect("the echo example"));
    let (shard, shard_addr) = start_role(&["shard".to_string()], "shard listening on ");
    let (gateway, url) = start_role(
        &[
            "gateway".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.join("gateway").display().to_string(),
            "--route".into(),
            format!("/stream={hash}@critical"),
            "--route".into(),
            format!("/echo={echo_hash}@critical"),
            "--max-body-bytes".into(),
            max_body_bytes.to_string(),
            "--shard".into(),
            shard_addr.clone(),
        ],
        "gateway listening on http://",
    );
    let (worker, _) = start_role(
        &[
            "worker".to_string(),
            "--data-dir".into(),
            dir.join("worker").display().to_string(),
            "--load".into(),
            wasm.display().to_string(),
            "--load".into(),
            echo.display().to_string(),
            "--shard".into(),
            shard_addr,
        ],
        "worker listening on ",
    );
    let gw: SocketAddr = url.parse().expect("gateway address");
    let start = Instant::now();
    loop {
        let (status, text) = get(gw, "/stream?chunks=1&bytes=1").await;
        if status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no answer from the separate roles: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (
        gw,
        vec![("shard", shard), ("gateway", gateway), ("worker", worker)],
    )
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// How a streamed answer arrived.
#[derive(Debug)]
struct Received {
    status: u16,
    /// Data frames as the client got them.
    frames: usize,
    bytes: u64,
    /// The last byte (the stream example's letter of its last chunk).
    last: Option<u8>,
    /// Whether the body ended cleanly (not cut).
    whole: bool,
    first_byte_after: Option<Duration>,
}

/// GETs `path` and reads the body frame by frame, at most `bytes_per_s` (`None`: as fast as
/// it comes).
async fn receive(gw: SocketAddr, path: &str, bytes_per_s: Option<u64>) -> Received {
    let started = Instant::now();
    let response = client()
        .get(format!("http://{gw}{path}").parse().expect("a URI"))
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut received = Received {
        status,
        frames: 0,
        bytes: 0,
        last: None,
        whole: false,
        first_byte_after: None,
    };
    loop {
        match body.frame().await {
            None => {
                received.whole = true;
                return received;
            }
            Some(Err(_cut)) => return received,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                received.first_byte_after.get_or_insert(started.elapsed());
                received.frames += 1;
                received.bytes += data.len() as u64;
                received.last = data.last().copied();
                if let Some(rate) = bytes_per_s {
                    let pause = Duration::from_secs_f64(data.len() as f64 / rate as f64);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_streams_through_separate_role_processes_and_is_held_to_the_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let limit: u64 = 1 << 20;
    let (gw, _roles) = cluster(dir.path(), limit).await;

    // One byte every 100 ms for 2 s: each arrives as it is written, not all at the end.
    let total = Instant::now();
    let got = receive(gw, "/stream?chunks=20&bytes=1&every_ms=100", None).await;
    assert_eq!(
        (got.status, got.bytes, got.whole),
        (200, 20, true),
        "{got:?}"
    );
    assert_eq!(got.last, Some(b't'), "chunk 19 is `t`: {got:?}");
    assert!(
        got.frames >= 5,
        "the bytes came in {} frames: the body was held back, not streamed ({got:?})",
        got.frames
    );
    eprintln!(
        "separate processes: first byte after {:?} of a 2 s stream, in {} frames ({:?} to read it all)",
        got.first_byte_after.expect("a byte"),
        got.frames,
        total.elapsed()
    );

    // Over the limit: refused before its head when its length is declared...
    let (status, text) = get(gw, "/stream?chunks=32&bytes=65536&declare=1").await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("over the limit of 1048576 bytes"), "{text}");
    // ... and cut at the limit otherwise; the function stops (its body stream is closed), so
    // a body of 64 GiB does not run on.
    let got = receive(gw, "/stream?chunks=1000000&bytes=65536", None).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        !got.whole && got.bytes <= limit,
        "cut at the limit: {got:?}"
    );
    // The worker is free again: a small answer still comes.
    let got = receive(gw, "/stream?chunks=2&bytes=3", None).await;
    assert_eq!(
        (got.status, got.bytes, got.whole),
        (200, 6, true),
        "{got:?}"
    );
    assert_eq!(got.last, Some(b'b'), "{got:?}");
}

/// Uploads `bytes` (in chunks of 64 KiB, chunked encoding: no declared length) to
/// `/echo?progress=1`: the status and the answer's text (its last line says what arrived).
async fn upload(gw: SocketAddr, bytes: u64) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connection = tokio::net::TcpStream::connect(gw).await.expect("connect");
    let (mut reading, mut writing) = connection.into_split();
    let sender = tokio::spawn(async move {
        let head = "POST /echo?progress=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        writing.write_all(head.as_bytes()).await?;
        let chunk = [
            format!("{:x}\r\n", 64 << 10).into_bytes(),
            vec![b'u'; 64 << 10],
            b"\r\n".to_vec(),
        ]
        .concat();
        for _ in 0..bytes / (64 << 10) {
            writing.write_all(&chunk).await?;
        }
        writing.write_all(b"0\r\n\r\n").await?;
        // Kept open until the answer is read: a client's half-close ends the connection at
        // the server (hyper's default), answer or not.
        Ok::<_, std::io::Error>(writing)
    });
    let mut answer = Vec::new();
    // The answer's lines come as the function reads; only the last ones are kept.
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match reading.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() > 1 << 20 {
                    answer.drain(..answer.len() - 4096);
                }
            }
        }
    }
    drop(sender.await.expect("the sender").expect("sent"));
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // The de-chunked tail: the last line of data before the final `0` chunk.
    let last = text
        .split('\n')
        .map(str::trim_end)
        .rfind(|line| line.starts_with("done") || line.starts_with("cut"))
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "no last line in {:?}",
                &text[text.len().saturating_sub(300)..]
            )
        });
    (status, format!("{last}\n"))
}

/// A process's resident set now and at its peak (`VmRSS`, `VmHWM`), bytes.
fn rss(child: &Child) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).expect("/proc");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_to_slow_clients_leave_every_role_within_its_memory_bound() {
    let body_mb: u64 = std::env::var("TURNPIKE_STREAM_TEST_MB")
        .ok()
        .map(|v| {
            v.parse()
                .expect("TURNPIKE_STREAM_TEST_MB is a number of MiB")
        })
        .unwrap_or(32);
    let body_bytes = body_mb << 20;
    let limit = body_bytes + (1 << 20);
    let dir = tempfile::tempdir().expect("temp dir");
    let (gw, roles) = cluster(dir.path(), limit).await;
    // Warm every path (a streamed body, a cut one) before the baseline.
    let _ = receive(gw, "/stream?chunks=64&bytes=65536", None).await;
    let before: Vec<u64> = roles.iter().map(|(_, child)| rss(child).0).collect();

    let chunks = body_bytes / 65536;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..64u64 {
        let (path, rate) = match i % 4 {
            // Within the limit, to a slow client (8 MiB/s).
            0 | 1 => (
                format!("/stream?chunks={chunks}&bytes=65536"),
                Some(8 << 20),
            ),
            // Over it, declared: refused before its head.
            2 => (
                format!("/stream?chunks={}&bytes=65536&declare=1", chunks * 2),
                None,
            ),
            // Over it, undeclared: cut at the limit.
            _ => (format!("/stream?chunks={}&bytes=65536", chunks * 2), None),
        };
        calls.spawn(async move { (i % 4, receive(gw, &path, rate).await) });
    }
    // And uploads of the same size, which the function reads as they arrive (holding none).
    let mut uploads = tokio::task::JoinSet::new();
    for _ in 0..8 {
        uploads.spawn(upload(gw, body_bytes));
    }
    let started = Instant::now();
    while let Some(result) = uploads.join_next().await {
        let (status, text) = result.expect("an upload");
        assert_eq!(status, 200, "{text}");
        assert!(text.ends_with(&format!("done {body_bytes}\n")), "{text}");
    }
    while let Some(result) = calls.join_next().await {
        let (kind, got) = result.expect("a call");
        match kind {
            0 | 1 => {
                assert_eq!(
                    (got.status, got.bytes, got.whole),
                    (200, body_bytes, true),
                    "{got:?}"
                );
                let last = b'a' + ((chunks - 1) % 26) as u8;
                assert_eq!(got.last, Some(last), "{got:?}");
            }
            2 => assert_eq!(got.status, 413, "{got:?}"),
            _ => assert!(
                got.status == 200 && !got.whole && got.bytes <= limit,
                "{got:?}"
            ),
        }
    }
    let bound = GROWTH_FIXED_BYTES + 64 * GROWTH_PER_INVOCATION_BYTES;
    let mut report = Vec::new();
    for ((name, child), before) in roles.iter().zip(before) {
        let (_, peak) = rss(child);
        let growth = peak.saturating_sub(before);
        report.push(format!(
            "{name}: {} MiB at rest, peak {} MiB (+{} MiB)",
            before >> 20,
            peak >> 20,
            growth >> 20
        ));
        assert!(
            growth <= bound,
            "{name}'s resident memory grew by {} MiB, over its bound of {} MiB, streaming 32 bodies of {body_mb} MiB, 32 over the limit and 8 uploads: {report:?}",
            growth >> 20,
            bound >> 20
        );
    }
    eprintln!(
        "32 x {body_mb} MiB to slow clients, 32 over the limit and 8 x {body_mb} MiB uploads in {:?}: {}",
        started.elapsed(),
        report.join("; ")
    );
}
