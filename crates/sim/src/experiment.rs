//! An experiment: every (scheduler, load) of a config, run in parallel, then written out as
//! `summary.json` (deterministic for a seed), CSV tables and SVG plots.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use turnpike_policy::ClassSet;

use crate::config::{ArrivalKind, Config, ConfigError, SchedulerKind};
use crate::engine::{RunOutcome, Sim};
use crate::plot::{render_panels, BarChart, LineChart, Scale, Series};
use crate::stats::{quantile_sorted, Spread};
use crate::trace::Trace;

/// The finished runs of one config.
#[derive(Debug)]
pub struct Experiment {
    pub config: Config,
    pub classes: ClassSet,
    /// In config order: schedulers outer, loads inner.
    pub runs: Vec<RunOutcome>,
    /// Wall time spent simulating (not part of any output file: it is not deterministic).
    pub wall: Duration,
}

impl Experiment {
    /// Runs every (scheduler, load) of `config` on up to `threads` threads.
    pub fn run(config: Config, threads: usize, show_progress: bool) -> Result<Self, ConfigError> {
        let classes = config.class_set()?;
        let trace = match (&config.workload.arrivals, &config.workload.trace) {
            (ArrivalKind::Trace, Some(t)) => Some(Trace::load(&t.dir)?),
            _ => None,
        };
        let jobs: Vec<(SchedulerKind, f64)> = config
            .schedulers
            .iter()
            .flat_map(|&s| config.loads.iter().map(move |&l| (s, l)))
            .collect();
        let bar = progress_bar(jobs.len() as u64 * 1000, show_progress);
        let done: Vec<AtomicU64> = jobs.iter().map(|_| AtomicU64::new(0)).collect();
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<RunOutcome>>> = Mutex::new(vec![None; jobs.len()]);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..threads.clamp(1, jobs.len().max(1)) {
                scope.spawn(|| loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(scheduler, load)) = jobs.get(j) else {
                        break;
                    };
                    let sim = Sim::new(&config, &classes, scheduler, load, trace.as_ref());
                    let mut progress = |f: f64| {
                        done[j].store((f * 1000.0) as u64, Ordering::Relaxed);
                        bar.set_position(done.iter().map(|d| d.load(Ordering::Relaxed)).sum());
                    };
                    let outcome = sim.run(&mut progress);
                    done[j].store(1000, Ordering::Relaxed);
                    bar.set_position(done.iter().map(|d| d.load(Ordering::Relaxed)).sum());
                    results.lock().expect("no thread panicked holding it")[j] = Some(outcome);
                });
            }
        });
        bar.finish_and_clear();
        let runs = results
            .into_inner()
            .expect("no thread panicked holding it")
            .into_iter()
            .map(|r| r.expect("every job ran"))
            .collect();
        Ok(Self {
            config,
            classes,
            runs,
            wall: started.elapsed(),
        })
    }

    /// Invocations simulated in all runs.
    pub fn invocations(&self) -> u64 {
        self.runs.iter().map(|r| r.invocations).sum()
    }

    /// The deterministic summary: same config and seed, byte-identical JSON.
    pub fn summary(&self) -> Value {
        let class_names: Vec<&str> = self.classes.iter().map(|(_, c)| c.name.as_str()).collect();
        let mut rows = Vec::new();
        let mut runs = Vec::new();
        for r in &self.runs {
            for (id, class) in self.classes.iter() {
                let o = &r.classes[id.index()];
                rows.push(json!({
                    "scheduler": r.scheduler.name(),
                    "load": r.load,
                    "class": class.name,
                    "price": class.price,
                    "completed": o.completed,
                    "unfinished": o.unfinished,
                    "failed": o.failed,
                    "kills": o.kills,
                    "mean_latency_ms": o.mean_latency_ms(),
                    "p50_latency_ms": o.latency_ms(0.5),
                    "p99_latency_ms": o.latency_ms(0.99),
                    "p50_slowdown": o.slowdown.quantile(0.5),
                    "p99_slowdown": o.slowdown.quantile(0.99),
                    "mean_slowdown": o.slowdown.mean(),
                }));
            }
            let mut run = Map::new();
            run.insert("scheduler".into(), json!(r.scheduler.name()));
            run.insert("load".into(), json!(r.load));
            run.insert("invocations".into(), json!(r.invocations));
            run.insert("mean_runtime_ms".into(), json!(r.mean_runtime_ms));
            run.insert("utilization".into(), json!(Spread::of(&r.utilization)));
            run.insert(
                "machine_utilization".into(),
                json!(Spread::of(&r.machine_utilization)),
            );
            if let Some(mem) = memory_summary(r, &class_names) {
                run.insert("memory".into(), mem);
            }
            runs.push(Value::Object(run));
        }
        let mut top = Map::new();
        top.insert("seed".into(), json!(self.config.seed));
        top.insert(
            "classes".into(),
            json!(self
                .classes
                .iter()
                .map(|(_, c)| json!({"name": c.name, "price": c.price}))
                .collect::<Vec<_>>()),
        );
        top.insert("utilization_note".into(), json!(
            "utilization spreads are over (machine, window) samples: across machines and across time; EDF has one machine, so its spread is across time only"
        ));
        top.insert("rows".into(), Value::Array(rows));
        // With a single memory-limited run (fig5) its memory figures are also at the top.
        let memory_runs: Vec<&Value> = runs.iter().filter_map(|r| r.get("memory")).collect();
        if let [only] = memory_runs.as_slice() {
            for key in ["swapped_mb_by_class", "kills_by_class", "machines"] {
                top.insert(key.into(), only[key].clone());
            }
        }
        top.insert("runs".into(), Value::Array(runs));
        Value::Object(top)
    }

    /// Writes summary, tables and plots into `dir` (created if missing). Each file is written
    /// to a temporary name and renamed, so none is ever left half-written.
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        let mut files: Vec<(String, String)> = Vec::new();
        let summary = self.summary();
        let mut text = serde_json::to_string_pretty(&summary).expect("JSON values serialize");
        text.push('\n');
        files.push(("summary.json".into(), text));
        files.push(("latency.csv".into(), self.latency_csv(&summary)));
        files.push(("utilization.csv".into(), self.utilization_csv()));
        files.extend(self.latency_plots());
        files.push(("utilization.svg".into(), self.utilization_plot()));
        if self.runs.iter().any(|r| r.memory.is_some()) {
            files.extend(self.memory_outputs());
        }
        write_files(dir, files)
    }

    fn latency_csv(&self, summary: &Value) -> String {
        let cols = [
            "scheduler",
            "load",
            "class",
            "price",
            "completed",
            "unfinished",
            "failed",
            "kills",
            "mean_latency_ms",
            "p50_latency_ms",
            "p99_latency_ms",
            "p50_slowdown",
            "p99_slowdown",
            "mean_slowdown",
        ];
        rows_csv(summary, &cols)
    }

    fn utilization_csv(&self) -> String {
        let mut out = String::from("scheduler,load,mean,p5,p25,p50,p75,p95,min,max\n");
        for r in &self.runs {
            if let Some(s) = Spread::of(&r.utilization) {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{}",
                    r.scheduler.name(),
                    r.load,
                    s.mean,
                    s.p5,
                    s.p25,
                    s.p50,
                    s.p75,
                    s.p95,
                    s.min,
                    s.max
                );
            }
        }
        out
    }

    fn schedulers(&self) -> Vec<SchedulerKind> {
        let mut s = self.config.schedulers.clone();
        s.dedup();
        s
    }

    /// One panel per scheduler: a latency or slowdown quantile per class against load.
    fn latency_plots(&self) -> Vec<(String, String)> {
        let metrics: [(&str, &str, f64, bool); 3] = [
            ("latency_p99", "p99 latency (ms)", 0.99, false),
            ("latency_p50", "p50 latency (ms)", 0.5, false),
            ("slowdown_p99", "p99 slowdown", 0.99, true),
        ];
        metrics
            .iter()
            .map(|&(file, label, q, slowdown)| {
                let panels: Vec<LineChart> = self
                    .schedulers()
                    .into_iter()
                    .map(|s| LineChart {
                        title: s.name().to_string(),
                        x_label: "offered load".into(),
                        y_label: label.into(),
                        y_scale: Scale::Log10,
                        series: self
                            .classes
                            .iter()
                            .rev()
                            .map(|(id, class)| Series {
                                name: class.name.clone(),
                                points: self
                                    .runs
                                    .iter()
                                    .filter(|r| r.scheduler == s)
                                    .filter_map(|r| {
                                        let o = &r.classes[id.index()];
                                        let v = if slowdown {
                                            o.slowdown.quantile(q)
                                        } else {
                                            o.latency_ms(q)
                                        };
                                        v.map(|v| (r.load, v))
                                    })
                                    .collect(),
                            })
                            .collect(),
                    })
                    .collect();
                (
                    format!("{file}.svg"),
                    render_panels(&panels, panels.len().min(3)),
                )
            })
            .collect()
    }

    /// One panel per scheduler: mean and spread of utilization against offered load.
    fn utilization_plot(&self) -> String {
        let panels: Vec<LineChart> = self
            .schedulers()
            .into_iter()
            .map(|s| LineChart {
                title: format!("{} utilization", s.name()),
                x_label: "offered load".into(),
                y_label: "across machines and windows".into(),
                y_scale: Scale::Linear,
                series: [("p95", 0usize), ("mean", 1), ("p5", 2)]
                    .iter()
                    .map(|&(stat, pick)| Series {
                        name: stat.into(),
                        points: self
                            .runs
                            .iter()
                            .filter(|r| r.scheduler == s)
                            .filter_map(|r| {
                                let sp = Spread::of(&r.utilization)?;
                                Some((r.load, [sp.p95, sp.mean, sp.p5][pick]))
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        render_panels(&panels, panels.len().min(3))
    }

    fn memory_outputs(&self) -> Vec<(String, String)> {
        let mut files = Vec::new();
        let mut timeline = String::from("scheduler,load,time_s,machine,used_mb,swap_used_mb\n");
        let mut machines = String::from("scheduler,load,machine");
        for (_, c) in self.classes.iter() {
            let _ = write!(machines, ",swapped_mb_{}", c.name);
        }
        machines.push('\n');
        for (n, r) in self.runs.iter().enumerate() {
            let Some(mem) = &r.memory else { continue };
            let tag = if self.runs.len() == 1 {
                String::new()
            } else {
                format!("_{n}")
            };
            for (t, (used, swap)) in mem
                .sample_s
                .iter()
                .zip(mem.used_mb.iter().zip(&mem.swap_used_mb))
            {
                for (m, (u, s)) in used.iter().zip(swap).enumerate() {
                    let _ = writeln!(
                        timeline,
                        "{},{},{t},{m},{u},{s}",
                        r.scheduler.name(),
                        r.load
                    );
                }
            }
            for (m, by_class) in mem.swapped_mb.iter().enumerate() {
                let _ = write!(machines, "{},{},{m}", r.scheduler.name(), r.load);
                for mb in by_class {
                    let _ = write!(machines, ",{mb}");
                }
                machines.push('\n');
            }
            // Spread of memory utilization across machines over time.
            let cap = mem.capacity_mb as f64;
            let bands: Vec<Series> = [("p5", 0.05), ("p50", 0.5), ("p95", 0.95), ("max", 1.0)]
                .iter()
                .map(|&(name, q)| Series {
                    name: name.to_string(),
                    points: mem
                        .sample_s
                        .iter()
                        .zip(&mem.used_mb)
                        .filter_map(|(&t, used)| {
                            let mut u: Vec<f64> = used.iter().map(|&x| x as f64 / cap).collect();
                            u.sort_unstable_by(f64::total_cmp);
                            quantile_sorted(&u, q).map(|v| (t, v))
                        })
                        .collect(),
                })
                .collect();
            files.push((
                format!("memory_utilization{tag}.svg"),
                LineChart {
                    title: format!(
                        "memory utilization, {} at load {}",
                        r.scheduler.name(),
                        r.load
                    ),
                    x_label: "time (s)".into(),
                    y_label: "used / capacity".into(),
                    y_scale: Scale::Linear,
                    series: bands,
                }
                .render(),
            ));
            let per_machine: Vec<Series> = self
                .classes
                .iter()
                .map(|(id, c)| Series {
                    name: c.name.clone(),
                    points: mem
                        .swapped_mb
                        .iter()
                        .enumerate()
                        .map(|(m, by)| (m as f64, by[id.index()] as f64))
                        .collect(),
                })
                .collect();
            files.push((
                format!("swapped_by_machine{tag}.svg"),
                BarChart {
                    title: "memory swapped out per machine, by class (MB)".into(),
                    x_label: "machine".into(),
                    y_label: "MB swapped".into(),
                    categories: (0..mem.swapped_mb.len()).map(|m| m.to_string()).collect(),
                    groups: per_machine,
                    stacked: true,
                }
                .render(),
            ));
            let by_class = |name: &str, v: &[u64]| Series {
                name: name.to_string(),
                points: v
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| (i as f64, x as f64))
                    .collect(),
            };
            let swapped_total: Vec<u64> = (0..self.classes.len())
                .map(|c| mem.swapped_mb.iter().map(|m| m[c]).sum())
                .collect();
            let class_names: Vec<String> =
                self.classes.iter().map(|(_, c)| c.name.clone()).collect();
            for (file, title, y_label, series) in [
                (
                    "swapped_by_class",
                    "memory swapped out, by class",
                    "MB",
                    by_class("MB swapped out", &swapped_total),
                ),
                (
                    "kills_by_class",
                    "invocations killed, by class",
                    "kills",
                    by_class("kills", &mem.kills_by_class),
                ),
            ] {
                files.push((
                    format!("{file}{tag}.svg"),
                    BarChart {
                        title: title.into(),
                        x_label: "class".into(),
                        y_label: y_label.into(),
                        categories: class_names.clone(),
                        groups: vec![series],
                        stacked: false,
                    }
                    .render(),
                ));
            }
        }
        files.push(("memory_timeline.csv".into(), timeline));
        files.push(("swapped_by_machine.csv".into(), machines));
        files
    }
}

fn memory_summary(r: &RunOutcome, class_names: &[&str]) -> Option<Value> {
    let mem = r.memory.as_ref()?;
    let keyed = |v: &[u64]| -> Value {
        Value::Object(
            class_names
                .iter()
                .zip(v)
                .map(|(n, x)| (n.to_string(), json!(x)))
                .collect(),
        )
    };
    let swapped_total: Vec<u64> = (0..class_names.len())
        .map(|c| mem.swapped_mb.iter().map(|m| m[c]).sum())
        .collect();
    let cap = mem.capacity_mb as f64;
    let machines: Vec<Value> = mem
        .swapped_mb
        .iter()
        .enumerate()
        .map(|(m, by)| {
            let util: Vec<f64> = mem.used_mb.iter().map(|s| s[m] as f64 / cap).collect();
            let swap_peak = mem.swap_used_mb.iter().map(|s| s[m]).max().unwrap_or(0);
            json!({
                "machine": m,
                "swap_used_mb_max": swap_peak,
                "swapped_mb": by.iter().sum::<u64>(),
                "swapped_mb_by_class": keyed(by),
                "memory_utilization": Spread::of(&util),
            })
        })
        .collect();
    let all_util: Vec<f64> = mem
        .used_mb
        .iter()
        .flat_map(|s| s.iter().map(|&u| u as f64 / cap))
        .collect();
    let per_machine_swap: Vec<f64> = mem
        .swapped_mb
        .iter()
        .map(|by| by.iter().sum::<u64>() as f64)
        .collect();
    let swap_peak = mem
        .swap_used_mb
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0);
    Some(json!({
        "capacity_mb": mem.capacity_mb,
        "swap_used_mb_max": swap_peak,
        "swapped_mb_by_class": keyed(&swapped_total),
        "swap_outs_by_class": keyed(&mem.swap_outs_by_class),
        "swap_ins_by_class": keyed(&mem.swap_ins_by_class),
        "kills_by_class": keyed(&mem.kills_by_class),
        "memory_utilization": Spread::of(&all_util),
        "swapped_mb_across_machines": Spread::of(&per_machine_swap),
        "machines": machines,
    }))
}

fn progress_bar(len: u64, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} simulating [{bar:40}] {percent}% eta {eta}",
        )
        .expect("static template is valid")
        .progress_chars("=> "),
    );
    bar
}

/// The `cols` of every row of a summary as CSV, with a header line.
pub(crate) fn rows_csv(summary: &Value, cols: &[&str]) -> String {
    let mut out = cols.join(",");
    out.push('\n');
    for row in summary["rows"].as_array().into_iter().flatten() {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| match &row[*c] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                v => v.to_string(),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// Writes each `(name, body)` into `dir`, each to a temporary name and renamed, so none is
/// ever left half-written; returns the names.
pub(crate) fn write_files(
    dir: &Path,
    files: Vec<(String, String)>,
) -> std::io::Result<Vec<String>> {
    for (name, body) in &files {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(files.into_iter().map(|(n, _)| n).collect())
}
