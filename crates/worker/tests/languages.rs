//! Real components: the Python (componentize-py) and JavaScript (ComponentizeJS) examples run on
//! a worker, and a parked Python invocation holding data is swapped out (the process's RSS
//! drops) and back in with its state intact.
//!
//! The components are built by `scripts/build-examples.sh`, which installs the tools into
//! `.tools/` (`scripts/install-component-tools.sh`). Where a tool could not be installed these
//! tests say so and skip; where it is installed but the component is missing they fail.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{eventually, rss_bytes, serial, worker, BATCH, CRITICAL};
use turnpike_worker::{
    Function, InvokeOptions, Request, Runtime, RuntimeConfig, Worker, WorkerConfig,
};

const MIB: u64 = 1 << 20;

/// The bytes of `examples/functions-<language>/dist/<name>.wasm`, or `None` (with the reason
/// printed) when the tool that builds it is not installed.
fn component(language: &str, tool: &str, name: &str) -> Option<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root
        .join(format!("examples/functions-{language}/dist"))
        .join(format!("{name}.wasm"));
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(_) if !root.join(".tools").join(tool).exists() => {
            eprintln!(
                "SKIPPED: {tool} is not installed, so {} was not built \
                 (scripts/install-component-tools.sh could not install it)",
                path.display()
            );
            None
        }
        Err(e) => panic!(
            "cannot read {} ({e}) though {tool} is installed: run scripts/build-examples.sh",
            path.display()
        ),
    }
}

fn load(worker: &Worker, bytes: &[u8], what: &str) -> Arc<Function> {
    worker
        .runtime()
        .load(bytes)
        .unwrap_or_else(|e| panic!("{what} loads: {e}"))
}

#[tokio::test]
async fn python_and_javascript_hellos_answer_like_the_rust_one() {
    let (worker, _dir) = worker(1);
    for (language, tool) in [("python", "componentize-py"), ("js", "componentize-js")] {
        let Some(bytes) = component(language, tool, "hello") else {
            continue;
        };
        let hello = load(&worker, &bytes, language);
        // Twice: the second instance reuses the first one's recycled memory.
        for _ in 0..2 {
            let outcome = worker
                .invoke(&hello, Request::get("/"), InvokeOptions::class(BATCH))
                .await;
            let response = outcome.result.expect("the hello answers");
            assert_eq!(response.status, 200, "{language}: {}", response.text());
            assert_eq!(response.text(), "hello from turnpike\n", "{language}");
        }
    }
}

/// `hold?mb=MB&ms=..`: builds MB MiB of Python objects, spins, then checks them.
const HOLD_MB: u64 = 96;

#[tokio::test]
async fn a_parked_python_invocation_is_swapped_out_and_back_with_its_state() {
    let _serial = serial().await;
    let Some(bytes) = component("python", "componentize-py", "hold") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = Arc::new(Runtime::new(RuntimeConfig::new(dir.path())).expect("runtime"));
    let hold = runtime.load(&bytes).expect("hold loads");
    let spin = runtime.load(&common::guest("spin")).expect("spin loads");
    // Its memory alone (the interpreter's image and heap plus the data), on a worker without a
    // capacity, so the capacity below puts the parked one just over the high watermark (90%).
    let probe = Worker::new(runtime.clone(), WorkerConfig::default()).expect("worker");
    let alone = probe
        .invoke(
            &hold,
            Request::get(format!("/?mb={HOLD_MB}&ms=0")),
            InvokeOptions::class(BATCH).memory_cap_mb(1024),
        )
        .await;
    let response = alone.result.expect("hold runs alone");
    assert_eq!(response.status, 200, "{}", response.text());
    let peak_mb = alone.usage.peak_memory_bytes / MIB;
    assert!(peak_mb > HOLD_MB, "{:?}", alone.usage);
    drop(probe);

    let worker = Worker::new(
        runtime,
        WorkerConfig {
            cores: 1,
            memory_mb: Some(peak_mb + peak_mb / 20 + 1),
            swap_mb: 4 * peak_mb,
            swap_dir: dir.path().to_path_buf(),
            ..WorkerConfig::default()
        },
    )
    .expect("worker starts");
    let low = worker.submit(
        &hold,
        Request::get(format!("/?mb={HOLD_MB}&ms=4000")),
        InvokeOptions::class(BATCH).memory_cap_mb(1024),
    );
    // Built once the machine sees (nearly) its peak memory; it then spins.
    assert!(
        eventually(|| worker.used_mb() + 1 >= peak_mb).await,
        "hold never reached {peak_mb} MB (machine sees {} MB)",
        worker.used_mb()
    );
    let rss_before = rss_bytes();
    let top = worker.submit(
        &spin,
        Request::get("/?ms=1500"),
        InvokeOptions::class(CRITICAL),
    );
    assert!(
        eventually(|| worker.swap_used_mb() > 0).await,
        "the parked Python invocation was not swapped out (stats {:?})",
        worker.memory_stats()
    );
    let dropped = eventually(|| rss_bytes() + HOLD_MB / 2 * MIB < rss_before).await;
    let rss_out = rss_bytes();
    assert!(
        dropped,
        "RSS did not drop by {} MB after the swap-out: {} MB before, {} MB after",
        HOLD_MB / 2,
        rss_before / MIB,
        rss_out / MIB
    );
    assert_eq!(count_files(worker.swap_dir()), 1, "its swap file");

    assert_eq!(top.await.result.expect("the spin finishes").status, 200);
    let low = low.await;
    let response = low.result.expect("the swapped Python invocation finishes");
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response.text().contains("intact=True"),
        "its data changed across the swap: {}",
        response.text()
    );
    let u = &low.usage;
    assert!(u.parks >= 1 && u.swap.swap_outs >= 1, "{u:?}");
    assert!(u.swap.swapped_out_bytes >= HOLD_MB * MIB, "{u:?}");
    assert_eq!(u.swap.swapped_in_bytes, u.swap.swapped_out_bytes, "{u:?}");
    assert_eq!(count_files(worker.swap_dir()), 0, "swap file removed");
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}
