//! A run's memory follows the invocations in flight, not how many it simulates.
//!
//! What grew with every invocation before (issue 20): one table entry per invocation ever
//! arrived and one latency and slowdown each. Now finished invocations' slots are reused and
//! percentiles come from a sketch; this checks both on the same workload run for 10 and for
//! 100 simulated seconds (ten times the invocations). Peak RSS for 10 M and 100 M invocations
//! is measured by the throughput bench (`-- --memory`, docs/benchmarks.md), not asserted here.

use turnpike_sim::config::{Config, SchedulerKind};
use turnpike_sim::engine::{RunOutcome, Sim};

fn run(kind: SchedulerKind, secs: f64) -> RunOutcome {
    let mut config = Config::preset("fig4").expect("preset");
    config.workload.duration_s = secs;
    config.workload.warmup_s = 1.0;
    let classes = config.class_set().expect("classes");
    Sim::new(&config, &classes, kind, 0.9, None).run(&mut |_| {})
}

#[test]
fn memory_follows_invocations_in_flight_not_the_runs_length() {
    for kind in [
        SchedulerKind::Turnpike,
        SchedulerKind::Hermod,
        SchedulerKind::Edf,
    ] {
        let (short, long) = (run(kind, 10.0), run(kind, 100.0));
        let what = kind.name();
        assert!(
            long.invocations > 9 * short.invocations,
            "{what}: {} and {} invocations",
            short.invocations,
            long.invocations
        );
        // About 0.9 x 800 cores in flight: the peak grows a little with a longer run (the
        // maximum of more samples), nowhere near tenfold.
        assert!(
            short.slots < 2_000 && long.slots < 2_000 && long.slots * 4 < short.slots * 5,
            "{what}: {} slots for {} invocations, {} for {}",
            short.slots,
            short.invocations,
            long.slots,
            long.invocations
        );
        let buckets = |o: &RunOutcome| {
            o.classes
                .iter()
                .map(|c| c.latency_ns.buckets() + c.slowdown.buckets())
                .sum::<usize>()
        };
        // Only a longer tail adds buckets (a few powers of two of 128 each).
        assert!(
            buckets(&long) * 4 < buckets(&short) * 5,
            "{what}: {} sketch buckets for the short run, {} for the long",
            buckets(&short),
            buckets(&long)
        );
    }
}
