//! Roles of one process calling each other through a `local::Directory`: a gateway's link
//! reaches a shard, the shard places on a worker and polls it, and the worker's dispatcher
//! registers and joins the idle list - all at addresses where nothing listens, so any call
//! that went over a socket would fail. A shard replaced at the same address is the one
//! called; a directory made for RPC only records nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnpike_node::emulated::{EmulatedConfig, EmulatedWorker};
use turnpike_node::node::{self, DispatchConfig};
use turnpike_policy::ClassSet;
use turnpike_scheduler::shard::{ShardConfig, ShardService};
use turnpike_wire::directory::{Directory, ShardPeer};

use crate::common::serial;
use crate::emulated::{body, invocation};

/// Far beyond anything these calls need: only a hang reaches it.
const HANG: Duration = Duration::from_secs(20);

/// A loopback address where nothing listens (a port the OS gave and took back).
fn unused_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("a bound address")
}

/// A shard in `directory` at a fresh address where nothing listens.
fn shard_in(directory: &Directory) -> (SocketAddr, ShardService) {
    let address = unused_address();
    let shard = ShardService::start(
        ClassSet::default_four(),
        ShardConfig::default(),
        directory.clone(),
    );
    directory.add_shard(address, Arc::new(shard.clone()));
    (address, shard)
}

/// An emulated 2-core worker in `directory`, at a fresh address where nothing listens.
fn emulated_in(directory: &Directory) -> (SocketAddr, EmulatedWorker) {
    let address = unused_address();
    let mut config = EmulatedConfig::new(ClassSet::default_four());
    config.cores = 2;
    let worker = EmulatedWorker::new(config);
    directory.add_worker(address, Arc::new(worker.clone()));
    (address, worker)
}

/// An emulated worker in `directory` (`emulated_in`), its dispatcher keeping it registered
/// with the shard at `shard`; returns once `shard` knows it.
async fn worker_in(directory: &Directory, shard: SocketAddr, registered: &ShardService) {
    let (address, worker) = emulated_in(directory);
    tokio::spawn(node::dispatch(
        Arc::new(worker),
        address,
        vec![shard],
        DispatchConfig::new(7),
        directory.clone(),
    ));
    let start = Instant::now();
    while registered.live_workers() == 0 {
        assert!(start.elapsed() < HANG, "the worker never registered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_in_one_process_need_no_socket() {
    let _serial = serial().await;
    let directory = Directory::new();
    let (address, shard) = shard_in(&directory);
    assert!(matches!(directory.shard(address), ShardPeer::InProcess(..)));
    worker_in(&directory, address, &shard).await;
    let link = Arc::new(directory.shard_link(address));
    // More at once than the worker has cores: some are placed by polling it.
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let link = link.clone();
            tokio::spawn(async move {
                tokio::time::timeout(HANG, link.call(invocation(&format!("/?ms={}", i % 4)))).await
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let outcome = call
            .await
            .expect("the call's task")
            .expect("no hang")
            .expect("answered");
        assert_eq!(body(&outcome), format!("emulated ms={} mb=2\n", i % 4));
    }
    let c = shard.counters();
    assert_eq!(c.placed_idle_list + c.placed_polling, 12, "{c:?}");
    assert_eq!(c.workers_lost, 0, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_replaced_at_the_same_address_is_the_one_called() {
    let _serial = serial().await;
    let directory = Directory::new();
    // The first shard has no workers: a call reaching it would wait forever.
    let (address, _first) = shard_in(&directory);
    let link = directory.shard_link(address);
    let second = ShardService::start(
        ClassSet::default_four(),
        ShardConfig::default(),
        directory.clone(),
    );
    directory.add_shard(address, Arc::new(second.clone()));
    worker_in(&directory, address, &second).await;
    let outcome = tokio::time::timeout(HANG, link.call(invocation("/?ms=1")))
        .await
        .expect("no hang: the link called the second shard")
        .expect("answered");
    assert_eq!(body(&outcome), "emulated ms=1 mb=2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_for_rpc_only_records_nothing() {
    let _serial = serial().await;
    let directory = Directory::rpc_only();
    let (address, _shard) = shard_in(&directory);
    assert!(matches!(directory.shard(address), ShardPeer::Rpc(_)));
    let (worker, _) = emulated_in(&directory);
    assert!(directory.worker(&format!("http://{worker}")).is_none());
    // Over RPC to an address where nothing listens: a clear transport error, not a hang.
    let error = tokio::time::timeout(HANG, directory.shard_link(address).call(invocation("/")))
        .await
        .expect("no hang")
        .expect_err("nothing listens there");
    assert!(
        matches!(error, turnpike_wire::invocation::CallError::Unavailable(_)),
        "{error:?}"
    );
}

#[test]
fn workers_are_found_by_their_registered_uri_only() {
    let directory = Directory::new();
    let (address, _) = emulated_in(&directory);
    assert!(directory.worker(&format!("http://{address}")).is_some());
    assert!(directory.worker(&address.to_string()).is_none());
    assert!(directory.worker("http://not-an-address").is_none());
    assert!(directory
        .worker(&format!("http://{}", unused_address()))
        .is_none());
}
