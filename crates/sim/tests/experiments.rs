//! Whole experiments through the library: determinism of the summary, the paper's effects in
//! the `--quick` variants of fig4 and fig5, trace replay, and the files `write` produces.
//!
//! Every fig4 quick run costs a second or two in release; the checks that only read a fig4
//! summary share one run (`fig4_quick`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use turnpike_sim::config::Config;
use turnpike_sim::experiment::Experiment;

const THREADS: usize = 2;

fn run(config: Config, threads: usize) -> Experiment {
    Experiment::run(config, threads, false).expect("the experiment runs")
}

fn fig4_config() -> Config {
    Config::preset("fig4").expect("fig4 preset").quick()
}

/// One fig4 quick run (seed 1, two threads) shared by the tests that only read it.
fn fig4_quick() -> &'static Experiment {
    static RUN: OnceLock<Experiment> = OnceLock::new();
    RUN.get_or_init(|| run(fig4_config(), THREADS))
}

fn fig4_summary() -> &'static Value {
    static SUMMARY: OnceLock<Value> = OnceLock::new();
    SUMMARY.get_or_init(|| fig4_quick().summary())
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON values serialize")
}

fn rows(summary: &Value) -> &Vec<Value> {
    summary["rows"].as_array().expect("summary has rows")
}

/// The row of (scheduler, load, class).
fn row<'a>(summary: &'a Value, scheduler: &str, load: f64, class: &str) -> &'a Value {
    rows(summary)
        .iter()
        .find(|r| {
            r["scheduler"] == scheduler && r["load"].as_f64() == Some(load) && r["class"] == class
        })
        .unwrap_or_else(|| panic!("no row for {scheduler} at load {load}, class {class}"))
}

fn num(row: &Value, key: &str) -> f64 {
    row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {row}"))
}

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "turnpike-sim-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- Determinism ----

#[test]
fn same_seed_gives_identical_summary_and_another_seed_does_not() {
    let first = pretty(fig4_summary());

    let again = pretty(&run(fig4_config(), THREADS).summary());
    assert!(first == again, "two runs with seed 1 differ");

    let one_thread = pretty(&run(fig4_config(), 1).summary());
    assert!(
        first == one_thread,
        "1 thread and {THREADS} threads give different summaries"
    );

    let mut other = fig4_config();
    other.seed = 2;
    let other = run(other, THREADS).summary();
    assert_eq!(other["seed"], 2);
    assert_eq!(fig4_summary()["seed"], 1);
    // Beyond the seed field itself, the measurements differ.
    assert_ne!(
        pretty(&other["rows"]),
        pretty(&fig4_summary()["rows"]),
        "seeds 1 and 2 give the same rows"
    );
}

// ---- fig4: the paper's effects ----

const REQUIRED: [&str; 10] = [
    "scheduler",
    "load",
    "class",
    "price",
    "completed",
    "unfinished",
    "p50_latency_ms",
    "p99_latency_ms",
    "p50_slowdown",
    "p99_slowdown",
];

#[test]
fn fig4_summary_has_classes_and_complete_rows() {
    let config = fig4_config();
    let s = fig4_summary();

    let classes = s["classes"].as_array().expect("summary has classes");
    assert_eq!(classes.len(), config.classes.len());
    for (got, want) in classes.iter().zip(&config.classes) {
        assert_eq!(got["name"], want.name.as_str());
        assert_eq!(got["price"].as_f64(), Some(want.price));
    }

    let rows = rows(s);
    assert_eq!(
        rows.len(),
        config.schedulers.len() * config.loads.len() * config.classes.len(),
        "one row per (scheduler, load, class)"
    );
    for r in rows {
        for key in REQUIRED {
            assert!(r.get(key).is_some(), "row lacks `{key}`: {r}");
        }
        assert!(r["scheduler"].is_string() && r["class"].is_string(), "{r}");
        for key in ["completed", "unfinished"] {
            assert!(r[key].is_u64(), "`{key}` is not a count: {r}");
        }
        assert!(r["completed"].as_u64() > Some(0), "nothing completed: {r}");
        for key in &REQUIRED[..] {
            if !matches!(*key, "scheduler" | "class") {
                let v = num(r, key);
                assert!(v.is_finite() && v >= 0.0, "`{key}` = {v}: {r}");
            }
        }
        // A slowdown is latency over runtime: never below 1.
        assert!(num(r, "p50_slowdown") >= 1.0 - 1e-9, "{r}");
        assert!(num(r, "p99_slowdown") >= num(r, "p50_slowdown"), "{r}");
        assert!(num(r, "p99_latency_ms") >= num(r, "p50_latency_ms"), "{r}");
    }

    // Every scheduler, EDF included, has every class at every load.
    for scheduler in ["hermod", "turnpike", "edf"] {
        for &load in &config.loads {
            for c in &config.classes {
                row(s, scheduler, load, &c.name);
            }
        }
    }
}

#[test]
fn fig4_turnpike_protects_the_top_class_beyond_saturation() {
    let config = fig4_config();
    let s = fig4_summary();
    let top = "critical";
    let bottom = "batch";
    let high = config.loads.iter().copied().fold(f64::MIN, f64::max);
    assert!(
        high >= 1.1,
        "fig4 sweeps beyond saturation (highest load {high})"
    );
    let light = 0.3;

    let p99 = |sched: &str, load: f64, class: &str| num(row(s, sched, load, class), "p99_slowdown");

    // Turnpike's top class stays far below Hermod's top class...
    let turnpike_top = p99("turnpike", high, top);
    let hermod_top = p99("hermod", high, top);
    assert!(
        turnpike_top < 0.5 * hermod_top,
        "at load {high}: turnpike {top} p99 slowdown {turnpike_top} vs hermod {hermod_top}"
    );
    // ...and close to what it sees at light load.
    let turnpike_top_light = p99("turnpike", light, top);
    assert!(
        turnpike_top <= 1.5 * turnpike_top_light,
        "turnpike {top} p99 slowdown {turnpike_top} at load {high}, {turnpike_top_light} at {light}"
    );
    let lat =
        |sched: &str, load: f64, class: &str| num(row(s, sched, load, class), "p99_latency_ms");
    assert!(
        lat("turnpike", high, top) <= 1.5 * lat("turnpike", light, top),
        "turnpike {top} p99 latency {} at load {high}, {} at {light}",
        lat("turnpike", high, top),
        lat("turnpike", light, top)
    );

    // The lowest class pays for it.
    let turnpike_bottom = p99("turnpike", high, bottom);
    assert!(
        turnpike_bottom > 2.0 * turnpike_top,
        "at load {high}: turnpike {bottom} p99 slowdown {turnpike_bottom} vs {top} {turnpike_top}"
    );
}

#[test]
fn fig4_hermod_ignores_classes() {
    let config = fig4_config();
    let s = fig4_summary();
    for &load in &config.loads {
        let p99: Vec<f64> = config
            .classes
            .iter()
            .map(|c| num(row(s, "hermod", load, &c.name), "p99_slowdown"))
            .collect();
        let (lo, hi) = p99
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!(
            hi <= 1.25 * lo,
            "hermod p99 slowdowns by class at load {load} differ: {p99:?}"
        );
    }
}

#[test]
fn fig4_light_load_all_schedulers_are_close() {
    let config = fig4_config();
    let s = fig4_summary();
    let light = 0.3;
    for c in &config.classes {
        for key in ["p99_slowdown", "p99_latency_ms", "p50_latency_ms"] {
            let v: Vec<f64> = ["hermod", "turnpike", "edf"]
                .iter()
                .map(|sched| num(row(s, sched, light, &c.name), key))
                .collect();
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            assert!(
                hi <= 1.1 * lo,
                "{key} of {} at load {light} (hermod, turnpike, edf): {v:?}",
                c.name
            );
        }
        // No queueing to speak of: the p99 slowdown is about 1.
        let p99 = num(row(s, "turnpike", light, &c.name), "p99_slowdown");
        assert!(
            p99 < 1.2,
            "turnpike {} p99 slowdown {p99} at load {light}",
            c.name
        );
    }
}

#[test]
fn fig4_utilization_follows_offered_load() {
    let config = fig4_config();
    let s = fig4_summary();
    let runs = s["runs"].as_array().expect("summary has runs");
    assert_eq!(runs.len(), config.schedulers.len() * config.loads.len());
    for scheduler in ["hermod", "turnpike", "edf"] {
        let mut points: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r["scheduler"] == scheduler)
            .map(|r| (num(r, "load"), num(&r["utilization"], "mean")))
            .collect();
        assert_eq!(points.len(), config.loads.len(), "{scheduler}");
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in points.windows(2) {
            assert!(
                w[1].1 >= w[0].1 - 1e-3,
                "{scheduler}: utilization falls from {:?} to {:?}",
                w[0],
                w[1]
            );
        }
        for &(load, util) in &points {
            assert!(
                util <= 1.0 + 1e-9,
                "{scheduler} at {load}: utilization {util}"
            );
            if load < 1.0 {
                // Within 5% of the offered load (seed 1 is off by 3.3% at 0.3, less above).
                assert!(
                    (util - load).abs() <= 0.05 * load,
                    "{scheduler} at load {load}: utilization {util}"
                );
            } else if load > 1.0 {
                assert!(
                    util >= 0.98,
                    "{scheduler} at load {load}: utilization {util}"
                );
            }
        }
    }
}

// ---- fig5: swapping by class ----

#[test]
fn fig5_swaps_lower_classes_and_spreads_memory() {
    let config = Config::preset("fig5").expect("fig5 preset").quick();
    let names: Vec<String> = config.classes.iter().map(|c| c.name.clone()).collect();
    let machines = config.cluster.machines as usize;
    let s = run(config, THREADS).summary();

    let keyed = |key: &str| -> Vec<(String, u64)> {
        let obj = s[key]
            .as_object()
            .unwrap_or_else(|| panic!("summary has no `{key}` object"));
        let mut keys: Vec<&String> = obj.keys().collect();
        keys.sort();
        let mut want: Vec<&String> = names.iter().collect();
        want.sort();
        assert_eq!(keys, want, "`{key}` is keyed by class name");
        names
            .iter()
            .map(|n| (n.clone(), obj[n].as_u64().expect("a count")))
            .collect()
    };
    let swapped = keyed("swapped_mb_by_class");
    keyed("kills_by_class");

    let by = |name: &str| swapped.iter().find(|(n, _)| n == name).map_or(0, |x| x.1);
    let total: u64 = swapped.iter().map(|x| x.1).sum();
    assert!(total > 0, "fig5 swaps: {swapped:?}");
    // Paper 4.3: only the lower classes are swapped out.
    let (top, bottom) = (by("critical"), by("batch"));
    assert!(bottom > 0, "batch is swapped: {swapped:?}");
    assert!(
        top * 10 <= bottom,
        "critical swaps far less than batch: {swapped:?}"
    );

    let per_machine = s["machines"].as_array().expect("summary has machines");
    assert_eq!(per_machine.len(), machines);
    let mut swapped_sum = 0;
    let mut means = Vec::new();
    for m in per_machine {
        swapped_sum += m["swapped_mb"].as_u64().expect("swapped_mb is a count");
        let u = &m["memory_utilization"];
        for p in ["min", "p5", "p25", "p50", "p75", "p95", "max"] {
            let v = num(u, p);
            assert!(
                (0.0..=1.0 + 1e-9).contains(&v),
                "memory utilization {p} = {v}: {m}"
            );
        }
        assert!(
            num(u, "p5") <= num(u, "p50") && num(u, "p50") <= num(u, "p95"),
            "{m}"
        );
        means.push(num(u, "mean"));
    }
    assert_eq!(
        swapped_sum, total,
        "per-machine swapped_mb adds up to the classes' total"
    );

    // Memory is spread reasonably: with the idle list and 32 GB machines at load 0.9, every
    // machine is used (mean above 20% of its memory) without living at the limit (mean below
    // the 90% high watermark), and no machine is far from the others (seed 1: means between
    // 0.50 and 0.65).
    let lo = means.iter().copied().fold(f64::MAX, f64::min);
    let hi = means.iter().copied().fold(f64::MIN, f64::max);
    assert!(
        lo > 0.2 && hi < 0.9,
        "per-machine mean memory utilization in [{lo}, {hi}]"
    );
    assert!(
        hi - lo < 0.3,
        "per-machine mean memory utilization in [{lo}, {hi}]"
    );
}

// ---- Trace replay ----

#[test]
fn trace_preset_runs_and_produces_rows() {
    let mut config = Config::preset("trace").expect("trace preset").quick();
    let trace = config
        .workload
        .trace
        .as_mut()
        .expect("the trace preset has a trace");
    assert!(
        trace.dir.is_relative(),
        "the preset's trace dir is relative"
    );
    trace.dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../traces/azure2019-100"
    ));
    let (schedulers, loads, classes) = (
        config.schedulers.len(),
        config.loads.len(),
        config.classes.len(),
    );
    let e = run(config, THREADS);
    assert!(e.invocations() > 0);
    let s = e.summary();
    let rows = rows(&s);
    assert_eq!(rows.len(), schedulers * loads * classes);
    let completed: u64 = rows.iter().filter_map(|r| r["completed"].as_u64()).sum();
    assert!(completed > 0, "the trace replay completes invocations");
    for r in rows {
        for key in [
            "scheduler",
            "load",
            "class",
            "price",
            "completed",
            "unfinished",
        ] {
            assert!(r.get(key).is_some(), "row lacks `{key}`: {r}");
        }
    }
}

// ---- Files ----

#[test]
fn write_produces_the_files() {
    let e = fig4_quick();
    let dir = TempDir::new("write");
    let out = dir.path().join("nested").join("out");
    let written = e.write(&out).expect("write succeeds");
    for name in [
        "summary.json",
        "latency.csv",
        "utilization.csv",
        "latency_p99.svg",
        "utilization.svg",
    ] {
        assert!(
            written.iter().any(|w| w == name),
            "{name} not in {written:?}"
        );
        let path = out.join(name);
        let len = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .len();
        assert!(len > 0, "{name} is empty");
    }
    for name in &written {
        assert!(
            out.join(name).is_file(),
            "{name} was reported but not written"
        );
    }
    // No temporary files are left behind.
    for entry in std::fs::read_dir(&out).expect("read out dir") {
        let name = entry.expect("dir entry").file_name();
        let name = name.to_string_lossy();
        assert!(!name.ends_with(".tmp"), "left behind {name}");
    }

    let summary = fig4_summary();
    let text = std::fs::read_to_string(out.join("summary.json")).expect("read summary.json");
    assert_eq!(
        text.trim_end(),
        pretty(summary),
        "summary.json is the summary"
    );

    let csv = std::fs::read_to_string(out.join("latency.csv")).expect("read latency.csv");
    let lines: Vec<&str> = csv.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    for key in REQUIRED {
        assert!(
            header.contains(&key),
            "latency.csv header lacks {key}: {}",
            lines[0]
        );
    }
    let summary_rows = rows(summary);
    assert_eq!(
        lines.len(),
        1 + summary_rows.len(),
        "header plus one line per row"
    );
    let col = |name: &str| header.iter().position(|h| *h == name).expect("column");
    for (line, r) in lines[1..].iter().zip(summary_rows) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), header.len(), "{line}");
        assert_eq!(
            cells[col("scheduler")],
            r["scheduler"].as_str().expect("string")
        );
        assert_eq!(cells[col("class")], r["class"].as_str().expect("string"));
        assert_eq!(cells[col("completed")], r["completed"].to_string());
    }

    let util = std::fs::read_to_string(out.join("utilization.csv")).expect("utilization.csv");
    assert_eq!(
        util.lines().count(),
        1 + e.runs.len(),
        "header plus one line per run"
    );
    for svg in ["latency_p99.svg", "utilization.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).expect("read svg");
        assert!(
            text.contains("<svg") && text.trim_end().ends_with("</svg>"),
            "{svg}"
        );
    }
}
