//! Worker runtime figures: `cargo bench -p turnpike-worker --bench worker` (needs
//! `scripts/build-examples.sh` first). Each figure comes with a baseline from the same run,
//! measured interleaved (A B A B ...) so both see the same machine.
//!
//! - hello, one at a time, run directly on the calling task (`run_unscheduled`: new store and
//!   instance, request in, response collected), with the worker's swappable memories against
//!   wasmtime's pooling allocator (whose memories cannot be swapped; slots kept resident and
//!   reset with `PAGEMAP_SCAN`), and with swappable memories releasing every page on reuse
//!   (`pagemap_scan` off: how they were before issue 19);
//! - the same through a 1-slot worker (machine scheduler, gate, a task on the worker's own
//!   threads, the result sent back) against direct, and through a 1-slot worker whose slots
//!   run on the caller's runtime (`SlotThreads::Runtime`, as in a `turnpike worker` process,
//!   where the link that receives an invocation and its guest share threads: no hop);
//! - hello throughput of one worker, 1 slot and C slots, 16 in flight, and with all classes
//!   mixed and batch spins being preempted;
//! - preemption latency: a top-class hello's submit-to-first-poll while a batch spin holds the
//!   only slot, against the same with the slot idle;
//! - the cost of epoch checks (and of yielding at every 1 ms tick) on CPU-bound guests, `spin`
//!   and `fib`, against an engine that compiles no checks;
//! - swap-out and swap-in bandwidth of a parked 256 MB `grow` (a critical `spin` parks it on a
//!   1-slot worker with 280 MB of memory), against writing and reading 256 MB through the same
//!   directory from a plain buffer.
//!
//! - the Python and JavaScript hellos, direct, swappable memory against the pooling allocator,
//!   and with no warm reservations (`warm_memories_max` 0: each new instance faults its
//!   interpreter's image in page by page).
//!
//! - what a function in Python or JavaScript costs against the Rust hello (issue 17): component
//!   size, first-invocation compile time (and a load from the compile cache, what a restarted
//!   worker pays), the first invocation, per-invocation instantiation p50 (a new instance per
//!   request, run directly; the hellos do nothing else) with its ratio to the Rust hello's in
//!   the same run, and an instance's memory.
//!
//! `SWAP_ONLY=1` runs only the swap figures, `HELLO_ONLY=1` only the hello latencies,
//! `LANGUAGES_ONLY=1` only the language costs (`LANGUAGE_ROUNDS=N`, default 300;
//! `LANGUAGE_EXTRA="PATH ..."` adds other components to them, e.g. a build of an example
//! without part of its pre-initialization; one whose name has `stats` gets the stats body).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnpike_policy::ClassId;
use turnpike_worker::guest::run_unscheduled;
use turnpike_worker::{
    Function, InvokeOptions, Outcome, Request, Runtime, RuntimeConfig, SlotThreads, Worker,
    WorkerConfig,
};

const CAP_BYTES: u64 = 64 << 20;

fn guest(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/functions/dist")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}): run scripts/build-examples.sh first",
            path.display()
        )
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!(
        "{name:<46} n={:<6} p50 {:>8.1} us   p99 {:>8.1} us",
        samples.len(),
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    p50
}

fn worker(runtime: &Arc<Runtime>, cores: u32) -> Worker {
    worker_on(runtime, cores, SlotThreads::Own)
}

/// A worker whose slots run on the calling task's runtime.
fn worker_on_this_runtime(runtime: &Arc<Runtime>, cores: u32) -> Worker {
    let here = SlotThreads::Runtime(tokio::runtime::Handle::current());
    worker_on(runtime, cores, here)
}

fn worker_on(runtime: &Arc<Runtime>, cores: u32, slot_threads: SlotThreads) -> Worker {
    Worker::new(
        runtime.clone(),
        WorkerConfig {
            cores,
            slot_threads,
            ..WorkerConfig::default()
        },
    )
    .expect("worker starts")
}

async fn timed<F: std::future::Future<Output = bool>>(samples: &mut Vec<Duration>, f: F) {
    let t = Instant::now();
    let ok = f.await;
    samples.push(t.elapsed());
    assert!(ok);
}

/// Hello one at a time, direct (swappable, pooling, every page released) and through the
/// 1-slot worker `w`, named `through`, interleaved; p50 ratios against direct.
async fn hello_latency(
    hello: &Arc<Function>,
    pooled: &Arc<Function>,
    released: &Arc<Function>,
    (through, w): (&str, &Worker),
    n: usize,
) {
    let opts = InvokeOptions::class(ClassId(1));
    let (mut swappable, mut pooling, mut scheduled) = (Vec::new(), Vec::new(), Vec::new());
    let mut releasing = Vec::new();
    for round in 0..n + n / 10 {
        let (a, b, c, r) = if round < n / 10 {
            // warm-up
            (
                &mut Vec::new(),
                &mut Vec::new(),
                &mut Vec::new(),
                &mut Vec::new(),
            )
        } else {
            (&mut swappable, &mut pooling, &mut scheduled, &mut releasing)
        };
        timed(r, async {
            run_unscheduled(released, Request::get("/"), CAP_BYTES)
                .await
                .is_ok()
        })
        .await;
        timed(a, async {
            run_unscheduled(hello, Request::get("/"), CAP_BYTES)
                .await
                .is_ok()
        })
        .await;
        timed(b, async {
            run_unscheduled(pooled, Request::get("/"), CAP_BYTES)
                .await
                .is_ok()
        })
        .await;
        timed(c, async {
            w.invoke(hello, Request::get("/"), opts.clone())
                .await
                .result
                .is_ok()
        })
        .await;
    }
    let p = summary("hello direct, wasmtime pooling allocator", pooling);
    let d = summary("hello direct, swappable memory (the default)", swappable);
    let r = summary("hello direct, swappable, every page released", releasing);
    let s = summary(through, scheduled);
    println!(
        "  p50 ratios: swappable/pooling {:.2}, swappable released/pooling {:.2}, worker/direct {:.2}",
        d.as_secs_f64() / p.as_secs_f64(),
        r.as_secs_f64() / p.as_secs_f64(),
        s.as_secs_f64() / d.as_secs_f64()
    );
}

/// The Python and JavaScript hellos (examples/functions-python, examples/functions-js), direct,
/// swappable memory against the pooling allocator (whose memories map the component's
/// initial image copy-on-write), interleaved. Skipped, with a note, where they are not built.
async fn real_hellos(runtime: &Runtime, pooled: &Runtime, cold: &Runtime, n: usize) {
    for language in ["python", "js"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
            "../../examples/functions-{language}/dist/hello.wasm"
        ));
        let Ok(bytes) = std::fs::read(&path) else {
            println!("{language} hello: not built ({}), skipped", path.display());
            continue;
        };
        let swappable = runtime.load(&bytes).expect("loads");
        let pooling = pooled.load(&bytes).expect("loads");
        let no_warm = cold.load(&bytes).expect("loads");
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..n + n / 10 {
            let (a, b, c) = if round < n / 10 {
                (&mut Vec::new(), &mut Vec::new(), &mut Vec::new())
            } else {
                (&mut a, &mut b, &mut c)
            };
            for (f, samples) in [(&swappable, a), (&pooling, b), (&no_warm, c)] {
                timed(samples, async {
                    run_unscheduled(f, Request::get("/"), CAP_BYTES)
                        .await
                        .is_ok()
                })
                .await;
            }
        }
        let p = summary(&format!("{language} hello direct, pooling allocator"), b);
        let d = summary(&format!("{language} hello direct, swappable memory"), a);
        let w = summary(&format!("{language} hello direct, swappable, none warm"), c);
        println!(
            "  p50 ratios swappable/pooling {:.2}, none warm/pooling {:.2}",
            d.as_secs_f64() / p.as_secs_f64(),
            w.as_secs_f64() / p.as_secs_f64()
        );
    }
}

/// A component the language cost compares: its name, bytes, and the request it gets.
struct Subject {
    name: String,
    bytes: Vec<u8>,
    request: fn() -> Request,
    /// From `LANGUAGE_EXTRA`: a variant that may not work (then skipped, saying why).
    extra: bool,
}

/// The JSON body `stats` gets in the language cost.
const STATS_BODY: &str = r#"{"text": "the cat saw the cat in the hat", "numbers": [4, 1, 3, 2]}"#;

/// The Rust hello, then the Python and JavaScript `hello` and `stats` that are built.
fn language_subjects() -> Vec<Subject> {
    let get = || Request::get("/");
    let post = || Request::post("/", STATS_BODY);
    let mut subjects = vec![Subject {
        name: "rust hello".into(),
        bytes: guest("hello"),
        request: get,
        extra: false,
    }];
    for language in ["python", "js"] {
        for (name, request) in [("hello", get as fn() -> Request), ("stats", post)] {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
                "../../examples/functions-{language}/dist/{name}.wasm"
            ));
            match std::fs::read(&path) {
                Ok(bytes) => subjects.push(Subject {
                    name: format!("{language} {name}"),
                    bytes,
                    request,
                    extra: false,
                }),
                Err(e) => println!(
                    "{language} {name}: not built ({}: {e}), skipped",
                    path.display()
                ),
            }
        }
    }
    // Extra components to compare, by path.
    let extra = std::env::var("LANGUAGE_EXTRA").unwrap_or_default();
    for path in extra.split_whitespace() {
        let name = PathBuf::from(path)
            .file_stem()
            .map_or_else(|| path.to_string(), |s| s.to_string_lossy().into_owned());
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("LANGUAGE_EXTRA {path}: {e}"));
        let request = if name.contains("stats") { post } else { get };
        subjects.push(Subject {
            name,
            bytes,
            request,
            extra: true,
        });
    }
    subjects
}

/// Issue 17's cost table: per subject, its size; compiling it on a runtime with an empty
/// cache (the first invocation on a worker) and loading it from that cache (a restarted
/// worker); its first invocation; then `n` rounds of one invocation of each, interleaved,
/// each a new instance run directly: p50 and p99, and the p50's ratio to the Rust hello's.
async fn language_cost(n: usize) {
    let subjects = language_subjects();
    let dir = bench_dir("languages");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (mut loaded, mut skipped) = (Vec::new(), Vec::new());
    println!(
        "{:<14} {:>9} {:>11} {:>12} {:>11} {:>10}",
        "language cost", "size MB", "compile ms", "from cache", "first ms", "memory MB"
    );
    for (i, s) in subjects.iter().enumerate() {
        let cache = dir.join(format!("cache-{i}"));
        let runtime = Runtime::new(RuntimeConfig::new(&cache)).expect("runtime");
        let t = Instant::now();
        runtime.load(&s.bytes).expect("compiles");
        let compile = t.elapsed();
        // A second runtime on the same cache: deserialized, not compiled.
        let runtime = Arc::new(Runtime::new(RuntimeConfig::new(&cache)).expect("runtime"));
        let t = Instant::now();
        let function = runtime.load(&s.bytes).expect("loads from the cache");
        let from_cache = t.elapsed();
        assert_eq!(runtime.stats().compiled, 0, "{} was compiled again", s.name);
        let t = Instant::now();
        let first = run_unscheduled(&function, (s.request)(), CAP_BYTES).await;
        let first_ms = ms(t.elapsed());
        match first {
            Ok(r) if r.status == 200 => {}
            failed if s.extra => {
                println!(
                    "{}: its first invocation failed, skipped: {failed:?}",
                    s.name
                );
                skipped.push(i);
                continue;
            }
            failed => panic!("{}: {failed:?}", s.name),
        }
        // An instance's linear memory at its peak (the initialized interpreter's image, for
        // Python and JavaScript), through a worker, which meters it.
        let w = worker(&runtime, 1);
        let o = w
            .invoke(&function, (s.request)(), InvokeOptions::class(ClassId(1)))
            .await;
        assert!(o.result.is_ok(), "{}: {:?}", s.name, o.result);
        println!(
            "{:<14} {:>9.2} {:>11.0} {:>12.1} {:>11.1} {:>10.1}",
            s.name,
            s.bytes.len() as f64 / 1e6,
            ms(compile),
            ms(from_cache),
            first_ms,
            o.usage.peak_memory_bytes as f64 / f64::from(1 << 20)
        );
        drop(w);
        loaded.push((runtime, function));
    }
    let subjects: Vec<Subject> = subjects
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !skipped.contains(i))
        .map(|(_, s)| s)
        .collect();
    let mut samples = vec![Vec::new(); subjects.len()];
    for round in 0..n + n / 10 {
        for (i, (s, (_, function))) in subjects.iter().zip(&loaded).enumerate() {
            let mut warm_up = Vec::new();
            let into = if round < n / 10 {
                &mut warm_up
            } else {
                &mut samples[i]
            };
            timed(into, async {
                run_unscheduled(function, (s.request)(), CAP_BYTES)
                    .await
                    .is_ok_and(|r| r.status == 200)
            })
            .await;
        }
    }
    let p50s: Vec<Duration> = subjects
        .iter()
        .zip(samples)
        .map(|(s, v)| summary(&format!("{} per invocation (new instance)", s.name), v))
        .collect();
    for (s, p50) in subjects.iter().zip(&p50s) {
        println!(
            "  {:<14} p50/rust hello p50 {:>6.1}",
            s.name,
            p50.as_secs_f64() / p50s[0].as_secs_f64()
        );
    }
    drop(loaded);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn hello_throughput(runtime: &Arc<Runtime>, hello: &Arc<Function>, cores: u32, n: usize) {
    let w = worker(runtime, cores);
    let in_flight = 16;
    let t = Instant::now();
    let mut pending = VecDeque::new();
    for _ in 0..n {
        if pending.len() == in_flight {
            let o: Outcome = pending.pop_front().expect("non-empty").await;
            assert!(o.result.is_ok());
        }
        pending.push_back(w.submit(hello, Request::get("/"), InvokeOptions::class(ClassId(1))));
    }
    for h in pending {
        assert!(h.await.result.is_ok());
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "hello throughput, {cores} slot(s), {in_flight} in flight: {:.0} invocations/s",
        n as f64 / secs
    );
}

/// Throughput with every class in the mix: hellos cycling over the four classes, and every
/// 50th request a 2 ms batch `spin` that the hellos of higher classes keep preempting.
async fn mixed_throughput(
    runtime: &Arc<Runtime>,
    hello: &Arc<Function>,
    spin: &Arc<Function>,
    cores: u32,
    n: usize,
) {
    let w = worker(runtime, cores);
    let in_flight = 16;
    let t = Instant::now();
    let (mut pending, mut parks) = (VecDeque::new(), 0u64);
    let mut settle = |o: Outcome| {
        assert!(o.result.is_ok(), "{:?}", o.result);
        parks += u64::from(o.usage.parks);
    };
    for i in 0..n {
        if pending.len() == in_flight {
            settle(pending.pop_front().expect("non-empty").await);
        }
        let (f, path, class) = if i % 50 == 0 {
            (spin, "/?ms=2", 0)
        } else {
            (hello, "/", (i % 4) as u8)
        };
        pending.push_back(w.submit(f, Request::get(path), InvokeOptions::class(ClassId(class))));
    }
    for h in pending {
        settle(h.await);
    }
    println!(
        "mixed classes, {cores} slot(s), {in_flight} in flight: {:.0} invocations/s, {parks} preemptions",
        n as f64 / t.elapsed().as_secs_f64()
    );
}

async fn preemption_latency(
    runtime: &Arc<Runtime>,
    hello: &Arc<Function>,
    spin: &Arc<Function>,
    n: usize,
) {
    let w = worker(runtime, 1);
    let top = InvokeOptions::class(ClassId(3));
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        let o = w.invoke(hello, Request::get("/"), top.clone()).await;
        assert!(o.result.is_ok());
        idle.push(o.usage.queued);
    }
    let low = w.submit(
        spin,
        Request::get("/?ms=600000"),
        InvokeOptions::class(ClassId(0)).timeout(Duration::from_secs(600)),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut busy = Vec::with_capacity(n);
    for _ in 0..n {
        let o = w.invoke(hello, Request::get("/"), top.clone()).await;
        assert!(o.result.is_ok());
        busy.push(o.usage.queued);
        // Let the batch spin run again, so the next arrival has to preempt it.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(low);
    let i = summary("top class submit -> first poll, slot idle", idle);
    let b = summary("top class submit -> first poll, preempting", busy);
    println!(
        "  p50 ratio preempting/idle {:.2}",
        b.as_secs_f64() / i.as_secs_f64()
    );
}

/// Median time of `path` on `with` (epoch checks, yielding every tick) and `without` (no
/// checks compiled in), run directly and interleaved.
async fn epoch_cost(name: &str, with: &Arc<Function>, without: &Arc<Function>, path: &str) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..8 {
        for (f, samples) in [(with, &mut a), (without, &mut b)] {
            let t = Instant::now();
            let r = run_unscheduled(f, Request::get(path), CAP_BYTES).await;
            assert_eq!(r.expect("runs").status, 200);
            if round > 0 {
                samples.push(t.elapsed());
            }
        }
    }
    a.sort();
    b.sort();
    let (a, b) = (a[a.len() / 2], b[b.len() / 2]);
    println!(
        "{name:<22} epoch checks {:>7.1} ms, none {:>7.1} ms: cost {:+.0}%",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        (a.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0
    );
}

/// Swap bandwidth of a parked 256 MB instance against the file system's own, `rounds` times.
async fn swap_bandwidth(rounds: usize) {
    const MB: u64 = 256;
    let bytes = MB << 20;
    let dir = bench_dir("swap");
    let runtime = Arc::new(Runtime::new(RuntimeConfig::new(dir.join("cache"))).expect("runtime"));
    let w = Worker::new(
        runtime.clone(),
        WorkerConfig {
            cores: 1,
            memory_mb: Some(280),
            swap_mb: 1024,
            swap_dir: dir.clone(),
            ..WorkerConfig::default()
        },
    )
    .expect("worker starts");
    let grow = runtime.load(&guest("grow")).expect("grow loads");
    let spin = runtime.load(&guest("spin")).expect("spin loads");
    let gbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    let (mut out, mut back, mut file_out, mut file_back) = (vec![], vec![], vec![], vec![]);
    let buffer: Vec<u8> = (0..bytes as usize).map(|i| (i * 31) as u8).collect();
    let mut readback = vec![0u8; bytes as usize];
    for _ in 0..rounds {
        let rss_idle = rss_bytes();
        let low = w.submit(
            &grow,
            Request::get(format!("/?mb={MB}&hold_ms=2000")),
            InvokeOptions::class(ClassId(0)).memory_cap_mb(512),
        );
        while w.used_mb() < MB {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Let the guest write its pages before it is parked: until the process's RSS has
        // grown by half of them (part may reuse pages a warm reservation kept) and then
        // stopped growing (the guest holds; it holds for longer than this can take).
        let written = Instant::now();
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let rss = rss_bytes();
            let grown = rss >= rss_idle + bytes / 2;
            if (grown && rss == last) || written.elapsed() > Duration::from_secs(5) {
                break;
            }
            last = rss;
        }
        let top = w
            .invoke(
                &spin,
                Request::get("/?ms=300"),
                InvokeOptions::class(ClassId(3)),
            )
            .await;
        assert!(top.result.is_ok());
        let low = low.await;
        assert_eq!(low.result.expect("grow finishes").status, 200);
        let u = low.usage;
        // What it had dirtied when parked: nearly all of it.
        assert!(u.swap.swapped_out_bytes >= bytes / 2, "not swapped: {u:?}");
        let gbps_of = |b: u64, d: Duration| b as f64 / d.as_secs_f64() / 1e9;
        out.push(gbps_of(u.swap.swapped_out_bytes, u.swap.swap_out_time));
        back.push(gbps_of(u.swap.swapped_in_bytes, u.swap.swap_in_time));

        let path = dir.join("plain.bin");
        let t = Instant::now();
        std::fs::write(&path, &buffer).expect("write");
        file_out.push(gbps(t.elapsed()));
        let t = Instant::now();
        let mut f = std::fs::File::open(&path).expect("open");
        std::io::Read::read_exact(&mut f, &mut readback).expect("read");
        file_back.push(gbps(t.elapsed()));
        std::fs::remove_file(&path).expect("remove");
    }
    let rounds_of = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "swap-out GB/s by round: {}; plain write: {}",
        rounds_of(&out),
        rounds_of(&file_out)
    );
    println!(
        "swap-in  GB/s by round: {}; plain read:  {}",
        rounds_of(&back),
        rounds_of(&file_back)
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0])
    };
    let ((o, o_min), (b, b_min)) = (median(out), median(back));
    let ((fo, _), (fb, _)) = (median(file_out), median(file_back));
    println!(
        "swap-out of a parked {MB} MB instance: {o:.2} GB/s, slowest round {o_min:.2} (plain file write {fo:.2} GB/s, ratio {:.2})",
        o / fo
    );
    println!(
        "swap-in  of a parked {MB} MB instance: {b:.2} GB/s, slowest round {b_min:.2} (plain file read  {fb:.2} GB/s, ratio {:.2})",
        b / fb
    );
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Swap rounds: `SWAP_ROUNDS`, default 5.
fn rounds() -> usize {
    std::env::var("SWAP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// The process's resident set, bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS line")
        * 1024
}

fn bench_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("turnpike-bench-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

fn main() {
    let dir = std::env::temp_dir().join(format!("turnpike-worker-bench-{}", std::process::id()));
    let runtime = Arc::new(Runtime::new(RuntimeConfig::new(&dir)).expect("runtime starts"));
    let hello = runtime.load(&guest("hello")).expect("hello loads");
    let spin = runtime.load(&guest("spin")).expect("spin loads");
    let mut pooled_config = RuntimeConfig::new(&dir);
    pooled_config.swappable_memory = false;
    let pooled = Runtime::new(pooled_config).expect("runtime starts");
    let pooled_hello = pooled.load(&guest("hello")).expect("hello loads");
    // Swappable memory as before keeping pages resident: every page released on reuse.
    let mut released_config = RuntimeConfig::new(&dir);
    released_config.pagemap_scan = false;
    let released = Runtime::new(released_config).expect("runtime starts");
    let released_hello = released.load(&guest("hello")).expect("hello loads");
    // Swappable memory keeping only `keep_resident_kb` of every free reservation resident.
    let mut cold_config = RuntimeConfig::new(&dir);
    cold_config.warm_memories_max = 0;
    let cold = Runtime::new(cold_config).expect("runtime starts");
    let mut unchecked_config = RuntimeConfig::new(&dir);
    unchecked_config.epoch_interruption = false;
    let unchecked = Runtime::new(unchecked_config).expect("runtime starts");
    let unchecked_spin = unchecked.load(&guest("spin")).expect("spin loads");
    let fib = runtime.load(&guest("fib")).expect("fib loads");
    let unchecked_fib = unchecked.load(&guest("fib")).expect("fib loads");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    client.block_on(async {
        if std::env::var_os("LANGUAGES_ONLY").is_some() {
            let rounds = std::env::var("LANGUAGE_ROUNDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(300);
            language_cost(rounds).await;
            return;
        }
        let w = worker(&runtime, 1);
        if std::env::var_os("SWAP_ONLY").is_some() {
            swap_bandwidth(rounds()).await;
            return;
        }
        let through = ("hello through a 1-slot worker", &w);
        hello_latency(&hello, &pooled_hello, &released_hello, through, 5000).await;
        drop(w);
        // Apart from the run above: the other worker's idle threads would share the cores.
        let here = worker_on_this_runtime(&runtime, 1);
        let through = ("the same, slots on the caller's runtime", &here);
        hello_latency(&hello, &pooled_hello, &released_hello, through, 5000).await;
        drop(here);
        real_hellos(&runtime, &pooled, &cold, 300).await;
        if std::env::var_os("HELLO_ONLY").is_some() {
            return;
        }
        language_cost(300).await;
        hello_throughput(&runtime, &hello, 1, 20_000).await;
        hello_throughput(&runtime, &hello, cores, 20_000).await;
        mixed_throughput(&runtime, &hello, &spin, cores, 20_000).await;
        preemption_latency(&runtime, &hello, &spin, 300).await;
        epoch_cost(
            "spin?iters=50000000",
            &spin,
            &unchecked_spin,
            "/?iters=50000000",
        )
        .await;
        epoch_cost("fib?n=30", &fib, &unchecked_fib, "/?n=30").await;
        swap_bandwidth(rounds()).await;
    });
    drop((runtime, pooled, released, cold, unchecked));
    let _ = std::fs::remove_dir_all(&dir);
}
