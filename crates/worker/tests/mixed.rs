//! Many invocations of every kind and class at once on two slots: each ends with its own
//! correct answer, none is lost, and the worker is empty afterwards. This exercises the gate's
//! interleavings (preemptions during I/O waits, blocked invocations re-arriving, completions
//! freeing slots) with real guests.

mod common;

use std::time::Duration;

use common::*;
use turnpike_policy::ClassId;
use turnpike_worker::{InvokeOptions, Request};

#[tokio::test]
async fn a_mixed_load_of_all_classes_loses_nothing() {
    let _serial = serial().await;
    let (worker, _dir) = worker(2);
    let names = ["hello", "echo", "sleep", "spin", "grow", "fib"];
    let functions: Vec<_> = names.iter().map(|n| load(&worker, n)).collect();

    // A fixed pseudo-random sequence (64-bit LCG), so a failure reproduces.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let mut handles = Vec::new();
    for i in 0..60u64 {
        let kind = next(names.len() as u64) as usize;
        let class = ClassId(next(4) as u8);
        let (request, expected): (Request, String) = match names[kind] {
            "hello" => (Request::get("/"), "hello from turnpike\n".into()),
            "echo" => {
                let body = format!("payload {i}");
                (Request::post("/", body.clone()), body)
            }
            "sleep" => {
                let ms = 1 + next(30);
                (
                    Request::get(format!("/?ms={ms}")),
                    format!("slept {ms} ms\n"),
                )
            }
            "spin" => {
                let iters = 100_000 + next(2_000_000);
                (
                    Request::get(format!("/?iters={iters}")),
                    format!("checksum={:016x} iters={iters}\n", spin_checksum(iters)),
                )
            }
            "grow" => (
                Request::get("/?mb=1"),
                "checksum=dee857ef7f532325 mb=1\n".into(),
            ),
            _ => (Request::get("/?n=20"), "6765\n".into()),
        };
        let handle = worker.submit(&functions[kind], request, InvokeOptions::class(class));
        handles.push((handle, expected, class));
        if next(4) == 0 {
            tokio::time::sleep(Duration::from_millis(next(5))).await;
        }
    }
    let mut parks = 0;
    for (handle, expected, class) in handles {
        let outcome = tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("every invocation ends");
        let body = outcome
            .result
            .unwrap_or_else(|e| panic!("{:?} failed: {e}", outcome.id))
            .text();
        assert_eq!(body, expected, "{:?}", outcome.id);
        assert_eq!(outcome.usage.class, class);
        parks += outcome.usage.parks;
    }
    assert_eq!(worker.functions(), 0);
    assert!(worker.running().is_empty());
    assert_eq!(worker.used_mb(), 0);
    // With four classes arriving at random on two slots, some work was preempted.
    assert!(parks > 0);
}
