//! Cost of the policy core's hot decisions.
//!
//! `cargo bench -p turnpike-policy --bench policy`
//!
//! Every benchmark is a steady-state "operation" on state that persists across iterations:
//! - `baseline/deque+rng`: a `VecDeque` push and pop of a pending invocation plus one RNG
//!   draw: the floor any placement decision needs (take work from a queue, draw a number).
//! - `shard/idle-list`: a shard with its idle list on and 1,000 machines joined. One op
//!   enqueues an invocation (`handle_invocation`), takes the decision (`poll_decision`, which
//!   places on the idle-list entry with the fewest functions), then re-upserts the chosen
//!   machine's entry as that machine's next report would (functions + 1, wrapping at 8, so
//!   the choice moves around the list), which keeps the list at 1,000 entries.
//! - `shard/power-of-k`: idle list off, k = 3 over 1,000 machines; the poll closure reads a
//!   `Vec` of machine loads. One op enqueues, decides, adds one function to the chosen machine
//!   and takes one from the next machine in a round-robin sweep (a completion elsewhere).
//! - `machine/*`: one `Machine` with 8 cores and 4 classes, holding 16 invocations (8 running,
//!   8 waiting). One op is an arrival of a random class (a preemption whenever it outranks the
//!   lowest running class), then the completion of a random running invocation; every action
//!   is polled. `unlimited` has no memory manager; `limited-ample` has one (64 GB, nothing
//!   ever swaps: its bookkeeping alone); `+report` ops also report one running invocation's
//!   memory (random, 100-1500 MB) between arrival and completion, and `limited-tight` (4 GB,
//!   1 TB swap) then swaps parked invocations out and back in.
//!
//! After criterion's own report, a table gives each op's ns/op and its ratio to the baseline,
//! timed A B A B: every round runs one batch of every op (in a rotating order), and each
//! ratio is the median over rounds of (op / baseline) in the same round. Nothing asserts on
//! wall time. Without `--bench` (as under `cargo test --benches`) criterion runs each
//! benchmark once and the table is a one-round smoke run.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use turnpike_policy::idle_list::IdleEntry;
use turnpike_policy::machine::{Machine, MachineAction, MachineConfig};
use turnpike_policy::memory::MemoryConfig;
use turnpike_policy::placement::{PlacementRule, PollReply};
use turnpike_policy::shard::{
    Pending, Shard, ShardConfig, ShardDecision, TOP_CLASS_DEFERS_MAX_DEFAULT,
};
use turnpike_policy::{ClassId, ClassSet, InvocationId, MachineId};

const MACHINES: u32 = 1_000;
const CLASSES: u8 = 4;
const START_MB: u64 = 100;
/// Simulated time between two decisions (1 us).
const TICK_NS: u64 = 1_000;

/// A steady-state operation: state persists across calls.
trait Op {
    fn step(&mut self);
    /// Anything worth printing about what the op did (e.g. how often it preempted).
    fn note(&self) -> String {
        String::new()
    }
}

/// The floor: a queue push and pop, and one RNG draw.
struct Baseline {
    queue: VecDeque<Pending>,
    rng: Pcg64Mcg,
    next: u64,
}

impl Baseline {
    fn new() -> Self {
        Self {
            queue: VecDeque::with_capacity(16),
            rng: Pcg64Mcg::seed_from_u64(1),
            next: 0,
        }
    }
}

impl Op for Baseline {
    fn step(&mut self) {
        self.next += 1;
        self.queue.push_back(Pending {
            id: InvocationId(self.next),
            class: ClassId((self.next % u64::from(CLASSES)) as u8),
            start_mb: START_MB,
        });
        let p = self.queue.pop_front();
        let m = self.rng.random_range(0..MACHINES);
        black_box((p, m));
    }
}

fn pending(n: u64) -> Pending {
    Pending {
        id: InvocationId(n),
        class: ClassId((n % u64::from(CLASSES)) as u8),
        start_mb: START_MB,
    }
}

/// A shard placing through its idle list of 1,000 machines.
struct ShardIdle {
    shard: Shard,
    rng: Pcg64Mcg,
    /// Each machine's last report (what the re-upsert sends).
    reported: Vec<IdleEntry>,
    now_ns: u64,
    next: u64,
    polled: u64,
}

/// The rule the services run (class-aware), over `MACHINES` machines with k = 3.
fn shard_config(use_idle_list: bool) -> ShardConfig {
    ShardConfig {
        machines: MACHINES,
        k: 3,
        use_idle_list,
        placement: PlacementRule::default(),
        top_class_defers_max: TOP_CLASS_DEFERS_MAX_DEFAULT,
    }
}

impl ShardIdle {
    fn new(classes: &ClassSet) -> Self {
        let mut rng = Pcg64Mcg::seed_from_u64(2);
        let mut shard = Shard::new(classes, shard_config(true));
        let reported: Vec<IdleEntry> = (0..MACHINES)
            .map(|_| {
                let functions = rng.random_range(0..8);
                IdleEntry {
                    free_mb: rng.random_range(16_000..64_000),
                    functions,
                    idle_cores: 8 - functions,
                }
            })
            .collect();
        for (m, &e) in reported.iter().enumerate() {
            shard.handle_idle_join(MachineId(m as u32), e);
        }
        Self {
            shard,
            rng,
            reported,
            now_ns: 0,
            next: 0,
            polled: 0,
        }
    }
}

impl Op for ShardIdle {
    fn step(&mut self) {
        self.now_ns += TICK_NS;
        self.next += 1;
        self.shard
            .handle_invocation(self.now_ns, pending(self.next));
        let decision = self
            .shard
            .poll_decision(self.now_ns, &mut self.rng, |m, _| {
                // Not reached while the idle list has room; answers like an empty machine.
                PollReply {
                    machine: m,
                    functions: 0,
                    room_mb: u64::MAX,
                    ahead: 0,
                    cores: 8,
                }
            });
        match decision {
            ShardDecision::Place { machine, via, .. } => {
                if via != turnpike_policy::shard::Via::IdleList {
                    self.polled += 1;
                }
                let e = &mut self.reported[machine.0 as usize];
                e.functions = (e.functions + 1) % 8;
                e.idle_cores = 8 - e.functions;
                let entry = *e;
                self.shard.handle_idle_join(machine, entry);
            }
            other => panic!("an idle list of {MACHINES} machines always places: {other:?}"),
        }
    }

    fn note(&self) -> String {
        format!(
            "idle list {} entries, {} of {} placements polled",
            self.shard.idle_list().len(),
            self.polled,
            self.next
        )
    }
}

/// A shard placing by power-of-k polling (idle list off).
struct ShardPolling {
    shard: Shard,
    rng: Pcg64Mcg,
    loads: Vec<u32>,
    sweep: usize,
    now_ns: u64,
    next: u64,
}

impl ShardPolling {
    fn new(classes: &ClassSet) -> Self {
        let mut rng = Pcg64Mcg::seed_from_u64(3);
        let loads = (0..MACHINES).map(|_| rng.random_range(0..16)).collect();
        Self {
            shard: Shard::new(classes, shard_config(false)),
            rng,
            loads,
            sweep: 0,
            now_ns: 0,
            next: 0,
        }
    }
}

impl Op for ShardPolling {
    fn step(&mut self) {
        self.now_ns += TICK_NS;
        self.next += 1;
        self.shard
            .handle_invocation(self.now_ns, pending(self.next));
        let loads = &self.loads;
        let decision = self
            .shard
            .poll_decision(self.now_ns, &mut self.rng, |m, _| PollReply {
                machine: m,
                functions: loads[m.0 as usize],
                room_mb: u64::MAX,
                ahead: loads[m.0 as usize],
                cores: 8,
            });
        match decision {
            ShardDecision::Place { machine, .. } => {
                self.loads[machine.0 as usize] += 1;
                self.sweep = (self.sweep + 1) % self.loads.len();
                let l = &mut self.loads[self.sweep];
                *l = l.saturating_sub(1);
            }
            other => panic!("unlimited memory always places: {other:?}"),
        }
    }

    fn note(&self) -> String {
        let total: u64 = self.loads.iter().map(|&l| u64::from(l)).sum();
        format!("mean load {:.1} functions", total as f64 / MACHINES as f64)
    }
}

/// One machine scheduler in steady state.
struct MachineOp {
    machine: Machine,
    rng: Pcg64Mcg,
    report_memory: bool,
    next: u64,
    ops: u64,
    preempts: u64,
    swap_outs: u64,
    kills: u64,
}

/// Invocations kept on the machine: twice its cores.
const ON_MACHINE: u64 = 16;

impl MachineOp {
    fn new(memory: Option<MemoryConfig>, report_memory: bool) -> Self {
        let config = MachineConfig { cores: 8, memory };
        let mut op = Self {
            machine: Machine::new(config, usize::from(CLASSES)),
            rng: Pcg64Mcg::seed_from_u64(4),
            report_memory,
            next: 0,
            ops: 0,
            preempts: 0,
            swap_outs: 0,
            kills: 0,
        };
        for _ in 0..ON_MACHINE {
            op.arrive();
        }
        (op.ops, op.preempts, op.swap_outs, op.kills) = (0, 0, 0, 0);
        op
    }

    fn arrive(&mut self) {
        self.next += 1;
        let class = ClassId(self.rng.random_range(0..CLASSES));
        self.machine
            .handle_arrival(InvocationId(self.next), class, START_MB)
            .expect("ids are fresh");
        self.drain();
    }

    fn random_running(&mut self) -> Option<InvocationId> {
        let running = self.machine.running();
        if running.is_empty() {
            return None;
        }
        Some(running[self.rng.random_range(0..running.len())])
    }

    fn drain(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                MachineAction::Preempt(_) => self.preempts += 1,
                MachineAction::SwapOut { .. } => self.swap_outs += 1,
                MachineAction::Kill(_) => self.kills += 1,
                _ => {}
            }
            let _ = black_box(action);
        }
    }
}

impl Op for MachineOp {
    fn step(&mut self) {
        self.ops += 1;
        self.arrive();
        if self.report_memory {
            if let Some(id) = self.random_running() {
                let mb = self.rng.random_range(START_MB..=1_500);
                self.machine.handle_memory(id, mb);
                self.drain();
            }
        }
        // Killed invocations leave by themselves; complete one more only while above target.
        if u64::from(self.machine.functions()) > ON_MACHINE {
            if let Some(id) = self.random_running() {
                self.machine.handle_completion(id);
                self.drain();
            }
        }
    }

    fn note(&self) -> String {
        let per = |n: u64| n as f64 / self.ops.max(1) as f64;
        let mut s = format!("{:.2} preemptions/op", per(self.preempts));
        if self.swap_outs > 0 || self.kills > 0 {
            s += &format!(
                ", {:.2} swap-outs/op, {:.3} kills/op",
                per(self.swap_outs),
                per(self.kills)
            );
        }
        s
    }
}

type MakeOp = Box<dyn Fn() -> Box<dyn Op>>;

/// Every benchmark: (criterion group, id, constructor). The first is the baseline.
fn ops() -> Vec<(&'static str, &'static str, MakeOp)> {
    let classes = ClassSet::default_four();
    let ample = Some(MemoryConfig::new(64 * 1024, 1024 * 1024));
    let tight = Some(MemoryConfig::new(4 * 1024, 1024 * 1024));
    let c1 = classes.clone();
    vec![
        (
            "baseline",
            "deque+rng",
            Box::new(|| Box::new(Baseline::new())),
        ),
        (
            "shard",
            "idle-list",
            Box::new(move || Box::new(ShardIdle::new(&c1))),
        ),
        (
            "shard",
            "power-of-k",
            Box::new(move || Box::new(ShardPolling::new(&classes))),
        ),
        (
            "machine",
            "unlimited",
            Box::new(|| Box::new(MachineOp::new(None, false))),
        ),
        (
            "machine",
            "limited-ample",
            Box::new(move || Box::new(MachineOp::new(ample, false))),
        ),
        (
            "machine",
            "unlimited+report",
            Box::new(|| Box::new(MachineOp::new(None, true))),
        ),
        (
            "machine",
            "limited-ample+report",
            Box::new(move || Box::new(MachineOp::new(ample, true))),
        ),
        (
            "machine",
            "limited-tight+report",
            Box::new(move || Box::new(MachineOp::new(tight, true))),
        ),
    ]
}

fn criterion_benches(c: &mut Criterion) {
    let all = ops();
    let mut groups: Vec<&str> = all.iter().map(|(g, _, _)| *g).collect();
    groups.dedup();
    for group in groups {
        let mut g = c.benchmark_group(group);
        for (_, id, make) in all.iter().filter(|(g, _, _)| *g == group) {
            let mut op = make();
            g.bench_function(*id, |b| b.iter(|| op.step()));
        }
        g.finish();
    }
}

/// The A B A B table: each round times one batch of every op, in a rotating order.
fn ratio_table(bench: bool, filter: Option<&str>) {
    // The baseline always runs; the others as criterion's filter selects them.
    let all: Vec<_> = ops()
        .into_iter()
        .enumerate()
        .filter(|(i, (g, id, _))| *i == 0 || filter.is_none_or(|f| format!("{g}/{id}").contains(f)))
        .map(|(_, op)| op)
        .collect();
    let mut states: Vec<Box<dyn Op>> = all.iter().map(|(_, _, make)| make()).collect();
    let (rounds, batch_time) = if bench {
        (201, Duration::from_millis(1))
    } else {
        (1, Duration::from_micros(50))
    };
    // Calibrate each op's batch size to about `batch_time`.
    let batches: Vec<u64> = states
        .iter_mut()
        .map(|op| {
            let mut n = 16u64;
            loop {
                let t = Instant::now();
                for _ in 0..n {
                    op.step();
                }
                let el = t.elapsed();
                if el >= batch_time / 4 || n >= 1 << 26 {
                    let per = el.as_secs_f64() / n as f64;
                    return ((batch_time.as_secs_f64() / per.max(1e-10)) as u64).max(1);
                }
                n *= 4;
            }
        })
        .collect();
    let mut ns: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); states.len()];
    for round in 0..rounds {
        let k = states.len();
        for j in 0..k {
            let i = (round + j) % k;
            let n = batches[i];
            let op = &mut states[i];
            let t = Instant::now();
            for _ in 0..n {
                op.step();
            }
            ns[i].push(t.elapsed().as_nanos() as f64 / n as f64);
        }
    }
    println!();
    println!(
        "policy ops, ns/op and ratio to the baseline: {rounds} interleaved round(s) of ~{:?} \
         batches; median over rounds (ratio: median of per-round ratios, [p25, p75])",
        batch_time
    );
    println!(
        "{:<32} {:>10} {:>10} {:>17}   notes",
        "benchmark", "ns/op", "ratio", "ratio p25-p75"
    );
    for (i, (group, id, _)) in all.iter().enumerate() {
        let mut ratios: Vec<f64> = ns[i].iter().zip(&ns[0]).map(|(a, b)| a / b).collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "{:<32} {:>10.1} {:>9.2}x {:>7.2}x-{:>6.2}x   {}",
            format!("{group}/{id}"),
            quantile(&ns[i], 0.5),
            quantile(&ratios, 0.5),
            quantile(&ratios, 0.25),
            quantile(&ratios, 0.75),
            states[i].note()
        );
    }
    println!("target: one shard decision <= 1000 ns over 1,000 machines (reported, not asserted)");
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Criterion's positional filter, if any: the first argument that is neither a flag nor a
/// flag's value.
fn criterion_filter(args: &[String]) -> Option<&str> {
    const TAKES_VALUE: [&str; 17] = [
        "-b",
        "-c",
        "-s",
        "--baseline",
        "--baseline-lenient",
        "--color",
        "--confidence-level",
        "--format",
        "--load-baseline",
        "--measurement-time",
        "--noise-threshold",
        "--nresamples",
        "--output-format",
        "--plotting-backend",
        "--profile-time",
        "--sample-size",
        "--save-baseline",
    ];
    let mut prev: Option<&str> = None;
    for a in args.iter().skip(1) {
        let taken = prev.is_some_and(|p| TAKES_VALUE.contains(&p) || p == "--warm-up-time");
        if !a.starts_with('-') && !taken {
            return Some(a);
        }
        prev = Some(a);
    }
    None
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let listing = args.iter().any(|a| a == "--list");
    let started = Instant::now();
    let cpu_before = CpuTimes::now();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
        .configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();
    if !listing {
        ratio_table(bench, criterion_filter(&args));
    }
    let wall = started.elapsed().as_secs_f64();
    match cpu_before
        .filter(|_| wall >= 1.0)
        .and_then(|b| CpuTimes::now().map(|a| a.others_since(&b, wall)))
    {
        Some(o) => println!(
            "other work on this machine during the benchmarks: {o:.2} CPUs on average \
             (discard the figures if that is well above 0)"
        ),
        None => println!("other work on this machine: unknown (no /proc, or too short)"),
    }
}

/// Busy CPU time of the whole machine and of this process, to tell whether the benchmarks
/// shared the machine with other work.
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
        // After the command (which may hold spaces): state is field 3, utime 14, stime 15.
        let rest = &own[own.rfind(')')? + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
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
