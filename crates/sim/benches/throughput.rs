//! Simulator throughput: simulated invocations per wall-second on one thread.
//!
//! `cargo bench -p turnpike-sim --bench throughput [-- NAME... | --quick]`
//!
//! Workloads (all at offered load 0.9 with the fig4 preset's classes, Poisson arrivals,
//! unlimited memory, idle list off):
//! - pareto 100x8: issue 20's workload: 100 machines x 8 cores, one function (so one class),
//!   Pareto(alpha 2.5, x_m 50 ms) runtimes, 120 simulated seconds (~1.0 M invocations);
//! - pareto 2000x64: the same on 2,000 machines x 64 cores, 1.5 simulated seconds (~2.1 M);
//! - fig4: 100 machines x 8 cores, the fig4 preset's 1,000 functions in four classes with
//!   per-function Pareto runtimes, 250 simulated seconds (~2.2 M), Turnpike, Hermod and EDF;
//! - fig4 2000x64: the fig4 workload on 2,000 machines x 64 cores, 1.5 simulated seconds.
//!
//! Each workload has a baseline measured in the same run: a bare event loop that draws the
//! same arrivals from `Workload::next_arrival` and pushes and pops an arrival and a completion
//! event per invocation on a `BinaryHeap` (each invocation completes after its runtime, as on
//! infinitely many cores, so the heap holds as many events as the real run has invocations in
//! flight). That is the floor of any discrete-event simulator of this workload.
//!
//! Every run is a child process (this binary again, with `--child N`), so each has its own
//! peak RSS (`VmHWM` from `/proc/self/status`) and no run inherits another's heap. The runs
//! are interleaved (bare, turnpike, hermod, edf, bare, turnpike, ... in each of 5 rounds);
//! each figure is the median over rounds and each ratio the median of the per-round ratios
//! to the same round's bare loop. CPU time used by other processes during the runs is
//! printed: a run that shared the machine is not a figure. Nothing asserts on wall time.
//!
//! Arguments: words select runs by name (`turnpike`, `2000x64`, ...); `--quick` is one round
//! of a tenth of the simulated time. `--memory` instead measures peak RSS against the number
//! of invocations: 10 M and 100 M on the 2,000 x 64 cluster (`--memory --quick`: 1 M and
//! 10 M), each beside the bare loop over the same arrivals. Without `--bench` (as under `cargo test --benches`) it
//! only runs a tiny smoke version.

/// The allocator the `turnpike` binary (`turnpike sim`) ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use turnpike_policy::ClassSet;
use turnpike_sim::config::{Config, SchedulerKind, ServiceConfig};
use turnpike_sim::engine::Sim;
use turnpike_sim::workload::Workload;

const LOAD: f64 = 0.9;

/// What to time on a workload.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Runner {
    Bare,
    Sim(SchedulerKind),
}

/// The workloads (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Pareto,
    Pareto2000,
    Fig4,
    Fig42000,
}

impl Shape {
    const ALL: [Self; 4] = [Self::Pareto, Self::Pareto2000, Self::Fig4, Self::Fig42000];

    fn name(self) -> &'static str {
        match self {
            Self::Pareto => "pareto 100x8",
            Self::Pareto2000 => "pareto 2000x64",
            Self::Fig4 => "fig4 100x8",
            Self::Fig42000 => "fig4 2000x64",
        }
    }

    fn big(self) -> bool {
        matches!(self, Self::Pareto2000 | Self::Fig42000)
    }

    /// Simulated seconds of arrivals in a full run (about 1-2 M invocations each).
    fn full_secs(self) -> f64 {
        match self {
            Self::Pareto => 120.0,
            Self::Fig4 => 250.0,
            Self::Pareto2000 | Self::Fig42000 => 1.5,
        }
    }

    /// The workload with `secs` of arrivals (the first tenth not measured).
    fn config(self, secs: f64, smoke: bool) -> Config {
        let mut c = Config::preset("fig4").expect("the fig4 preset parses");
        c.loads = vec![LOAD];
        c.workload.duration_s = secs;
        c.workload.warmup_s = secs * 0.1;
        if matches!(self, Self::Pareto | Self::Pareto2000) {
            c.workload.functions = 1;
            c.workload.service = Some(ServiceConfig::Pareto {
                alpha: 2.5,
                xm_ms: 50.0,
            });
        }
        if self.big() {
            c.cluster.machines = 2_000;
            c.cluster.cores = 64;
        }
        if smoke {
            c.cluster.machines = if self.big() { 20 } else { 10 };
        }
        c
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    shape: Shape,
    runner: Runner,
}

impl Case {
    fn name(&self) -> String {
        match self.runner {
            Runner::Bare => format!("bare loop, {}", self.shape.name()),
            Runner::Sim(kind) => format!("{} {}", kind.name(), self.shape.name()),
        }
    }
}

const CASES: [Case; 10] = [
    Case {
        shape: Shape::Pareto,
        runner: Runner::Bare,
    },
    Case {
        shape: Shape::Pareto,
        runner: Runner::Sim(SchedulerKind::Turnpike),
    },
    Case {
        shape: Shape::Pareto2000,
        runner: Runner::Bare,
    },
    Case {
        shape: Shape::Pareto2000,
        runner: Runner::Sim(SchedulerKind::Turnpike),
    },
    Case {
        shape: Shape::Fig4,
        runner: Runner::Bare,
    },
    Case {
        shape: Shape::Fig4,
        runner: Runner::Sim(SchedulerKind::Turnpike),
    },
    Case {
        shape: Shape::Fig4,
        runner: Runner::Sim(SchedulerKind::Hermod),
    },
    Case {
        shape: Shape::Fig4,
        runner: Runner::Sim(SchedulerKind::Edf),
    },
    Case {
        shape: Shape::Fig42000,
        runner: Runner::Bare,
    },
    Case {
        shape: Shape::Fig42000,
        runner: Runner::Sim(SchedulerKind::Turnpike),
    },
];

/// How big the runs are.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Size {
    /// `cargo bench`: the figures.
    Full,
    /// `--quick`: a tenth of the simulated time, one round.
    Quick,
    /// No `--bench`: tiny clusters, a second of arrivals; only checks that it all runs.
    Smoke,
}

impl Size {
    fn flag(self) -> &'static [&'static str] {
        match self {
            Self::Full => &["--bench"],
            Self::Quick => &["--bench", "--quick"],
            Self::Smoke => &[],
        }
    }

    fn rounds(self) -> usize {
        if self == Self::Full {
            5
        } else {
            1
        }
    }

    fn config(self, shape: Shape) -> Config {
        match self {
            Self::Full => shape.config(shape.full_secs(), false),
            Self::Quick => shape.config(shape.full_secs() / 10.0, false),
            Self::Smoke => shape.config(1.0, true),
        }
    }
}

/// One timed run.
#[derive(Clone, Copy, Debug)]
struct Sample {
    invocations: u64,
    events: u64,
    secs: f64,
    peak_rss_kb: Option<u64>,
}

impl Sample {
    fn inv_per_s(&self) -> f64 {
        self.invocations as f64 / self.secs
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size = match (
        args.iter().any(|a| a == "--bench"),
        args.iter().any(|a| a == "--quick"),
    ) {
        (true, false) => Size::Full,
        (true, true) => Size::Quick,
        (false, _) => Size::Smoke,
    };
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let case: usize = args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .expect("--child takes a case number");
        let shape = CASES[case].shape;
        // `--secs S`: the memory runs' lengths (see `memory`).
        let config = match args.iter().position(|a| a == "--secs") {
            Some(j) => shape.config(
                args.get(j + 1)
                    .and_then(|n| n.parse().ok())
                    .expect("--secs takes simulated seconds"),
                false,
            ),
            None => size.config(shape),
        };
        let s = run(&config, CASES[case].runner);
        println!(
            "RESULT {} {} {} {}",
            s.invocations,
            s.events,
            s.secs,
            s.peak_rss_kb.unwrap_or(0)
        );
        return;
    }
    if args.iter().any(|a| a == "--memory") {
        memory(size);
        return;
    }
    // Words that are not flags select runs by name.
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let cases: Vec<usize> = (0..CASES.len())
        .filter(|&i| filters.is_empty() || filters.iter().any(|f| CASES[i].name().contains(f)))
        .collect();

    for shape in Shape::ALL {
        let c = size.config(shape);
        let runtimes = if c.workload.functions == 1 {
            "one function, Pareto(alpha 2.5, x_m 50 ms)"
        } else {
            "1,000 functions in 4 classes, per-function Pareto(alpha 2.5, x_m ~ N(50, 20) ms)"
        };
        println!(
            "workload {}: {} machines x {} cores, load {LOAD}, {} s of arrivals (+ up to {} s \
             drain), {runtimes}, unlimited memory, idle list off",
            shape.name(),
            c.cluster.machines,
            c.cluster.cores,
            c.workload.duration_s,
            c.workload.drain_s
        );
    }

    let rounds = size.rounds();
    let started = Instant::now();
    let cpu_before = CpuTimes::now();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); CASES.len()];
    for round in 0..rounds {
        for &i in &cases {
            let s = child(size, i, None);
            println!(
                "  round {}: {:<26} {:>6.2} M inv/s  ({} inv, {} events, {:.2} s)",
                round + 1,
                CASES[i].name(),
                s.inv_per_s() / 1e6,
                s.invocations,
                s.events,
                s.secs
            );
            samples[i].push(s);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let others = cpu_before
        .filter(|_| wall >= 1.0)
        .and_then(|b| CpuTimes::now().map(|a| a.others_since(&b, wall)));

    // Per case: median rate, and the median of per-round ratios to its workload's bare loop.
    let bare_of = |i: usize| {
        cases
            .iter()
            .copied()
            .find(|&b| CASES[b].shape == CASES[i].shape && CASES[b].runner == Runner::Bare)
    };
    let rate = |i: usize| median(samples[i].iter().map(Sample::inv_per_s).collect());
    let ratio = |i: usize| {
        bare_of(i).map(|b| {
            median(
                samples[i]
                    .iter()
                    .zip(&samples[b])
                    .map(|(x, b)| x.inv_per_s() / b.inv_per_s())
                    .collect(),
            )
        })
    };

    println!();
    println!(
        "simulated invocations per wall-second, one thread, load {LOAD}; median of {rounds} \
         interleaved round(s)"
    );
    println!(
        "{:<26} {:>9} {:>12} {:>12} {:>9} {:>8} {:>12}",
        "run", "M inv/s", "M events/s", "invocations", "vs bare", "spread", "peak RSS MB"
    );
    for &i in &cases {
        let s = &samples[i];
        let events = median(s.iter().map(|x| x.events as f64 / x.secs).collect());
        let rss = s
            .iter()
            .filter_map(|x| x.peak_rss_kb)
            .max()
            .map_or("n/a".to_string(), |kb| format!("{:.0}", kb as f64 / 1024.0));
        println!(
            "{:<26} {:>9.2} {:>12.2} {:>12} {:>9} {:>7.0}% {:>12}",
            CASES[i].name(),
            rate(i) / 1e6,
            events / 1e6,
            s[0].invocations,
            ratio(i).map_or("n/a".to_string(), |r| format!("{r:.3}x")),
            spread_pct(s),
            rss
        );
    }
    println!(
        "(spread: (max - min) / median of the rounds' rates; peak RSS: VmHWM of the run's process)"
    );
    println!();
    for &i in &cases {
        if CASES[i].runner == Runner::Bare {
            continue;
        }
        let vs = ratio(i).map_or(String::new(), |r| format!(" ({r:.3} x the bare loop)"));
        println!("{}: {:.2} M inv/s{vs}", CASES[i].name(), rate(i) / 1e6);
    }
    match others {
        Some(o) => println!(
            "other work on this machine during the runs: {o:.2} CPUs on average \
             (discard the figures if that is well above 0)"
        ),
        None => {
            println!("other work on this machine during the runs: unknown (no /proc, or too short)")
        }
    }
    println!(
        "targets (issue 20; reported, not asserted): >= 8 M simulated inv/s for turnpike \
         pareto 100x8, >= 3 M for turnpike 2000x64; total wall {wall:.1} s"
    );
}

/// Runs `case` in a child process for `secs` simulated seconds of arrivals.
fn child(size: Size, case: usize, secs: Option<f64>) -> Sample {
    let exe = std::env::current_exe().expect("the bench knows its own path");
    let mut cmd = Command::new(&exe);
    cmd.args(size.flag()).arg("--child").arg(case.to_string());
    if let Some(secs) = secs {
        cmd.arg("--secs").arg(secs.to_string());
    }
    let out = cmd.output().expect("the bench can run itself");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(parse_result)
        .unwrap_or_else(|| panic!("run {} failed: {out:?}", CASES[case].name()))
}

/// `-- --memory`: peak RSS against the number of invocations simulated, on the 2,000 x 64
/// cluster with issue 20's workload: 10 M and 100 M invocations (`--quick`: 1 M and 10 M), the
/// bare loop over the same arrivals as baseline, one child process per run.
fn memory(size: Size) {
    let (bare, sim) = (2, 3);
    assert_eq!(CASES[sim].shape, Shape::Pareto2000);
    let millions: [f64; 2] = if size == Size::Full {
        [10.0, 100.0]
    } else {
        [1.0, 10.0]
    };
    // Offered load 0.9 of 128,000 cores with a mean runtime of 83.3 ms (Pareto 2.5, 50 ms).
    let per_sim_second = LOAD * 128_000.0 / 0.083_333_333;
    let cpu_before = CpuTimes::now();
    let started = Instant::now();
    println!(
        "peak RSS against invocations simulated: {} on 2,000 machines x 64 cores, load {LOAD}",
        Shape::Pareto2000.name()
    );
    println!(
        "{:<26} {:>12} {:>9} {:>9} {:>12}",
        "run", "invocations", "M inv/s", "vs bare", "peak RSS MB"
    );
    let mut rss = Vec::new();
    for m in millions {
        let secs = m * 1e6 / per_sim_second;
        let b = child(size, bare, Some(secs));
        let s = child(size, sim, Some(secs));
        for (case, x, ratio) in [(bare, &b, 1.0), (sim, &s, s.inv_per_s() / b.inv_per_s())] {
            println!(
                "{:<26} {:>12} {:>9.2} {:>8.3}x {:>12.0}",
                CASES[case].name(),
                x.invocations,
                x.inv_per_s() / 1e6,
                ratio,
                x.peak_rss_kb.unwrap_or(0) as f64 / 1024.0
            );
        }
        rss.push(s.peak_rss_kb.unwrap_or(0) as f64 / 1024.0);
    }
    println!(
        "turnpike peak RSS, {:.0} M invocations / {:.0} M: {:.3} (goal: within 10%, and under \
         300 MB at 100 M)",
        millions[1],
        millions[0],
        rss[1] / rss[0]
    );
    let wall = started.elapsed().as_secs_f64();
    if let Some(o) = cpu_before.and_then(|b| CpuTimes::now().map(|a| a.others_since(&b, wall))) {
        println!("other work on this machine during the runs: {o:.2} CPUs on average");
    }
}

fn parse_result(line: &str) -> Option<Sample> {
    let f: Vec<&str> = line.strip_prefix("RESULT ")?.split(' ').collect();
    let rss: u64 = f.get(3)?.parse().ok()?;
    Some(Sample {
        invocations: f.first()?.parse().ok()?,
        events: f.get(1)?.parse().ok()?,
        secs: f.get(2)?.parse().ok()?,
        peak_rss_kb: (rss > 0).then_some(rss),
    })
}

fn run(config: &Config, runner: Runner) -> Sample {
    let classes = config.class_set().expect("the preset's classes are valid");
    let started = Instant::now();
    let (invocations, events) = match runner {
        Runner::Bare => bare_loop(config, &classes),
        Runner::Sim(kind) => {
            let outcome = Sim::new(config, &classes, kind, LOAD, None).run(&mut |_| {});
            let counts = (outcome.invocations, outcome.events);
            // Dropping the outcome (latency vectors) is part of a run's cost.
            drop(black_box(outcome));
            counts
        }
    };
    let secs = started.elapsed().as_secs_f64();
    Sample {
        invocations,
        events,
        secs,
        peak_rss_kb: peak_rss_kb(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum BareEvent {
    Arrival,
    Complete { runtime_ns: u64 },
}

/// What any simulator of this workload must do: draw each arrival, and push and pop its
/// arrival and its completion on a time-ordered heap (ties in scheduling order, like the
/// engine's). Completions come after the runtime, as on infinitely many cores.
fn bare_loop(config: &Config, classes: &ClassSet) -> (u64, u64) {
    let mut workload = Workload::new(config, classes, LOAD, None);
    let mut heap: BinaryHeap<Reverse<(u64, u64, BareEvent)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let (mut invocations, mut events, mut completed) = (0u64, 0u64, 0u64);
    let mut next = workload.next_arrival();
    if let Some(a) = next {
        seq += 1;
        heap.push(Reverse((a.at_ns, seq, BareEvent::Arrival)));
    }
    while let Some(Reverse((now, _, event))) = heap.pop() {
        events += 1;
        match event {
            BareEvent::Arrival => {
                let a = next.take().expect("an arrival event has its arrival");
                invocations += 1;
                seq += 1;
                heap.push(Reverse((
                    now + a.runtime_ns,
                    seq,
                    BareEvent::Complete {
                        runtime_ns: a.runtime_ns,
                    },
                )));
                next = workload.next_arrival();
                if let Some(n) = next {
                    seq += 1;
                    heap.push(Reverse((n.at_ns, seq, BareEvent::Arrival)));
                }
            }
            BareEvent::Complete { runtime_ns } => {
                completed += 1;
                black_box(runtime_ns);
            }
        }
    }
    assert_eq!(completed, invocations, "every bare invocation completes");
    (invocations, events)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread_pct(s: &[Sample]) -> f64 {
    let r: Vec<f64> = s.iter().map(Sample::inv_per_s).collect();
    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().copied().fold(0.0, f64::max);
    (hi - lo) / median(r) * 100.0
}

fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy CPU time of the whole machine and of this process and its finished children, to tell
/// whether the runs shared the machine with other work.
#[derive(Clone, Copy, Debug)]
struct CpuTimes {
    machine_busy_ticks: u64,
    own_ticks: u64,
}

impl CpuTimes {
    /// Clock ticks per second of `/proc` times (USER_HZ, 100 on Linux).
    const HZ: f64 = 100.0;

    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
        let busy = cpu.iter().take(8).sum::<u64>() - cpu.get(3)? - cpu.get(4)?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // After the command (which may hold spaces) come state (field 3), ..., utime (14),
        // stime (15), cutime (16), cstime (17).
        let rest = &own[own.rfind(')')? + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(4)
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        Some(Self {
            machine_busy_ticks: busy,
            own_ticks: f.iter().sum(),
        })
    }

    /// CPUs' worth of work by other processes between `before` and now, over `wall` seconds.
    fn others_since(&self, before: &Self, wall: f64) -> f64 {
        let all = self
            .machine_busy_ticks
            .saturating_sub(before.machine_busy_ticks);
        let own = self.own_ticks.saturating_sub(before.own_ticks);
        all.saturating_sub(own) as f64 / Self::HZ / wall.max(1e-9)
    }
}
