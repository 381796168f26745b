//! Why a component was refused at load, and why an invocation failed.

use std::path::PathBuf;

/// A component could not be loaded; the message says why in terms a developer can act on.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly binary: it does not start with the `\\0asm` magic")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: functions must be components exporting \
         `wasi:http/incoming-handler` (build for wasm32-wasip2, or wrap the module with \
         `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error(
        "the component does not export `wasi:http/incoming-handler`, so it is not a wasi:http \
         proxy; its exports: [{}]",
        .exports.join(", ")
    )]
    NotAProxy { exports: Vec<String> },
    #[error("the component needs an import this worker does not provide: {0}")]
    Link(String),
    #[error("compile cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An invocation did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    #[error("memory cap exceeded: the function tried to grow its linear memory to {requested_bytes} bytes, over its cap of {limit_bytes} bytes")]
    MemoryCap {
        limit_bytes: u64,
        requested_bytes: u64,
    },
    #[error("timed out after {limit_ms} ms (wall clock since the invocation first ran)")]
    Timeout { limit_ms: u64 },
    #[error("the function trapped: {0}")]
    Trap(String),
    #[error("the function returned without setting a response")]
    NoResponse,
    #[error("the function answered with an error: {0}")]
    Guest(String),
    #[error("could not instantiate the function: {0}")]
    Instantiate(String),
    #[error("bad request for the function: {0}")]
    BadRequest(String),
    #[error("unknown price class {class}: this worker has {classes} classes")]
    UnknownClass { class: u8, classes: usize },
    #[error("memory cap of {cap_mb} MB is over the worker's largest linear memory of {max_mb} MB")]
    CapTooLarge { cap_mb: u64, max_mb: u64 },
    #[error("the worker is shutting down")]
    Shutdown,
    #[error("killed to free memory: this worker's memory and swap are full and the invocation was the lowest class; it did not finish and may be retried elsewhere")]
    Killed,
    #[error("its memory could not be read back from swap: {0}")]
    SwapIn(String),
    #[error("cancelled: its caller went away or its deadline passed")]
    Cancelled,
    #[error("the function's response body is over the limit of {limit_bytes} bytes{}", if *.declared { " (by its content-length)" } else { "; it was cut there" })]
    ResponseTooLarge {
        limit_bytes: u64,
        /// Its `content-length` said so before any of it was sent: the caller can still
        /// answer 413. Otherwise the body was cut after `limit_bytes`.
        declared: bool,
    },
    #[error("the response's reader went away while the function wrote it")]
    ReaderGone,
}
