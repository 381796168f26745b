//! Price-class swapping on a worker with a memory capacity: a parked low-class `grow` is
//! written to swap (the process's RSS really drops) and read back with every byte intact;
//! with no swap left the lowest class is killed and reported; a failed swap-out loses nothing.
//!
//! The tests of this binary run one at a time (`serial`): the RSS figures are the process's.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    eventually, field, guest, load, rss_bytes, serial, worker_with_memory, BATCH, CRITICAL,
};
use turnpike_worker::{
    InvokeError, InvokeOptions, Request, Runtime, RuntimeConfig, StartError, Worker, WorkerConfig,
};

const MIB: u64 = 1 << 20;
/// `grow?mb=256`'s checksum (examples/functions/grow).
const GROW_256_CHECKSUM: &str = "a15f87dfb5222325";
const GROW_100_MB_CHECKSUM_FIELD: &str = "mb=100";

#[tokio::test]
async fn a_parked_low_class_grow_is_swapped_out_and_back_in_with_every_byte() {
    let _serial = serial().await;
    // Capacity 280 MB: high watermark 252 MB. A 256 MB batch grow, parked by a critical spin,
    // puts the machine over it, and the memory manager swaps the batch one out.
    let (worker, _dir) = worker_with_memory(280, 1024);
    let (grow, spin) = (load(&worker, "grow"), load(&worker, "spin"));
    let rss_idle = rss_bytes();
    let low = worker.submit(
        &grow,
        Request::get("/?mb=256&hold_ms=1500"),
        InvokeOptions::class(BATCH).memory_cap_mb(512),
    );
    // The machine sees the memory at its `memory.grow`; the pages are resident once the guest
    // has written them all (before it starts holding).
    assert!(
        eventually(|| worker.used_mb() >= 256 && rss_bytes() >= rss_idle + 250 * MIB).await,
        "the grow never reached 256 MB (machine sees {} MB, RSS {} MB from {} MB)",
        worker.used_mb(),
        rss_bytes() / MIB,
        rss_idle / MIB
    );
    let rss_before = rss_bytes();
    let top = worker.submit(
        &spin,
        Request::get("/?ms=2000"),
        InvokeOptions::class(CRITICAL),
    );
    assert!(
        eventually(|| worker.swap_used_mb() >= 256).await,
        "the parked batch grow was not swapped out (swap used {} MB, stats {:?})",
        worker.swap_used_mb(),
        worker.memory_stats()
    );
    // The swap thread writes the file, then releases the pages.
    let dropped = eventually(|| rss_bytes() + 200 * MIB < rss_before).await;
    let rss_swapped = rss_bytes();
    assert!(
        dropped,
        "RSS did not drop by 200 MB after the swap-out: {} MB before, {} MB after",
        rss_before / MIB,
        rss_swapped / MIB
    );
    let files: Vec<_> = std::fs::read_dir(worker.swap_dir())
        .expect("swap dir")
        .collect();
    assert_eq!(files.len(), 1, "one swap file while it is out");

    let top = top.await;
    assert_eq!(top.result.expect("the spin finishes").status, 200);
    let low = low.await;
    let response = low.result.expect("the swapped grow finishes");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        field(&response.text(), "checksum").as_deref(),
        Some(GROW_256_CHECKSUM),
        "swap-in must restore every byte"
    );
    let u = &low.usage;
    assert!(u.swap.swap_outs >= 1, "{u:?}");
    // A swap-out writes what the guest had dirtied when it was parked (at least the 250 MB
    // waited for above), not the memory's size.
    assert!(u.swap.swapped_out_bytes >= 250 * MIB, "{u:?}");
    assert!(u.swap.swapped_out_bytes <= u.peak_memory_bytes, "{u:?}");
    assert_eq!(u.swap.swapped_in_bytes, u.swap.swapped_out_bytes, "{u:?}");
    assert!(u.parks >= 1, "{u:?}");
    assert_eq!(worker.memory_stats().swap_outs[usize::from(BATCH.0)], 1);
    assert_eq!(worker.memory_stats().kills, vec![0; 4]);
    assert_eq!(worker.swap_used_mb(), 0);
    assert_eq!(
        std::fs::read_dir(worker.swap_dir())
            .expect("swap dir")
            .count(),
        0,
        "swap file removed after the swap-in"
    );
    // The top class ran at close to its own runtime: it never waited for the swap.
    assert!(
        top.usage.queued < Duration::from_millis(500),
        "{:?}",
        top.usage
    );
}

#[tokio::test]
async fn with_swap_full_the_lowest_class_is_killed_and_reported() {
    let _serial = serial().await;
    // No swap: 150 MB batch parked + 100 MB critical > 200 MB capacity, nothing can be
    // swapped, so the batch one (lowest class) is killed.
    let (worker, _dir) = worker_with_memory(200, 0);
    let grow = load(&worker, "grow");
    let low = worker.submit(
        &grow,
        Request::get("/?mb=150&hold_ms=5000"),
        InvokeOptions::class(BATCH),
    );
    assert!(eventually(|| worker.used_mb() >= 150).await);
    let top = worker
        .invoke(
            &grow,
            Request::get("/?mb=100"),
            InvokeOptions::class(CRITICAL),
        )
        .await;
    let response = top.result.expect("the critical grow finishes");
    assert!(
        response.text().contains(GROW_100_MB_CHECKSUM_FIELD),
        "{}",
        response.text()
    );
    let low = low.await;
    assert_eq!(low.result.unwrap_err(), InvokeError::Killed);
    assert_eq!(worker.memory_stats().kills, vec![1, 0, 0, 0]);
    assert!(InvokeError::Killed.to_string().contains("retried"));
    assert_eq!(worker.functions(), 0);
}

#[tokio::test]
async fn a_failed_swap_out_keeps_the_memory_and_loses_nothing() {
    let _serial = serial().await;
    let (worker, _dir) = worker_with_memory(280, 1024);
    // Nowhere to write: the swap-out fails and the memory stays resident.
    std::fs::remove_dir_all(worker.swap_dir()).expect("remove the swap dir");
    let (grow, spin) = (load(&worker, "grow"), load(&worker, "spin"));
    let low = worker.submit(
        &grow,
        Request::get("/?mb=256&hold_ms=500"),
        InvokeOptions::class(BATCH).memory_cap_mb(512),
    );
    assert!(eventually(|| worker.used_mb() >= 256).await);
    let top = worker
        .invoke(
            &spin,
            Request::get("/?ms=300"),
            InvokeOptions::class(CRITICAL),
        )
        .await;
    assert!(top.result.is_ok());
    assert!(
        worker.swap_failures() >= 1,
        "the swap-out should have failed"
    );
    let low = low.await;
    let response = low.result.expect("the grow finishes");
    assert_eq!(
        field(&response.text(), "checksum").as_deref(),
        Some(GROW_256_CHECKSUM)
    );
    assert_eq!(low.usage.swap.swapped_out_bytes, 0);
}

#[test]
fn a_memory_capacity_needs_swappable_memory_and_a_valid_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = RuntimeConfig::new(dir.path());
    config.swappable_memory = false;
    let pooled = Arc::new(Runtime::new(config).expect("runtime starts"));
    let limited = WorkerConfig {
        memory_mb: Some(1024),
        ..WorkerConfig::default()
    };
    let err = Worker::new(pooled.clone(), limited).unwrap_err();
    assert!(matches!(err, StartError::NotSwappable), "{err}");
    assert!(err.to_string().contains("swappable_memory"));
    // Without a capacity the pooling allocator is fine.
    let unlimited = Worker::new(pooled, WorkerConfig::default()).expect("worker starts");
    let hello = unlimited
        .runtime()
        .load(&guest("hello"))
        .expect("hello loads");
    drop(hello);

    let swappable = Arc::new(Runtime::new(RuntimeConfig::new(dir.path())).expect("runtime"));
    let zero = WorkerConfig {
        memory_mb: Some(0),
        ..WorkerConfig::default()
    };
    let err = Worker::new(swappable, zero).unwrap_err();
    assert!(err.to_string().contains("capacity_mb"), "{err}");
}
