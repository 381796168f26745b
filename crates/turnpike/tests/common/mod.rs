//! What the process-level tests share: the binary, role processes that cannot outlive their
//! test, and raw HTTP requests and answers.

#![allow(dead_code)] // Each test binary uses its own share of these.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// A `GET` of `path` on its own connection: the status and the whole raw answer.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    (status_of(&text), text)
}

/// Starts a role process (with the cluster's chain token in its environment) and returns it
/// with the address it printed on the line starting with `prefix`.
pub fn start_role(args: &[String], prefix: &str) -> (Child, String) {
    let (child, addr, _) = start_role_reading(args, prefix, false);
    (child, addr)
}

/// [`start_role`], and the URL of its `/metrics` (from its `metrics: URL` line).
pub fn start_role_with_metrics(args: &[String], prefix: &str) -> (Child, String, String) {
    let (child, addr, metrics) = start_role_reading(args, prefix, true);
    (child, addr, metrics.expect("a `metrics: URL` line"))
}

/// One counter's value in the Prometheus text at `url` (`http://HOST:PORT/metrics`).
pub async fn counter(url: &str, name: &str) -> f64 {
    let url = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = url.split_once('/').expect("a path");
    let (status, text) = get(host.parse().expect("an address"), &format!("/{path}")).await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Starts a role; its address from its first line (which starts with `prefix`) and, if
/// `metrics`, the URL from the first later line starting `metrics: `. Internal RPC is plain
/// text (`TURNPIKE_INSECURE_INTERNAL`) unless `args` give `--tls-dir` or start `up` (which
/// makes its own certificates).
pub fn start_role_reading(
    args: &[String],
    prefix: &str,
    metrics: bool,
) -> (Child, String, Option<String>) {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("TURNPIKE_CHAIN_TOKEN", "test-token-0123456789")
        .stdout(Stdio::piped());
    if !args.iter().any(|a| a == "--tls-dir") && args.first().is_some_and(|a| a != "up") {
        command.env("TURNPIKE_INSECURE_INTERNAL", "true");
    }
    let mut child = Child(command.spawn().expect("the role starts"));
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("readable");
    let addr = first
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected `{prefix}...`, got {first:?}"))
        .trim()
        .to_string();
    let metrics_url = metrics.then(|| loop {
        let line = lines.next().expect("a metrics line").expect("readable");
        if let Some(url) = line.strip_prefix("metrics: ") {
            break url.trim().to_string();
        }
    });
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr, metrics_url)
}

/// `turnpike up` on OS-chosen ports with a fresh data dir: the process, the gateway's address
/// and the admin key it printed.
pub fn up(data_dir: &Path) -> (Child, SocketAddr, String) {
    let (child, gateway, key) = up_with(data_dir, &[]);
    let key = key.expect("`turnpike up` on a fresh data dir prints an admin key");
    assert!(key.starts_with("tp_"), "{key}");
    (child, gateway, key)
}

/// `turnpike up` on OS-chosen ports with `flags`: the process, the gateway's address and the
/// admin key it printed (only the first start on a data dir prints one).
pub fn up_with(data_dir: &Path, flags: &[&str]) -> (Child, SocketAddr, Option<String>) {
    let (child, gateway, key, _) = up_printing(data_dir, flags);
    (child, gateway, key)
}

/// [`up_with`], and every line it printed up to `Ctrl-C stops it`.
pub fn up_printing(
    data_dir: &Path,
    flags: &[&str],
) -> (Child, SocketAddr, Option<String>, Vec<String>) {
    up_printing_with_env(data_dir, flags, &[])
}

/// [`up_printing`] with `env` added to its environment.
pub fn up_printing_with_env(
    data_dir: &Path,
    flags: &[&str],
    env: &[(&str, &str)],
) -> (Child, SocketAddr, Option<String>, Vec<String>) {
    let mut child = Child(
        Command::new(BIN)
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(flags)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("`turnpike up` starts"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut gateway, mut key) = (None, None);
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("readable");
        if let Some(url) = line.strip_prefix("Turnpike is up: gateway http://") {
            gateway = Some(url.trim().parse().expect("the gateway's address"));
        }
        if let Some(k) = line.trim().strip_prefix("admin key: ") {
            key = Some(k.trim().to_string());
        }
        let done = line.starts_with("Ctrl-C stops it");
        printed.push(line);
        if done {
            break;
        }
    }
    // Keep reading what it prints, so it never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let gateway =
        gateway.unwrap_or_else(|| panic!("no gateway address in:\n{}", printed.join("\n")));
    (child, gateway, key, printed)
}

/// The first snapshot of the gateway's dashboard stream with `key`.
pub async fn dashboard_event(gateway: SocketAddr, key: &str) -> serde_json::Value {
    let mut stream = TcpStream::connect(gateway).await.expect("connect");
    let request =
        format!("GET /dashboard/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 8192];
    let read = async {
        loop {
            let n = stream.read(&mut buffer).await.expect("read");
            assert!(
                n > 0,
                "the stream ended: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&seen).into_owned();
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            if let Some((_, data)) = text.split_once("data: ") {
                if let Some((line, _)) = data.split_once('\n') {
                    return serde_json::from_str(line).expect("a JSON snapshot");
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("a snapshot within 30 s")
}

/// `turnpike ARGS` against `gateway` with `key`: its stdout, or a failure naming its stderr.
pub fn turnpike(gateway: SocketAddr, key: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("TURNPIKE_GATEWAY", format!("http://{gateway}"))
        .env("TURNPIKE_KEY", key)
        .output()
        .expect("turnpike runs");
    assert!(
        out.status.success(),
        "turnpike {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes tenant `name` through `gateway` with the admin's key: its API key.
pub fn create_tenant(gateway: SocketAddr, admin: &str, name: &str) -> String {
    let created = turnpike(gateway, admin, &["tenants", "create", name]);
    created
        .split_whitespace()
        .find(|w| w.starts_with("tp_"))
        .unwrap_or_else(|| panic!("no key in {created:?}"))
        .to_string()
}

pub mod netns;

/// A new database on the PostgreSQL server of `TURNPIKE_POSTGRES_URL` (`None`, with a note,
/// without one unless `TURNPIKE_REQUIRE_POSTGRES=1`): its URL.
pub async fn fresh_postgres(name: &str) -> Option<String> {
    use sqlx::Connection;
    let Ok(admin_url) = std::env::var("TURNPIKE_POSTGRES_URL") else {
        assert_ne!(
            std::env::var("TURNPIKE_REQUIRE_POSTGRES").as_deref(),
            Ok("1"),
            "TURNPIKE_POSTGRES_URL is not set"
        );
        eprintln!("{name}: skipped (set TURNPIKE_POSTGRES_URL)");
        return None;
    };
    let db = format!("turnpike_{name}_{}", std::process::id());
    let mut admin = sqlx::postgres::PgConnection::connect(&admin_url)
        .await
        .expect("connect to TURNPIKE_POSTGRES_URL");
    for statement in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        sqlx::query(&statement)
            .execute(&mut admin)
            .await
            .expect(&statement);
    }
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("a URL ending in /DATABASE");
    Some(format!("{base}/{db}"))
}

/// A directory with the example components `functions` (built by scripts/build-examples.sh)
/// in `dist/` and `manifest` as `turnpike.toml`.
pub fn app_dir(manifest: &str, functions: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("dist")).expect("mkdir");
    for name in functions {
        let built = turnpike_cluster::up::default_functions_dir().join(format!("{name}.wasm"));
        std::fs::copy(&built, dir.path().join(format!("dist/{name}.wasm"))).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; build it with scripts/build-examples.sh",
                built.display()
            )
        });
    }
    std::fs::write(dir.path().join("turnpike.toml"), manifest).expect("write");
    dir
}

/// [`up_with`], run on one CPU of this machine (so `turnpike up` makes one worker with one
/// slot), also returning the `/metrics` URL of every role it printed, by role (`worker 0`).
pub fn up_on_one_cpu(
    data_dir: &Path,
    flags: &[&str],
) -> (Child, SocketAddr, Option<String>, Vec<(String, String)>) {
    let data_dir = data_dir.to_path_buf();
    let flags: Vec<String> = flags.iter().map(ToString::to_string).collect();
    // A thread of its own: the child inherits the CPU mask of the thread that forks it.
    std::thread::spawn(move || {
        let mask = rustix::thread::sched_getaffinity(None).expect("this thread's CPUs");
        let cpu = (0..rustix::thread::CpuSet::MAX_CPU)
            .find(|&c| mask.is_set(c))
            .expect("a CPU");
        let mut one = rustix::thread::CpuSet::new();
        one.set(cpu);
        rustix::thread::sched_setaffinity(None, &one).expect("pin to one CPU");
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (child, gateway, key, printed) = up_printing(&data_dir, &flags);
        (child, gateway, key, metrics_urls(&printed))
    })
    .join()
    .expect("`turnpike up` started")
}

/// The `/metrics` URL of every role in what `turnpike up` printed (its `metrics of ROLE: URL`
/// lines), by role (`gateway`, `shard 0`, `worker 0`).
pub fn metrics_urls(printed: &[String]) -> Vec<(String, String)> {
    printed
        .iter()
        .filter_map(|line| {
            let (role, url) = line.trim().strip_prefix("metrics of ")?.split_once(": ")?;
            Some((role.to_string(), url.trim().to_string()))
        })
        .collect()
}
