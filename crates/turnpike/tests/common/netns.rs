//! A cluster of hosts made of network namespaces (`scripts/netns-cluster.sh`), for the tests
//! that run Turnpike across hosts: making and taking it down, entering its client host, and
//! raw HTTP requests from there.
//!
//! It needs root (network namespaces). Without root or iproute2 a test is skipped with a
//! note, unless `TURNPIKE_REQUIRE_NETNS=1` (set by `scripts/test.sh`, so CI runs them), which
//! makes a missing prerequisite a failure.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{status_of, BIN};

pub const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/netns-cluster.sh"
);

/// A cluster, taken down (processes, namespaces, state) on drop, also when the test fails.
/// Each test's cluster has its own namespace prefix and subnet, so that a cluster made by
/// hand (`tpc`, 10.213.7) or by another test can run beside it.
pub struct Cluster {
    pub name: &'static str,
    pub subnet: &'static str,
    pub dir: PathBuf,
}

impl Cluster {
    /// The cluster `name` on `subnet` with its state in `dir`/cluster, up; `None` (with a
    /// note) where this machine cannot make namespaces and CI did not ask for them.
    pub fn up(name: &'static str, subnet: &'static str, dir: &Path) -> Option<Self> {
        if !namespaces_available() {
            return None;
        }
        let cluster = Self {
            name,
            subnet,
            dir: dir.join("cluster"),
        };
        // A cluster left by a killed run of this test.
        let _ = cluster.script().arg("down").status();
        let up = cluster.script().arg("up").output().expect("bash runs");
        assert!(
            up.status.success(),
            "netns-cluster.sh up failed:\n{}{}",
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&up.stdout));
        Some(cluster)
    }

    /// `netns-cluster.sh` for this cluster, to be given its arguments.
    pub fn script(&self) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(SCRIPT)
            .env("TURNPIKE_NETNS_NAME", self.name)
            .env("TURNPIKE_NETNS_SUBNET", self.subnet)
            .env("TURNPIKE_NETNS_DIR", &self.dir)
            .env("TURNPIKE_BIN", BIN);
        command
    }

    /// Runs `netns-cluster.sh ARGS`, which must succeed.
    pub fn run(&self, args: &[&str]) {
        let out = self.script().args(args).output().expect("bash runs");
        assert!(
            out.status.success(),
            "netns-cluster.sh {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Host `n` of the subnet at `port`.
    pub fn address(&self, n: u8, port: u16) -> SocketAddr {
        format!("{}.{n}:{port}", self.subnet)
            .parse()
            .expect("an address")
    }

    /// Gateway `n` (1 or 2).
    pub fn gateway(&self, n: u8) -> SocketAddr {
        self.address(10 + n, 8080)
    }

    /// The store's URL, as the roles have it.
    pub fn store_url(&self) -> String {
        format!("postgres://postgres@{}.2:5432/postgres", self.subnet)
    }

    pub fn admin_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin-key"))
            .expect("the admin key the first gateway printed")
            .trim()
            .to_string()
    }

    /// The pid of `host`'s role process, if it runs.
    pub fn pid_of(&self, host: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("hosts").join(host).join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script().arg("down").status();
    }
}

/// Whether this machine can make network namespaces (root and iproute2); if not, a note,
/// or a failure when CI asked for them (`TURNPIKE_REQUIRE_NETNS`).
pub fn namespaces_available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if !(root && ip) {
        let why = if root { "no iproute2" } else { "not root" };
        assert!(
            std::env::var_os("TURNPIKE_REQUIRE_NETNS").is_none(),
            "TURNPIKE_REQUIRE_NETNS is set, but {why}: cannot make network namespaces"
        );
        eprintln!("skipped: {why}, so no network namespaces (TURNPIKE_REQUIRE_NETNS=1 makes this a failure)");
    }
    root && ip
}

/// Namespaces named `NAME-...` in `ip netns list`.
pub fn namespaces_named(name: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&format!("{name}-")))
        .map(str::to_string)
        .collect()
}

/// Processes whose command line names `dir` (the roles read their configs from it).
pub fn processes_of(dir: &Path) -> String {
    let out = Command::new("pgrep")
        .args(["-af", &dir.display().to_string()])
        .output()
        .expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Moves this thread into the network namespace `ns` (`ip netns` names it in /run/netns).
/// Threads and processes it starts from now on are there too.
pub fn enter_namespace(ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("the namespace exists");
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("setns {ns}: {e}"));
}

/// An answer to an HTTP/1.0 request: its status, its head's header lines and its body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (lowercase), if the answer has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// How a request went without an answer.
#[derive(Debug)]
pub enum Unanswered {
    /// No connection (nothing listens, or the host is cut off).
    Connect(std::io::Error),
    /// Connected, then the connection failed or closed before a whole answer.
    Broken(std::io::Error),
}

/// An HTTP/1.0 request (so the answer's body is not chunked) on its own connection, with
/// `Host: t` unless `headers` name one.
pub async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, Unanswered> {
    exchange_with_body(addr, method, path, headers, b"").await
}

/// [`exchange`] with a request body.
pub async fn exchange_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, Unanswered> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(Unanswered::Connect)?;
    let mut text = format!(
        "{method} {path} HTTP/1.0\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        text.push_str("Host: t\r\n");
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.map_err(Unanswered::Broken)?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(Unanswered::Broken)?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return Err(Unanswered::Broken(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("closed before a whole head: {answer:?}"),
        )));
    };
    Ok(Answer {
        status: status_of(head),
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// [`exchange`], which must get an answer: its status and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let answer = exchange(addr, method, path, headers)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} at {addr}: {e:?}"));
    (answer.status, answer.body)
}

/// The `p`-quantile (nearest rank) of `values`, sorted here.
pub fn quantile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// [`exchange_with_body`] with a text body, panicking (naming the request) when there is no
/// answer.
pub async fn send(
    gateway: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    exchange_with_body(gateway, method, path, headers, body.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"))
}
