//! `turnpike twin --config FILE --out DIR [--seed N]`: one experiment (the TOML of
//! `turnpike sim run`) run twice - in the simulator, and on the real gateway and shards of a
//! `turnpike up` cluster whose workers are emulated (`turnpike_node::emulated`: no wasm, each
//! invocation runs for the time it asks, under the same machine policy) - and compared class
//! by class. It checks that a simulator result is a result about the code that runs.
//!
//! The real run replays the very invocations the simulator offers (the same workload
//! generator, seed and load), open loop in real time: each is sent at its arrival time as
//! `POST /v1/invoke/emulated-twin?ms=RUNTIME` at its class, and its slowdown is the time from
//! its arrival to its response over its runtime (rounded to whole milliseconds, at least 1,
//! in both; the time beyond its runtime is reported as `real_transit`, which the simulator
//! models with `cluster.transit_delay_us`). Invocations that arrive during the warm-up are run but not measured, as in the
//! simulator. When more than [`IN_FLIGHT_MAX`] invocations are in flight (deep overload),
//! arrivals of the lower classes are held back (counted in `held_back`) so the process stays
//! within its file descriptors; the top class is always sent.
//!
//! Output in `DIR`: `summary.json` (`rows`, one per (load, class): `load`, `class`,
//! `sim_p50_slowdown`, `sim_p99_slowdown`, `real_p50_slowdown`, `real_p99_slowdown`,
//! `real_measured`, `held_back`; and the goal's verdict), `twin.csv` (the rows), `twin.svg`
//! (p50 and p99 of both, one panel per load). Goal: for every class whose simulated p99
//! slowdown is at most [`GOAL_SIM_P99_MAX`], the real p99 is within [`GOAL_RELATIVE`] of it,
//! and both order the classes the same way by p99 at every load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use turnpike_cluster::up::{self, UpConfig};
use turnpike_node::emulated::EmulatedConfig;
use turnpike_policy::{ClassId, ClassSet};
use turnpike_sim::config::{Config, ConfigError, SchedulerKind};
use turnpike_sim::experiment::Experiment;
use turnpike_sim::plot::{render_panels, LineChart, Scale, Series};
use turnpike_sim::stats::quantile_sorted;
use turnpike_sim::workload::Workload;

/// Invocations in flight above which lower-class arrivals are held back.
pub const IN_FLIGHT_MAX: u64 = 6000;
/// Classes whose simulated p99 slowdown is at most this are held to the goal.
pub const GOAL_SIM_P99_MAX: f64 = 10.0;
/// How far the real p99 may be from the simulated one, relative.
pub const GOAL_RELATIVE: f64 = 0.25;

#[derive(Args, Debug)]
pub struct TwinArgs {
    /// The experiment (the TOML of `turnpike sim run`; start from `turnpike sim preset twin`).
    #[arg(long)]
    config: PathBuf,
    /// Directory for summary.json, twin.csv and twin.svg.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the workload and the policies (default: the config's).
    #[arg(long)]
    seed: Option<u64>,
}

/// One (load, class) of both runs.
#[derive(Clone, Debug)]
struct Row {
    load: f64,
    class: String,
    sim_p50: f64,
    sim_p99: f64,
    real_p50: f64,
    real_p99: f64,
    real_measured: usize,
    held_back: u64,
}

pub fn main(args: TwinArgs) -> ExitCode {
    let config = match read_config(&args) {
        Ok(config) => config,
        Err(e) => return crate::fail(format!("{e:#}")),
    };
    crate::block_on(async move {
        match twin(config, &args.out).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The config, with the seed of `--seed` and the Turnpike scheduler only.
fn read_config(args: &TwinArgs) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read config {}", args.config.display()))?;
    let mut config = Config::parse(&text).with_context(|| format!("{}", args.config.display()))?;
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if config.sweep.is_some() {
        return Err(ConfigError::Field {
            field: "sweep".into(),
            msg: "the twin check runs one cluster shape: remove [sweep]".into(),
        }
        .into());
    }
    if config.workload.trace.is_some() {
        return Err(ConfigError::Field {
            field: "workload.arrivals".into(),
            msg: "the twin check replays synthetic workloads only".into(),
        }
        .into());
    }
    config.schedulers = vec![SchedulerKind::Turnpike];
    Ok(config)
}

async fn twin(config: Config, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let classes = config.class_set()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("simulating {} loads ...", config.loads.len());
    let sim_config = config.clone();
    let experiment =
        tokio::task::spawn_blocking(move || Experiment::run(sim_config, threads, false)).await??;
    let mut rows = Vec::new();
    let mut transits = Vec::new();
    for (i, &load) in config.loads.iter().enumerate() {
        eprintln!(
            "load {load}: {} s of real arrivals on {} emulated {}-core workers ...",
            config.workload.duration_s, config.cluster.machines, config.cluster.cores
        );
        let real = real_run(&config, &classes, load, &out.join(format!("real-{i}"))).await?;
        let mut t = real.transits_ms.clone();
        t.sort_by(f64::total_cmp);
        transits.push(json!({
            "load": load,
            "p10_ms": quantile_sorted(&t, 0.1),
            "p50_ms": quantile_sorted(&t, 0.5),
            "p99_ms": quantile_sorted(&t, 0.99),
        }));
        let sim = &experiment.runs[i];
        for (id, class) in classes.iter() {
            // The simulator keeps a sketch (within 0.4%); the real side's few thousand
            // slowdowns are sorted exactly.
            let sim_slowdown = &sim.classes[id.index()].slowdown;
            let mut real_slowdowns = real.slowdowns[id.index()].clone();
            real_slowdowns.sort_by(f64::total_cmp);
            let q = |s: &[f64], q: f64| quantile_sorted(s, q).unwrap_or(f64::NAN);
            rows.push(Row {
                load,
                class: class.name.clone(),
                sim_p50: sim_slowdown.quantile(0.5).unwrap_or(f64::NAN),
                sim_p99: sim_slowdown.quantile(0.99).unwrap_or(f64::NAN),
                real_p50: q(&real_slowdowns, 0.5),
                real_p99: q(&real_slowdowns, 0.99),
                real_measured: real_slowdowns.len(),
                held_back: real.held_back[id.index()],
            });
        }
    }
    let verdict = goal(&rows, &config.loads);
    write(out, &config, &rows, &verdict, &transits)?;
    eprintln!(
        "real transit (latency - runtime), ms: {}",
        serde_json::to_string(&transits)?
    );
    print_table(&rows);
    println!("{}", verdict["summary"].as_str().unwrap_or_default());
    println!("wrote {}", out.display());
    Ok(())
}

/// What the real run measured.
struct RealRun {
    /// Slowdowns of the measured invocations that answered, by class.
    slowdowns: Vec<Vec<f64>>,
    /// Their latency minus their runtime, ms, all classes.
    transits_ms: Vec<f64>,
    held_back: Vec<u64>,
}

/// The config's workload at `load`, replayed in real time on a fresh cluster in `dir`.
async fn real_run(
    config: &Config,
    classes: &ClassSet,
    load: f64,
    dir: &Path,
) -> anyhow::Result<RealRun> {
    let c = &config.cluster;
    let mut up_config = UpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), dir.to_path_buf());
    up_config.shards = c.shards as usize;
    up_config.workers = c.machines as usize;
    up_config.shard_k = c.k as usize;
    up_config.idle_list = c.idle_list;
    up_config.classes = classes.clone();
    let mut emulated = EmulatedConfig::new(classes.clone());
    emulated.cores = c.cores;
    // Unlimited memory in the simulator: more than any emulated invocation asks.
    emulated.memory_mb = c.memory_mb.unwrap_or(1 << 30);
    up_config.emulated = Some(emulated);
    up_config.bounds.gateway_in_flight_invocations_max = IN_FLIGHT_MAX * 2;
    let cluster = up::start(&up_config).await.context("start the cluster")?;
    let key = cluster
        .admin_key
        .clone()
        .context("a fresh store has an admin key")?;
    let result = replay(config, classes, load, cluster.gateway, &key).await;
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(dir);
    result
}

async fn replay(
    config: &Config,
    classes: &ClassSet,
    load: f64,
    gateway: SocketAddr,
    key: &str,
) -> anyhow::Result<RealRun> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector);
    let n = classes.len();
    let slowdowns: Arc<Mutex<Vec<Vec<f64>>>> = Arc::new(Mutex::new(vec![Vec::new(); n]));
    let transits: Arc<Mutex<Vec<f64>>> = Arc::default();
    let failures = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut held_back = vec![0u64; n];
    let warmup_ns = (config.workload.warmup_s * 1e9) as u64;
    let top = classes.top();
    let mut workload = Workload::new(config, classes, load, None);
    let mut requests = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    while let Some(arrival) = workload.next_arrival() {
        let at = start + Duration::from_nanos(arrival.at_ns);
        tokio::time::sleep_until(at).await;
        if arrival.class != top && in_flight.load(Ordering::Relaxed) >= IN_FLIGHT_MAX {
            held_back[arrival.class.index()] += 1;
            continue;
        }
        let ms = ((arrival.runtime_ns as f64 / 1e6).round() as u64).max(1);
        let request =
            http::Request::post(format!("http://{gateway}/v1/invoke/emulated-twin?ms={ms}"))
                .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
                .header("x-turnpike-class", classes.get(arrival.class).name.as_str())
                .body(Full::new(Bytes::new()))?;
        let (client, slowdowns, transits, failures, in_flight) = (
            client.clone(),
            slowdowns.clone(),
            transits.clone(),
            failures.clone(),
            in_flight.clone(),
        );
        let measured = arrival.at_ns >= warmup_ns;
        let class: ClassId = arrival.class;
        in_flight.fetch_add(1, Ordering::Relaxed);
        requests.spawn(async move {
            let answered = match client.request(request).await {
                Ok(response) => {
                    let ok = response.status() == http::StatusCode::OK;
                    if !ok {
                        tracing::debug!(status = %response.status(), "an invocation was refused");
                    }
                    ok && response.into_body().collect().await.is_ok()
                }
                Err(e) => {
                    tracing::debug!("an invocation failed: {e}");
                    false
                }
            };
            in_flight.fetch_sub(1, Ordering::Relaxed);
            if !answered {
                failures.fetch_add(1, Ordering::Relaxed);
            } else if measured {
                let latency = Instant::now()
                    .saturating_duration_since(at.into_std())
                    .as_secs_f64();
                let runtime = ms as f64 / 1e3;
                turnpike_wire::lock(&slowdowns)[class.index()].push(latency / runtime);
                turnpike_wire::lock(&transits).push((latency - runtime) * 1e3);
            }
        });
    }
    // What is still in flight after the drain time is left out, as the simulator reports it
    // unfinished.
    let drain = Duration::from_secs_f64(config.workload.drain_s.max(0.0));
    let _ = tokio::time::timeout(drain, async {
        while requests.join_next().await.is_some() {}
    })
    .await;
    requests.abort_all();
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("  {failed} invocations got no 200 answer");
    }
    let slowdowns = std::mem::take(&mut *turnpike_wire::lock(&slowdowns));
    let transits_ms = std::mem::take(&mut *turnpike_wire::lock(&transits));
    Ok(RealRun {
        slowdowns,
        transits_ms,
        held_back,
    })
}

/// The goal's verdict: per (load, class) held to it, whether the real p99 is within
/// [`GOAL_RELATIVE`]; per load, whether both runs order the classes the same way by p99.
fn goal(rows: &[Row], loads: &[f64]) -> Value {
    let mut misses = Vec::new();
    for r in rows {
        if r.sim_p99 <= GOAL_SIM_P99_MAX {
            let off = (r.real_p99 - r.sim_p99).abs() / r.sim_p99;
            if off.is_nan() || off > GOAL_RELATIVE {
                misses.push(format!(
                    "load {} {}: real p99 {:.2} vs simulated {:.2} ({:+.0}%)",
                    r.load,
                    r.class,
                    r.real_p99,
                    r.sim_p99,
                    (r.real_p99 / r.sim_p99 - 1.0) * 100.0
                ));
            }
        }
    }
    for &load in loads {
        let at: Vec<&Row> = rows.iter().filter(|r| r.load == load).collect();
        let order = |p99: &dyn Fn(&Row) -> f64| {
            let mut idx: Vec<usize> = (0..at.len()).collect();
            idx.sort_by(|&a, &b| p99(at[b]).total_cmp(&p99(at[a])));
            idx
        };
        let (sim, real) = (order(&|r| r.sim_p99), order(&|r| r.real_p99));
        if sim != real {
            let names = |o: &[usize]| {
                o.iter()
                    .map(|&i| at[i].class.as_str())
                    .collect::<Vec<_>>()
                    .join(" > ")
            };
            misses.push(format!(
                "load {load}: classes ordered {} in the simulator, {} for real",
                names(&sim),
                names(&real)
            ));
        }
    }
    let summary = if misses.is_empty() {
        "goal met: every class held to it is within 25% of the simulator, in the same order"
            .to_string()
    } else {
        format!("goal missed: {}", misses.join("; "))
    };
    json!({ "met": misses.is_empty(), "misses": misses, "summary": summary })
}

fn write(
    out: &Path,
    config: &Config,
    rows: &[Row],
    verdict: &Value,
    transits: &[Value],
) -> anyhow::Result<()> {
    let number = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    let json_rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "load": r.load,
                "class": r.class,
                "sim_p50_slowdown": number(r.sim_p50),
                "sim_p99_slowdown": number(r.sim_p99),
                "real_p50_slowdown": number(r.real_p50),
                "real_p99_slowdown": number(r.real_p99),
                "real_measured": r.real_measured,
                "held_back": r.held_back,
            })
        })
        .collect();
    let summary = json!({
        "seed": config.seed,
        "machines": config.cluster.machines,
        "cores": config.cluster.cores,
        "shards": config.cluster.shards,
        "k": config.cluster.k,
        "transit_delay_us": config.cluster.transit_delay_us,
        "rows": json_rows,
        "real_transit": transits,
        "goal": verdict,
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    let mut csv = String::from(
        "load,class,sim_p50_slowdown,sim_p99_slowdown,real_p50_slowdown,real_p99_slowdown,real_measured,held_back\n",
    );
    for r in rows {
        csv.push_str(&format!(
            "{},{},{:.4},{:.4},{:.4},{:.4},{},{}\n",
            r.load,
            r.class,
            r.sim_p50,
            r.sim_p99,
            r.real_p50,
            r.real_p99,
            r.real_measured,
            r.held_back
        ));
    }
    std::fs::write(out.join("twin.csv"), csv)?;
    let panels: Vec<LineChart> = config
        .loads
        .iter()
        .map(|&load| {
            let at: Vec<&Row> = rows.iter().filter(|r| r.load == load).collect();
            let series = |name: &str, value: fn(&Row) -> f64| Series {
                name: name.into(),
                points: at
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (i as f64, value(r)))
                    .collect(),
            };
            LineChart {
                title: format!("load {load}"),
                x_label: "class (0 = cheapest)".into(),
                y_label: "slowdown".into(),
                y_scale: Scale::Log10,
                series: vec![
                    series("simulated p99", |r| r.sim_p99),
                    series("real p99", |r| r.real_p99),
                    series("simulated p50", |r| r.sim_p50),
                    series("real p50", |r| r.real_p50),
                ],
            }
        })
        .collect();
    std::fs::write(
        out.join("twin.svg"),
        render_panels(&panels, panels.len().max(1)),
    )?;
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "{:>5} {:<12} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "load", "class", "sim p50", "real p50", "sim p99", "real p99", "held back"
    );
    for r in rows {
        println!(
            "{:>5} {:<12} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9}",
            r.load, r.class, r.sim_p50, r.real_p50, r.sim_p99, r.real_p99, r.held_back
        );
    }
}
