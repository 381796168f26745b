//! Loading components: refusals with their reason, and the compile cache across restarts.

mod common;

use std::sync::Arc;

use common::*;
use turnpike_worker::{
    InvokeOptions, LoadError, Request, Runtime, RuntimeConfig, Worker, WorkerConfig,
};

fn runtime(dir: &std::path::Path) -> Runtime {
    let mut config = RuntimeConfig::new(dir);
    config.instances_max = 8;
    Runtime::new(config).expect("runtime starts")
}

fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("cache dir exists")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn garbage_is_refused_as_not_webassembly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime(dir.path());
    let err = rt.load(b"#!/bin/sh\necho hello\n").expect_err("not wasm");
    assert!(matches!(err, LoadError::NotWasm), "{err:?}");
    assert!(
        err.to_string().contains("not a WebAssembly binary"),
        "{err}"
    );
    assert!(matches!(rt.load(b""), Err(LoadError::NotWasm)));
}

#[test]
fn a_core_module_is_refused_as_not_a_component() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime(dir.path());
    // The smallest valid core module: magic and version 1.
    let err = rt.load(b"\0asm\x01\0\0\0").expect_err("core module");
    assert!(matches!(err, LoadError::CoreModule), "{err:?}");
    assert!(
        err.to_string()
            .contains("core WebAssembly module, not a component"),
        "{err}"
    );
}

#[test]
fn a_component_without_the_http_handler_is_refused_and_not_cached() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime(dir.path());
    // The smallest valid component: magic, version 0x0d, layer 1, and no sections at all.
    let err = rt.load(b"\0asm\x0d\0\x01\0").expect_err("exports nothing");
    assert!(
        matches!(&err, LoadError::NotAProxy { exports } if exports.is_empty()),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("does not export `wasi:http/incoming-handler`"),
        "{err}"
    );
    assert!(
        cache_files(dir.path()).is_empty(),
        "a refused component is not cached"
    );
}

#[test]
fn a_truncated_component_is_refused_as_invalid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime(dir.path());
    let hello = guest("hello");
    let err = rt.load(&hello[..hello.len() / 2]).expect_err("truncated");
    assert!(matches!(err, LoadError::Invalid(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("not a valid WebAssembly component"),
        "{err}"
    );
}

#[test]
fn the_same_bytes_are_compiled_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime(dir.path());
    let a = rt.load(&guest("hello")).expect("loads");
    let b = rt.load(&guest("hello")).expect("loads again");
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.hash().len(), 64);
    let stats = rt.stats();
    assert_eq!(
        (stats.compiled, stats.memory_hits, stats.disk_hits),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn the_compile_cache_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hash = {
        let rt = runtime(dir.path());
        let f = rt.load(&guest("hello")).expect("loads");
        assert_eq!(rt.stats().compiled, 1);
        f.hash().to_string()
    };
    let files = cache_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().contains(&hash));

    // A new runtime on the same directory: no compilation, and the function runs.
    let rt = Arc::new(runtime(dir.path()));
    let f = rt.load(&guest("hello")).expect("loads from the cache");
    let stats = rt.stats();
    assert_eq!((stats.compiled, stats.disk_hits), (0, 1), "{stats:?}");
    let worker = Worker::new(
        rt,
        WorkerConfig {
            cores: 1,
            ..WorkerConfig::default()
        },
    )
    .expect("worker starts");
    let outcome = worker
        .invoke(&f, Request::get("/"), InvokeOptions::class(BATCH))
        .await;
    assert_eq!(
        outcome.result.expect("runs").text(),
        "hello from turnpike\n"
    );
}

#[tokio::test]
async fn a_corrupt_cache_file_is_recompiled_not_trusted() {
    let dir = tempfile::tempdir().expect("temp dir");
    runtime(dir.path()).load(&guest("echo")).expect("loads");
    let files = cache_files(dir.path());
    let mut bytes = std::fs::read(&files[0]).expect("cache file");
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&files[0], &bytes).expect("corrupt it");

    let rt = Arc::new(runtime(dir.path()));
    let f = rt.load(&guest("echo")).expect("recompiles");
    let stats = rt.stats();
    assert_eq!(
        (stats.compiled, stats.disk_hits, stats.unusable_cache_files),
        (1, 0, 1)
    );
    let worker = Worker::new(
        rt,
        WorkerConfig {
            cores: 1,
            ..WorkerConfig::default()
        },
    )
    .expect("worker starts");
    let outcome = worker
        .invoke(&f, Request::post("/", "ping"), InvokeOptions::class(BATCH))
        .await;
    assert_eq!(outcome.result.expect("runs").text(), "ping");
    // The file was rewritten and is good again.
    let rt = runtime(dir.path());
    rt.load(&guest("echo")).expect("loads");
    assert_eq!(rt.stats().disk_hits, 1);
}

#[test]
fn a_component_exporting_something_else_is_refused_with_its_exports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime(dir.path());
    let err = rt.load(&wat(NOT_A_PROXY)).expect_err("not a proxy");
    match &err {
        LoadError::NotAProxy { exports } => assert_eq!(exports, &["answer".to_string()]),
        other => panic!("expected NotAProxy, got {other:?}"),
    }
    assert!(err.to_string().contains("its exports: [answer]"), "{err}");
}

#[test]
fn a_proxy_with_an_import_the_worker_lacks_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime(dir.path());
    let err = rt
        .load(&wat(NEEDS_UNKNOWN_IMPORT))
        .expect_err("unknown import");
    assert!(matches!(err, LoadError::Link(_)), "{err:?}");
    assert!(err.to_string().contains("acme:vault/secrets"), "{err}");
}
