//! Logs through the real binary: `--log-format json` writes one JSON object a line on
//! stderr, filtered by `RUST_LOG`, and an invocation's events carry its span's fields (its
//! id, tenant, app, function and class) - what a log collector joins across roles.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use common::{status_of, Child, BIN};

#[test]
fn json_logs_carry_the_invocations_span() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Child(
        Command::new(BIN)
            .args([
                "--log-format",
                "json",
                "up",
                "--listen",
                "127.0.0.1:0",
                "--emulate",
                "1",
            ])
            .args(["--shards", "1", "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "turnpike_gateway=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("`turnpike up` starts"),
    );
    // Read stdout to its end on a thread of its own (the process must never find its stdout
    // closed), passing on the gateway's address.
    let stdout = child.0.stdout.take().unwrap();
    let (address, gateway_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("Turnpike is up: gateway http://") {
                let _ = address.send(a.trim().parse::<SocketAddr>().expect("an address"));
            }
        }
    });
    let gateway = gateway_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("`turnpike up` says where its gateway is");
    // A malformed emulation: the worker refuses it, the gateway answers 400 and logs why.
    let mut stream = TcpStream::connect(gateway).unwrap();
    stream
        .write_all(b"GET /work/batch?ms=lots HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(answer.contains(r#"{"error":"#), "{answer}");
    let _ = child.0.kill();
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let refusal = events
        .iter()
        .find(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("non-negative integer"))
        })
        .unwrap_or_else(|| panic!("no refusal logged: {stderr}"));
    assert_eq!(refusal["level"], "DEBUG");
    assert_eq!(refusal["fields"]["status"], 400);
    let span = &refusal["span"];
    assert_eq!(span["name"], "invocation", "{refusal}");
    assert!(span["invocation"].is_u64(), "{refusal}");
    assert_eq!(span["tenant"], "admin");
    assert_eq!(span["app"], "demo");
    assert_eq!(span["function"], "spin");
    assert_eq!(span["class"], "batch");
    // RUST_LOG keeps the other crates' debug events out.
    assert!(
        events.iter().all(|e| e["level"] != "DEBUG"
            || e["target"]
                .as_str()
                .unwrap()
                .starts_with("turnpike_gateway")),
        "{stderr}"
    );
}
