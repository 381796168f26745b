//! A guest's calls to other functions (`http://turnpike/...`, see `turnpike_worker::calls`):
//! the worker hands them to its platform with the caller's class and depth, denies every other
//! outgoing request, and gives the caller's slot away while it waits.
//!
//! The platform here is a recording fake (the real one, the control plane's gateway link, is
//! tested end to end in `crates/cluster/tests/up.rs`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use turnpike_worker::calls::{CallError, CallFuture, Caller, Platform};
use turnpike_worker::{InvokeOptions, Request, Runtime, RuntimeConfig, Worker, WorkerConfig};

/// Answers `/refuse` with a connection error, `/wait` once `release` is notified, anything
/// else at once with `platform saw class=C depth=D`; records every call.
#[derive(Debug, Default, Clone)]
struct FakePlatform(Arc<Recorded>);

#[derive(Debug, Default)]
struct Recorded {
    calls: Mutex<Vec<(Caller, http::Method, String)>>,
    release: tokio::sync::Notify,
}

impl std::ops::Deref for FakePlatform {
    type Target = Recorded;
    fn deref(&self) -> &Recorded {
        &self.0
    }
}

impl Platform for FakePlatform {
    fn call(
        &self,
        caller: Caller,
        request: http::Request<turnpike_worker::calls::WasiBody>,
    ) -> CallFuture {
        let me = self.clone();
        Box::pin(async move {
            let uri = request.uri().to_string();
            me.calls.lock().expect("not poisoned").push((
                caller.clone(),
                request.method().clone(),
                uri.clone(),
            ));
            if uri.ends_with("/refuse") {
                return Err(CallError::ConnectionRefused);
            }
            if uri.ends_with("/wait") {
                me.release.notified().await;
            }
            let body = format!(
                "platform saw class={} depth={}\n",
                caller.class.0, caller.depth
            );
            let response = http::Response::builder()
                .status(201)
                .header("x-turnpike-class", "fake")
                .body(
                    Full::new(Bytes::from(body))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .expect("a valid response");
            Ok(response)
        })
    }
}

fn worker_with(platform: Option<FakePlatform>, cores: u32) -> (Worker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = Arc::new(Runtime::new(RuntimeConfig::new(dir.path())).expect("runtime"));
    let worker = Worker::new(
        runtime,
        WorkerConfig {
            cores,
            platform: platform.map(|p| Arc::new(p) as Arc<dyn Platform>),
            ..WorkerConfig::default()
        },
    )
    .expect("worker starts");
    (worker, dir)
}

#[tokio::test]
async fn a_call_goes_to_the_platform_with_the_callers_class_and_depth() {
    let platform = FakePlatform::default();
    let (worker, _dir) = worker_with(Some(platform.clone()), 2);
    let chain = load(&worker, "chain");
    let outcome = worker
        .invoke(
            &chain,
            Request::get("/?to=/hello%3Fx%3D1"),
            InvokeOptions::class(STANDARD)
                .depth(2)
                .call_token("signed-token".into()),
        )
        .await;
    let response = outcome.result.expect("chain succeeds");
    assert_eq!(
        (response.status, response.text().as_str()),
        (
            201,
            "called /hello?x=1: 201, ran at fake\nplatform saw class=1 depth=2\n"
        )
    );
    let calls = platform.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![(
            Caller {
                class: STANDARD,
                depth: 2,
                token: Some("signed-token".into()),
                traceparent: None,
            },
            http::Method::GET,
            "http://turnpike/hello?x=1".to_string()
        )]
    );
}

#[tokio::test]
async fn a_call_to_another_app_by_its_platform_name_goes_to_the_platform() {
    let platform = FakePlatform::default();
    let (worker, _dir) = worker_with(Some(platform.clone()), 2);
    let chain = load(&worker, "chain");
    let outcome = worker
        .invoke(
            &chain,
            Request::get("/?to=/cart&via=shop.turnpike"),
            InvokeOptions::class(BATCH).call_token("t".into()),
        )
        .await;
    let response = outcome.result.expect("chain succeeds");
    assert_eq!(response.status, 201, "{}", response.text());
    let calls = platform.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].2, "http://shop.turnpike/cart");
}

#[tokio::test]
async fn other_hosts_are_denied_and_platform_errors_reach_the_guest() {
    let platform = FakePlatform::default();
    let (worker, _dir) = worker_with(Some(platform.clone()), 2);
    let chain = load(&worker, "chain");
    for via in [
        "example.com",
        "127.0.0.1:1",
        "turnpike.example.com",
        "a.b.turnpike",
    ] {
        let outcome = worker
            .invoke(
                &chain,
                Request::get(format!("/?to=/x&via={via}")),
                InvokeOptions::class(CRITICAL),
            )
            .await;
        let response = outcome.result.expect("the guest answers");
        assert_eq!(response.status, 502, "{via}: {}", response.text());
        assert!(
            response.text().contains("HttpRequestDenied"),
            "{via}: {}",
            response.text()
        );
    }
    assert!(
        platform.calls.lock().unwrap().is_empty(),
        "denied calls never reach the platform"
    );

    let outcome = worker
        .invoke(
            &chain,
            Request::get("/?to=/refuse"),
            InvokeOptions::class(BATCH),
        )
        .await;
    let response = outcome.result.expect("the guest answers");
    assert_eq!(response.status, 502);
    assert!(
        response.text().contains("ConnectionRefused"),
        "{}",
        response.text()
    );
}

#[tokio::test]
async fn without_a_platform_every_call_is_denied() {
    let (worker, _dir) = worker_with(None, 1);
    let chain = load(&worker, "chain");
    let outcome = worker
        .invoke(
            &chain,
            Request::get("/?to=/hello"),
            InvokeOptions::class(CRITICAL),
        )
        .await;
    let response = outcome.result.expect("the guest answers");
    assert_eq!(response.status, 502);
    assert!(
        response.text().contains("HttpRequestDenied"),
        "{}",
        response.text()
    );
}

#[tokio::test]
async fn a_caller_waiting_for_its_call_gives_its_slot_away() {
    let platform = FakePlatform::default();
    // One slot: if the waiting caller kept it, hello could not run until the call returned,
    // and the call returns only after hello has.
    let (worker, _dir) = worker_with(Some(platform.clone()), 1);
    let chain = load(&worker, "chain");
    let hello = load(&worker, "hello");
    let caller = worker.submit(
        &chain,
        Request::get("/?to=/wait"),
        InvokeOptions::class(CRITICAL),
    );
    // Wait until the call is out (the caller is then blocked on it).
    for _ in 0..2000 {
        if !platform.calls.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(platform.calls.lock().unwrap().len(), 1, "the call went out");
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        worker.invoke(&hello, Request::get("/"), InvokeOptions::class(BATCH)),
    )
    .await
    .expect("a lower class runs while the caller waits for its call");
    assert_eq!(outcome.result.expect("hello").status, 200);

    platform.release.notify_one();
    let outcome = caller.await;
    let response = outcome.result.expect("the caller finishes");
    assert_eq!(response.status, 201, "{}", response.text());
    assert!(outcome.usage.blocks >= 1, "{:?}", outcome.usage);
}
