//! The gateway's HTTP edge under abuse, on a real `turnpike up` cluster of emulated workers:
//! a connection flood past `gateway_connections_max` is refused (503, `Retry-After`, a JSON
//! error naming the bound) while a client's open connection keeps being served; slowloris
//! clients trickling a header, or a body, are cut off after the read timeouts while a
//! top-class request on a fresh connection succeeds.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turnpike_cluster::up;

use crate::common::{emulated_config, exchange, serial};

/// Far longer than any timeout here: a connection still open after it was never cut off.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(10);

/// Sends one keep-alive `GET /hello` on `stream` and reads its answer: (status, body).
async fn hello_on(stream: &mut TcpStream) -> (u16, String) {
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: turnpike\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before the answer: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse().ok())
                .expect("a content-length");
            if body.len() >= length {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("a status line");
                return (status, body.to_string());
            }
        }
    }
}

/// Waits until the server closes `stream`; what it sent before, as text.
async fn closed_by_server(mut stream: TcpStream) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(CUT_OFF_WITHIN, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_refused_at_the_bound_while_an_open_connection_is_served() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = emulated_config(&dir, 1);
    config.bounds.gateway_connections_max = 8;
    let cluster = up::start(&config).await.expect("the cluster starts");
    let gateway = cluster.gateway;
    let mut client = TcpStream::connect(gateway).await.unwrap();
    assert_eq!(hello_on(&mut client).await.0, 200);
    // Idle connections take the other 7 places, and 13 more are refused.
    let mut flood = Vec::new();
    for _ in 0..20 {
        flood.push(TcpStream::connect(gateway).await.unwrap());
    }
    let request = b"GET /hello HTTP/1.1\r\nHost: turnpike\r\nConnection: close\r\n\r\n";
    let (status, head, body) = exchange(gateway, request).await;
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(head.to_lowercase().contains("retry-after: 1"), "{head}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    let message = error["error"].as_str().expect("an `error` string");
    assert!(message.contains("gateway_connections_max"), "{message}");
    // The client's connection, opened before the flood, is still served at the top class.
    let (status, body) = hello_on(&mut client).await;
    assert_eq!(status, 200, "{body}");
    drop(flood);
    // Once the flood is gone, new connections are served again.
    let served = async {
        loop {
            let (status, _, _) = exchange(gateway, request).await;
            if status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(CUT_OFF_WITHIN, served)
        .await
        .expect("served again after the flood");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off_while_a_top_class_request_succeeds() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = emulated_config(&dir, 1);
    config.header_read_timeout = Duration::from_millis(500);
    config.body_read_timeout = Duration::from_millis(500);
    let cluster = up::start(&config).await.expect("the cluster starts");
    let gateway = cluster.gateway;
    // 40 clients trickle a header a byte every 100 ms, 10 a body they never finish.
    let mut lorises = Vec::new();
    for i in 0..50 {
        let mut stream = TcpStream::connect(gateway).await.unwrap();
        let start: &[u8] = if i < 40 {
            b"GET /hello HTTP/1.1\r\nHost: tur"
        } else {
            b"GET /hello HTTP/1.1\r\nHost: turnpike\r\nContent-Length: 1000\r\n\r\nab"
        };
        stream.write_all(start).await.unwrap();
        lorises.push(tokio::spawn(loris(stream)));
    }
    let mut client = TcpStream::connect(gateway).await.unwrap();
    let (status, body) = hello_on(&mut client).await;
    assert_eq!(
        status, 200,
        "a top-class request during the slowloris: {body}"
    );
    let mut timed_out_bodies = 0;
    for loris in lorises {
        let (cut_off, answer) = loris.await.expect("the loris task");
        assert!(cut_off, "a loris kept its connection: {answer:?}");
        if answer.starts_with("HTTP/1.1 408") {
            timed_out_bodies += 1;
        }
    }
    // Those that sent a whole header were answered 408 for their body.
    assert_eq!(timed_out_bodies, 10);
    drop(client);
    // A connection that sends nothing at all is closed too.
    let idle = TcpStream::connect(gateway).await.unwrap();
    closed_by_server(idle).await;
    cluster.stop().await;
}

/// Writes a byte every 100 ms on `stream` until the server closes it: whether it did within
/// [`CUT_OFF_WITHIN`] (the read ended, or a write failed), and what it answered.
async fn loris(stream: TcpStream) -> (bool, String) {
    let (mut reader, mut writer) = stream.into_split();
    let trickle = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b"x").await.is_err() {
                return;
            }
        }
    };
    let mut answer = Vec::new();
    let cut_off = tokio::time::timeout(CUT_OFF_WITHIN, async {
        tokio::select! {
            () = trickle => {}
            _ = reader.read_to_end(&mut answer) => {}
        }
    })
    .await
    .is_ok();
    let rest = reader.read_to_end(&mut answer);
    let _ = tokio::time::timeout(Duration::from_secs(1), rest).await;
    (cut_off, String::from_utf8_lossy(&answer).into_owned())
}
