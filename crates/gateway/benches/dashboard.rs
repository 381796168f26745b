//! What the dashboard adds to every invocation at the gateway: finding its (tenant, app)
//! counts (`Dashboard::app`, a read-locked map lookup) and recording its latency there, against
//! the baseline the gateway already pays per invocation, recording it in the per-class
//! histogram of `/metrics` (`ClassHistograms::observe`).
//!
//! `cargo bench -p turnpike-gateway --bench dashboard`
//!
//! 1,000 (tenant, app) pairs are known (100 tenants x 10 apps), each op takes the next pair in
//! turn. Timed A B A B: each round times a batch of both ops in turn; printed are each op's
//! median ns/op over rounds and the median of the per-round ratios to the baseline. Without
//! `--bench` (as under `cargo test --benches`) it is a one-round smoke run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use turnpike_gateway::dashboard::Dashboard;
use turnpike_policy::{ClassId, ClassSet};
use turnpike_wire::metrics::ClassHistograms;

const TENANTS: usize = 100;
const APPS: usize = 10;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, batch) = if full { (21, 200_000) } else { (1, 1_000) };
    let classes = ClassSet::default_four();
    let histograms = ClassHistograms::new(&classes);
    let dashboard = Dashboard::new(&classes);
    let pairs: Vec<(String, String)> = (0..TENANTS)
        .flat_map(|t| (0..APPS).map(move |a| (format!("tenant-{t}"), format!("app-{a}"))))
        .collect();
    for (tenant, app) in &pairs {
        dashboard.app(tenant, app);
    }
    let took = Duration::from_micros(700);
    let mut next = 0usize;
    let mut baseline_ns = Vec::new();
    let mut dashboard_ns = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        for i in 0..batch {
            histograms.observe(black_box(i & 3), black_box(took));
        }
        let base = started.elapsed().as_nanos() as f64 / batch as f64;
        let started = Instant::now();
        for i in 0..batch {
            let (tenant, app) = &pairs[next];
            next = (next + 1) % pairs.len();
            if let Some(stats) = dashboard.app(black_box(tenant), black_box(app)) {
                stats.observe(ClassId((i & 3) as u8), black_box(took));
            }
        }
        let dash = started.elapsed().as_nanos() as f64 / batch as f64;
        baseline_ns.push(base);
        dashboard_ns.push(dash);
        ratios.push(dash / base);
    }
    println!(
        "{:<58} {:>8.1} ns/op",
        "baseline: ClassHistograms::observe (already per invocation)",
        median(&mut baseline_ns)
    );
    println!(
        "{:<58} {:>8.1} ns/op  {:.2}x baseline",
        "dashboard: Dashboard::app + AppStats::observe",
        median(&mut dashboard_ns),
        median(&mut ratios)
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
