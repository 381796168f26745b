//! The cluster model's delays: a shard's decision time and the polling round trip. With a
//! shard as the bottleneck, its multi-queue decides who waits: the class ordering must show.

use turnpike_sim::config::{Config, SchedulerKind};
use turnpike_sim::engine::{RunOutcome, Sim};

fn run(cluster_extra: &str, load: f64, service: &str) -> RunOutcome {
    let text = format!(
        r#"
seed = 11
schedulers = ["turnpike"]
loads = [{load}]
[[classes]]
name = "batch"
price = 0.5
[[classes]]
name = "critical"
price = 2.0
[cluster]
machines = 10
cores = 8
shards = 1
k = 2
{cluster_extra}
[workload]
duration_s = 20
warmup_s = 2
drain_s = 20
arrivals = "poisson"
classes_by = "invocation"
[workload.service]
{service}
"#
    );
    let config = Config::parse(&text).expect("valid config");
    let classes = config.class_set().expect("classes");
    Sim::new(&config, &classes, SchedulerKind::Turnpike, load, None).run(&mut |_| {})
}

/// Polling adds its round trip to every placement (nothing else queues at light load), and a
/// decision delay adds its own; deterministic 10 ms runtimes make the sum exact.
#[test]
fn poll_and_decision_delays_add_to_latency() {
    let service = "kind = \"deterministic\"\nms = 10.0";
    let none = run("", 0.1, service);
    let delayed = run(
        "poll_delay_us = 5000\ndecision_delay_us = 100",
        0.1,
        service,
    );
    for class in 0..2 {
        let base = &none.classes[class].latency_ns;
        let with = &delayed.classes[class].latency_ns;
        assert!(!base.is_empty() && !with.is_empty());
        // Without delays a placement is instant and a machine is rarely full at load 0.1.
        assert_eq!(
            base.min(),
            Some(10e6),
            "class {class}: fastest without delays"
        );
        assert_eq!(
            with.min(),
            Some(15.1e6),
            "class {class}: fastest with 5 ms poll + 0.1 ms decision"
        );
    }
}

/// A shard that needs 240 us per decision can place about 4,170 invocations per second. At
/// load 0.5 of 80 cores with 10 ms mean runtimes, 4,000 per second arrive: the shard is 96%
/// busy and a queue forms in it. Its head choice (price x time waited) lets critical work
/// (price 2.0) through ahead of batch (0.5), so critical waits clearly less. The machines are
/// half idle, so the difference comes from the shard's multi-queue, not from the machines.
#[test]
fn a_busy_shard_places_higher_classes_first() {
    let service = "kind = \"exponential\"\nmean_ms = 10.0";
    let out = run("decision_delay_us = 240", 0.5, service);
    let fast = run("", 0.5, service);
    // The wait the shard adds to each class: mean latency minus that of the same workload
    // with an instant shard (same seed, same invocations).
    let mean_ms = |o: &RunOutcome, c: usize| o.classes[c].mean_latency_ms().expect("completed");
    let added = |c: usize| mean_ms(&out, c) - mean_ms(&fast, c);
    let (batch, critical) = (added(0), added(1));
    assert!(
        critical > 0.0,
        "seed 11: a busy shard must add some wait even for critical"
    );
    // Scores equalize when waits are in the inverse ratio of prices (4x); allow for the
    // busy shard also serving arrivals that found the queue empty.
    assert!(
        batch > 2.0 * critical,
        "seed 11: the shard added {batch:.2} ms to batch and {critical:.2} ms to critical"
    );
    assert_eq!(out.classes.iter().map(|c| c.unfinished).sum::<u64>(), 0);
}
