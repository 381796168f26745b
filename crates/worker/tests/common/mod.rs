//! Helpers shared by the worker's integration tests: the example guests, workers, checksums.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnpike_policy::ClassId;
use turnpike_worker::{Function, Runtime, RuntimeConfig, Worker, WorkerConfig};

pub const BATCH: ClassId = ClassId(0);
pub const STANDARD: ClassId = ClassId(1);
pub const CRITICAL: ClassId = ClassId(3);

/// The bytes of an example function, built by `scripts/build-examples.sh`.
pub fn guest(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/functions/dist")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the example function {} ({e}): run scripts/build-examples.sh first",
            path.display()
        )
    })
}

/// A worker with `cores` slots and a fresh compile cache, and the cache's directory.
pub fn worker(cores: u32) -> (Worker, tempfile::TempDir) {
    worker_with(WorkerConfig {
        cores,
        ..WorkerConfig::default()
    })
}

/// A worker as `config` says, with a fresh compile cache, and the cache's directory.
pub fn worker_with(config: WorkerConfig) -> (Worker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut runtime_config = RuntimeConfig::new(dir.path());
    runtime_config.instances_max = 32;
    let runtime = Arc::new(Runtime::new(runtime_config).expect("runtime starts"));
    let worker = Worker::new(runtime, config).expect("worker starts");
    (worker, dir)
}

/// A one-slot worker with a memory capacity and swap space (swap files in the returned
/// directory), and that directory.
pub fn worker_with_memory(memory_mb: u64, swap_mb: u64) -> (Worker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = RuntimeConfig::new(dir.path().join("cache"));
    config.instances_max = 16;
    let runtime = Arc::new(Runtime::new(config).expect("runtime starts"));
    let worker = Worker::new(
        runtime,
        WorkerConfig {
            cores: 1,
            memory_mb: Some(memory_mb),
            swap_mb,
            swap_dir: dir.path().to_path_buf(),
            ..WorkerConfig::default()
        },
    )
    .expect("worker starts");
    (worker, dir)
}

pub fn load(worker: &Worker, name: &str) -> Arc<Function> {
    worker
        .runtime()
        .load(&guest(name))
        .unwrap_or_else(|e| panic!("{name} loads: {e}"))
}

/// Timing-sensitive tests take this lock so they do not compete for the 2 cores of these
/// machines with other tests of the same binary.
/// (An async mutex: each test holds it across its awaits.)
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The `spin` guest's checksum after `iters` iterations (examples/functions/README.md).
pub fn spin_checksum(iters: u64) -> u64 {
    let (mut x, mut h) = (0x9e37_79b9_7f4a_7c15u64, 0xcbf2_9ce4_8422_2325u64);
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        h = (h ^ x).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Parses `key=value` fields of a guest's text answer.
pub fn field(body: &str, key: &str) -> Option<String> {
    body.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// A hand-written wasi:http proxy whose handler executes `unreachable`: a guest that traps.
pub const TRAPPING_PROXY: &str = r#"
(component
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))
  ))
  (alias export $types "incoming-request" (type $req))
  (alias export $types "response-outparam" (type $out))
  (core module $m
    (func (export "handle") (param i32 i32) unreachable))
  (core instance $i (instantiate $m))
  (func $handle (param "request" (own $req)) (param "response-out" (own $out))
    (canon lift (core func $i "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler))
)
"#;

/// A valid component that exports a function, but not the wasi:http handler.
pub const NOT_A_PROXY: &str = r#"
(component
  (core module $m (func (export "answer") (result i32) i32.const 42))
  (core instance $i (instantiate $m))
  (func $answer (result u32) (canon lift (core func $i "answer")))
  (export "answer" (func $answer))
)
"#;

pub fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid component text")
}

/// A proxy that also imports an interface no worker provides.
pub const NEEDS_UNKNOWN_IMPORT: &str = r#"
(component
  (import "acme:vault/secrets@1.0.0" (instance $vault
    (export "get" (func (result u32)))
  ))
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))
  ))
  (alias export $types "incoming-request" (type $req))
  (alias export $types "response-outparam" (type $out))
  (core module $m
    (func (export "handle") (param i32 i32) unreachable))
  (core instance $i (instantiate $m))
  (func $handle (param "request" (own $req)) (param "response-out" (own $out))
    (canon lift (core func $i "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler))
)
"#;

/// The process's resident set, bytes, from `/proc/self/status`.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

/// Polls `cond` every 5 ms for up to 20 s; returns whether it became true.
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}
