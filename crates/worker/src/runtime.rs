//! The wasmtime engine of a worker, its epoch ticker, and loading components (compile once per
//! content hash, cached on disk).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::cache::{sha256_hex, ArtifactCache, Lookup};
use crate::config::RuntimeConfig;
use crate::error::LoadError;
use crate::guest::Host;
use crate::meter::BYTES_PER_MB;
use crate::stacks::StackPool;
use crate::swap::{RegionPool, Residency, SwappableMemoryCreator};

/// The export that makes a component a Turnpike function (any 0.2.x version).
const HANDLER_EXPORT: &str = "wasi:http/incoming-handler";

/// Why a runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("wasmtime engine: {0}")]
    Engine(String),
    #[error("compile cache directory {path}: {source}")]
    CacheDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("epoch ticker thread: {0}")]
    Ticker(std::io::Error),
    #[error("a worker needs a runtime with epoch interruption: it is how guests are preempted and timed out")]
    NoEpochInterruption,
    #[error("a worker with a memory capacity needs a runtime with swappable memory (`swappable_memory`): the pooling allocator's memories cannot be swapped out")]
    NotSwappable,
    #[error("worker memory: {0}")]
    Memory(#[from] turnpike_policy::memory::MemoryConfigError),
    #[error("swap directory {path}: {source}")]
    SwapDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A loaded function: a compiled component, pre-linked and ready to instantiate.
pub struct Function {
    hash: String,
    pre: ProxyPre<Host>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl Function {
    /// SHA-256 of the component's bytes, lowercase hex: the function's identity.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub(crate) fn pre(&self) -> &ProxyPre<Host> {
        &self.pre
    }
}

/// Counters of [`Runtime::load`], for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Components compiled by this runtime (cache misses).
    pub compiled: u64,
    /// Loads served from the on-disk cache.
    pub disk_hits: u64,
    /// Loads served from memory (the same bytes loaded before by this runtime).
    pub memory_hits: u64,
    /// Cache files that were present but unusable (corrupt or from another engine) and were
    /// recompiled.
    pub unusable_cache_files: u64,
}

#[derive(Debug, Default)]
struct Counters {
    compiled: AtomicU64,
    disk_hits: AtomicU64,
    memory_hits: AtomicU64,
    unusable: AtomicU64,
}

/// One wasmtime engine for the whole worker, with its epoch ticker and loaded functions.
pub struct Runtime {
    engine: Engine,
    linker: Linker<Host>,
    cache: ArtifactCache,
    config: RuntimeConfig,
    functions: Mutex<HashMap<String, Arc<Function>>>,
    counters: Counters,
    ticker_stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, StartError> {
        let engine = Engine::new(&engine_config(&config))
            .map_err(|e| StartError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| StartError::Engine(format!("link WASI: {e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| StartError::Engine(format!("link wasi:http: {e:#}")))?;
        let cache = ArtifactCache::new(&config.cache_dir, &engine).map_err(|source| {
            StartError::CacheDir {
                path: config.cache_dir.clone(),
                source,
            }
        })?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            let tick = Duration::from_millis(config.epoch_tick_ms.max(1));
            std::thread::Builder::new()
                .name("turnpike-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(StartError::Ticker)?
        };

        Ok(Self {
            engine,
            linker,
            cache,
            config,
            functions: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            ticker_stop,
            ticker: Some(ticker),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub fn stats(&self) -> RuntimeStats {
        let c = &self.counters;
        RuntimeStats {
            compiled: c.compiled.load(Ordering::Relaxed),
            disk_hits: c.disk_hits.load(Ordering::Relaxed),
            memory_hits: c.memory_hits.load(Ordering::Relaxed),
            unusable_cache_files: c.unusable.load(Ordering::Relaxed),
        }
    }

    /// Loads a function from the bytes of a component: from memory if these bytes were loaded
    /// before, else from the on-disk cache, else compiled (and then cached). Compiling takes
    /// CPU time (tens to hundreds of milliseconds); call it off the async executor threads.
    /// Two concurrent first loads of the same bytes may both compile; the result is the same.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<Function>, LoadError> {
        check_header(bytes)?;
        let hash = sha256_hex(bytes);
        if let Some(f) = self.lock_functions().get(&hash) {
            self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(f.clone());
        }
        let cache_error = |source| LoadError::Cache {
            path: self.cache.path(&hash),
            source,
        };
        let (component, compiled) = match self.cache.lookup(&self.engine, &hash) {
            Ok(Lookup::Hit(component)) => {
                self.counters.disk_hits.fetch_add(1, Ordering::Relaxed);
                (component, false)
            }
            Ok(Lookup::Miss) => (self.compile(bytes)?, true),
            Ok(Lookup::Unusable(_)) => {
                self.counters.unusable.fetch_add(1, Ordering::Relaxed);
                (self.compile(bytes)?, true)
            }
            Err(e) => return Err(cache_error(e)),
        };
        let pre = self.link(&component)?;
        if compiled {
            // Cache only what passed the checks, so a refused component is refused again.
            let artifact = component
                .serialize()
                .map_err(|e| cache_error(std::io::Error::other(format!("{e:#}"))))?;
            self.cache.store(&hash, &artifact).map_err(cache_error)?;
        }
        let function = Arc::new(Function {
            hash: hash.clone(),
            pre,
        });
        self.lock_functions().insert(hash, function.clone());
        Ok(function)
    }

    fn lock_functions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Function>>> {
        // The map holds only finished entries; a panic elsewhere cannot leave it half-updated.
        self.functions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn compile(&self, bytes: &[u8]) -> Result<Component, LoadError> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        self.counters.compiled.fetch_add(1, Ordering::Relaxed);
        Ok(component)
    }

    /// Checks the component is a wasi:http proxy whose imports this worker provides.
    fn link(&self, component: &Component) -> Result<ProxyPre<Host>, LoadError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let is_handler =
            |name: &str| name == HANDLER_EXPORT || name.starts_with("wasi:http/incoming-handler@");
        if !exports.iter().any(|name| is_handler(name)) {
            return Err(LoadError::NotAProxy { exports });
        }
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        ProxyPre::new(pre).map_err(|e| {
            LoadError::Invalid(format!(
                "its `{HANDLER_EXPORT}` export does not match wasi:http 0.2: {e:#}"
            ))
        })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

/// Refuses what is not a component from its first 8 bytes, with the reason.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    // After the magic: a core module has version 1, layer 0; a component version 0x0d, layer 1.
    const CORE_MODULE: [u8; 4] = [0x01, 0x00, 0x00, 0x00];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(LoadError::NotWasm);
    }
    if bytes[4..8] == CORE_MODULE {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

fn engine_config(config: &RuntimeConfig) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(config.epoch_interruption);
    if config.swappable_memory {
        let max_bytes = usize::try_from(config.memory_max_mb.saturating_mul(BYTES_PER_MB))
            .unwrap_or(usize::MAX);
        let keep_resident =
            usize::try_from(config.keep_resident_kb.saturating_mul(1024)).unwrap_or(usize::MAX);
        let residency = Residency {
            keep_resident,
            warm_keep_resident: usize::try_from(
                config
                    .warm_memory_keep_resident_mb
                    .saturating_mul(BYTES_PER_MB),
            )
            .unwrap_or(usize::MAX),
            warm_max: config.warm_memories_max as usize,
        };
        let pool = RegionPool::new(
            config.instances_max as usize,
            config.pagemap_scan.then_some(residency),
        );
        // Copy-on-write memory images need wasmtime's own mmap memories; data segments are
        // copied in at instantiation instead (a few KiB for typical guests).
        c.allocation_strategy(InstanceAllocationStrategy::OnDemand)
            .memory_init_cow(false)
            .with_host_memory(Arc::new(SwappableMemoryCreator::new(pool, max_bytes)))
            .with_host_stack(Arc::new(StackPool::new(config.instances_max as usize)));
    } else {
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(config)));
    }
    c
}

/// wasmtime's pooling allocator: faster instantiation, but its memories cannot be swapped (see
/// [`RuntimeConfig::swappable_memory`]).
fn pooling_config(config: &RuntimeConfig) -> PoolingAllocationConfig {
    let n = config.instances_max.max(1);
    let mut pool = PoolingAllocationConfig::default();
    // A component instance holds a few core instances (the guest and its adapter shims) and
    // usually one linear memory; the totals leave room for that.
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .total_gc_heaps(n)
        .max_memory_size(
            usize::try_from(config.memory_max_mb.saturating_mul(BYTES_PER_MB))
                .unwrap_or(usize::MAX),
        );
    // hello, direct, p50 on this 2-vCPU machine: 71 us releasing pages, 92 us keeping 1 MiB
    // resident and clearing it, 46 us keeping it resident with PAGEMAP_SCAN.
    let pagemap = config.pagemap_scan && PoolingAllocationConfig::is_pagemap_scan_available();
    if pagemap {
        let keep =
            usize::try_from(config.keep_resident_kb.saturating_mul(1024)).unwrap_or(usize::MAX);
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(keep)
            .async_stack_keep_resident(keep)
            .table_keep_resident(keep);
    }
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_check_names_the_problem() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(LoadError::NotWasm)
        ));
        assert!(matches!(check_header(b"\0asm"), Err(LoadError::NotWasm)));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
