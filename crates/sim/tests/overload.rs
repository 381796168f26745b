//! The top class under sustained overload (docs/results.md, "Overload"): the `overload`
//! preset's sweep, and the same bound for other seeds, cluster sizes, shard counts, k and
//! runtime distributions.
//!
//! The bounds are the goal the placement rule was designed to (docs/design-notes.md,
//! "Placement under overload"): the top class's p99 slowdown at most 1.5 (2.0 on one-core
//! machines, where a top-class invocation that waits behind another waits up to a whole
//! runtime), nothing of it unfinished, compute utilization at least 0.95, and every class's
//! p99 slowdown at least the next higher class's. Every run is deterministic for its seed, so
//! the tolerance is between the bound and the measured figure, not for noise; the margins
//! measured on seed 1 are 1.20 against 2.0 (one core) and 1.00 against 1.5 (two cores), and
//! the smallest, exponential runtimes on one core, 1.89 against 2.0 (seed 3, 60 s).
//! The paper's rule runs in the same sweep and misses these bounds, so the checks can fail.

use turnpike_policy::placement::PlacementRule;
use turnpike_sim::config::{Config, ServiceConfig};
use turnpike_sim::engine::RunOutcome;
use turnpike_sim::experiment::Experiment;
use turnpike_sim::stats::mean;
use turnpike_sim::sweep::Sweep;

const THREADS: usize = 2;

/// The top class's p99 slowdown bound on machines of `cores` cores.
fn top_bound(cores: u32) -> f64 {
    if cores == 1 {
        2.0
    } else {
        1.5
    }
}

/// What breaks the goal in one run, if anything.
fn misses(run: &RunOutcome, cores: u32) -> Vec<String> {
    let mut out = Vec::new();
    let top = run.classes.len() - 1;
    let p99 = |c: usize| {
        run.classes[c]
            .slowdown
            .quantile(0.99)
            .unwrap_or(f64::INFINITY)
    };
    let (top_p99, bound) = (p99(top), top_bound(cores));
    if top_p99 > bound {
        out.push(format!("top class p99 slowdown {top_p99:.2} > {bound}"));
    }
    if run.classes[top].unfinished > 0 {
        out.push(format!(
            "{} top-class invocations unfinished",
            run.classes[top].unfinished
        ));
    }
    for c in 0..top {
        // A class that completed nothing has an infinite slowdown: it never ranks too low.
        if p99(c) < p99(c + 1) {
            out.push(format!(
                "class {c} p99 {:.2} below class {} p99 {:.2}",
                p99(c),
                c + 1,
                p99(c + 1)
            ));
        }
    }
    let util = mean(&run.utilization).unwrap_or(0.0);
    if util < 0.95 {
        out.push(format!("utilization {util:.3} < 0.95"));
    }
    out
}

fn report(label: &str, seed: u64, e: &Experiment, cores: u32) -> Vec<String> {
    e.runs
        .iter()
        .flat_map(|run| {
            misses(run, cores)
                .into_iter()
                .map(move |m| format!("{label} (seed {seed}) load {}: {m}", run.load))
        })
        .collect()
}

#[test]
fn the_top_class_stays_fast_under_overload_in_every_cluster_shape() {
    let config = Config::preset("overload").expect("overload preset");
    let sweep = Sweep::run(&config, THREADS, false).expect("the sweep runs");
    assert_eq!(
        sweep.variants.len(),
        36,
        "3 cores x 2 idle x 3 memory x 2 rules"
    );
    let mut class_aware = Vec::new();
    let mut paper = Vec::new();
    for (variant, e) in &sweep.variants {
        let found = report(&variant.label(), config.seed, e, variant.cores);
        match variant.placement {
            PlacementRule::ClassAware => class_aware.extend(found),
            PlacementRule::Paper => paper.extend(found),
        }
    }
    assert!(
        class_aware.is_empty(),
        "the class-aware rule misses the goal:\n{}",
        class_aware.join("\n")
    );
    // Before: the paper's rule keeps the top class slow on one- and two-core machines. (With
    // the gateway's round-robin shard choice it also let a lower class finish faster than a
    // higher one with the idle list on; the policy core's power-of-two shard choice, which
    // the simulator now shares with the gateway, removed that.)
    assert!(
        paper.iter().any(|m| m.contains("top class p99")),
        "the paper's rule was expected to miss on the top class's p99: {paper:#?}"
    );
}

/// One load-2.0 run of the preset's one- or two-core shape with `edit` applied.
fn variation(cores: u32, edit: impl Fn(&mut Config)) -> (Config, Experiment) {
    let mut config = Config::preset("overload").expect("overload preset");
    config.sweep = None;
    config.loads = vec![2.0];
    config.cluster.cores = cores;
    config.cluster.memory_mb = Some(1 << 20);
    config.workload.duration_s = 60.0;
    config.workload.warmup_s = 6.0;
    edit(&mut config);
    config.validate().expect("a valid variation");
    let e = Experiment::run(config.clone(), THREADS, false).expect("the run");
    (config, e)
}

#[test]
fn the_bound_holds_for_other_seeds_sizes_shards_k_and_runtimes() {
    type Edit = fn(&mut Config);
    let edits: [(&str, Edit); 8] = [
        ("seed 2", |c| c.seed = 2),
        ("seed 3", |c| c.seed = 3),
        ("40 machines", |c| c.cluster.machines = 40),
        ("2 shards", |c| c.cluster.shards = 2),
        ("8 shards", |c| c.cluster.shards = 8),
        ("k = 2", |c| c.cluster.k = 2),
        ("idle list off", |c| c.cluster.idle_list = false),
        ("Pareto(2.5) runtimes, mean 40 ms", |c| {
            c.workload.service = Some(ServiceConfig::Pareto {
                alpha: 2.5,
                xm_ms: 24.0,
            })
        }),
    ];
    let mut found = Vec::new();
    for cores in [1, 2] {
        for (label, edit) in edits {
            let (config, e) = variation(cores, edit);
            found.extend(report(
                &format!("{cores}c, {label}"),
                config.seed,
                &e,
                cores,
            ));
        }
    }
    // Exponential runtimes, whose many short invocations make any wait count: three seeds on
    // two cores, 1.00 each over the 60 s here.
    for seed in [1, 2, 3] {
        let (config, e) = variation(2, |c| {
            c.seed = seed;
            c.workload.service = Some(ServiceConfig::Exponential { mean_ms: 40.0 });
        });
        found.extend(report("2c, exponential runtimes", config.seed, &e, 2));
    }
    assert!(found.is_empty(), "misses:\n{}", found.join("\n"));
}

#[test]
fn the_bound_holds_for_exponential_runtimes_on_one_core_machines() {
    // The hardest shape (issue 21): one core, so a top-class invocation that waits behind its
    // own class waits a whole residual runtime, and exponential runtimes, whose many short
    // invocations turn any such wait into a large slowdown. Seeds 1-3, over the 60 s of the
    // other variations and the preset's 120 s. Measured (docs/results.md, "Overload"):
    // 1.30 / 1.66 / 1.89 over 60 s and 1.52 / 1.63 / 1.63 over 120 s against the bound of
    // 2.0; before a deferred head's sample doubled, 1.46 / 2.19 / 2.04 and 1.75 / 2.05 /
    // 1.96. Each run is deterministic for its seed, so the tolerance is the margin between
    // the measured figure and the bound, at least 0.11 (seed 3 over 60 s); seeds 4-8 give
    // 1.37-1.86 over 60 s and 1.46-1.76 over 120 s, so the margin is not one lucky seed's.
    let mut found = Vec::new();
    for seed in [1, 2, 3] {
        for duration_s in [60.0, 120.0] {
            let (config, e) = variation(1, |c| {
                c.seed = seed;
                c.workload.service = Some(ServiceConfig::Exponential { mean_ms: 40.0 });
                c.workload.duration_s = duration_s;
                c.workload.warmup_s = duration_s / 10.0;
            });
            let label = format!("1c, exponential runtimes, {duration_s} s");
            found.extend(report(&label, config.seed, &e, 1));
        }
    }
    assert!(found.is_empty(), "misses:\n{}", found.join("\n"));
}

#[test]
fn every_machine_is_found_from_the_start_with_unlimited_memory() {
    // The collapse of issue 21 (60% utilization at twice the capacity): with memory never
    // short, machines joined an idle list only after their first placement, and under the
    // paper's rule (idle = free memory) a shard with a non-empty list never polled, so the
    // machines that never got work were never found. Dispatchers now report when their
    // machines start (as a real worker's does), and under the class-aware rule an idle
    // machine also needs an idle core (the dispatcher's own tests). Even the paper's rule
    // now uses every machine.
    let (_, e) = variation(1, |c| {
        c.cluster.memory_mb = None;
        c.cluster.placement = PlacementRule::Paper;
    });
    let util = mean(&e.runs[0].utilization).unwrap_or(0.0);
    assert!(util >= 0.95, "{util}: {:?}", e.runs[0].machine_utilization);
}
