//! Invocations through the worker: responses, the sandbox's limits, and its errors.
//!
//! Wall-clock bounds here are deliberately loose (these 2-core machines are shared and noisy);
//! what is asserted is the kind of outcome and orderings, not speed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use turnpike_worker::{InvokeError, InvokeOptions, Request};

#[tokio::test]
async fn hello_returns_its_body() {
    let (worker, _dir) = worker(2);
    let hello = load(&worker, "hello");
    let outcome = worker
        .invoke(&hello, Request::get("/"), InvokeOptions::class(STANDARD))
        .await;
    let response = outcome.result.expect("hello succeeds");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello from turnpike\n");
    assert_eq!(outcome.usage.class, STANDARD);
    assert!(outcome.usage.peak_memory_bytes > 0);
    assert!(outcome.usage.memory_mb_seconds > 0.0);
    assert_eq!(outcome.usage.parks, 0);
}

#[tokio::test]
async fn echo_returns_the_body_method_and_content_type() {
    let (worker, _dir) = worker(2);
    let echo = load(&worker, "echo");
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut request = Request::post("/anything?x=1", body.clone());
    request.headers.insert(
        "content-type",
        "application/x-test".parse().expect("header"),
    );
    let outcome = worker
        .invoke(&echo, request, InvokeOptions::class(BATCH))
        .await;
    let response = outcome.result.expect("echo succeeds");
    assert_eq!(response.status, 200);
    assert_eq!(response.body.as_ref(), body.as_slice());
    let header = |name: &str| {
        response
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header("x-echo-method").as_deref(), Some("POST"));
    assert_eq!(header("x-echo-bytes"), Some(body.len().to_string()));
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/x-test")
    );
}

#[tokio::test]
async fn a_bad_query_is_the_guests_400_not_an_error() {
    let (worker, _dir) = worker(1);
    let sleep = load(&worker, "sleep");
    let outcome = worker
        .invoke(&sleep, Request::get("/"), InvokeOptions::class(BATCH))
        .await;
    let response = outcome.result.expect("the guest answers");
    assert_eq!(response.status, 400);
    assert!(
        response.text().starts_with("bad request:"),
        "{}",
        response.text()
    );
}

#[tokio::test]
async fn grow_within_its_cap_returns_the_right_checksum_and_is_metered() {
    let (worker, _dir) = worker(1);
    let grow = load(&worker, "grow");
    let outcome = worker
        .invoke(
            &grow,
            Request::get("/?mb=16"),
            InvokeOptions::class(BATCH).memory_cap_mb(64),
        )
        .await;
    let response = outcome.result.expect("16 MB fits under a 64 MB cap");
    assert_eq!(response.text(), "checksum=00d58b9437322325 mb=16\n");
    let peak_mb = outcome.usage.peak_memory_bytes >> 20;
    assert!((16..64).contains(&peak_mb), "peak {peak_mb} MB");
}

#[tokio::test]
async fn a_memory_bomb_hits_its_cap_while_a_concurrent_hello_succeeds() {
    let (worker, _dir) = worker(2);
    let (grow, hello) = (load(&worker, "grow"), load(&worker, "hello"));
    // 1024 MB, not more: a wasm32 guest cannot even ask for 2 GiB or more in one allocation
    // (Rust caps a `Vec` at `isize::MAX`), so `grow?mb=3000` fails inside the guest (507)
    // before the host sees a `memory.grow`.
    let bomb = worker.submit(
        &grow,
        Request::get("/?mb=1024"),
        InvokeOptions::class(BATCH).memory_cap_mb(256),
    );
    let polite = worker.submit(&hello, Request::get("/"), InvokeOptions::class(BATCH));
    let (bomb, polite) = tokio::join!(bomb, polite);
    match bomb.result {
        Err(InvokeError::MemoryCap {
            limit_bytes,
            requested_bytes,
        }) => {
            assert_eq!(limit_bytes, 256 << 20);
            assert!(requested_bytes > limit_bytes);
        }
        other => panic!("expected MemoryCap, got {other:?}"),
    }
    assert!(bomb.usage.peak_memory_bytes <= 256 << 20);
    let message = InvokeError::MemoryCap {
        limit_bytes: 1,
        requested_bytes: 2,
    }
    .to_string();
    assert!(message.contains("memory cap exceeded"), "{message}");
    assert_eq!(
        polite.result.expect("hello is unaffected").text(),
        "hello from turnpike\n"
    );
}

#[tokio::test]
async fn a_runaway_guest_hits_its_timeout() {
    let _serial = serial().await;
    let (worker, _dir) = worker(1);
    let spin = load(&worker, "spin");
    let started = Instant::now();
    let outcome = worker
        .invoke(
            &spin,
            Request::get("/?ms=600000"),
            InvokeOptions::class(STANDARD).timeout(Duration::from_millis(300)),
        )
        .await;
    assert_eq!(outcome.result, Err(InvokeError::Timeout { limit_ms: 300 }));
    // Generous: the guest yields every 1 ms tick, so it stops within a few ms of 300 ms on a
    // quiet machine; 10 s only catches a timeout that did not fire.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(outcome.usage.cpu > Duration::ZERO);
    // The worker is free again afterwards.
    assert!(worker.running().is_empty());
    let hello = load(&worker, "hello");
    let after = worker
        .invoke(&hello, Request::get("/"), InvokeOptions::class(BATCH))
        .await;
    assert!(after.result.is_ok());
}

#[tokio::test]
async fn a_sleeping_guest_does_not_hold_its_slot() {
    let _serial = serial().await;
    // One slot. A top-class guest sleeps 400 ms; a batch spin of 50 ms arrives after it. If
    // the sleeper held the slot, the spin could only start after it.
    let (worker, _dir) = worker(1);
    let (sleep, spin) = (load(&worker, "sleep"), load(&worker, "spin"));
    let t0 = Instant::now();
    let sleeper = worker.submit(
        &sleep,
        Request::get("/?ms=400"),
        InvokeOptions::class(CRITICAL),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let spinner = worker.submit(&spin, Request::get("/?ms=50"), InvokeOptions::class(BATCH));
    let spinner = spinner.await;
    let spin_done = t0.elapsed();
    let sleeper = sleeper.await;
    assert!(spinner.result.is_ok());
    let slept = sleeper.result.expect("sleep succeeds");
    assert_eq!(slept.text(), "slept 400 ms\n");
    // The spin finished while the sleeper was still sleeping (the sleeper was submitted at
    // about t0, so it ended at about t0 + its wall time).
    assert!(
        spin_done < sleeper.usage.wall,
        "spin done at {spin_done:?}, sleeper ended at {:?}",
        sleeper.usage.wall
    );
    assert!(sleeper.usage.blocks >= 1);
    // Sleeping is not billed as CPU time (generous bound: it costs microseconds).
    assert!(
        sleeper.usage.cpu < Duration::from_millis(100),
        "{:?}",
        sleeper.usage
    );
}

#[tokio::test]
async fn unknown_class_and_oversized_cap_are_refused() {
    let (worker, _dir) = worker(1);
    let hello = load(&worker, "hello");
    let outcome = worker
        .invoke(
            &hello,
            Request::get("/"),
            InvokeOptions::class(turnpike_policy::ClassId(9)),
        )
        .await;
    assert!(matches!(
        outcome.result,
        Err(InvokeError::UnknownClass { class: 9, .. })
    ));
    let outcome = worker
        .invoke(
            &hello,
            Request::get("/"),
            InvokeOptions::class(BATCH).memory_cap_mb(1 << 20),
        )
        .await;
    assert!(matches!(
        outcome.result,
        Err(InvokeError::CapTooLarge { .. })
    ));
}

#[tokio::test]
async fn a_guest_trap_is_a_clear_error_and_the_worker_goes_on() {
    let (worker, _dir) = worker(1);
    let trapping = worker
        .runtime()
        .load(&wat(TRAPPING_PROXY))
        .expect("a proxy, if a broken one");
    let outcome = worker
        .invoke(&trapping, Request::get("/"), InvokeOptions::class(BATCH))
        .await;
    match &outcome.result {
        Err(InvokeError::Trap(message)) => {
            assert!(message.contains("unreachable"), "{message}");
            let shown = InvokeError::Trap(message.clone()).to_string();
            assert!(shown.starts_with("the function trapped: "), "{shown}");
            eprintln!("{shown}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    let hello = load(&worker, "hello");
    let after = worker
        .invoke(&hello, Request::get("/"), InvokeOptions::class(BATCH))
        .await;
    assert!(after.result.is_ok());
}

#[tokio::test]
async fn dropping_the_handle_cancels_the_invocation_and_frees_its_slot() {
    let (worker, _dir) = worker(1);
    let (spin, hello) = (load(&worker, "spin"), load(&worker, "hello"));
    let runaway = worker.submit(
        &spin,
        Request::get("/?ms=600000"),
        InvokeOptions::class(CRITICAL),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(worker.running(), vec![runaway.id()]);
    drop(runaway);
    // A batch hello can only run once the critical spin has left its slot.
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        worker.invoke(&hello, Request::get("/"), InvokeOptions::class(BATCH)),
    )
    .await
    .expect("the cancelled spin gave its slot back");
    assert!(outcome.result.is_ok());
    assert_eq!(worker.functions(), 0);
}

#[tokio::test]
async fn memory_is_measured_live_and_integrated_over_time() {
    let _serial = serial().await;
    let (worker, _dir) = worker(1);
    let grow = load(&worker, "grow");
    // Touch 64 MB, then hold it for 300 ms (spinning on registers).
    let handle = worker.submit(
        &grow,
        Request::get("/?mb=64&hold_ms=300"),
        InvokeOptions::class(BATCH),
    );
    // While it holds, the machine scheduler's ledger sees the grown memory. Poll for it
    // rather than sleeping a fixed time (the hold is long; 5 s only catches a hang).
    let t0 = Instant::now();
    while worker.used_mb() < 64 && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        worker.used_mb() >= 64,
        "ledger shows {} MB",
        worker.used_mb()
    );
    let outcome = handle.await;
    assert_eq!(
        outcome.result.expect("grow succeeds").text(),
        "checksum=4ca7d7a350622325 mb=64\n"
    );
    let usage = &outcome.usage;
    let peak_mb = usage.peak_memory_bytes as f64 / (1 << 20) as f64;
    assert!((64.0..80.0).contains(&peak_mb), "peak {peak_mb} MB");
    // At least 64 MB for the 300 ms hold; at most the peak for the whole life.
    assert!(usage.memory_mb_seconds >= 64.0 * 0.3, "{usage:?}");
    assert!(
        usage.memory_mb_seconds <= peak_mb * usage.wall.as_secs_f64(),
        "{usage:?}"
    );
    assert_eq!(worker.used_mb(), 0);
}

#[tokio::test]
async fn a_guest_blocked_on_io_times_out_too() {
    let (worker, _dir) = worker(1);
    let sleep = load(&worker, "sleep");
    let outcome = worker
        .invoke(
            &sleep,
            Request::get("/?ms=600000"),
            InvokeOptions::class(BATCH).timeout(Duration::from_millis(200)),
        )
        .await;
    assert_eq!(outcome.result, Err(InvokeError::Timeout { limit_ms: 200 }));
    assert!(outcome.usage.blocks >= 1);
    assert_eq!(worker.functions(), 0);
}
