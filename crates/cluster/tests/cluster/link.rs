//! Links (`turnpike_wire::link`) against a real `Worker` service (an emulated worker) on
//! a loopback port: calls multiplexed on one stream are answered by their own tags; a peer
//! that dies fails the calls in flight instead of leaving them hanging (and the peer cancels
//! them), and the link opens a new stream to the restarted peer; an idle stream is closed and
//! reopened on demand; a cancelled call, or one whose deadline passes, is cancelled at the
//! peer and still answered with what it used.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic::transport::{Endpoint, Server};
use turnpike_node::emulated::{EmulatedConfig, EmulatedWorker};
use turnpike_node::node::NodeLoad;
use turnpike_policy::ClassSet;
use turnpike_wire::invocation::FailureKind;
use turnpike_wire::link::{Link, IDLE_CLOSE};
use turnpike_wire::proto::worker_client::WorkerClient;
use turnpike_wire::rpc;

use crate::common::serial;
use crate::emulated::{body, invocation};

/// Far beyond anything these calls need: only a hang reaches it.
pub const HANG: Duration = Duration::from_secs(20);

/// An emulated 4-core worker served on a loopback port for the rest of the test; its
/// address.
async fn start_worker() -> SocketAddr {
    start_worker_kept().await.0
}

/// [`start_worker`], and the worker, to look at its load.
pub async fn start_worker_kept() -> (SocketAddr, EmulatedWorker) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("a bound address");
    let mut config = EmulatedConfig::new(ClassSet::default_four());
    config.cores = 4;
    let worker = EmulatedWorker::new(config);
    let served = worker.clone();
    tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(served.into_server())
            .serve_with_incoming(rpc::incoming(listener))
            .await;
    });
    (address, worker)
}

/// Waits (at most [`HANG`]) until `worker` has nothing in flight.
pub async fn drained(worker: &EmulatedWorker) {
    tokio::time::timeout(HANG, async {
        while worker.functions() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the worker's invocations end, not run on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_ends_at_the_peer_and_is_answered_with_what_it_used() {
    let _serial = serial().await;
    let (address, worker) = start_worker_kept().await;
    let link = std::sync::Arc::new(link_to(address));
    let call = invocation("/?ms=60000");
    let cancel = call.cancel.clone();
    let running = tokio::spawn({
        let link = link.clone();
        async move { link.call(call).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    let outcome = tokio::time::timeout(HANG, running)
        .await
        .expect("a cancelled call is answered, not left for its minute")
        .unwrap()
        .expect("answered");
    assert_eq!(outcome.failure_kind(), Some(FailureKind::Cancelled));
    let used = outcome.usage.expect("it ran, so it has usage").cpu;
    assert!(
        used > Duration::ZERO && used < Duration::from_secs(30),
        "{used:?}"
    );
    drained(&worker).await;

    // A deadline is kept by the peer itself: nobody cancels this one.
    let mut call = invocation("/?ms=60000");
    call.deadline = Some(Instant::now() + Duration::from_millis(300));
    let outcome = tokio::time::timeout(HANG, link.call(call))
        .await
        .expect("answered at its deadline")
        .expect("answered");
    assert_eq!(outcome.failure_kind(), Some(FailureKind::Cancelled));
    drained(&worker).await;
}

pub fn link_to(address: SocketAddr) -> Link {
    let endpoint = Endpoint::from_shared(format!("http://{address}")).expect("an address is a URI");
    Link::to_worker(WorkerClient::new(rpc::channel(endpoint)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_one_link_get_their_own_answers_in_the_order_they_finish() {
    let _serial = serial().await;
    let address = start_worker().await;
    let link = std::sync::Arc::new(link_to(address));

    let slow = tokio::spawn({
        let link = link.clone();
        async move { link.call(invocation("/?ms=400")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fast = Vec::new();
    for ms in [0, 1, 2] {
        let outcome = tokio::time::timeout(HANG, link.call(invocation(&format!("/?ms={ms}"))))
            .await
            .expect("no hang")
            .expect("answered");
        fast.push(body(&outcome));
    }
    // The quick ones came back while the slow one was still running on the same stream.
    assert!(!slow.is_finished(), "the 400 ms call finished first");
    assert_eq!(
        fast,
        [
            "emulated ms=0 mb=2\n",
            "emulated ms=1 mb=2\n",
            "emulated ms=2 mb=2\n"
        ]
    );
    let slow = tokio::time::timeout(HANG, slow)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(body(&slow), "emulated ms=400 mb=2\n");
}

/// Forwards every connection accepted on `listener` to `upstream`; aborting the returned
/// set closes all of them at once, as a peer's process dying would.
fn proxy(listener: TcpListener, upstream: SocketAddr) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    set.spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            connections.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_fails_the_calls_in_flight_and_a_restarted_one_is_reached_again() {
    let _serial = serial().await;
    let (upstream, worker) = start_worker_kept().await;
    // The link reaches the worker through a proxy whose death stands for the peer's.
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = front.local_addr().unwrap();
    let peer = proxy(front, upstream);
    let link = std::sync::Arc::new(link_to(address));
    link.call(invocation("/?ms=0")).await.expect("first call");

    // Three calls in flight when the peer goes away (its connections drop).
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let link = link.clone();
            tokio::spawn(async move { link.call(invocation("/?ms=60000")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(peer);
    for call in in_flight {
        let result = tokio::time::timeout(HANG, call)
            .await
            .expect("a call on a dead link must end, not hang")
            .unwrap();
        let status = result.expect_err("the peer died before answering");
        assert!(!status.message().is_empty(), "{status:?}");
    }
    assert!(!link.is_open(), "a broken stream is forgotten");
    // The peer saw its caller go and cancelled them: they do not run their minute for nobody.
    drained(&worker).await;

    // The peer comes back on the same address: the next call opens a new stream.
    let _peer = proxy(TcpListener::bind(address).await.unwrap(), upstream);
    let outcome = tokio::time::timeout(HANG, async {
        loop {
            // The first attempt may still meet the connection being re-established.
            match link.call(invocation("/?ms=0")).await {
                Ok(outcome) => break outcome,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the restarted peer is reached");
    assert_eq!(body(&outcome), "emulated ms=0 mb=2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_is_closed_and_opened_again_on_the_next_call() {
    let _serial = serial().await;
    let address = start_worker().await;
    let link = link_to(address);
    assert!(!link.is_open());
    link.call(invocation("/?ms=0")).await.expect("call");
    assert!(link.is_open());
    // Closed within two checks (every IDLE_CLOSE / 2) after IDLE_CLOSE without a call.
    tokio::time::sleep(IDLE_CLOSE * 2 + Duration::from_millis(500)).await;
    assert!(
        !link.is_open(),
        "still open after {:?} idle",
        IDLE_CLOSE * 2
    );
    let outcome = link.call(invocation("/?ms=1")).await.expect("reopened");
    assert_eq!(body(&outcome), "emulated ms=1 mb=2\n");
    assert!(link.is_open());
}
