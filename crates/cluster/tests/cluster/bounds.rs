//! The named bounds of the invocation path, flooded one at a time on a real `turnpike up`
//! cluster: past each bound a request gets 503 with `Retry-After` and a JSON error naming the
//! bound, nothing queues beyond it, and the cluster keeps serving afterwards.
//! (`ledger_queue_rows_max` needs a store that falls behind: its test is the gateway's
//! `billing::tests::while_the_store_is_down_the_ledger_bounds_refuse_and_the_outbox_loses_nothing`.)

use std::net::SocketAddr;
use std::time::Duration;

use turnpike_cluster::up::{self, Cluster, UpConfig};
use turnpike_node::emulated::EmulatedFleet;

use crate::common::{emulated_config, exchange, serial};

/// `GET path`: (status, head, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: turnpike\r\nConnection: close\r\n\r\n");
    exchange(addr, request.as_bytes()).await
}

/// `n` concurrent `GET path`s: their (status, head, body), in no particular order.
async fn flood(addr: SocketAddr, path: &str, n: usize) -> Vec<(u16, String, String)> {
    let requests: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_string();
            tokio::spawn(async move { get(addr, &path).await })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.expect("the request task"));
    }
    answers
}

/// Checks that the refusals among `answers` are 503s with `Retry-After` and a JSON error
/// naming `bound`, and returns how many there were; every other answer must be a 200.
fn refusals(answers: &[(u16, String, String)], bound: &str) -> usize {
    let mut refused = 0;
    for (status, head, body) in answers {
        match status {
            200 => {}
            503 => {
                refused += 1;
                let head = head.to_lowercase();
                assert!(head.contains("retry-after: 1"), "{head}");
                assert!(head.contains("content-type: application/json"), "{head}");
                let error: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
                let message = error["error"].as_str().expect("an `error` string");
                assert!(message.contains(bound), "{message}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    refused
}

async fn keeps_serving(cluster: &Cluster) {
    let (status, _, body) = get(cluster.gateway, "/hello").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_invocations_past_its_in_flight_bound() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = emulated_config(&dir, 1);
    config.bounds.gateway_in_flight_invocations_max = 3;
    let cluster = up::start(&config).await.expect("the cluster starts");
    // Each emulated invocation takes 400 ms: 12 at once cannot all be in flight.
    let answers = flood(cluster.gateway, "/work/batch?ms=400", 12).await;
    let refused = refusals(&answers, "gateway_in_flight_invocations_max");
    assert!(refused >= 12 - 3, "{refused} refused: {answers:?}");
    assert!(refused < 12, "some ran");
    keeps_serving(&cluster).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_refuses_invocations_past_its_queue_bound_and_places_the_rest_later() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    // No workers yet: every invocation waits in the shard's queue.
    let mut config = emulated_config(&dir, 0);
    config.bounds.shard_queue_invocations_max = 2;
    let cluster = up::start(&config).await.expect("the cluster starts");
    let gateway = cluster.gateway;
    let waiting: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(gateway, "/hello").await }))
        .collect();
    // Until both wait in the shard's queue.
    for _ in 0..200 {
        if cluster.shard(0).queued() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cluster.shard(0).queued(), 2);
    let answers = flood(gateway, "/hello", 5).await;
    assert_eq!(refusals(&answers, "shard_queue_invocations_max"), 5);
    assert_eq!(
        cluster.shard(0).queued(),
        2,
        "nothing queued past the bound"
    );
    // A worker arrives: the two waiting are placed and answered, and new work runs.
    let fleet = EmulatedFleet::start(
        1,
        config.emulated.as_ref().unwrap(),
        &cluster.shards,
        7,
        cluster.directory(),
    )
    .await
    .expect("a worker starts");
    for request in waiting {
        let (status, _, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    keeps_serving(&cluster).await;
    drop(fleet);
    cluster.stop().await;
}

/// Floods the one worker of `config`'s cluster (bound to 2 invocations in flight) with 8.
async fn floods_a_worker(mut config: UpConfig) {
    config.bounds.worker_in_flight_invocations_max = 2;
    let cluster = up::start(&config).await.expect("the cluster starts");
    // 200 ms each: 8 at once are more than the worker accepts.
    let answers = flood(cluster.gateway, "/work/batch?ms=200", 8).await;
    let refused = refusals(&answers, "worker_in_flight_invocations_max");
    assert!(refused >= 1, "none refused: {answers:?}");
    assert!(refused < 8, "some ran");
    keeps_serving(&cluster).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_invocations_past_its_in_flight_bound() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = UpConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().to_path_buf(),
    );
    config.shards = 1;
    config.workers = 1;
    config.cores_per_worker = 2;
    // A real wasm worker (the spin function).
    floods_a_worker(config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulated_worker_keeps_the_same_bound() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    floods_a_worker(emulated_config(&dir, 1)).await;
}
