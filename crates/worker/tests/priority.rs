//! The machine scheduler driving real guests on one core slot: preemption by class, FIFO
//! within a class, starvation of a low class, and CPU accounting across a park.
//!
//! These machines are shared and noisy, so the assertions are orderings and generous bounds
//! measured against the same run, never tight wall-clock figures.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use turnpike_worker::{
    Function, InvocationHandle, InvokeOptions, Outcome, Request, SlotThreads, Worker, WorkerConfig,
};

/// Iterations of `spin` that take about `ms` of CPU here, measured now (`spin?ms=` reports
/// how many iterations it did in that time).
async fn spin_iters_for(worker: &Worker, spin: &Arc<Function>, ms: u64) -> u64 {
    let outcome = worker
        .invoke(
            spin,
            Request::get(format!("/?ms={ms}")),
            InvokeOptions::class(CRITICAL),
        )
        .await;
    let body = outcome.result.expect("calibration spin").text();
    field(&body, "iters")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no iters in {body:?}"))
}

/// Awaits a handle and notes when it finished, relative to `t0`.
async fn finished(handle: InvocationHandle, t0: Instant) -> (Outcome, Duration) {
    let outcome = handle.await;
    (outcome, t0.elapsed())
}

fn checksum_of(outcome: &Outcome) -> String {
    let body = outcome.result.as_ref().expect("spin succeeds").text();
    field(&body, "checksum").unwrap_or_else(|| panic!("no checksum in {body:?}"))
}

/// What [`batch_then_critical`] saw, times from the batch spin's submission.
struct Preempted {
    low: Outcome,
    low_done: Duration,
    low_iters: u64,
    high: Outcome,
    high_done: Duration,
    /// When the 100 ms sleep before the critical submission ended.
    slept: Duration,
}

/// Submits a batch spin of about 600 ms of CPU on `worker` (one slot), and 100 ms later a
/// critical 50 ms spin; waits for both.
async fn batch_then_critical(worker: &Worker) -> Preempted {
    let spin = load(worker, "spin");
    // About 600 ms of CPU: still running when the top class arrives 100 ms in, with margin
    // for this test's thread being descheduled on a busy machine.
    let low_iters = spin_iters_for(worker, &spin, 600).await;
    let t0 = Instant::now();
    let low = worker.submit(
        &spin,
        Request::get(format!("/?iters={low_iters}")),
        InvokeOptions::class(BATCH),
    );
    // Let the batch spin get well into its run, so the top one has to preempt it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let slept = t0.elapsed();
    let high = worker.submit(
        &spin,
        Request::get("/?ms=50"),
        InvokeOptions::class(CRITICAL),
    );
    let ((low, low_done), (high, high_done)) = tokio::join!(finished(low, t0), finished(high, t0));
    Preempted {
        low,
        low_done,
        low_iters,
        high,
        high_done,
        slept,
    }
}

/// The top class finished first, without a park; the batch spin was parked and resumed
/// where it was, computing the exact answer.
fn assert_preempted(p: &Preempted) {
    assert!(
        p.high_done < p.low_done,
        "the top class finished at {:?}, after the batch one at {:?}",
        p.high_done,
        p.low_done
    );
    assert!(p.high.result.is_ok());
    assert_eq!(p.high.usage.parks, 0);
    assert!(p.low.usage.parks >= 1, "{:?}", p.low.usage);
    assert_eq!(
        checksum_of(&p.low),
        format!("{:016x}", spin_checksum(p.low_iters))
    );
}

#[tokio::test]
async fn a_top_class_spin_preempts_a_long_batch_spin_on_one_slot() {
    let _serial = serial().await;
    let (worker, _dir) = worker(1);
    let p = batch_then_critical(&worker).await;
    assert_preempted(&p);
    // Its latency is about its own 50 ms of runtime; 250 ms allows for a noisy machine and
    // still fails if it had waited for the ~500 ms the batch spin had left.
    assert!(
        p.high.usage.wall < Duration::from_millis(250),
        "{:?}",
        p.high.usage
    );
}

#[tokio::test]
async fn fifo_within_a_class_on_one_slot() {
    let _serial = serial().await;
    let (worker, _dir) = worker(1);
    let spin = load(&worker, "spin");
    let iters = spin_iters_for(&worker, &spin, 30).await;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            worker.submit(
                &spin,
                Request::get(format!("/?iters={iters}")),
                InvokeOptions::class(STANDARD),
            )
        })
        .collect();
    let ids: Vec<_> = handles.iter().map(|h| h.id()).collect();
    let mut done = Vec::new();
    for h in handles {
        done.push(finished(h, t0));
    }
    let mut results = Vec::new();
    for f in done {
        results.push(f.await);
    }
    // Awaiting in order says nothing by itself; the finish times and start order do.
    let mut by_finish: Vec<_> = results.iter().map(|(o, at)| (*at, o.id)).collect();
    by_finish.sort();
    let finish_order: Vec<_> = by_finish.into_iter().map(|(_, id)| id).collect();
    assert_eq!(finish_order, ids);
    for (o, _) in &results {
        assert_eq!(o.usage.parks, 0, "no preemption among equals");
        assert_eq!(checksum_of(o), format!("{:016x}", spin_checksum(iters)));
    }
    // Each waited for all the ones before it.
    for w in results.windows(2) {
        assert!(w[0].0.usage.queued <= w[1].0.usage.queued);
    }
}

#[tokio::test]
async fn a_low_class_starves_while_a_higher_class_keeps_the_slot_busy() {
    let _serial = serial().await;
    let (worker, _dir) = worker(1);
    let spin = load(&worker, "spin");
    let iters = spin_iters_for(&worker, &spin, 100).await;
    let t0 = Instant::now();
    let low = worker.submit(
        &spin,
        Request::get(format!("/?iters={iters}")),
        InvokeOptions::class(BATCH),
    );
    let low = finished(low, t0);
    // Submitted right after the batch one, before it can finish (it needs its slot first).
    let busy: Vec<_> = (0..3)
        .map(|_| {
            worker.submit(
                &spin,
                Request::get("/?ms=40"),
                InvokeOptions::class(STANDARD),
            )
        })
        .collect();
    let ((low, low_done), busy) = tokio::join!(low, async {
        let mut out = Vec::new();
        for h in busy {
            out.push(finished(h, t0).await);
        }
        out
    });
    for (o, done) in &busy {
        assert!(o.result.is_ok());
        assert!(
            *done < low_done,
            "standard finished at {done:?}, batch at {low_done:?}"
        );
    }
    assert!(low.usage.parks >= 1, "{:?}", low.usage);
    assert_eq!(checksum_of(&low), format!("{:016x}", spin_checksum(iters)));
}

#[tokio::test]
async fn cpu_time_of_a_parked_spin_excludes_its_parked_time() {
    let _serial = serial().await;
    let (worker, _dir) = worker(1);
    let spin = load(&worker, "spin");
    // About 400 ms of CPU, so it is still running when the top-class spin arrives 50 ms
    // later even if this test's thread is descheduled for a while on a busy machine.
    let iters = spin_iters_for(&worker, &spin, 400).await;
    let path = format!("/?iters={iters}");

    // The same spin alone, for its own CPU time in this run.
    let alone = worker
        .invoke(
            &spin,
            Request::get(path.clone()),
            InvokeOptions::class(BATCH),
        )
        .await;
    assert!(alone.result.is_ok());

    let low = worker.submit(&spin, Request::get(path), InvokeOptions::class(BATCH));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let high = worker.submit(
        &spin,
        Request::get("/?ms=300"),
        InvokeOptions::class(CRITICAL),
    );
    let (low, high) = tokio::join!(low, high);
    assert!(high.result.is_ok());
    assert!(low.result.is_ok());
    assert!(low.usage.parks >= 1);
    // Parked for about 300 ms: its wall time includes that, its CPU time does not.
    assert!(
        low.usage.cpu < alone.usage.cpu * 3 / 2 + Duration::from_millis(30),
        "parked run {:?} vs alone {:?}",
        low.usage.cpu,
        alone.usage.cpu
    );
    assert!(
        low.usage.wall > low.usage.cpu + Duration::from_millis(200),
        "{:?}",
        low.usage
    );
}

#[tokio::test]
async fn a_guest_woken_from_io_keeps_its_place_ahead_of_later_arrivals() {
    let _serial = serial().await;
    let (worker, _dir) = worker(1);
    let (spin, sleep) = (load(&worker, "spin"), load(&worker, "sleep"));
    let iters_200 = spin_iters_for(&worker, &spin, 200).await;
    let iters_100 = iters_200 / 2;
    let t0 = Instant::now();
    // A starts and sleeps; B takes the slot meanwhile; C arrives after both. A wakes while B
    // runs (same class: no preemption) and must run before C, which arrived after it.
    let a = worker.submit(
        &sleep,
        Request::get("/?ms=50"),
        InvokeOptions::class(STANDARD),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    let b = worker.submit(
        &spin,
        Request::get(format!("/?iters={iters_200}")),
        InvokeOptions::class(STANDARD),
    );
    let c = worker.submit(
        &spin,
        Request::get(format!("/?iters={iters_100}")),
        InvokeOptions::class(STANDARD),
    );
    let ((a, a_done), (b, b_done), (c, c_done)) =
        tokio::join!(finished(a, t0), finished(b, t0), finished(c, t0));
    assert!(a.result.is_ok() && b.result.is_ok() && c.result.is_ok());
    assert!(a.usage.blocks >= 1, "{:?}", a.usage);
    assert!(
        b_done < a_done && a_done < c_done,
        "finish order should be B, A, C: A {a_done:?}, B {b_done:?}, C {c_done:?}"
    );
}

/// `SlotThreads::Runtime` (how `turnpike worker` runs): the slot shares its only thread with
/// the process's other tasks. While a batch spin holds it, a timer still fires on that thread
/// (the guest yields at every epoch tick), the top-class invocation it submits preempts the
/// spin, and the spin resumes with the exact answer.
#[test]
fn on_the_callers_runtime_a_busy_slot_still_serves_timers_and_is_preempted() {
    let runtime = turnpike_worker::slot_runtime(1).build().expect("runtime");
    runtime.block_on(async {
        // Everything on the runtime's one worker thread, as in a worker process.
        tokio::spawn(async {
            let _serial = serial().await;
            let (worker, _dir) = worker_with(WorkerConfig {
                cores: 1,
                slot_threads: SlotThreads::Runtime(tokio::runtime::Handle::current()),
                ..WorkerConfig::default()
            });
            let p = batch_then_critical(&worker).await;
            assert!(
                p.slept < p.low_done,
                "the timer fired at {:?}, only after the spin ended at {:?}",
                p.slept,
                p.low_done
            );
            assert_preempted(&p);
        })
        .await
        .expect("the test's task");
    });
}
