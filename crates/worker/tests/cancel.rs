//! Cancelling an invocation wherever it is on a worker (`InvocationHandle::cancel`): queued
//! behind others, running, or parked for a higher class. It ends with
//! `InvokeError::Cancelled` and what it used until then, and the worker goes on.
//!
//! The machines are shared and noisy: the assertions are orderings (the cancelled one ends
//! before work that was due to end first) and usage far below a whole run, never tight
//! wall-clock figures.

mod common;

use std::time::Duration;

use common::*;
use turnpike_worker::{InvokeError, InvokeOptions, Request};

/// A spin long enough that no cancellation below can come after its end.
const LONG_MS: u64 = 4_000;

#[tokio::test]
async fn a_running_guest_is_stopped_and_billed_for_what_it_used() {
    let _serial = serial().await;
    let (worker, _dir) = worker(1);
    let spin = load(&worker, "spin");
    let running = worker.submit(
        &spin,
        Request::get(format!("/?ms={LONG_MS}")),
        InvokeOptions::class(BATCH),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.cancel();
    let outcome = running.await;
    assert_eq!(outcome.result.unwrap_err(), InvokeError::Cancelled);
    let used = outcome.usage;
    assert!(used.cpu > Duration::ZERO, "it ran: {used:?}");
    assert!(
        used.cpu < Duration::from_millis(LONG_MS / 2),
        "stopped long before its end: {used:?}"
    );
    assert!(used.memory_mb_seconds > 0.0, "{used:?}");
    // The slot is free again: the next invocation runs to its end.
    let next = worker
        .invoke(&spin, Request::get("/?ms=10"), InvokeOptions::class(BATCH))
        .await;
    assert!(next.result.is_ok(), "{:?}", next.result);
    assert_eq!(worker.functions(), 0);
}

#[tokio::test]
async fn a_parked_guest_is_cancelled_while_the_one_that_preempted_it_runs_on() {
    let _serial = serial().await;
    let (worker, _dir) = worker(1);
    let spin = load(&worker, "spin");
    let low = worker.submit(
        &spin,
        Request::get(format!("/?ms={LONG_MS}")),
        InvokeOptions::class(BATCH),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let high = worker.submit(
        &spin,
        Request::get("/?ms=1500"),
        InvokeOptions::class(CRITICAL),
    );
    let high = tokio::spawn(async move {
        let outcome = high.await;
        (outcome, std::time::Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    low.cancel();
    let low = low.await;
    let low_ended = std::time::Instant::now();
    assert_eq!(low.result.unwrap_err(), InvokeError::Cancelled);
    assert!(low.usage.parks >= 1, "it was parked: {:?}", low.usage);
    assert!(low.usage.cpu > Duration::ZERO, "{:?}", low.usage);
    let (high, high_ended) = high.await.unwrap();
    assert!(high.result.is_ok(), "{:?}", high.result);
    assert!(
        low_ended < high_ended,
        "the parked one ended when cancelled, not after the one running"
    );
}

#[tokio::test]
async fn a_queued_invocation_leaves_without_having_run() {
    let _serial = serial().await;
    let (worker, _dir) = worker(1);
    let spin = load(&worker, "spin");
    let first = worker.submit(
        &spin,
        Request::get("/?ms=1000"),
        InvokeOptions::class(CRITICAL),
    );
    // Same class: it waits behind the first (FIFO), never starting.
    let second = worker.submit(
        &spin,
        Request::get("/?ms=1000"),
        InvokeOptions::class(CRITICAL),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    second.cancel();
    let second = second.await;
    assert_eq!(second.result.unwrap_err(), InvokeError::Cancelled);
    assert_eq!(second.usage.on_core, Duration::ZERO, "{:?}", second.usage);
    assert_eq!(second.usage.cpu, Duration::ZERO, "{:?}", second.usage);
    let first = first.await;
    assert!(first.result.is_ok(), "{:?}", first.result);
    // Nothing of either is left on the worker.
    assert_eq!(worker.functions(), 0);
}
