//! The usage ledger across a PostgreSQL outage of 10 s under load, on a real `turnpike up`
//! cluster of emulated workers whose store is a PostgreSQL server of the test's own
//! (`scripts/postgres.sh`): while the database is down the gateway keeps serving, its
//! ledger moves the rows it cannot commit to the on-disk outbox, and once the database is
//! back every invocation answered 200 is in the ledger exactly once.
//!
//! Needs PostgreSQL's binaries: runs when `TURNPIKE_POSTGRES_URL` or
//! `TURNPIKE_REQUIRE_POSTGRES=1` says the machine has them (`scripts/test.sh` sets both), and
//! is skipped with a message otherwise, like the store's own PostgreSQL tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use turnpike_cluster::up;
use turnpike_store::Store;

use crate::common::{billed_this_month, emulated_config, exchange, serial};

/// How long the database is down.
const OUTAGE: Duration = Duration::from_secs(10);

fn postgres(command: &str, dir: &Path) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg(command)
        .arg(dir)
        .output()
        .expect("run scripts/postgres.sh");
    assert!(
        output.status.success(),
        "postgres.sh {command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Stops the test's PostgreSQL server however the test ends.
struct StopOnDrop<'a>(&'a Path);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
        let _ = std::process::Command::new("bash")
            .arg(script)
            .arg("stop")
            .arg(self.0)
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_under_load_loses_no_usage_row_and_bills_none_twice() {
    let wanted = std::env::var_os("TURNPIKE_POSTGRES_URL").is_some()
        || std::env::var("TURNPIKE_REQUIRE_POSTGRES").as_deref() == Ok("1");
    if !wanted {
        eprintln!(
            "skipped: no PostgreSQL (set TURNPIKE_POSTGRES_URL or TURNPIKE_REQUIRE_POSTGRES=1)"
        );
        return;
    }
    let _serial = serial().await;
    let pg = tempfile::tempdir().unwrap();
    let url = postgres("start", pg.path());
    let _stop = StopOnDrop(pg.path());
    let dir = tempfile::tempdir().unwrap();
    let mut config = emulated_config(&dir, 1);
    config.store_url = Some(url.clone());
    let cluster = up::start(&config).await.expect("the cluster starts");
    let gateway = cluster.gateway;
    // Four clients, one request at a time each, until told to stop.
    let (answered, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (answered, refused, stop) = (answered.clone(), refused.clone(), stop.clone());
            tokio::spawn(async move {
                let request =
                    b"GET /hello?ms=5 HTTP/1.1\r\nHost: turnpike\r\nConnection: close\r\n\r\n";
                while !stop.load(Ordering::Relaxed) {
                    let (status, _, body) = exchange(gateway, request).await;
                    match status {
                        200 => answered.fetch_add(1, Ordering::Relaxed),
                        503 => refused.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected {other}: {body}"),
                    };
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres("stop", pg.path());
    let before_outage = answered.load(Ordering::Relaxed);
    tokio::time::sleep(OUTAGE).await;
    let during_outage = answered.load(Ordering::Relaxed) - before_outage;
    postgres("start", pg.path());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("a client");
    }
    // The outbox was replayed once the database was back (every second); stopping the
    // gateway commits the rows it still holds.
    cluster.stop().await;
    let store = Store::open(&url).await.expect("the database is back");
    let billed = billed_this_month(&store).await.invocations;
    let answered = answered.load(Ordering::Relaxed);
    assert!(
        during_outage > 0,
        "the gateway kept serving while the database was down"
    );
    assert_eq!(
        billed,
        answered,
        "every invocation answered 200 is billed once ({} refused)",
        refused.load(Ordering::Relaxed)
    );
}
