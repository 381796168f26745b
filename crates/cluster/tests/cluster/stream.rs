//! Streamed responses through a real `turnpike up` of wasm workers, with the roles calling
//! each other in process and over loopback gRPC (where the body travels as frames with a
//! credit window on each link): the first byte a function writes reaches the client while it
//! still runs; a body over the limit is cut there; a client that hangs up mid-body cancels
//! the invocation; each is billed once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turnpike_cluster::up::{self, Cluster, UpConfig};
use turnpike_store::{Store, UsageTotals};

use crate::common::{billed_this_month, dechunk, serial};

const LIMIT_BYTES: usize = 1 << 20;

async fn cluster(dir: &tempfile::TempDir, loopback_rpc: bool) -> Cluster {
    let mut config = UpConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().to_path_buf(),
    );
    config.loopback_rpc = loopback_rpc;
    config.workers = 1;
    config.cores_per_worker = 2;
    config.memory_mb_per_worker = 1024;
    config.max_response_bytes = LIMIT_BYTES;
    config.max_request_bytes = LIMIT_BYTES;
    up::start(&config).await.expect("the cluster starts")
}

async fn billed(cluster: Cluster) -> UsageTotals {
    let store: Store = cluster.store.clone();
    cluster.stop().await;
    billed_this_month(&store).await
}

/// A streamed answer as it arrived.
#[derive(Debug, Default)]
struct Streamed {
    status: u16,
    head: String,
    /// The body, de-chunked.
    body: Vec<u8>,
    /// Reads that brought body bytes.
    reads: usize,
    /// The terminating chunk arrived: the body is whole.
    whole: bool,
    first_byte_after: Option<Duration>,
}

/// GETs `path` (HTTP/1.1, chunked answer expected) and reads it read by read, until it ends
/// or `stop_after` body bytes have come (then hangs up).
async fn stream(gateway: SocketAddr, path: &str, stop_after: Option<usize>) -> Streamed {
    let started = Instant::now();
    let mut connection = TcpStream::connect(gateway).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: turnpike\r\nConnection: close\r\n\r\n");
    connection
        .write_all(request.as_bytes())
        .await
        .expect("send");
    let mut raw = Vec::new();
    let mut got = Streamed::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut body_at = None;
    loop {
        let n = connection.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if body_at.is_none() {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                body_at = Some(end + 4);
                got.head = String::from_utf8_lossy(&raw[..end]).into_owned();
                got.status = got
                    .head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
        }
        if let Some(at) = body_at {
            if raw.len() > at {
                got.reads += 1;
                got.first_byte_after.get_or_insert(started.elapsed());
            }
            let (body, whole) = dechunk(&raw[at..]);
            got.body = body;
            got.whole = whole;
            if got.whole || stop_after.is_some_and(|n| got.body.len() >= n) {
                break;
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_streams_as_written_and_is_cut_at_the_limit_billed_once() {
    for loopback_rpc in [false, true] {
        let _serial = serial().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = cluster(&dir, loopback_rpc).await;
        let gateway = cluster.gateway;

        // One byte every 100 ms for 2 s.
        let got = stream(gateway, "/stream?chunks=20&bytes=1&every_ms=100", None).await;
        assert_eq!(got.status, 200, "{got:?}");
        assert!(got.whole, "{got:?}");
        assert_eq!(got.body, b"abcdefghijklmnopqrst", "{got:?}");
        assert!(
            got.reads >= 5,
            "loopback RPC {loopback_rpc}: the body came in {} reads: held back, not streamed ({got:?})",
            got.reads
        );
        eprintln!(
            "loopback RPC {loopback_rpc}: first byte of a 2 s stream after {:?}, in {} reads",
            got.first_byte_after.expect("a byte"),
            got.reads
        );

        // A body of 64 GiB against a limit of 1 MiB: cut there, and the function stops.
        let got = stream(gateway, "/stream?chunks=1000000&bytes=65536", None).await;
        assert_eq!(got.status, 200, "{got:?}");
        assert!(
            !got.whole && got.body.len() <= LIMIT_BYTES,
            "loopback RPC {loopback_rpc}: cut at the limit: {} bytes, whole {}",
            got.body.len(),
            got.whole
        );

        let billed = billed(cluster).await;
        assert_eq!(
            billed.invocations, 2,
            "loopback RPC {loopback_rpc}: both ran, each billed once: {billed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_body_cancels_the_invocation_which_is_billed() {
    for loopback_rpc in [false, true] {
        let _serial = serial().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = cluster(&dir, loopback_rpc).await;
        let gateway = cluster.gateway;
        // 100 s of output; the client leaves after the first 3 KiB.
        let got = stream(
            gateway,
            "/stream?chunks=100000&bytes=1024&every_ms=1",
            Some(3 << 10),
        )
        .await;
        assert_eq!(got.status, 200, "{got:?}");
        assert!(!got.whole, "{got:?}");
        drop(got);
        // Cancelled: the invocation ends (and is billed) now, not 100 s from now; stopping
        // waits for it.
        let started = Instant::now();
        let billed = billed(cluster).await;
        assert_eq!(
            billed.invocations,
            1,
            "loopback RPC {loopback_rpc}: billed once for what it ran ({:?} to stop): {billed:?}",
            started.elapsed()
        );
        assert!(billed.cpu_seconds > 0.0, "{billed:?}");
    }
}

/// POSTs `chunks` chunks of 64 KiB to `path` with chunked encoding (no declared length, so
/// the gateway streams it), waiting after the first until the answer so far contains
/// `after_first` (if given) before sending the rest: the de-chunked answer and its status.
async fn upload(
    gateway: SocketAddr,
    path: &str,
    chunks: usize,
    after_first: Option<&str>,
) -> (u16, String) {
    let mut connection = TcpStream::connect(gateway).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: turnpike\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let chunk = [
        format!("{:x}\r\n", 64 << 10).into_bytes(),
        vec![b'u'; 64 << 10],
        b"\r\n".to_vec(),
    ]
    .concat();
    connection.write_all(head.as_bytes()).await.expect("send");
    connection.write_all(&chunk).await.expect("send");
    let (mut reading, mut writing) = connection.into_split();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    if let Some(wanted) = after_first {
        // The function reports the first chunk while the rest has not been sent.
        loop {
            let n = reading.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "the answer ended before `{wanted}`: {:?}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&raw).contains(wanted) {
                break;
            }
        }
    }
    let sender = tokio::spawn(async move {
        for _ in 1..chunks {
            if writing.write_all(&chunk).await.is_err() {
                return writing; // Refused mid-body: the gateway closed the connection.
            }
        }
        let _ = writing.write_all(b"0\r\n\r\n").await;
        // Kept open until the answer is read: a client's half-close ends the connection at
        // the server (hyper's default), answer or not.
        writing
    });
    loop {
        match reading.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    drop(sender.await);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (&text[..at], &raw[at + 4..]))
        .unwrap_or((&text, &[][..]));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body).0
    } else {
        body.to_vec()
    };
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reaches_the_function_as_it_is_sent_and_is_held_to_the_limit() {
    for loopback_rpc in [false, true] {
        let _serial = serial().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = cluster(&dir, loopback_rpc).await;
        let gateway = cluster.gateway;
        // The function has read the first 64 KiB while the client still holds the rest.
        let (status, body) = upload(gateway, "/echo?progress=1", 4, Some("65536\n")).await;
        assert_eq!(status, 200, "loopback RPC {loopback_rpc}: {body}");
        assert!(
            body.ends_with("done 262144\n"),
            "loopback RPC {loopback_rpc}: {body}"
        );
        // Over the limit (1 MiB), no length declared: refused when the bytes pass it.
        let (status, body) = upload(gateway, "/echo", 64, None).await;
        assert_eq!(status, 413, "loopback RPC {loopback_rpc}: {body}");
        assert!(body.contains("over the limit of 1048576 bytes"), "{body}");
        // An upload within the limit comes back byte for byte.
        let (status, body) = upload(gateway, "/echo", 1, None).await;
        assert_eq!(
            (status, body.len()),
            (200, 64 << 10),
            "loopback RPC {loopback_rpc}"
        );
        let billed = billed(cluster).await;
        // The progress upload and the small one; the refused one if it had started running.
        assert!(
            (2..=3).contains(&billed.invocations),
            "loopback RPC {loopback_rpc}: {billed:?}"
        );
    }
}
