//! The quantile sketch against exact percentiles, on simulator runs small enough to keep
//! every latency and slowdown (`Sim::keep_samples`).
//!
//! The summaries report percentiles from the sketch ([`turnpike_sim::sketch`]); this checks,
//! on the fig4 workload below and beyond saturation (where latencies span five orders of
//! magnitude and the lowest class's slowdowns reach the thousands), that every reported
//! quantile is within the sketch's stated relative error of the exact percentile (closest
//! ranks interpolated, as the summaries computed them before the sketch), and that counts,
//! extremes and means agree.

use turnpike_sim::config::{Config, SchedulerKind};
use turnpike_sim::engine::Sim;
use turnpike_sim::sketch::{Sketch, RELATIVE_ERROR};
use turnpike_sim::stats::quantile_sorted;

const QS: [f64; 9] = [0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0];

fn check(what: &str, exact: &mut [f64], sketch: &Sketch) {
    exact.sort_by(f64::total_cmp);
    assert_eq!(sketch.count(), exact.len() as u64, "{what}: count");
    for q in QS {
        let want = quantile_sorted(exact, q).expect("samples");
        let got = sketch.quantile(q).expect("samples");
        let err = (got - want).abs() / want;
        assert!(
            err <= RELATIVE_ERROR,
            "{what}, q {q}: sketch {got}, exact {want}, relative error {err:.5} > {RELATIVE_ERROR}"
        );
    }
    let mean = exact.iter().sum::<f64>() / exact.len() as f64;
    let got = sketch.mean().expect("samples");
    assert!(
        ((got - mean) / mean).abs() < 1e-9,
        "{what}: mean {got} against {mean}"
    );
}

#[test]
fn sketch_percentiles_are_within_the_stated_error_of_exact_ones() {
    let mut config = Config::preset("fig4").expect("preset");
    config.workload.duration_s = 10.0;
    config.workload.warmup_s = 1.0;
    let classes = config.class_set().expect("classes");
    let mut checked = 0;
    for kind in [SchedulerKind::Turnpike, SchedulerKind::Hermod] {
        for load in [0.9, 1.1] {
            let out = Sim::new(&config, &classes, kind, load, None)
                .keep_samples()
                .run(&mut |_| {});
            for (c, o) in out.classes.iter().enumerate() {
                let what = format!("{} at {load}, class {c}", kind.name());
                assert!(
                    o.samples.len() > 1000,
                    "{what}: {} samples",
                    o.samples.len()
                );
                let mut latencies: Vec<f64> = o.samples.iter().map(|s| s.0 as f64).collect();
                let mut slowdowns: Vec<f64> = o.samples.iter().map(|s| s.1).collect();
                check(&format!("{what} latency"), &mut latencies, &o.latency_ns);
                check(&format!("{what} slowdown"), &mut slowdowns, &o.slowdown);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 16);
}
